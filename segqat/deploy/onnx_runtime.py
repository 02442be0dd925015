"""ONNX Runtime (CPU execution provider) on our exports, converted to ONNX at load.

    pred = create_predictor("output/qat_infer", runtime="onnxruntime", threads=2)
    pred.int8_ops()        # {'ConvInteger': 54}: INT8 kernels in ONNX Runtime's optimized graph

The export is converted in memory by ``onnx_export.convert`` (FP32 through
paddle2onnx; INT8 as a QDQ model with Paddle's quantization placement) and
nothing is written beside it; ``save_onnx=PATH`` also writes the checked model
(deploy/python/export_onnx.py does that for deployers). Before the predictor is
returned, the model runs on a check batch in the very session it will use and
is refused if its labels agree with Paddle's run of the export on fewer than
``min_agreement`` of the pixels (``parity.check``; 0.99; 0 only reports the
agreement: for latency runs on random weights, whose labels are chaotic under
quantization).

The session runs ``threads`` intra-op threads, all graph optimizations, and
``session.x64quantprecision=1``: on x86 CPUs without VNNI (AVX2 / AVX-512F),
ONNX Runtime's default u8 x s8 kernels add pairs of products in 16 bits and
saturate (on the synthetic BiSeNetV2 a first-layer output was off by 37
quantization steps and labels agreed on 99.35% instead of 99.95%); the option
makes it use exact u8 x u8 kernels there and changes nothing on CPUs with VNNI.
The proof of INT8 is the optimized graph ONNX Runtime saves
(``SessionOptions.optimized_model_filepath``): its QLinearConv / ConvInteger /
MatMulInteger / QLinearMatMul nodes.
"""
import logging
import os
import shutil
import tempfile
from collections import Counter

from . import onnx_export, parity
from .contract import DeployError, Predictor

logger = logging.getLogger(__name__)
OPTIONS = ("save_onnx", "check_images", "min_agreement", "profile_prefix")


def session_options(threads, optimized_path=None, verbose=False, profile_prefix=None):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.x64quantprecision", "1")
    # no busy-waiting after a run: spinning workers took the CPU from the next model timed
    # (BiSeNetV2 at 512x512, 2 threads: ORT FP32 87 ms beside Paddle / OpenVINO, 128 ms
    # interleaved with its own INT8 session, whose threads spun meanwhile)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    if profile_prefix:  # ORT's profiler: a JSON of node times, written at end_profiling()
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    if not verbose:  # its warning that an ORT_ENABLE_ALL graph is hardware-specific
        so.log_severity_level = 3
    return so


def session(model_bytes, threads, optimized_path=None, verbose=False, profile_prefix=None):
    import onnxruntime as ort
    try:
        return ort.InferenceSession(model_bytes, session_options(threads, optimized_path, verbose, profile_prefix),
                                    providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail / InvalidGraph / RuntimeException
        raise DeployError(f"ONNX Runtime cannot load the converted model: {e}") from e


def _warn_without_vnni():
    """ONNX Runtime's INT8 convolution is not faster than its FP32 one on an x86 CPU without
    VNNI: QLinearConv's fast u8 x s8 kernel (vpmaddubsw) saturates its 16-bit pair sums
    there, so segqat runs it with session.x64quantprecision = 1 (exact, u8 x u8) and
    ConvInteger is u8 x u8 anyway. Measured on an AVX2 EPYC (benchmarks/speed): BiSeNetV2
    at 512x512 with random weights, INT8 about as slow as FP32; the fast kernel changed 12% of
    its labels."""
    from ..bench import machine
    m = machine()
    if not m["vnni"] and any(f.startswith("avx") for f in m["isa"]):
        logger.warning("ONNX Runtime INT8 on this CPU (%s, no VNNI) is not faster than FP32: its "
                       "exact INT8 convolution kernels here are u8 x u8 (see docs/deployment.md); "
                       "--runtime openvino or paddle runs INT8 faster on it", m["cpu"])


class OnnxRuntimePredictor(Predictor):
    runtime = "onnxruntime"

    def __init__(self, dep, precision, threads, verbose=False, save_onnx=None, check_images=None,
                 min_agreement=parity.MIN_AGREEMENT, profile_prefix=None):
        import onnx
        super().__init__(dep, precision, threads)
        if precision == "fp16":
            raise DeployError("--runtime onnxruntime: --precision fp16 is not offered here (CPU)")
        if save_onnx and os.path.exists(save_onnx):
            raise DeployError(f"save_onnx: {save_onnx} exists; remove it or choose another path")
        if not 0 <= float(min_agreement) <= 1:
            raise DeployError(f"min_agreement must be in [0, 1] (0: report, never refuse), "
                              f"got {min_agreement!r}")
        self.agreement = None
        self.model = model = onnx_export.convert(dep)
        tmp = tempfile.mkdtemp(prefix="segqat_ort_")
        try:
            optimized = os.path.join(tmp, "optimized.onnx")
            self.session = session(model.SerializeToString(), threads, optimized, verbose, profile_prefix)
            self._kernels = Counter(n.op_type for n in onnx.load(optimized).graph.node)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._input = self.session.get_inputs()[0].name
        self._check_int8()
        if precision == "int8":
            _warn_without_vnni()
        try:
            batch = parity.check_batch(dep, self.preprocess, check_images)
            self.agreement = parity.check(dep, self._run, batch, float(min_agreement),
                                          synthetic=not check_images)
        except DeployError:
            self.close()
            raise
        if save_onnx:  # checked again right before the rename; never over an existing file
            from .. import outputs
            outputs.atomic_file_write(save_onnx, lambda tmp: onnx_export.save(model, tmp),
                                      kind="onnx", overwrite=False, flag="--save_onnx")

    def int8_ops(self):
        return Counter({k: n for k, n in self._kernels.items() if k in onnx_export.INT8_KERNELS})

    def describe(self):
        return super().describe() + f", labels agree with Paddle on {self.agreement:.2%} of check pixels"

    def _run(self, batch):
        return self.session.run(None, {self._input: batch})[0]

    def close(self):
        self.session = None
