"""Paddle Inference predictors built from an exported directory's deploy.yaml.

    pred = SegPredictor("output/qat_infer/deploy.yaml", precision="int8", cpu_threads=2)
    labels = pred.predict([img_bgr])          # list of HxW int arrays, original size
    pred.int8_ops()                           # {'fused_conv2d': 56, ...}: proof of INT8 kernels

INT8 on CPU means oneDNN with its INT8 passes, on an old-IR model
(``model.pdmodel``): a QAT model run otherwise executes fake quantization in
FP32 (about 2x slower than FP32, see PADDLE_NOTES), so that combination is an
error here, not a silent fallback.
"""
import logging
import os
import shutil
import tempfile
import time
from collections import Counter

import cv2
import numpy as np
import yaml

logger = logging.getLogger(__name__)

# oneDNN INT8 op set that works for BiSeNetV2 and PP-LiteSeg on paddle 3.3.1;
# the default set fails on PP-LiteSeg ("could not create a primitive
# descriptor for a concat primitive", PADDLE_NOTES).
ONEDNN_INT8_OPS = {"conv2d", "depthwise_conv2d", "fused_conv2d"}
PRECISIONS = ("fp32", "fp16", "int8")


class DeployError(ValueError):
    pass


def load_deploy_config(path):
    """Read deploy.yaml (or a directory holding it) and check the files it names."""
    if os.path.isdir(path):
        path = os.path.join(path, "deploy.yaml")
    if not os.path.isfile(path):
        raise DeployError(f"--config: deploy.yaml not found: {path} (give the deploy.yaml of an "
                          "exported directory, written by tools/export.py or slim/quant/qat_export.py)")
    with open(path) as f:
        try:
            dic = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise DeployError(f"--config {path} is not valid YAML: {e}") from e
    if not isinstance(dic, dict) or "Deploy" not in dic:
        raise DeployError(f"--config {path} has no 'Deploy' section (PaddleSeg deploy.yaml schema)")
    dep = dict(dic["Deploy"])
    for key in ("model", "params"):
        if key not in dep:
            raise DeployError(f"--config {path}: Deploy.{key} is missing")
    base = os.path.dirname(os.path.abspath(path))
    dep["model_file"] = os.path.join(base, dep["model"])
    dep["params_file"] = os.path.join(base, dep["params"])
    for key in ("model_file", "params_file"):
        if not os.path.isfile(dep[key]):
            raise DeployError(f"--config {path}: {key.split('_')[0]} file not found: {dep[key]}")
    dep.setdefault("output_op", "argmax")
    dep.setdefault("transforms", [{"type": "Normalize"}])
    dep.setdefault("precision", "fp32")
    dep["path"] = path
    return dep


def build_transforms(dep):
    """Preprocessing from deploy.yaml's transforms (paddleseg's TRANSFORMS registry)."""
    from .builder import build_component
    from paddleseg.transforms import Compose
    ts = [build_component(t, "transform", f"{dep['path']}: Deploy.transforms[{i}]")
          for i, t in enumerate(dep["transforms"])]
    return Compose(ts)


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
    import paddle
    from . import compat
    exe = paddle.static.Executor(paddle.CPUPlace())
    with compat.old_ir_static():
        scope = paddle.static.Scope()
        with paddle.static.scope_guard(scope):
            prog, _, _ = paddle.static.load_inference_model(os.path.join(str(infer_dir), "model"), exe)
            ops = prog.global_block().ops
            conv_inputs = {o.input("Input")[0] for o in ops
                           if o.type in ("conv2d", "depthwise_conv2d", "conv2d_transpose")}
            dequant_of = {o.input("X")[0]: o.output("Y")[0] for o in ops if o.type == "dequantize_linear"}
            return [float(np.array(scope.find_var(op.input("Scale")[0]).get_tensor()).max())
                    for op in ops if op.type == "quantize_linear"
                    and dequant_of.get(op.output("Y")[0]) in conv_inputs]


def _optim_cache_dir():
    """A temp folder for Paddle's optimized-program cache, named by process; the folders
    of dead processes (killed before ``close``) are removed here, and ours at exit."""
    import atexit
    import glob
    import re
    from .outputs import pid_alive
    for old in glob.glob(os.path.join(tempfile.gettempdir(), "segqat_optim_*")):
        m = re.match(r"segqat_optim_(\d+)_", os.path.basename(old))
        stale = (not pid_alive(m.group(1))) if m else \
            time.time() - os.path.getmtime(old) > 3600  # named before pids were in names
        if stale:
            shutil.rmtree(old, ignore_errors=True)
    d = tempfile.mkdtemp(prefix=f"segqat_optim_{os.getpid()}_")
    atexit.register(shutil.rmtree, d, True)
    return d


class SegPredictor:
    def __init__(self, deploy_path, device="cpu", precision="fp32", enable_mkldnn=True,
                 cpu_threads=1, batch_size=1, use_trt=False, trt_min_shape=None,
                 trt_opt_shape=None, trt_max_shape=None, optim_dir=None):
        from paddle import inference as pi
        from . import compat
        self.dep = load_deploy_config(deploy_path)
        if precision not in PRECISIONS:
            raise DeployError(f"--precision must be one of {PRECISIONS}, got {precision!r}")
        model_int8 = self.dep["precision"] == "int8"
        old_ir = self.dep["model_file"].endswith(".pdmodel")
        if precision == "int8" and not model_int8:
            raise DeployError(
                f"--precision int8 needs a quantized export (deploy.yaml precision: int8); "
                f"{self.dep['path']} is precision {self.dep['precision']}. Export QAT weights with "
                "slim/quant/qat_export.py.")
        if model_int8 and precision != "int8":
            raise DeployError(
                f"{self.dep['path']} is an INT8 (QAT) model: run it with --precision int8. "
                f"With --precision {precision} it would execute fake quantization in FP32, "
                "slower than the FP32 model.")
        if device == "cpu" and precision == "fp16":
            raise DeployError("--precision fp16 is only supported with --device gpu")
        if device == "cpu" and precision == "int8" and not enable_mkldnn:
            raise DeployError("--precision int8 on CPU needs oneDNN (--enable_mkldnn true): without "
                              "it the model runs fake quantization in FP32")
        if device == "cpu" and enable_mkldnn and not old_ir:
            raise DeployError(f"{self.dep['model_file']} is a new-IR model; oneDNN cannot run it on "
                              "paddle 3.3.1 (PaddlePaddle/Paddle#79749). Re-export with this tool.")
        if use_trt and device != "gpu":
            raise DeployError("--use_trt needs --device gpu")

        cfg = pi.Config(self.dep["model_file"], self.dep["params_file"])
        if old_ir:
            cfg.enable_new_ir(False)
        cfg.disable_glog_info()
        compat.configure_inference(cfg)
        self._optim_dir = None
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
            cfg.set_cpu_math_library_num_threads(cpu_threads)
            if enable_mkldnn:
                cfg.enable_onednn()
                if precision == "int8":
                    cfg.enable_onednn_int8(ONEDNN_INT8_OPS)
                    self._optim_dir = optim_dir or _optim_cache_dir()
                    cfg.enable_save_optim_model(True)
                    cfg.set_optim_cache_dir(self._optim_dir)
        self.device, self.precision, self.cpu_threads = device, precision, cpu_threads
        self.predictor = pi.create_predictor(cfg)
        self.input_name = self.predictor.get_input_names()[0]
        self.transforms = build_transforms(self.dep)
        if precision == "int8" and device == "cpu":
            ops = self.int8_ops()
            if not ops:
                raise DeployError(f"{self.dep['path']}: the optimized program has no INT8 kernels; "
                                  "refusing to run fake quantization in FP32")
            logger.info("INT8 kernels: %s", dict(ops))

    # -- proof of INT8 ----------------------------------------------------
    def optimized_op_types(self):
        """Counter of (op type, mkldnn_data_type) in the optimized program (CPU oneDNN)."""
        path = os.path.join(self._optim_dir or "", "_optimized.pdmodel")
        if not self._optim_dir or not os.path.isfile(path):
            return Counter()
        return program_op_types(path)

    def int8_ops(self):
        return Counter({t: n for (t, dt), n in self.optimized_op_types().items() if dt == "int8"})

    # -- running ----------------------------------------------------------
    def preprocess(self, img):
        """BGR uint8 image -> (CHW float32, trans_info)."""
        data = {"img": img.astype("float32"), "trans_info": [], "gt_fields": []}
        data = self.transforms(data)
        return data["img"], data["trans_info"]

    def run(self, batch):
        """Run a [N, C, H, W] float32 batch; returns the raw output array."""
        h = self.predictor.get_input_handle(self.input_name)
        h.reshape(batch.shape)
        h.copy_from_cpu(np.ascontiguousarray(batch))
        self.predictor.run()
        out = self.predictor.get_output_handle(self.predictor.get_output_names()[0])
        return out.copy_to_cpu()

    def predict(self, images):
        """Label maps (original size) for a list of BGR images of one size."""
        xs, infos = zip(*(self.preprocess(im) for im in images))
        out = self.run(np.stack(xs))
        return [self.postprocess(o, info, im.shape[:2]) for o, info, im in zip(out, infos, images)]

    def postprocess(self, out, trans_info, orig_hw):
        if self.dep["output_op"] == "argmax":
            lab = out.astype(np.int32)
            for mode, shape in reversed(trans_info):
                h, w = int(shape[0]), int(shape[1])
                lab = lab[:h, :w] if mode == "padding" else cv2.resize(
                    lab.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(np.int32)
            return lab
        scores = out  # [C, H, W]
        for mode, shape in reversed(trans_info):
            h, w = int(shape[0]), int(shape[1])
            if mode == "padding":
                scores = scores[:, :h, :w]
            else:
                scores = np.stack([cv2.resize(c, (w, h), interpolation=cv2.INTER_LINEAR) for c in scores])
        return scores.argmax(0).astype(np.int32)

    def benchmark(self, batch, warmup=10, repeats=50):
        """Per-run times (s) of ``batch`` after warm-up."""
        for _ in range(warmup):
            self.run(batch)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            self.run(batch)
            times.append(time.perf_counter() - t)
        return times

    def close(self):
        if self._optim_dir and self._optim_dir.startswith(tempfile.gettempdir()):
            shutil.rmtree(self._optim_dir, ignore_errors=True)


def palette(n=256):
    """PaddleSeg's colour map (bit-interleaved), as a flat RGB list."""
    pal = [0] * (n * 3)
    for j in range(n):
        lab, i = j, 0
        while lab:
            pal[j * 3 + 0] |= ((lab >> 0) & 1) << (7 - i)
            pal[j * 3 + 1] |= ((lab >> 1) & 1) << (7 - i)
            pal[j * 3 + 2] |= ((lab >> 2) & 1) << (7 - i)
            i += 1
            lab >>= 3
    return pal


def save_label_png(label, path):
    from PIL import Image
    im = Image.fromarray(label.astype(np.uint8), mode="P")
    im.putpalette(palette())
    im.save(path)


def overlay(img_bgr, label, alpha=0.5):
    pal = np.array(palette(), dtype=np.uint8).reshape(-1, 3)[:, ::-1]  # to BGR
    color = pal[label.astype(np.int64) % 256]
    return cv2.addWeighted(img_bgr, 1 - alpha, color, alpha, 0)
