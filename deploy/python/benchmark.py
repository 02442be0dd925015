"""FP32 vs INT8 on the same validation images: mIoU, agreement, latency, size, plots.

    python deploy/python/benchmark.py --config configs/bisenetv2/bisenetv2_synthetic_64x64.yml \
        --fp32 output/fp32_infer --int8 output/qat_infer \
        --qat_model_path output/qat/best_model/model.pdparams --save_dir output/bench

FP32 vs PTQ vs QAT in one table: --int8 output/qat_infer output/ptq_infer --names FP32 QAT PTQ
Across runtimes (every model on each; ratios within a runtime): --runtimes paddle openvino

Writes save_dir/results.json, results.md (Model | Dtype | mIoU | ... | Time | Ratio | Size,
then IoU and Dice per class, named from the dataset's labels.txt) and latency.png,
class_iou.png, confusion.png (row-normalised, values in the cells), confusion_diff.png (INT8 - FP32),
samples.png (the images where INT8 and FP32 differ most, then a spread of the others, with a
difference column; samples_<runtime>.png for further runtimes). results.md names the list
evaluated and every --opts override. Warns when INT8 is
not faster than FP32, or when the deployed INT8 mIoU is more than 0.5 points
from the fake-quant mIoU. Run it on an otherwise idle machine.
--fp32 must be an FP32 export and each --int8 an INT8 one: what each folder holds is read
from its program (quantize/dequantize ops, quantized weights), not taken from its name.
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
    p.add_argument("--num_samples", type=cli.positive_int, default=6,
                   help="images in samples.png: half where INT8 and FP32 differ most, the rest "
                        "spread over the others (default 6)")
    cli.add_opts(p)
    cli.add_allow_external_model(p)
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
    from segqat import deploy
    for flag, d, kind in [("--fp32", args.fp32, "fp32")] + [("--int8", d, "int8") for d in args.int8]:
        if not os.path.isfile(os.path.join(d, "deploy.yaml")):
            raise FileNotFoundError(f"{flag} {d}: no inference directory there (no deploy.yaml); "
                                    "give a folder written by tools/export.py, qat_export.py or ptq.py")
        # what each folder holds, read from its program: an INT8 export given as --fp32 (or
        # the reverse) would fill the report's FP32 row with INT8 results
        deploy.check_export_is(deploy.load_deploy_config(d, args.allow_external_model), kind, flag)
    from segqat import outputs
    cli.setup(args)
    with outputs.claim(args.save_dir, "benchmark", overwrite=args.overwrite,
                       inputs=[args.config, *dirs, args.qat_model_path]) as target:
        cli.add_log_file(target.file("benchmark.log"))  # swapped in with the results
        cfg = load_config(args.config, opts=args.opts)
        res = report.run_benchmark(cfg, dict(zip(names, dirs)), args.save_dir, args.qat_model_path,
                                   args.cpu_threads, args.warmup, args.repeats, args.num_images,
                                   num_samples=args.num_samples, runtimes=args.runtimes,
                                   allow_external_model=args.allow_external_model)
    print(report.markdown_table(res))
    return res


if __name__ == "__main__":
    cli.run(main, get_args_parser().parse_args())
