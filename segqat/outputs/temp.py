"""Temporary folders (.NAME.tmp-PID, .old-PID, .del-PID), their cleaning, removal and fsync."""
import contextlib
import json
import os
import shutil

from .common import LOCK_SUFFIX, TEMP_MARKER, _TEMP_RE, _host, _now, _read_json, logger, pid_alive
from .locks import _clean_lock


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
