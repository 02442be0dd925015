"""No tracked file names a machine's absolute path.

Recorded commands, JSON records and docs use paths relative to the repository
root (``configs/...``, ``output/...``) or a named placeholder (``$RUNS/...``,
defined at the top of the commands file). Only what must be absolute is
allowed (ALLOWED below). Reads ``git ls-files``; skips outside a git checkout.
"""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit  # no training, export or predictor (make test-unit)

ROOT = Path(__file__).resolve().parents[1]

# Top-level folders of a machine: a path starting with one of these, followed by a
# path segment, is machine-specific (home folders, work and scratch areas, temp dirs,
# mounts) or a system path that must be on ALLOWED.
MACHINE_ROOTS = ("work", "root", "home", "Users", "tmp", "mnt", "media", "scratch", "var",
                 "private", "Volumes", "opt", "srv", "nfs", "data", "run", "usr", "etc",
                 "proc", "dev", "sys", "bin", "sbin", "lib", "lib64", "shared")
# Not preceded by a character that makes it part of a relative path, a variable or a
# word ("tools/data/x", "${RUNS}/x", "../runs"); followed by a path segment.
ABS_PATH = re.compile(r"(?<![A-Za-z0-9_.~$}\-])/(?:" + "|".join(MACHINE_ROOTS) +
                      r")(?:/[A-Za-z0-9_.$~\-]+)+")
WINDOWS_PATH = re.compile(r"\b[A-Za-z]:[\\/](?:Users|Documents and Settings)[\\/]")

# What must be absolute. Exact paths (a match must equal one of them).
ALLOWED = {
    "/proc/cpuinfo",       # segqat/bench.py reads the CPU model
    "/proc/self/fd",       # tests/outputs/test_outputs.py finds the path of an open file
    "/dev/null",
    "/usr/bin/env",        # shebangs
    "/bin/sh",
    "/bin/bash",
}

BINARY_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".pdparams",
                   ".pdopt", ".pdmodel", ".pdiparams", ".onnx", ".bin", ".npy", ".npz",
                   ".gz", ".zip", ".pdf"}


def machine_paths(line, checkout=None):
    """The machine-specific absolute paths in one line of text."""
    found = [m.group(0) for m in ABS_PATH.finditer(line) if m.group(0) not in ALLOWED]
    found += [m.group(0) for m in WINDOWS_PATH.finditer(line)]
    if checkout and checkout in line:
        found.append(checkout)
    return found


def tracked_text_files():
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True, timeout=30).stdout
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        pytest.skip("not a git checkout")
    for rel in out.decode("utf-8", "surrogateescape").split("\0"):
        if not rel or Path(rel).suffix.lower() in BINARY_SUFFIXES:
            continue
        path = ROOT / rel
        if not path.is_file():  # deleted in the work tree, not yet committed
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue
        yield rel, data.decode("utf-8", "replace")


def test_no_machine_paths_in_tracked_files():
    checkout = os.fspath(ROOT)
    problems = []
    for rel, text in tracked_text_files():
        for number, line in enumerate(text.splitlines(), 1):
            for path in machine_paths(line, checkout):
                problems.append(f"{rel}:{number}: {path}   | {line.strip()[:160]}")
    assert not problems, (
        "absolute machine paths in tracked files (use a path relative to the repository "
        "root, or a placeholder such as $RUNS defined at the top of the file):\n"
        + "\n".join(problems))


def test_detector():
    """What is flagged and what is not (strings assembled so this file stays clean)."""
    w, t, h = "/" + "work", "/" + "tmp", "/" + "home"
    flagged = [f"cd {w}/main", f'"config": "{w}/main/configs/x.yml"', f"--save_dir {t}/kill_trials",
               f"`{h}/me/segqat`", f"--out_dir={t}/zoo_out", "C:" + "\\Users\\me\\x"]
    for line in flagged:
        assert machine_paths(line), line
    clean = ["python tools/data/convert_camvid.py --src ../shared/data/camvid",
             "--save_dir $RUNS/isbi_bisenetv2", "RUNS=${RUNS:-../runs}", "#!/usr/bin/env bash",
             'open("/proc/cpuinfo")', "> /dev/null", "/data/", "INT8 / FP32 0.5",
             'cd "$(dirname "$0")/.."', "https://github.com/alexgkendall/SegNet-Tutorial",
             r're.sub(r"/tmp/[^\s]*", "<tmp>", text)']
    for line in clean:
        assert not machine_paths(line), line
    assert machine_paths("x /some/checkout/README.md", checkout="/some/checkout")
