"""Paddle-version workarounds (being split into one module per concern)."""
from .legacy_ops import *  # noqa: F401,F403
from .legacy_ops import (_LEGACY_SPECIAL, _new_ir_only_names, _phi_to_legacy,  # noqa: F401
                         _zero_d_promotions)
