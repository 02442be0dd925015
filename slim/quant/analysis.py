"""Per-layer quantization sensitivity: which layers lose accuracy in INT8.

    python slim/quant/analysis.py --config configs/bisenetv2/bisenetv2_synthetic_64x64.yml \
        --model_path output/fp32/best_model/model.pdparams --save_dir output/analysis \
        --mode both --num_images 16 --skip_top 3

From FP32 weights, with fake quantization calibrated on training images:
``--mode single`` quantizes one layer at a time (mIoU change vs FP32),
``--mode leave_one_out`` quantizes all layers but one (mIoU regained vs all
quantized), ``both`` does both. Runs on --num_images validation images chosen
by --seed (0: all). The log gives an ETA; the cost is one evaluation of the
subset per layer and mode (``--layers 'backbone.*'`` limits the layers).

Writes save_dir/sensitivity.md (ranked table), sensitivity.json and
sensitivity.png; with --skip_top K or --skip_threshold POINTS also
skip_layers.yml (include it with _base_) and config_with_skips.yml (use it as
--config for qat_train.py or ptq.py).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from segqat import cli  # noqa: E402

MODES = ["single", "leave_one_out", "both"]  # segqat.analysis.MODES (not imported: keeps --help light)


def get_args_parser():
    parser = argparse.ArgumentParser(description="Per-layer quantization sensitivity (PaddleSeg flags)")
    cli.add_config_args(parser, model_path_required=True,
                        model_path_help=cli.FP32_WEIGHTS_HELP)
    parser.add_argument("--save_dir", default="./output_quant/analysis", help="where the report goes")
    cli.add_overwrite(parser, "analysis")
    g = parser.add_argument_group("analysis")
    g.add_argument("--mode", choices=MODES, default="single",
                   help="single: one layer quantized at a time; leave_one_out: all but one; both")
    g.add_argument("--num_images", type=cli.nonneg_int, default=16,
                   help="validation images to evaluate on, chosen by --seed (0: all; default 16)")
    g.add_argument("--seed", type=cli.seed, default=0, help="seed of the image selection")
    g.add_argument("--layers", nargs="+", default=[], metavar="PATTERN",
                   help="analyse only layers matching these patterns, e.g. 'backbone.*'")
    g.add_argument("--batch_size", type=cli.positive_int, default=4, help="calibration batch size")
    g.add_argument("--batch_nums", type=cli.positive_int, default=8, help="calibration batches")
    g.add_argument("--skip_top", type=cli.nonneg_int, default=0, metavar="K",
                   help="write a skip list of the K most sensitive layers")
    g.add_argument("--skip_threshold", type=cli.nonneg_float, default=None, metavar="POINTS",
                   help="write a skip list of the layers that cost more than POINTS mIoU points")
    cli.add_cpu_threads(g)
    return parser


def main(args):
    from segqat import analysis
    from segqat.config import load_config
    cli.setup(args)
    from segqat.ptq import check_model_path
    check_model_path(args.model_path)
    from segqat import outputs
    with outputs.claim(args.save_dir, "analysis", overwrite=args.overwrite,
                       inputs=[args.model_path, args.config]):
        cfg = load_config(args.config, opts=args.opts)
        opts = analysis.AnalysisOptions(
            mode=args.mode, num_images=args.num_images, seed=args.seed, batch_size=args.batch_size,
            batch_nums=args.batch_nums, layers=args.layers, skip_top=args.skip_top,
            skip_threshold=args.skip_threshold)
        return analysis.run_analysis(cfg, args.model_path, args.save_dir, opts)


if __name__ == "__main__":
    cli.run(main, get_args_parser().parse_args())
