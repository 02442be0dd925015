"""One command: FP32 train -> QAT -> exports (FP32, QAT INT8, PTQ INT8) -> benchmark, in one folder.

    python tools/pipeline.py --config configs/bisenetv2/bisenetv2_synthetic_64x64.yml \
        --fp32_iters 300 --qat_iters 100 --save_dir output/demo

Each step runs the same code as its script and logs the exact command that
repeats it; everything lands in save_dir/<timestamp>/: fp32/, fp32_infer/,
qat/, qat_infer/, ptq_infer/, benchmark/ (results.json, results.md, plots),
commands.sh.
With the synthetic config the data set is generated first if it is missing.
"""
import argparse
import datetime
import logging
import os
import shlex
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

from segqat import cli  # noqa: E402

logger = logging.getLogger("segqat.pipeline")


def get_args_parser():
    p = argparse.ArgumentParser(description="FP32 -> QAT -> INT8 export -> benchmark in one go")
    p.add_argument("--config", required=True, help="PaddleSeg-schema YAML config")
    p.add_argument("--save_dir", default="./output/pipeline",
                   help="folder for every step's output (fp32/, qat/, the exports, benchmark/)")
    p.add_argument("--fp32_iters", type=cli.positive_int, default=None, help="default: config's iters")
    p.add_argument("--qat_iters", type=cli.positive_int, default=None, help="default: fp32_iters / 4")
    p.add_argument("--fp32_model_path", default=None, help="skip FP32 training: use these weights")
    p.add_argument("--learning_rate", type=cli.positive_float, default=None, help="FP32 LR (default: config)")
    p.add_argument("--qat_learning_rate", type=cli.positive_float, default=None,
                   help="QAT LR (default: a tenth of the FP32 LR)")
    p.add_argument("--batch_size", type=cli.positive_int, default=None,
                   help="training batch size, FP32 and QAT (default: config)")
    p.add_argument("--save_interval", type=cli.positive_int, default=None,
                   help="evaluate/save every N iterations (default: iters / 4)")
    cli.add_cpu_threads(p, default=2)
    p.add_argument("--num_workers", type=cli.nonneg_int, default=0, help="data loader worker processes")
    p.add_argument("--seed", type=cli.seed, default=0, help="random seed of every step")
    p.add_argument("--repeats", type=cli.positive_int, default=20, help="benchmark timing repeats")
    p.add_argument("--ptq_algo", default="hist", choices=["none", "abs_max", "avg", "hist", "KL", "mse"],
                   help="also make a PTQ model with this algo for the table (none: skip)")
    p.add_argument("--skip_benchmark", action="store_true",
                   help="stop after the exports (benchmark later, on an idle machine)")
    cli.add_opts(p)
    return p


def step(rel, argv, commands):
    import importlib.util
    cmd = "python " + rel + " " + " ".join(shlex.quote(str(a)) for a in argv)
    commands.append(cmd)
    logger.info("=== %s", cmd)
    spec = importlib.util.spec_from_file_location("step_" + os.path.basename(rel)[:-3], os.path.join(ROOT, rel))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main(mod.get_args_parser().parse_args([str(a) for a in argv]))


def main(args):
    from segqat.config import load_config
    if args.fp32_model_path and not os.path.isfile(args.fp32_model_path):
        raise FileNotFoundError(f"--fp32_model_path: weights file not found: {args.fp32_model_path}")
    cfg = load_config(args.config, opts=args.opts)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = os.path.join(args.save_dir, stamp)
    cli.setup(args, out, "pipeline.log")
    commands = []
    common = ["--config", args.config] + (["--opts", *args.opts] if args.opts else [])

    root = (cfg.get("train_dataset") or {}).get("dataset_root", "")
    if not os.path.isdir(root) and "synthetic" in root:
        step("tools/data/make_synthetic.py", ["--save_dir", root], commands)

    fp32_iters = args.fp32_iters or cfg.iters
    qat_iters = args.qat_iters or max(fp32_iters // 4, 1)
    fp32_lr = args.learning_rate if args.learning_rate is not None else cfg["lr_scheduler"]["learning_rate"]
    qat_lr = args.qat_learning_rate if args.qat_learning_rate is not None else fp32_lr / 10
    train_common = ["--cpu_threads", args.cpu_threads, "--num_workers", args.num_workers,
                    "--seed", args.seed, "--do_eval", "--use_vdl"]
    if args.batch_size:
        train_common += ["--batch_size", args.batch_size]

    fp32_weights = args.fp32_model_path
    if not fp32_weights:
        step("tools/train.py", common + train_common + [
            "--iters", fp32_iters, "--learning_rate", fp32_lr, "--save_dir", f"{out}/fp32",
            "--save_interval", args.save_interval or max(fp32_iters // 4, 1), "--log_iters",
            max(fp32_iters // 20, 1)], commands)
        fp32_weights = f"{out}/fp32/best_model/model.pdparams"
    step("slim/quant/qat_train.py", common + train_common + [
        "--model_path", fp32_weights, "--iters", qat_iters, "--learning_rate", qat_lr,
        "--save_dir", f"{out}/qat", "--save_interval", args.save_interval or max(qat_iters // 2, 1),
        "--log_iters", max(qat_iters // 10, 1)], commands)
    qat_weights = f"{out}/qat/best_model/model.pdparams"
    threads = ["--cpu_threads", args.cpu_threads]
    step("tools/export.py", common + threads + ["--model_path", fp32_weights, "--save_dir",
                                                f"{out}/fp32_infer"], commands)
    step("slim/quant/qat_export.py", common + threads + ["--model_path", qat_weights, "--save_dir",
                                                         f"{out}/qat_infer"], commands)
    int8_dirs, names = [f"{out}/qat_infer"], ["FP32", "INT8 QAT"]
    if args.ptq_algo != "none":
        step("slim/quant/ptq.py", common + ["--model_path", fp32_weights, "--save_dir", f"{out}/ptq_infer",
                                            "--algo", args.ptq_algo, "--cpu_threads", args.cpu_threads],
             commands)
        int8_dirs.append(f"{out}/ptq_infer")
        names.append("INT8 PTQ")
    res = None
    if not args.skip_benchmark:
            res = step("deploy/python/benchmark.py", ["--config", args.config, "--fp32", f"{out}/fp32_infer",
                                                  "--int8", *int8_dirs, "--names", *names,
                                                  "--qat_model_path", qat_weights,
                                                  "--save_dir", f"{out}/benchmark", "--cpu_threads",
                                                  args.cpu_threads, "--repeats", args.repeats]
                   + (["--opts", *args.opts] if args.opts else []), commands)
    with open(os.path.join(out, "commands.sh"), "w") as f:
        f.write("# the steps of this pipeline run, as separate commands\n" + "\n".join(commands) + "\n")
    logger.info("Pipeline done: %s (results in %s/benchmark/results.md)", out, out)
    return res


if __name__ == "__main__":
    cli.run(main, get_args_parser().parse_args())
