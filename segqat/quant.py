"""Quantization settings and the one function that builds a (quantized) model.

    model, quanter = build_model(cfg, weights, quantized=True, stage="train")

Order matters and lives only here:

* ``stage="train"`` (qat_train): build the FP32 model, load the FP32 weights,
  then insert fake-quant layers. The quantizers start from the trained
  weights; their scales are learned during QAT.
* ``stage="eval"`` (qat_val) and ``"export"`` (qat_export): build, insert
  fake-quant layers, then load the QAT weights, which include the quantizers'
  scales. For export, PACT layers are then removed (``without_pact``).

Settings come from the config's ``quant_config`` section over PaddleSeg's
defaults (weights channel_wise_abs_max, activations moving_average_abs_max,
8 bits, moving_rate 0.9, Conv2D and Linear layers) and ours: ``weight_granularity``
(per_channel | per_tensor, another name for the weight type), ``pact`` (QAT
only), ``quantize_scope`` (all | backbone), ``skip_layers`` (name patterns).
16 bits are accepted for fake quantization (a diagnostic) and refused for
export and PTQ.
"""
import contextlib
import fnmatch
import logging

import numpy as np

from . import builder
from . import calibration
from . import compat
from . import export
from . import weights
from .weights import WeightsError
from .config import ConfigError

logger = logging.getLogger(__name__)

# PaddleSeg's slim/quant defaults, plus our keys (the last five).
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
    "pact": False,
    "pact_alpha_init": 100.0,
    "quantize_scope": "all",
    # Paddle Inference (oneDNN) only: false runs INT8 without the conv + residual-add
    # fusion, which leaves some quantized convolutions FP32 (compat.residual_fusions)
    "int8_residual_fusion": True,
    # kinds of layer (LAYER_KINDS) left float. Depthwise convolutions that multiply their
    # channels (groups = input channels < output channels: BiSeNetV2's gather-and-expansion
    # layers) run slower in INT8 than FP32 on every runtime measured: oneDNN has no INT8 JIT
    # kernel for them on AVX2 (its reference loop, 50x its FP32 time), OpenVINO runs them
    # as a gemm (slower than FP32), ONNX Runtime as ConvInteger
    # (benchmarks/speed/, slim/quant/layer_latency.py)
    "skip_layer_kinds": ["depthwise_multiplier"],
}
# Keys that are ours (not paddleslim's QAT config).
_OWN_KEYS = ("skip_layers", "pact", "pact_alpha_init", "quantize_scope", "weight_granularity",
             "calibration_list", "int8_residual_fusion", "skip_layer_kinds")
# What quant_config.skip_layer_kinds can name (layer_kind)
LAYER_KINDS = ("conv1x1", "conv", "depthwise", "depthwise_multiplier", "grouped", "linear")

GRANULARITY = {"per_channel": "channel_wise_abs_max", "per_tensor": "abs_max"}
SCOPES = ("all", "backbone")
# What each command does with the model: train / eval simulate quantization in
# dygraph (fake quant); export and ptq write a model Paddle Inference runs with
# integer kernels; analysis simulates, from FP32 weights.
PURPOSES = ("train", "eval", "export", "ptq", "analysis")

_ALLOWED = {
    "weight_quantize_type": ("channel_wise_abs_max", "abs_max"),
    "activation_quantize_type": ("moving_average_abs_max",),
    "weight_bits": (8, 16),
    "activation_bits": (8, 16),
    "quantizable_layer_type": ("Conv2D", "Linear"),
    "quantize_scope": SCOPES,
    "skip_layer_kinds": LAYER_KINDS,
}

# Substrings of parameter names that only fake-quant layers have.
_QUANT_KEY_MARKS = ("._fake_quant_", "._ma_output_scale.")
# PACT's clipping threshold (paddleslim's PACT layer in QuantizedConv2D/Linear).
_PACT_KEY_MARK = "._act_preprocess.alpha"

SIXTEEN_BIT_WHY = (
    "16 bits is a diagnostic only: qat_train, qat_val and analysis.py simulate it (fake "
    "quantization in FP32) to show how much of an accuracy loss comes from the 8-bit width. "
    "No back-end here runs 16-bit integer kernels (Paddle Inference: oneDNN and TensorRT run "
    "INT8; Paddle Lite runs INT8), and paddle's export stores 16-bit weights in an int8 tensor "
    "(wrapped around modulo 256), which gives a wrong model. Set weight_bits and activation_bits to 8 "
    "to export")


def quant_settings(cfg, purpose="train"):
    """``quant_config`` over the defaults, checked for ``purpose`` (see PURPOSES).

    ``weight_granularity`` (per_channel | per_tensor) is turned into PaddleSeg's
    ``weight_quantize_type`` (channel_wise_abs_max | abs_max); setting both to
    different things is an error.
    """
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
    where = cfg.where("quant_config")
    qc = dict(DEFAULT_QUANT_CONFIG)
    user = dict(cfg.section("quant_config"))
    gran = user.pop("weight_granularity", None)
    if gran is not None:
        if gran not in GRANULARITY:
            raise ConfigError(f"quant_config.weight_granularity = {gran!r} in {where}: "
                              f"allowed {list(GRANULARITY)}")
        wqt = user.get("weight_quantize_type")
        if wqt is not None and wqt != GRANULARITY[gran]:
            raise ConfigError(
                f"quant_config.weight_granularity = {gran!r} and weight_quantize_type = {wqt!r} in "
                f"{where} contradict each other ({gran} means {GRANULARITY[gran]}); set one of them")
        user["weight_quantize_type"] = GRANULARITY[gran]
    qc.update(user)
    if not isinstance(qc["skip_layer_kinds"], list):
        raise ConfigError(f"quant_config.skip_layer_kinds = {qc['skip_layer_kinds']!r} in {where}: "
                          f"expected a list of {list(LAYER_KINDS)} (or [])")
    for key, allowed in _ALLOWED.items():
        vals = qc[key] if isinstance(qc[key], list) else [qc[key]]
        for v in vals:
            if v not in allowed:
                why = (" (kinds of layer, see quant.layer_kind)" if key == "skip_layer_kinds" else
                       " (what Paddle Inference can run as INT8, plus 16 bits as a diagnostic)")
                raise ConfigError(f"quant_config.{key} = {v!r} in {where}: allowed {list(allowed)}{why}")
    if not float(qc["pact_alpha_init"]) > 0:
        raise ConfigError(f"quant_config.pact_alpha_init must be > 0, got {qc['pact_alpha_init']}")
    if not 0 < float(qc["moving_rate"]) < 1:
        raise ConfigError(f"quant_config.moving_rate must be in (0, 1), got {qc['moving_rate']}")
    sixteen = [k for k in ("weight_bits", "activation_bits") if int(qc[k]) == 16]
    if sixteen and purpose in ("export", "ptq"):
        raise ConfigError(
            f"quant_config {', '.join(f'{k} = 16' for k in sixteen)} in {where}: cannot "
            f"{'export' if purpose == 'export' else 'run post-training quantization with'} "
            f"16 bits. {SIXTEEN_BIT_WHY}")
    if qc["pact"] and purpose in ("ptq", "analysis"):
        raise ConfigError(
            f"quant_config.pact = true in {where}: PACT learns activation clipping thresholds "
            f"during QAT; {'PTQ' if purpose == 'ptq' else 'analysis.py'} does not train. Remove "
            "pact (or use --opts quant_config.pact=false) for this command")
    if sixteen:
        logger.warning("quant_config %s = 16: a diagnostic (fake quantization in FP32); such a "
                       "model cannot be exported for INT8 inference", " and ".join(sixteen))
    return qc


def scope_skips(model, qc):
    """Names of the quantizable layers that quant_config.quantize_scope leaves in float."""
    import paddle
    if qc.get("quantize_scope", "all") == "all":
        return []
    if not isinstance(getattr(model, "backbone", None), paddle.nn.Layer):
        tops = sorted({n.split(".")[0] for n, _ in model.named_sublayers()})
        raise ConfigError(
            f"quant_config.quantize_scope = backbone: {type(model).__name__} has no `backbone` "
            f"sublayer (its top-level sublayers: {', '.join(tops)}). Use quantize_scope: all with "
            "skip_layers patterns instead, e.g. skip_layers: ['head.*']")
    kinds = quantizable_types(qc)
    return [n for n, layer in model.named_sublayers()
            if isinstance(layer, kinds) and not n.startswith("backbone.")]


def quantizable_types(qc):
    import paddle
    return tuple(getattr(paddle.nn, t) for t in qc["quantizable_layer_type"])


def layer_kind(layer):
    """One of ``LAYER_KINDS`` for a Conv2D / Linear layer (None for other layers)."""
    import paddle
    if isinstance(layer, paddle.nn.Linear):
        return "linear"
    if not isinstance(layer, paddle.nn.Conv2D):
        return None
    out_c, in_per_group = layer.weight.shape[0], layer.weight.shape[1]
    groups = layer._groups
    if groups == 1:
        return "conv1x1" if tuple(layer.weight.shape[2:]) == (1, 1) else "conv"
    if in_per_group == 1:
        return "depthwise" if out_c == groups else "depthwise_multiplier"
    return "grouped"


def mark_skipped(model, qc):
    """Set ``skip_quant`` on the layers to leave in float; returns their names.

    Those are the sublayers matching a ``skip_layers`` pattern (fnmatch on the
    layer name, e.g. ``head.*``), the quantizable layers of a kind named in
    ``skip_layer_kinds`` and, with ``quantize_scope: backbone``, the quantizable
    layers outside the backbone.
    """
    patterns = qc.get("skip_layers") or []
    layers = dict(model.named_sublayers())
    skipped = [n for n in layers if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in skipped)]
    if unmatched:
        raise ConfigError(f"quant_config.skip_layers patterns {unmatched} match no layer of "
                          f"{type(model).__name__}")
    if patterns:
        logger.info("Not quantizing %d layer(s) matching %s", len(skipped), patterns)
    scoped = scope_skips(model, qc)
    if scoped:
        logger.info("quantize_scope backbone: %d quantizable layer(s) outside the backbone stay "
                    "float", len(scoped))
    kinds = set(qc.get("skip_layer_kinds") or [])
    types = quantizable_types(qc)
    by_kind = [n for n, layer in layers.items() if kinds and isinstance(layer, types)
               and layer_kind(layer) in kinds]
    if by_kind:
        logger.info("Not quantizing %d layer(s) of kind %s (quant_config.skip_layer_kinds)",
                    len(by_kind), sorted(kinds))
    matched = set(skipped)
    for n in scoped + by_kind:
        if n not in matched:
            matched.add(n)
            skipped.append(n)
    for name in skipped:
        layers[name].skip_quant = True
    return skipped


def pact_layer(alpha_init):
    """paddleslim's PACT layer with a chosen initial clipping threshold.

    Clips activations to [-alpha, alpha] before their quantizer; alpha is
    learned (learning-rate multiplier 1000, as in paddleslim). paddleslim fixes
    alpha's start at 100, far above the activations of most models (BiSeNetV2's
    conv inputs reach about 15), where nothing is clipped and nothing is learned
    in a short QAT; ``quant_config.pact_alpha_init`` sets it.
    """
    import paddle

    class PACT(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.alpha = self.create_parameter(
                shape=[1], dtype="float32",
                attr=paddle.ParamAttr(name=self.full_name() + ".pact",
                                      initializer=paddle.nn.initializer.Constant(float(alpha_init)),
                                      learning_rate=1000.0))

        def forward(self, x):
            return x - paddle.nn.functional.relu(x - self.alpha) + paddle.nn.functional.relu(-self.alpha - x)

    return PACT


def make_quanter(qc, pact=None):
    from paddleslim import QAT
    cfg = {k: v for k, v in qc.items() if k not in _OWN_KEYS}
    cfg = compat.paddleslim_qat_config(cfg)  # quantize() folds batch norms itself
    cfg["onnx_format"] = True  # real int8 weights with quantize/dequantize_linear ops
    use_pact = qc.get("pact") if pact is None else pact
    return QAT(config=cfg, act_preprocess=pact_layer(qc["pact_alpha_init"]) if use_pact else None)


def quantize(model, qc, pact=None, in_channels=3):
    """Insert fake-quant layers into ``model`` in place; returns the quanter.

    With ``fuse_conv_bn: true`` the batch norms that follow a convolution are
    first folded into it (``fold_batch_norms``), so the weights are quantized as
    a target that folds before quantizing sees them."""
    if qc.get("fuse_conv_bn"):
        fold_batch_norms(model, in_channels)
    mark_skipped(model, qc)
    quanter = make_quanter(qc, pact)
    quanter.quantize(model)
    return quanter


def fold_batch_norms(model, in_channels=3, size=64):
    """Fold every BatchNorm whose input is a Conv2D's output into that convolution, in place.

    W' = W * g / sqrt(var + eps) per output channel, b' = (b - mean) * g / sqrt(var + eps)
    + beta, with the BN's running statistics; the BN becomes an identity, and a
    convolution without bias gets one. The pairs are found by running the model
    once (hooks: the BN's input is the very tensor a Conv2D returned), and the folded
    model is checked against the original on that input (eval mode): a convolution
    whose output is also used elsewhere (a residual branch before the BN) would
    change that other use, and is an error naming the pair. Returns the folded
    (conv, bn) layer names. During training the folded model has no batch
    statistics: the BN is frozen at its running averages, as QAT with folding does.
    """
    import copy
    import paddle
    from paddle.nn.layer.norm import _BatchNormBase
    layers = dict(model.named_sublayers())
    names = {id(layer): n for n, layer in layers.items()}
    produced, pairs, keep, hooks = {}, [], [], []

    def after_conv(layer, inputs, output):
        produced[id(output)] = names[id(layer)]
        keep.append(output)  # ids stay unique while the run lasts

    def before_bn(layer, inputs):
        conv = produced.get(id(inputs[0]))
        bn = names[id(layer)]
        if conv and all(c != conv for c, _ in pairs) and getattr(layer, "_data_format", "NCHW") == "NCHW" \
                and layers[conv]._data_format == "NCHW" and layer.weight.shape[0] == layers[conv].weight.shape[0]:
            pairs.append((conv, bn))

    for layer in layers.values():
        if isinstance(layer, paddle.nn.Conv2D):
            hooks.append(layer.register_forward_post_hook(after_conv))
        elif isinstance(layer, _BatchNormBase):
            hooks.append(layer.register_forward_pre_hook(before_bn))
    was_training = model.training
    model.eval()
    x = paddle.to_tensor(np.random.RandomState(0).rand(1, in_channels, size, size).astype("float32") * 2 - 1)
    try:
        with paddle.no_grad():
            reference = _first_output(model(x)).numpy()
    finally:
        for h in hooks:
            h.remove()
        keep.clear()
    original = copy.deepcopy(model) if pairs else None  # to name a pair that cannot be folded
    for pair in pairs:
        _fold_pair(model, layers, *pair)
    if pairs:
        err = _output_change(model, x, reference)
        if err is not None:
            bad = next((f"{c} -> {b}" for c, b in pairs if _fold_changes_output(original, (c, b), x, reference)),
                       "?")
            raise ConfigError(
                f"quant_config.fuse_conv_bn: folding batch norm into the convolutions of "
                f"{type(model).__name__} changes its output (max difference {err:.3g}); the pair "
                f"{bad} cannot be folded (the convolution's output is also used elsewhere). "
                "Set fuse_conv_bn: false")
    logger.info("fuse_conv_bn: folded %d batch norms into their convolutions", len(pairs))
    if was_training:
        model.train()
    return pairs


def _first_output(out):
    return out[0] if isinstance(out, (list, tuple)) else out


def _fold_pair(model, layers, conv_name, bn_name):
    """Fold batch norm ``bn_name`` into convolution ``conv_name`` (``layers``: model's sublayers)."""
    import paddle
    conv, bn = layers[conv_name], layers[bn_name]
    scale = bn.weight.numpy() / np.sqrt(bn._variance.numpy() + bn._epsilon)
    w = conv.weight.numpy()
    b = conv.bias.numpy() if conv.bias is not None else np.zeros(w.shape[0], "float32")
    conv.weight.set_value((w * scale.reshape(-1, 1, 1, 1)).astype(w.dtype))
    if conv.bias is None:
        conv.bias = conv.create_parameter([w.shape[0]], is_bias=True)
    conv.bias.set_value(((b - bn._mean.numpy()) * scale + bn.bias.numpy()).astype("float32"))
    parent_name, _, attr = bn_name.rpartition(".")
    (layers[parent_name] if parent_name else model)._sub_layers[attr] = paddle.nn.Identity()


def _output_change(model, x, reference):
    """Max difference of ``model(x)`` from ``reference`` if beyond rounding, else None."""
    import paddle
    with paddle.no_grad():
        out = _first_output(model(x)).numpy()
    err = float(np.abs(out - reference).max())
    return None if err <= 1e-3 * max(1.0, float(np.abs(reference).max())) else err


def _fold_changes_output(model, pair, x, reference):
    """Whether folding ``pair`` alone into a copy of the unfolded ``model`` changes its output."""
    import copy
    trial = copy.deepcopy(model)
    _fold_pair(trial, dict(trial.named_sublayers()), *pair)
    return _output_change(trial, x, reference) is not None


@contextlib.contextmanager
def state_restored(model):
    """Put every parameter and buffer of ``model`` back, bit for bit, after the block.

    For a look at the model that changes it (``calibration.calibrate`` updates the
    quantizers' scales) in the middle of something that must not notice (training).
    """
    saved = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    try:
        yield model
    finally:
        for k, v in model.state_dict().items():
            v.set_value(saved[k])


def without_pact(cfg, model, qc):
    """A copy of a PACT-trained QAT ``model`` without the PACT layers, for export.

    PACT clips activations at a learned threshold before their quantizer; the
    quantizer's scale was learned on the clipped values, so it is at most the
    threshold and quantization itself clips there. The exported program keeps
    the scales (the clipping) and drops the PACT ops. paddleslim's own
    ``save_quantized_model`` does this with the model as it was at quantize()
    time and silently skips the keys of a wrapped model, so we rebuild it.
    """
    import paddle
    state = {k: v for k, v in model.state_dict().items() if _PACT_KEY_MARK not in k}
    with paddle.utils.unique_name.guard():
        plain = builder.build_model(cfg)
        quanter = quantize(plain, qc, pact=False, in_channels=export.in_channels(cfg))
    own = plain.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    if missing or extra:
        raise RuntimeError(f"PACT removal: state dicts differ (missing {missing[:3]}, extra {extra[:3]})")
    plain.set_state_dict(state)
    plain.eval()
    return plain, quanter


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
    if stage not in ("train", "eval", "export"):
        raise ValueError(f"stage must be 'train', 'eval' or 'export', got {stage!r}")
    model = builder.build_model(cfg)
    if not quantized:
        if weights:
            _load(model, weights, expect_quant=False)
        return model, None
    qc = quant_settings(cfg, purpose=stage)
    if stage == "train":
        logger.info("Quantization settings: %s", qc)
        if not weights:
            raise WeightsError("--model_path is required: QAT starts from trained FP32 weights")
        _load(model, weights, expect_quant=False)
        quanter = quantize(model, qc, in_channels=export.in_channels(cfg))
    else:
        if not weights:
            raise WeightsError("--model_path is required: the QAT weights (save_dir/best_model/model.pdparams)")
        quanter = quantize(model, qc, in_channels=export.in_channels(cfg))
        _load(model, weights, expect_quant=True)
        if stage == "export" and qc["pact"]:
            model, quanter = without_pact(cfg, model, qc)
            logger.info("PACT layers removed for export (their clipping stays in the scales)")
    return model, quanter


def _load(model, path, expect_quant):
    """Load weights (read once, safely); say what kind of weights a mismatch means."""
    state = weights.load_state(path)
    try:
        weights.load_into(model, state, path)
    except WeightsError as e:
        keys = list(state)
        has_quant = any(_is_quant_key(k) for k in keys)
        has_pact = any(_PACT_KEY_MARK in k for k in keys)
        wants_pact = any(_PACT_KEY_MARK in k for k in model.state_dict())
        if expect_quant and has_quant and has_pact != wants_pact:
            raise WeightsError(
                f"--model_path {path} was trained {'with' if has_pact else 'without'} PACT but the "
                f"config has quant_config.pact: {str(wants_pact).lower()}; use the config the QAT "
                f"run wrote (its save_dir/config.yaml) or --opts quant_config.pact="
                f"{str(has_pact).lower()}") from None
        if expect_quant and not has_quant:
            raise WeightsError(
                f"--model_path {path} holds FP32 weights (no quantizer scales). This command needs "
                "QAT weights: the output of slim/quant/qat_train.py (save_dir/best_model/model.pdparams)."
                f"\n{e}") from None
        if expect_quant and has_quant:
            raise WeightsError(
                f"--model_path {path}: its quantizers do not match the layers this config quantizes "
                "(quant_config skip_layers / skip_layer_kinds / quantize_scope differ from the QAT "
                "run's). Use the config the QAT run wrote (its save_dir/config.yaml); a run made "
                "before skip_layer_kinds existed needs --opts quant_config.skip_layer_kinds=[]."
                f"\n{e}") from None
        if not expect_quant and has_quant:
            raise WeightsError(
                f"--model_path {path} holds QAT weights (it has quantizer scales). This command needs "
                "FP32 weights (tools/train.py's output); to continue a QAT run use --resume_model."
                f"\n{e}") from None
        raise


def export_calibrated_int8(cfg, save_dir, input_shape, rng, model_path=None, batches=4,
                           output_op="argmax", qc=None):
    """Build ``cfg``'s model (weights from ``model_path``, else random), quantize it as it is
    exported (no PACT: export removes it), calibrate its quantizers on ``batches`` uniform
    inputs in [-1, 1) of ``input_shape`` drawn from ``rng``, and export it INT8 to
    ``save_dir``: the INT8 counterpart of an FP32 export without training, for latency and
    runtime checks (slim/quant/bench_latency.py, layer_latency, benchmarks/). ``qc``: quantization
    settings to use instead of the config's. Returns the export's path."""
    qmodel, _ = build_model(cfg, model_path)
    qc = quant_settings(cfg, purpose="export") if qc is None else qc
    quanter = quantize(qmodel, qc, pact=False, in_channels=input_shape[1])
    calibration.calibrate(qmodel, [rng.rand(*input_shape).astype("float32") * 2 - 1
                                   for _ in range(batches)])
    return export.export_model(cfg, qmodel, save_dir, input_shape, output_op=output_op, quanter=quanter)
