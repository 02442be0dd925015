"""Segmentation metrics from a confusion matrix (numpy; PaddleSeg's definitions).

mIoU averages the IoU of every class, counting a class that appears neither in
the labels nor in the predictions as IoU 0, as PaddleSeg's ``mean_iou`` does.
"""
import numpy as np


class ConfusionMatrix:
    def __init__(self, num_classes, ignore_index=255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = np.zeros((num_classes, num_classes), dtype=np.int64)  # [label, pred]

    def update(self, pred, label):
        pred = np.asarray(pred).reshape(-1).astype(np.int64)
        label = np.asarray(label).reshape(-1).astype(np.int64)
        if pred.shape != label.shape:
            raise ValueError(f"prediction has {pred.size} pixels, label has {label.size}")
        keep = label != self.ignore_index
        n = self.num_classes
        self.mat += np.bincount(label[keep] * n + pred[keep], minlength=n * n).reshape(n, n)

    def merge(self, other):
        self.mat += other.mat


def compute_metrics(mat):
    mat = np.asarray(mat, dtype=np.float64)
    tp = np.diag(mat)
    label_area = mat.sum(axis=1)
    pred_area = mat.sum(axis=0)
    union = label_area + pred_area - tp
    total = mat.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, 0.0)
        precision = np.where(pred_area > 0, tp / pred_area, 0.0)
        recall = np.where(label_area > 0, tp / label_area, 0.0)
        dice = np.where(label_area + pred_area > 0, 2 * tp / (label_area + pred_area), 0.0)
    acc = tp.sum() / total if total > 0 else 0.0
    pe = (label_area * pred_area).sum() / (total * total) if total > 0 else 0.0
    kappa = (acc - pe) / (1 - pe) if pe < 1 else 0.0
    return {
        "mIoU": float(iou.mean()),
        "Acc": float(acc),
        "Kappa": float(kappa),
        "Dice": float(dice.mean()),
        "class_IoU": [float(v) for v in iou],
        "class_precision": [float(v) for v in precision],
        "class_recall": [float(v) for v in recall],
        "class_Dice": [float(v) for v in dice],
        "pixels": int(total),
    }


def agreement(a, b, ignore=None):
    """Fraction of pixels on which two label maps agree (optionally outside a mask)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"label maps differ in shape: {a.shape} vs {b.shape}")
    if ignore is not None:
        keep = ~np.asarray(ignore, dtype=bool)
        a, b = a[keep], b[keep]
    return float((a == b).mean()) if a.size else 1.0
