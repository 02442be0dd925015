"""Our old-IR Paddle exports as ONNX models, checked against Paddle before use.

    from segqat.deploy import load_deploy_config, onnx_export
    dep = load_deploy_config("output/qat_infer")
    model = onnx_export.convert(dep)                   # onnx.ModelProto
    onnx_export.check(dep, run, batch)                  # DeployError if ``run`` deviates from Paddle

FP32 exports go through paddle2onnx 1.3.1 as they are, except adaptive average
and max pooling (PP-LiteSeg's context module, RTFormer), which paddle2onnx writes
as fixed windows that ONNX Runtime refuses for a dynamic input size and that are
wrong where the feature map does not divide into the bins: those become an exact
pooling built from the input's shape (``onnx_rewrites.exact_adaptive_pools``,
also in INT8 models).

INT8 exports (QAT and PTQ: quantize_linear / dequantize_linear ops, int8 weights
with per-channel scales) cannot: paddle2onnx 1.3.1's ``deploy_backend=
"onnxruntime"`` folds each batch norm into the convolution before it and then
puts that convolution's pre-BN output scale on the post-BN tensor (PP-LiteSeg
labels 0.5% of foreground pixels right, PADDLE_NOTES), "tensorrt" and "other"
drop the quantization (float weights, no Q/DQ), "rknn" keeps 34 of 110 pairs and
"others" aborts. So the quantization is carried over here: in a copy of the
program each activation quantize -> dequantize pair becomes an ``assign`` and
each weight dequantize a ``cast`` (int8 -> float32); paddle2onnx converts that
FP32 program with its optimizer off, so every tensor keeps its Paddle name.
(paddleslim reuses names: two pairs on one tensor both write
``x.quantized.dequantized``; each rewritten output gets its own name.) In the
ONNX graph those placeholders then become QuantizeLinear / DequantizeLinear
with Paddle's scales, and quantized convolutions the forms ONNX Runtime runs in
INT8 (``onnx_rewrites.to_qdq``, which says how).

The check (``check``, ``check_batch``, ``paddle_outputs``, ``labels_of``,
``MIN_AGREEMENT``) lives in ``segqat.deploy.parity`` and is re-exported here:
``segqat.deploy.onnx_runtime`` runs the converted model in the ONNX Runtime
session that will be used and the export in Paddle's executor (the quantized
program as Paddle defines it, i.e. fake quantization) on a check batch, and
refuses a model whose labels agree on fewer than ``MIN_AGREEMENT`` of the
pixels.
"""
import logging
import os
import tempfile
from collections import Counter

import numpy as np

from .contract import DeployError
from .onnx_rewrites import exact_adaptive_pools, to_qdq
from .parity import (CHECK_SIZE, MIN_AGREEMENT, check, check_batch, labels_of,  # noqa: F401
                     paddle_outputs)

logger = logging.getLogger(__name__)

OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear (axis) needs 13
QUANT_OPS = ("quantize_linear", "dequantize_linear")
# ONNX Runtime kernels that compute in INT8 (counted in its optimized graph)
INT8_KERNELS = ("QLinearConv", "ConvInteger", "MatMulInteger", "QLinearMatMul")


def _is_quantized(desc):
    return any(desc.block(b).op(i).type() in QUANT_OPS
               for b in range(desc.num_blocks()) for i in range(desc.block(b).op_size()))


def _strip_quant(desc, values):
    """Turn the quantize/dequantize ops of block 0 into ``assign`` (activations) and
    ``cast`` (int8 weights); return {tensor: quant info} for the rewritten outputs.

    paddleslim's programs are not single-assignment: two quantize/dequantize pairs on
    one tensor (two convolutions reading ``x`` with their own scales) both write
    ``x.quantized.dequantized``. Each rewritten output gets its own name here, and the
    ops that read it until it is written again are renamed to match.
    """
    from paddle.base import core
    for b in range(1, desc.num_blocks()):
        blk = desc.block(b)
        if any(blk.op(i).type() in QUANT_OPS for i in range(blk.op_size())):
            raise DeployError("quantize/dequantize ops inside a control-flow block are not supported")
    blk = desc.block(0)
    ops = [blk.op(i) for i in range(blk.op_size())]
    readers = {}
    for op in ops:
        for n in set(op.input_arg_names()):
            readers.setdefault(n, set()).add(op.type())
    quant, replace, dead = {}, {}, set()
    writer, alias, taken = {}, {}, {n.name() for n in blk.all_vars()}
    for op in ops:
        for n in set(op.input_arg_names()):
            if n in alias:
                op._rename_input(n, alias[n])
        if op.type() == "dequantize_linear":
            x, y = op.input("X")[0], op.output("Y")[0]
            q = writer.get(x)
            observer_only = op.has_attr("only_observer") and op.attr("only_observer")
            info = {"scale": values(op.input("Scale")[0]), "axis": op.attr("quant_axis"),
                    "bits": op.attr("bit_length")}
            zp = op.input("ZeroPoint")
            if zp and values(zp[0]) is not None and np.any(values(zp[0]) != 0):
                raise DeployError(f"dequantize_linear of {x}: non-zero zero point (asymmetric "
                                  "quantization) is not supported")
            if info["scale"] is None:
                raise DeployError(f"dequantize_linear of {x}: scale {op.input('Scale')[0]} has no value")
            if q is not None and q.type() == "quantize_linear":
                if readers[x] != {"dequantize_linear"}:
                    raise DeployError(f"quantized tensor {x} is read by ops other than "
                                      f"dequantize_linear: {sorted(readers[x])}")
                if not np.array_equal(values(q.input("Scale")[0]), info["scale"]):
                    raise DeployError(f"quantize/dequantize pair on {q.input('X')[0]}: scales differ")
                dead.add(id(q))
                src, kind = q.input("X")[0], "act"
            elif blk.find_var(x.encode()) is not None and blk.find_var(x.encode()).persistable():
                src, kind = x, "weight"
            else:
                raise DeployError(f"dequantize_linear of {x}: not a weight and not after a "
                                  "quantize_linear; this quantized program is not supported")
            fresh, k = y, 0
            while fresh in taken:
                k += 1
                fresh = f"{y}@{k}"
            taken.add(fresh)
            var, old = blk.var(fresh.encode()), blk.find_var(y.encode())
            var.set_type(old.type())
            var.set_dtype(old.dtype())
            var.set_shape(old.shape())
            replace[id(op)] = ("assign" if kind == "act" else "cast", src, fresh)
            if not (kind == "act" and observer_only):
                quant[fresh] = dict(info, kind=kind, src=src)
            for n in op.output_arg_names():
                alias.pop(n, None)
            alias[y] = fresh
            continue
        for n in op.output_arg_names():
            alias.pop(n, None)
            writer[n] = op
    for op in ops:
        if op.type() == "quantize_linear" and id(op) not in dead:
            raise DeployError(f"quantize_linear of {op.input('X')[0]} without its dequantize_linear")
    for i in reversed(range(len(ops))):
        op = ops[i]
        if id(op) in dead:
            blk._remove_op(i, i + 1)
        elif id(op) in replace:
            kind, src, dst = replace[id(op)]
            new = blk._insert_op(i)
            new.set_type(kind)
            new.set_input("X", [src])
            new.set_output("Out", [dst])
            if kind == "cast":
                new._set_int32_attr("in_dtype", int(blk.find_var(src.encode()).dtype()))
                new._set_int32_attr("out_dtype", int(core.VarDesc.VarType.FP32))
            blk._remove_op(i + 1, i + 2)
    return quant


# ops paddle2onnx converts by itself rather than by its op table (control flow), or drops
CONVERTED_APART = {"feed", "fetch", "while", "conditional_block", "select_input", "select_output",
                   "write_to_array", "read_from_array", "tensor_array_to_tensor", "lod_array_length"}


def _unconvertible_ops(desc):
    """Op types of the program that paddle2onnx has no converter for. It aborts the whole
    process (SIGABRT) on them, so they are found before it runs."""
    from paddle2onnx import paddle2onnx_cpp2py_export as p2o
    ops = {desc.block(b).op(i).type() for b in range(desc.num_blocks())
           for i in range(desc.block(b).op_size())}
    return sorted(ops - set(p2o.get_all_supported_operators()) - CONVERTED_APART)


def _paddle2onnx(model_file, params_file, optimize, name):
    """paddle2onnx's ONNX bytes of the program in ``model_file`` (a rewritten copy of the
    export ``name``, which errors name)."""
    import paddle2onnx
    from .. import compat
    try:
        with compat.native_output(verbose=False):
            return paddle2onnx.export(model_file, params_file, opset_version=OPSET, verbose=False,
                                      enable_optimize=optimize, deploy_backend="onnxruntime")
    except Exception as e:  # paddle2onnx raises plain Exceptions with its C++ message
        raise DeployError(f"{name}: paddle2onnx cannot convert it: {e}") from e


def _adaptive_pools(desc):
    """{output tensor: ("avg" or "max", (bins_h, bins_w))} of block 0's adaptive pools (NCHW)
    that do not pool to a single value (paddle2onnx writes those as global pools)."""
    blk = desc.block(0)
    pools = {}
    for i in range(blk.op_size()):
        op = blk.op(i)
        if op.type() == "pool2d":
            kind = op.attr("pooling_type")
        elif op.type() == "max_pool2d_with_index":  # paddle's adaptive_max_pool2d (RTFormer)
            kind = "max"
        else:
            continue
        if (op.attr("adaptive") and not op.attr("global_pooling") and list(op.attr("ksize")) != [1, 1]
                and kind in ("avg", "max")
                and (not op.has_attr("data_format") or op.attr("data_format") in ("NCHW", "AnyLayout"))):
            pools[op.output("Out")[0]] = (kind, tuple(int(k) for k in op.attr("ksize")))
    return pools


def convert(dep):
    """The export named by ``dep`` (from ``load_deploy_config``) as an onnx.ModelProto:
    FP32 as paddle2onnx writes it, INT8 as a QDQ model (module docstring)."""
    import onnx
    from paddle.base import core
    from .. import compat
    if not dep["model_file"].endswith(".pdmodel"):
        raise DeployError(f"ONNX conversion reads old-IR Paddle models (model.pdmodel); "
                          f"{dep['model_file']} is not one. Re-export with this tool.")
    with open(dep["model_file"], "rb") as f:
        desc = core.ProgramDesc(f.read())
    missing = _unconvertible_ops(desc)
    if missing:
        import paddle2onnx
        raise DeployError(f"{dep['model_file']}: paddle2onnx {paddle2onnx.__version__} cannot convert "
                          f"the op(s) {', '.join(missing)}, so this model cannot run on ONNX Runtime "
                          "here; --runtime paddle runs it")
    pools = _adaptive_pools(desc)
    compat.undilate_same_convs(desc)  # as Paddle runs them; paddle2onnx keeps the dilation
    quantized = _is_quantized(desc)
    quant = {}
    if quantized:
        scope = compat.load_old_ir_program(dep["model_file"], dep["params_file"])[3]

        def values(name):
            var = scope.find_var(name)
            return None if var is None else np.array(var.get_tensor())
        quant = _strip_quant(desc, values)
    with tempfile.TemporaryDirectory(prefix="segqat_onnx_") as tmp:
        plain = os.path.join(tmp, "model.pdmodel")
        with open(plain, "wb") as f:
            f.write(desc.serialize_to_string())
        model = onnx.load_from_string(_paddle2onnx(plain, dep["params_file"], not quantized,
                                                     dep["model_file"]))
    exact_adaptive_pools(model, pools)
    if not quantized:
        model.producer_name = "segqat (paddle2onnx)"
        onnx.checker.check_model(model)
        return model
    n_bias, n_chained, n_integer = to_qdq(model, quant)
    model.producer_name = "segqat (paddle2onnx + QDQ)"
    onnx.checker.check_model(model)
    kinds = Counter(v["kind"] for v in quant.values())
    logger.info("ONNX QDQ: %d quantized activations, %d int8 weights; %d convolutions with a "
                "quantized output (int32 bias; %d with their batch norm folded in), %d with a float "
                "output (ConvInteger)", kinds["act"], kinds["weight"], n_bias, n_chained, n_integer)
    return model


def save(model, path, overwrite=False):
    """Write ``model`` to ``path`` (atomically; an existing file only with ``overwrite``)."""
    if os.path.exists(path) and not overwrite:
        raise DeployError(f"{path} exists; give --overwrite to replace it")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".segqat_onnx_", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(model.SerializeToString())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
