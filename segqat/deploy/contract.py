"""The inference directory's contract and everything a runtime shares.

An exported directory holds ``deploy.yaml`` (PaddleSeg's schema: model and
params files, preprocessing transforms, output op, precision) beside the model.
``load_deploy_config`` reads and checks it; ``Predictor`` does the
pre/post-processing around one runtime call, so every runtime module only
loads the model, runs a batch and says which INT8 kernels it compiled.
"""
import os
import time
from collections import Counter

import cv2
import numpy as np

from ..config import read_yaml

PRECISIONS = ("fp32", "fp16", "int8")


class DeployError(ValueError):
    pass


def load_deploy_config(path, allow_external_model=False):
    """Read deploy.yaml (or a directory holding it) and check the files it names.

    ``model`` and ``params`` must be relative paths inside the export folder
    unless ``allow_external_model`` (``--allow_external_model``), and
    ``precision`` must be what the model's program holds (``precision``
    module: an INT8 program never runs as "FP32" because a file says so).
    """
    if os.path.isdir(path):
        path = os.path.join(path, "deploy.yaml")
    if not os.path.isfile(path):
        raise DeployError(f"--config: deploy.yaml not found: {path} (give the deploy.yaml of an "
                          "exported directory, written by tools/export.py or slim/quant/qat_export.py)")
    dic = read_yaml(path, "--config")
    if not isinstance(dic, dict) or not isinstance(dic.get("Deploy"), dict):
        raise DeployError(f"--config {path} has no 'Deploy' section (a mapping: PaddleSeg deploy.yaml "
                          "schema)")
    dep = dict(dic["Deploy"])
    base = os.path.dirname(os.path.abspath(path))
    for key in ("model", "params"):
        if key not in dep:
            raise DeployError(f"--config {path}: Deploy.{key} is missing")
        if not isinstance(dep[key], str) or not dep[key].strip():
            raise DeployError(f"{path}: Deploy.{key} is {dep[key]!r}; allowed: a file name in the "
                              "export folder, e.g. model.pdmodel / model.pdiparams")
        if not allow_external_model and outside(dep[key]):
            raise DeployError(f"{path}: Deploy.{key} is {dep[key]!r}, outside the export folder "
                              f"{base}; allowed: a relative path inside it (no absolute path, no "
                              "'..'), or pass --allow_external_model to use that file anyway")
    dep["dir"] = base
    dep["model_file"] = os.path.join(base, dep["model"])
    dep["params_file"] = os.path.join(base, dep["params"])
    for key in ("model_file", "params_file"):
        if not os.path.isfile(dep[key]):
            raise DeployError(f"--config {path}: {key.split('_')[0]} file not found: {dep[key]}")
    dep.setdefault("output_op", "argmax")
    dep.setdefault("transforms", [{"type": "Normalize"}])
    dep.setdefault("precision", "fp32")
    if dep["precision"] not in PRECISIONS:
        raise DeployError(f"{path}: Deploy.precision is {dep['precision']!r}; allowed: "
                          f"{', '.join(PRECISIONS)}")
    if not isinstance(dep.setdefault("int8_residual_fusion", True), bool):
        raise DeployError(f"{path}: Deploy.int8_residual_fusion is {dep['int8_residual_fusion']!r}; "
                          "allowed: true, false")
    _check_values(dep, path)
    dep["path"] = path
    from .precision import check_claimed_precision
    check_claimed_precision(dep)
    return dep


def outside(rel):
    """True if ``rel`` (a deploy.yaml file entry) is absolute or leaves its folder ('..')."""
    norm = os.path.normpath(rel)
    return os.path.isabs(rel) or norm == ".." or norm.startswith(".." + os.sep)


OUTPUT_OPS = ("argmax", "softmax", "none")  # what segqat.export writes (PaddleSeg's choices)


def _numbers(v):
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x) for x in v)


def _check_values(dep, path):
    """The model files are not empty; deploy.yaml's output_op, num_classes, transforms and
    Normalize statistics are allowed values. Each error names the file, the key, the value and
    what is allowed (a wrong one would fail deep inside a runtime or numpy)."""
    for key in ("model_file", "params_file"):
        if os.path.getsize(dep[key]) == 0:
            raise DeployError(f"{path}: {key.split('_')[0]} file {dep[key]} is empty (0 bytes): an "
                              "interrupted or failed export? Export the model again")
    if dep["model_file"].endswith(".pdmodel"):  # every runtime parses it first: check it once here
        from paddle.base import core
        with open(dep["model_file"], "rb") as f:
            data = f.read()
        try:
            core.ProgramDesc(data)
        except Exception as e:
            import paddle
            made = str(dep.get("paddle_version") or "")
            if made and made != paddle.__version__:  # written by another Paddle (docs/stacks.md)
                raise DeployError(f"{dep['model_file']} was exported by paddle {made}; paddle "
                                  f"{paddle.__version__}'s Paddle Inference cannot load it "
                                  f"({type(e).__name__}: its program does not parse). Run it on "
                                  f"paddle {made}, or export it again on paddle {paddle.__version__}"
                                  ) from e
            raise DeployError(f"{path}: model file {dep['model_file']} is not a Paddle program (a "
                              f"truncated or damaged file: {type(e).__name__}); export the model "
                              "again") from e
    if dep["output_op"] not in OUTPUT_OPS:
        raise DeployError(f"{path}: Deploy.output_op is {dep['output_op']!r}; allowed: "
                          f"{', '.join(OUTPUT_OPS)}")
    n = dep.get("num_classes")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise DeployError(f"{path}: Deploy.num_classes is {n!r}; allowed: an integer >= 1")
    chans = model_channels(dep)
    allowed = "a list of 1 number" if chans == 1 else f"a list of 1 or {chans} numbers"
    ts = dep["transforms"]
    if not isinstance(ts, list) or not all(isinstance(t, dict) and "type" in t for t in ts):
        raise DeployError(f"{path}: Deploy.transforms is {ts!r}; allowed: a list of mappings, each "
                          "with a 'type' (PaddleSeg's transforms)")
    for i, t in enumerate(ts):
        if t["type"] != "Normalize":
            continue
        for key in ("mean", "std"):
            v = t.get(key, [0.5])
            where = f"{path}: Deploy.transforms[{i}] (Normalize) {key}"
            if not _numbers(v):
                raise DeployError(f"{where} is {v!r}; allowed: {allowed}")
            if len(v) not in {1, chans}:
                raise DeployError(f"{where} has {len(v)} values for an input of {chans} channels; "
                                  f"allowed: {allowed}")
            if key == "std" and any(x == 0 for x in v):
                raise DeployError(f"{where} is {v!r}; a standard deviation of 0 divides by zero")


def resolve_precision(dep, precision):
    """The precision to run: deploy.yaml's unless ``precision`` overrides it; an FP32
    export cannot run INT8 and an INT8 (quantized) export does not run as FP32."""
    if precision is None:
        return dep["precision"]
    if precision not in PRECISIONS:
        raise DeployError(f"--precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "int8" and dep["precision"] != "int8":
        raise DeployError(
            f"--precision int8 needs a quantized export (deploy.yaml precision: int8); "
            f"{dep['path']} is precision {dep['precision']}. Export QAT weights with "
            "slim/quant/qat_export.py or quantize with slim/quant/ptq.py.")
    if dep["precision"] == "int8" and precision != "int8":
        raise DeployError(
            f"{dep['path']} is an INT8 (quantized) model; --precision {precision} would execute "
            "its fake quantization in floating point, slower than the FP32 model. Leave "
            "--precision out (deploy.yaml says int8) or run the FP32 export.")
    return precision


def model_channels(dep):
    """The image channels the model takes: deploy.yaml's input_shape C, else 3."""
    shape = dep.get("input_shape")
    ok = isinstance(shape, list) and len(shape) == 4 and isinstance(shape[1], int) and shape[1] > 0
    return shape[1] if ok else 3


def to_channels(img, channels):
    """A BGR image as the model takes it: grayscale for a 1-channel model (what PaddleSeg
    reads with ``img_channels: 1``), BGR for a 3-channel one."""
    if channels == 1 and img.ndim == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    if channels == 3 and img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    return img


def build_transforms(dep):
    """Preprocessing from deploy.yaml's transforms (paddleseg's TRANSFORMS registry)."""
    from ..builder import build_component
    from paddleseg.transforms import Compose
    ts = [build_component(t, "transform", f"{dep['path']}: Deploy.transforms[{i}]")
          for i, t in enumerate(dep["transforms"])]
    return Compose(ts, img_channels=model_channels(dep))


class Predictor:
    """One exported model on one runtime: BGR images in, label maps out.

    A runtime module subclasses it and implements ``_run`` (a [N, C, H, W]
    float32 batch -> the model's raw output) and ``int8_ops`` (Counter of the
    INT8 kernels the runtime compiled, read from its optimized graph). An INT8
    model whose runtime compiled no INT8 kernel is refused.
    """
    runtime = "?"

    def __init__(self, dep, precision, threads):
        self.dep, self.precision, self.threads = dep, precision, threads
        self.transforms = build_transforms(dep)

    def _check_int8(self):
        if self.precision != "int8":
            return
        ops = self.int8_ops()
        if not ops:
            self.close()
            raise DeployError(f"{self.dep['path']}: {self.runtime} compiled no INT8 kernel for this "
                              "model; refusing to run its fake quantization in floating point")

    # -- to implement ---------------------------------------------------------
    def _run(self, batch):
        raise NotImplementedError

    def int8_ops(self):
        """Counter {kernel type: count} of the INT8 kernels in the compiled model."""
        return Counter()

    def close(self):
        pass

    # -- shared ------------------------------------------------------------------
    def describe(self):
        ops = self.int8_ops()
        proof = f", INT8 kernels {dict(ops)}" if ops else ""
        return f"{self.runtime} {self.precision.upper()}, {self.threads} threads{proof}"

    def preprocess(self, img):
        """BGR uint8 image -> (CHW float32, trans_info)."""
        img = to_channels(img, model_channels(self.dep))
        data = {"img": img.astype("float32"), "trans_info": [], "gt_fields": []}
        data = self.transforms(data)
        return data["img"], data["trans_info"]

    def run(self, batch):
        """Run a [N, C, H, W] float32 batch; returns the raw output array."""
        return self._run(np.ascontiguousarray(batch, dtype=np.float32))

    def predict(self, images):
        """Label maps (original size) for a list of BGR images of one size."""
        xs, infos = zip(*(self.preprocess(im) for im in images))
        out = self.run(np.stack(xs))
        return [self.postprocess(o, info, im.shape[:2]) for o, info, im in zip(out, infos, images)]

    def postprocess(self, out, trans_info, orig_hw):
        if self.dep["output_op"] == "argmax":
            lab = out.astype(np.int32)
            for mode, shape in reversed(trans_info):
                h, w = int(shape[0]), int(shape[1])
                lab = lab[:h, :w] if mode == "padding" else cv2.resize(
                    lab.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(np.int32)
            return lab
        scores = out  # [C, H, W]
        for mode, shape in reversed(trans_info):
            h, w = int(shape[0]), int(shape[1])
            if mode == "padding":
                scores = scores[:, :h, :w]
            else:
                scores = np.stack([cv2.resize(c, (w, h), interpolation=cv2.INTER_LINEAR) for c in scores])
        return scores.argmax(0).astype(np.int32)

    def timed_run(self, batch):
        """Run ``batch`` once; the seconds the run took. A runtime in another process
        (Paddle Lite) returns the time of its own run, without the transfer."""
        t = time.perf_counter()
        self.run(batch)
        return time.perf_counter() - t

    def benchmark(self, batch, warmup=10, repeats=50):
        """Per-run times (s) of ``batch`` after warm-up."""
        for _ in range(warmup):
            self.run(batch)
        return [self.timed_run(batch) for _ in range(repeats)]


def palette(n=256):
    """PaddleSeg's colour map (bit-interleaved), as a flat RGB list."""
    pal = [0] * (n * 3)
    for j in range(n):
        lab, i = j, 0
        while lab:
            pal[j * 3 + 0] |= ((lab >> 0) & 1) << (7 - i)
            pal[j * 3 + 1] |= ((lab >> 1) & 1) << (7 - i)
            pal[j * 3 + 2] |= ((lab >> 2) & 1) << (7 - i)
            i += 1
            lab >>= 3
    return pal


def save_label_png(label, path):
    from PIL import Image
    im = Image.fromarray(label.astype(np.uint8), mode="P")
    im.putpalette(palette())
    im.save(path)


# Bright, distinct colours (BGR) for overlays; the first is the one
# foreground colour of a two-class model, chosen against the image.
_OVERLAY_BGR = [(0, 255, 0), (255, 255, 0), (0, 255, 255), (255, 0, 255), (255, 128, 0),
                (0, 128, 255), (128, 0, 255), (0, 0, 255), (255, 0, 0), (128, 255, 0),
                (255, 255, 255), (0, 128, 128), (128, 128, 0), (128, 0, 128), (0, 0, 128),
                (128, 0, 0), (0, 128, 0), (192, 192, 192), (64, 64, 64)]


def overlay_colors(img_bgr, num_classes):
    """BGR colour per class for ``overlay``: for two classes, class 0 is left
    untinted and class 1 gets the bright colour farthest from the image's mean
    colour (a red vessel image gets green or cyan, not dark red)."""
    if num_classes <= 2:
        mean = img_bgr.reshape(-1, 3).mean(0)
        best = max(_OVERLAY_BGR[:8], key=lambda c: float(np.abs(np.subtract(c, mean)).sum()))
        return [None, best]
    return [_OVERLAY_BGR[i % len(_OVERLAY_BGR)] for i in range(num_classes)]


def overlay(img_bgr, label, num_classes=None, alpha=0.45):
    """The image tinted by class, with class boundaries drawn at full colour (BGR uint8).
    Save it as PNG: JPEG smears the one-pixel boundaries."""
    label = np.asarray(label)
    n = int(num_classes or max(int(label.max()) + 1, 2))
    colors = overlay_colors(img_bgr, n)
    out = img_bgr.astype(np.float32)
    edge = np.zeros(label.shape, bool)
    edge[:-1] |= label[:-1] != label[1:]
    edge[:, :-1] |= label[:, :-1] != label[:, 1:]
    for c, col in enumerate(colors):
        if col is None:
            continue
        m = label == c
        out[m] = (1 - alpha) * out[m] + alpha * np.array(col, np.float32)
        out[m & edge] = col
    return np.clip(out, 0, 255).astype(np.uint8)
