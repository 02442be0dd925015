"""Post-training quantization (PTQ): FP32 weights -> INT8 inference directory, no training.

    info = run_ptq(cfg, "out_fp32/best_model/model.pdparams", "out_ptq",
                   PTQOptions(algo="hist", batch_size=4, batch_nums=10))

Route: paddleslim's static PTQ (``quant_post_static``, i.e. paddle's
``PostTrainingQuantization``) on the old-IR FP32 export of the model:

1. the FP32 model is exported exactly as ``tools/export.py`` does
   (``export.export_model``: old-IR ``model.pdmodel``, the output op, and
   ``compat.fix_conv_bias_axis``) into a temporary directory;
2. the static program is run on calibration batches; the activation scales
   come from ``algo`` (abs_max, avg, hist, KL, mse); weights are quantized
   per channel (``quant_config.weight_quantize_type``);
3. the result is saved with ``onnx_format=True``: int8-stored weights and
   quantize_linear / dequantize_linear ops, the same form as
   ``slim/quant/qat_export.py`` writes, so ``deploy.create_predictor(precision="int8")``
   and ``deploy/python/infer.py --precision int8`` run it with oneDNN INT8
   kernels;
4. the exported model is loaded with ``deploy.create_predictor`` in INT8 (which refuses a
   program without INT8 kernels) and, when the config has a val_dataset,
   evaluated on the validation images (``evaluate.evaluate``: PaddleSeg's
   ``[EVAL]`` line);
5. ``deploy.yaml`` (precision: int8) and ``ptq_info.json`` are written.

Everything is written into a temporary sibling of ``save_dir`` and renamed
into place (``outputs.atomic_dir_write``): a failed run never damages an
earlier export. The FP32 export PTQ starts from is made inside that temporary
folder, so a killed run leaves nothing behind that the next run does not remove.

Calibration data: the images of ``quant_config.calibration_list`` (a list
file, one image per line) or else the train_dataset's images, with the *deployment*
preprocessing (the transforms written into deploy.yaml, i.e. the val
transforms; no random augmentation), in an order shuffled by ``seed``;
``split`` < 1 keeps a seeded random fraction of the images. Without a
train_dataset, or with ``random_calibration``, random images at the config's
input size are used and a loud warning says that the accuracy of the result
is meaningless (it only serves footprint / latency estimates).
"""
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass, replace
from typing import Optional

import cv2
import numpy as np  # noqa: F401  (before paddle, see compat)
import yaml

from . import builder, compat, deploy, export, outputs, quant
from .data import DataError, to_bgr8
from .evaluate import evaluate

logger = logging.getLogger(__name__)

# Activation-scale algorithms of paddle's PostTrainingQuantization that we expose.
ALGOS = ("abs_max", "avg", "hist", "KL", "mse")
# quant_config.quantizable_layer_type -> static op types.
_LAYER_TO_OPS = {"Conv2D": ["conv2d", "depthwise_conv2d"],
                 "Linear": ["mul", "matmul", "matmul_v2"]}
DEFAULT_INPUT_HW = (512, 512)

RANDOM_WARNING = (
    "!!! PTQ CALIBRATION ON RANDOM DATA: the activation scales of this INT8 model come from "
    "random inputs, so its ACCURACY IS MEANINGLESS. Use it only to estimate footprint and "
    "latency; calibrate on real images (a train_dataset, without --random_calibration) for a "
    "model you deploy. !!!")


class PTQError(ValueError):
    """PTQ input that cannot work (bad options, no calibration data)."""


@dataclass
class PTQOptions:
    algo: str = "hist"
    batch_size: int = 4
    batch_nums: int = 10
    split: float = 1.0
    seed: int = 0
    random_calibration: bool = False
    output_op: str = "argmax"
    input_shape: Optional[list] = None
    cpu_threads: int = 1
    hist_percent: float = 0.9999


# ---------------------------------------------------------------- calibration data

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


def _deploy_transforms(cfg):
    """The preprocessing deploy.yaml will name (val transforms): what inference sees."""
    return deploy.build_transforms({"transforms": export.deploy_transforms(cfg),
                                    "path": f"{cfg.path} (deploy transforms)"})


def _preprocess(transforms, img):
    data = {"img": img.astype("float32"), "trans_info": [], "gt_fields": []}
    return transforms(data)["img"]


def _fixed_hw(opts):
    s = opts.input_shape
    if s is not None and s[2] > 0 and s[3] > 0:
        return int(s[2]), int(s[3])
    return None


def _stack(xs, fixed_hw, note):
    """Stack CHW arrays; resize to the first one's (or the fixed) size when sizes differ."""
    hw = fixed_hw or xs[0].shape[1:]
    out = []
    for x in xs:
        if tuple(x.shape[1:]) != tuple(hw):
            if not note:
                logger.info("Calibration: resizing preprocessed images of other sizes to %dx%d "
                            "(H x W) to batch them", hw[0], hw[1])
                note.append(True)
            x = np.stack([cv2.resize(c, (int(hw[1]), int(hw[0])), interpolation=cv2.INTER_LINEAR)
                          for c in x])
        out.append(x)
    return np.ascontiguousarray(np.stack(out).astype("float32"))


def select_calibration_indices(n, opts):
    """Dataset indices used for calibration, in calibration order (deterministic in ``seed``).

    A ``seed``-shuffled order of the ``n`` images; ``split`` < 1 keeps its first
    ``round(split * n)`` (at least 1) images, then at most
    ``batch_nums * batch_size`` of those are used.
    """
    order = np.random.RandomState(opts.seed).permutation(n)
    keep = max(1, int(round(float(opts.split) * n)))
    subset = order[:keep]
    return [int(i) for i in subset[:opts.batch_nums * opts.batch_size]], keep


def input_hw(cfg, opts):
    """The config's input size (H, W) for random calibration."""
    fixed = _fixed_hw(opts)
    if fixed:
        return fixed, "--input_shape"
    for t in export.deploy_transforms(cfg) or []:
        if t.get("type") in ("Resize", "ResizeStepScaling") and t.get("target_size"):
            ts = t["target_size"]
            ts = [ts, ts] if isinstance(ts, int) else ts
            return (int(ts[1]), int(ts[0])), "deploy transforms Resize target_size (W, H)"
    for t in (cfg.get("train_dataset") or {}).get("transforms", []) or []:
        cs = t.get("crop_size")
        if cs:
            cs = [cs, cs] if isinstance(cs, int) else cs
            return (int(cs[1]), int(cs[0])), f"train_dataset {t.get('type')} crop_size (W, H)"
    if cfg.get("val_dataset"):
        try:
            val_ds = builder.build_dataset(cfg, "val")
            img, _ = val_ds.read(0)
            return tuple(int(v) for v in img.shape[:2]), "size of the first validation image"
        except Exception as e:  # a broken val set must not stop a random calibration
            logger.info("Could not read a validation image for the input size: %s", e)
    return DEFAULT_INPUT_HW, "default"


def read_calibration_list(cfg, list_path):
    """Image paths of ``quant_config.calibration_list``.

    One image per line (a second column, e.g. a label, is ignored); paths are
    relative to the train_dataset's ``dataset_root`` when there is one, else to
    the list file's folder, or absolute. Every file must exist.
    """
    where = f"quant_config.calibration_list in {cfg.where('quant_config')}"
    if not os.path.isfile(list_path):
        raise DataError(f"{where}: file not found: {list_path}")
    root = (cfg.get("train_dataset") or {}).get("dataset_root") or os.path.dirname(list_path)
    paths = []
    with open(list_path) as f:
        for no, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            p = parts[0] if os.path.isabs(parts[0]) else os.path.join(root, parts[0])
            if not os.path.isfile(p):
                raise DataError(f"{where}: {list_path} line {no}: image not found: {p}")
            paths.append(p)
    if not paths:
        raise DataError(f"{where}: {list_path} lists no image")
    return paths


class Calibration:
    """Re-iterable source of ``{"x": batch}`` feeds (PTQ iterates it twice for hist/KL)."""

    def __init__(self, cfg, opts):
        self.opts = opts
        self.transforms = _deploy_transforms(cfg)
        self.fixed_hw = _fixed_hw(opts)
        self._note = []
        has_train = bool(cfg.get("train_dataset"))
        calib_list = cfg.section("quant_config").get("calibration_list")
        self.random = bool(opts.random_calibration) or not (has_train or calib_list)
        self.list_paths = None
        if self.random:
            why = ("--random_calibration" if opts.random_calibration
                   else f"the config {cfg.path} has no train_dataset and no "
                        "quant_config.calibration_list")
            self.hw, hw_src = input_hw(cfg, opts)
            self.indices = None
            self.num_images = opts.batch_nums * opts.batch_size
            self.source = "random"
            self.describe = (f"random images {self.hw[0]}x{self.hw[1]} (H x W, from {hw_src}), "
                             f"{self.num_images} images, because of {why}")
            logger.warning(RANDOM_WARNING)
            logger.warning("!!! Calibrating on %s", self.describe)
        else:
            if calib_list:
                self.list_paths = read_calibration_list(cfg, calib_list)
                n, name = len(self.list_paths), f"calibration_list {calib_list}"
                self.source = "calibration_list"
            else:
                self.ds = builder.build_dataset(cfg, "train")
                n, name = len(self.ds), self.ds.name
                self.source = "train_dataset"
            self.indices, self.subset_size = select_calibration_indices(n, opts)
            self.num_images = len(self.indices)
            self.describe = (f"{self.num_images} images of the {name} (subset of "
                             f"{self.subset_size}/{n} images, split {opts.split}, "
                             f"seed {opts.seed}), deploy preprocessing")
            if self.num_images < opts.batch_nums * opts.batch_size:
                logger.warning("Calibration: only %d images available, fewer than batch_nums x "
                               "batch_size = %d", self.num_images, opts.batch_nums * opts.batch_size)
        self.num_batches = math.ceil(self.num_images / opts.batch_size)
        logger.info("Calibration data: %s; %d batch(es) of up to %d", self.describe,
                    self.num_batches, opts.batch_size)

    def _images(self):
        if self.random:
            rng = np.random.RandomState(self.opts.seed)
            for _ in range(self.num_images):
                yield rng.randint(0, 256, size=(self.hw[0], self.hw[1], 3)).astype("uint8")
        elif self.list_paths is not None:
            for i in self.indices:
                img = cv2.imread(self.list_paths[i], cv2.IMREAD_COLOR)
                if img is None:
                    raise DataError(f"calibration image cannot be read: {self.list_paths[i]}")
                yield img
        else:
            for i in self.indices:
                img, _ = self.ds.read(i)
                yield to_bgr8(img)

    def __call__(self):
        batch = []
        for img in self._images():
            batch.append(_preprocess(self.transforms, img))
            if len(batch) == self.opts.batch_size:
                yield {"x": _stack(batch, self.fixed_hw, self._note)}
                batch = []
        if batch:
            yield {"x": _stack(batch, self.fixed_hw, self._note)}

    def __len__(self):
        return self.num_batches


# ---------------------------------------------------------------- quantization

def quantizable_op_types(qc):
    ops = []
    for layer_type in qc["quantizable_layer_type"]:
        ops += [o for o in _LAYER_TO_OPS[layer_type] if o not in ops]
    return ops


def skip_weight_names(model, qc):
    """Static weight names of the Conv2D / Linear layers matched by quant_config.skip_layers."""
    import paddle
    skipped = quant._mark_skipped(model, qc)
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
                data_loader=calib, model_filename="model.pdmodel", params_filename="model.pdiparams",
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
    logger.info("Run it with deploy/python/infer.py --config %s/deploy.yaml --precision int8",
                save_dir)
    return info


def check_model_path(model_path):
    """A clear error before any work when --model_path is missing (weights.load_state style)."""
    from .weights import WeightsError
    if not model_path:
        raise WeightsError("--model_path is required: PTQ quantizes trained FP32 weights")
    if not os.path.isfile(model_path):
        raise WeightsError(f"--model_path: weights file not found: {model_path}")


__all__ = ["ALGOS", "PTQOptions", "PTQError", "run_ptq", "select_calibration_indices",
           "Calibration", "RANDOM_WARNING", "check_model_path"]
