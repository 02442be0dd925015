"""The zoo's runner: the entries' plans and step commands, ``state.json``, each step as a
subprocess with a timeout (killed with its process group), the work-dir lock, the run log
(``runs.json``), and :func:`run_zoo`, which runs a phase and rewrites the table after every
finished entry. What the evaluate and latency steps do in their subprocess is in ``measure``.
"""
import datetime
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

from .common import BUILD_STEPS, LATENCY_STEPS, ROOT, ZooError, discover, file_hash, write_json
from .table import write_outputs

logger = logging.getLogger(__name__)

PHASES = {"build": BUILD_STEPS, "latency": LATENCY_STEPS, "all": BUILD_STEPS + LATENCY_STEPS,
          "report": ()}

# what each step reads: the output of these steps
NEEDS = {"qat_train": ("fp32_train",), "fp32_export": ("fp32_train",), "int8_export": ("qat_train",),
         "evaluate": ("qat_train", "fp32_export", "int8_export"), "latency": ("fp32_export", "int8_export")}


def dependents(step):
    """Steps that use ``step``'s output, directly or not."""
    out = {s for s, needs in NEEDS.items() if step in needs}
    for s in list(out):
        out |= dependents(s)
    return out


# ------------------------------------------------------------------ plans and step commands

class Plan:
    """What the steps of one entry run with: iterations, learning rates, paths."""

    def __init__(self, name, config, work_dir, fp32_iters=None, qat_iters=None):
        from ..config import load_config
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
        write_json(self.path, self.data, indent=1)


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


_RUNNING = set()             # processes run_logged started, under way
_STOPPING = threading.Event()  # set when the zoo is interrupted


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # a process this runner started, in its own group
    except ProcessLookupError:
        pass


def _stop_running_steps():
    _STOPPING.set()
    for proc in list(_RUNNING):
        _kill_group(proc)


def run_logged(argv, log, timeout, env=None, cwd=None):
    """Run ``argv`` with its stdout and stderr going to the open file ``log``, in a process
    group of its own, for at most ``timeout`` seconds; returns ``(returncode, timed_out)``.

    A timeout kills the whole group (SIGKILL). So does an exception in the waiting thread
    (Ctrl-C when it is the main thread) before it goes on; the zoo's main thread stops the
    processes its worker threads wait for with ``_stop_running_steps``."""
    proc = subprocess.Popen(argv, cwd=cwd or os.getcwd(), stdout=log, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
    _RUNNING.add(proc)
    try:
        return proc.wait(timeout=timeout), False
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return proc.wait(), True
    except BaseException:
        _kill_group(proc)
        proc.wait()
        raise
    finally:
        _RUNNING.discard(proc)


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
        rc, timed_out = run_logged(argv, log, timeout, env=env)
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
    lock = lock_work_dir(args.work_dir) if steps else None  # noqa: F841 (held until return)
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


def lock_work_dir(work_dir):
    """An exclusive lock on work_dir/.lock: two zoo runs would overwrite each other's state.json.

    Returns the open lock file: the lock is held until it is closed (or the process ends);
    raises ZooError, naming the holder's pid, when another process holds it."""
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
    write_json(path, runs)


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
            from ..config import load_config
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
    e = state.entry(name, file_hash(config))
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
