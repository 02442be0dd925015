"""Write an exported model as ONNX for ONNX Runtime, checked against Paddle first.

    python deploy/python/export_onnx.py --config output/qat_infer/deploy.yaml \
        --save_path output/qat_infer/model.onnx

FP32 exports are converted by paddle2onnx; INT8 exports (QAT or PTQ) become a
QDQ model with Paddle's quantization placement and int8 weights (about 1/4 of
the FP32 file; segqat/deploy/onnx_export.py says how and why). The model is
run in ONNX Runtime on check images (--image_path, or synthetic ones) and
written only if its labels agree with Paddle's own run of the export on at
least --min_agreement of the pixels. An existing file is replaced only with
--overwrite, and only if it is an ONNX model segqat wrote; the export's own
files (deploy.yaml, model.pdmodel, model.pdiparams) and the check images are
never written over.

Run it in ONNX Runtime as ``--runtime onnxruntime`` does: all graph
optimizations, and on x86 ``session.x64quantprecision=1`` (without it, CPUs
without VNNI saturate in u8 x s8 products).
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.abspath(os.path.join(HERE, "..", "..")))
sys.path.insert(0, HERE)

from infer import list_images  # noqa: E402  (infer.py's --image_path rules)
from segqat import cli  # noqa: E402


def agreement_fraction(text):
    v = float(text)
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return v


def get_args_parser():
    from segqat.deploy import onnx_export
    p = argparse.ArgumentParser(description="Write an exported model as a checked ONNX model")
    p.add_argument("--config", required=True, help="deploy.yaml of an exported directory")
    p.add_argument("--save_path", required=True, help="the .onnx file to write")
    cli.add_overwrite(p, "ONNX model", flag="--save_path")
    p.add_argument("--image_path", default=None,
                   help="check images: a file, folder or list file (default: synthetic images)")
    p.add_argument("--min_agreement", type=agreement_fraction, default=onnx_export.MIN_AGREEMENT,
                   help="least fraction of check pixels whose label must match Paddle's "
                        f"(default {onnx_export.MIN_AGREEMENT})")
    cli.add_cpu_threads(p, default=1)
    p.add_argument("--verbose", action="store_true", help="show ONNX Runtime's own warnings")
    cli.add_allow_external_model(p)
    return p


def main(args):
    from segqat import deploy, outputs
    from segqat.deploy import onnx_export
    cli.setup(args)
    dep = deploy.load_deploy_config(args.config, args.allow_external_model)
    images = list_images(args.image_path) if args.image_path else None
    # the export's files and the check images are inputs: never written over, --overwrite or not
    inputs = [dep["path"], dep["model_file"], dep["params_file"], *(images or [])]
    with outputs.claim(args.save_path, "onnx", overwrite=args.overwrite, inputs=inputs,
                       flag="--save_path"):
        pred = deploy.create_predictor(args.config, runtime="onnxruntime", threads=args.cpu_threads,
                                       verbose=args.verbose, check_images=images,
                                       allow_external_model=args.allow_external_model,
                                       min_agreement=args.min_agreement)
        try:
            outputs.atomic_file_write(args.save_path, lambda tmp: onnx_export.save(pred.model, tmp),
                                      kind="onnx")
            res = {"onnx": args.save_path, "bytes": os.path.getsize(args.save_path),
                   "precision": pred.precision, "int8_kernels": dict(pred.int8_ops()),
                   "agreement_with_paddle": round(pred.agreement, 6)}
        finally:
            pred.close()
    print(f"wrote {args.save_path} ({res['bytes'] / 2**20:.2f} MB, {res['precision'].upper()}, "
          f"ONNX Runtime INT8 kernels {res['int8_kernels'] or 'none'}, labels agree with Paddle on "
          f"{res['agreement_with_paddle']:.2%} of check pixels)")
    return res


if __name__ == "__main__":
    cli.run(main, get_args_parser().parse_args())
