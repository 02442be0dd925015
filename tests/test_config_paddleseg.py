"""PaddleSeg 2.8's config rules (paddleseg/cvlibs/config.py, config_checker.py, SegBuilder).

num_classes / ignore_index / image channels from the dataset classes and kept
in sync, one loss type repeated over coef, MixedLoss, PaddleSeg-only keys, and
a PaddleSeg config whose data is not on disk still exports.
"""
import numpy as np
import paddle
import pytest
import yaml

from conftest import run_script
from segqat import builder
from segqat.config import ConfigError, load_config

CITYSCAPES = """
train_dataset: {type: Cityscapes, dataset_root: /nonexistent/cityscapes, mode: train, transforms: [{type: Normalize}]}
val_dataset: {type: Cityscapes, dataset_root: /nonexistent/cityscapes, mode: val, transforms: [{type: Normalize}]}
"""
GENERIC = ("{type: Dataset, dataset_root: /d, %s_path: /d/x.txt, num_classes: %d, mode: %s, "
           "transforms: [{type: Normalize}]%s}")


def w(path, text):
    path.write_text(text)
    return path


def test_num_classes_from_dataset_class(tmp_path):
    cfg = load_config(str(w(tmp_path / "c.yml", "model: {type: PPLiteSeg, backbone: {type: STDC1}}\n"
                                                + CITYSCAPES)))
    assert cfg.num_classes == 19 and cfg["model"]["num_classes"] == 19   # Cityscapes.NUM_CLASSES
    assert cfg.ignore_index == 255 and cfg.img_channels == 3
    ade = CITYSCAPES.replace("Cityscapes", "ADE20K")
    assert load_config(str(w(tmp_path / "a.yml", "model: {type: PPLiteSeg}\n" + ade))).num_classes == 150


def test_num_classes_disagreement_names_file_keys_values(tmp_path):
    c = w(tmp_path / "c.yml", "model: {type: PPLiteSeg, num_classes: 4}\n" + CITYSCAPES)
    with pytest.raises(ConfigError) as e:
        load_config(str(c))
    msg = str(e.value)
    assert str(c) in msg and "model.num_classes = 4" in msg and "Cityscapes.NUM_CLASSES = 19" in msg
    # a train set swapped for 4 classes while val stays Cityscapes: also an error
    c = w(tmp_path / "d.yml", "model: {type: PPLiteSeg, num_classes: 4}\n" + CITYSCAPES + "train_dataset: "
          + GENERIC % ("train", 4, "train", ", _inherited_: False") + "\n")
    with pytest.raises(ConfigError, match=r"val_dataset: Cityscapes.NUM_CLASSES = 19"):
        load_config(str(c))


def test_ignore_index_synced_and_checked(tmp_path):
    base = "model: {type: BiSeNetV2}\ntrain_dataset: " + GENERIC % ("train", 3, "train", ", ignore_index: 7")
    cfg = load_config(str(w(tmp_path / "a.yml", base + "\nloss: {types: [{type: CrossEntropyLoss}], coef: [1]}\n")))
    assert cfg.ignore_index == 7
    assert builder.build_losses(cfg)["types"][0].ignore_index == 7
    bad = base + "\nloss: {types: [{type: MixedLoss, losses: [{type: CrossEntropyLoss, ignore_index: 255}," \
                 " {type: DiceLoss}], coef: [1, 1]}], coef: [1]}\n"
    with pytest.raises(ConfigError, match=r"ignore_index disagrees.*loss.types\[0\].losses\[0\].ignore_index = 255"):
        load_config(str(w(tmp_path / "b.yml", bad)))


def test_img_channels_go_to_the_model(tmp_path):
    one = GENERIC % ("train", 2, "train", ", img_channels: 1")
    cfg = load_config(str(w(tmp_path / "a.yml", f"model: {{type: UNet}}\ntrain_dataset: {one}\n")))
    assert cfg["model"]["in_channels"] == 1 and cfg.img_channels == 1
    with pytest.raises(ConfigError, match="img_channels disagrees"):
        load_config(str(w(tmp_path / "b.yml", f"model: {{type: UNet, in_channels: 3}}\ntrain_dataset: {one}\n")))
    # with a backbone the channels are the backbone's (paddleseg utils.get_in_channels)
    cfg = load_config(str(w(tmp_path / "c.yml", "model: {type: PSPNet, backbone: {type: ResNet18_vd}}\n"
                                                 f"train_dataset: {one}\n")))
    assert cfg["model"]["backbone"]["in_channels"] == 1 and "in_channels" not in cfg["model"]


def test_single_loss_type_repeated_independently(tmp_path):
    cfg = load_config(str(w(tmp_path / "a.yml", "loss: {types: [{type: CrossEntropyLoss}], coef: [1, 0.4]}\n"
                                                 "distill_loss: {types: [{type: KLLoss}], coef: [1, 1, 1]}\n")))
    types = cfg["loss"]["types"]
    assert len(types) == 2 and types[0] is not types[1]
    assert len(cfg["distill_loss"]["types"]) == 3


def test_mixed_loss_sums_its_parts(tmp_path):
    from segqat.engine import compute_loss
    cfg = load_config(str(w(tmp_path / "a.yml", "train_dataset: " + GENERIC % ("train", 3, "train", "") + "\n"
        "loss: {types: [{type: MixedLoss, losses: [{type: CrossEntropyLoss}, {type: LovaszSoftmaxLoss}],"
        " coef: [0.8, 0.2]}], coef: [1]}\n")))
    losses = builder.build_losses(cfg)
    mixed = losses["types"][0]
    assert mixed.mixed.losses[0].ignore_index == 255            # synced into the parts too
    paddle.seed(0)
    logit = paddle.rand([2, 3, 8, 8])
    label = paddle.to_tensor(np.random.RandomState(0).randint(0, 3, (2, 8, 8)).astype("int64"))
    parts = mixed.mixed(logit, label)                           # paddleseg: a list of weighted losses
    total = compute_loss(losses, [logit], label)
    assert isinstance(parts, list) and len(parts) == 2
    np.testing.assert_allclose(total.item(), sum(p.item() for p in parts), rtol=1e-6)


def test_paddleseg_only_keys(tmp_path, caplog):
    cfg = load_config(str(w(tmp_path / "a.yml", "learning_rate: {decay: {end_lr: 1.0e-5}}\n"
                                                 "test_config: {auc_roc: true, is_slide: false}\n")))
    assert "learning_rate" not in cfg and cfg["test_config"]["auc_roc"] is True
    assert "Ignoring top-level 'learning_rate'" in caplog.text
    with pytest.raises(ConfigError, match="loss.typess"):
        load_config(str(w(tmp_path / "b.yml", "loss: {typess: [], coef: []}\n")))


def test_paddleseg_config_without_data_exports(tmp_path):
    """tools/export.py on a PaddleSeg-style config whose Cityscapes folder does not exist."""
    from segqat import quant
    c = w(tmp_path / "c.yml", """
batch_size: 2
iters: 80000
model: {type: PPLiteSeg, backbone: {type: STDC1, pretrained: null}, pretrained: null}
optimizer: {type: SGD, momentum: 0.9, weight_decay: 4.0e-5}
lr_scheduler: {type: PolynomialDecay, learning_rate: 0.01, end_lr: 0, power: 0.9}
loss: {types: [{type: OhemCrossEntropyLoss, min_kept: 130000}], coef: [1, 1, 1]}
test_config: {aug_eval: True, scales: 0.5}
""" + CITYSCAPES)
    cfg = load_config(str(c))
    model, _ = quant.build_model(cfg)
    paddle.save(model.state_dict(), str(tmp_path / "w.pdparams"))
    run_script("tools/export.py", ["--config", c, "--model_path", tmp_path / "w.pdparams",
                                   "--save_dir", tmp_path / "out", "--input_shape", 1, 3, 64, 64])
    dep = yaml.safe_load((tmp_path / "out" / "deploy.yaml").read_text())["Deploy"]
    assert dep["num_classes"] == 19 and (tmp_path / "out" / "model.pdmodel").is_file()
