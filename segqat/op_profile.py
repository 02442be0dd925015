"""Where a deployed model spends its time, per op type and per layer, FP32 vs INT8, per runtime.

    from segqat import op_profile
    prof = op_profile.profile_runtime("output/qat_infer", "openvino", "int8", x, threads=2, runs=20)
    prof["ops"]["Convolution"]  # {"ms": 3.1, "count": 56, "int8": 56, "fp32": 0, "convert": 0}

Each runtime reports through its own profiler:

* Paddle Inference: Paddle's operator profiler (``Config.enable_profile``, reset after
  the warm-up runs) gives the time per op type; oneDNN's verbose log (``ONEDNN_VERBOSE=1``)
  gives each primitive's kernel (``jit_uni_int8:avx2``, ``brg_conv_fwd:avx2``, ``ref:any``
  = oneDNN's reference C++ loop), data type and shape: the per-layer view. oneDNN reads
  its verbose switch once per process, so this runtime is profiled in a child process.
* OpenVINO: its per-layer counters (``PERF_COUNT``): layer type, kernel (``exec_type``:
  ``brgconv_avx2_I8``, ``jit_avx2_FP32``, ...), time.
* ONNX Runtime: its profiler's JSON (``SessionOptions.enable_profiling``): each node's op
  type (``QLinearConv``, ``ConvInteger``, ``Conv``, ...) and kernel time.

Every op or layer is classed as ``int8`` (it computes on 8-bit integers), ``convert``
(moves data between types or layouts: quantize, dequantize, reorder, cast) or ``fp32``.
Times are means per run over ``runs`` runs after a warm-up; profiling itself adds a
little, so the wall-clock median beside them (``wall_ms``) is the one to compare models by.
"""
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from collections import defaultdict

import numpy as np

logger = logging.getLogger(__name__)

RUNTIMES = ("paddle", "openvino", "onnxruntime")
KINDS = ("int8", "convert", "fp32")
_MARK = "segqat-op-profile-timed-runs"

# Paddle op types that move data between types or layouts (the rest compute; INT8 is
# decided from the optimized program's mkldnn_data_type)
_PADDLE_CONVERT = {"quantize", "dequantize", "requantize", "reorder", "cast", "transfer_layout",
                   "quantize_linear", "dequantize_linear"}
# OpenVINO layer types that only convert
_OV_CONVERT = {"Reorder", "Convert", "FakeQuantize", "Subgraph_FakeQuantize"}
# ONNX Runtime
_ORT_INT8 = {"QLinearConv", "ConvInteger", "MatMulInteger", "QLinearMatMul", "QLinearAdd",
             "QLinearMul", "QLinearConcat", "QLinearAveragePool", "QLinearGlobalAveragePool",
             "QLinearSigmoid", "QLinearLeakyRelu", "MaxPool_int8", "DynamicQuantizeMatMul"}
_ORT_CONVERT = {"QuantizeLinear", "DequantizeLinear", "Cast", "DynamicQuantizeLinear"}


def _add(ops, op_type, kind, ms, count=1):
    e = ops.setdefault(op_type, {"ms": 0.0, "count": 0, **{k: 0 for k in KINDS}})
    e["ms"] += ms
    e["count"] += count
    e[kind] += count


# ---------------------------------------------------------------- Paddle Inference

_EVENT = re.compile(r"^thread\d+::(\S+)\s+(\d+)\s+([\d.]+)")


def parse_paddle_report(text, runs):
    """``{op type: (ms per run, calls per run)}`` from Paddle's profiling report."""
    out = {}
    for line in text.splitlines():
        m = _EVENT.match(line.strip())
        if m:
            op, calls, total = m.group(1), int(m.group(2)), float(m.group(3))
            out[op] = (total / runs, calls / runs)
    return out


def parse_onednn_verbose(lines):
    """oneDNN ``exec`` lines as dicts: primitive, kernel, int8 (src or dst 8-bit), shape, ms."""
    prims = []
    for line in lines:
        f = line.strip().split(",")
        if len(f) < 10 or f[0] != "onednn_verbose" or "exec" not in f[:4]:
            continue
        i = f.index("exec")
        prim, kernel, mem, shape = f[i + 2], f[i + 3], f[i + 5], f[-2]
        try:
            ms = float(f[-1])
        except ValueError:
            continue
        dtypes = re.findall(r"(?:src|dst):(\w+?):", mem)
        prims.append({"primitive": prim, "kernel": kernel, "ms": ms, "shape": shape,
                      "int8": any(d in ("u8", "s8") for d in dtypes) and prim != "reorder",
                      "dtypes": "/".join(dtypes)})
    return prims


def _paddle_worker(infer_dir, precision, shape, threads, warmup, runs, out_json):
    """Run in a child process with ONEDNN_VERBOSE=1: time, profile and log one predictor."""
    import paddle.base.core as core
    from . import deploy
    x = np.random.RandomState(0).rand(*shape).astype("float32") * 2 - 1
    pred = deploy.create_predictor(infer_dir, runtime="paddle", precision=precision, threads=threads,
                                   profile=True)
    kinds = defaultdict(lambda: [0, 0])  # op type -> [int8, other] in the optimized program
    for (t, dt), n in pred.optimized_op_types().items():
        kinds[t][0 if dt == "int8" else 1] += n
    for _ in range(warmup):
        pred.run(x)
    core.reset_profiler()
    sys.stdout.flush()
    print(_MARK, flush=True)
    wall = pred.benchmark(x, warmup=0, repeats=runs)
    print(_MARK, flush=True)
    with open(out_json, "w") as f:
        json.dump({"wall_ms": float(np.median(wall)) * 1000, "kinds": dict(kinds)}, f)
    pred.close()
    del pred  # the profiling report is printed when the predictor is destroyed


def _profile_paddle(infer_dir, precision, shape, threads, warmup, runs):
    with tempfile.TemporaryDirectory(prefix="segqat_prof_") as tmp:
        out = os.path.join(tmp, "result.json")
        code = ("import sys; sys.path.insert(0, %r); import numpy; from segqat import op_profile; "
                "op_profile._paddle_worker(%r, %r, %r, %d, %d, %d, %r)"
                % (os.path.dirname(os.path.dirname(os.path.abspath(__file__))), str(infer_dir),
                   precision, list(shape), threads, warmup, runs, out))
        env = dict(os.environ, ONEDNN_VERBOSE="1", GLOG_minloglevel="2")
        # cwd: Paddle's profiler writes a profile.log into the working folder
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                              cwd=tmp)
        if proc.returncode or not os.path.isfile(out):
            raise RuntimeError(f"profiling {infer_dir} on Paddle Inference failed "
                               f"(exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        with open(out) as f:
            res = json.load(f)
    parts = proc.stdout.split(_MARK)
    timed = parts[1].splitlines() if len(parts) >= 3 else []
    report = parts[-1] + proc.stderr
    ops = {}
    for op, (ms, calls) in parse_paddle_report(report, runs).items():
        if op.startswith(("Executor", "load_combine", "feed", "fetch")):
            continue
        n8, nother = res["kinds"].get(op, [0, 0])
        e = ops.setdefault(op, {"ms": 0.0, "count": 0, **{k: 0 for k in KINDS}})
        e["ms"] += ms
        e["count"] += round(calls)
        if op in _PADDLE_CONVERT:
            e["convert"] += round(calls)
        elif n8:  # the optimized program says which of this type's ops run INT8
            e["int8"] += n8
            e["fp32"] += nother
        else:
            e["fp32"] += round(calls)
    prims = parse_onednn_verbose(timed)
    layers = defaultdict(lambda: {"ms": 0.0, "count": 0})
    for p in prims:
        key = (p["primitive"], p["kernel"], p["shape"], p["dtypes"])
        layers[key]["ms"] += p["ms"] / runs
        layers[key]["count"] += 1
    top = [{"layer": f"{k[0]} {k[2]}", "type": k[0], "kernel": k[1], "dtypes": k[3],
            "kind": "convert" if k[0] == "reorder" else ("int8" if any(d in k[3] for d in ("u8", "s8"))
                                                         else "fp32"),
            "ms": v["ms"], "count": v["count"] // runs or 1}
           for k, v in layers.items()]
    kernels = defaultdict(float)
    for p in prims:
        kernels[p["kernel"]] += p["ms"] / runs
    return {"wall_ms": res["wall_ms"], "ops": ops, "layers": sorted(top, key=lambda r: -r["ms"]),
            "kernels": dict(kernels)}


# ---------------------------------------------------------------- OpenVINO

def _ov_kind(layer_type, exec_type):
    if layer_type in _OV_CONVERT:
        return "convert"
    e = exec_type.lower()
    return "int8" if ("i8" in e or "u8" in e) else "fp32"


def _profile_openvino(infer_dir, precision, shape, threads, warmup, runs):
    import time
    from . import deploy
    x = np.random.RandomState(0).rand(*shape).astype("float32") * 2 - 1
    pred = deploy.create_predictor(infer_dir, runtime="openvino", precision=precision, threads=threads,
                                   perf_count=True)
    for _ in range(warmup):
        pred.run(x)
    ops, layers, wall = {}, defaultdict(lambda: {"ms": 0.0}), []
    kernels = defaultdict(float)
    for _ in range(runs):
        t = time.perf_counter()
        pred.run(x)
        wall.append((time.perf_counter() - t) * 1000)
        for p in pred.request.profiling_info:
            ms = p.real_time.total_seconds() * 1000 / runs
            if p.status.name != "EXECUTED":
                continue
            kind = _ov_kind(p.node_type, p.exec_type)
            _add(ops, p.node_type, kind, ms, 0)
            layers[(p.node_name, p.node_type, p.exec_type, kind)]["ms"] += ms
            kernels[p.exec_type] += ms
    # counts per run (not summed over runs)
    for (name, t, ex, kind), v in layers.items():
        ops[t]["count"] += 1
        ops[t][kind] += 1
    pred.close()
    top = [{"layer": k[0], "type": k[1], "kernel": k[2], "kind": k[3], "ms": v["ms"], "count": 1}
           for k, v in layers.items()]
    return {"wall_ms": float(np.median(wall)), "ops": ops, "layers": sorted(top, key=lambda r: -r["ms"]),
            "kernels": dict(kernels)}


# ---------------------------------------------------------------- ONNX Runtime

def _ort_kind(op):
    return "int8" if op in _ORT_INT8 else ("convert" if op in _ORT_CONVERT else "fp32")


def _profile_onnxruntime(infer_dir, precision, shape, threads, warmup, runs):
    from . import deploy
    x = np.random.RandomState(0).rand(*shape).astype("float32") * 2 - 1
    with tempfile.TemporaryDirectory(prefix="segqat_prof_") as tmp:
        pred = deploy.create_predictor(infer_dir, runtime="onnxruntime", precision=precision,
                                       threads=threads, min_agreement=0,
                                       profile_prefix=os.path.join(tmp, "ort"))
        wall = [t * 1000 for t in pred.benchmark(x, warmup=warmup, repeats=runs)]
        events = _ort_events(pred.session.end_profiling())
        pred.close()
    # the last `runs` model runs: ORT numbers its runs in the event list ("model_run")
    model_runs = [e for e in events if e.get("name") == "model_run"]
    cut = model_runs[-runs]["ts"] if len(model_runs) >= runs else 0
    ops, layers, kernels = {}, defaultdict(lambda: {"ms": 0.0, "count": 0}), defaultdict(float)
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < cut:
            continue
        op = e.get("args", {}).get("op_name", "?")
        name = e["name"][: -len("_kernel_time")]
        ms = e["dur"] / 1000 / runs
        kind = _ort_kind(op)
        layers[(name, op, kind)]["ms"] += ms
        layers[(name, op, kind)]["count"] += 1
        kernels[op] += ms
    for (name, op, kind), v in layers.items():
        _add(ops, op, kind, v["ms"])
    top = [{"layer": k[0], "type": k[1], "kernel": k[1], "kind": k[2], "ms": v["ms"], "count": 1}
           for k, v in layers.items()]
    return {"wall_ms": float(np.median(wall)), "ops": ops, "layers": sorted(top, key=lambda r: -r["ms"]),
            "kernels": dict(kernels)}


def _ort_events(path):
    with open(path) as f:
        events = json.load(f)
    os.remove(path)
    return events


_PROFILERS = {"paddle": _profile_paddle, "openvino": _profile_openvino,
              "onnxruntime": _profile_onnxruntime}


def profile_runtime(infer_dir, runtime, precision, shape, threads=2, warmup=5, runs=20):
    """Profile one export on one runtime: ``{"wall_ms", "ops", "layers", "kernels"}``."""
    if runtime not in _PROFILERS:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    return _PROFILERS[runtime](str(infer_dir), precision, list(shape), int(threads), warmup, runs)


def kind_totals(prof):
    """ms per run of each kind (int8 / convert / fp32) over the layers of a profile."""
    t = {k: 0.0 for k in KINDS}
    for r in prof["layers"] if prof["layers"] else []:
        t[r["kind"]] += r["ms"]
    return t


def markdown(name, shape, results, machine, threads, runs, top=12):
    """A report: per runtime, op types FP32 vs INT8 and the slowest INT8 layers."""
    lines = [f"# Where the time goes: {name}, input {'x'.join(map(str, shape))}", "",
             f"Machine: {machine['cpu']}, {machine['cores']} cores, ISA {', '.join(machine['isa']) or '?'}; "
             f"paddle {machine['paddle']}; {threads} threads, {runs} profiled runs.", ""]
    for rt, r in results.items():
        f, q = r["fp32"], r["int8"]
        lines += [f"## {rt}", "",
                  f"Wall clock (median, profiler on): FP32 {f['wall_ms']:.1f} ms, INT8 {q['wall_ms']:.1f} ms, "
                  f"INT8/FP32 {q['wall_ms'] / f['wall_ms']:.2f}.", ""]
        if rt == "paddle":
            lines += ["Op types from Paddle's profiler; INT8 = ops oneDNN runs with "
                      "`mkldnn_data_type: int8` in the optimized program.", ""]
        lines += ["| op type | FP32 ms | FP32 n | INT8 ms | INT8 n | INT8 / FP32 / convert (n) |",
                  "|---|---:|---:|---:|---:|---|"]
        names = sorted(set(f["ops"]) | set(q["ops"]),
                       key=lambda k: -max(f["ops"].get(k, {}).get("ms", 0), q["ops"].get(k, {}).get("ms", 0)))
        for k in names:
            a, b = f["ops"].get(k), q["ops"].get(k)
            cell = (lambda e: (f"{e['ms']:.2f}", str(e["count"])) if e else ("", ""))
            split = f"{b['int8']} / {b['fp32']} / {b['convert']}" if b else ""
            lines.append(f"| {k} | {cell(a)[0]} | {cell(a)[1]} | {cell(b)[0]} | {cell(b)[1]} | {split} |")
        tf, tq = sum(e["ms"] for e in f["ops"].values()), sum(e["ms"] for e in q["ops"].values())
        lines += [f"| **sum** | **{tf:.2f}** | | **{tq:.2f}** | | |", ""]
        if q.get("kernels"):
            lines += ["INT8 model, time per kernel: " + ", ".join(
                f"`{k}` {v:.2f} ms" for k, v in sorted(q["kernels"].items(), key=lambda kv: -kv[1])[:8]), ""]
        lines += [f"Slowest layers of the INT8 model ({'oneDNN primitives' if rt == 'paddle' else 'nodes'}):", "",
                  "| layer | type | kernel | class | ms |", "|---|---|---|---|---:|"]
        for r in q["layers"][:top]:
            lines.append(f"| {r['layer'][:70]} | {r['type']} | {r['kernel']} | {r['kind']} | {r['ms']:.2f} |")
        lines.append("")
    return "\n".join(lines)
