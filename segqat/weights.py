"""Reading and checking weights files (``.pdparams``, ``.pdopt``) safely.

``paddle.load`` is a plain pickle load: a crafted ``.pdparams`` runs code
when it is loaded. ``load_state`` reads the same files with an unpickler
that builds only what a weights file holds (numpy arrays, numbers, strings,
dicts, lists) and refuses anything else before it is created, naming the
file and what it asked for. It reads a file once.

    state = load_state("out/best_model/model.pdparams")      # {name: ndarray}
    load_into(model, state, path)                            # strict: keys, shapes, finite
"""
import logging
import os
import pickle

import numpy as np

logger = logging.getLogger(__name__)

# The globals a paddle.save'd state dict needs (numpy 1.x and 2.x names).
_ALLOWED = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("collections", "OrderedDict"),
}
_PLAIN = (str, bytes, int, float, bool, type(None), np.generic)
# paddle.save's bookkeeping keys (paddle/framework/io.py)
_NAME_TABLE = "StructuredToParameterName@@"
_BIG_PARAM = "UnpackBigParamInfor@@"


class WeightsError(ValueError):
    """Weights that are missing, unreadable, unsafe, non-finite or do not fit the model."""


def _latin1_bytes(where):
    """Pickle protocol 2 writes a bytes object (an array's data) as
    ``_codecs.encode(text, "latin1")``; this builds exactly that and nothing else."""
    def encode(obj, encoding="utf-8", errors="strict"):
        if not isinstance(obj, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
            raise WeightsError(f"{where} is not a plain weights file: _codecs.encode with "
                               f"{type(obj).__name__}, {encoding!r}, which weights never need; "
                               "not loaded")
        return obj.encode("latin1")
    return encode


class _Unpickler(pickle.Unpickler):
    def __init__(self, f, path, what):
        super().__init__(f, encoding="latin1")
        self._where = f"{what}: {path}"

    def find_class(self, module, name):
        if (module, name) == ("_codecs", "encode"):  # paddle.save(..., protocol=2)
            return _latin1_bytes(self._where)
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise WeightsError(
            f"{self._where} is not a plain weights file: it asks to create {module}.{name}, which "
            "weights never need, so it was not loaded (a pickle can run code). Use weights "
            "written by paddle.save / segqat")

    def persistent_load(self, pid):
        raise WeightsError(f"{self._where} is not a plain weights file (persistent ids); not loaded")


def _check_plain(obj, where, depth=0):
    if depth > 20:
        raise WeightsError(f"{where}: nested too deeply for a weights file")
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise WeightsError(f"{where}: holds an array of Python objects, not weights")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(k, where, depth + 1)
            _check_plain(v, where, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _check_plain(v, where, depth + 1)
    elif not isinstance(obj, _PLAIN):
        raise WeightsError(f"{where}: holds a {type(obj).__name__}, not weights")


def load_state(path, what="--model_path"):
    """The dict in a ``.pdparams``/``.pdopt`` file, arrays as numpy; safe against payloads."""
    if not path:
        raise WeightsError(f"{what} is required")
    if os.path.isdir(path):
        found = [os.path.join(path, *p) for p in (("model.pdparams",), ("best_model", "model.pdparams"))
                 if os.path.isfile(os.path.join(path, *p))]
        hint = (f"; did you mean {what} {found[0]}?" if found else
                " (give the .pdparams file, e.g. save_dir/best_model/model.pdparams)")
        raise WeightsError(f"{what}: {path} is a folder, not a weights file{hint}")
    if not os.path.isfile(path):
        raise WeightsError(f"{what}: weights file not found: {path}")
    if os.path.getsize(path) == 0:
        raise WeightsError(f"{what}: {path} is empty (0 bytes): an interrupted or failed write?")
    try:
        with open(path, "rb") as f:
            state = _Unpickler(f, path, what).load()
    except WeightsError:
        raise
    except Exception as e:
        raise WeightsError(f"{what}: cannot read weights file {path}: {type(e).__name__}: {e} "
                           "(truncated, or not a paddle.save file)") from e
    if not isinstance(state, dict):
        raise WeightsError(f"{what}: {path} does not hold a state dict (got {type(state).__name__})")
    _check_plain(state, f"{what}: {path}")
    if _BIG_PARAM in state:
        state = _join_big_params(state)
    state.pop(_NAME_TABLE, None)
    return state


def _join_big_params(state):
    """paddle.save splits arrays over 4 GB into slices; join them (same rule as paddle)."""
    info = state.pop(_BIG_PARAM)
    for key, meta in info.items():
        parts = [state.pop(s) for s in meta["slices"]]
        state[key] = np.concatenate(parts).reshape(meta["OriginShape"])
    return state


# A weight or statistic of this magnitude is a diverged run, not a model (a finite
# divergence reached 1.2e33 and predicted all background): refused like NaN/Inf
MAX_ABS_WEIGHT = 1e10


def non_finite(state):
    """Names of float arrays in ``state`` (recursively) that hold NaN, Inf or a value
    beyond +-MAX_ABS_WEIGHT (a diverged run)."""
    bad = []
    for k, v in state.items():
        if isinstance(v, dict):
            bad += [f"{k}.{n}" for n in non_finite(v)]
            continue
        a = v if isinstance(v, np.ndarray) else (np.asarray(v.numpy()) if hasattr(v, "numpy") else None)
        if a is not None and a.dtype.kind == "f" and a.size and not (
                np.isfinite(a).all() and np.abs(a).max() <= MAX_ABS_WEIGHT):
            bad.append(k)
    return bad


def require_finite(state, path, what="--model_path"):
    bad = non_finite(state)
    if bad:
        raise WeightsError(
            f"{what}: {path} holds non-finite weights (NaN/Inf or |w| > {MAX_ABS_WEIGHT:g} in "
            f"{len(bad)} tensor(s), e.g. "
            f"{', '.join(bad[:3])}): it came from a diverged run and cannot be used. Use an "
            "earlier checkpoint, or retrain with a lower learning rate")


def load_into(model, state, path, what="--model_path"):
    """Set ``model``'s weights from ``state`` strictly: every key present, every shape equal."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [(k, list(np.shape(state[k])), list(own[k].shape))
                  for k in own if k in state and list(np.shape(state[k])) != list(own[k].shape)]
    if missing or unexpected or mismatched:
        lines = [f"{what}: weights in {path} do not fit the configured model "
                 f"({type(model).__name__}, {len(own)} tensors; file has {len(state)})."]
        if mismatched:
            lines.append("Shape mismatches (name: file vs model): " + "; ".join(
                f"{k}: {a} vs {b}" for k, a, b in mismatched[:5])
                + (f" ... and {len(mismatched) - 5} more" if len(mismatched) > 5 else ""))
        if missing:
            lines.append(f"Missing in file ({len(missing)}): {', '.join(missing[:5])}"
                         + (" ..." if len(missing) > 5 else ""))
        if unexpected:
            lines.append(f"Not in model ({len(unexpected)}): {', '.join(unexpected[:5])}"
                         + (" ..." if len(unexpected) > 5 else ""))
        raise WeightsError("\n".join(lines))
    _match_dtypes(own, state, path, what)
    require_finite(state, path, what)
    model.set_state_dict(state)
    logger.info("Loaded %d tensors from %s", len(state), path)


def _match_dtypes(own, state, path, what):
    """Floating-point arrays of another precision (float16 weights, float64) are converted to
    the model's, as a user expects; any other dtype mismatch is a WeightsError naming the tensor
    (paddle's own check is an AssertionError)."""
    cast = {}
    for k, t in own.items():
        a = state[k]
        if not isinstance(a, np.ndarray):
            continue
        try:
            want = np.dtype(str(t.dtype).split(".")[-1])  # paddle.float32 -> float32
        except TypeError:
            continue  # no numpy dtype (bfloat16): left to paddle
        if a.dtype == want:
            continue
        if a.dtype.kind == "f" and want.kind == "f":
            state[k] = a.astype(want)
            cast[str(a.dtype)] = cast.get(str(a.dtype), 0) + 1
        else:
            raise WeightsError(f"{what}: {path}: tensor {k} is {a.dtype} but the model's is {want}; "
                               "these are not weights of this model")
    for dtype, n in cast.items():
        logger.info("%s: converted %d %s tensor(s) to the model's precision", path, n, dtype)


def load_weights(model, path, what="--model_path"):
    """``load_state`` + ``load_into``."""
    load_into(model, load_state(path, what), path, what)


def to_tensors(state):
    """``state`` with arrays as paddle tensors (what ``paddle.load`` returns), for optimizers."""
    import paddle
    return {k: (to_tensors(v) if isinstance(v, dict)
                else paddle.to_tensor(v) if isinstance(v, np.ndarray) else v)
            for k, v in state.items()}
