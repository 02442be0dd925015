"""Render the result tables of docs/results.md from the benchmark JSON files kept in benchmarks/.

    python benchmarks/render_readme_tables.py > output/tables.md

Numbers come only from the JSON files the benchmark commands wrote.
"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def latency():
    r = json.load(open(os.path.join(HERE, "latency_512.json")))
    out = ["| model | FP32 median (p90) ms | INT8 median (p90) ms | INT8/FP32 | params FP32 -> INT8 (MB) | INT8 convs |",
           "|---|---|---|---|---|---|"]
    for name, m in r["models"].items():
        out.append(f"| {name.split('_synthetic')[0]} | {m['fp32']['median_ms']:.1f} ({m['fp32']['p90_ms']:.1f}) "
                   f"| {m['int8']['median_ms']:.1f} ({m['int8']['p90_ms']:.1f}) | **{m['ratio_int8_fp32']:.2f}** "
                   f"| {m['params_mb']['fp32']:.2f} -> {m['params_mb']['int8']:.2f} | {sum(m['int8_ops'].values())} |")
    return "\n".join(out) + f"\n\n{r['repeats']} interleaved runs after {r['warmup']} warm-up, {r['cpu_threads']} threads.\n"


def real(run):
    r = json.load(open(os.path.join(HERE, run, "results.json")))
    fq = r.get("fake_quant", {})
    out = []
    for name, m in r["models"].items():
        extra = f" (fake-quant {fq['mIoU'] * 100:.2f})" if "agreement_with_fake_quant" in m else ""
        out.append(f"| {name} | {m['mIoU'] * 100:.2f}{extra} | {m['agreement_with_fp32'] * 100:.2f}% "
                   f"| {m['latency']['median_ms']:.1f} | {m['ratio_to_fp32']:.2f} | {m['params_mb']:.2f} |")
    return out, r


if __name__ == "__main__":
    print(latency())
    for run in sorted(d for d in os.listdir(HERE) if os.path.isfile(os.path.join(HERE, d, "results.json"))):
        rows, r = real(run)
        print(f"**{run}** ({r['num_images']} val images, input {r['input_shape'][2]}x{r['input_shape'][3]}, "
              f"[results.md]({'benchmarks/' + run + '/results.md'}))\n")
        print("| model | mIoU (%) | pixel agreement w/ FP32 | ms/img | INT8/FP32 | params (MB) |")
        print("|---|---|---|---|---|---|")
        print("\n".join(rows) + "\n")
