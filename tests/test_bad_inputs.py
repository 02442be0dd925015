"""Bad input: a clear error naming the file or key, a non-zero exit, earlier outputs intact."""
import contextlib
import logging
import re
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import ROOT, load_script, run_script, write_config


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


# ---------------------------------------------------------------- files a user gives

def _alias_bomb(levels=7):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


CONFIG_FILES = [  # (case, file content, what the one-line error says)
    ("binary", b"\x7fELF\x02\x01\x01\x00\x00\x00binary", "is a binary file, not a YAML text file"),
    ("latin1", b"batch_size: 2\n# caf\xe9\n", "line 2: not UTF-8 text (byte 0xe9)"),
    ("alias bomb", _alias_bomb().encode(), "aliases expand to more than 100000 values"),
    ("recursive alias", b"model: &m {a: *m}\n", "an alias refers to itself"),
    ("too large", b"# " + b"x" * (1 << 20) + b"\n", "is larger than 1024 KB"),
]


@pytest.mark.unit
@pytest.mark.parametrize("case,content,expect", CONFIG_FILES, ids=[c[0] for c in CONFIG_FILES])
def test_config_file_refused(case, content, expect, tmp_path, caplog):
    """A file that is not a small YAML text is refused before it is built, naming the file."""
    cfg = tmp_path / "bad.yml"
    cfg.write_bytes(content)
    caplog.set_level(logging.ERROR)
    with pytest.raises(SystemExit) as e:
        run_script("tools/val.py", ["--config", cfg, "--model_path", tmp_path / "w.pdparams"])
    assert e.value.code == 1
    assert f"ConfigError: Config file {cfg}" in caplog.text and expect in caplog.text
    assert "Traceback" not in caplog.text


CONFIG_VALUES = [  # (config text added to the synthetic config, what the one-line error says)
    ("lr_scheduler: {learning_rate: -0.05}", "'lr_scheduler.learning_rate' in {cfg} must be > 0, got -0.05"),
    ("lr_scheduler: {learning_rate: 0}", "'lr_scheduler.learning_rate' in {cfg} must be > 0, got 0"),
    ("lr_scheduler: {end_lr: -1.0e-4}", "'lr_scheduler.end_lr' in {cfg} must be >= 0, got -0.0001"),
    ("test_config: {aug_eval: true, scales: 0}", "'test_config.scales' in {cfg} must be a number > 0"),
    ("test_config: {aug_eval: true, scales: [1.0, -0.5]}", "got [1.0, -0.5]"),
]


@pytest.mark.unit
@pytest.mark.parametrize("extra,expect", CONFIG_VALUES, ids=[c[0] for c in CONFIG_VALUES])
def test_config_value_refused(extra, expect, tmp_path, caplog):
    cfg = write_config(tmp_path / "c.yml", extra=extra + "\n")
    caplog.set_level(logging.ERROR)
    with pytest.raises(SystemExit) as e:
        run_script("tools/val.py", ["--config", cfg, "--model_path", tmp_path / "w.pdparams"])
    assert e.value.code == 1 and expect.format(cfg=cfg) in caplog.text, caplog.text
    assert "Traceback" not in caplog.text


FLAG_VALUES = [  # (script, flags, what argparse says)
    ("tools/val.py", ["--aug_eval", "--scales", "0"], "--scales: expected a finite number > 0, got '0'"),
    ("tools/val.py", ["--aug_eval", "--scales", "1", "-0.5"], "--scales: expected a finite number > 0"),
    ("slim/quant/qat_val.py", ["--aug_eval", "--scales", "nan"], "--scales: expected a finite number > 0"),
    ("tools/train.py", ["--learning_rate", "-0.05"], "--learning_rate: expected a finite number > 0"),
    ("tools/train.py", ["--learning_rate", "0"], "--learning_rate: expected a finite number > 0, got '0'"),
    ("slim/quant/qat_train.py", ["--learning_rate", "-1"], "--learning_rate: expected a finite number > 0"),
    ("tools/pipeline.py", ["--qat_learning_rate", "0"], "--qat_learning_rate: expected a finite number > 0"),
]


@pytest.mark.unit
@pytest.mark.parametrize("script,flags,expect", FLAG_VALUES, ids=[" ".join(c[1]) for c in FLAG_VALUES])
def test_flag_value_refused(script, flags, expect, capsys):
    parser = load_script(script).get_args_parser()
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["--config", "c.yml", "--model_path", "w.pdparams", *flags])
    assert e.value.code == 2 and expect in capsys.readouterr().err


DEPLOY_YAMLS = [  # (case, change to the export's deploy.yaml / files, what the one-line error says)
    ("output_op sigmoid", {"output_op": "sigmoid"},
     "Deploy.output_op is 'sigmoid'; allowed: argmax, softmax, none"),
    ("num_classes four", {"num_classes": "four"}, "Deploy.num_classes is 'four'; allowed: an integer >= 1"),
    ("num_classes 0", {"num_classes": 0}, "Deploy.num_classes is 0; allowed: an integer >= 1"),
    ("mean of 2", {"transforms": [{"type": "Normalize", "mean": [0.5, 0.5], "std": [0.5, 0.5]}]},
     "Deploy.transforms[0] (Normalize) mean has 2 values for an input of 3 channels; allowed: a list "
     "of 1 or 3 numbers"),
    ("mean string", {"transforms": [{"type": "Normalize", "mean": "abc"}]},
     "Deploy.transforms[0] (Normalize) mean is 'abc'; allowed: a list of 1 or 3 numbers"),
    ("std 0", {"transforms": [{"type": "Normalize", "std": [0.5, 0, 0.5]}]},
     "Deploy.transforms[0] (Normalize) std is [0.5, 0, 0.5]; a standard deviation of 0"),
    ("transforms mapping", {"transforms": {"type": "Normalize"}}, "Deploy.transforms is {{'type': "),
    ("empty model.pdmodel", "model.pdmodel", "model file {d}/model.pdmodel is empty (0 bytes)"),
    ("alias bomb", "bomb", "--config {d}/deploy.yaml refused: its aliases expand to more than"),
]


def _broken_export(src, tmp_path, change):
    import yaml
    d = tmp_path / "export"
    shutil.copytree(src, d)
    dep = d / "deploy.yaml"
    if change == "model.pdmodel":
        (d / change).write_bytes(b"")
    elif change == "bomb":
        dep.write_text(dep.read_text() + _alias_bomb())
    else:
        data = yaml.safe_load(dep.read_text())
        data["Deploy"].update(change)
        dep.write_text(yaml.safe_dump(data))
    return d


@pytest.mark.parametrize("case,change,expect", DEPLOY_YAMLS, ids=[c[0] for c in DEPLOY_YAMLS])
def test_bad_deploy_yaml(case, change, expect, syn_cfg, synth, exports, tmp_path, caplog):
    """infer.py and benchmark.py name deploy.yaml, the key, the value and what is allowed."""
    d = _broken_export(exports / "fp32", tmp_path, change)
    expect = expect.format(d=d)
    caplog.set_level(logging.INFO)
    for script, argv in (
            ("deploy/python/infer.py", ["--config", d / "deploy.yaml", "--image_path",
                                        synth / "images" / "val_0000.png", "--save_dir", tmp_path / "p"]),
            ("deploy/python/benchmark.py", ["--config", syn_cfg, "--fp32", d, "--int8", exports / "int8",
                                            "--save_dir", tmp_path / "b", "--cpu_threads", 1])):
        caplog.clear()
        with pytest.raises(SystemExit) as e:
            run_script(script, argv)
        assert e.value.code == 1 and expect in caplog.text, (script, caplog.text)
        assert "Traceback" not in caplog.text
        assert not (tmp_path / "p").exists() and not (tmp_path / "b").exists()


TRUNCATED = [
    ("model.pdiparams", "{d}/deploy.yaml: the model in {d}/model.pdmodel and {d}/model.pdiparams does "
                        "not load (RuntimeError: (Unavailable) An error occurred while loading model "
                        "parameters"),
    ("model.pdmodel", "{d}/deploy.yaml: model file {d}/model.pdmodel is not a Paddle program (a "
                      "truncated or damaged file: ValueError); export the model again"),
]


@pytest.mark.parametrize("name,expect", TRUNCATED, ids=[t[0] for t in TRUNCATED])
def test_truncated_model_file(name, expect, exports, synth, tmp_path, caplog):
    d = tmp_path / "export"
    shutil.copytree(exports / "fp32", d)
    data = (d / name).read_bytes()
    (d / name).write_bytes(data[:len(data) // 2])
    caplog.set_level(logging.ERROR)
    with pytest.raises(SystemExit) as e:
        run_script("deploy/python/infer.py", ["--config", d / "deploy.yaml", "--image_path",
                                              synth / "images" / "val_0000.png",
                                              "--save_dir", tmp_path / "p"])
    assert e.value.code == 1 and expect.format(d=d) in caplog.text, caplog.text
    assert "Traceback" not in caplog.text and not (tmp_path / "p").exists()


# ---------------------------------------------------------------- weights

def _pickle_call(module, name, *args):
    """A protocol-2 pickle that calls ``module.name(*args)`` (str arguments) when loaded."""
    import struct
    out = b"\x80\x02" + f"c{module}\n{name}\n".encode()
    out += b"("
    for a in args:
        out += b"X" + struct.pack("<I", len(a.encode())) + a.encode()
    return out + b"tR."


@pytest.mark.unit
def test_protocol2_weights_load(tmp_path):
    """paddle.save(..., protocol=2) writes bytes as _codecs.encode(text, "latin1"): loaded; any
    other use of _codecs.encode, or anything that runs code, is refused."""
    import paddle
    from segqat import weights
    state = {"conv.weight": paddle.to_tensor(np.arange(24, dtype="float32").reshape(2, 3, 2, 2)),
             "bn._mean": paddle.to_tensor(np.array([0.5, -1.5], "float32"))}
    path = tmp_path / "p2.pdparams"
    paddle.save(state, str(path), protocol=2)
    loaded = weights.load_state(str(path))
    assert set(loaded) == set(state)
    assert all(np.array_equal(loaded[k], state[k].numpy()) for k in state)
    for blob, expect in ((_pickle_call("_codecs", "encode", "abc", "rot13"),
                          "_codecs.encode with str, 'rot13'"),
                         (_pickle_call("builtins", "exec", "open('x', 'w')"), "builtins.exec"),
                         (_pickle_call("os", "system", "true"), "os.system")):
        bad = tmp_path / "bad.pdparams"
        bad.write_bytes(blob)
        with pytest.raises(weights.WeightsError, match="not a plain weights file") as e:
            weights.load_state(str(bad))
        assert expect in str(e.value) and str(bad) in str(e.value)


@pytest.mark.unit
def test_float16_weights_load_as_float32(tmp_path, caplog):
    import paddle
    from segqat import weights
    model = paddle.nn.Conv2D(3, 2, 1)
    state = {k: (np.random.RandomState(0).rand(*v.shape) * 2 - 1).astype("float16")
             for k, v in model.state_dict().items()}
    path = tmp_path / "half.pdparams"
    paddle.save(state, str(path))
    caplog.set_level(logging.INFO)
    weights.load_weights(model, str(path))
    for k, v in model.state_dict().items():
        assert v.dtype == paddle.float32 and np.array_equal(v.numpy(), state[k].astype("float32"))
    assert f"{path}: converted 2 float16 tensor(s) to the model's precision" in caplog.text
    # integers where the model has floats are not weights of this model
    paddle.save({k: np.zeros(v.shape, "int64") for k, v in state.items()}, str(path))
    with pytest.raises(weights.WeightsError,
                       match=r"tensor (weight|bias) is int64 but the model's is float32"):
        weights.load_weights(model, str(path))


# ---------------------------------------------------------------- list files and images

def _list_config(root, tmp_path, text_bytes):
    (root / "train.txt").write_bytes(text_bytes)
    return write_config(tmp_path / "c.yml", data_root=root)


@pytest.mark.unit
def test_list_file_encodings(broken_data, tmp_path):
    """A UTF-8 byte-order mark is dropped; Latin-1 bytes are an error naming file and line."""
    from segqat import builder
    from segqat.config import load_config
    from segqat.data import DataError
    root, samples = broken_data
    text = "\n".join(" ".join(s) for s in samples) + "\n"
    cfg = load_config(_list_config(root, tmp_path, b"\xef\xbb\xbf" + text.encode()))
    ds = builder.build_dataset(cfg, "train")
    assert ds.file_list[0][0] == str(root / samples[0][0])
    img, _ = ds.read(0)
    assert img.shape[:2] == (64, 64)
    lines = text.splitlines()
    lines[2] = lines[2].replace("images/", "imag\xe9s/")
    cfg = load_config(_list_config(root, tmp_path, "\n".join(lines).encode("latin-1")))
    with pytest.raises(DataError, match=re.escape(f"{root / 'train.txt'}, line 3: not UTF-8 text "
                                                  "(byte 0xe9)")):
        builder.build_dataset(cfg, "train")


@pytest.mark.unit
def test_gif_images_are_read(broken_data, tmp_path):
    """OpenCV reads no GIF: images are read through Pillow then (as labels are)."""
    from PIL import Image
    from segqat import builder
    from segqat.config import load_config
    root, samples = broken_data
    png = root / samples[0][0]
    gif = png.with_suffix(".gif")
    rgb = np.asarray(Image.open(png).convert("RGB"))
    Image.fromarray(rgb).save(gif)
    lines = [" ".join(s) for s in samples]
    lines[0] = lines[0].replace(samples[0][0], samples[0][0][:-4] + ".gif")
    cfg = load_config(_list_config(root, tmp_path, ("\n".join(lines) + "\n").encode()))
    img, label = builder.build_dataset(cfg, "train").read(0)
    expect = np.asarray(Image.open(gif).convert("RGB"))[:, :, ::-1]  # BGR, as OpenCV reads a PNG
    assert img.shape == (64, 64, 3) and np.array_equal(img, expect.astype("float32"))
    # infer.py takes GIFs too (a folder of them is not "no images")
    assert str(gif) in load_script("deploy/python/infer.py").list_images(str(root / "images"))


@pytest.mark.unit
def test_image_path_read_as_list_file_is_logged(broken_data, tmp_path, caplog):
    root, samples = broken_data
    notes = root / "notes.txt"
    notes.write_text(samples[0][0] + "\n" + samples[1][0] + "\n")
    caplog.set_level(logging.INFO)
    files = load_script("deploy/python/infer.py").list_images(str(notes))
    assert files == [str(root / samples[0][0]), str(root / samples[1][0])]
    assert f"--image_path {notes} is not an image" in caplog.text and "read as a list file" in caplog.text


@pytest.mark.unit
def test_calibration_shortfall_names_flags_only_when_given(syn_cfg, caplog):
    """PTQ's --batch_nums x --batch_size asking for more images than there are is a warning;
    QAT's calibration before fine-tuning (no such flags) says it at INFO without flag names."""
    from segqat import calibration
    from segqat.config import load_config
    cfg = load_config(str(syn_cfg))
    caplog.set_level(logging.INFO)
    calibration.Calibration(cfg, calibration.CalibrationOptions(batch_size=10, batch_nums=10))
    assert [r.levelname for r in caplog.records if "fewer than --batch_nums x --batch_size = 100"
            in r.getMessage()] == ["WARNING"]
    caplog.clear()
    calibration.Calibration(cfg, calibration.CalibrationOptions(batch_size=10, batch_nums=10,
                                                                from_flags=False))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "Calibration: all 64 images (it takes up to 100)" in caplog.text


# ---------------------------------------------------------------- processes and channels

def test_loader_workers_end_with_their_parent(syn_cfg, tmp_path):
    """kill -9 of a training run with --num_workers 2 leaves no loader worker behind."""
    import os
    import signal
    import time
    import psutil
    proc = subprocess.Popen([sys.executable, str(ROOT / "tools/train.py"), "--config", str(syn_cfg),
                             "--iters", "100000", "--batch_size", "2", "--num_workers", "2",
                             "--save_dir", str(tmp_path / "run")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = []
    try:
        parent = psutil.Process(proc.pid)
        deadline = time.time() + 300
        while len(parent.children()) < 2 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        workers = parent.children()
        assert len(workers) == 2, "the run did not start its 2 loader workers"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        gone, alive = psutil.wait_procs(workers, timeout=15)
        assert not alive, f"loader workers {[p.pid for p in alive]} outlived their parent"
    finally:
        for p in [proc, *workers]:
            with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
                p.kill()


ONE_CHANNEL = """
batch_size: 2
train_dataset:
  img_channels: 1
  transforms: [{type: Normalize, mean: [0.5], std: [0.5]}]
val_dataset:
  img_channels: 1
  transforms: [{type: Normalize, mean: [0.5], std: [0.5]}]
model:
  _inherited_: False
  type: LRASPP
  backbone: {type: MobileNetV3_small_x0_35, in_channels: 1, pretrained: null}
  lraspp_head_inter_chs: [8, 8]
  lraspp_head_out_ch: 8
  pretrained: null
loss: {types: [{type: CrossEntropyLoss}], coef: [1]}
"""


def _one_channel_config(synth, tmp_path):
    data = write_config(tmp_path / "data.yml", data_root=synth)
    return write_config(tmp_path / "c.yml", base=data, extra=ONE_CHANNEL)


@pytest.mark.unit
def test_backbone_in_channels_set_the_export_input(synth, tmp_path):
    from segqat import export
    from segqat.config import load_config
    cfg = load_config(str(_one_channel_config(synth, tmp_path)))
    assert export.in_channels(cfg) == 1
    assert export.check_input_shape(cfg, None) == [-1, 1, -1, -1]
    with pytest.raises(ValueError, match="C is 3 but the model takes 1 channels"):
        export.check_input_shape(cfg, [1, 3, 64, 64])


def test_one_channel_backbone_exports_and_quantizes(synth, tmp_path, caplog):
    """model.backbone.in_channels: 1 -> FP32 and PTQ INT8 exports with a 1-channel input,
    calibrated and run on grayscale images."""
    import paddle
    import yaml
    from segqat import builder
    from segqat.config import load_config
    cfg_path = _one_channel_config(synth, tmp_path)
    paddle.seed(0)
    paddle.save(builder.build_model(load_config(str(cfg_path))).state_dict(), str(tmp_path / "w.pdparams"))
    common = ["--config", cfg_path, "--model_path", tmp_path / "w.pdparams"]
    run_script("tools/export.py", common + ["--save_dir", tmp_path / "fp32"])
    run_script("slim/quant/ptq.py", common + ["--save_dir", tmp_path / "int8", "--batch_size", 2,
                                              "--batch_nums", 1])
    for d in ("fp32", "int8"):
        dep = yaml.safe_load((tmp_path / d / "deploy.yaml").read_text())["Deploy"]
        assert dep["input_shape"] == [-1, 1, -1, -1], d
    run_script("deploy/python/infer.py", ["--config", tmp_path / "int8" / "deploy.yaml", "--image_path",
                                          synth / "images" / "val_0000.png", "--save_dir", tmp_path / "p"])
    assert (tmp_path / "p" / "val_0000.png").is_file()


# ---------------------------------------------------------------- flags and --help

SCRIPTS = sorted(str(p.relative_to(ROOT)) for d in ("tools", "tools/data", "slim/quant", "deploy/python")
                 for p in (ROOT / d).glob("*.py") if p.name != "__init__.py")
# scripts that build or run a model take --cpu_threads; the data tools run none
NO_MODEL = {"tools/data/convert_camvid.py", "tools/data/convert_isbi.py", "tools/data/convert_masks.py",
            "tools/data/make_synthetic.py"}


@pytest.mark.unit
@pytest.mark.parametrize("script", SCRIPTS)
def test_help_is_complete(script, capsys):
    parser = load_script(script).get_args_parser()
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["--help"])
    text = capsys.readouterr().out
    assert e.value.code == 0 and "docstring" not in text.lower()
    no_help = [a.option_strings[0] for a in parser._actions
               if a.option_strings and a.dest != "help" and not (a.help or "").strip()]
    assert not no_help, f"{script}: no help text for {no_help}"
    flags = {o for a in parser._actions for o in a.option_strings}
    assert ("--cpu_threads" in flags) == (script not in NO_MODEL), script


@pytest.mark.unit
def test_runtime_flag_spellings():
    """--runtime and --runtimes are one flag in every script: one runtime where a script runs
    one, several where it compares them."""
    from segqat import cli, deploy
    assert cli.RUNTIME_NAMES == list(deploy.RUNTIMES)
    base = ["--config", "c.yml"]
    infer = load_script("deploy/python/infer.py").get_args_parser()
    for flag in ("--runtime", "--runtimes"):
        args = infer.parse_args(base + ["--image_path", "x.png", flag, "openvino"])
        assert args.runtime == "openvino"
    bench = load_script("deploy/python/benchmark.py").get_args_parser()
    for flag in ("--runtime", "--runtimes"):
        args = bench.parse_args(base + ["--fp32", "a", "--int8", "b", flag, "paddle", "onnxruntime"])
        assert args.runtimes == ["paddle", "onnxruntime"]
    layer = load_script("slim/quant/layer_latency.py").get_args_parser()
    assert layer.parse_args(base + ["--save_dir", "o", "--runtimes", "openvino"]).runtime == "openvino"
