"""Two CPU processes (gloo) under paddle.distributed.launch end with identical weights."""
import re
import subprocess
import sys

from conftest import ROOT


def test_two_process_training(syn_cfg, tmp_path):
    out, logs = tmp_path / "out", tmp_path / "log"
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", str(logs),
           str(ROOT / "tools" / "train.py"), "--config", str(syn_cfg), "--iters", "4", "--batch_size", "2",
           "--log_iters", "2", "--save_interval", "4", "--do_eval", "--save_dir", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    worker = [(logs / f"workerlog.{i}").read_text() for i in (0, 1)]
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:] + worker[0][-2000:] + worker[1][-2000:]
    digests = [re.search(r"rank (\d)/2 trainable parameters sha1 (\w+), BatchNorm statistics sha1 (\w+)", w)
               for w in worker]
    assert all(digests) and [d.group(1) for d in digests] == ["0", "1"]
    assert digests[0].group(2) == digests[1].group(2), "gradients not all-reduced: weights differ"
    assert digests[0].group(3) != digests[1].group(3), "both ranks saw the same data (not sharded)"
    # only rank 0 logs training lines, evaluates and writes checkpoints
    assert "[TRAIN]" in worker[0] and "[TRAIN]" not in worker[1]
    assert "[EVAL] #Images" in worker[0] and "[EVAL]" not in worker[1]
    assert (out / "iter_4" / "model.pdparams").is_file() and (out / "best_model").is_dir()
