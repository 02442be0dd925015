"""What the zoo's runner, step measurements and table share: the repository root, the steps,
the cross-check runtimes, the zoo's error, finding the entries, and atomic JSON writes.

It imports nothing of the zoo, so that ``measure`` (run in the step subprocess) needs
neither the runner nor the table.
"""
import glob
import hashlib
import json
import os

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD_STEPS = ("fp32_train", "qat_train", "fp32_export", "int8_export", "evaluate")
LATENCY_STEPS = ("latency",)
# runtimes that also run each entry's exports in the evaluate step (beside Paddle Inference,
# which decides ✓): OpenVINO executes the export's own quantize/dequantize placement, so it
# tells whether a Paddle Inference mismatch is in the export or in oneDNN's INT8 passes
CROSS_CHECK_RUNTIMES = ("openvino",)


class ZooError(ValueError):
    pass


def discover(config_dir, models=None):
    """``{name: config path}`` of ``config_dir/*.yml``, restricted to ``models`` if given."""
    found = {os.path.splitext(os.path.basename(p))[0]: p
             for p in sorted(glob.glob(os.path.join(config_dir, "*.yml")))}
    if not found:
        raise ZooError(f"--config_dir {config_dir}: no *.yml configs in it")
    if models:
        unknown = [m for m in models if m not in found]
        if unknown:
            raise ZooError(f"--models {' '.join(unknown)}: no such entry in {config_dir}. "
                           f"Valid: {', '.join(found)}")
        found = {m: found[m] for m in models}
    return found


def file_hash(path):
    """The first 12 hex digits of the file's SHA-1: an entry's config hash in state.json and
    zoo.json (a changed config starts the entry over; a carried-over row needs the same hash)."""
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()[:12]


def write_json(path, obj, indent=2):
    """Write ``obj`` to ``path`` through ``path.tmp`` and a rename (never half a file)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=indent)
    os.replace(tmp, path)
