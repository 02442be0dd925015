"""Paddle Lite on x86: our exports converted to ``.nb`` by Lite's ``opt``, run by Lite's runtime.

    pred = create_predictor("output/qat_infer", runtime="lite", threads=1)
    pred.int8_ops()          # {'conv2d': 40, 'depthwise_conv2d': 8}: INT8 kernels opt chose
    python deploy/python/export_lite.py --config output/qat_infer --save_dir output/qat_lite

paddlelite (2.13rc0, the last release on PyPI) installs only into Python 3.8 / 3.10, and
segqat runs on 3.11, so Lite lives in its own environment (``make venv-lite``:
``.venv-lite`` at the repository root, or ``lite_python=`` another interpreter) and runs
in a child process (``lite_runner.py``): ``convert`` calls ``opt`` there, and the
predictor keeps one ``serve`` process that runs the ``.nb`` with ``MobileConfig`` /
``create_paddle_predictor``; batches go through its stdin/stdout as .npy bytes, and its
latency is the time of Lite's ``run()`` measured inside it (``timed_run``). A process serves
one input shape: Lite 2.13rc0's x86 conv kernels are prepared for the size of the first run,
and compute wrong results for a larger input and abort on a smaller one (docs/limits.md), so a
batch of another shape gets a new process.

An INT8 export is converted for x86 from a copy whose int8 weights are requantized to 7 bits
(``compat.lite_x86_int8_copy``): Lite's x86 int8 GEMM adds pairs of u8 x s8 products in a
saturating int16 and is wrong on the full 8-bit range. The check below compares it with the
export as it is.

The proof of INT8 is the model ``opt`` wrote: every op of a ``.nb`` carries the kernel Lite
picked, ``op/alias/target/precision/layout`` (``conv2d/int8_out/2/2/1``: X86, INT8, NCHW);
``int8_ops`` counts the compute ops whose kernel precision is INT8. As every runtime that
converts, the predictor runs a check batch first and is refused if its labels agree with
Paddle's run of the export (FP32, or fake quantization for INT8) on fewer than
``min_agreement`` of the pixels (``parity.check``).

Only the x86 build of Lite is on PyPI: an ``.nb`` for ``arm`` (``convert(..., "arm")``)
is written, not run (docs/limits.md).
"""
import io
import json
import logging
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections import Counter

import numpy as np

from . import parity
from .contract import DeployError, Predictor

logger = logging.getLogger(__name__)

OPTIONS = ("lite_python", "check_images", "min_agreement")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_PYTHON = os.path.join(ROOT, ".venv-lite", "bin", "python")
RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lite_runner.py")
TARGETS = ("x86", "arm")
CONVERT_TIMEOUT = 600  # s; opt takes seconds on the models here
# Lite's enums (paddlelite.lite.TargetType / PrecisionType) as written in kernel strings
TARGET_CODES = {1: "host", 2: "x86", 4: "arm", 6: "any"}
PRECISION_INT8 = 2
# compute ops whose INT8 kernel is the point of an INT8 model (calib ops are conversions)
COMPUTE_OPS = {"conv2d", "depthwise_conv2d", "conv2d_transpose", "fc", "mul", "matmul", "matmul_v2"}
_KERNEL_RE = re.compile(rb"(?s)(.{4})([a-z][a-z0-9_]*/[a-z0-9_]+/\d{1,2}/\d{1,2}/\d{1,2})(?=\x00)")


def lite_python(path=None):
    """The Lite environment's Python: ``path``, or .venv-lite at the repository root."""
    path = path or DEFAULT_PYTHON
    if not os.path.isfile(path):
        raise DeployError(f"--runtime lite: Paddle Lite's Python {path} is missing; create it with "
                          "`make venv-lite` (paddlelite 2.13rc0 in a Python 3.10 venv), or give "
                          "lite_python=PATH / --lite_python")
    return path


def _child_env(threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.pop("PYTHONPATH", None)  # segqat's 3.11 packages must not leak into Lite's 3.10
    return env


def _tail(text, n=6):
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " | ".join(lines[-n:]) or "(no output)"


def version(python=None):
    """paddlelite's version in the Lite environment (e.g. '2.13rc0')."""
    code = "import importlib.metadata as m; print(m.version('paddlelite'))"
    proc = subprocess.run([lite_python(python), "-c", code], capture_output=True, text=True,
                          env=_child_env(1), timeout=120)
    if proc.returncode:
        raise DeployError(f"{lite_python(python)} has no paddlelite: {_tail(proc.stderr, 2)}")
    return proc.stdout.strip()


def convert(dep, out_nb, target="x86", python=None, model_file=None, params_file=None):
    """Write the export ``dep`` (load_deploy_config's dict) as a Lite model ``out_nb`` (.nb)
    for ``target`` with ``opt``; returns its kernels (``nb_kernels``). ``model_file`` /
    ``params_file``: convert these instead of the export's own files (a rewritten copy)."""
    if target not in TARGETS:
        raise DeployError(f"--valid_targets {target!r}: choose from {', '.join(TARGETS)}")
    if not out_nb.endswith(".nb"):
        raise DeployError(f"{out_nb}: a Lite model's file name ends with .nb")
    cmd = [lite_python(python), RUNNER, "convert", model_file or dep["model_file"],
           params_file or dep["params_file"], out_nb[:-len(".nb")], target]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_child_env(1),
                              timeout=CONVERT_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        raise DeployError(f"{dep['model_file']}: Paddle Lite's opt did not finish in "
                          f"{CONVERT_TIMEOUT} s") from e
    if proc.returncode or not os.path.isfile(out_nb):
        raise DeployError(f"{dep['model_file']}: Paddle Lite's opt cannot convert it for {target} "
                          f"(exit status {proc.returncode}): {_tail(proc.stdout + proc.stderr)}")
    kernels = nb_kernels(out_nb)
    logger.info("opt wrote %s (%s, %.2f MB, %d ops)", out_nb, target, os.path.getsize(out_nb) / 2**20,
                sum(kernels.values()))
    return kernels


def nb_version(path):
    """The opt version a .nb was written by ('v2.13-rc'), or None if it is not a Lite model:
    a naive-buffer model starts with a uint16 meta version and opt's version string."""
    with open(path, "rb") as f:
        head = f.read(18)
    if len(head) < 18 or not head[2:4] == b"v2":
        return None
    return head[2:].split(b"\x00")[0].decode("ascii", "replace")


def nb_kernels(path):
    """Counter of the kernels in a .nb: {(op, alias, target, precision code, layout code): n}.
    Kernel strings are stored length-prefixed (uint32), which tells them from other bytes."""
    if nb_version(path) is None:
        raise DeployError(f"{path} is not a Paddle Lite model (.nb written by opt)")
    with open(path, "rb") as f:
        data = f.read()
    out = Counter()
    for m in _KERNEL_RE.finditer(data):
        if struct.unpack("<I", m.group(1))[0] == len(m.group(2)):
            op, alias, target, prec, layout = m.group(2).decode().split("/")
            out[(op, alias, TARGET_CODES.get(int(target), target), int(prec), int(layout))] += 1
    if not out:
        raise DeployError(f"{path}: no kernel found in the Lite model")
    return out


def int8_kernels(kernels):
    """Counter {op: n} of compute ops whose kernel runs INT8."""
    c = Counter()
    for (op, _, _, prec, _), n in kernels.items():
        if prec == PRECISION_INT8 and op in COMPUTE_OPS:
            c[op] += n
    return c


def nb_target(kernels):
    """The device a .nb's kernels are for ('x86', 'arm'); host/any kernels run anywhere."""
    found = {t for (_, _, t, _, _) in kernels} - {"host", "any"}
    return ",".join(sorted(found)) or "host"


class ShapeChanged(DeployError):
    """The Lite process was given another input size than its first (it refuses)."""


class LiteProcess:
    """A ``lite_runner.py serve`` child running one .nb, for one input shape."""

    def __init__(self, nb, threads, python=None, log_path=None):
        target = nb_target(nb_kernels(nb))
        if target != "x86":  # Lite's x86 runtime segfaults on an ARM model
            raise DeployError(f"{nb} holds {target} kernels; Paddle Lite's runtime here runs x86 "
                              "models only (convert with --valid_targets x86)")
        self.nb = nb
        self.shape = None  # of the first batch; the process takes no other
        self._log = open(log_path or os.devnull, "w+b" if log_path else "wb")
        self.proc = subprocess.Popen([lite_python(python), RUNNER, "serve", nb], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log, env=_child_env(threads))
        self._reply("loading it")

    def _failure(self, doing):
        try:
            code = self.proc.wait(timeout=5)  # it closed its stdout: dying, or dead
        except subprocess.TimeoutExpired:
            code = None
        log = ""
        if self._log.mode == "w+b":
            self._log.seek(0)
            log = _tail(self._log.read().decode("utf-8", "replace"), 3)
        how = f"died (exit status {code})" if code is not None else "did not answer"
        return DeployError(f"{self.nb}: Paddle Lite's runtime {how} while {doing}: {log or 'no message'}")

    def _reply(self, doing):
        line = self.proc.stdout.readline()
        if not line:
            raise self._failure(doing)
        header = json.loads(line)
        if header.get("shape_changed"):
            raise ShapeChanged(f"{self.nb}: {header['error']}")
        if not header.get("ok"):
            raise DeployError(f"{self.nb}: Paddle Lite failed while {doing}: {header.get('error')}")
        payload = self.proc.stdout.read(header["bytes"]) if "bytes" in header else None
        return header, payload

    def _send(self, request, batch, doing):
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(batch, dtype=np.float32))
        try:
            self.proc.stdin.write((json.dumps(dict(request, bytes=buf.tell())) + "\n").encode())
            self.proc.stdin.write(buf.getvalue())
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise self._failure(doing) from None
        return self._reply(doing)

    def run(self, batch):
        """(output array, seconds of Lite's run() alone)."""
        header, payload = self._send({"cmd": "run"}, batch, f"running a {tuple(batch.shape)} batch")
        self.shape = self.shape or tuple(batch.shape)
        return np.load(io.BytesIO(payload)), header["seconds"]

    def times(self, batch, warmup, repeats):
        header, _ = self._send({"cmd": "time", "warmup": int(warmup), "repeats": int(repeats)}, batch,
                               "timing")
        self.shape = self.shape or tuple(batch.shape)
        return header["times"]

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b'{"cmd": "quit"}\n')
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self._log.close()


class LitePredictor(Predictor):
    runtime = "lite"

    def __init__(self, dep, precision, threads, verbose=False, lite_python=None, check_images=None,
                 min_agreement=parity.MIN_AGREEMENT):
        super().__init__(dep, precision, threads)
        if precision == "fp16":
            raise DeployError("--runtime lite: --precision fp16 is not offered on x86")
        if not 0 <= float(min_agreement) <= 1:
            raise DeployError(f"min_agreement must be in [0, 1] (0: report, never refuse), "
                              f"got {min_agreement!r}")
        self.python = lite_python
        self.agreement = None
        self.process = None
        self.version = version(lite_python)
        self.tmp = tempfile.mkdtemp(prefix="segqat_lite_")
        try:
            self.nb = os.path.join(self.tmp, "model.nb")
            files = {}
            if precision == "int8":  # Lite's x86 int8 GEMM saturates on 8-bit weights
                from .. import compat
                n = compat.lite_x86_int8_copy(dep["model_file"], dep["params_file"], self.tmp)
                logger.info("Paddle Lite x86: %d int8 weights requantized to 7 bits "
                            "(compat.lite_x86_int8_copy)", n)
                files = {"model_file": os.path.join(self.tmp, "model.pdmodel"),
                         "params_file": os.path.join(self.tmp, "model.pdiparams")}
            self.kernels = convert(dep, self.nb, "x86", lite_python, **files)
            self._check_int8()
            self.verbose = verbose
            self.process = self._start()
            batch = parity.check_batch(dep, self.preprocess, check_images)
            self.agreement = parity.check(dep, self._run, batch, float(min_agreement),
                                          synthetic=not check_images, runtime="Paddle Lite")
        except BaseException:
            self.close()
            raise

    def int8_ops(self):
        return int8_kernels(self.kernels)

    def describe(self):
        return (super().describe() + f", paddlelite {self.version}, labels agree with Paddle on "
                f"{self.agreement:.2%} of check pixels")

    def _start(self):
        return LiteProcess(self.nb, self.threads, self.python,
                           os.path.join(self.tmp, "lite.log") if not self.verbose else None)

    def _process_for(self, batch):
        """The Lite process for this batch's shape: a new one when the shape changes (Lite
        2.13rc0's x86 kernels are right only for the input size of their first run)."""
        if self.process.shape not in (None, tuple(batch.shape)):
            logger.debug("Paddle Lite: input %s after %s, new process", tuple(batch.shape),
                         self.process.shape)
            self.process.close()
            self.process = self._start()
        return self.process

    def _run(self, batch):
        out, self.last_run_seconds = self._process_for(batch).run(batch)
        return out

    def timed_run(self, batch):
        """Seconds of Lite's own run() (not the transfer to and from its process)."""
        self.run(batch)
        return self.last_run_seconds

    def benchmark(self, batch, warmup=10, repeats=50):
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return self._process_for(batch).times(batch, warmup, repeats)

    def close(self):
        if self.process is not None:
            self.process.close()
            self.process = None
        if getattr(self, "tmp", None):
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

