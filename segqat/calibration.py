"""Calibration: the images activation scales are estimated from, and calibrating a model on them.

    calib = Calibration(cfg, CalibrationOptions(batch_size=4, batch_nums=10, seed=0))
    quant_post_static(..., data_loader=calib)     # PTQ: {"x": batch} feeds, re-iterable
    calibrate(fake_quant_model, calib.arrays())   # dygraph: the quantizers' moving averages

Which images: those of ``quant_config.calibration_list`` (a list file, one
image per line) or else the train_dataset's, with the *deployment*
preprocessing (the transforms written into deploy.yaml, i.e. the val
transforms; no random augmentation), in an order shuffled by ``seed``;
``split`` < 1 keeps a seeded random fraction of the images, and at most
``batch_nums x batch_size`` of them are used. Without a train_dataset, or with
``random_calibration``, random images at the config's input size are used and
a loud warning says that the accuracy of the result is meaningless (it only
serves footprint / latency estimates).

Users: PTQ (``ptq.run_ptq``, through paddleslim), the sensitivity analysis and
QAT's evaluation before its first step (both with ``calibrate``), the
calibration sweep.
"""
import logging
import math
import os
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np  # noqa: F401  (before paddle, see compat)

from . import builder, deploy, export
from .data import DataError, read_image, read_list_lines, to_bgr8

logger = logging.getLogger(__name__)

DEFAULT_INPUT_HW = (512, 512)

RANDOM_WARNING = (
    "!!! PTQ CALIBRATION ON RANDOM DATA: the activation scales of this INT8 model come from "
    "random inputs, so its ACCURACY IS MEANINGLESS. Use it only to estimate footprint and "
    "latency; calibrate on real images (a train_dataset, without --random_calibration) for a "
    "model you deploy. !!!")


@dataclass
class CalibrationOptions:
    """Which calibration images, in what batches (``ptq.PTQOptions`` extends it)."""
    batch_size: int = 4
    batch_nums: int = 10
    split: float = 1.0
    seed: int = 0
    random_calibration: bool = False
    input_shape: Optional[list] = None  # N C H W; a fixed H, W resizes every batch to it
    # batch_size/batch_nums are the user's --batch_size/--batch_nums: fewer images than they
    # ask for is a warning (else, e.g. QAT's calibration before fine-tuning, an info line)
    from_flags: bool = True


def _deploy_transforms(cfg):
    """The preprocessing deploy.yaml will name (val transforms): what inference sees."""
    return deploy.build_transforms({"transforms": export.deploy_transforms(cfg),
                                    "input_shape": [-1, export.in_channels(cfg), -1, -1],
                                    "path": f"{cfg.path} (deploy transforms)"})


def _preprocess(transforms, img):
    """A BGR image through the deploy transforms, in the model's channels (as a predictor)."""
    img = deploy.to_channels(img, transforms.img_channels)
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
    for no, line in enumerate(read_list_lines(list_path, where), 1):
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
            wanted = opts.batch_nums * opts.batch_size
            if self.num_images < wanted and opts.from_flags:
                logger.warning("Calibration: only %d images available, fewer than --batch_nums x "
                               "--batch_size = %d", self.num_images, wanted)
            elif self.num_images < wanted:
                logger.info("Calibration: all %d images (it takes up to %d)", self.num_images, wanted)
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
                yield read_image(self.list_paths[i], "quant_config.calibration_list")
        else:
            for i in self.indices:
                img, _ = self.ds.read(i)
                yield to_bgr8(img)

    def arrays(self):
        """The calibration batches, [N, C, H, W] float32 arrays."""
        return (b["x"] for b in self())

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


# ---------------------------------------------------------------- dygraph fake quant

def calibrate(model, batches, reset=True):
    """Update the activation quantizers' moving-average scales on ``batches``.

    Only the quantizers learn (they update in train mode); batch norms stay in
    eval mode, so the model's own statistics are unchanged. ``reset`` zeroes the
    moving averages first: paddle starts them at 1, which biases the scales of
    a short calibration towards 1 (after 3 batches 21% of the scale is that
    start value).
    """
    import paddle
    if reset:
        for layer in model.sublayers():
            for name in ("_state", "_accum"):
                p = getattr(layer, name, None)
                if isinstance(p, paddle.Tensor):
                    p.set_value(paddle.zeros_like(p))
    model.train()
    for layer in model.sublayers():
        if isinstance(layer, paddle.nn.layer.norm._BatchNormBase):
            layer.eval()
    n = 0
    with paddle.no_grad():
        for x in batches:
            model(x if isinstance(x, paddle.Tensor) else paddle.to_tensor(x))
            n += 1
    model.eval()
    return n


__all__ = ["CalibrationOptions", "Calibration", "calibrate", "select_calibration_indices",
           "read_calibration_list", "input_hw", "RANDOM_WARNING"]
