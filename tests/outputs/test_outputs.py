"""The output rule (segqat/outputs/, docs/safety.md) in every script that writes.

One test per way of losing data found in a user trial (each exited 0 before):
writing over the inputs, over an earlier result without --overwrite, into a
training run, over a user's file added to an earlier output, a target changed
while the work ran, stray temp-folder cleaning, a racy stale-lock takeover,
and failed writes reported as success or leaving 0-byte files.
"""
import builtins
import errno
import json
import multiprocessing
import os
import re
import shutil
import socket
import subprocess
import time

import cv2
import numpy as np
import pytest

from conftest import fails, load_script, run_script, tree
from segqat import outputs

TEMP_MARKER = ".segqat-temp.json"  # the marker of a temp folder, by the name docs/safety.md gives


def fake_run(path):
    """A training run's folder as segqat leaves it (marker, checkpoints, config, log)."""
    for d in ("iter_2", "best_model"):
        (path / d).mkdir(parents=True)
        (path / d / "model.pdparams").write_bytes(b"weights " + d.encode())
    (path / "config.yaml").write_text("batch_size: 2\n")
    (path / "train.log").write_text("log\n")
    outputs.write_marker(str(path), "train")
    return path


def images(synth, dest, n=2):
    dest.mkdir(parents=True)
    for i in range(n):
        shutil.copy(synth / "images" / f"val_{i:04d}.png", dest / f"val_{i:04d}.png")
    return dest


# ---------------------------------------------------------------- infer.py

def test_infer_never_writes_over_its_images(exports, synth, tmp_path, caplog):
    imgs = images(synth, tmp_path / "imgs")
    before = tree(imgs)
    for image_path, extra in ((imgs, []), (imgs, ["--overwrite"]), (imgs / "val_0000.png", [])):
        msg = fails("deploy/python/infer.py", ["--config", exports / "fp32", "--image_path", image_path,
                                               "--save_dir", imgs, *extra], caplog)
        assert f"--save_dir {imgs} " in msg and "the input" in msg
    # a list file whose images live in --save_dir
    (tmp_path / "list.txt").write_text("imgs/val_0000.png\n")
    msg = fails("deploy/python/infer.py", ["--config", exports / "fp32", "--image_path",
                                           tmp_path / "list.txt", "--save_dir", imgs], caplog)
    assert "contains the input" in msg
    # the export's own folder
    exp = tmp_path / "fp32"
    shutil.copytree(exports / "fp32", exp)
    exported = tree(exp)
    msg = fails("deploy/python/infer.py", ["--config", exp / "deploy.yaml", "--image_path", imgs,
                                           "--save_dir", exp, "--overwrite"], caplog)
    assert "the input" in msg
    assert tree(imgs) == before and tree(exp) == exported


def test_infer_replaces_earlier_predictions_only_with_overwrite(exports, synth, tmp_path, caplog):
    imgs = images(synth, tmp_path / "imgs")
    pred = tmp_path / "pred"
    run_script("deploy/python/infer.py", ["--config", exports / "fp32", "--image_path", imgs,
                                          "--save_dir", pred])
    fp32 = tree(pred)
    assert sorted(f for f in fp32 if f != outputs.MARKER) == [
        "val_0000.png", "val_0000_overlay.png", "val_0001.png", "val_0001_overlay.png"]
    one = imgs / "val_0001.png"
    msg = fails("deploy/python/infer.py", ["--config", exports / "int8", "--image_path", one,
                                           "--save_dir", pred], caplog)
    assert "holds an earlier prediction" in msg and "--overwrite" in msg
    assert tree(pred) == fp32
    run_script("deploy/python/infer.py", ["--config", exports / "int8", "--image_path", one,
                                          "--save_dir", pred, "--overwrite"])
    # replaced as a whole: no FP32 file of the earlier run is left beside the INT8 ones
    assert sorted(tree(pred)) == [outputs.MARKER, "val_0001.png", "val_0001_overlay.png"]
    assert sorted(os.listdir(tmp_path)) == ["imgs", "pred"]


def test_infer_refuses_training_run_and_foreign_folder(exports, synth, tmp_path, caplog):
    run = fake_run(tmp_path / "run")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    before = tree(tmp_path)
    for extra in ([], ["--overwrite"]):
        msg = fails("deploy/python/infer.py", ["--config", exports / "fp32", "--image_path",
                                               synth / "images" / "val_0000.png", "--save_dir", run,
                                               *extra], caplog)
        assert "holds a train output" in msg
    msg = fails("deploy/python/infer.py", ["--config", exports / "fp32", "--image_path",
                                           synth / "images" / "val_0000.png", "--save_dir", mine,
                                           "--overwrite"], caplog)
    assert "segqat did not write (notes.txt)" in msg
    assert tree(tmp_path) == before


def test_infer_fails_when_an_image_cannot_be_written(exports, synth, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(cv2, "imwrite", lambda *a, **k: False)  # what a full disk gives
    msg = fails("deploy/python/infer.py", ["--config", exports / "fp32", "--image_path",
                                           synth / "images" / "val_0000.png", "--save_dir",
                                           tmp_path / "pred"], caplog)
    assert f"cannot write {tmp_path / 'pred'}" in msg and "cv2.imwrite" in msg
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- benchmark.py, calib_sweep.py

def _fake_output(path, kind, files, **marker):
    def write(d):
        for name, text in files.items():
            with open(os.path.join(d, name), "w") as f:
                f.write(text)
    outputs.atomic_dir_write(str(path), write, kind=kind)
    if marker:
        info = json.loads((path / outputs.MARKER).read_text())
        info.update(marker)
        (path / outputs.MARKER).write_text(json.dumps(info))
    return path


def test_benchmark_report_replaced_only_with_overwrite(syn_cfg, exports, tmp_path, caplog):
    out = _fake_output(tmp_path / "bench", "benchmark", {"results.md": "earlier report\n"})
    before = tree(out)
    argv = ["--config", syn_cfg, "--fp32", exports / "fp32", "--int8", exports / "int8",
            "--save_dir", out, "--num_images", 2, "--repeats", 1, "--warmup", 1, "--cpu_threads", 1]
    msg = fails("deploy/python/benchmark.py", argv, caplog)
    assert "holds an earlier benchmark" in msg and "--overwrite" in msg
    assert tree(out) == before
    msg = fails("deploy/python/benchmark.py", argv[:7] + [fake_run(tmp_path / "run")] + argv[8:], caplog)
    assert "holds a train output" in msg
    run_script("deploy/python/benchmark.py", argv + ["--overwrite"])
    assert {"results.json", "results.md", "latency.png", "benchmark.log"} <= set(os.listdir(out))
    assert "earlier report" not in (out / "results.md").read_text()
    assert "Benchmark written to" in (out / "benchmark.log").read_text()  # the log moved with it
    assert sorted(os.listdir(tmp_path)) == ["bench", "run"]


def test_calib_sweep_refuses_earlier_report_and_training_run(syn_cfg, fp32_run, tmp_path, caplog):
    out = _fake_output(tmp_path / "sweep", "sweep", {"sweep.md": "earlier sweep\n"}, complete=True)
    run = fake_run(tmp_path / "run")
    before = tree(tmp_path)
    argv = ["--config", syn_cfg, "--model_path", fp32_run / "best_model" / "model.pdparams",
            "--fractions", 0.05, "--algo", "abs_max", "--save_dir"]
    msg = fails("slim/quant/calib_sweep.py", argv + [out], caplog)
    assert "holds an earlier sweep" in msg and "--overwrite" in msg
    msg = fails("slim/quant/calib_sweep.py", argv + [run, "--overwrite"], caplog)
    assert "holds a train output" in msg
    (out / "notes.txt").write_text("mine")
    msg = fails("slim/quant/calib_sweep.py", argv + [out, "--overwrite"], caplog)
    assert "files segqat did not write there: notes.txt" in msg
    assert tree(tmp_path) == {**before, "sweep/notes.txt": b"mine"}


# ---------------------------------------------------------------- --save_metrics

@pytest.mark.parametrize("script,run", [("tools/val.py", "fp32_run"), ("slim/quant/qat_val.py", "qat_run")])
def test_save_metrics_never_replaces_a_file_silently(script, run, syn_cfg, tmp_path, caplog, request):
    f = tmp_path / "metrics.json"
    f.write_text("my own results\n")
    weights_file = request.getfixturevalue(run) / "best_model" / "model.pdparams"
    argv = ["--config", syn_cfg, "--model_path", weights_file, "--save_metrics"]
    msg = fails(script, argv + [f], caplog)  # refused before the model is even loaded
    assert f"--save_metrics {f} exists; give --overwrite" in msg
    msg = fails(script, argv + [f, "--overwrite"], caplog)
    assert "is not a metrics file" in msg
    msg = fails(script, argv + [syn_cfg, "--overwrite"], caplog)
    assert "is the input" in msg
    assert f.read_text() == "my own results\n"


def test_save_metrics_overwrite_and_recheck(syn_cfg, fp32_run, tmp_path, caplog, monkeypatch):
    from segqat import workflow
    f = tmp_path / "m.json"
    argv = ["--config", syn_cfg, "--model_path", fp32_run / "best_model" / "model.pdparams",
            "--save_metrics", f]
    # a file that appears while the evaluation runs is not replaced
    g = tmp_path / "new.json"
    real = workflow.evaluate

    def meanwhile(*a, **k):
        g.write_text("saved meanwhile\n")
        return real(*a, **k)
    monkeypatch.setattr(workflow, "evaluate", meanwhile)
    msg = fails("tools/val.py", argv[:-1] + [g], caplog)
    assert "exists; give --overwrite" in msg and g.read_text() == "saved meanwhile\n"
    monkeypatch.undo()
    first = run_script("tools/val.py", argv)
    again = run_script("tools/val.py", argv + ["--overwrite"])  # an earlier metrics file: replaced
    assert json.loads(f.read_text())["mIoU"] == first["mIoU"] == again["mIoU"]
    # the disk fills up while it is replaced: the earlier file stays as it was
    before = f.read_bytes()
    _FullDisk(monkeypatch, tmp_path)
    msg = fails("tools/val.py", argv + ["--overwrite"], caplog)
    monkeypatch.undo()
    assert f"cannot write {f}: the disk is full" in msg and f.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.json", "new.json"]


# ---------------------------------------------------------------- export and PTQ: re-check at the swap

def test_ptq_rechecks_save_dir_before_the_swap(syn_cfg, fp32_run, tmp_path, caplog, monkeypatch):
    """A training run started into PTQ's save_dir while PTQ calibrates is refused (the target is
    locked); a run that ignores the lock fills the folder meanwhile: PTQ refuses to replace it."""
    from segqat import cli, ptq
    out = tmp_path / "ptq"
    seen = {}
    real = ptq.evaluate

    def meanwhile(*a, **k):
        train_args = load_script("tools/train.py").get_args_parser().parse_args(
            ["--config", str(syn_cfg), "--save_dir", str(out)])
        try:
            with cli.training_dir(train_args):
                seen["train"] = "started"
        except outputs.OutputError as e:
            seen["train"] = str(e)
        if out.exists():
            shutil.rmtree(out)
        fake_run(out)  # a run of an older segqat, which does not take the lock
        seen["run"] = tree(out)
        return real(*a, **k)
    monkeypatch.setattr(ptq, "evaluate", meanwhile)
    msg = fails("slim/quant/ptq.py", ["--config", syn_cfg, "--model_path",
                                      fp32_run / "best_model" / "model.pdparams", "--save_dir", out,
                                      "--batch_size", 2, "--batch_nums", 1, "--algo", "abs_max"], caplog)
    assert "in use by another run" in seen["train"], seen
    assert "holds a train output" in msg
    assert tree(out) == seen["run"]
    assert sorted(os.listdir(tmp_path)) == ["ptq"]


def test_export_rechecks_save_dir_before_the_swap(syn_cfg, fp32_run, exports, tmp_path, caplog,
                                                 monkeypatch):
    """A file a user saves into the old export while --overwrite exports is never deleted."""
    from segqat import compat
    out = tmp_path / "fp32_infer"
    shutil.copytree(exports / "fp32", out)
    before = tree(out)
    real = compat.fix_conv_bias_axis

    def meanwhile(*a, **k):
        (out / "notes.txt").write_text("saved during the export")
        return real(*a, **k)
    monkeypatch.setattr(compat, "fix_conv_bias_axis", meanwhile)
    msg = fails("tools/export.py", ["--config", syn_cfg, "--model_path",
                                    fp32_run / "best_model" / "model.pdparams", "--save_dir", out,
                                    "--overwrite"], caplog)
    assert "notes.txt" in msg
    assert tree(out) == {**before, "notes.txt": b"saved during the export"}
    assert sorted(os.listdir(tmp_path)) == ["fp32_infer"]


def test_export_overwrite_keeps_a_users_file(syn_cfg, fp32_run, exports, tmp_path, caplog):
    out = tmp_path / "fp32_infer"
    shutil.copytree(exports / "fp32", out)
    (out / "model.onnx").write_bytes(b"the user's own conversion")
    (out / "extra").mkdir()
    before = tree(out)
    for script in ("tools/export.py", "slim/quant/ptq.py"):
        msg = fails(script, ["--config", syn_cfg, "--model_path", fp32_run / "best_model" / "model.pdparams",
                             "--save_dir", out, "--overwrite"], caplog)
        assert "files segqat did not write there: extra/, model.onnx" in msg
    assert tree(out) == before and (out / "extra").is_dir()


# ---------------------------------------------------------------- export_onnx.py

@pytest.mark.runtimes
def test_export_onnx_never_writes_over_an_input(exports, synth, tmp_path, caplog):
    exp = tmp_path / "int8"
    shutil.copytree(exports / "int8", exp)
    image = tmp_path / "check.png"
    shutil.copy(synth / "images" / "val_0000.png", image)
    theirs = tmp_path / "notes.onnx"
    theirs.write_text("not a model")
    before = tree(tmp_path)
    for target in ("model.pdmodel", "model.pdiparams", "deploy.yaml"):
        msg = fails("deploy/python/export_onnx.py", ["--config", exp / "deploy.yaml", "--save_path",
                                                     exp / target, "--overwrite"], caplog)
        assert "is the input" in msg and "--overwrite or not" in msg
    msg = fails("deploy/python/export_onnx.py", ["--config", exp, "--save_path", image, "--image_path",
                                                 image, "--overwrite"], caplog)
    assert "is the input" in msg
    msg = fails("deploy/python/export_onnx.py", ["--config", exp, "--save_path", theirs, "--overwrite"],
                caplog)
    assert "is not an ONNX model written by segqat" in msg
    assert tree(tmp_path) == before


# ---------------------------------------------------------------- data sets

def test_make_synthetic_keeps_an_existing_data_set(tmp_path, caplog):
    out = tmp_path / "data"
    small = ["--num_train", 3, "--num_val", 1, "--size", 32, "--save_dir", out]
    run_script("tools/data/make_synthetic.py", small)
    before = tree(out)
    msg = fails("tools/data/make_synthetic.py", small + ["--seed", 1], caplog)
    assert "holds an earlier dataset" in msg and "--overwrite" in msg
    assert tree(out) == before
    # --overwrite replaces the whole set: nothing of the larger earlier one is left
    run_script("tools/data/make_synthetic.py", ["--num_train", 1, "--num_val", 1, "--size", 32,
                                                "--save_dir", out, "--overwrite"])
    assert sorted(os.listdir(out / "images")) == ["train_0000.png", "val_0000.png"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "train.txt").write_text("my list\n")
    msg = fails("tools/data/make_synthetic.py", small[:-1] + [mine, "--overwrite"], caplog)
    assert "segqat did not write (train.txt)" in msg and (mine / "train.txt").read_text() == "my list\n"


def _fake_isbi(src):
    (src / "image").mkdir(parents=True)
    (src / "label").mkdir()
    for i in range(3):
        cv2.imwrite(str(src / f"image/{i}.png"), np.zeros((4, 4), np.uint8))
        cv2.imwrite(str(src / f"label/{i}.png"), np.full((4, 4), 255 * (i % 2), np.uint8))
    return ["tools/data/convert_isbi.py", "--src", src, "--num_val", 1]


def _fake_camvid(src):
    for d in ("train", "trainannot"):
        (src / d).mkdir(parents=True)
    cv2.imwrite(str(src / "train/a.png"), np.zeros((4, 5, 3), np.uint8))
    cv2.imwrite(str(src / "trainannot/a.png"), np.full((4, 5), 11, np.uint8))
    (src / "train.txt").write_text("train/a.png trainannot/a.png\n")
    (src / "val.txt").write_text("train/a.png trainannot/a.png\n")
    return ["tools/data/convert_camvid.py", "--src", src]


@pytest.mark.parametrize("make_src", [_fake_isbi, _fake_camvid])
def test_converters_keep_an_existing_data_set(make_src, tmp_path, caplog):
    script, *args = make_src(tmp_path / "src")
    out = tmp_path / "data"
    run_script(script, args + ["--save_dir", out])
    (out / "labels.txt").write_text("edited by hand\n")  # an earlier set, changed since
    before = tree(out)
    msg = fails(script, args + ["--save_dir", out], caplog)
    assert "holds an earlier dataset" in msg
    assert tree(out) == before
    run_script(script, args + ["--save_dir", out, "--overwrite"])
    assert (out / "labels.txt").read_text() != "edited by hand\n"
    msg = fails(script, args + ["--save_dir", tmp_path, "--overwrite"], caplog)
    assert "contains the input" in msg
    assert sorted(os.listdir(tmp_path)) == ["data", "src"]


# ---------------------------------------------------------------- temp folders

def test_clean_stale_touches_only_what_segqat_marked(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    # a user's things that look like temp folders: never touched
    (tmp_path / ".notes.tmp-99999").mkdir()
    (tmp_path / ".notes.tmp-99999" / "draft.txt").write_text("mine")
    (tmp_path / ".bashrc.old-99998").write_text("export PATH=...")
    (tmp_path / ".cfg.old-99997").mkdir()
    (tmp_path / ".cfg.del-99996").mkdir()

    def marked(name, role, pid, host=None, final=None):
        p = tmp_path / name
        p.mkdir()
        (p / "payload").write_text(name)
        (p / TEMP_MARKER).write_text(json.dumps(
            {"role": role, "name": final or name.split(".")[1], "kind": "export", "pid": pid,
             "host": host or socket.gethostname()}))
        return p
    gone = marked(f".exp.tmp-{dead.pid}", "tmp", dead.pid)
    restored = marked(f".best.old-{dead.pid}", "old", dead.pid)
    kept_old = marked(f".kept.old-{dead.pid}", "old", dead.pid)
    (tmp_path / "kept").mkdir()  # its output is in place: the old one is removed
    live = marked(f".live.tmp-{os.getpid()}", "tmp", os.getpid())
    other_host = marked(f".far.tmp-{dead.pid}", "tmp", dead.pid, host="another-machine")
    renamed = marked(f".x.tmp-{dead.pid}", "tmp", dead.pid, final="y")  # marker of another folder
    outputs.clean_stale(str(tmp_path))
    assert (tmp_path / ".notes.tmp-99999" / "draft.txt").read_text() == "mine"
    assert (tmp_path / ".bashrc.old-99998").read_text() == "export PATH=..."
    assert not (tmp_path / "bashrc").exists() and not (tmp_path / "cfg").exists()
    assert (tmp_path / ".cfg.old-99997").is_dir() and (tmp_path / ".cfg.del-99996").is_dir()
    assert not gone.exists() and not kept_old.exists()
    assert not restored.exists() and (tmp_path / "best" / "payload").read_text() == restored.name
    assert not (tmp_path / "best" / TEMP_MARKER).exists()
    assert live.exists() and other_host.exists() and renamed.exists()


def test_temp_folders_are_marked(tmp_path):
    seen = {}

    def write(d):
        seen.update(json.loads(open(os.path.join(d, TEMP_MARKER)).read()))
        open(os.path.join(d, "a.txt"), "w").write("a")
    outputs.atomic_dir_write(str(tmp_path / "out"), write, kind="analysis")
    assert seen["pid"] == os.getpid() and seen["host"] == socket.gethostname()
    assert seen["kind"] == "analysis" and seen["role"] == "tmp" and seen["name"] == "out"
    assert sorted(os.listdir(tmp_path / "out")) == [outputs.MARKER, "a.txt"]


# ---------------------------------------------------------------- locks

def _race_worker(path, inside, rounds, start, done, overlaps, held):
    from segqat import outputs as o
    for _ in range(rounds):
        start.wait()
        try:
            with o.lock(path, "the race"):
                try:
                    fd = os.open(inside, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    with overlaps.get_lock():
                        overlaps.value += 1
                else:
                    with held.get_lock():
                        held.value += 1
                    time.sleep(0.02)
                    os.close(fd)
                    os.remove(inside)
        except o.OutputError:
            pass
        done.wait()


def test_stale_lock_takeover_is_atomic(tmp_path):
    """N processes on a dead process's lock, many rounds: never two holders at once."""
    n, rounds = 6, 80
    dead = subprocess.Popen(["true"])
    dead.wait()
    path, inside = str(tmp_path / ".out.segqat.lock"), str(tmp_path / "inside")
    ctx = multiprocessing.get_context("spawn")
    start, done = ctx.Barrier(n + 1), ctx.Barrier(n + 1)
    overlaps, held = ctx.Value("i", 0), ctx.Value("i", 0)
    procs = [ctx.Process(target=_race_worker, args=(path, inside, rounds, start, done, overlaps, held))
             for _ in range(n)]
    for p in procs:
        p.start()
    try:
        for _ in range(rounds):
            with open(path, "w") as f:  # what a killed holder leaves
                json.dump({"pid": dead.pid, "host": socket.gethostname(), "since": "earlier"}, f)
            start.wait(timeout=60)
            done.wait(timeout=60)
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    assert overlaps.value == 0, f"{overlaps.value} times two processes held the lock at once"
    assert held.value >= rounds  # each round somebody took the dead lock over


def test_lock_respects_live_holders_and_foreign_files(tmp_path):
    path = str(tmp_path / ".x.segqat.lock")
    with outputs.lock(path, "--save_dir x"):
        with pytest.raises(outputs.OutputError, match=f"in use by another run \\(pid {os.getpid()}"):
            with outputs.lock(path, "--save_dir x"):
                pass
    assert not os.path.exists(path)
    with open(path, "w") as f:  # not ours: never taken over, never removed
        f.write("a user's file\n")
    with pytest.raises(outputs.OutputError, match="is not a segqat lock file"):
        with outputs.lock(path, "--save_dir x"):
            pass
    outputs.clean_stale(str(tmp_path))
    assert open(path).read() == "a user's file\n"


# ---------------------------------------------------------------- failed writes

@pytest.mark.parametrize("code,cause", [(errno.ENOSPC, "the disk is full"), (errno.EROFS, "read-only"),
                                        (errno.EACCES, "permission denied"),
                                        (errno.EFBIG, "file too large"),
                                        (errno.EDQUOT, "disk quota exceeded")])
def test_write_errors_name_the_path(code, cause, tmp_path):
    def folder(d):
        with open(os.path.join(d, "x"), "w") as f:
            f.write("half")
            raise OSError(code, os.strerror(code))

    def single(p):
        folder(os.path.dirname(p))
    with pytest.raises(outputs.OutputError, match=re.escape(f"cannot write {tmp_path / 'out'}: {cause}")):
        outputs.atomic_dir_write(str(tmp_path / "out"), folder, kind="analysis")
    with pytest.raises(outputs.OutputError, match=re.escape(f"cannot write {tmp_path / 'm.json'}: {cause}")):
        outputs.atomic_file_write(str(tmp_path / "m.json"), single, kind="metrics")
    assert os.listdir(tmp_path) == []


class _FullDisk:
    """Files opened for writing under ``root`` fail like a full disk after a few bytes."""

    def __init__(self, monkeypatch, root):
        self.root = str(root)
        real_open, real_fdopen = builtins.open, os.fdopen

        def fake_open(file, mode="r", *a, **k):
            f = real_open(file, mode, *a, **k)
            return self.wrap(f, file, mode)

        def fake_fdopen(fd, mode="r", *a, **k):
            f = real_fdopen(fd, mode, *a, **k)
            return self.wrap(f, os.readlink(f"/proc/self/fd/{fd}"), mode)
        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(os, "fdopen", fake_fdopen)
        monkeypatch.setattr(cv2, "imwrite", self.imwrite(cv2.imwrite))

    def ours(self, file, mode):
        """A payload file under root opened for writing (segqat's own small markers pass)."""
        return isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+") \
            and os.path.abspath(file).startswith(self.root + os.sep) \
            and os.path.basename(file) not in (outputs.MARKER, TEMP_MARKER)

    def wrap(self, f, file, mode):
        return _Failing(f) if self.ours(file, mode) else f

    def imwrite(self, real):
        def imwrite(path, *a, **k):
            return False if self.ours(path, "w") else real(path, *a, **k)
        return imwrite


class _Failing:
    def __init__(self, f):
        self._f, self._n = f, 0

    def write(self, b):
        self._n += len(b)
        if self._n > 16:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self._f.write(b)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __iter__(self):
        return iter(self._f)


@pytest.mark.parametrize("case", ["infer", "val", "benchmark",
                                  pytest.param("export_onnx", marks=pytest.mark.runtimes)])
def test_full_disk_is_one_line_and_leaves_nothing(case, syn_cfg, fp32_run, exports, synth, tmp_path,
                                                  caplog, monkeypatch):
    w = tmp_path / "w"
    w.mkdir()
    target = {"infer": w / "pred", "val": w / "m.json", "benchmark": w / "bench",
              "export_onnx": w / "model.onnx"}[case]
    weights_file = fp32_run / "best_model" / "model.pdparams"
    before = tree(w)
    script, argv = {
        "infer": ("deploy/python/infer.py", ["--config", exports / "fp32", "--image_path",
                                             synth / "images" / "val_0000.png", "--save_dir", target]),
        "val": ("tools/val.py", ["--config", syn_cfg, "--model_path", weights_file,
                                 "--save_metrics", target]),
        "benchmark": ("deploy/python/benchmark.py", [
            "--config", syn_cfg, "--fp32", exports / "fp32", "--int8", exports / "int8",
            "--save_dir", target, "--num_images", 1, "--repeats", 1, "--warmup", 1, "--cpu_threads", 1]),
        "export_onnx": ("deploy/python/export_onnx.py", ["--config", exports / "fp32", "--save_path",
                                                         target]),
    }[case]
    _FullDisk(monkeypatch, w)
    msg = fails(script, argv, caplog)
    assert f"cannot write {target}" in msg and ("the disk is full" in msg or "cv2.imwrite" in msg)
    monkeypatch.undo()
    assert tree(w) == before  # no 0-byte or half-written file
    assert not [e for e in os.listdir(w) if e.startswith(".")]
