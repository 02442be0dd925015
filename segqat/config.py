"""PaddleSeg-schema YAML configs: load, merge ``_base_``, apply ``--opts``, validate.

    cfg = load_config("configs/bisenetv2/bisenetv2_synthetic_64x64.yml",
                      opts=["batch_size=8"], overrides={"iters": 100})
    cfg.save("out/config.yaml")

Rules (PaddleSeg's, plus strictness):

* ``_base_`` is a path relative to the file that names it, or a list of them;
  later bases override earlier ones, the file itself overrides its bases.
* Dicts merge recursively; a dict with ``_inherited_: False`` replaces the
  base's dict instead of merging into it. Lists are replaced.
* ``--opts a.b=v`` sets a value (parsed as YAML: ``3``, ``0.1``, ``[1,2]``).
* Unknown top-level keys, keys of the known sections with a wrong type, and
  missing files are errors that name the key, the file and what is allowed.
  Arguments of components (``type:`` dicts) are checked against the
  component's signature when it is built (see ``builder``).
"""
import copy
import logging
import os

import yaml

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A problem with a config file or an override; the message says where."""


# Top-level keys of PaddleSeg 2.8's schema, plus ``quant_config`` (ours).
_SCHEMA = {
    "batch_size": int,
    "iters": int,
    "train_dataset": dict,
    "val_dataset": dict,
    "test_dataset": dict,
    "model": dict,
    "optimizer": dict,
    "lr_scheduler": dict,
    "loss": dict,
    "distill_loss": dict,
    "test_config": dict,
    "export": dict,
    "quant_config": dict,
    "to_static_training": bool,
}

# Keys inside sections that we interpret ourselves (not passed to a component).
_SECTION_KEYS = {
    "loss": {"types": list, "coef": list},
    "test_config": {"is_slide": bool, "crop_size": list, "stride": list,
                    "aug_eval": bool, "scales": (list, float, int),
                    "flip_horizontal": bool, "flip_vertical": bool},
    "export": {"transforms": list},
    "quant_config": {
        "weight_quantize_type": str, "activation_quantize_type": str,
        "weight_bits": int, "activation_bits": int, "moving_rate": float,
        "quantizable_layer_type": list, "skip_layers": list,
        "fuse_conv_bn": bool, "window_size": int, "dtype": str,
        "weight_granularity": str, "pact": bool, "pact_alpha_init": (float, int),
        "quantize_scope": str,
        "calibration_list": str,
    },
}


def _type_name(t):
    if isinstance(t, tuple):
        return " or ".join(x.__name__ for x in t)
    return t.__name__


def _read_yaml(path):
    if not os.path.isfile(path):
        raise ConfigError(f"Config file not found: {path}")
    with open(path, "r", encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"Config file {path} is not valid YAML: {e}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a mapping at the top level, "
                          f"got {type(data).__name__}")
    return data


def _merge(base, child):
    """Merge ``child`` into a copy of ``base`` (PaddleSeg semantics)."""
    out = copy.deepcopy(base)
    for key, val in child.items():
        if isinstance(val, dict) and isinstance(out.get(key), dict):
            if val.get("_inherited_", True) is False:
                out[key] = {k: v for k, v in val.items() if k != "_inherited_"}
            else:
                out[key] = _merge(out[key], val)
        elif isinstance(val, dict):
            out[key] = {k: v for k, v in val.items() if k != "_inherited_"}
        else:
            out[key] = copy.deepcopy(val)
    return out


def _strip_inherited(d):
    if isinstance(d, dict):
        return {k: _strip_inherited(v) for k, v in d.items() if k != "_inherited_"}
    if isinstance(d, list):
        return [_strip_inherited(v) for v in d]
    return d


def _load_recursive(path, origins, stack=()):
    path = os.path.abspath(path)
    if path in stack:
        chain = " -> ".join(stack + (path,))
        raise ConfigError(f"Circular _base_ in config files: {chain}")
    data = _read_yaml(path)
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"'_base_' in {path} must be a path or a list of paths, got {bases!r}")
    merged = {}
    for b in bases:
        base_path = os.path.join(os.path.dirname(path), b)
        if not os.path.isfile(base_path):
            raise ConfigError(f"_base_ file not found: {base_path} (named in {path})")
        merged = _merge(merged, _load_recursive(base_path, origins, stack + (path,)))
    for key in data:
        origins[key] = path
    return _merge(merged, data)


def _parse_opt(opt):
    if "=" not in opt:
        raise ConfigError(f"--opts item {opt!r} must look like key.sub=value")
    key, val = opt.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--opts item {opt!r} has an empty key")
    try:
        val = yaml.safe_load(val)
    except yaml.YAMLError:
        pass
    return key.split("."), val


def _set_path(d, keys, val, opt):
    cur = d
    for i, k in enumerate(keys[:-1]):
        nxt = cur.get(k) if isinstance(cur, dict) else None
        if isinstance(cur, list) and k.isdigit() and int(k) < len(cur):
            nxt = cur[int(k)]
            cur = nxt
            continue
        if nxt is None:
            if not isinstance(cur, dict):
                raise ConfigError(f"--opts {opt}: {'.'.join(keys[:i + 1])} is not a mapping")
            cur[k] = nxt = {}
        cur = nxt
    last = keys[-1]
    if isinstance(cur, list) and last.isdigit() and int(last) < len(cur):
        cur[int(last)] = val
    elif isinstance(cur, dict):
        cur[last] = val
    else:
        raise ConfigError(f"--opts {opt}: {'.'.join(keys[:-1])} is not a mapping")


class Config:
    """A resolved, validated config. ``cfg.dic`` is the plain dict."""

    def __init__(self, dic, path, origins=None):
        self.dic = dic
        self.path = path
        self._origins = origins or {}
        self.validate()

    # -- access -----------------------------------------------------------
    def get(self, key, default=None):
        return self.dic.get(key, default)

    def __getitem__(self, key):
        return self.dic[key]

    def __contains__(self, key):
        return key in self.dic

    def section(self, key):
        """A deep copy of a section (components mutate their dicts)."""
        return copy.deepcopy(self.dic.get(key) or {})

    @property
    def batch_size(self):
        return self.dic.get("batch_size", 1)

    @property
    def iters(self):
        return self.dic.get("iters")

    def where(self, key):
        return self._origins.get(key, self.path)

    # -- checks -----------------------------------------------------------
    def validate(self):
        for key, val in self.dic.items():
            if key not in _SCHEMA:
                raise ConfigError(
                    f"Unknown config key '{key}' in {self.where(key)}. "
                    f"Allowed top-level keys: {', '.join(sorted(_SCHEMA))}")
            expected = _SCHEMA[key]
            if expected is int and isinstance(val, bool) or not isinstance(val, expected):
                raise ConfigError(
                    f"Config key '{key}' in {self.where(key)} must be {_type_name(expected)}, "
                    f"got {type(val).__name__} ({val!r})")
        for key in ("batch_size", "iters"):
            if key in self.dic and self.dic[key] <= 0:
                raise ConfigError(f"Config key '{key}' in {self.where(key)} must be > 0, "
                                  f"got {self.dic[key]}")
        for section, keys in _SECTION_KEYS.items():
            sec = self.dic.get(section)
            if not sec:
                continue
            for k, v in sec.items():
                if k not in keys:
                    raise ConfigError(
                        f"Unknown key '{section}.{k}' in {self.where(section)}. "
                        f"Allowed: {', '.join(sorted(keys))}")
                t = keys[k]
                ok = isinstance(v, t) and not (t is int and isinstance(v, bool))
                if t is float and isinstance(v, int) and not isinstance(v, bool):
                    ok = True
                if not ok:
                    raise ConfigError(
                        f"Config key '{section}.{k}' in {self.where(section)} must be "
                        f"{_type_name(t)}, got {type(v).__name__} ({v!r})")
        loss = self.dic.get("loss")
        if loss:
            types, coef = loss.get("types", []), loss.get("coef", [])
            if len(types) != len(coef):
                raise ConfigError(
                    f"loss.types has {len(types)} entries but loss.coef has {len(coef)} "
                    f"in {self.where('loss')}; they must have the same length")
        for name in ("model", "train_dataset", "val_dataset", "optimizer", "lr_scheduler"):
            sec = self.dic.get(name)
            if sec and "type" not in sec:
                raise ConfigError(f"Config section '{name}' in {self.where(name)} has no 'type'")

    def require(self, *keys):
        for key in keys:
            if not self.dic.get(key):
                raise ConfigError(f"Config {self.path} has no '{key}', which this command needs")

    # -- output -----------------------------------------------------------
    def to_yaml(self):
        return yaml.safe_dump(self.dic, sort_keys=False, default_flow_style=None)

    def save(self, path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(self.to_yaml())
        os.replace(tmp, path)
        logger.info("Full config saved to %s", path)


def load_config(path, opts=None, overrides=None):
    """Load ``path`` with its bases, apply ``--opts`` then flag overrides.

    ``overrides`` maps dotted keys to values that command-line flags set
    (``{"batch_size": 8, "lr_scheduler.learning_rate": 0.001}``); entries
    whose value is None are skipped, so a flag left unset changes nothing
    while ``--learning_rate 0`` does set 0.
    """
    origins = {}
    dic = _load_recursive(path, origins)
    for opt in opts or []:
        keys, val = _parse_opt(opt)
        if keys[0] not in _SCHEMA:
            raise ConfigError(
                f"--opts {opt}: unknown config key '{keys[0]}'. "
                f"Allowed top-level keys: {', '.join(sorted(_SCHEMA))}")
        _set_path(dic, keys, val, opt)
        origins[keys[0]] = f"--opts {opt}"
    for key, val in (overrides or {}).items():
        if val is not None:
            _set_path(dic, key.split("."), val, key)
            origins.setdefault(key.split(".")[0], path)
    return Config(_strip_inherited(dic), os.path.abspath(path), origins)
