"""Build models, datasets, transforms, losses, optimizer and LR schedule from a config.

Every ``type:`` name resolves through paddleseg's component registries
(``paddleseg.cvlibs.manager``), so any model, backbone, transform, dataset,
loss or optimizer paddleseg 2.8 ships can be named. A wrong name lists the
valid ones; an argument the component does not take is an error naming it.
"""
import copy
import inspect
import logging
import os

import numpy as np  # noqa: F401  (numpy before paddle: segqat/compat/__init__.py)
import paddle
import paddle.nn as nn
from paddleseg.cvlibs import manager

from . import compat
from .config import ConfigError
from .data import CheckedDataset, check_list_file

logger = logging.getLogger(__name__)

_REGISTRIES = {
    "model": [manager.MODELS],
    "backbone": [manager.BACKBONES, manager.MODELS],
    "dataset": [manager.DATASETS],
    "transform": [manager.TRANSFORMS],
    "loss": [manager.LOSSES],
    "optimizer": [manager.OPTIMIZERS],
}
# Any nested ``type:`` dict may name a component of any registry (a model's
# backbone, a MixedLoss's losses, a dataset's transforms).
_ALL = [manager.MODELS, manager.BACKBONES, manager.DATASETS, manager.TRANSFORMS,
        manager.LOSSES, manager.OPTIMIZERS]


def _lookup(type_name, kind, where):
    overrides = {**(compat.loss_overrides() if kind in ("loss", "any") else {}),
                 **(compat.model_overrides() if kind in ("model", "any") else {})}
    if type_name in overrides:
        return overrides[type_name]
    registries = _REGISTRIES.get(kind, _ALL)
    for reg in registries:
        if type_name in reg.components_dict:
            return reg.components_dict[type_name]
    valid = sorted({n for reg in registries for n in reg.components_dict})
    raise ConfigError(f"Unknown {kind} type '{type_name}' at {where}. Valid types: {', '.join(valid)}")


def _check_args(cls, params, where):
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        return
    if any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    unknown = [k for k in params if k not in sig.parameters]
    if unknown:
        allowed = [n for n, p in sig.parameters.items() if p.kind != p.VAR_POSITIONAL]
        raise ConfigError(f"Unknown argument(s) {unknown} for {cls.__name__} at {where}. "
                          f"Allowed: {', '.join(allowed)}")


def build_component(cfg, kind="any", where="config"):
    """Instantiate ``{'type': Name, **kwargs}``, building nested components first."""
    cfg = copy.deepcopy(cfg)
    if not isinstance(cfg, dict) or "type" not in cfg:
        raise ConfigError(f"{where} must be a mapping with a 'type' key, got {cfg!r}")
    type_name = cfg.pop("type")
    cls = _lookup(type_name, kind, where)
    params = {}
    for key, val in cfg.items():
        if isinstance(val, dict) and "type" in val:
            sub_kind = "backbone" if key == "backbone" else "any"
            params[key] = build_component(val, sub_kind, f"{where}.{key}")
        elif isinstance(val, list):
            params[key] = [build_component(v, "any", f"{where}.{key}[{i}]")
                           if isinstance(v, dict) and "type" in v else v
                           for i, v in enumerate(val)]
        else:
            params[key] = val
    _check_args(cls, params, where)
    try:
        return cls(**params)
    except (ConfigError, FileNotFoundError):
        raise
    except Exception as e:
        raise ConfigError(f"Could not build {type_name} at {where}: {type(e).__name__}: {e}") from e


# ---------------------------------------------------------------- pieces

def num_classes(cfg):
    if cfg.num_classes is None:
        raise ConfigError(f"{cfg.path}: no num_classes in model, train_dataset or val_dataset, "
                          "and no dataset type that defines NUM_CLASSES")
    return int(cfg.num_classes)


def build_model(cfg):
    """The model of ``cfg``; num_classes was synced with the datasets when the config loaded."""
    cfg.require("model")
    model_cfg = cfg.section("model")
    if "num_classes" not in model_cfg:
        model_cfg["num_classes"] = num_classes(cfg)
    return build_component(model_cfg, "model", f"{cfg.where('model')}: model")


def build_dataset(cfg, split, seed=0):
    key = f"{split}_dataset"
    cfg.require(key)
    ds_cfg = cfg.section(key)
    ds_cfg.setdefault("mode", "train" if split == "train" else "val")
    list_key = {"train": "train_path", "val": "val_path"}.get(ds_cfg["mode"])
    for k in ("dataset_root", list_key):
        p = ds_cfg.get(k)
        if isinstance(p, str) and not os.path.exists(p):
            # paddleseg: "there is not `dataset_root`: data/x." naming neither config nor folder
            raise ConfigError(
                f"{cfg.where(key)}: {key}.{k} {p!r} not found (looked for {os.path.abspath(p)}). "
                f"Data paths in a config are relative to the working directory ({os.getcwd()}), "
                "not to the config file as _base_ is: run from the folder they are relative to, "
                "or give absolute paths.")
    if isinstance(ds_cfg.get(list_key), str):  # paddleseg's error names neither file nor line
        check_list_file(ds_cfg[list_key], ds_cfg.get("separator", " "),
                        where=f"{cfg.where(key)}: {key}.{list_key}")
    inner = build_component(ds_cfg, "dataset", f"{cfg.where(key)}: {key}")
    return CheckedDataset(inner, name=f"{key} ({cfg.path})", seed=seed)


class SummedMixedLoss(nn.Layer):
    """A MixedLoss whose output is the sum of its (already weighted) parts.

    paddleseg's ``MixedLoss.forward`` returns a list (one weighted loss per
    part) and its trainer adds ``coef * part`` for each; our trainer computes
    ``coef * loss(logit, label)`` for one tensor per output, so the parts are
    summed here: same total, same gradients.
    """

    def __init__(self, mixed):
        super().__init__()
        self.mixed = mixed

    def forward(self, logit, label):
        return paddle.add_n(self.mixed(logit, label))


def _with_ignore_index(item, ignore, where):
    """``item`` with the data's ignore_index where the loss takes one (PaddleSeg's rule)."""
    item = dict(item)
    if "ignore_index" not in item:
        cls = _lookup(item.get("type"), "loss", where)
        if "ignore_index" in inspect.signature(cls).parameters:
            item["ignore_index"] = ignore
    return item


def build_losses(cfg):
    cfg.require("loss")
    loss_cfg = cfg.section("loss")
    where = cfg.where("loss")
    ignore = 255 if cfg.ignore_index is None else cfg.ignore_index
    types = []
    for i, item in enumerate(loss_cfg.get("types", [])):
        at = f"{where}: loss.types[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{at} must be a mapping with a 'type' key, got {item!r}")
        if item.get("type") == "MixedLoss":
            item = dict(item)
            item["losses"] = [_with_ignore_index(sub, ignore, f"{at}.losses[{j}]")
                              if isinstance(sub, dict) else sub
                              for j, sub in enumerate(item.get("losses") or [])]
            types.append(SummedMixedLoss(build_component(item, "loss", at)))
        else:
            types.append(build_component(_with_ignore_index(item, ignore, at), "loss", at))
    return {"types": types, "coef": [float(c) for c in loss_cfg.get("coef", [])]}


def build_lr_scheduler(cfg, learning_rate=None):
    cfg.require("lr_scheduler")
    lr_cfg = cfg.section("lr_scheduler")
    where = f"{cfg.where('lr_scheduler')}: lr_scheduler"
    if learning_rate is not None:
        lr_cfg["learning_rate"] = learning_rate
    warmup_iters = lr_cfg.pop("warmup_iters", 0)
    warmup_start_lr = lr_cfg.pop("warmup_start_lr", None)
    if warmup_iters and warmup_start_lr is None:
        raise ConfigError(f"{where}: warmup_iters needs warmup_start_lr")
    lr_type = lr_cfg.pop("type")
    if not hasattr(paddle.optimizer.lr, lr_type) or lr_type == "LRScheduler":
        valid = [n for n in dir(paddle.optimizer.lr)
                 if inspect.isclass(getattr(paddle.optimizer.lr, n))
                 and issubclass(getattr(paddle.optimizer.lr, n), paddle.optimizer.lr.LRScheduler)
                 and n != "LRScheduler"]
        raise ConfigError(f"Unknown lr_scheduler type '{lr_type}' at {where}. Valid: {', '.join(valid)}")
    if lr_type == "PolynomialDecay":
        lr_cfg.setdefault("decay_steps", max(cfg.iters - warmup_iters, 1))
    cls = getattr(paddle.optimizer.lr, lr_type)
    _check_args(cls, lr_cfg, where)
    sched = cls(**lr_cfg)
    if warmup_iters:
        sched = paddle.optimizer.lr.LinearWarmup(
            learning_rate=sched, warmup_steps=warmup_iters,
            start_lr=warmup_start_lr, end_lr=lr_cfg["learning_rate"])
    return sched


def build_optimizer(cfg, model, lr_scheduler):
    cfg.require("optimizer")
    opt_cfg = cfg.section("optimizer")
    # PaddleSeg compatibility: lower-case names and SGD-with-momentum.
    opt_cfg["type"] = {"sgd": "SGD", "adam": "Adam"}.get(opt_cfg["type"], opt_cfg["type"])
    if opt_cfg["type"] == "SGD" and "momentum" in opt_cfg:
        opt_cfg["type"] = "Momentum"
    factory = build_component(opt_cfg, "optimizer", f"{cfg.where('optimizer')}: optimizer")
    return factory(model, lr_scheduler)


def test_config(cfg, **flag_overrides):
    """Evaluation settings: the config's test_config, then non-None flags."""
    tc = cfg.section("test_config")
    for k, v in flag_overrides.items():
        if v is not None:
            tc[k] = v
    return tc
