"""Evaluation: the one loop that scores a model on a dataset, whatever runs the model.

    from segqat.evaluate import evaluate
    m = evaluate(model, val_ds, test_cfg)                    # dygraph model: FP32 or fake quant
    m = evaluate(deploy.create_predictor("out_qat_infer"), val_ds,
                 label="Evaluate Quantized model")           # deployed predictor, any runtime
    m["mIoU"], m["Acc"], m["Kappa"], m["Dice"], m["class_IoU"], m["confusion_matrix"]

Training (--do_eval), tools/val.py and qat_val.py, QAT's evaluation before its
first step, PTQ, the calibration sweep, the benchmark and the sensitivity
analysis all call ``evaluate``.

What the model sees: a dygraph model (``paddle.nn.Layer``) gets the dataset's
val transforms and the config's ``test_config`` (``aug_eval`` with scales and
flips, sliding window); its logits are brought back to the label's size. A
deployed predictor (``segqat.deploy.create_predictor``) gets the raw image and
preprocesses it as deploy.yaml says, as in deployment. Both are scored at the
label's original size by ``metrics.ConfusionMatrix``.

Comparisons between models on the same images: ``keep=True`` returns the
per-image label maps (``m["predictions"]``, a ``Predictions``; ``margins=True``
adds a dygraph model's top-2 softmax margins); ``references={name:
Predictions}`` adds ``m["agreement"][name]``, the share of pixels on which the
model agrees with each (overall and ``per_image_disagreement``, the share of
each image's pixels that differ), and, for a reference with margins, where the two differ:
at near ties (margin < ``NEAR_TIE``) or at clear margins. ``indices`` evaluates
a subset, in that order.

Logs ``<label>: N images``, progress lines ``[EVAL] k/N images | s/img | ETA``
and PaddleSeg's ``[EVAL] #Images: N mIoU: ... Acc: ... Kappa: ... Dice: ...``
with per-class IoU and precision, named from the data set's labels.txt when it has
one (``[EVAL] Class IoU: road 0.9120, car 0.0514``; ``verbose=False``: none of them).
"""
import dataclasses
import logging
import math
import time
from typing import List, Optional

import numpy as np
import paddle
import paddle.nn.functional as F

from .data import class_names_of, read_class_names, to_bgr8
from .metrics import ConfusionMatrix, compute_metrics

logger = logging.getLogger(__name__)

# A pixel whose top-2 softmax probabilities differ by less than this is a near tie: any
# rounding may flip it, so disagreement there says little about the deployed kernels.
NEAR_TIE = 0.1


@dataclasses.dataclass
class Predictions:
    """Per-image results kept by ``evaluate(..., keep=True)``, in evaluation order."""
    indices: List[int]
    labels: List[np.ndarray] = dataclasses.field(default_factory=list)  # at the labels' size
    margins: Optional[List[np.ndarray]] = None  # top-2 softmax margin per pixel (margins=True)


# ---------------------------------------------------------------- predictions

def _reverse_transform(logits, trans_info):
    """Undo the resize/padding of the val transforms on [N, C, H, W] logits."""
    for mode, shape in reversed(trans_info):
        mode = mode[0] if isinstance(mode, (list, tuple)) else mode
        h, w = int(shape[0]), int(shape[1])
        if mode == "resize":
            logits = F.interpolate(logits, [h, w], mode="bilinear", align_corners=False)
        elif mode == "padding":
            logits = logits[:, :, :h, :w]
        else:
            raise ValueError(f"unexpected transform record {mode!r} in trans_info")
    return logits


def _slide_logits(model, img, crop_size, stride, num_classes):
    _, _, h_im, w_im = img.shape
    w_crop, h_crop = crop_size
    w_stride, h_stride = stride
    rows = max(int(math.ceil((h_im - h_crop) / h_stride)) + 1, 1)
    cols = max(int(math.ceil((w_im - w_crop) / w_stride)) + 1, 1)
    total = paddle.zeros([1, num_classes, h_im, w_im])
    count = paddle.zeros([1, 1, h_im, w_im])
    for r in range(rows):
        for c in range(cols):
            h1, w1 = r * h_stride, c * w_stride
            h2, w2 = min(h1 + h_crop, h_im), min(w1 + w_crop, w_im)
            h1, w1 = max(h2 - h_crop, 0), max(w2 - w_crop, 0)
            logit = model(img[:, :, h1:h2, w1:w2])[0]
            total[:, :, h1:h2, w1:w2] += logit
            count[:, :, h1:h2, w1:w2] += 1
    return total / count


def predict_logits(model, img, test_cfg, num_classes):
    """A dygraph model's logits at the input's size, honouring test_config (slide, aug_eval)."""
    is_slide = test_cfg.get("is_slide", False)

    def once(x):
        if is_slide:
            return _slide_logits(model, x, test_cfg["crop_size"], test_cfg["stride"], num_classes)
        return model(x)[0]

    if not test_cfg.get("aug_eval", False):
        return once(img)
    scales = test_cfg.get("scales", 1.0)
    scales = scales if isinstance(scales, list) else [scales]
    flips = [None]
    if test_cfg.get("flip_horizontal", False):
        flips.append([3])
    if test_cfg.get("flip_vertical", False):
        flips.append([2])
        if test_cfg.get("flip_horizontal", False):
            flips.append([2, 3])
    h, w = img.shape[-2:]
    total = 0
    for s in scales:
        hs, ws = int(h * s + 0.5), int(w * s + 0.5)
        x = F.interpolate(img, [hs, ws], mode="bilinear") if (hs, ws) != (h, w) else img
        for flip in flips:
            xi = paddle.flip(x, flip) if flip else x
            logit = once(xi)
            logit = paddle.flip(logit, flip) if flip else logit
            logit = F.interpolate(logit, [h, w], mode="bilinear") if (hs, ws) != (h, w) else logit
            total = total + F.softmax(logit, axis=1)
    return total


def iter_predictions(model, dataset, test_cfg=None, indices=None, margins=False):
    """Yield ``(index, predicted labels, label, margin)`` at the label's size.

    ``model``: a dygraph model (val transforms, ``test_config``) or a deployed
    predictor (raw image, deploy.yaml's preprocessing). ``margin`` is None, or
    with ``margins`` (dygraph only) the softmax probability of the top class
    minus that of the runner-up, per pixel (near 0: a near tie).
    """
    test_cfg = test_cfg or {}
    indices = range(len(dataset)) if indices is None else indices
    if isinstance(model, paddle.nn.Layer):
        yield from _dygraph_predictions(model, dataset, test_cfg, indices, margins)
        return
    if margins:
        raise ValueError("margins need a dygraph model's softmax; a deployed predictor returns labels")
    if test_cfg.get("aug_eval") or test_cfg.get("is_slide"):
        raise ValueError("test_config (aug_eval, is_slide) applies to the dygraph model; a deployed "
                         "predictor runs deploy.yaml's preprocessing on the whole image")
    for i in indices:
        img, lab = dataset.read(i)
        yield i, model.predict([to_bgr8(img)])[0], lab, None


def _dygraph_predictions(model, dataset, test_cfg, indices, margins):
    num_classes = dataset.num_classes
    model.eval()
    with paddle.no_grad():
        for i in indices:
            img, lab, trans_info = dataset[i]
            logits = predict_logits(model, paddle.to_tensor(img[np.newaxis]), test_cfg, num_classes)
            logits = _reverse_transform(logits, trans_info)
            labels = paddle.argmax(logits, axis=1).numpy()[0]
            margin = None
            if margins:
                top2 = paddle.topk(F.softmax(logits, axis=1), 2, axis=1)[0].numpy()[0]
                margin = top2[0] - top2[1]
            yield i, labels, lab, margin


# ---------------------------------------------------------------- agreement

class _Agreement:
    """Pixel agreement of one model's predictions with a reference's, image by image."""

    def __init__(self, ref):
        self.ref = ref
        self.equal = self.total = 0
        self.per_image = []  # share of each image's pixels that differ, in evaluation order
        # with the reference's margins: disagreements at near ties; agreement at clear margins
        self.tie_differ = self.clear_equal = self.clear = 0

    def update(self, k, pred):
        same = pred == self.ref.labels[k]
        self.equal += int(same.sum())
        self.per_image.append(1.0 - float(same.mean()) if same.size else 0.0)
        self.total += pred.size
        if self.ref.margins is not None:
            clear = self.ref.margins[k] >= NEAR_TIE
            self.tie_differ += int((~same & ~clear).sum())
            self.clear_equal += int((same & clear).sum())
            self.clear += int(clear.sum())

    def result(self):
        differ = self.total - self.equal
        out = {"agreement": self.equal / max(self.total, 1),
               "disagreement": differ / self.total if self.total else 0.0,
               "per_image_disagreement": list(self.per_image)}
        if self.ref.margins is not None:
            out.update(disagreement_at_near_ties=self.tie_differ / differ if differ else None,
                       agreement_clear_margin=self.clear_equal / max(self.clear, 1),
                       clear_margin_share=self.clear / max(self.total, 1))
        return out


# ---------------------------------------------------------------- evaluate

def evaluate(model, dataset, test_cfg=None, *, label="Evaluate", indices=None, keep=False,
             margins=False, references=None, verbose=True):
    """Score ``model`` (dygraph model or deployed predictor) on ``dataset``; returns the metrics.

    The dict has ``metrics.compute_metrics``'s keys plus ``num_images`` and
    ``confusion_matrix``; with ``references`` (``{name: Predictions}`` of the
    same ``indices``) also ``agreement``: ``{name: {"agreement", "disagreement",
    ...}}``; with ``keep`` (or ``margins``) also ``predictions``, a
    ``Predictions`` (not JSON: pop it before saving the dict).
    """
    indices = list(range(len(dataset)) if indices is None else (int(i) for i in indices))
    n = len(indices)
    nc = dataset.num_classes
    cm = ConfusionMatrix(nc, dataset.ignore_index)
    kept = Predictions(indices, [], [] if margins else None) if keep or margins else None
    agreements = {}
    for name, ref in (references or {}).items():
        if list(ref.indices) != indices:
            raise ValueError(f"reference {name!r} holds other images than this evaluation "
                             f"({len(ref.indices)} vs {n}); evaluate the same indices")
        agreements[name] = _Agreement(ref)
    if verbose and isinstance(model, paddle.nn.Layer):
        logger.info("%s: %d images, %s", label, n, _describe_test_cfg(test_cfg or {}))
    elif verbose:
        logger.info("%s: %d images", label, n)
    start = time.time()
    step = max(n // 10, 1)
    preds = iter_predictions(model, dataset, test_cfg, indices, margins)
    for done, (_, pred, lab, margin) in enumerate(preds, 1):
        cm.update(pred, lab)
        for a in agreements.values():
            a.update(done - 1, pred)
        if kept is not None:
            # a label map in the smallest type its classes fit: the report keeps one per image
            kept.labels.append(pred.astype(np.uint8 if nc <= 256 else np.int32))
            if margins:
                kept.margins.append(margin)
        if verbose and (done % step == 0 or done == n):
            el = time.time() - start
            logger.info("[EVAL] %d/%d images | %.3f s/img | ETA %s",
                        done, n, el / done, format_eta(el / done * (n - done)))
    m = compute_metrics(cm.mat)
    m["num_images"] = n
    m["confusion_matrix"] = cm.mat.tolist()
    if agreements:
        m["agreement"] = {name: a.result() for name, a in agreements.items()}
    if kept is not None:
        m["predictions"] = kept
    if verbose:
        log_eval(m, read_class_names(dataset) and class_names_of(dataset))
    return m


def per_class(values, names=None):
    """``road 0.9120, car 0.0514`` with class names, PaddleSeg's ``[0.912, 0.0514]`` without."""
    if not names:
        return str(np.round(values, 4).tolist())
    return ", ".join(f"{n} {v:.4f}" for n, v in zip(names, values))


def log_eval(m, class_names=None):
    """PaddleSeg's [EVAL] lines for a metrics dict (with num_images); per-class values
    named by ``class_names`` (the data set's labels.txt) when given."""
    logger.info("[EVAL] #Images: %d mIoU: %.4f Acc: %.4f Kappa: %.4f Dice: %.4f",
                m["num_images"], m["mIoU"], m["Acc"], m["Kappa"], m["Dice"])
    logger.info("[EVAL] Class IoU: %s", per_class(m["class_IoU"], class_names))
    logger.info("[EVAL] Class Precision: %s", per_class(m["class_precision"], class_names))


def _describe_test_cfg(tc):
    if tc.get("aug_eval"):
        return (f"aug_eval scales={tc.get('scales', 1.0)} flip_horizontal="
                f"{tc.get('flip_horizontal', False)} flip_vertical={tc.get('flip_vertical', False)}"
                + (f", slide crop={tc['crop_size']} stride={tc['stride']}" if tc.get("is_slide") else ""))
    if tc.get("is_slide"):
        return f"sliding window crop_size={tc['crop_size']} stride={tc['stride']}"
    return "whole image"


def format_eta(seconds):
    """HH:MM:SS, as PaddleSeg's ETA fields."""
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


__all__ = ["evaluate", "Predictions", "iter_predictions", "predict_logits", "log_eval", "per_class",
           "format_eta", "NEAR_TIE"]
