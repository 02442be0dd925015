"""Data sets for segqat: a synthetic generator and converters for CamVid and ISBI 2012.

    python tools/data/make_synthetic.py --save_dir data/synthetic
    python tools/data/convert_camvid.py --src ../shared/data/camvid --save_dir data/camvid
    python tools/data/convert_isbi.py --src ../shared/data/isbi2012_membrane --save_dir data/isbi

Every function writes a PaddleSeg "generic Dataset" folder: ``train.txt`` and
``val.txt`` (one ``image_path label_path`` pair a line) plus ``labels.txt``
(class names, one a line). PaddleSeg builds each path with
``os.path.join(dataset_root, path)``, which returns ``path`` unchanged when it
is absolute, so the converters list the read-only source images by absolute
path (they are never copied) and only write remapped label PNGs.

Each data set is written into a temporary folder and swapped in when it is
complete (``outputs.atomic_dir_write``, kind "dataset"): an interrupted or
failed run leaves no list file, image or label behind, and an earlier data set
stays as it was. An existing data set at out_dir is replaced only with
``overwrite=True`` (the scripts' --overwrite); a folder of anything else, or one
that holds the source, is refused.
"""
import logging
import os

import cv2
import numpy as np
from PIL import Image

from . import outputs

logger = logging.getLogger(__name__)

SYNTHETIC_CLASSES = ("background", "circle", "square", "triangle", "ring",
                     "cross", "diamond", "star")
CAMVID_CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree",
                  "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist")
CAMVID_VOID = 11
ISBI_CLASSES = ("membrane", "cell")
IGNORE_INDEX = 255

# Per foreground class (1..7): base RGB colour, jittered by +-COLOUR_JITTER per
# channel so that colour ranges overlap between classes, and a texture.
_BASE_COLOURS = ((220, 70, 70), (70, 200, 70), (80, 100, 230), (220, 200, 60),
                 (200, 80, 210), (70, 200, 210), (235, 140, 50))
COLOUR_JITTER = 90
# An object's radius, as a fraction of the image side (uniform in this range).
OBJECT_SIZE = (0.09, 0.2)
_TEXTURES = (("stripes", 0), ("checker", 3), ("stripes", 90), ("plain", 0),
             ("stripes", 45), ("dots", 5), ("stripes", 135))


# ----------------------------------------------------------------- helpers
def _check_int(name, value, lo, hi=None):
    bad_type = isinstance(value, bool) or not isinstance(value, (int, np.integer))
    if bad_type or value < lo or (hi is not None and value > hi):
        allowed = f"an integer >= {lo}" if hi is None else f"an integer in {lo}..{hi}"
        raise ValueError(f"{name}={value!r} is not allowed: expected {allowed}")


def _require_dir(path, what):
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what} not found: {os.path.abspath(path)}")
    return os.path.abspath(path)


def _check_out(out_dir, overwrite, src_dir=None):
    """out_dir as an absolute path, refused (before any work) where a data set would destroy
    something: inside src_dir, over its source, over anything but an earlier data set."""
    out = os.path.abspath(out_dir)
    if src_dir is not None:
        real_src, real_out = os.path.realpath(src_dir), os.path.realpath(out)
        if real_out == real_src or real_out.startswith(real_src + os.sep):
            raise ValueError(f"out_dir {out} is inside the source directory {src_dir}, "
                             "which is read-only: choose another out_dir")
    outputs.check_save_dir(out, "dataset", overwrite=overwrite, inputs=[src_dir])
    return out


def _write_dataset(out, write, overwrite, src_dir=None):
    """``write(d)`` fills the data set in a temp folder; it replaces out_dir under the rule."""
    outputs.atomic_dir_write(out, write, kind="dataset", overwrite=overwrite, inputs=[src_dir],
                             flag="--save_dir")


def _write_text(path, lines):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(line + "\n" for line in lines))


_imwrite = outputs.imwrite


def _read_label(path):
    label = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if label is None:
        raise ValueError(f"cannot read label image {path}")
    if label.ndim != 2 or label.dtype != np.uint8:
        raise ValueError(f"label {path} must be a single-channel uint8 image, "
                         f"got shape {label.shape} dtype {label.dtype}")
    return label


def _check_values(path, label, allowed, allowed_text):
    bad = np.setdiff1d(np.unique(label), np.asarray(allowed))
    if bad.size:
        raise ValueError(f"label {path} has values {bad.tolist()}; allowed: {allowed_text}")


def _check_same_size(image_path, label, label_path):
    with Image.open(image_path) as im:
        width, height = im.size
    if (height, width) != label.shape:
        raise ValueError(f"image {image_path} is {width}x{height} but label {label_path} "
                         f"is {label.shape[1]}x{label.shape[0]}")


def _list_line(abs_image, rel_label):
    if any(c.isspace() for c in abs_image):
        raise ValueError(f"image path {abs_image!r} contains whitespace, which PaddleSeg "
                         "list files cannot hold: move the source data to a path without spaces")
    return f"{abs_image} {rel_label}"


def _write_lists(d, names, lists):
    """labels.txt and the list files, into the data set's temp folder ``d``."""
    _write_text(os.path.join(d, "labels.txt"), names)
    for split, lines in lists.items():
        _write_text(os.path.join(d, f"{split}.txt"), lines)


def _info(out, names, lists):
    return {"dataset_root": out, "num_classes": len(names),
            "train_path": os.path.join(out, "train.txt"),
            "val_path": os.path.join(out, "val.txt"),
            "labels_path": os.path.join(out, "labels.txt"),
            "num_train": len(lists["train"]), "num_val": len(lists["val"])}


# --------------------------------------------------------------- synthetic
def _shape_mask(rng, kind, size, object_size=OBJECT_SIZE):
    """Boolean mask of one randomly sized, placed and rotated filled shape."""
    mask = np.zeros((size, size), np.uint8)
    r = rng.uniform(*object_size) * size
    cx, cy = rng.uniform(0.5 * r, size - 0.5 * r, 2)
    theta = rng.uniform(0, 2 * np.pi)

    def poly(radii, angles):
        pts = np.stack([cx + radii * np.cos(angles + theta),
                        cy + radii * np.sin(angles + theta)], 1)
        return np.round(pts * 16).astype(np.int32)  # 4 fractional bits (shift=4)

    centre, ri = (int(round(cx * 16)), int(round(cy * 16))), int(round(r * 16))
    if kind == "circle":
        cv2.circle(mask, centre, ri, 1, -1, shift=4)
    elif kind == "ring":
        cv2.circle(mask, centre, ri, 1, max(2, int(round(0.4 * r))), shift=4)
    elif kind in ("square", "triangle"):
        n = 4 if kind == "square" else 3
        cv2.fillPoly(mask, [poly(np.full(n, r), np.arange(n) * 2 * np.pi / n)], 1, shift=4)
    elif kind == "diamond":
        cv2.fillPoly(mask, [poly(np.array([r, 0.55 * r, r, 0.55 * r]),
                                 np.arange(4) * np.pi / 2)], 1, shift=4)
    elif kind == "cross":
        w = max(1.5, 0.28 * r)
        for a in (0.0, np.pi / 2):
            ang = np.arctan2(w, r)
            cv2.fillPoly(mask, [poly(np.full(4, np.hypot(r, w)),
                                     a + np.array([ang, np.pi - ang, np.pi + ang, -ang]))], 1,
                         shift=4)
    elif kind == "star":
        cv2.fillPoly(mask, [poly(np.tile([r, 0.45 * r], 5), np.arange(10) * np.pi / 5)], 1, shift=4)
    else:
        raise ValueError(f"unknown shape {kind!r}")
    return mask.astype(bool)


def _texture(rng, kind, param, yy, xx):
    """Binary pattern in {0, 1}, random phase, class-specific orientation/period."""
    if kind == "plain":
        return np.zeros_like(xx)
    if kind == "stripes":
        a = np.deg2rad(param)
        t = xx * np.cos(a) + yy * np.sin(a) + rng.uniform(0, 4)
        return np.floor(t / 2.0) % 2
    px, py = rng.integers(0, 2 * param, 2)
    if kind == "checker":
        return ((xx + px) // param + (yy + py) // param) % 2
    if kind == "dots":
        return (((xx + px) % param < 2) & ((yy + py) % param < 2)).astype(xx.dtype)
    raise ValueError(f"unknown texture {kind!r}")


def _synthetic_sample(rng, size, num_classes, must_have, object_size=None, colour_jitter=None):
    """One RGB image (uint8 HxWx3) and its label (uint8 HxW)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # background: random base colour + smooth low-frequency blobs
    blobs = cv2.resize(rng.normal(0, 30, (5, 5, 3)).astype(np.float32), (size, size),
                       interpolation=cv2.INTER_CUBIC)
    image = rng.uniform(40, 215, 3).astype(np.float32) + blobs
    label = np.zeros((size, size), np.uint8)
    classes = list(rng.integers(1, num_classes, rng.integers(1, 4))) + [must_have]
    for cls in classes:  # later objects are drawn on top, and their label wins
        mask = _shape_mask(rng, SYNTHETIC_CLASSES[cls], size, object_size or OBJECT_SIZE)
        jitter = COLOUR_JITTER if colour_jitter is None else colour_jitter
        colour = np.clip(np.asarray(_BASE_COLOURS[cls - 1]) +
                         rng.integers(-jitter, jitter + 1, 3), 40, 255)
        pattern = _texture(rng, *_TEXTURES[cls - 1], yy, xx)
        obj = colour[None, None, :] * (1 - rng.uniform(0.35, 0.6) * pattern[..., None])
        image[mask] = obj[mask]
        label[mask] = cls
    image += rng.normal(0, 8, image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), label


def synthetic_image(size, seed=0, num_classes=4):
    """One image of the synthetic data set as BGR uint8 (size x size), e.g. to check a
    converted model against its source without a data set at hand."""
    rng = np.random.default_rng([seed, 2])
    image, _ = _synthetic_sample(rng, size, num_classes, 1 + seed % (num_classes - 1))
    return cv2.cvtColor(image, cv2.COLOR_RGB2BGR)


def make_synthetic(out_dir, num_train=200, num_val=40, size=64, num_classes=4, seed=0,
                   object_size=OBJECT_SIZE, colour_jitter=COLOUR_JITTER, overwrite=False):
    """Write a deterministic synthetic multi-class segmentation data set.

    Class 0 is a noisy, blotchy background; class k >= 1 is a shape
    (SYNTHETIC_CLASSES[k]) with its own texture (stripes of a class-specific
    orientation, checker, dots, plain) and a jittered colour that overlaps
    with other classes, so shape + texture identify the class, not colour.
    Each image holds 2..4 objects of random size, position and rotation that
    may overlap (later drawn on top). Image i of a split always contains class
    1 + i % (num_classes - 1), so every class occurs once num_train >=
    num_classes - 1. Each image has its own RNG seeded from (seed, split, i):
    the same seed gives byte-identical files.

    ``object_size`` (radius range, a fraction of the side) and ``colour_jitter``
    (+- per channel) set how hard it is: the defaults make small objects whose
    colours overlap; ``object_size=(0.2, 0.4), colour_jitter=30`` (the model
    zoo's data) makes large objects (about 45% of the pixels) whose colours barely
    overlap, which models trained from scratch learn in a few hundred iterations.

    Layout: images/{train,val}_NNNN.png (RGB), labels/{train,val}_NNNN.png
    (single-channel uint8, 0..num_classes-1), train.txt, val.txt, labels.txt.
    """
    _check_int("num_classes", num_classes, 2, len(SYNTHETIC_CLASSES))
    _check_int("size", size, 32)
    _check_int("num_train", num_train, 1)
    _check_int("num_val", num_val, 1)
    _check_int("seed", seed, 0)
    _check_int("colour_jitter", colour_jitter, 0, 255)
    lo, hi = (float(v) for v in object_size)
    if not 0 < lo <= hi <= 0.5:
        raise ValueError(f"object_size={tuple(object_size)!r} is not allowed: expected "
                         "MIN MAX with 0 < MIN <= MAX <= 0.5 (fractions of the image side)")
    out = _check_out(out_dir, overwrite)
    names = list(SYNTHETIC_CLASSES[:num_classes])
    lists = {}

    def write(d):
        os.makedirs(os.path.join(d, "images"))
        os.makedirs(os.path.join(d, "labels"))
        for split_id, (split, count) in enumerate((("train", num_train), ("val", num_val))):
            lines = []
            for i in range(count):
                rng = np.random.default_rng([seed, split_id, i])
                image, label = _synthetic_sample(rng, size, num_classes, 1 + i % (num_classes - 1),
                                                 (lo, hi), colour_jitter)
                name = f"{split}_{i:04d}.png"
                _imwrite(os.path.join(d, "images", name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
                _imwrite(os.path.join(d, "labels", name), label)
                lines.append(f"images/{name} labels/{name}")
            lists[split] = lines
        _write_lists(d, names, lists)

    _write_dataset(out, write, overwrite)
    info = _info(out, names, lists)
    logger.info("synthetic: %d train + %d val images, %d classes, in %s",
                num_train, num_val, num_classes, out)
    return info


# ------------------------------------------------------------------ CamVid
def _read_pairs(list_file):
    """Yield (line_number, image_rel, label_rel) for each non-blank line."""
    with open(list_file, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            items = line.split()
            if not items:
                continue
            if len(items) != 2:
                raise ValueError(f"{list_file}, line {lineno}: expected "
                                 f"'image_path label_path', got {line.strip()!r}")
            yield lineno, items[0], items[1]


def _listed_file(root, rel, list_file, lineno):
    path = os.path.abspath(os.path.join(root, rel))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{list_file}, line {lineno}: listed file not found: {path}")
    return path


def convert_camvid(src_dir, out_dir, overwrite=False):
    """Convert the SegNet-layout CamVid folder (read-only) into out_dir.

    Reads src_dir/{train,val}.txt (``train/x.png trainannot/x.png`` lines,
    relative to src_dir). Writes out_dir/{train,val}annot/*.png with void
    (11) remapped to 255 (PaddleSeg's ignore_index) and classes 0..10
    unchanged, out_dir/{train,val}.txt as ``<absolute source image>
    <label relative to out_dir>``, and out_dir/labels.txt (11 class names).
    """
    src = _require_dir(src_dir, "CamVid source directory")
    out = _check_out(out_dir, overwrite, src)
    lists = {}

    def write(d):
        for split in ("train", "val"):
            list_file = os.path.join(src, f"{split}.txt")
            if not os.path.isfile(list_file):
                raise FileNotFoundError(f"CamVid list file not found: {list_file}")
            os.makedirs(os.path.join(d, f"{split}annot"))
            lines, seen = [], set()
            for lineno, image_rel, label_rel in _read_pairs(list_file):
                image_path = _listed_file(src, image_rel, list_file, lineno)
                label_path = _listed_file(src, label_rel, list_file, lineno)
                out_rel = f"{split}annot/{os.path.basename(label_path)}"
                if out_rel in seen:
                    raise ValueError(f"{list_file}, line {lineno}: duplicate label name {out_rel}")
                seen.add(out_rel)
                label = _read_label(label_path)
                _check_values(label_path, label, np.arange(CAMVID_VOID + 1),
                              "0..10 (classes) and 11 (void)")
                _check_same_size(image_path, label, label_path)
                label[label == CAMVID_VOID] = IGNORE_INDEX
                _imwrite(os.path.join(d, out_rel), label)
                lines.append(_list_line(image_path, out_rel))
            if not lines:
                raise ValueError(f"CamVid list file {list_file} has no entries")
            lists[split] = lines
        _write_lists(d, list(CAMVID_CLASSES), lists)

    _write_dataset(out, write, overwrite, src)
    info = _info(out, list(CAMVID_CLASSES), lists)
    info["ignore_index"] = IGNORE_INDEX
    logger.info("camvid: %d train + %d val labels remapped (11 -> %d) into %s",
                info["num_train"], info["num_val"], IGNORE_INDEX, out)
    return info


# -------------------------------------------------------------------- ISBI
def convert_isbi(src_dir, out_dir, num_val=6, overwrite=False):
    """Convert the ISBI 2012 membrane stack (read-only) into out_dir.

    src_dir holds image/N.png (grayscale) and label/N.png (values {0, 255}).
    Fixed split by index: the LAST num_val indices are val (24..29 for the
    30-image stack and num_val=6), the rest train. Writes out_dir/labels/N.png
    with 255 -> 1 (0 = membrane, 1 = cell; any other value is an error),
    out_dir/{train,val}.txt as ``<absolute source image> labels/N.png``, and
    out_dir/labels.txt. The grayscale images load as 3 identical channels with
    PaddleSeg's default img_channels=3.
    """
    src = _require_dir(src_dir, "ISBI source directory")
    image_dir = _require_dir(os.path.join(src, "image"), "ISBI image directory")
    label_dir = _require_dir(os.path.join(src, "label"), "ISBI label directory")
    indices = sorted(int(n[:-4]) for n in os.listdir(image_dir)
                     if n.endswith(".png") and n[:-4].isdigit())
    if len(indices) < 2:
        raise FileNotFoundError(f"need at least 2 images named N.png in {image_dir}, "
                                f"found {len(indices)}")
    _check_int("num_val", num_val, 1, len(indices) - 1)
    out = _check_out(out_dir, overwrite, src)
    lists = {}

    def write(d):
        os.makedirs(os.path.join(d, "labels"))
        lines = []
        for i in indices:
            image_path = os.path.join(image_dir, f"{i}.png")
            label_path = os.path.join(label_dir, f"{i}.png")
            if not os.path.isfile(label_path):
                raise FileNotFoundError(f"ISBI label for image {image_path} not found: {label_path}")
            label = _read_label(label_path)
            _check_values(label_path, label, (0, 255), "0 (membrane) and 255 (cell)")
            _check_same_size(image_path, label, label_path)
            _imwrite(os.path.join(d, "labels", f"{i}.png"), (label == 255).astype(np.uint8))
            lines.append(_list_line(image_path, f"labels/{i}.png"))
        lists.update(train=lines[:-num_val], val=lines[-num_val:])
        _write_lists(d, list(ISBI_CLASSES), lists)

    _write_dataset(out, write, overwrite, src)
    info = _info(out, list(ISBI_CLASSES), lists)
    logger.info("isbi: %d train + %d val labels (255 -> 1) into %s",
                info["num_train"], info["num_val"], out)
    return info
