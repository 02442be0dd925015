"""Failed writes: an OSError as an OutputError naming the path, checked image and file writes."""
import errno
import os

from .common import WRITE_ERRNOS, OutputError, inside


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
