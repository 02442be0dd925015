"""Quantization settings and the one function that builds a (quantized) model.

    model, quanter = build_model(cfg, weights, quantized=True, stage="train")

Order matters and lives only here:

* ``stage="train"`` (qat_train): build the FP32 model, load the FP32 weights,
  then insert fake-quant layers. The quantizers start from the trained
  weights; their scales are learned during QAT.
* ``stage="eval"`` (qat_val, qat_export): build, insert fake-quant layers,
  then load the QAT weights, which include the quantizers' scales.

Settings come from the config's ``quant_config`` section over PaddleSeg's
defaults (weights channel_wise_abs_max, activations moving_average_abs_max,
8 bits, moving_rate 0.9, Conv2D and Linear layers).
"""
import fnmatch
import logging

import numpy as np  # noqa: F401  (before paddle, see compat)

from . import builder
from .builder import WeightsError
from .config import ConfigError

logger = logging.getLogger(__name__)

# PaddleSeg's slim/quant defaults.
DEFAULT_QUANT_CONFIG = {
    "weight_quantize_type": "channel_wise_abs_max",
    "activation_quantize_type": "moving_average_abs_max",
    "weight_bits": 8,
    "activation_bits": 8,
    "dtype": "int8",
    "window_size": 10000,
    "moving_rate": 0.9,
    "quantizable_layer_type": ["Conv2D", "Linear"],
    "fuse_conv_bn": False,
    "skip_layers": [],
}

_ALLOWED = {
    "weight_quantize_type": ("channel_wise_abs_max", "abs_max"),
    "activation_quantize_type": ("moving_average_abs_max",),
    "weight_bits": (8,),
    "activation_bits": (8,),
    "quantizable_layer_type": ("Conv2D", "Linear"),
}

# Substrings of parameter names that only fake-quant layers have.
_QUANT_KEY_MARKS = ("._fake_quant_", "._ma_output_scale.")


def quant_settings(cfg):
    """``quant_config`` over the defaults, checked against what INT8 export supports."""
    qc = dict(DEFAULT_QUANT_CONFIG)
    user = cfg.section("quant_config")
    for key in ("weight_granularity", "pact", "quantize_scope"):
        if key in user:
            raise ConfigError(f"quant_config.{key} in {cfg.where('quant_config')} is not "
                              "implemented yet (see the README's limits)")
    qc.update(user)
    for key, allowed in _ALLOWED.items():
        vals = qc[key] if isinstance(qc[key], list) else [qc[key]]
        for v in vals:
            if v not in allowed:
                raise ConfigError(
                    f"quant_config.{key} = {v!r} in {cfg.where('quant_config')}: Paddle Inference "
                    f"runs INT8 only with {list(allowed)} here")
    if not 0 < float(qc["moving_rate"]) < 1:
        raise ConfigError(f"quant_config.moving_rate must be in (0, 1), got {qc['moving_rate']}")
    return qc


def _mark_skipped(model, patterns):
    """Set ``skip_quant`` on sublayers whose name matches a pattern (fnmatch)."""
    if not patterns:
        return []
    skipped = [name for name, layer in model.named_sublayers()
               if any(fnmatch.fnmatchcase(name, p) for p in patterns)]
    for name, layer in model.named_sublayers():
        if name in skipped:
            layer.skip_quant = True
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in skipped)]
    if unmatched:
        raise ConfigError(f"quant_config.skip_layers patterns {unmatched} match no layer of "
                          f"{type(model).__name__}")
    logger.info("Not quantizing %d layer(s) matching %s", len(skipped), patterns)
    return skipped


def make_quanter(qc):
    from paddleslim import QAT
    cfg = {k: v for k, v in qc.items() if k != "skip_layers"}
    cfg["onnx_format"] = True  # real int8 weights with quantize/dequantize_linear ops
    return QAT(config=cfg)


def quantize(model, qc):
    _mark_skipped(model, qc.get("skip_layers"))
    quanter = make_quanter(qc)
    quanter.quantize(model)
    return quanter


def _is_quant_key(k):
    return any(m in k for m in _QUANT_KEY_MARKS)


def build_model(cfg, weights=None, quantized=False, stage="train"):
    """Build the configured model, optionally quantized, with weights loaded.

    Returns ``(model, quanter)``; ``quanter`` is None for FP32. Parameters get
    the same internal names on every build (a fresh unique-name scope), which
    the optimizer state in ``model.pdopt`` is keyed by: a resumed run finds
    its momentum whatever was built before it in the process.
    """
    import paddle
    with paddle.utils.unique_name.guard():
        return _build_model(cfg, weights, quantized, stage)


def _build_model(cfg, weights, quantized, stage):
    if stage not in ("train", "eval"):
        raise ValueError(f"stage must be 'train' or 'eval', got {stage!r}")
    model = builder.build_model(cfg)
    if not quantized:
        if weights:
            _load(model, weights, expect_quant=False)
        return model, None
    qc = quant_settings(cfg)
    if stage == "train":
        if not weights:
            raise WeightsError("--model_path is required: QAT starts from trained FP32 weights")
        _load(model, weights, expect_quant=False)
        quanter = quantize(model, qc)
    else:
        if not weights:
            raise WeightsError("--model_path is required: the QAT weights (save_dir/best_model/model.pdparams)")
        quanter = quantize(model, qc)
        _load(model, weights, expect_quant=True)
    return model, quanter


def _load(model, path, expect_quant):
    try:
        builder.load_weights(model, path)
    except WeightsError as e:
        import paddle
        import os
        if not os.path.isfile(path):
            raise
        try:
            keys = list(paddle.load(path).keys())
        except Exception:
            raise e
        has_quant = any(_is_quant_key(k) for k in keys)
        if expect_quant and not has_quant:
            raise WeightsError(
                f"--model_path {path} holds FP32 weights (no quantizer scales). This command needs "
                "QAT weights: the output of slim/quant/qat_train.py (save_dir/best_model/model.pdparams)."
                f"\n{e}") from None
        if not expect_quant and has_quant:
            raise WeightsError(
                f"--model_path {path} holds QAT weights (it has quantizer scales). This command needs "
                "FP32 weights (tools/train.py's output); to continue a QAT run use --resume_model."
                f"\n{e}") from None
        raise
