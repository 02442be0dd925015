"""Convert a folder of images and a folder of masks into a PaddleSeg data set.

    python tools/data/convert_masks.py --images DRIVE/training/images \
        --masks DRIVE/training/1st_manual --image_suffix _training --mask_suffix _manual1 \
        --roi_dir DRIVE/training/mask --roi_suffix _training_mask \
        --map 255:1 --names background vessel --save_dir data/drive

Pairs 21_training.tif with 21_manual1.gif (stems equal once the suffixes are
removed), maps mask value 255 to class 1, sets the pixels outside each image's
field of view (21_training_mask.gif in --roi_dir) to the ignore index, splits the
pairs 80/20 (--val_ratio, --seed) and writes save_dir/images/21.png,
labels/21.png, train.txt, val.txt and labels.txt. Prints the pixels per class of each split and the config keys
that point a PaddleSeg config at the new data set. See segqat/masks.py for the
reading rules (palette masks give their indices, colour masks need --colors).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from segqat import cli  # noqa: E402

COLORS_HELP = """colour table for colour masks: one line per colour, 'R,G,B index [name]',
e.g. '0,0,0 0 background' and '255,0,0 1 vessel'; '#' starts a comment. Several
colours may share an index; use the ignore_index (255) for borders. Every mask
is matched by colour (palette masks through their palette); a colour that is
not in the table is an error"""


def value_pair(v):
    """``a:b`` -> (a, b), integers, a >= 0, b in 0..255."""
    try:
        a, b = (int(x) for x in v.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected VALUE:CLASS (e.g. 255:1), got {v!r}")
    if a < 0 or not 0 <= b <= 255:
        raise argparse.ArgumentTypeError(f"expected VALUE:CLASS with VALUE >= 0 and CLASS in "
                                         f"0..255, got {v!r}")
    return a, b


def ratio(v):
    try:
        f = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in 0..1, got {v!r}")
    if not 0 <= f <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in 0..1, got {v!r}")
    return f


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    g = parser.add_argument_group("input and output")
    g.add_argument("--images", required=True,
                   help="folder of images (PNG, JPEG, BMP, TIFF, GIF, ...)")
    g.add_argument("--masks", required=True,
                   help="folder of masks: grayscale (8/16-bit), palette (read as indices) or "
                        "colour (with --colors); GIF and multi-page TIFF: the first frame")
    g.add_argument("--image_suffix", default="",
                   help="removed from image stems before pairing, e.g. _training (21_training.tif "
                        "-> 21); only image files ending with it are used")
    g.add_argument("--mask_suffix", default="",
                   help="removed from mask stems before pairing, e.g. _manual1")
    g.add_argument("--roi_dir", default=None,
                   help="folder of region-of-interest masks, one per image paired by stem (e.g. "
                        "DRIVE's field-of-view masks): label pixels where the ROI mask is 0 become "
                        "the ignore_index, so they count in neither training nor mIoU")
    g.add_argument("--roi_suffix", default="",
                   help="removed from ROI mask stems before pairing, e.g. _training_mask")
    g.add_argument("--save_dir", required=True, help="the new data set (the config's dataset_root)")
    cli.add_overwrite(g, "converted data set")
    g = parser.add_argument_group("classes")
    g.add_argument("--map", type=value_pair, nargs="+", action="extend", default=[],
                   metavar="VALUE:CLASS",
                   help="mask value -> class index or ignore_index, e.g. --map 255:1 or "
                        "--map 0:0 128:2 255:1 (repeatable). Values not mapped keep their value; "
                        "every value must end up a class or the ignore_index, and every mapped "
                        "value must occur in some mask")
    g.add_argument("--colors", default=None, metavar="FILE", help=COLORS_HELP)
    g.add_argument("--num_classes", type=cli.positive_int, default=None,
                   help="number of classes (default: the number of --names, else the largest "
                        "index in --colors or class in --map, plus 1)")
    g.add_argument("--ignore_index", type=cli.nonneg_int, default=255,
                   help="label value that is not a class (default 255, PaddleSeg's)")
    g.add_argument("--names", nargs="+", default=None,
                   help="class names, one per class (written to labels.txt), "
                        "e.g. background vessel")
    g = parser.add_argument_group("split")
    g.add_argument("--val_ratio", type=ratio, default=0.2,
                   help="share of pairs for val.txt (default 0.2); 0: everything in train.txt, "
                        "1: everything in val.txt (e.g. for a separate test folder)")
    g.add_argument("--seed", type=cli.nonneg_int, default=0, help="seed of the split")
    return parser


def main(args):
    cli.setup(args)  # logging as every other script (and after paddle's own handler)
    from segqat import masks
    value_map = {}
    for a, b in args.map:
        if value_map.get(a, b) != b:
            raise ValueError(f"--map maps {a} twice ({a}:{value_map[a]} and {a}:{b})")
        value_map[a] = b
    opts = masks.MaskOptions(
        value_map=value_map, colors=args.colors, num_classes=args.num_classes,
        ignore_index=args.ignore_index, names=args.names, val_ratio=args.val_ratio,
        seed=args.seed, image_suffix=args.image_suffix, mask_suffix=args.mask_suffix,
        roi_dir=args.roi_dir, roi_suffix=args.roi_suffix)
    summary = masks.convert_masks(args.images, args.masks, args.save_dir, opts,
                                  overwrite=args.overwrite)
    # printed, not logged: a block to copy into a config
    print(masks.census_text(summary))
    print("\nPoint a config at it with these keys (they override the data set of its _base_, "
          "e.g. _base_: configs/bisenetv2/bisenetv2_isbi_256x256.yml, relative to the config "
          f"file):\n\n{masks.config_text(summary)}\n")
    return summary


if __name__ == "__main__":
    cli.run(main, get_args_parser().parse_args())
