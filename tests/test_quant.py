"""quant_config options change the exported model; unsupported ones are errors."""
import numpy as np
import paddle
import pytest

from conftest import SYN_CONFIG, write_config
from segqat import calibration, deploy, export, ptq, quant
from segqat.config import ConfigError, load_config


def quantized_export(cfg, out):
    model, _ = quant.build_model(cfg)
    quanter = quant.quantize(model, quant.quant_settings(cfg))
    calibration.calibrate(model, [np.random.RandomState(0).rand(2, 3, 64, 64).astype("float32")])
    export.export_model(cfg, model, str(out), quanter=quanter)
    return model


def n_quantize_ops(infer_dir):
    return ptq.program_op_counts(str(infer_dir / "model.pdmodel"))["quantize_linear"]


def program_ops(path):
    from paddle.base import core
    desc = core.ProgramDesc(open(path, "rb").read())
    blk = desc.block(0)
    return [(blk.op(i).type(), blk.op(i).input_arg_names()) for i in range(blk.op_size())]


def test_skip_layers(tmp_path):
    base = load_config(str(SYN_CONFIG))
    skip = load_config(str(write_config(tmp_path / "s.yml", extra="quant_config:\n  skip_layers: ['head.*']\n")))
    quantized_export(base, tmp_path / "all")
    m_skip = quantized_export(skip, tmp_path / "skip")
    kinds = {n: type(l).__name__ for n, l in m_skip.named_sublayers()}
    assert kinds["head.conv_1x1"] == "Conv2D"                    # left in float
    assert kinds["db.convs.0._conv._layer"] == "QuantizedConv2D"  # the rest quantized
    n_all = n_quantize_ops(tmp_path / "all")
    n_skip = n_quantize_ops(tmp_path / "skip")
    assert n_skip < n_all
    pred = deploy.create_predictor(str(tmp_path / "skip"), precision="int8", threads=1)
    assert sum(pred.int8_ops().values()) > 20
    pred.close()


def test_skip_pattern_matching_nothing(tmp_path):
    cfg = load_config(str(write_config(tmp_path / "s.yml", extra="quant_config:\n  skip_layers: ['nope.*']\n")))
    with pytest.raises(ConfigError, match="nope"):
        quant.quantize(quant.build_model(cfg)[0], quant.quant_settings(cfg))


def weight_quant_axes(pdmodel):
    """quant_axis of the weight dequantize_linear ops (-1: one scale per tensor)."""
    from paddle.base import core
    desc = core.ProgramDesc(open(pdmodel, "rb").read())
    blk = desc.block(0)
    axes = []
    for i in range(blk.op_size()):
        op = blk.op(i)
        if op.type() == "dequantize_linear" and blk.var(op.input("X")[0].encode()).persistable():
            axes.append(op.attr("quant_axis"))
    assert len(axes) > 20, axes  # every quantized conv has its int8 weight dequantized
    return set(axes)


@pytest.mark.parametrize("extra,axes", [
    ("weight_quantize_type: abs_max", {-1}),
    ("weight_granularity: per_tensor", {-1}),
    ("weight_granularity: per_channel", {0, 1}),   # 0: output channels of a conv (1 would be a transposed conv's; BiSeNetV2 has none)
])
def test_weight_granularity(tmp_path, extra, axes):
    cfg = load_config(str(write_config(tmp_path / "t.yml", extra=f"quant_config:\n  {extra}\n")))
    quantized_export(cfg, tmp_path / "pt")
    pred = deploy.create_predictor(str(tmp_path / "pt"), precision="int8", threads=1)
    assert sum(pred.int8_ops().values()) > 20
    out = pred.run(np.random.rand(1, 3, 64, 64).astype("float32"))
    assert out.shape == (1, 64, 64)
    pred.close()
    found = weight_quant_axes(tmp_path / "pt" / "model.pdmodel")
    assert found and found <= axes, found


def test_granularity_contradiction(tmp_path):
    cfg = load_config(str(write_config(tmp_path / "c.yml", extra=(
        "quant_config:\n  weight_granularity: per_tensor\n  weight_quantize_type: channel_wise_abs_max\n"))))
    with pytest.raises(ConfigError, match="contradict"):
        quant.quant_settings(cfg)


@pytest.mark.parametrize("extra,match", [
    ("weight_bits: 4", "weight_bits"),
    ("activation_quantize_type: abs_max", "activation_quantize_type"),
    ("weight_granularity: per_group", "weight_granularity"),
    ("quantize_scope: head", "quantize_scope"),
    ("moving_rate: 1.5", "moving_rate"),
])
def test_unsupported_options(tmp_path, extra, match):
    cfg = load_config(str(write_config(tmp_path / "u.yml", extra=f"quant_config:\n  {extra}\n")))
    with pytest.raises(ConfigError, match=match):
        quant.quant_settings(cfg)


@pytest.mark.parametrize("extra,purpose,match", [
    ("weight_bits: 16", "export", "16 bits is a diagnostic"),
    ("activation_bits: 16", "ptq", "16 bits is a diagnostic"),
    ("pact: true", "ptq", "PACT learns"),
    ("pact: true", "analysis", "PACT learns"),
])
def test_unsupported_combinations(tmp_path, extra, purpose, match):
    cfg = load_config(str(write_config(tmp_path / "u.yml", extra=f"quant_config:\n  {extra}\n")))
    with pytest.raises(ConfigError, match=match):
        quant.quant_settings(cfg, purpose=purpose)
    quant.quant_settings(cfg, purpose="train")  # fine for fake-quant training


def test_16_bit_is_closer_to_fp32(tmp_path):
    """The 16-bit diagnostic simulates a finer grid: its logits are closer to FP32's than 8-bit's."""
    x = paddle.to_tensor(np.random.RandomState(1).rand(2, 3, 64, 64).astype("float32"))
    outs = {}
    for bits in (None, 8, 16):
        cfg = load_config(str(SYN_CONFIG))
        paddle.seed(0)
        model, _ = quant.build_model(cfg)
        if bits:
            qc = dict(quant.quant_settings(cfg), weight_bits=bits, activation_bits=bits)
            quant.quantize(model, qc)
            assert calibration.calibrate(model, [x] * 3) == 3
        model.eval()
        with paddle.no_grad():
            outs[bits] = model(x)[0].numpy()
    err8 = np.abs(outs[8] - outs[None]).mean()
    err16 = np.abs(outs[16] - outs[None]).mean()
    assert err16 < err8 / 10, (err8, err16)


def test_quantize_scope_backbone(tmp_path):
    from conftest import ROOT
    base = ROOT / "configs" / "pp_liteseg" / "pp_liteseg_stdc1_synthetic_64x64.yml"
    cfg_all = load_config(str(base))
    cfg_bb = load_config(str(write_config(tmp_path / "b.yml", base=base,
                                          extra="quant_config:\n  quantize_scope: backbone\n")))
    quantized_export(cfg_all, tmp_path / "all")
    m = quantized_export(cfg_bb, tmp_path / "bb")
    kinds = {n: type(l).__name__ for n, l in m.named_sublayers()}
    quantized = [n for n, k in kinds.items() if k in ("QuantizedConv2D", "QuantizedLinear")]
    assert quantized and all(n.startswith("backbone.") for n in quantized)
    assert any(k == "Conv2D" and not n.startswith("backbone.") for n, k in kinds.items())
    n_all = n_quantize_ops(tmp_path / "all")
    n_bb = n_quantize_ops(tmp_path / "bb")
    assert 0 < n_bb < n_all
    pred = deploy.create_predictor(str(tmp_path / "bb"), precision="int8", threads=1)
    assert sum(pred.int8_ops().values()) > 10
    pred.close()


def test_quantize_scope_backbone_needs_a_backbone(tmp_path):
    cfg = load_config(str(write_config(tmp_path / "b.yml", extra="quant_config:\n  quantize_scope: backbone\n")))
    with pytest.raises(ConfigError, match="BiSeNetV2 has no `backbone`"):
        quant.quantize(quant.build_model(cfg)[0], quant.quant_settings(cfg))


def test_pact_clipping_reaches_the_exported_scales(tmp_path):
    """PACT clips activations at alpha; the export drops the PACT ops but keeps scales <= alpha."""
    cfg = load_config(str(write_config(tmp_path / "p.yml", extra="quant_config:\n  pact: true\n")))
    x = paddle.to_tensor(np.random.RandomState(0).rand(2, 3, 64, 64).astype("float32") * 4 - 2)
    alpha = 0.05
    dirs = {}
    for pact in (False, True):
        model, _ = quant.build_model(cfg)
        qc = quant.quant_settings(cfg)
        quanter = quant.quantize(model, qc, pact=pact)
        alphas = [p for n, p in model.named_parameters() if n.endswith("_act_preprocess.alpha")]
        assert bool(alphas) == pact
        for p in alphas:
            p.set_value(paddle.full([1], alpha, "float32"))
        calibration.calibrate(model, [x] * 3)
        if pact:
            with pytest.raises(ValueError, match="remove PACT first"):
                export.export_model(cfg, model, str(tmp_path / "direct"), quanter=quanter)
            assert not (tmp_path / "direct").exists()
            model, quanter = quant.without_pact(cfg, model, qc)
        dirs[pact] = tmp_path / f"pact{int(pact)}"
        export.export_model(cfg, model, str(dirs[pact]), quanter=quanter)
    ops = [t for t, _ in program_ops(dirs[True] / "model.pdmodel")]
    assert "quantize_linear" in ops and ops.count("relu") == [
        t for t, _ in program_ops(dirs[False] / "model.pdmodel")].count("relu")  # no PACT ops
    with_pact, plain = deploy.conv_input_scales(dirs[True]), deploy.conv_input_scales(dirs[False])
    assert len(with_pact) == len(plain) > 20
    clipped = [v <= alpha * 1.001 for v in with_pact]
    # All but the inputs that paddle's export quantizes with the producing conv's
    # output scale (1 of 55 in BiSeNetV2: a conv without BN feeding convs), see README.
    assert sum(clipped) >= 0.9 * len(clipped), with_pact
    assert sum(v <= alpha * 1.001 for v in plain) <= 0.1 * len(plain), plain


def test_paddles_own_conv_bn_fusion_does_nothing():
    """Why segqat folds itself (compat.paddleslim_qat_config): paddle 3.3.1's fuse_conv_bn,
    which ImperativeQuantAware(fuse_conv_bn=True) calls, leaves the model as it was."""
    from paddle.quantization.imperative import fuse_utils
    model = paddle.nn.Sequential(paddle.nn.Conv2D(3, 4, 3), paddle.nn.BatchNorm2D(4))
    fuse_utils.fuse_conv_bn(model)
    assert isinstance(model[1], paddle.nn.BatchNorm2D)
    assert quant.make_quanter(dict(quant.DEFAULT_QUANT_CONFIG, fuse_conv_bn=True)).config["fuse_conv_bn"] is False


def _trained_bn_statistics(model, seed=0):
    """Batch-norm statistics far from their initial 0 / 1, as training leaves them."""
    rng = np.random.RandomState(seed)
    for layer in model.sublayers():
        if isinstance(layer, paddle.nn.layer.norm._BatchNormBase):
            n = layer.weight.shape[0]
            layer._mean.set_value(rng.randn(n).astype("float32"))
            layer._variance.set_value(rng.uniform(0.01, 4, n).astype("float32"))
            layer.weight.set_value(rng.uniform(0.2, 2, n).astype("float32"))
            layer.bias.set_value(rng.randn(n).astype("float32"))


def test_fold_batch_norms_keeps_the_output(tmp_path):
    cfg = load_config(str(SYN_CONFIG))
    model, _ = quant.build_model(cfg)
    _trained_bn_statistics(model)
    model.eval()
    x = paddle.to_tensor(np.random.RandomState(1).rand(1, 3, 64, 64).astype("float32"))
    before = model(x)[0].numpy()
    n_bn = sum(isinstance(m, paddle.nn.layer.norm._BatchNormBase) for m in model.sublayers())
    pairs = quant.fold_batch_norms(model)
    after = model(x)[0].numpy()
    left = sum(isinstance(m, paddle.nn.layer.norm._BatchNormBase) for m in model.sublayers())
    assert len(pairs) >= 0.8 * n_bn and left == n_bn - len(pairs)  # BiSeNetV2: nearly every BN follows a conv
    assert np.abs(after - before).max() <= 1e-4 * np.abs(before).max()
    assert not any(k.endswith(("._mean", "._variance")) and pairs[0][1] in k for k in model.state_dict())


def test_fold_refuses_a_convolution_whose_output_is_used_twice():
    class Residual(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.conv = paddle.nn.Conv2D(3, 3, 3, padding=1)
            self.bn = paddle.nn.BatchNorm2D(3)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # folding the BN into conv would change the second use of y

    model = Residual()
    _trained_bn_statistics(model)
    with pytest.raises(ConfigError, match=r"fuse_conv_bn.*the pair conv -> bn cannot be folded"):
        quant.fold_batch_norms(model)


def test_fuse_conv_bn_qat_exports_int8(tmp_path, fp32_run):
    """fuse_conv_bn: true in QAT: the quantizers see folded weights (the BNs are gone), and
    qat_val / qat_export rebuild the same folded model, export it and run it INT8."""
    cfg = load_config(str(write_config(tmp_path / "f.yml", extra="quant_config:\n  fuse_conv_bn: true\n"
                                                                "  weight_granularity: per_tensor\n")))
    weights = str(fp32_run / "best_model" / "model.pdparams")
    model, quanter = quant.build_model(cfg, weights, quantized=True, stage="train")

    def n_bn(m):
        return sum(isinstance(x, paddle.nn.layer.norm._BatchNormBase) for x in m.sublayers())
    plain, _ = quant.build_model(cfg, weights)
    assert n_bn(model) < n_bn(plain) / 5
    calibration.calibrate(model, [np.random.RandomState(0).rand(2, 3, 64, 64).astype("float32")])
    paddle.save(model.state_dict(), str(tmp_path / "qat.pdparams"))
    # qat_val / qat_export build the same folded structure and load those weights
    again, quanter = quant.build_model(cfg, str(tmp_path / "qat.pdparams"), quantized=True, stage="export")
    export.export_model(cfg, again, str(tmp_path / "qat_infer"), quanter=quanter)
    pred = deploy.create_predictor(str(tmp_path / "qat_infer"), precision="int8", threads=1)
    assert sum(pred.int8_ops().values()) > 20
    pred.close()
    # the BNs left (not after a conv; some only in the training heads) are all the program has
    assert ptq.program_op_counts(str(tmp_path / "qat_infer" / "model.pdmodel"))["batch_norm"] <= n_bn(model)


def test_int8_residual_fusion_goes_to_deploy_yaml(tmp_path):
    """quant_config.int8_residual_fusion: false is written to deploy.yaml (only when false); a
    value that is not a boolean is a config error naming the key."""
    import yaml
    off = load_config(str(write_config(tmp_path / "o.yml", extra="quant_config:\n  int8_residual_fusion: false\n")))
    quantized_export(off, tmp_path / "off")
    dep = yaml.safe_load((tmp_path / "off" / "deploy.yaml").read_text())["Deploy"]
    assert dep["int8_residual_fusion"] is False
    quantized_export(load_config(str(SYN_CONFIG)), tmp_path / "on")
    assert "int8_residual_fusion" not in yaml.safe_load((tmp_path / "on" / "deploy.yaml").read_text())["Deploy"]
    kernels = {}
    for name in ("on", "off"):
        pred = deploy.create_predictor(str(tmp_path / name), precision="int8", threads=1)
        kernels[name] = sum(pred.int8_ops().values())
        pred.close()
    assert kernels["off"] > kernels["on"] > 20  # BiSeNetV2: the one FP32 convolution runs INT8
    with pytest.raises(ConfigError, match="int8_residual_fusion"):
        load_config(str(write_config(tmp_path / "b.yml", extra="quant_config:\n  int8_residual_fusion: 'no'\n")))
