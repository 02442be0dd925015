"""slim/quant/calib_sweep.py: PTQ mIoU against calibration size."""
import json
import logging
import os

import pytest

from conftest import run_script
from segqat import outputs


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
    # a finished sweep is not replaced without --overwrite
    caplog.clear()
    with pytest.raises(SystemExit):
        run_script("slim/quant/calib_sweep.py", argv)
    assert "holds an earlier sweep" in caplog.text
    # an interrupted sweep (its marker still says complete: false) resumes, reusing finished points
    outputs.update_marker(str(out), complete=False)
    os.remove(out / "sweep.json")
    caplog.clear()
    caplog.set_level(logging.INFO)
    again = run_script("slim/quant/calib_sweep.py", argv)
    assert caplog.text.count("reusing") == 2
    assert again["points"] == res["points"]
    assert json.loads((out / outputs.MARKER).read_text())["complete"] is True
    # --overwrite replaces the report; points with the same settings are reused
    caplog.clear()
    run_script("slim/quant/calib_sweep.py", argv + ["--overwrite"])
    assert caplog.text.count("reusing") == 2
    assert "sweep.log" in json.loads((out / outputs.MARKER).read_text())["files"]
