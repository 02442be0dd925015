"""FP32 training: every flag reaches its effect, resume equivalence, checkpoints, metrics."""
import json
import os
import re

import numpy as np
import paddle
import pytest
import yaml

from conftest import run_script
from segqat import engine, outputs
from segqat.metrics import ConfusionMatrix, agreement, compute_metrics


def params(path):
    return paddle.load(str(path))


def same_weights(a, b):
    a, b = params(a), params(b)
    return a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


@pytest.mark.core  # not `unit`: a fresh interpreter importing paddle takes seconds
def test_scripts_import_numpy_before_paddle():
    # paddle 2.6.2 imported before numpy breaks every later scipy import (segqat/compat/__init__.py):
    # zlib.error: Error -2 while decompressing data: inconsistent stream state
    import subprocess
    import sys
    from conftest import ROOT
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from segqat import cli; import paddle; "
            "import scipy.special, sklearn.metrics")
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_metrics_hand_case():
    cm = ConfusionMatrix(3, ignore_index=255)
    label = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 1]])
    cm.update(pred, label)
    m = compute_metrics(cm.mat)
    # class 0: tp 1, fp 1 (pixel labelled 2), fn 1 -> IoU 1/3; class 1: tp 3, fp 1 -> 3/4;
    # class 2: tp 1, fn 1 -> 1/2. 7 labelled pixels, 5 correct.
    assert m["class_IoU"] == pytest.approx([1 / 3, 3 / 4, 1 / 2])
    assert m["mIoU"] == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    assert m["Acc"] == pytest.approx(5 / 7)
    assert m["class_precision"] == pytest.approx([1 / 2, 3 / 4, 1 / 1])
    pe = (2 * 2 + 3 * 4 + 2 * 1) / 49
    assert m["Kappa"] == pytest.approx((5 / 7 - pe) / (1 - pe))
    assert agreement(pred, label) == pytest.approx(5 / 8)
    assert agreement(pred, label, ignore=label == 255) == pytest.approx(5 / 7)


def test_flags_reach_their_effects(syn_cfg, tmp_path):
    out = tmp_path / "run"
    run_script("tools/train.py", [
        "--config", syn_cfg, "--iters", 6, "--batch_size", 2, "--learning_rate", 0.02,
        "--save_interval", 2, "--keep_checkpoint_max", 2, "--log_iters", 3, "--use_vdl",
        "--do_eval", "--seed", 1, "--num_workers", 0, "--device", "cpu",
        "--opts", "lr_scheduler.power=0.5", "--save_dir", out])
    # --save_interval 2 + --keep_checkpoint_max 2: iter_2 pruned, iter_4 and iter_6 kept
    assert sorted(p.name for p in out.glob("iter_*")) == ["iter_4", "iter_6"]
    for d in ("iter_4", "iter_6"):
        assert {p.name for p in (out / d).iterdir()} == {"model.pdparams", "model.pdopt", "state.json"}
    # --do_eval: best_model with its score
    state = json.loads((out / "best_model" / "state.json").read_text())
    assert 0 <= state["best_mIoU"] <= 1 and state["best_iter"] in (2, 4, 6)
    # --iters, --batch_size, --learning_rate, --opts: the resolved config
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["iters"] == 6 and cfg["batch_size"] == 2
    assert cfg["lr_scheduler"]["learning_rate"] == 0.02 and cfg["lr_scheduler"]["power"] == 0.5
    # --log_iters 3: two [TRAIN] lines in PaddleSeg's shape, first lr = 0.02 * (1 - 1/6)^0.5
    log = (out / "train.log").read_text()
    lines = [ln for ln in log.splitlines() if "[TRAIN]" in ln]
    assert len(lines) == 2
    pat = (r"\[TRAIN\] epoch: \d+, iter: (\d+)/6, loss: [\d.]+, lr: ([\d.]+), batch_cost: [\d.]+, "
           r"reader_cost: [\d.]+, ips: [\d.]+ samples/sec \| ETA \d\d:\d\d:\d\d")
    found = [re.search(pat, ln) for ln in lines]
    assert all(found) and [int(f.group(1)) for f in found] == [3, 6]
    assert float(found[0].group(2)) == pytest.approx(0.02 * (1 - 2 / 6) ** 0.5, abs=1e-6)
    assert re.search(r"\[EVAL\] #Images: 12 mIoU: [\d.]+ Acc: [\d.]+ Kappa: [-\d.]+ Dice: [\d.]+", log)
    # --use_vdl: the scalars PaddleSeg writes
    from visualdl import LogReader
    vdl_files = list((out / "vdl_log").glob("vdlrecords.*"))
    assert len(vdl_files) == 1
    reader = LogReader(file_path=str(vdl_files[0]))
    tags = set(reader.get_tags()["scalar"])
    assert {"Train/loss", "Train/lr", "Train/batch_cost", "Train/reader_cost",
            "Evaluate/mIoU", "Evaluate/Acc", "Evaluate/Kappa", "Evaluate/Dice"} <= tags
    assert {f"Evaluate/IoU/{c}" for c in ("background", "circle", "square", "triangle")} <= tags
    assert [r.id for r in reader.get_data("scalar", "Evaluate/mIoU")] == [2, 4, 6]  # FP32: no iter 0
    best = json.loads((out / "best_model" / "state.json").read_text())
    assert [r.value for r in reader.get_data("scalar", "Evaluate/IoU/square")
            if r.id == best["best_iter"]] == pytest.approx([best["metrics"]["class_IoU"][2]])


def test_resume_equivalence_and_seed(syn_cfg, tmp_path):
    base = ["--config", syn_cfg, "--iters", 8, "--batch_size", 4, "--save_interval", 4,
            "--seed", 3, "--num_workers", 0, "--log_iters", 4, "--keep_checkpoint_max", 0]
    run_script("tools/train.py", base + ["--save_dir", tmp_path / "full"])
    run_script("tools/train.py", base + ["--save_dir", tmp_path / "resumed",
                                         "--resume_model", tmp_path / "full" / "iter_4"])
    assert not (tmp_path / "resumed" / "iter_4").exists()
    assert same_weights(tmp_path / "full/iter_8/model.pdparams", tmp_path / "resumed/iter_8/model.pdparams")
    opt_a = params(tmp_path / "full/iter_8/model.pdopt")
    opt_b = params(tmp_path / "resumed/iter_8/model.pdopt")
    assert opt_a["LR_Scheduler"] == opt_b["LR_Scheduler"]
    # per-sample seeding: worker processes give the same batches as the main process
    run_script("tools/train.py", base + ["--save_dir", tmp_path / "workers", "--num_workers", 2,
                                         "--iters", 8])
    assert same_weights(tmp_path / "full/iter_8/model.pdparams", tmp_path / "workers/iter_8/model.pdparams")
    # --seed changes the run
    run_script("tools/train.py", [a if a != 3 else 4 for a in base] + ["--save_dir", tmp_path / "seed4"])
    assert not same_weights(tmp_path / "full/iter_4/model.pdparams", tmp_path / "seed4/iter_4/model.pdparams")


def test_resume_errors(syn_cfg, tmp_path):
    with pytest.raises(SystemExit) as e:
        run_script("tools/train.py", ["--config", syn_cfg, "--iters", 4, "--save_dir", tmp_path / "x",
                                      "--resume_model", tmp_path / "missing"])
    assert e.value.code == 1


def test_atomic_checkpoint_keeps_old_one(tmp_path):
    target = tmp_path / "best_model"
    target.mkdir()
    (target / "model.pdparams").write_bytes(b"good")

    def broken(d):
        with open(os.path.join(d, "model.pdparams"), "wb") as f:
            f.write(b"half")
        raise KeyboardInterrupt  # interrupted mid-save

    with pytest.raises(KeyboardInterrupt):
        outputs.atomic_dir_write(str(target), broken, kind="train")
    assert (target / "model.pdparams").read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["best_model"]  # no temp dir left behind


def test_non_finite_loss_stops_with_iteration(syn_cfg, tmp_path):
    from segqat import builder, quant
    from segqat.config import load_config
    cfg = load_config(str(syn_cfg), overrides={"iters": 5, "batch_size": 2})
    model, _ = quant.build_model(cfg)
    ds = builder.build_dataset(cfg, "train")
    calls = {"n": 0}

    def bad_loss(logit, label):
        calls["n"] += 1
        scale = float("nan") if calls["n"] > 15 else 1.0  # 5 outputs per iteration: iteration 4
        return logit.mean() * scale

    losses = {"types": [bad_loss] * 5, "coef": [1.0] * 5}
    with pytest.raises(FloatingPointError, match="at iteration 4"):
        engine.train(cfg, model, ds, None, losses, engine.TrainOptions(
            save_dir=str(tmp_path), iters=5, batch_size=2, save_interval=100, log_iters=1))


@pytest.mark.core
def test_val_flags(syn_cfg, fp32_run, tmp_path):
    weights = fp32_run / "best_model" / "model.pdparams"
    whole = run_script("tools/val.py", ["--config", syn_cfg, "--model_path", weights,
                                        "--save_metrics", tmp_path / "m.json"])
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["mIoU"] == pytest.approx(whole["mIoU"]) and saved["num_images"] == 12
    assert len(saved["class_IoU"]) == 4 and len(saved["class_precision"]) == 4
    # the same numbers as the evaluation at the end of training
    state = json.loads((fp32_run / "best_model" / "state.json").read_text())
    assert whole["mIoU"] == pytest.approx(state["best_mIoU"])
    assert whole["mIoU"] > 0.4, "the synthetic data must be learnable"
    slide = run_script("tools/val.py", ["--config", syn_cfg, "--model_path", weights, "--is_slide",
                                        "--crop_size", "32,32", "--stride", "16,16"])
    assert slide["test_config"]["is_slide"] and slide["mIoU"] != whole["mIoU"]
    aug = run_script("tools/val.py", ["--config", syn_cfg, "--model_path", weights, "--aug_eval",
                                      "--scales", 0.75, 1.0, "--flip_horizontal"])
    assert aug["test_config"]["scales"] == [0.75, 1.0] and aug["mIoU"] != whole["mIoU"]
    with pytest.raises(SystemExit):  # --is_slide without a window
        run_script("tools/val.py", ["--config", syn_cfg, "--model_path", weights, "--is_slide"])


def test_resume_keeps_a_better_best_model_and_honours_the_learning_rate(syn_cfg, tmp_path, caplog):
    """Resuming from an earlier checkpoint: best_model is replaced only by a better score of the
    same run (lineage); a lowered --learning_rate is used, not the checkpoint's schedule."""
    import logging
    from conftest import tree
    from segqat.builder import build_lr_scheduler
    from segqat.config import load_config
    out = tmp_path / "run"
    base = ["--config", syn_cfg, "--iters", 4, "--batch_size", 2, "--save_interval", 2, "--log_iters", 1,
            "--do_eval", "--save_dir", out]
    run_script("tools/train.py", base)
    state_path = out / "best_model" / "state.json"
    state = json.loads(state_path.read_text())
    state["best_mIoU"] = 0.99  # as if a later iteration had scored that
    state_path.write_text(json.dumps(state))
    before = tree(out / "best_model")
    caplog.set_level(logging.INFO)
    run_script("tools/train.py", base + ["--resume_model", out / "iter_2", "--learning_rate", 0.0001])
    assert tree(out / "best_model") == before
    assert "best_model (mIoU 0.9900 at iter" in caplog.text
    assert "continuing with the configured learning-rate schedule" in caplog.text
    # the first resumed step (iteration 3) and the rest use the lowered schedule, as a fresh
    # run with that rate has it
    sched = build_lr_scheduler(load_config(str(syn_cfg), overrides={
        "iters": 4, "lr_scheduler.learning_rate": 0.0001}))
    for _ in range(2):
        sched.step()
    assert re.search(rf"iter: 3/4, loss: [0-9.]+, lr: {sched.last_lr:.6f},", caplog.text)
    for _ in range(2):
        sched.step()
    resumed = paddle.load(str(out / "iter_4" / "model.pdopt"))["LR_Scheduler"]
    assert resumed["last_epoch"] == 4 and resumed["last_lr"] == sched.last_lr
    # a best_model of another run cannot be compared: refused, left as it is
    state["run_id"] = "another-run"
    state_path.write_text(json.dumps(state))
    before = tree(out / "best_model")
    caplog.clear()
    with pytest.raises(SystemExit):
        run_script("tools/train.py", base + ["--resume_model", out / "iter_2"])
    assert "best_model belongs to another run (another-run" in caplog.text
    assert tree(out / "best_model") == before


@pytest.mark.unit
def test_best_model_to_beat_on_resume(tmp_path):
    """The score a resumed run's best_model must beat: the better of its checkpoint's and the
    recorded best_model's of the same lineage; another run's (or an unscored) best_model is
    refused unless --overwrite."""
    from segqat import checkpoint
    best = tmp_path / "best_model"
    assert checkpoint.best_to_beat(str(tmp_path), "r1", 0.5, 2, "ck") == (0.5, 2)  # none yet
    best.mkdir()
    for owner, recorded, want in (("r1", 0.7, (0.7, 8)), ("r1", 0.3, (0.5, 2)), (None, 0.7, (0.7, 8))):
        (best / "state.json").write_text(json.dumps({"best_mIoU": recorded, "best_iter": 8, "run_id": owner}))
        assert checkpoint.best_to_beat(str(tmp_path), "r1", 0.5, 2, "ck") == want
    (best / "state.json").write_text(json.dumps({"best_mIoU": 0.7, "best_iter": 8, "run_id": "r0"}))
    with pytest.raises(checkpoint.ResumeError, match=r"best_model belongs to another run \(r0, mIoU 0.7000 "
                                                     "at iter 8\).*--overwrite"):
        checkpoint.best_to_beat(str(tmp_path), "r1", 0.5, 2, "ck")
    assert checkpoint.best_to_beat(str(tmp_path), "r1", 0.5, 2, "ck", overwrite=True) == (0.5, 2)
    (best / "state.json").unlink()
    with pytest.raises(checkpoint.ResumeError, match="best_model has no recorded score"):
        checkpoint.best_to_beat(str(tmp_path), "r1", 0.5, 2, "ck")


@pytest.mark.unit
def test_resumed_schedule_is_the_configured_one(caplog):
    """configured_schedule: the checkpoint's step, the configured rates; the same schedule
    resumes exactly (no message), a changed one is used and logged, also for schedules that
    compute each rate from the previous one (cosine) and nested ones (warmup)."""
    import logging
    from segqat import checkpoint
    lr = paddle.optimizer.lr

    def make(base):
        return lr.LinearWarmup(lr.CosineAnnealingDecay(base, T_max=10), warmup_steps=2,
                               start_lr=0.0, end_lr=base)

    def at(sched, step):
        for _ in range(step):
            sched.step()
        return sched
    recorded = at(make(0.01), 5).state_dict()
    caplog.set_level(logging.WARNING)
    assert checkpoint.configured_schedule(make(0.01), recorded, "ck") == recorded
    assert caplog.text == ""
    lowered = checkpoint.configured_schedule(make(0.001), recorded, "ck")
    assert lowered == at(make(0.001), 5).state_dict() and lowered["last_lr"] < recorded["last_lr"] / 5
    assert "ck: continuing with the configured learning-rate schedule" in caplog.text
