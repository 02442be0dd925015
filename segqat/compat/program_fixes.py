"""Rewrites of saved old-IR programs (``model.pdmodel``) for what Paddle's own passes or
other readers of the program get wrong (paddle 3.3.1, paddleslim 2.6).

Each function reads a program file (or a ``ProgramDesc``), changes only the
ops it names, and leaves values unchanged:

* ``fix_conv_bias_axis``: paddle 3.x's old-IR export writes a conv bias as
  ``reshape2`` + ``elementwise_add(axis=-1)``, which oneDNN's fuse passes
  reject ("Check the Attr(axis) of Op(elementwise_add) ... failed"); restores
  paddle 2.x's ``axis=1`` form (``segqat.export``, ``segqat.ptq``).
* ``guard_overwritten_scales``: oneDNN's scale propagation
  (``compute_propagate_scales_onednn_pass``) gives an average pool's output
  its input's scale and a concat input the concat output's; an ``assign``
  keeps the scale QAT/PTQ gave (exports; the Paddle predictor for older ones).
* ``undilate_same_convs``: Paddle runs padding="same" convolutions undilated
  whatever their dilation; paddle2onnx and OpenVINO's Paddle frontend apply
  it (``segqat.deploy.onnx_export``, ``segqat.deploy.openvino``).
* ``drop_observer_only_quant``: paddleslim's observer-only quantize/dequantize
  pairs, which OpenVINO's Paddle frontend refuses ("Fail to convert
  dequantize_linear ... dims of scale should not be greater than 2"), for
  OpenVINO's copy of a program.
* ``fold_constant_dequantize``: int8 constants outside a weight input
  (GINet's class embedding), which Paddle Inference's oneDNN INT8 passes would
  feed to a matmul as int8: ``(InvalidArgument) The type of data we are trying
  to retrieve (int8) does not match the type of data (float32) ...``
  (``segqat.export``).
"""
import logging
import os

import paddle

from .program_io import old_ir_static

logger = logging.getLogger(__name__)


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

