"""PaddleSeg-schema YAML configs: load, merge ``_base_``, apply ``--opts``, validate.

    cfg = load_config("configs/bisenetv2/bisenetv2_synthetic_64x64.yml",
                      opts=["batch_size=8"], overrides={"iters": 100})
    cfg.save("out/config.yaml")

Rules (PaddleSeg's, plus strictness):

* ``_base_`` is a path relative to the file that names it, or a list of them;
  later bases override earlier ones, the file itself overrides its bases.
* Dicts merge recursively; a dict with ``_inherited_: False`` replaces the
  base's dict instead of merging into it. Lists are replaced.
* ``--opts a.b=v`` sets a value, read as PaddleSeg reads it (a Python literal: ``None``,
  ``True``, ``0.75,1.0,1.25``), else as YAML (``[a, b]``, ``true``), else as text.
* Unknown top-level keys, keys of the known sections with a wrong type, and
  missing files are errors that name the key, the file and what is allowed.
  Arguments of components (``type:`` dicts) are checked against the
  component's signature when it is built (see ``builder``).

PaddleSeg 2.8's own rules (``paddleseg/cvlibs/config_checker.py`` and
``SegBuilder.model`` / ``_build_loss`` in ``paddleseg/cvlibs/builder.py``),
which its shipped configs rely on, applied when a config is resolved:

* ``loss`` (and ``distill_loss``) with one entry in ``types`` and several
  in ``coef`` repeats that type over ``coef`` (ANN, GCNet, PSPNet, U2Net...).
* ``num_classes``, ``ignore_index`` and the image channels come from the
  dataset sections (``num_classes``/``ignore_index``/``img_channels`` of the
  generic ``Dataset``) or, for a named data set, from its class in paddleseg's
  DATASETS registry (``Cityscapes.NUM_CLASSES`` = 19, ``IGNORE_INDEX``,
  ``IMG_CHANNELS``). Every place that states one must agree (model, each
  dataset section, each dataset class, each loss's ``ignore_index``), else a
  ConfigError names the file, keys and values. ``num_classes`` is then
  written into ``model`` (as PaddleSeg does) and the others are exposed as
  ``cfg.num_classes``, ``cfg.ignore_index``, ``cfg.img_channels``.
* A top-level ``learning_rate`` (PaddleSeg <= 2.2's schema, still in its
  GloRe config) is ignored by PaddleSeg 2.8; here too, with a warning.
"""
import ast
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
                    "flip_horizontal": bool, "flip_vertical": bool,
                    # PaddleSeg's val computes AUC-ROC with it (its DRIVE/STARE/
                    # HRF/CHASE_DB1 configs set it); accepted, not computed here
                    "auc_roc": bool},
    "export": {"transforms": list, "input_shape": list},
    "distill_loss": {"types": list, "coef": list},
    "quant_config": {
        "weight_quantize_type": str, "activation_quantize_type": str,
        "weight_bits": int, "activation_bits": int, "moving_rate": float,
        "quantizable_layer_type": list, "skip_layers": list,
        "fuse_conv_bn": bool, "window_size": int, "dtype": str,
        "weight_granularity": str, "pact": bool, "pact_alpha_init": (float, int),
        "quantize_scope": str,
        "calibration_list": str, "int8_residual_fusion": bool, "skip_layer_kinds": list,
    },
}


def _type_name(t):
    if isinstance(t, tuple):
        return " or ".join(x.__name__ for x in t)
    return t.__name__


# A config or deploy.yaml is a few KB. Larger files, and aliases that expand to more values
# than this (a "billion laughs" file: 9 aliases of 9 aliases ... build gigabytes), are
# refused before anything is built.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_VALUES = 100_000


class _YamlTooBig(yaml.YAMLError):
    pass


def _expanded_values(node, memo, active):
    """How many values ``node`` holds with every alias expanded (stops above MAX_YAML_VALUES)."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:
        raise _YamlTooBig("an alias refers to itself (a recursive structure)")
    active.add(key)
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [x for pair in node.value for x in pair]
    else:
        children = []
    n = 1
    for c in children:
        n += _expanded_values(c, memo, active)
        if n > MAX_YAML_VALUES:
            raise _YamlTooBig(f"its aliases expand to more than {MAX_YAML_VALUES} values (a YAML "
                              "alias bomb?)")
    active.discard(key)
    memo[key] = n
    return n


class _LimitedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that counts the values a document expands to before building it."""

    def compose_document(self):
        node = super().compose_document()
        if node is not None:
            _expanded_values(node, {}, set())
        return node


def read_yaml(path, what="Config file"):
    """The YAML document in ``path``, read safely: at most MAX_YAML_BYTES of UTF-8 text (a BOM
    is allowed), aliases expanding to at most MAX_YAML_VALUES values. Anything else is a
    ConfigError that starts with ``what`` and names the file."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{what} {path} cannot be read: {e.strerror or e}") from e
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(f"{what} {path} is larger than {MAX_YAML_BYTES // 1024} KB; a config is "
                          "a small YAML text file")
    if b"\0" in raw:
        raise ConfigError(f"{what} {path} is a binary file, not a YAML text file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(f"{what} {path}, line {line}: not UTF-8 text (byte "
                          f"0x{raw[e.start]:02x}); a config is a UTF-8 YAML text file") from e
    try:
        return yaml.load(text, Loader=_LimitedLoader)
    except _YamlTooBig as e:
        raise ConfigError(f"{what} {path} refused: {e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path} is not valid YAML: {e}") from e
    except RecursionError as e:
        raise ConfigError(f"{what} {path} is nested too deeply to be a config") from e


def _read_yaml(path):
    if not os.path.isfile(path):
        raise ConfigError(f"Config file not found: {path}")
    data = read_yaml(path)
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
    return key.split("."), parse_opt_value(val)


def parse_opt_value(text):
    """An ``--opts`` value as PaddleSeg 2.8 reads it (``ast.literal_eval``, paddleseg/cvlibs/
    config.py: ``None``, ``True``, ``0.75,1.0,1.25`` -> a tuple, ``'a'``), and what that leaves
    as text as YAML (``[a, b]``, ``true``, ``null``), else the text itself. Tuples become lists,
    as a YAML config holds them."""
    try:
        val = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        try:
            val = yaml.safe_load(text)
        except yaml.YAMLError:
            val = text

    def lists(v):
        if isinstance(v, (tuple, list)):
            return [lists(x) for x in v]
        if isinstance(v, dict):
            return {k: lists(x) for k, x in v.items()}
        return v
    return lists(val)


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
    """A resolved, validated config. ``cfg.dic`` is the plain dict; ``cfg.opts`` the
    ``--opts`` items it was loaded with, as given."""

    opts = ()

    def __init__(self, dic, path, origins=None):
        self.dic = dic
        self.path = path
        self._origins = origins or {}
        if "learning_rate" in self.dic:
            logger.warning("Ignoring top-level 'learning_rate' in %s: PaddleSeg <= 2.2's schema, "
                           "which PaddleSeg 2.8 ignores too; set lr_scheduler.learning_rate "
                           "and lr_scheduler.end_lr instead", self.where("learning_rate"))
            del self.dic["learning_rate"]
        self.validate()
        self.num_classes, self.ignore_index, self.img_channels = _sync_dataset_values(self)

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
        for name in ("loss", "distill_loss"):
            loss = self.dic.get(name)
            if not loss:
                continue
            types, coef = loss.get("types", []), loss.get("coef", [])
            if len(types) == 1 and len(coef) > 1:
                # PaddleSeg's DefaultLossRule: one type stands for every coef
                loss["types"] = [copy.deepcopy(types[0]) for _ in coef]
            elif len(types) != len(coef):
                raise ConfigError(
                    f"{name}.types has {len(types)} entries but {name}.coef has {len(coef)} "
                    f"in {self.where(name)}; give one type per coef, or a single type "
                    f"to use for every coef")
        self._check_numbers()
        for name in ("model", "train_dataset", "val_dataset", "optimizer", "lr_scheduler"):
            sec = self.dic.get(name)
            if sec and "type" not in sec:
                raise ConfigError(f"Config section '{name}' in {self.where(name)} has no 'type'")

    # Numbers that YAML can hold as strings ("0.01", '255'), which paddle then rejects
    # deep inside with a traceback: checked here, with the key and the file.
    _NUMBERS = {
        "lr_scheduler": {"learning_rate": float, "end_lr": float, "power": float,
                         "warmup_start_lr": float, "warmup_iters": int, "decay_steps": int},
        "optimizer": {"momentum": float},
        "train_dataset": {"ignore_index": int, "num_classes": int},
        "val_dataset": {"ignore_index": int, "num_classes": int},
        "model": {"num_classes": int},
    }

    def _check_numbers(self):
        import math
        for section, keys in self._NUMBERS.items():
            sec = self.dic.get(section)
            if not isinstance(sec, dict):
                continue
            for k, t in keys.items():
                if k not in sec:
                    continue
                v = sec[k]
                ok = (isinstance(v, (int, float)) and not isinstance(v, bool)
                      and (t is float or isinstance(v, int)))
                if ok and t is float and not math.isfinite(v):
                    ok = False
                if not ok:
                    what = "an integer" if t is int else "a finite number"
                    hint = " (written in quotes?)" if isinstance(v, str) else ""
                    raise ConfigError(f"Config key '{section}.{k}' in {self.where(section)} must be "
                                      f"{what}, got {type(v).__name__} ({v!r}){hint}")
        lr = self.dic.get("lr_scheduler") or {}
        for k, low in (("learning_rate", "> 0"), ("end_lr", ">= 0"), ("warmup_start_lr", ">= 0")):
            v = lr.get(k)
            if v is not None and (v <= 0 if low == "> 0" else v < 0):
                raise ConfigError(f"Config key 'lr_scheduler.{k}' in {self.where('lr_scheduler')} "
                                  f"must be {low}, got {v!r}")
        scales = (self.dic.get("test_config") or {}).get("scales")
        if scales is not None:
            items = scales if isinstance(scales, list) else [scales]
            if not items or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                or not math.isfinite(v) or v <= 0 for v in items):
                raise ConfigError(f"Config key 'test_config.scales' in {self.where('test_config')} "
                                  f"must be a number > 0 or a list of them, got {scales!r}")
        wd = (self.dic.get("optimizer") or {}).get("weight_decay")
        if wd is not None and not isinstance(wd, dict) and (
                isinstance(wd, bool) or not isinstance(wd, (int, float)) or not math.isfinite(wd)):
            raise ConfigError(f"Config key 'optimizer.weight_decay' in {self.where('optimizer')} must be "
                              f"a finite number or a regularizer mapping, got {type(wd).__name__} ({wd!r})")

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


# ---------------------------------------------------------------- PaddleSeg's sync rules

_DATASET_SECTIONS = ("train_dataset", "val_dataset", "test_dataset")
# (dataset section key, dataset class attribute) per synced value
_DATASET_VALUES = {"num_classes": ("num_classes", "NUM_CLASSES"),
                   "ignore_index": ("ignore_index", "IGNORE_INDEX"),
                   "img_channels": ("img_channels", "IMG_CHANNELS")}


def _registry_class(registry, type_name):
    """A class from paddleseg's registry, or None (the builder reports unknown names)."""
    from paddleseg.cvlibs import manager  # imported on use: loading YAML needs no paddle
    return getattr(manager, registry).components_dict.get(type_name)


def _accepts(cls, arg):
    import inspect
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False
    return arg in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def _default(cls, arg):
    import inspect
    try:
        p = inspect.signature(cls).parameters.get(arg)
    except (TypeError, ValueError):
        return None
    return None if p is None or p.default is p.empty else p.default


def _sync_dataset_values(cfg):
    """Apply PaddleSeg's num_classes / ignore_index / in_channels rules to ``cfg.dic``.

    Returns (num_classes, ignore_index, img_channels); each is None when no
    section states it. Raises ConfigError listing every source when they differ.
    """
    dic, found = cfg.dic, {v: [] for v in _DATASET_VALUES}
    for sec in _DATASET_SECTIONS:
        ds = dic.get(sec)
        if not ds:
            continue
        cls = _registry_class("DATASETS", ds.get("type"))
        for value, (key, attr) in _DATASET_VALUES.items():
            if ds.get(key) is not None:
                found[value].append((f"{sec}.{key}", ds[key], cfg.where(sec)))
            elif getattr(cls, attr, None) is not None:
                found[value].append((f"{sec}: {ds['type']}.{attr}", getattr(cls, attr),
                                     "paddleseg's DATASETS registry"))
            elif _default(cls, key) is not None:  # e.g. Dataset(ignore_index=255)
                found[value].append((f"{sec}: {ds['type']}({key}={_default(cls, key)!r}) default",
                                     _default(cls, key), "paddleseg's DATASETS registry"))
    model = dic.get("model") or {}
    if model.get("num_classes") is not None:
        found["num_classes"].append(("model.num_classes", model["num_classes"], cfg.where("model")))
    # the input channels are the backbone's when there is one (paddleseg utils.get_in_channels)
    chan_owner = model["backbone"] if isinstance(model.get("backbone"), dict) else model
    chan_key = "model.backbone.in_channels" if chan_owner is not model else "model.in_channels"
    if chan_owner.get("in_channels") is not None:
        found["img_channels"].append((chan_key, chan_owner["in_channels"], cfg.where("model")))
    for name in ("loss", "distill_loss"):
        for i, item in enumerate((dic.get(name) or {}).get("types", [])):
            subs = [(f"{name}.types[{i}]", item)]
            if isinstance(item, dict) and isinstance(item.get("losses"), list):  # MixedLoss
                subs += [(f"{name}.types[{i}].losses[{j}]", s) for j, s in enumerate(item["losses"])]
            for where, d in subs:
                if isinstance(d, dict) and d.get("ignore_index") is not None:
                    found["ignore_index"].append((f"{where}.ignore_index", d["ignore_index"],
                                                  cfg.where(name)))
    resolved = {}
    for value, sources in found.items():
        distinct = {v for _, v, _ in sources}
        if len(distinct) > 1:
            listing = "; ".join(f"{k} = {v!r} ({w})" for k, v, w in sources)
            raise ConfigError(f"{value} disagrees in {cfg.path}: {listing}. "
                              f"Set the same {value} everywhere")
        resolved[value] = sources[0][1] if sources else None
    if model and model.get("num_classes") is None and resolved["num_classes"] is not None:
        model["num_classes"] = resolved["num_classes"]  # as PaddleSeg's SegBuilder.model does
    # PaddleSeg writes the dataset's channels into the model; we only do it where the
    # component takes ``in_channels`` (3 is every model's default: nothing to write then)
    chans = resolved["img_channels"]
    if model and chans is not None and chan_owner.get("in_channels") is None and chans != 3:
        registry = "BACKBONES" if chan_owner is not model else "MODELS"
        cls = _registry_class(registry, chan_owner.get("type"))
        if cls is not None and not _accepts(cls, "in_channels"):
            raise ConfigError(f"{cfg.path}: the data has {chans} image channels but "
                              f"{chan_owner.get('type')} ({chan_key}) takes no in_channels")
        chan_owner["in_channels"] = chans
    return resolved["num_classes"], resolved["ignore_index"], chans


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
    cfg = Config(_strip_inherited(dic), os.path.abspath(path), origins)
    cfg.opts = tuple(opts or ())
    return cfg
