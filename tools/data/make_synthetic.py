"""Generate the deterministic synthetic segmentation data set.

    python tools/data/make_synthetic.py --save_dir data/synthetic --num_train 200 --num_val 40 --size 64 --num_classes 4 --seed 0

The model zoo's easier set (large objects, colours that barely overlap):

    python tools/data/make_synthetic.py --save_dir data/synthetic_zoo --object_size 0.2 0.4 --colour_jitter 30

Writes images/, labels/, train.txt, val.txt and labels.txt under --save_dir
(see segqat.datagen.make_synthetic). The same --seed gives identical files.
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
    parser.add_argument("--save_dir", default="data/synthetic", help="output folder")
    cli.add_overwrite(parser, "data set")
    parser.add_argument("--num_train", type=int, default=200, help="training images (>= 1)")
    parser.add_argument("--num_val", type=int, default=40, help="validation images (>= 1)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (>= 32)")
    parser.add_argument("--num_classes", type=int, default=4,
                        help="classes including background (2..8)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (>= 0)")
    parser.add_argument("--object_size", type=float, nargs=2, default=list(datagen.OBJECT_SIZE),
                        metavar=("MIN", "MAX"),
                        help="object radius range, a fraction of the image side (0 < MIN <= MAX <= 0.5)")
    parser.add_argument("--colour_jitter", type=int, default=datagen.COLOUR_JITTER,
                        help="+- per channel around each class's colour (0..255); 90 makes "
                             "colours overlap between classes")
    return parser


def main(args):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(levelname)s] %(message)s")
    info = datagen.make_synthetic(args.save_dir, num_train=args.num_train,
                                  num_val=args.num_val, size=args.size,
                                  num_classes=args.num_classes, seed=args.seed,
                                  object_size=args.object_size, colour_jitter=args.colour_jitter,
                                  overwrite=args.overwrite)
    logger.info("wrote %d train / %d val images (%dx%d, %d classes) to %s",
                info["num_train"], info["num_val"], args.size, args.size,
                info["num_classes"], info["dataset_root"])
    logger.info("lists: %s, %s; class names: %s",
                info["train_path"], info["val_path"], info["labels_path"])
    return info


if __name__ == "__main__":
    cli.run(main, get_args_parser().parse_args())
