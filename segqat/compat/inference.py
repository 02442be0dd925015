"""Paddle Inference settings (paddle 3.3.1 and 2.6.2): which programs and passes it runs right.

* New-IR models: oneDNN cannot run new-IR (``model.json``) programs with
  ``bilinear_interp`` (PaddlePaddle/Paddle#79749); ``onednn_refusal`` says so
  for such a model, and ``select_ir`` makes a config read an old-IR
  ``model.pdmodel`` as old IR (Paddle Inference 3.3.1 reads new IR by default).
  paddle 2.6 reads no new-IR program at all (``unreadable_ir``).
* paddle 2.6 names oneDNN "mkldnn" (``enable_onednn``, the pass names).
* ``ONEDNN_INT8_OPS``: the oneDNN INT8 op set that works; the default set
  fails on PP-LiteSeg ("could not create a primitive descriptor for a concat
  primitive").
* ``configure_inference``: deletes the passes that compute wrong results or
  crash (``BROKEN_INFERENCE_PASSES``: ``reshape_transpose_matmul_onednn_fuse_pass``,
  ``repeated_fc_relu_fuse_pass``).
* ``residual_fusions``: finds the INT8 convolutions whose fused residual add
  oneDNN computes wrongly (u8 + s8) or that the fusion left in FP32; the
  predictor then runs without ``INT8_RESIDUAL_FUSE_PASS``.
* ``native_output``: holds back the ~30 lines the oneDNN INT8 passes print
  from C++ even with glog off.

Used by ``segqat.deploy.paddle_inference`` (the Paddle predictor), the
tests' child predictors and ``benchmarks/zoo/onednn_grid``.
"""
import contextlib
import os
import sys

import paddle
from paddle import inference as _pi

from .ir_switch import HAS_PIR

# Paddle Inference 2.6 names oneDNN "mkldnn": Config.enable_mkldnn / enable_mkldnn_int8 and
# passes such as conv_elementwise_add_mkldnn_fuse_pass (3.x: enable_onednn, *_onednn_*). On
# paddle 2.6.2, Config.enable_onednn raises AttributeError and deleting a pass by its 3.x
# name deletes nothing. Feature test, not a version string.
_MKLDNN_NAMES = not hasattr(_pi.Config, "enable_onednn")


def _pass_name(name):
    """A Paddle Inference pass's name on this Paddle (3.x ``*_onednn_*`` -> 2.6 ``*_mkldnn_*``)."""
    return name.replace("_onednn_", "_mkldnn_") if _MKLDNN_NAMES else name


def enable_onednn(config, int8=False):
    """Run a ``paddle.inference.Config`` with oneDNN, with its INT8 passes on
    ``ONEDNN_INT8_OPS`` when ``int8`` (paddle 2.6: ``enable_mkldnn``/``enable_mkldnn_int8``)."""
    if _MKLDNN_NAMES:
        config.enable_mkldnn()
        if int8:
            config.enable_mkldnn_int8(ONEDNN_INT8_OPS)
        return
    config.enable_onednn()
    if int8:
        config.enable_onednn_int8(ONEDNN_INT8_OPS)

# oneDNN INT8 op set that works for BiSeNetV2 and PP-LiteSeg on paddle 3.3.1;
# the default set fails on PP-LiteSeg ("could not create a primitive
# descriptor for a concat primitive", PADDLE_NOTES).
ONEDNN_INT8_OPS = {"conv2d", "depthwise_conv2d", "fused_conv2d"}


def is_old_ir(model_file):
    """Whether ``model_file`` is an old-IR program (``model.pdmodel``), not new IR (``model.json``)."""
    return str(model_file).endswith(".pdmodel")


def onednn_refusal(model_file):
    """Why oneDNN cannot run ``model_file`` on this Paddle, or None when it can.

    paddle 3.3.1's oneDNN cannot run new-IR programs with ``bilinear_interp``
    (PaddlePaddle/Paddle#79749: ``ConvertPirAttribute2RuntimeAttribute not
    support [pir::ArrayAttribute<pir::DoubleAttribute>]``); segqat exports the
    old IR (``old_ir_export``).
    """
    if is_old_ir(model_file):
        return None
    return (f"{model_file} is a new-IR model; oneDNN cannot run it on paddle 3.3.1 "
            "(PaddlePaddle/Paddle#79749). Re-export with this tool.")


def unreadable_ir(model_file, made_by=None):
    """Why this Paddle cannot read ``model_file`` at all, or None when it can.

    paddle 2.6 reads only old-IR programs (``model.pdmodel``); a new-IR
    ``model.json`` (paddle 3.x's default ``jit.save``) fails there deep inside
    Paddle Inference. ``made_by``: the Paddle version that wrote it (deploy.yaml's
    ``paddle_version``), named in the message.
    """
    if is_old_ir(model_file) or HAS_PIR:
        return None
    return (f"{model_file} is a new-IR program (written by paddle {made_by or '3.x'}); paddle "
            f"{paddle.__version__} reads only old-IR model.pdmodel programs: run it on paddle "
            f"{made_by or '3.x'}, or export its weights again with segqat, which writes model.pdmodel")


def select_ir(config, model_file):
    """Make a ``paddle.inference.Config`` read ``model_file`` in its own IR: Paddle
    Inference 3.3.1 takes every program for new IR unless told (``enable_new_ir(False)``);
    2.6 reads only the old IR (its Config has no ``enable_new_ir``)."""
    if is_old_ir(model_file) and hasattr(config, "enable_new_ir"):
        config.enable_new_ir(False)


# Paddle Inference passes that compute wrong results on paddle 3.3.1, deleted from
# every predictor segqat creates:
# * reshape_transpose_matmul_onednn_fuse_pass (in the default CPU pass list, with or
#   without oneDNN) merges reshape2 -> transpose2 -> matmul_v2 into fused_matmul,
#   which then reads a convolution's output wrongly: conv -> reshape([0,C,-1]) ->
#   transpose([0,2,1]) -> matmul was 18-25 off at C=16, and ANN's logits up to 1838
#   off (70% of labels right). Our own exports avoid the pattern (see
#   legacy_ops._fold_reshape_transpose); this also covers programs written elsewhere and
#   transposes that cannot become a matmul flag ([0,2,1,3], SegFormer).
# * repeated_fc_relu_fuse_pass (default CPU pass list, with or without oneDNN) segfaults
#   (SIGSEGV in RepeatedFCReluFusePass::BuildFusion -> GraphPatternDetector::
#   MarkPDNodesInGraph) on any fc whose input is a stored tensor: its pattern looks for
#   the fc input that has a producing op ("w and bias has no input", before_var_of_part)
#   and dereferences the null it gets when none has one. GINet's head runs a Linear on
#   its class embedding, a parameter (GIHead.inp): its FP32 export killed the process.
#   The pass only fuses chains of fc + relu into fusion_repeated_fc_relu (MLPs).
BROKEN_INFERENCE_PASSES = tuple(map(_pass_name, ("reshape_transpose_matmul_onednn_fuse_pass",
                                                  "repeated_fc_relu_fuse_pass")))


# paddle 3.3.1's oneDNN INT8 pipeline fuses a residual add into the convolution
# (conv_elementwise_add_onednn_fuse_pass) and then lets oneDNN add the residual
# in the convolution's output type. When one is u8 (after relu/relu6) and the
# other s8, the residual's bytes are read in the wrong type: values above 127
# become negative. Measured: a conv-BN-relu / conv-BN-relu-conv-BN + add block
# (tests/compat/test_old_ir_export.py::test_int8_residual_add_of_u8_and_s8_runs_unfused)
# was 64-70% off its fake-quant output with the fusion, 3-10% without; the
# zoo's TopFormer agreed with fake quant on 77% of pixels (INT8 mIoU 34.7 vs
# 49.1) and 95% (50.0) without it.
INT8_RESIDUAL_FUSE_PASS = _pass_name("conv_elementwise_add_onednn_fuse_pass")
_UNSIGNED_ACTS = ("relu", "relu6")


def residual_fusions(pdmodel_path):
    """The convolutions with a fused residual add in an optimized oneDNN INT8 program
    (Paddle's ``_optimized.pdmodel``) that the fusion gets wrong, as two lists of output
    names: ``(unsafe, left_fp32)``.

    ``unsafe``: INT8 convolutions that add a residual of the other 8-bit type (u8 vs s8).
    ``left_fp32``: convolutions that run in FP32. paddle 3.3.1's conv + residual-add fusion
    runs before the INT8 quantize pass, which then leaves a fused convolution in FP32
    although the export quantized it (no INT8 kernel for that residual). Measured on the
    zoo's ANN: 3 of 67 convolutions stayed FP32 with the fusion, deployed INT8 agreed with
    fake quant on 98.26% of pixels; without the fusion all 67 ran INT8 and it agreed on
    99.40%, at about 3% more time per image at 512x1024 (INT8/FP32 0.32 instead of 0.31)."""
    from paddle.base import core
    with open(pdmodel_path, "rb") as f:
        desc = core.ProgramDesc(f.read())
    blk = desc.block(0)  # a view into desc, which must stay alive

    def attr(op, name, default=None):
        return op.attr(name) if op.has_attr(name) else default

    def out_type(op):
        if op.type() == "quantize":
            return "s8" if attr(op, "is_negative_input", True) else "u8"
        if op.type() != "fused_conv2d" or attr(op, "mkldnn_data_type") != "int8" \
                or attr(op, "force_fp32_output", False):
            return "f32"
        return "u8" if attr(op, "fuse_activation", "") in _UNSIGNED_ACTS else "s8"

    producer = {}
    ops = [blk.op(i) for i in range(blk.op_size())]
    for op in ops:
        for k in op.output_names():
            for n in op.output(k):
                producer[n] = op
    unsafe, left_fp32 = [], []
    for op in ops:
        if op.type() != "fused_conv2d" or not attr(op, "fuse_residual_connection", False):
            continue
        if attr(op, "mkldnn_data_type") != "int8":
            left_fp32.append(op.output("Output")[0])
            continue
        res = op.input("ResidualData")
        src = producer.get(res[0]) if res else None
        if {out_type(op), out_type(src) if src is not None else "f32"} == {"u8", "s8"}:
            unsafe.append(op.output("Output")[0])
    return unsafe, left_fp32


def configure_inference(config):
    """Apply this Paddle version's fixes to a ``paddle.inference.Config``."""
    for name in BROKEN_INFERENCE_PASSES:
        config.delete_pass(name)


@contextlib.contextmanager
def native_output(verbose=False):
    """Hold back what Paddle's C++ prints (file descriptors 1 and 2) inside the block.

    paddle 3.3.1's oneDNN INT8 passes print ~30 "---    quantized N ops" lines
    to stderr from C++ even with ``Config.disable_glog_info()``; they are not
    Python logging, so only redirecting the descriptors hides them. The output
    goes to a temporary file that is replayed on stderr if the block raises.
    """
    if verbose:
        yield
        return
    import tempfile
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:  # no descriptors (embedded interpreter): nothing to hide
        yield
        return
    with tempfile.TemporaryFile() as held:
        try:
            os.dup2(held.fileno(), 1)
            os.dup2(held.fileno(), 2)
            yield
        except BaseException:
            os.dup2(saved[1], 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            sys.stderr.flush()
            raise
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
