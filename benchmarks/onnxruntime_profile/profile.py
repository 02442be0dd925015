"""Where ONNX Runtime spends BiSeNetV2's time at 1x3x512x512, FP32 and INT8 (2 threads),
and whether folding batch norm into the INT8 model makes it faster than FP32.

segqat's INT8 ONNX keeps QAT's float convolution outputs: ConvInteger -> Cast -> Mul
(input scale x weight scale, per channel) -> BatchNormalization. A batch norm after that
is a per-channel affine, so it folds into the Mul's scales plus an Add ("INT8, batch norm
folded" below; ONNX Runtime folds batch norms into float Convs itself). The fold is exact
up to float rounding (the first folded batch norm's output: 2e-7 of 4.0); the labels of
the folded model are compared with the unfolded one's (random weights: a rounding that
moves one quantized value by a step can spread, so not every pixel need agree).

Per-node times come from ONNX Runtime's profiler (summed by op type, mean of 10 runs after
5 warm-ups); the medians are of 20 runs of the three sessions interleaved, profiling off.
Weights are random, the INT8 model's quantizers calibrated on random inputs, as in
slim/quant/bench_latency.py.

    python benchmarks/onnxruntime_profile/profile.py [--work_dir output/onnxruntime_profile]
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import numpy as np  # noqa: E402


def _constants(model):
    """{name: array} of initializers, Constant nodes and Reshapes / Identities of them."""
    from onnx import numpy_helper
    const = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute[0].name == "value":
            const[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    for n in model.graph.node:
        if n.op_type in ("Reshape", "Identity", "Unsqueeze") and n.input[0] in const:
            const[n.output[0]] = const[n.input[0]]
    return const


def fold_batch_norms(model):
    """ConvInteger -> Cast -> Mul(s) [-> Add(bias)] -> BatchNormalization becomes
    ConvInteger -> Cast -> Mul(s * a) -> Add(a * bias + b), with a = gamma / sqrt(var + eps)
    and b = beta - mean * a (exact); returns the number folded."""
    from onnx import helper, numpy_helper
    const = _constants(model)
    prod = {o: n for n in model.graph.node for o in n.output}
    readers = defaultdict(list)
    for n in model.graph.node:
        for i in n.input:
            readers[i].append(n)
    outputs = {o.name for o in model.graph.output}

    def only_reader(n):
        return len(readers[n.output[0]]) == 1 and n.output[0] not in outputs
    replace, drop = {}, set()
    for n in model.graph.node:
        if n.op_type != "BatchNormalization" or any(i not in const for i in n.input[1:5]):
            continue
        add, cur = None, prod.get(n.input[0])
        if cur is not None and cur.op_type == "Add" and only_reader(cur):
            other = [i for i in cur.input if i in const]
            if len(other) != 1:
                continue
            add, bias, cur = cur, const[other[0]].reshape(-1), prod.get(next(i for i in cur.input if i not in const))
        mul = cur
        if mul is None or mul.op_type != "Mul" or mul.input[1] not in const or not only_reader(mul):
            continue
        cast = prod.get(mul.input[0])
        if cast is None or cast.op_type != "Cast" or getattr(prod.get(cast.input[0]), "op_type", "") != "ConvInteger":
            continue
        gamma, beta, mean, var = (const[i].reshape(-1) for i in n.input[1:5])
        eps = next((a.f for a in n.attribute if a.name == "epsilon"), 1e-5)
        a = gamma / np.sqrt(var + eps)
        b = beta - mean * a + (a * bias if add is not None else 0)
        scale = numpy_helper.from_array((const[mul.input[1]] * a.reshape(1, -1, 1, 1)).astype(np.float32),
                                        f"{mul.output[0]}.bn_folded_scale")
        shift = numpy_helper.from_array(b.reshape(1, -1, 1, 1).astype(np.float32), f"{n.output[0]}.bn_shift")
        model.graph.initializer.extend([scale, shift])
        new_mul = helper.make_node("Mul", [mul.input[0], scale.name], [mul.output[0]], name=f"{mul.name}.bn_folded")
        new_add = helper.make_node("Add", [mul.output[0], shift.name], [n.output[0]], name=f"{n.name}.folded_add")
        replace[id(mul)] = [new_mul, new_add]
        drop.update({id(n)} | ({id(add)} if add is not None else set()))
    new = []
    for n in model.graph.node:
        if id(n) in drop:
            continue
        new.extend(replace.get(id(n), [n]))
    del model.graph.node[:]
    model.graph.node.extend(new)
    return len(replace)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/bisenetv2/bisenetv2_camvid_240x180.yml")
    ap.add_argument("--work_dir", default="output/onnxruntime_profile")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--save_json", default=None)
    args = ap.parse_args()
    import onnxruntime as ort
    from segqat import bench, deploy, export, quant
    from segqat.config import load_config
    from segqat.deploy import onnx_export, onnx_runtime
    shape = [1, 3, 512, 512]
    rng = np.random.RandomState(0)
    if not os.path.isdir(os.path.join(args.work_dir, "int8")):
        cfg = load_config(args.config)
        model, _ = quant.build_model(cfg)
        export.export_model(cfg, model, os.path.join(args.work_dir, "fp32"), shape, output_op="none")
        quant.export_calibrated_int8(cfg, os.path.join(args.work_dir, "int8"), shape, rng, output_op="none")
    x = rng.rand(*shape).astype("float32") * 2 - 1
    models = {"FP32": onnx_export.convert(deploy.load_deploy_config(os.path.join(args.work_dir, "fp32"))),
              "INT8": onnx_export.convert(deploy.load_deploy_config(os.path.join(args.work_dir, "int8")))}
    folded = models["INT8"].__class__()
    folded.CopyFrom(models["INT8"])
    n_folded = fold_batch_norms(folded)
    models["INT8, batch norm folded"] = folded
    sessions, result = {}, {"machine": bench.machine(), "onnxruntime": ort.__version__, "input_shape": shape,
                            "threads": args.threads, "batch_norms_folded": n_folded, "models": {}}
    tmp = tempfile.mkdtemp(prefix="segqat_ortprof_")
    for name, m in models.items():
        so = onnx_runtime.session_options(args.threads)
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, name.replace(" ", "_").replace(",", ""))
        sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        for _ in range(15):  # the first 5 are warm-ups, left out below
            sess.run(None, {"x": x})
        events = json.load(open(sess.end_profiling()))
        runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"][5:]
        t0 = runs[0]["ts"]
        by_op = defaultdict(float)
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= t0:
                by_op[e["args"]["op_name"]] += e["dur"] / 1000 / len(runs)  # ms per run
        result["models"][name] = {"profile_ms_by_op": dict(sorted(by_op.items(), key=lambda kv: -kv[1]))}
        sessions[name] = onnx_runtime.session(m.SerializeToString(), args.threads)
    ref = sessions["INT8"].run(None, {"x": x})[0]
    for name in ("INT8, batch norm folded",):
        got = sessions[name].run(None, {"x": x})[0]
        result["models"][name]["label_agreement_vs_int8"] = float((got.argmax(1) == ref.argmax(1)).mean())
    times = defaultdict(list)
    for name, s in sessions.items():
        for _ in range(3):
            s.run(None, {"x": x})
    for _ in range(args.repeats):
        for name, s in sessions.items():
            t = time.perf_counter()
            s.run(None, {"x": x})
            times[name].append(1000 * (time.perf_counter() - t))
    fp32 = statistics.median(times["FP32"])
    for name in sessions:
        med = statistics.median(times[name])
        result["models"][name]["median_ms"] = round(med, 2)
        result["models"][name]["vs_fp32"] = round(med / fp32, 3)
        prof = result["models"][name]["profile_ms_by_op"]
        top = ", ".join(f"{op} {ms:.1f}" for op, ms in list(prof.items())[:6])
        print(f"{name}: median {med:.1f} ms ({med / fp32:.2f} of FP32); profile sums to "
              f"{sum(prof.values()):.1f} ms: {top}")
    print(f"{n_folded} batch norms folded; labels of the folded and unfolded INT8 models agree on "
          f"{result['models']['INT8, batch norm folded']['label_agreement_vs_int8']:.2%} of the pixels")
    if args.save_json:
        with open(args.save_json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
