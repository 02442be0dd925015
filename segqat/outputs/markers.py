"""Markers: .segqat.json in an output folder (its kind, the files segqat wrote into it)."""
import json
import os
import shutil

from .common import (KINDS, LOCK, LOCK_SUFFIX, MARKER, TEMP_MARKER, _LEGACY_FILES, _TEMP_RE,
                     OutputError, _now, _read_json)
from .errors import io_error
from .locks import _read_lock
from .temp import _make_temp, _temp_info


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
