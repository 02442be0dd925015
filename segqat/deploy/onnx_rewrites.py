"""ONNX graph rewrites of paddle2onnx's output: exact adaptive pools and the QDQ form.

Only onnx and numpy: this module imports no paddle (the rewrites are testable on
hand-built ONNX graphs). ``segqat.deploy.onnx_export`` calls them on the model
paddle2onnx 1.3.1 writes.

``exact_adaptive_pools``: paddle2onnx writes adaptive average and max pooling
(PP-LiteSeg's context module, RTFormer) as fixed windows, which ONNX Runtime
refuses for a dynamic input size and which are wrong where the feature map
does not divide into the bins; they become an exact pooling built from the
input's shape.

``to_qdq``: the quantization of an INT8 export, carried by placeholders
(``assign`` -> Identity for an activation pair, ``cast`` -> Cast for an int8
weight, see ``onnx_export``), becomes:

1. QuantizeLinear / DequantizeLinear with Paddle's scales (ONNX scale = Paddle
   scale / (2^(bits-1) - 1)) on the same tensors as in Paddle; weights stay
   int8 initializers (the file is ~1/4 of FP32), dequantized per output
   channel; batch norms stay where Paddle has them.
2. A quantized convolution whose output Paddle quantizes (a QAT conv feeding
   another quantized conv directly) gets its bias add as an int32 Conv bias:
   ONNX Runtime fuses DQ -> Conv -> Q into QLinearConv only with one. One whose
   output Paddle leaves in float (every other QAT conv: their output observers
   are identity, segqat/compat/old_ir_export.py; PTQ exports) becomes
   ConvInteger + Mul by (input scale x weight scale): ONNX Runtime has no INT8
   conv with a float output and would run DQ -> Conv in float.
3. A quantized convolution whose output goes through a batch norm (and a relu) in
   float before a quantizer, every reader of that tensor quantizing it with one scale
   (it feeds only quantized convolutions), becomes Conv(batch norm folded) -> Q, the
   pattern of item 2:
   * the batch norm goes into the convolution: per output channel, the int8 weights stay
     the same integers (their sign flipped where the batch norm's factor is negative) and
     the weight scale is multiplied by |gamma / sqrt(var + eps)|; the bias becomes
     ``(bias - mean) * factor + beta``. Exact up to float rounding.
   * a relu before the quantizer gets a quantize/dequantize pair of the quantizer's scale
     before it: Conv -> Q -> DQ -> Relu -> Q. On a symmetric grid, quantizing, then relu,
     then quantizing gives the integers of relu then quantizing, so this is exact. (A
     quantizer with zero point 0 would make the relu redundant, but it keeps values up to
     255 steps where Paddle clips at 127: 98.97% label agreement with fake quant on
     synthetic check images against 99.72% without the rewrite, CamVid BiSeNetV2.)
   Why: ONNX Runtime's ConvInteger (u8 x u8, the only INT8 convolution with a float
   output) is slower than its FP32 convolution; QLinearConv (u8 x s8) is not
   (slim/quant/profile_ops.py).

Activations are written as uint8 with zero point 128: the same numbers as
Paddle's symmetric int8 (Paddle's quantize_linear rounds half to even and clips
to [-128, 127], as QuantizeLinear does; checked), in the form ONNX Runtime's x86
kernels take. It fuses QDQ groups with int8 activations only on ARM
(``QDQIsInt8Allowed``); on x86 it rewrites int8 pairs to uint8 itself
(QDQS8ToU8Transformer), but not all: written as int8, 5 of BiSeNetV2's 56
convolutions stayed in float. (TensorRT, which wants int8 with zero point 0, is
not a target of this file; paddle2onnx's own "tensorrt" backend is.)
"""
import numpy as np

from .contract import DeployError


def to_qdq(model, quant):
    """Rewrite ``model`` (paddle2onnx's conversion of a program whose quantize/dequantize
    ops became placeholders) in place into the QDQ form (module docstring); returns
    ``(convolutions with an int32 bias, of those the ones with their batch norm folded in,
    convolutions lowered to ConvInteger)``.

    ``quant``: {placeholder output: {"kind": "act" or "weight", "src": the tensor
    quantized, "scale": Paddle's scale array, "axis": its quant_axis, "bits": its bit
    length}}, as ``onnx_export`` collects it from the program."""
    gr = _insert_qdq(model, quant)
    _drop_identities(model)
    n_chained = _chain_quantized_convs(model, gr)
    n_integer = _lower_float_output_convs(model, gr)
    n_bias = _fold_conv_bias(model, gr)
    _prune(model)
    _topological(model)
    return n_bias, n_chained, n_integer


def _subgraphs(node):
    """The graphs in ``node``'s attributes (the branches of If, the body of Loop)."""
    from onnx import AttributeProto
    for a in node.attribute:
        if a.type == AttributeProto.GRAPH:
            yield a.g
        elif a.type == AttributeProto.GRAPHS:
            yield from a.graphs


def _reads(node):
    """Names ``node`` reads from the graph around it: its inputs and what the nodes of its
    subgraphs read without producing it (an If branch reads outer tensors by name)."""
    names = [i for i in node.input if i]
    for g in _subgraphs(node):
        local = {i.name for i in g.input} | {t.name for t in g.initializer}
        for n in g.node:
            names += [i for i in _reads(n) if i not in local]
            local.update(n.output)
    return names


def _rename_reads(node, names):
    """Rename what ``node`` (and the nodes of its subgraphs) read, by ``names(name)``."""
    for i, name in enumerate(node.input):
        node.input[i] = names(name)
    for g in _subgraphs(node):
        for n in g.node:
            _rename_reads(n, names)
        for o in g.output:
            o.name = names(o.name)


class _Graph:
    """The bits of an ONNX graph the QDQ rewrite needs: constants by name, producers,
    consumers, and helpers to add nodes and initializers."""

    def __init__(self, model):
        from onnx import numpy_helper
        self.model, self.g = model, model.graph
        self.const = {t.name: numpy_helper.to_array(t) for t in self.g.initializer}
        for n in self.g.node:
            if n.op_type == "Constant" and n.attribute[0].name == "value":
                self.const[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        self.names = set(self.const) | {o for n in self.g.node for o in n.output}

    def producer(self):
        return {o: n for n in self.g.node for o in n.output}

    def consumers(self):
        c = {}
        for n in self.g.node:
            for i in _reads(n):
                c.setdefault(i, []).append(n)
        return c

    def unique(self, base):
        name, k = base, 0
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def initializer(self, base, array):
        from onnx import numpy_helper
        name = self.unique(base)
        self.g.initializer.append(numpy_helper.from_array(np.asarray(array), name))
        self.const[name] = np.asarray(array)
        return name

    def resolve_const(self, name, prod):
        """Value of ``name`` if it is a constant, or a Reshape / Identity of one."""
        if name in self.const:
            return self.const[name]
        n = prod.get(name)
        if n is not None and n.op_type in ("Reshape", "Identity", "Unsqueeze") and n.input[0] in self.const:
            return self.const[n.input[0]]
        return None



def exact_adaptive_pools(model, pools):
    """Replace paddle2onnx's node for each adaptive pool in ``pools`` ({output tensor:
    ("avg" or "max", (bins_h, bins_w))}, NCHW) by an exact one; returns how many.

    paddle2onnx 1.3.1 writes adaptive pooling as an AveragePool / MaxPool with fixed windows:
    with a dynamic input size its strides are 0 (ONNX Runtime refuses the model: "strides must
    only contain positive values"), and with a fixed one the windows are only right where the
    feature map divides evenly into the bins (PP-LiteSeg at 180x240: 98.75% of labels).
    Adaptive pooling of a length-L axis into o bins pools bin i over [floor(i*L/o),
    ceil((i+1)*L/o)), computed here from the input's shape at run time, for any size. Average:
    as a [o, L] averaging matrix P, the pool is P_h @ X @ P_w^T (two MatMuls). Max (separable):
    each bin's rows are sliced and reduced, then each bin's columns."""
    from onnx import TensorProto, helper
    if not pools:
        return 0
    gr = _Graph(model)
    readers = gr.consumers()
    nodes, done = [], set()
    for n in model.graph.node:
        out = n.output[0] if n.output else None
        kind, bins = pools.get(out, (None, None))
        if kind is None or n.op_type not in ("AveragePool", "GlobalAveragePool", "MaxPool", "GlobalMaxPool") \
                or any(readers.get(o) for o in n.output[1:] if o):  # a max pool's indices are read
            nodes.append(n)
            continue
        x, base = n.input[0], out

        def add(op, inputs, output=None, **attrs):
            output = output or gr.unique(f"{base}.{op}")
            nodes.append(helper.make_node(op, inputs, [output], name=gr.unique(f"{base}.{op}_node"), **attrs))
            return output

        def const(tag, value):
            return gr.initializer(f"{base}.{tag}", np.asarray(value, np.int64))
        shape = add("Shape", [x])
        cur = x
        for axis, o in zip((2, 3), bins):
            # bin i of a length-L axis: [floor(i L / o), ceil((i + 1) L / o)), int64 Div of
            # non-negatives floors; start and end are [o, 1]
            length = add("Gather", [shape, const(f"axis{axis}", axis)], axis=0)
            i = np.arange(o).reshape(o, 1)
            start = add("Div", [add("Mul", [const(f"i{axis}", i), length]), const(f"bins{axis}", o)])
            end = add("Div", [add("Add", [add("Mul", [const(f"i1_{axis}", i + 1), length]),
                                          const(f"o1_{axis}", o - 1)]), const(f"bins{axis}b", o)])
            if kind == "avg":  # cur @ P^T along the axis, P the [o, L] averaging matrix
                pos = add("Range", [const(f"zero{axis}", 0), length, const(f"one{axis}", 1)])
                inside = add("And", [add("GreaterOrEqual", [pos, start]), add("Less", [pos, end])])
                count = add("Cast", [add("Sub", [end, start])], to=TensorProto.FLOAT)
                p = add("Div", [add("Cast", [inside], to=TensorProto.FLOAT), count])
                cur = (add("MatMul", [p, cur]) if axis == 2 else
                       add("MatMul", [cur, add("Transpose", [p], perm=[1, 0])], output=out))
            else:  # max: slice and reduce each bin, concatenated along the axis
                axes, parts = const(f"ax{axis}", [axis]), []
                for k in range(o):
                    b = const(f"b{axis}_{k}", k)
                    piece = add("Slice", [cur, add("Gather", [start, b], axis=0), add("Gather", [end, b], axis=0), axes])
                    parts.append(add("ReduceMax", [piece], axes=[axis], keepdims=1))
                cur = add("Concat", parts, output=out if axis == 3 else None, axis=axis)
        done.add(out)
    missing = set(pools) - done
    if missing:
        raise DeployError(f"paddle2onnx wrote no pooling node for the adaptive pools "
                          f"{sorted(missing)}, or their indices are read")
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return len(done)



def _onnx_scale(info):
    """Paddle's scale (abs max of the range) -> ONNX scale (one int step)."""
    s = np.asarray(info["scale"], np.float32).reshape(-1) / float(2 ** (info["bits"] - 1) - 1)
    if np.any(s <= 0) or not np.all(np.isfinite(s)):
        raise DeployError(f"quantization scale of {info['src']} is not positive and finite")
    return s


def _insert_qdq(model, quant):
    """Replace the assign/cast placeholders by QuantizeLinear/DequantizeLinear."""
    from onnx import helper
    gr = _Graph(model)
    prod = gr.producer()
    new_nodes = []
    handled = set()
    for n in model.graph.node:
        out = n.output[0] if n.output else None
        info = quant.get(out)
        if info is None:
            new_nodes.append(n)
            continue
        handled.add(out)
        s = _onnx_scale(info)
        if info["kind"] == "act":
            if n.op_type != "Identity":
                raise DeployError(f"paddle2onnx wrote {n.op_type} for the placeholder of {out}")
            if info["axis"] not in (-1, None) or s.size != 1:
                raise DeployError(f"{info['src']}: per-channel activation quantization is not supported")
            scale = gr.initializer(f"{out}.scale", np.float32(s[0]))
            zp = gr.initializer(f"{out}.zero_point", np.uint8(128))
            q = gr.unique(f"{out}.quantized")
            new_nodes.append(helper.make_node("QuantizeLinear", [n.input[0], scale, zp], [q],
                                              name=gr.unique(f"{out}.QuantizeLinear")))
            new_nodes.append(helper.make_node("DequantizeLinear", [q, scale, zp], [out],
                                              name=gr.unique(f"{out}.DequantizeLinear")))
        else:
            if n.op_type != "Cast":
                raise DeployError(f"paddle2onnx wrote {n.op_type} for the placeholder of {out}")
            w = gr.resolve_const(n.input[0], prod)
            if w is None or w.dtype != np.int8:
                raise DeployError(f"weight {info['src']}: expected an int8 constant in the ONNX graph")
            axis = info["axis"]
            if s.size == 1:
                scale_arr, zp_arr, attrs = np.float32(s[0]), np.int8(0), {}
            else:
                if axis is None or axis < 0 or w.shape[axis] != s.size:
                    raise DeployError(f"weight {info['src']}: {s.size} scales for shape {w.shape}, "
                                      f"axis {axis}")
                scale_arr, zp_arr, attrs = s, np.zeros(s.size, np.int8), {"axis": int(axis)}
            wname = gr.initializer(info["src"], w)
            scale = gr.initializer(f"{info['src']}.scale", scale_arr)
            zp = gr.initializer(f"{info['src']}.zero_point", zp_arr)
            new_nodes.append(helper.make_node("DequantizeLinear", [wname, scale, zp], [out],
                                              name=gr.unique(f"{out}.DequantizeLinear"), **attrs))
    missing = set(quant) - handled
    if missing:
        raise DeployError(f"paddle2onnx dropped the quantized tensors {sorted(missing)[:5]}")
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    return gr


def _drop_identities(model):
    """Remove Identity nodes (paddle2onnx writes one after most ops with its optimizer
    off) by reading their input directly; an Identity writing a graph output stays."""
    outputs = {o.name for o in model.graph.output}
    alias = {n.output[0]: n.input[0] for n in model.graph.node
             if n.op_type == "Identity" and n.output[0] not in outputs}

    def resolve(name):
        while name in alias:
            name = alias[name]
        return name
    nodes = [n for n in model.graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for n in nodes:
        _rename_reads(n, resolve)
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _quantized_conv_inputs(n, prod, gr):
    """(DQ of the activation, DQ of the int8 weight) of a Conv whose input and weight
    both come from DequantizeLinear with constant parameters, else None."""
    if n.op_type != "Conv" or len(n.input) > 2 and n.input[2]:
        return None
    dx, dw = prod.get(n.input[0]), prod.get(n.input[1])
    if (dx is None or dw is None or dx.op_type != "DequantizeLinear" or dw.op_type != "DequantizeLinear"
            or dx.input[0] in gr.const or dw.input[0] not in gr.const
            or any(i not in gr.const for i in list(dx.input[1:]) + list(dw.input[1:]))
            or gr.const[dw.input[0]].dtype != np.int8 or gr.const[dx.input[2]].dtype != np.uint8
            or gr.const[dx.input[1]].size != 1):
        return None
    return dx, dw


def _bias_add(n, cons, gr, prod, outputs):
    """(Add node, bias values [C]) when the Conv's only reader adds a constant bias."""
    users = cons.get(n.output[0], [])
    if len(users) != 1 or users[0].op_type != "Add" or n.output[0] in outputs:
        return None, None
    add = users[0]
    other = add.input[1] if add.input[0] == n.output[0] else add.input[0]
    b = gr.resolve_const(other, prod)
    cout = gr.const[prod[n.input[1]].input[0]].shape[0]
    if (b is None or b.size != cout or b.dtype != np.float32
            or b.ndim > 1 and b.shape not in ((1, cout, 1, 1), (cout, 1, 1))):
        return None, None
    return add, b.reshape(-1)


def _single_reader(cons, name, outputs, op_type):
    users = cons.get(name, [])
    if len(users) != 1 or users[0].op_type != op_type or name in outputs:
        return None
    return users[0]


def _bn_params(bn, gr):
    vals = [gr.const.get(i) for i in bn.input[1:5]]
    if any(v is None for v in vals):
        return None
    eps = 1e-5
    for a in bn.attribute:
        if a.name == "epsilon":
            eps = a.f
    gamma, beta, mean, var = (np.asarray(v, np.float64).reshape(-1) for v in vals)
    factor = gamma / np.sqrt(var + eps)
    return factor, beta - mean * factor


def _chain_quantized_convs(model, gr):
    """Rewrite each ``Conv -> [Add] -> BN -> [Relu] -> Q...`` whose quantizers share one
    scale into ``Conv(BN folded) -> Add(bias) -> Q`` (item 3 of the module docstring);
    returns how many."""
    from onnx import helper
    prod, cons = gr.producer(), gr.consumers()
    outputs = {o.name for o in model.graph.output}
    drop, before, after, count = set(), {}, {}, 0  # nodes to put before / after a Conv
    for n in list(model.graph.node):
        pair = _quantized_conv_inputs(n, prod, gr)
        if pair is None:
            continue
        dx, dw = pair
        add, b = _bias_add(n, cons, gr, prod, outputs)
        cur = add.output[0] if add is not None else n.output[0]
        bn = _single_reader(cons, cur, outputs, "BatchNormalization")
        if bn is None:
            continue
        folded = _bn_params(bn, gr)
        if folded is None:
            continue
        factor, shift = folded
        cur = bn.output[0]
        relu = _single_reader(cons, cur, outputs, "Relu")
        if relu is not None:
            cur = relu.output[0]
        qs = cons.get(cur, [])
        if not qs or cur in outputs or any(q.op_type != "QuantizeLinear" for q in qs):
            continue
        scale, zp = qs[0].input[1], qs[0].input[2] if len(qs[0].input) > 2 else ""
        if (not zp or scale not in gr.const or zp not in gr.const
                or any(q.input[1:3] != qs[0].input[1:3] for q in qs)):
            continue
        w = gr.const[dw.input[0]]
        cout = w.shape[0]
        if factor.size != cout or np.any(factor == 0) or not np.all(np.isfinite(factor)):
            continue
        sign = np.where(factor < 0, -1, 1).astype(np.int16)
        if np.any((w.reshape(cout, -1) == -128).any(axis=1) & (sign < 0)):
            continue  # -(-128) is not an int8
        sw = np.broadcast_to(np.asarray(gr.const[dw.input[1]], np.float32).reshape(-1), (cout,))
        base = n.output[0]
        w_new = (w.astype(np.int16) * sign.reshape((cout,) + (1,) * (w.ndim - 1))).astype(np.int8)
        wname = gr.initializer(f"{base}.weight_bn_folded", w_new)
        sname = gr.initializer(f"{base}.weight_bn_folded.scale",
                               (sw * np.abs(factor)).astype(np.float32))
        wzp = gr.initializer(f"{base}.weight_bn_folded.zero_point", np.zeros(cout, np.int8))
        wdq = gr.unique(f"{base}.weight_bn_folded.dequantized")
        before[id(n)] = helper.make_node("DequantizeLinear", [wname, sname, wzp], [wdq],
                                         name=gr.unique(f"{base}.weight.DequantizeLinear"), axis=0)
        n.input[1] = wdq
        bias = (b if b is not None else np.zeros(cout)) * factor + shift
        bname = gr.initializer(f"{base}.bn_folded_bias", bias.astype(np.float32).reshape(1, cout, 1, 1))
        # Conv -> Add(bias) -> Q: the form _fold_conv_bias turns into an int32 Conv bias
        conv_out = gr.unique(f"{base}.bn_folded")
        n.output[0] = conv_out
        if add is not None:
            drop.add(id(add))
        drop.add(id(bn))
        add_out = gr.unique(f"{base}.bn_folded_biased")
        after[id(n)] = [helper.make_node("Add", [conv_out, bname], [add_out],
                                         name=gr.unique(f"{base}.bias.Add"))]
        keep_q = qs[0]
        if relu is None:
            keep_q.input[0] = add_out
        else:
            # Conv -> Q -> DQ -> Relu -> Q (the quantizer's own): on the quantizer's symmetric
            # grid, relu then quantize equals quantize then relu then quantize
            q_mid, dq_mid = gr.unique(f"{base}.before_relu.quantized"), gr.unique(f"{base}.before_relu")
            after[id(n)] += [
                helper.make_node("QuantizeLinear", [add_out, scale, zp], [q_mid],
                                 name=gr.unique(f"{base}.before_relu.QuantizeLinear")),
                helper.make_node("DequantizeLinear", [q_mid, scale, zp], [dq_mid],
                                 name=gr.unique(f"{base}.before_relu.DequantizeLinear"))]
            relu.input[0] = dq_mid
        for q in qs[1:]:  # one quantizer: the others' readers read the first one's output
            drop.add(id(q))
            for r in cons.get(q.output[0], []):
                for i, name in enumerate(r.input):
                    if name == q.output[0]:
                        r.input[i] = keep_q.output[0]
        count += 1
    nodes = []  # in graph order (later passes walk it so)
    for x in model.graph.node:
        if id(x) in drop:
            continue
        nodes += [m for m in [before.get(id(x)), x] + after.get(id(x), []) if m is not None]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return count


def _lower_float_output_convs(model, gr):
    """A quantized Conv whose output Paddle does not quantize (PTQ exports) becomes
    ConvInteger + Cast + Mul(x scale * w scale): ONNX Runtime fuses DQ -> Conv into an
    INT8 kernel only when a QuantizeLinear follows, and would otherwise run the Conv in
    float on dequantized values. ONNX Runtime's CPU ConvInteger takes uint8 weights:
    the int8 weights are stored shifted by 128 with zero point 128 (the same numbers),
    and its u8 x u8 product does not saturate. Exact: the int32 sums are those Paddle's
    float convolution of the dequantized values computes."""
    from onnx import TensorProto, helper
    prod, cons = gr.producer(), gr.consumers()
    outputs = {o.name for o in model.graph.output}
    nodes, count = [], 0
    for n in model.graph.node:
        pair = _quantized_conv_inputs(n, prod, gr)
        if pair is None:
            nodes.append(n)
            continue
        add, _ = _bias_add(n, cons, gr, prod, outputs)
        last = add.output[0] if add is not None else n.output[0]
        readers = cons.get(last, [])
        if len(readers) == 1 and readers[0].op_type == "QuantizeLinear" and last not in outputs:
            nodes.append(n)  # DQ -> Conv (-> bias) -> Q: QLinearConv after _fold_conv_bias
            continue
        dx, dw = pair
        w = gr.const[dw.input[0]]
        cout = w.shape[0]
        sw = np.broadcast_to(np.asarray(gr.const[dw.input[1]], np.float32).reshape(-1), (cout,))
        sx = float(gr.const[dx.input[1]])
        base = n.output[0]
        wu8 = gr.initializer(f"{base}.weight_u8", (w.astype(np.int16) + 128).astype(np.uint8))
        wzp = gr.initializer(f"{base}.weight_zero_point", np.uint8(128))
        scale = gr.initializer(f"{base}.output_scale", (sx * sw).astype(np.float32).reshape(1, cout, 1, 1))
        acc, flt = gr.unique(f"{base}.int32"), gr.unique(f"{base}.float")
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        nodes.append(helper.make_node("ConvInteger", [dx.input[0], wu8, dx.input[2], wzp], [acc],
                                      name=gr.unique(f"{base}.ConvInteger"), **attrs))
        nodes.append(helper.make_node("Cast", [acc], [flt], name=gr.unique(f"{base}.Cast"),
                                      to=TensorProto.FLOAT))
        nodes.append(helper.make_node("Mul", [flt, scale], [base], name=gr.unique(f"{base}.Mul")))
        count += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return count


def _fold_conv_bias(model, gr):
    """Conv(DQ x, DQ w) -> Add(bias) -> Q becomes Conv(DQ x, DQ w, DQ int32 bias) -> Q,
    the form ONNX Runtime fuses into QLinearConv (it wants an int32 bias). The bias is
    rounded to the accumulator's step (x scale * w scale), far below the output's
    quantization step."""
    from onnx import helper
    prod, cons = gr.producer(), gr.consumers()
    outputs = {o.name for o in model.graph.output}
    rename, drop, new = {}, set(), []
    for n in model.graph.node:
        pair = _quantized_conv_inputs(n, prod, gr)
        if pair is None:
            continue
        add, b = _bias_add(n, cons, gr, prod, outputs)
        if add is None:
            continue
        dx, dw = pair
        cout = b.size
        sx = float(gr.const[dx.input[1]])
        sw = np.broadcast_to(np.asarray(gr.const[dw.input[1]], np.float32).reshape(-1), (cout,))
        bs = (sx * sw).astype(np.float32)
        bq = np.round(b.astype(np.float64) / bs)
        if np.abs(bq).max(initial=0) >= 2 ** 31:
            continue
        base = n.output[0]
        bname = gr.initializer(f"{base}.bias_quantized", bq.astype(np.int32))
        sname = gr.initializer(f"{base}.bias_scale", bs)
        zname = gr.initializer(f"{base}.bias_zero_point", np.zeros(cout, np.int32))
        bias = gr.unique(f"{base}.bias")
        new.append(helper.make_node("DequantizeLinear", [bname, sname, zname], [bias],
                                    name=gr.unique(f"{base}.bias.DequantizeLinear"), axis=0))
        while len(n.input) < 3:
            n.input.append("")
        n.input[2] = bias
        rename[n.output[0]] = add.output[0]
        drop.add(id(add))
    nodes = []
    for n in model.graph.node:
        if id(n) in drop:
            continue
        for i, o in enumerate(n.output):
            if o in rename:
                n.output[i] = rename[o]
        nodes.append(n)
    del model.graph.node[:]
    model.graph.node.extend(new + nodes)
    return len(new)


def _prune(model):
    """Drop nodes and initializers nothing reads (the float weights paddle2onnx
    emitted before the rewrite, the Reshapes of folded biases)."""
    needed = {o.name for o in model.graph.output}
    keep = []
    for n in reversed(list(model.graph.node)):
        if any(o in needed for o in n.output):
            keep.append(n)
            needed.update(_reads(n))
    keep.reverse()
    del model.graph.node[:]
    model.graph.node.extend(keep)
    inits = [t for t in model.graph.initializer if t.name in needed]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)


def _topological(model):
    """Order the nodes so every input is produced before it is read."""
    ready = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer} | {""}
    pending, order = list(model.graph.node), []
    while pending:
        rest = []
        for n in pending:
            if all(i in ready for i in _reads(n)):
                order.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise DeployError(f"ONNX graph has a cycle or a dangling input at {rest[0].op_type} "
                              f"{rest[0].name}")
        pending = rest
    del model.graph.node[:]
    model.graph.node.extend(order)

