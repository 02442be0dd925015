"""Convert the read-only ISBI 2012 membrane stack into a PaddleSeg data set.

    python tools/data/convert_isbi.py --src ../shared/data/isbi2012_membrane --save_dir data/isbi --num_val 6

Fixed split: the last --num_val images by index (24..29 by default) are val,
the rest train. Writes labels/N.png with 255 -> 1 (0 membrane, 1 cell),
train.txt / val.txt listing the source images by absolute path (not copied),
and labels.txt.
The data set appears when complete; an earlier one at --save_dir is replaced
only with --overwrite, and a folder of anything else is refused.
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from segqat import cli, datagen  # noqa: E402

logger = logging.getLogger(__name__)


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", default="../shared/data/isbi2012_membrane",
                        help="folder with image/N.png and label/N.png (read only)")
    parser.add_argument("--save_dir", default="data/isbi", help="output folder")
    cli.add_overwrite(parser, "data set")
    parser.add_argument("--num_val", type=int, default=6,
                        help="the last NUM_VAL images by index go to val")
    return parser


def main(args):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(levelname)s] %(message)s")
    info = datagen.convert_isbi(args.src, args.save_dir, num_val=args.num_val,
                                overwrite=args.overwrite)
    logger.info("wrote %d train / %d val labels (%d classes) to %s",
                info["num_train"], info["num_val"], info["num_classes"],
                info["dataset_root"])
    logger.info("lists: %s, %s; class names: %s",
                info["train_path"], info["val_path"], info["labels_path"])
    return info


if __name__ == "__main__":
    cli.run(main, get_args_parser().parse_args())
