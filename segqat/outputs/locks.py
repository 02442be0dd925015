"""Locks: an fcntl.flock on a lock file beside the target (or in a training run's folder)."""
import contextlib
import fcntl
import json
import os
import time

from .common import LOCK_SUFFIX, OutputError, _host, _now, logger, pid_alive
from .errors import io_error


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
