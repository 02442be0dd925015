"""Where OpenVINO spends BiSeNetV2's time at 1x3x512x512, FP32 and INT8 (2 threads, f32
precision hint): per-layer times from OpenVINO's PERF_COUNT, summed by (layer type,
kernel), mean of 10 runs after 5 warm-ups. Weights are random, the INT8 model's
quantizers calibrated on random inputs, as in slim/quant/bench_latency.py.

    python benchmarks/openvino_profile/profile.py [--work_dir output/openvino_profile]
"""
import argparse
import os
import statistics
import sys
import time
from collections import defaultdict

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import numpy as np  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/bisenetv2/bisenetv2_camvid_240x180.yml")
    ap.add_argument("--work_dir", default="output/openvino_profile")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from segqat import export, quant
    from segqat.config import load_config
    import openvino as ov
    shape = [1, 3, 512, 512]
    rng = np.random.RandomState(0)
    if not os.path.isdir(os.path.join(args.work_dir, "int8")):
        cfg = load_config(args.config)
        model, _ = quant.build_model(cfg)
        export.export_model(cfg, model, os.path.join(args.work_dir, "fp32"), shape)
        quant.export_calibrated_int8(cfg, os.path.join(args.work_dir, "int8"), shape, rng)
    core = ov.Core()
    x = rng.rand(*shape).astype("float32") * 2 - 1
    for k in ("fp32", "int8"):
        compiled = core.compile_model(core.read_model(os.path.join(args.work_dir, k, "model.pdmodel")), "CPU", {
            "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": args.threads, "PERF_COUNT": True,
            "PERFORMANCE_HINT": "LATENCY"})
        req = compiled.create_infer_request()
        for _ in range(5):
            req.infer({0: x})
        total, count, times = defaultdict(float), defaultdict(int), []
        for _ in range(10):
            t0 = time.perf_counter()
            req.infer({0: x})
            times.append(1000 * (time.perf_counter() - t0))
            for p in req.profiling_info:
                total[(p.node_type, p.exec_type)] += p.real_time.total_seconds() * 100  # ms, mean of 10
                count[(p.node_type, p.exec_type)] += 1
        print(f"{k.upper()}: median {statistics.median(times):.1f} ms per image, layers sum to "
              f"{sum(total.values()):.1f} ms")
        for key, ms in sorted(total.items(), key=lambda kv: -kv[1])[:8]:
            print(f"  {ms:6.2f} ms  {count[key] // 10:3d} x {key[0]} ({key[1]})")


if __name__ == "__main__":
    main()
