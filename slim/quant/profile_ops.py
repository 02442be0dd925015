"""Where the time goes, FP32 vs INT8, per op type and per layer, on each runtime.

    python slim/quant/profile_ops.py --config configs/zoo/bisenetv2.yml \
        --input_shape 1 3 512 512 --runtimes paddle openvino onnxruntime \
        --save_dir output/profile_bisenetv2_512

With --config, the model is built (random weights, or --model_path FP32 weights),
exported FP32 and, after calibrating fake quantization on random inputs, INT8, as
slim/quant/bench_latency.py does. With --fp32 DIR --int8 DIR, two existing exports are
profiled instead. For each runtime the report (profile.md, profile.json in --save_dir)
lists per op type the FP32 and INT8 time and how many ops ran in INT8, FP32 or only
converted data (quantize, dequantize, reorder), the time per kernel, and the slowest
layers of the INT8 model. Run it on an otherwise idle machine.
"""
import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from segqat import cli  # noqa: E402


def get_args_parser():
    p = argparse.ArgumentParser(description="per-op FP32 vs INT8 profile on CPU runtimes")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="model config: build, export FP32 and calibrated INT8 (random inputs)")
    src.add_argument("--fp32", help="an FP32 export to profile (with --int8)")
    p.add_argument("--int8", help="the INT8 export to compare with --fp32")
    p.add_argument("--model_path", default=None, help="FP32 weights for --config (default: random)")
    p.add_argument("--input_shape", type=int, nargs=4, default=[1, 3, 512, 512], metavar=("N", "C", "H", "W"),
                   help="input shape of the profiled runs (default 1 3 512 512)")
    cli.add_cpu_threads(p, default=2)
    cli.add_runtimes(p)
    cli.add_timing(p, warmup=5)
    p.add_argument("--runs", type=cli.positive_int, default=20, help="profiled runs per model")
    p.add_argument("--top", type=cli.positive_int, default=12, help="slowest INT8 layers listed")
    p.add_argument("--save_dir", required=True, help="folder for profile.md and profile.json")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier profile in --save_dir")
    cli.add_opts(p)
    return p


def main(args):
    import numpy as np
    import paddle
    from segqat import bench, export, op_profile, outputs, quant
    from segqat.config import load_config
    if bool(args.fp32) != bool(args.int8):
        raise ValueError("--fp32 and --int8 go together (or give --config)")
    outputs.check_save_dir(args.save_dir, "benchmark", overwrite=args.overwrite,
                           inputs=[args.model_path, args.fp32, args.int8])
    cli.setup(args)
    results = {}
    with tempfile.TemporaryDirectory(prefix="segqat_prof_") as tmp:
        if args.config:
            cfg = load_config(args.config, opts=args.opts)
            name = os.path.splitext(os.path.basename(args.config))[0]
            model, _ = quant.build_model(cfg, args.model_path)
            dirs = {"fp32": export.export_model(cfg, model, os.path.join(tmp, "fp32"), args.input_shape),
                    "int8": quant.export_calibrated_int8(cfg, os.path.join(tmp, "int8"), args.input_shape,
                                                         np.random.RandomState(0), args.model_path)}
        else:
            name = os.path.basename(os.path.normpath(args.int8))
            dirs = {"fp32": args.fp32, "int8": args.int8}
        for rt in args.runtimes:
            results[rt] = {k: op_profile.profile_runtime(d, rt, k, args.input_shape, args.cpu_threads,
                                                         args.warmup, args.runs)
                           for k, d in dirs.items()}
            f, q = results[rt]["fp32"], results[rt]["int8"]
            print(f"{name} [{rt}]: FP32 {f['wall_ms']:.1f} ms, INT8 {q['wall_ms']:.1f} ms "
                  f"(INT8/FP32 {q['wall_ms'] / f['wall_ms']:.2f}, profiler on); INT8 time by class: "
                  + ", ".join(f"{k} {v:.1f} ms" for k, v in op_profile.kind_totals(q).items()), flush=True)
    machine = dict(bench.machine(), paddle=paddle.__version__)
    text = op_profile.markdown(name, args.input_shape, results, machine, args.cpu_threads, args.runs, args.top)
    record = {"machine": machine, "config": args.config,
              "input_shape": args.input_shape, "cpu_threads": args.cpu_threads, "runs": args.runs,
              "command": "python slim/quant/profile_ops.py " + " ".join(sys.argv[1:]), "runtimes": results}

    def write(d):
        with open(os.path.join(d, "profile.md"), "w") as fh:
            fh.write(text)
        with open(os.path.join(d, "profile.json"), "w") as fh:
            json.dump(record, fh, indent=1)

    outputs.atomic_dir_write(args.save_dir, write, kind="benchmark")
    print(f"Wrote {os.path.join(args.save_dir, 'profile.md')}")
    return record


if __name__ == "__main__":
    cli.run(main, get_args_parser().parse_args())
