"""Helpers shared by the old-IR export tests (tests/compat/), the ONNX tests (tests/deploy/)
and the zoo export tests (tests/zoo/): running an old-IR program in Paddle Inference with its
default passes, a small ISANet head, a calibrated QAT-wrapped layer."""
import numpy as np  # noqa: F401  (numpy before paddle: segqat/compat/__init__.py)
import paddle

def paddle_inference(prefix, inputs, onednn):
    """Run an old-IR program with Paddle Inference's default passes (not segqat's predictor,
    which deletes the broken fuse pass: these tests check the exports avoid it themselves).
    ``onednn="int8"`` also runs the oneDNN INT8 passes (segqat's INT8 op set)."""
    return paddle_inference_runs(prefix, [inputs], onednn)[0]


def paddle_inference_runs(prefix, runs, onednn):
    """``paddle_inference`` for several inputs (tuples) through one predictor, in order."""
    from paddle import inference as pi
    cfg = pi.Config(f"{prefix}.pdmodel", f"{prefix}.pdiparams")
    cfg.enable_new_ir(False)
    cfg.disable_gpu()
    cfg.disable_glog_info()
    cfg.set_cpu_math_library_num_threads(1)
    if onednn:
        cfg.enable_onednn()
    if onednn == "int8":
        cfg.enable_onednn_int8({"conv2d", "depthwise_conv2d", "fused_conv2d"})  # as segqat.deploy
    pred = pi.create_predictor(cfg)
    outs = []
    for inputs in runs:
        for name, a in zip(pred.get_input_names(), inputs):
            h = pred.get_input_handle(name)
            h.reshape(a.shape)
            h.copy_from_cpu(a)
        pred.run()
        outs.append(pred.get_output_handle(pred.get_output_names()[0]).copy_to_cpu())
    return outs


class ISAHeadOnly(paddle.nn.Layer):
    """paddleseg's ISAHead (ISANet) on a one-conv "backbone", small enough for a unit test."""

    def __init__(self):
        super().__init__()
        from paddleseg.models.isanet import ISAHead
        self.stem = paddle.nn.Conv2D(3, 16, 1)
        self.head = ISAHead(3, [16, 16], isa_channels=4, down_factor=(4, 4), enable_auxiliary_loss=False)

    def forward(self, x):
        f = self.stem(x)
        return self.head([f, f])[0]


def quantized_for_eval(layer, seed):
    """QAT-wrap ``layer`` with the default quant config, calibrate it on two random 6x6
    batches and put it in eval mode; returns the quanter and the RNG for further inputs."""
    from segqat import calibration, quant
    quanter = quant.quantize(layer, dict(quant.DEFAULT_QUANT_CONFIG))
    r = np.random.RandomState(seed)
    calibration.calibrate(layer, [r.rand(1, 3, 6, 6).astype("float32") for _ in range(2)])
    layer.eval()
    return quanter, r
