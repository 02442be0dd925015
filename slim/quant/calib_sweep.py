"""PTQ calibration-size sweep: INT8 mIoU against the number of calibration images.

    python slim/quant/calib_sweep.py --config configs/bisenetv2/bisenetv2_synthetic_64x64.yml \
        --model_path output/fp32/best_model/model.pdparams --save_dir output/calib_sweep \
        --fractions 0.01 0.05 0.2 1.0 --seeds 0 1 2 --algo hist

Runs slim/quant/ptq.py once per fraction of the calibration images (train_dataset
or quant_config.calibration_list) and seed, calibrating on all images of the
seeded subset, and evaluates each INT8 model with Paddle Inference on the
validation set beside the FP32 export. Writes save_dir/sweep.md (table),
sweep.json and sweep.png (mIoU against calibration images); each PTQ model stays
in save_dir/ptq_f<fraction>_s<seed>. Re-running the command on an unfinished sweep
(interrupted) resumes it, reusing finished points; a finished sweep is replaced only
with --overwrite (points with the same settings are reused); any other --save_dir
content is refused.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from segqat import cli  # noqa: E402


def get_args_parser():
    parser = argparse.ArgumentParser(description="PTQ mIoU against calibration size (PaddleSeg flags)")
    cli.add_config_args(parser, model_path_required=True,
                        model_path_help=cli.FP32_WEIGHTS_HELP)
    parser.add_argument("--save_dir", default="./output_quant/calib_sweep", help="where results go")
    cli.add_overwrite(parser, "finished sweep")
    g = parser.add_argument_group("sweep")
    g.add_argument("--fractions", type=cli.fraction, nargs="+", default=[0.01, 0.05, 0.2, 1.0],
                   metavar="FRACTION", help="fractions (0, 1] of the calibration images "
                   "(default: 0.01 0.05 0.2 1.0)")
    g.add_argument("--seeds", type=cli.seed, nargs="+", default=[0],
                   help="one PTQ run per seed and fraction (different image subsets)")
    g.add_argument("--algo", choices=cli.PTQ_ALGOS, default="hist", help="activation scale algorithm")
    g.add_argument("--batch_size", type=cli.positive_int, default=4, help="calibration batch size")
    cli.add_cpu_threads(g)
    return parser


def main(args):
    from segqat import outputs, sweep
    from segqat.config import load_config
    cli.setup(args)
    from segqat.ptq import check_model_path
    check_model_path(args.model_path)
    with outputs.claim(args.save_dir, "sweep", overwrite=args.overwrite,
                       inputs=[args.model_path, args.config]) as target:
        cli.add_log_file(target.file("sweep.log"))
        cfg = load_config(args.config, opts=args.opts)
        opts = sweep.SweepOptions(fractions=args.fractions, seeds=args.seeds, algo=args.algo,
                                  batch_size=args.batch_size, cpu_threads=args.cpu_threads or 1)
        return sweep.run_sweep(cfg, args.model_path, args.save_dir, opts)


if __name__ == "__main__":
    cli.run(main, get_args_parser().parse_args())
