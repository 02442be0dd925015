"""Which IR paddle builds static programs in, and the switch to the old IR, per Paddle version.

paddle 3.x builds and loads static programs in the new IR (PIR, ``model.json``)
unless ``FLAGS_enable_pir_api`` is off and ``paddle.pir_utils`` has swapped its
``Program``/``program_guard`` back (``_switch_to_old_ir_``, ``OldIrGuard``).
paddle 2.6 has only the old IR (``model.pdmodel``): its ``paddle.pir_utils``
has neither name, and importing them there fails with
``ImportError: cannot import name '_switch_to_old_ir_' from 'paddle.pir_utils'``
(segqat's export on paddle 2.6.2 before this switch). Here both versions get
the same two context managers:

* ``old_ir()``: programs built inside are old IR (the export guard,
  ``old_ir_export``); the dygraph/static mode is left alone;
* ``old_ir_static_mode()``: static mode on the old IR, dygraph restored on
  exit (PTQ, reading exports back: ``program_io.old_ir_static``).

``HAS_PIR`` says which kind of paddle is running (feature test, not a version
string: a develop build reports 0.0.0).
"""
import contextlib

import paddle
import paddle.pir_utils

HAS_PIR = hasattr(paddle.pir_utils, "OldIrGuard")


@contextlib.contextmanager
def old_ir():
    """Build static programs in the old IR inside the block; restored on exit, errors included.

    paddle 3.x: the PIR flag off and ``paddle.pir_utils._switch_to_old_ir_``
    (then back to PIR if it was on). paddle 2.6: nothing to switch.
    """
    on = HAS_PIR and paddle.get_flags("FLAGS_enable_pir_api")["FLAGS_enable_pir_api"]
    if on:
        from paddle.pir_utils import _switch_to_old_ir_, _switch_to_pir_
        paddle.set_flags({"FLAGS_enable_pir_api": False})
        _switch_to_old_ir_()
    try:
        yield
    finally:
        if on:
            paddle.set_flags({"FLAGS_enable_pir_api": True})
            _switch_to_pir_()


@contextlib.contextmanager
def old_ir_static_mode():
    """Static-graph mode on the old IR, dygraph (and paddle 3.x's PIR) restored on exit."""
    if HAS_PIR:
        with paddle.pir_utils.OldIrGuard():
            yield
        return
    dygraph = paddle.in_dynamic_mode()
    if dygraph:
        paddle.enable_static()
    try:
        yield
    finally:
        if dygraph:
            paddle.disable_static()
