"""OpenVINO (CPU plugin), reading our old-IR exports through its Paddle frontend.

OpenVINO loads ``model.pdmodel`` unchanged, FP32 and quantized alike; on a
quantized model its low-precision transformations run each quantized
convolution in INT8 (PADDLE_NOTES, "Other runtimes"). The proof of INT8 is
the compiled model's runtime graph: layers whose ``runtimePrecision`` is
u8/i8. The precision hint is pinned to f32: on CPUs with bf16 support
OpenVINO's default is bf16, which changes FP32 results and hides the INT8
gain; ``inference_precision="bf16"`` asks for it explicitly.

``save_ir="model.xml"`` also writes the model OpenVINO read as its own IR
(``model.xml`` + ``model.bin``, weights not compressed), which a deployer runs
with OpenVINO alone (``ov.Core().compile_model("model.xml", "CPU")``), without
Paddle; existing files are never replaced.
"""
import os
from collections import Counter

from .contract import DeployError, Predictor

OPTIONS = ("inference_precision", "save_ir", "perf_count")
INT8_TYPES = {"u8", "i8"}
# compute layers (runtime-graph layerType) counted as INT8 kernels
COMPUTE_LAYERS = {"Convolution", "Deconvolution", "MatMul", "FullyConnected"}


def frontend_rewrites(pdmodel_path, out_path):
    """Write the program at ``pdmodel_path`` to ``out_path`` with what OpenVINO's Paddle
    frontend misreads rewritten, and return how many ops changed (nothing is written when
    none did):

    - ``prelu`` (ENet, ESPNetV2), which it has no converter for ("No creator found for prelu
      node"), becomes relu(x) - alpha * relu(-x): the same function in ops it reads (alpha
      broadcast over the channels for modes "channel" and "element", one value for "all");
    - convolutions with padding_algorithm "SAME" and a dilation (ESPNetV2), which it ran
      dilated and Paddle runs undilated (``compat.undilate_same_convs``).
    """
    from paddle.base import core
    from .. import compat
    with open(pdmodel_path, "rb") as f:
        desc = core.ProgramDesc(f.read())
    count = compat.undilate_same_convs(desc)
    for b in range(desc.num_blocks()):
        blk = desc.block(b)
        i = 0
        while i < blk.op_size():
            op = blk.op(i)
            if op.type() != "prelu":
                i += 1
                continue
            if op.attr("data_format") not in ("NCHW", "AnyLayout") and op.attr("mode") != "all":
                raise DeployError(f"prelu on {op.input('X')[0]}: data_format {op.attr('data_format')} "
                                  "is not supported for OpenVINO (NCHW is)")
            x, alpha, out = op.input("X")[0], op.input("Alpha")[0], op.output("Out")[0]
            axis = -1 if op.attr("mode") == "all" else 1
            src = blk.find_var_recursive(x.encode())
            names = {}
            for k in ("pos", "neg", "neg_relu", "scaled"):
                names[k] = f"{out}.prelu_{k}"
                v = blk.var(names[k].encode())
                v.set_type(src.type())
                v.set_dtype(src.dtype())
                v.set_shape(src.shape())
            steps = [("relu", {"X": x}, names["pos"], {}),
                     ("scale", {"X": x}, names["neg"], {"scale": -1.0, "bias": 0.0, "bias_after_scale": True}),
                     ("relu", {"X": names["neg"]}, names["neg_relu"], {}),
                     ("elementwise_mul", {"X": names["neg_relu"], "Y": alpha}, names["scaled"], {"axis": axis}),
                     ("elementwise_sub", {"X": names["pos"], "Y": names["scaled"]}, out, {"axis": -1})]
            for k, (kind, inputs, output, attrs) in enumerate(steps):
                new = blk._insert_op(i + k)
                new.set_type(kind)
                for slot, name in inputs.items():
                    new.set_input(slot, [name])
                new.set_output("Out", [output])
                for name, value in attrs.items():
                    if isinstance(value, bool):
                        new._set_bool_attr(name, value)
                    elif isinstance(value, int):
                        new._set_int32_attr(name, value)
                    else:
                        new._set_float32_attr(name, value)
            blk._remove_op(i + len(steps), i + len(steps) + 1)
            i += len(steps)
            count += 1
    if count:
        with open(out_path, "wb") as f:
            f.write(desc.serialize_to_string())
    return count


def _read_paddle_model(core, model_file, params_file):
    """The OpenVINO model of an old-IR Paddle program. Programs with ops its Paddle
    frontend refuses are read from a copy without them: paddleslim's observer-only
    quantize/dequantize pairs (PTQ and QAT exports; compat.drop_observer_only_quant),
    ``prelu`` and dilated "SAME" convolutions (``frontend_rewrites``). The export itself is
    not changed."""
    import tempfile
    from .. import compat
    with tempfile.TemporaryDirectory(prefix="segqat_ov_") as tmp:
        copy = os.path.join(tmp, "model.pdmodel")
        changed = compat.drop_observer_only_quant(model_file, copy)
        changed += frontend_rewrites(copy if changed else model_file, copy)
        if changed:
            os.symlink(os.path.abspath(params_file), os.path.join(tmp, "model.pdiparams"))
            return core.read_model(copy)
    return core.read_model(model_file)


def _ir_files(path):
    return path, path[:-len(".xml")] + ".bin"


def _check_ir_path(path):
    if not str(path).endswith(".xml"):
        raise DeployError(f"save_ir: {path} must end with .xml (the weights go beside it in a .bin)")
    for f in _ir_files(str(path)):
        if os.path.exists(f):
            raise DeployError(f"save_ir: {f} exists; remove it or choose another path")


def save_model(model, path):
    """Write the ov.Model as OpenVINO IR at ``path`` (.xml, and the .bin beside it), weights
    as they are (no FP16 compression); both files appear together, existing ones never replaced."""
    import shutil
    import tempfile
    import openvino as ov
    from .. import outputs
    _check_ir_path(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".segqat_ir_", dir=folder)
        try:
            ov.save_model(model, os.path.join(tmp, "model.xml"), compress_to_fp16=False)
        except RuntimeError as e:  # OpenVINO reports a failed write (disk full) this way
            raise outputs.OutputError(f"--save_ir: cannot write {path}: {str(e).strip()[-300:]}") from e
        xml, bin_ = _ir_files(os.path.abspath(path))
        # never over a file that appeared meanwhile (os.link fails where os.replace would not)
        outputs.place_new(os.path.join(tmp, "model.bin"), bin_, flag="--save_ir")
        try:
            outputs.place_new(os.path.join(tmp, "model.xml"), xml, flag="--save_ir")
        except BaseException:
            os.remove(bin_)  # the pair appears together or not at all
            raise
    except OSError as e:
        raise outputs.io_error(path, e) from e
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _frontend_message(error):
    """The line of an OpenVINO exception that says what failed: its message starts with
    where it was raised ("Exception from src/...cpp:84:", "Check '...' failed at ...")
    and ends with the reason ("No creator found for uniform_random node.")."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    reasons = [ln for ln in lines if not ln.startswith(("Exception from ", "Check '", "FrontEnd API failed"))]
    return (reasons or lines or [repr(error)])[-1]


class OpenVINOPredictor(Predictor):
    runtime = "openvino"

    def __init__(self, dep, precision, threads, verbose=False, inference_precision="f32", save_ir=None,
                 perf_count=False):
        import openvino as ov
        super().__init__(dep, precision, threads)
        if precision == "fp16":
            raise DeployError("--runtime openvino: --precision fp16 is not offered here (CPU)")
        if inference_precision not in ("f32", "bf16"):
            raise DeployError(f"inference_precision must be f32 or bf16, got {inference_precision!r}")
        if save_ir:
            _check_ir_path(save_ir)
        if not dep["model_file"].endswith(".pdmodel"):
            raise DeployError(f"--runtime openvino reads old-IR Paddle models (model.pdmodel); "
                              f"{dep['model_file']} is not one. Re-export with this tool.")
        core = ov.Core()
        try:
            model = _read_paddle_model(core, dep["model_file"], dep["params_file"])
        except RuntimeError as e:
            raise DeployError(f"{dep['model_file']}: OpenVINO's Paddle frontend cannot read it: "
                              f"{_frontend_message(e)}") from e
        self.inference_precision = inference_precision
        self.compiled = core.compile_model(model, "CPU", {
            "INFERENCE_PRECISION_HINT": inference_precision,
            "INFERENCE_NUM_THREADS": int(threads),
            "PERFORMANCE_HINT": "LATENCY",
            "PERF_COUNT": bool(perf_count),  # per-layer counters (segqat.op_profile)
        })
        self.request = self.compiled.create_infer_request()
        self._output = self.compiled.output(0)
        self._check_int8()
        if save_ir:
            save_model(model, save_ir)

    def layer_precisions(self):
        """Counter of (layerType, runtimePrecision) over the compiled runtime graph."""
        c = Counter()
        for op in self.compiled.get_runtime_model().get_ops():
            info = op.get_rt_info()
            get = (lambda k: info[k].astype(str) if k in info else "")
            c[(get("layerType"), get("runtimePrecision"))] += 1
        return c

    def int8_ops(self):
        return Counter({t: n for (t, p), n in self.layer_precisions().items()
                        if p in INT8_TYPES and t in COMPUTE_LAYERS})

    def describe(self):
        hint = "" if self.inference_precision == "f32" else f", inference precision {self.inference_precision}"
        return super().describe() + hint

    def _run(self, batch):
        return self.request.infer({0: batch})[self._output]

    def close(self):
        self.request = self.compiled = None
