"""What one step measures for one entry, in the step's own subprocess.

The runner starts ``tools/zoo.py --step evaluate|latency --models NAME ...`` for
these steps; that script calls :func:`run_single_step`, which runs
:func:`evaluate_entry` or :func:`measure_latency` in its process and writes the
step's JSON (``evaluate/evaluate.json``, ``latency/latency.json``), which the
runner then reads into ``state.json``. Nothing here imports the runner or the table.
"""
import glob
import logging
import os

from .. import bench
from .common import CROSS_CHECK_RUNTIMES, ZooError, discover, write_json

logger = logging.getLogger(__name__)

LATENCY_SHAPES = ([1, 3, 512, 1024], [1, 3, 512, 512])
# op types of the optimized oneDNN program that are convolutions
CONV_OPS = {"conv2d", "depthwise_conv2d", "fused_conv2d", "conv2d_transpose",
            "fused_conv2d_transpose", "depthwise_conv2d_transpose"}


def run_single_step(args):
    """tools/zoo.py --step evaluate|latency: the in-process part of one entry's step."""
    if not args.models or len(args.models) != 1:
        raise ZooError("--step needs exactly one entry in --models")
    name = args.models[0]
    discover(args.config_dir, [name])
    config = os.path.join(args.config_dir, name + ".yml")
    entry_dir = os.path.join(args.work_dir, name)
    if args.step == "evaluate":
        return evaluate_entry(config, entry_dir, args.cpu_threads, args.num_images)
    if args.step == "latency":
        return measure_latency(entry_dir, args.cpu_threads, args.warmup, args.repeats)
    raise ZooError(f"--step {args.step}: allowed are evaluate, latency")


def evaluate_entry(config, entry_dir, cpu_threads=1, num_images=None):
    """INT8 kernel proof, conv counts, agreement, mIoU and sizes of one entry -> evaluate/evaluate.json."""
    from .. import deploy, report
    from ..deploy.paddle_inference import quantized_weight_ops
    from ..config import load_config
    cfg = load_config(config)
    out = os.path.join(entry_dir, "evaluate")
    os.makedirs(out, exist_ok=True)
    fp32_dir, int8_dir = os.path.join(entry_dir, "fp32_infer"), os.path.join(entry_dir, "int8_infer")
    qat = sorted(glob.glob(os.path.join(entry_dir, "qat", "iter_*", "model.pdparams")),
                 key=lambda p: int(p.split("iter_")[-1].split(os.sep)[0]))
    if not qat:
        raise ZooError(f"{entry_dir}/qat has no iter_N/model.pdparams (run qat_train first)")
    # create_predictor refuses (DeployError) when the optimized program has no INT8 kernel
    pred = deploy.create_predictor(int8_dir, precision="int8", threads=cpu_threads)
    ops = pred.optimized_op_types()
    pred.close()
    convs = {}
    for (t, dt), n in ops.items():
        if t in CONV_OPS:
            convs[f"{t}/{dt or '-'}"] = n
    int8_convs = sum(n for (t, dt), n in ops.items() if t in CONV_OPS and dt == "int8")
    all_convs = sum(convs.values())
    int8_ops = {t: n for (t, dt), n in ops.items() if dt == "int8"}
    # accuracy and agreement through the one benchmark path; its latency (one run at the
    # val image size) is not used: latency is the separate, idle-machine phase
    res = report.run_benchmark(cfg, {"FP32": fp32_dir, "INT8": int8_dir}, os.path.join(out, "benchmark"),
                               qat_model_path=qat[-1], cpu_threads=cpu_threads, warmup=0, repeats=1,
                               num_images=num_images)
    f, i = res["models"]["FP32"], res["models"]["INT8"]
    result = {"num_images": res["num_images"], "input_shape": res["input_shape"],
              "fp32_mIoU": f["mIoU"], "int8_mIoU": i["mIoU"], "fake_quant_mIoU": res["fake_quant"]["mIoU"],
              "agreement_int8_vs_fake_quant": i["agreement_with_fake_quant"],
              "agreement_int8_vs_fp32": i["agreement_with_fp32"],
              "agreement_clear_margin": i.get("agreement_with_fake_quant_clear_margin"),
              "clear_margin_share": i.get("clear_margin_share"),
              "disagreement_at_near_ties": i.get("fake_quant_disagreement_at_near_ties"),
              "near_tie": report.NEAR_TIE,
              "quantized_ops": dict(quantized_weight_ops(int8_dir)),
              "params_mb_fp32": f["params_mb"], "params_mb_int8": i["params_mb"],
              "params_ratio": i["params_mb"] / f["params_mb"], "num_params": f["num_params"],
              "int8_convs": int8_convs, "all_convs": all_convs, "conv_ops": convs, "int8_ops": int8_ops,
              **predicted_classes(res)}
    for rt in CROSS_CHECK_RUNTIMES:
        result[rt] = runtime_agreement(cfg, fp32_dir, int8_dir, os.path.join(out, f"benchmark_{rt}"), qat[-1],
                                       rt, cpu_threads, num_images)
    write_json(os.path.join(out, "evaluate.json"), result)
    logger.info("%s: INT8 convs %d/%d, agreement with fake quant %.2f%%, params %.2f -> %.2f MB", entry_dir,
                int8_convs, all_convs, 100 * result["agreement_int8_vs_fake_quant"], f["params_mb"],
                i["params_mb"])
    return result


def runtime_agreement(cfg, fp32_dir, int8_dir, save_dir, qat_path, runtime, cpu_threads=1, num_images=None):
    """The evaluate comparison on another runtime: its INT8 kernels, mIoU and agreement with
    the fake-quant model, or ``{"error": ...}`` when that runtime cannot run the export (the
    row then says so; the traceback is in the step's log)."""
    from .. import report
    try:
        res = report.run_benchmark(cfg, {"FP32": fp32_dir, "INT8": int8_dir}, save_dir, qat_model_path=qat_path,
                                   cpu_threads=cpu_threads, warmup=0, repeats=1, num_images=num_images,
                                   runtimes=(runtime,))
    except Exception as e:  # recorded in the row; the step itself succeeded on Paddle Inference
        logger.exception("%s: %s cannot run this export", int8_dir, runtime)
        return {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]}
    f, i = res["models"]["FP32"], res["models"]["INT8"]
    return {"fp32_mIoU": f["mIoU"], "int8_mIoU": i["mIoU"], "int8_kernels": i["int8_kernels"],
            "agreement_int8_vs_fake_quant": i["agreement_with_fake_quant"],
            "agreement_clear_margin": i.get("agreement_with_fake_quant_clear_margin"),
            "clear_margin_share": i.get("clear_margin_share"),
            "disagreement_at_near_ties": i.get("fake_quant_disagreement_at_near_ties"),
            "agreement_int8_vs_fp32": i["agreement_with_fp32"]}


def predicted_classes(bench_results):
    """How many classes the deployed FP32 and INT8 models predict anywhere (confusion-matrix
    columns with pixels), and the mIoU of labelling every pixel with the most frequent class:
    a model not clearly above that labels (nearly) every pixel alike, and agrees with anything
    built from it, so its agreement says nothing."""
    out = {}
    for name, key in (("FP32", "predicted_classes_fp32"), ("INT8", "predicted_classes_int8")):
        cm = bench_results["models"][name]["confusion_matrix"]
        out[key] = sum(1 for c in range(len(cm)) if sum(row[c] for row in cm) > 0)
    cm = bench_results["models"]["FP32"]["confusion_matrix"]
    per_label = [sum(row) for row in cm]
    out["majority_class_mIoU"] = max(per_label) / max(sum(per_label), 1) / len(cm)
    out["num_classes"] = len(cm)
    return out


def measure_latency(entry_dir, cpu_threads=2, warmup=3, repeats=10):
    """FP32 vs INT8 latency of one entry's exports, interleaved -> latency/latency.json.

    1x3x512x1024 first; a model that fails at that size is timed at 512x512 and
    the first error is kept."""
    import numpy as np
    from .. import deploy
    out = os.path.join(entry_dir, "latency")
    os.makedirs(out, exist_ok=True)
    load_before = os.getloadavg()[0]
    host = bench.machine()
    preds = {"fp32": deploy.create_predictor(os.path.join(entry_dir, "fp32_infer"), precision="fp32",
                                         threads=cpu_threads),
             "int8": deploy.create_predictor(os.path.join(entry_dir, "int8_infer"), precision="int8",
                                         threads=cpu_threads)}
    result, errors = None, []
    for shape in LATENCY_SHAPES:
        x = np.random.RandomState(0).rand(*shape).astype("float32") * 2 - 1
        try:
            for p in preds.values():
                p.run(x)
        except Exception as e:  # noqa: BLE001 - recorded, then the smaller shape
            first = (str(e).strip().splitlines() or [""])[0][:300]
            errors.append(f"{'x'.join(map(str, shape))}: {type(e).__name__}: {first}")
            continue
        s = bench.summarize(bench.interleaved_latency(preds, x, warmup, repeats))
        result = {"input_shape": shape, "cpu_threads": cpu_threads, "warmup": warmup, "repeats": repeats,
                  "fp32_ms": s["fp32"]["median_ms"], "int8_ms": s["int8"]["median_ms"],
                  "fp32_p90_ms": s["fp32"]["p90_ms"], "int8_p90_ms": s["int8"]["p90_ms"],
                  "ratio": s["int8"]["median_ms"] / s["fp32"]["median_ms"], "errors": errors,
                  "load_average_1min": [load_before, os.getloadavg()[0]], "machine": host}
        break
    for p in preds.values():
        p.close()
    if result is None:
        raise ZooError("no input size worked: " + "; ".join(errors))
    write_json(os.path.join(out, "latency.json"), result)
    logger.info("%s: FP32 %.1f ms, INT8 %.1f ms, INT8/FP32 %.2f at %s", entry_dir, result["fp32_ms"],
                result["int8_ms"], result["ratio"], result["input_shape"])
    return result
