"""Export QAT weights to an INT8 inference model (int8 weights, quantize/dequantize ops).

    python slim/quant/qat_export.py --config configs/bisenetv2/bisenetv2_synthetic_64x64.yml \
        --model_path output/qat/best_model/model.pdparams --save_dir output/qat_infer

Output op as tools/export.py: argmax labels (int32) by default; --output_op
softmax|none; PaddleSeg's --without_argmax gives logits, --without_argmax
--with_softmax probabilities, --with_softmax alone still labels.
Run it with deploy/python/infer.py --config output/qat_infer/deploy.yaml (the precision comes from it).
"""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from segqat import cli  # noqa: E402
from tools import export as fp32_export  # noqa: E402


def get_args_parser():
    parser = fp32_export.get_args_parser(
        model_path_help="QAT weights (qat_train's save_dir/best_model/model.pdparams)")
    parser.description = "Export a QAT model to INT8 (PaddleSeg flags)"
    parser.set_defaults(save_dir="./output_quant/inference_model")
    return parser


def main(args):
    return fp32_export.main(args, qat=True)


if __name__ == "__main__":
    cli.run(main, get_args_parser().parse_args())
