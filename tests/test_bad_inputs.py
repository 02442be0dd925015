"""Bad input: a clear error naming the file or key, a non-zero exit, earlier outputs intact."""
import logging
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import ROOT, run_script, write_config


@pytest.fixture
def broken_data(synth, tmp_path):
    """A copy of 6 synthetic samples that each test breaks in its own way."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    lines = (synth / "train.txt").read_text().splitlines()[:6]
    for ln in lines:
        for rel in ln.split():
            shutil.copy(synth / rel, root / rel)
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "val.txt").write_text("\n".join(lines[:2]) + "\n")
    return root, [ln.split() for ln in lines]


@pytest.fixture
def earlier_output(tmp_path):
    """A save_dir holding a previous run's checkpoint and config."""
    out = tmp_path / "out"
    (out / "iter_2").mkdir(parents=True)
    (out / "iter_2" / "model.pdparams").write_bytes(b"previous checkpoint")
    (out / "config.yaml").write_text("previous: config\n")
    return out


def train_fails(cfg, out, caplog, extra=()):
    """The run fails; --overwrite deletes nothing before this run's first checkpoint."""
    caplog.set_level(logging.ERROR)
    with pytest.raises(SystemExit) as e:
        run_script("tools/train.py", ["--config", cfg, "--iters", 2, "--batch_size", 2,
                                      "--save_dir", out, "--overwrite", *extra])
    assert e.value.code == 1
    assert (out / "iter_2" / "model.pdparams").read_bytes() == b"previous checkpoint"
    assert (out / "config.yaml").read_text() == "previous: config\n"
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("train.log")) == \
        ["config.yaml", "iter_2"]
    return caplog.text


@pytest.mark.parametrize("index,column,message", [(3, 0, "image file of sample 4 not found"),
                                                   (1, 1, "label file of sample 2 not found")])
def test_missing_file_in_list(index, column, message, broken_data, earlier_output, tmp_path, caplog):
    root, samples = broken_data
    (root / samples[index][column]).unlink()
    cfg = write_config(tmp_path / "c.yml", data_root=root)
    msg = train_fails(cfg, earlier_output, caplog)
    assert message in msg and samples[index][column] in msg


@pytest.mark.parametrize("kind", ["unreadable", "size", "values"])
def test_bad_sample(kind, broken_data, earlier_output, tmp_path, caplog):
    root, samples = broken_data
    img, lab = (root / s for s in samples[0])
    if kind == "unreadable":
        img.write_bytes(b"this is not a PNG")
        expect = f"cannot read image file {img}"
    elif kind == "size":
        cv2.imwrite(str(lab), np.zeros((40, 64), np.uint8))
        expect = f"label {lab} is 64x40"
    else:
        arr = cv2.imread(str(lab), cv2.IMREAD_UNCHANGED)
        arr[0, 0] = 7
        cv2.imwrite(str(lab), arr)
        expect = f"label file {lab} has values [7]"
    # every sample is read once per epoch: 6 samples, batch 2, 3 iterations
    cfg = write_config(tmp_path / "c.yml", data_root=root)
    msg = train_fails(cfg, earlier_output, caplog, ["--iters", 3])
    assert expect in msg


def test_weights_that_do_not_fit(syn_cfg, fp32_run, earlier_output, tmp_path, caplog):
    cfg = write_config(tmp_path / "c.yml", base=syn_cfg, extra="model: {num_classes: 3}\n"
                       "train_dataset: {num_classes: 3}\nval_dataset: {num_classes: 3}\n")
    msg = train_fails(cfg, earlier_output, caplog,
                      ["--model_path", fp32_run / "best_model" / "model.pdparams"])
    assert "do not fit the configured model" in msg
    assert "[4, 64, 1, 1] vs [3, 64, 1, 1]" in msg  # name: file vs model shapes


def test_unknown_model_type(syn_cfg, earlier_output, tmp_path, caplog):
    cfg = write_config(tmp_path / "c.yml", base=syn_cfg, extra="model: {_inherited_: False, type: BiseNetV9}\n")
    msg = train_fails(cfg, earlier_output, caplog)
    assert "Unknown model type 'BiseNetV9'" in msg and "BiSeNetV2" in msg and str(cfg) in msg


def test_real_process_exit_code(syn_cfg, tmp_path):
    """The scripts exit non-zero with a one-line error (no traceback) as processes too."""
    r = subprocess.run([sys.executable, str(ROOT / "tools/train.py"), "--config", str(syn_cfg),
                        "--opts", "batch_sise=2", "--save_dir", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert "unknown config key 'batch_sise'" in r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    r = subprocess.run([sys.executable, str(ROOT / "tools/train.py"), "--config", str(syn_cfg),
                        "--iters", "0"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--iters" in r.stderr


@pytest.mark.parametrize("breakage,expect", [
    (lambda ln: ln + " extra.png", "has 3 field(s)"),
    (lambda ln: ln.replace(" ", "\t"), "contains a tab"),
    (lambda ln: ln.replace("images/", "my images/"), "has 3 field(s)"),
    (lambda ln: "", "empty line"),
])
def test_list_file_lines(breakage, expect, broken_data, earlier_output, tmp_path, caplog):
    root, samples = broken_data
    lines = (root / "train.txt").read_text().splitlines()
    lines[3] = breakage(lines[3])
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    cfg = write_config(tmp_path / "c.yml", data_root=root)
    msg = train_fails(cfg, earlier_output, caplog)
    assert f"{root / 'train.txt'}, line 4" in msg and expect in msg


def test_truncated_jpeg_and_palette_labels(broken_data, earlier_output, tmp_path, caplog):
    from PIL import Image
    root, samples = broken_data
    # palette-mode PNG labels are read as indices (as PaddleSeg does), so training runs
    for _, lab in samples:
        arr = np.asarray(Image.open(root / lab))
        im = Image.fromarray(arr.astype(np.uint8), mode="L").convert("P")
        im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
        im.save(root / lab)
        assert Image.open(root / lab).mode == "P"
    from segqat.data import read_label
    assert read_label(str(root / samples[0][1])).ndim == 2
    cfg = write_config(tmp_path / "c.yml", data_root=root)
    run_script("tools/train.py", ["--config", cfg, "--iters", 1, "--batch_size", 2,
                                  "--save_dir", tmp_path / "ok"])
    # a truncated JPEG image is an error naming it (OpenCV would decode it silently)
    img = root / samples[0][0]
    jpg = img.with_suffix(".jpg")
    cv2.imwrite(str(jpg), cv2.imread(str(img)))
    jpg.write_bytes(jpg.read_bytes()[:-200])
    lines = (root / "train.txt").read_text().replace(samples[0][0], samples[0][0][:-4] + ".jpg")
    (root / "train.txt").write_text(lines)
    msg = train_fails(cfg, earlier_output, caplog, ["--iters", 3])
    assert f"image file {jpg} is a truncated JPEG" in msg


def test_flags_named_in_errors(syn_cfg, fp32_run, exports, tmp_path, caplog):
    caplog.set_level(logging.ERROR)
    for script, argv, expect in (
            ("deploy/python/benchmark.py", ["--config", syn_cfg, "--fp32", tmp_path / "nope",
                                            "--int8", exports / "int8", "--save_dir", tmp_path / "b"],
             f"--fp32 {tmp_path / 'nope'}: no inference directory"),
            ("tools/pipeline.py", ["--config", syn_cfg, "--fp32_model_path", tmp_path / "w.pdparams",
                                   "--save_dir", tmp_path / "p"], "--fp32_model_path: weights file not found"),
            ("tools/val.py", ["--config", syn_cfg, "--model_path", fp32_run / "best_model" / "model.pdparams",
                              "--save_metrics", tmp_path], "is a folder; give a file name")):
        caplog.clear()
        with pytest.raises(SystemExit) as e:
            run_script(script, argv)
        assert e.value.code == 1 and expect in caplog.text, (script, caplog.text)
        assert "Traceback" not in caplog.text


def test_unexpected_error_shows_traceback(caplog):
    """A ValueError from inside a library is a bug: its traceback is shown, not one line."""
    from segqat import cli
    caplog.set_level(logging.ERROR)

    def main(_):
        np.zeros(3).reshape(2, 2)  # raises inside numpy

    with pytest.raises(SystemExit) as e:
        cli.run(main, None)
    assert e.value.code == 1 and "Unexpected error" in caplog.text and "Traceback" in caplog.text

    def ours(_):
        raise ValueError("--x 3: allowed 1 or 2")
    caplog.clear()
    with pytest.raises(SystemExit):
        cli.run(ours, None)
    assert "--x 3: allowed" in caplog.text and "Traceback" not in caplog.text


def _masks(root, samples, fn):
    from PIL import Image
    for _, lab in samples:
        arr = np.asarray(Image.open(root / lab))
        Image.fromarray(fn(arr).astype(np.uint8)).save(root / lab)


@pytest.mark.parametrize("case,expect", [
    ("zero_255", "Masks look like 0/255: map 255 to 1"),
    ("absent_class", "class(es) [3] never occur"),
    ("mostly_ignored", "covers"),
])
def test_label_sets_that_train_to_nothing(case, expect, broken_data, earlier_output, tmp_path, caplog):
    """Caught before training: 0/255 masks, a class that never occurs, mostly-ignored labels."""
    root, samples = broken_data
    if case == "zero_255":
        _masks(root, samples, lambda a: np.where(a > 0, 255, 0))
    elif case == "absent_class":
        _masks(root, samples, lambda a: np.where(a == 3, 0, a))
    else:
        _masks(root, samples, lambda a: np.where(np.arange(a.size).reshape(a.shape) % 10 < 7, 255, a))
    cfg = write_config(tmp_path / "c.yml", data_root=root)
    msg = train_fails(cfg, earlier_output, caplog)
    assert expect in msg and str(root / "labels") in msg or case == "absent_class" and expect in msg
    if case == "absent_class":
        caplog.clear()
        caplog.set_level(logging.INFO)
        run_script("tools/train.py", ["--config", cfg, "--iters", 1, "--batch_size", 2,
                                      "--save_dir", tmp_path / "ok", "--allow_absent_classes"])
        assert "never occur" in caplog.text and "Class frequency over 6 label files" in caplog.text


def test_relative_data_path_names_config_and_folder(tmp_path, earlier_output, caplog, monkeypatch):
    """A relative dataset_root resolves against the working directory; the error says so."""
    cfg = write_config(tmp_path / "c.yml", data_root="data/mine")
    monkeypatch.chdir(tmp_path)
    msg = train_fails(cfg, earlier_output, caplog)
    assert str(cfg) in msg and "train_dataset.dataset_root 'data/mine'" in msg
    assert str(tmp_path / "data" / "mine") in msg and "relative to the working directory" in msg
