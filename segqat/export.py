"""Export a trained (FP32 or QAT) model to a static inference directory.

Writes ``model.pdmodel`` + ``model.pdiparams`` (old IR, so that oneDNN and
Paddle Lite can run it, see compat/old_ir_export.py) and ``deploy.yaml`` in
PaddleSeg's schema:

    Deploy:
      model: model.pdmodel
      params: model.pdiparams
      transforms: [{type: Normalize, ...}]
      input_shape: [-1, 3, -1, -1]
      output_op: argmax          # argmax | softmax | none
      output_dtype: int32        # int32 labels, or float32 scores
      precision: int8            # ours: fp32 | int8 (what the weights are)

The directory is written to a temporary sibling, verified (the program and
every parameter are read back) and only then swapped into place
(``outputs.atomic_dir_write``): a failed export never damages an earlier one,
and ``outputs.check_save_dir`` refuses a save_dir that holds anything else.
"""
import logging
import os

import numpy as np  # noqa: F401  (numpy before paddle: segqat/compat/__init__.py)
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
import yaml

from . import compat
from . import outputs
from .weights import MAX_ABS_WEIGHT

logger = logging.getLogger(__name__)

OUTPUT_OPS = ("argmax", "softmax", "none")


def output_op_from_legacy(with_softmax, without_argmax):
    """PaddleSeg's older flags as an output_op.

    ==============  ===============  =========================================
    --with_softmax  --without_argmax  output
    ==============  ===============  =========================================
    no              no                argmax: int32 labels [N, H, W]
    yes             no                argmax: labels (softmax does not change
                                      the argmax, as in PaddleSeg)
    no              yes               none: float32 logits [N, C, H, W]
    yes             yes               softmax: float32 probabilities [N, C, H, W]
    ==============  ===============  =========================================
    """
    if without_argmax:
        return "softmax" if with_softmax else "none"
    return "argmax"


class SegHead(nn.Layer):
    """The model plus its output op; the first output only (inference)."""

    def __init__(self, model, output_op):
        super().__init__()
        if output_op not in OUTPUT_OPS:
            raise ValueError(f"output_op must be one of {OUTPUT_OPS}, got {output_op!r}")
        self.model = model
        self.output_op = output_op

    def forward(self, x):
        logit = self.model(x)[0]
        if self.output_op == "argmax":
            return paddle.argmax(logit, axis=1, dtype="int32")
        if self.output_op == "softmax":
            return F.softmax(logit, axis=1)
        return logit


def in_channels(cfg):
    """Channels the model takes: model.in_channels / img_channels, model.backbone.in_channels,
    the data sets' img_channels (``cfg.img_channels``, which the config checked against the
    model's), else 3 (PaddleSeg's default)."""
    m = cfg.get("model") or {}
    backbone = m.get("backbone") if isinstance(m.get("backbone"), dict) else {}
    for owner, key in ((m, "in_channels"), (m, "img_channels"), (m, "input_channels"),
                       (backbone, "in_channels")):
        if isinstance(owner.get(key), int) and not isinstance(owner.get(key), bool):
            return owner[key]
    chans = getattr(cfg, "img_channels", None)
    return chans if isinstance(chans, int) and not isinstance(chans, bool) else 3


def check_input_shape(cfg, input_shape):
    """``--input_shape N C H W``: each -1 (dynamic) or positive, C the model's channels.

    Without it: the config's ``export.input_shape`` (a model that needs a fixed
    batch size, RTFormer, says so there), else ``-1 C -1 -1``.
    """
    default = (cfg.get("export") or {}).get("input_shape")
    flag = "--input_shape" if input_shape or not default else f"export.input_shape ({cfg.path})"
    shape = list(input_shape or default or [-1, in_channels(cfg), -1, -1])
    allowed = "4 values N C H W, each -1 (any size) or > 0"
    if len(shape) != 4 or any(type(v) is not int for v in shape):
        raise ValueError(f"{flag} must be {allowed}, got {shape}")
    for name, v in zip("NCHW", shape):
        if v == 0 or v < -1:
            raise ValueError(f"{flag} {' '.join(map(str, shape))}: {name} is {v}; "
                             f"allowed: {allowed}")
    if shape[1] not in (-1, in_channels(cfg)):
        raise ValueError(f"{flag} {' '.join(map(str, shape))}: C is {shape[1]} but the model "
                         f"takes {in_channels(cfg)} channels ({cfg.path})")
    return shape


def verify_inference_dir(d):
    """Read back a written inference directory: the program and every parameter, and
    check the parameters as a checkpoint's are (finite, |w| <= weights.MAX_ABS_WEIGHT).

    paddle's C++ savers do not report a failed write (a file-size limit left a
    truncated ``model.pdiparams`` behind an exit code 0), so this loads both.
    The value check is the last guard of export and PTQ (their input weights are
    checked when loaded) against shipping a diverged model, whatever produced it.
    """
    from .weights import WeightsError, non_finite
    outputs.check_files_written(d, ["model.pdmodel", "model.pdiparams", "deploy.yaml"])
    try:
        prog, _, _, scope, _ = compat.load_old_ir_program(os.path.join(d, "model.pdmodel"),
                                                          os.path.join(d, "model.pdiparams"))
    except Exception as e:
        raise outputs.OutputError(f"the inference model written to {d} does not read back "
                                  f"({type(e).__name__}: {str(e).strip().splitlines()[0][:200]}): "
                                  "disk full or a file-size limit?") from e
    values = {}
    for v in prog.list_vars():
        found = scope.find_var(v.name) if v.persistable else None
        if found is None:
            continue
        try:
            t = found.get_tensor()
            if t._is_initialized():
                values[v.name] = np.array(t)
        except (RuntimeError, ValueError, TypeError, AttributeError):  # feed/fetch lists
            continue
    bad = non_finite(values)
    if bad:
        raise WeightsError(f"the exported model holds non-finite parameters (NaN/Inf or "
                           f"|w| > {MAX_ABS_WEIGHT:g} in {len(bad)} tensor(s), e.g. {', '.join(bad[:3])}): "
                           "a diverged model is not exported; nothing was written")


def deploy_transforms(cfg):
    exp = cfg.get("export") or {}
    if exp.get("transforms"):
        return exp["transforms"]
    return (cfg.get("val_dataset") or {}).get("transforms", [{"type": "Normalize"}])


def export_model(cfg, model, save_dir, input_shape=None, output_op="argmax", quanter=None):
    """Save ``model`` (eval mode) as an inference directory; returns its path."""
    if quanter is not None and getattr(quanter, "act_preprocess", None) is not None:
        # paddleslim would strip PACT itself from the model as it was at quantize()
        # time, silently dropping the weights of a wrapped model: see quant.without_pact
        raise ValueError("export of a PACT model: remove PACT first (quant.without_pact)")
    input_shape = check_input_shape(cfg, input_shape)
    model.eval()
    head = SegHead(model, output_op)  # built outside the old-IR guard (compat.old_ir_export)
    head.eval()
    spec = [paddle.static.InputSpec(shape=input_shape, dtype="float32", name="x")]
    deploy = {
        "Deploy": {
            "model": "model.pdmodel",
            "params": "model.pdiparams",
            "transforms": deploy_transforms(cfg),
            "input_shape": input_shape,
            "output_op": output_op,
            "output_dtype": "int32" if output_op == "argmax" else "float32",
            "precision": "int8" if quanter is not None else "fp32",
            "num_classes": int(cfg.get("model", {}).get("num_classes")
                               or cfg.get("train_dataset", {}).get("num_classes")
                               or cfg.get("val_dataset", {}).get("num_classes")),
            # the Paddle that wrote the program: named when another Paddle cannot load it
            "paddle_version": paddle.__version__,
        }
    }
    if (cfg.get("quant_config") or {}).get("int8_residual_fusion", True) is False:
        deploy["Deploy"]["int8_residual_fusion"] = False  # read by the Paddle Inference predictor

    def write(d):
        prefix = os.path.join(d, "model")
        # a fixed batch size stays visible to code that needs it as an int (RTFormer)
        with compat.old_ir_export(head, infer_reshape_dims=input_shape[0] > 0):
            if quanter is not None:
                quanter.save_quantized_model(head, prefix, input_spec=spec)
            else:
                paddle.jit.save(head, prefix, input_spec=spec)
        for name in ("model.pdmodel", "model.pdiparams"):
            if not os.path.isfile(os.path.join(d, name)):
                raise RuntimeError(f"export wrote no {name} (paddle {paddle.__version__})")
        if quanter is not None:
            n = compat.fold_constant_dequantize(d)
            if n:
                logger.info("Stored %d int8 constant(s) outside a weight input as float "
                            "(compat.fold_constant_dequantize)", n)
        n = compat.fix_conv_bias_axis(os.path.join(d, "model.pdmodel"))
        logger.info("Rewrote %d conv bias adds so oneDNN can fuse bias and batch norm", n)
        if quanter is not None:
            compat.guard_overwritten_scales(os.path.join(d, "model.pdmodel"))  # logs what it guarded
        with open(os.path.join(d, "deploy.yaml"), "w") as f:
            yaml.safe_dump(deploy, f, sort_keys=False, default_flow_style=None)

    outputs.atomic_dir_write(save_dir, write, kind="export", verify=verify_inference_dir)
    size = os.path.getsize(os.path.join(save_dir, "model.pdiparams"))
    logger.info("Exported %s model (%s, output_op %s, params %.2f MB) to %s",
                deploy["Deploy"]["precision"].upper(), type(model).__name__, output_op,
                size / 2 ** 20, save_dir)
    return save_dir
