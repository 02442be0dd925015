"""Paddle Lite 2.13rc0 x86 INT8: weights requantized to 7 bits so its int8 GEMM cannot saturate.

Lite's x86 int8 convolution (``lite/backends/x86/math/gemm_s8u8_kernel.cc``,
``_MM256_DOT_U8S8``) shifts the int8 activations to u8 (+128) and multiplies them with the
s8 weights by ``_mm256_maddubs_epi16``, which adds each pair of neighbouring products into a
*saturating* int16; there is no VNNI path. A pair of |u8 x s8| products exceeds 32767 as soon
as a weight is beyond +-64 with an activation near its top: QAT weights use the whole
[-127, 127] range, so the sums clip. Measured on the CamVid BiSeNetV2 QAT export (8 val
images, 180x240): Lite's labels agreed with the fake-quantized model on 89.17% of pixels
(Paddle Inference's oneDNN on 99.57%); the first convolution alone was off by up to 48% of
its range, only where the (normalized) image is bright.

``lite_x86_int8_copy`` writes a copy of an INT8 export whose int8 weights are halved
(round(q / 2), |q| <= 64) and their scales doubled: the same dequantized weights up to one
7-bit rounding, and no pair of products beyond 255 * 64 * 2 = 32640. Lite then computes what
Paddle computes for that copy (99.76% of labels), and 99.31% agree with the original fake-
quantized model. The export itself is not changed; ARM conversions use it as it is.
"""
import os

import numpy as np

# |q| after halving: 255 * 64 * 2 = 32640 <= 32767 (int16)
MAX_ABS_WEIGHT_7BIT = 64


def lite_x86_int8_copy(model_file, params_file, out_dir):
    """Write ``out_dir``/model.pdmodel + model.pdiparams: the program with every int8 weight
    (the persistable input of a dequantize_linear) halved and its scale doubled. Returns how
    many weights changed."""
    import paddle
    from .program_io import load_old_ir_program, old_ir_static
    prog, feeds, fetches, scope, exe = load_old_ir_program(model_file, params_file)
    count = 0
    with old_ir_static(), paddle.static.scope_guard(scope):
        blk = prog.global_block()
        for op in blk.ops:
            if op.type != "dequantize_linear" or not blk.var(op.input("X")[0]).persistable:
                continue
            w = scope.find_var(op.input("X")[0]).get_tensor()
            s = scope.find_var(op.input("Scale")[0]).get_tensor()
            q, scale = np.array(w), np.array(s)
            if q.dtype != np.int8:
                continue
            w.set(np.round(q.astype(np.float32) / 2).astype(np.int8), paddle.CPUPlace())
            s.set((scale * 2).astype(scale.dtype), paddle.CPUPlace())
            count += 1
        paddle.static.save_inference_model(os.path.join(out_dir, "model"), [blk.var(feeds[0])],
                                           fetches, exe, program=prog)
    return count
