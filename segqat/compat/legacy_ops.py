"""Legacy (old-IR) ops for the paddle APIs that paddle 3.3.1 binds to new-IR-only C++ ops.

Under ``paddle.pir_utils``' old-IR switch, paddle 3.3.1 still binds
``paddle.sigmoid``, ``argmax``, ``multiply``, ``sum``, ``bmm``, ... straight to
new-IR ops (``paddle/base/dygraph/generated_tensor_methods_patch.py``), which
reject an old-IR ``Variable``: ``sigmoid(): argument (position 1) must be
Value, but got Variable`` (DANet; EMANet: ``bmm``). ``legacy_op(name)`` builds
the legacy op of such a name generically (paddle's signature + the legacy
OpProto + paddle's op_compat name map), with a small commented table of
exceptions; ``new_ir_only_names()`` lists the names, taken from paddle's own
binding tables. ``old_ir_export`` (``old_ir_export.py``) routes the names to
these functions while a model is exported; nothing here changes paddle.

Also here: ``ExportError`` and ``TRACING`` (which layer and op the export is
building, for its error messages), shared by the export's modules.
"""
import functools

import paddle
import paddle.nn.functional as F


class ExportError(RuntimeError):
    """A model that cannot be written as an old-IR program; says which layer and op."""


ExportError.__module__ = "segqat.compat"  # its public name (tracebacks print it)


def new_ir_only_names():
    """API names paddle 3.3.1 binds straight to C++ ops that take no old-IR ``Variable``.

    Derived from paddle itself: the tables ``monkey_patch_generated_methods_for_tensor``
    applies (``methods_map``/``funcs_map``/``nn_funcs_map`` in
    ``paddle/base/dygraph/generated_tensor_methods_patch.py``) plus any public
    ``paddle``/``paddle.tensor``/``paddle.nn.functional`` name that *is* a
    ``paddle._C_ops`` builtin (``from paddle._C_ops import bmm`` in
    ``paddle/tensor/linalg.py``). In 3.3.1 both give the same 53 names; paddle
    2.6 has neither (its APIs build legacy ops themselves): no names.
    """
    import paddle.tensor
    from paddle import _C_ops
    names = {n for table in binding_tables() for n, _ in table}
    for module in (paddle, paddle.tensor, F):
        for n, v in vars(module).items():
            if not n.startswith("_") and callable(v) and getattr(_C_ops, n, None) is v:
                names.add(n)
    return sorted(names)


def binding_tables():
    """paddle 3.x's ``(name, function)`` tables of APIs bound straight to C++ ops
    (``paddle/base/dygraph/generated_tensor_methods_patch.py``); none on paddle 2.6,
    which has no such module (its APIs build the legacy op in static mode)."""
    try:
        from paddle.base.dygraph import generated_tensor_methods_patch as gen
    except ImportError:  # paddle 2.6
        return ()
    return gen.methods_map, gen.funcs_map, gen.nn_funcs_map


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


def _legacy_form(name):
    """(legacy op type, its op_compat entry, fixed attributes) for API ``name``."""
    if name in _LEGACY_SPECIAL:
        op_type, fixed = _LEGACY_SPECIAL[name]
        return op_type, {}, fixed
    op_type, entry = _phi_to_legacy().get(name, (name, {}))
    return op_type, entry, {}


def legacy_op_type(name):
    """The legacy op type ``legacy_op`` appends for API ``name`` (not necessarily registered)."""
    return _legacy_form(name)[0]


def producer(var):
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
        op = producer(v)
        if op is None or op.type != "transpose2":
            continue
        n = len(v.shape)
        if list(op.attr("axis")) != list(range(n - 2)) + [n - 1, n - 2]:
            continue
        src = op.block._find_var_recursive(op.input("X")[0])
        src_op = producer(src) if src is not None else None
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


class Tracing:
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


TRACING = Tracing()


def legacy_op(name, original):
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
    op_type, entry, fixed = _legacy_form(name)
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
        raise ExportError(f"old-IR export: {name}() at {TRACING.where()} has no legacy op: {why}")

    @paddle.jit.not_to_static  # run as-is: see "DNLNet hang" in old_ir_export
    def fn(*args, **kwargs):
        tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, Variable)]
        if not tensors:
            return original(*args, **kwargs)
        TRACING.last_op = f"paddle.{name} -> legacy {op_type}"
        if proto is None:
            unsupported(f"no legacy OpProto '{op_type}' is registered in paddle {paddle.__version__}")
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
                              f"{TRACING.where()} failed: {type(e).__name__}: "
                              f"{(str(e).strip().splitlines() or [''])[0][:300]}") from e
        out_slot = (entry.get("outputs") or {}).get("out") or next(iter(outputs))
        out = outputs[out_slot]
        if name in ("argmax", "argmin"):
            out.stop_gradient = True
        return out

    fn.__name__ = f"legacy_{name}"
    fn.__qualname__ = fn.__name__
    return fn

