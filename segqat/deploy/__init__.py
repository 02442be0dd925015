"""Run an exported directory on a deployment runtime.

    pred = create_predictor("output/qat_infer", runtime="paddle", threads=2)
    labels = pred.predict([img_bgr])      # list of HxW int arrays, original size
    pred.int8_ops()                       # {'fused_conv2d': 56}: the INT8 kernels it compiled

The precision comes from the directory's deploy.yaml unless given. Each
runtime is one module with one ``Predictor`` subclass, named in ``RUNTIMES``;
the deploy.yaml contract and pre/post-processing live in ``contract``, and
``parity`` checks a runtime's labels against Paddle's run of the export.
"""
import importlib
import logging

from .contract import (PRECISIONS, DeployError, Predictor, build_transforms,  # noqa: F401
                       load_deploy_config, model_channels, overlay, overlay_colors, palette,
                       resolve_precision, save_label_png, to_channels)
from .paddle_inference import conv_input_scales, program_op_types  # noqa: F401
from .precision import check_export_is, program_precision  # noqa: F401

logger = logging.getLogger(__name__)

# runtime name -> (module in this package, its Predictor class)
RUNTIMES = {
    "paddle": ("paddle_inference", "PaddlePredictor"),
    "openvino": ("openvino", "OpenVINOPredictor"),
    "onnxruntime": ("onnx_runtime", "OnnxRuntimePredictor"),
    "lite": ("lite", "LitePredictor"),  # in its own Python 3.10 environment (make venv-lite)
}


def runtime_class(runtime):
    if runtime not in RUNTIMES:
        raise DeployError(f"--runtime {runtime!r} is not available; choose from {', '.join(RUNTIMES)}")
    module, cls = RUNTIMES[runtime]
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def create_predictor(deploy_path, runtime="paddle", precision=None, threads=1, verbose=False,
                     allow_external_model=False, **options):
    """A ``Predictor`` for the exported directory (or its deploy.yaml) on ``runtime``.

    ``precision`` defaults to deploy.yaml's; ``threads`` is the CPU thread count
    the runtime gets. ``allow_external_model``: deploy.yaml's model/params may lie outside
    the export folder (``--allow_external_model``). ``options`` are runtime-specific (Paddle: device,
    enable_mkldnn, use_trt, ...); an option the runtime does not take is an error.
    """
    cls = runtime_class(runtime)
    dep = load_deploy_config(deploy_path, allow_external_model)
    precision = resolve_precision(dep, precision)
    allowed = getattr(importlib.import_module(cls.__module__), "OPTIONS", ())
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise DeployError(f"--runtime {runtime} does not take {', '.join(unknown)} "
                          f"(it takes: {', '.join(allowed) or 'no runtime options'})")
    pred = cls(dep, precision, threads, verbose=verbose, **options)
    logger.info("%s: %s", dep["path"], pred.describe())
    return pred
