"""Flags shared by the scripts (PaddleSeg's names), logging and environment set-up.

The scripts in tools/, slim/quant/ and deploy/python/ build their parsers
from these helpers so the same flag means the same thing everywhere. This is
the only module of the package that knows about argparse.
"""
import argparse
import contextlib
import logging
import math
import os
import sys

import numpy as np  # noqa: F401  (numpy before paddle: segqat/compat/__init__.py)

logger = logging.getLogger("segqat")


def str2bool(v):
    """Strict boolean: true/false, yes/no, 1/0 (any case); anything else is an error."""
    s = str(v).strip().lower()
    if s in ("true", "yes", "1", "on"):
        return True
    if s in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {v!r}")


def _int_at_least(v, lo, what):
    try:
        i = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {v!r}")
    if i < lo:
        raise argparse.ArgumentTypeError(f"expected {what}, got {v!r}")
    return i


def positive_int(v):
    return _int_at_least(v, 1, "a positive integer")


# numpy's and paddle's seeds are 32-bit unsigned
MAX_SEED = 2 ** 32 - 1
# far above any CPU's core count; oneDNN/OpenMP abort the process (SIGABRT) on 100000
MAX_THREADS = 1024


def seed(v):
    """A random seed: an integer in [0, 2**32 - 1]."""
    i = _int_at_least(v, 0, f"an integer in [0, {MAX_SEED}]")
    if i > MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, {MAX_SEED}], got {v!r}")
    return i


def threads(v):
    """A thread count: an integer in [1, MAX_THREADS]."""
    i = positive_int(v)
    if i > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"expected a thread count in [1, {MAX_THREADS}] (this machine "
                                         f"has {os.cpu_count()} CPUs), got {v!r}")
    return i


def nonneg_int(v):
    return _int_at_least(v, 0, "an integer >= 0")


def nonneg_float(v):
    """A finite number >= 0 (nan and inf are refused: they would train a NaN model)."""
    try:
        f = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {v!r}")
    if not math.isfinite(f) or f < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {v!r}")
    return f


def positive_float(v):
    """A finite number > 0 (a learning rate, a scale)."""
    try:
        f = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {v!r}")
    if not math.isfinite(f) or f <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {v!r}")
    return f


def fraction(v):
    """A fraction in (0, 1]."""
    try:
        f = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {v!r}")
    if not 0 < f <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {v!r}")
    return f


FP32_WEIGHTS_HELP = "FP32 weights (tools/train.py's save_dir/best_model/model.pdparams)"

# segqat.ptq.ALGOS, here so that scripts' --help does not import paddle (a test checks they agree)
PTQ_ALGOS = ["abs_max", "avg", "hist", "KL", "mse"]


def int_list(n):
    def parse(v):
        try:
            vals = [int(x) for x in v.replace(",", " ").split()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {n} integers, got {v!r}")
        if len(vals) != n or any(x <= 0 for x in vals):
            raise argparse.ArgumentTypeError(f"expected {n} positive integers, got {v!r}")
        return vals
    return parse


def add_config_args(parser, model_path_required=False, model_path_help="weights (.pdparams)"):
    parser.add_argument("--config", required=True, help="PaddleSeg-schema YAML config")
    parser.add_argument("--model_path", required=model_path_required, default=None,
                        help=model_path_help)
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"],
                        help="device to run on (default: cpu)")
    add_opts(parser)


OPTS_HELP = ("override config entries, read as PaddleSeg reads them, e.g. batch_size=4 "
             "model.backbone.pretrained=None test_config.scales=0.75,1.0,1.25")


def add_opts(parser):
    parser.add_argument("--opts", nargs="+", default=[], metavar="KEY=VALUE", help=OPTS_HELP)


def add_timing(parser, warmup, repeats=None):
    """``--warmup`` and ``--repeats`` of a latency measurement."""
    parser.add_argument("--warmup", type=positive_int, default=warmup,
                        help=f"untimed runs before timing (default {warmup})")
    if repeats is not None:
        parser.add_argument("--repeats", type=positive_int, default=repeats,
                            help=f"timed runs; the median is reported (default {repeats})")


def add_train_args(parser):
    g = parser.add_argument_group("training")
    g.add_argument("--iters", type=positive_int, default=None, help="iterations (default: config)")
    g.add_argument("--batch_size", type=positive_int, default=None,
                   help="batch size per process (default: config)")
    g.add_argument("--learning_rate", type=positive_float, default=None,
                   help="base learning rate (default: config's lr_scheduler.learning_rate)")
    g.add_argument("--save_interval", type=positive_int, default=1000,
                   help="save (and evaluate with --do_eval) every N iterations")
    g.add_argument("--resume_model", default=None,
                   help="checkpoint directory to resume from (save_dir/iter_N)")
    g.add_argument("--save_dir", default="./output", help="where checkpoints and logs go")
    g.add_argument("--overwrite", action="store_true",
                   help="replace another run's checkpoints in --save_dir (default: refuse)")
    g.add_argument("--keep_checkpoint_max", type=int, default=5,
                   help="keep at most this many iter_N/ checkpoints (<=0: keep all)")
    g.add_argument("--num_workers", type=nonneg_int, default=0, help="data loader worker processes")
    g.add_argument("--do_eval", action="store_true", help="evaluate at each save and keep best_model/")
    g.add_argument("--log_iters", type=positive_int, default=10, help="log every N iterations")
    g.add_argument("--use_vdl", action="store_true", help="write VisualDL scalars to save_dir/vdl_log")
    g.add_argument("--seed", type=seed, default=0, help="random seed (data order, augmentation, init)")
    g.add_argument("--allow_absent_classes", action="store_true",
                   help="train although a class never occurs in the training labels (a warning)")
    add_cpu_threads(g)


def add_cpu_threads(parser, default=None):
    what = "paddle's, 1" if default is None else default
    parser.add_argument("--cpu_threads", type=threads, default=default,
                        help=f"CPU threads of the math library and the runtime, 1-{MAX_THREADS} "
                             f"(default: {what})")


# deploy.RUNTIMES' names, here so that scripts' --help does not import paddle (a test checks they agree)
RUNTIME_NAMES = ["paddle", "openvino", "onnxruntime", "lite"]


def add_runtimes(parser):
    """``--runtimes A B ...`` (scripts that compare runtimes); ``--runtime`` is the same flag."""
    parser.add_argument("--runtimes", "--runtime", dest="runtimes", nargs="+", default=["paddle"],
                        choices=RUNTIME_NAMES, metavar="RUNTIME",
                        help=f"runtimes to run on, one or more of {', '.join(RUNTIME_NAMES)} "
                             "(default paddle: Paddle Inference); --runtime is the same flag")


def add_runtime(parser):
    """``--runtime A`` (scripts that run one runtime); ``--runtimes`` with one name is the same."""
    parser.add_argument("--runtime", "--runtimes", dest="runtime", default="paddle",
                        choices=RUNTIME_NAMES, metavar="RUNTIME",
                        help=f"the runtime to run on, one of {', '.join(RUNTIME_NAMES)} (default "
                             "paddle: Paddle Inference); --runtimes with one name is the same flag")


def add_eval_args(parser):
    g = parser.add_argument_group("evaluation")
    g.add_argument("--is_slide", action="store_true", default=None, help="sliding-window evaluation")
    g.add_argument("--crop_size", type=int_list(2), default=None, metavar="W,H",
                   help="window size for --is_slide, e.g. 256,256")
    g.add_argument("--stride", type=int_list(2), default=None, metavar="W,H",
                   help="window stride for --is_slide, e.g. 128,128")
    g.add_argument("--aug_eval", action="store_true", default=None,
                   help="multi-scale / flip evaluation")
    g.add_argument("--scales", type=positive_float, nargs="+", default=None,
                   help="image scales (each > 0) for --aug_eval, e.g. 0.75 1.0 1.25")
    g.add_argument("--flip_horizontal", action="store_true", default=None, help="flip for --aug_eval")
    g.add_argument("--flip_vertical", action="store_true", default=None, help="flip for --aug_eval")
    g.add_argument("--save_metrics", default=None, metavar="FILE.json",
                   help="write the metrics to this JSON file (an existing one only with --overwrite)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace an earlier --save_metrics file (default: refuse)")
    add_cpu_threads(g)


def check_eval_args(parser, args):
    if args.is_slide and (args.crop_size is None or args.stride is None):
        parser.error("--is_slide needs --crop_size and --stride")
    if (args.scales or args.flip_horizontal or args.flip_vertical) and not args.aug_eval:
        parser.error("--scales/--flip_horizontal/--flip_vertical need --aug_eval")


def eval_overrides(args):
    return {k: getattr(args, k) for k in ("is_slide", "crop_size", "stride", "aug_eval",
                                          "scales", "flip_horizontal", "flip_vertical")}


def add_overwrite(parser, what="output", flag="--save_dir"):
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace an earlier {what} that segqat wrote at {flag} (kept until "
                             f"the new one is complete); without it an existing {flag} is refused")


def add_allow_external_model(parser):
    parser.add_argument("--allow_external_model", action="store_true",
                        help="accept a deploy.yaml whose model/params files lie outside its export "
                             "folder (an absolute path or '..'; default: refuse)")


@contextlib.contextmanager
def training_dir(args):
    """Check --save_dir before anything is written there, and hold its locks for the run.

    The lock beside the folder (the one every segqat output takes) keeps an
    export, PTQ or other command out of it while the run lasts; the one inside
    (``save_dir/.segqat.lock``) says which process runs there.
    """
    from . import outputs

    def check():
        outputs.check_train_dir(args.save_dir, args.resume_model, args.overwrite,
                                inputs=[args.model_path, args.resume_model])
    check()
    if int(os.environ.get("PADDLE_TRAINER_ID", "0")) != 0:  # rank 0 owns save_dir
        yield
        return
    what = f"--save_dir {args.save_dir}"
    with outputs.lock(outputs.lock_path(args.save_dir), what):
        check()  # again, under the lock
        try:
            os.makedirs(args.save_dir, exist_ok=True)
        except OSError as e:
            raise outputs.io_error(args.save_dir, e) from e
        with outputs.lock(os.path.join(args.save_dir, outputs.LOCK), what):
            yield


def setup(args=None, save_dir=None, log_name="train.log"):
    """Configure logging (console, and save_dir/log_name on rank 0) and the device."""
    import paddle
    rank = int(os.environ.get("PADDLE_TRAINER_ID", "0"))
    handlers = [logging.StreamHandler(sys.stdout)]
    if save_dir and rank == 0:
        os.makedirs(save_dir, exist_ok=True)
        handlers.append(_file_handler(os.path.join(save_dir, log_name)))
    root = logging.getLogger()
    # ours from an earlier setup, and the plain StreamHandler that `import paddle`
    # puts on the root logger (it would print every line twice); handlers of
    # other kinds (pytest's capture) stay.
    for h in [h for h in root.handlers if getattr(h, "_segqat", False) or type(h) is logging.StreamHandler]:
        root.removeHandler(h)
        h.close()
    fmt = logging.Formatter("%(asctime)s [%(levelname)s] %(message)s")
    for h in handlers:
        h._segqat = True
        h.setFormatter(fmt)
        root.addHandler(h)
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    device = getattr(args, "device", "cpu") if args is not None else "cpu"
    if device == "gpu" and not paddle.device.is_compiled_with_cuda():
        raise SystemExit("--device gpu: this paddlepaddle build has no CUDA support; use --device cpu")
    paddle.set_device(device)
    threads = getattr(args, "cpu_threads", None) if args is not None else None
    if threads:
        from . import compat
        compat.set_cpu_threads(threads)
    logger.info("Python %s | paddle %s | device %s | cpu threads %s | processes %s",
                sys.version.split()[0], paddle.__version__, device, threads or "1 (paddle's default)",
                os.environ.get("PADDLE_TRAINERS_NUM", "1"))


def _file_handler(path):
    h = logging.FileHandler(path)
    h._segqat = True
    h.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(message)s"))
    return h


def add_log_file(path):
    """Also log to ``path`` (after ``setup``; for a log inside an output that is checked and
    claimed first: ``outputs.Claim.file``)."""
    if int(os.environ.get("PADDLE_TRAINER_ID", "0")) == 0:
        logging.getLogger().addHandler(_file_handler(path))


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _raised_here(e):
    """True if ``e`` was raised by segqat's own code (a check), not inside paddle & co."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    import linecache
    path = os.path.abspath(tb.tb_frame.f_code.co_filename)
    ours = path.startswith(_ROOT + os.sep) and os.sep + ".venv" + os.sep not in path
    # a `raise` of ours, not a library's C code failing under one of our lines
    return ours and linecache.getline(path, tb.tb_lineno).lstrip().startswith("raise")


def run(main, args):
    """Run ``main(args)``: a user-facing error prints one clear line and exits 1.

    User-facing: segqat's error classes, missing files, non-finite training,
    a failed write (disk full, file too large, quota, read-only, permissions:
    segqat's writers raise these as OutputError naming the path; this catches
    any other write), and any ValueError raised by segqat's own checks. A
    ValueError from inside paddle or another library is unexpected: it is
    logged with its traceback.
    """
    from .config import ConfigError
    from .data import DataError
    from .outputs import WRITE_ERRNOS, OutputError
    from .weights import WeightsError
    log = logging.getLogger("segqat")
    try:
        return main(args)
    except (ConfigError, DataError, WeightsError, OutputError, FileNotFoundError,
            FloatingPointError) as e:
        log.error("%s: %s", type(e).__name__, e)
        sys.exit(1)
    except OSError as e:
        if e.errno not in WRITE_ERRNOS:
            raise
        log.error("OutputError: cannot write %s: %s", e.filename or "a file", e.strerror or e)
        sys.exit(1)
    except ValueError as e:
        if _raised_here(e):
            log.error("%s: %s", type(e).__name__, e)
        else:
            log.error("Unexpected error (please report it with this traceback): %s: %s",
                      type(e).__name__, e, exc_info=True)
        sys.exit(1)
