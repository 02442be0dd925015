"""Config loading: _base_ merging, _inherited_, --opts, strict keys, registry names."""
import numpy as np
import pytest
import yaml

from conftest import ROOT, SYN_CONFIG
from segqat import builder, config
from segqat.config import ConfigError, load_config

pytestmark = pytest.mark.unit  # no training, export or predictor (make test-unit)


def w(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_list_relative_and_override(tmp_path):
    w(tmp_path / "base" / "a.yml", "batch_size: 2\niters: 10\nmodel: {type: BiSeNetV2, num_classes: 3}\n"
      "optimizer: {type: SGD, momentum: 0.9, weight_decay: 0.1}\n")
    w(tmp_path / "base" / "b.yml", "iters: 20\noptimizer: {weight_decay: 0.2}\n")
    c = w(tmp_path / "sub" / "c.yml", "_base_: [../base/a.yml, ../base/b.yml]\nbatch_size: 4\n")
    cfg = load_config(str(c))
    assert cfg["batch_size"] == 4          # the file beats its bases
    assert cfg["iters"] == 20              # the later base beats the earlier
    assert cfg["optimizer"] == {"type": "SGD", "momentum": 0.9, "weight_decay": 0.2}  # dicts merge


def test_inherited_false_replaces(tmp_path):
    w(tmp_path / "a.yml", "optimizer: {type: SGD, momentum: 0.9, weight_decay: 0.1}\n")
    c = w(tmp_path / "c.yml", "_base_: a.yml\noptimizer: {_inherited_: False, type: Adam}\n")
    assert load_config(str(c))["optimizer"] == {"type": "Adam"}


def test_opts_and_flag_overrides(tmp_path):
    c = w(tmp_path / "c.yml", "batch_size: 2\nlr_scheduler: {type: PolynomialDecay, learning_rate: 0.1, "
          "end_lr: 0.01}\n")
    cfg = load_config(str(c), opts=["batch_size=8", "lr_scheduler.power=0.9"],
                      overrides={"lr_scheduler.end_lr": 0.0, "iters": None})
    assert cfg["batch_size"] == 8
    assert cfg["lr_scheduler"]["power"] == 0.9
    assert cfg["lr_scheduler"]["end_lr"] == 0.0   # 0 is a value, not "unset"
    assert "iters" not in cfg                             # None means the flag was not given


def test_unknown_key_names_key_and_file(tmp_path):
    c = w(tmp_path / "c.yml", "batch_sise: 4\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(c))
    assert "batch_sise" in str(e.value) and str(c) in str(e.value) and "batch_size" in str(e.value)


def test_unknown_key_in_base_names_the_base(tmp_path):
    b = w(tmp_path / "b.yml", "itres: 3\n")
    c = w(tmp_path / "c.yml", "_base_: b.yml\nbatch_size: 2\n")
    with pytest.raises(ConfigError, match="itres") as e:
        load_config(str(c))
    assert str(b) in str(e.value)


def test_unknown_opts_key(tmp_path):
    c = w(tmp_path / "c.yml", "batch_size: 2\n")
    with pytest.raises(ConfigError, match="batch_sise"):
        load_config(str(c), opts=["batch_sise=4"])


def test_wrong_type_and_section_key(tmp_path):
    with pytest.raises(ConfigError, match="'batch_size'.*must be int"):
        load_config(str(w(tmp_path / "a.yml", "batch_size: four\n")))
    with pytest.raises(ConfigError, match="test_config.is_slid"):
        load_config(str(w(tmp_path / "b.yml", "test_config: {is_slid: true}\n")))
    with pytest.raises(ConfigError, match="quant_config.weight_bits"):
        load_config(str(w(tmp_path / "c.yml", "quant_config: {weight_bits: '8'}\n")))


def test_missing_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.yml"))
    c = w(tmp_path / "c.yml", "_base_: missing.yml\n")
    with pytest.raises(ConfigError, match="missing.yml"):
        load_config(str(c))


def test_loss_types_and_coef_lengths(tmp_path):
    # PaddleSeg's rule: one type stands for every coef; otherwise the lengths must match
    c = w(tmp_path / "c.yml", "loss: {types: [{type: CrossEntropyLoss}], coef: [1, 0.4]}\n")
    assert load_config(str(c))["loss"]["types"] == [{"type": "CrossEntropyLoss"}] * 2
    c = w(tmp_path / "d.yml", "loss: {types: [{type: CrossEntropyLoss}, {type: DiceLoss}], coef: [1, 1, 1]}\n")
    with pytest.raises(ConfigError, match="loss.coef"):
        load_config(str(c))


def test_unknown_model_type_lists_valid(tmp_path):
    c = w(tmp_path / "c.yml", "model: {type: BiSeNetV3, num_classes: 2}\n")
    with pytest.raises(ConfigError) as e:
        builder.build_model(load_config(str(c)))
    assert "BiSeNetV3" in str(e.value) and "BiSeNetV2" in str(e.value) and "PPLiteSeg" in str(e.value)


def test_unknown_component_argument(tmp_path):
    c = w(tmp_path / "c.yml", "model: {type: BiSeNetV2, num_classes: 2, lamda: 0.5}\n")
    with pytest.raises(ConfigError, match="lamda"):
        builder.build_model(load_config(str(c)))


def test_saved_config_roundtrip(tmp_path):
    cfg = load_config(str(ROOT / "configs/pp_liteseg/pp_liteseg_stdc1_camvid_240x180.yml"),
                      opts=["iters=7"])
    out = tmp_path / "saved.yml"
    cfg.save(str(out))
    again = yaml.safe_load(out.read_text())
    assert again == cfg.dic and again["iters"] == 7 and "_base_" not in again


def _shipped(path):
    """configs/zoo/ entries run with `make test-slow` (the zoo command builds them too).
    SFNet trains through compat.model_overrides (paddleseg's flow_warp divides float32 by int64;
    tests/zoo/test_export_configs.py::test_sfnet_trains_and_exports)."""
    if not path.startswith("configs/zoo/"):
        return path
    return pytest.param(path, marks=[pytest.mark.slow])


@pytest.mark.parametrize("path", [_shipped(str(p.relative_to(ROOT))) for p in sorted(
    (ROOT / "configs").rglob("*.yml")) if "_base_" not in p.parts and p.parent.name != "quant"])
def test_shipped_configs_build(path):
    """Every shipped model config loads and its model, losses and optimizer build."""
    import paddle
    cfg = load_config(str(ROOT / path))
    model = builder.build_model(cfg)
    losses = builder.build_losses(cfg)
    assert len(losses["types"]) == len(losses["coef"]) > 0
    sched = builder.build_lr_scheduler(cfg)
    opt = builder.build_optimizer(cfg, model, sched)
    assert isinstance(opt, paddle.optimizer.Optimizer)
    # one training step with the configured losses (paddleseg's own losses break on paddle 3.x)
    from segqat.engine import compute_loss
    model.train()
    n = builder.num_classes(cfg)
    label = paddle.to_tensor(np.random.RandomState(0).randint(0, n, (2, 64, 64)).astype("int64"))
    label[0, :4] = 255  # some ignored pixels
    loss = compute_loss(losses, model(paddle.rand([2, 3, 64, 64])), label)
    loss.backward()
    opt.step()
    assert np.isfinite(loss.item())


def test_paddleseg_config_loads_unchanged(tmp_path):
    """A config written for PaddleSeg (same schema, lower-case sgd, warmup) builds as is."""
    c = w(tmp_path / "ps.yml", """
batch_size: 4
iters: 1000
train_dataset:
  type: Dataset
  dataset_root: data/x
  train_path: data/x/train.txt
  num_classes: 2
  mode: train
  transforms:
    - type: ResizeStepScaling
      min_scale_factor: 0.5
      max_scale_factor: 2.0
      scale_step_size: 0.25
    - type: RandomPaddingCrop
      crop_size: [512, 512]
    - type: Normalize
model:
  type: PPLiteSeg
  backbone:
    type: STDC2
    pretrained: null
optimizer:
  type: sgd
  momentum: 0.9
  weight_decay: 4.0e-5
lr_scheduler:
  type: PolynomialDecay
  learning_rate: 0.01
  end_lr: 0
  power: 0.9
  warmup_iters: 100
  warmup_start_lr: 1.0e-5
loss:
  types:
    - type: OhemCrossEntropyLoss
      min_kept: 130000
    - type: OhemCrossEntropyLoss
      min_kept: 130000
    - type: OhemCrossEntropyLoss
      min_kept: 130000
  coef: [1, 1, 1]
test_config:
  aug_eval: True
  scales: 0.5
""")
    cfg = load_config(str(c))
    model = builder.build_model(cfg)
    assert type(model).__name__ == "PPLiteSeg"
    assert model.seg_heads[0].conv_out.weight.shape[0] == 2  # num_classes from the dataset
    sched = builder.build_lr_scheduler(cfg)
    opt = builder.build_optimizer(cfg, model, sched)
    assert type(opt).__name__ == "Momentum"
    assert type(sched).__name__ == "LinearWarmup"


@pytest.mark.parametrize("text, value", [
    ("None", None), ("True", True), ("0.75,1.0,1.25", [0.75, 1.0, 1.25]), ("(1, 2)", [1, 2]),
    ("'a b'", "a b"), ("3", 3), ("1e-3", 0.001), ("[depthwise, conv1x1]", ["depthwise", "conv1x1"]),
    ("true", True), ("null", None), ("BiSeNetV2", "BiSeNetV2"), ("{a: 1}", {"a": 1})])
def test_opts_values_are_read_as_paddleseg_reads_them(text, value):
    """PaddleSeg 2.8 reads --opts values with ast.literal_eval (None, True, tuples); what that
    cannot read is YAML, then text."""
    assert config.parse_opt_value(text) == value


def test_opts_pretrained_none_and_scales_as_in_paddleseg(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("_base_: " + str(SYN_CONFIG) + "\n")
    cfg = load_config(str(path), opts=["model.pretrained=None", "test_config.scales=0.75,1.0,1.25",
                                       "test_config.aug_eval=True"])
    assert cfg["model"]["pretrained"] is None
    assert cfg["test_config"]["scales"] == [0.75, 1.0, 1.25] and cfg["test_config"]["aug_eval"] is True


@pytest.mark.parametrize("script, flag, value", [
    ("tools/train.py", "--seed", "-1"), ("tools/train.py", "--seed", "99999999999"),
    ("tools/train.py", "--cpu_threads", "100000"), ("deploy/python/infer.py", "--cpu_threads", "100000"),
    ("slim/quant/ptq.py", "--seed", "-1"), ("deploy/python/benchmark.py", "--cpu_threads", "0")])
def test_seed_and_threads_out_of_range_are_usage_errors(script, flag, value, capsys):
    """Out-of-range seeds and thread counts are argparse errors (exit 2, one line naming the
    flag), not numpy's ValueError traceback or oneDNN's SIGABRT."""
    from conftest import load_script
    parser = load_script(script).get_args_parser()
    with pytest.raises(SystemExit) as e:
        parser.parse_args([flag, value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and flag in err and value in err


def test_model_path_of_a_run_folder_names_its_weights(tmp_path):
    """--model_path <a training run folder> says which weights file it holds."""
    from segqat import weights
    (tmp_path / "run" / "best_model").mkdir(parents=True)
    (tmp_path / "run" / "best_model" / "model.pdparams").write_bytes(b"x")
    with pytest.raises(weights.WeightsError, match=r"is a folder.*did you mean --model_path .*best_model"):
        weights.load_state(str(tmp_path / "run"))
    with pytest.raises(weights.WeightsError, match=r"is a folder.*give the .pdparams file"):
        weights.load_state(str(tmp_path))
