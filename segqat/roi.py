"""Region-of-interest masks: label pixels outside an image's region become the ignore index.

    python tools/data/convert_masks.py --images DRIVE/training/images \
        --masks DRIVE/training/1st_manual --image_suffix _training --mask_suffix _manual1 \
        --roi_dir DRIVE/training/mask --roi_suffix _training_mask \
        --map 255:1 --names background vessel --save_dir data/drive

Some data sets ship, beside each label, a mask of the region that was imaged
or annotated (DRIVE's round field of view: white inside, black outside).
Outside it the label says "background", but nothing there is to be
segmented: counted as background it inflates background IoU and mIoU, and
trained as background it teaches the border. With an ROI folder the
converter writes the ignore index there instead, so training, evaluation and
the benchmark all skip those pixels.

An ROI mask pairs with an image by stem, as masks do (``--roi_suffix`` is
removed first: ``21_training_mask.gif`` -> ``21``); every converted image needs
one. It is read through Pillow (first frame of a GIF or TIFF; palette and colour
images by brightness): a pixel is inside when its value is above 0.
It must have the label's size and at least one pixel inside.
"""
import logging

import numpy as np
from PIL import Image

from .data import DataError

logger = logging.getLogger(__name__)


def missing_roi(keys, roi_keys, roi_dir, roi_suffix):
    """A DataError when an image key has no ROI mask (naming the folder, a stem of each side
    and the suffix flag), else None."""
    missing = [k for k in keys if k not in roi_keys]
    if not missing:
        return
    have = sorted(roi_keys)
    like = f"ROI stems look like {have[0]!r}" if have else "it has no image files"
    raise DataError(
        f"--roi_dir {roi_dir}: {len(missing)} of {len(keys)} image(s) have no region-of-interest "
        f"mask with the same stem (e.g. {missing[0]!r}; {like}"
        f"{', after removing --roi_suffix ' + repr(roi_suffix) if roi_suffix else ''}). Every "
        "converted image needs one; pass --roi_suffix (the part of the ROI stems to remove) "
        "or leave --roi_dir out")


def read_roi(path, shape):
    """The region of interest of one image: a bool array of ``shape`` (True inside)."""
    try:
        with Image.open(path) as im:
            im.seek(0)
            deep = im.mode in ("I", "F") or im.mode.startswith("I;16")
            a = np.asarray(im if deep else im.convert("L"))  # palette, colour: by brightness
    except (OSError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise DataError(f"--roi_dir: cannot read region-of-interest mask {path} "
                        f"({type(e).__name__}: {e})")
    if a.shape != tuple(shape[:2]):
        raise DataError(f"--roi_dir: region-of-interest mask {path} is {a.shape[1]}x{a.shape[0]} "
                        f"but its label is {shape[1]}x{shape[0]}; they must match")
    inside = a > 0
    if not inside.any():
        raise DataError(f"--roi_dir: region-of-interest mask {path} has no pixel inside (all 0): "
                        "the whole label would be ignored")
    return inside


def apply_roi(label, inside, ignore_index):
    """``label`` with the ignore index outside ``inside``; and the number of pixels set."""
    out = np.where(inside, label, ignore_index).astype(label.dtype)
    return out, int((~inside).sum())


__all__ = ["missing_roi", "read_roi", "apply_roi"]
