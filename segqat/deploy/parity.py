"""Parity of a deployed model with Paddle: does a runtime compute what the export means?

    batch = parity.check_batch(dep, pred.preprocess)          # check images, [N, C, H, W]
    parity.check(dep, pred.run, batch, runtime="OpenVINO")    # DeployError below MIN_AGREEMENT

The reference is the export run by Paddle's own executor (``paddle_outputs``:
CPU, no oneDNN passes; a quantized program runs its quantize/dequantize ops,
i.e. fake quantization). ``check`` runs ``run`` (any runtime: a Predictor's
``run``, an ONNX Runtime session, ...) one image at a time on the same batch
and refuses a model whose labels agree on fewer than ``MIN_AGREEMENT`` of the
pixels. ``segqat.deploy.onnx_runtime`` checks every converted model this way
before it is used.
"""
import logging

import numpy as np

from .contract import DeployError

logger = logging.getLogger(__name__)

MIN_AGREEMENT = 0.99
CHECK_SIZE = 256  # check images are this size when deploy.yaml's input_shape leaves H, W free


def paddle_outputs(dep, batches):
    """The export's output on each array of ``batches`` as Paddle runs it (CPU executor,
    no oneDNN passes: a quantized program runs its quantize/dequantize ops, i.e. fake
    quantization), concatenated."""
    import paddle
    from .. import compat
    prog, feeds, fetches, scope, exe = compat.load_old_ir_program(dep["model_file"],
                                                                  dep["params_file"])
    with compat.old_ir_static(), paddle.static.scope_guard(scope):
        return np.concatenate([np.asarray(exe.run(prog, feed={feeds[0]: b}, fetch_list=fetches)[0])
                               for b in batches])


def check_batch(dep, preprocess, images=None, count=2):
    """Preprocessed check images, [N, C, H, W] float32: ``images`` (BGR arrays or file
    paths, one size) or ``count`` synthetic images (segqat.datagen) of deploy.yaml's
    input size, CHECK_SIZE square where it leaves H, W free. An export with a fixed
    input size gets the preprocessed images resized to it (deploy.yaml's transforms
    may resize elsewhere; slim/quant/bench_latency.py exports at 512x512)."""
    import cv2
    from .. import datagen
    from ..data import read_image
    if images:
        loaded = []
        for im in images:
            if isinstance(im, str):
                im = read_image(im, "check image")  # OpenCV, or Pillow for a GIF
            loaded.append(im)
    else:
        shape = list(dep.get("input_shape") or [-1, 3, -1, -1])
        h, w = (shape[2], shape[3]) if len(shape) == 4 and shape[2] > 0 and shape[3] > 0 else \
            (CHECK_SIZE, CHECK_SIZE)
        loaded = [cv2.resize(datagen.synthetic_image(max(h, w), seed=i), (w, h)) for i in range(count)]
    xs = [preprocess(im)[0] for im in loaded]
    shape = list(dep.get("input_shape") or [])
    if len(shape) == 4 and shape[2] > 0 and shape[3] > 0:  # a fixed-size export: feed its size
        xs = [x if x.shape[1:] == (shape[2], shape[3]) else
              cv2.resize(x.transpose(1, 2, 0), (shape[3], shape[2])).reshape(shape[2], shape[3], -1)
              .transpose(2, 0, 1) for x in xs]
    if len({x.shape for x in xs}) != 1:
        raise DeployError(f"check images differ in size after preprocessing: {sorted({x.shape for x in xs})}")
    return np.stack(xs).astype(np.float32)


def labels_of(dep, out):
    """Label maps [N, H, W] from a model output (argmax already, or scores [N, C, H, W])."""
    out = np.asarray(out)
    return out.astype(np.int64) if dep["output_op"] == "argmax" else out.argmax(1)


def check(dep, run, batch, min_agreement=MIN_AGREEMENT, synthetic=False, runtime="ONNX"):
    """Pixel agreement of ``run``'s labels (the deployed model, one image at a time) with
    Paddle's own run of the export on ``batch``; a DeployError below ``min_agreement``.
    ``synthetic``: the batch is check_batch's synthetic images, and the error says so (a
    weakly trained model has more near ties on them than on real images). ``runtime``
    names the deployed model in the messages."""
    ref = labels_of(dep, paddle_outputs(dep, [x[None] for x in batch]))
    got = labels_of(dep, np.concatenate([run(x[None]) for x in batch]))
    if got.shape != ref.shape:
        raise DeployError(f"{dep['path']}: the {runtime} model's output has shape {got.shape}, "
                          f"Paddle's {ref.shape}")
    agreement = float((got == ref).mean())
    what = "fake-quantized (quantize/dequantize executed)" if dep["precision"] == "int8" else "FP32"
    if not agreement >= min_agreement:
        raise DeployError(
            f"{dep['path']}: the {runtime} model deviates from Paddle's {what} run: labels agree on "
            f"{agreement:.2%} of {got.size} pixels of {len(batch)} check images, below "
            f"{min_agreement:.0%}. Not used." + (
                " The check images were synthetic: check on real images (infer.py --check_images, "
                "export_onnx.py --image_path), where a weakly trained model has fewer near ties, "
                "before lowering --min_agreement." if synthetic else ""))
    logger.info("%s vs Paddle %s: labels agree on %.3f%% of %d pixels (%d check images)",
                runtime, what, agreement * 100, got.size, len(batch))
    return agreement

