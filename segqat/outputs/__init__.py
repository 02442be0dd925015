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
# the rule in one package, one job per module (each imports only those before it):
# common (names, OutputError, helpers) -> errors -> locks -> temp -> markers -> rules -> claims
# -> writers
from .claims import Claim, claim, claimed
from .common import (IN_PLACE, KINDS, LOCK, LOCK_SUFFIX, MARKER, TEMP_MARKER, WRITE_ERRNOS,
                     OutputError, inside, pid_alive)
from .errors import check_files_written, imwrite, io_error
from .locks import lock, lock_path
from .markers import foreign_entries, kind_of, listing, read_marker, update_marker, write_marker
from .rules import (FILE_KINDS, check_save_dir, check_save_file, check_train_dir,
                    checkpoint_dirs)
from .temp import clean_stale, remove_dir
from .writers import atomic_dir_write, atomic_file_write, place_new, write_into

__all__ = [
    "Claim", "FILE_KINDS", "IN_PLACE", "KINDS", "LOCK", "LOCK_SUFFIX", "MARKER", "OutputError",
    "TEMP_MARKER", "WRITE_ERRNOS", "atomic_dir_write", "atomic_file_write", "check_files_written",
    "check_save_dir", "check_save_file", "check_train_dir", "checkpoint_dirs", "claim", "claimed",
    "clean_stale", "foreign_entries", "imwrite", "inside", "io_error", "kind_of", "listing", "lock",
    "lock_path", "pid_alive", "place_new", "read_marker", "remove_dir", "update_marker",
    "write_into", "write_marker",
]
