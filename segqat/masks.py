"""Turn a folder of images and a folder of masks, as a data set ships them, into a
PaddleSeg data set.

    python tools/data/convert_masks.py --images DRIVE/training/images \
        --masks DRIVE/training/1st_manual --image_suffix _training --mask_suffix _manual1 \
        --map 255:1 --names background vessel --save_dir data/drive

Pairing: an image and a mask pair when their file stems are equal after
``image_suffix`` / ``mask_suffix`` are removed (``21_training.tif`` and
``21_manual1.gif`` both become ``21``). With a suffix, only the files whose
stem ends with it take part on that side (so images and masks may share one
folder). Files without a partner are reported and left out.

Masks are read through Pillow (first frame of a GIF or multi-page TIFF):
grayscale (8- or 16-bit) gives its values, a palette image gives its palette
indices as PaddleSeg reads it, an RGB(A) mask whose channels are equal is
grayscale. Then either

* a value map (``{255: 1}``): mapped values change, the others keep their
  value; every value must end up a class (0..num_classes-1) or the
  ignore_index, and every mapped value must occur in some mask, or
* a colour table (``read_color_table``): every mask is read as RGB (a palette
  through its palette, alpha dropped) and each colour becomes its index;
  a colour missing from the table is an error.

Unmapped values keep their value (``--map 255:1`` is enough for 0/255
masks); there is no separate strict mode because the range check is strict:
a value that is neither a class nor the ignore_index stops the conversion,
naming the file and the values. Masks holding only 0 and the ignore_index
(0/255 masks without a map) are refused as training would refuse them.
num_classes is ``--num_classes``, else the number of names, else the largest
class in the colour table or the map, plus 1.

With ``roi_dir``, each image's region-of-interest mask (paired by stem after
``roi_suffix``) sets the label pixels outside the region to the ignore_index
(``segqat/roi.py``); the census counts them as ``outside_roi``.

Writes ``save_dir/images/KEY.png`` (or the original .png/.jpg/.bmp file,
copied), ``labels/KEY.png`` (single-channel class indices), ``train.txt`` /
``val.txt`` (``images/KEY.png labels/KEY.png``, relative to save_dir, which is
the dataset_root), ``labels.txt`` when class names are known and
``convert_masks.json`` (what was done). The folder is written through a temp
sibling and swapped in when complete (``outputs.atomic_dir_write``).
"""
import dataclasses
import json
import logging
import os
import re
import shutil

import numpy as np
from PIL import Image

from . import outputs, roi
from .data import DataError, read_image

logger = logging.getLogger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".ppm", ".pgm",
              ".pbm")
# Copied unchanged: cv2.imread (what PaddleSeg's Dataset and our deploy code read images
# with) decodes these the same everywhere, and re-encoding a JPEG would only make it
# bigger. TIFF, GIF, WebP and PNM are decoded by Pillow and written as 8-bit RGB PNG
# (lossless): cv2 cannot read GIF at all, and its TIFF reading depends on how OpenCV was
# built and on the TIFF variant (compression, bit depth, pages).
COPIED_EXTS = (".png", ".jpg", ".jpeg", ".bmp")
OUT_NAME = "convert_masks.json"


@dataclasses.dataclass
class MaskOptions:
    """How to read and split the pairs; see the module docstring."""
    value_map: dict = dataclasses.field(default_factory=dict)  # raw value -> class or ignore
    colors: str = None  # colour-table file (exclusive with value_map)
    num_classes: int = None  # None: from names, the colour table or the map's targets
    ignore_index: int = 255
    names: list = None
    val_ratio: float = 0.2
    seed: int = 0
    image_suffix: str = ""
    mask_suffix: str = ""
    roi_dir: str = None  # region-of-interest masks: outside -> ignore_index (segqat/roi.py)
    roi_suffix: str = ""


# ------------------------------------------------------------------ helpers

def _natural(s):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _sample(names, n=3):
    names = list(names)
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _codes(rgb):
    """An (H, W, 3) uint8 array as colour codes R << 16 | G << 8 | B."""
    a = rgb.astype(np.int32)
    return (a[..., 0] << 16) | (a[..., 1] << 8) | a[..., 2]


def _rgb(code):
    return f"({code >> 16},{(code >> 8) & 255},{code & 255})"


# ------------------------------------------------------------------ colour table

def read_color_table(path):
    """``{colour code: index}`` and ``{index: name}`` from a colour-table file.

    One colour a line: ``R,G,B index [name]`` (e.g. ``255,0,0 1 vessel``);
    ``#`` starts a comment, blank lines are skipped. Several colours may share
    an index; the index may be the ignore_index.
    """
    if not os.path.isfile(path):
        raise DataError(f"--colors {path}: file not found")
    table, names = {}, {}
    allowed = "'R,G,B index [name]' with R, G, B in 0..255 and index in 0..255"
    with open(path, encoding="utf-8") as f:
        for no, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split(None, 2)
            try:
                rgb = [int(c) for c in parts[0].split(",")]
                index = int(parts[1])
            except (ValueError, IndexError):
                raise DataError(f"--colors {path}, line {no}: {line!r} is not {allowed}")
            if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb) or not 0 <= index <= 255:
                raise DataError(f"--colors {path}, line {no}: {line!r} is not {allowed}")
            code = (rgb[0] << 16) | (rgb[1] << 8) | rgb[2]
            if code in table:
                raise DataError(f"--colors {path}, line {no}: colour {_rgb(code)} is listed twice")
            table[code] = index
            if len(parts) == 3:
                if names.get(index, parts[2]) != parts[2]:
                    raise DataError(f"--colors {path}, line {no}: index {index} is named "
                                    f"{names[index]!r} on an earlier line and {parts[2]!r} here")
                names[index] = parts[2]
    if not table:
        raise DataError(f"--colors {path}: no colours in the file; each line must be {allowed}")
    return table, names


# ------------------------------------------------------------------ pairing

def _list_side(folder, suffix, flag, suffix_flag, exclude=()):
    """``{key: path}`` of the image files in ``folder`` that take part, and the skipped names."""
    if not os.path.isdir(folder):
        raise DataError(f"{flag} {folder}: folder not found")
    keys, skipped, other = {}, [], []
    for name in sorted(os.listdir(folder), key=_natural):
        path = os.path.join(folder, name)
        if name.startswith(".") or not os.path.isfile(path) or path in exclude:
            continue
        stem, ext = os.path.splitext(name)
        if ext.lower() not in IMAGE_EXTS:
            other.append(name)
            continue
        if suffix:
            if not stem.endswith(suffix) or stem == suffix:
                skipped.append(name)
                continue
            stem = stem[:-len(suffix)]
        if stem in keys:
            raise DataError(f"{flag} {folder}: {os.path.basename(keys[stem])} and {name} both "
                            f"pair as {stem!r}; keep one of them")
        keys[stem] = path
    if other:
        logger.info("%s %s: %d file(s) are not images (%s) and are left out", flag, folder,
                    len(other), _sample(other))
    if skipped:
        logger.warning("%s %s: %d image file(s) do not end with %s %s (%s) and are left out",
                       flag, folder, len(skipped), suffix_flag, suffix, _sample(skipped))
    if not keys:
        what = f" whose stem ends with {suffix}" if suffix else ""
        raise DataError(f"{flag} {folder}: no image files{what} (allowed: "
                        f"{', '.join(IMAGE_EXTS)})")
    return keys


def _suggest_suffixes(image_keys, mask_keys):
    """Suffixes that would pair the first image with a mask (by longest common prefix), or None."""
    img = image_keys[0]
    best = max(mask_keys, key=lambda m: len(os.path.commonprefix([img, m])))
    common = os.path.commonprefix([img, best]).rstrip("_-. ")
    if not common:
        return None
    suffixes = (img[len(common):], best[len(common):])
    img_cut = {k[:-len(suffixes[0])] if suffixes[0] and k.endswith(suffixes[0]) else k
               for k in image_keys}
    mask_cut = {k[:-len(suffixes[1])] if suffixes[1] and k.endswith(suffixes[1]) else k
                for k in mask_keys}
    return suffixes if img_cut & mask_cut else None


def pair_files(images_dir, masks_dir, image_suffix="", mask_suffix=""):
    """``[(key, image_path, mask_path)]`` by key, plus the unpaired image and mask names.

    Zero pairs is a DataError that shows a stem of each side and the suffix flags.
    """
    masks = _list_side(masks_dir, mask_suffix, "--masks", "--mask_suffix")
    same = os.path.realpath(images_dir) == os.path.realpath(masks_dir)
    images = _list_side(images_dir, image_suffix, "--images", "--image_suffix",
                        exclude=set(masks.values()) if same else ())
    keys = sorted(set(images) & set(masks), key=_natural)
    lone_images = [os.path.basename(images[k]) for k in images if k not in masks]
    lone_masks = [os.path.basename(masks[k]) for k in masks if k not in images]
    if not keys:
        ik, mk = list(images), list(masks)
        hint = ("Pass --image_suffix and/or --mask_suffix: the part of the stem to remove "
                "before pairing")
        s = _suggest_suffixes(ik, mk)
        if s:
            flags = " ".join(f"{f} {v}" for f, v in (("--image_suffix", image_suffix + s[0]),
                                                      ("--mask_suffix", mask_suffix + s[1])) if v)
            hint = f"Pass {flags} (removed from the stems before pairing)"
        raise DataError(
            f"no image in --images {images_dir} has a mask in --masks {masks_dir} with the same "
            f"stem: image stems look like {ik[0]!r} ({len(ik)} files), mask stems like "
            f"{mk[0]!r} ({len(mk)} files). {hint}")
    if lone_images:
        logger.warning("%d image(s) have no mask and are left out: %s", len(lone_images),
                       _sample(lone_images, 5))
    if lone_masks:
        logger.warning("%d mask(s) have no image and are left out: %s", len(lone_masks),
                       _sample(lone_masks, 5))
    return [(k, images[k], masks[k]) for k in keys], lone_images, lone_masks


# ------------------------------------------------------------------ reading

def _open(path, what):
    im = None
    try:
        im = Image.open(path)
        im.seek(0)  # the first frame of a GIF or a multi-page TIFF
        im.load()
        return im
    except (OSError, ValueError, EOFError, Image.DecompressionBombError) as e:
        if im is not None:
            im.close()
        raise DataError(f"cannot read {what} {path} ({type(e).__name__}: {e})")


def read_mask(path, colors=False):
    """A mask as a 2-D integer array (values; palette indices for a palette image), or,
    with ``colors``, as a 2-D array of colour codes ``R << 16 | G << 8 | B``."""
    with _open(path, "mask") as im:
        mode = im.mode
        if colors:
            if mode in ("I", "F") or mode.startswith("I;16"):
                raise DataError(f"mask {path} is a {mode} (16/32-bit) image, which has no "
                                "colours: drop --colors and map its values with --map")
            return _codes(np.asarray(im.convert("RGB")))
        if mode == "1":
            return np.asarray(im.convert("L"))
        if mode in ("L", "P") or mode.startswith("I;16"):
            return np.asarray(im)
        if mode in ("LA", "PA"):
            return np.asarray(im.getchannel(0))
        if mode in ("I", "F"):
            a = np.asarray(im)
            if a.min() < 0 or (mode == "F" and not np.all(a == np.round(a))):
                raise DataError(f"mask {path} ({mode} mode) has negative or fractional values; "
                                "masks hold whole numbers >= 0")
            return a.astype(np.int64)
        if mode in ("RGB", "RGBA"):
            a = np.asarray(im)[..., :3]
            if np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2]):
                return a[..., 0]
            cols, counts = np.unique(_codes(a), return_counts=True)
            top = ", ".join(f"{_rgb(int(c))} {int(n)} px"
                            for c, n in sorted(zip(cols, counts), key=lambda t: -t[1])[:4])
            raise DataError(f"mask {path} is a colour ({mode}) image with {len(cols)} colours "
                            f"(e.g. {top}): pass --colors FILE mapping each colour to a class "
                            "index (lines 'R,G,B index [name]')")
        raise DataError(f"mask {path} has the image mode {mode}; masks must be grayscale, palette "
                        "or RGB images")


def write_image(src, dst_stem):
    """Copy or convert one image; returns (file name written, (width, height))."""
    ext = os.path.splitext(src)[1].lower()
    if ext in COPIED_EXTS:
        img = read_image(src, "--images")  # what PaddleSeg (cv2) will read
        shutil.copyfile(src, dst_stem + ext)
        return os.path.basename(dst_stem + ext), (img.shape[1], img.shape[0])
    with _open(src, "image") as im:
        if im.mode.startswith("I;16"):
            # 16-bit to 8-bit as cv2.imread does for a 16-bit PNG (the high byte)
            rgb = Image.fromarray((np.asarray(im) >> 8).astype(np.uint8)).convert("RGB")
        elif im.mode in ("I", "F"):
            raise DataError(f"image {src} is a 32-bit ({im.mode}) image; save it as 8- or 16-bit")
        else:
            rgb = im.convert("RGB")  # alpha dropped, as cv2.IMREAD_COLOR does
        rgb.save(dst_stem + ".png")
        return os.path.basename(dst_stem + ".png"), rgb.size


# ------------------------------------------------------------------ classes

def resolve_classes(opts, table=None, color_names=None):
    """(num_classes, names or None), from --num_classes, --names, the colour table or --map."""
    color_names = color_names or {}
    k, why = opts.num_classes, "--num_classes"
    if k is None and opts.names:
        k, why = len(opts.names), "--names"
    if k is None and table:
        k, why = max([i for i in table.values() if i != opts.ignore_index] + [-1]) + 1, \
            f"the largest index in --colors {opts.colors}"
    if k is None and opts.value_map:
        k, why = max([v for v in opts.value_map.values() if v != opts.ignore_index] + [0]) + 1, \
            "the largest class in --map"
    if k is None:
        raise ValueError("the number of classes is not known: pass --num_classes N (or --names "
                         "with one name per class, or a --map / --colors that names the classes)")
    if k < 2:
        raise ValueError(f"num_classes {k} (from {why}) is less than 2: a segmentation data set "
                         "needs at least a background and one class; pass --num_classes")
    if not k <= opts.ignore_index <= 255:
        raise ValueError(f"--ignore_index {opts.ignore_index} is not allowed with num_classes "
                         f"{k}: it must be {k}..255 (not a class; labels are 8-bit)")
    if opts.names and len(opts.names) != k:
        raise ValueError(f"--names gives {len(opts.names)} names but num_classes is {k} "
                         f"(from {why}); give one name per class")
    names = list(opts.names) if opts.names else None
    if names is None and color_names and all(i in color_names for i in range(k)):
        names = [color_names[i] for i in range(k)]
    logger.info("num_classes %d (from %s), ignore_index %d%s", k, why, opts.ignore_index,
                f", classes: {', '.join(names)}" if names else "")
    return k, names


def split_keys(keys, val_ratio, seed):
    """(train keys, val keys): a seeded shuffle; 0 puts all in train, 1 all in val."""
    if not 0 <= val_ratio <= 1:
        raise ValueError(f"--val_ratio {val_ratio}: expected a number in 0..1")
    if val_ratio == 0:
        return list(keys), []
    if val_ratio == 1:
        return [], list(keys)
    n = len(keys)
    if n < 2:
        raise DataError(f"only {n} pair: it cannot be split into train and val; use "
                        "--val_ratio 0 (all train) or 1 (all val)")
    n_val = min(max(1, round(n * val_ratio)), n - 1)
    order = np.random.RandomState(seed).permutation(n)
    val = set(order[:n_val].tolist())
    return ([k for i, k in enumerate(keys) if i not in val],
            [k for i, k in enumerate(keys) if i in val])


# ------------------------------------------------------------------ conversion

def _to_classes(raw, path, opts, k, table):
    """Map one mask's raw values (or colour codes) to class indices (uint8)."""
    values, inverse, counts = np.unique(raw, return_inverse=True, return_counts=True)
    if table is not None:
        unknown = [(int(c), int(n)) for c, n in zip(values, counts) if int(c) not in table]
        if unknown:
            unknown.sort(key=lambda t: -t[1])
            shown = ", ".join(f"{_rgb(c)} ({n} px)" for c, n in unknown[:5])
            raise DataError(f"mask {path} has {len(unknown)} colour(s) not in --colors "
                            f"{opts.colors}: {shown}{' ...' if len(unknown) > 5 else ''}; add "
                            "them to the table ('R,G,B index'), e.g. with the ignore_index "
                            f"{opts.ignore_index} for borders")
        mapped = np.array([table[int(c)] for c in values], np.int64)
    else:
        mapped = np.array([opts.value_map.get(int(v), int(v)) for v in values], np.int64)
    bad = (mapped >= k) & (mapped != opts.ignore_index)
    if bad.any():
        raw_bad = [int(v) for v in values[bad]]
        shown = f"values {raw_bad[:10]}"
        after = "" if not opts.value_map else f" (after --map: {mapped[bad].tolist()[:10]})"
        if table is not None:
            shown = "colours " + ", ".join(_rgb(c) for c in raw_bad[:10])
            after = f" (--colors indices {mapped[bad].tolist()[:10]})"
        hint = " Map them with --map VALUE:CLASS, or set --num_classes."
        if table is not None:
            hint = f" Fix their indices in --colors {opts.colors}, or set --num_classes."
        elif set(values.tolist()) <= {0, 255} and 255 not in opts.value_map:
            hint = " Masks look like 0/255: pass --map 255:1."
        elif len(raw_bad) > 2 and os.path.splitext(path)[1].lower() in (".jpg", ".jpeg"):
            hint += (" JPEG masks are lossy (edges get in-between values): use lossless "
                     "(PNG) masks.")
        raise DataError(f"mask {path} has {shown}{after} that are neither classes "
                        f"(0..{k - 1}) nor the ignore_index {opts.ignore_index}.{hint}")
    return mapped.astype(np.uint8)[inverse].reshape(raw.shape), values


def _check_result(census, example, seen_raw, opts, k, names, outside=None):
    """Errors and warnings on the whole data set (training's label check, ahead of time)."""
    unused = sorted(set(opts.value_map) - seen_raw)
    if unused:
        raise DataError(
            f"--map {', '.join(f'{a}:{opts.value_map[a]}' for a in unused)}: no mask has the "
            f"value(s) {unused} (values found: {sorted(seen_raw)[:10]}). Palette masks (GIF, "
            "palette PNG) are read as palette indices, not colours; remove the entry, or use "
            "--colors to map colours")
    total = census["train"] + census["val"]
    ignore = opts.ignore_index
    present = set(np.nonzero(total)[0].tolist())
    if present <= {0, ignore} and total[ignore] > 0:
        raise DataError(
            f"the masks hold only 0 and the ignore_index {ignore} (e.g. {example[ignore]}): every "
            f"non-zero pixel would be ignored and a model would learn nothing. Masks look like "
            f"0/{ignore}: pass --map {ignore}:1")
    name = (lambda c: f"{c} ({names[c]})") if names else str
    for split in ("train", "val"):
        counts = census[split]
        if not counts.any():
            continue
        absent = [name(c) for c in range(k) if counts[c] == 0]
        if absent:
            logger.warning("class(es) %s never occur in the %s split%s", ", ".join(absent), split,
                           ": training refuses this unless --allow_absent_classes"
                           if split == "train" else "")
        out = (outside or {}).get(split, 0)
        if out:
            logger.info("%.1f%% of the %s pixels are outside the region of interest (--roi_dir) "
                        "and ignored", 100 * out / counts.sum(), split)
        share = (counts[ignore] - out) / counts.sum()  # outside the ROI: ignored on purpose
        if share > 0.5:
            logger.warning("the ignore_index %d covers %.1f%% of the %s pixels; training refuses "
                           "more than 50%%: if %d marks a class, --map it to that class", ignore,
                           100 * share, split, ignore)


def _census_rows(census, k, ignore, outside=None):
    """Pixels per class and ignored per split; with an ROI also ``outside_roi``, the ignored
    pixels that lie outside the region of interest."""
    return {split: {**{str(c): int(census[split][c]) for c in range(k)},
                    "ignore": int(census[split][ignore]),
                    **({"outside_roi": int(outside[split])} if outside is not None else {})}
            for split in ("train", "val")}


def convert_masks(images_dir, masks_dir, save_dir, opts, overwrite=False):
    """Convert the pairs into save_dir (see the module docstring); returns a summary dict."""
    table = color_names = None
    if opts.value_map and opts.colors:
        raise ValueError("--map and --colors exclude each other: a colour table maps colours "
                         "straight to class indices")
    for a, b in opts.value_map.items():
        if a < 0 or not 0 <= b <= 255:
            raise ValueError(f"--map {a}:{b}: expected VALUE:CLASS with VALUE >= 0 and CLASS a "
                             "class index or the ignore_index (0..255)")
    if opts.colors is not None:
        table, color_names = read_color_table(opts.colors)
    k, names = resolve_classes(opts, table, color_names)
    inputs = [images_dir, masks_dir, opts.colors, opts.roi_dir]
    outputs.check_save_dir(save_dir, "dataset", overwrite=overwrite, inputs=inputs)
    pairs, lone_images, lone_masks = pair_files(images_dir, masks_dir, opts.image_suffix,
                                                opts.mask_suffix)
    rois = {}
    if opts.roi_dir is not None:
        rois = _list_side(opts.roi_dir, opts.roi_suffix, "--roi_dir", "--roi_suffix")
        roi.missing_roi([p[0] for p in pairs], rois, opts.roi_dir, opts.roi_suffix)
    train_keys, val_keys = split_keys([p[0] for p in pairs], opts.val_ratio, opts.seed)
    split_of = {**{key: "train" for key in train_keys}, **{key: "val" for key in val_keys}}
    census = {s: np.zeros(256, np.int64) for s in ("train", "val")}
    outside = {"train": 0, "val": 0}  # label pixels outside the region of interest
    lists = {"train": [], "val": []}
    summary = {
        "images": os.path.abspath(images_dir), "masks": os.path.abspath(masks_dir),
        "image_suffix": opts.image_suffix, "mask_suffix": opts.mask_suffix,
        "value_map": {str(a): b for a, b in sorted(opts.value_map.items())},
        "colors": os.path.abspath(opts.colors) if opts.colors else None,
        "num_classes": k, "ignore_index": opts.ignore_index, "names": names,
        "roi_dir": os.path.abspath(opts.roi_dir) if opts.roi_dir else None,
        "roi_suffix": opts.roi_suffix,
        "val_ratio": opts.val_ratio, "seed": opts.seed,
        "num_pairs": len(pairs), "num_train": len(train_keys), "num_val": len(val_keys),
        "unpaired_images": lone_images, "unpaired_masks": lone_masks,
    }

    def write(tmp):
        os.makedirs(os.path.join(tmp, "images"))
        os.makedirs(os.path.join(tmp, "labels"))
        out_names, seen_raw, example = {}, set(), {}
        for n, (key, img_path, mask_path) in enumerate(pairs, 1):
            name = re.sub(r"\s+", "_", key)  # list files split on spaces
            if name in out_names:
                raise DataError(f"{mask_path} and {out_names[name]} would both be written as "
                                f"labels/{name}.png; rename one of them")
            out_names[name] = mask_path
            raw = read_mask(mask_path, colors=table is not None)
            label, values = _to_classes(raw, mask_path, opts, k, table)
            seen_raw.update(values.tolist())
            img_name, (w, h) = write_image(img_path, os.path.join(tmp, "images", name))
            if (h, w) != label.shape:
                raise DataError(f"image {img_path} is {w}x{h} but mask {mask_path} is "
                                f"{label.shape[1]}x{label.shape[0]}; they must match")
            split = split_of[key]
            if key in rois:
                label, n_out = roi.apply_roi(label, roi.read_roi(rois[key], label.shape),
                                             opts.ignore_index)
                outside[split] += n_out
            Image.fromarray(label, "L").save(os.path.join(tmp, "labels", name + ".png"))
            census[split] += np.bincount(label.ravel(), minlength=256)
            for v in np.unique(label).tolist():
                example.setdefault(v, mask_path)
            lists[split].append(f"images/{img_name} labels/{name}.png")
            if n % 100 == 0:
                logger.info("converted %d/%d pairs", n, len(pairs))
        _check_result(census, example, seen_raw, opts, k, names, outside)
        for split, lines in lists.items():
            if lines:
                with open(os.path.join(tmp, f"{split}.txt"), "w", encoding="utf-8") as f:
                    f.write("".join(line + "\n" for line in lines))
        if names:
            with open(os.path.join(tmp, "labels.txt"), "w", encoding="utf-8") as f:
                f.write("".join(name + "\n" for name in names))
        summary["census"] = _census_rows(census, k, opts.ignore_index, outside if rois else None)
        with open(os.path.join(tmp, OUT_NAME), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1)

    def verify(tmp):
        listed = [p for lines in lists.values() for line in lines for p in line.split()]
        outputs.check_files_written(tmp, listed + [f"{s}.txt" for s in lists if lists[s]])

    outputs.atomic_dir_write(save_dir, write, kind="dataset", verify=verify, overwrite=overwrite,
                             inputs=inputs, flag="--save_dir")
    summary.update(dataset_root=save_dir,
                   train_path=os.path.join(save_dir, "train.txt") if train_keys else None,
                   val_path=os.path.join(save_dir, "val.txt") if val_keys else None,
                   labels_path=os.path.join(save_dir, "labels.txt") if names else None)
    logger.info("wrote %d train / %d val pairs to %s", len(train_keys), len(val_keys), save_dir)
    return summary


def census_text(summary):
    """The class census (pixels per class per split) as a table."""
    k, names = summary["num_classes"], summary["names"]
    splits = [s for s in ("train", "val") if summary["num_" + s]]
    head = "".join(f"{s + ' (' + str(summary['num_' + s]) + ' pairs)':>28}" for s in splits)
    lines = ["Class census (pixels per class):", f"  {'class':>6} {'name':<14}{head}"]
    rows = [(str(c), names[c] if names else "") for c in range(k)]
    rows.append(("ignore", f"({summary['ignore_index']})"))
    if "outside_roi" in summary["census"]["train"]:
        rows.append(("outside_roi", "(of ignore)"))
    for key, name in rows:
        cells = ""
        for s in splits:
            counts = summary["census"][s]
            share = 100 * counts[key] / max(sum(v for c, v in counts.items() if c != "outside_roi"), 1)
            cells += f"{counts[key]:>19} {share:6.2f} %"
        lines.append(f"  {key:>6} {name[:14]:<14}{cells}")
    return "\n".join(lines)


def config_text(summary):
    """The dataset keys of a PaddleSeg config that point at the converted data set."""
    out = []
    for s, mode in (("train", "train"), ("val", "val")):
        path = summary[f"{s}_path"]
        if path is None:
            continue
        out += [f"{s}_dataset:", "  type: Dataset", f"  dataset_root: {summary['dataset_root']}",
                f"  {s}_path: {path}", f"  num_classes: {summary['num_classes']}",
                f"  ignore_index: {summary['ignore_index']}", f"  mode: {mode}"]
    return "\n".join(out)
