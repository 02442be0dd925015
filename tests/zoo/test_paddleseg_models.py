"""The tutorial's seven models, from PaddleSeg-shaped configs: train -> QAT -> INT8 export -> INT8 run.

Each PaddleSeg config (``tests/zoo/paddleseg_configs/``, written to reproduce
release/2.8's ``<model>_resnet50_os8_cityscapes_1024x512_80k.yml`` chain) is
used unchanged as ``_base_`` of a config that only swaps in the synthetic
data (``_inherited_: False`` datasets, 4 classes, ``backbone.pretrained:
null`` so nothing is downloaded). ResNet50_vd OS8 at 64x64, 2 iterations each.

All seven are ``slow`` (``make test-slow``): 5 min each on this 2-core machine
under load (DANet: 308 s), so they stay out of ``make test``; the default
suite keeps the cheap checks below and ``tests/compat/test_old_ir_export.py``.
With ``SEGQAT_PADDLESEG_REPO=/path/to/PaddleSeg`` (a release/2.8 checkout)
the same pipeline also runs PaddleSeg's own config files.
"""
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, run_script

COMPAT = ROOT / "tests" / "zoo" / "paddleseg_configs"
MODELS = ["ann", "danet", "deeplabv3p", "dnlnet", "emanet", "gcnet", "pspnet"]
FAST = set()  # each takes 1.5-5 min here (ResNet50 OS8): all run with `make test-slow`


def _params(models):
    return [pytest.param(m, marks=() if m in FAST else pytest.mark.slow) for m in models]


def swap_data_config(path, base, data_root):
    """PaddleSeg's config unchanged as _base_; only data, classes and pretrained weights swapped."""
    ds = ("{_inherited_: False, type: Dataset, dataset_root: %s, %s_path: %s/%s.txt, num_classes: 4,"
          " mode: %s, transforms: [%s{type: Normalize}]}")
    crop = "{type: RandomPaddingCrop, crop_size: [64, 64]}, "
    path.write_text(
        f"_base_: {base}\n"
        "batch_size: 2\n"
        "model:\n  num_classes: 4\n  backbone: {pretrained: null}\n"
        f"train_dataset: {ds % (data_root, 'train', data_root, 'train', 'train', crop)}\n"
        f"val_dataset: {ds % (data_root, 'val', data_root, 'val', 'val', '')}\n")
    return path


def train_qat_export_infer(cfg, out):
    from segqat import deploy
    run_script("tools/train.py", ["--config", cfg, "--iters", 2, "--batch_size", 2, "--save_interval", 2,
                                  "--log_iters", 1, "--save_dir", out / "fp32", "--cpu_threads", 2])
    fp32 = out / "fp32" / "iter_2" / "model.pdparams"
    run_script("slim/quant/qat_train.py", ["--config", cfg, "--model_path", fp32, "--iters", 2,
                                           "--batch_size", 2, "--learning_rate", 0.001,
                                           "--save_interval", 2, "--log_iters", 1,
                                           "--save_dir", out / "qat", "--cpu_threads", 2])
    run_script("slim/quant/qat_export.py", ["--config", cfg, "--model_path",
                                            out / "qat" / "iter_2" / "model.pdparams",
                                            "--save_dir", out / "int8"])
    pred = deploy.create_predictor(str(out / "int8"), precision="int8", threads=2)
    try:
        x = np.random.RandomState(0).rand(1, 3, 64, 64).astype("float32")
        labels = pred.run(x)
        int8 = sum(pred.int8_ops().values())
    finally:
        pred.close()
    assert labels.shape == (1, 64, 64) and labels.min() >= 0 and labels.max() < 4
    # ResNet50_vd OS8 + head: 58-67 convolutions; nearly all must run INT8
    assert int8 >= 50, pred.int8_ops()


@pytest.mark.parametrize("model", _params(MODELS))
def test_paddleseg_shaped_config_to_int8(model, synth, tmp_path):
    base = COMPAT / f"{model}_resnet50_os8_cityscapes.yml"
    cfg = swap_data_config(tmp_path / "cfg.yml", base, synth)
    train_qat_export_infer(cfg, tmp_path)


def _paddleseg_repo():
    repo = os.environ.get("SEGQAT_PADDLESEG_REPO")
    if not repo:
        pytest.skip("set SEGQAT_PADDLESEG_REPO to a PaddleSeg release/2.8 checkout")
    if not (Path(repo) / "configs" / "_base_" / "cityscapes.yml").is_file():
        pytest.fail(f"SEGQAT_PADDLESEG_REPO={repo} holds no configs/_base_/cityscapes.yml")
    return Path(repo)


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_real_paddleseg_config_to_int8(model, synth, tmp_path):
    """Opt-in: PaddleSeg's own release/2.8 file, unchanged, as _base_."""
    base = _paddleseg_repo() / "configs" / model / f"{model}_resnet50_os8_cityscapes_1024x512_80k.yml"
    cfg = swap_data_config(tmp_path / "cfg.yml", base, synth)
    train_qat_export_infer(cfg, tmp_path)


@pytest.mark.parametrize("model", MODELS)
def test_compat_configs_mirror_paddleseg_semantics(model):
    """Cheap check on every seven: the chain resolves as PaddleSeg resolves it."""
    from segqat.config import load_config
    cfg = load_config(str(COMPAT / f"{model}_resnet50_os8_cityscapes.yml"))
    assert cfg.num_classes == 19 and cfg["model"]["num_classes"] == 19   # Cityscapes.NUM_CLASSES
    assert cfg.ignore_index == 255
    loss = cfg["loss"]
    assert len(loss["types"]) == len(loss["coef"]) >= 1                   # single type repeated
    assert cfg["model"]["backbone"]["pretrained"].startswith("https://")  # the tests null it
