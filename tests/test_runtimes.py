"""Every runtime behind deploy.create_predictor on the tiny synthetic model: loads FP32, QAT
and PTQ exports, proves INT8 kernels, agrees with the fake-quant model."""
import logging
import shutil

import cv2
import numpy as np
import paddle
import pytest

from conftest import run_script
from segqat import compat, deploy, quant
from segqat.config import load_config

RUNTIMES = list(deploy.RUNTIMES)


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


def test_observer_pairs_dropped_without_changing_paddle_output(syn_cfg, fp32_run, tmp_path,
                                                               monkeypatch):
    """PTQ exports lose paddleslim's observer-only quantize/dequantize pairs (OpenVINO cannot
    read them); Paddle's own output of the same export is unchanged by it (logits compared)."""
    monkeypatch.setattr(compat, "drop_observer_only_quant", lambda path: 0)
    raw = tmp_path / "raw"
    run_script("slim/quant/ptq.py", ["--config", syn_cfg, "--model_path",
                                     fp32_run / "best_model" / "model.pdparams", "--save_dir", raw,
                                     "--batch_size", 4, "--batch_nums", 1, "--algo", "abs_max",
                                     "--output_op", "none", "--cpu_threads", 2])
    monkeypatch.undo()
    dropped = tmp_path / "dropped"
    shutil.copytree(raw, dropped)
    n = compat.drop_observer_only_quant(str(dropped / "model.pdmodel"))
    assert n > 20
    assert compat.drop_observer_only_quant(str(dropped / "model.pdmodel")) == 0  # none left
    x = np.random.RandomState(0).rand(2, 3, 64, 64).astype("float32")
    logits = {}
    for d in (raw, dropped):
        pred = deploy.create_predictor(str(d), threads=1)
        logits[d.name] = pred.run(x)
        pred.close()
    assert logits["raw"].shape == (2, 4, 64, 64)
    np.testing.assert_allclose(logits["dropped"], logits["raw"], rtol=0, atol=1e-4)
    with pytest.raises(deploy.DeployError, match="cannot read it"):
        deploy.create_predictor(str(raw), runtime="openvino", threads=1)


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
    assert "--enable_mkldnn: Paddle Inference options; --runtime is openvino" in caplog.text
