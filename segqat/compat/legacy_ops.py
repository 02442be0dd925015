"""Paddle-version workarounds, all in one place.

Every workaround here is scoped (a context manager or a small function that
callers opt into) and names the Paddle/PaddleSeg problem it works around.
Supporting another Paddle version (2.6.2 is next) should only touch this file.

Workarounds for paddle 3.3.1 + paddleseg 2.8.0:

* ``old_ir_export()``: write the old ``model.pdmodel`` format. New-IR
  (``model.json``) programs with ``bilinear_interp`` cannot run with oneDNN
  (PaddlePaddle/Paddle#79749: ``ConvertPirAttribute2RuntimeAttribute not
  support [pir::ArrayAttribute<pir::DoubleAttribute>]``), and the QAT export
  fails under the new IR. Under ``paddle.pir_utils``' old-IR switch, paddle
  3.3 still binds ``paddle.sigmoid``, ``argmax``, ``multiply``, ``sum``, ...
  straight to new-IR ops (``generated_tensor_methods_patch.py``), which fails
  with ``sigmoid(): argument (position 1) must be Value, but got Variable``
  (DANet, EMANet: ``bmm``). Inside the guard every such name, taken from
  paddle's own binding tables, builds its legacy op generically (paddle's
  signature + the legacy OpProto + paddle's op_compat name map), with a
  small commented table of exceptions; ``F.normalize``'s broken old-IR
  branch is replaced; ``paddle.concat`` promotes 0-d inputs to shape [1] as
  paddle 2.4 did (ISANet's padding: paddleseg 2.8 predates 0-d tensors); the
  rerouted functions are ``not_to_static`` (else dy2static deadlocks on its
  own cache lock: the DNLNet hang); a watchdog bounds the export and errors
  name the layer and op being traced.
* ``CrossEntropyLoss``: paddleseg 2.8's ``_post_process_loss`` multiplies a
  float loss by an int64 mask, which paddle 3.x rejects ("Type promotion only
  support calculations between floating-point numbers"). ``LOSS_OVERRIDES``
  maps the name to a subclass that casts the mask; ``OhemCrossEntropyLoss``
  adds an int64 mask to float probabilities, same error, same remedy.
* ``native_output()``: the oneDNN INT8 passes print to stderr from C++
  even with glog off; predictors are created inside it.
* ``SFNet``: paddleseg 2.8's ``flow_warp`` divides a float32 flow by an int64
  size (same error); ``model_overrides`` maps the name to a subclass whose
  AlignedModules cast the size.
* ``scalar(t)``: ``float(t)`` on a shape-[1] tensor raises under numpy 2.x
  ("only 0-dimensional arrays can be converted to Python scalars").
* ``fold_constant_dequantize(dir)``: an INT8 export's int8 constants outside
  a weight input (GINet's class embedding) stored as float, which Paddle
  Inference's oneDNN INT8 passes would feed to a matmul as int8.
* QAT export: paddle's ONNX-format save turns paddleslim's output observers
  into rounding quantize/dequantize pairs; they are written as observers
  (``_output_observers_stay_identity``), so the export computes what QAT
  trained. A conv whose filter is computed in the forward pass (RTFormer)
  is a matmul when 1x1: as conv3d, oneDNN reused the first run's filter.
* ``guard_overwritten_scales(program)``: oneDNN's scale propagation gave an
  average pool's output its input's (far wider) scale and a concat input the
  concat output's; INT8 exports give such a tensor's quantizers an ``assign`` of
  their own, and the Paddle predictor guards older exports in a private copy.
* ``configure_inference(config)``: deletes the Paddle Inference passes that
  compute wrong results or crash (``BROKEN_INFERENCE_PASSES``).
* ``residual_fusions(optimized program)``: INT8 convolutions with a fused
  residual of the other 8-bit type, which oneDNN adds wrongly, and quantized
  convolutions the fusion left in FP32; the predictor then runs without
  ``INT8_RESIDUAL_FUSE_PASS`` (for the second, when deploy.yaml asks).
* ``undilate_same_convs(desc)``: Paddle runs padding="same" convolutions
  undilated whatever their dilation; the program OpenVINO and paddle2onnx read
  says so explicitly.
"""
import contextlib
import functools
import logging
import os
import sys

import numpy as np  # noqa: F401  (import numpy before paddle: paddle 2.6.2 zlib clash)
import paddle
import paddle.nn.functional as F

logger = logging.getLogger(__name__)

PADDLE_VERSION = paddle.__version__


# paddle 3.3.1's ImperativeQuantAware(fuse_conv_bn=True), which paddleslim's QAT config
# passes on, does not fold: quantization/imperative/fuse_utils.fuse_conv_bn folds a deep copy
# (fuse_layers(..., inplace=False)) and drops it. segqat folds itself (quant.fold_batch_norms)
# and always gives paddleslim fuse_conv_bn=False; tests/test_quant_options.py checks both.
def paddleslim_qat_config(cfg):
    """paddleslim QAT config with paddle's no-op folding switched off (see above)."""
    return dict(cfg, fuse_conv_bn=False)


def scalar(t):
    """Python float of a 0-d or 1-element tensor (numpy 2.x safe)."""
    return float(np.asarray(t.numpy()).reshape(-1)[0])


def set_cpu_threads(n):
    """Math-library threads for dygraph on CPU (paddle has no public API for it)."""
    paddle.base.core.set_num_threads(int(n))


# ---------------------------------------------------------------- old-IR export

class ExportError(RuntimeError):
    """A model that cannot be written as an old-IR program; says which layer and op."""


def _new_ir_only_names():
    """API names paddle 3.3.1 binds straight to C++ ops that take no old-IR ``Variable``.

    Derived from paddle itself: the tables ``monkey_patch_generated_methods_for_tensor``
    applies (``methods_map``/``funcs_map``/``nn_funcs_map`` in
    ``paddle/base/dygraph/generated_tensor_methods_patch.py``) plus any public
    ``paddle``/``paddle.tensor``/``paddle.nn.functional`` name that *is* a
    ``paddle._C_ops`` builtin (``from paddle._C_ops import bmm`` in
    ``paddle/tensor/linalg.py``). In 3.3.1 both give the same 53 names.
    """
    import paddle.tensor
    from paddle import _C_ops
    from paddle.base.dygraph import generated_tensor_methods_patch as gen
    names = {n for table in (gen.methods_map, gen.funcs_map, gen.nn_funcs_map) for n, _ in table}
    for module in (paddle, paddle.tensor, F):
        for n, v in vars(module).items():
            if not n.startswith("_") and callable(v) and getattr(_C_ops, n, None) is v:
                names.add(n)
    return sorted(names)


@functools.lru_cache(maxsize=None)
def _phi_to_legacy():
    """phi (new-IR) op name -> (legacy op type, its name map), from paddle's op_compat table.

    ``paddle/incubate/autograd/phi_ops_map.py`` is generated from paddle's
    ``op_compat.yaml`` and ships in the wheel: ``multiply`` -> ``elementwise_mul``,
    ``sum`` -> ``reduce_sum`` with ``axis`` -> ``dim`` and ``keepdim`` -> ``keep_dim``, ...
    Only legacy types with a registered OpProto (a kernel the old IR can run) count.
    """
    from paddle.base.framework import OpProtoHolder
    from paddle.incubate.autograd.phi_ops_map import op_map
    protos = OpProtoHolder.instance().op_proto_map
    out = {}
    for legacy, entry in op_map.items():
        if legacy in protos:
            out.setdefault(entry.get("phi_name", legacy), (legacy, entry))
    return out


# The genuine exceptions: phi arguments whose legacy form differs by more than a
# name. Each adapter rewrites the bound arguments (a dict) in place.
def _reduce_axis(args, axis_key="axis", all_key="reduce_all"):
    # phi: axis None / [] means all axes; legacy reduce_*: dim=[] + reduce_all=True, as
    # paddle 2.6's static branch wrote it (its kernel mapping ignores reduce_all when
    # dim is given: amin(dim=[0], reduce_all=True) reduced axis 0 only)
    axis = args.get(axis_key)
    if axis is None or (isinstance(axis, (list, tuple)) and len(axis) == 0):
        args[axis_key], args[all_key] = [], True
    else:
        args[axis_key] = [axis] if isinstance(axis, int) else list(axis)
        args[all_key] = False


def _adapt_reduce(args):
    _reduce_axis(args)
    if args.get("dtype") is not None:  # sum(dtype=...): legacy out_dtype is a VarType
        args["dtype"] = _var_type(args["dtype"])
    elif "dtype" in args:
        del args["dtype"]


def _adapt_logsumexp(args):
    # legacy logsumexp names its axis attribute ``axis`` (not ``dim``), same all-axes rule
    _reduce_axis(args)


def _adapt_arg_max(args):
    # phi argmax(axis=None) flattens; legacy arg_max has flatten/axis/keepdims/dtype attrs
    args["flatten"] = args.get("axis") is None
    args["axis"] = 0 if args.get("axis") is None else args["axis"]
    args["keepdims"] = args.pop("keepdim", False)
    args["dtype"] = _var_type(args.get("dtype") or "int64")


def _adapt_roll(args):
    shifts = args.get("shifts")
    args["shifts"] = [shifts] if isinstance(shifts, int) else shifts
    axis = args.get("axis")
    args["axis"] = [] if axis is None else ([axis] if isinstance(axis, int) else list(axis))


def _adapt_isclose(args):
    # legacy isclose keeps rtol/atol as string attributes (op_compat: data_type std::string)
    for k in ("rtol", "atol"):
        if not isinstance(args.get(k), paddle.base.framework.Variable):
            args[k] = str(args[k])


def _adapt_expand_as(args):
    # legacy expand_as_v2 infers its shape from a target_shape attribute (paddle 2.6's
    # static branch set it from y.shape), not from Y
    args["target_shape"] = list(args["y"].shape)


def _adapt_gelu(args):
    # phi gelu takes approximate='tanh'/'none' or a bool; the legacy attr is a bool
    args["approximate"] = args.get("approximate") in (True, "tanh")


_ADAPTERS = {
    "sum": _adapt_reduce, "all": _adapt_reduce, "any": _adapt_reduce,
    "amax": _adapt_reduce, "amin": _adapt_reduce,
    "logsumexp": _adapt_logsumexp,
    "argmax": _adapt_arg_max, "argmin": _adapt_arg_max,
    "roll": _adapt_roll, "isclose": _adapt_isclose, "gelu": _adapt_gelu,
    "expand_as": _adapt_expand_as,
}
# phi ops whose legacy op is a different op with a fixed attribute (op_compat has
# no entry: ``tril``/``triu`` became one legacy ``tril_triu`` with ``lower``).
_LEGACY_SPECIAL = {
    "tril": ("tril_triu", {"lower": True}),
    "triu": ("tril_triu", {"lower": False}),
}


def _producer(var):
    """The op in ``var``'s block that last wrote ``var`` (None for feeds and parameters)."""
    for op in reversed(var.block.ops):
        if var.name in op.output_arg_names:
            return op
    return None


def _fold_reshape_transpose(args):
    """matmul(transpose(reshape(a), perm swapping the last two axes), b) -> matmul(reshape(a), b, transpose_x).

    Workaround for a Paddle Inference 3.3.1 bug: ``reshape_transpose_matmul_onednn_fuse_pass``
    (in the default CPU pass list, with or without ``enable_onednn``) turns reshape2 ->
    transpose2 -> matmul_v2 into one ``fused_matmul`` with ``fused_reshape_X`` /
    ``fused_transpose_X``, which reads a convolution's output wrongly: conv ->
    reshape([0, C, -1]) -> transpose([0, 2, 1]) -> matmul was up to 25 off at C=16, and ANN's
    AFNB/APNB query path (logits 1834 off, 70% argmax agreement). The program the old-IR
    executor runs is right; only the fused op is wrong. Folding the transpose into the
    matmul's own transpose flag (same result) leaves no transpose2 for the pass to match;
    the orphaned transpose2 is pruned by the inference-model save.
    """
    from paddle.base.framework import Variable
    for arg, flag in (("x", "transpose_x"), ("y", "transpose_y")):
        v = args.get(arg)
        if not isinstance(v, Variable) or len(v.shape) < 2:
            continue
        op = _producer(v)
        if op is None or op.type != "transpose2":
            continue
        n = len(v.shape)
        if list(op.attr("axis")) != list(range(n - 2)) + [n - 1, n - 2]:
            continue
        src = op.block._find_var_recursive(op.input("X")[0])
        src_op = _producer(src) if src is not None else None
        if src_op is None or src_op.type != "reshape2":
            continue  # only the pattern the broken pass fuses
        args[arg] = src
        args[flag] = not bool(args.get(flag))


def _var_type(dtype):
    from paddle.base.framework import convert_np_dtype_to_dtype_
    return convert_np_dtype_to_dtype_(dtype) if not isinstance(dtype, paddle.base.core.VarDesc.VarType) \
        else dtype


def _api_signature(name):
    """The documented signature of ``paddle.<name>`` (paddle sets ``__signature__`` on its builtins)."""
    import inspect
    for obj in (paddle, F, paddle.Tensor):
        f = getattr(obj, name, None)
        if f is not None:
            try:
                return inspect.signature(f)
            except (TypeError, ValueError):
                continue
    return None


class _Tracing:
    """Which layer the old-IR export is tracing (forward pre/post hooks), for error messages."""

    def __init__(self):
        self.stack = []
        self.last_op = None

    def enter(self, label):
        def hook(layer, inputs):
            self.stack.append(label)  # returns None: the inputs stay as they are
        return hook

    def leave(self, layer, inputs, outputs):
        if self.stack:
            self.stack.pop()  # returns None: the outputs stay as they are

    def where(self):
        layer = self.stack[-1] if self.stack else "the exported model"
        op = f", last op built: {self.last_op}" if self.last_op else ""
        return f"layer {layer}{op}"


_TRACING = _Tracing()


def _legacy_op(name, original):
    """A function that appends the legacy op for API ``name`` when given old-IR Variables.

    Built generically: the arguments are bound to paddle's documented signature,
    tensor arguments go to the legacy OpProto's input slots and the others to its
    attributes through paddle's op_compat name map; ``_ADAPTERS`` and
    ``_LEGACY_SPECIAL`` cover the few that differ by more than a name. Anything
    else (dygraph tensors, PIR values) goes to paddle's own function.
    """
    from paddle.base.framework import OpProtoHolder, Variable
    from paddle.base.layer_helper import LayerHelper

    sig = _api_signature(name)
    if name in _LEGACY_SPECIAL:
        op_type, fixed = _LEGACY_SPECIAL[name]
        entry = {}
    else:
        op_type, entry = _phi_to_legacy().get(name, (name, {}))
        fixed = {}
    protos = OpProtoHolder.instance().op_proto_map
    proto = protos.get(op_type)
    in_map, attr_map = entry.get("inputs", {}), dict(entry.get("attrs", {}))
    tensor_attr = {k: v["tensor_name"] for kind in ("scalar", "int_array")
                   for k, v in entry.get(kind, {}).items() if "tensor_name" in v}
    if name in ("sum", "all", "any", "amax", "amin"):
        attr_map.setdefault("axis", "dim")
        attr_map.setdefault("keepdim", "keep_dim")
        attr_map.setdefault("dtype", "out_dtype")

    def unsupported(why):
        raise ExportError(f"old-IR export: {name}() at {_TRACING.where()} has no legacy op: {why}")

    @paddle.jit.not_to_static  # run as-is: see "DNLNet hang" in old_ir_export
    def fn(*args, **kwargs):
        tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, Variable)]
        if not tensors:
            return original(*args, **kwargs)
        _TRACING.last_op = f"paddle.{name} -> legacy {op_type}"
        if proto is None:
            unsupported(f"no legacy OpProto '{op_type}' is registered in paddle {PADDLE_VERSION}")
        if sig is None:
            unsupported("paddle gives no signature for it")
        try:
            bound = sig.bind(*args, **kwargs)
        except TypeError as e:
            unsupported(f"arguments do not fit {name}{sig}: {e}")
        bound.apply_defaults()
        vals = {k: v for k, v in bound.arguments.items() if k not in ("name", "out")}
        if bound.arguments.get("out") is not None:
            unsupported("out= is not supported in a static program")
        if name in _ADAPTERS:
            _ADAPTERS[name](vals)
        if name == "matmul":
            _fold_reshape_transpose(vals)
        slots = {i.name: i for i in proto.inputs}
        lower_slots = {s.lower(): s for s in slots}
        attr_names = {a.name for a in proto.attrs}
        first = tensors[0]
        inputs, attrs = {}, dict(fixed)
        for arg, v in vals.items():
            # a tensor slot: op_compat says so, or paddle's signature types the argument
            # as a Tensor and the OpProto has a slot of that name (isclose's ``atol`` is a
            # float argument although the legacy op also has an ``Atol`` tensor slot)
            slot = in_map.get(arg) or (lower_slots.get(arg.lower()) if "Tensor" in str(
                getattr(sig.parameters.get(arg), "annotation", "")) else None)
            if slot in slots:
                if not isinstance(v, Variable) and not (
                        isinstance(v, (list, tuple)) and v and all(isinstance(t, Variable) for t in v)):
                    if v is None:
                        continue
                    # a Python number where the op takes a tensor (paddle.multiply(x, 2))
                    v = paddle.full([1], v, dtype=first.dtype)
                inputs[slot] = v
                continue
            if isinstance(v, Variable) and tensor_attr.get(arg) in slots:
                inputs[tensor_attr[arg]] = v  # e.g. roll(shifts=<tensor>) -> ShiftsTensor
                continue
            attr = attr_map.get(arg, arg)
            if attr in attr_names:
                if isinstance(v, str) and attr in ("dtype", "out_dtype"):
                    v = _var_type(v)
                attrs[attr] = v
            elif v is not None and v is not False and getattr(sig.parameters.get(arg), "default", None) != v:
                unsupported(f"argument {arg}={v!r} has no attribute in legacy {op_type} "
                            f"(attributes: {', '.join(sorted(a for a in attr_names if not a.startswith('op_')))})")
        helper = LayerHelper(op_type)
        outputs = {o.name: helper.create_variable_for_type_inference(dtype=first.dtype)
                   for o in proto.outputs if not o.dispensable and not o.extra}
        try:
            helper.append_op(type=op_type, inputs=inputs, outputs=outputs, attrs=attrs)
        except Exception as e:
            raise ExportError(f"old-IR export: legacy {op_type} for paddle.{name} at "
                              f"{_TRACING.where()} failed: {type(e).__name__}: "
                              f"{(str(e).strip().splitlines() or [''])[0][:300]}") from e
        out_slot = (entry.get("outputs") or {}).get("out") or next(iter(outputs))
        out = outputs[out_slot]
        if name in ("argmax", "argmin"):
            out.stop_gradient = True
        return out

    fn.__name__ = f"legacy_{name}"
    fn.__qualname__ = fn.__name__
    return fn


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
        _TRACING.last_op = "F.normalize -> legacy p_norm, elementwise_max, elementwise_div"
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
            _TRACING.last_op = "paddle.concat of 0-d tensors -> reshape([1]) + concat"
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
        op = _producer(var)
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
                              f"{_TRACING.where()}: expected an int or 2 ints")
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
                    f"old-IR export: F.conv2d({k}=<tensor>) at {_TRACING.where()}: {k} must be a "
                    f"Python int, but the model computes it from a tensor shape the program does "
                    f"not know while it is built (a dynamic batch size makes x.shape[0] a tensor; "
                    f"RTFormer's cross attention uses groups=batch size). Export with a fixed "
                    f"batch size: --input_shape 1 C -1 -1, or 'export: {{input_shape: [1, C, -1, "
                    f"-1]}}' in the config.")
        if not (_static_var(a["x"]) and _static_var(a["weight"])) or _stored_weight(a["weight"]):
            return original(*args, **kwargs)
        pad = a["padding"]
        if _is_plain_1x1(a["weight"], a["stride"], pad, a["dilation"]) and a["data_format"] == "NCHW":
            _TRACING.last_op = "F.conv2d with a computed 1x1 filter -> matmul"
            return _conv1x1_as_matmul(a["x"], a["weight"], a["bias"], a["groups"])
        _TRACING.last_op = "F.conv2d with a computed filter -> conv3d"
        logger.warning("old-IR export: F.conv2d with a computed %s filter at %s is written as conv3d; "
                       "oneDNN reuses the filter of a predictor's first run for later inputs (see "
                       "compat._conv2d_for_export): check the deployed output on several images",
                       "x".join(str(d) for d in a["weight"].shape[2:]), _TRACING.where())
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
                              f"{_TRACING.where()} is not supported")
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


def _ir_graph_links_unchecked():
    """``IrGraph`` link methods without their membership asserts, as ``python -O`` runs them.

    ``link_to``, ``update_input_link`` and ``update_output_link``
    (paddle/base/framework.py) assert ``node.node in self.graph.nodes()``,
    and ``nodes()`` copies every node of the graph into a new Python set on
    each call (14 ms for HRNet-W18's QAT program). paddle's
    ``ReplaceFakeQuantDequantPass`` links 8 times per fake-quant op: the
    ONNX-format QAT export of FCN-HRNet_W18 (921 such ops) spent 305 of its
    455 s in these checks (cProfile; 15,662 ``nodes()`` calls), OCRNet's
    likewise (the zoo's >7 min INT8 exports). The bodies are paddle's own.
    """
    def link_to(self, node_in, node_out):
        node_in.append_output(node_out)
        node_out.append_input(node_in)

    def update_input_link(self, old_input_node, new_input_node, op_node):
        old_input_node.remove_output(op_node)
        op_node.remove_input(old_input_node)
        new_input_node.append_output(op_node)
        op_node.append_input(new_input_node)
        op_node.rename_input(old_input_node.name(), new_input_node.name())

    def update_output_link(self, old_output_node, new_output_node, op_node):
        old_output_node.remove_input(op_node)
        op_node.remove_output(old_output_node)
        new_output_node.append_input(op_node)
        op_node.append_output(new_output_node)
        op_node.rename_output(old_output_node.name(), new_output_node.name())

    return {"link_to": link_to, "update_input_link": update_input_link,
            "update_output_link": update_output_link}


def _output_observers_stay_identity():
    """paddle's QAT export without rounding where QAT only observed.

    paddleslim's QAT wraps each quantized layer in ``MAOutputScaleLayer``,
    whose ``MovingAverageAbsMaxScale`` only records the output's range: in
    training and in the fake-quant model the output passes unchanged. The
    ONNX-format export (``ReplaceFakeQuantDequantPass._replace_op``,
    paddle/static/quantization/quantization_pass.py) turns that observer into
    a plain quantize_linear/dequantize_linear pair, so the exported program
    rounds every quantized layer's output to 8 bits, which the trained model
    never did. Measured on the zoo's PP-MobileSeg: the INT8 export run by
    paddle's own executor agreed with its fake-quant model on 87-98% of an
    image's pixels. (Where a quantized layer's output feeds the next quantized
    layer directly, paddle drops that layer's input quantizer and lets this
    pair round instead, with the producer's scale: such a pair stays.) Here
    every other pair is written with ``only_observer=True``, as
    paddle's PTQ export writes its observers: Paddle runs it as identity, the
    scale stays in the program for the runtimes that read it, and OpenVINO and
    the ONNX writer drop it (``drop_observer_only_quant``).
    """
    from paddle.static.quantization import quantization_pass as qp
    original = qp.ReplaceFakeQuantDequantPass._replace_op

    def _replace_op(self, graph, op):
        if op.name() != "moving_average_abs_max_scale":
            return original(self, graph, op)
        out = graph._find_node_by_name(op.outputs, op.output("Out")[0])
        if any(n.name() in qp._fake_quant_dequant_op_list for n in out.outputs):
            # the next layer's input quantizer was dropped in favour of this pair
            # (apply(): a quantizer reading an observer's output): it must round
            return original(self, graph, op)
        create = graph.create_op_node

        def create_op_node(op_type, attrs, inputs, outputs):
            if op_type in ("quantize_linear", "dequantize_linear"):
                attrs = {**attrs, "only_observer": True}
            return create(op_type, attrs, inputs, outputs)

        graph.create_op_node = create_op_node
        try:
            return original(self, graph, op)
        finally:
            del graph.create_op_node

    return qp.ReplaceFakeQuantDequantPass, {"_replace_op": _replace_op}


def _module_refs(originals):
    """(holder, attribute) pairs in loaded modules that point at one of ``originals``.

    Modules bind these functions under their own names (``from paddle._C_ops
    import bmm`` in ``paddle/tensor/linalg.py``, ``from paddle import sigmoid`` in
    a model file); each such reference must be rerouted, not only ``paddle.X``.
    """
    import sys
    skip = {"paddle._C_ops", "paddle.base.dygraph.generated_tensor_methods_patch",
            "paddle._paddle_docs", __name__}
    refs = []
    for mod_name, mod in list(sys.modules.items()):
        if mod is None or mod_name in skip or mod_name.startswith("paddle.base.core"):
            continue
        try:
            items = list(vars(mod).items())
        except TypeError:
            continue
        for attr, value in items:
            target = originals.get(id(value))
            if target is not None and value is target[1]:
                refs.append((mod, attr, target[0]))
    return refs


@contextlib.contextmanager
def _watchdog(seconds):
    """Raise ExportError in the main thread after ``seconds`` (SIGALRM; POSIX main thread only).

    Lock waits are interruptible in Python 3, so even a deadlock inside
    dy2static ends with an error naming the layer being traced. Elsewhere
    (another thread, Windows) there is no watchdog and a warning says so.
    """
    import signal
    import threading
    if not seconds or threading.current_thread() is not threading.main_thread() \
            or not hasattr(signal, "SIGALRM"):
        if seconds:
            logger.warning("old-IR export runs without its %s s watchdog (not the main thread)", seconds)
        yield
        return

    def on_alarm(signum, frame):
        raise ExportError(f"old-IR export did not finish within {seconds} s; it was tracing "
                          f"{_TRACING.where()}")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


EXPORT_TIMEOUT_S = 900  # the largest registry model (HRNet-W48 OCRNet, QAT) takes minutes here


@contextlib.contextmanager
def old_ir_export(model=None, timeout=EXPORT_TIMEOUT_S, infer_reshape_dims=False):
    """Build and save static programs in the old IR (``model.pdmodel``).

    Workaround for PaddlePaddle/Paddle#79749 (oneDNN cannot run new-IR
    programs with bilinear_interp) and for paddle 3.x binding ``paddle.bmm``,
    ``sigmoid``, ``sum``, ``argmax`` & co. straight to C++ ops that reject an
    old-IR Variable (``bmm(): argument (position 1) must be Value, but got
    Variable``). Inside the guard every such name (``_new_ir_only_names``:
    module functions, ``Tensor``/``Variable`` methods and every module-level
    reference to them) builds its legacy op instead (``_legacy_op``). Create
    the wrapper layers before entering; call ``paddle.jit.save`` (or
    paddleslim's ``save_quantized_model``) inside.

    DNLNet hang (fixed here): dy2static's AST pass evaluates callee
    expressions such as ``_jst.Call(paddle.matmul)`` while it holds its
    non-reentrant ``_CACHE_LOCK`` (``program_translator.convert_to_static``).
    A plain Python function on ``paddle.matmul`` made that ``convert_call``
    convert it, taking the same lock: a self-deadlock at 0% CPU. The legacy
    functions are ``paddle.jit.not_to_static``, so ``convert_call`` returns
    them untouched. ``timeout`` (seconds, main thread) bounds any other hang
    with an ExportError naming the layer being traced; ``model``'s layers are
    hooked so that errors name the layer. paddle's IrGraph link methods run
    without their O(graph) membership asserts (``_ir_graph_links_unchecked``:
    the QAT export's post-processing took minutes on HRNet).
    ``infer_reshape_dims``: reshapes also infer their ``-1`` at build time
    where copied dims cancel (``_reshape_static_dims``; for exports with a
    fixed batch size).
    """
    from paddle.base import framework
    from paddle.pir_utils import _switch_to_old_ir_, _switch_to_pir_

    names = _new_ir_only_names()
    originals, legacy = {}, {}
    for n in names:
        orig = getattr(paddle, n, None) or getattr(F, n, None) or getattr(paddle.Tensor, n, None)
        legacy[n] = _legacy_op(n, orig)
        for holder in (paddle, paddle.tensor, F, paddle.Tensor, paddle._C_ops):
            v = getattr(holder, n, None)
            if v is not None:
                originals[id(v)] = (legacy[n], v)
        # the wrappers ``_bmm`` & co. that paddle put on paddle.X / Tensor.X
    from paddle.base.dygraph import generated_tensor_methods_patch as gen
    for table in (gen.methods_map, gen.funcs_map, gen.nn_funcs_map):
        for n, f in table:
            if n in legacy:
                originals[id(f)] = (legacy[n], f)
    replaced = {**_broken_old_ir_branches(), **_zero_d_promotions(), **_conv2d_for_export()}
    if infer_reshape_dims:
        replaced.update(_reshape_static_dims())
    for orig, fixed in replaced.values():
        originals[id(orig)] = (fixed, orig)

    saved = []
    hooks = []
    pir_flag = paddle.get_flags("FLAGS_enable_pir_api")["FLAGS_enable_pir_api"]
    if pir_flag:
        paddle.set_flags({"FLAGS_enable_pir_api": False})
        _switch_to_old_ir_()
    _TRACING.stack, _TRACING.last_op = [], None
    try:
        for mod, attr, fn in _module_refs(originals):
            saved.append((mod, attr, getattr(mod, attr)))
            setattr(mod, attr, fn)
        # methods: x.sum(), x.bmm(y) on a Variable (old IR) or eager Tensor
        for cls in (framework.Variable, paddle.base.core.eager.Tensor):
            for n, fn in legacy.items():
                if n in vars(cls) or hasattr(cls, n):
                    saved.append((cls, n, cls.__dict__.get(n, getattr(cls, n))))
                    setattr(cls, n, fn)
        for n, fn in _ir_graph_links_unchecked().items():
            saved.append((framework.IrGraph, n, framework.IrGraph.__dict__[n]))
            setattr(framework.IrGraph, n, fn)
        cls, methods = _output_observers_stay_identity()
        for n, fn in methods.items():
            saved.append((cls, n, cls.__dict__[n]))
            setattr(cls, n, fn)
        # x.reshape(...) on a Variable is paddle.reshape itself (paddle's monkey_patch_variable)
        for n, (orig, fixed) in replaced.items():
            if framework.Variable.__dict__.get(n) is orig:
                saved.append((framework.Variable, n, orig))
                setattr(framework.Variable, n, fixed)
        if model is not None:
            for lname, layer in model.named_sublayers(include_self=True):
                label = f"{lname or type(model).__name__} ({type(layer).__name__})"
                hooks.append(layer.register_forward_pre_hook(_TRACING.enter(label)))
                hooks.append(layer.register_forward_post_hook(_TRACING.leave))
        with _watchdog(timeout):
            try:
                yield
            except ExportError:
                raise
            except Exception as e:
                raise ExportError(f"old-IR export failed at {_TRACING.where()}: {type(e).__name__}: "
                                  f"{str(e).strip()[:2000]}") from e
    finally:
        for h in hooks:
            h.remove()
        for holder, attr, orig in reversed(saved):
            setattr(holder, attr, orig)
        if pir_flag:
            paddle.set_flags({"FLAGS_enable_pir_api": True})
            _switch_to_pir_()


# ---------------------------------------------------------------- losses

def _fixed_cross_entropy():
    from paddleseg.models.losses import CrossEntropyLoss

    class CrossEntropyLossFixed(CrossEntropyLoss):
        """paddleseg 2.8 CrossEntropyLoss with the mask cast to the loss dtype."""

        def _post_process_loss(self, logit, label, semantic_weights, loss):
            mask = label != self.ignore_index
            mask = paddle.cast(mask, loss.dtype)
            label.stop_gradient = True
            mask.stop_gradient = True
            if loss.ndim > mask.ndim:
                loss = paddle.squeeze(loss, axis=-1)
            loss = loss * mask
            if semantic_weights is not None:
                loss = loss * semantic_weights
            if self.weight is not None:
                _one_hot = F.one_hot(label * paddle.cast(mask, label.dtype), logit.shape[-1])
                coef = paddle.sum(_one_hot * self.weight, axis=-1)
            else:
                coef = paddle.ones_like(label, dtype=loss.dtype)
            if self.top_k_percent_pixels == 1.0:
                return paddle.mean(loss) / (paddle.mean(mask * coef) + self.EPS)
            loss = loss.reshape((-1,))
            top_k_pixels = int(self.top_k_percent_pixels * loss.numel())
            loss, indices = paddle.topk(loss, top_k_pixels)
            coef = coef.reshape((-1,))
            coef = paddle.gather(coef, indices)
            coef.stop_gradient = True
            coef = coef.astype("float32")
            return loss.mean() / (paddle.mean(coef) + self.EPS)

    CrossEntropyLossFixed.__name__ = "CrossEntropyLoss"
    return CrossEntropyLossFixed


def _fixed_ohem_cross_entropy():
    from paddleseg.models.losses import OhemCrossEntropyLoss

    class OhemCrossEntropyLossFixed(OhemCrossEntropyLoss):
        """paddleseg 2.8 OhemCrossEntropyLoss with ``prob + (1 - valid_mask)`` in float.

        The original adds an int64 mask to float probabilities, which paddle 3.x
        rejects ("Type promotion only support calculations between
        floating-point numbers ... float32, int64"). Same algorithm otherwise.
        """

        def forward(self, logit, label):
            if len(label.shape) != len(logit.shape):
                label = paddle.unsqueeze(label, 1)
            n, c, h, w = logit.shape
            label = label.reshape((-1,)).astype("int64")
            valid_mask = (label != self.ignore_index).astype("int64")
            num_valid = valid_mask.sum()
            label = label * valid_mask
            prob = F.softmax(logit, axis=1)
            prob = prob.transpose((1, 0, 2, 3)).reshape((c, -1))
            if self.min_kept < num_valid and num_valid > 0:
                prob = prob + (1 - valid_mask).astype(prob.dtype)  # ignored pixels: prob > 1
                label_onehot = F.one_hot(label, c).transpose((1, 0))
                prob = paddle.sum(prob * label_onehot, axis=0)
                threshold = self.thresh
                if self.min_kept > 0:
                    index = prob.argsort()
                    threshold_index = int(index[min(len(index), self.min_kept) - 1].item())
                    if prob[threshold_index] > self.thresh:
                        threshold = prob[threshold_index]
                    kept_mask = (prob < threshold).astype("int64")
                    label = label * kept_mask
                    valid_mask = valid_mask * kept_mask
            label = label + (1 - valid_mask) * self.ignore_index
            label = label.reshape((n, 1, h, w))
            valid_mask = valid_mask.reshape((n, 1, h, w)).astype("float32")
            loss = F.softmax_with_cross_entropy(logit, label, ignore_index=self.ignore_index, axis=1)
            loss = loss * valid_mask
            label.stop_gradient = True
            valid_mask.stop_gradient = True
            return paddle.mean(loss) / (paddle.mean(valid_mask) + self.EPS)

    OhemCrossEntropyLossFixed.__name__ = "OhemCrossEntropyLoss"
    return OhemCrossEntropyLossFixed


@functools.lru_cache(maxsize=None)
def loss_overrides():
    """Loss classes that replace paddleseg's registry entries on this Paddle (made once)."""
    return {"CrossEntropyLoss": _fixed_cross_entropy(),
            "OhemCrossEntropyLoss": _fixed_ohem_cross_entropy()}


# ---------------------------------------------------------------- models

def _fixed_sfnet():
    import inspect
    from paddleseg.models import sfnet

    class AlignedModuleFixed(sfnet.AlignedModule):
        """paddleseg 2.8 AlignedModule with the flow divided by a float size.

        ``flow_warp`` divides the float32 flow by ``paddle.shape(x)[2:]``, an int64
        tensor, which paddle 3.x rejects: ``Type promotion only support calculations
        between floating-point numbers and between complex and real numbers. But got
        different data type x: float32, y: int64``. The same code with the size cast
        to the flow's dtype (paddleseg/models/sfnet.py, flow_warp).
        """

        def flow_warp(self, input, flow, size):
            input_shape = paddle.shape(input)
            norm = size[::-1].reshape([1, 1, 1, -1]).astype(flow.dtype)  # the fix
            norm.stop_gradient = True
            h_grid = paddle.linspace(-1.0, 1.0, size[0]).reshape([-1, 1])
            h_grid = h_grid.tile([size[1]])
            w_grid = paddle.linspace(-1.0, 1.0, size[1]).reshape([-1, 1])
            w_grid = w_grid.tile([size[0]]).transpose([1, 0])
            grid = paddle.concat([w_grid.unsqueeze(2), h_grid.unsqueeze(2)], axis=2)
            grid.unsqueeze(0).tile([input_shape[0], 1, 1, 1])  # unused, as in paddleseg
            grid = grid + paddle.transpose(flow, (0, 2, 3, 1)) / norm
            return F.grid_sample(input, grid)

    class SFNetFixed(sfnet.SFNet):
        """paddleseg 2.8 SFNet whose AlignedModules warp with ``AlignedModuleFixed``.

        Same layers, parameter names and initialisation: only the class of the
        built AlignedModules changes (a subclass that overrides ``flow_warp``).
        """

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            for layer in self.sublayers():
                if type(layer) is sfnet.AlignedModule:
                    layer.__class__ = AlignedModuleFixed

    SFNetFixed.__init__.__signature__ = inspect.signature(sfnet.SFNet.__init__)  # arg checks
    SFNetFixed.__name__ = "SFNet"
    return SFNetFixed


@functools.lru_cache(maxsize=None)
def model_overrides():
    """Model classes that replace paddleseg's registry entries on this Paddle (made once)."""
    return {"SFNet": _fixed_sfnet()}


@contextlib.contextmanager
def old_ir_static():
    """Static-graph mode on the old IR (``model.pdmodel`` programs), restored on exit.

    paddle 3.3.1 runs static programs in the new IR (PIR) by default, and
    ``static.load_inference_model`` then looks for ``model.json``; paddle's
    PostTrainingQuantization and its IrGraph passes (used by PTQ) only work
    on old-IR programs. ``paddle.pir_utils.OldIrGuard`` switches both and
    restores dygraph + PIR on exit, errors included.
    """
    from paddle.pir_utils import OldIrGuard
    with OldIrGuard():
        yield


# ---------------------------------------------------------------- conv bias axis

def fix_conv_bias_axis(pdmodel_path):
    """Rewrite conv biases in a saved old-IR program so oneDNN can fuse them.

    paddle 3.x's old-IR export adds a conv bias as ``reshape2(b)`` followed by
    ``elementwise_add(axis=-1)``. Paddle's own oneDNN fuse passes
    (``conv_bias_onednn_fuse_pass``, ``conv_eltwiseadd_bn_fuse_pass``) reject
    ``axis=-1`` in their op-compat check ("Check the Attr(axis) of
    Op(elementwise_add) ... failed"), so neither the bias nor the following
    batch norm is folded into the (INT8) convolution: 53 of BiSeNetV2's batch
    norms stayed separate ops. Paddle 2.x wrote ``elementwise_add(X, b,
    axis=1)``; this restores that form. Only adds fed directly by a conv whose
    other input is the reshape of a 1-D persistable bias used nowhere else are
    touched. Returns the number of adds rewritten.
    """
    from paddle.base import core
    with open(pdmodel_path, "rb") as f:
        desc = core.ProgramDesc(f.read())
    blk = desc.block(0)  # keep ``desc`` alive while ``blk`` is used
    ops = [blk.op(i) for i in range(blk.op_size())]
    producer = {name: op for op in ops for name in op.output_arg_names()}
    users = {}
    for op in ops:
        for name in op.input_arg_names():
            users[name] = users.get(name, 0) + 1
    dead, count = set(), 0
    for op in ops:
        if op.type() != "elementwise_add" or op.attr("axis") != -1:
            continue
        reshape, conv = producer.get(op.input("Y")[0]), producer.get(op.input("X")[0])
        if (reshape is None or conv is None or reshape.type() != "reshape2"
                or conv.type() not in ("conv2d", "depthwise_conv2d")):
            continue
        bias = reshape.input("X")[0]
        var = blk.find_var(bias.encode())
        if (var is None or not var.persistable() or len(var.shape()) != 1
                or users.get(reshape.output("Out")[0], 0) != 1):
            continue
        op.set_input("Y", [bias])
        op._set_attr("axis", 1)
        dead.add(id(reshape))
        count += 1
    for i in reversed(range(blk.op_size())):
        if id(ops[i]) in dead:
            blk._remove_op(i, i + 1)
    with open(pdmodel_path, "wb") as f:
        f.write(desc.serialize_to_string())
    return count


# paddle 3.3.1's compute_propagate_scales_onednn_pass lists pool2d among its "scale
# immutable" ops and, when a pool's input has a quantization scale, gives the pool's
# output the input's scale even when the output has its own (UpdateScales: "else if
# (in_iter != end) var_quant_scales[output] = in_iter->second"). For an average pool the
# output range is far below the input's (a global pool averages a whole feature map), so
# the convolution reading the pooled tensor gets it quantized on a grid many times too
# coarse: DeepLabV3P's ASPP image-pooling branch (one convolution) made the deployed INT8
# model agree with fake quant on 96.8% of the clear-margin pixels. The same pass gives every
# input of a ``concat`` the concat output's scale (ANN's APNB concatenates its feature map
# with the far wider attention context: the convolution also reading that feature map was
# 7% off). An ``assign`` before the quantize ops of such a tensor gives them a tensor the
# pass leaves alone; the values do not change.
_SCALE_GUARD_SUFFIX = ".segqat_own_scale"


def guard_overwritten_scales(pdmodel_path, out_path=None):
    """Give each tensor whose quantization scale oneDNN's propagation would overwrite its
    own copy (an ``assign``) for its quantize_linear readers, so that oneDNN keeps the
    scale QAT/PTQ gave it (see above): the output of an average pool, and an input of a
    ``concat`` (the pass gives every concat input the concat output's scale: ANN's APNB
    concatenates its feature map with the far wider attention context).

    Writes the program to ``out_path`` (default: in place) when it changed; returns the
    number of tensors guarded (0 for a program that has none or is guarded already).
    """
    from paddle.base import core
    with open(pdmodel_path, "rb") as f:
        desc = core.ProgramDesc(f.read())
    count = 0
    for b in range(desc.num_blocks()):
        blk = desc.block(b)
        exposed = set()
        for i in range(blk.op_size()):
            op = blk.op(i)
            if op.type() == "pool2d" and op.attr("pooling_type") == "avg":
                exposed.add(op.output("Out")[0])
            elif op.type() == "concat":
                exposed.update(op.input("X"))
        i = 0
        while i < blk.op_size():
            op = blk.op(i)
            x = op.input("X")[0] if op.type() == "quantize_linear" else None
            if x not in exposed:
                i += 1
                continue
            guarded = x + _SCALE_GUARD_SUFFIX
            var, new = blk.find_var(x.encode()), blk.var(guarded.encode())
            new.set_type(var.type())
            new.set_dtype(var.dtype())
            new.set_shape(var.shape())
            assign = blk._insert_op(i)
            assign.set_type("assign")
            assign.set_input("X", [x])
            assign.set_output("Out", [guarded])
            for j in range(i + 1, blk.op_size()):
                r = blk.op(j)
                if r.type() == "quantize_linear" and r.input("X")[0] == x:
                    r._rename_input(x, guarded)
            exposed.discard(x)
            i += 2
            count += 1
    if count:
        with open(out_path or pdmodel_path, "wb") as f:
            f.write(desc.serialize_to_string())
        logger.info("%s: gave %d quantized tensor(s) whose scale oneDNN would overwrite (average-pool "
                    "outputs, concat inputs) a copy of their own (compat.guard_overwritten_scales)",
                    out_path or pdmodel_path, count)
    return count


def undilate_same_convs(desc):
    """Set to 1 the dilations of the convolutions with padding_algorithm "SAME" in a
    ProgramDesc (all blocks), and return how many changed.

    Paddle ignores a convolution's dilation under padding="same": it computes the padding
    for the undilated kernel and runs it undilated (conv(padding="same", dilation=2) ==
    conv(padding="same", dilation=1), checked; ESPNetV2 has 34 such convolutions). Other
    readers of the program apply the dilation: paddle2onnx writes it beside auto_pad SAME
    (ONNX Runtime refuses that: "Dilation not supported for AutoPad") and OpenVINO's Paddle
    frontend computes a dilated convolution (ESPNetV2's FP32 labels agreed with Paddle's on
    95.3%). Rewriting the program they read makes them run what Paddle runs."""
    count = 0
    for b in range(desc.num_blocks()):
        blk = desc.block(b)
        for i in range(blk.op_size()):
            op = blk.op(i)
            if (op.type() in ("conv2d", "depthwise_conv2d") and op.has_attr("padding_algorithm")
                    and op.attr("padding_algorithm") == "SAME" and any(d != 1 for d in op.attr("dilations"))):
                op._set_int32s_attr("dilations", [1] * len(op.attr("dilations")))
                count += 1
    return count


def drop_observer_only_quant(pdmodel_path, out_path=None):
    """Remove the observer-only quantize/dequantize pairs from a saved PTQ program.

    paddleslim 2.6's ``quant_post_static(onnx_format=True)`` writes, besides the
    real quantize/dequantize pairs of each quantized op, a pair with
    ``only_observer=True`` on many other tensors: Paddle runs them as identity
    (they only carry a scale), but OpenVINO's Paddle frontend refuses them
    ("Fail to convert dequantize_linear ... dims of scale should not be greater
    than 2"; their scales are 0-d). Consumers of each pair's output are rewired
    to its input; the scale variables stay in the program (the combined params
    file lists them). When pairs were removed, the result is written to
    ``out_path`` (default: in place).
    Paddle's own oneDNN INT8 passes do read those scales (on the synthetic
    BiSeNetV2, logits moved by up to 0.08 without them), so exports keep them
    and only the OpenVINO predictor reads a copy without. Returns the number of
    pairs removed.
    """
    from paddle.base import core
    with open(pdmodel_path, "rb") as f:
        desc = core.ProgramDesc(f.read())
    count = 0
    for b in range(desc.num_blocks()):
        blk = desc.block(b)
        ops = [blk.op(i) for i in range(blk.op_size())]
        producer = {name: op for op in ops for name in op.output_arg_names()}
        rename, dead = {}, set()
        for op in ops:
            if op.type() != "dequantize_linear" or not (op.has_attr("only_observer")
                                                        and op.attr("only_observer")):
                continue
            q = producer.get(op.input("X")[0])
            if q is None or q.type() != "quantize_linear" or not (
                    q.has_attr("only_observer") and q.attr("only_observer")):
                continue
            rename[op.output("Y")[0]] = q.input("X")[0]
            dead.update((id(op), id(q)))
            count += 1
        if not rename:
            continue
        for op in ops:
            if id(op) in dead:
                continue
            for name in op.input_arg_names():
                src = name
                while src in rename:
                    src = rename[src]
                if src != name:
                    op._rename_input(name, src)
        for i in reversed(range(blk.op_size())):
            if id(ops[i]) in dead:
                blk._remove_op(i, i + 1)
    if count:
        with open(out_path or pdmodel_path, "wb") as f:
            f.write(desc.serialize_to_string())
    return count


# ---------------------------------------------------------------- int8 constants

# Inputs that Paddle Inference 3.3.1's quant_dequant_onednn_pass turns back into float
# weights (QuantDequantMkldnnPass::DequantizeWeights): only these.
_ONEDNN_DEQUANTIZED_INPUTS = {"conv2d": "Filter", "depthwise_conv2d": "Filter", "fused_conv2d": "Filter",
                              "mul": "Y", "matmul": "Y", "matmul_v2": "Y"}


def fold_constant_dequantize(infer_dir):
    """Store float values for int8 constants that Paddle Inference would feed to an op as int8.

    paddleslim's ONNX-format QAT export (paddle's ``QuantWeightPass``) stores
    every tensor quantized by a ``quantize_linear`` whose input is persistable
    as int8 and keeps only its ``dequantize_linear``: a weight, but also an
    activation quantizer's input that happens to be a parameter. GINet's head
    feeds its class embedding (``GIHead.inp``, a parameter) to a quantized
    Linear, so that embedding became int8 data. Paddle Inference's oneDNN INT8
    pipeline removes every dequantize_linear (``quant_dequant_onednn_pass``)
    and turns back into float only the Filter of conv2d / depthwise_conv2d /
    fused_conv2d and the Y of mul / matmul / matmul_v2; GINet's embedding is
    the X of a matmul_v2, which then stops the predictor: ``(InvalidArgument)
    The type of data we are trying to retrieve (int8) does not match the type
    of data (float32) currently contained in the container. [operator <
    matmul_v2> error]`` (raised by ``constant_folding_pass``, the next pass).

    For each such dequantize_linear whose output feeds anything else, this
    stores its output, computed by paddle's own dequantize_linear kernel, as a
    float tensor and removes the op: every runtime then sees the values the
    fake-quant program computes. Weights in the inputs above are left as they
    are (int8, dequantized by the pass), and a program without such constants
    is not rewritten at all. Returns the number of dequantize ops folded.
    """
    import os
    from paddle.base import core
    from paddle.base.framework import Program
    from paddle.framework.io_utils import is_persistable

    path = os.path.join(str(infer_dir), "model.pdmodel")
    with open(path, "rb") as f:
        desc = core.ProgramDesc(f.read())
    blk = desc.block(0)  # keep ``desc`` alive while ``blk`` is used
    ops = [blk.op(i) for i in range(blk.op_size())]
    users = {}
    for op in ops:
        for slot in op.input_names():
            for name in op.input(slot):
                users.setdefault(name, []).append((op.type(), slot))
    folds = []
    for op in ops:
        if op.type() != "dequantize_linear":
            continue
        x = blk.find_var(op.input("X")[0].encode())
        if x is None or not x.persistable():
            continue
        if all(_ONEDNN_DEQUANTIZED_INPUTS.get(t) == slot for t, slot in users.get(op.output("Y")[0], [])):
            continue
        folds.append(op)
    if not folds:
        return 0
    exe = paddle.static.Executor(paddle.CPUPlace())
    with old_ir_static():
        scope = paddle.static.Scope()
        with paddle.static.scope_guard(scope):
            paddle.static.load_inference_model(os.path.join(str(infer_dir), "model"), exe)
            calc = Program()
            cb = calc.global_block()
            for op in folds:
                inputs = {}
                for slot in op.input_names():
                    names = op.input(slot)
                    for name in names:
                        v = blk.find_var(name.encode())
                        if not cb.has_var(name):
                            cb.create_var(name=name, shape=v.shape(), dtype=v.dtype(), persistable=True)
                    if names:
                        inputs[slot] = list(names)
                y = op.output("Y")[0]
                yv = blk.find_var(y.encode())
                cb.create_var(name=y, shape=yv.shape(), dtype=yv.dtype(), persistable=True)
                cb.append_op(type="dequantize_linear", inputs=inputs, outputs={"Y": [y]},
                             attrs={a: op.attr(a) for a in op.attr_names() if not a.startswith("op_")})
                yv.set_persistable(True)
            exe.run(calc)
            folded_inputs = {n for op in folds for n in op.input_arg_names()}
            dead = {id(op) for op in folds}
            for i in reversed(range(blk.op_size())):
                if id(ops[i]) in dead:
                    blk._remove_op(i, i + 1)  # ``folds`` is dangling from here on
            used = {n for i in range(blk.op_size()) for n in blk.op(i).input_arg_names()}
            for name in sorted(folded_inputs - used):
                if blk.has_var(name.encode()):
                    blk._remove_var(name.encode())
            data = desc.serialize_to_string()
            paddle.static.save_vars(exe, str(infer_dir), main_program=Program.parse_from_string(data),
                                    predicate=is_persistable, filename="model.pdiparams")
    with open(path, "wb") as f:
        f.write(data)
    return len(folds)


# ---------------------------------------------------------------- reading an export back

def load_old_ir_program(model_file, params_file):
    """(program, feed names, fetch vars, scope, executor) of a saved old-IR program with
    its parameters loaded into a fresh scope.

    paddle 3.3.1 reads static programs as new IR by default (``model.json``);
    the old-IR guard makes ``load_inference_model`` read ``model.pdmodel``.
    Raises whatever paddle raises on a truncated or corrupt file.
    """
    import os
    exe = paddle.static.Executor(paddle.CPUPlace())
    scope = paddle.static.Scope()
    with old_ir_static(), paddle.static.scope_guard(scope):
        prefix = model_file[:-len(".pdmodel")]
        if params_file == prefix + ".pdiparams":
            prog, feeds, fetches = paddle.static.load_inference_model(prefix, exe)
        else:  # files named otherwise: the older (deprecated, warning) form
            folder = os.path.dirname(model_file)
            prog, feeds, fetches = paddle.static.load_inference_model(
                folder, exe, model_filename=os.path.basename(model_file),
                params_filename=os.path.relpath(params_file, folder))
    return prog, feeds, fetches, scope, exe


def load_old_ir_inference_model(infer_dir):
    """Load an old-IR inference directory (program + every parameter); returns the number of ops."""
    import os
    prog = load_old_ir_program(os.path.join(str(infer_dir), "model.pdmodel"),
                               os.path.join(str(infer_dir), "model.pdiparams"))[0]
    return len(prog.global_block().ops)


# ---------------------------------------------------------------- inference passes

# Paddle Inference passes that compute wrong results on paddle 3.3.1, deleted from
# every predictor segqat creates:
# * reshape_transpose_matmul_onednn_fuse_pass (in the default CPU pass list, with or
#   without oneDNN) merges reshape2 -> transpose2 -> matmul_v2 into fused_matmul,
#   which then reads a convolution's output wrongly: conv -> reshape([0,C,-1]) ->
#   transpose([0,2,1]) -> matmul was 18-25 off at C=16, and ANN's logits up to 1838
#   off (70% of labels right). Our own exports avoid the pattern (see
#   _fold_reshape_transpose); this also covers programs written elsewhere and
#   transposes that cannot become a matmul flag ([0,2,1,3], SegFormer).
# * repeated_fc_relu_fuse_pass (default CPU pass list, with or without oneDNN) segfaults
#   (SIGSEGV in RepeatedFCReluFusePass::BuildFusion -> GraphPatternDetector::
#   MarkPDNodesInGraph) on any fc whose input is a stored tensor: its pattern looks for
#   the fc input that has a producing op ("w and bias has no input", before_var_of_part)
#   and dereferences the null it gets when none has one. GINet's head runs a Linear on
#   its class embedding, a parameter (GIHead.inp): its FP32 export killed the process.
#   The pass only fuses chains of fc + relu into fusion_repeated_fc_relu (MLPs).
BROKEN_INFERENCE_PASSES = ("reshape_transpose_matmul_onednn_fuse_pass", "repeated_fc_relu_fuse_pass")


# paddle 3.3.1's oneDNN INT8 pipeline fuses a residual add into the convolution
# (conv_elementwise_add_onednn_fuse_pass) and then lets oneDNN add the residual
# in the convolution's output type. When one is u8 (after relu/relu6) and the
# other s8, the residual's bytes are read in the wrong type: values above 127
# become negative. Measured: a conv-BN-relu / conv-BN-relu-conv-BN + add block
# (tests/test_old_ir_ops.py::test_int8_residual_add_of_u8_and_s8_runs_unfused)
# was 64-70% off its fake-quant output with the fusion, 3-10% without; the
# zoo's TopFormer agreed with fake quant on 77% of pixels (INT8 mIoU 34.7 vs
# 49.1) and 95% (50.0) without it.
INT8_RESIDUAL_FUSE_PASS = "conv_elementwise_add_onednn_fuse_pass"
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
