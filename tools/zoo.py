"""Model zoo: every configs/zoo/ entry through FP32 -> QAT -> INT8 export -> INT8 inference.

    python tools/zoo.py --phase build --cpu_threads 1            # all entries (resumes)
    python tools/zoo.py --phase build --models ann pspnet        # some entries
    python tools/zoo.py --phase latency                          # on an idle machine, at the end
    python tools/zoo.py --phase report                           # only rewrite the table

Writes benchmarks/zoo/zoo.md, zoo.json and zoo.png; what each step does and
measures is in segqat/zoo/__init__.py's docstring.
"""
import argparse
import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

from segqat import cli  # noqa: E402


def get_args_parser():
    p = argparse.ArgumentParser(description="Run the model zoo: one row per PaddleSeg model family")
    p.add_argument("--phase", choices=["build", "latency", "all", "report"], default="build",
                   help="build: train, QAT, exports, INT8 inference and agreement; latency: INT8/FP32 "
                        "timing (idle machine); all: both; report: rewrite the table only")
    p.add_argument("--models", nargs="+", default=None, help="entries to run (default: every config)")
    p.add_argument("--config_dir", default=os.path.join(ROOT, "configs", "zoo"),
                   help="one <entry>.yml per model family")
    p.add_argument("--work_dir", default="output/zoo", help="checkpoints, exports, logs and state.json")
    p.add_argument("--out_dir", default=os.path.join(ROOT, "benchmarks", "zoo"),
                   help="where zoo.md, zoo.json and zoo.png go")
    p.add_argument("--fp32_iters", type=cli.positive_int, default=None,
                   help="FP32 iterations for every entry (default: each config's iters)")
    p.add_argument("--qat_iters", type=cli.positive_int, default=None,
                   help="QAT iterations (default: a quarter of the FP32 iterations)")
    p.add_argument("--cpu_threads", type=cli.positive_int, default=1, help="threads per build step")
    p.add_argument("--latency_threads", type=cli.positive_int, default=2, help="threads when timing")
    p.add_argument("--jobs", type=cli.positive_int, default=1, help="entries run at the same time")
    p.add_argument("--retry_failed", action="store_true", help="re-run steps that failed before")
    p.add_argument("--rerun_steps", nargs="+", default=None,
                   choices=["fp32_train", "qat_train", "fp32_export", "int8_export", "evaluate", "latency"],
                   help="re-run these steps even where they succeeded (e.g. evaluate after a deploy fix)")
    p.add_argument("--num_images", type=cli.positive_int, default=None,
                   help="evaluate on the first N validation images (default: all)")
    p.add_argument("--warmup", type=cli.positive_int, default=3, help="latency: warm-up runs per model")
    p.add_argument("--repeats", type=cli.positive_int, default=10, help="latency: timed runs per model")
    g = p.add_argument_group("timeouts (seconds per step)")
    g.add_argument("--train_timeout", type=cli.positive_int, default=3600, help="FP32 and QAT training")
    g.add_argument("--export_timeout", type=cli.positive_int, default=300, help="FP32 and INT8 export")
    g.add_argument("--eval_timeout", type=cli.positive_int, default=1200, help="evaluate and latency")
    p.add_argument("--step", choices=["evaluate", "latency"], default=None,
                   help="internal: run the in-process part of one step for the one entry in --models "
                        "(the zoo starts this in a subprocess)")
    return p


def main(args):
    if args.step:  # in the subprocess the runner starts for this step
        from segqat.zoo import measure
        cli.setup(args)
        return measure.run_single_step(args)
    from segqat.zoo import runner
    args.argv = sys.argv[1:]
    cli.setup(None, args.work_dir, "zoo.log")
    try:
        return runner.run_zoo(args)
    except KeyboardInterrupt:
        sys.exit(130)  # logged by run_zoo; state.json holds every finished step


if __name__ == "__main__":
    cli.run(main, get_args_parser().parse_args())
