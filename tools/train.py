"""Train an FP32 segmentation model from a PaddleSeg-schema config.

    python tools/train.py --config configs/bisenetv2/bisenetv2_synthetic_64x64.yml \
        --do_eval --use_vdl --save_dir output/fp32

Multi-process (one process per GPU, or gloo on CPU):

    python -m paddle.distributed.launch --gpus 0,1,2,3 tools/train.py --config C.yml --do_eval
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from segqat import cli  # noqa: E402


def get_args_parser(model_path_required=False,
                    model_path_help="optional FP32 weights to start from (fine-tune)"):
    parser = argparse.ArgumentParser(description="FP32 segmentation training (PaddleSeg flags)")
    cli.add_config_args(parser, model_path_required=model_path_required, model_path_help=model_path_help)
    cli.add_train_args(parser)
    return parser


def main(args):
    from segqat import workflow
    with cli.training_dir(args):
        cli.setup(args, args.save_dir)
        return workflow.run_training(args)


if __name__ == "__main__":
    cli.run(main, get_args_parser().parse_args())
