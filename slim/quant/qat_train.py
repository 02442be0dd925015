"""Quantization-aware training from FP32 weights (PaddleSeg's slim/quant flags).

    python slim/quant/qat_train.py --config configs/bisenetv2/bisenetv2_synthetic_64x64.yml \
        --model_path output/fp32/best_model/model.pdparams --learning_rate 0.005 \
        --do_eval --use_vdl --save_dir output/qat

The FP32 weights are loaded, then fake-quant layers are inserted (settings
from the config's quant_config), then the FP32 training loop runs unchanged.
QAT usually runs at about a tenth of the FP32 learning rate.

With --do_eval the quantized FP32 weights are evaluated before the first step
("[EVAL] before QAT fine-tuning (iter 0): mIoU ...", VisualDL step 0,
"start_metrics" in state.json), with activation scales calibrated for that
evaluation only; the last line compares it with the best QAT checkpoint.
"""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from segqat import cli  # noqa: E402
from tools import train as fp32_train  # noqa: E402


def get_args_parser():
    parser = fp32_train.get_args_parser(model_path_required=True,
                                        model_path_help="FP32 weights to start from (required)")
    parser.description = "Quantization-aware training (PaddleSeg flags)"
    # PaddleSeg's docs call it --save_interval_iters.
    parser.add_argument("--save_interval_iters", dest="save_interval", type=cli.positive_int,
                        help="alias of --save_interval")
    parser.set_defaults(save_dir="./output_quant")
    return parser


def main(args):
    from segqat import workflow
    with cli.training_dir(args):
        cli.setup(args, args.save_dir)
        return workflow.run_training(args, qat=True)


if __name__ == "__main__":
    cli.run(main, get_args_parser().parse_args())
