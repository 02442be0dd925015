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
parameters and MACs. Writes results.json, results.md (what was evaluated: the list
file, its config section and every ``--opts`` override; the table, warnings, the
largest INT8 - FP32 confusion changes and a per-class table) and the pictures of
``report_plots``: latency.png, class_iou.png, confusion.png, confusion_diff.png,
samples.png (the images where INT8 and FP32 differ most, then a spread of the
others, with a difference column; one file per runtime).
"""
import json
import logging
import os

import numpy as np

from . import bench, deploy, report_plots
from .data import class_names_of, to_bgr8
from .evaluate import NEAR_TIE, evaluate
from .metrics import compute_metrics

logger = logging.getLogger(__name__)


def model_size(dep_dir, allow_external_model=False):
    d = deploy.load_deploy_config(dep_dir, allow_external_model)
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
                  repeats=20, num_images=None, num_samples=6, runtimes=("paddle",),
                  allow_external_model=False):
    """``models``: ordered {name: inference dir}; the first is the FP32 reference.

    Every model runs on every runtime in ``runtimes`` (rows "name (runtime)"
    when there are several); each INT8 row is compared with the FP32 model on
    its own runtime. ``qat_model_path`` (optional) are the QAT weights of the
    first INT8 model: its fake-quant model is evaluated too, and compared with
    that model on each runtime. The predictors of a runtime are timed
    interleaved on the same input with the same thread count; runtimes one
    after another (``bench.interleaved_latency``: a runtime's spinning threads
    slow whatever runs after them). ``allow_external_model``: deploy.yaml's model files
    may lie outside their export folder.

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
            preds[row] = deploy.create_predictor(models[name], runtime=rt, threads=cpu_threads,
                                                 allow_external_model=allow_external_model)
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
        # samples.png: the images where an INT8 row differs most from its FP32 row, then a
        # spread of the others, predicted again by every row
        per_image = [max((evals[row]["agreement"]["fp32"]["per_image_disagreement"][k]
                          for row in names if "fp32" in evals[row].get("agreement", {})), default=0.0)
                     for k in range(n)]
        samples = []
        for k, why in choose_samples(per_image, num_samples):
            img, lab = val_ds.read(indices[k])
            img = to_bgr8(img)
            samples.append({"index": indices[k], "image": img, "label": lab, "chosen_as": why,
                            "name": os.path.basename(val_ds.file_list[indices[k]][0]),
                            "predictions": {row: p.predict([img])[0] for row, p in preds.items()}})
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
               "data": data_source(cfg, val_ds), "class_names": class_names_of(val_ds),
               "ignore_index": val_ds.ignore_index, "models": {}}
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
             **model_size(models[model], allow_external_model), "num_params": n_params, "macs": flops}
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
    results["samples"] = [
        {"index": sm["index"], "image": val_ds.file_list[sm["index"]][0], "chosen_as": sm["chosen_as"],
         "disagreement_with_fp32": {row: float(np.mean(sm["predictions"][row] != sm["predictions"][ref_of[row]]))
                                    for row in names if row != ref_of[row]}}
        for sm in samples]
    results["warnings"] = benchmark_warnings(results, ref_of)
    for w in results["warnings"]:
        logger.warning("!!! %s", w)

    def write(d):
        with open(os.path.join(d, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
        with open(os.path.join(d, "results.md"), "w") as f:
            f.write(markdown_table(results))
        report_plots.plot_all(results, samples, d)
    outputs.atomic_dir_write(save_dir, write, kind="benchmark")
    logger.info("Benchmark written to %s (results.json, results.md, *.png)", save_dir)
    return results


def data_source(cfg, dataset, split="val"):
    """What was evaluated: the config, the data set section and list file as the config (or
    ``--opts``) gives them, the number of listed images and every ``--opts`` override."""
    key = f"{split}_dataset"
    section = cfg.section(key)
    list_key = {"train": "train_path", "val": "val_path"}.get(section.get("mode", split), f"{split}_path")
    return {"config": os.path.relpath(cfg.path) if not os.path.relpath(cfg.path).startswith("..")
            else cfg.path,
            "split": key, "mode": section.get("mode", split), "type": section.get("type"),
            "dataset_root": section.get("dataset_root"), "list": section.get(list_key),
            "list_key": f"{key}.{list_key}", "list_from": cfg.where(key),
            "listed_images": len(dataset), "opts": list(getattr(cfg, "opts", ()) or ())}


def evaluated_on(results):
    """'12 images of data/synthetic/val.txt' (results without a data record: 'validation images')."""
    d = results.get("data") or {}
    if d.get("list"):
        return f"{results['num_images']} images of {d['list']}"
    return f"{results['num_images']} validation images"


def source_lines(results):
    """Markdown lines: which list was evaluated, from which config section, with which overrides."""
    d = results.get("data")
    if not d:
        return []
    n, total = results["num_images"], d["listed_images"]
    which = f"all {total}" if n == total else f"the first {n} of {total}"
    what = f"`{d['list']}` ({d['list_key']})" if d.get("list") else \
        f"the {d['split']} ({d.get('type')}, dataset_root `{d.get('dataset_root')}`)"
    out = [f"Evaluated: {which} images listed in {what}, the {d['split']} (mode {d['mode']}) of "
           f"`{d['config']}`."]
    if d.get("opts"):
        out.append("Overrides: " + " ".join(f"`--opts {o}`" for o in d["opts"]) + ".")
    else:
        out.append("Overrides: none (no --opts).")
    return out


def choose_samples(disagreement, num):
    """``[(position, why)]``: the ``ceil(num / 2)`` images with the largest share of pixels
    where INT8 and FP32 differ (only images where they differ at all), then images spread
    evenly over the rest, ``num`` in all (``disagreement``: one share per image)."""
    d = [float(v) for v in disagreement]
    num = min(int(num), len(d))
    order = sorted(range(len(d)), key=lambda i: (-d[i], i))
    top = [i for i in order[:(num + 1) // 2] if d[i] > 0]
    rest = [i for i in range(len(d)) if i not in set(top)]
    m = num - len(top)
    spread = [rest[(2 * j + 1) * len(rest) // (2 * m)] for j in range(m)] if m else []
    return [(i, "most different") for i in top] + [(i, "spread") for i in sorted(spread)]


def normalised_confusion(cm):
    """A confusion matrix with each label row divided by its sum (NaN for a class without
    labelled pixels)."""
    cm = np.asarray(cm, dtype=np.float64)
    rows = cm.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(rows > 0, cm / rows, np.nan)


def reference_rows(results):
    """{row: the FP32 row of its runtime} (the first model on the same runtime)."""
    rows = results["models"]
    first = next(iter(rows.values()))
    base = first.get("model", next(iter(rows)))
    out = {}
    for name, r in rows.items():
        rt = r.get("runtime", "paddle")
        out[name] = next((n for n, q in rows.items()
                          if q.get("runtime", "paddle") == rt and q.get("model", n) == base),
                         next(iter(rows)))
    return out


def confusion_difference(results):
    """{INT8 row: (its FP32 row, INT8 - FP32 of the row-normalised confusion matrices)}."""
    out = {}
    for name, ref in reference_rows(results).items():
        if name == ref:
            continue
        r, f = results["models"][name], results["models"][ref]
        out[name] = (ref, normalised_confusion(r["confusion_matrix"]) -
                     normalised_confusion(f["confusion_matrix"]))
    return out


def confusion_changes(results, top=3):
    """Markdown lines: per INT8 row, the largest changes of its row-normalised confusion
    matrix against FP32's (label -> predicted, percentage points)."""
    names = class_names(results)
    lines = []
    for name, (ref, d) in confusion_difference(results).items():
        d = np.nan_to_num(d)
        flat = sorted(np.ndindex(d.shape), key=lambda ij: -abs(d[ij]))[:top]
        cells = [f"{names[i]} -> {names[j]} {100 * d[i, j]:+.2f}" for i, j in flat if round(100 * d[i, j], 2)]
        lines.append(f"{name} - {ref}, largest confusion changes (label -> predicted, points of the "
                     f"label's pixels; confusion_diff.png): {', '.join(cells) or 'none'}.")
    return lines


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
    lines += source_lines(results)
    lines.append(f"{evaluated_on(results)}, input {results['input_shape']}, "
                 f"{results['cpu_threads']} threads, median of {results['repeats']} interleaved runs"
                 f"{' (runtimes timed one after another)' if len(results.get('runtimes', [])) > 1 else ''}. "
                 "Ratio: time over the FP32 model's on the same runtime.")
    for name, r in results["models"].items():
        if "agreement_with_fake_quant" in r and r["precision"] == "int8":
            lines.append(f"{name}: pixel agreement with its fake-quant model "
                         f"{r['agreement_with_fake_quant'] * 100:.2f}%{margin_note(r)}.")
    lines += confusion_changes(results)
    if results.get("samples"):
        most = [sm for sm in results["samples"] if sm["chosen_as"] == "most different"]
        lines.append(f"samples.png: {len(most)} image(s) where INT8 and FP32 differ most"
                     + (" (" + ", ".join(f"{os.path.basename(sm['image'])} "
                                         f"{100 * max(sm['disagreement_with_fp32'].values()):.2f}%"
                                         for sm in most) + " of pixels)" if most else "")
                     + f", then {len(results['samples']) - len(most)} spread over the others.")
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
             f"labelled pixels of the {evaluated_on(results)}.", "",
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


