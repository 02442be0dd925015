"""latency_all.md from the bench_latency.py results of benchmarks/zoo/latency_all.sh.

    python benchmarks/zoo/latency_all.py [benchmarks/zoo/latency_all]
"""
import glob
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main(src="benchmarks/zoo/latency_all"):
    rows, machine = [], None
    for path in sorted(glob.glob(os.path.join(src, "*.json"))):
        with open(path) as f:
            r = json.load(f)
        machine = machine or r["machine"]
        for name, m in r["models"].items():
            rows.append((os.path.basename(path)[:-5], r["input_shape"], m))
    lines = ["# Zoo latency with random weights (INT8/FP32, Paddle Inference, oneDNN)", "",
             f"Machine: {machine['cpu']}, {machine['cores']} cores, ISA {', '.join(machine['isa'])} "
             f"(VNNI: {'yes' if machine['vnni'] else 'no'}); 2 threads, batch 1, median of 3 interleaved "
             "runs after 1 warm-up; `sh benchmarks/zoo/latency_all.sh` then "
             "`python benchmarks/zoo/latency_all.py output/zoo_latency_all`. Latency does not depend on the weight values: each "
             "config's model is built with random weights, quantized and calibrated on random inputs "
             "(slim/quant/bench_latency.py). Entries missing here were not measured.", "",
             "| entry | input | FP32 ms | INT8 ms | INT8/FP32 | INT8 ops |", "|---|---|---|---|---|---|"]
    for name, shape, m in sorted(rows, key=lambda r: r[2]["ratio_int8_fp32"]):
        ops = ", ".join(f"{k} {v}" for k, v in sorted(m["int8_ops"].items()))
        lines.append(f"| {name} | {shape[2]}x{shape[3]} | {m['fp32']['median_ms']:.0f} | "
                     f"{m['int8']['median_ms']:.0f} | {m['ratio_int8_fp32']:.2f} | {ops} |")
    ok = sum(m["ratio_int8_fp32"] <= 0.5 for _, _, m in rows)
    lines += ["", f"{ok} of {len(rows)} at INT8/FP32 <= 0.5.", ""]
    with open(os.path.join(HERE, "latency_all.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main(*sys.argv[1:])
