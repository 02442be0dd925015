"""kill -9 during checkpoint saves, N times; count corrupt checkpoints and stale temp folders.

    python benchmarks/safety/kill_trials.py --trials 20 --save_dir output/kill_trials

Each trial starts (or resumes) tools/train.py on synthetic data with a
checkpoint every iteration (so most of the run is spent saving), kills it
with SIGKILL at a random moment after a new checkpoint appeared, then checks
every checkpoint folder (three files, each readable by segqat's loader) and
resumes from the newest one. Temp folders the killed runs leave are counted
after the resumed run: that run must remove them. Writes results.json.
"""
import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, ROOT)

from segqat import datagen, outputs, weights  # noqa: E402


def check_checkpoints(out):
    bad = []
    for d in outputs.checkpoint_dirs(out) + [os.path.join(out, "best_model")]:
        if not os.path.isdir(d):
            continue
        files = sorted(os.listdir(d))
        expected = (["model.pdparams", "state.json"] if d.endswith("best_model")  # no optimizer state
                    else ["model.pdopt", "model.pdparams", "state.json"])
        if files != expected:
            bad.append(f"{d}: {files}")
            continue
        try:
            weights.load_state(os.path.join(d, "model.pdparams"))
            if "model.pdopt" in expected:
                weights.load_state(os.path.join(d, "model.pdopt"))
            with open(os.path.join(d, "state.json")) as f:
                json.load(f)
        except Exception as e:  # noqa: BLE001  (counted, reported)
            bad.append(f"{d}: {e}")
    return bad


def temps(out):
    return [e for e in os.listdir(out) if e.startswith(".") and e not in (outputs.MARKER, outputs.LOCK)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--save_dir", required=True, help="a new folder for the data, run and results")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.makedirs(args.save_dir, exist_ok=False)
    data = os.path.join(args.save_dir, "data")
    datagen.make_synthetic(data, num_train=16, num_val=4, size=64, num_classes=4, seed=0)
    cfg = os.path.join(args.save_dir, "c.yml")
    with open(cfg, "w") as f:
        f.write(f"_base_: {ROOT}/configs/bisenetv2/bisenetv2_synthetic_64x64.yml\n"
                f"train_dataset: {{dataset_root: {data}, train_path: {data}/train.txt}}\n"
                f"val_dataset: {{dataset_root: {data}, val_path: {data}/val.txt}}\n")
    out = os.path.join(args.save_dir, "run")
    rng = random.Random(args.seed)
    rows = []
    for t in range(args.trials):
        last = outputs.checkpoint_dirs(out)
        extra = ["--resume_model", last[-1]] if last else []
        cmd = [sys.executable, "tools/train.py", "--config", cfg, "--iters", "100000", "--batch_size", "2",
               "--save_interval", "1", "--log_iters", "1", "--keep_checkpoint_max", "2", "--do_eval",
               "--save_dir", out, *extra]
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        t0 = time.time()
        while True:
            now = outputs.checkpoint_dirs(out)
            if now and (not last or now[-1] != last[-1]):
                break
            if p.poll() is not None:
                raise SystemExit(f"trial {t}: the run exited with {p.returncode} before saving")
            if time.time() - t0 > 300:
                p.kill()
                raise SystemExit(f"trial {t}: no checkpoint after 300 s")
            time.sleep(0.05)
        delay = rng.uniform(0.0, 2.0)
        time.sleep(delay)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        bad = check_checkpoints(out)
        stale_before = temps(out)
        rows.append({"trial": t, "kill_after_s": round(delay, 3), "corrupt": bad,
                     "temp_folders_left_by_kill": stale_before,
                     "newest": os.path.basename(outputs.checkpoint_dirs(out)[-1])})
        print(json.dumps(rows[-1]), flush=True)
    # the next run resumes and must clean up
    last = outputs.checkpoint_dirs(out)[-1]
    it = int(os.path.basename(last)[5:])
    r = subprocess.run([sys.executable, "tools/train.py", "--config", cfg, "--iters", str(it + 1),
                        "--batch_size", "2", "--save_dir", out, "--resume_model", last], cwd=ROOT,
                       capture_output=True, text=True)
    summary = {
        "trials": args.trials,
        "corrupt_or_empty_checkpoints": sum(len(r_["corrupt"]) for r_ in rows),
        "trials_that_left_temp_folders": sum(1 for r_ in rows if r_["temp_folders_left_by_kill"]),
        "temp_folders_after_next_run": temps(out),
        "resume_after_last_kill_exit_code": r.returncode,
        "rows": rows,
    }
    with open(os.path.join(args.save_dir, "results.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    main()
