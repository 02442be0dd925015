"""Post-training quantization: FP32 weights -> INT8 inference model, no training.

    python slim/quant/ptq.py --config configs/bisenetv2/bisenetv2_synthetic_64x64.yml \
        --model_path output/fp32/best_model/model.pdparams --save_dir output/ptq_infer \
        --algo hist --batch_size 4 --batch_nums 10

Writes the same inference directory as slim/quant/qat_export.py (old-IR
model.pdmodel, int8 weights with quantize/dequantize_linear ops, deploy.yaml
with precision: int8) plus ptq_info.json, calibrated on the config's
train_dataset images with the deployment (val) preprocessing;
--quantization_split F keeps a fraction F of them chosen by --seed.
--random_calibration (automatic without a train_dataset) calibrates on random
images: the resulting accuracy is meaningless (footprint / latency only).
With a val_dataset the INT8 model's mIoU is reported.
Run it with deploy/python/infer.py --config output/ptq_infer/deploy.yaml (the precision comes from it).
"""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from segqat import cli  # noqa: E402
from tools import export as fp32_export  # noqa: E402

ALGOS = cli.PTQ_ALGOS


def get_args_parser():
    parser = fp32_export.get_args_parser(
        model_path_help=cli.FP32_WEIGHTS_HELP)
    parser.description = "Post-training quantization to an INT8 inference model (PaddleSeg flags)"
    parser.set_defaults(save_dir="./output_quant/ptq_inference_model")
    g = parser.add_argument_group("post-training quantization")
    g.add_argument("--batch_size", type=cli.positive_int, default=4, help="calibration batch size")
    g.add_argument("--batch_nums", type=cli.positive_int, default=10,
                   help="calibration batches (batch_nums x batch_size images at most)")
    g.add_argument("--algo", choices=ALGOS, default="hist",
                   help="activation scale algorithm (default: hist)")
    g.add_argument("--quantization_split", type=cli.fraction, default=1.0, metavar="FRACTION",
                   help="calibrate on a random fraction (0, 1] of the training images, chosen by --seed")
    g.add_argument("--seed", type=cli.seed, default=0, help="seed of the calibration image selection")
    g.add_argument("--random_calibration", action="store_true",
                   help="calibrate on random images (accuracy meaningless: footprint/latency only)")
    return parser


def main(args):
    from segqat import export, outputs, ptq
    from segqat.config import load_config
    fp32_export.resolve_output_op(get_args_parser(), args)
    cli.setup(args)
    ptq.check_model_path(args.model_path)
    # checked and locked now, checked again right before the swap (calibration takes a while)
    with outputs.claim(args.save_dir, "export", overwrite=args.overwrite,
                       inputs=[args.model_path, args.config]):
        cfg = load_config(args.config, opts=args.opts)
        export.check_input_shape(cfg, args.input_shape)
        opts = ptq.PTQOptions(
            algo=args.algo, batch_size=args.batch_size, batch_nums=args.batch_nums,
            split=args.quantization_split, seed=args.seed, random_calibration=args.random_calibration,
            output_op=args.output_op, input_shape=args.input_shape, cpu_threads=args.cpu_threads or 1)
        return ptq.run_ptq(cfg, args.model_path, args.save_dir, opts)


if __name__ == "__main__":
    cli.run(main, get_args_parser().parse_args())
