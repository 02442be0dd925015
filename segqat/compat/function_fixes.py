"""Paddle functions that ``old_ir_export`` replaces while it traces a model.

Each works around a paddle 3.3.1 / paddleseg 2.8 problem of the old-IR export;
``replacements()`` gives them to ``old_ir_export`` (``old_ir_export.py``), which
puts them in place for the export only:

* ``F.normalize``: its old-IR branch raises ``UnboundLocalError: cannot access
  local variable 'ret'`` (EMANet).
* ``paddle.concat``: rejects the 0-d tensors paddle >= 2.5 makes where
  paddleseg 2.8 (written for paddle 2.4) expects shape [1]: ``The axis is
  expected to be in range of [0, 0), but got 0`` (ISANet).
* ``F.conv2d``: a ``groups`` computed from a dynamic batch size gets a clear
  error (paddle says ``The groups of conv2d should be not be zero.``); a filter
  computed in the forward pass (RTFormer) becomes a matmul when 1x1, since
  Paddle Inference's oneDNN INT8 passes take every conv2d filter for a stored
  weight (``(NotFound) The input persistable var ... of [conv2d] op is not
  found.``) and oneDNN reuses a conv3d's first filter.
* ``paddle.reshape`` (fixed-batch exports): infers the static ``-1`` dim where
  copied dims cancel, so RTFormer's batch size stays known.
"""
import logging

import paddle
import paddle.nn.functional as F

from .legacy_ops import TRACING, ExportError, producer

logger = logging.getLogger(__name__)


def replacements(infer_reshape_dims=False):
    """{name: (paddle's function, its replacement)} for ``old_ir_export``; ``paddle.reshape``
    only with ``infer_reshape_dims`` (exports with a fixed batch size)."""
    replaced = {**_broken_old_ir_branches(), **_zero_d_promotions(), **_conv2d_for_export()}
    if infer_reshape_dims:
        replaced.update(_reshape_static_dims())
    return replaced


def _broken_old_ir_branches():
    """Paddle functions whose own old-IR branch is broken in 3.3.1, with a working one.

    ``F.normalize`` (paddle/nn/functional/norm.py): the static branch builds the
    result in ``out`` and then runs ``paddle.assign(ret, out)`` with ``ret``
    unset: ``UnboundLocalError: cannot access local variable 'ret'`` (EMANet's
    EMAU). The replacement appends the same p_norm / maximum / divide ops.
    """
    from paddle.base.framework import Variable
    from paddle.base.layer_helper import LayerHelper
    original = F.normalize

    @paddle.jit.not_to_static
    def normalize(x, p=2, axis=1, epsilon=1e-12, name=None, out=None):
        if not isinstance(x, Variable):
            return original(x, p=p, axis=axis, epsilon=epsilon, name=name, out=out)
        TRACING.last_op = "F.normalize -> legacy p_norm, elementwise_max, elementwise_div"
        helper = LayerHelper("p_norm")
        norm = helper.create_variable_for_type_inference(dtype=x.dtype)
        helper.append_op(type="p_norm", inputs={"X": x}, outputs={"Out": norm},
                         attrs={"axis": axis, "porder": float(p), "keepdim": True,
                                "epsilon": epsilon})
        eps = paddle.full(shape=[1], fill_value=epsilon, dtype=x.dtype)
        return paddle.divide(x, paddle.maximum(norm, eps))

    return {"normalize": (original, normalize)}


def _zero_d_promotions():
    """Paddle functions that reject the 0-d tensors paddle >= 2.5 makes where 2.4 made shape [1].

    paddle 2.5 turned ``t[i]`` on a 1-D tensor (``paddle.shape(x)[2]``) and
    reductions into 0-d tensors; paddleseg 2.8 was written for 2.4, where they
    had shape [1], and concatenates such scalars into shape vectors. ISANet's
    head builds its padding as ``paddle.concat([pad_w // 2, ..., pad_h - pad_h
    // 2], axis=0)``: in the export (dynamic H, W: both branches of ``if pad_h >
    0`` are traced) concat raises ``The axis is expected to be in range of [0,
    0), but got 0`` (paddleseg's ``calculate_area`` fails the same way in
    dygraph). A concat that has 0-d inputs is an error in 3.3.1 in either mode,
    so promoting them to shape [1] (2.4's result) changes no program that worked.
    """
    from paddle.base.framework import Variable
    original = paddle.concat

    @paddle.jit.not_to_static  # see "DNLNet hang" in old_ir_export
    def concat(x, axis=0, name=None, **kwargs):
        if isinstance(x, (list, tuple)) and any(
                isinstance(t, (Variable, paddle.Tensor)) and len(t.shape) == 0 for t in x):
            TRACING.last_op = "paddle.concat of 0-d tensors -> reshape([1]) + concat"
            x = [paddle.reshape(t, [1]) if isinstance(t, (Variable, paddle.Tensor)) and len(t.shape) == 0
                 else t for t in x]
        return original(x, axis=axis, name=name, **kwargs)

    return {"concat": (original, concat)}


def _static_var(v):
    """An old-IR ``Variable`` being built (``isinstance(eager_tensor, Variable)`` is also True)."""
    from paddle.base.framework import Variable
    return isinstance(v, Variable) and not isinstance(v, paddle.Tensor)


def _stored_weight(var):
    """Whether ``var`` is a stored parameter, maybe behind fake quantization ops (a QAT weight).

    Paddle Inference's quant passes remove every quantize/dequantize op and feed
    the parameter itself to the consumer (``quant_dequant_onednn_pass``).
    """
    for _ in range(8):
        if var is None or var.persistable:
            return var is not None
        op = producer(var)
        if op is None or "quantize" not in op.type or "X" not in op.input_names:
            return False
        var = op.block._find_var_recursive(op.input("X")[0])
    return False


def _is_plain_1x1(weight, stride, padding, dilation):
    """A 1x1 filter at stride 1, dilation 1, no padding: a per-pixel matrix product."""
    from numbers import Integral

    def all_equal(v, want):
        return all(isinstance(t, Integral) and t == want for t in ([v] if isinstance(v, Integral) else v))
    no_padding = padding == "VALID" or (not isinstance(padding, str) and all_equal(padding, 0))
    return list(weight.shape[2:]) == [1, 1] and all_equal(stride, 1) and all_equal(dilation, 1) \
        and no_padding


def _conv1x1_as_matmul(x, weight, bias, groups):
    """``F.conv2d(x, weight, bias, groups=groups)`` for a 1x1 ``weight`` (NCHW, stride 1,
    no padding) as transpose + matmul: x [N, C, H, W], weight [O, C/g, 1, 1]."""
    g = int(groups)
    cg = int(weight.shape[1])
    xt = paddle.transpose(x, [0, 2, 3, 1])                       # N H W C
    if g == 1:  # RTFormer at batch 1: a plain 4-D matmul, no 6-D broadcast for oneDNN
        w = paddle.transpose(paddle.reshape(weight, [-1, cg]), [1, 0])  # C O
        out = paddle.matmul(xt, w)                               # N H W O
    else:
        xt = paddle.reshape(xt, [0, 0, 0, g, 1, cg])             # N H W g 1 C/g
        w = paddle.transpose(paddle.reshape(weight, [g, -1, cg]), [0, 2, 1])  # g C/g O/g
        out = paddle.reshape(paddle.matmul(xt, w), [0, 0, 0, -1])  # N H W O
    out = paddle.transpose(out, [0, 3, 1, 2])
    if bias is not None:
        out = out + paddle.reshape(bias, [1, -1, 1, 1])
    return out


def _conv2d_for_export():
    """``F.conv2d`` for the export: tensor-valued int arguments and computed filters.

    * ``groups``/``stride``/``dilation`` are int attributes of the conv2d op, so
      a value computed from a shape the program does not know (``-1``) cannot
      be exported. RTFormer's cross attention (paddleseg/models/rtformer.py,
      ExternalAttention) runs ``F.conv2d(x, cross_k, groups=B)`` with ``B =
      x.shape[0]``: with a dynamic batch size dy2static makes ``B`` a tensor and
      paddle's own check misreports it as ``The groups of conv2d should be not
      be zero.``; this names the cause and the remedy.
    * A filter computed in the forward pass (RTFormer's cross k/v, DMNet's
      generated filters) cannot be a conv2d op: Paddle Inference 3.3.1's oneDNN
      INT8 pipeline takes the Filter of every conv2d / depthwise_conv2d /
      fused_conv2d for a stored weight (``compute_propagate_scales_onednn_pass``,
      ComputeVarScales) and stops the predictor with ``(NotFound) The input
      persistable var [reshape2_6.tmp_0] of [conv2d] op is not found.``. Nor a
      conv3d over a depth-1 volume, as this export first wrote it: once
      ``is_test_pass`` marks the op for inference, oneDNN's conv keeps the
      filter it reordered on the first run and reuses it for every later
      input (RTFormer: FP32 output identical to paddle's executor on a
      predictor's first image, 1-2% of pixels different on each later one;
      ``is_test_pass`` deleted or oneDNN off: identical on all). A 1x1 filter
      at stride 1 without padding (RTFormer's, any batch size) is therefore
      built as a matmul (``_conv1x1_as_matmul``), which reads both operands on
      every run; other computed filters still become conv3d and get a warning.
    """
    import inspect
    original = F.conv2d
    sig = inspect.signature(original)

    def pair(v, what):
        v = [v, v] if isinstance(v, int) else list(v)
        if len(v) != 2:
            raise ExportError(f"old-IR export: F.conv2d({what}={v!r}) with a computed filter at "
                              f"{TRACING.where()}: expected an int or 2 ints")
        return v

    @paddle.jit.not_to_static  # see "DNLNet hang" in old_ir_export
    def conv2d(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        for k in ("groups", "stride", "dilation"):
            v = a[k]
            if _static_var(v) or (isinstance(v, (list, tuple)) and any(_static_var(t) for t in v)):
                raise ExportError(
                    f"old-IR export: F.conv2d({k}=<tensor>) at {TRACING.where()}: {k} must be a "
                    f"Python int, but the model computes it from a tensor shape the program does "
                    f"not know while it is built (a dynamic batch size makes x.shape[0] a tensor; "
                    f"RTFormer's cross attention uses groups=batch size). Export with a fixed "
                    f"batch size: --input_shape 1 C -1 -1, or 'export: {{input_shape: [1, C, -1, "
                    f"-1]}}' in the config.")
        if not (_static_var(a["x"]) and _static_var(a["weight"])) or _stored_weight(a["weight"]):
            return original(*args, **kwargs)
        pad = a["padding"]
        if _is_plain_1x1(a["weight"], a["stride"], pad, a["dilation"]) and a["data_format"] == "NCHW":
            TRACING.last_op = "F.conv2d with a computed 1x1 filter -> matmul"
            return _conv1x1_as_matmul(a["x"], a["weight"], a["bias"], a["groups"])
        TRACING.last_op = "F.conv2d with a computed filter -> conv3d"
        logger.warning("old-IR export: F.conv2d with a computed %s filter at %s is written as conv3d; "
                       "oneDNN reuses the filter of a predictor's first run for later inputs (see "
                       "segqat/compat/function_fixes.py): check the deployed output on several images",
                       "x".join(str(d) for d in a["weight"].shape[2:]), TRACING.where())
        if isinstance(pad, str):
            pad3 = pad
        elif isinstance(pad, int):
            pad3 = [0, pad, pad]
        elif len(pad) == 2 and all(isinstance(p, int) for p in pad):
            pad3 = [0] + list(pad)
        elif len(pad) == 4 and all(isinstance(p, int) for p in pad):
            pad3 = [0, 0] + list(pad)
        else:
            raise ExportError(f"old-IR export: F.conv2d(padding={pad!r}) with a computed filter at "
                              f"{TRACING.where()} is not supported")
        axis = 2 if a["data_format"] == "NCHW" else 1
        out = F.conv3d(paddle.unsqueeze(a["x"], axis), paddle.unsqueeze(a["weight"], 2), bias=a["bias"],
                       stride=[1] + pair(a["stride"], "stride"), padding=pad3,
                       dilation=[1] + pair(a["dilation"], "dilation"), groups=a["groups"],
                       data_format="NCDHW" if axis == 2 else "NDHWC")
        return paddle.squeeze(out, axis)

    return {"conv2d": (original, conv2d)}


def _reshape_inferred_dim(in_shape, shape):
    """The value of the one ``-1`` in ``shape`` for an input of static shape ``in_shape``, or None.

    A ``0`` in ``shape`` copies the input dim at the same index, so
    prod(input) == prod(output) reduces to prod(input dims not copied) ==
    prod(output dims not copied): copied dims cancel even where they are
    unknown (-1). None when ``shape`` is not a list of Python ints with one -1,
    or a dim that does not cancel is unknown.
    """
    import math
    if not isinstance(shape, (list, tuple)) or any(
            type(s) is not int for s in shape) or list(shape).count(-1) != 1:
        return None
    copied = {j for j, s in enumerate(shape) if s == 0}
    if any(j >= len(in_shape) for j in copied):
        return None
    rest = [d for i, d in enumerate(in_shape) if i not in copied]
    if any(d is None or d < 0 for d in rest):
        return None
    known = math.prod(s for j, s in enumerate(shape) if j not in copied and s != -1)
    total = math.prod(rest)
    if known <= 0 or total % known:
        return None
    return total // known


def _reshape_static_dims():
    """``paddle.reshape`` that also infers the static ``-1`` dim where copied dims cancel.

    paddle's build-time shape inference leaves the ``-1`` of a reshape unknown
    as soon as any input dim is unknown, even one that a ``0`` copies to the
    output: ``[1, 64, h, w].reshape([-1, 64, 0, 0])`` is ``[-1, 64, -1, -1]``,
    not ``[1, 64, -1, -1]``. RTFormer's ExternalAttention ends with that
    reshape and the next one reads ``x.shape[0]`` as its conv ``groups``: with
    the batch lost, even a fixed-batch export failed. Only the build-time shape
    changes (the op and its runtime result do not). Used when the export has a
    fixed batch size (``old_ir_export(infer_reshape_dims=True)``); exports with
    a dynamic batch stay exactly as paddle builds them.
    """
    original = paddle.reshape

    @paddle.jit.not_to_static  # see "DNLNet hang" in old_ir_export
    def reshape(x, shape, name=None):
        out = original(x, shape, name=name)
        if _static_var(x) and _static_var(out):
            dim = _reshape_inferred_dim(list(x.shape), shape)
            dims = list(out.shape)
            if dim is not None and len(dims) == len(shape) and dims[list(shape).index(-1)] < 0:
                dims[list(shape).index(-1)] = dim
                out.desc.set_shape(dims)
        return out

    return {"reshape": (original, reshape)}

