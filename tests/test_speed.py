"""What decides INT8 speed: which layers are quantized (skip_layer_kinds), and the two
measuring tools (profile_ops per op / kernel, layer_latency per kind of layer)."""
import json

import numpy as np
import pytest

from conftest import SYN_CONFIG, run_script
from segqat import calibration, deploy, export, quant
from segqat.config import load_config


def _quantized_export(cfg, out):
    model, _ = quant.build_model(cfg)
    quanter = quant.quantize(model, quant.quant_settings(cfg, purpose="export"))
    calibration.calibrate(model, [np.random.RandomState(0).rand(2, 3, 64, 64).astype("float32") * 2 - 1])
    export.export_model(cfg, model, str(out), [1, 3, 64, 64], quanter=quanter)
    return model


def _kinds(model):
    return {n: quant.layer_kind(getattr(layer, "_layer", layer)) for n, layer in model.named_sublayers()
            if type(layer).__name__ in ("Conv2D", "QuantizedConv2D", "Linear", "QuantizedLinear")}


def test_layer_kinds_of_bisenetv2():
    model, _ = quant.build_model(load_config(str(SYN_CONFIG)))
    kinds = _kinds(model)
    # the gather-and-expansion layers' first depthwise convolution multiplies its channels 6x
    assert kinds["sb.stage3.0.branch_1.1.depthwise_conv._conv"] == "depthwise_multiplier"
    assert kinds["sb.stage3.0.branch_1.2.depthwise_conv._conv"] == "depthwise"
    assert kinds["head.conv_1x1"] == "conv1x1"
    assert kinds["db.convs.0._conv"] == "conv"
    assert sum(k == "depthwise_multiplier" for k in kinds.values()) == 8


@pytest.mark.runtimes
def test_channel_multiplying_depthwise_stays_float_by_default(tmp_path):
    """The default placement rule: the 8 depthwise convolutions that multiply their channels
    are float in the export (no int8 weights, no quantize op before them) on every runtime,
    every other convolution runs INT8; skip_layer_kinds: [] quantizes them too."""
    default = _quantized_export(load_config(str(SYN_CONFIG)), tmp_path / "default")
    everything = _quantized_export(load_config(str(SYN_CONFIG), opts=["quant_config.skip_layer_kinds=[]"]),
                                   tmp_path / "all")
    for model, float_expected in ((default, True), (everything, False)):
        for name, layer in model.named_sublayers():
            if name.endswith("depthwise_conv._conv") and quant.layer_kind(getattr(layer, "_layer", layer)) \
                    == "depthwise_multiplier":
                assert (type(layer).__name__ == "Conv2D") == float_expected, name
    with_rule = deploy.program_op_types(str(tmp_path / "default" / "model.pdmodel"))
    without = deploy.program_op_types(str(tmp_path / "all" / "model.pdmodel"))
    n_q = lambda c: sum(n for (t, _), n in c.items() if t == "quantize_linear")  # noqa: E731
    assert n_q(without) - n_q(with_rule) >= 8
    for rt in ("paddle", "openvino"):
        a = deploy.create_predictor(str(tmp_path / "default"), runtime=rt, precision="int8", threads=1)
        b = deploy.create_predictor(str(tmp_path / "all"), runtime=rt, precision="int8", threads=1)
        assert sum(b.int8_ops().values()) - sum(a.int8_ops().values()) == 8, rt
        a.close()
        b.close()


def test_skip_layer_kinds_is_checked(tmp_path):
    cfg = load_config(str(SYN_CONFIG), opts=["quant_config.skip_layer_kinds=[dw]"])
    with pytest.raises(Exception, match="skip_layer_kinds = 'dw'.*depthwise_multiplier"):
        quant.quant_settings(cfg, purpose="export")


def test_qat_weights_of_another_placement_are_refused_clearly(tmp_path, qat_run, syn_cfg):
    """QAT weights trained with every layer quantized do not load into the default placement:
    the error says to use the run's config."""
    from segqat.weights import WeightsError
    cfg = load_config(str(syn_cfg), opts=["quant_config.skip_layer_kinds=[depthwise]"])
    with pytest.raises(WeightsError, match="config.yaml"):
        quant.build_model(cfg, str(qat_run / "best_model" / "model.pdparams"), quantized=True, stage="eval")


@pytest.mark.runtimes
def test_profile_ops_reports_int8_and_fp32_kernels(tmp_path):
    out = tmp_path / "prof"
    rec = run_script("slim/quant/profile_ops.py", [
        "--config", SYN_CONFIG, "--input_shape", 1, 3, 64, 64, "--runtimes", "paddle", "openvino",
        "--runs", 2, "--warmup", 1, "--cpu_threads", 1, "--save_dir", out])
    for rt in ("paddle", "openvino"):
        f, q = rec["runtimes"][rt]["fp32"], rec["runtimes"][rt]["int8"]
        assert sum(e["int8"] for e in f["ops"].values()) == 0, rt
        assert sum(e["int8"] for e in q["ops"].values()) >= 40, rt  # 56 convs, 8 left float
        assert f["wall_ms"] > 0 and q["wall_ms"] > 0
    paddle_int8 = rec["runtimes"]["paddle"]["int8"]
    assert any(r["kind"] == "int8" and r["type"] == "convolution" for r in paddle_int8["layers"])
    assert "quantize" in paddle_int8["ops"] and paddle_int8["ops"]["quantize"]["convert"] > 0
    text = (out / "profile.md").read_text()
    assert "## paddle" in text and "## openvino" in text and "Machine:" in text
    assert json.loads((out / "profile.json").read_text())["input_shape"] == [1, 3, 64, 64]
    with pytest.raises(SystemExit):  # an earlier profile is kept without --overwrite
        run_script("slim/quant/profile_ops.py", ["--config", SYN_CONFIG, "--runtimes", "paddle",
                                                 "--save_dir", out])


def test_layer_latency_writes_a_usable_skip_config(tmp_path):
    out = tmp_path / "kinds"
    res = run_script("slim/quant/layer_latency.py", [
        "--config", SYN_CONFIG, "--runtime", "paddle", "--input_shape", 1, 3, 64, 64,
        "--repeats", 3, "--warmup", 1, "--cpu_threads", 1, "--min_gain", "-1", "--save_dir", out,
        "--kinds", "depthwise_multiplier", "depthwise"])
    kinds = {r["kind"] for r in res["kinds"]}
    assert kinds == {"depthwise", "depthwise_multiplier"}
    assert all(len(r["layers"]) == 8 for r in res["kinds"])  # BiSeNetV2 has 8 of each
    # --min_gain -1: every kind "saves more than -100%", so every kind is listed
    assert sorted(res["skip_layer_kinds"]) == sorted(kinds)
    cfg = load_config(str(out / "config_with_skips.yml"))
    assert sorted(quant.quant_settings(cfg, purpose="export")["skip_layer_kinds"]) == sorted(kinds)
    model, _ = quant.build_model(cfg)
    quant.quantize(model, quant.quant_settings(cfg, purpose="export"))
    kind_of = {n: quant.layer_kind(getattr(layer, "_layer", layer)) for n, layer in model.named_sublayers()}
    quantized = {n for n, layer in model.named_sublayers() if type(layer).__name__.startswith("Quantized")}
    assert quantized and not any(kind_of[n] in kinds for n in quantized)  # the rest stays INT8
