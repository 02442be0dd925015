"""Latency measurement: interleaved repeats over several predictors, medians and p90.

Interleaving (A, B, A, B, ...) spreads slow phases of the machine (another
process, frequency changes) evenly over the models being compared, so the
INT8/FP32 ratio is fair even when absolute times drift.
"""
import logging
import os
import platform
import time

import numpy as np

logger = logging.getLogger(__name__)


def interleaved_latency(predictors, batch, warmup=10, repeats=30, group=None, pause=1.0):
    """``{name: [seconds per run, ...]}`` for each predictor on the same batch.

    ``group`` (name -> key, e.g. the runtime) keeps predictors of different groups
    apart: each group is interleaved within itself and timed after the one before,
    ``pause`` seconds later. A runtime's worker threads go on spinning for a while
    after a run (ONNX Runtime's intra-op pool, OpenMP's block time), so whatever
    runs next on the 2 cores gets less CPU; interleaved across runtimes, Paddle's
    FP32 BiSeNetV2 at 180x240 took 59 ms right after ONNX Runtime, against 16 ms
    for OpenVINO's.
    """
    groups = {}
    for name in predictors:
        groups.setdefault(group(name) if group else None, []).append(name)
    times = {name: [] for name in predictors}
    for i, names in enumerate(groups.values()):
        if i:
            time.sleep(pause)
        for name in names:
            for _ in range(warmup):
                predictors[name].run(batch)
        for _ in range(repeats):
            for name in names:
                times[name].append(_timed_run(predictors[name], batch))
    return times


def _timed_run(pred, batch):
    """Seconds of one run: the predictor's own ``timed_run`` (contract.Predictor; Paddle Lite
    times inside its process), else the wall time of ``run``."""
    if hasattr(pred, "timed_run"):
        return pred.timed_run(batch)
    t = time.perf_counter()
    pred.run(batch)
    return time.perf_counter() - t


def summarize(times, batch_size=1):
    """Median, p90 and mean in ms per image, and images per second."""
    out = {}
    for name, ts in times.items():
        ms = np.asarray(ts) * 1000 / batch_size
        out[name] = {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
                     "mean_ms": float(ms.mean()), "runs": len(ts),
                     "images_per_s": float(1000 / np.median(ms))}
    return out


# CPU features that decide what INT8 gains on x86: VNNI (AVX512_VNNI or AVX_VNNI) gives oneDNN
# u8s8 dot products in one instruction; without it INT8 convolutions can be slower than FP32
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def machine():
    """The CPU a timing ran on: name, cores, the ISA_FLAGS it has, load average."""
    name, flags = platform.processor(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    name = ln.split(":", 1)[1].strip()
                elif ln.startswith("flags"):
                    flags = set(ln.split(":", 1)[1].split())
    except OSError:
        pass
    return {"cpu": name, "cores": os.cpu_count(), "isa": [f for f in ISA_FLAGS if f in flags],
            "vnni": bool(flags & {"avx512_vnni", "avx_vnni"}), "load_average_1min": os.getloadavg()[0]}


def isa_label(m):
    """'VNNI' / 'AVX2, no VNNI' for a machine() record (older records without flags: '')."""
    if not m or "vnni" not in m:
        return ""
    return "VNNI" if m["vnni"] else ("AVX2, no VNNI" if "avx2" in m.get("isa", ()) else "no VNNI")
