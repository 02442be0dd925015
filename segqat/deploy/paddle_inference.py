"""Paddle Inference (oneDNN on CPU; GPU/TensorRT implemented, untested here).

INT8 on CPU means oneDNN with its INT8 passes, on an old-IR model
(``model.pdmodel``): a QAT model run otherwise executes fake quantization in
FP32 (about 2x slower than FP32, see PADDLE_NOTES), so that combination is an
error here, not a silent fallback. The proof of INT8 is the optimized program
Paddle saves: its ops with ``mkldnn_data_type == "int8"``.
"""
import glob
import logging
import os
import shutil
import tempfile
import time
from collections import Counter

import numpy as np

from .contract import DeployError, Predictor

logger = logging.getLogger(__name__)

OPTIONS = ("device", "enable_mkldnn", "batch_size", "use_trt", "trt_min_shape", "trt_opt_shape",
           "trt_max_shape", "optim_dir", "profile")


def program_op_types(pdmodel_path):
    """Counter of (op type, mkldnn_data_type or "") over all blocks of a saved old-IR program."""
    from paddle.base import core
    with open(pdmodel_path, "rb") as f:
        desc = core.ProgramDesc(f.read())
    c = Counter()
    for b in range(desc.num_blocks()):
        blk = desc.block(b)
        for i in range(blk.op_size()):
            op = blk.op(i)
            c[(op.type(), op.attr("mkldnn_data_type") if op.has_attr("mkldnn_data_type") else "")] += 1
    return c


def conv_input_scales(infer_dir):
    """Scales of the quantize_linear ops that quantize a convolution's input, in an
    exported INT8 directory (one value per op: the max over its scale tensor)."""
    from .. import compat
    prog, _, _, scope, _ = compat.load_old_ir_program(os.path.join(str(infer_dir), "model.pdmodel"),
                                                      os.path.join(str(infer_dir), "model.pdiparams"))
    ops = prog.global_block().ops
    conv_inputs = {o.input("Input")[0] for o in ops
                   if o.type in ("conv2d", "depthwise_conv2d", "conv2d_transpose")}
    dequant_of = {o.input("X")[0]: o.output("Y")[0] for o in ops if o.type == "dequantize_linear"}
    return [float(np.array(scope.find_var(op.input("Scale")[0]).get_tensor()).max())
            for op in ops if op.type == "quantize_linear"
            and dequant_of.get(op.output("Y")[0]) in conv_inputs]


def quantized_weight_ops(infer_dir):
    """Op types of an exported INT8 program whose weights are quantized (they read a
    ``dequantize_linear`` of a stored int8 weight), counted: what QAT/PTQ quantized, to
    compare with the ops that run INT8 kernels after the runtime's optimization."""
    from collections import Counter
    from .. import compat
    prog = compat.load_old_ir_program(os.path.join(str(infer_dir), "model.pdmodel"),
                                      os.path.join(str(infer_dir), "model.pdiparams"))[0]
    block = prog.global_block()
    ops = block.ops
    weights = {o.output("Y")[0] for o in ops if o.type == "dequantize_linear"
               and block.has_var(o.input("X")[0]) and block.var(o.input("X")[0]).persistable}
    return Counter(o.type for o in ops if o.type != "dequantize_linear"
                   and any(n in weights for n in o.input_arg_names))


def _optim_cache_dir():
    """A temp folder for Paddle's optimized-program cache, named by process; the folders
    of dead processes (killed before ``close``) are removed here, and ours at exit."""
    import atexit
    import glob
    import re
    from ..outputs import pid_alive
    for old in glob.glob(os.path.join(tempfile.gettempdir(), "segqat_optim_*")):
        m = re.match(r"segqat_optim_(\d+)_", os.path.basename(old))
        stale = (not pid_alive(m.group(1))) if m else \
            time.time() - os.path.getmtime(old) > 3600  # named before pids were in names
        if stale:
            shutil.rmtree(old, ignore_errors=True)
    d = tempfile.mkdtemp(prefix=f"segqat_optim_{os.getpid()}_")
    atexit.register(shutil.rmtree, d, True)
    return d


def _create(pi, config, dep):
    """``pi.create_predictor(config)``; when it fails, a one-line DeployError for a program
    another Paddle wrote that this one cannot load (naming both versions, from deploy.yaml's
    ``paddle_version``) or for model files that do not load either (truncated, damaged)."""
    import paddle
    from .. import compat
    try:
        return pi.create_predictor(config)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        made = str(dep.get("paddle_version") or "")
        if made and made != paddle.__version__:
            raise DeployError(f"{dep['model_file']} was exported by paddle {made}; paddle "
                              f"{paddle.__version__}'s Paddle Inference cannot load it ({type(e).__name__}: "
                              f"{first}). Run it on paddle {made}, or export it again on paddle "
                              f"{paddle.__version__}") from e
        try:
            compat.load_old_ir_program(dep["model_file"], dep["params_file"])
        except Exception:
            lines = [ln.strip() for ln in str(e).splitlines()
                     if ln.strip() and ln.strip() != "In user code:"]
            raise DeployError(f"{dep['path']}: the model in {dep['model_file']} and "
                              f"{dep['params_file']} does not load ({type(e).__name__}: "
                              f"{(lines or ['?'])[0][:200]}): a truncated or damaged file? Export "
                              "the model again") from e
        raise  # the files load: a failure of the runtime itself


class PaddlePredictor(Predictor):
    runtime = "paddle"

    def __init__(self, dep, precision, threads, device="cpu", enable_mkldnn=True, batch_size=1,
                 use_trt=False, trt_min_shape=None, trt_opt_shape=None, trt_max_shape=None,
                 optim_dir=None, profile=False, verbose=False):
        from paddle import inference as pi
        from .. import compat
        super().__init__(dep, precision, threads)
        if device == "cpu" and precision == "fp16":
            raise DeployError("--precision fp16 is only supported with --device gpu")
        if device == "cpu" and precision == "int8" and not enable_mkldnn:
            raise DeployError("--precision int8 on CPU needs oneDNN (--enable_mkldnn true): without "
                              "it the model runs fake quantization in FP32")
        refusal = compat.unreadable_ir(dep["model_file"], dep.get("paddle_version"))
        if not refusal and device == "cpu" and enable_mkldnn:
            refusal = compat.onednn_refusal(dep["model_file"])
        if refusal:
            raise DeployError(refusal)
        if use_trt and device != "gpu":
            raise DeployError("--use_trt needs --device gpu")

        self._optim_dir = None
        self._own_optim_dir = False
        model_file = dep["model_file"]
        if device == "cpu" and enable_mkldnn and precision == "int8":
            self._optim_dir = optim_dir or _optim_cache_dir()
            self._own_optim_dir = optim_dir is None  # ours to remove at close; a given one is not
            os.makedirs(self._optim_dir, exist_ok=True)
            guarded = os.path.join(self._optim_dir, "segqat_guarded.pdmodel")
            n = compat.guard_overwritten_scales(model_file, guarded)
            if n:  # an export written before segqat guarded them itself
                logger.info("%s: written before segqat guarded quantization scales oneDNN overwrites; "
                            "running a guarded copy (re-export to make this permanent)", model_file)
                model_file = guarded

        def config(delete=()):
            cfg = pi.Config(model_file, dep["params_file"])
            compat.select_ir(cfg, dep["model_file"])
            cfg.disable_glog_info()
            compat.configure_inference(cfg)
            if device == "gpu":
                cfg.enable_use_gpu(256, 0)
                if use_trt:
                    prec = {"fp32": pi.PrecisionType.Float32, "fp16": pi.PrecisionType.Half,
                            "int8": pi.PrecisionType.Int8}[precision]
                    cfg.enable_tensorrt_engine(workspace_size=1 << 30, max_batch_size=batch_size,
                                               min_subgraph_size=3, precision_mode=prec,
                                               use_static=False, use_calib_mode=False)
                    if trt_min_shape:
                        name = "x"
                        cfg.set_trt_dynamic_shape_info({name: trt_min_shape}, {name: trt_max_shape},
                                                       {name: trt_opt_shape})
                elif precision == "int8":
                    raise DeployError("--precision int8 on GPU needs TensorRT (--use_trt true)")
            else:
                cfg.disable_gpu()
                cfg.set_cpu_math_library_num_threads(threads)
                if enable_mkldnn:
                    compat.enable_onednn(cfg, int8=precision == "int8")
                    if precision == "int8":
                        cfg.enable_save_optim_model(True)
                        cfg.set_optim_cache_dir(self._optim_dir)
            for name in delete:
                cfg.delete_pass(name)
            if profile:  # Paddle's operator profiler; its report is printed when the predictor goes
                cfg.enable_profile()
            return cfg

        self.device = device
        with compat.native_output(verbose):  # oneDNN's INT8 passes print ~30 lines
            self.predictor = _create(pi, config(), dep)
        if self._optim_dir and precision == "int8":
            bad, kept = compat.residual_fusions(os.path.join(self._optim_dir, "_optimized.pdmodel"))
            if bad or (kept and not dep["int8_residual_fusion"]):
                before = sum(self.int8_ops().values())
                why = (f"{len(bad)} INT8 convolution(s) with a residual add oneDNN would compute wrongly "
                       f"(u8/s8, e.g. {bad[0]})" if bad else
                       f"int8_residual_fusion: false and {len(kept)} convolution(s) with a fused "
                       f"residual add left in FP32 (e.g. {kept[0]})")
                for f in glob.glob(os.path.join(self._optim_dir, "_optimized.*")):
                    os.remove(f)  # written by the predictor just made: the proof must be the new one's
                with compat.native_output(verbose):
                    self.predictor = _create(pi, config([compat.INT8_RESIDUAL_FUSE_PASS]), dep)
                logger.info("%s: %s: running without %s (INT8 kernels %d -> %d)", dep["model_file"], why,
                            compat.INT8_RESIDUAL_FUSE_PASS, before, sum(self.int8_ops().values()))
            elif kept:
                logger.info("%s: %d convolution(s) with a fused residual add run in FP32 (e.g. %s); "
                            "quant_config.int8_residual_fusion: false at export (or Deploy."
                            "int8_residual_fusion: false in deploy.yaml) runs them INT8 without the "
                            "fusion", dep["model_file"], len(kept), kept[0])
        self.input_name = self.predictor.get_input_names()[0]
        if device == "cpu":
            self._check_int8()

    # -- proof of INT8 ----------------------------------------------------
    def optimized_op_types(self):
        """Counter of (op type, mkldnn_data_type) in the optimized program (CPU oneDNN)."""
        path = os.path.join(self._optim_dir or "", "_optimized.pdmodel")
        if not self._optim_dir or not os.path.isfile(path):
            return Counter()
        return program_op_types(path)

    def int8_ops(self):
        return Counter({t: n for (t, dt), n in self.optimized_op_types().items() if dt == "int8"})

    def _run(self, batch):
        h = self.predictor.get_input_handle(self.input_name)
        h.reshape(batch.shape)
        h.copy_from_cpu(batch)
        self.predictor.run()
        out = self.predictor.get_output_handle(self.predictor.get_output_names()[0])
        return out.copy_to_cpu()

    def close(self):
        if self._optim_dir and self._own_optim_dir:
            shutil.rmtree(self._optim_dir, ignore_errors=True)
