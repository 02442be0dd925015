"""deploy/python/benchmark.py on tiny synthetic exports."""
import json

import pytest

from conftest import run_script


def test_benchmark_outputs(syn_cfg, fp32_run, qat_run, exports, tmp_path):
    out = tmp_path / "bench"
    res = run_script("deploy/python/benchmark.py", [
        "--config", syn_cfg, "--fp32", exports / "fp32", "--int8", exports / "int8",
        "--qat_model_path", qat_run / "best_model" / "model.pdparams", "--save_dir", out,
        "--repeats", 3, "--warmup", 1, "--cpu_threads", 2])
    for f in ("results.json", "results.md", "latency.png", "class_iou.png", "confusion.png", "samples.png"):
        assert (out / f).stat().st_size > 0, f
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["models"]) == {"FP32", "INT8"} and saved["num_images"] == 12
    fp32, int8 = saved["models"]["FP32"], saved["models"]["INT8"]
    assert fp32["agreement_with_fp32"] == 1.0 and 0.9 < int8["agreement_with_fp32"] <= 1.0
    assert int8["agreement_with_fake_quant"] >= 0.99
    assert int8["params_mb"] <= 0.3 * fp32["params_mb"]
    assert fp32["num_params"] > 1e6 and fp32["macs"] > 1e6
    assert len(fp32["latency"]) and fp32["ratio_to_fp32"] == 1.0
    # the fake-quant mIoU is exactly what qat_val reports; the deployed FP32 model is within
    # oneDNN-vs-dygraph rounding of what tools/val.py reports for the same weights
    qv = run_script("slim/quant/qat_val.py", ["--config", syn_cfg, "--model_path",
                                              qat_run / "best_model" / "model.pdparams"])
    assert saved["fake_quant"]["mIoU"] == pytest.approx(qv["mIoU"], abs=1e-12)
    v = run_script("tools/val.py", ["--config", syn_cfg, "--model_path", fp32_run / "best_model" / "model.pdparams"])
    assert fp32["mIoU"] == pytest.approx(v["mIoU"], abs=0.005)
    md = (out / "results.md").read_text()
    assert md.startswith("| Model | Dtype | mIoU |") and "| INT8 | INT8 |" in md
    assert res["models"]["INT8"]["mIoU"] == int8["mIoU"]


def test_benchmark_warns(tmp_path):
    from segqat.report import _warnings
    res = {"models": {"FP32": {"precision": "fp32", "mIoU": 0.6, "latency": {"median_ms": 10.0},
                               "ratio_to_fp32": 1.0},
                      "INT8": {"precision": "int8", "mIoU": 0.58, "latency": {"median_ms": 11.0},
                               "ratio_to_fp32": 1.1, "agreement_with_fake_quant": 0.97},
                      "PTQ": {"precision": "int8", "mIoU": 0.55, "latency": {"median_ms": 5.0},
                              "ratio_to_fp32": 0.5}},
           "fake_quant": {"mIoU": 0.60}}
    w = _warnings(res, "FP32")
    assert any("not faster" in x for x in w) and any("differs from the fake-quant" in x for x in w)
    assert not any(x.startswith("PTQ") for x in w)  # the QAT weights are not the PTQ model's
    res["models"]["INT8"].update(mIoU=0.598, ratio_to_fp32=0.5)
    assert _warnings(res, "FP32") == []
