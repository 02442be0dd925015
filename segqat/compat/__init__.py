"""Paddle-version workarounds, one module per thing they may touch.

Every workaround is scoped (a context manager, or a function that callers opt
into) and names the Paddle/PaddleSeg behaviour it works around. paddle 3.3.1
and 2.6.2 (docs/stacks.md) differ only here, told apart by features (``HAS_PIR``,
a missing method), not version strings; docs/paddle_workarounds.md describes
each module.

    legacy_ops       legacy ops for the APIs paddle 3.3.1 binds to new-IR-only ops
    function_fixes   paddle functions replaced while the old-IR export traces a model
    old_ir_export    the old-IR export guard, ``old_ir_export()``
    program_io       old-IR static mode; reading an export back
    program_fixes    rewrites of saved programs (conv bias axis, oneDNN scales,
                     int8 constants, dilated "same" convs, observer-only pairs)
    inference        Paddle Inference: new-IR refusal, oneDNN switches and INT8 ops,
                     broken passes, residual fusion, native output
    ir_switch        which IR static programs are built in; the old-IR switch per version
    paddleseg_fixes  PaddleSeg 2.8 losses and models fixed for paddle 3.x
    dygraph          dygraph training: paddleslim's QAT config, ``scalar``, CPU threads
    ptq_loader       the calibration feed paddle's PostTrainingQuantization accepts (2.6 and 3.x)
    lite_int8        Paddle Lite 2.13rc0 x86 INT8: a copy with 7-bit weights (its GEMM saturates)

Callers use the names re-exported here: ``from segqat import compat;
compat.old_ir_export(...)``.
"""
# Import order: numpy before paddle, in every process. paddle 2.6.2's libpaddle brings
# its own zlib, which clashes with the zlib already in the process when paddle is
# imported first, and the process crashes (compare PaddlePaddle/Paddle#70538, a SIGSEGV
# in zlib's inflateReset2 on paddle 2.6.2). Importing numpy first avoids it. paddle 3.3.1
# does not need it; the order is kept so that 2.6.2 support stays a matter of this
# package. segqat modules that import paddle at module level import numpy first, with a
# comment pointing here (importing segqat.compat first does the same).
import numpy as np  # noqa: F401,I001  (before paddle: see above)
import paddle

from .dygraph import paddleslim_qat_config, scalar, set_cpu_threads  # noqa: F401
from .inference import (BROKEN_INFERENCE_PASSES, INT8_RESIDUAL_FUSE_PASS,  # noqa: F401
                        ONEDNN_INT8_OPS, configure_inference, enable_onednn, is_old_ir,
                        native_output, onednn_refusal, residual_fusions, select_ir,
                        unreadable_ir)
from .ir_switch import HAS_PIR  # noqa: F401
from .legacy_ops import ExportError  # noqa: F401
from .lite_int8 import MAX_ABS_WEIGHT_7BIT, lite_x86_int8_copy  # noqa: F401
from .old_ir_export import EXPORT_TIMEOUT_S, old_ir_export  # noqa: F401
from .paddleseg_fixes import loss_overrides, model_overrides  # noqa: F401
from .program_fixes import (drop_observer_only_quant, fix_conv_bias_axis,  # noqa: F401
                            fold_constant_dequantize, guard_overwritten_scales,
                            undilate_same_convs)
from .program_io import load_old_ir_inference_model, load_old_ir_program, old_ir_static  # noqa: F401
from .ptq_loader import ptq_data_loader  # noqa: F401

PADDLE_VERSION = paddle.__version__
