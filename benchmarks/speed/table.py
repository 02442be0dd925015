"""Markdown tables of the latency records that benchmarks/speed/commands.sh writes.

    python benchmarks/speed/table.py output/speed > benchmarks/speed/latency.md
"""
import glob
import json
import os
import sys

RUNTIMES = ("paddle", "openvino", "onnxruntime")


def row(label, rec, name):
    m = rec["models"][name]
    cells = []
    for rt in RUNTIMES:
        r = m["runtimes"].get(rt)
        cells.append(f"{r['fp32']['median_ms']:.1f} → {r['int8']['median_ms']:.1f} ({r['ratio_int8_fp32']:.2f})"
                     if r else "")
    b = m["best"]
    return f"| {label} | " + " | ".join(cells) + f" | {b['ratio_int8_fp32']:.2f} ({b['int8_runtime']} / {b['fp32_runtime']}) |"


def main(folder):
    head = ("| model, input, code | Paddle FP32 → INT8 ms (ratio) | OpenVINO FP32 → INT8 ms (ratio) | "
            "ONNX Runtime FP32 → INT8 ms (ratio) | best INT8 / best FP32 |\n|---|---|---|---|---|")
    lines = [head]
    machine = None
    for path in sorted(glob.glob(os.path.join(folder, "latency_*.json"))):
        rec = json.load(open(path))
        machine = machine or rec["machine"]
        shape = "x".join(map(str, rec["input_shape"][2:]))
        for name in rec["models"]:
            lines.append(row(f"{name}, {shape}, now", rec, name))
            before = path.replace("latency_", "before_")
            if os.path.isfile(before):
                lines.append(row(f"{name}, {shape}, before", json.load(open(before)), name))
    m = machine
    print(f"Machine: {m['cpu']}, {m['cores']} cores, ISA {', '.join(m['isa'])} "
          f"(VNNI: {'yes' if m['vnni'] else 'no'}); paddle {m['paddle']}. Random weights, calibrated; "
          "2 threads; medians of interleaved runs (30 at 512x512 and 180x240, 10 at 512x1024).\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "output/speed")
