"""Post-training quantization (PTQ): FP32 weights -> INT8 inference directory, no training.

    info = run_ptq(cfg, "out_fp32/best_model/model.pdparams", "out_ptq",
                   PTQOptions(algo="hist", batch_size=4, batch_nums=10))

Route: paddleslim's static PTQ (``quant_post_static``, i.e. paddle's
``PostTrainingQuantization``) on the old-IR FP32 export of the model:

1. the FP32 model is exported exactly as ``tools/export.py`` does
   (``export.export_model``: old-IR ``model.pdmodel``, the output op, and
   ``compat.fix_conv_bias_axis``) into a temporary directory;
2. the static program is run on calibration batches (``calibration.Calibration``);
   the activation scales come from ``algo`` (abs_max, avg, hist, KL, mse);
   weights are quantized per channel (``quant_config.weight_quantize_type``);
3. the result is saved with ``onnx_format=True``: int8-stored weights and
   quantize_linear / dequantize_linear ops, the same form as
   ``slim/quant/qat_export.py`` writes, so ``deploy.create_predictor(precision="int8")``
   and ``deploy/python/infer.py`` (the precision comes from deploy.yaml) run it with
   oneDNN INT8 kernels;
4. the exported model is loaded with ``deploy.create_predictor`` in INT8 (which refuses a
   program without INT8 kernels) and, when the config has a val_dataset,
   evaluated on the validation images (``evaluate.evaluate``: PaddleSeg's
   ``[EVAL]`` line);
5. ``deploy.yaml`` (precision: int8) and ``ptq_info.json`` are written.

Everything is written into a temporary sibling of ``save_dir`` and renamed
into place (``outputs.atomic_dir_write``): a failed run never damages an
earlier export. The FP32 export PTQ starts from is made inside that temporary
folder, so a killed run leaves nothing behind that the next run does not remove.

Calibration data (``calibration.Calibration``): the images of
``quant_config.calibration_list`` or else the train_dataset's, with the
deployment preprocessing, a seeded subset (``split``, ``seed``); random images,
with a loud warning that the accuracy is meaningless, when there are none or
with ``random_calibration``.
"""
import json
import logging
import os
import shutil
from dataclasses import dataclass, replace

import yaml

from . import builder, compat, deploy, export, outputs, quant
from .calibration import RANDOM_WARNING, Calibration, CalibrationOptions
from .evaluate import evaluate

logger = logging.getLogger(__name__)

# Activation-scale algorithms of paddle's PostTrainingQuantization that we expose.
ALGOS = ("abs_max", "avg", "hist", "KL", "mse")
# quant_config.quantizable_layer_type -> static op types.
_LAYER_TO_OPS = {"Conv2D": ["conv2d", "depthwise_conv2d"],
                 "Linear": ["mul", "matmul", "matmul_v2"]}


class PTQError(ValueError):
    """PTQ input that cannot work (bad options, no calibration data)."""


@dataclass
class PTQOptions(CalibrationOptions):
    """The calibration options (batch_size, batch_nums, split, seed, random_calibration,
    input_shape) and how to quantize and export."""
    algo: str = "hist"
    output_op: str = "argmax"
    cpu_threads: int = 1
    hist_percent: float = 0.9999


def check_options(opts):
    if opts.algo not in ALGOS:
        raise PTQError(f"--algo must be one of {list(ALGOS)}, got {opts.algo!r}")
    if not 0 < float(opts.split) <= 1:
        raise PTQError(f"--quantization_split must be in (0, 1], got {opts.split}")
    if opts.batch_size <= 0 or opts.batch_nums <= 0:
        raise PTQError("--batch_size and --batch_nums must be positive")
    if opts.output_op not in export.OUTPUT_OPS:
        raise PTQError(f"output_op must be one of {export.OUTPUT_OPS}, got {opts.output_op!r}")
    shape = opts.input_shape
    if shape is not None:
        if len(shape) != 4:
            raise PTQError(f"--input_shape must have 4 values (N C H W), got {shape}")
        if shape[0] > 0 and shape[0] != opts.batch_size:
            raise PTQError(f"--input_shape fixes the batch to {shape[0]} but --batch_size is "
                           f"{opts.batch_size}; calibration batches must fit the input shape")


# ---------------------------------------------------------------- quantization

def quantizable_op_types(qc):
    ops = []
    for layer_type in qc["quantizable_layer_type"]:
        ops += [o for o in _LAYER_TO_OPS[layer_type] if o not in ops]
    return ops


def skip_weight_names(model, qc):
    """Static weight names of the Conv2D / Linear layers matched by quant_config.skip_layers."""
    import paddle
    skipped = quant.mark_skipped(model, qc)
    names = []
    for name, layer in model.named_sublayers():
        if name in skipped and isinstance(layer, (paddle.nn.Conv2D, paddle.nn.Linear)):
            names.append(layer.weight.name)
    return names


def program_op_counts(pdmodel_path):
    """Counter of op types in a saved old-IR program."""
    from collections import Counter
    c = Counter()
    for (op_type, _), n in deploy.program_op_types(pdmodel_path).items():
        c[op_type] += n
    return c


def quantize_static(fp32_dir, out_dir, calib, opts, qc, skip_tensors):
    """paddleslim ``quant_post_static`` on the old-IR FP32 export in ``fp32_dir``."""
    import paddle
    from paddleslim.quant import quant_post_static
    ops = quantizable_op_types(qc)
    with compat.old_ir_static():
        # A fresh scope, also as the global one: load_inference_model loads the
        # parameters into global_scope(), PTQ runs and saves in ``scope``.
        scope = paddle.static.Scope()
        with paddle.static.scope_guard(scope):
            exe = paddle.static.Executor(paddle.CPUPlace())
            quant_post_static(
                executor=exe, model_dir=fp32_dir, quantize_model_path=out_dir,
                data_loader=compat.ptq_data_loader(calib),
                model_filename="model.pdmodel", params_filename="model.pdiparams",
                save_model_filename="model.pdmodel", save_params_filename="model.pdiparams",
                batch_size=opts.batch_size, batch_nums=calib.num_batches, scope=scope,
                algo=opts.algo, hist_percent=opts.hist_percent, quantizable_op_type=ops,
                weight_bits=int(qc["weight_bits"]), activation_bits=int(qc["activation_bits"]),
                weight_quantize_type=qc["weight_quantize_type"], onnx_format=True,
                skip_tensor_list=skip_tensors or None,
                # fold batch norm into the convolutions before quantizing their weights
                optimize_model=bool(qc["fuse_conv_bn"]))
    return ops


# ---------------------------------------------------------------- the whole run

def run_ptq(cfg, model_path, save_dir, opts):
    """FP32 weights -> calibrated INT8 inference directory ``save_dir``; returns ptq_info."""
    if opts.input_shape is None and (cfg.get("export") or {}).get("input_shape"):
        # the config's export shape (RTFormer: batch 1) also bounds the calibration batches
        opts = replace(opts, input_shape=export.check_input_shape(cfg, None))
    check_options(opts)
    qc = quant.quant_settings(cfg, purpose="ptq")
    model, _ = quant.build_model(cfg, model_path, quantized=False)
    skip_tensors = skip_weight_names(model, qc)
    calib = Calibration(cfg, opts)
    val_ds = builder.build_dataset(cfg, "val") if cfg.get("val_dataset") else None
    info = {}

    def _quantize_and_check(d, fp32_dir, fp32_size, dep):
        logger.info("PTQ: algo %s, %d batch(es) of %d, weights %s, ops %s",
                    opts.algo, calib.num_batches, opts.batch_size, qc["weight_quantize_type"],
                    quantizable_op_types(qc))
        ops = quantize_static(fp32_dir, d, calib, opts, qc, skip_tensors)
        for name in ("model.pdmodel", "model.pdiparams"):
            if not os.path.isfile(os.path.join(d, name)):
                raise RuntimeError(f"PTQ wrote no {name} in {d}")
        # The FP32 input was already rewritten; again in case the passes re-created the form.
        n = compat.fix_conv_bias_axis(os.path.join(d, "model.pdmodel"))
        logger.info("Rewrote %d conv bias adds so oneDNN can fuse bias and batch norm", n)
        compat.guard_overwritten_scales(os.path.join(d, "model.pdmodel"))  # logs what it guarded
        counts = program_op_counts(os.path.join(d, "model.pdmodel"))
        if not counts.get("quantize_linear") or not counts.get("dequantize_linear"):
            raise RuntimeError("PTQ produced no quantize_linear/dequantize_linear ops "
                               f"(op types: {dict(counts)})")
        with open(os.path.join(d, "deploy.yaml"), "w") as f:
            yaml.safe_dump(dep, f, sort_keys=False, default_flow_style=None)
        int8_size = os.path.getsize(os.path.join(d, "model.pdiparams"))
        # Load it as a user would (refuses a program without INT8 kernels), evaluate.
        pred = deploy.create_predictor(d, precision="int8", threads=opts.cpu_threads)
        try:
            int8_ops = dict(pred.int8_ops())
            metrics = (evaluate(pred, val_ds, label="Evaluate PTQ INT8 model (Paddle Inference, "
                                "oneDNN INT8)") if val_ds is not None else None)
        finally:
            pred.close()
        info.update({
            "method": "PTQ (paddleslim quant_post_static, onnx_format)",
            "algo": opts.algo, "batch_nums": opts.batch_nums, "batch_size": opts.batch_size,
            "calibration_batches": calib.num_batches,
            "calibration_images": calib.num_images,
            "split": float(opts.split), "seed": opts.seed,
            "calibration": calib.source, "calibration_detail": calib.describe,
            "accuracy_meaningful": not calib.random,
            "model_path": os.path.abspath(model_path), "config": os.path.abspath(cfg.path),
            "weight_quantize_type": qc["weight_quantize_type"], "fuse_conv_bn": bool(qc["fuse_conv_bn"]),
            "quantizable_op_type": ops, "skipped_weights": skip_tensors,
            "quantize_linear_ops": counts.get("quantize_linear", 0),
            "dequantize_linear_ops": counts.get("dequantize_linear", 0),
            "onednn_int8_ops": int8_ops,
            "params_mb": int8_size / 2 ** 20, "fp32_params_mb": fp32_size / 2 ** 20,
            "mIoU": metrics["mIoU"] if metrics else None,
            "metrics": ({k: metrics[k] for k in ("mIoU", "Acc", "Kappa", "Dice", "class_IoU",
                                                 "num_images")} if metrics else None),
        })
        if calib.random:
            info["warning"] = RANDOM_WARNING
        with open(os.path.join(d, "ptq_info.json"), "w") as f:
            json.dump(info, f, indent=2)

    def write(d):
        work = os.path.join(d, ".work")  # inside the temp folder: cleaned with it
        fp32_dir = os.path.join(work, "fp32")
        export.export_model(cfg, model, fp32_dir, input_shape=opts.input_shape,
                            output_op=opts.output_op)
        fp32_size = os.path.getsize(os.path.join(fp32_dir, "model.pdiparams"))
        with open(os.path.join(fp32_dir, "deploy.yaml")) as f:
            dep = yaml.safe_load(f)
        dep["Deploy"]["precision"] = "int8"
        try:
            _quantize_and_check(d, fp32_dir, fp32_size, dep)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    outputs.atomic_dir_write(save_dir, write, kind="export", verify=export.verify_inference_dir)
    logger.info("Exported PTQ INT8 model (%s, algo %s, params %.2f MB vs FP32 %.2f MB, oneDNN INT8 "
                "ops %s) to %s", type(model).__name__, opts.algo, info["params_mb"],
                info["fp32_params_mb"], info["onednn_int8_ops"], save_dir)
    if calib.random:
        logger.warning(RANDOM_WARNING)
    logger.info("Run it with deploy/python/infer.py --config %s/deploy.yaml (it runs INT8: "
                "deploy.yaml says so)", save_dir)
    return info


def check_model_path(model_path):
    """A clear error before any work when --model_path is missing (weights.load_state style)."""
    from .weights import WeightsError
    if not model_path:
        raise WeightsError("--model_path is required: PTQ quantizes trained FP32 weights")
    if not os.path.isfile(model_path):
        raise WeightsError(f"--model_path: weights file not found: {model_path}")


__all__ = ["ALGOS", "PTQOptions", "PTQError", "run_ptq", "check_model_path"]
