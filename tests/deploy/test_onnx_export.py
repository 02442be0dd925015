"""The ONNX conversion behind --runtime onnxruntime on the tiny synthetic model: the QDQ
layout of an INT8 export, the deviation check refusing a broken model, and
deploy/python/export_onnx.py."""
import subprocess
import sys

import numpy as np
import onnx
import paddle
import paddle.nn.functional as F
import pytest
from onnx import numpy_helper
from paddle.base import core

from conftest import ROOT, run_script
from segqat import compat, deploy
from segqat.deploy import onnx_export, onnx_runtime, parity

pytestmark = pytest.mark.runtimes  # OpenVINO / ONNX Runtime in the process (Makefile)


def paddle_ops(export_dir):
    with open(export_dir / "model.pdmodel", "rb") as f:
        desc = core.ProgramDesc(f.read())
    blk = desc.block(0)
    return desc, [blk.op(i) for i in range(blk.op_size())]


def paddle_op_types(export_dir):
    desc, ops = paddle_ops(export_dir)  # ops point into desc: keep it alive while they are read
    return [op.type() for op in ops]


def test_qat_export_becomes_qdq_with_paddles_placement(exports):
    dep = deploy.load_deploy_config(str(exports / "int8"))
    model = onnx_export.convert(dep)
    ops = [n.op_type for n in model.graph.node]
    pd_ops = paddle_op_types(exports / "int8")
    desc, pd = paddle_ops(exports / "int8")
    rounding = sum(op.type() == "quantize_linear" and not (op.has_attr("only_observer")
                                                           and op.attr("only_observer")) for op in pd)
    # one quantized convolution per Paddle quantize_linear that rounds (observers are identity
    # in Paddle, old_ir_export._output_observers_stay_identity); batch norms stay (not folded)
    # but where the rewrite into QLinearConv chains folds them (onnx_rewrites, item 3)
    assert 0 < rounding < pd_ops.count("quantize_linear")
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    folded = sum(name.endswith(".weight_bn_folded") for name in inits)
    by_out = {o: n for n in model.graph.node for o in n.output}
    chained = [n for n in model.graph.node if n.op_type == "Conv" and by_out.get(n.input[0]) is not None
               and by_out[n.input[0]].op_type == "DequantizeLinear"]
    assert 0 < folded <= len(chained)
    # quantizers of one tensor with one scale merged; a folded convolution before a relu
    # adds one (Conv -> Q -> DQ -> Relu -> Q)
    assert ops.count("QuantizeLinear") <= rounding + folded
    assert ops.count("BatchNormalization") == pd_ops.count("batch_norm") - folded > 0
    # QAT leaves every convolution's output in float (its output observer is identity): each
    # convolution with a quantized input is either a ConvInteger on the u8 input and the
    # shifted int8 weights, or, where only quantizers read its (batch-normed) output, a Conv
    # with an int32 bias between QDQ pairs (QLinearConv in ONNX Runtime)
    assert ops.count("ConvInteger") + folded == rounding
    for conv in chained:
        assert by_out[conv.input[2]].op_type == "DequantizeLinear"  # the int32 bias
        assert inits[by_out[conv.input[2]].input[0]].dtype == np.int32
    assert ops.count("ConvInteger") + ops.count("Conv") == pd_ops.count("conv2d") + pd_ops.count(
        "depthwise_conv2d")
    consumers = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    for conv in (n for n in model.graph.node if n.op_type == "ConvInteger"):
        assert by_out[conv.input[0]].op_type == "QuantizeLinear"
        w = inits[conv.input[1]]
        assert w.dtype == np.uint8 and int(inits[conv.input[3]]) == 128  # int8 + 128
        cast = consumers[conv.output[0]][0]
        mul = consumers[cast.output[0]][0]
        assert mul.op_type == "Mul" and inits[mul.input[1]].shape == (1, w.shape[0], 1, 1)
    fp32 = onnx_export.convert(deploy.load_deploy_config(str(exports / "fp32")))
    assert len(model.SerializeToString()) < 0.35 * len(fp32.SerializeToString())


def test_corrupted_qdq_model_is_refused(exports):
    """A scale multiplied by 10 (the first convolution's output scale) fails the deviation check."""
    dep = deploy.load_deploy_config(str(exports / "int8"))
    model = onnx_export.convert(dep)
    pred = deploy.create_predictor(str(exports / "fp32"), threads=1)
    batch = onnx_export.check_batch(dep, pred.preprocess)
    # the same check takes any runtime's predictor
    fp32 = deploy.load_deploy_config(str(exports / "fp32"))
    assert parity.check(fp32, pred.run, batch, runtime="Paddle Inference") >= 0.99
    pred.close()
    sess = onnx_runtime.session(model.SerializeToString(), 2)
    assert onnx_export.check(dep, lambda x: sess.run(None, {"x": x})[0], batch) >= 0.99
    first_conv = next(n for n in model.graph.node if n.op_type == "ConvInteger")
    cast = next(n for n in model.graph.node if first_conv.output[0] in n.input)
    mul = next(n for n in model.graph.node if cast.output[0] in n.input)  # x scale * w scale
    t = next(t for t in model.graph.initializer if t.name == mul.input[1])
    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 10, t.name))
    sess = onnx_runtime.session(model.SerializeToString(), 2)
    with pytest.raises(deploy.DeployError, match="deviates from Paddle's fake-quantized") as err:
        onnx_export.check(dep, lambda x: sess.run(None, {"x": x})[0], batch)
    assert "synthetic" not in str(err.value)
    with pytest.raises(deploy.DeployError, match="The check images were synthetic: check on real images "
                                                 r"\(infer.py --check_images"):
        onnx_export.check(dep, lambda x: sess.run(None, {"x": x})[0], batch, synthetic=True)


def test_export_onnx_script(exports, synth, tmp_path, caplog):
    listing = sorted(p.name for p in (exports / "int8").iterdir())
    out = tmp_path / "model.onnx"
    args = ["--config", exports / "int8" / "deploy.yaml", "--save_path", out, "--cpu_threads", 2]
    res = run_script("deploy/python/export_onnx.py", args + ["--image_path", synth / "val.txt"])
    assert res["precision"] == "int8" and sum(res["int8_kernels"].values()) >= 40
    assert res["agreement_with_paddle"] >= 0.99
    model = onnx.load(str(out))
    assert sum(t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)  # weights: u8 = int8 + 128
               for t in model.graph.initializer) >= 40
    stamp = out.stat().st_mtime_ns
    with pytest.raises(SystemExit):
        run_script("deploy/python/export_onnx.py", args)
    assert "exists; give --overwrite" in caplog.text and out.stat().st_mtime_ns == stamp
    run_script("deploy/python/export_onnx.py", args + ["--overwrite"])
    assert sorted(p.name for p in (exports / "int8").iterdir()) == listing  # nothing written there


def test_onnxruntime_option_errors(exports, tmp_path):
    with pytest.raises(deploy.DeployError, match="--runtime onnxruntime does not take device"):
        deploy.create_predictor(str(exports / "fp32"), runtime="onnxruntime", device="cpu")
    with pytest.raises(deploy.DeployError, match=r"min_agreement must be in \[0, 1\]"):
        deploy.create_predictor(str(exports / "fp32"), runtime="onnxruntime", min_agreement=99)
    existing = tmp_path / "m.onnx"
    existing.write_bytes(b"")
    with pytest.raises(deploy.DeployError, match="save_onnx: .* exists"):
        deploy.create_predictor(str(exports / "fp32"), runtime="onnxruntime", save_onnx=str(existing))


def test_ptq_export_with_observer_only_pairs(syn_cfg, fp32_run, tmp_path, monkeypatch):
    """paddleslim's PTQ also writes observer-only quantize/dequantize pairs (identity in
    Paddle): they stay float in the ONNX model; the convolutions Paddle leaves with a float
    output run as ConvInteger. Scores output (--output_op none) is compared by argmax."""
    monkeypatch.setattr(compat, "drop_observer_only_quant", lambda *a, **k: 0)
    raw = tmp_path / "raw"
    run_script("slim/quant/ptq.py", ["--config", syn_cfg, "--model_path",
                                     fp32_run / "best_model" / "model.pdparams", "--save_dir", raw,
                                     "--batch_size", 4, "--batch_nums", 1, "--algo", "abs_max",
                                     "--output_op", "none", "--cpu_threads", 2])
    monkeypatch.undo()
    desc, ops = paddle_ops(raw)
    assert sum(op.type() == "quantize_linear" and op.has_attr("only_observer")
               and op.attr("only_observer") for op in ops) > 20
    pred = deploy.create_predictor(str(raw), runtime="onnxruntime", threads=2)
    try:
        assert sum(pred.int8_ops().values()) >= 40 and pred.agreement >= 0.99
        assert pred.run(np.zeros((1, 3, 64, 64), np.float32)).shape == (1, 4, 64, 64)
    finally:
        pred.close()


class _Pyramid(paddle.nn.Layer):
    """PP-LiteSeg's context module in small: adaptive average pools of one feature map into
    1, 2x4 and 3x3 bins and an adaptive max pool into 3x5 (RTFormer), upsampled back and summed."""

    def __init__(self):
        super().__init__()
        self.conv = paddle.nn.Conv2D(3, 4, 3, padding=1)

    def forward(self, x):
        f = self.conv(x)
        out = f
        for pool, bins in ((F.adaptive_avg_pool2d, 1), (F.adaptive_avg_pool2d, (2, 4)),
                           (F.adaptive_avg_pool2d, 3), (F.adaptive_max_pool2d, (3, 5))):
            out = out + F.interpolate(pool(f, bins), size=paddle.shape(f)[2:],
                                      mode="bilinear", align_corners=False)
        return out


def test_adaptive_average_pooling_is_exact_for_any_input_size(tmp_path):
    """paddle2onnx writes adaptive pooling, average and max, as fixed windows (strides 0 for a
    dynamic size, which ONNX Runtime refuses); the converted model pools exactly, also where
    the feature map does not divide into the bins."""
    paddle.seed(0)
    layer = _Pyramid()
    layer.eval()
    prefix = tmp_path / "model"
    with compat.old_ir_export(layer, timeout=120):
        paddle.jit.save(layer, str(prefix), input_spec=[paddle.static.InputSpec([-1, 3, -1, -1], "float32", "x")])
    dep = {"model_file": f"{prefix}.pdmodel", "params_file": f"{prefix}.pdiparams"}
    model = onnx_export.convert(dep)
    ops = [n.op_type for n in model.graph.node]
    assert "AveragePool" not in ops and "MaxPool" not in ops and ops.count("GlobalAveragePool") == 1
    assert ops.count("MatMul") == 4 and ops.count("ReduceMax") == 3 + 5
    sess = onnx_runtime.session(model.SerializeToString(), 2)
    rng = np.random.RandomState(0)
    for h, w in ((8, 8), (13, 21), (6, 7), (45, 60), (2, 3)):  # (2, 3): fewer rows than bins
        x = rng.randn(2, 3, h, w).astype("float32")
        ref = onnx_export.paddle_outputs(dep, [x])
        got = sess.run(None, {"x": x})[0]
        assert got.shape == ref.shape == (2, 4, h, w)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


_POOLS_WITHOUT_PADDLE = """
import sys
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from segqat.deploy import onnx_rewrites
nodes = [helper.make_node("AveragePool", ["x"], ["avg"], kernel_shape=[2, 2], strides=[2, 2]),
         helper.make_node("MaxPool", ["x"], ["max"], kernel_shape=[2, 2], strides=[2, 2])]
value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 2, None, None])
graph = helper.make_graph(nodes, "pools", [value("x")], [value("avg"), value("max")])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
assert onnx_rewrites.exact_adaptive_pools(model, {"avg": ("avg", (2, 3)), "max": ("max", (2, 3))}) == 2
onnx.checker.check_model(model)
sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
x = np.random.RandomState(0).rand(1, 2, 5, 7).astype("float32")
avg, mx = sess.run(None, {"x": x})
bins = lambda n, o: [(i * n // o, -(-(i + 1) * n // o)) for i in range(o)]
for got, reduce in ((avg, np.mean), (mx, np.max)):
    want = [[[reduce(x[0, c, h0:h1, w0:w1]) for w0, w1 in bins(7, 3)] for h0, h1 in bins(5, 2)]
            for c in range(2)]
    np.testing.assert_allclose(got, np.array([want]), rtol=1e-5, atol=1e-6)
assert "paddle" not in sys.modules, "onnx_rewrites imported paddle"
"""


def test_graph_rewrites_run_without_paddle():
    """The ONNX graph rewrites need only onnx and numpy: on a hand-built graph (fixed-window
    pools, as paddle2onnx writes adaptive ones) the exact adaptive pools compute adaptive
    average and max pooling of a 5x7 map into 2x3 bins, in a process without paddle."""
    subprocess.run([sys.executable, "-c", _POOLS_WITHOUT_PADDLE], cwd=str(ROOT), check=True)


def test_op_paddle2onnx_cannot_convert_is_an_error_not_an_abort(tmp_path):
    """paddle2onnx 1.3.1 aborts the process (SIGABRT) on an op it has no converter for
    (CCNet's diag_v2, ENet's unpool); the conversion names the op first instead."""
    class _Diag(paddle.nn.Layer):
        def forward(self, x):
            return x * paddle.diag(x.mean(axis=[0, 2, 3])).sum(axis=0).reshape([1, -1, 1, 1])
    prefix = tmp_path / "model"
    with compat.old_ir_export(_Diag(), timeout=120):
        paddle.jit.save(_Diag(), str(prefix), input_spec=[paddle.static.InputSpec([1, 3, -1, -1], "float32", "x")])
    dep = {"model_file": f"{prefix}.pdmodel", "params_file": f"{prefix}.pdiparams"}
    with pytest.raises(deploy.DeployError, match=r"model.pdmodel: paddle2onnx 1.3.1 cannot convert the "
                                                 r"op\(s\) diag_v2, so this model cannot run on ONNX Runtime"):
        onnx_export.convert(dep)


def test_int8_model_with_a_branch_converts(tmp_path):
    """ISANet pads H, W up to a multiple of its down factor in a conditional block: in ONNX an
    If whose branches read outer tensors by name. The QDQ rewrite keeps what the branches
    read (it dropped it before: "Nodes in a graph must be topologically sorted"); padded
    (6x10) and unpadded (8x8) inputs match Paddle's fake quantization."""
    from old_ir_helpers import ISAHeadOnly, quantized_for_eval
    paddle.seed(0)
    layer = ISAHeadOnly()
    quanter, r = quantized_for_eval(layer, seed=3)
    prefix = tmp_path / "model"
    with compat.old_ir_export(layer, timeout=120):
        quanter.save_quantized_model(layer, str(prefix), input_spec=[
            paddle.static.InputSpec([1, 3, -1, -1], "float32", "x")])
    dep = {"model_file": f"{prefix}.pdmodel", "params_file": f"{prefix}.pdiparams"}
    model = onnx_export.convert(dep)
    ops = [n.op_type for n in model.graph.node]
    assert "If" in ops and ops.count("ConvInteger") >= 4
    sess = onnx_runtime.session(model.SerializeToString(), 2)
    for shape in ((1, 3, 6, 10), (1, 3, 8, 8)):
        x = r.rand(*shape).astype("float32")
        ref = onnx_export.paddle_outputs(dep, [x])
        got = sess.run(None, {"x": x})[0]
        assert got.shape == ref.shape
        assert float(np.abs(got - ref).max() / np.abs(ref).max()) < 0.05


def test_same_padding_ignores_dilation_as_paddle_does(tmp_path):
    """Paddle's padding="same" computes the padding from the kernel and runs the convolution
    undilated; paddle2onnx kept the dilation with auto_pad SAME (ONNX Runtime refused it:
    "Dilation not supported for AutoPad"). ESPNetV2 has such convolutions."""
    paddle.seed(0)
    layer = paddle.nn.Sequential(paddle.nn.Conv2D(3, 4, 3, padding="same", dilation=2),
                                 paddle.nn.Conv2D(4, 4, 3, padding="same", dilation=3, stride=2))
    layer.eval()
    prefix = tmp_path / "model"
    with compat.old_ir_export(layer, timeout=120):
        paddle.jit.save(layer, str(prefix), input_spec=[paddle.static.InputSpec([-1, 3, -1, -1], "float32", "x")])
    dep = {"model_file": f"{prefix}.pdmodel", "params_file": f"{prefix}.pdiparams"}
    sess = onnx_runtime.session(onnx_export.convert(dep).SerializeToString(), 2)
    rng = np.random.RandomState(0)
    for h, w in ((9, 10), (16, 16)):
        x = rng.randn(1, 3, h, w).astype("float32")
        ref = onnx_export.paddle_outputs(dep, [x])
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], ref, rtol=1e-5, atol=1e-5)


_CHAIN_WITHOUT_PADDLE = """
import sys
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from segqat.deploy import onnx_rewrites
from segqat.deploy.onnx_runtime import session_options

rng = np.random.RandomState(0)
C0, C1, C2 = 4, 8, 6
w0 = rng.randint(-127, 128, (C1, C0, 3, 3)).astype(np.int8)
w1 = rng.randint(-127, 128, (C2, C1, 3, 3)).astype(np.int8)
s_w0, s_w1 = rng.uniform(0.5, 1.5, C1).astype(np.float32), rng.uniform(0.5, 1.5, C2).astype(np.float32)
gamma = rng.uniform(0.5, 2, C1).astype(np.float32)
gamma[1] = -gamma[1]                            # a negative batch-norm factor flips the weights
bn = [gamma, rng.randn(C1).astype(np.float32), rng.randn(C1).astype(np.float32) * 0.1,
      rng.uniform(0.5, 2, C1).astype(np.float32)]
bias = rng.randn(1, C1, 1, 1).astype(np.float32)
init = lambda name, a: numpy_helper.from_array(np.asarray(a), name)
def graph(relu, weights=None):
    # paddle2onnx's form: Identity / Cast placeholders where Paddle quantizes
    op = "Identity" if weights else "Cast"
    attrs = {} if weights else {"to": TensorProto.FLOAT}
    nodes = [helper.make_node("Identity", ["x"], ["xq"]),
             helper.make_node(op, ["w0"], ["w0q"], **attrs),
             helper.make_node("Conv", ["xq", "w0q"], ["c0"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c0", "b0"], ["a0"]),
             helper.make_node("BatchNormalization", ["a0", "g", "be", "m", "v"], ["n0"], epsilon=1e-5)]
    nodes += [helper.make_node("Relu", ["n0"], ["r0"])] if relu else []
    nodes += [helper.make_node("Identity", ["r0" if relu else "n0"], ["rq"]),
              helper.make_node(op, ["w1"], ["w1q"], **attrs),
              helper.make_node("Conv", ["rq", "w1q"], ["y"], pads=[1, 1, 1, 1])]
    inits = [init("w0", (weights or (w0, w1))[0]), init("w1", (weights or (w0, w1))[1]), init("b0", bias)]
    inits += [init(n, a) for n, a in zip(("g", "be", "m", "v"), bn)]
    vi = lambda n, c: helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, c, 12, 12])
    g = helper.make_graph(nodes, "chain", [vi("x", C0)], [vi("y", C2), vi("rq", C1)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
run = lambda m, so=None: ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
q = lambda t, s: np.clip(np.round(t / (s / 127)), -128, 127) * (s / 127)  # Paddle's fake quant
deq = (w0.astype(np.float32) * s_w0.reshape(-1, 1, 1, 1), w1.astype(np.float32) * s_w1.reshape(-1, 1, 1, 1))
x = rng.randn(1, C0, 12, 12).astype(np.float32)
s_x = float(np.abs(x).max())
for relu, clip in ((True, 1.0), (False, 1.0), (True, 0.8), (False, 0.8)):
    # what Paddle computes: float ops on fake-quantized tensors, batch norm unfolded
    _, mid = run(graph(relu, deq)).run(None, {"x": q(x, s_x)})
    s_r = float(np.abs(mid).max()) * clip      # clip < 1: values beyond the scale, clipped by Paddle
    quant = {"xq": {"kind": "act", "src": "x", "scale": [s_x], "axis": -1, "bits": 8},
             "w0q": {"kind": "weight", "src": "w0", "scale": s_w0 * 127, "axis": 0, "bits": 8},
             "w1q": {"kind": "weight", "src": "w1", "scale": s_w1 * 127, "axis": 0, "bits": 8},
             "rq": {"kind": "act", "src": "rq", "scale": [s_r], "axis": -1, "bits": 8}}
    model = graph(relu)
    model.graph.output.pop()                    # the rewrite may rename rq; compare y only
    assert onnx_rewrites.to_qdq(model, quant) == (1, 1, 1), relu
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert "BatchNormalization" not in ops and ops.count("Relu") == relu, ops
    so = session_options(1, sys.argv[1] + f"/optimized_{relu}_{clip}.onnx")
    got = run(model, so).run(None, {"x": x})[0]
    kernels = [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]
    assert kernels.count("QLinearConv") == 1, kernels
    # reference: the second convolution on the fake-quantized relu/BN output
    qmid = q(mid, s_r)   # clipped at 127 steps as Paddle clips, relu or not
    want = np.stack([sum(np.pad(qmid[0, i], 1)[dy:dy + 12, dx:dx + 12] * deq[1][o, i, dy, dx]
                         for i in range(C1) for dy in range(3) for dx in range(3)) for o in range(C2)])[None]
    err = np.abs(got - want) / np.abs(want).max()
    # equal but where a value sits on a rounding boundary (folding the batch norm moves it by
    # float rounding): one input step changes an output by at most max|w1| * step
    assert np.mean(err > 1e-4) < 0.05 and err.max() < 0.05, (relu, clip, np.mean(err > 1e-4), err.max())
assert "paddle" not in sys.modules
"""


def test_quantized_conv_chain_becomes_qlinearconv(tmp_path):
    """Conv -> bias -> batch norm (one factor negative) -> [relu] -> quantizer -> Conv, as
    paddle2onnx writes a QAT export: the rewrite folds the batch norm into the int8 weights'
    scales and quantizes the convolution's output (before the relu, on the quantizer's grid),
    ONNX Runtime runs QLinearConv, and the output equals the fake-quantized float computation
    (Paddle's, values beyond the scale clipped) but for values on a rounding boundary.
    Without paddle in the process."""
    subprocess.run([sys.executable, "-c", _CHAIN_WITHOUT_PADDLE, str(tmp_path)], cwd=str(ROOT), check=True)
