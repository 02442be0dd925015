"""Tests for segqat.datagen (synthetic generator, CamVid and ISBI converters).

    python -m pytest tests/test_datagen.py -q
"""
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from segqat import datagen

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CAMVID = SHARED_DATA / "camvid"
ISBI = SHARED_DATA / "isbi2012_membrane"


def _read_list(path):
    return [line.split() for line in Path(path).read_text().splitlines()]


def _all_files(root):
    """The data set's files (not segqat's output marker, which records when it was written)."""
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(Path(root).rglob("*")) if p.is_file() and p.name != ".segqat.json"}


def _label(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


# --------------------------------------------------------------- synthetic
SMALL = dict(num_train=8, num_val=3, size=48, num_classes=5)


def test_synthetic_is_deterministic(tmp_path):
    datagen.make_synthetic(tmp_path / "a", seed=3, **SMALL)
    datagen.make_synthetic(tmp_path / "b", seed=3, **SMALL)
    datagen.make_synthetic(tmp_path / "c", seed=4, **SMALL)
    a, b, c = (_all_files(tmp_path / n) for n in "abc")
    assert len(a) == 2 * (8 + 3) + 3
    assert a == b
    assert a.keys() == c.keys()
    differing = [k for k in a if k.startswith(("images/", "labels/")) and a[k] != c[k]]
    assert len(differing) == 2 * (8 + 3)


def test_synthetic_layout_and_values(tmp_path):
    info = datagen.make_synthetic(tmp_path, seed=0, **SMALL)
    assert info["num_classes"] == 5
    assert (info["num_train"], info["num_val"]) == (8, 3)
    assert info["dataset_root"] == str(tmp_path)
    assert (tmp_path / "labels.txt").read_text().split() == [
        "background", "circle", "square", "triangle", "ring"]
    for split, count in (("train", 8), ("val", 3)):
        pairs = _read_list(info[f"{split}_path"])
        assert len(pairs) == count
        for i, (img_rel, lab_rel) in enumerate(pairs):
            assert img_rel == f"images/{split}_{i:04d}.png"
            assert lab_rel == f"labels/{split}_{i:04d}.png"
            img = cv2.imread(str(tmp_path / img_rel), cv2.IMREAD_UNCHANGED)
            lab = _label(tmp_path / lab_rel)
            assert img.shape == (48, 48, 3) and img.dtype == np.uint8
            assert lab.shape == (48, 48) and lab.dtype == np.uint8
            assert lab.max() <= 4
            assert 0 < (lab > 0).mean() < 0.9  # some objects, some background
            assert img.std() > 10  # textured, not flat
    assert not list(tmp_path.rglob("*.tmp*"))


def test_synthetic_all_classes_present_in_train(tmp_path):
    info = datagen.make_synthetic(tmp_path, num_train=20, num_val=1, size=64,
                                  num_classes=8, seed=1)
    seen = np.zeros(8, bool)
    for _, lab_rel in _read_list(info["train_path"]):
        seen[np.unique(_label(tmp_path / lab_rel))] = True
    assert seen.all()


def test_synthetic_colour_does_not_identify_class(tmp_path):
    """Mean object colours of different classes overlap (jittered)."""
    datagen.make_synthetic(tmp_path, num_train=40, num_val=1, size=64, num_classes=4, seed=0)
    reds = {c: [] for c in (1, 2, 3)}
    for i in range(40):
        img = cv2.imread(str(tmp_path / f"images/train_{i:04d}.png"))[..., ::-1]
        lab = _label(tmp_path / f"labels/train_{i:04d}.png")
        for c in reds:
            if (lab == c).sum() > 20:
                reds[c].append(img[lab == c, 0].mean())
    ranges = [(min(v), max(v)) for v in reds.values()]
    # the red channel range of each class overlaps with at least one other class
    for k, (lo, hi) in enumerate(ranges):
        assert any(lo < h2 and l2 < hi for j, (l2, h2) in enumerate(ranges) if j != k)


def test_synthetic_zoo_variant_has_large_objects(tmp_path):
    """The model zoo's set: large objects (background well under the default's ~85%)."""
    def background_share(root):
        labels = [_label(root / f"labels/val_{i:04d}.png") for i in range(20)]
        return float(np.mean([np.mean(lab == 0) for lab in labels]))
    datagen.make_synthetic(tmp_path / "a", num_train=1, num_val=20, seed=0)
    datagen.make_synthetic(tmp_path / "b", num_train=1, num_val=20, seed=0,
                           object_size=(0.2, 0.4), colour_jitter=30)
    assert background_share(tmp_path / "a") > 0.8
    assert background_share(tmp_path / "b") < 0.65


@pytest.mark.parametrize("kwargs,flag", [
    (dict(num_classes=9), "num_classes"), (dict(num_classes=1), "num_classes"),
    (dict(size=16), "size"), (dict(num_train=0), "num_train"),
    (dict(num_val=0), "num_val"), (dict(num_classes=3.0), "num_classes"),
    (dict(colour_jitter=300), "colour_jitter"), (dict(object_size=(0.3, 0.2)), "object_size"),
    (dict(object_size=(0.1, 0.6)), "object_size"),
])
def test_synthetic_rejects_bad_arguments(tmp_path, kwargs, flag):
    with pytest.raises(ValueError, match=flag) as err:
        datagen.make_synthetic(tmp_path / "x", **kwargs)
    assert str(kwargs[flag]) in str(err.value)
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------ CamVid
def _need(path):
    if not path.is_dir():
        pytest.skip(f"{path} not present")


@pytest.fixture(scope="module")
def camvid_out(tmp_path_factory):
    _need(CAMVID)
    out = tmp_path_factory.mktemp("camvid")
    return out, datagen.convert_camvid(str(CAMVID), str(out))


def test_camvid_counts_and_lists(camvid_out):
    out, info = camvid_out
    assert (info["num_train"], info["num_val"], info["num_classes"]) == (367, 101, 11)
    assert (out / "labels.txt").read_text().split() == list(datagen.CAMVID_CLASSES)
    for split, count in (("train", 367), ("val", 101)):
        pairs = _read_list(out / f"{split}.txt")
        assert len(pairs) == count and all(len(p) == 2 for p in pairs)
        for img, lab in pairs:
            assert os.path.isabs(img) and os.path.isfile(img)
            assert Path(img).resolve().is_relative_to(CAMVID.resolve())
            assert lab.startswith(f"{split}annot/") and (out / lab).is_file()
            # PaddleSeg joins dataset_root with each entry: absolute paths survive
            assert os.path.join(str(out), img) == img
    # only labels and text files were written: no copied images
    written = {p.relative_to(out).parts[0] for p in out.rglob("*") if p.is_file()}
    assert written == {"trainannot", "valannot", "train.txt", "val.txt", "labels.txt", ".segqat.json"}


def test_camvid_label_remap(camvid_out):
    out, _ = camvid_out
    src_pairs = _read_list(CAMVID / "train.txt")[:3] + _read_list(CAMVID / "val.txt")[:2]
    saw_void = False
    for _, src_lab in src_pairs:
        split = src_lab.split("annot/")[0]
        src = _label(CAMVID / src_lab)
        dst = _label(out / f"{split}annot" / Path(src_lab).name)
        assert dst.shape == src.shape and dst.dtype == np.uint8
        assert 11 not in dst
        assert np.array_equal(dst == 255, src == 11)
        assert np.array_equal(dst[src != 11], src[src != 11])
        saw_void |= bool((src == 11).any())
    assert saw_void, "expected some void pixels in the checked files"


def test_camvid_rejects_bad_input(tmp_path):
    missing = tmp_path / "no_such_camvid"
    with pytest.raises(FileNotFoundError, match="no_such_camvid"):
        datagen.convert_camvid(str(missing), str(tmp_path / "out"))
    # a fake source: missing listed file, then out-of-range label values
    src = tmp_path / "fake"
    (src / "train").mkdir(parents=True)
    (src / "trainannot").mkdir()
    cv2.imwrite(str(src / "train/a.png"), np.zeros((4, 5, 3), np.uint8))
    cv2.imwrite(str(src / "trainannot/a.png"), np.full((4, 5), 12, np.uint8))
    (src / "train.txt").write_text("train/a.png trainannot/a.png\ntrain/b.png trainannot/b.png\n")
    (src / "val.txt").write_text("train/a.png trainannot/a.png\n")
    with pytest.raises(ValueError, match=r"trainannot/a.png.*\[12\]"):
        datagen.convert_camvid(str(src), str(tmp_path / "out"))
    cv2.imwrite(str(src / "trainannot/a.png"), np.full((4, 5), 11, np.uint8))
    with pytest.raises(FileNotFoundError, match=r"train.txt, line 2.*train/b.png"):
        datagen.convert_camvid(str(src), str(tmp_path / "out"))
    assert not (tmp_path / "out" / "train.txt").exists()
    with pytest.raises(ValueError, match="read-only"):
        datagen.convert_camvid(str(src), str(src / "out"))


# -------------------------------------------------------------------- ISBI
def test_isbi_split_and_values(tmp_path):
    _need(ISBI)
    info = datagen.convert_isbi(str(ISBI), str(tmp_path))
    assert (info["num_train"], info["num_val"], info["num_classes"]) == (24, 6, 2)
    assert (tmp_path / "labels.txt").read_text().split() == ["membrane", "cell"]
    train, val = _read_list(tmp_path / "train.txt"), _read_list(tmp_path / "val.txt")
    assert [Path(i).name for i, _ in train] == [f"{n}.png" for n in range(24)]
    assert [lab for _, lab in val] == [f"labels/{n}.png" for n in range(24, 30)]
    for img, lab in train + val:
        assert os.path.isabs(img) and os.path.isfile(img)
        dst = _label(tmp_path / lab)
        assert set(np.unique(dst).tolist()) == {0, 1}
    src = _label(ISBI / "label" / "7.png")
    assert np.array_equal(_label(tmp_path / "labels/7.png"), (src == 255).astype(np.uint8))


def test_isbi_rejects_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope_isbi"):
        datagen.convert_isbi(str(tmp_path / "nope_isbi"), str(tmp_path / "out"))
    src = tmp_path / "fake"
    (src / "image").mkdir(parents=True)
    (src / "label").mkdir()
    for i in range(3):
        cv2.imwrite(str(src / f"image/{i}.png"), np.zeros((4, 4), np.uint8))
        cv2.imwrite(str(src / f"label/{i}.png"), np.full((4, 4), 255, np.uint8))
    with pytest.raises(ValueError, match="num_val=3"):
        datagen.convert_isbi(str(src), str(tmp_path / "out"), num_val=3)
    cv2.imwrite(str(src / "label/1.png"), np.full((4, 4), 128, np.uint8))
    with pytest.raises(ValueError, match=r"label/1.png.*\[128\]"):
        datagen.convert_isbi(str(src), str(tmp_path / "out"), num_val=1)
    assert not (tmp_path / "out" / "train.txt").exists()
