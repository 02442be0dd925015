"""Export FP32 weights to a static inference model plus deploy.yaml (PaddleSeg schema).

    python tools/export.py --config configs/bisenetv2/bisenetv2_synthetic_64x64.yml \
        --model_path output/fp32/best_model/model.pdparams --save_dir output/fp32_infer

--output_op argmax (default): int32 labels [N, H, W]; softmax: float32
probabilities [N, C, H, W]; none: float32 logits [N, C, H, W].
PaddleSeg's older flags still work: --without_argmax gives logits,
--without_argmax --with_softmax gives probabilities, and --with_softmax alone
still gives labels (a softmax before argmax changes nothing).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from segqat import cli  # noqa: E402


def get_args_parser(model_path_help="FP32 weights (.pdparams)"):
    parser = argparse.ArgumentParser(description="Export an inference model (PaddleSeg flags)")
    cli.add_config_args(parser, model_path_required=True, model_path_help=model_path_help)
    parser.add_argument("--save_dir", default="./output/inference_model",
                        help="inference directory to write")
    cli.add_overwrite(parser, "export")
    parser.add_argument("--input_shape", type=int, nargs=4, default=None, metavar=("N", "C", "H", "W"),
                        help="input shape, -1 for any size (default: the config's export.input_shape, "
                             "else -1 C -1 -1 with C the model's image channels, 3 unless the config "
                             "says otherwise)")
    parser.add_argument("--output_op", choices=["argmax", "softmax", "none"], default=None,
                        help="output op: argmax gives int32 labels [N, H, W], softmax float32 "
                             "probabilities [N, C, H, W], none float32 logits (default: argmax)")
    parser.add_argument("--with_softmax", action="store_true",
                        help="PaddleSeg's older flag: with --without_argmax the output is "
                             "probabilities (--output_op softmax); alone it changes nothing (labels)")
    parser.add_argument("--without_argmax", action="store_true",
                        help="PaddleSeg's older flag: the output is logits (--output_op none), or "
                             "probabilities with --with_softmax")
    cli.add_cpu_threads(parser)
    return parser


def resolve_output_op(parser, args):
    from segqat.export import output_op_from_legacy
    legacy = output_op_from_legacy(args.with_softmax, args.without_argmax)
    if args.output_op is None:
        args.output_op = legacy
    elif (args.with_softmax or args.without_argmax) and legacy != args.output_op:
        parser.error(f"--output_op {args.output_op} conflicts with --with_softmax/--without_argmax "
                     f"(which mean output_op {legacy}); give one or the other")


def main(args, qat=False):
    from segqat import workflow
    resolve_output_op(get_args_parser(), args)
    cli.setup(args)
    return workflow.run_export(args, qat=qat)


if __name__ == "__main__":
    cli.run(main, get_args_parser().parse_args())
