"""Every paddle API that paddle 3.3.1 binds to new-IR-only ops builds its legacy op in the old IR.

``compat.old_ir_export`` reroutes these names generically (paddle's signature +
legacy OpProto + op_compat name map); each case builds a one-op old-IR program,
runs it and compares it with dygraph. Also: the DNLNet deadlock pattern, the
watchdog, and errors that name the layer and op.
"""
import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from conftest import ROOT
from old_ir_helpers import ISAHeadOnly, paddle_inference, paddle_inference_runs, quantized_for_eval
from segqat import compat
from segqat.compat import function_fixes, legacy_ops

R = np.random.RandomState(0)
A = R.randn(2, 3, 4).astype("float32")
B = R.randn(2, 3, 4).astype("float32")
M = R.randn(2, 4, 5).astype("float32")
POS = (np.abs(A) + 0.5).astype("float32")
V = R.randn(6).astype("float32")
BOOL = A > 0
BOOL2 = B > 0
GRID = (R.rand(2, 3, 4, 2).astype("float32") * 2 - 1)
IMG = R.randn(2, 3, 5, 6).astype("float32")
W30 = R.randn(2, 30, 4).astype("float32")

CASES = {
    "bmm": (lambda x, y: paddle.bmm(x, y), [A, M]),
    "bmm_method": (lambda x, y: x.bmm(y), [A, M]),
    "matmul_t": (lambda x, y: paddle.matmul(x, y, transpose_y=True), [A, B]),
    "matmul_method": (lambda x, y: x.matmul(y), [A, M]),
    "multiply": (lambda x, y: paddle.multiply(x, y), [A, B]),
    "maximum": (lambda x, y: paddle.maximum(x, y), [A, B]),
    "minimum": (lambda x, y: paddle.minimum(x, y), [A, B]),
    "greater_than": (lambda x, y: paddle.greater_than(x, y), [A, B]),
    "logical_and": (lambda x, y: paddle.logical_and(x, y), [BOOL, BOOL2]),
    "logical_or": (lambda x, y: paddle.logical_or(x, y), [BOOL, BOOL2]),
    "logical_xor": (lambda x, y: paddle.logical_xor(x, y), [BOOL, BOOL2]),
    "logical_not": (lambda x: paddle.logical_not(x), [BOOL]),
    "sum_all": (lambda x: paddle.sum(x), [A]),
    "sum_axis_keep": (lambda x: paddle.sum(x, axis=1, keepdim=True), [A]),
    "sum_method_list": (lambda x: x.sum(axis=[1, 2]), [A]),
    "sum_dtype": (lambda x: paddle.sum(x, axis=-1, dtype="float64"), [A]),
    "amax": (lambda x: paddle.amax(x, axis=2), [A]),
    "amin": (lambda x: x.amin(), [A]),
    "all": (lambda x: paddle.all(x, axis=1), [BOOL]),
    "any": (lambda x: paddle.any(x), [BOOL]),
    "argmax": (lambda x: paddle.argmax(x, axis=1), [A]),
    "argmax_int32_keep": (lambda x: paddle.argmax(x, axis=-1, keepdim=True, dtype="int32"), [A]),
    "argmax_flat": (lambda x: paddle.argmax(x), [A]),
    "argmin": (lambda x: x.argmin(axis=0), [A]),
    "logsumexp": (lambda x: paddle.logsumexp(x, axis=1), [A]),
    "logsumexp_all": (lambda x: paddle.logsumexp(x), [A]),
    "sigmoid": (lambda x: F.sigmoid(x), [A]),
    "sigmoid_method": (lambda x: x.sigmoid(), [A]),
    "tanh": (lambda x: paddle.tanh(x), [A]),
    "exp": (lambda x: paddle.exp(x), [A]),
    "log": (lambda x: paddle.log(x), [POS]),
    "sqrt": (lambda x: paddle.sqrt(x), [POS]),
    "rsqrt": (lambda x: paddle.rsqrt(x), [POS]),
    "abs": (lambda x: paddle.abs(x), [A]),
    "floor_ceil_round": (lambda x: paddle.floor(x) + paddle.ceil(x) + paddle.round(x), [A]),
    "sign": (lambda x: paddle.sign(x), [A]),
    "trig": (lambda x: paddle.sin(x) + paddle.cos(x) + paddle.sinh(x) + paddle.cosh(x), [A]),
    "isnan_isinf_isfinite": (lambda x: paddle.logical_or(paddle.isnan(x), paddle.isinf(x)).logical_xor(
        paddle.isfinite(x)), [A]),
    "isclose": (lambda x, y: paddle.isclose(x, y, atol=0.5), [A, B]),
    "expand_as": (lambda x, y: paddle.expand_as(x, y), [A[:1], B]),
    "roll": (lambda x: paddle.roll(x, shifts=1, axis=1), [A]),
    "tril": (lambda x: paddle.tril(x, diagonal=1), [A]),
    "triu": (lambda x: paddle.triu(x), [A]),
    "diagonal": (lambda x: paddle.diagonal(x, axis1=1, axis2=2), [A]),
    "dot": (lambda x, y: paddle.dot(x, y), [V, V * 2]),
    "gelu": (lambda x: F.gelu(x), [A]),
    "gelu_tanh": (lambda x: F.gelu(x, approximate=True), [A]),
    "softplus": (lambda x: F.softplus(x, beta=2.0), [A]),
    "grid_sample": (lambda x, g: F.grid_sample(x, g, align_corners=False), [IMG, GRID]),
    # reshape -> transpose(last two) -> matmul is folded into transpose_x / transpose_y
    # (legacy_ops._fold_reshape_transpose, ANN's AFNB query path); same values either way
    "matmul_reshape_transpose_x": (lambda x, y: paddle.matmul(
        paddle.transpose(paddle.reshape(x, [0, 3, -1]), [0, 2, 1]), y), [IMG, A]),
    "matmul_reshape_transpose_x_t": (lambda x, y: paddle.matmul(
        paddle.reshape(x, [0, 3, -1]).transpose([0, 2, 1]), y, transpose_x=True), [IMG, W30]),
    "matmul_reshape_transpose_y": (lambda x, y: x.matmul(
        paddle.transpose(paddle.reshape(y, [0, 3, -1]), [0, 2, 1]), transpose_y=True), [A.transpose(0, 2, 1).copy(), IMG]),
}


def _run_old_ir(fn, arrays):
    with compat.old_ir_export(timeout=60):
        paddle.enable_static()
        try:
            main, startup = paddle.static.Program(), paddle.static.Program()
            with paddle.static.program_guard(main, startup):
                ins = [paddle.static.data(f"in{i}", a.shape, str(a.dtype)) for i, a in enumerate(arrays)]
                out = fn(*ins)
            assert isinstance(out, paddle.base.framework.Variable)
            exe = paddle.static.Executor(paddle.CPUPlace())
            got = exe.run(main, feed={f"in{i}": a for i, a in enumerate(arrays)}, fetch_list=[out])[0]
            op_types = [op.type for op in main.global_block().ops]
        finally:
            paddle.disable_static()
    return np.asarray(got), op_types


@pytest.mark.parametrize("case", sorted(CASES))
def test_legacy_op_matches_dygraph(case):
    fn, arrays = CASES[case]
    got, op_types = _run_old_ir(fn, arrays)
    want = np.asarray(fn(*[paddle.to_tensor(a) for a in arrays]).numpy())
    assert got.shape == want.shape, (case, op_types)
    assert got.dtype == want.dtype, (case, op_types)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"{case}: {op_types}")


def test_every_new_ir_only_name_has_a_legacy_op():
    """Each name paddle binds to a new-IR-only op maps to a registered legacy OpProto."""
    from paddle.base.framework import OpProtoHolder
    names = legacy_ops.new_ir_only_names()
    assert {"bmm", "matmul", "sigmoid", "sum", "argmax"} <= set(names)
    protos = OpProtoHolder.instance().op_proto_map
    no_op = [n for n in names if legacy_ops.legacy_op_type(n) not in protos]
    # index_put_ (in place) has no legacy form; nothing in paddleseg uses it
    assert no_op == ["index_put_"]


def test_names_are_restored_and_dygraph_untouched():
    before = (paddle.bmm, paddle.Tensor.sum, F.sigmoid, paddle.tensor.linalg.bmm)
    x = paddle.to_tensor(A)
    with compat.old_ir_export(timeout=60):
        # dygraph calls inside the guard still run paddle's own functions
        np.testing.assert_allclose(x.sum(axis=1).numpy(), A.sum(axis=1), rtol=1e-5)
        assert paddle.bmm is not before[0] and paddle.tensor.linalg.bmm is not before[3]
    assert (paddle.bmm, paddle.Tensor.sum, F.sigmoid, paddle.tensor.linalg.bmm) == before


class _DNLPattern(paddle.nn.Layer):
    """DisentangledNonLocal2D's ``paddle.matmul(a, b).transpose(...).reshape(...)``.

    dy2static evaluates ``_jst.Call(paddle.matmul)`` while holding its
    non-reentrant cache lock; before the fix that converted our function and
    deadlocked (DNLNet export hung forever).
    """

    def __init__(self):
        super().__init__()
        self.conv = paddle.nn.Conv2D(3, 4, 1)

    def forward(self, x):
        f = self.conv(x).reshape([0, 4, -1])
        y = paddle.matmul(f, f.transpose([0, 2, 1])).transpose([0, 2, 1]).reshape([0, 4, 2, 2])
        return y.sum(axis=1)


def test_dnlnet_matmul_pattern_exports(tmp_path):
    layer = _DNLPattern()
    layer.eval()
    with compat.old_ir_export(layer, timeout=120):
        paddle.jit.save(layer, str(tmp_path / "m"),
                        input_spec=[paddle.static.InputSpec([1, 3, 4, 4], "float32")])
    assert (tmp_path / "m.pdmodel").is_file()


class _Unexportable(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.head = paddle.nn.Conv2D(3, 4, 1)

    def forward(self, x):
        return paddle.roll(self.head(x), shifts=1, axis=1, name=None) + paddle.index_put_(
            x, [paddle.zeros([1], "int64")], x[0])


def test_unexportable_op_names_layer_and_op(tmp_path):
    layer = _Unexportable()
    layer.eval()
    with pytest.raises(compat.ExportError, match=r"index_put_.*layer"):
        with compat.old_ir_export(layer, timeout=120):
            paddle.jit.save(layer, str(tmp_path / "m"),
                            input_spec=[paddle.static.InputSpec([1, 3, 4, 4], "float32")])


def test_watchdog_bounds_a_hang():
    """In a child process: SIGALRM in a process that has loaded other runtimes' native
    threads (earlier tests) is not what this tests."""
    import subprocess
    import sys
    code = """
import threading, time
from segqat import compat
lock = threading.Lock(); lock.acquire(); t = time.time()
try:
    with compat.old_ir_export(timeout=1):
        lock.acquire()  # a deadlock like dy2static's, interrupted by the watchdog
except compat.ExportError as e:
    assert "did not finish within 1" in str(e), e
    assert time.time() - t < 10
    print("BOUNDED")
"""
    root = str(ROOT)
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "BOUNDED" in r.stdout, r.stderr[-2000:]


def test_normalize_old_ir_branch_fixed():
    """paddle 3.3.1's own static F.normalize raises UnboundLocalError (EMANet); ours works."""
    for p in (1, 2):
        fn = (lambda x, _p=p: F.normalize(x, axis=1, p=_p))
        got, op_types = _run_old_ir(fn, [A])
        assert "p_norm" in op_types
        np.testing.assert_allclose(got, fn(paddle.to_tensor(A)).numpy(), rtol=1e-5, atol=1e-6)


class _ConvReshapeTransposeMatmul(paddle.nn.Layer):
    """ANN's AFNB/APNB query path: conv -> reshape([0, C, -1]) -> transpose([0, 2, 1]) -> matmul."""

    def __init__(self, c=16):
        super().__init__()
        self.c = c
        self.conv = paddle.nn.Conv2D(c, c, 1)

    def forward(self, x, key):
        q = paddle.reshape(self.conv(x), shape=(0, self.c, -1))
        q = paddle.transpose(q, perm=(0, 2, 1))
        return (self.c ** -.5) * paddle.matmul(q, key)


def _save_old_ir(layer, prefix, shape=(-1, 3, -1, -1)):
    """Export ``layer`` (input "x" of ``shape``) under segqat's old-IR guard."""
    with compat.old_ir_export(layer, timeout=120):
        paddle.jit.save(layer, str(prefix), input_spec=[paddle.static.InputSpec(list(shape), "float32", "x")])


def test_conv_reshape_transpose_matmul_inpaddle_inference(tmp_path):
    """Paddle Inference 3.3.1's reshape_transpose_matmul_onednn_fuse_pass (default CPU passes,
    with or without enable_onednn) fuses the three ops into a fused_matmul that reads the
    conv output wrongly (25 off here; ANN logits 1834 off). The export folds the transpose
    into the matmul's transpose flag, so the pass finds nothing to fuse."""
    paddle.seed(0)
    layer = _ConvReshapeTransposeMatmul()
    layer.eval()
    r = np.random.RandomState(1)
    x, key = r.randn(1, 16, 8, 8).astype("float32"), r.randn(1, 16, 5).astype("float32")
    want = layer(paddle.to_tensor(x), paddle.to_tensor(key)).numpy()
    with compat.old_ir_export(layer, timeout=120):
        paddle.jit.save(layer, str(tmp_path / "m"), input_spec=[
            paddle.static.InputSpec([-1, 16, -1, -1], "float32", "x"),
            paddle.static.InputSpec([-1, 16, 5], "float32", "key")])
    for onednn in (False, True):
        got = paddle_inference(tmp_path / "m", (x, key), onednn)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f"onednn={onednn}")


def test_ann_fp32_export_matches_dygraph(tmp_path):
    """ANN (ResNet50_vd, random init, 4 classes): the FP32 export run by Paddle Inference
    (default passes, oneDNN on and off) matches dygraph; before the reshape/transpose/matmul
    fold its logits were 1834 off (largest 4021) and 70% of labels agreed."""
    from paddleseg.models import ANN
    from paddleseg.models.backbones import ResNet50_vd
    from segqat import export
    paddle.seed(0)
    model = ANN(4, ResNet50_vd(output_stride=8))
    model.eval()
    x = np.random.RandomState(0).randn(1, 3, 64, 64).astype("float32")
    want = model(paddle.to_tensor(x))[0].numpy()
    d = export.export_model({"model": {"num_classes": 4}}, model, str(tmp_path / "ann"), output_op="none")
    for onednn in (False, True):
        got = paddle_inference(f"{d}/model", (x,), onednn)
        scale = np.abs(want).max()
        assert np.abs(got - want).max() < 1e-4 * scale, (onednn, np.abs(got - want).max(), scale)
        assert (got.argmax(1) == want.argmax(1)).mean() > 0.999


def test_concat_of_0d_scalars_builds_a_shape_vector():
    """paddleseg 2.8 (written for paddle 2.4, where ``paddle.shape(x)[2]`` had shape [1])
    concatenates 0-d scalars; paddle 3.3.1 raises "The axis is expected to be in range of
    [0, 0)". Under the export guard concat promotes them to shape [1], as 2.4 did."""
    def fn(x):
        s = paddle.shape(x)
        return paddle.concat([s[2] // 2, s[1] - 1, paddle.to_tensor([7], dtype="int32")], axis=0)
    got, op_types = _run_old_ir(fn, [IMG])
    np.testing.assert_array_equal(got, [2, 2, 7])
    assert got.dtype == np.int32 and "concat" in op_types


def test_isanet_head_with_padding_exports(tmp_path, monkeypatch):
    """ISAHead pads H, W up to a multiple of down_factor with ``paddle.concat`` of 0-d scalars
    (paddleseg/models/isanet.py:131). The dynamic-shape export traces that branch; before the
    0-d promotion it failed: "The axis is expected to be in range of [0, 0), but got 0".
    The exported program pads (6x10 -> 8x12) or not (8x8) as the dygraph model does."""
    paddle.seed(0)
    layer = ISAHeadOnly()
    layer.eval()
    _save_old_ir(layer, tmp_path / "m")
    # dygraph's padding branch needs the same promotion (dygraph concat rejects 0-d too)
    monkeypatch.setattr(paddle, "concat", function_fixes.replacements()["concat"][1])
    r = np.random.RandomState(2)
    for shape in ((1, 3, 6, 10), (1, 3, 8, 8)):
        x = r.randn(*shape).astype("float32")
        want = layer(paddle.to_tensor(x)).numpy()
        for onednn in (False, True):
            got = paddle_inference(tmp_path / "m", (x,), onednn)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=f"{shape} onednn={onednn}")


@pytest.mark.parametrize("in_shape, shape, want", [
    ([1, 64, -1, -1], [-1, 64, 0, 0], [1, 64, -1, -1]),   # RTFormer's ExternalAttention
    ([1, 64, -1, -1], [1, -1, 0, 0], [1, 64, -1, -1]),
    ([-1, 64, 1, 1], [0, -1], [-1, 64]),
    ([-1, 64, -1, -1], [-1, 64, 0, 0], [-1, 64, -1, -1]),  # an unknown dim that does not cancel
    ([2, 6, -1], [0, 3, -1], [2, 3, -1]),                 # -1 next to an unknown non-copied dim
])
def test_reshape_infers_minus_one_where_copied_dims_cancel(in_shape, shape, want):
    def fn(x):
        return paddle.reshape(x, shape)
    with compat.old_ir_export(timeout=60, infer_reshape_dims=True):
        paddle.enable_static()
        try:
            with paddle.static.program_guard(paddle.static.Program(), paddle.static.Program()):
                x = paddle.static.data("x", in_shape, "float32")
                assert list(fn(x).shape) == want
                assert list(x.reshape(shape).shape) == want  # the Variable method too
        finally:
            paddle.disable_static()


class _CrossAttention(paddle.nn.Layer):
    """RTFormer's ExternalAttention with cross k/v (``F.conv2d(..., groups=x.shape[0])``):
    the filters are computed from the input (RTFormer's cross_kv: conv + pool), and a
    reshape before it loses the static batch size, as RTFormer's previous block does."""

    def __init__(self, c=8, inter=6):
        super().__init__()
        from paddleseg.models.rtformer import ExternalAttention
        self.stem = paddle.nn.Conv2D(3, c, 1)
        self.kv = paddle.nn.Conv2D(c, 2 * inter * c, 1)
        self.attn = ExternalAttention(c, c, inter, num_heads=2, use_cross_kv=True)
        self.c, self.inter = c, inter

    def forward(self, x):
        f = self.stem(x)
        k, v = paddle.split(self.kv(F.adaptive_avg_pool2d(f, 1)), 2, axis=1)
        f = f.reshape([1, -1, 0, 0]).reshape([-1, self.c, 0, 0])
        return self.attn(f, k.reshape([-1, self.c, 1, 1]), v.reshape([-1, self.inter, 1, 1]))


@pytest.mark.parametrize("batch", [1, -1])
def test_rtformer_cross_attention_exports_with_a_fixed_batch(tmp_path, batch):
    """``groups=B`` with ``B = x.shape[0]`` needs the batch size as an int while the program is
    built. A fixed batch (1) used to fail anyway ("The groups of conv2d should be not be zero.":
    paddle's reshape inference lost it); now it exports and matches dygraph, also through the
    oneDNN INT8 passes, which stopped at the computed filter ("The input persistable var
    [reshape2_6.tmp_0] of [conv2d] op is not found") until it stopped being a conv2d. One
    predictor runs three different inputs: as a conv3d, the computed filter of the first run
    was reused by oneDNN for the later ones (wrong outputs from the second input on). A
    dynamic batch cannot work: the error says to export with a fixed one."""
    paddle.seed(0)
    layer = _CrossAttention()
    layer.eval()
    spec = [paddle.static.InputSpec([batch, 3, -1, -1], "float32", "x")]
    if batch == -1:
        with pytest.raises(compat.ExportError, match=r"groups=<tensor>.*--input_shape 1 C -1 -1"):
            with compat.old_ir_export(layer, timeout=120):
                paddle.jit.save(layer, str(tmp_path / "m"), input_spec=spec)
        return
    with compat.old_ir_export(layer, timeout=120, infer_reshape_dims=True):
        paddle.jit.save(layer, str(tmp_path / "m"), input_spec=spec)
    r = np.random.RandomState(3)
    xs = [r.randn(1, 3, 5, 7).astype("float32") for _ in range(3)]
    want = [layer(paddle.to_tensor(x)).numpy() for x in xs]
    for onednn in (False, True, "int8"):
        got = paddle_inference_runs(tmp_path / "m", [(x,) for x in xs], onednn)
        for i, (g, w) in enumerate(zip(got, want)):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=f"onednn={onednn}, input {i}")


def _op_types(prefix):
    from collections import Counter
    exe = paddle.static.Executor(paddle.CPUPlace())
    with compat.old_ir_static():
        with paddle.static.scope_guard(paddle.static.Scope()):
            prog, _, _ = paddle.static.load_inference_model(str(prefix), exe)
    return Counter(op.type for op in prog.global_block().ops)


def test_computed_1x1_filters_become_matmul_and_qat_weights_stay_conv2d(tmp_path):
    """Only a filter computed from the input leaves conv2d (a 1x1 one becomes a matmul); a QAT
    layer's weight (the parameter behind fake quantization ops, ``function_fixes._stored_weight``)
    stays a conv2d that oneDNN runs in INT8."""
    paddle.seed(0)
    layer = _CrossAttention()
    quanter, r = quantized_for_eval(layer, seed=4)
    with compat.old_ir_export(layer, timeout=120, infer_reshape_dims=True):
        quanter.save_quantized_model(layer, str(tmp_path / "m"), input_spec=[
            paddle.static.InputSpec([1, 3, -1, -1], "float32", "x")])
    ops = _op_types(tmp_path / "m")
    # stem + kv stay conv2d; the cross k and v convs are matmuls (with ExternalAttention's own)
    assert ops["conv2d"] == 2 and ops["conv3d"] == 0 and ops["matmul_v2"] >= 2, ops
    got = paddle_inference(tmp_path / "m", (r.rand(1, 3, 5, 7).astype("float32"),), "int8")
    assert got.shape == (1, 8, 5, 7) and np.isfinite(got).all()


class _Computed3x3(paddle.nn.Layer):
    """A 3x3 filter computed from the input (DMNet-style dynamic filters)."""

    def __init__(self):
        super().__init__()
        self.gen = paddle.nn.Conv2D(3, 4 * 3 * 9, 1)

    def forward(self, x):
        w = self.gen(F.adaptive_avg_pool2d(x, 1)).reshape([4, 3, 3, 3])
        return F.conv2d(x, w, padding=1)


def test_other_computed_filters_stay_conv3d_with_a_warning(tmp_path, caplog):
    """A computed filter that is not a plain 1x1 is still written as conv3d (same result on a
    predictor's first run), and the export warns about oneDNN's filter reuse."""
    paddle.seed(0)
    layer = _Computed3x3()
    layer.eval()
    with caplog.at_level("WARNING", logger="segqat.compat"):
        _save_old_ir(layer, tmp_path / "m", shape=(1, 3, -1, -1))
    assert _op_types(tmp_path / "m")["conv3d"] == 1
    assert any("computed 3x3 filter" in r.getMessage() and "conv3d" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    x = np.random.RandomState(5).randn(1, 3, 6, 6).astype("float32")
    np.testing.assert_allclose(paddle_inference(tmp_path / "m", (x,), False),
                               layer(paddle.to_tensor(x)).numpy(), rtol=1e-4, atol=1e-5)


class _ConvBNReLUConv(paddle.nn.Layer):
    def __init__(self, direct=False):
        super().__init__()
        self.c1 = paddle.nn.Conv2D(3, 8, 3, padding=1, bias_attr=False)
        self.bn = paddle.nn.BatchNorm2D(8)
        self.c2 = paddle.nn.Conv2D(8, 4, 1)
        self.c3 = paddle.nn.Conv2D(4, 4, 1)
        self.direct = direct

    def forward(self, x):
        y = self.c2(F.relu(self.bn(self.c1(x))))
        return self.c3(y) if self.direct else y


@pytest.mark.parametrize("direct", [False, True])
def test_qat_export_computes_the_fake_quant_model(tmp_path, direct):
    """paddleslim's QAT only observes each quantized layer's output (MAOutputScaleLayer); paddle's
    ONNX-format export turned that observer into a quantize/dequantize pair that rounds the
    output. Exported, it is an observer (``only_observer``): paddle's executor computes the
    fake-quant model (measured: identical; with the rounding pairs the mean difference was ~9e-3).
    ``direct``: c2's output feeds c3 with nothing between; paddle then drops c3's input
    quantizer and rounds with c2's output pair, which must stay (its scale is c2's output
    scale, not c3's input scale: measured 1.6% of the output's mean, bound 5%)."""
    paddle.seed(0)
    layer = _ConvBNReLUConv(direct)
    quanter, r = quantized_for_eval(layer, seed=6)
    xs = [r.rand(1, 3, 6, 6).astype("float32") for _ in range(3)]
    want = [layer(paddle.to_tensor(x)).numpy() for x in xs]  # before the save converts forward
    with compat.old_ir_export(layer, timeout=120):
        quanter.save_quantized_model(layer, str(tmp_path / "m"), input_spec=[
            paddle.static.InputSpec([1, 3, -1, -1], "float32", "x")])
    prog, feeds, fetches, scope, exe = compat.load_old_ir_program(str(tmp_path / "m.pdmodel"),
                                                                  str(tmp_path / "m.pdiparams"))
    ops = prog.global_block().ops
    observers = [o for o in ops if o.type == "quantize_linear" and o.has_attr("only_observer")
                 and o.attr("only_observer")]
    rounding = [o for o in ops if o.type == "quantize_linear" and o not in observers]
    # outputs / inputs (c1, c2; c3's input is c2's rounding output pair)
    assert (len(observers), len(rounding)) == ((2, 3) if direct else (2, 2)), [o.type for o in ops]
    with compat.old_ir_static(), paddle.static.scope_guard(scope):
        got = [exe.run(prog, feed={feeds[0]: x}, fetch_list=fetches)[0] for x in xs]
    diff = max(float(np.abs(g - w).mean()) for g, w in zip(got, want))
    assert diff < (5e-2 * max(float(np.abs(w).mean()) for w in want) if direct else 1e-6)


class _ParamThroughLinear(paddle.nn.Layer):
    """GINet's GIHead: a parameter (its class embedding ``inp``) is the *input* of a Linear."""

    def __init__(self):
        super().__init__()
        self.emb = self.create_parameter([4, 12], default_initializer=paddle.nn.initializer.Normal())
        self.fc = paddle.nn.Linear(12, 8)
        self.conv = paddle.nn.Conv2D(3, 8, 1)

    def forward(self, x):
        f = self.conv(x)
        logits = paddle.matmul(self.fc(self.emb), f.flatten(2))  # [4, 8] x [N, 8, HW]
        return [logits.reshape([0, 4, f.shape[2], f.shape[3]])]


def test_int8_constant_outside_a_weight_input_is_folded(tmp_path):
    """paddleslim stores the quantized input of a Linear as int8 when that input is a parameter
    (GINet); Paddle Inference's oneDNN INT8 passes dequantize only conv Filters and matmul Ys, so
    the predictor failed: "The type of data we are trying to retrieve (int8) does not match the
    type of data (float32) ... [operator < matmul_v2 > error]". compat.fold_constant_dequantize
    stores that constant as float (paddle's own dequantize kernel): same results, INT8 runs."""
    import shutil
    paddle.seed(0)
    layer = _ParamThroughLinear()
    quanter, r = quantized_for_eval(layer, seed=5)
    x = r.rand(1, 3, 5, 7).astype("float32")
    # fake quantization, run before the export: a dygraph run after an export and before a
    # oneDNN INT8 predictor segfaults in paddle 3.3.1 (any QAT model, with or without this fix)
    want = layer(paddle.to_tensor(x))[0].numpy()
    with compat.old_ir_export(layer, timeout=120):
        quanter.save_quantized_model(layer, str(tmp_path / "raw" / "model"), input_spec=[
            paddle.static.InputSpec([-1, 3, -1, -1], "float32", "x")])
    with pytest.raises(Exception, match="int8.*float32|matmul_v2"):
        paddle_inference(tmp_path / "raw" / "model", (x,), "int8")
    shutil.copytree(tmp_path / "raw", tmp_path / "fold")
    assert compat.fold_constant_dequantize(tmp_path / "fold") == 1
    assert compat.fold_constant_dequantize(tmp_path / "fold") == 0  # nothing left: no rewrite
    assert _op_types(tmp_path / "fold/model")["dequantize_linear"] == \
        _op_types(tmp_path / "raw/model")["dequantize_linear"] - 1
    # the un-fused program gives exactly what it gave before
    np.testing.assert_array_equal(paddle_inference(tmp_path / "fold" / "model", (x,), False),
                                  paddle_inference(tmp_path / "raw" / "model", (x,), False))
    got = paddle_inference(tmp_path / "fold" / "model", (x,), "int8")
    assert got.shape == want.shape and np.abs(got - want).max() < 0.05 * np.abs(want).max()


_CHILD_PREDICTOR = """
import sys
import numpy as np
from paddle import inference as pi
from segqat import compat
cfg = pi.Config(sys.argv[1] + ".pdmodel", sys.argv[1] + ".pdiparams")
cfg.enable_new_ir(False)
cfg.disable_glog_info()
cfg.set_cpu_math_library_num_threads(1)
compat.configure_inference(cfg)
if sys.argv[2] == "onednn":
    cfg.enable_onednn()
pred = pi.create_predictor(cfg)
pred.get_input_handle(pred.get_input_names()[0]).copy_from_cpu(np.load(sys.argv[3]))
pred.run()
np.save(sys.argv[4], pred.get_output_handle(pred.get_output_names()[0]).copy_to_cpu())
"""


def test_fc_on_a_parameter_runs_in_segqats_predictor(tmp_path):
    """GINet's FP32 export (a Linear on a parameter, GIHead.inp) made Paddle Inference segfault in
    repeated_fc_relu_fuse_pass; compat.configure_inference deletes that pass. Run in a child
    process, so that a segfault fails this test instead of ending the test session."""
    import os
    import subprocess
    import sys
    from conftest import ROOT
    paddle.seed(0)
    layer = _ParamThroughLinear()
    layer.eval()
    _save_old_ir(layer, tmp_path / "m")
    x = np.random.RandomState(6).rand(1, 3, 5, 7).astype("float32")
    np.save(tmp_path / "x.npy", x)
    want = layer(paddle.to_tensor(x))[0].numpy()
    for mode in ("plain", "onednn"):
        r = subprocess.run([sys.executable, "-c", _CHILD_PREDICTOR, str(tmp_path / "m"), mode,
                            str(tmp_path / "x.npy"), str(tmp_path / "out.npy")],
                           cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, (mode, r.returncode, r.stderr[-2000:])
        np.testing.assert_allclose(np.load(tmp_path / "out.npy"), want, rtol=1e-4, atol=1e-5)


def test_ir_graph_links_unchecked_inside_the_guard_only():
    """The QAT export's ReplaceFakeQuantDequantPass links nodes 8 times per fake-quant op and each
    IrGraph.link_to asserted membership by copying every graph node into a Python set (305 of
    FCN-HRNet_W18's 455 s INT8 export). Inside the guard the links skip that check (python -O's
    behaviour); the links are the same, and paddle's methods come back afterwards."""
    from paddle.base import core
    from paddle.base.framework import IrGraph
    before = {n: IrGraph.__dict__[n] for n in ("link_to", "update_input_link", "update_output_link")}
    with compat.old_ir_static():
        main = paddle.static.Program()
        with paddle.static.program_guard(main, paddle.static.Program()):
            x = paddle.static.data("x", [2, 3], "float32")
            paddle.nn.functional.relu(x)
    with compat.old_ir_export(timeout=60):
        assert all(IrGraph.__dict__[n] is not f for n, f in before.items())
        graph = IrGraph(core.Graph(main.desc), for_test=True)
        relu = [n for n in graph.all_op_nodes() if n.name() == "relu"][0]
        x_node = graph._find_node_by_name(relu.inputs, "x")
        y = graph.create_var_node(name="y", var_type=x_node.type(), shape=[2, 3],
                                  var_dtype=x_node.dtype())

        class CountNodes:  # the core.Graph, counting the whole-graph copies
            calls = 0

            def __init__(self, g):
                self.g = g

            def nodes(self):
                CountNodes.calls += 1
                return self.g.nodes()

        graph.graph = CountNodes(graph.graph)
        graph.update_input_link(x_node, y, relu)
        graph.link_to(x_node, relu)
        assert CountNodes.calls == 0
        assert relu.input("X") == ["y"] and {n.name() for n in relu.inputs} == {"x", "y"}
    assert {n: IrGraph.__dict__[n] for n in before} == before


def test_dygraph_conv_and_reshape_untouched_inside_the_guard(monkeypatch):
    """The export's F.conv2d / reshape act on old-IR Variables only (an eager tensor also passes
    isinstance(t, Variable)): dygraph with a computed filter stays paddle's own conv2d."""
    x, w = paddle.to_tensor(IMG), paddle.to_tensor(R.randn(4, 3, 1, 1).astype("float32")) * 2.0
    want = F.conv2d(x, w).numpy()

    def no_conv3d(*args, **kwargs):
        raise AssertionError("dygraph conv2d was rerouted to conv3d")
    monkeypatch.setattr(F, "conv3d", no_conv3d)
    with compat.old_ir_export(timeout=60, infer_reshape_dims=True):
        np.testing.assert_allclose(F.conv2d(x, w).numpy(), want, rtol=1e-6)
        assert paddle.reshape(x, [0, -1]).shape == [2, 90]


class _ResidualBlock(paddle.nn.Layer):
    """conv-BN-relu, then conv-BN-relu-conv-BN added to it without a relu after the add
    (TopFormer's and MobileNetV2's inverted residuals): the add's inputs are u8 and s8."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = paddle.nn.Conv2D(3, 16, 3, padding=1, bias_attr=False), paddle.nn.BatchNorm2D(16)
        self.c2, self.b2 = paddle.nn.Conv2D(16, 16, 1, bias_attr=False), paddle.nn.BatchNorm2D(16)
        self.c3, self.b3 = paddle.nn.Conv2D(16, 16, 1, bias_attr=False), paddle.nn.BatchNorm2D(16)
        self.c4 = paddle.nn.Conv2D(16, 8, 1)

    def forward(self, x):
        r = F.relu(self.b1(self.c1(x)))
        t = F.relu(self.b2(self.c2(r)))
        return self.c4(r + self.b3(self.c3(t)))


def _write_int8_deploy_yaml(tmp_path, **extra):
    """deploy.yaml for the INT8 block saved as tmp_path/model (logits out, no transforms)."""
    import yaml
    (tmp_path / "deploy.yaml").write_text(yaml.safe_dump({"Deploy": dict({
        "model": "model.pdmodel", "params": "model.pdiparams", "transforms": [],
        "input_shape": [1, 3, -1, -1], "output_op": "none", "output_dtype": "float32",
        "precision": "int8", "num_classes": 8}, **extra)}))
    return str(tmp_path / "deploy.yaml")


def test_int8_residual_add_of_u8_and_s8_runs_unfused(tmp_path):
    """Paddle 3.3.1's oneDNN INT8 conv + residual-add fusion reads a u8 residual as s8: this
    block's INT8 output was 64-70% (of its range) off the fake-quant model with the fusion and
    3-10% without. segqat's predictor finds such fusions in the optimized program
    (``compat.residual_fusions``) and runs without the fusion pass."""
    from segqat.deploy.contract import load_deploy_config
    from segqat.deploy.paddle_inference import PaddlePredictor
    paddle.seed(0)
    layer = _ResidualBlock()
    quanter, r = quantized_for_eval(layer, seed=6)
    xs = [r.rand(1, 3, 8, 8).astype("float32") for _ in range(3)]
    want = [layer(paddle.to_tensor(x)).numpy() for x in xs]
    with compat.old_ir_export(layer, timeout=120):
        quanter.save_quantized_model(layer, str(tmp_path / "model"), input_spec=[
            paddle.static.InputSpec([1, 3, -1, -1], "float32", "x")])
    _write_int8_deploy_yaml(tmp_path)
    # Paddle's own pipeline makes the fusion this guards against
    unguarded = paddle_inference_runs(tmp_path / "model", [(x,) for x in xs], "int8")
    assert max(float(np.abs(g - w).max() / np.abs(w).max()) for g, w in zip(unguarded, want)) > 0.3
    pred = PaddlePredictor(load_deploy_config(str(tmp_path / "deploy.yaml")), "int8", 1,
                           optim_dir=str(tmp_path / "optim"))
    assert compat.residual_fusions(str(tmp_path / "optim" / "_optimized.pdmodel"))[0] == []
    assert sum(pred.int8_ops().values()) == 4
    for x, w in zip(xs, want):
        got = pred._run(x)
        assert float(np.abs(got - w).max() / np.abs(w).max()) < 0.15


class _ProjectionBlock(paddle.nn.Layer):
    """The first block of a ResNet stage: conv-BN-relu-conv-BN plus a conv-BN projection
    shortcut, relu after the add; neither add input is read by a quantized op."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = paddle.nn.Conv2D(3, 16, 3, padding=1, bias_attr=False), paddle.nn.BatchNorm2D(16)
        self.c2, self.b2 = paddle.nn.Conv2D(16, 16, 3, padding=1, bias_attr=False), paddle.nn.BatchNorm2D(16)
        self.cs, self.bs = paddle.nn.Conv2D(3, 16, 1, bias_attr=False), paddle.nn.BatchNorm2D(16)
        self.c4 = paddle.nn.Conv2D(16, 8, 1)

    def forward(self, x):
        t = F.relu(self.b1(self.c1(x)))
        return self.c4(F.relu(self.b2(self.c2(t)) + self.bs(self.cs(x))))


def test_int8_residual_fusion_that_leaves_a_conv_fp32_can_be_turned_off(tmp_path):
    """Paddle 3.3.1 fuses the add into one of the two convolutions and then runs that one in
    FP32 (its residual has no scale). The predictor finds it (``compat.residual_fusions``),
    and with ``Deploy.int8_residual_fusion: false`` (written by export from quant_config) runs
    without the fusion: every convolution INT8."""
    from segqat.deploy.contract import DeployError, load_deploy_config
    from segqat.deploy.paddle_inference import PaddlePredictor
    paddle.seed(0)
    layer = _ProjectionBlock()
    quanter, r = quantized_for_eval(layer, seed=7)
    xs = [r.rand(1, 3, 8, 8).astype("float32") for _ in range(3)]
    want = [layer(paddle.to_tensor(x)).numpy() for x in xs]
    with compat.old_ir_export(layer, timeout=120):
        quanter.save_quantized_model(layer, str(tmp_path / "model"), input_spec=[
            paddle.static.InputSpec([1, 3, -1, -1], "float32", "x")])
    runs = {}
    for fusion in (True, False):
        optim = tmp_path / f"optim_{fusion}"
        pred = PaddlePredictor(load_deploy_config(_write_int8_deploy_yaml(tmp_path, int8_residual_fusion=fusion)),
                               "int8", 1, optim_dir=str(optim))
        runs[fusion] = (compat.residual_fusions(str(optim / "_optimized.pdmodel"))[1], pred.int8_ops(),
                        [pred._run(x) for x in xs])
    assert len(runs[True][0]) == 1 and sum(runs[True][1].values()) == 3  # 1 of 4 convolutions FP32
    assert runs[False][0] == [] and sum(runs[False][1].values()) == 4
    for got, w in zip(runs[False][2], want):
        assert float(np.abs(got - w).max() / np.abs(w).max()) < 0.15
    with pytest.raises(DeployError, match=r"Deploy.int8_residual_fusion is 'no'; allowed: true, false"):
        load_deploy_config(_write_int8_deploy_yaml(tmp_path, int8_residual_fusion="no"))


def _exported_block(cls, seed, tmp_path):
    """A QAT-quantized ``cls()`` saved as tmp_path/model; returns three 16x16 inputs and
    ``err(outputs)``: the largest deviation from its fake-quant outputs, relative to their range."""
    paddle.seed(0)
    layer = cls()
    quanter, r = quantized_for_eval(layer, seed=seed)
    xs = [(r.rand(1, 3, 16, 16) * 4).astype("float32") for _ in range(3)]
    want = [layer(paddle.to_tensor(x)).numpy() for x in xs]
    with compat.old_ir_export(layer, timeout=120):
        quanter.save_quantized_model(layer, str(tmp_path / "model"), input_spec=[
            paddle.static.InputSpec([1, 3, -1, -1], "float32", "x")])

    def err(outs):
        return max(float(np.abs(g - w).max() / np.abs(w).max()) for g, w in zip(outs, want))
    return xs, err


class _PooledBranch(paddle.nn.Layer):
    """conv-BN-relu, read by a 1x1 convolution and by a global average pool that another 1x1
    convolution reads (DeepLabV3's ASPP with its image-pooling branch): the pooled tensor's
    range is far below the feature map's."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = paddle.nn.Conv2D(3, 16, 3, padding=1, bias_attr=False), paddle.nn.BatchNorm2D(16)
        self.pool = paddle.nn.AdaptiveAvgPool2D(1)
        self.c2, self.c3 = paddle.nn.Conv2D(16, 8, 1), paddle.nn.Conv2D(16, 8, 1)

    def forward(self, x):
        f = F.relu(self.b1(self.c1(x)))
        return self.c3(f) + self.c2(self.pool(f))


def test_int8_average_pool_keeps_its_own_scale(tmp_path):
    """Paddle 3.3.1's oneDNN scale propagation gives a pool's output its input's scale, even
    when QAT gave the output one of its own; after a global average pool that grid is many
    times too coarse. ``compat.guard_overwritten_scales`` gives the pooled tensor an ``assign`` of
    its own: the program computes the same, and oneDNN then keeps the QAT scale. The Paddle
    predictor guards an unguarded export in a private copy; the export is not changed."""
    from segqat.deploy.contract import load_deploy_config
    from segqat.deploy.paddle_inference import PaddlePredictor
    xs, err = _exported_block(_PooledBranch, 7, tmp_path)
    _write_int8_deploy_yaml(tmp_path)

    before = (tmp_path / "model.pdmodel").read_bytes()
    unguarded = paddle_inference_runs(tmp_path / "model", [(x,) for x in xs], "int8")
    pred = PaddlePredictor(load_deploy_config(str(tmp_path / "deploy.yaml")), "int8", 1,
                           optim_dir=str(tmp_path / "optim"))
    assert sum(pred.int8_ops().values()) == 3
    by_predictor = [pred._run(x) for x in xs]
    pred.close()
    assert (tmp_path / "model.pdmodel").read_bytes() == before and (tmp_path / "optim").is_dir()
    native = paddle_inference_runs(tmp_path / "model", [(x,) for x in xs], False)
    assert compat.guard_overwritten_scales(str(tmp_path / "model.pdmodel")) == 1
    assert compat.guard_overwritten_scales(str(tmp_path / "model.pdmodel")) == 0  # already guarded
    assert _op_types(tmp_path / "model")["assign"] == 1
    guarded = paddle_inference_runs(tmp_path / "model", [(x,) for x in xs], "int8")
    for a, b in zip(native, paddle_inference_runs(tmp_path / "model", [(x,) for x in xs], False)):
        np.testing.assert_array_equal(a, b)  # the assign changes nothing in Paddle's own kernels
    print("errors: unguarded", err(unguarded), "guarded", err(guarded), "predictor", err(by_predictor))
    assert err(unguarded) > 0.1 and err(guarded) < 0.03 and err(by_predictor) < 0.03


class _ConcatBranch(paddle.nn.Layer):
    """A feature map read by a 1x1 convolution and concatenated with a far wider tensor for
    another convolution (ANN's APNB: ``conv_bn(concat([context, feats]))``)."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = paddle.nn.Conv2D(3, 16, 3, padding=1, bias_attr=False), paddle.nn.BatchNorm2D(16)
        self.c2, self.c3 = paddle.nn.Conv2D(16, 16, 1), paddle.nn.Conv2D(16, 8, 1)
        self.c4 = paddle.nn.Conv2D(32, 8, 1)

    def forward(self, x):
        f = F.relu(self.b1(self.c1(x)))
        wide = self.c2(f) * 20.0
        return self.c3(f) + self.c4(paddle.concat([wide, f], axis=1))


def test_int8_concat_input_keeps_its_own_scale(tmp_path):
    """The same scale propagation gives every input of a concat the concat output's scale,
    overwriting the scale QAT gave an input that a quantized convolution also reads (ANN:
    one such convolution alone was 7% off; guarded, the model's clear-margin agreement with
    fake quant went from 92.91% to 99.81%)."""
    xs, err = _exported_block(_ConcatBranch, 8, tmp_path)

    unguarded = paddle_inference_runs(tmp_path / "model", [(x,) for x in xs], "int8")
    assert compat.guard_overwritten_scales(str(tmp_path / "model.pdmodel")) >= 1
    guarded = paddle_inference_runs(tmp_path / "model", [(x,) for x in xs], "int8")
    print("errors: unguarded", err(unguarded), "guarded", err(guarded))
    assert err(unguarded) > 3 * err(guarded) and err(guarded) < 0.05
