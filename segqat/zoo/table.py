"""The zoo's table: one row per entry from its state (the ✓ rule and the reason of every ✗),
then ``zoo.md``, ``zoo.json`` and ``zoo.png`` in ``out_dir``, keeping the rows of earlier
runs whose work dir is not here while their config is unchanged.
"""
import datetime
import json
import math
import os

from .. import bench
from .common import (BUILD_STEPS, CROSS_CHECK_RUNTIMES, LATENCY_STEPS, ROOT, ZooError, file_hash,
                     write_json)
from .measure import predicted_classes

MIN_AGREEMENT = 0.99
# a Paddle Inference row whose clear-margin pixels differ is put down to oneDNN's INT8
# requantization when OpenVINO, running the same export, agrees on at least this share of them
ONEDNN_CAUSE_CLEAR = 0.995
# a row is measured only on a model whose FP32 mIoU beats "every pixel is the most frequent
# class" by this much: below it the model labels (nearly) every pixel alike (see predicted_classes)
MIN_MIOU_GAIN = 0.10


def _pct(fraction):
    """A percentage with 2 decimals, rounded down: 98.996% is 98.99%, not a 99.00% below 99%."""
    return f"{math.floor(fraction * 10000 + 1e-9) / 100:.2f}%"


def _margin_cause(ev):
    """Why deployed INT8 and fake quant differ: near ties (weak margins) or real differences,
    and what the same export does on OpenVINO."""
    clear = ev.get("agreement_clear_margin")
    if clear is None:  # evaluated before margins were measured
        return ""
    share, tie = 100 * ev["clear_margin_share"], ev["near_tie"]
    ties = ev.get("disagreement_at_near_ties") or 0
    ov = ev.get("openvino") or {}
    ov_clear, ov_all = ov.get("agreement_clear_margin"), ov.get("agreement_int8_vs_fake_quant")
    use_openvino = (f"; OpenVINO runs the same export at {_pct(ov_all)} ({100 * ov_clear:.2f}% on clear "
                    "margins): deploy with --runtime openvino") if (
        ov_all is not None and ov_clear is not None and ov_all >= MIN_AGREEMENT) else ""
    if clear >= MIN_AGREEMENT:
        return (f"; {100 * ties:.0f}% of the differing pixels are near ties (fake quant's top-2 "
                f"probability margin < {tie:g}) and on the {share:.0f}% of pixels with a "
                f"clear margin it agrees on {100 * clear:.2f}%: " + (
                    use_openvino[2:] if use_openvino else
                    "the model's margins are too small, train longer (--fp32_iters)"))
    # a fact, not a cause: in DeepLabV3P making its 3 FP32 convolutions INT8 (deleting the
    # residual-add fusion that left them without a scale) did not change the agreement
    quantized = sum(n for t, n in (ev.get("quantized_ops") or {}).items() if "conv" in t)
    convs = (f"{quantized - ev['int8_convs']} of the {quantized} convolutions QAT quantized run in FP32 "
             "after Paddle Inference's optimization" if quantized > ev["int8_convs"]
             else "every quantized convolution runs INT8")
    text = (f"; even on the {share:.0f}% of pixels with a clear margin (>= {tie:g}) it agrees "
            f"on only {100 * clear:.2f}%: the deployed INT8 program computes something other than "
            f"fake quant ({convs})")
    if ov_clear is not None and ov_clear >= ONEDNN_CAUSE_CLEAR:
        return text + (f". The export itself computes fake quant: OpenVINO runs it at "
                       f"{100 * ov_clear:.2f}% on those pixels, so the difference is made by Paddle "
                       "Inference's oneDNN INT8 passes (benchmarks/zoo/onednn_grid)" + (
                           use_openvino or f"; on OpenVINO the near ties leave {_pct(ov_all)} in all: "
                                           "train longer (--fp32_iters)"))
    return text + "; not explained by the export: " + (
        f"OpenVINO agrees on {100 * ov_clear:.2f}% of them too" if ov_clear is not None
        else "no other runtime measured")


def _runtime_status(ev, rt):
    """(✓/✗/"", reason) of the cross-check runtime ``rt`` on an evaluated entry, by the rules
    Paddle Inference's rows follow (INT8 kernels, agreement, a model trained enough)."""
    r = (ev or {}).get(rt)
    if not r:
        return "", "not measured"
    if "error" in r:
        return "✗", r["error"]
    if ev["fp32_mIoU"] < ev.get("majority_class_mIoU", 0) + MIN_MIOU_GAIN:
        return "✗", "not trained enough to measure"
    if not r["int8_kernels"]:
        return "✗", "no INT8 kernel"
    if r["agreement_int8_vs_fake_quant"] < MIN_AGREEMENT:
        clear = r.get("agreement_clear_margin")
        return "✗", ("near ties" if clear is not None and clear >= MIN_AGREEMENT else "clear-margin pixels differ")
    return "✓", ""


def entry_row(name, e, work_dir=None):
    """One table row from an entry's state: status, reason and the measured numbers."""
    steps = (e or {}).get("steps", {})
    row = {"model": name, "model_type": (e or {}).get("model_type"), "status": "✗", "reason": None,
           "fp32_iters": (e or {}).get("fp32_iters"), "qat_iters": (e or {}).get("qat_iters"),
           "batch_size": (e or {}).get("batch_size"),
           "build_seconds": round(sum(steps.get(s, {}).get("seconds", 0) for s in BUILD_STEPS), 1)}
    for s in ("config",) + BUILD_STEPS:
        rec = steps.get(s)
        if rec and rec["status"] != "ok":
            row["reason"] = rec["reason"]
            row["failed_step"] = s
            break
    ev = steps.get("evaluate", {}).get("result") if steps.get("evaluate", {}).get("status") == "ok" else None
    if ev and "majority_class_mIoU" not in ev and work_dir:  # evaluated before these fields existed
        path = os.path.join(work_dir, name, "evaluate", "benchmark", "results.json")
        if os.path.isfile(path):
            with open(path) as f:
                ev = dict(ev, **predicted_classes(json.load(f)))
    if ev:
        row.update(ev)
        if ev["fp32_mIoU"] < ev.get("majority_class_mIoU", 0) + MIN_MIOU_GAIN:
            row["reason"] = (f"not trained enough to measure: after {row['fp32_iters']} iterations FP32 mIoU "
                             f"{100 * ev['fp32_mIoU']:.1f} is not {100 * MIN_MIOU_GAIN:.0f} points above the "
                             f"{100 * ev['majority_class_mIoU']:.1f} of labelling every pixel with the most "
                             f"frequent class (FP32 predicts {ev['predicted_classes_fp32']} of "
                             f"{ev['num_classes']} classes), so the agreement "
                             f"({_pct(ev['agreement_int8_vs_fake_quant'])}) says little; train longer "
                             "(--fp32_iters)")
        elif ev["int8_convs"] == 0:
            row["reason"] = "no convolution runs INT8 in the optimized program"
        elif ev["agreement_int8_vs_fake_quant"] < MIN_AGREEMENT:
            row["reason"] = (f"deployed INT8 agrees with its fake-quant model on "
                             f"{_pct(ev['agreement_int8_vs_fake_quant'])} of pixels "
                             f"(< {100 * MIN_AGREEMENT:.0f}%)" + _margin_cause(ev))
        else:
            row["status"] = "✓"
    elif row["reason"] is None:
        done = [s for s in BUILD_STEPS if steps.get(s, {}).get("status") == "ok"]
        row["reason"] = "not built yet" + (f" (done: {', '.join(done)})" if done else "")
        row["status"] = "…"
    for rt in CROSS_CHECK_RUNTIMES:
        if ev and ev.get(rt):
            row[f"{rt}_status"], row[f"{rt}_reason"] = _runtime_status(ev, rt)
    lat = steps.get("latency")
    if lat and lat["status"] == "ok":
        row["latency"] = lat["result"]
    elif lat:
        row["latency_error"] = lat["reason"]
    return row


def _iteration_groups(rows):
    groups = {}
    for r in rows:
        if r.get("fp32_iters"):
            key = f"{r['fp32_iters']} / {r['qat_iters']} (batch {r['batch_size']})"
            groups.setdefault(key, []).append(r["model"])
    return groups


def _majority_text(rows):
    values = sorted({round(100 * r["majority_class_mIoU"], 1) for r in rows if r.get("majority_class_mIoU")})
    return f", {' / '.join(map(str, values))} here" if values else ""


RUNTIME_NAMES = {"paddle": "Paddle Inference", "openvino": "OpenVINO", "onnxruntime": "ONNX Runtime"}


def _cross_check_cell(row, rt):
    """Table cell of a cross-check runtime: status, agreement (clear-margin agreement), or why not."""
    status = row.get(f"{rt}_status")
    if not status:
        return "not measured"
    r = row[rt]
    if "error" in r:
        return f"✗ {r['error']}".replace("|", "\\|")
    text = f"{status} {_pct(r['agreement_int8_vs_fake_quant'])}"
    if r.get("agreement_clear_margin") is not None:
        text += f" ({100 * r['agreement_clear_margin']:.2f}%)"
    return text + (f", {row[f'{rt}_reason']}" if row.get(f"{rt}_reason") else "")


def _cross_check_summary(rows):
    parts = []
    for rt in CROSS_CHECK_RUNTIMES:
        measured = [r for r in rows if r.get(f"{rt}_status")]
        ok = sum(r[f"{rt}_status"] == "✓" for r in measured)
        both = sum(r[f"{rt}_status"] == "✓" and r["status"] == "✓" for r in measured)
        parts.append(f"{RUNTIME_NAMES[rt]}, running the same INT8 exports (the last column; by the same rules, "
                     f"its INT8 output against the same fake-quant model): {ok} of the {len(measured)} entries it "
                     f"ran ✓, {both} of them also ✓ on Paddle Inference"
                     + (f"; the other {len(rows) - len(measured)} entries were evaluated before it was added "
                        "(rebuilding them, or `--rerun_steps evaluate` where their work dir is kept, adds it)"
                        if len(measured) < len(rows) else ""))
    return "Status ✓/✗ is Paddle Inference's. " + ". ".join(parts) + "."


def markdown(rows, meta):
    ok = sum(r["status"] == "✓" for r in rows)
    built = sum(r["status"] != "…" for r in rows)
    lines = [
        "# Model zoo: PaddleSeg 2.8 families, FP32 -> QAT -> INT8 (Paddle Inference, oneDNN)", "",
        f"{ok} of {len(rows)} entries ✓ ({built} built). Last written on {meta['updated']} by "
        f"`{meta['command']}`; paddle {meta.get('paddle', '?')}.", "",
        _cross_check_summary(rows), "",
        "Each entry (configs/zoo/<model>.yml) is trained from scratch on the zoo's synthetic data "
        "(configs/_base_/synthetic_zoo.yml: 64x64, 4 classes, large objects, 200 train / 40 val images; "
        "AdamW at 0.002, the transformer families with their own AdamW settings): FP32 for the "
        "iterations below, then QAT from those weights for a quarter of them at a tenth of the "
        "learning rate, then exported (FP32 and INT8) and run with Paddle Inference on the validation "
        "images. ✓: INT8 kernels proven in the optimized program, the deployed INT8 model agrees with "
        "its fake-quant model on >= 99% of pixels, and the FP32 model is trained enough for that to "
        f"mean something (mIoU >= {100 * MIN_MIOU_GAIN:.0f} points above labelling every pixel with the "
        f"most frequent class{_majority_text(rows)}). Below 99%, the reason says whether the differing "
        "pixels are near ties (fake quant's top-2 softmax probabilities within 0.1: small margins, "
        "train longer) or not (the INT8 program computes something else); the agreement column gives "
        "the agreement on the pixels with a clear margin in brackets. mIoU values are of small, "
        "briefly trained models: they only compare FP32, fake-quant and INT8 with each other.", "",
        "Training lengths (FP32 / QAT iterations, batch size): "
        + "; ".join(f"{k}: {', '.join(v)}" for k, v in _iteration_groups(rows).items()) + ".", "",
        "| model | | FP32 / QAT iters (batch) | mIoU FP32 / fake-quant / INT8 | INT8 vs fake-quant | "
        "INT8 convs | params INT8/FP32 | INT8/FP32 latency | build (s) | reason | "
        + " | ".join(f"{RUNTIME_NAMES[rt]} INT8 vs fake-quant" for rt in CROSS_CHECK_RUNTIMES) + " |",
        "|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(CROSS_CHECK_RUNTIMES)]
    for r in rows:
        it = (f"{r['fp32_iters']} / {r['qat_iters']} ({r['batch_size']})" if r.get("fp32_iters") else "")
        miou = agree = convs = size = ""
        if "fp32_mIoU" in r:
            miou = f"{100 * r['fp32_mIoU']:.1f} / {100 * r['fake_quant_mIoU']:.1f} / {100 * r['int8_mIoU']:.1f}"
            agree = _pct(r['agreement_int8_vs_fake_quant'])
            if r.get("agreement_clear_margin") is not None:
                agree += f" ({100 * r['agreement_clear_margin']:.2f}%)"
            convs = f"{r['int8_convs']}/{r['all_convs']}"
            size = f"{r['params_ratio']:.2f} ({r['params_mb_fp32']:.1f} -> {r['params_mb_int8']:.1f} MB)"
        if "latency" in r:
            la = r["latency"]
            isa = bench.isa_label(la.get("machine"))
            lat = (f"{la['ratio']:.2f} ({la['fp32_ms']:.0f} -> {la['int8_ms']:.0f} ms, "
                   f"{la['input_shape'][2]}x{la['input_shape'][3]}{', ' + isa if isa else ''})")
        elif "latency_error" in r:
            lat = "failed: " + r["latency_error"]
        else:
            lat = "not measured"
        reason = (r["reason"] or "").replace("|", "\\|")
        cross = " | ".join(_cross_check_cell(r, rt) for rt in CROSS_CHECK_RUNTIMES)
        lines.append(f"| {r['model']} ({r['model_type'] or '?'}) | {r['status']} | {it} | {miou} | {agree} "
                     f"| {convs} | {size} | {lat} | {r['build_seconds']:.0f} | {reason} | {cross} |")
    lines += ["", "Columns: mIoU of the deployed FP32 model, the QAT model in fake quantization (dygraph) "
              "and the deployed INT8 model; pixel agreement of deployed INT8 with fake quant on the "
              "validation images; convolutions of the optimized INT8 program that run oneDNN INT8 "
              "kernels, out of all its convolutions; size of model.pdiparams; latency: median of "
              "interleaved runs, batch 1, 2 threads, 1x3x512x1024 (or 512x512 where a model fails at "
              "that size), measured separately on an idle machine "
              "(`python tools/zoo.py --phase latency`).", ""]
    if meta.get("carried_over"):
        lines += [f"Rows of {', '.join(meta['carried_over'])} are carried over from an earlier run of this "
                  "table whose work dir is not here; their configs are unchanged since (same file hash).", ""]
    if meta.get("runs"):
        lines.append("Runs (work dir `" + meta["work_dir"] + "`" + (" and earlier ones" if meta.get("carried_over")
                                                                    else "") + "):")
        lines += [f"- {r['time']} {r['event']}: `{r['command']}`"
                  + (f" ({r['seconds']} s)" if r.get("seconds") is not None else "") for r in meta["runs"]]
        lines.append("")
    if meta.get("phase_seconds"):
        lines.append("Time per phase (sum of step times, seconds): " + ", ".join(
            f"{k} {v:.0f}" for k, v in meta["phase_seconds"].items()) + ".")
        lines.append("")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [r["model"] for r in rows]
    y = list(range(len(rows)))[::-1]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 0.32 * len(rows) + 1.6), sharey=True)
    # the agreement axis starts at 90%, or lower when a row is below that (its bar must show)
    lo = min([90] + [math.floor(100 * r["agreement_int8_vs_fake_quant"]) - 1 for r in rows
                     if "agreement_int8_vs_fake_quant" in r]
             + [math.floor(100 * r[rt]["agreement_int8_vs_fake_quant"]) - 1 for r in rows
                for rt in CROSS_CHECK_RUNTIMES if "agreement_int8_vs_fake_quant" in (r.get(rt) or {})])
    for yi, r in zip(y, rows):
        if "agreement_int8_vs_fake_quant" in r:
            v = 100 * r["agreement_int8_vs_fake_quant"]
            a1.barh(yi, v, color="#8d8" if r["status"] == "✓" else "#f99")
            a1.text(lo + 0.15, yi, f"{_pct(v / 100)}   {r['int8_convs']}/{r['all_convs']} convs INT8", va="center",
                    fontsize=7)
            for rt, marker in zip(CROSS_CHECK_RUNTIMES, "Ds^"):
                other = (r.get(rt) or {}).get("agreement_int8_vs_fake_quant")
                if other is not None:
                    a1.plot(max(100 * other, lo + 0.05), yi, marker=marker, color="#226", ms=4, ls="none")
        elif r["status"] == "✗":
            a1.text(lo + 0.15, yi, f"✗ {r['reason'][:95]}", va="center", fontsize=6.5, color="#a22")
        else:
            a1.text(lo + 0.15, yi, r["reason"], va="center", fontsize=7, color="#777")
        if "latency" in r:
            la = r["latency"]
            a2.barh(yi, la["ratio"], color="#8d8" if la["ratio"] <= 0.5 else "#fc6")
            isa = bench.isa_label(la.get("machine"))
            a2.text(la["ratio"] + 0.01, yi, f"{la['ratio']:.2f} ({la['fp32_ms']:.0f}->{la['int8_ms']:.0f} ms"
                    f"{'' if la['input_shape'][3] == 1024 else ', 512x512'}{', ' + isa if isa else ''})",
                    va="center", fontsize=7)
        else:
            a2.text(0.02, yi, "not measured" if "latency_error" not in r else "failed", va="center",
                    fontsize=7, color="#777")
    a1.set_xlim(lo, 100.5)
    a1.set_ylim(-0.7, len(rows) - 0.3)
    a1.axvline(100 * MIN_AGREEMENT, color="k", lw=0.8, ls="--")
    a1.set_xlabel(f"deployed INT8 vs fake-quant pixel agreement (%), axis from {lo}%; dashed: 99%\n"
                  "bars: Paddle Inference; " + ", ".join(f"{m}: {RUNTIME_NAMES[rt]}" for rt, m in
                                                        zip(CROSS_CHECK_RUNTIMES, ("◆", "■", "▲"))))
    a1.set_yticks(y)
    a1.set_yticklabels([f"{r['status']} {n}" for r, n in zip(rows, names)], fontsize=8)
    # room for the largest ratio and its label (text outside the axes breaks the layout)
    ratios = [r["latency"]["ratio"] for r in rows if "latency" in r]
    a2.set_xlim(0, max([1.4] + [x + 0.9 for x in ratios]))
    a2.axvline(0.5, color="k", lw=0.8, ls="--")
    a2.set_xlabel("INT8 / FP32 latency (1x3x512x1024, 2 threads); dashed: 0.5")
    ok = sum(r["status"] == "✓" for r in rows)
    fig.suptitle(f"segqat model zoo: {ok}/{len(rows)} ✓ (green ✓; red ✗: agreement < 99%, FP32 model not "
                 "trained enough to judge, or an error; reasons in zoo.md)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(state, entries, args):
    """zoo.md, zoo.json and zoo.png in args.out_dir from the state of every entry."""
    with state.lock:
        data = json.loads(json.dumps(state.data))
    previous, previous_meta = _previous_table(args.out_dir)
    rows, carried = [], []
    for name, config in entries.items():
        e, config_hash = data.get(name), file_hash(config)
        old = previous.get(name)
        if e and e.get("config_hash") != config_hash:  # results of an earlier version
            row = entry_row(name, None)
            row["reason"] = f"{os.path.relpath(config, ROOT)} changed since its last build: not built with it yet"
        elif not e and old and old.get("status") != "…" and old.get("config_hash") == config_hash:
            # built by an earlier run whose work dir is not here (another machine, a fresh
            # clone): the table keeps that run's row as long as the config is the same
            row = dict(old, carried_over=True)
            carried.append(name)
        else:
            row = entry_row(name, e, args.work_dir)
            row["config_hash"] = config_hash
            row.pop("carried_over", None)
        rows.append(row)
    phase_seconds = {}
    for e in data.values():
        for s, rec in e.get("steps", {}).items():
            ph = "latency" if s in LATENCY_STEPS else "build"
            phase_seconds[ph] = phase_seconds.get(ph, 0) + rec.get("seconds", 0)
    try:
        import paddle
        pv = paddle.__version__
    except Exception:  # pragma: no cover
        pv = "?"
    meta = {"command": "python tools/zoo.py " + " ".join(getattr(args, "argv", []) or []),
            "updated": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "paddle": pv,
            "work_dir": args.work_dir, "phase_seconds": phase_seconds, "min_agreement": MIN_AGREEMENT,
            "runs": _merge_runs(previous_meta.get("runs", []) if carried else [], _read_runs(args.work_dir)),
            "carried_over": carried}
    os.makedirs(args.out_dir, exist_ok=True)
    write_json(os.path.join(args.out_dir, "zoo.json"), {"meta": meta, "rows": rows})
    with open(os.path.join(args.out_dir, "zoo.md"), "w") as f:
        f.write(markdown(rows, meta))
    plot(rows, os.path.join(args.out_dir, "zoo.png"))
    return rows


def _previous_table(out_dir):
    """Rows ({model: row}) and meta of out_dir/zoo.json as an earlier run wrote it."""
    path = os.path.join(out_dir, "zoo.json")
    if not os.path.isfile(path):
        return {}, {}
    try:
        with open(path) as f:
            table = json.load(f)
        return {r["model"]: r for r in table["rows"]}, table.get("meta", {})
    except (ValueError, KeyError, TypeError) as e:
        raise ZooError(f"{path}: not a zoo table ({type(e).__name__}: {e}); move it away or give another "
                       "--out_dir") from e


def _merge_runs(*lists):
    """Run records of several work dirs, each once, in time order."""
    seen, out = set(), []
    for r in sorted((r for runs in lists for r in runs), key=lambda r: r["time"]):
        key = (r["time"], r["event"], r["command"])
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def _read_runs(work_dir):
    path = os.path.join(work_dir, "runs.json")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return json.load(f)

