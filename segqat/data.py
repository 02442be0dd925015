"""Datasets with input checks, and a deterministic, resumable batch sampler.

``CheckedDataset`` wraps any paddleseg list-file dataset (``file_list`` +
``transforms``): it checks at start that every listed file exists, and on
each read that the image decodes, that image and label have the same size and
that label values are classes or the ignore index. Every error names the file.

Random augmentation is seeded per sample from (seed, epoch, index), and the
sampler's order from (seed, epoch), so a run resumed at iteration N sees the
same batches as an uninterrupted one, whatever ``num_workers`` is.
"""
import json
import logging
import os
import random

import cv2
import numpy as np
import paddle
from PIL import Image

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """Bad data: a missing or unreadable file, or labels that do not fit."""


def read_list_lines(path, where):
    """The lines of a list file (``images/a.png labels/a.png`` per line) as text.

    UTF-8, with a leading byte-order mark (Windows Notepad writes one) dropped;
    bytes that are not UTF-8 (a Latin-1 file) are a DataError naming the file,
    the line and the byte, not a traceback deep inside a reader.
    """
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DataError(f"{where}: {path}, line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); "
                        "save the list file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from e
    return text.split("\n")


def check_list_file(path, separator=" ", needs_label=True, where="dataset"):
    """Every line of a PaddleSeg list file: ``image label`` (or ``image`` where no label is needed).

    paddleseg raises ``File list format incorrect!`` without a file or line;
    this names both, shows the line and says what is allowed.
    """
    sep_name = "a space" if separator == " " else repr(separator)
    allowed = (f"'image{separator}label' (two paths separated by {sep_name}; paths may not "
               "contain it)")
    if not os.path.isfile(path):
        raise DataError(f"{where}: list file not found: {path}")
    lines = read_list_lines(path, where)
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    for no, line in enumerate(lines, 1):
        parts = line.strip().split(separator)
        if not line.strip():
            raise DataError(f"{path}, line {no}: empty line; each line must be {allowed}")
        if "\t" in line and separator != "\t":
            raise DataError(f"{path}, line {no}: {line!r} contains a tab; each line must be {allowed}")
        if len(parts) > 2 or (needs_label and len(parts) != 2):
            raise DataError(f"{path}, line {no}: {line!r} has {len(parts)} field(s); each line must "
                            f"be {allowed}")


def is_truncated_jpeg(path):
    """A JPEG file that does not end with its end-of-image marker (OpenCV decodes it silently)."""
    if os.path.splitext(path)[1].lower() not in (".jpg", ".jpeg"):
        return False
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(size - 64, 0))
        tail = f.read().rstrip(b"\x00\r\n ")
    return not tail.endswith(b"\xff\xd9")


def _read_with_pillow(path, flag):
    """What OpenCV cannot decode but Pillow can (GIF), as OpenCV would return it (BGR or gray)."""
    try:
        with Image.open(path) as im:
            im.seek(0)  # an animated GIF: its first frame
            if flag == cv2.IMREAD_GRAYSCALE:
                return np.asarray(im.convert("L"))
            return np.ascontiguousarray(np.asarray(im.convert("RGB"))[:, :, ::-1])
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def read_image(path, where, flag=cv2.IMREAD_COLOR):
    """An image as OpenCV (PaddleSeg's reader) decodes it, or through Pillow for the formats
    OpenCV does not read (GIF, as labels are read); an unreadable file or a truncated JPEG is
    a DataError naming ``where`` and the file."""
    img = cv2.imread(path, flag)
    if img is None and flag in (cv2.IMREAD_COLOR, cv2.IMREAD_GRAYSCALE):
        img = _read_with_pillow(path, flag)
    if img is None:
        raise DataError(f"{where}: cannot read image file {path} (not an image, or corrupt)")
    if is_truncated_jpeg(path):
        raise DataError(f"{where}: image file {path} is a truncated JPEG (no end-of-image "
                        "marker): re-copy or re-encode it")
    return img


def read_label(path):
    """A label image as class indices, through Pillow as PaddleSeg reads it: a palette PNG
    gives its indices, and PNG, BMP, TIFF and GIF are read alike. None if unreadable."""
    try:
        with Image.open(path) as im:
            if im.mode in ("P", "L", "1", "I", "I;16"):
                return np.asarray(im.convert("L") if im.mode == "1" else im)
            return np.asarray(im)  # colour: reported by the caller
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def read_index_label(path, where):
    """``read_label`` for training: a single-channel class-index image, else a DataError."""
    label = read_label(path)
    if label is None:
        raise DataError(f"{where}: cannot read label file {path} (not an image Pillow reads, or "
                        "corrupt)")
    if label.ndim == 3:
        raise DataError(f"{where}: label file {path} has {label.shape[2]} channels; labels must be "
                        "single-channel class-index images (map each colour to its class index and "
                        "save as a one-channel PNG)")
    return label


class CheckedDataset(paddle.io.Dataset):
    def __init__(self, inner, name="dataset", seed=0):
        if not hasattr(inner, "file_list") or not hasattr(inner, "transforms"):
            raise DataError(f"{name}: {type(inner).__name__} is not a list-file dataset "
                            "(it needs file_list and transforms)")
        self.inner = inner
        self.name = name
        self.mode = inner.mode
        self.num_classes = inner.num_classes
        self.ignore_index = inner.ignore_index
        self.file_list = inner.file_list
        self.transforms = inner.transforms
        self.seed = seed
        self.epoch = 0
        if len(self.file_list) == 0:
            raise DataError(f"{name}: the list file names no samples (dataset_root "
                            f"{getattr(inner, 'dataset_root', '?')})")
        first = self.file_list[0]
        if isinstance(first[0], str) and "\ufeff" in first[0]:
            # paddleseg reads the list file without dropping a UTF-8 byte-order mark
            first[0] = first[0].replace("\ufeff", "", 1)
            logger.info("%s: the list file starts with a UTF-8 byte-order mark; ignored", name)
        for i, (img, lab) in enumerate(self.file_list):
            for kind, p in (("image", img), ("label", lab)):
                if p is None:
                    continue
                if not os.path.isfile(p):
                    raise DataError(f"{name}: {kind} file of sample {i + 1} not found: {p}")

    def __len__(self):
        return len(self.file_list)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def read(self, idx):
        """The raw (image, label) arrays of sample ``idx``, checked."""
        img_path, lab_path = self.file_list[idx]
        img = read_image(img_path, self.name, self.transforms.read_flag)
        label = read_index_label(lab_path, self.name)
        if img.shape[:2] != label.shape[:2]:
            raise DataError(f"{self.name}: image {img_path} is {img.shape[1]}x{img.shape[0]} but "
                            f"label {lab_path} is {label.shape[1]}x{label.shape[0]}; they must match")
        bad = (label >= self.num_classes) & (label != self.ignore_index)
        if bad.any():
            values = sorted(int(v) for v in np.unique(label[bad]))[:10]
            raise DataError(
                f"{self.name}: label file {lab_path} has values {values} that are neither classes "
                f"(0..{self.num_classes - 1}) nor the ignore_index {self.ignore_index}")
        return img.astype("float32"), label

    def __getitem__(self, idx):
        # Per-sample seed: augmentation does not depend on the order or the
        # worker that reads the sample (resume equivalence).
        s = (self.seed * 1000003 + self.epoch * 10007 + int(idx)) % (2 ** 32)
        random.seed(s)
        np.random.seed(s)
        img, label = self.read(idx)
        data = {"img": img, "label": label, "trans_info": [], "gt_fields": []}
        if self.mode != "val":
            data["gt_fields"].append("label")
        data = self.transforms(data)
        if self.mode == "val":
            return data["img"], data["label"].astype("int64"), data["trans_info"]
        return data["img"], data["label"].astype("int64")


def label_census(dataset, max_files=None):
    """Pixel counts per class, of the ignore value and of other values over the label files,
    plus the files whose image and label sizes differ. Sizes are read from file headers."""
    n = len(dataset.file_list)
    step = max(n // max_files, 1) if max_files else 1
    counts = np.zeros(256 * 256, np.int64)
    files_with = {}
    size_mismatch = []
    for i in range(0, n, step):
        img_path, lab_path = dataset.file_list[i]
        lab = read_index_label(lab_path, dataset.name)
        try:
            with Image.open(img_path) as im:
                w, h = im.size
        except OSError:
            w, h = None, None
        if w is not None and (h, w) != lab.shape[:2]:
            size_mismatch.append((img_path, (w, h), lab_path, lab.shape[1::-1]))
        vals, cnt = np.unique(lab, return_counts=True)
        for v, c in zip(vals.tolist(), cnt.tolist()):
            counts[v] += c
            files_with.setdefault(v, lab_path)
    return {"counts": counts, "example": files_with, "size_mismatch": size_mismatch,
            "files": len(range(0, n, step))}


def read_class_names(dataset):
    """Class names from ``labels.txt`` in the dataset_root (one per line), if there is one."""
    root = getattr(getattr(dataset, "inner", dataset), "dataset_root", None)
    path = os.path.join(root, "labels.txt") if root else None
    if not path or not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return [ln.strip() for ln in f if ln.strip()]


def roi_outside(dataset):
    """Label pixels of ``dataset``'s split that ``convert_masks.py --roi_dir`` set to the ignore
    index (outside the region of interest), from convert_masks.json in the dataset_root; 0
    for a data set converted without an ROI (or not by convert_masks.py)."""
    root = getattr(getattr(dataset, "inner", dataset), "dataset_root", None)
    path = os.path.join(root, "convert_masks.json") if root else None
    if not path or not os.path.isfile(path):
        return 0
    try:
        with open(path, encoding="utf-8") as f:
            census = json.load(f).get("census") or {}
    except (OSError, ValueError):
        return 0
    split = "train" if getattr(dataset, "mode", "train") == "train" else "val"
    return int((census.get(split) or {}).get("outside_roi", 0))


def class_names_of(dataset, names=None):
    """One name per class: ``names``, else labels.txt's, else "0", "1", ...

    A list shorter than num_classes is completed with the indices, a longer one cut.
    """
    k = dataset.num_classes
    names = list(names or read_class_names(dataset) or [])
    return (names + [str(c) for c in range(len(names), k)])[:k]


def check_labels(dataset, allow_absent_classes=False, class_names=None, max_ignore_share=0.5):
    """Catch, before training, label sets that would train silently to nothing.

    Errors (each names a file and says what to do): values that are neither a
    class nor the ignore value; masks whose only values are 0 and the ignore
    value (0/255 masks: every foreground pixel would be ignored); an ignore
    value covering more than ``max_ignore_share`` of the pixels; image and
    label sizes that differ; a class that never occurs (a warning with
    ``allow_absent_classes``). Logs a class-frequency table. Returns the census.
    """
    census = label_census(dataset)
    counts, ignore, k = census["counts"], dataset.ignore_index, dataset.num_classes
    name = dataset.name
    if census["size_mismatch"]:
        img, isz, lab, lsz = census["size_mismatch"][0]
        raise DataError(f"{name}: image {img} is {isz[0]}x{isz[1]} but label {lab} is "
                        f"{lsz[0]}x{lsz[1]}; they must match ({len(census['size_mismatch'])} "
                        "pair(s) differ)")
    present = [v for v in np.nonzero(counts)[0].tolist()]
    outside = [v for v in present if v >= k and v != ignore]
    total = int(counts.sum())
    n_ignore = int(counts[ignore]) if 0 <= ignore < counts.size else 0
    labelled = total - n_ignore
    if outside:
        first = census["example"][outside[0]]
        hint = ""
        if set(present) <= {0, 255} and ignore != 255:
            hint = (" Masks look like 0/255: map 255 to 1 and save them as PNG (in numpy: "
                    "np.where(mask == 255, 1, mask)).")
        raise DataError(f"{name}: label file {first} has values {outside[:10]} that are neither "
                        f"classes (0..{k - 1}) nor the ignore_index {ignore}.{hint}")
    if k >= 2 and set(present) <= {0, ignore} and n_ignore > 0:
        raise DataError(
            f"{name}: the labels hold only 0 and the ignore_index {ignore} (e.g. "
            f"{census['example'][ignore]}): every non-zero pixel would be ignored and the model "
            f"would learn nothing. Masks look like 0/{ignore}: map {ignore} to 1 and save them as "
            f"PNG (in numpy: np.where(mask == {ignore}, 1, mask))")
    outside = min(roi_outside(dataset), n_ignore)  # ignored on purpose: outside the ROI
    if outside:
        logger.info("%s: %.1f%% of the label pixels are outside the region of interest "
                    "(convert_masks.py --roi_dir) and ignored", name, 100 * outside / max(total, 1))
    if total and (n_ignore - outside) / total > max_ignore_share:
        raise DataError(
            f"{name}: the ignore_index {ignore} covers {100 * (n_ignore - outside) / total:.1f}% of "
            f"the label pixels{' inside the region of interest' if outside else ''} "
            f"(more than {100 * max_ignore_share:.0f}%; e.g. {census['example'][ignore]}); "
            f"if {ignore} marks a class, map it to that class's index in the label files")
    names = class_names_of(dataset, class_names)
    lines = [f"Class frequency over {census['files']} label files ({total} pixels, "
             f"{100 * n_ignore / max(total, 1):.1f}% ignored):"]
    for c in range(k):
        lines.append(f"  {c:>3} {names[c][:20]:<20} {int(counts[c]):>12} px "
                     f"{100 * counts[c] / max(labelled, 1):6.2f}%")
    logger.info("\n".join(lines))
    absent = [c for c in range(k) if counts[c] == 0]
    if absent:
        msg = (f"{name}: class(es) {absent} never occur in the labels of {census['files']} files "
               f"(num_classes is {k}): check num_classes and the label values")
        if not allow_absent_classes:
            raise DataError(msg + "; pass --allow_absent_classes to train anyway")
        logger.warning(msg)
    return census


def to_bgr8(img):
    """A ``CheckedDataset.read`` image as the 3-channel uint8 image a predictor takes."""
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, 2)
    return img.astype(np.uint8)


class ResumableBatchSampler(paddle.io.BatchSampler):
    """Shuffled batches, sharded over ranks, reproducible from (seed, epoch).

    ``set_epoch(e, skip=k)`` starts epoch ``e`` at its ``k``-th batch.
    Batches are full (drop_last): every rank takes the same number of steps.
    """

    def __init__(self, dataset, batch_size, shuffle=True, seed=0, rank=0, world_size=1):
        self.n = len(dataset)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.skip = 0
        if self.n < batch_size * world_size:
            raise DataError(f"the training set has {self.n} samples, fewer than batch_size "
                            f"{batch_size} x {world_size} process(es)")

    def set_epoch(self, epoch, skip=0):
        self.epoch, self.skip = epoch, skip

    def _indices(self):
        idx = np.arange(self.n)
        if self.shuffle:
            np.random.RandomState((self.seed + 7919 * self.epoch) % (2 ** 32)).shuffle(idx)
        per_rank = self.n // self.world_size
        idx = idx[:per_rank * self.world_size]
        return idx[self.rank::self.world_size]

    def __len__(self):
        return (self.n // self.world_size) // self.batch_size

    def __iter__(self):
        idx = self._indices()
        for b in range(self.skip, len(self)):
            yield idx[b * self.batch_size:(b + 1) * self.batch_size].tolist()
