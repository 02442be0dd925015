"""Every shipped model config exports to FP32 and INT8, and the INT8 model runs INT8 kernels."""
import numpy as np
import pytest

from conftest import ROOT
from segqat import calibration, deploy, export, quant
from segqat.config import load_config

CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yml")
                 if "_base_" not in p.parts and p.parent.name != "quant")


def test_there_are_shipped_configs():
    names = " ".join(CONFIGS)
    assert "bisenetv2" in names and "pp_liteseg" in names and len(CONFIGS) >= 6


# One config per architecture in the default suite (the first of each model folder); the
# other shipped configs of the same architecture (other data sets, the OpenVINO variant) and
# the zoo's configs (also exported, quantized and run by `make zoo`) with `make test-slow`,
# to keep the default suite within its time budget.
def _default_tier(path):
    folder = path.split("/")[1]
    return folder != "zoo" and path == min(p for p in CONFIGS if p.split("/")[1] == folder)


@pytest.mark.parametrize("path", [p if _default_tier(p) else pytest.param(p, marks=pytest.mark.slow)
                                  for p in CONFIGS])
def test_export_fp32_and_int8(path, tmp_path):
    cfg = load_config(str(ROOT / path))
    model, _ = quant.build_model(cfg)
    export.export_model(cfg, model, str(tmp_path / "fp32"))
    qmodel, _ = quant.build_model(cfg)
    quanter = quant.quantize(qmodel, quant.quant_settings(cfg))
    rng = np.random.RandomState(0)
    # give the activation quantizers a scale
    calibration.calibrate(qmodel, [rng.rand(2, 3, 64, 64).astype("float32") for _ in range(2)])
    export.export_model(cfg, qmodel, str(tmp_path / "int8"), quanter=quanter)
    x = rng.rand(1, 3, 64, 96).astype("float32")
    fp32 = deploy.create_predictor(str(tmp_path / "fp32"), threads=1)
    int8 = deploy.create_predictor(str(tmp_path / "int8"), precision="int8", threads=1)
    assert fp32.run(x).shape == int8.run(x).shape == (1, 64, 96)
    assert sum(int8.int8_ops().values()) > 20
    size = {k: (tmp_path / k / "model.pdiparams").stat().st_size for k in ("fp32", "int8")}
    assert size["int8"] <= 0.3 * size["fp32"]
    int8.close()


def test_export_input_shape_from_config(tmp_path):
    """RTFormer's zoo config fixes the batch size for its export; --input_shape still wins,
    and a bad export.input_shape names the config key."""
    cfg = load_config(str(ROOT / "configs/zoo/rtformer_slim.yml"))
    assert export.check_input_shape(cfg, None) == [1, 3, -1, -1]
    assert export.check_input_shape(cfg, [2, 3, 64, 64]) == [2, 3, 64, 64]
    assert export.check_input_shape(load_config(str(ROOT / CONFIGS[0])), None)[0] == -1
    bad = tmp_path / "bad.yml"
    bad.write_text(f"_base_: {ROOT / 'configs/zoo/rtformer_slim.yml'}\nexport: {{input_shape: [1, 3, 0]}}\n")
    with pytest.raises(ValueError, match="export.input_shape"):
        export.check_input_shape(load_config(str(bad)), None)


def test_sfnet_trains_and_exports(tmp_path):
    """paddleseg 2.8's SFNet divides its float32 flow by an int64 size (AlignedModule.flow_warp),
    which paddle 3.3.1 rejects in training: "Type promotion only support calculations between
    floating-point numbers ... x: float32, y: int64". compat.model_overrides builds SFNet with
    AlignedModules that cast the size: same parameters as paddleseg's SFNet, and the FP32
    export (grid_sample included) matches dygraph."""
    import paddle
    from paddleseg.models import SFNet
    from segqat import builder
    from old_ir_helpers import paddle_inference
    cfg = load_config(str(ROOT / "configs/zoo/sfnet.yml"))
    paddle.seed(0)
    model = builder.build_model(cfg)
    assert isinstance(model, SFNet)
    paddle.seed(0)
    args = {k: v for k, v in cfg.section("model").items() if k != "type"}
    plain = SFNet(**{**args, "backbone": builder.build_component(args["backbone"]), "num_classes": 4})
    assert {k: v.shape for k, v in model.state_dict().items()} == \
        {k: v.shape for k, v in plain.state_dict().items()}
    model.train()
    x = paddle.rand([2, 3, 32, 32])
    losses = builder.build_losses(cfg)
    from segqat.engine import compute_loss
    loss = compute_loss(losses, model(x), paddle.randint(0, 4, [2, 32, 32]))
    loss.backward()
    model.eval()
    x = np.random.RandomState(0).rand(1, 3, 32, 48).astype("float32")
    want = model(paddle.to_tensor(x))[0].numpy()
    export.export_model(cfg, model, str(tmp_path / "fp32"), output_op="none")
    got = paddle_inference(tmp_path / "fp32" / "model", (x,), True)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
