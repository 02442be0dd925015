"""What the train / val / export scripts do, FP32 and QAT alike.

Each function takes the parsed arguments of its script; the QAT scripts call
the same functions with ``qat=True``, which only changes how the model is
built (``quant.build_model``) and how results are labelled.
"""
import contextlib
import json
import logging
import os

import numpy as np  # before paddle: segqat/compat/__init__.py
import paddle

from . import builder, calibration, data, engine, export, outputs, quant
from .config import load_config
from .evaluate import evaluate

logger = logging.getLogger(__name__)


def _load_cfg(args, extra=None):
    overrides = dict(extra or {})
    return load_config(args.config, opts=args.opts, overrides=overrides)


def run_training(args, qat=False):
    cfg = _load_cfg(args, {"iters": args.iters, "batch_size": args.batch_size,
                           "lr_scheduler.learning_rate": args.learning_rate})
    cfg.require("iters", "train_dataset", "loss", "optimizer", "lr_scheduler")
    if args.do_eval:
        cfg.require("val_dataset")
    logger.info("Config:\n%s", cfg.to_yaml())
    paddle.seed(args.seed)
    np.random.seed(args.seed)

    model, quanter = quant.build_model(cfg, args.model_path, quantized=qat, stage="train")
    if paddle.distributed.get_world_size() > 1:
        if args.device == "gpu":
            model = paddle.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            logger.info("BatchNorm layers converted to SyncBatchNorm")
        else:
            # paddle 3.3.1 has no CPU kernel for sync_batch_norm ("The kernel
            # `sync_batch_norm` is not registered"): each CPU process keeps its own
            # BatchNorm statistics; rank 0's are saved.
            logger.warning("CPU: BatchNorm statistics are per process (no SyncBatchNorm on CPU)")
    train_ds = builder.build_dataset(cfg, "train", seed=args.seed)
    data.check_labels(train_ds, allow_absent_classes=args.allow_absent_classes)
    val_ds = builder.build_dataset(cfg, "val") if args.do_eval else None
    losses = builder.build_losses(cfg)
    test_cfg = builder.test_config(cfg)
    opts = engine.TrainOptions(
        save_dir=args.save_dir, iters=cfg.iters, batch_size=cfg.batch_size,
        save_interval=args.save_interval, resume_model=args.resume_model,
        keep_checkpoint_max=args.keep_checkpoint_max, num_workers=args.num_workers,
        do_eval=args.do_eval, log_iters=args.log_iters, use_vdl=args.use_vdl, seed=args.seed,
        overwrite=args.overwrite,
        label="Evaluate QAT model (fake quantization)" if qat else "Evaluate",
        start_eval=qat_start_eval(cfg, val_ds, test_cfg, args.seed) if qat and args.do_eval else None)
    res = engine.train(cfg, model, train_ds, val_ds, losses, opts, test_cfg)
    start = res.get("start_metrics")
    if start is not None and res["best_iter"] > 0:
        logger.info("[EVAL] QAT fine-tuning: mIoU %.4f before (iter 0) -> %.4f best (iter %d), %+.2f points",
                    start["mIoU"], res["best_mIoU"], res["best_iter"],
                    100 * (res["best_mIoU"] - start["mIoU"]))
    return res


def qat_start_eval(cfg, val_ds, test_cfg, seed):
    """``TrainOptions.start_eval`` for QAT: what the quantized FP32 weights score before
    fine-tuning changes them.

    A freshly quantized model's activation quantizers hold paddle's initial
    scale (0.001) until the first training step replaces it; evaluated as they
    are, every activation is clipped to +-0.001 and the score means nothing.
    So the scales are calibrated first, on the images PTQ calibrates on (train
    images, deploy preprocessing, ``calibration.CalibrationOptions`` defaults),
    for this evaluation only: the model's state is restored afterwards and
    training runs exactly as it would without it. Compared with the QAT checkpoints it
    shows what fine-tuning bought. (It is near, not equal to, a PTQ model:
    moving-average abs-max scales in fake quantization, not PTQ's ``--algo``.)
    """
    def start_eval(model):
        calib = calibration.Calibration(cfg, calibration.CalibrationOptions(seed=seed, from_flags=False))
        with quant.state_restored(model):
            paddle.seed(seed)  # dropout during calibration
            calibration.calibrate(model, calib.arrays())
            m = evaluate(model, val_ds, test_cfg,
                         label="Evaluate QAT model before fine-tuning (fake quantization)")
        logger.info("[EVAL] before QAT fine-tuning (iter 0): mIoU: %.4f Acc: %.4f Kappa: %.4f Dice: %.4f "
                    "(activation scales calibrated on %d train images for this evaluation only)",
                    m["mIoU"], m["Acc"], m["Kappa"], m["Dice"], calib.num_images)
        m["calibration"] = calib.describe
        return m
    return start_eval


def run_eval(args, qat=False):
    from . import cli
    if args.save_metrics and os.path.isdir(args.save_metrics):
        raise ValueError(f"--save_metrics {args.save_metrics} is a folder; give a file name, "
                         f"e.g. {os.path.join(args.save_metrics, 'metrics.json')}")
    # checked (and locked) before the evaluation, written at the end
    target = (outputs.claim(args.save_metrics, "metrics", overwrite=args.overwrite,
                            inputs=[args.model_path, args.config], flag="--save_metrics")
              if args.save_metrics else contextlib.nullcontext())
    with target:
        cfg = _load_cfg(args)
        cfg.require("val_dataset")
        model, _ = quant.build_model(cfg, args.model_path, quantized=qat, stage="eval")
        val_ds = builder.build_dataset(cfg, "val")
        tc = builder.test_config(cfg, **cli.eval_overrides(args))
        m = evaluate(model, val_ds, tc,
                     label="Evaluate QAT model (fake quantization)" if qat else "Evaluate")
        m.update(model_path=os.path.abspath(args.model_path) if args.model_path else None,
                 config=os.path.abspath(args.config), quantized=qat, test_config=tc)
        if args.save_metrics:
            def write(path):
                with open(path, "w") as f:
                    json.dump(m, f, indent=2)
            outputs.atomic_file_write(args.save_metrics, write, kind="metrics")
            logger.info("Metrics written to %s", args.save_metrics)
    return m


def run_export(args, qat=False):
    with outputs.claim(args.save_dir, "export", overwrite=args.overwrite,
                       inputs=[args.model_path, args.config]):
        cfg = _load_cfg(args)
        export.check_input_shape(cfg, args.input_shape)
        model, quanter = quant.build_model(cfg, args.model_path, quantized=qat, stage="export")
        out = export.export_model(cfg, model, args.save_dir, input_shape=args.input_shape,
                                  output_op=args.output_op, quanter=quanter)
    if qat:
        logger.info("INT8 inference model: run it with deploy/python/infer.py --config %s/deploy.yaml "
                    "(deploy.yaml says INT8)", out)
    return out
