"""Evaluate QAT weights with fake quantization (what the INT8 model should reach).

    python slim/quant/qat_val.py --config configs/bisenetv2/bisenetv2_synthetic_64x64.yml \
        --model_path output/qat/best_model/model.pdparams

Same evaluation flags and output as tools/val.py.
"""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from segqat import cli  # noqa: E402
from tools import val as fp32_val  # noqa: E402


def get_args_parser():
    parser = fp32_val.get_args_parser(
        model_path_help="QAT weights (qat_train's save_dir/best_model/model.pdparams)")
    parser.description = "Evaluate a QAT model (fake quantization, PaddleSeg flags)"
    return parser


def main(args):
    return fp32_val.main(args, qat=True)


if __name__ == "__main__":
    cli.run(main, get_args_parser().parse_args())
