"""Latency of a config's model, FP32 vs INT8, on CPU runtimes (default Paddle Inference, oneDNN).

    python slim/quant/bench_latency.py \
        --config configs/bisenetv2/bisenetv2_synthetic_64x64.yml \
        --config configs/pp_liteseg/pp_liteseg_stdc1_synthetic_64x64.yml \
        --input_shape 1 3 512 512 --cpu_threads 2 --repeats 30 --save_json output/latency.json

For each config: build the model (random weights, or --model_path FP32
weights for a single config), export FP32; insert fake quantization,
calibrate its scales on a few random batches, export INT8; then time both
predictors interleaved on the same input; with --runtimes paddle openvino each
runtime's FP32 and INT8 predictors are interleaved with each other, the runtimes
timed one after another (a runtime's spinning worker threads slow whatever runs
next), and INT8/FP32 is reported within each runtime and best INT8 over best
FP32 across them.
Latency does not depend on the
weight values; accuracy is measured elsewhere (qat_val, benchmark).
Run it on an otherwise idle machine.
"""
import argparse
import contextlib
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from segqat import cli  # noqa: E402


def get_args_parser():
    p = argparse.ArgumentParser(description="FP32 vs INT8 latency on CPU")
    p.add_argument("--config", action="append", required=True, help="model config (repeatable)")
    p.add_argument("--model_path", default=None, help="FP32 weights (only with one --config)")
    p.add_argument("--input_shape", type=int, nargs=4, default=[1, 3, 512, 512], metavar=("N", "C", "H", "W"),
                   help="input shape the models are exported and timed at (default 1 3 512 512)")
    cli.add_cpu_threads(p, default=2)
    cli.add_runtimes(p)
    cli.add_timing(p, warmup=10, repeats=30)
    p.add_argument("--save_json", default=None, help="write the results here")
    cli.add_overwrite(p, "results file", flag="--save_json")
    cli.add_opts(p)
    return p



def main(args):
    if args.model_path and len(args.config) > 1:
        raise ValueError("--model_path goes with a single --config")
    cli.setup(args)
    from segqat import outputs
    target = (outputs.claim(args.save_json, "latency", overwrite=args.overwrite,
                            inputs=[*args.config, args.model_path], flag="--save_json")
              if args.save_json else contextlib.nullcontext())
    with target:
        return _run(args)


def _run(args):
    import numpy as np
    import paddle
    from segqat import bench, deploy, export, outputs, quant
    from segqat.config import load_config
    results = {"machine": dict(bench.machine(), paddle=paddle.__version__),
               "input_shape": args.input_shape, "cpu_threads": args.cpu_threads,
               "runtimes": list(args.runtimes),
               "warmup": args.warmup, "repeats": args.repeats, "models": {}}
    rng = np.random.RandomState(0)
    x = rng.rand(*args.input_shape).astype("float32") * 2 - 1
    with tempfile.TemporaryDirectory(prefix="segqat_lat_") as tmp:
        for i, path in enumerate(args.config):
            cfg = load_config(path, opts=args.opts)
            name = os.path.splitext(os.path.basename(path))[0]
            model, _ = quant.build_model(cfg, args.model_path)
            export.export_model(cfg, model, os.path.join(tmp, f"{i}_fp32"), args.input_shape)
            quant.export_calibrated_int8(cfg, os.path.join(tmp, f"{i}_int8"), args.input_shape, rng,
                                         args.model_path)
            preds = {}
            for rt in args.runtimes:
                for k in ("fp32", "int8"):
                    # random weights: the converting runtimes' check against Paddle only reports here
                    options = {"min_agreement": 0} if rt in ("onnxruntime", "lite") else {}
                    preds[f"{rt} {k}"] = deploy.create_predictor(os.path.join(tmp, f"{i}_{k}"), runtime=rt,
                                                                 precision=k, threads=args.cpu_threads,
                                                                 **options)
            t = bench.summarize(bench.interleaved_latency(preds, x, args.warmup, args.repeats,
                                                          group=lambda k: k.split()[0]),
                                args.input_shape[0])
            s = {"params_mb": {k: os.path.getsize(os.path.join(tmp, f"{i}_{k}", "model.pdiparams")) / 2 ** 20
                               for k in ("fp32", "int8")}, "runtimes": {}}
            for rt in args.runtimes:
                f, q = t[f"{rt} fp32"], t[f"{rt} int8"]
                s["runtimes"][rt] = {"fp32": f, "int8": q, "ratio_int8_fp32": q["median_ms"] / f["median_ms"],
                                     "int8_ops": dict(preds[f"{rt} int8"].int8_ops())}
                print(f"{name} [{rt}]: FP32 {f['median_ms']:.1f} ms, INT8 {q['median_ms']:.1f} ms "
                      f"(median of {args.repeats}, interleaved), INT8/FP32 = "
                      f"{s['runtimes'][rt]['ratio_int8_fp32']:.3f}", flush=True)
            first = s["runtimes"][args.runtimes[0]]  # the keys of single-runtime results
            s.update(fp32=first["fp32"], int8=first["int8"], ratio_int8_fp32=first["ratio_int8_fp32"],
                     int8_ops=first["int8_ops"])
            best = {k: min(args.runtimes, key=lambda rt: s["runtimes"][rt][k]["median_ms"])
                    for k in ("fp32", "int8")}
            s["best"] = {"fp32_runtime": best["fp32"], "int8_runtime": best["int8"],
                         "ratio_int8_fp32": s["runtimes"][best["int8"]]["int8"]["median_ms"]
                         / s["runtimes"][best["fp32"]]["fp32"]["median_ms"]}
            for p in preds.values():
                p.close()
            print(f"{name}: params {s['params_mb']['fp32']:.2f} MB -> {s['params_mb']['int8']:.2f} MB; "
                  f"best INT8 ({best['int8']}) / best FP32 ({best['fp32']}) = "
                  f"{s['best']['ratio_int8_fp32']:.3f}", flush=True)
            results["models"][name] = s
    if args.save_json:
        def write(path):
            with open(path, "w") as f:
                json.dump(results, f, indent=2)
        outputs.atomic_file_write(args.save_json, write, kind="latency")
    return results


if __name__ == "__main__":
    cli.run(main, get_args_parser().parse_args())
