"""Models moving between the paddle 2.6.2 and 3.3.1 stacks (docs/stacks.md).

Run by `make test-paddle26` in the 3.3.1 venv, after the 2.6.2 lane's core tests: their
session fixtures (synthetic data, config, FP32 and QAT weights, FP32 and INT8 exports, all
made on paddle 2.6.2) are in SEGQAT_PADDLE26_SHARE. The other direction runs the lane's
interpreter (.venv-paddle26/bin/python) as a subprocess on what paddle 3.3.1 makes here.
Without the share or the lane's venv the tests skip.

    SEGQAT_TEST_SHARE=$PWD/output/share26 .venv-paddle26/bin/python -m pytest -m core tests
    SEGQAT_PADDLE26_SHARE=$PWD/output/share26 .venv/bin/python -m pytest tests/test_stacks.py
"""
import json
import os
import subprocess
from pathlib import Path

import numpy as np  # noqa: F401  (numpy before paddle: segqat/compat/__init__.py)
import paddle
import pytest
import yaml

from conftest import ROOT, run_script

pytestmark = pytest.mark.stacks

LANE_PYTHON = ROOT / ".venv-paddle26" / "bin" / "python"
LANE_VERSION = "2.6.2"


@pytest.fixture(scope="module")
def lane():
    """The 2.6.2 lane's session fixtures (tests/conftest.py names: synthetic, cfg, fp32, qat, exports)."""
    share = os.environ.get("SEGQAT_PADDLE26_SHARE")
    if not share:
        pytest.skip("SEGQAT_PADDLE26_SHARE is not set: `make test-paddle26` runs these after the "
                    "2.6.2 lane's core tests")
    share = Path(share)
    missing = [n for n in ("cfg", "fp32", "qat", "exports") if not (share / n / ".built").exists()]
    if missing:
        pytest.skip(f"the 2.6.2 lane's fixtures {missing} are not in {share}")
    # made on the other stack: the training log and deploy.yaml say which paddle
    assert f"paddle {LANE_VERSION}" in (share / "fp32" / "train.log").read_text()
    dep = yaml.safe_load((share / "exports" / "int8" / "deploy.yaml").read_text())["Deploy"]
    assert dep["paddle_version"] == LANE_VERSION
    assert paddle.__version__ != LANE_VERSION, "run these on the 3.3.1 venv"
    return share


def run_lane(script, *args):
    """Run a segqat script on the 2.6.2 lane's interpreter; returns the CompletedProcess."""
    if not LANE_PYTHON.exists():
        pytest.skip(f"{LANE_PYTHON.relative_to(ROOT)} is absent (make venv-paddle26)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGQAT_")}
    return subprocess.run([str(LANE_PYTHON), str(ROOT / script), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


def ok(proc):
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc


def weights(run):
    return run / "best_model" / "model.pdparams"


def best_miou(run):
    return json.loads((run / "best_model" / "state.json").read_text())["best_mIoU"]


def test_weights_made_on_2_6_load_on_3_3(lane, tmp_path):
    cfg = lane / "cfg" / "syn.yml"
    # the evaluation at the end of 2.6.2's training, repeated by paddle 3.3.1 on the same weights
    fp32 = run_script("tools/val.py", ["--config", cfg, "--model_path", weights(lane / "fp32")])
    assert fp32["mIoU"] == pytest.approx(best_miou(lane / "fp32"), abs=1e-4)
    qat = run_script("slim/quant/qat_val.py", ["--config", cfg, "--model_path", weights(lane / "qat")])
    assert qat["quantized"] is True
    assert qat["mIoU"] == pytest.approx(best_miou(lane / "qat"), abs=1e-4)


def test_weights_made_on_3_3_load_on_2_6(lane, tmp_path):
    cfg = lane / "cfg" / "syn.yml"
    fp32, qat = tmp_path / "fp32", tmp_path / "qat"
    common = ["--config", cfg, "--iters", 2, "--batch_size", 2, "--save_interval", 2, "--log_iters", 1,
              "--do_eval", "--cpu_threads", 2]
    run_script("tools/train.py", [*common, "--model_path", weights(lane / "fp32"), "--save_dir", fp32])
    run_script("slim/quant/qat_train.py", [*common, "--model_path", weights(fp32), "--save_dir", qat])
    assert "paddle 3.3" in (qat / "train.log").read_text()
    for script, run in (("tools/val.py", fp32), ("slim/quant/qat_val.py", qat)):
        out = tmp_path / f"{run.name}_on_2_6.json"
        proc = ok(run_lane(script, "--config", cfg, "--model_path", weights(run), "--save_metrics", out))
        assert f"paddle {LANE_VERSION}" in proc.stdout + proc.stderr
        assert json.loads(out.read_text())["mIoU"] == pytest.approx(best_miou(run), abs=1e-4), script


def test_int8_export_made_on_3_3_runs_on_2_6(lane, tmp_path):
    cfg = lane / "cfg" / "syn.yml"
    int8, fp32 = tmp_path / "int8", tmp_path / "fp32"
    run_script("slim/quant/qat_export.py", ["--config", cfg, "--model_path", weights(lane / "qat"),
                                            "--save_dir", int8])
    run_script("tools/export.py", ["--config", cfg, "--model_path", weights(lane / "fp32"), "--save_dir", fp32])
    assert yaml.safe_load((int8 / "deploy.yaml").read_text())["Deploy"]["paddle_version"] == paddle.__version__
    out = tmp_path / "bench"
    ok(run_lane("deploy/python/benchmark.py", "--config", cfg, "--fp32", fp32, "--int8", int8,
                "--qat_model_path", weights(lane / "qat"), "--save_dir", out, "--runtimes", "paddle",
                "--warmup", 1, "--repeats", 1, "--cpu_threads", 2))
    res = json.loads((out / "results.json").read_text())["models"]
    assert res["INT8"]["int8_kernels"] >= 47, res["INT8"]  # Paddle Inference 2.6.2, oneDNN INT8
    assert res["INT8"]["agreement_with_fake_quant"] >= 0.99
    assert res["FP32"]["agreement_with_fp32"] == 1.0


def test_new_ir_program_refused_on_2_6_naming_both_versions(tmp_path):
    # what paddle 3.3.1 writes by default (new IR, model.json) cannot be read by paddle 2.6.2
    layer = paddle.nn.Conv2D(3, 4, 1)
    layer.eval()
    paddle.jit.save(layer, str(tmp_path / "model"),
                    input_spec=[paddle.static.InputSpec([-1, 3, -1, -1], "float32", "x")])
    assert (tmp_path / "model.json").is_file()
    (tmp_path / "deploy.yaml").write_text(yaml.safe_dump({"Deploy": {
        "model": "model.json", "params": "model.pdiparams", "transforms": [{"type": "Normalize"}],
        "input_shape": [-1, 3, -1, -1], "output_op": "none", "output_dtype": "float32",
        "precision": "fp32", "num_classes": 4, "paddle_version": paddle.__version__}}))
    import cv2
    cv2.imwrite(str(tmp_path / "img.png"), np.zeros((8, 8, 3), np.uint8))
    proc = run_lane("deploy/python/infer.py", "--config", tmp_path / "deploy.yaml",
                    "--image_path", tmp_path / "img.png", "--save_dir", tmp_path / "pred")
    # without the check, paddle 2.6.2 dies of SIGSEGV in NaiveExecutor::CreateVariables
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    errors = [ln for ln in out.splitlines() if "[ERROR]" in ln]
    assert len(errors) == 1 and "Traceback" not in out, out[-3000:]
    assert f"paddle {LANE_VERSION}" in errors[0] and f"paddle {paddle.__version__}" in errors[0], errors
    assert "model.json" in errors[0]


# OpenVINO and ONNX Runtime load native threads into this process: the last test of the file
# (the default suite runs such tests in a process of their own, see the Makefile)
def test_int8_export_made_on_2_6_runs_on_3_3_runtimes(lane, tmp_path):
    ex = lane / "exports"
    out = tmp_path / "bench"
    run_script("deploy/python/benchmark.py", [
        "--config", lane / "cfg" / "syn.yml", "--fp32", ex / "fp32", "--int8", ex / "int8",
        "--qat_model_path", weights(lane / "qat"), "--save_dir", out,
        "--runtimes", "paddle", "openvino", "onnxruntime", "--warmup", 1, "--repeats", 1, "--cpu_threads", 2])
    res = json.loads((out / "results.json").read_text())
    models = res["models"]
    for rt in ("paddle", "openvino", "onnxruntime"):
        int8 = models[f"INT8 ({rt})"]
        assert int8["int8_kernels"] >= 47, (rt, int8["int8_kernels"])
        assert int8["agreement_with_fake_quant"] >= 0.99, (rt, int8["agreement_with_fake_quant"])
        assert models[f"FP32 ({rt})"]["mIoU"] == pytest.approx(models["FP32 (paddle)"]["mIoU"], abs=0.005)
    # the fake-quant reference is paddle 3.3.1's run of the 2.6.2 QAT weights: the same mIoU
    # as 2.6.2's own evaluation of them
    assert res["fake_quant"]["mIoU"] == pytest.approx(best_miou(lane / "qat"), abs=1e-4)
