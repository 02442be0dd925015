"""tools/data/convert_masks.py: a newcomer's images and masks, as distributed, into a data set
that trains (issue #11)."""
import json
import logging
import re
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import SYN_CONFIG, run_script
from segqat import outputs

SCRIPT = "tools/data/convert_masks.py"
H, W = 64, 64  # BiSeNetV2 needs sides divisible by 32 (the synthetic config's size)


def rgb_image(rng):
    return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


def vessel_mask(rng):
    """0/255 with both values present, like a vessel tracing."""
    m = (rng.random((H, W)) > 0.8).astype(np.uint8) * 255
    m[0, 0], m[0, 1] = 0, 255
    return m


def save_gif(path, mask):
    # optimize=False keeps the full grayscale palette, as DRIVE's GIFs have: Pillow then
    # reads them back as 0/255 (an optimized 2-colour palette would read as indices 0/1)
    Image.fromarray(mask).save(path, optimize=False)


def drive_like(root, n=5, seed=0):
    """images/NN_training.tif (RGB) and masks/NN_manual1.gif (0/255), as DRIVE ships them."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    pairs = {}
    for i in range(21, 21 + n):
        img, mask = rgb_image(rng), vessel_mask(rng)
        Image.fromarray(img).save(root / "images" / f"{i}_training.tif")
        save_gif(root / "masks" / f"{i}_manual1.gif", mask)
        pairs[str(i)] = (img, mask)
    return pairs


def convert(*argv):
    return run_script(SCRIPT, list(argv))


def fails(caplog, *argv):
    caplog.clear()
    caplog.set_level(logging.ERROR)
    with pytest.raises(SystemExit) as e:
        convert(*argv)
    assert e.value.code == 1
    return caplog.text


def read_png(path):
    with Image.open(path) as im:
        assert im.mode == "L"
        return np.asarray(im)


def test_drive_layout(tmp_path, caplog, capsys):
    pairs = drive_like(tmp_path)
    # one image and one mask without a partner
    lone = rgb_image(np.random.default_rng(9))
    Image.fromarray(lone).save(tmp_path / "images" / "40_training.tif")
    save_gif(tmp_path / "masks" / "41_manual1.gif", vessel_mask(np.random.default_rng(9)))
    out = tmp_path / "drive"
    caplog.set_level(logging.INFO)
    s = convert("--images", tmp_path / "images", "--masks", tmp_path / "masks",
                "--image_suffix", "_training", "--mask_suffix", "_manual1", "--map", "255:1",
                "--names", "background", "vessel", "--val_ratio", 0.4, "--seed", 0,
                "--save_dir", out)
    # unpaired files: counted and named, both sides
    assert s["unpaired_images"] == ["40_training.tif"] and s["unpaired_masks"] == ["41_manual1.gif"]
    assert "1 image(s) have no mask and are left out: 40_training.tif" in caplog.text
    assert "1 mask(s) have no image and are left out: 41_manual1.gif" in caplog.text
    # seeded split: 5 pairs * 0.4 = 2 val
    train = (out / "train.txt").read_text().splitlines()
    val = (out / "val.txt").read_text().splitlines()
    assert (len(train), len(val)) == (3, 2) and (s["num_train"], s["num_val"]) == (3, 2)
    keys = sorted(ln.split()[0][len("images/"):-len(".png")] for ln in train + val)
    assert keys == sorted(pairs)
    for ln in train + val:
        img_rel, lab_rel = ln.split()
        key = img_rel[len("images/"):-4]
        assert (img_rel, lab_rel) == (f"images/{key}.png", f"labels/{key}.png")
        # TIFF -> lossless PNG, read by cv2 as PaddleSeg does (BGR)
        assert np.array_equal(cv2.imread(str(out / img_rel))[..., ::-1], pairs[key][0])
        label = read_png(out / lab_rel)
        assert set(np.unique(label).tolist()) == {0, 1}
        assert np.array_equal(label, (pairs[key][1] == 255).astype(np.uint8))
    assert (out / "labels.txt").read_text() == "background\nvessel\n"
    assert outputs.kind_of(out) == "dataset"
    # the same seed gives the same split
    s2 = convert("--images", tmp_path / "images", "--masks", tmp_path / "masks",
                 "--image_suffix", "_training", "--mask_suffix", "_manual1", "--map", "255:1",
                 "--val_ratio", 0.4, "--seed", 0, "--save_dir", tmp_path / "again")
    assert (tmp_path / "again" / "val.txt").read_text() == "\n".join(val) + "\n"
    assert s2["names"] is None and not (tmp_path / "again" / "labels.txt").exists()
    # the census and the config keys are printed
    printed = capsys.readouterr().out
    assert re.search(r"1 vessel +\d+", printed) and "train (3 pairs)" in printed
    assert f"dataset_root: {out}\n  train_path: {out}/train.txt\n  num_classes: 2" in printed
    assert f"val_path: {out}/val.txt" in printed
    info = json.loads((out / "convert_masks.json").read_text())
    total = sum(int((m == 255).sum()) for _, m in pairs.values())
    assert info["census"]["train"]["1"] + info["census"]["val"]["1"] == total


def palette_png(path, idx, palette):
    im = Image.fromarray(idx.astype(np.uint8), "P")
    im.putpalette([c for rgb in palette for c in rgb])
    im.save(path)


COLOURS = [(0, 0, 0), (255, 0, 0), (0, 255, 0), (255, 255, 255)]


@pytest.mark.parametrize("case", ["palette_png", "palette_png_colors", "tiff_gray",
                                  "tiff_rgb_colors", "png_16bit"])
def test_mask_formats(case, tmp_path):
    """Each mask format with a value map or a colour table gives the right indices."""
    rng = np.random.default_rng(1)
    (tmp_path / "im").mkdir()
    (tmp_path / "gt").mkdir()
    idx = {}
    extra = []
    for i in range(3):
        Image.fromarray(rgb_image(rng)).save(tmp_path / "im" / f"s{i}.png")
        k = rng.integers(0, 4, (H, W))
        k[0, :4] = [0, 1, 2, 3]
        idx[f"s{i}"] = k
        if case == "palette_png":  # indices 0..3, 3 = border -> ignore
            palette_png(tmp_path / "gt" / f"s{i}.png", k, COLOURS)
        elif case == "palette_png_colors":  # the palette's colours through a colour table
            palette_png(tmp_path / "gt" / f"s{i}.png", k, COLOURS[::-1])
        elif case == "tiff_gray":
            Image.fromarray((k * 60).astype(np.uint8)).save(tmp_path / "gt" / f"s{i}.tif")
        elif case == "tiff_rgb_colors":
            Image.fromarray(np.array(COLOURS, np.uint8)[k]).save(tmp_path / "gt" / f"s{i}.tif")
        elif case == "png_16bit":
            Image.fromarray((k * 1000).astype(np.uint16)).save(tmp_path / "gt" / f"s{i}.png")
    table = tmp_path / "colors.txt"
    table.write_text("# R,G,B index name\n0,0,0 0 bg\n255,0,0 1 red  # a comment\n"
                     "0,255,0 2 green\n255,255,255 255\n")
    if case == "palette_png":
        extra, expect = ["--map", "3:255", "--num_classes", 3], {0: 0, 1: 1, 2: 2, 3: 255}
    elif case == "palette_png_colors":  # palette reversed: index 0 is white, 3 black
        extra, expect = ["--colors", table], {0: 255, 1: 2, 2: 1, 3: 0}
    elif case == "tiff_gray":
        extra, expect = ["--map", "60:1", "120:2", "--map", "180:255"], {0: 0, 1: 1, 2: 2, 3: 255}
    elif case == "tiff_rgb_colors":
        extra, expect = ["--colors", table], {0: 0, 1: 1, 2: 2, 3: 255}
    else:
        extra, expect = ["--map", "1000:1", "2000:2", "3000:255"], {0: 0, 1: 1, 2: 2, 3: 255}
    out = tmp_path / "out"
    s = convert("--images", tmp_path / "im", "--masks", tmp_path / "gt", "--save_dir", out,
                "--val_ratio", 0, *extra)
    assert s["num_classes"] == 3 and s["num_val"] == 0 and not (out / "val.txt").exists()
    lut = np.array([expect[v] for v in range(4)], np.uint8)
    for key, k in idx.items():
        assert np.array_equal(read_png(out / "labels" / f"{key}.png"), lut[k]), key
        # PNG images are copied unchanged
        assert (out / "images" / f"{key}.png").read_bytes() == \
            (tmp_path / "im" / f"{key}.png").read_bytes()
    if "colors" in case:  # class names from the colour table
        assert (out / "labels.txt").read_text() == "bg\nred\ngreen\n"


def test_same_folder_and_jpeg_images(tmp_path):
    """Images and masks in one folder (x.jpg, x_mask.png): the mask suffix tells them apart."""
    rng = np.random.default_rng(2)
    d = tmp_path / "both"
    d.mkdir()
    for i in range(4):
        cv2.imwrite(str(d / f"p{i}.jpg"), rgb_image(rng))
        Image.fromarray((vessel_mask(rng) > 0).astype(np.uint8)).save(d / f"p{i}_mask.png")
    (d / "README.txt").write_text("not an image")
    out = tmp_path / "out"
    s = convert("--images", d, "--masks", d, "--mask_suffix", "_mask", "--num_classes", 2,
                "--save_dir", out)
    assert s["num_pairs"] == 4 and not s["unpaired_images"] and not s["unpaired_masks"]
    lines = [ln for f in ("train.txt", "val.txt") for ln in (out / f).read_text().splitlines()]
    assert sorted(lines) == [f"images/p{i}.jpg labels/p{i}.png" for i in range(4)]
    assert (out / "images" / "p0.jpg").read_bytes() == (d / "p0.jpg").read_bytes()


def test_zero_pairs(tmp_path, caplog):
    drive_like(tmp_path, n=3)
    msg = fails(caplog, "--images", tmp_path / "images", "--masks", tmp_path / "masks",
                "--map", "255:1", "--save_dir", tmp_path / "out")
    assert "image stems look like '21_training' (3 files), mask stems like '21_manual1'" in msg
    assert "Pass --image_suffix _training --mask_suffix _manual1" in msg
    assert not (tmp_path / "out").exists()


def test_unknown_colour(tmp_path, caplog):
    (tmp_path / "im").mkdir()
    (tmp_path / "gt").mkdir()
    rng = np.random.default_rng(3)
    Image.fromarray(rgb_image(rng)).save(tmp_path / "im" / "a.png")
    mask = np.zeros((H, W, 3), np.uint8)
    mask[:10, :5] = (255, 0, 0)
    mask[20:22, :3] = (1, 2, 3)  # 6 pixels of a colour the table does not know
    Image.fromarray(mask).save(tmp_path / "gt" / "a.png")
    (tmp_path / "c.txt").write_text("0,0,0 0\n255,0,0 1\n")
    msg = fails(caplog, "--images", tmp_path / "im", "--masks", tmp_path / "gt", "--colors",
                tmp_path / "c.txt", "--val_ratio", 0, "--save_dir", tmp_path / "out")
    assert f"mask {tmp_path / 'gt' / 'a.png'} has 1 colour(s) not in --colors" in msg
    assert "(1,2,3) (6 px)" in msg
    # without --colors: a colour mask is refused with the hint
    msg = fails(caplog, "--images", tmp_path / "im", "--masks", tmp_path / "gt", "--num_classes", 2,
                "--val_ratio", 0, "--save_dir", tmp_path / "out")
    assert "is a colour (RGB) image with 3 colours" in msg and "pass --colors FILE" in msg
    # a bad table line names the file and the line
    (tmp_path / "c.txt").write_text("0,0,0 0\n255,0 1\n")
    msg = fails(caplog, "--images", tmp_path / "im", "--masks", tmp_path / "gt", "--colors",
                tmp_path / "c.txt", "--save_dir", tmp_path / "out")
    assert f"--colors {tmp_path / 'c.txt'}, line 2: '255,0 1' is not 'R,G,B index [name]'" in msg
    assert not (tmp_path / "out").exists()


def test_values_out_of_range(tmp_path, caplog):
    pairs = drive_like(tmp_path, n=3)
    img, mask = pairs["22"]
    mask[5, 5] = 128
    save_gif(tmp_path / "masks" / "22_manual1.gif", mask)
    common = ["--images", tmp_path / "images", "--masks", tmp_path / "masks", "--image_suffix",
              "_training", "--mask_suffix", "_manual1", "--save_dir", tmp_path / "out"]
    msg = fails(caplog, *common, "--map", "255:1")
    assert (f"mask {tmp_path / 'masks' / '22_manual1.gif'} has values [128] (after --map: [128]) "
            "that are neither classes (0..1) nor the ignore_index 255") in msg
    # 0/255 masks without a map: every vessel pixel would be ignored
    save_gif(tmp_path / "masks" / "22_manual1.gif", pairs["21"][1])
    msg = fails(caplog, *common, "--num_classes", 2)
    assert "hold only 0 and the ignore_index 255" in msg and "pass --map 255:1" in msg
    # a mapped value that no mask has
    msg = fails(caplog, *common, "--map", "255:1", "7:1")
    assert "--map 7:1: no mask has the value(s) [7] (values found: [0, 255])" in msg
    # flags: a malformed pair, a value mapped twice, names that do not fit
    with pytest.raises(SystemExit):
        convert(*common, "--map", "255-1")
    msg = fails(caplog, *common, "--map", "255:1", "255:2")
    assert "--map maps 255 twice" in msg
    msg = fails(caplog, *common, "--map", "255:1", "--num_classes", 2, "--names", "a", "b", "c")
    assert "--names gives 3 names but num_classes is 2 (from --num_classes)" in msg
    assert not (tmp_path / "out").exists()


def test_save_dir_refused(tmp_path, caplog):
    drive_like(tmp_path, n=3)
    args = ["--images", tmp_path / "images", "--masks", tmp_path / "masks", "--image_suffix",
            "_training", "--mask_suffix", "_manual1", "--map", "255:1"]
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("my notes")
    for extra in ([], ["--overwrite"]):  # not ours: refused even with --overwrite
        msg = fails(caplog, *args, "--save_dir", user, *extra)
        assert "holds files segqat did not write (notes.txt)" in msg
    assert sorted(p.name for p in user.iterdir()) == ["notes.txt"]
    assert (user / "notes.txt").read_text() == "my notes"
    # an earlier conversion: refused without --overwrite, replaced with it
    out = tmp_path / "out"
    convert(*args, "--save_dir", out, "--val_ratio", 0)
    msg = fails(caplog, *args, "--save_dir", out)
    assert "holds an earlier dataset" in msg and "Pass --overwrite" in msg
    assert not (out / "val.txt").exists()
    convert(*args, "--save_dir", out, "--overwrite", "--val_ratio", 1)
    assert (out / "val.txt").exists() and not (out / "train.txt").exists()
    # the inputs may not live inside save_dir
    msg = fails(caplog, *args, "--save_dir", tmp_path, "--overwrite")
    assert "contains the input" in msg


def test_converted_data_trains(tmp_path, caplog):
    """Done when: GIF, TIFF and palette-PNG masks with a value map become a data set that trains;
    the same labels left 0/255 are refused by training's label check."""
    rng = np.random.default_rng(4)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(6):
        Image.fromarray(rgb_image(rng)).save(tmp_path / "images" / f"{i}_training.tif")
        mask, stem = vessel_mask(rng), tmp_path / "masks" / f"{i}_manual1"
        if i % 3 == 0:
            save_gif(f"{stem}.gif", mask)
        elif i % 3 == 1:
            Image.fromarray(mask).save(f"{stem}.tif")
        else:  # palette PNG: indices 0 and 255
            palette_png(f"{stem}.png", mask, [(0, 0, 0)] + [(255, 255, 255)] * 255)
    data = tmp_path / "data"
    convert("--images", tmp_path / "images", "--masks", tmp_path / "masks", "--image_suffix",
            "_training", "--mask_suffix", "_manual1", "--map", "255:1", "--names", "background",
            "vessel", "--val_ratio", 0.34, "--save_dir", data)
    cfg = tmp_path / "vessels.yml"
    cfg.write_text(f"_base_: {SYN_CONFIG}\n"
                   f"train_dataset:\n  dataset_root: {data}\n  train_path: {data}/train.txt\n"
                   f"  num_classes: 2\n"
                   f"val_dataset:\n  dataset_root: {data}\n  val_path: {data}/val.txt\n"
                   f"  num_classes: 2\n")
    out = tmp_path / "run"
    run_script("tools/train.py", ["--config", cfg, "--iters", 2, "--batch_size", 2,
                                  "--save_interval", 2, "--log_iters", 1, "--save_dir", out,
                                  "--cpu_threads", 2])
    log = (out / "train.log").read_text()
    losses = [float(x) for x in re.findall(r"\[TRAIN\].* loss: ([^,]+),", log)]
    assert len(losses) == 2 and all(np.isfinite(losses)), losses
    assert (out / "iter_2" / "model.pdparams").stat().st_size > 0
    # the same data with 0/255 PNG labels (no map): training's label check refuses it
    raw = tmp_path / "raw"
    shutil.copytree(data, raw)
    for p in (raw / "labels").iterdir():
        Image.fromarray(read_png(p) * 255).save(p)
    cfg.write_text(cfg.read_text().replace(str(data), str(raw)))
    caplog.clear()
    caplog.set_level(logging.ERROR)
    with pytest.raises(SystemExit):
        run_script("tools/train.py", ["--config", cfg, "--iters", 2, "--batch_size", 2,
                                      "--save_dir", tmp_path / "run_raw"])
    assert "Masks look like 0/255: map 255 to 1" in caplog.text
