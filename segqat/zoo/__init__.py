"""Model zoo: every PaddleSeg 2.8 model family through FP32 -> QAT -> INT8, one table row each.

    python tools/zoo.py --phase build --cpu_threads 1          # train, QAT, export, INT8 inference
    python tools/zoo.py --phase latency                        # later, on an idle machine (2 threads)
    python tools/zoo.py --models ann pspnet --phase all        # some entries, both phases
    make zoo                                                   # the build phase for every entry

Entries are the configs in ``configs/zoo/`` (one per family, ``pretrained:
null``, synthetic 64x64 data with 4 classes; its ``iters`` and ``batch_size``
are the FP32 training length). For each entry the build phase runs, each step
a subprocess with a timeout so that a model that hangs or crashes costs only
its own row:

1. ``fp32_train``  tools/train.py for the config's ``iters`` (or ``--fp32_iters``)
2. ``qat_train``   slim/quant/qat_train.py from those weights, ``iters / 4``
   (or ``--qat_iters``) at a tenth of the config's learning rate
3. ``fp32_export`` tools/export.py; 4. ``int8_export`` slim/quant/qat_export.py
5. ``evaluate``    on the validation images, with the deployed predictors
   (segqat.deploy, segqat.report): the INT8 predictor must prove INT8 kernels
   in its optimized program; pixel agreement of the deployed INT8 model with
   its fake-quant (QAT, dygraph) model; mIoU of FP32, fake-quant and INT8;
   params size INT8/FP32; convolutions running INT8 out of all convolutions in
   the optimized program.

The latency phase (``latency`` step) times the FP32 and INT8 exports with
Paddle Inference, oneDNN, interleaved runs (segqat.bench), batch 1, at
1x3x512x1024, or 1x3x512x512 where the model fails at that size, with
``--latency_threads`` (2) threads; until it has run, the table says "not
measured". Run it alone on an idle machine (it warns when the load average
says otherwise, and records the load in latency.json).

A row is ✓ when the exports and INT8 inference worked, INT8 kernels were
proven, the deployed INT8 model agrees with its fake-quant model on at least
99% of the pixels, and the FP32 model is trained enough for that agreement to
mean something (its mIoU at least 10 points above labelling every pixel with
the most frequent class: below that the model labels nearly every pixel
alike, and agrees with anything). Every ✗ carries the first lines of the real
error, or the numbers that failed the rule. State is kept per entry and step
in ``work_dir/state.json``: an interrupted zoo (Ctrl-C, SIGTERM) stops its
steps and resumes where it stopped; finished steps are skipped, failed ones
re-run with ``--retry_failed``, ``--rerun_steps evaluate`` re-runs a step that
succeeded (the steps built on a re-run step's output run again too), other
``--fp32_iters``/``--qat_iters`` than before re-train, and an entry whose
config file changed starts over. Two zoo runs cannot share a work dir (a lock
file). ``out_dir`` receives ``zoo.md``, ``zoo.json`` and ``zoo.png`` after
every finished entry.

One job a module: ``runner`` (plans, step commands, state.json, the steps as
subprocesses with timeouts, the lock, the run log, ``run_zoo``), ``measure``
(what the evaluate and latency steps measure, in the subprocess that
``tools/zoo.py --step`` starts: ``run_single_step``), ``table`` (rows, the ✓
rule, zoo.md, zoo.json, zoo.png) and ``common`` (what they share: the steps,
entry discovery, the zoo's error, JSON writes). Imports run one way:
common <- measure <- table <- runner.
"""
from .common import (BUILD_STEPS, CROSS_CHECK_RUNTIMES, LATENCY_STEPS, ROOT, ZooError,  # noqa: F401
                     discover, file_hash)
from .measure import (CONV_OPS, LATENCY_SHAPES, evaluate_entry, measure_latency,  # noqa: F401
                      predicted_classes, run_single_step, runtime_agreement)
from .table import (MIN_AGREEMENT, MIN_MIOU_GAIN, ONEDNN_CAUSE_CLEAR, RUNTIME_NAMES,  # noqa: F401
                    entry_row, markdown, plot, write_outputs)
from .runner import (NEEDS, PHASES, Plan, State, dependents, entries_all, error_reason,  # noqa: F401
                     lock_work_dir, run_logged, run_step, run_zoo, step_command)
