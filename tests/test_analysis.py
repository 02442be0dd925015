"""slim/quant/analysis.py: per-layer sensitivity table, chart and skip list."""
import json

import pytest
import yaml

from conftest import run_script
from segqat import quant
from segqat.config import load_config


def test_analysis_table_and_skip_list(syn_cfg, fp32_run, tmp_path):
    out = tmp_path / "ana"
    res = run_script("slim/quant/analysis.py", [
        "--config", syn_cfg, "--model_path", fp32_run / "best_model" / "model.pdparams",
        "--save_dir", out, "--mode", "both", "--num_images", 6, "--batch_nums", 4,
        "--layers", "head.*", "aux_head1.*", "--skip_top", 2, "--cpu_threads", 2])
    data = json.loads((out / "sensitivity.json").read_text())
    names = [r["layer"] for r in data["layers"]]
    assert set(names) == {"head.conv_3x3.0._conv", "head.conv_1x1",
                          "aux_head1.conv_3x3.0._conv", "aux_head1.conv_1x1"}
    assert data["val_images"] == 6 and res["val_images"] == 6
    assert [r["rank"] for r in data["layers"]] == [1, 2, 3, 4]
    # ranked by the mIoU change of "only this layer quantized", worst first
    deltas = [r["single_delta"] for r in data["layers"]]
    assert deltas == sorted(deltas)
    for r in data["layers"]:
        assert r["single_delta"] == pytest.approx(r["single_mIoU"] - data["fp32"]["mIoU"])
        assert r["loo_gain"] == pytest.approx(r["loo_mIoU"] - data["all_quantized"]["mIoU"])
        if r["layer"].startswith("aux_head1"):
            # the auxiliary heads do not run at inference: quantizing only one of them
            # changes nothing, leaving one out is the fully quantized model
            assert r["single_disagreement"] == 0 and r["single_delta"] == 0
            assert r["loo_mIoU"] == pytest.approx(data["all_quantized"]["mIoU"])
    # quantizing only the final classifier conv changes some pixels
    head = {r["layer"]: r for r in data["layers"]}["head.conv_1x1"]
    assert head["single_disagreement"] > 0
    md = (out / "sensitivity.md").read_text()
    assert "| 1 | `" in md and "only this quantized" in md and "all but this" in md
    assert (out / "sensitivity.png").stat().st_size > 1000
    # the skip list: the two most sensitive layers, includable by a config
    assert data["skip_list"] == names[:2]
    skip = yaml.safe_load((out / "skip_layers.yml").read_text())
    assert skip == {"quant_config": {"skip_layers": names[:2]}}
    cfg = load_config(str(out / "config_with_skips.yml"))
    assert quant.quant_settings(cfg)["skip_layers"] == names[:2]
    model, _ = quant.build_model(cfg)
    quant.quantize(model, quant.quant_settings(cfg))
    kinds = {n: type(layer).__name__ for n, layer in model.named_sublayers()}
    assert all(kinds[n] in ("Conv2D", "Linear") for n in names[:2])
    assert "seconds" in data and data["seconds"]["total"] > 0


@pytest.mark.parametrize("argv,match", [
    (["--layers", "nope.*"], "--layers patterns ['nope.*'] match no quantizable layer"),
    (["--opts", "quant_config.pact=true"], "PACT learns"),
])
def test_analysis_errors(syn_cfg, fp32_run, tmp_path, caplog, argv, match):
    with pytest.raises(SystemExit):
        run_script("slim/quant/analysis.py", ["--config", syn_cfg, "--model_path",
                                              fp32_run / "best_model" / "model.pdparams",
                                              "--save_dir", tmp_path / "a"] + argv)
    assert match in caplog.text
    assert not (tmp_path / "a").exists()
