"""FP32 vs INT8 on the same validation images: mIoU, agreement, latency, size, plots.

    python deploy/python/benchmark.py --config configs/bisenetv2/bisenetv2_synthetic_64x64.yml \
        --fp32 output/fp32_infer --int8 output/qat_infer \
        --qat_model_path output/qat/best_model/model.pdparams --save_dir output/bench

FP32 vs PTQ vs QAT in one table: --int8 output/qat_infer output/ptq_infer --names FP32 QAT PTQ
Across runtimes (every model on each; ratios within a runtime): --runtimes paddle openvino

Writes save_dir/results.json, results.md (Model | Dtype | mIoU | ... | Time | Ratio | Size,
then IoU and Dice per class, named from the dataset's labels.txt) and latency.png,
class_iou.png, confusion.png (row-normalised, values in the cells), samples.png. Warns when INT8 is
not faster than FP32, or when the deployed INT8 mIoU is more than 0.5 points
from the fake-quant mIoU. Run it on an otherwise idle machine.
The report (with benchmark.log) appears in --save_dir when complete; an earlier
report there is replaced only with --overwrite.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from segqat import cli  # noqa: E402


def get_args_parser():
    p = argparse.ArgumentParser(description="Benchmark FP32 vs INT8 inference models")
    p.add_argument("--config", required=True, help="training config (its val_dataset is used)")
    p.add_argument("--fp32", required=True, help="FP32 inference directory (tools/export.py)")
    p.add_argument("--int8", required=True, nargs="+", help="INT8 inference directories (qat_export)")
    p.add_argument("--names", nargs="+", default=None, help="row names for --fp32 and each --int8")
    p.add_argument("--qat_model_path", default=None,
                   help="QAT weights of the first --int8 model: also evaluate its fake-quant model")
    p.add_argument("--save_dir", default="./output/benchmark",
                   help="folder for results.md, results.json, the plots and benchmark.log")
    cli.add_overwrite(p, "benchmark")
    cli.add_runtimes(p)
    cli.add_cpu_threads(p, default=2)
    cli.add_timing(p, warmup=5, repeats=20)
    p.add_argument("--num_images", type=cli.positive_int, default=None, help="first N val images only")
    cli.add_opts(p)
    return p


def main(args):
    from segqat import report
    from segqat.config import load_config
    if len(set(args.runtimes)) != len(args.runtimes):
        raise ValueError(f"--runtimes names a runtime twice: {' '.join(args.runtimes)}")
    dirs = [args.fp32] + args.int8
    names = args.names or ["FP32"] + (["INT8"] if len(args.int8) == 1 else
                                      [f"INT8 {os.path.basename(os.path.normpath(d))}" for d in args.int8])
    if len(names) != len(dirs):
        raise ValueError(f"--names has {len(names)} entries for {len(dirs)} models")
    for flag, d in [("--fp32", args.fp32)] + [("--int8", d) for d in args.int8]:
        if not os.path.isfile(os.path.join(d, "deploy.yaml")):
            raise FileNotFoundError(f"{flag} {d}: no inference directory there (no deploy.yaml); "
                                    "give a folder written by tools/export.py, qat_export.py or ptq.py")
    from segqat import outputs
    cli.setup(args)
    with outputs.claim(args.save_dir, "benchmark", overwrite=args.overwrite,
                       inputs=[args.config, *dirs, args.qat_model_path]) as target:
        cli.add_log_file(target.file("benchmark.log"))  # swapped in with the results
        cfg = load_config(args.config, opts=args.opts)
        res = report.run_benchmark(cfg, dict(zip(names, dirs)), args.save_dir, args.qat_model_path,
                                   args.cpu_threads, args.warmup, args.repeats, args.num_images,
                                   runtimes=args.runtimes)
    print(report.markdown_table(res))
    return res


if __name__ == "__main__":
    cli.run(main, get_args_parser().parse_args())
