"""What every part of the output rule uses: names, kinds, OutputError, process and JSON helpers."""
import errno
import json
import logging
import os
import re
import socket
import time

logger = logging.getLogger("segqat.outputs")  # one logger for the whole rule, as before the split


MARKER = ".segqat.json"            # in an output folder: kind, files written
LOCK = ".segqat.lock"              # in a training run's folder, while it runs
TEMP_MARKER = ".segqat-temp.json"  # in a temp/old/del folder: host, pid, kind
LOCK_SUFFIX = ".segqat.lock"       # beside a target: .NAME.segqat.lock
KINDS = ("train", "export", "analysis", "sweep", "benchmark", "prediction", "dataset", "lite")
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


# ---------------------------------------------------------------- paths

def inside(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _sample(entries, n=3):
    entries = list(entries)
    return ", ".join(entries[:n]) + (f" and {len(entries) - n} more" if len(entries) > n else "")
