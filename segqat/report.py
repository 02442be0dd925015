"""The benchmark: FP32 vs INT8 on the same validation images, one row per model and runtime.

    res = run_benchmark(cfg, {"FP32": "out_fp32_infer", "INT8": "out_qat_infer"}, "out_bench",
                        qat_model_path="out_qat/best_model/model.pdparams")

Used by deploy/python/benchmark.py, tools/pipeline.py and the zoo. Every
deployed model is evaluated by ``evaluate.evaluate`` through its runtime's
predictor (``deploy.create_predictor``, as a user deploys it), on the raw
validation images and labels at their original size; the optional fake-quant
model is evaluated in dygraph on the same images. Beside accuracy: pixel
agreement of each INT8 row with the FP32 model of its runtime and with the
fake-quant model (split at near ties), interleaved latency (``bench``), size,
parameters and MACs. Writes results.json, results.md (the table, warnings and a
per-class table) and latency.png, class_iou.png, confusion.png, samples.png.
"""
import json
import logging
import os

import numpy as np

from . import bench, deploy
from .data import class_names_of, to_bgr8
from .evaluate import NEAR_TIE, evaluate
from .metrics import compute_metrics

logger = logging.getLogger(__name__)


def model_size(dep_dir):
    d = deploy.load_deploy_config(dep_dir)
    return {"params_mb": os.path.getsize(d["params_file"]) / 2 ** 20,
            "model_mb": os.path.getsize(d["model_file"]) / 2 ** 20}


def count_params_flops(cfg, hw):
    """Parameter count and multiply-accumulates of Conv2D/Linear layers (FP32 model, one image).

    Counted with forward hooks: paddle.flops() fails under numpy 2.x on paddle 3.3.1.
    """
    import paddle
    from . import builder, export
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
        model(paddle.zeros([1, export.in_channels(cfg), int(hw[0]), int(hw[1])]))
    for h in hooks:
        h.remove()
    return n_params, macs[0]


_METRIC_KEYS = ("mIoU", "Acc", "Kappa", "Dice", "class_IoU", "class_Dice")


def run_benchmark(cfg, models, save_dir, qat_model_path=None, cpu_threads=2, warmup=5,
                  repeats=20, num_images=None, num_samples=4, runtimes=("paddle",)):
    """``models``: ordered {name: inference dir}; the first is the FP32 reference.

    Every model runs on every runtime in ``runtimes`` (rows "name (runtime)"
    when there are several); each INT8 row is compared with the FP32 model on
    its own runtime. ``qat_model_path`` (optional) are the QAT weights of the
    first INT8 model: its fake-quant model is evaluated too, and compared with
    that model on each runtime. The predictors of a runtime are timed
    interleaved on the same input with the same thread count; runtimes one
    after another (``bench.interleaved_latency``: a runtime's spinning threads
    slow whatever runs after them).

    Returns the results dict and writes results.json, results.md and plots.
    """
    from . import builder, outputs, quant
    val_ds = builder.build_dataset(cfg, "val")
    n = len(val_ds) if num_images is None else min(num_images, len(val_ds))
    indices = list(range(n))
    base = list(models)
    rows = {(name if len(runtimes) == 1 else f"{name} ({rt})"): (rt, name)
            for rt in runtimes for name in base}
    names = list(rows)  # runtime by runtime, its FP32 row first
    ref_of = {row: next(r for r, (rt2, n2) in rows.items() if rt2 == rt and n2 == base[0])
              for row, (rt, _) in rows.items()}
    ref = names[0]
    # the QAT weights belong to the first INT8 model, on every runtime
    fq_owners = {row for row, (_, name) in rows.items() if len(base) > 1 and name == base[1]}
    preds = {}
    try:
        for row, (rt, name) in rows.items():
            preds[row] = deploy.create_predictor(models[name], runtime=rt, threads=cpu_threads)
        fq = None
        if qat_model_path:
            fq_model, _ = quant.build_model(cfg, qat_model_path, quantized=True, stage="eval")
            fq = evaluate(fq_model, val_ds, builder.test_config(cfg), indices=indices, margins=True,
                          label="Evaluate QAT model (fake quantization)")
            del fq_model
        # Each row once over the images; an INT8 row is compared with the kept predictions
        # of its runtime's FP32 row (evaluated before it) and of the fake-quant model.
        evals = {}
        for row in names:
            p = preds[row]
            refs = {}
            if row != ref_of[row]:
                refs["fp32"] = evals[ref_of[row]]["predictions"]
            if fq is not None and row in fq_owners:
                refs["fake_quant"] = fq["predictions"]
            evals[row] = evaluate(p, val_ds, indices=indices, keep=row == ref_of[row], references=refs,
                                  label=f"Evaluate {row} (deployed, {p.runtime} {p.precision.upper()})")
        samples = []  # the first images with every row's labels, for samples.png
        for i in indices[:num_samples]:
            img, lab = val_ds.read(i)
            img = to_bgr8(img)
            samples.append((img, lab, {row: p.predict([img])[0] for row, p in preds.items()}))

        # latency: interleaved on the first image's preprocessed input
        x = preds[ref].preprocess(to_bgr8(val_ds.read(0)[0]))[0][None]
        lat = bench.summarize(bench.interleaved_latency(preds, x, warmup, repeats,
                                                        group=lambda k: rows[k][0]))
        precision = {row: p.precision for row, p in preds.items()}
        int8_kernels = {row: int(sum(p.int8_ops().values())) for row, p in preds.items()}
    finally:
        for p in preds.values():
            p.close()
    n_params, flops = count_params_flops(cfg, x.shape[2:])

    results = {"config": cfg.path, "num_images": n, "input_shape": list(x.shape),
               "cpu_threads": cpu_threads, "repeats": repeats, "runtimes": list(runtimes),
               "class_names": class_names_of(val_ds), "models": {}}
    for name in names:
        rt, model = rows[name]
        m = evals[name]
        agree = m.get("agreement", {})
        r = {"dir": os.path.abspath(models[model]), "model": model, "runtime": rt,
             "precision": precision[name], "int8_kernels": int8_kernels[name],
             **{k: m[k] for k in _METRIC_KEYS},
             "confusion_matrix": m["confusion_matrix"],
             # the FP32 row of a runtime agrees with itself
             "agreement_with_fp32": agree["fp32"]["agreement"] if "fp32" in agree else 1.0,
             "latency": lat[name],
             "ratio_to_fp32": lat[name]["median_ms"] / lat[ref_of[name]]["median_ms"],
             **model_size(models[model]), "num_params": n_params, "macs": flops}
        if "fake_quant" in agree:
            a = agree["fake_quant"]
            r["agreement_with_fake_quant"] = a["agreement"]
            r["fake_quant_disagreement_at_near_ties"] = a["disagreement_at_near_ties"]
            r["agreement_with_fake_quant_clear_margin"] = a["agreement_clear_margin"]
            r["clear_margin_share"] = a["clear_margin_share"]
        results["models"][name] = r
    if fq is not None:
        results["fake_quant"] = {"model_path": os.path.abspath(qat_model_path),
                                 **{k: fq[k] for k in _METRIC_KEYS},
                                 "confusion_matrix": fq["confusion_matrix"]}
    results["warnings"] = benchmark_warnings(results, ref_of)
    for w in results["warnings"]:
        logger.warning("!!! %s", w)

    def write(d):
        with open(os.path.join(d, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
        with open(os.path.join(d, "results.md"), "w") as f:
            f.write(markdown_table(results))
        plots(results, samples, d, ref)
    outputs.atomic_dir_write(save_dir, write, kind="benchmark")
    logger.info("Benchmark written to %s (results.json, results.md, *.png)", save_dir)
    return results


def benchmark_warnings(results, ref_of):
    """What a reader of the table must not miss: an INT8 row not faster than the FP32 row
    of its runtime (``ref_of``: row -> that FP32 row), or a deployed INT8 mIoU more than
    0.5 points from its fake-quant model's."""
    out = []
    for name, r in results["models"].items():
        ref = ref_of[name]
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


def margin_note(r):
    """Where the disagreement with fake quant is: at near ties, or at clear margins."""
    if r.get("clear_margin_share") is None:
        return ""
    ties = r.get("fake_quant_disagreement_at_near_ties")
    where = "" if ties is None else f"{ties * 100:.0f}% of the differing pixels are near ties, "
    return (f" ({where}fake quant's top-2 probability margin < {NEAR_TIE:g}; with a clear margin, "
            f"{r['clear_margin_share'] * 100:.1f}% of the pixels, the agreement is "
            f"{r['agreement_with_fake_quant_clear_margin'] * 100:.2f}%)")


def markdown_table(results):
    lines = ["| Model | Runtime | Dtype | mIoU | Acc | Kappa | Agreement w/ FP32 | w/ fake-quant "
             "| Time (ms/img) | p90 (ms) | Ratio | INT8 kernels | Size (MB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    fq = results.get("fake_quant")
    for name, r in results["models"].items():
        afq = r.get("agreement_with_fake_quant")
        lines.append(f"| {name} | {r.get('runtime', 'paddle')} | {r['precision'].upper()} "
                     f"| {r['mIoU'] * 100:.2f} | {r['Acc'] * 100:.2f} "
                     f"| {r['Kappa']:.4f} | {r['agreement_with_fp32'] * 100:.2f}% "
                     f"| {'' if afq is None else format(afq * 100, '.2f') + '%'} "
                     f"| {r['latency']['median_ms']:.1f} | {r['latency']['p90_ms']:.1f} "
                     f"| {r['ratio_to_fp32']:.2f} | {r.get('int8_kernels', '')} | {r['params_mb']:.2f} |")
    if fq:
        lines.append(f"| fake-quant (QAT, dygraph) | paddle | INT8 sim | {fq['mIoU'] * 100:.2f} "
                     f"| {fq['Acc'] * 100:.2f} | {fq['Kappa']:.4f} | | | | | | | |")
    lines.append("")
    r0 = next(iter(results["models"].values()))
    macs = f", {r0['macs'] / 1e9:.2f} GMACs per image" if r0.get("macs") else ""
    lines.append(f"Model: {r0['num_params'] / 1e6:.2f} M parameters{macs}.")
    lines.append(f"{results['num_images']} validation images, input {results['input_shape']}, "
                 f"{results['cpu_threads']} threads, median of {results['repeats']} interleaved runs"
                 f"{' (runtimes timed one after another)' if len(results.get('runtimes', [])) > 1 else ''}. "
                 "Ratio: time over the FP32 model's on the same runtime.")
    for name, r in results["models"].items():
        if "agreement_with_fake_quant" in r and r["precision"] == "int8":
            lines.append(f"{name}: pixel agreement with its fake-quant model "
                         f"{r['agreement_with_fake_quant'] * 100:.2f}%{margin_note(r)}.")
    for w in results["warnings"]:
        lines.append(f"**Warning:** {w}")
    lines += ["", *class_table(results)]
    return "\n".join(lines) + "\n"


def class_names(results):
    """The class names of a results dict ("0", "1", ... for results written without them)."""
    nc = len(next(iter(results["models"].values()))["class_IoU"])
    names = list(results.get("class_names") or [])
    return (names + [str(c) for c in range(len(names), nc)])[:nc]


def _class_dice(r):
    """Per-class Dice of one model's results (from its confusion matrix in older results)."""
    if "class_Dice" in r:
        return r["class_Dice"]
    if "confusion_matrix" in r:
        return compute_metrics(r["confusion_matrix"])["class_Dice"]
    return None


def _evaluated(results):
    """(column name, results) of every evaluated model: the deployed ones, then fake-quant."""
    out = list(results["models"].items())
    if results.get("fake_quant"):
        out.append(("fake-quant", results["fake_quant"]))
    return out


def class_table(results):
    """Markdown lines: one row per class, IoU and Dice (%) of each model, the class's pixel share."""
    names = class_names(results)
    models = _evaluated(results)
    ref = next(iter(results["models"].values()))
    rows = np.asarray(ref["confusion_matrix"], dtype=np.float64).sum(1) if "confusion_matrix" in ref else None
    head = "| Class | Pixels |" + "".join(f" {n} IoU | {n} Dice |" for n, _ in models)
    lines = [f"Per class (%): IoU and Dice of each model; Pixels is the class's share of the "
             f"labelled pixels of the {results['num_images']} validation images.", "",
             head, "|---|--:|" + "--:|--:|" * len(models)]
    dice = {n: _class_dice(r) for n, r in models}
    for c, cname in enumerate(names):
        share = f"{100 * rows[c] / max(rows.sum(), 1):.2f}" if rows is not None else ""
        cells = "".join(f" {100 * r['class_IoU'][c]:.2f} | "
                        f"{'–' if dice[n] is None else format(100 * dice[n][c], '.2f')} |" for n, r in models)
        lines.append(f"| {cname} | {share} |{cells}")
    cells = "".join(f" **{100 * r['mIoU']:.2f}** | **{100 * r['Dice']:.2f}** |" for n, r in models)
    lines.append(f"| **mean** | |{cells}")
    return lines



_CHAR_IN = 0.075  # inches per character of a 9-point tick label (a generous average)


def _colours(n):
    """One colour per model, the same in every plot: FP32 (first) grey, then tab10's."""
    tab = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22"]
    return ["#7f7f7f"] + [tab[i % len(tab)] for i in range(n - 1)]


def plots(results, samples, save_dir, ref):
    """latency.png, class_iou.png, confusion.png and (with ``samples``) samples.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(results["models"])
    plot_latency(results, os.path.join(save_dir, "latency.png"))
    plot_class_iou(results, os.path.join(save_dir, "class_iou.png"))
    plot_confusion(results, os.path.join(save_dir, "confusion.png"))
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


def plot_latency(results, path):
    """Median ms/image (bar to p90) of every model, grouped by runtime, with the time
    and the ratio to the FP32 model of the same runtime printed on each bar."""
    import matplotlib.pyplot as plt
    rows = list(results["models"].items())
    runtimes = list(dict.fromkeys(r.get("runtime", "paddle") for _, r in rows))
    models = list(dict.fromkeys(r.get("model", n) for n, r in rows))
    colours = dict(zip(models, _colours(len(models))))
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 + 0.9 * len(rows)), 3.4))
    top = max(r["latency"]["p90_ms"] for _, r in rows)
    for n, r in rows:
        g, k = runtimes.index(r.get("runtime", "paddle")), models.index(r.get("model", n))
        x = g + (k - (len(models) - 1) / 2) * width
        med, p90 = r["latency"]["median_ms"], r["latency"]["p90_ms"]
        ax.bar(x, med, width * 0.95, color=colours[r.get("model", n)],
               label=r.get("model", n) if g == 0 else None)
        ax.errorbar([x], [med], yerr=[[0], [p90 - med]], fmt="none", ecolor="k", capsize=3)
        ax.text(x, p90 + top * 0.02, f"{med:.1f}\n{r['ratio_to_fp32']:.2f}x", ha="center",
                va="bottom", fontsize=7)
    ax.set_xticks(range(len(runtimes)))
    ax.set_xticklabels(runtimes)
    ax.set_ylim(0, top * 1.3)
    ax.set_ylabel("ms / image (median, bar to p90)")
    ax.set_title(f"Latency, input {results['input_shape']}, {results['cpu_threads']} threads "
                 "(ratio to FP32 on the same runtime)", fontsize=9)
    ax.legend(fontsize=8, loc="upper left", ncol=len(models))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_class_iou(results, path):
    """Grouped bars: IoU (%) of every class and the mean, one bar per deployed model, values printed."""
    import matplotlib.pyplot as plt
    models = list(results["models"].items())
    labels = class_names(results) + ["mean (mIoU)"]
    nm, ng = len(models), len(labels)
    width = 0.8 / nm
    group_in = max(0.6, 0.25 * nm + 0.25)  # inches per class: room for nm printed values
    fig, ax = plt.subplots(figsize=(max(6.0, group_in * ng + 1.2), 4.6), layout="constrained")
    vertical = nm > 1 or ng > 8  # side by side, horizontal values would overlap
    for k, ((name, r), colour) in enumerate(zip(models, _colours(nm))):
        vals = [100 * v for v in r["class_IoU"]] + [100 * r["mIoU"]]
        x = np.arange(ng) + (k - (nm - 1) / 2) * width
        ax.bar(x, vals, width, color=colour, label=f"{name} (mIoU {100 * r['mIoU']:.2f})")
        for xi, v in zip(x, vals):
            ax.text(xi, v + 1, f"{v:.1f}", ha="center", va="bottom", fontsize=8,
                    rotation=90 if vertical else 0)
    ax.axvline(ng - 1.5, color="k", lw=0.8, ls=":")  # the mean is not a class
    ax.set_xticks(np.arange(ng))
    long = max(len(s) for s in labels) * _CHAR_IN > 0.95 * group_in  # would run into each other
    ax.set_xticklabels(labels, rotation=30 if long else 0, ha="right" if long else "center",
                       rotation_mode="anchor", fontsize=9)
    ax.set_xlim(-0.6, ng - 0.4)
    ax.set_ylim(0, 118)  # room for the printed values above 100
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("IoU (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(fontsize=9, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=nm, frameon=False)
    fig.suptitle(f"Per-class IoU on {results['num_images']} validation images")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(results, path):
    """Row-normalised confusion matrix of each deployed model, the value in each cell."""
    import matplotlib.pyplot as plt
    models = list(results["models"].items())
    names = class_names(results)
    nc, nm = len(names), len(models)
    ncols = min(nm, 3)
    nrows = -(-nm // ncols)
    cell = 0.42 if nc > 6 else 0.8  # inches
    side = max(2.4, cell * nc)
    label_in = _CHAR_IN * max(len(s) for s in names) + 0.5  # room for the tick labels
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, layout="constrained",
                             figsize=(ncols * (side + 0.3) + label_in + 1.5,
                                      nrows * (side + label_in + 0.6) + 0.3))
    cmap = plt.get_cmap("Blues").with_extremes(bad="#dddddd")  # grey: a class without labelled pixels
    font = float(np.clip(90 / nc, 7, 12))
    rot = 45 if max(len(s) for s in names) * _CHAR_IN > 0.95 * cell else 0
    im, absent = None, False
    for i, ax in enumerate(axes.flat):
        if i >= nm:
            ax.set_axis_off()
            continue
        name, r = models[i]
        cm = np.asarray(r["confusion_matrix"], dtype=float)
        rows = cm.sum(1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            norm = np.where(rows > 0, cm / rows, np.nan)
        absent |= bool(np.isnan(norm).any())
        im = ax.imshow(np.ma.masked_invalid(norm), vmin=0, vmax=1, cmap=cmap)
        for (y, x), v in np.ndenumerate(norm):
            if np.isnan(v) or v < 0.005:  # blank instead of a wall of 0.00
                continue
            lum = np.dot(cmap(v)[:3], [0.299, 0.587, 0.114])
            ax.text(x, y, f"{v:.2f}", ha="center", va="center", fontsize=font,
                    color="white" if lum < 0.5 else "black")
        ax.set_xticks(range(nc))
        ax.set_yticks(range(nc))
        ax.set_xticklabels(names, rotation=rot, ha="right" if rot else "center",
                           rotation_mode="anchor", fontsize=9)
        ax.set_xlabel("predicted")
        if i % ncols == 0:  # the rows are the same classes in every panel
            ax.set_yticklabels(names, fontsize=9)
            ax.set_ylabel("label")
        else:
            ax.set_yticklabels([])
        ax.set_title(f"{name} (mIoU {100 * r['mIoU']:.2f})", fontsize=10)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="share of the label's pixels (row sums to 1)")
    fig.suptitle(f"Confusion matrices, rows normalised ({results['num_images']} validation images"
                 + ("; grey: a class without labelled pixels)" if absent else ")"))
    fig.savefig(path, dpi=100)
    plt.close(fig)
