"""Model zoo: every PaddleSeg 2.8 model family through FP32 -> QAT -> INT8, one table row each.

    python tools/zoo.py --phase build --cpu_threads 1          # train, QAT, export, INT8 inference
    python tools/zoo.py --phase latency                        # later, on an idle machine (2 threads)
    python tools/zoo.py --models ann pspnet --phase all        # some entries, both phases
    make zoo                                                   # the build phase for every entry

Entries are the configs in ``configs/zoo/`` (one per family, ``pretrained:
null``, synthetic 64x64 data with 4 classes; its ``iters`` and ``batch_size``
are the FP32 training length). For each entry the build phase runs, each step
a subprocess with a timeout so that a model that hangs or crashes costs only
its own row:

1. ``fp32_train``  tools/train.py for the config's ``iters`` (or ``--fp32_iters``)
2. ``qat_train``   slim/quant/qat_train.py from those weights, ``iters / 4``
   (or ``--qat_iters``) at a tenth of the config's learning rate
3. ``fp32_export`` tools/export.py; 4. ``int8_export`` slim/quant/qat_export.py
5. ``evaluate``    on the validation images, with the deployed predictors
   (segqat.deploy, segqat.report): the INT8 predictor must prove INT8 kernels
   in its optimized program; pixel agreement of the deployed INT8 model with
   its fake-quant (QAT, dygraph) model; mIoU of FP32, fake-quant and INT8;
   params size INT8/FP32; convolutions running INT8 out of all convolutions in
   the optimized program.

The latency phase (``latency`` step) times the FP32 and INT8 exports with
Paddle Inference, oneDNN, interleaved runs (segqat.bench), batch 1, at
1x3x512x1024, or 1x3x512x512 where the model fails at that size, with
``--latency_threads`` (2) threads; until it has run, the table says "not
measured". Run it alone on an idle machine (it warns when the load average
says otherwise, and records the load in latency.json).

A row is ✓ when the exports and INT8 inference worked, INT8 kernels were
proven, the deployed INT8 model agrees with its fake-quant model on at least
99% of the pixels, and the FP32 model is trained enough for that agreement to
mean something (its mIoU at least 10 points above labelling every pixel with
the most frequent class: below that the model labels nearly every pixel
alike, and agrees with anything). Every ✗ carries the first lines of the real
error, or the numbers that failed the rule. State is kept per entry and step
in ``work_dir/state.json``: an interrupted zoo (Ctrl-C, SIGTERM) stops its
steps and resumes where it stopped; finished steps are skipped, failed ones
re-run with ``--retry_failed``, ``--rerun_steps evaluate`` re-runs a step that
succeeded (the steps built on a re-run step's output run again too), other
``--fp32_iters``/``--qat_iters`` than before re-train, and an entry whose
config file changed starts over. Two zoo runs cannot share a work dir (a lock
file). ``out_dir`` receives ``zoo.md``, ``zoo.json`` and ``zoo.png`` after
every finished entry.
"""
import datetime
import glob
import hashlib
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

from . import bench

logger = logging.getLogger(__name__)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BUILD_STEPS = ("fp32_train", "qat_train", "fp32_export", "int8_export", "evaluate")
LATENCY_STEPS = ("latency",)
PHASES = {"build": BUILD_STEPS, "latency": LATENCY_STEPS, "all": BUILD_STEPS + LATENCY_STEPS,
          "report": ()}
MIN_AGREEMENT = 0.99
# a Paddle Inference row whose clear-margin pixels differ is put down to oneDNN's INT8
# requantization when OpenVINO, running the same export, agrees on at least this share of them
ONEDNN_CAUSE_CLEAR = 0.995
# a row is measured only on a model whose FP32 mIoU beats "every pixel is the most frequent
# class" by this much: below it the model labels (nearly) every pixel alike (see predicted_classes)
MIN_MIOU_GAIN = 0.10
# runtimes that also run each entry's exports in the evaluate step (beside Paddle Inference,
# which decides ✓): OpenVINO executes the export's own quantize/dequantize placement, so it
# tells whether a Paddle Inference mismatch is in the export or in oneDNN's INT8 passes
CROSS_CHECK_RUNTIMES = ("openvino",)
LATENCY_SHAPES = ([1, 3, 512, 1024], [1, 3, 512, 512])
# op types of the optimized oneDNN program that are convolutions
CONV_OPS = {"conv2d", "depthwise_conv2d", "fused_conv2d", "conv2d_transpose",
            "fused_conv2d_transpose", "depthwise_conv2d_transpose"}


# what each step reads: the output of these steps
NEEDS = {"qat_train": ("fp32_train",), "fp32_export": ("fp32_train",), "int8_export": ("qat_train",),
         "evaluate": ("qat_train", "fp32_export", "int8_export"), "latency": ("fp32_export", "int8_export")}


def dependents(step):
    """Steps that use ``step``'s output, directly or not."""
    out = {s for s, needs in NEEDS.items() if step in needs}
    for s in list(out):
        out |= dependents(s)
    return out


class ZooError(ValueError):
    pass


# ------------------------------------------------------------------ entries

def discover(config_dir, models=None):
    """``{name: config path}`` of ``config_dir/*.yml``, restricted to ``models`` if given."""
    found = {os.path.splitext(os.path.basename(p))[0]: p
             for p in sorted(glob.glob(os.path.join(config_dir, "*.yml")))}
    if not found:
        raise ZooError(f"--config_dir {config_dir}: no *.yml configs in it")
    if models:
        unknown = [m for m in models if m not in found]
        if unknown:
            raise ZooError(f"--models {' '.join(unknown)}: no such entry in {config_dir}. "
                           f"Valid: {', '.join(found)}")
        found = {m: found[m] for m in models}
    return found


def _file_hash(path):
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()[:12]


class Plan:
    """What the steps of one entry run with: iterations, learning rates, paths."""

    def __init__(self, name, config, work_dir, fp32_iters=None, qat_iters=None):
        from .config import load_config
        cfg = load_config(config)
        self.name, self.config = name, config
        self.dir = os.path.join(work_dir, name)
        self.fp32_iters = int(fp32_iters or cfg.iters)
        self.qat_iters = int(qat_iters or max(self.fp32_iters // 4, 1))
        self.batch_size = int(cfg.batch_size)
        self.lr = float(cfg["lr_scheduler"]["learning_rate"])
        self.qat_lr = self.lr / 10
        self.model_type = cfg["model"]["type"]
        self.data_root = (cfg.get("train_dataset") or {}).get("dataset_root", "")

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    @property
    def fp32_weights(self):
        return self.path("fp32", f"iter_{self.fp32_iters}", "model.pdparams")

    @property
    def qat_weights(self):
        return self.path("qat", f"iter_{self.qat_iters}", "model.pdparams")


def step_command(step, plan, args):
    """(argv, output dir) of one step; argv starts with the Python interpreter."""
    def script(rel):
        return [sys.executable, os.path.join(ROOT, rel)]
    th = str(args.latency_threads if step == "latency" else args.cpu_threads)
    entry = ["--models", plan.name, "--config_dir", os.path.dirname(plan.config),
             "--work_dir", os.path.dirname(plan.dir), "--cpu_threads", th]
    if step == "fp32_train":
        n = plan.fp32_iters
        return script("tools/train.py") + [
            "--config", plan.config, "--iters", n, "--save_interval", n, "--keep_checkpoint_max", 1,
            "--log_iters", max(n // 10, 1), "--cpu_threads", th, "--seed", 0,
            "--save_dir", plan.path("fp32")], plan.path("fp32")
    if step == "qat_train":
        n = plan.qat_iters
        return script("slim/quant/qat_train.py") + [
            "--config", plan.config, "--model_path", plan.fp32_weights, "--iters", n,
            "--learning_rate", f"{plan.qat_lr:g}", "--save_interval", n, "--keep_checkpoint_max", 1,
            "--log_iters", max(n // 5, 1), "--cpu_threads", th, "--seed", 0,
            "--save_dir", plan.path("qat")], plan.path("qat")
    if step == "fp32_export":
        return script("tools/export.py") + [
            "--config", plan.config, "--model_path", plan.fp32_weights,
            "--save_dir", plan.path("fp32_infer")], plan.path("fp32_infer")
    if step == "int8_export":
        return script("slim/quant/qat_export.py") + [
            "--config", plan.config, "--model_path", plan.qat_weights,
            "--save_dir", plan.path("int8_infer")], plan.path("int8_infer")
    if step == "evaluate":
        extra = ["--num_images", args.num_images] if args.num_images else []
        return script("tools/zoo.py") + ["--step", "evaluate"] + entry + extra, plan.path("evaluate")
    if step == "latency":
        return script("tools/zoo.py") + ["--step", "latency"] + entry + [
            "--warmup", args.warmup, "--repeats", args.repeats], plan.path("latency")
    raise ZooError(f"unknown step {step!r}; valid: {', '.join(BUILD_STEPS + LATENCY_STEPS)}")


# ------------------------------------------------------------------ state

class State:
    """``work_dir/state.json``: {entry: {"config_hash", "steps": {step: record}}}, written atomically."""

    def __init__(self, work_dir):
        self.path = os.path.join(work_dir, "state.json")
        self.lock = threading.Lock()
        self.data = {}
        if os.path.isfile(self.path):
            with open(self.path) as f:
                self.data = json.load(f)

    def entry(self, name, config_hash):
        with self.lock:
            e = self.data.get(name)
            if e is None or e.get("config_hash") != config_hash:
                if e is not None:
                    logger.info("%s: config changed since the last run, starting the entry over", name)
                e = self.data[name] = {"config_hash": config_hash, "steps": {}}
            return e

    def set_step(self, name, step, record):
        with self.lock:
            self.data[name]["steps"][step] = record
            self._save()

    def drop_step(self, name, step):
        with self.lock:
            if self.data[name]["steps"].pop(step, None) is not None:
                self._save()

    def update(self, name, **kw):
        with self.lock:
            self.data[name].update(kw)
            self._save()

    def _save(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1)
        os.replace(tmp, self.path)


# ------------------------------------------------------------------ running a step

_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|error))(: .*)?$")
_LOGGED_ERROR = re.compile(r"\[ERROR\] (.*)$")
_FRAME = re.compile(r'^\s*File "([^"]+)", line (\d+), in (\S+)')


def error_reason(log_text, max_len=400):
    """The first line(s) of the real error in a step's log: the exception (or the error a
    script logged) and the innermost traceback frame; None if the log shows none."""
    lines = log_text.splitlines()
    exc, where = None, None
    for i in range(len(lines) - 1, -1, -1):
        ln = lines[i].rstrip()
        m = _LOGGED_ERROR.search(ln)
        if m and exc is None:
            exc = m.group(1)
            break
        if _EXC_LINE.match(ln) and not ln.startswith(("Warning", "UserWarning", "DeprecationWarning")):
            exc = ln
            for j in range(i - 1, max(i - 60, -1), -1):
                fm = _FRAME.match(lines[j])
                if fm:
                    path = fm.group(1)
                    path = (os.path.relpath(path, ROOT) if path.startswith(ROOT)
                            else path.split("site-packages/")[-1])
                    where = f"{path}:{fm.group(2)} in {fm.group(3)}"
                    break
            break
    if exc is None:
        return None
    if exc.rstrip().endswith("In transformed code:"):
        # dy2static puts the original error, indented, below its source excerpt
        inner = [m.group(1) for m in (re.match(r"^\s+(\w+(?:Error|Exception): .*)$", ln) for ln in lines) if m]
        if inner:
            head = exc.rstrip()[:-len("In transformed code:")].rstrip()
            kind = inner[-1].split(":", 1)[0]
            if head.endswith(kind + ":"):
                head = head[:-len(kind) - 1].rstrip()
            exc = f"{head} {inner[-1].strip()}"
    exc = re.sub(r"\s+", " ", exc)
    if len(exc) > max_len:
        exc = exc[:max_len] + " ..."
    return f"{exc} (at {where})" if where else exc


def _last_line(text):
    for ln in reversed(text.splitlines()):
        if ln.strip():
            return ln.strip()[:200]
    return ""


_RUNNING = set()             # step processes under way
_STOPPING = threading.Event()  # set when the zoo is interrupted


def _stop_running_steps():
    _STOPPING.set()
    for proc in list(_RUNNING):
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # a step this zoo started, in its own group
        except ProcessLookupError:
            pass


def run_step(step, plan, args, timeout):
    """Run one step as a subprocess; returns its state record (None if the zoo was interrupted)."""
    argv, out_dir = step_command(step, plan, args)
    argv = [str(a) for a in argv]
    if os.path.isdir(out_dir):  # an unfinished earlier attempt: its output is not trusted
        shutil.rmtree(out_dir)
    os.makedirs(plan.dir, exist_ok=True)
    log_path = plan.path(f"{step}.log")
    threads = args.latency_threads if step == "latency" else args.cpu_threads
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    t0 = time.time()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(argv) + "\n")
        log.flush()
        proc = subprocess.Popen(argv, cwd=os.getcwd(), stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
        _RUNNING.add(proc)
        try:
            rc = proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the step's own process group
            rc = proc.wait()
            timed_out = True
        finally:
            _RUNNING.discard(proc)
    if _STOPPING.is_set():  # the zoo was interrupted: this step did not finish, resume re-runs it
        return None
    secs = time.time() - t0
    with open(log_path, errors="replace") as f:
        text = f.read()
    rec = {"status": "ok", "seconds": round(secs, 1), "log": os.path.relpath(log_path),
           "finished": datetime.datetime.now().isoformat(timespec="seconds"),
           "command": " ".join(argv[1:])}
    if timed_out:
        rec.update(status="failed", reason=f"{step} timed out after {timeout} s (no result; last log line: "
                                           f"{_last_line(text)!r})")
    elif rc != 0:
        why = error_reason(text)
        if why is None:
            why = (f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}") + \
                  f" (last log line: {_last_line(text)!r})"
        rec.update(status="failed", reason=f"{step}: {why}", returncode=rc)
    else:
        result_file = os.path.join(out_dir, f"{step}.json")
        if step in ("evaluate", "latency"):
            if not os.path.isfile(result_file):
                rec.update(status="failed", reason=f"{step} wrote no {result_file}")
            else:
                with open(result_file) as f:
                    rec["result"] = json.load(f)
        for need in {"fp32_train": [plan.fp32_weights], "qat_train": [plan.qat_weights],
                     "fp32_export": [plan.path("fp32_infer", "deploy.yaml")],
                     "int8_export": [plan.path("int8_infer", "deploy.yaml")]}.get(step, []):
            if not os.path.isfile(need):
                rec.update(status="failed", reason=f"{step} finished but {need} is missing")
    return rec


# ------------------------------------------------------------------ the runner

def run_zoo(args):
    """Run ``args.phase`` for the selected entries, then write the table. Returns the rows."""
    entries = discover(args.config_dir, args.models)
    steps = PHASES[args.phase]
    _STOPPING.clear()
    os.makedirs(args.work_dir, exist_ok=True)
    lock = _lock_work_dir(args.work_dir) if steps else None  # noqa: F841 (held until return)
    state = State(args.work_dir)
    if args.phase != "report":
        _ensure_data(entries)
    timeouts = {"fp32_train": args.train_timeout, "qat_train": args.train_timeout,
                "fp32_export": args.export_timeout, "int8_export": args.export_timeout,
                "evaluate": args.eval_timeout, "latency": args.eval_timeout}
    if "latency" in steps and os.getloadavg()[0] > 0.5:
        logger.warning("!!! load average %.2f: the machine is not idle, latencies will be distorted",
                       os.getloadavg()[0])
    phase_t0 = time.time()
    if steps:
        _log_run(args, "start")
    queue = list(entries.items())
    qlock = threading.Lock()

    def worker():
        while not _STOPPING.is_set():
            with qlock:
                if not queue:
                    return
                name, config = queue.pop(0)
            try:
                _run_entry(name, config, steps, state, args, timeouts)
            except Exception as e:  # a bug in one entry must not stop the zoo
                logger.exception("%s: %s", name, e)
            with qlock:
                write_outputs(state, entries_all(args), args)

    if steps:
        threads = [threading.Thread(target=worker, daemon=True)
                   for _ in range(max(1, min(args.jobs, len(queue))))]
        for t in threads:
            t.start()
        old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(0.5)
        except KeyboardInterrupt:
            logger.warning("Interrupted: stopping the running steps; the next run resumes from here")
            _stop_running_steps()
            for t in threads:
                t.join(30)
            raise
        finally:
            signal.signal(signal.SIGTERM, old_term)
        logger.info("Phase %s done in %.0f s", args.phase, time.time() - phase_t0)
        _log_run(args, "end", round(time.time() - phase_t0))
    rows = write_outputs(state, entries_all(args), args)
    return rows


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _lock_work_dir(work_dir):
    """An exclusive lock on work_dir/.lock: two zoo runs would overwrite each other's state.json."""
    import fcntl
    f = open(os.path.join(work_dir, ".lock"), "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        raise ZooError(f"--work_dir {work_dir}: another zoo run is using it (pid {f.read().strip() or '?'}); "
                       "wait for it to finish or give another --work_dir")
    f.truncate(0)
    f.write(str(os.getpid()))
    f.flush()
    return f


def _log_run(args, event, seconds=None):
    """Append this invocation to work_dir/runs.json (listed under the table)."""
    path = os.path.join(args.work_dir, "runs.json")
    runs = []
    if os.path.isfile(path):
        with open(path) as f:
            runs = json.load(f)
    runs.append({"event": event, "time": datetime.datetime.now().isoformat(timespec="seconds"),
                 "command": "python tools/zoo.py " + " ".join(getattr(args, "argv", None) or []),
                 "seconds": seconds})
    _write_json(path, runs)


def entries_all(args):
    """Every entry of config_dir (the table lists all, run or not)."""
    return discover(args.config_dir)


# data sets the zoo makes when a config names them and they are missing (folder name ->
# tools/data/make_synthetic.py flags); configs/_base_/synthetic_zoo.yml says the same
SYNTHETIC_SETS = {"synthetic": [],
                  "synthetic_zoo": ["--object_size", "0.2", "0.4", "--colour_jitter", "30"]}


def _ensure_data(entries):
    roots = set()
    for config in entries.values():
        try:
            from .config import load_config
            roots.add((load_config(config).get("train_dataset") or {}).get("dataset_root", ""))
        except Exception:  # reported by the entry's own steps
            pass
    for root in roots:
        name = os.path.basename(os.path.normpath(root)) if root else ""
        if name in SYNTHETIC_SETS and not os.path.isdir(root):
            logger.info("Generating the synthetic data set in %s", root)
            subprocess.run([sys.executable, os.path.join(ROOT, "tools/data/make_synthetic.py"),
                            "--save_dir", root, *SYNTHETIC_SETS[name]], check=True)


def _run_entry(name, config, steps, state, args, timeouts):
    e = state.entry(name, _file_hash(config))
    # iterations: the flag, else what the finished training steps used, else the config's
    done = {s: e["steps"].get(s, {}).get("status") == "ok" for s in ("fp32_train", "qat_train")}
    rerun = set(args.rerun_steps or ())
    for s, key, flag in (("fp32_train", "fp32_iters", args.fp32_iters),
                         ("qat_train", "qat_iters", args.qat_iters)):
        if flag and done[s] and e.get(key) != flag:
            logger.info("%s: %s ran with %s iterations, --%s %d: running it again", name, s, e.get(key),
                        key, flag)
            rerun.add(s)
    fp32_iters = args.fp32_iters or (e.get("fp32_iters") if done["fp32_train"] else None)
    qat_iters = args.qat_iters or (e.get("qat_iters") if done["qat_train"] and "fp32_train" not in rerun
                                   else None)
    try:
        plan = Plan(name, config, args.work_dir, fp32_iters, qat_iters)
    except Exception as ex:
        state.set_step(name, "config", {"status": "failed", "reason": f"config: {type(ex).__name__}: {ex}"})
        logger.error("%s: config: %s", name, ex)
        return
    e["steps"].pop("config", None)
    state.update(name, config=config, model_type=plan.model_type, fp32_iters=plan.fp32_iters,
                 qat_iters=plan.qat_iters, batch_size=plan.batch_size, learning_rate=plan.lr,
                 qat_learning_rate=plan.qat_lr)
    rerun_steps = rerun
    stale = set()  # steps built on the output of a step that runs again in this invocation
    for step in steps:
        rec = e["steps"].get(step)
        rerun = step in stale or step in rerun_steps
        if rec and not rerun and (rec["status"] == "ok" or not args.retry_failed):
            logger.info("%s: %s already %s, skipped", name, step, rec["status"])
            continue
        missing = [r for r in NEEDS.get(step, ()) if e["steps"].get(r, {}).get("status") != "ok"]
        if missing:
            logger.info("%s: %s not run: %s did not succeed", name, step, ", ".join(missing))
            continue
        logger.info("%s: %s ...", name, step)
        state.drop_step(name, step)  # its output is about to be replaced
        for d in dependents(step):  # their results no longer match this step's output
            stale.add(d)
            state.drop_step(name, d)
        rec = run_step(step, plan, args, timeouts[step])
        if rec is None:
            return
        state.set_step(name, step, rec)
        if rec["status"] == "ok":
            logger.info("%s: %s ok (%.0f s)", name, step, rec["seconds"])
        else:
            logger.warning("%s: %s FAILED (%.0f s): %s", name, step, rec["seconds"], rec["reason"])
            if step != "latency":
                # later build steps need this one; latency failures do not stop anything
                break


# ------------------------------------------------------------------ in-process steps
# (called by tools/zoo.py --step ..., in the subprocess run_step starts)

def evaluate_entry(config, entry_dir, cpu_threads=1, num_images=None):
    """INT8 kernel proof, conv counts, agreement, mIoU and sizes of one entry -> evaluate/evaluate.json."""
    from . import deploy, report
    from .deploy.paddle_inference import quantized_weight_ops
    from .config import load_config
    cfg = load_config(config)
    out = os.path.join(entry_dir, "evaluate")
    os.makedirs(out, exist_ok=True)
    fp32_dir, int8_dir = os.path.join(entry_dir, "fp32_infer"), os.path.join(entry_dir, "int8_infer")
    qat = sorted(glob.glob(os.path.join(entry_dir, "qat", "iter_*", "model.pdparams")),
                 key=lambda p: int(p.split("iter_")[-1].split(os.sep)[0]))
    if not qat:
        raise ZooError(f"{entry_dir}/qat has no iter_N/model.pdparams (run qat_train first)")
    # create_predictor refuses (DeployError) when the optimized program has no INT8 kernel
    pred = deploy.create_predictor(int8_dir, precision="int8", threads=cpu_threads)
    ops = pred.optimized_op_types()
    pred.close()
    convs = {}
    for (t, dt), n in ops.items():
        if t in CONV_OPS:
            convs[f"{t}/{dt or '-'}"] = n
    int8_convs = sum(n for (t, dt), n in ops.items() if t in CONV_OPS and dt == "int8")
    all_convs = sum(convs.values())
    int8_ops = {t: n for (t, dt), n in ops.items() if dt == "int8"}
    # accuracy and agreement through the one benchmark path; its latency (one run at the
    # val image size) is not used: latency is the separate, idle-machine phase
    res = report.run_benchmark(cfg, {"FP32": fp32_dir, "INT8": int8_dir}, os.path.join(out, "benchmark"),
                               qat_model_path=qat[-1], cpu_threads=cpu_threads, warmup=0, repeats=1,
                               num_images=num_images)
    f, i = res["models"]["FP32"], res["models"]["INT8"]
    result = {"num_images": res["num_images"], "input_shape": res["input_shape"],
              "fp32_mIoU": f["mIoU"], "int8_mIoU": i["mIoU"], "fake_quant_mIoU": res["fake_quant"]["mIoU"],
              "agreement_int8_vs_fake_quant": i["agreement_with_fake_quant"],
              "agreement_int8_vs_fp32": i["agreement_with_fp32"],
              "agreement_clear_margin": i.get("agreement_with_fake_quant_clear_margin"),
              "clear_margin_share": i.get("clear_margin_share"),
              "disagreement_at_near_ties": i.get("fake_quant_disagreement_at_near_ties"),
              "near_tie": report.NEAR_TIE,
              "quantized_ops": dict(quantized_weight_ops(int8_dir)),
              "params_mb_fp32": f["params_mb"], "params_mb_int8": i["params_mb"],
              "params_ratio": i["params_mb"] / f["params_mb"], "num_params": f["num_params"],
              "int8_convs": int8_convs, "all_convs": all_convs, "conv_ops": convs, "int8_ops": int8_ops,
              **predicted_classes(res)}
    for rt in CROSS_CHECK_RUNTIMES:
        result[rt] = runtime_agreement(cfg, fp32_dir, int8_dir, os.path.join(out, f"benchmark_{rt}"), qat[-1],
                                       rt, cpu_threads, num_images)
    _write_json(os.path.join(out, "evaluate.json"), result)
    logger.info("%s: INT8 convs %d/%d, agreement with fake quant %.2f%%, params %.2f -> %.2f MB", entry_dir,
                int8_convs, all_convs, 100 * result["agreement_int8_vs_fake_quant"], f["params_mb"],
                i["params_mb"])
    return result


def runtime_agreement(cfg, fp32_dir, int8_dir, save_dir, qat_path, runtime, cpu_threads=1, num_images=None):
    """The evaluate comparison on another runtime: its INT8 kernels, mIoU and agreement with
    the fake-quant model, or ``{"error": ...}`` when that runtime cannot run the export (the
    row then says so; the traceback is in the step's log)."""
    from . import report
    try:
        res = report.run_benchmark(cfg, {"FP32": fp32_dir, "INT8": int8_dir}, save_dir, qat_model_path=qat_path,
                                   cpu_threads=cpu_threads, warmup=0, repeats=1, num_images=num_images,
                                   runtimes=(runtime,))
    except Exception as e:  # recorded in the row; the step itself succeeded on Paddle Inference
        logger.exception("%s: %s cannot run this export", int8_dir, runtime)
        return {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]}
    f, i = res["models"]["FP32"], res["models"]["INT8"]
    return {"fp32_mIoU": f["mIoU"], "int8_mIoU": i["mIoU"], "int8_kernels": i["int8_kernels"],
            "agreement_int8_vs_fake_quant": i["agreement_with_fake_quant"],
            "agreement_clear_margin": i.get("agreement_with_fake_quant_clear_margin"),
            "clear_margin_share": i.get("clear_margin_share"),
            "disagreement_at_near_ties": i.get("fake_quant_disagreement_at_near_ties"),
            "agreement_int8_vs_fp32": i["agreement_with_fp32"]}


def predicted_classes(bench_results):
    """How many classes the deployed FP32 and INT8 models predict anywhere (confusion-matrix
    columns with pixels), and the mIoU of labelling every pixel with the most frequent class:
    a model not clearly above that labels (nearly) every pixel alike, and agrees with anything
    built from it, so its agreement says nothing."""
    out = {}
    for name, key in (("FP32", "predicted_classes_fp32"), ("INT8", "predicted_classes_int8")):
        cm = bench_results["models"][name]["confusion_matrix"]
        out[key] = sum(1 for c in range(len(cm)) if sum(row[c] for row in cm) > 0)
    cm = bench_results["models"]["FP32"]["confusion_matrix"]
    per_label = [sum(row) for row in cm]
    out["majority_class_mIoU"] = max(per_label) / max(sum(per_label), 1) / len(cm)
    out["num_classes"] = len(cm)
    return out


def measure_latency(entry_dir, cpu_threads=2, warmup=3, repeats=10):
    """FP32 vs INT8 latency of one entry's exports, interleaved -> latency/latency.json.

    1x3x512x1024 first; a model that fails at that size is timed at 512x512 and
    the first error is kept."""
    import numpy as np
    from . import deploy
    out = os.path.join(entry_dir, "latency")
    os.makedirs(out, exist_ok=True)
    load_before = os.getloadavg()[0]
    host = bench.machine()
    preds = {"fp32": deploy.create_predictor(os.path.join(entry_dir, "fp32_infer"), precision="fp32",
                                         threads=cpu_threads),
             "int8": deploy.create_predictor(os.path.join(entry_dir, "int8_infer"), precision="int8",
                                         threads=cpu_threads)}
    result, errors = None, []
    for shape in LATENCY_SHAPES:
        x = np.random.RandomState(0).rand(*shape).astype("float32") * 2 - 1
        try:
            for p in preds.values():
                p.run(x)
        except Exception as e:  # noqa: BLE001 - recorded, then the smaller shape
            first = (str(e).strip().splitlines() or [""])[0][:300]
            errors.append(f"{'x'.join(map(str, shape))}: {type(e).__name__}: {first}")
            continue
        s = bench.summarize(bench.interleaved_latency(preds, x, warmup, repeats))
        result = {"input_shape": shape, "cpu_threads": cpu_threads, "warmup": warmup, "repeats": repeats,
                  "fp32_ms": s["fp32"]["median_ms"], "int8_ms": s["int8"]["median_ms"],
                  "fp32_p90_ms": s["fp32"]["p90_ms"], "int8_p90_ms": s["int8"]["p90_ms"],
                  "ratio": s["int8"]["median_ms"] / s["fp32"]["median_ms"], "errors": errors,
                  "load_average_1min": [load_before, os.getloadavg()[0]], "machine": host}
        break
    for p in preds.values():
        p.close()
    if result is None:
        raise ZooError("no input size worked: " + "; ".join(errors))
    _write_json(os.path.join(out, "latency.json"), result)
    logger.info("%s: FP32 %.1f ms, INT8 %.1f ms, INT8/FP32 %.2f at %s", entry_dir, result["fp32_ms"],
                result["int8_ms"], result["ratio"], result["input_shape"])
    return result


def _write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


# ------------------------------------------------------------------ table, json, plot

def _pct(fraction):
    """A percentage with 2 decimals, rounded down: 98.996% is 98.99%, not a 99.00% below 99%."""
    return f"{math.floor(fraction * 10000 + 1e-9) / 100:.2f}%"


def _margin_cause(ev):
    """Why deployed INT8 and fake quant differ: near ties (weak margins) or real differences,
    and what the same export does on OpenVINO."""
    clear = ev.get("agreement_clear_margin")
    if clear is None:  # evaluated before margins were measured
        return ""
    share, tie = 100 * ev["clear_margin_share"], ev["near_tie"]
    ties = ev.get("disagreement_at_near_ties") or 0
    ov = ev.get("openvino") or {}
    ov_clear, ov_all = ov.get("agreement_clear_margin"), ov.get("agreement_int8_vs_fake_quant")
    use_openvino = (f"; OpenVINO runs the same export at {_pct(ov_all)} ({100 * ov_clear:.2f}% on clear "
                    "margins): deploy with --runtime openvino") if (
        ov_all is not None and ov_clear is not None and ov_all >= MIN_AGREEMENT) else ""
    if clear >= MIN_AGREEMENT:
        return (f"; {100 * ties:.0f}% of the differing pixels are near ties (fake quant's top-2 "
                f"probability margin < {tie:g}) and on the {share:.0f}% of pixels with a "
                f"clear margin it agrees on {100 * clear:.2f}%: " + (
                    use_openvino[2:] if use_openvino else
                    "the model's margins are too small, train longer (--fp32_iters)"))
    # a fact, not a cause: in DeepLabV3P making its 3 FP32 convolutions INT8 (deleting the
    # residual-add fusion that left them without a scale) did not change the agreement
    quantized = sum(n for t, n in (ev.get("quantized_ops") or {}).items() if "conv" in t)
    convs = (f"{quantized - ev['int8_convs']} of the {quantized} convolutions QAT quantized run in FP32 "
             "after Paddle Inference's optimization" if quantized > ev["int8_convs"]
             else "every quantized convolution runs INT8")
    text = (f"; even on the {share:.0f}% of pixels with a clear margin (>= {tie:g}) it agrees "
            f"on only {100 * clear:.2f}%: the deployed INT8 program computes something other than "
            f"fake quant ({convs})")
    if ov_clear is not None and ov_clear >= ONEDNN_CAUSE_CLEAR:
        return text + (f". The export itself computes fake quant: OpenVINO runs it at "
                       f"{100 * ov_clear:.2f}% on those pixels, so the difference is made by Paddle "
                       "Inference's oneDNN INT8 passes (benchmarks/zoo/onednn_grid)" + (
                           use_openvino or f"; on OpenVINO the near ties leave {_pct(ov_all)} in all: "
                                           "train longer (--fp32_iters)"))
    return text + "; not explained by the export: " + (
        f"OpenVINO agrees on {100 * ov_clear:.2f}% of them too" if ov_clear is not None
        else "no other runtime measured")


def _runtime_status(ev, rt):
    """(✓/✗/"", reason) of the cross-check runtime ``rt`` on an evaluated entry, by the rules
    Paddle Inference's rows follow (INT8 kernels, agreement, a model trained enough)."""
    r = (ev or {}).get(rt)
    if not r:
        return "", "not measured"
    if "error" in r:
        return "✗", r["error"]
    if ev["fp32_mIoU"] < ev.get("majority_class_mIoU", 0) + MIN_MIOU_GAIN:
        return "✗", "not trained enough to measure"
    if not r["int8_kernels"]:
        return "✗", "no INT8 kernel"
    if r["agreement_int8_vs_fake_quant"] < MIN_AGREEMENT:
        clear = r.get("agreement_clear_margin")
        return "✗", ("near ties" if clear is not None and clear >= MIN_AGREEMENT else "clear-margin pixels differ")
    return "✓", ""


def entry_row(name, e, work_dir=None):
    """One table row from an entry's state: status, reason and the measured numbers."""
    steps = (e or {}).get("steps", {})
    row = {"model": name, "model_type": (e or {}).get("model_type"), "status": "✗", "reason": None,
           "fp32_iters": (e or {}).get("fp32_iters"), "qat_iters": (e or {}).get("qat_iters"),
           "batch_size": (e or {}).get("batch_size"),
           "build_seconds": round(sum(steps.get(s, {}).get("seconds", 0) for s in BUILD_STEPS), 1)}
    for s in ("config",) + BUILD_STEPS:
        rec = steps.get(s)
        if rec and rec["status"] != "ok":
            row["reason"] = rec["reason"]
            row["failed_step"] = s
            break
    ev = steps.get("evaluate", {}).get("result") if steps.get("evaluate", {}).get("status") == "ok" else None
    if ev and "majority_class_mIoU" not in ev and work_dir:  # evaluated before these fields existed
        path = os.path.join(work_dir, name, "evaluate", "benchmark", "results.json")
        if os.path.isfile(path):
            with open(path) as f:
                ev = dict(ev, **predicted_classes(json.load(f)))
    if ev:
        row.update(ev)
        if ev["fp32_mIoU"] < ev.get("majority_class_mIoU", 0) + MIN_MIOU_GAIN:
            row["reason"] = (f"not trained enough to measure: after {row['fp32_iters']} iterations FP32 mIoU "
                             f"{100 * ev['fp32_mIoU']:.1f} is not {100 * MIN_MIOU_GAIN:.0f} points above the "
                             f"{100 * ev['majority_class_mIoU']:.1f} of labelling every pixel with the most "
                             f"frequent class (FP32 predicts {ev['predicted_classes_fp32']} of "
                             f"{ev['num_classes']} classes), so the agreement "
                             f"({_pct(ev['agreement_int8_vs_fake_quant'])}) says little; train longer "
                             "(--fp32_iters)")
        elif ev["int8_convs"] == 0:
            row["reason"] = "no convolution runs INT8 in the optimized program"
        elif ev["agreement_int8_vs_fake_quant"] < MIN_AGREEMENT:
            row["reason"] = (f"deployed INT8 agrees with its fake-quant model on "
                             f"{_pct(ev['agreement_int8_vs_fake_quant'])} of pixels "
                             f"(< {100 * MIN_AGREEMENT:.0f}%)" + _margin_cause(ev))
        else:
            row["status"] = "✓"
    elif row["reason"] is None:
        done = [s for s in BUILD_STEPS if steps.get(s, {}).get("status") == "ok"]
        row["reason"] = "not built yet" + (f" (done: {', '.join(done)})" if done else "")
        row["status"] = "…"
    for rt in CROSS_CHECK_RUNTIMES:
        if ev and ev.get(rt):
            row[f"{rt}_status"], row[f"{rt}_reason"] = _runtime_status(ev, rt)
    lat = steps.get("latency")
    if lat and lat["status"] == "ok":
        row["latency"] = lat["result"]
    elif lat:
        row["latency_error"] = lat["reason"]
    return row


def _iteration_groups(rows):
    groups = {}
    for r in rows:
        if r.get("fp32_iters"):
            key = f"{r['fp32_iters']} / {r['qat_iters']} (batch {r['batch_size']})"
            groups.setdefault(key, []).append(r["model"])
    return groups


def _majority_text(rows):
    values = sorted({round(100 * r["majority_class_mIoU"], 1) for r in rows if r.get("majority_class_mIoU")})
    return f", {' / '.join(map(str, values))} here" if values else ""


RUNTIME_NAMES = {"paddle": "Paddle Inference", "openvino": "OpenVINO", "onnxruntime": "ONNX Runtime"}


def _cross_check_cell(row, rt):
    """Table cell of a cross-check runtime: status, agreement (clear-margin agreement), or why not."""
    status = row.get(f"{rt}_status")
    if not status:
        return "not measured"
    r = row[rt]
    if "error" in r:
        return f"✗ {r['error']}".replace("|", "\\|")
    text = f"{status} {_pct(r['agreement_int8_vs_fake_quant'])}"
    if r.get("agreement_clear_margin") is not None:
        text += f" ({100 * r['agreement_clear_margin']:.2f}%)"
    return text + (f", {row[f'{rt}_reason']}" if row.get(f"{rt}_reason") else "")


def _cross_check_summary(rows):
    parts = []
    for rt in CROSS_CHECK_RUNTIMES:
        measured = [r for r in rows if r.get(f"{rt}_status")]
        ok = sum(r[f"{rt}_status"] == "✓" for r in measured)
        both = sum(r[f"{rt}_status"] == "✓" and r["status"] == "✓" for r in measured)
        parts.append(f"{RUNTIME_NAMES[rt]}, running the same INT8 exports (the last column; by the same rules, "
                     f"its INT8 output against the same fake-quant model): {ok} of the {len(measured)} entries it "
                     f"ran ✓, {both} of them also ✓ on Paddle Inference"
                     + (f"; the other {len(rows) - len(measured)} entries were evaluated before it was added "
                        "(rebuilding them, or `--rerun_steps evaluate` where their work dir is kept, adds it)"
                        if len(measured) < len(rows) else ""))
    return "Status ✓/✗ is Paddle Inference's. " + ". ".join(parts) + "."


def markdown(rows, meta):
    ok = sum(r["status"] == "✓" for r in rows)
    built = sum(r["status"] != "…" for r in rows)
    lines = [
        "# Model zoo: PaddleSeg 2.8 families, FP32 -> QAT -> INT8 (Paddle Inference, oneDNN)", "",
        f"{ok} of {len(rows)} entries ✓ ({built} built). Last written on {meta['updated']} by "
        f"`{meta['command']}`; paddle {meta.get('paddle', '?')}.", "",
        _cross_check_summary(rows), "",
        "Each entry (configs/zoo/<model>.yml) is trained from scratch on the zoo's synthetic data "
        "(configs/_base_/synthetic_zoo.yml: 64x64, 4 classes, large objects, 200 train / 40 val images; "
        "AdamW at 0.002, the transformer families with their own AdamW settings): FP32 for the "
        "iterations below, then QAT from those weights for a quarter of them at a tenth of the "
        "learning rate, then exported (FP32 and INT8) and run with Paddle Inference on the validation "
        "images. ✓: INT8 kernels proven in the optimized program, the deployed INT8 model agrees with "
        "its fake-quant model on >= 99% of pixels, and the FP32 model is trained enough for that to "
        f"mean something (mIoU >= {100 * MIN_MIOU_GAIN:.0f} points above labelling every pixel with the "
        f"most frequent class{_majority_text(rows)}). Below 99%, the reason says whether the differing "
        "pixels are near ties (fake quant's top-2 softmax probabilities within 0.1: small margins, "
        "train longer) or not (the INT8 program computes something else); the agreement column gives "
        "the agreement on the pixels with a clear margin in brackets. mIoU values are of small, "
        "briefly trained models: they only compare FP32, fake-quant and INT8 with each other.", "",
        "Training lengths (FP32 / QAT iterations, batch size): "
        + "; ".join(f"{k}: {', '.join(v)}" for k, v in _iteration_groups(rows).items()) + ".", "",
        "| model | | FP32 / QAT iters (batch) | mIoU FP32 / fake-quant / INT8 | INT8 vs fake-quant | "
        "INT8 convs | params INT8/FP32 | INT8/FP32 latency | build (s) | reason | "
        + " | ".join(f"{RUNTIME_NAMES[rt]} INT8 vs fake-quant" for rt in CROSS_CHECK_RUNTIMES) + " |",
        "|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(CROSS_CHECK_RUNTIMES)]
    for r in rows:
        it = (f"{r['fp32_iters']} / {r['qat_iters']} ({r['batch_size']})" if r.get("fp32_iters") else "")
        miou = agree = convs = size = ""
        if "fp32_mIoU" in r:
            miou = f"{100 * r['fp32_mIoU']:.1f} / {100 * r['fake_quant_mIoU']:.1f} / {100 * r['int8_mIoU']:.1f}"
            agree = _pct(r['agreement_int8_vs_fake_quant'])
            if r.get("agreement_clear_margin") is not None:
                agree += f" ({100 * r['agreement_clear_margin']:.2f}%)"
            convs = f"{r['int8_convs']}/{r['all_convs']}"
            size = f"{r['params_ratio']:.2f} ({r['params_mb_fp32']:.1f} -> {r['params_mb_int8']:.1f} MB)"
        if "latency" in r:
            la = r["latency"]
            isa = bench.isa_label(la.get("machine"))
            lat = (f"{la['ratio']:.2f} ({la['fp32_ms']:.0f} -> {la['int8_ms']:.0f} ms, "
                   f"{la['input_shape'][2]}x{la['input_shape'][3]}{', ' + isa if isa else ''})")
        elif "latency_error" in r:
            lat = "failed: " + r["latency_error"]
        else:
            lat = "not measured"
        reason = (r["reason"] or "").replace("|", "\\|")
        cross = " | ".join(_cross_check_cell(r, rt) for rt in CROSS_CHECK_RUNTIMES)
        lines.append(f"| {r['model']} ({r['model_type'] or '?'}) | {r['status']} | {it} | {miou} | {agree} "
                     f"| {convs} | {size} | {lat} | {r['build_seconds']:.0f} | {reason} | {cross} |")
    lines += ["", "Columns: mIoU of the deployed FP32 model, the QAT model in fake quantization (dygraph) "
              "and the deployed INT8 model; pixel agreement of deployed INT8 with fake quant on the "
              "validation images; convolutions of the optimized INT8 program that run oneDNN INT8 "
              "kernels, out of all its convolutions; size of model.pdiparams; latency: median of "
              "interleaved runs, batch 1, 2 threads, 1x3x512x1024 (or 512x512 where a model fails at "
              "that size), measured separately on an idle machine "
              "(`python tools/zoo.py --phase latency`).", ""]
    if meta.get("carried_over"):
        lines += [f"Rows of {', '.join(meta['carried_over'])} are carried over from an earlier run of this "
                  "table whose work dir is not here; their configs are unchanged since (same file hash).", ""]
    if meta.get("runs"):
        lines.append("Runs (work dir `" + meta["work_dir"] + "`" + (" and earlier ones" if meta.get("carried_over")
                                                                    else "") + "):")
        lines += [f"- {r['time']} {r['event']}: `{r['command']}`"
                  + (f" ({r['seconds']} s)" if r.get("seconds") is not None else "") for r in meta["runs"]]
        lines.append("")
    if meta.get("phase_seconds"):
        lines.append("Time per phase (sum of step times, seconds): " + ", ".join(
            f"{k} {v:.0f}" for k, v in meta["phase_seconds"].items()) + ".")
        lines.append("")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [r["model"] for r in rows]
    y = list(range(len(rows)))[::-1]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 0.32 * len(rows) + 1.6), sharey=True)
    # the agreement axis starts at 90%, or lower when a row is below that (its bar must show)
    lo = min([90] + [math.floor(100 * r["agreement_int8_vs_fake_quant"]) - 1 for r in rows
                     if "agreement_int8_vs_fake_quant" in r]
             + [math.floor(100 * r[rt]["agreement_int8_vs_fake_quant"]) - 1 for r in rows
                for rt in CROSS_CHECK_RUNTIMES if "agreement_int8_vs_fake_quant" in (r.get(rt) or {})])
    for yi, r in zip(y, rows):
        if "agreement_int8_vs_fake_quant" in r:
            v = 100 * r["agreement_int8_vs_fake_quant"]
            a1.barh(yi, v, color="#8d8" if r["status"] == "✓" else "#f99")
            a1.text(lo + 0.15, yi, f"{_pct(v / 100)}   {r['int8_convs']}/{r['all_convs']} convs INT8", va="center",
                    fontsize=7)
            for rt, marker in zip(CROSS_CHECK_RUNTIMES, "Ds^"):
                other = (r.get(rt) or {}).get("agreement_int8_vs_fake_quant")
                if other is not None:
                    a1.plot(max(100 * other, lo + 0.05), yi, marker=marker, color="#226", ms=4, ls="none")
        elif r["status"] == "✗":
            a1.text(lo + 0.15, yi, f"✗ {r['reason'][:95]}", va="center", fontsize=6.5, color="#a22")
        else:
            a1.text(lo + 0.15, yi, r["reason"], va="center", fontsize=7, color="#777")
        if "latency" in r:
            la = r["latency"]
            a2.barh(yi, la["ratio"], color="#8d8" if la["ratio"] <= 0.5 else "#fc6")
            isa = bench.isa_label(la.get("machine"))
            a2.text(la["ratio"] + 0.01, yi, f"{la['ratio']:.2f} ({la['fp32_ms']:.0f}->{la['int8_ms']:.0f} ms"
                    f"{'' if la['input_shape'][3] == 1024 else ', 512x512'}{', ' + isa if isa else ''})",
                    va="center", fontsize=7)
        else:
            a2.text(0.02, yi, "not measured" if "latency_error" not in r else "failed", va="center",
                    fontsize=7, color="#777")
    a1.set_xlim(lo, 100.5)
    a1.set_ylim(-0.7, len(rows) - 0.3)
    a1.axvline(100 * MIN_AGREEMENT, color="k", lw=0.8, ls="--")
    a1.set_xlabel(f"deployed INT8 vs fake-quant pixel agreement (%), axis from {lo}%; dashed: 99%\n"
                  "bars: Paddle Inference; " + ", ".join(f"{m}: {RUNTIME_NAMES[rt]}" for rt, m in
                                                        zip(CROSS_CHECK_RUNTIMES, ("◆", "■", "▲"))))
    a1.set_yticks(y)
    a1.set_yticklabels([f"{r['status']} {n}" for r, n in zip(rows, names)], fontsize=8)
    # room for the largest ratio and its label (text outside the axes breaks the layout)
    ratios = [r["latency"]["ratio"] for r in rows if "latency" in r]
    a2.set_xlim(0, max([1.4] + [x + 0.9 for x in ratios]))
    a2.axvline(0.5, color="k", lw=0.8, ls="--")
    a2.set_xlabel("INT8 / FP32 latency (1x3x512x1024, 2 threads); dashed: 0.5")
    ok = sum(r["status"] == "✓" for r in rows)
    fig.suptitle(f"segqat model zoo: {ok}/{len(rows)} ✓ (green ✓; red ✗: agreement < 99%, FP32 model not "
                 "trained enough to judge, or an error; reasons in zoo.md)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(state, entries, args):
    """zoo.md, zoo.json and zoo.png in args.out_dir from the state of every entry."""
    with state.lock:
        data = json.loads(json.dumps(state.data))
    previous, previous_meta = _previous_table(args.out_dir)
    rows, carried = [], []
    for name, config in entries.items():
        e, config_hash = data.get(name), _file_hash(config)
        old = previous.get(name)
        if e and e.get("config_hash") != config_hash:  # results of an earlier version
            row = entry_row(name, None)
            row["reason"] = f"{os.path.relpath(config, ROOT)} changed since its last build: not built with it yet"
        elif not e and old and old.get("status") != "…" and old.get("config_hash") == config_hash:
            # built by an earlier run whose work dir is not here (another machine, a fresh
            # clone): the table keeps that run's row as long as the config is the same
            row = dict(old, carried_over=True)
            carried.append(name)
        else:
            row = entry_row(name, e, args.work_dir)
            row["config_hash"] = config_hash
            row.pop("carried_over", None)
        rows.append(row)
    phase_seconds = {}
    for e in data.values():
        for s, rec in e.get("steps", {}).items():
            ph = "latency" if s in LATENCY_STEPS else "build"
            phase_seconds[ph] = phase_seconds.get(ph, 0) + rec.get("seconds", 0)
    try:
        import paddle
        pv = paddle.__version__
    except Exception:  # pragma: no cover
        pv = "?"
    meta = {"command": "python tools/zoo.py " + " ".join(getattr(args, "argv", []) or []),
            "updated": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "paddle": pv,
            "work_dir": args.work_dir, "phase_seconds": phase_seconds, "min_agreement": MIN_AGREEMENT,
            "runs": _merge_runs(previous_meta.get("runs", []) if carried else [], _read_runs(args.work_dir)),
            "carried_over": carried}
    os.makedirs(args.out_dir, exist_ok=True)
    _write_json(os.path.join(args.out_dir, "zoo.json"), {"meta": meta, "rows": rows})
    with open(os.path.join(args.out_dir, "zoo.md"), "w") as f:
        f.write(markdown(rows, meta))
    plot(rows, os.path.join(args.out_dir, "zoo.png"))
    return rows


def _previous_table(out_dir):
    """Rows ({model: row}) and meta of out_dir/zoo.json as an earlier run wrote it."""
    path = os.path.join(out_dir, "zoo.json")
    if not os.path.isfile(path):
        return {}, {}
    try:
        with open(path) as f:
            table = json.load(f)
        return {r["model"]: r for r in table["rows"]}, table.get("meta", {})
    except (ValueError, KeyError, TypeError) as e:
        raise ZooError(f"{path}: not a zoo table ({type(e).__name__}: {e}); move it away or give another "
                       "--out_dir") from e


def _merge_runs(*lists):
    """Run records of several work dirs, each once, in time order."""
    seen, out = set(), []
    for r in sorted((r for runs in lists for r in runs), key=lambda r: r["time"]):
        key = (r["time"], r["event"], r["command"])
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def _read_runs(work_dir):
    path = os.path.join(work_dir, "runs.json")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return json.load(f)


def run_single_step(args):
    """tools/zoo.py --step evaluate|latency: the in-process part of one entry's step."""
    if not args.models or len(args.models) != 1:
        raise ZooError("--step needs exactly one entry in --models")
    name = args.models[0]
    discover(args.config_dir, [name])
    config = os.path.join(args.config_dir, name + ".yml")
    entry_dir = os.path.join(args.work_dir, name)
    if args.step == "evaluate":
        return evaluate_entry(config, entry_dir, args.cpu_threads, args.num_images)
    if args.step == "latency":
        return measure_latency(entry_dir, args.cpu_threads, args.warmup, args.repeats)
    raise ZooError(f"--step {args.step}: allowed are evaluate, latency")
