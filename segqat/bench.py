"""Latency measurement: interleaved repeats over several predictors, medians and p90.

Interleaving (A, B, A, B, ...) spreads slow phases of the machine (another
process, frequency changes) evenly over the models being compared, so the
INT8/FP32 ratio is fair even when absolute times drift.
"""
import logging
import time

import numpy as np

logger = logging.getLogger(__name__)


def interleaved_latency(predictors, batch, warmup=10, repeats=30):
    """``{name: [seconds per run, ...]}`` for each predictor on the same batch."""
    for name, p in predictors.items():
        for _ in range(warmup):
            p.run(batch)
    times = {name: [] for name in predictors}
    for _ in range(repeats):
        for name, p in predictors.items():
            t = time.perf_counter()
            p.run(batch)
            times[name].append(time.perf_counter() - t)
    return times


def summarize(times, batch_size=1):
    """Median, p90 and mean in ms per image, and images per second."""
    out = {}
    for name, ts in times.items():
        ms = np.asarray(ts) * 1000 / batch_size
        out[name] = {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
                     "mean_ms": float(ms.mean()), "runs": len(ts),
                     "images_per_s": float(1000 / np.median(ms))}
    return out
