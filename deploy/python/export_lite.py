"""Convert an exported model to Paddle Lite (.nb) with Lite's opt, checked on Lite's x86 runtime.

    make venv-lite      # once: paddlelite 2.13rc0 in .venv-lite (Python 3.10)
    python deploy/python/export_lite.py --config output/qat_infer/deploy.yaml \
        --save_dir output/qat_lite --valid_targets x86 arm

The export (FP32, QAT or PTQ; deploy.yaml + model.pdmodel / model.pdiparams) is
converted by ``opt`` for each of --valid_targets into --save_dir: ``model_x86.nb``,
``model_arm.nb``, and ``lite.json`` (paddlelite version, the preprocessing from
deploy.yaml, the INT8 kernels opt chose per target, the agreement with Paddle). Before
anything is written the x86 model runs in Lite's runtime on check images (--image_path, or
two synthetic ones) and is refused if its labels agree with Paddle's run of the export (FP32,
or fake quantization for INT8) on fewer than --min_agreement of the pixels; an INT8 export
whose model got no INT8 kernel is refused. The ARM model is converted from the same export
but not run here (no ARM Lite runtime on PyPI; docs/limits.md).

--save_dir follows segqat's output rule (docs/safety.md): an earlier Lite folder is replaced
only with --overwrite, the export and the check images never. Lite runs in its own Python
(.venv-lite, or --lite_python) in a child process: segqat/deploy/lite.py.
"""
import argparse
import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.abspath(os.path.join(HERE, "..", "..")))
sys.path.insert(0, HERE)

from infer import list_images  # noqa: E402  (infer.py's --image_path rules)
from segqat import cli  # noqa: E402

TARGETS = ("x86", "arm")  # segqat.deploy.lite.TARGETS, here so --help does not import it


def agreement_fraction(text):
    v = float(text)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1] (0: report, never refuse), got {text}")
    return v


def get_args_parser():
    p = argparse.ArgumentParser(description="Convert an exported model to Paddle Lite (.nb), checked")
    p.add_argument("--config", required=True, help="deploy.yaml of an exported directory (or the folder)")
    p.add_argument("--save_dir", required=True, help="folder for model_<target>.nb and lite.json")
    cli.add_overwrite(p, "Lite folder")
    p.add_argument("--valid_targets", nargs="+", choices=TARGETS, default=["x86"],
                   help="devices to convert for (default x86; arm is converted, not run here)")
    p.add_argument("--image_path", default=None,
                   help="check images: a file, folder or list file (default: 2 synthetic images)")
    p.add_argument("--min_agreement", type=agreement_fraction, default=0.99,
                   help="least fraction of check pixels whose label must match Paddle's (default 0.99)")
    cli.add_cpu_threads(p, default=1)
    p.add_argument("--lite_python", default=None, metavar="PYTHON",
                   help="Paddle Lite's Python (default: .venv-lite/bin/python, made by make venv-lite)")
    cli.add_allow_external_model(p)
    return p


def main(args):
    from segqat import deploy, outputs
    from segqat.deploy import lite
    cli.setup(args)
    dep = deploy.load_deploy_config(args.config, args.allow_external_model)
    images = list_images(args.image_path) if args.image_path else None
    # the export's files and the check images are inputs: never written over, --overwrite or not
    inputs = [dep["path"], dep["model_file"], dep["params_file"], *(images or [])]
    targets = list(dict.fromkeys(args.valid_targets))
    with outputs.claim(args.save_dir, "lite", overwrite=args.overwrite, inputs=inputs):
        pred = deploy.create_predictor(args.config, runtime="lite", threads=args.cpu_threads,
                                       allow_external_model=args.allow_external_model,
                                       lite_python=args.lite_python, check_images=images,
                                       min_agreement=args.min_agreement)
        info = {"paddlelite": pred.version, "opt": lite.nb_version(pred.nb), "source": dep["path"],
                "precision": pred.precision,
                "agreement_with_paddle": {"x86": round(pred.agreement, 6),
                                          "reference": "fake quantization" if pred.precision == "int8"
                                          else "FP32",
                                          "check_images": images or "2 synthetic"},
                "preprocess": {k: dep.get(k) for k in ("transforms", "input_shape", "output_op",
                                                        "output_dtype", "num_classes")},
                "models": {}}

        def write(tmp):
            for target in targets:
                name = f"model_{target}.nb"
                path = os.path.join(tmp, name)
                if target == "x86":
                    shutil.copyfile(pred.nb, path)
                    kernels = pred.kernels
                else:
                    kernels = lite.convert(dep, path, target, args.lite_python)
                int8 = lite.int8_kernels(kernels)
                if pred.precision == "int8" and not int8:
                    raise deploy.DeployError(f"{dep['path']}: opt chose no INT8 kernel for {target}; "
                                             "refusing to write a float model as INT8")
                info["models"][target] = {"file": name, "bytes": os.path.getsize(path),
                                          "int8_kernels": dict(int8), "run_here": target == "x86"}
            with open(os.path.join(tmp, "lite.json"), "w") as f:
                json.dump(info, f, indent=1)

        def verify(tmp):
            for target, m in info["models"].items():
                found = lite.nb_target(lite.nb_kernels(os.path.join(tmp, m["file"])))
                if found != target:
                    raise outputs.OutputError(f"{m['file']}: written for {target} but holds {found} "
                                              "kernels; nothing was replaced")

        try:
            outputs.atomic_dir_write(args.save_dir, write, kind="lite", verify=verify)
        finally:
            pred.close()
    for target, m in info["models"].items():
        print(f"wrote {os.path.join(args.save_dir, m['file'])} ({m['bytes'] / 2**20:.2f} MB, "
              f"{info['precision'].upper()}, INT8 kernels {m['int8_kernels'] or 'none'}"
              + (f", labels agree with Paddle on {pred.agreement:.2%} of check pixels)" if m["run_here"]
                 else ", not run here: no ARM runtime)"))
    return info


if __name__ == "__main__":
    cli.run(main, get_args_parser().parse_args())
