"""slim/quant/calib_sweep.py: PTQ mIoU against calibration size."""
import json
import logging

from conftest import run_script


def test_calibration_sweep(syn_cfg, fp32_run, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "sweep"
    argv = ["--config", syn_cfg, "--model_path", fp32_run / "best_model" / "model.pdparams",
            "--save_dir", out, "--fractions", 0.1, 0.05, "--seeds", 0, "--algo", "abs_max",
            "--cpu_threads", 2]
    res = run_script("slim/quant/calib_sweep.py", argv)
    data = json.loads((out / "sweep.json").read_text())
    assert data["calibration_pool_images"] == 64
    # 5% and 10% of 64 training images; every image of the subset calibrates
    assert [p["calibration_images"] for p in data["points"]] == [3, 6]
    for p in data["points"]:
        info = json.loads((out / p["dir"] / "ptq_info.json").read_text())
        assert info["split"] == p["fraction"] and info["mIoU"] == p["mIoU"]
        assert info["calibration_batches"] == (1 if p["fraction"] == 0.05 else 2)
        assert abs(p["delta_points"] - 100 * (p["mIoU"] - data["fp32"]["mIoU"])) < 1e-9
    assert 0.3 < data["fp32"]["mIoU"] <= 1 and data["fp32"]["num_images"] == 12
    assert "| 0.05 | 3 | 1 |" in (out / "sweep.md").read_text()
    assert (out / "sweep.png").stat().st_size > 1000
    # re-running reuses finished points (an interrupted sweep resumes)
    caplog.clear()
    again = run_script("slim/quant/calib_sweep.py", argv)
    assert caplog.text.count("reusing") == 2
    assert again["points"] == res["points"]
