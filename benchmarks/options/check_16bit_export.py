"""Why 16-bit models are not exported: what paddle's export writes for 16-bit weights.

    python benchmarks/options/check_16bit_export.py

Quantizes BiSeNetV2 (synthetic config, random weights) with 16-bit weights and
activations, exports it the way qat_export would if it allowed 16 bits, and
compares every stored weight tensor with the 16-bit integers it should hold.
"""
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import paddle  # noqa: E402

from segqat import calibration, compat, export, quant  # noqa: E402
from segqat.config import load_config  # noqa: E402

cfg = load_config(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "bisenetv2",
                               "bisenetv2_synthetic_64x64.yml"))
paddle.seed(0)
model, _ = quant.build_model(cfg)
qc = dict(quant.quant_settings(cfg, purpose="train"), weight_bits=16, activation_bits=16)
quanter = quant.quantize(model, qc)
calibration.calibrate(model, [paddle.rand([2, 3, 64, 64])] * 3)
# per output channel: the 16-bit integers of each conv weight, by static parameter name
expected = {}
for layer in model.sublayers():
    if type(layer).__name__ == "QuantizedConv2D":
        w = layer.weight.numpy().astype(np.float64)
        s = np.abs(w).reshape(w.shape[0], -1).max(1).reshape(-1, 1, 1, 1)
        expected[layer.weight.name] = np.round(w / s * 32767).astype(np.int64)
with tempfile.TemporaryDirectory() as d:
    export.export_model(cfg, model, os.path.join(d, "m"), quanter=quanter)  # the refused route
    with compat.old_ir_static():
        scope = paddle.static.Scope()
        with paddle.static.scope_guard(scope):
            exe = paddle.static.Executor(paddle.CPUPlace())
            paddle.static.load_inference_model(os.path.join(d, "m", "model"), exe)
            stored = {n: np.array(scope.find_var(n).get_tensor()) for n in expected
                      if scope.find_var(n) is not None}
n = sum(t.size for t in stored.values())
dtypes = {str(t.dtype) for t in stored.values()}
wrapped = sum(int((stored[k] == ((expected[k] + 128) % 256 - 128)).sum()) for k in stored)
exact = sum(int((stored[k] == expected[k]).sum()) for k in stored)
print(f"{len(stored)} conv weight tensors, {n} values, stored as {dtypes}")
print(f"equal to the 16-bit integer: {exact / n:.4f}; equal to it modulo 256 (int8 wrap-around): "
      f"{wrapped / n:.4f}")
