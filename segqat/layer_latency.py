"""Which kinds of layer pay in INT8 on a runtime, measured in the whole model.

    res = layer_latency.measure(cfg, "paddle", [1, 3, 512, 512], threads=2)
    kinds = layer_latency.faster_in_fp32(res, min_gain=0.02)   # for quant_config.skip_layer_kinds

A runtime runs a layer in INT8 only where it has an INT8 kernel for it, and some of
those kernels are slower than the FP32 ones (oneDNN's reference loop for depthwise
convolutions that multiply their channels, on AVX2; OpenVINO's gemm-based grouped
INT8 convolution): there, quantizing the layer costs time and accuracy for nothing.

The quantizable layers are sorted into kinds (``quant.LAYER_KINDS``: dense 1x1 / kxk convolutions,
depthwise, channel-multiplying depthwise, other grouped convolutions, Linear). For each
kind present, the model is exported INT8 with that kind left FP32, and all the
variants, the all-INT8 model and the FP32 model are timed interleaved on the runtime,
whole: the quantize / dequantize / reorder work that leaving a layer FP32 adds or
saves is in the figure. A kind is worth leaving FP32 when its variant is faster than
the all-INT8 model by more than ``min_gain``.
"""
import logging
import os
import tempfile

import numpy as np

logger = logging.getLogger(__name__)

def layers_by_kind(cfg, qc, model_path=None):
    """``{kind: [layer names]}`` of the layers ``qc`` would quantize."""
    from . import quant
    model, _ = quant.build_model(cfg, model_path)
    skipped = set(quant.mark_skipped(model, qc))
    kinds = quant.quantizable_types(qc)
    out = {}
    for name, layer in model.named_sublayers():
        if isinstance(layer, kinds) and name not in skipped:
            out.setdefault(quant.layer_kind(layer), []).append(name)
    return out


def _export_int8(cfg, qc, skip, d, input_shape, model_path):
    from . import quant
    q = dict(qc, skip_layers=list(qc.get("skip_layers") or []) + list(skip))
    return quant.export_calibrated_int8(cfg, d, input_shape, np.random.RandomState(0), model_path,
                                        batches=2, qc=q)


def measure(cfg, runtime, input_shape, threads=2, warmup=5, repeats=20, model_path=None, kinds=None):
    """``{"fp32_ms", "int8_ms", "kinds": [{"kind", "layers", "ms", "gain"}]}``: the all-INT8
    model, the FP32 model, and the INT8 model with each kind left FP32 (``gain``: the
    fraction of the all-INT8 time that leaving it FP32 saves; negative = it costs)."""
    from . import bench, deploy, export, quant
    # every kind quantized in the reference model, whatever the config leaves float
    qc = dict(quant.quant_settings(cfg, purpose="export"), skip_layer_kinds=[])
    groups = layers_by_kind(cfg, qc, model_path)
    if kinds:  # only these kinds get a variant (the others stay INT8 in every model)
        groups = {k: v for k, v in groups.items() if k in kinds}
    options = {"min_agreement": 0} if runtime == "onnxruntime" else {}
    preds = {}
    with tempfile.TemporaryDirectory(prefix="segqat_kinds_") as d:
        model, _ = quant.build_model(cfg, model_path)
        dirs = {"fp32": export.export_model(cfg, model, os.path.join(d, "fp32"), input_shape),
                "int8": _export_int8(cfg, qc, [], os.path.join(d, "int8"), input_shape, model_path)}
        for kind, names in groups.items():
            logger.info("INT8 with %d %s layer(s) left FP32", len(names), kind)
            dirs[kind] = _export_int8(cfg, qc, names, os.path.join(d, kind), input_shape, model_path)
        try:
            for k, p in dirs.items():
                preds[k] = deploy.create_predictor(p, runtime=runtime, precision="fp32" if k == "fp32" else "int8",
                                                   threads=threads, **options)
            x = np.random.RandomState(1).rand(*input_shape).astype("float32") * 2 - 1
            t = bench.summarize(bench.interleaved_latency(preds, x, warmup, repeats))
        finally:
            for p in preds.values():
                p.close()
    base = t["int8"]["median_ms"]
    rows = [{"kind": k, "layers": groups[k], "ms": t[k]["median_ms"], "gain": 1 - t[k]["median_ms"] / base}
            for k in groups]
    return {"fp32_ms": t["fp32"]["median_ms"], "int8_ms": base, "kinds": rows}


def faster_in_fp32(result, min_gain=0.02):
    """The kinds whose FP32 variant saves more than ``min_gain`` of the all-INT8 time."""
    return [r["kind"] for r in result["kinds"] if r["gain"] > min_gain]


def markdown(result, runtime, input_shape, min_gain, machine, command):
    f, q = result["fp32_ms"], result["int8_ms"]
    lines = [f"# Which layers pay in INT8 on {runtime}, input {'x'.join(map(str, input_shape))}", "",
             f"Machine: {machine['cpu']}, {machine['cores']} cores, ISA {', '.join(machine['isa']) or '?'}; "
             f"paddle {machine.get('paddle', '?')}. Whole-model medians of interleaved runs.", "",
             f"`{command}`", "",
             f"FP32 {f:.2f} ms; all quantizable layers INT8 {q:.2f} ms (INT8/FP32 {q / f:.2f}).", "",
             "| kind left FP32 | layers | INT8 model ms | INT8/FP32 | saves | stays FP32 |",
             "|---|---:|---:|---:|---:|---|"]
    for r in sorted(result["kinds"], key=lambda r: -r["gain"]):
        lines.append(f"| {r['kind']} | {len(r['layers'])} | {r['ms']:.2f} | {r['ms'] / f:.2f} | "
                     f"{100 * r['gain']:+.1f}% | {'yes' if r['gain'] > min_gain else ''} |")
    return "\n".join(lines) + "\n"
