"""Output folders that never destroy what a user has.

Every folder segqat writes (a training run's ``save_dir``, an inference
directory from export or PTQ, an analysis or sweep folder) carries a small
marker file, ``.segqat.json``, that says what kind of output it is. Rules:

* A ``--save_dir`` that exists and holds anything segqat did not write is
  refused, and so is an existing *file* at that path.
* A previous output of the same kind is replaced only with ``--overwrite``;
  the old one stays in place until the new one is complete and verified,
  then the two are swapped (``atomic_dir_write``).
* An output is never written into the folder that holds one of its inputs
  (``--model_path``), nor into a training run's folder.
* A training ``save_dir`` holding another run's checkpoints is refused
  unless resuming that run (``--resume_model``) or told to (``--overwrite``).
  A lock file (``.segqat.lock``) keeps a second run out; a lock whose process
  is gone is cleared.
* Temporary folders (``.NAME.tmp-PID``, ``.NAME.old-PID``, ``.NAME.del-PID``)
  of a killed process are cleaned up (or, for an ``.old`` one whose final
  folder is missing, put back) by the next run that writes beside them.
* An OS error while writing (disk full, file too large, permissions) becomes
  an ``OutputError`` naming the path and the cause.

    check_save_dir("out_infer", "export", overwrite=args.overwrite, inputs=[args.model_path])
    atomic_dir_write("out_infer", write_fn, kind="export", verify=verify_fn)
"""
import contextlib
import errno
import json
import logging
import os
import re
import shutil
import socket
import time

logger = logging.getLogger(__name__)

MARKER = ".segqat.json"
LOCK = ".segqat.lock"
KINDS = ("train", "export", "analysis", "sweep", "benchmark", "prediction", "dataset")
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<what>tmp|old|del)-(?P<pid>\d+)$")
# What segqat's own exports held before markers existed (recognised as exports).
_LEGACY_EXPORT_FILES = {"deploy.yaml", "model.pdmodel", "model.pdiparams", "ptq_info.json",
                        "model.pdiparams.info", "model.json"}


class OutputError(ValueError):
    """A save_dir that would destroy something, a held lock or a failed write."""


# ---------------------------------------------------------------- processes

def pid_alive(pid):
    """True if a process with this id exists on this machine."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError):
        return False
    return True


# ---------------------------------------------------------------- markers

def write_marker(folder, kind, **extra):
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    info = {"kind": kind, "written": time.strftime("%Y-%m-%d %H:%M:%S"), **extra}
    with open(os.path.join(folder, MARKER), "w") as f:
        json.dump(info, f, indent=1)


def kind_of(folder):
    """The kind of segqat output ``folder`` is, or None (not ours, or empty)."""
    path = os.path.join(folder, MARKER)
    if os.path.isfile(path):
        try:
            with open(path) as f:
                return json.load(f).get("kind")
        except (OSError, ValueError, AttributeError):
            return None
    entries = set(os.listdir(folder))
    if {"deploy.yaml", "model.pdiparams"} <= entries and entries <= _LEGACY_EXPORT_FILES:
        return "export"  # written by segqat before markers
    return None


def _visible(folder):
    return sorted(e for e in os.listdir(folder) if e not in (MARKER, LOCK))


def _inside(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _sample(entries, n=3):
    return ", ".join(entries[:n]) + (f" and {len(entries) - n} more" if len(entries) > n else "")


def check_save_dir(save_dir, kind, overwrite=False, inputs=(), flag="--save_dir"):
    """Refuse, before any work, a ``save_dir`` that an output of ``kind`` would destroy.

    ``inputs`` are files the command reads (``--model_path``): a save_dir that
    contains one is refused whatever its state.
    """
    if not save_dir:
        raise OutputError(f"{flag} is required")
    for src in inputs:
        if src and _inside(src, save_dir):
            raise OutputError(
                f"{flag} {save_dir} contains the input {src}: writing the {kind} there would "
                f"replace the folder it reads from. Choose another {flag}")
    if os.path.lexists(save_dir) and not os.path.isdir(save_dir):
        raise OutputError(f"{flag} {save_dir} is an existing file, not a folder; choose another "
                          f"{flag} (nothing was written)")
    if not os.path.isdir(save_dir):
        return
    if os.path.realpath(save_dir) in (os.path.realpath(os.getcwd()), os.path.realpath("/"),
                                      os.path.realpath(os.path.expanduser("~"))):
        raise OutputError(f"{flag} {save_dir} is the current, home or root folder; the {kind} "
                          f"needs a folder of its own, e.g. {flag} output/{kind}")
    entries = _visible(save_dir)
    if not entries:
        return
    found = kind_of(save_dir)
    if found is None:
        raise OutputError(
            f"{flag} {save_dir} exists and holds files segqat did not write ({_sample(entries)}); "
            f"it is not replaced. Choose a new or empty {flag}")
    if found != kind:
        raise OutputError(
            f"{flag} {save_dir} holds a {found} output (e.g. {_sample(entries)}); a {kind} is not "
            f"written over it. Choose another {flag}")
    if not overwrite:
        raise OutputError(
            f"{flag} {save_dir} holds an earlier {kind} ({_sample(entries)}). Pass --overwrite to "
            "replace it (the old one is kept until the new one is complete), or choose another "
            f"{flag}")


def checkpoint_dirs(save_dir):
    """``iter_N`` folders of a training save_dir, by N."""
    out = []
    for e in os.listdir(save_dir) if os.path.isdir(save_dir) else []:
        if e.startswith("iter_") and e[5:].isdigit() and os.path.isdir(os.path.join(save_dir, e)):
            out.append((int(e[5:]), os.path.join(save_dir, e)))
    return [p for _, p in sorted(out)]


def check_train_dir(save_dir, resume_model=None, overwrite=False, inputs=()):
    """Refuse a training save_dir that holds another run's checkpoints (or is a file).

    Files that are not checkpoints are left alone: training only adds
    ``iter_N/``, ``best_model/``, ``config.yaml``, ``train.log``, ``vdl_log/``.
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
    if resume_model and _inside(resume_model, save_dir):
        return  # continuing the run that lives there
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
        if src and overwrite and _inside(src, save_dir):
            raise OutputError(f"--overwrite would delete the input {src}, which is inside "
                              f"--save_dir {save_dir}; choose another --save_dir")


# ---------------------------------------------------------------- locks

@contextlib.contextmanager
def lock(path, what):
    """Hold ``path`` (a lock file) for the ``with`` block; a lock of a dead process is taken over."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                with open(path) as f:
                    other = json.load(f)
            except (OSError, ValueError):
                other = {}
            pid = other.get("pid")
            if (pid is not None and other.get("host") == me["host"] and not pid_alive(pid)) \
                    or (not other and time.time() - _mtime(path) > 60):
                logger.warning("Removing the stale lock %s (process %s is gone)", path, pid)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
                continue
            raise OutputError(
                f"{what} is in use by another run (pid {pid} on {other.get('host')}, since "
                f"{other.get('since')}): wait for it or choose another folder. If no such process "
                f"runs, delete {path}")
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    else:
        raise OutputError(f"could not take the lock {path}")
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _mtime(path):
    try:
        return os.path.getmtime(path)
    except OSError:
        return time.time()


# ---------------------------------------------------------------- temp folders

def _temp(parent, name, what):
    return os.path.join(parent, f".{name}.{what}-{os.getpid()}")


def clean_stale(parent):
    """Remove temp folders of dead processes in ``parent``; put back an orphaned ``.old`` one."""
    if not os.path.isdir(parent):
        return
    for e in os.listdir(parent):
        m = _TEMP_RE.match(e)
        if not m or pid_alive(m["pid"]):
            continue
        path = os.path.join(parent, e)
        final = os.path.join(parent, m["name"])
        if m["what"] == "old" and not os.path.lexists(final):
            os.replace(path, final)  # killed between the two renames of a swap
            logger.warning("Restored %s from %s (left by a killed process)", final, e)
            continue
        logger.info("Removing %s (left by killed process %s)", path, m["pid"])
        shutil.rmtree(path, ignore_errors=True)


def remove_dir(path):
    """Delete a folder so that a kill leaves either all of it or nothing visible."""
    if not os.path.isdir(path):
        return
    parent, name = os.path.split(os.path.abspath(path.rstrip("/")))
    trash = _temp(parent, name, "del")
    os.replace(path, trash)
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


def io_error(path, e):
    """An OutputError that names the path and the cause of an OSError."""
    why = {errno.ENOSPC: "the disk is full", errno.EFBIG: "file too large (a file-size limit: see "
           "`ulimit -f`)", errno.EDQUOT: "disk quota exceeded", errno.EACCES: "permission denied",
           errno.EROFS: "read-only file system", errno.EPERM: "operation not permitted"}
    cause = why.get(getattr(e, "errno", None), getattr(e, "strerror", None) or str(e))
    return OutputError(f"cannot write {path}: {cause} ({type(e).__name__}: {e}); nothing was "
                       "replaced")


def atomic_dir_write(final_dir, write_fn, kind, verify=None, marker=True):
    """Write a folder through a temp sibling, verify it, then swap it into place.

    ``write_fn(tmp)`` fills the temp folder; ``verify(tmp)`` (optional) raises
    if what was written is not right (a reload). Only then does an existing
    ``final_dir`` (which the caller has allowed with ``check_save_dir``) give
    way; a kill at any point leaves the old or the new folder in place, and
    its temp folders are cleaned up by the next writer.
    """
    final_dir = os.path.abspath(final_dir.rstrip("/") or final_dir)
    parent, name = os.path.split(final_dir)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise io_error(parent, e) from e
    clean_stale(parent)
    tmp, old = _temp(parent, name, "tmp"), _temp(parent, name, "old")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.makedirs(tmp)
        write_fn(tmp)
        if marker:
            write_marker(tmp, kind)
        _fsync_tree(tmp)
        if verify is not None:
            verify(tmp)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise io_error(final_dir, e) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.lexists(final_dir):
        os.replace(final_dir, old)
    os.replace(tmp, final_dir)
    shutil.rmtree(old, ignore_errors=True)
    return final_dir


def check_files_written(folder, names):
    """Each named file exists and is not empty (paddle's C++ savers can fail silently)."""
    for n in names:
        p = os.path.join(folder, n)
        if not os.path.isfile(p) or os.path.getsize(p) == 0:
            raise OutputError(f"writing {p} failed: the file is missing or empty (disk full or a "
                              "file-size limit?)")
