"""Training checkpoints: write, verify, prune, resume from, and whose they are.

    save_checkpoint("out/iter_100", model, optimizer, {"iter": 100, "run_id": run_id, ...})
    state = load_resume("out/iter_100", model, optimizer)      # --resume_model

Layout (PaddleSeg's): ``save_dir/iter_N/{model.pdparams, model.pdopt,
state.json}`` and ``save_dir/best_model/``. Each is written to a temporary
directory, read back (every tensor there, all finite) and renamed into place
(``outputs.atomic_dir_write``), so an interrupted save never leaves a broken
checkpoint where a good one stood.

Every checkpoint's state.json names the run that wrote it (``run_id``): pruning
(--keep_checkpoint_max) and --overwrite only ever touch this run's or, at the
first save, earlier runs' checkpoints, and a resumed run carries the run id on.
The training loop that calls these is ``engine.train``.
"""
import hashlib
import json
import logging
import math
import os

import numpy as np
import paddle

from . import outputs, weights

logger = logging.getLogger(__name__)


class ResumeError(ValueError):
    """--resume_model names something training cannot continue from."""


def non_finite_parameters(model):
    """Names of the model's parameters and buffers that hold NaN, Inf or a value beyond
    +-weights.MAX_ABS_WEIGHT (a diverged run)."""
    from .weights import MAX_ABS_WEIGHT
    bad = []
    for name, t in model.state_dict().items():
        if t.dtype in (paddle.float32, paddle.float64, paddle.float16) and t.size and not (
                bool(paddle.isfinite(t).all()) and float(paddle.abs(t).max()) <= MAX_ABS_WEIGHT):
            bad.append(name)
    return bad


def weights_digest(model, trainable=True):
    """sha1 of the trainable parameters (or of the rest: BatchNorm statistics)."""
    h = hashlib.sha1()
    for name, t in sorted(model.named_parameters()):
        if t.trainable == trainable:
            h.update(name.encode())
            h.update(np.ascontiguousarray(t.numpy()).tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------- writing

def verify_checkpoint(d, expected_keys):
    """Read a written checkpoint back (safely) before it replaces anything."""
    state = weights.load_state(os.path.join(d, "model.pdparams"), what="checkpoint")
    if set(state) != set(expected_keys):
        raise outputs.OutputError(f"checkpoint {d}: model.pdparams reads back with {len(state)} "
                                  f"tensors, expected {len(expected_keys)}")
    weights.require_finite(state, os.path.join(d, "model.pdparams"), what="checkpoint")
    if os.path.isfile(os.path.join(d, "model.pdopt")):
        weights.load_state(os.path.join(d, "model.pdopt"), what="checkpoint")
    if os.path.isfile(os.path.join(d, "state.json")):
        with open(os.path.join(d, "state.json")) as f:
            json.load(f)


def save_checkpoint(path, model, optimizer=None, state=None):
    """Write ``path/`` (model.pdparams, model.pdopt, state.json) atomically, verified."""
    sd = model.state_dict()

    def write(d):
        paddle.save(sd, os.path.join(d, "model.pdparams"))
        if optimizer is not None:
            paddle.save(optimizer.state_dict(), os.path.join(d, "model.pdopt"))
        if state is not None:
            with open(os.path.join(d, "state.json"), "w") as f:
                json.dump(state, f, indent=2)
    outputs.atomic_dir_write(path, write, kind="train", marker=False,
                             verify=lambda d: verify_checkpoint(d, sd.keys()))


# ---------------------------------------------------------------- whose checkpoints

def run_of(ckpt):
    """The run id in ``ckpt``'s state.json (None: none, or a checkpoint from before run ids)."""
    try:
        with open(os.path.join(ckpt, "state.json")) as f:
            return json.load(f).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None


def prune_checkpoints(save_dir, keep, run_id):
    """Keep this run's newest ``keep`` iter_N/ (another run's are never touched)."""
    if keep is None or keep <= 0:
        return
    own = [d for d in outputs.checkpoint_dirs(save_dir) if run_of(d) == run_id]
    for d in own[:-keep]:
        outputs.remove_dir(d)


def adopt_checkpoints(save_dir, run_id):
    """Resuming from a checkpoint written before run ids: the iter_N/ of ``save_dir``
    without a run id become this run's (so that pruning counts them)."""
    for d in outputs.checkpoint_dirs(save_dir):
        if run_of(d) is None and os.path.isfile(os.path.join(d, "state.json")):
            p = os.path.join(d, "state.json")
            with open(p) as f:
                st = json.load(f)
            st["run_id"] = run_id
            with open(p + ".tmp", "w") as f:
                json.dump(st, f, indent=2)
            os.replace(p + ".tmp", p)


def last_saved(save_dir, run_id):
    """For an error message: this run's last checkpoint, or that there is none."""
    own = [d for d in outputs.checkpoint_dirs(save_dir) if run_of(d) == run_id]
    return f"the last checkpoint is {own[-1]}" if own else "no checkpoint was written"


def remove_other_runs(save_dir, run_id):
    """--overwrite: the checkpoints of earlier runs give way to this run's first one."""
    old = [d for d in outputs.checkpoint_dirs(save_dir) + [os.path.join(save_dir, "best_model")]
           if os.path.isdir(d) and run_of(d) != run_id]
    for d in old:
        outputs.remove_dir(d)
    if old:
        logger.warning("--overwrite: removed %d checkpoint(s) of an earlier run from %s: %s",
                       len(old), save_dir, ", ".join(os.path.basename(d) for d in old))


# ---------------------------------------------------------------- resuming

def load_resume(resume_dir, model, optimizer, lr_sched=None):
    """Restore model, optimizer and the training state.

    The learning-rate schedule is the configured one (the config and
    --learning_rate as given now: ``lr_sched``, freshly built) advanced to the
    checkpoint's step, not the schedule the checkpoint recorded: a user who
    lowers --learning_rate after a divergence gets the lower rate. A rate that
    differs from the recorded one is logged.
    """
    pdparams = os.path.join(resume_dir, "model.pdparams")
    pdopt = os.path.join(resume_dir, "model.pdopt")
    for p in (pdparams, pdopt):
        if not os.path.isfile(p):
            raise ResumeError(f"--resume_model {resume_dir}: {os.path.basename(p)} not found "
                              f"(expected a checkpoint directory like save_dir/iter_N)")
    weights.load_weights(model, pdparams, what="--resume_model")
    opt_state = weights.load_state(pdopt, what="--resume_model")
    if lr_sched is not None and isinstance(opt_state.get("LR_Scheduler"), dict):
        opt_state["LR_Scheduler"] = configured_schedule(lr_sched, opt_state["LR_Scheduler"], resume_dir)
    optimizer.set_state_dict(weights.to_tensors(opt_state))
    state_path = os.path.join(resume_dir, "state.json")
    if os.path.isfile(state_path):
        try:
            with open(state_path) as f:
                state = json.load(f)
            int(state["iter"])
        except (ValueError, KeyError, TypeError) as e:
            raise ResumeError(f"--resume_model {resume_dir}: {state_path} is damaged "
                              f"({type(e).__name__}: {e}); resume from another checkpoint") from None
    else:  # a PaddleSeg checkpoint: iteration from the directory name
        tail = os.path.basename(os.path.normpath(resume_dir)).rsplit("_", 1)[-1]
        if not tail.isdigit():
            raise ResumeError(f"--resume_model {resume_dir}: no state.json and the directory "
                              "name does not end in _<iteration>")
        state = {"iter": int(tail)}
    logger.info("Resumed from %s at iteration %d", resume_dir, state["iter"])
    return state


def best_to_beat(save_dir, run_id, best_miou, best_iter, resume_dir, overwrite=False):
    """Resuming: the (mIoU, iter) a new ``best_model`` must beat.

    The checkpoint records the best score its run had reached when it was saved;
    ``save_dir/best_model`` may be better (resumed from an earlier checkpoint).
    Its ``state.json`` records its score and its run (``run_id``, carried on by
    every resume: the lineage): of the same lineage, the better of the two must
    be beaten; of another run (or without a recorded score) its score cannot be
    compared and the run is refused unless ``overwrite`` (which replaces it).
    """
    best = os.path.join(save_dir, "best_model")
    if not os.path.isdir(best):
        return best_miou, best_iter
    why = None
    try:
        with open(os.path.join(best, "state.json")) as f:
            st = json.load(f)
        kept, kept_iter, owner = float(st["best_mIoU"]), int(st["best_iter"]), st.get("run_id")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        why = "has no recorded score (state.json with best_mIoU)"
    else:
        if owner not in (None, run_id):  # None: written before run ids, in this folder
            why = f"belongs to another run ({owner}, mIoU {kept:.4f} at iter {kept_iter})"
    if why and overwrite:  # remove_other_runs replaces it at this run's first checkpoint
        return best_miou, best_iter
    if why:
        raise ResumeError(f"--save_dir {save_dir}: best_model {why}, so a better model of the run "
                          f"resumed from {resume_dir} cannot be told apart from a worse one; move "
                          "best_model out of --save_dir, or pass --overwrite to replace it")
    if kept > best_miou:
        logger.info("[EVAL] best_model (mIoU %.4f at iter %d) stays unless this run scores higher "
                    "(the checkpoint resumed from had reached %.4f)", kept, kept_iter, best_miou)
        return kept, kept_iter
    return best_miou, best_iter


def configured_schedule(lr_sched, recorded, resume_dir):
    """``lr_sched`` (built from the current config, at step 0) advanced to the step of the
    ``recorded`` scheduler state of a checkpoint; returns its state dict. Stepped, not set:
    schedules such as CosineAnnealingDecay compute each rate from the previous one."""
    try:
        step = int(recorded["last_epoch"])
        old_lr = float(recorded["last_lr"])
    except (KeyError, TypeError, ValueError) as e:
        raise ResumeError(f"--resume_model {resume_dir}: model.pdopt has no readable learning-rate "
                          f"schedule state ({type(e).__name__}: {e}); resume from another checkpoint") from None
    while lr_sched.last_epoch < step:
        lr_sched.step()
    new_lr = float(lr_sched.last_lr)
    if not math.isclose(new_lr, old_lr, rel_tol=1e-9, abs_tol=0.0):
        logger.warning("--resume_model %s: continuing with the configured learning-rate schedule "
                       "(lr_scheduler and --learning_rate as given now): lr %g at step %d, where "
                       "the checkpoint's schedule had %g", resume_dir, new_lr, step, old_lr)
    return lr_sched.state_dict()


__all__ = ["ResumeError", "save_checkpoint", "verify_checkpoint", "load_resume", "run_of",
           "prune_checkpoints", "adopt_checkpoints", "last_saved", "remove_other_runs",
           "non_finite_parameters", "weights_digest", "best_to_beat", "configured_schedule"]
