"""Claims: a target checked and locked when a command starts, held until its swap."""
import contextlib
import os
import shutil

from .common import IN_PLACE, KINDS, OutputError
from .errors import io_error
from .locks import lock, lock_path
from .markers import read_marker, update_marker, write_marker
from .rules import FILE_KINDS, check_save_dir, check_save_file
from .temp import _make_temp, clean_stale


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
