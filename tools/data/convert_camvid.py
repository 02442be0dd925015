"""Convert the read-only SegNet-layout CamVid folder into a PaddleSeg data set.

    python tools/data/convert_camvid.py --src ../shared/data/camvid --save_dir data/camvid

Writes trainannot/ and valannot/ label PNGs with void (11) remapped to 255,
and train.txt / val.txt listing the source images by absolute path (they are
not copied) next to the new labels, plus labels.txt (11 class names).
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
    parser.add_argument("--src", default="../shared/data/camvid",
                        help="CamVid folder with train/, trainannot/, val/, valannot/, "
                             "train.txt, val.txt (read only)")
    parser.add_argument("--save_dir", default="data/camvid", help="output folder")
    cli.add_overwrite(parser, "data set")
    return parser


def main(args):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(levelname)s] %(message)s")
    info = datagen.convert_camvid(args.src, args.save_dir, overwrite=args.overwrite)
    logger.info("wrote %d train / %d val labels (%d classes, ignore_index %d) to %s",
                info["num_train"], info["num_val"], info["num_classes"],
                info["ignore_index"], info["dataset_root"])
    logger.info("lists: %s, %s; class names: %s",
                info["train_path"], info["val_path"], info["labels_path"])
    return info


if __name__ == "__main__":
    cli.run(main, get_args_parser().parse_args())
