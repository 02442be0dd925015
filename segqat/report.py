"""FP32 vs INT8 on the same validation images: accuracy, agreement, latency, size, plots.

Used by deploy/python/benchmark.py and tools/pipeline.py. Every deployed model
is evaluated through Paddle Inference (the predictor a user deploys), on the
raw validation images and labels at their original size; the optional
fake-quant model is evaluated in dygraph on the same images.
"""
import json
import logging
import os

import numpy as np

from . import bench, deploy
from .data import to_bgr8
from .metrics import ConfusionMatrix, compute_metrics

logger = logging.getLogger(__name__)


def _progress(iterable, total, desc):
    try:
        from tqdm import tqdm
        return tqdm(iterable, total=total, desc=desc, unit="img", leave=False)
    except ImportError:  # pragma: no cover
        return iterable


def model_size(dep_dir):
    d = deploy.load_deploy_config(dep_dir)
    return {"params_mb": os.path.getsize(d["params_file"]) / 2 ** 20,
            "model_mb": os.path.getsize(d["model_file"]) / 2 ** 20}


def count_params_flops(cfg, hw):
    """Parameter count and multiply-accumulates of Conv2D/Linear layers (FP32 model, one image).

    Counted with forward hooks: paddle.flops() fails under numpy 2.x on paddle 3.3.1.
    """
    import paddle
    from . import builder
    with paddle.utils.unique_name.guard():
        model = builder.build_model(cfg)
    model.eval()
    n_params = int(sum(np.prod(p.shape) for p in model.parameters()))
    macs = [0]

    def conv_hook(layer, inp, out):
        k = int(np.prod(layer.weight.shape[1:]))  # in_channels/groups * kh * kw
        macs[0] += int(np.prod(out.shape[1:])) * k

    def linear_hook(layer, inp, out):
        macs[0] += int(np.prod(out.shape[1:])) * int(layer.weight.shape[0])

    hooks = [l.register_forward_post_hook(conv_hook if isinstance(l, paddle.nn.Conv2D) else linear_hook)
             for l in model.sublayers() if isinstance(l, (paddle.nn.Conv2D, paddle.nn.Linear))]
    with paddle.no_grad():
        model(paddle.zeros([1, 3, int(hw[0]), int(hw[1])]))
    for h in hooks:
        h.remove()
    return n_params, macs[0]


def run_benchmark(cfg, models, save_dir, qat_model_path=None, cpu_threads=2, warmup=5,
                  repeats=20, num_images=None, num_samples=4):
    """``models``: ordered {name: inference dir}; the first is the FP32 reference.

    ``qat_model_path`` (optional) are the QAT weights of the first INT8 model:
    its fake-quant model is evaluated too, and compared with that model.

    Returns the results dict and writes results.json, results.md and plots.
    """
    from . import builder, engine, quant
    os.makedirs(save_dir, exist_ok=True)
    val_ds = builder.build_dataset(cfg, "val")
    n = len(val_ds) if num_images is None else min(num_images, len(val_ds))
    nc = val_ds.num_classes
    names = list(models)
    preds = {}
    for name, d in models.items():
        preds[name] = deploy.create_predictor(d, threads=cpu_threads)
    ref = names[0]

    cms = {name: ConfusionMatrix(nc, val_ds.ignore_index) for name in names}
    agree = {name: [0, 0] for name in names}       # vs FP32: [equal, total]
    agree_fq = {name: [0, 0] for name in names}    # vs fake-quant model
    samples = []
    fq_cm = None
    fq_iter = None
    fq_owner = names[1] if len(names) > 1 else None  # the QAT weights belong to the first INT8 model
    if qat_model_path:
        fq_model, _ = quant.build_model(cfg, qat_model_path, quantized=True, stage="eval")
        fq_cm = ConfusionMatrix(nc, val_ds.ignore_index)
        fq_iter = engine.iter_predictions(fq_model, val_ds, builder.test_config(cfg), indices=range(n))
    for i in _progress(range(n), n, "benchmark"):
        img, lab = val_ds.read(i)
        img = to_bgr8(img)
        outs = {name: p.predict([img])[0] for name, p in preds.items()}
        fq = None
        if fq_iter is not None:
            _, fq, _ = next(fq_iter)
            fq_cm.update(fq, lab)
        for name, o in outs.items():
            cms[name].update(o, lab)
            agree[name][0] += int((o == outs[ref]).sum())
            agree[name][1] += o.size
            if fq is not None and name == fq_owner:
                agree_fq[name][0] += int((o == fq).sum())
                agree_fq[name][1] += o.size
        if len(samples) < num_samples:
            samples.append((img, lab, outs))

    # latency: interleaved on the first image's preprocessed input
    x = preds[ref].preprocess(to_bgr8(val_ds.read(0)[0]))[0][None]
    lat = bench.summarize(bench.interleaved_latency(preds, x, warmup, repeats))
    n_params, flops = count_params_flops(cfg, x.shape[2:])

    results = {"config": cfg.path, "num_images": n, "input_shape": list(x.shape),
               "cpu_threads": cpu_threads, "repeats": repeats, "models": {}}
    for name in names:
        m = compute_metrics(cms[name].mat)
        r = {"dir": os.path.abspath(models[name]), "precision": preds[name].precision,
             **{k: m[k] for k in ("mIoU", "Acc", "Kappa", "Dice", "class_IoU")},
             "confusion_matrix": cms[name].mat.tolist(),
             "agreement_with_fp32": agree[name][0] / max(agree[name][1], 1),
             "latency": lat[name], "ratio_to_fp32": lat[name]["median_ms"] / lat[ref]["median_ms"],
             **model_size(models[name]), "num_params": n_params, "macs": flops}
        if fq_cm is not None and name == fq_owner:
            r["agreement_with_fake_quant"] = agree_fq[name][0] / max(agree_fq[name][1], 1)
        results["models"][name] = r
    if fq_cm is not None:
        fm = compute_metrics(fq_cm.mat)
        results["fake_quant"] = {"model_path": os.path.abspath(qat_model_path),
                                 **{k: fm[k] for k in ("mIoU", "Acc", "Kappa", "Dice", "class_IoU")}}
    results["warnings"] = _warnings(results, ref)
    for w in results["warnings"]:
        logger.warning("!!! %s", w)
    for p in preds.values():
        p.close()

    with open(os.path.join(save_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(save_dir, "results.md"), "w") as f:
        f.write(markdown_table(results))
    plots(results, samples, save_dir, ref)
    logger.info("Benchmark written to %s (results.json, results.md, *.png)", save_dir)
    return results


def _warnings(results, ref):
    out = []
    for name, r in results["models"].items():
        if name == ref or r["precision"] != "int8":
            continue
        if r["ratio_to_fp32"] >= 1.0:
            out.append(f"{name}: INT8 is not faster than FP32 on this machine "
                       f"({r['latency']['median_ms']:.1f} vs "
                       f"{results['models'][ref]['latency']['median_ms']:.1f} ms/img)")
        fq = results.get("fake_quant")
        if fq and "agreement_with_fake_quant" in r and abs(r["mIoU"] - fq["mIoU"]) * 100 > 0.5:
            out.append(f"{name}: deployed INT8 mIoU {r['mIoU'] * 100:.2f} differs from the fake-quant "
                       f"mIoU {fq['mIoU'] * 100:.2f} by more than 0.5 points: the back-end quantizes "
                       "differently than training did")
    return out


def markdown_table(results):
    lines = ["| Model | Dtype | mIoU | Acc | Kappa | Agreement w/ FP32 | Time (ms/img) | p90 (ms) "
             "| Ratio | Size (MB) |", "|---|---|---|---|---|---|---|---|---|---|"]
    fq = results.get("fake_quant")
    for name, r in results["models"].items():
        lines.append(f"| {name} | {r['precision'].upper()} | {r['mIoU'] * 100:.2f} | {r['Acc'] * 100:.2f} "
                     f"| {r['Kappa']:.4f} | {r['agreement_with_fp32'] * 100:.2f}% "
                     f"| {r['latency']['median_ms']:.1f} | {r['latency']['p90_ms']:.1f} "
                     f"| {r['ratio_to_fp32']:.2f} | {r['params_mb']:.2f} |")
    if fq:
        lines.append(f"| fake-quant (QAT, dygraph) | INT8 sim | {fq['mIoU'] * 100:.2f} | {fq['Acc'] * 100:.2f} "
                     f"| {fq['Kappa']:.4f} | | | | | |")
    lines.append("")
    r0 = next(iter(results["models"].values()))
    macs = f", {r0['macs'] / 1e9:.2f} GMACs per image" if r0.get("macs") else ""
    lines.append(f"Model: {r0['num_params'] / 1e6:.2f} M parameters{macs}.")
    lines.append(f"{results['num_images']} validation images, input {results['input_shape']}, "
                 f"{results['cpu_threads']} threads, median of {results['repeats']} interleaved runs.")
    for name, r in results["models"].items():
        if "agreement_with_fake_quant" in r and r["precision"] == "int8":
            lines.append(f"{name}: pixel agreement with its fake-quant model "
                         f"{r['agreement_with_fake_quant'] * 100:.2f}%.")
    for w in results["warnings"]:
        lines.append(f"**Warning:** {w}")
    return "\n".join(lines) + "\n"


def plots(results, samples, save_dir, ref):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(results["models"])
    # latency bars
    fig, ax = plt.subplots(figsize=(5, 3))
    med = [results["models"][n]["latency"]["median_ms"] for n in names]
    p90 = [results["models"][n]["latency"]["p90_ms"] for n in names]
    ax.bar(names, med, color=["#888"] + ["#2a7"] * (len(names) - 1))
    ax.errorbar(names, med, yerr=[[0] * len(names), np.subtract(p90, med)], fmt="none", ecolor="k", capsize=4)
    for i, m in enumerate(med):
        ax.text(i, m, f"{m:.1f} ms\n{m / med[0]:.2f}x", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("ms / image (median, bar to p90)")
    ax.set_title("Latency")
    fig.tight_layout()
    fig.savefig(os.path.join(save_dir, "latency.png"), dpi=100)
    plt.close(fig)
    # per-class IoU
    nc = len(results["models"][ref]["class_IoU"])
    fig, ax = plt.subplots(figsize=(max(5, nc * 0.7), 3))
    width = 0.8 / len(names)
    for k, n in enumerate(names):
        ax.bar(np.arange(nc) + k * width, results["models"][n]["class_IoU"], width, label=n)
    ax.set_xticks(np.arange(nc) + 0.4 - width / 2)
    ax.set_xticklabels([str(c) for c in range(nc)])
    ax.set_xlabel("class")
    ax.set_ylabel("IoU")
    ax.legend(fontsize=8)
    ax.set_title("Per-class IoU")
    fig.tight_layout()
    fig.savefig(os.path.join(save_dir, "class_iou.png"), dpi=100)
    plt.close(fig)
    # confusion matrices (row-normalised)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3))
    for ax, n in zip(np.atleast_1d(axes), names):
        cm = np.asarray(results["models"][n]["confusion_matrix"], dtype=float)
        cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(cm, vmin=0, vmax=1, cmap="Blues")
        ax.set_title(n, fontsize=9)
        ax.set_xlabel("predicted")
        ax.set_ylabel("label")
    fig.tight_layout()
    fig.savefig(os.path.join(save_dir, "confusion.png"), dpi=100)
    plt.close(fig)
    # sample masks side by side
    if samples:
        pal = np.array(deploy.palette(), dtype=np.uint8).reshape(-1, 3)
        cols = 2 + len(names)
        fig, axes = plt.subplots(len(samples), cols, figsize=(2.2 * cols, 2.2 * len(samples)), squeeze=False)
        for r, (img, lab, outs) in enumerate(samples):
            panels = [("image", img[..., ::-1]), ("label", pal[np.where(lab == 255, 0, lab).astype(np.int64) % 256])]
            panels += [(n, pal[outs[n] % 256]) for n in names]
            for c, (title, im) in enumerate(panels):
                axes[r, c].imshow(im)
                axes[r, c].set_axis_off()
                if r == 0:
                    axes[r, c].set_title(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(os.path.join(save_dir, "samples.png"), dpi=90)
        plt.close(fig)
