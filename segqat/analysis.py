"""Per-layer quantization sensitivity: which layers cost accuracy in INT8?

    result = run_analysis(cfg, "out_fp32/best_model/model.pdparams", "out_analysis",
                          AnalysisOptions(mode="both", num_images=16))

Method (fake quantization in dygraph, from FP32 weights, no training):

1. The FP32 model is evaluated on a validation subset (``num_images`` images
   chosen by ``seed``): the reference mIoU and predictions.
2. The fully quantized model (quant_config as configured) is calibrated on
   training images with the deployment preprocessing (``calibration.Calibration``
   and ``calibration.calibrate``: activation scales are moving averages, batch
   norms untouched) and evaluated: the "all quantized" mIoU. Its quantizer
   scales are kept.
3. For every quantizable layer L (Conv2D / Linear not already skipped by the
   config, optionally filtered by ``layers`` patterns):

   * ``single``: only L is quantized, everything else stays FP32;
     sensitivity = mIoU(only L) - mIoU(FP32) (negative: L costs accuracy);
   * ``leave_one_out``: everything but L is quantized;
     gain = mIoU(all but L) - mIoU(all quantized) (positive: skipping L helps).

   Each variant reuses the scales calibrated in step 2, so the only difference
   between two variants is which layers quantize. Pixel disagreement with the
   FP32 predictions is reported beside the mIoU: on a small subset it is the
   finer signal.

Every evaluation is ``evaluate.evaluate`` on the subset (read and preprocessed
once), the FP32 one keeping its predictions as the reference of the others.

Outputs in ``save_dir``: ``sensitivity.json`` (everything), ``sensitivity.md``
(the ranked table), ``sensitivity.png`` (bar chart), and with ``skip_top`` or
``skip_threshold`` a skip list: ``skip_layers.yml`` (a ``quant_config``
section a config can include with ``_base_``) and ``config_with_skips.yml``
(the analysed config plus that list, ready for qat_train / ptq).
Written atomically: an interrupted run leaves an earlier save_dir as it was.
"""
import fnmatch
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import yaml

from . import builder, calibration, export, outputs, quant
from .config import ConfigError
from .evaluate import evaluate, format_eta

logger = logging.getLogger(__name__)

MODES = ("single", "leave_one_out", "both")


@dataclass
class AnalysisOptions:
    mode: str = "single"
    num_images: int = 16          # validation subset (0: all)
    seed: int = 0
    batch_size: int = 4           # calibration
    batch_nums: int = 8
    layers: List[str] = field(default_factory=list)   # fnmatch patterns; empty: all
    skip_top: int = 0             # write a skip list of the K most sensitive layers
    skip_threshold: Optional[float] = None  # ... or of layers costing more mIoU points than this
    plot_top: int = 30


def check_options(opts):
    if opts.mode not in MODES:
        raise ValueError(f"--mode must be one of {list(MODES)}, got {opts.mode!r}")
    if opts.num_images < 0:
        raise ValueError(f"--num_images must be >= 0 (0: all), got {opts.num_images}")
    if opts.skip_top < 0:
        raise ValueError(f"--skip_top must be >= 0, got {opts.skip_top}")
    if opts.skip_threshold is not None and opts.skip_threshold < 0:
        raise ValueError(f"--skip_threshold is in mIoU points (>= 0), got {opts.skip_threshold}")


class _Subset:
    """The chosen validation samples, read and preprocessed once."""

    def __init__(self, ds, indices):
        self.samples = [ds[i] for i in indices]
        self.indices = list(indices)
        self.num_classes = ds.num_classes
        self.ignore_index = ds.ignore_index
        self.name = ds.name

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return self.samples[i]


def _score(model, subset, test_cfg, reference=None):
    """mIoU, Acc and pixel disagreement with the FP32 ``reference`` (quiet: one of many);
    without a reference, also the predictions (the reference of the others)."""
    m = evaluate(model, subset, test_cfg, keep=reference is None, verbose=False,
                 references={"fp32": reference} if reference is not None else None)
    out = {"mIoU": float(m["mIoU"]), "Acc": float(m["Acc"]),
           "disagreement": m["agreement"]["fp32"]["disagreement"] if reference is not None else 0.0}
    return out, m.get("predictions")


def candidate_layers(cfg, qc, patterns):
    """``(analysed, quantized)``: (name, type, params) of the layers to analyse (the
    quantized ones matching ``patterns``, all of them without patterns) and the
    names of all layers the config quantizes."""
    model = builder.build_model(cfg)
    skipped = set(quant.mark_skipped(model, qc))
    kinds = quant.quantizable_types(qc)
    out = [(n, type(l).__name__, int(sum(np.prod(p.shape) for p in l.parameters(include_sublayers=False))))
           for n, l in model.named_sublayers() if isinstance(l, kinds) and n not in skipped]
    if patterns:
        unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n, _, _ in out)]
        if unmatched:
            raise ConfigError(f"--layers patterns {unmatched} match no quantizable layer of "
                              f"{type(model).__name__} (e.g. {', '.join(n for n, _, _ in out[:3])})")
        return [c for c in out if any(fnmatch.fnmatchcase(c[0], p) for p in patterns)], \
            [n for n, _, _ in out]
    return out, [n for n, _, _ in out]


def _quantized(cfg, fp32_state, qc, extra_skips, scales=None):
    """The FP32 weights ``fp32_state``, quantized with ``qc`` plus ``extra_skips``;
    quantizer scales from ``scales``."""
    import paddle
    with paddle.utils.unique_name.guard():
        model = builder.build_model(cfg)
        model.set_state_dict(fp32_state)
        quant.quantize(model, dict(qc, skip_layers=list(qc.get("skip_layers") or []) + list(extra_skips)),
                       in_channels=export.in_channels(cfg))
    if scales is not None:
        own = {k: t for k, t in model.state_dict().items() if quant._is_quant_key(k)}
        missing = set(own) - set(scales)
        if missing:
            raise RuntimeError(f"calibrated scales missing for {sorted(missing)[:3]}")
        for k, t in own.items():  # state_dict() holds the model's own tensors
            t.set_value(scales[k])
    model.eval()
    return model


def run_analysis(cfg, model_path, save_dir, opts):
    check_options(opts)
    cfg.require("val_dataset")
    qc = quant.quant_settings(cfg, purpose="analysis")
    t_start = time.time()
    layers, quantized_names = candidate_layers(cfg, qc, opts.layers)
    if not layers:
        raise ConfigError("no layer to analyse: every quantizable layer is skipped by the config")
    val_ds = builder.build_dataset(cfg, "val")
    n_all = len(val_ds)
    n = n_all if opts.num_images in (0, None) else min(opts.num_images, n_all)
    indices = sorted(np.random.RandomState(opts.seed).permutation(n_all)[:n].tolist())
    subset = _Subset(val_ds, indices)
    test_cfg = builder.test_config(cfg)
    logger.info("Sensitivity analysis of %d layer(s), mode %s, on %d of %d validation images "
                "(seed %d)", len(layers), opts.mode, n, n_all, opts.seed)

    # 1. FP32 reference
    fp32, _ = quant.build_model(cfg, model_path, quantized=False)  # strict load, once
    fp32_state = {k: v.numpy() for k, v in fp32.state_dict().items()}
    t0 = time.time()
    ref, ref_preds = _score(fp32, subset, test_cfg)
    t_eval = time.time() - t0
    del fp32
    logger.info("FP32: mIoU %.4f on the subset (%.1f s)", ref["mIoU"], t_eval)

    # 2. fully quantized, calibrated once
    calib = calibration.Calibration(cfg, calibration.CalibrationOptions(
        batch_size=opts.batch_size, batch_nums=opts.batch_nums, seed=opts.seed))
    if calib.random:
        raise ConfigError(f"analysis needs calibration images: a train_dataset or "
                          f"quant_config.calibration_list in {cfg.path} (random data would make "
                          "every sensitivity meaningless)")
    full = _quantized(cfg, fp32_state, qc, [])
    calibration.calibrate(full, calib.arrays())
    scales = {k: v.numpy() for k, v in full.state_dict().items() if quant._is_quant_key(k)}
    allq, _ = _score(full, subset, test_cfg, ref_preds)
    del full
    logger.info("All %d quantizable layer(s) quantized: mIoU %.4f (%+.2f points vs FP32), pixel disagreement "
                "%.2f%%", len(quantized_names), allq["mIoU"], 100 * (allq["mIoU"] - ref["mIoU"]),
                100 * allq["disagreement"])

    # 3. one evaluation per layer and mode
    modes = ["single", "leave_one_out"] if opts.mode == "both" else [opts.mode]
    runs = len(layers) * len(modes)
    logger.info("%d evaluation(s) of %d image(s); about %.1f s each (FP32 took %.1f s): rough ETA %s",
                runs, n, t_eval * 1.5 + 1, t_eval, format_eta(runs * (t_eval * 1.5 + 1)))
    rows = []
    quant_log = logging.getLogger(quant.__name__)  # its per-build "Not quantizing ..." lines
    level = quant_log.level
    quant_log.setLevel(logging.WARNING)
    t_loop = time.time()
    done = 0
    try:
        for name, kind, params in layers:
            row = {"layer": name, "type": kind, "params": params}
            for mode in modes:
                if mode == "single":
                    others = [x for x in quantized_names if x != name]
                    m, _ = _score(_quantized(cfg, fp32_state, qc, others, scales), subset,
                                  test_cfg, ref_preds)
                    row["single_mIoU"] = m["mIoU"]
                    row["single_delta"] = m["mIoU"] - ref["mIoU"]
                    row["single_disagreement"] = m["disagreement"]
                else:
                    m, _ = _score(_quantized(cfg, fp32_state, qc, [name], scales), subset,
                                  test_cfg, ref_preds)
                    row["loo_mIoU"] = m["mIoU"]
                    row["loo_gain"] = m["mIoU"] - allq["mIoU"]
                    row["loo_disagreement"] = m["disagreement"]
                done += 1
            rows.append(row)
            el = time.time() - t_loop
            logger.info("[ANALYSIS] %d/%d %s: %s | ETA %s", done, runs, name, _row_text(row),
                        format_eta(el / done * (runs - done)))
    finally:
        quant_log.setLevel(level)

    ranked = rank(rows, modes[0])
    for i, r in enumerate(ranked, 1):
        r["rank"] = i
    skip = choose_skips(ranked, modes[0], opts)
    result = {
        "config": os.path.abspath(cfg.path), "model_path": os.path.abspath(model_path),
        "mode": opts.mode, "ranked_by": _rank_key(modes[0]),
        "val_images": n, "val_images_total": n_all, "val_indices": indices, "seed": opts.seed,
        "test_config": test_cfg,
        "calibration": calib.describe,
        "quant_config": {k: v for k, v in qc.items()},
        "fp32": ref, "all_quantized": allq,
        "layers": ranked, "skip_list": skip,
        "seconds": {"total": time.time() - t_start, "per_evaluation": (time.time() - t_loop) / runs,
                    "fp32_evaluation": t_eval},
    }

    def write(d):
        with open(os.path.join(d, "sensitivity.json"), "w") as f:
            json.dump(result, f, indent=2)
        with open(os.path.join(d, "sensitivity.md"), "w") as f:
            f.write(markdown(result))
        plot(result, os.path.join(d, "sensitivity.png"), opts.plot_top)
        if skip is not None:
            write_skip_files(cfg, qc, skip, d)

    outputs.atomic_dir_write(save_dir, write, kind="analysis")
    logger.info("Sensitivity analysis done in %s: %s/sensitivity.md (ranked table), "
                "sensitivity.png%s", format_eta(result["seconds"]["total"]), save_dir,
                f", skip list of {len(skip)} layer(s) in {save_dir}/config_with_skips.yml"
                if skip is not None else "")
    for r in ranked[:5]:
        logger.info("  #%d %s (%s): %s", r["rank"], r["layer"], r["type"], _row_text(r))
    return result


def _row_text(r):
    parts = []
    if "single_delta" in r:
        parts.append(f"only this layer quantized: {100 * r['single_delta']:+.2f} mIoU points, "
                     f"{100 * r['single_disagreement']:.2f}% pixels changed")
    if "loo_gain" in r:
        parts.append(f"all but this layer: {100 * r['loo_gain']:+.2f} points vs all quantized")
    return "; ".join(parts)


def _rank_key(mode):
    return ("single_delta (ascending), then single_disagreement (descending)" if mode == "single"
            else "loo_gain (descending), then loo_disagreement (ascending)")


def rank(rows, mode):
    """Most sensitive first."""
    if mode == "single":
        return sorted(rows, key=lambda r: (r["single_delta"], -r["single_disagreement"]))
    return sorted(rows, key=lambda r: (-r["loo_gain"], r["loo_disagreement"]))


def cost_points(r, mode):
    """mIoU points a layer costs when quantized (>0 hurts), by the ranking mode."""
    return -100 * r["single_delta"] if mode == "single" else 100 * r["loo_gain"]


def choose_skips(ranked, mode, opts):
    if not opts.skip_top and opts.skip_threshold is None:
        return None
    chosen = ranked[:opts.skip_top] if opts.skip_top else []
    if opts.skip_threshold is not None:
        chosen += [r for r in ranked if cost_points(r, mode) > opts.skip_threshold and r not in chosen]
    return [r["layer"] for r in chosen]


def write_skip_files(cfg, qc, skip, d):
    existing = list(qc.get("skip_layers") or [])
    layers = existing + [s for s in skip if s not in existing]
    head = ("# Written by slim/quant/analysis.py: the most sensitive layers of\n"
            f"# {os.path.abspath(cfg.path)} stay float.\n")
    with open(os.path.join(d, "skip_layers.yml"), "w") as f:
        f.write(head + "# Include it in a config: _base_: [your_config.yml, skip_layers.yml]\n")
        yaml.safe_dump({"quant_config": {"skip_layers": layers}}, f, sort_keys=False)
    with open(os.path.join(d, "config_with_skips.yml"), "w") as f:
        f.write(head + "# Use it as --config for slim/quant/qat_train.py or ptq.py.\n")
        yaml.safe_dump({"_base_": [os.path.abspath(cfg.path), "skip_layers.yml"]}, f,
                       sort_keys=False)


def markdown(res):
    ref, allq = res["fp32"], res["all_quantized"]
    lines = [
        "# Quantization sensitivity per layer",
        "",
        f"Config `{res['config']}`, weights `{res['model_path']}`.",
        f"{res['val_images']} of {res['val_images_total']} validation images (seed {res['seed']}); "
        f"calibration: {res['calibration']}.",
        f"FP32 mIoU {100 * ref['mIoU']:.2f}; all layers quantized {100 * allq['mIoU']:.2f} "
        f"({100 * (allq['mIoU'] - ref['mIoU']):+.2f} points, {100 * allq['disagreement']:.2f}% "
        "pixels differ from FP32).",
        f"Ranked by {res['ranked_by']}; most sensitive first. Took "
        f"{res['seconds']['total']:.0f} s ({res['seconds']['per_evaluation']:.1f} s per evaluation).",
        "",
    ]
    has_s = "single_delta" in res["layers"][0]
    has_l = "loo_gain" in res["layers"][0]
    hdr = ["rank", "layer", "type", "params"]
    if has_s:
        hdr += ["only this quantized: ΔmIoU (points)", "pixels changed"]
    if has_l:
        hdr += ["all but this: ΔmIoU vs all quantized", "pixels changed "]
    lines += ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
    for r in res["layers"]:
        cells = [str(r["rank"]), f"`{r['layer']}`", r["type"], str(r["params"])]
        if has_s:
            cells += [f"{100 * r['single_delta']:+.2f}", f"{100 * r['single_disagreement']:.2f}%"]
        if has_l:
            cells += [f"{100 * r['loo_gain']:+.2f}", f"{100 * r['loo_disagreement']:.2f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    if res["skip_list"] is not None:
        lines += ["", f"Skip list ({len(res['skip_list'])} layers): `skip_layers.yml`, "
                  "`config_with_skips.yml`."]
    return "\n".join(lines) + "\n"


def plot(res, path, top):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = res["layers"][:top]
    has_s = "single_delta" in rows[0]
    has_l = "loo_gain" in rows[0]
    labels = [r["layer"] for r in rows][::-1]
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(8, max(3, 0.28 * len(rows) + 1)))
    h = 0.4 if has_s and has_l else 0.8
    if has_s:
        ax.barh(y + (h / 2 if has_l else 0), [-100 * r["single_delta"] for r in rows][::-1], h,
                color="#c44", label="only this layer quantized: mIoU lost (points)")
    if has_l:
        ax.barh(y - (h / 2 if has_s else 0), [100 * r["loo_gain"] for r in rows][::-1], h,
                color="#48c", label="all but this layer: mIoU regained (points)")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xlabel("mIoU points")
    ax.set_title(f"Quantization sensitivity (top {len(rows)} of {len(res['layers'])} layers, "
                 f"{res['val_images']} val images)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


__all__ = ["AnalysisOptions", "MODES", "run_analysis", "candidate_layers"]
