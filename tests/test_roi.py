"""Region-of-interest masks (issue #24): convert_masks.py --roi_dir turns label pixels outside
each image's field of view into the ignore index; the data checks count them apart."""
import json
import logging

import numpy as np
import pytest
from PIL import Image

from conftest import run_script
from segqat import data

pytestmark = pytest.mark.unit

SCRIPT = "tools/data/convert_masks.py"
H, W = 24, 32


def fov(h=H, w=W):
    """A round field of view: 255 inside, 0 outside (as DRIVE's mask/NN_training_mask.gif)."""
    y, x = np.mgrid[:h, :w]
    return (((y - h / 2) ** 2 + (x - w / 2) ** 2) < (min(h, w) / 2 - 1) ** 2).astype(np.uint8) * 255


def drive_with_fov(root, n=4, roi_size=(H, W)):
    """images/NN_training.png, masks/NN_manual1.gif (0/255 everywhere, also outside the field
    of view), fov/NN_training_mask.gif."""
    rng = np.random.default_rng(0)
    for d in ("images", "masks", "fov"):
        (root / d).mkdir()
    masks = {}
    for i in range(21, 21 + n):
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(
            root / "images" / f"{i}_training.png")
        m = (rng.random((H, W)) > 0.7).astype(np.uint8) * 255
        Image.fromarray(m).save(root / "masks" / f"{i}_manual1.gif", optimize=False)
        Image.fromarray(fov(*roi_size)).save(root / "fov" / f"{i}_training_mask.gif", optimize=False)
        masks[str(i)] = m
    return masks


def convert(root, *extra):
    return run_script(SCRIPT, ["--images", root / "images", "--masks", root / "masks",
                               "--image_suffix", "_training", "--mask_suffix", "_manual1",
                               "--map", "255:1", "--names", "background", "vessel",
                               "--val_ratio", 0.5, "--save_dir", root / "out", *extra])


def test_outside_the_roi_becomes_ignore(tmp_path, capsys):
    masks = drive_with_fov(tmp_path)
    s = convert(tmp_path, "--roi_dir", tmp_path / "fov", "--roi_suffix", "_training_mask")
    inside = fov() > 0
    out = tmp_path / "out"
    for key, m in masks.items():
        with Image.open(out / "labels" / f"{key}.png") as im:
            label = np.asarray(im)
        assert (label[~inside] == 255).all()  # outside: ignored, whatever the mask said
        assert np.array_equal(label[inside], (m[inside] == 255).astype(np.uint8))
    census = json.loads((out / "convert_masks.json").read_text())["census"]
    n_out = int((~inside).sum())
    assert census["train"]["outside_roi"] == census["val"]["outside_roi"] == 2 * n_out
    assert census["train"]["ignore"] == 2 * n_out
    assert s["roi_suffix"] == "_training_mask" and s["roi_dir"].endswith("fov")
    assert "outside_roi" in capsys.readouterr().out  # the census row is printed
    # without --roi_dir the same pixels stay background / vessel
    convert(tmp_path, "--overwrite")
    with Image.open(out / "labels" / "21.png") as im:
        assert 255 not in np.asarray(im)


def test_roi_errors(tmp_path, caplog):
    drive_with_fov(tmp_path)
    caplog.set_level(logging.ERROR)
    # the ROI stems need their suffix removed: the error names the folder and the flag
    with pytest.raises(SystemExit):
        convert(tmp_path, "--roi_dir", tmp_path / "fov")
    assert "--roi_dir" in caplog.text and "'21_training_mask'" in caplog.text
    assert "--roi_suffix" in caplog.text
    assert not (tmp_path / "out").exists()
    # an ROI mask of another size
    Image.fromarray(fov(H, W + 2)).save(tmp_path / "fov" / "22_training_mask.gif")
    caplog.clear()
    with pytest.raises(SystemExit):
        convert(tmp_path, "--roi_dir", tmp_path / "fov", "--roi_suffix", "_training_mask")
    assert "22_training_mask.gif is 34x24 but its label is 32x24" in caplog.text
    # an empty region
    Image.fromarray(np.zeros((H, W), np.uint8)).save(tmp_path / "fov" / "22_training_mask.gif")
    caplog.clear()
    with pytest.raises(SystemExit):
        convert(tmp_path, "--roi_dir", tmp_path / "fov", "--roi_suffix", "_training_mask")
    assert "has no pixel inside" in caplog.text
    assert not (tmp_path / "out").exists()


class _Inner:
    def __init__(self, root, files, mode="train"):
        self.dataset_root, self.file_list, self.mode = str(root), files, mode


class _Dataset:
    """What check_labels reads of a dataset."""

    def __init__(self, root, files, mode="train"):
        self.inner = _Inner(root, files, mode)
        self.file_list, self.mode = files, mode
        self.num_classes, self.ignore_index, self.name = 2, 255, "train_dataset"


def test_label_check_counts_roi_pixels_apart(tmp_path, caplog):
    """A small region of interest ignores most pixels: training's label check would refuse a data
    set whose ignore value covers more than half, unless those pixels are outside the ROI."""
    rng = np.random.default_rng(1)
    root = tmp_path / "set"
    (root / "labels").mkdir(parents=True)
    files = []
    for i in range(2):
        lab = np.full((H, W), 255, np.uint8)  # 70% outside the ROI
        lab[:, : int(W * 0.3)] = rng.integers(0, 2, (H, int(W * 0.3)))
        lab[0, 0], lab[0, 1] = 0, 1
        Image.fromarray(lab).save(root / "labels" / f"{i}.png")
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(root / f"{i}.png")
        files.append((str(root / f"{i}.png"), str(root / "labels" / f"{i}.png")))
    ds = _Dataset(root, files)
    with pytest.raises(data.DataError, match="covers 7"):
        data.check_labels(ds)
    outside = int((np.asarray(Image.open(files[0][1])) == 255).sum()) * 2
    (root / "convert_masks.json").write_text(json.dumps(
        {"census": {"train": {"outside_roi": outside}, "val": {"outside_roi": 0}}}))
    assert data.roi_outside(ds) == outside
    caplog.set_level(logging.INFO)
    data.check_labels(ds)
    assert "outside the region of interest" in caplog.text
