"""The rule: which save paths a command may write (check_save_dir, check_save_file,
check_train_dir) and which checkpoint folders may be replaced."""
import os

from .common import (IN_PLACE, LOCK, OutputError, _CHECKPOINT_FILES, _TRAIN_ENTRIES, _read_json,
                     _sample, inside)
from .locks import _lock_holder
from .markers import _visible, foreign_entries, kind_of, read_marker


def _check_common(path, kind, inputs, flag):
    if not path:
        raise OutputError(f"{flag} is required")
    for src in inputs:
        if src and inside(src, path):
            what = "is" if os.path.realpath(src) == os.path.realpath(path) else "contains"
            raise OutputError(
                f"{flag} {path} {what} the input {src}: the {kind} would be written over what the "
                f"command reads. Choose another {flag} (--overwrite never replaces an input)")
    if os.path.islink(path):
        raise OutputError(f"{flag} {path} is a symbolic link; give the folder or file it points "
                          "to, or another path")


def check_save_dir(save_dir, kind, overwrite=False, inputs=(), flag="--save_dir"):
    """Refuse a folder that an output of ``kind`` would destroy (see the module docstring)."""
    _check_common(save_dir, kind, inputs, flag)
    if os.path.lexists(save_dir) and not os.path.isdir(save_dir):
        raise OutputError(f"{flag} {save_dir} is an existing file, not a folder; choose another "
                          f"{flag} (nothing was written)")
    if not os.path.isdir(save_dir):
        return
    if os.path.realpath(save_dir) in (os.path.realpath(os.getcwd()), os.path.realpath("/"),
                                      os.path.realpath(os.path.expanduser("~"))):
        raise OutputError(f"{flag} {save_dir} is the current, home or root folder; the {kind} "
                          f"needs a folder of its own, e.g. {flag} output/{kind}")
    holder = _lock_holder(os.path.join(save_dir, LOCK))
    if holder is not None:
        raise OutputError(f"{flag} {save_dir} is in use by a running training run (pid "
                          f"{holder.get('pid')} on {holder.get('host')}); choose another {flag}")
    entries = _visible(save_dir)
    if not entries:
        return
    found = kind_of(save_dir)
    if found is None:
        raise OutputError(
            f"{flag} {save_dir} exists and holds files segqat did not write ({_sample(entries)}); "
            f"it is not replaced, even with --overwrite. Choose a new or empty {flag}")
    if found != kind:
        raise OutputError(
            f"{flag} {save_dir} holds a {found} output (e.g. {_sample(entries)}); a {kind} is not "
            f"written over it, even with --overwrite. Choose another {flag}")
    resumable = kind in IN_PLACE and (read_marker(save_dir) or {}).get("complete") is False
    if not overwrite and not resumable:
        raise OutputError(
            f"{flag} {save_dir} holds an earlier {kind} ({_sample(entries)}). Pass --overwrite to "
            "replace it (the old one is kept until the new one is complete), or choose another "
            f"{flag}")
    foreign = foreign_entries(save_dir)
    if foreign is None:
        raise OutputError(
            f"{flag} {save_dir} holds an earlier {kind} that does not list the files segqat wrote "
            f"(an older version wrote it); it is not replaced. Delete it yourself or choose "
            f"another {flag}")
    if foreign:
        raise OutputError(
            f"{flag} {save_dir} holds an earlier {kind}, and also files segqat did not write "
            f"there: {_sample(foreign, 5)}. Nothing was replaced: move them out of {save_dir} "
            f"or choose another {flag}")


# single-file outputs: kind -> (what it is, a test that the file is one segqat wrote)
def _json_with(*keys):
    def test(path):
        d = _read_json(path)
        return isinstance(d, dict) and all(k in d for k in keys)
    return test


def _segqat_onnx(path):
    try:
        import onnx
        return onnx.load(path, load_external_data=False).producer_name.startswith("segqat")
    except Exception:  # noqa: BLE001  (not an ONNX file at all)
        return False


FILE_KINDS = {
    "metrics": ("a metrics file of tools/val.py or slim/quant/qat_val.py",
                _json_with("mIoU", "model_path", "config")),
    "latency": ("a results file of slim/quant/bench_latency.py", _json_with("machine", "models")),
    "onnx": ("an ONNX model written by segqat", _segqat_onnx),
}


def _same_file(a, b):
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_save_file(path, kind, overwrite=False, inputs=(), flag="--save_path"):
    """Refuse a single-file output that would replace an input, a foreign file or (without
    ``overwrite``) an earlier output."""
    if not path:
        raise OutputError(f"{flag} is required")
    what, ours = FILE_KINDS[kind]
    if os.path.isdir(path):
        raise OutputError(f"{flag} {path} is a folder; give a file name, e.g. "
                          f"{os.path.join(path, kind + ('.onnx' if kind == 'onnx' else '.json'))}")
    for src in inputs:
        if src and _same_file(path, src):
            raise OutputError(f"{flag} {path} is the input {src}: it is never written over, "
                              f"--overwrite or not. Choose another {flag}")
    if not os.path.lexists(path):
        return
    if not overwrite:
        raise OutputError(f"{flag} {path} exists; give --overwrite to replace it (or choose "
                          f"another {flag})")
    if not ours(path):
        raise OutputError(f"{flag} {path} exists and is not {what}; it is not replaced, even "
                          f"with --overwrite. Choose another {flag}")


def checkpoint_dirs(save_dir):
    """``iter_N`` folders of a training save_dir, by N."""
    out = []
    for e in os.listdir(save_dir) if os.path.isdir(save_dir) else []:
        if e.startswith("iter_") and e[5:].isdigit() and os.path.isdir(os.path.join(save_dir, e)):
            out.append((int(e[5:]), os.path.join(save_dir, e)))
    return [p for _, p in sorted(out)]


def check_train_dir(save_dir, resume_model=None, overwrite=False, inputs=()):
    """Refuse a training save_dir that holds another run's checkpoints, another output or files
    that are not a training run's.

    A training run's folder may hold other files (notes): training only adds
    ``iter_N/``, ``best_model/``, ``config.yaml``, ``train.log``, ``vdl_log/``
    and never deletes anything else.
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
    if resume_model and inside(resume_model, save_dir):
        return  # continuing the run that lives there
    entries = _visible(save_dir)
    is_run = found == "train" or any(e == "best_model" or (e.startswith("iter_") and e[5:].isdigit())
                                     for e in entries)
    foreign = [e for e in entries if e not in _TRAIN_ENTRIES
               and not (e.startswith("iter_") and e[5:].isdigit())]
    if foreign and not is_run:
        raise OutputError(
            f"--save_dir {save_dir} exists and holds files segqat did not write "
            f"({_sample(foreign)}); a training run is not started among them. Choose a new or "
            "empty --save_dir")
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
        if src and overwrite and inside(src, save_dir):
            raise OutputError(f"--overwrite would delete the input {src}, which is inside "
                              f"--save_dir {save_dir}; choose another --save_dir")


def _check_checkpoint(path, shown=None):
    """A checkpoint folder is replaced only while it holds nothing but a checkpoint's files."""
    shown = shown or path
    if os.path.lexists(path) and not os.path.isdir(path):
        raise OutputError(f"cannot write the checkpoint {shown}: a file is in its place")
    if os.path.isdir(path):
        extra = [e for e in _visible(path) if e not in _CHECKPOINT_FILES]
        if extra:
            raise OutputError(f"the checkpoint {shown} also holds files segqat did not write "
                              f"({_sample(extra)}); it is not replaced. Move them out of it")
