"""The training loop: FP32 training and QAT fine-tuning alike.

    res = train(cfg, model, train_ds, val_ds, losses, TrainOptions(save_dir="out", iters=1000))

The same ``train`` serves FP32 training (tools/train.py) and QAT
(slim/quant/qat_train.py): QAT passes an already-quantized model and, with
--do_eval, a ``start_eval`` that scores the quantized FP32 weights before the
first step; nothing else changes. It logs PaddleSeg's [TRAIN] lines, evaluates
at each save with --do_eval (``evaluate.evaluate``: the [EVAL] lines), keeps
``best_model/``, and with VisualDL writes Train/* and Evaluate/{mIoU,Acc,Kappa,Dice}
and Evaluate/IoU/<class name>. Works under ``python -m paddle.distributed.launch``:
data is sharded per rank, gradients all-reduced by ``paddle.DataParallel``, and
only rank 0 logs, evaluates and writes checkpoints.

Checkpoints (``iter_N/``, ``best_model/``; atomic, verified, pruned per run,
resumed from) are ``checkpoint``'s.
"""
import dataclasses
import functools
import logging
import math
import os
import time
import typing
import uuid

import numpy as np
import paddle

from . import checkpoint, compat, outputs
from .builder import build_lr_scheduler, build_optimizer
from .data import ResumableBatchSampler, class_names_of
from .evaluate import evaluate, format_eta

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainOptions:
    save_dir: str = "output"
    iters: int = 1000
    batch_size: int = 2
    save_interval: int = 1000
    resume_model: str = None
    keep_checkpoint_max: int = 5
    num_workers: int = 0
    do_eval: bool = False
    log_iters: int = 10
    use_vdl: bool = False
    seed: int = 0
    overwrite: bool = False  # replace another run's checkpoints in save_dir (at the first save)
    label: str = "Evaluate"  # how eval lines are labelled ("Evaluate QAT model")
    # Called with the model before the first step of a run that does not resume (rank 0):
    # returns the metrics of the starting point (QAT: the quantized FP32 weights). They go
    # to VisualDL at step 0 and into every state.json as "start_metrics"; never best_model.
    start_eval: typing.Optional[typing.Callable] = None


def compute_loss(losses, logits_list, label):
    """The training loss: sum over the model's outputs of coef * loss(output, label)
    (``losses`` as ``builder.build_losses`` returns it: one loss and coef per output)."""
    if len(logits_list) != len(losses["types"]):
        raise ValueError(f"the model returned {len(logits_list)} outputs but loss.types has "
                         f"{len(losses['types'])} entries; give one loss (and coef) per output")
    total = 0
    for logit, fn, coef in zip(logits_list, losses["types"], losses["coef"]):
        total = total + coef * fn(logit, label)
    return total


def _simple_loader(dataset, sampler):
    for indices in sampler:
        samples = [dataset[i] for i in indices]
        yield tuple(paddle.to_tensor(np.stack(field)) for field in zip(*samples))


def exit_with_parent(parent_pid):
    """End this process when ``parent_pid`` (the training process) dies, even by kill -9.

    paddle's loader workers check their parent only between batches and stay
    alive (with their memory) when it dies while they wait to hand over a batch.
    On Linux the kernel sends SIGKILL (``prctl(PR_SET_PDEATHSIG)``); elsewhere a
    daemon thread checks the parent every second.
    """
    import ctypes
    import signal
    import sys
    import threading
    if sys.platform.startswith("linux"):
        try:
            pr_set_pdeathsig = 1  # <linux/prctl.h>
            if ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL)) == 0:
                if os.getppid() != parent_pid:  # died before prctl took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(1)
        os._exit(1)
    threading.Thread(target=watch, daemon=True, name="segqat-parent-watch").start()


def _worker_init(parent_pid, worker_id):
    exit_with_parent(parent_pid)
    compat.set_cpu_threads(1)


def train(cfg, model, train_ds, val_ds, losses, opts, test_cfg=None):
    """Train ``model``; returns {'best_mIoU', 'best_iter', 'last_iter'}.

    Runs in a fresh unique-name scope: the optimizer's accumulators
    (``<param>_velocity_0``) are named the same in every run, which
    ``model.pdopt`` needs to be restored into a new process or a second run.
    """
    with paddle.utils.unique_name.guard():
        return _train(cfg, model, train_ds, val_ds, losses, opts, test_cfg)


def _train(cfg, model, train_ds, val_ds, losses, opts, test_cfg):
    world = paddle.distributed.get_world_size()
    rank = paddle.distributed.get_rank()
    is_main = rank == 0
    if world > 1:
        paddle.distributed.init_parallel_env()

    lr_sched = build_lr_scheduler(cfg)  # --learning_rate is already in cfg
    optimizer = build_optimizer(cfg, model, lr_sched)

    start_iter, best_miou, best_iter = 0, -1.0, -1
    start_metrics = None
    run_id = uuid.uuid4().hex[:12]
    if opts.resume_model:
        state = checkpoint.load_resume(opts.resume_model, model, optimizer, lr_sched)
        start_iter = state["iter"]
        start_metrics = state.get("start_metrics")
        run_id = state.get("run_id") or run_id
        best_miou, best_iter = state.get("best_mIoU", -1.0), state.get("best_iter", -1)
        if opts.do_eval:  # only an evaluating run writes best_model
            best_miou, best_iter = checkpoint.best_to_beat(opts.save_dir, run_id, best_miou, best_iter,
                                                           opts.resume_model, opts.overwrite)
        if start_iter >= opts.iters:
            raise checkpoint.ResumeError(f"--resume_model {opts.resume_model} is at iteration {start_iter}, "
                              f"not before --iters {opts.iters}: nothing to train")

    ddp_model = paddle.DataParallel(model) if world > 1 else model
    sampler = ResumableBatchSampler(train_ds, opts.batch_size, shuffle=True, seed=opts.seed,
                                    rank=rank, world_size=world)
    iters_per_epoch = len(sampler)
    epoch, skip = divmod(start_iter, iters_per_epoch)

    writer = None
    if opts.use_vdl and is_main:
        from visualdl import LogWriter
        writer = LogWriter(os.path.join(opts.save_dir, "vdl_log"))
    class_names = class_names_of(val_ds) if val_ds is not None else None
    if is_main:
        os.makedirs(opts.save_dir, exist_ok=True)
        outputs.clean_stale(opts.save_dir)
    if opts.start_eval is not None and not opts.resume_model:
        if is_main:
            start_metrics = {"iter": 0, **_short(opts.start_eval(model))}
            if writer:
                write_eval_scalars(writer, start_metrics, 0, class_names)
        if world > 1:
            paddle.distributed.barrier()
    if opts.resume_model and checkpoint.run_of(opts.resume_model) is None:
        # a checkpoint from before run ids: its folder's checkpoints are this run's
        checkpoint.adopt_checkpoints(opts.save_dir, run_id)

    model.train()
    it = start_iter
    reader_cost = batch_cost = 0.0
    samples = since_log = 0
    config_saved = False
    tic = time.time()
    run_start = time.time()
    while it < opts.iters:
        train_ds.set_epoch(epoch)
        sampler.set_epoch(epoch, skip)
        if opts.num_workers > 0:
            loader = paddle.io.DataLoader(train_ds, batch_sampler=sampler, num_workers=opts.num_workers,
                                          return_list=True,
                                          worker_init_fn=functools.partial(_worker_init, os.getpid()),
                                          use_shared_memory=False)
        else:
            # paddle's single-process DataLoader reads in a thread and hangs when a
            # sample raises; reading here lets a DataError reach the user.
            loader = _simple_loader(train_ds, sampler)
        for img, label in loader:
            reader_cost += time.time() - tic
            it += 1
            paddle.seed(opts.seed + it)  # dropout etc.: a function of the iteration only
            logits_list = ddp_model(img)
            loss = compute_loss(losses, logits_list, label)
            loss_value = compat.scalar(loss)
            if not math.isfinite(loss_value):
                raise FloatingPointError(
                    f"Loss is {loss_value} at iteration {it}; stopping, nothing saved from it "
                    f"({checkpoint.last_saved(opts.save_dir, run_id)}). Lower --learning_rate "
                    f"(it was {optimizer.get_lr():g}) or check the labels.")
            loss.backward()
            optimizer.step()
            lr = optimizer.get_lr()
            lr_sched.step()
            model.clear_gradients()
            batch_cost += time.time() - tic
            samples += img.shape[0]
            since_log += 1

            if is_main and (it % opts.log_iters == 0 or it == opts.iters):
                avg_batch, avg_reader = batch_cost / since_log, reader_cost / since_log
                eta = avg_batch * (opts.iters - it)
                logger.info(
                    "[TRAIN] epoch: %d, iter: %d/%d, loss: %.4f, lr: %.6f, batch_cost: %.4f, "
                    "reader_cost: %.5f, ips: %.4f samples/sec | ETA %s",
                    epoch + 1, it, opts.iters, loss_value, lr, avg_batch, avg_reader,
                    samples / max(batch_cost, 1e-9), format_eta(eta))
                if writer:
                    writer.add_scalar("Train/loss", loss_value, it)
                    writer.add_scalar("Train/lr", lr, it)
                    writer.add_scalar("Train/batch_cost", avg_batch, it)
                    writer.add_scalar("Train/reader_cost", avg_reader, it)
                reader_cost = batch_cost = 0.0
                samples = since_log = 0

            saving = it % opts.save_interval == 0 or it == opts.iters
            if saving or it % opts.log_iters == 0:
                bad = checkpoint.non_finite_parameters(model)
                if bad:
                    raise FloatingPointError(
                        f"Weights became non-finite (NaN/Inf or beyond 1e10) by iteration {it} ({len(bad)} tensors, "
                        f"e.g. {', '.join(bad[:3])}); stopping, nothing saved from them "
                        f"({checkpoint.last_saved(opts.save_dir, run_id)}). Lower --learning_rate "
                        f"(it was {lr:g}) or check the data.")
            if saving:
                if is_main and not config_saved:
                    # Written with the first checkpoint: a run that fails before it
                    # leaves an earlier run's save_dir as it was.
                    if opts.overwrite:
                        checkpoint.remove_other_runs(opts.save_dir, run_id)
                    cfg.save(os.path.join(opts.save_dir, "config.yaml"))
                    outputs.write_marker(opts.save_dir, "train")
                    config_saved = True
                if is_main:
                    state = {"iter": it, "epoch": epoch, "best_mIoU": best_miou,
                             "best_iter": best_iter, "seed": opts.seed, "run_id": run_id}
                    if start_metrics is not None:
                        state["start_metrics"] = start_metrics
                    if opts.do_eval and val_ds is not None:
                        m = evaluate(model, val_ds, test_cfg, label=opts.label)
                        model.train()
                        if writer:
                            write_eval_scalars(writer, m, it, class_names)
                        if m["mIoU"] > best_miou:
                            best_miou, best_iter = m["mIoU"], it
                            state.update(best_mIoU=best_miou, best_iter=best_iter)
                            checkpoint.save_checkpoint(os.path.join(opts.save_dir, "best_model"), model,
                                                       state={**state, "metrics": _short(m)})
                        logger.info("[EVAL] The model with the best validation mIoU (%.4f) "
                                    "was saved at iter %d.", best_miou, best_iter)
                    checkpoint.save_checkpoint(os.path.join(opts.save_dir, f"iter_{it}"), model,
                                               optimizer, state)
                    checkpoint.prune_checkpoints(opts.save_dir, opts.keep_checkpoint_max, run_id)
                if world > 1:
                    paddle.distributed.barrier()
            if it >= opts.iters:
                break
            tic = time.time()
        epoch += 1
        skip = 0
    if writer:
        writer.close()
    if world > 1:
        # Each rank reports its weights: with all-reduced gradients they must be identical
        # (BatchNorm statistics are not: per process on CPU, see workflow).
        logger.warning("rank %d/%d trainable parameters sha1 %s, BatchNorm statistics sha1 %s",
                       rank, world, checkpoint.weights_digest(model),
                       checkpoint.weights_digest(model, trainable=False))
    if is_main:
        logger.info("Training done: %d iterations in %s", it - start_iter,
                    format_eta(time.time() - run_start))
    out = {"best_mIoU": best_miou, "best_iter": best_iter, "last_iter": it}
    if start_metrics is not None:
        out["start_metrics"] = start_metrics
    return out


def vdl_tag(name):
    """A class name as one VisualDL tag level ('%' is refused by LogWriter, '/' nests)."""
    return name.replace("%", "_").replace("/", "_")


def write_eval_scalars(writer, m, step, class_names=None):
    """Evaluate/{mIoU,Acc,Kappa,Dice} and Evaluate/IoU/<class> for one evaluation."""
    for k in ("mIoU", "Acc", "Kappa", "Dice"):
        writer.add_scalar(f"Evaluate/{k}", m[k], step)
    names = class_names or [str(c) for c in range(len(m["class_IoU"]))]
    for name, v in zip(names, m["class_IoU"]):
        writer.add_scalar(f"Evaluate/IoU/{vdl_tag(name)}", v, step)


def _short(m):
    return {k: v for k, v in m.items() if k != "confusion_matrix"}
