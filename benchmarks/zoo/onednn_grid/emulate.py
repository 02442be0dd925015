"""Why Paddle Inference's INT8 output differs from fake quant: emulate oneDNN's requantization.

    python benchmarks/zoo/onednn_grid/emulate.py topformer_tiny [--work_dir output/zoo] [--num_images 20]

For one built zoo entry (tools/zoo.py --phase build) this runs the entry's INT8
export (its quantize_linear / dequantize_linear program) five ways on the
validation images and compares their logits' labels:

* ``native``: Paddle's plain CPU kernels, no oneDNN: the export's own fake
  quantization, the reference here (it is what the dygraph fake-quant model
  computes, up to float rounding at near ties);
* ``deployed``: Paddle Inference with oneDNN INT8, as segqat deploys it;
* ``u8``: ``native`` on a copy of the program in which every quantize pair on a
  ReLU / ReLU6 output quantizes with 255 levels instead of 127 (qmin/qmax
  -256/255: the u8 grid oneDNN uses for tensors it knows are non-negative,
  Paddle's ``compute_propagate_scales_onednn_pass`` / ``cpu_quantize_pass``);
* ``u8+shared``: as ``u8``, and the float consumers of a tensor that a quantized
  convolution reads (a residual add, a pooling) read the quantized copy, as in
  oneDNN's program, where the producing convolution writes 8-bit output once;
* ``openvino``: the same export on OpenVINO (it keeps the export's own
  quantization).

Agreements are over all pixels and, in brackets, over the pixels where the
reference's top-2 softmax probabilities differ by >= 0.1 (clear margins). If
``deployed`` agrees with ``u8+shared`` on (nearly) every clear-margin pixel,
those two mechanisms explain the difference from fake quant.
"""
import argparse
import os
import shutil
import sys
import tempfile

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
sys.path.insert(0, ROOT)

NON_NEGATIVE = ("relu", "relu6")
# the emulations, each a copy of the program run natively
VARIANTS = {"u8": dict(u8=True), "u8+shared": dict(u8=True, shared=True)}
# ops through which a convolution's output reaches the tensor that oneDNN writes in 8 bits
CONV_CHAIN = ("relu", "relu6", "batch_norm", "conv2d", "depthwise_conv2d", "elementwise_add")


def _is_observer(op):
    return op.has_attr("only_observer") and op.attr("only_observer")


def rewrite(raw, u8=False, shared=False):
    """A serialized copy of the program: logits fetched instead of arg_max, and the emulations."""
    from paddle.base import core
    desc = core.ProgramDesc(raw)
    blk = desc.block(0)
    ops = [blk.op(j) for j in range(blk.op_size())]
    producer, latest = {}, {}  # tensor -> its producing op (first), and the latest one so far
    pairs = []  # (tensor, quantize_linear, dequantize_linear, index of the dequantize)
    for k, op in enumerate(ops):
        if op.type() == "dequantize_linear" and not _is_observer(op):
            q = latest.get(op.input("X")[0])
            if q is not None and q.type() == "quantize_linear":
                pairs.append((q.input("X")[0], q, op, k))
        for n in op.output_arg_names():
            producer.setdefault(n, op)
            latest[n] = op
    dequant_of = {}  # quantized tensor -> (its first dequantize_linear output, index, q, dq)
    for x, q, dq, k in pairs:
        dequant_of.setdefault(x, (dq.output("Y")[0], k, q, dq))
    argmax = [op for op in ops if op.type() == "arg_max"]
    changed = 0
    for op in ops:
        if op.type() == "fetch" and argmax:
            op._rename_input(argmax[0].output("Out")[0], argmax[0].input("X")[0])
    if u8:
        for x, q, dq, _ in pairs:
            p = producer.get(x)
            if p is not None and p.type() in NON_NEGATIVE and not blk.find_var(x.encode()).persistable():
                for o in (q, dq):
                    o._set_attr("qmin", -256)
                    o._set_attr("qmax", 255)
                    o._set_attr("bit_length", 9)
                changed += 1
    if shared:
        for k, op in enumerate(ops):
            if op.type() in ("quantize_linear", "dequantize_linear", "fetch"):
                continue
            for name in op.input_arg_names():
                d = dequant_of.get(name)
                p = producer.get(name)
                if d and d[1] < k and p is not None and p.type() in CONV_CHAIN:
                    op._rename_input(name, d[0])
    return desc.serialize_to_string(), changed


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("entry", help="a zoo entry name (configs/zoo/<entry>.yml), built in --work_dir")
    ap.add_argument("--work_dir", default=os.path.join(ROOT, "output", "zoo"))
    ap.add_argument("--num_images", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from paddle import inference as pi
    from segqat import builder, compat, deploy
    from segqat.config import load_config
    from segqat.report import to_bgr8

    cfg = load_config(os.path.join(ROOT, "configs", "zoo", args.entry + ".yml"))
    src = os.path.join(args.work_dir, args.entry, "int8_infer")
    if not os.path.isfile(os.path.join(src, "model.pdmodel")):
        sys.exit(f"{src}: no INT8 export; build the entry first: python tools/zoo.py --phase build "
                 f"--models {args.entry}")
    val = builder.build_dataset(cfg, "val")
    ov = deploy.create_predictor(src, runtime="openvino", precision="int8", threads=args.threads)
    n = min(args.num_images, len(val))
    images = [to_bgr8(val.read(i)[0]) for i in range(n)]
    batches = [ov.preprocess(img)[0][None] for img in images]
    with open(os.path.join(src, "model.pdmodel"), "rb") as f:
        raw = f.read()

    def run(program, onednn):
        d = tempfile.mkdtemp(prefix="segqat_grid_")
        try:
            with open(os.path.join(d, "model.pdmodel"), "wb") as f:
                f.write(program)
            os.symlink(os.path.abspath(os.path.join(src, "model.pdiparams")), os.path.join(d, "model.pdiparams"))
            c = pi.Config(os.path.join(d, "model.pdmodel"), os.path.join(d, "model.pdiparams"))
            c.enable_new_ir(False)
            c.disable_glog_info()
            compat.configure_inference(c)
            c.disable_gpu()
            c.set_cpu_math_library_num_threads(args.threads)
            if onednn:  # as segqat's Paddle predictor runs an INT8 export
                c.enable_onednn()
                c.enable_onednn_int8(compat.ONEDNN_INT8_OPS)
                c.delete_pass(compat.INT8_RESIDUAL_FUSE_PASS)
            with compat.native_output(False):
                p = pi.create_predictor(c)
            outs = []
            for x in batches:
                h = p.get_input_handle(p.get_input_names()[0])
                h.reshape(list(x.shape))
                h.copy_from_cpu(x)
                p.run()
                outs.append(p.get_output_handle(p.get_output_names()[0]).copy_to_cpu()[0])
            return outs
        finally:
            shutil.rmtree(d, ignore_errors=True)

    logits_prog, _ = rewrite(raw)
    res = {"native": run(logits_prog, False), "deployed": run(logits_prog, True)}
    n_u8 = 0
    for name, flags in VARIANTS.items():
        prog, changed = rewrite(raw, **flags)
        n_u8 = max(n_u8, changed)
        res[name] = run(prog, False)
    res["openvino"] = [ov.run(x)[0] for x in batches]
    ov.close()

    def labels(o):
        return o if o.ndim == 2 else o.argmax(0)

    def agree(a, ref):
        eq = tot = ceq = ctot = 0
        for x, y in zip(res[a], res[ref]):
            e = np.exp(y - y.max(0))
            top2 = np.sort(e / e.sum(0), 0)[-2:]
            clear = top2[1] - top2[0] >= 0.1
            same = labels(x) == labels(y)
            eq, tot = eq + int(same.sum()), tot + same.size
            ceq, ctot = ceq + int((same & clear).sum()), ctot + int(clear.sum())
        return f"{100 * eq / tot:.2f}% ({100 * ceq / max(ctot, 1):.2f}%)"

    print(f"## {args.entry}: {n} validation images, {n_u8} quantize pairs on ReLU/ReLU6 outputs\n")
    print("| compared | agreement (clear margins) |\n|---|---|")
    pairs = [("deployed", "native"), ("openvino", "native")] + [(v, "native") for v in VARIANTS] + \
        [("deployed", v) for v in VARIANTS]
    for a, ref in pairs:
        print(f"| {a} vs {ref} | {agree(a, ref)} |")


if __name__ == "__main__":
    main()
