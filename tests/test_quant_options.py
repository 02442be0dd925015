"""quant_config options change the exported model; unsupported ones are errors."""
import numpy as np
import paddle
import pytest

from conftest import SYN_CONFIG, write_config
from segqat import deploy, export, quant
from segqat.config import ConfigError, load_config


def quantized_export(cfg, out):
    model, _ = quant.build_model(cfg)
    quanter = quant.quantize(model, quant.quant_settings(cfg))
    model.train()
    with paddle.no_grad():
        model(paddle.to_tensor(np.random.RandomState(0).rand(2, 3, 64, 64).astype("float32")))
    export.export_model(cfg, model, str(out), quanter=quanter)
    return model


def program_ops(path):
    from paddle.base import core
    desc = core.ProgramDesc(open(path, "rb").read())
    blk = desc.block(0)
    return [(blk.op(i).type(), blk.op(i).input_arg_names()) for i in range(blk.op_size())]


def test_skip_layers(tmp_path):
    base = load_config(str(SYN_CONFIG))
    skip = load_config(str(write_config(tmp_path / "s.yml", extra="quant_config:\n  skip_layers: ['head.*']\n")))
    m_all = quantized_export(base, tmp_path / "all")
    m_skip = quantized_export(skip, tmp_path / "skip")
    kinds = {n: type(l).__name__ for n, l in m_skip.named_sublayers()}
    assert kinds["head.conv_1x1"] == "Conv2D"                    # left in float
    assert kinds["db.convs.0._conv._layer"] == "QuantizedConv2D"  # the rest quantized
    n_all = sum(t == "quantize_linear" for t, _ in program_ops(tmp_path / "all" / "model.pdmodel"))
    n_skip = sum(t == "quantize_linear" for t, _ in program_ops(tmp_path / "skip" / "model.pdmodel"))
    assert n_skip < n_all
    pred = deploy.SegPredictor(str(tmp_path / "skip"), precision="int8", cpu_threads=1)
    assert sum(pred.int8_ops().values()) > 20
    pred.close()


def test_skip_pattern_matching_nothing(tmp_path):
    cfg = load_config(str(write_config(tmp_path / "s.yml", extra="quant_config:\n  skip_layers: ['nope.*']\n")))
    with pytest.raises(ConfigError, match="nope"):
        quant.quantize(quant.build_model(cfg)[0], quant.quant_settings(cfg))


def test_per_tensor_weights(tmp_path):
    cfg = load_config(str(write_config(tmp_path / "t.yml",
                                       extra="quant_config:\n  weight_quantize_type: abs_max\n")))
    quantized_export(cfg, tmp_path / "pt")
    pred = deploy.SegPredictor(str(tmp_path / "pt"), precision="int8", cpu_threads=1)
    assert sum(pred.int8_ops().values()) > 20
    out = pred.run(np.random.rand(1, 3, 64, 64).astype("float32"))
    assert out.shape == (1, 64, 64)
    pred.close()
    # per-tensor: one weight scale per quantized conv instead of one per output channel
    from paddle.base import core
    desc = core.ProgramDesc(open(tmp_path / "pt" / "model.pdmodel", "rb").read())
    blk = desc.block(0)
    axes = {blk.op(i).attr("quant_axis") for i in range(blk.op_size())
            if blk.op(i).type() == "dequantize_linear" and blk.op(i).has_attr("quant_axis")}
    assert axes == {-1}, axes


@pytest.mark.parametrize("extra,match", [
    ("weight_bits: 4", "weight_bits"),
    ("activation_quantize_type: abs_max", "activation_quantize_type"),
    ("pact: true", "not implemented"),
    ("moving_rate: 1.5", "moving_rate"),
])
def test_unsupported_options(tmp_path, extra, match):
    cfg = load_config(str(write_config(tmp_path / "u.yml", extra=f"quant_config:\n  {extra}\n")))
    with pytest.raises(ConfigError, match=match):
        quant.quant_settings(cfg)
