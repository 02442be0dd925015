"""Paddle Lite (x86) against Paddle Inference on a config's validation images: labels, mIoU.

    python benchmarks/lite/agreement.py --config configs/bisenetv2/bisenetv2_camvid_240x180.yml \
        --fp32 RUN/fp32_infer --int8 RUN/qat_infer RUN/ptq_infer --names QAT PTQ \
        --qat_model_path RUN/qat/best_model/model.pdparams --save_dir output/lite_agreement

Every export runs on Paddle Inference (oneDNN) and on Paddle Lite (``--runtime lite``, converted
with opt at load) over the validation set as deploy.yaml preprocesses it. Reported per export:
mIoU on each runtime, Lite's label agreement with Paddle Inference on the same export, each
INT8 row's agreement with the FP32 export on its runtime, and (``--qat_model_path``) the first
INT8 export's agreement with its fake-quantized model (dygraph). No latency: time the same
exports with ``deploy/python/benchmark.py --runtimes paddle lite`` on an idle machine.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from segqat import cli  # noqa: E402


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="the model's training config (its val_dataset)")
    p.add_argument("--fp32", required=True, help="FP32 export")
    p.add_argument("--int8", nargs="+", default=[], help="INT8 exports (QAT, PTQ)")
    p.add_argument("--names", nargs="+", default=None, help="names of the --int8 exports")
    p.add_argument("--qat_model_path", default=None, help="QAT weights of the first --int8 export")
    p.add_argument("--num_images", type=cli.positive_int, default=None, help="default: all")
    p.add_argument("--cpu_threads", type=cli.threads, default=1)
    p.add_argument("--save_dir", required=True)
    cli.add_overwrite(p, "report")
    return p


def main(args):
    from segqat import builder, deploy, outputs, quant
    from segqat.config import load_config
    from segqat.evaluate import evaluate
    cli.setup(args)
    names = args.names or [f"INT8_{i}" for i in range(len(args.int8))]
    if len(names) != len(args.int8):
        raise ValueError(f"--names gives {len(names)} names for {len(args.int8)} --int8 exports")
    models = {"FP32": args.fp32, **dict(zip(names, args.int8))}
    with outputs.claim(args.save_dir, "benchmark", overwrite=args.overwrite,
                       inputs=[args.config, *models.values()]):
        cfg = load_config(args.config)
        val = builder.build_dataset(cfg, "val")
        idx = list(range(len(val) if args.num_images is None else min(args.num_images, len(val))))
        refs, res = {}, {"config": args.config, "num_images": len(idx), "cpu_threads": args.cpu_threads,
                         "latency": "not measured (deploy/python/benchmark.py --runtimes paddle lite)",
                         "models": {}}
        if args.qat_model_path and args.int8:
            fq_model, _ = quant.build_model(cfg, args.qat_model_path, quantized=True, stage="eval")
            fq = evaluate(fq_model, val, builder.test_config(cfg), indices=idx, keep=True,
                          label="Evaluate QAT model (fake quantization)")
            refs["fake_quant"] = fq.pop("predictions")
            res["fake_quant_mIoU"] = fq["mIoU"]
        for name, path in models.items():
            row = {"dir": path}
            for rt in ("paddle", "lite"):
                # Lite's check on 2 synthetic images only reports here: this script measures
                # the agreement on the whole validation set
                options = {"min_agreement": 0} if rt == "lite" else {}
                pred = deploy.create_predictor(path, runtime=rt, threads=args.cpu_threads, **options)
                try:
                    against = {}
                    if rt == "lite":
                        against["paddle"] = refs[(name, "paddle")]
                    if name != "FP32":
                        against["fp32"] = refs[("FP32", rt)]
                        if "fake_quant" in refs and name == names[0]:
                            against["fake_quant"] = refs["fake_quant"]
                    m = evaluate(pred, val, indices=idx, keep=True, references=against,
                                 label=f"Evaluate {name} ({rt} {pred.precision.upper()})")
                    refs[(name, rt)] = m.pop("predictions")
                    row[rt] = {"precision": pred.precision, "mIoU": m["mIoU"], "Acc": m["Acc"],
                               "int8_kernels": dict(pred.int8_ops()),
                               **{f"agreement_with_{k}": a["agreement"]
                                  for k, a in m.get("agreement", {}).items()}}
                finally:
                    pred.close()
            res["models"][name] = row

        def write(d):
            with open(os.path.join(d, "results.json"), "w") as f:
                json.dump(res, f, indent=2)
            with open(os.path.join(d, "results.md"), "w") as f:
                f.write(markdown(res))
        outputs.atomic_dir_write(args.save_dir, write, kind="benchmark")
    print(markdown(res))
    return res


def markdown(res):
    pct = (lambda v: "-" if v is None else f"{v * 100:.2f}%")
    lines = [f"{res['config']}, {res['num_images']} validation images; latency not measured", "",
             "| export | Paddle mIoU | Lite mIoU | Lite vs Paddle labels | INT8 vs FP32 (Paddle / Lite) "
             "| vs fake quant (Paddle / Lite) | Lite INT8 kernels |",
             "|---|---|---|---|---|---|---|"]
    for name, r in res["models"].items():
        p, q = r["paddle"], r["lite"]
        lines.append(
            f"| {name} | {p['mIoU']:.4f} | {q['mIoU']:.4f} | {pct(q.get('agreement_with_paddle'))} | "
            f"{pct(p.get('agreement_with_fp32'))} / {pct(q.get('agreement_with_fp32'))} | "
            f"{pct(p.get('agreement_with_fake_quant'))} / {pct(q.get('agreement_with_fake_quant'))} | "
            f"{sum(q['int8_kernels'].values()) or '-'} |")
    if "fake_quant_mIoU" in res:
        lines += ["", f"fake-quantized QAT model mIoU {res['fake_quant_mIoU']:.4f}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    cli.run(main, get_args_parser().parse_args())
