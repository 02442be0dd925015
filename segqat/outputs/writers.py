"""Writers: a folder or file written beside its target, verified, re-checked and swapped in."""
import errno
import os
import shutil

from .claims import _swap_rule, claimed
from .common import OutputError, _sample
from .errors import _write_failure, io_error
from .markers import _visible, foreign_entries, listing, update_marker, write_marker
from .rules import _check_checkpoint
from .temp import _free_name, _fsync_tree, _make_temp, _mark_temp, _remove_temp_marker, clean_stale


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
