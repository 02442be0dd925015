"""Calibration-size sweep: PTQ mIoU against the number of calibration images.

    res = run_sweep(cfg, "out_fp32/best_model/model.pdparams", "out_sweep",
                    SweepOptions(fractions=[0.01, 0.05, 0.2, 1.0], seeds=[0, 1, 2]))

For every fraction F of the calibration images (the train_dataset, or
``quant_config.calibration_list``) and every seed, ``ptq.run_ptq`` calibrates
on the seeded random F-subset (all of its images: ``batch_nums`` is set to
cover them) and evaluates the deployed INT8 model on the validation set. The
FP32 model is exported and evaluated the same way (Paddle Inference) as the
reference. Each PTQ model stays in ``save_dir/ptq_f{F}_s{seed}`` (usable with
infer.py / benchmark.py); ``sweep.json``, ``sweep.md`` and ``sweep.png``
(mIoU against calibration images, log scale, FP32 line) summarise them.
A point already done (its ptq_info.json matches the settings and is newer than
the weights file) is reused, so an interrupted sweep resumes where it stopped.

``save_dir`` is written in place (``outputs`` kind "sweep"): its marker says
``complete: false`` until the report is written and lists what the sweep put
there. An unfinished sweep is resumed; a finished one is replaced only with
--overwrite (slim/quant/calib_sweep.py); anything else is refused.
"""
import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import List

import numpy as np

from . import builder, calibration, deploy, export, outputs, ptq, quant
from .evaluate import evaluate, format_eta

logger = logging.getLogger(__name__)


@dataclass
class SweepOptions:
    fractions: List[float] = field(default_factory=lambda: [0.01, 0.05, 0.2, 1.0])
    seeds: List[int] = field(default_factory=lambda: [0])
    algo: str = "hist"
    batch_size: int = 4
    cpu_threads: int = 1


def check_options(opts):
    bad = [f for f in opts.fractions if not 0 < f <= 1]
    if bad or not opts.fractions:
        raise ValueError(f"--fractions must be in (0, 1], got {opts.fractions}")
    if not opts.seeds:
        raise ValueError("--seeds needs at least one seed")
    if opts.algo not in ptq.ALGOS:
        raise ValueError(f"--algo must be one of {list(ptq.ALGOS)}, got {opts.algo!r}")


def _point_dir(save_dir, frac, seed):
    return os.path.join(save_dir, f"ptq_f{frac:g}_s{seed}")


def _newer_than_weights(p, model_path):
    """``p`` was written after the weights file (retrained weights make it stale)."""
    return os.path.isfile(p) and os.path.getmtime(p) >= os.path.getmtime(model_path)


def _reusable(d, frac, seed, opts, model_path):
    p = os.path.join(d, "ptq_info.json")
    if not _newer_than_weights(p, model_path):
        return None
    with open(p) as f:
        info = json.load(f)
    same = (info.get("split") == float(frac) and info.get("seed") == seed
            and info.get("algo") == opts.algo and info.get("batch_size") == opts.batch_size
            and info.get("model_path") == os.path.abspath(model_path) and info.get("mIoU") is not None)
    return info if same else None


def fp32_reference(cfg, model_path, save_dir, cpu_threads):
    d = os.path.join(save_dir, "fp32_infer")
    p = os.path.join(d, "metrics.json")
    if _newer_than_weights(p, model_path):
        with open(p) as f:
            m = json.load(f)
        if m.get("model_path") == os.path.abspath(model_path):
            return m
    model, _ = quant.build_model(cfg, model_path, quantized=False)
    outputs.update_marker(save_dir, add_files=["fp32_infer/"])  # before it exists: never unlisted
    export.export_model(cfg, model, d)
    pred = deploy.create_predictor(d, precision="fp32", threads=cpu_threads)
    try:
        m = evaluate(pred, builder.build_dataset(cfg, "val"),
                     label="Evaluate FP32 model (Paddle Inference, oneDNN)")
    finally:
        pred.close()
    m = {"mIoU": float(m["mIoU"]), "Acc": float(m["Acc"]), "num_images": m["num_images"],
         "model_path": os.path.abspath(model_path)}
    outputs.write_into(d, "metrics.json", lambda path: _dump(m, path))
    return m


def _dump(obj, path):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


def _write_text(text, path):
    with open(path, "w") as f:
        f.write(text)


def run_sweep(cfg, model_path, save_dir, opts):
    """The sweep into ``save_dir``; a caller that has not claimed it (slim/quant/calib_sweep.py
    does) gets the library rule: a new, empty or unfinished sweep folder, or a finished one
    replaced."""
    target = (contextlib.nullcontext() if outputs.claimed(save_dir)
              else outputs.claim(save_dir, "sweep", overwrite=True, flag="save_dir"))
    with target:
        return _run_sweep(cfg, model_path, save_dir, opts)


def _run_sweep(cfg, model_path, save_dir, opts):
    check_options(opts)
    cfg.require("val_dataset")
    quant.quant_settings(cfg, purpose="ptq")  # fail early on options PTQ cannot run
    probe = calibration.Calibration(cfg, calibration.CalibrationOptions(batch_size=opts.batch_size,
                                                                        batch_nums=1))
    if probe.random:
        raise ValueError("a calibration sweep needs real calibration images (a train_dataset or "
                         f"quant_config.calibration_list in {cfg.path})")
    total = probe.subset_size
    t0 = time.time()
    ref = fp32_reference(cfg, model_path, save_dir, opts.cpu_threads)
    logger.info("FP32 reference: mIoU %.4f on %d validation images", ref["mIoU"], ref["num_images"])
    # the whole pool is the same subset for every seed: one run
    points = [(f, s) for f in sorted(set(opts.fractions))
              for s in (opts.seeds if f < 1 else opts.seeds[:1])]
    rows = []
    for k, (frac, seed) in enumerate(points, 1):
        d = _point_dir(save_dir, frac, seed)
        info = _reusable(d, frac, seed, opts, model_path)
        n_img = max(1, int(round(frac * total)))
        if info is not None:
            logger.info("[SWEEP] %d/%d fraction %g seed %d: reusing %s", k, len(points), frac, seed, d)
        else:
            logger.info("[SWEEP] %d/%d fraction %g (%d of %d images), seed %d", k, len(points),
                        frac, n_img, total, seed)
            outputs.update_marker(save_dir, add_files=[os.path.basename(d) + "/"])
            info = ptq.run_ptq(cfg, model_path, d, ptq.PTQOptions(
                algo=opts.algo, batch_size=opts.batch_size,
                batch_nums=math.ceil(n_img / opts.batch_size), split=frac, seed=seed,
                cpu_threads=opts.cpu_threads))
        rows.append({"fraction": frac, "seed": seed, "calibration_images": info["calibration_images"],
                     "mIoU": info["mIoU"], "delta_points": 100 * (info["mIoU"] - ref["mIoU"]),
                     "dir": os.path.relpath(d, save_dir)})
        el = time.time() - t0
        logger.info("[SWEEP] fraction %g seed %d: %d images, INT8 mIoU %.4f (%+.2f points vs FP32) "
                    "| ETA %s", frac, seed, info["calibration_images"], info["mIoU"],
                    rows[-1]["delta_points"], format_eta(el / k * (len(points) - k)))
    res = {"config": os.path.abspath(cfg.path), "model_path": os.path.abspath(model_path),
           "algo": opts.algo, "batch_size": opts.batch_size, "calibration_pool": probe.source,
           "calibration_pool_images": total, "fp32": ref, "points": rows,
           "summary": summarize(rows), "seconds": time.time() - t0}
    outputs.write_into(save_dir, "sweep.json", lambda p: _dump(res, p))
    outputs.write_into(save_dir, "sweep.md", lambda p: _write_text(markdown(res), p))
    outputs.write_into(save_dir, "sweep.png", lambda p: plot(res, p))
    outputs.update_marker(save_dir, complete=True)
    logger.info("Sweep done in %s: %s/sweep.md, sweep.png", format_eta(res["seconds"]), save_dir)
    return res


def summarize(rows):
    out = []
    for frac in sorted({r["fraction"] for r in rows}):
        v = [r["mIoU"] for r in rows if r["fraction"] == frac]
        imgs = [r["calibration_images"] for r in rows if r["fraction"] == frac]
        out.append({"fraction": frac, "calibration_images": imgs[0], "seeds": len(v),
                    "mIoU_mean": float(np.mean(v)), "mIoU_min": float(np.min(v)),
                    "mIoU_max": float(np.max(v))})
    return out


def markdown(res):
    ref = res["fp32"]
    lines = ["# PTQ calibration-size sweep", "",
             f"Config `{res['config']}`, FP32 weights `{res['model_path']}`; algo {res['algo']}; "
             f"calibration pool: {res['calibration_pool']} ({res['calibration_pool_images']} images). "
             f"FP32 mIoU {100 * ref['mIoU']:.2f} on {ref['num_images']} validation images "
             "(Paddle Inference). Took " f"{res['seconds']:.0f} s.", "",
             "| fraction | calibration images | seeds | INT8 mIoU mean | min | max | mean - FP32 (points) |",
             "|---|---|---|---|---|---|---|"]
    for s in res["summary"]:
        lines.append(f"| {s['fraction']:g} | {s['calibration_images']} | {s['seeds']} | "
                     f"{100 * s['mIoU_mean']:.2f} | {100 * s['mIoU_min']:.2f} | "
                     f"{100 * s['mIoU_max']:.2f} | {100 * (s['mIoU_mean'] - ref['mIoU']):+.2f} |")
    return "\n".join(lines) + "\n"


def plot(res, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    pts = res["points"]
    ax.scatter([p["calibration_images"] for p in pts], [100 * p["mIoU"] for p in pts],
               s=14, color="#2a7", alpha=0.6, label="PTQ INT8 (each seed)")
    s = res["summary"]
    ax.plot([x["calibration_images"] for x in s], [100 * x["mIoU_mean"] for x in s], "-o",
            color="#2a7", label="PTQ INT8 (mean)")
    ax.axhline(100 * res["fp32"]["mIoU"], color="#888", ls="--", label="FP32")
    ax.set_xscale("log")
    ax.set_xticks([x["calibration_images"] for x in s])
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel(f"calibration images (of {res['calibration_pool_images']})")
    ax.set_ylabel("val mIoU (%)")
    ax.set_title(f"PTQ ({res['algo']}) mIoU vs calibration size", fontsize=10)
    for x in s:
        ax.annotate(f"{x['fraction']:g}", (x["calibration_images"], 100 * x["mIoU_mean"]),
                    textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


__all__ = ["SweepOptions", "run_sweep"]
