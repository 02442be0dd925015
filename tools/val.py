"""Evaluate FP32 weights on the config's validation set.

    python tools/val.py --config configs/bisenetv2/bisenetv2_synthetic_64x64.yml \
        --model_path output/fp32/best_model/model.pdparams --save_metrics output/fp32/val.json

Sliding window: --is_slide --crop_size 256,256 --stride 128,128.
Multi-scale / flip: --aug_eval --scales 0.75 1.0 1.25 --flip_horizontal.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from segqat import cli  # noqa: E402


def get_args_parser(model_path_help="FP32 weights (.pdparams)"):
    parser = argparse.ArgumentParser(description="Evaluate a segmentation model (PaddleSeg flags)")
    cli.add_config_args(parser, model_path_required=True, model_path_help=model_path_help)
    cli.add_eval_args(parser)
    return parser


def main(args, qat=False):
    from segqat import workflow
    cli.check_eval_args(get_args_parser(), args)
    cli.setup(args)
    return workflow.run_eval(args, qat=qat)


if __name__ == "__main__":
    cli.run(main, get_args_parser().parse_args())
