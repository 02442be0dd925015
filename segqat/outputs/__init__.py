"""The output rule: nothing a user has is lost.

One rule for every script that writes (docs/safety.md says it as a user sees it):

* **Refused, whatever the flags:** a save path that is, or contains, one of the
  command's inputs; a folder of files segqat did not write; a training run's
  folder (for anything but training); an output of another kind; the current,
  home or root folder; a file where a folder goes and a folder where a file goes.
* **Refused without --overwrite:** an earlier output of the same kind. With
  ``--overwrite`` only an earlier output that segqat wrote is replaced, and only
  while it holds nothing else: every output folder carries a marker,
  ``.segqat.json``, with its kind and the list of what segqat wrote into it; a
  file added since (a user's notes, an ONNX model saved beside an export) is
  named and the output is left as it is. A single-file output (``--save_metrics``,
  ``--save_path``, ``--save_json``) is replaced only if it is one segqat wrote
  (``FILE_KINDS`` tells them apart).
* **Atomic:** everything is written into a temporary sibling, read back, and
  swapped in with a rename; a failed or killed run leaves the old output or the
  new one, never half of either, and never a 0-byte file. Any OS error (disk
  full, file too large, quota, read-only, permissions) is an ``OutputError``
  naming the path.
* **Checked twice, locked:** the target is checked when the command starts and
  again right before the swap, under the target's lock (``.NAME.segqat.lock``
  beside it; a training run also keeps ``.segqat.lock`` inside its folder).
  Scripts take the lock with ``claim`` when they start and hold it to the swap,
  so a second segqat command on the same target is refused at once. A lock is
  an ``fcntl.flock`` on the lock file: the kernel drops it when its process
  dies, so a dead process's lock is taken over atomically.
* **Temporary folders** (``.NAME.tmp-PID``, ``.NAME.old-PID``, ``.NAME.del-PID``)
  carry ``.segqat-temp.json`` (host, pid, kind). ``clean_stale`` removes (or,
  for an ``.old`` one whose output is missing, puts back) only those whose
  marker names this host and a dead process; anything else is never touched.

A script::

    with outputs.claim(args.save_dir, "export", overwrite=args.overwrite,
                       inputs=[args.model_path]):           # checked, locked
        ...                                                 # the work
        outputs.atomic_dir_write(args.save_dir, write_fn, kind="export", verify=verify_fn)

``atomic_dir_write`` into a claimed target re-checks it with the claim's rule
under the claim's lock; without a claim (a library call) it takes the lock for
the swap and applies its own ``overwrite``/``inputs`` arguments.
"""
import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import time

logger = logging.getLogger(__name__)

MARKER = ".segqat.json"            # in an output folder: kind, files written
LOCK = ".segqat.lock"              # in a training run's folder, while it runs
TEMP_MARKER = ".segqat-temp.json"  # in a temp/old/del folder: host, pid, kind
LOCK_SUFFIX = ".segqat.lock"       # beside a target: .NAME.segqat.lock
KINDS = ("train", "export", "analysis", "sweep", "benchmark", "prediction", "dataset")
IN_PLACE = ("sweep",)              # folder kinds written in place (resumable), not swapped
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<what>tmp|old|del)-(?P<pid>\d+)(?:\.\d+)?$")
_CHECKPOINT_FILES = {"model.pdparams", "model.pdopt", "state.json"}
_TRAIN_ENTRIES = {"config.yaml", "train.log", "vdl_log", "best_model"}
# what segqat's outputs held before their marker listed the files (top-level names)
_LEGACY_FILES = {
    "export": {"deploy.yaml", "model.pdmodel", "model.pdiparams", "ptq_info.json",
               "model.pdiparams.info", "model.json"},
    "analysis": {"sensitivity.json", "sensitivity.md", "sensitivity.png", "skip_layers.yml",
                 "config_with_skips.yml"},
    "dataset": {"images", "labels", "train.txt", "val.txt", "labels.txt", "convert_masks.json"},
}
# errors of a write (rather than of reading an input) that become an OutputError
WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM,
                errno.EIO}


class OutputError(ValueError):
    """A save path that would destroy something, a held lock or a failed write."""


# ---------------------------------------------------------------- processes

def pid_alive(pid):
    """True if a process with this id exists on this machine."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError, TypeError):
        return False
    return True


def _host():
    return socket.gethostname()


def _now():
    return time.strftime("%Y-%m-%d %H:%M:%S")


# ---------------------------------------------------------------- small files

def _read_json(path, limit=None):
    try:
        with open(path) as f:
            return json.loads(f.read(limit) if limit else f.read())
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _write_json_atomic(path, obj):
    """``path`` replaced in one rename, through a marked temp folder beside it."""
    parent, name = os.path.split(os.path.abspath(path))
    tmp = None
    try:
        tmp = _make_temp(parent, name, "tmp", None)
        p = os.path.join(tmp, name)
        with open(p, "w") as f:
            json.dump(obj, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(p, path)
    except OSError as e:
        raise io_error(path, e) from e
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- markers

def read_marker(folder):
    """The marker of an output folder (a dict), or None."""
    info = _read_json(os.path.join(folder, MARKER))
    return info if isinstance(info, dict) else None


def write_marker(folder, kind, files=None, **extra):
    """Mark ``folder`` as an output of ``kind``; ``files``: what segqat wrote into it."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    info = {"kind": kind, "written": _now(), **extra}
    if files is not None:
        info["files"] = sorted(files)
    _write_json_atomic(os.path.join(folder, MARKER), info)


def update_marker(folder, add_files=(), **fields):
    """Record more files (``name`` or ``dir/``) and fields in an output's marker."""
    info = read_marker(folder)
    if info is None:
        raise OutputError(f"{folder} has no readable {MARKER}; it is not a segqat output")
    if add_files:
        info["files"] = sorted(set(info.get("files", [])) | set(add_files))
    info.update(fields)
    _write_json_atomic(os.path.join(folder, MARKER), info)


def kind_of(folder):
    """The kind of segqat output ``folder`` is, or None (not ours, or empty)."""
    if os.path.isfile(os.path.join(folder, MARKER)):
        info = read_marker(folder)
        return info.get("kind") if info else None
    try:
        entries = set(os.listdir(folder))
    except OSError:
        return None
    if {"deploy.yaml", "model.pdiparams"} <= entries and entries <= _LEGACY_FILES["export"]:
        return "export"  # written by segqat before markers
    return None


def _is_transient(path):
    """A temp folder or lock file that segqat made (its marker / content says so)."""
    name = os.path.basename(path)
    if _TEMP_RE.match(name) and os.path.isdir(path) and not os.path.islink(path):
        return _temp_info(path) is not None
    if (name == LOCK or name.endswith(LOCK_SUFFIX)) and os.path.isfile(path):
        return _read_lock(path) is not None
    return False


def _visible(folder):
    """Entries of ``folder`` other than segqat's markers, locks and temp folders."""
    out = []
    for e in sorted(os.listdir(folder)):
        if e in (MARKER, LOCK, TEMP_MARKER):
            continue
        if e.startswith(".") and _is_transient(os.path.join(folder, e)):
            continue
        out.append(e)
    return out


def listing(folder):
    """What is in ``folder``: files as ``a/b.png``, folders as ``a/`` (markers left out)."""
    out = []
    for root, dirs, files in os.walk(folder):
        rel = os.path.relpath(root, folder)
        rel = "" if rel == "." else rel + "/"
        out += [rel + d + "/" for d in dirs]
        out += [rel + f for f in files if f not in (MARKER, LOCK, TEMP_MARKER)]
    return sorted(out)


def foreign_entries(folder):
    """Entries of an output folder that segqat did not write into it, or None if unknown.

    A folder listed in the marker that is itself an output (a sweep's PTQ
    models) is checked against its own marker.
    """
    info = read_marker(folder)
    if info is None or "files" not in info:
        legacy = _LEGACY_FILES.get(kind_of(folder))
        if legacy is None:
            return None
        return [e for e in _visible(folder) if e not in legacy]
    known = set(info["files"])
    out = []
    for root, dirs, files in os.walk(folder):
        rel = os.path.relpath(root, folder)
        rel = "" if rel == "." else rel + "/"
        for d in list(dirs):
            p = os.path.join(root, d)
            if _is_transient(p):
                dirs.remove(d)
            elif rel + d + "/" not in known:
                out.append(rel + d + "/")
                dirs.remove(d)
            elif os.path.isfile(os.path.join(p, MARKER)):
                inner = foreign_entries(p)
                out += [rel + d + "/" + e for e in (inner if inner is not None else _visible(p))]
                dirs.remove(d)
        for f in files:
            if f in (MARKER, LOCK, TEMP_MARKER) or _is_transient(os.path.join(root, f)):
                continue
            if rel + f not in known:
                out.append(rel + f)
    return sorted(out)


# ---------------------------------------------------------------- the rule

def inside(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _sample(entries, n=3):
    entries = list(entries)
    return ", ".join(entries[:n]) + (f" and {len(entries) - n} more" if len(entries) > n else "")


def _check_common(path, kind, inputs, flag):
    if not path:
        raise OutputError(f"{flag} is required")
    for src in inputs:
        if src and inside(src, path):
            what = "is" if os.path.realpath(src) == os.path.realpath(path) else "contains"
            raise OutputError(
                f"{flag} {path} {what} the input {src}: the {kind} would be written over what the "
                f"command reads. Choose another {flag} (--overwrite never replaces an input)")
    if os.path.islink(path):
        raise OutputError(f"{flag} {path} is a symbolic link; give the folder or file it points "
                          "to, or another path")


def _lock_holder(path):
    """The holder (a dict) of a lock file held by a live process, else None."""
    if not os.path.isfile(path):
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_lock(path) or {}
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    other = _read_lock(path) or {}
    if other.get("pid") is not None and (other.get("host") != _host() or pid_alive(other["pid"])) \
            and other.get("pid") != os.getpid():
        return other  # a holder that does not flock (an older segqat, or another machine)
    return None


def check_save_dir(save_dir, kind, overwrite=False, inputs=(), flag="--save_dir"):
    """Refuse a folder that an output of ``kind`` would destroy (see the module docstring)."""
    _check_common(save_dir, kind, inputs, flag)
    if os.path.lexists(save_dir) and not os.path.isdir(save_dir):
        raise OutputError(f"{flag} {save_dir} is an existing file, not a folder; choose another "
                          f"{flag} (nothing was written)")
    if not os.path.isdir(save_dir):
        return
    if os.path.realpath(save_dir) in (os.path.realpath(os.getcwd()), os.path.realpath("/"),
                                      os.path.realpath(os.path.expanduser("~"))):
        raise OutputError(f"{flag} {save_dir} is the current, home or root folder; the {kind} "
                          f"needs a folder of its own, e.g. {flag} output/{kind}")
    holder = _lock_holder(os.path.join(save_dir, LOCK))
    if holder is not None:
        raise OutputError(f"{flag} {save_dir} is in use by a running training run (pid "
                          f"{holder.get('pid')} on {holder.get('host')}); choose another {flag}")
    entries = _visible(save_dir)
    if not entries:
        return
    found = kind_of(save_dir)
    if found is None:
        raise OutputError(
            f"{flag} {save_dir} exists and holds files segqat did not write ({_sample(entries)}); "
            f"it is not replaced, even with --overwrite. Choose a new or empty {flag}")
    if found != kind:
        raise OutputError(
            f"{flag} {save_dir} holds a {found} output (e.g. {_sample(entries)}); a {kind} is not "
            f"written over it, even with --overwrite. Choose another {flag}")
    resumable = kind in IN_PLACE and (read_marker(save_dir) or {}).get("complete") is False
    if not overwrite and not resumable:
        raise OutputError(
            f"{flag} {save_dir} holds an earlier {kind} ({_sample(entries)}). Pass --overwrite to "
            "replace it (the old one is kept until the new one is complete), or choose another "
            f"{flag}")
    foreign = foreign_entries(save_dir)
    if foreign is None:
        raise OutputError(
            f"{flag} {save_dir} holds an earlier {kind} that does not list the files segqat wrote "
            f"(an older version wrote it); it is not replaced. Delete it yourself or choose "
            f"another {flag}")
    if foreign:
        raise OutputError(
            f"{flag} {save_dir} holds an earlier {kind}, and also files segqat did not write "
            f"there: {_sample(foreign, 5)}. Nothing was replaced: move them out of {save_dir} "
            f"or choose another {flag}")


# single-file outputs: kind -> (what it is, a test that the file is one segqat wrote)
def _json_with(*keys):
    def test(path):
        d = _read_json(path)
        return isinstance(d, dict) and all(k in d for k in keys)
    return test


def _segqat_onnx(path):
    try:
        import onnx
        return onnx.load(path, load_external_data=False).producer_name.startswith("segqat")
    except Exception:  # noqa: BLE001  (not an ONNX file at all)
        return False


FILE_KINDS = {
    "metrics": ("a metrics file of tools/val.py or slim/quant/qat_val.py",
                _json_with("mIoU", "model_path", "config")),
    "latency": ("a results file of slim/quant/bench_latency.py", _json_with("machine", "models")),
    "onnx": ("an ONNX model written by segqat", _segqat_onnx),
}


def _same_file(a, b):
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_save_file(path, kind, overwrite=False, inputs=(), flag="--save_path"):
    """Refuse a single-file output that would replace an input, a foreign file or (without
    ``overwrite``) an earlier output."""
    if not path:
        raise OutputError(f"{flag} is required")
    what, ours = FILE_KINDS[kind]
    if os.path.isdir(path):
        raise OutputError(f"{flag} {path} is a folder; give a file name, e.g. "
                          f"{os.path.join(path, kind + ('.onnx' if kind == 'onnx' else '.json'))}")
    for src in inputs:
        if src and _same_file(path, src):
            raise OutputError(f"{flag} {path} is the input {src}: it is never written over, "
                              f"--overwrite or not. Choose another {flag}")
    if not os.path.lexists(path):
        return
    if not overwrite:
        raise OutputError(f"{flag} {path} exists; give --overwrite to replace it (or choose "
                          f"another {flag})")
    if not ours(path):
        raise OutputError(f"{flag} {path} exists and is not {what}; it is not replaced, even "
                          f"with --overwrite. Choose another {flag}")


def checkpoint_dirs(save_dir):
    """``iter_N`` folders of a training save_dir, by N."""
    out = []
    for e in os.listdir(save_dir) if os.path.isdir(save_dir) else []:
        if e.startswith("iter_") and e[5:].isdigit() and os.path.isdir(os.path.join(save_dir, e)):
            out.append((int(e[5:]), os.path.join(save_dir, e)))
    return [p for _, p in sorted(out)]


def check_train_dir(save_dir, resume_model=None, overwrite=False, inputs=()):
    """Refuse a training save_dir that holds another run's checkpoints, another output or files
    that are not a training run's.

    A training run's folder may hold other files (notes): training only adds
    ``iter_N/``, ``best_model/``, ``config.yaml``, ``train.log``, ``vdl_log/``
    and never deletes anything else.
    """
    if os.path.lexists(save_dir) and not os.path.isdir(save_dir):
        raise OutputError(f"--save_dir {save_dir} is an existing file, not a folder; choose another "
                          "--save_dir (nothing was written)")
    if not os.path.isdir(save_dir):
        return
    found = kind_of(save_dir)
    if found not in (None, "train"):
        raise OutputError(f"--save_dir {save_dir} holds a {found} output, not a training run; "
                          "choose another --save_dir")
    if resume_model and inside(resume_model, save_dir):
        return  # continuing the run that lives there
    entries = _visible(save_dir)
    is_run = found == "train" or any(e == "best_model" or (e.startswith("iter_") and e[5:].isdigit())
                                     for e in entries)
    foreign = [e for e in entries if e not in _TRAIN_ENTRIES
               and not (e.startswith("iter_") and e[5:].isdigit())]
    if foreign and not is_run:
        raise OutputError(
            f"--save_dir {save_dir} exists and holds files segqat did not write "
            f"({_sample(foreign)}); a training run is not started among them. Choose a new or "
            "empty --save_dir")
    held = [os.path.basename(p) for p in checkpoint_dirs(save_dir)]
    if os.path.isdir(os.path.join(save_dir, "best_model")):
        held.append("best_model")
    if found is None and os.path.isfile(os.path.join(save_dir, "config.yaml")):
        held.append("config.yaml")
    if held and not overwrite:
        hint = (f"resume it with --resume_model {checkpoint_dirs(save_dir)[-1]}, "
                if checkpoint_dirs(save_dir) else "")
        raise OutputError(
            f"--save_dir {save_dir} holds another run's checkpoints ({_sample(held)}): {hint}pass "
            "--overwrite to replace them (at this run's first checkpoint), or choose another "
            "--save_dir")
    for src in inputs:
        if src and overwrite and inside(src, save_dir):
            raise OutputError(f"--overwrite would delete the input {src}, which is inside "
                              f"--save_dir {save_dir}; choose another --save_dir")


def _check_checkpoint(path, shown=None):
    """A checkpoint folder is replaced only while it holds nothing but a checkpoint's files."""
    shown = shown or path
    if os.path.lexists(path) and not os.path.isdir(path):
        raise OutputError(f"cannot write the checkpoint {shown}: a file is in its place")
    if os.path.isdir(path):
        extra = [e for e in _visible(path) if e not in _CHECKPOINT_FILES]
        if extra:
            raise OutputError(f"the checkpoint {shown} also holds files segqat did not write "
                              f"({_sample(extra)}); it is not replaced. Move them out of it")


# ---------------------------------------------------------------- locks

def lock_path(target):
    """The lock file beside ``target``: ``PARENT/.NAME.segqat.lock``."""
    parent, name = os.path.split(os.path.abspath(str(target).rstrip("/") or str(target)))
    return os.path.join(parent, f".{name}{LOCK_SUFFIX}")


def _read_lock(path):
    """A segqat lock file's content ({} while it is being written), else None."""
    try:
        with open(path) as f:
            text = f.read(4096)
    except (OSError, UnicodeDecodeError):
        return None
    if not text.strip():
        return {}
    try:
        d = json.loads(text)
    except ValueError:
        return None
    return d if isinstance(d, dict) and "pid" in d and "host" in d else None


def _in_use(path, what, other):
    other = other or {}
    return OutputError(
        f"{what} is in use by another run (pid {other.get('pid')} on {other.get('host')}, since "
        f"{other.get('since')}): wait for it or choose another folder. If no such process runs, "
        f"delete {path}")


def _acquire(path, what, wait):
    """Hold ``path`` with flock; returns the open descriptor. See ``lock``."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    except OSError as e:
        raise io_error(path, e) from e
    me = {"pid": os.getpid(), "host": _host(), "since": _now()}
    deadline = time.time() + wait
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise io_error(path, e) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.time() < deadline:
                time.sleep(0.1)
                continue
            other = _read_lock(path)
            for _ in range(10):  # a holder that has just created the file writes it next
                if other:
                    break
                time.sleep(0.05)
                other = _read_lock(path)
            raise _in_use(path, what, other)
        # held; but a holder that released in between unlinked the file we opened
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        other = _read_lock(path)
        if other is None:
            os.close(fd)
            raise OutputError(f"{path} exists and is not a segqat lock file; it is left alone. "
                              "Move it away to use this folder")
        pid = other.get("pid")
        if pid is not None and pid != me["pid"] and (other.get("host") != me["host"]
                                                     or pid_alive(pid)):
            os.close(fd)  # a live holder that does not flock (older segqat, or another machine)
            if time.time() < deadline:
                time.sleep(0.1)
                continue
            raise _in_use(path, what, other)
        if pid is not None and pid != me["pid"]:
            logger.warning("Taking over the stale lock %s (process %s is gone)", path, pid)
        data = json.dumps(me).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        return fd


def _release(path, fd):
    try:
        if os.path.samestat(os.fstat(fd), os.stat(path)):
            os.remove(path)  # still holding it: nobody can have taken it meanwhile
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def lock(path, what, wait=0.0):
    """Hold the lock file ``path`` for the ``with`` block (``what`` names it in errors).

    ``fcntl.flock`` makes it exclusive and is released by the kernel when the
    holder dies, so taking over a dead process's lock is one atomic step; the
    file says who holds it (pid, host, since) for the message a second run
    gets. A live holder that does not use flock (an older segqat, or a process
    on another machine of a shared file system) is respected. ``wait``: seconds
    to wait for a held lock before refusing.
    """
    fd = _acquire(path, what, wait)
    try:
        yield
    finally:
        _release(path, fd)


# ---------------------------------------------------------------- temp folders

def _temp_info(path):
    info = _read_json(os.path.join(path, TEMP_MARKER), 4096)
    return info if isinstance(info, dict) and "pid" in info and "host" in info else None


def _mark_temp(path, role, name, kind):
    info = {"role": role, "name": name, "kind": kind, "pid": os.getpid(), "host": _host(),
            "since": _now()}
    with open(os.path.join(path, TEMP_MARKER), "w") as f:
        json.dump(info, f)


def _free_name(parent, name, role):
    base = os.path.join(parent, f".{name}.{role}-{os.getpid()}")
    n = 0
    while True:
        p = base if n == 0 else f"{base}.{n}"
        if not os.path.lexists(p):
            return p
        n += 1


def _make_temp(parent, name, role, kind):
    """A new marked temp folder ``PARENT/.NAME.ROLE-PID`` (never an existing one)."""
    while True:
        p = _free_name(parent, name, role)
        try:
            os.mkdir(p)
        except FileExistsError:
            continue
        try:
            _mark_temp(p, role, name, kind)
        except BaseException:
            shutil.rmtree(p, ignore_errors=True)
            raise
        return p


def _remove_temp_marker(folder):
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(folder, TEMP_MARKER))


def clean_stale(parent):
    """Clear what killed segqat processes left in ``parent``.

    Only temp folders whose ``.segqat-temp.json`` names this host and a
    process that is gone (and matches the folder's name), and lock files of
    such processes, are touched; an orphaned ``.old`` folder whose output is
    missing is put back. Anything else with a similar name is not segqat's.
    """
    if not os.path.isdir(parent):
        return
    for e in os.listdir(parent):
        path = os.path.join(parent, e)
        if e.endswith(LOCK_SUFFIX) and e.startswith("."):
            _clean_lock(path)
            continue
        m = _TEMP_RE.match(e)
        if not m or not os.path.isdir(path) or os.path.islink(path):
            continue
        info = _temp_info(path)
        if (info is None or info.get("host") != _host() or str(info.get("pid")) != m["pid"]
                or info.get("role") != m["what"] or info.get("name") != m["name"]
                or pid_alive(m["pid"])):
            continue
        final = os.path.join(parent, m["name"])
        if m["what"] == "old" and not os.path.lexists(final):
            os.replace(path, final)  # killed between the two renames of a swap
            _remove_temp_marker(final)
            logger.warning("Restored %s from %s (left by a killed process)", final, e)
            continue
        logger.info("Removing %s (left by killed process %s)", path, m["pid"])
        shutil.rmtree(path, ignore_errors=True)


def _clean_lock(path):
    """Remove a lock file of a dead process on this host (holding it while removing it)."""
    other = _read_lock(path)
    if not other or other.get("host") != _host() or pid_alive(other.get("pid")):
        return
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if _read_lock(path) == other and os.path.samestat(os.fstat(fd), os.stat(path)):
            os.remove(path)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_dir(path):
    """Delete a folder so that a kill leaves either all of it or nothing visible."""
    if not os.path.isdir(path):
        return
    parent, name = os.path.split(os.path.abspath(path.rstrip("/")))
    trash = _free_name(parent, name, "del")
    os.replace(path, trash)
    with contextlib.suppress(OSError):
        _mark_temp(trash, "del", name, None)  # after the rename: a checkpoint never holds it
    shutil.rmtree(trash, ignore_errors=True)


def _fsync_tree(d):
    for root, _, files in os.walk(d):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- errors

def io_error(path, e):
    """An OutputError that names the path and the cause of an OSError."""
    why = {errno.ENOSPC: "the disk is full", errno.EFBIG: "file too large (a file-size limit: see "
           "`ulimit -f`)", errno.EDQUOT: "disk quota exceeded", errno.EACCES: "permission denied",
           errno.EROFS: "read-only file system", errno.EPERM: "operation not permitted"}
    cause = why.get(getattr(e, "errno", None), getattr(e, "strerror", None) or str(e))
    return OutputError(f"cannot write {path}: {cause} ({type(e).__name__}: {e}); nothing was "
                       "replaced")


def _write_failure(e, target, tmp):
    """Is ``e`` a failure to write ``target`` (its temp folder, the swap), not to read an input?"""
    names = [n for n in (getattr(e, "filename", None), getattr(e, "filename2", None)) if n]
    if not names:
        return getattr(e, "errno", None) in WRITE_ERRNOS
    parent, name = os.path.split(target)
    for n in map(os.path.abspath, map(str, names)):
        if inside(n, tmp) or inside(n, target) or (
                os.path.dirname(n) == parent and os.path.basename(n).startswith(f".{name}.")):
            return True
    return False


def imwrite(path, img):
    """``cv2.imwrite`` that raises instead of returning False."""
    import cv2
    if not cv2.imwrite(path, img):
        raise OSError(errno.EIO, "cv2.imwrite could not write the image (disk full, no "
                                 "permission or an unknown extension?)", path)


def check_files_written(folder, names):
    """Each named file exists and is not empty (paddle's C++ savers can fail silently)."""
    for n in names:
        p = os.path.join(folder, n)
        if not os.path.isfile(p) or os.path.getsize(p) == 0:
            raise OutputError(f"writing {p} failed: the file is missing or empty (disk full or a "
                              "file-size limit?)")


# ---------------------------------------------------------------- claims

_claims = {}  # realpath of a target -> the Claim this process holds on it


class Claim:
    """A target checked and locked by ``claim`` (its rule is re-applied at the swap)."""

    def __init__(self, path, kind, overwrite=False, inputs=(), flag="--save_dir"):
        if kind not in KINDS and kind not in FILE_KINDS or kind == "train":
            raise ValueError(f"kind must be one of {KINDS[1:] + tuple(FILE_KINDS)}, got {kind!r}")
        self.path = os.path.abspath(str(path).rstrip("/") or str(path))
        self.shown = str(path)
        self.kind, self.overwrite, self.flag = kind, overwrite, flag
        self.inputs = [str(i) for i in inputs if i]
        self._staging = None

    def check(self):
        if self.kind in FILE_KINDS:
            check_save_file(self.shown, self.kind, self.overwrite, self.inputs, self.flag)
        else:
            check_save_dir(self.shown, self.kind, self.overwrite, self.inputs, self.flag)

    def staging(self):
        """The temp folder the output is written into (created on first use)."""
        if self.kind in FILE_KINDS or self.kind in IN_PLACE:
            raise ValueError(f"a {self.kind} output has no staging folder")
        if self._staging is None:
            parent, name = os.path.split(self.path)
            try:
                self._staging = _make_temp(parent, name, "tmp", self.kind)
            except OSError as e:
                raise io_error(self.shown, e) from e
        return self._staging

    def file(self, name):
        """A path for a file written while the work runs (a log): in the staging folder, or,
        for an output written in place, in the folder (recorded in its marker)."""
        if self.kind in IN_PLACE:
            update_marker(self.path, add_files=[name])
            return os.path.join(self.path, name)
        return os.path.join(self.staging(), name)


@contextlib.contextmanager
def claim(path, kind, overwrite=False, inputs=(), flag="--save_dir"):
    """Check ``path`` for an output of ``kind``, lock it and hold it until the block ends.

    A folder kind in ``IN_PLACE`` (a resumable sweep) is created and marked
    (``complete: false``) here; the others appear only at their swap.
    """
    c = Claim(path, kind, overwrite, inputs, flag)
    c.check()  # before anything: fail early
    key = os.path.realpath(c.path)
    if key in _claims:
        raise OutputError(f"{flag} {path} is already being written by this command")
    parent = os.path.dirname(c.path)
    with lock(lock_path(c.path), f"{flag} {path}"):
        clean_stale(parent)
        c.check()  # again, now that no other segqat command can change it
        if kind in IN_PLACE:
            try:
                os.makedirs(c.path, exist_ok=True)
            except OSError as e:
                raise io_error(path, e) from e
            info = read_marker(c.path) or {}
            write_marker(c.path, kind, files=info.get("files", []), complete=False)
        _claims[key] = c
        try:
            yield c
        finally:
            _claims.pop(key, None)
            if c._staging is not None:
                shutil.rmtree(c._staging, ignore_errors=True)


def claimed(path):
    """The Claim this process holds on ``path``, or None."""
    return _claims.get(os.path.realpath(os.path.abspath(str(path).rstrip("/") or str(path))))


@contextlib.contextmanager
def _swap_rule(path, kind, overwrite, inputs, flag):
    """The claim on ``path`` if this process holds one, else a lock held for the swap."""
    c = claimed(path)
    if c is not None:
        yield c
        return
    c = Claim(path, kind, overwrite, inputs, flag)
    with lock(lock_path(c.path), f"{flag} {path}", wait=10):
        yield c


# ---------------------------------------------------------------- writers

def _swap(tmp, final, check):
    """Put the folder ``tmp`` in the place of ``final``; ``check(path)`` re-applies the rule to
    the old folder once it is out of the way (nothing can be added to it any more)."""
    parent, name = os.path.split(final)
    old = None
    if os.path.lexists(final):
        _mark_temp(final, "old", name, None)  # before the rename: a kill leaves it marked
        old = _free_name(parent, name, "old")
        os.replace(final, old)
        try:
            check(old)
        except BaseException:
            os.replace(old, final)
            _remove_temp_marker(final)
            raise
    try:
        os.replace(tmp, final)
    except OSError:
        if old is not None and not os.path.lexists(final):
            os.replace(old, final)
            _remove_temp_marker(final)
        raise
    _remove_temp_marker(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _check_moved(c, before):
    """The folder as moved aside must hold what the check saw (a file saved in between)."""
    def check(old):
        now = foreign_entries(old) if before else _visible(old)
        if now:
            raise OutputError(f"{c.flag} {c.shown} changed while it was being replaced: it now "
                              f"holds {_sample(now, 5)}, which segqat did not write. Nothing was "
                              f"replaced: move them out or choose another {c.flag}")
    return check


def atomic_dir_write(final_dir, write_fn, kind, verify=None, marker=True, overwrite=True,
                     inputs=(), flag="save_dir"):
    """Write a folder through a temp sibling, verify it, re-check the target, swap it in.

    ``write_fn(tmp)`` fills the temp folder; ``verify(tmp)`` (optional) raises
    if what was written is not right (a reload). Then, under the target's lock,
    the target is checked again (``claim``'s rule if this process claimed it,
    else ``overwrite``/``inputs``: a library call replaces only an earlier
    segqat output of the same kind) and the two are swapped; a kill at any
    point leaves the old or the new folder in place, and its marked temp
    folders are cleaned up by the next writer. ``kind="train"`` writes a
    checkpoint (under its run's lock): it replaces only a checkpoint.
    """
    final_dir = os.path.abspath(str(final_dir).rstrip("/") or str(final_dir))
    parent, name = os.path.split(final_dir)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise io_error(parent, e) from e
    clean_stale(parent)
    c = claimed(final_dir)
    try:
        tmp = c.staging() if c is not None else _make_temp(parent, name, "tmp", kind)
    except OSError as e:
        raise io_error(final_dir, e) from e
    try:
        try:
            write_fn(tmp)
            if marker:
                write_marker(tmp, kind, files=listing(tmp))
            _fsync_tree(tmp)
            if verify is not None:
                verify(tmp)
            if kind == "train":
                _check_checkpoint(final_dir)
                _swap(tmp, final_dir, lambda old: _check_checkpoint(old, final_dir))
            else:
                with _swap_rule(final_dir, kind, overwrite, inputs, flag) as rule:
                    rule.check()
                    before = os.path.isdir(final_dir) and bool(_visible(final_dir))
                    _swap(tmp, final_dir, _check_moved(rule, before))
        except OSError as e:
            if _write_failure(e, final_dir, tmp):
                raise io_error(final_dir, e) from e
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final_dir


def atomic_file_write(path, write_fn, kind, verify=None, overwrite=False, inputs=(),
                      flag="save_path"):
    """Write one file through a marked temp folder beside it and rename it into place.

    ``write_fn(tmp_path)`` writes the file; the target is re-checked under its
    lock (the claim's rule if this process claimed it, else ``overwrite`` and
    ``inputs``) right before the rename. Without overwrite the file is put in
    place with ``os.link``, which fails rather than replace a file that
    appeared meanwhile.
    """
    path = os.path.abspath(str(path))
    parent, name = os.path.split(path)
    try:
        os.makedirs(parent, exist_ok=True)
        clean_stale(parent)
        tmpdir = _make_temp(parent, name, "tmp", kind)
    except OSError as e:
        raise io_error(path, e) from e
    try:
        tmp = os.path.join(tmpdir, name)
        write_fn(tmp)
        if not os.path.isfile(tmp):
            raise OutputError(f"writing {path} failed: nothing was written")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if verify is not None:
            verify(tmp)
        with _swap_rule(path, kind, overwrite, inputs, flag) as rule:
            rule.check()
            if rule.overwrite:
                os.replace(tmp, path)
            else:
                _place_new(tmp, path, rule.flag)
    except OSError as e:
        if _write_failure(e, path, tmpdir):
            raise io_error(path, e) from e
        raise
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return path


def _place_new(src, dst, flag="save_path"):
    """Rename ``src`` to ``dst`` only if ``dst`` does not exist (atomically, with os.link)."""
    try:
        os.link(src, dst)
    except FileExistsError:
        raise OutputError(f"{flag} {dst} appeared while it was being written; it is not "
                          "replaced") from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
            raise
        if os.path.lexists(dst):  # a file system without hard links: check, then rename
            raise OutputError(f"{flag} {dst} appeared while it was being written; it is not "
                              "replaced") from None
        os.replace(src, dst)
        return
    os.remove(src)


def place_new(src, dst, flag="save_path"):
    """Move the file ``src`` to ``dst``, never over an existing file; OS errors as OutputError."""
    try:
        _place_new(src, dst, flag)
    except OSError as e:
        raise io_error(dst, e) from e


def write_into(folder, name, write_fn):
    """Write (or replace) the file ``name`` of the segqat output ``folder`` and record it there.

    For files an output adds after its swap (a sweep's report, a reference's
    metrics.json): recorded first, so a kill never leaves an unrecorded file.
    """
    update_marker(folder, add_files=[name])
    path = os.path.join(os.path.abspath(folder), name)
    tmpdir = None
    try:
        tmpdir = _make_temp(os.path.dirname(path), name, "tmp", None)
        tmp = os.path.join(tmpdir, name)
        write_fn(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if tmpdir is None or _write_failure(e, path, tmpdir):
            raise io_error(path, e) from e
        raise
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
    return path
