"""Every runtime behind deploy.create_predictor on the tiny synthetic model: loads FP32, QAT
and PTQ exports, proves INT8 kernels, agrees with the fake-quant model."""
import logging

import cv2
import paddle
import pytest

from conftest import run_script
from segqat import compat, deploy, quant
from segqat.config import load_config

pytestmark = pytest.mark.runtimes  # OpenVINO / ONNX Runtime in the process (Makefile)

# Paddle Lite needs its own environment (make venv-lite): tests/deploy/test_lite.py
RUNTIMES = [rt for rt in deploy.RUNTIMES if rt != "lite"]


def val_images(synth):
    pairs = [ln.split() for ln in (synth / "val.txt").read_text().splitlines()]
    return [cv2.imread(str(synth / p[0])) for p in pairs]


@pytest.fixture(scope="module")
def ptq_export(syn_cfg, fp32_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("ptq") / "abs_max"
    run_script("slim/quant/ptq.py", ["--config", syn_cfg, "--model_path",
                                     fp32_run / "best_model" / "model.pdparams", "--save_dir", out,
                                     "--batch_size", 4, "--batch_nums", 2, "--algo", "abs_max",
                                     "--cpu_threads", 2])
    return out


@pytest.fixture(scope="module")
def fake_quant_labels(syn_cfg, synth, qat_run, exports):
    """Labels of the QAT model in dygraph (fake quantization), preprocessed as deployed."""
    cfg = load_config(str(syn_cfg))
    model, _ = quant.build_model(cfg, str(qat_run / "best_model" / "model.pdparams"),
                                 quantized=True, stage="eval")
    model.eval()
    pred = deploy.create_predictor(str(exports / "fp32"), threads=1)
    out = []
    with paddle.no_grad():
        for im in val_images(synth):
            x, _ = pred.preprocess(im)
            out.append(paddle.argmax(model(paddle.to_tensor(x[None]))[0], axis=1).numpy()[0])
    pred.close()
    return out


def agreement(a, b):
    return sum(int((x == y).sum()) for x, y in zip(a, b)) / sum(x.size for x in a)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_runtime_runs_fp32_qat_and_ptq(runtime, synth, exports, ptq_export, fake_quant_labels):
    imgs = val_images(synth)
    labels = {}
    for name, d in (("fp32", exports / "fp32"), ("qat", exports / "int8"), ("ptq", ptq_export)):
        pred = deploy.create_predictor(str(d), runtime=runtime, threads=2)
        try:
            kernels = sum(pred.int8_ops().values())
            if name == "fp32":
                assert pred.precision == "fp32" and kernels == 0
            else:  # precision from deploy.yaml, and proven by the compiled graph
                assert pred.precision == "int8" and kernels >= 40, (name, dict(pred.int8_ops()))
            labels[name] = [pred.predict([im])[0] for im in imgs]
        finally:
            pred.close()
        assert labels[name][0].shape == imgs[0].shape[:2]
    fq = agreement(labels["qat"], fake_quant_labels)
    print(f"{runtime}: QAT INT8 vs fake-quant {fq * 100:.2f}%, PTQ vs FP32 "
          f"{agreement(labels['ptq'], labels['fp32']) * 100:.2f}%")
    assert fq >= 0.99, fq
    assert agreement(labels["ptq"], labels["fp32"]) >= 0.97


def test_runtimes_agree_with_each_other(synth, exports):
    imgs = val_images(synth)
    out = {}
    for rt in RUNTIMES:
        pred = deploy.create_predictor(str(exports / "fp32"), runtime=rt, threads=1)
        out[rt] = [pred.predict([im])[0] for im in imgs]
        pred.close()
    for rt in RUNTIMES[1:]:
        assert agreement(out[rt], out[RUNTIMES[0]]) >= 0.999, rt


def test_observer_only_pairs(ptq_export, tmp_path):
    """paddleslim's PTQ writes observer-only quantize/dequantize pairs that OpenVINO refuses;
    without them Paddle's oneDNN output changes, so exports keep them and the OpenVINO
    predictor reads a copy without them (the export is left as it was)."""
    model = ptq_export / "model.pdmodel"
    before = model.read_bytes()
    copy = tmp_path / "m.pdmodel"
    n = compat.drop_observer_only_quant(str(model), str(copy))
    assert n > 20 and model.read_bytes() == before
    assert compat.drop_observer_only_quant(str(copy), str(tmp_path / "again.pdmodel")) == 0
    import openvino as ov
    with pytest.raises(RuntimeError, match="dims of scale should not be greater than 2"):
        ov.Core().read_model(str(model))
    pred = deploy.create_predictor(str(ptq_export), runtime="openvino", threads=1)
    assert sum(pred.int8_ops().values()) >= 40
    pred.close()
    assert model.read_bytes() == before


def test_runtime_errors(exports, caplog):
    with pytest.raises(deploy.DeployError, match="--runtime 'tensorrt' is not available; choose from"):
        deploy.create_predictor(str(exports / "fp32"), runtime="tensorrt")
    with pytest.raises(deploy.DeployError, match="--runtime openvino does not take device"):
        deploy.create_predictor(str(exports / "fp32"), runtime="openvino", device="gpu")
    with pytest.raises(deploy.DeployError, match="needs a quantized export"):
        deploy.create_predictor(str(exports / "fp32"), runtime="openvino", precision="int8")
    caplog.set_level(logging.ERROR)
    with pytest.raises(SystemExit):
        run_script("deploy/python/infer.py", ["--config", exports / "fp32", "--image_path", "x.png",
                                              "--runtime", "openvino", "--enable_mkldnn", "false"])
    assert "--enable_mkldnn (paddle): not options of --runtime openvino" in caplog.text
    with pytest.raises(SystemExit):
        run_script("deploy/python/infer.py", ["--config", exports / "fp32", "--image_path", "x.png",
                                              "--save_onnx", "m.onnx"])
    assert "--save_onnx (onnxruntime): not options of --runtime paddle" in caplog.text


def test_openvino_names_the_op_it_cannot_read(exports, tmp_path):
    """OpenVINO's exception starts with where it was raised; the error says what failed."""
    import shutil
    from paddle.base import core
    copy = tmp_path / "fp32"
    shutil.copytree(exports / "fp32", copy)
    desc = core.ProgramDesc((copy / "model.pdmodel").read_bytes())
    blk = desc.block(0)
    next(blk.op(i) for i in range(blk.op_size()) if blk.op(i).type() == "relu").set_type("uniform_random")
    (copy / "model.pdmodel").write_bytes(desc.serialize_to_string())
    with pytest.raises(deploy.DeployError, match=r"model.pdmodel: OpenVINO's Paddle frontend cannot read it: "
                                                 r"No creator found for uniform_random node\.$"):
        deploy.create_predictor(str(copy), runtime="openvino")


def test_infer_passes_runtime_options(exports, synth, tmp_path):
    """infer.py hands --save_onnx/--check_images/--min_agreement to ONNX Runtime."""
    image = synth / "images" / "val_0000.png"
    onnx_path = tmp_path / "int8.onnx"
    run_script("deploy/python/infer.py", [
        "--config", exports / "int8", "--image_path", image, "--runtime", "onnxruntime",
        "--save_onnx", onnx_path, "--check_images", image, "--min_agreement", 0.5,
        "--save_dir", tmp_path / "pred"])
    assert onnx_path.stat().st_size > 0 and (tmp_path / "pred").is_dir()
    with pytest.raises(SystemExit):  # never overwritten
        run_script("deploy/python/infer.py", [
            "--config", exports / "int8", "--image_path", image, "--runtime", "onnxruntime",
            "--save_onnx", onnx_path, "--save_dir", tmp_path / "pred2"])


def test_openvino_ir_runs_without_paddle(exports, synth, tmp_path):
    """infer.py --save_ir writes the QAT model as OpenVINO IR; OpenVINO alone compiles it with
    INT8 convolutions and gives the predictor's output; existing files are never replaced."""
    import numpy as np
    import openvino as ov
    from segqat.deploy.openvino import INT8_TYPES
    image = synth / "images" / "val_0000.png"
    xml = tmp_path / "ir" / "qat.xml"
    run_script("deploy/python/infer.py", [
        "--config", exports / "int8", "--image_path", image, "--runtime", "openvino",
        "--save_ir", xml, "--save_dir", tmp_path / "pred"])
    assert sorted(p.name for p in xml.parent.iterdir()) == ["qat.bin", "qat.xml"]
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    int8 = [op for op in compiled.get_runtime_model().get_ops()
            if op.get_rt_info()["layerType"].astype(str) == "Convolution"
            and op.get_rt_info()["runtimePrecision"].astype(str) in INT8_TYPES]
    pred = deploy.create_predictor(str(exports / "int8"), runtime="openvino", threads=1)
    try:
        assert len(int8) == sum(pred.int8_ops().values()) >= 40
        x, _ = pred.preprocess(cv2.imread(str(image)))
        np.testing.assert_array_equal(compiled({0: x[None]})[compiled.output(0)], pred.run(x[None]))
    finally:
        pred.close()
    stamp = xml.stat().st_mtime_ns
    with pytest.raises(deploy.DeployError, match="save_ir: .*qat.xml exists"):
        deploy.create_predictor(str(exports / "int8"), runtime="openvino", save_ir=str(xml))
    with pytest.raises(deploy.DeployError, match=r"save_ir: .*model.onnx must end with \.xml"):
        deploy.create_predictor(str(exports / "int8"), runtime="openvino", save_ir=str(tmp_path / "model.onnx"))
    assert xml.stat().st_mtime_ns == stamp


def test_openvino_reads_prelu_and_dilated_same_convolutions(tmp_path):
    """OpenVINO's Paddle frontend has no prelu (ENet, ESPNetV2) and applied the dilation of
    padding="same" convolutions, which Paddle ignores (ESPNetV2's labels: 95.3%); the
    predictor reads a rewritten copy and matches Paddle, the export is left as it was."""
    import numpy as np
    import yaml
    paddle.seed(0)
    layer = paddle.nn.Sequential(
        paddle.nn.Conv2D(3, 6, 3, padding="same", dilation=2), paddle.nn.PReLU(6),
        paddle.nn.Conv2D(6, 6, 3, padding="same", dilation=3, stride=2), paddle.nn.PReLU(),
        paddle.nn.Conv2D(6, 4, 1), paddle.nn.PReLU(4, data_format="NCHW"))
    layer[1]._weight.set_value(paddle.linspace(0.1, 0.6, 6))  # distinct slopes per channel
    layer.eval()
    with compat.old_ir_export(layer, timeout=120):
        paddle.jit.save(layer, str(tmp_path / "model"), input_spec=[
            paddle.static.InputSpec([1, 3, -1, -1], "float32", "x")])
    (tmp_path / "deploy.yaml").write_text(yaml.safe_dump({"Deploy": {
        "model": "model.pdmodel", "params": "model.pdiparams", "transforms": [],
        "input_shape": [1, 3, -1, -1], "output_op": "none", "output_dtype": "float32",
        "precision": "fp32", "num_classes": 4}}))
    before = (tmp_path / "model.pdmodel").read_bytes()
    assert b"prelu" in before
    preds = {rt: deploy.create_predictor(str(tmp_path), runtime=rt, threads=1) for rt in ("paddle", "openvino")}
    try:
        for h, w in ((9, 10), (16, 16)):
            x = np.random.RandomState(h).randn(1, 3, h, w).astype("float32")
            ref = preds["paddle"].run(x)
            np.testing.assert_allclose(preds["openvino"].run(x), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    finally:
        for p in preds.values():
            p.close()
    assert (tmp_path / "model.pdmodel").read_bytes() == before


def test_bench_latency_across_runtimes(tmp_path):
    from conftest import SYN_CONFIG
    res = run_script("slim/quant/bench_latency.py", [
        "--config", SYN_CONFIG, "--input_shape", 1, 3, 64, 64, "--runtimes", *RUNTIMES,
        "--repeats", 2, "--warmup", 1, "--cpu_threads", 1, "--save_json", tmp_path / "lat.json"])
    (s,) = res["models"].values()
    assert set(s["runtimes"]) == set(RUNTIMES)
    for rt, r in s["runtimes"].items():
        assert r["ratio_int8_fp32"] == pytest.approx(r["int8"]["median_ms"] / r["fp32"]["median_ms"])
        assert sum(r["int8_ops"].values()) >= 40, rt
    b = s["best"]
    assert b["ratio_int8_fp32"] == pytest.approx(
        s["runtimes"][b["int8_runtime"]]["int8"]["median_ms"]
        / min(r["fp32"]["median_ms"] for r in s["runtimes"].values()))
    assert (tmp_path / "lat.json").is_file()
