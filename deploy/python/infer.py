"""Run an exported model: label PNGs, overlays, or a timing.

    python deploy/python/infer.py --config output/qat_infer/deploy.yaml \
        --image_path data/synthetic/images --save_dir output/pred --cpu_threads 2

    python deploy/python/infer.py --config output/qat_infer/deploy.yaml --image_path img.png \
        --benchmark true           # median ms per image after warm-up

The precision is the export's (deploy.yaml ``precision``); ``--precision``
only overrides it.
--save_dir gets label PNGs (stem.png) and overlays (stem_overlay.png), written
to a temporary folder and swapped in when all are done. It is refused if it
holds or is one of the inputs, a training run or anything segqat did not write;
an earlier prediction folder is replaced only with --overwrite (as a whole:
FP32 and INT8 results are never mixed).
--image_path: an image file, a folder of images, or a list file (one image
path per line, optionally followed by a label path, relative to the list's folder).
deploy.yaml is checked against its files: its precision must be what the program holds
(an INT8 program is never run as "FP32"), and its model/params files must lie in its
folder unless --allow_external_model.
An INT8 model must compile INT8 kernels on the runtime (oneDNN on CPU for
Paddle Inference); a run without them is refused. GPU and TensorRT options are
implemented but untested here (no GPU on the development machine).
"""
import argparse
import contextlib
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from segqat import cli  # noqa: E402

IMG_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif")


def get_args_parser():
    from segqat import deploy
    p = argparse.ArgumentParser(description="Run exported segmentation models")
    p.add_argument("--config", required=True, help="deploy.yaml of an exported directory")
    p.add_argument("--image_path", required=True, help="image file, folder, or list file")
    p.add_argument("--save_dir", default="./output/result", help="where label PNGs and overlays go")
    cli.add_overwrite(p, "prediction folder")
    cli.add_runtime(p)
    p.add_argument("--precision", choices=list(deploy.PRECISIONS), default=None,
                   help="default: the export's, from deploy.yaml")
    cli.add_cpu_threads(p, default=1)
    p.add_argument("--batch_size", type=cli.positive_int, default=1,
                   help="images per run (images of one size are batched; default 1)")
    p.add_argument("--verbose", action="store_true", help="show the runtime's own optimizer output")
    cli.add_allow_external_model(p)
    g = p.add_argument_group("Paddle Inference")
    g.add_argument("--device", choices=["cpu", "gpu"], default="cpu", help="device (default: cpu)")
    g.add_argument("--enable_mkldnn", type=cli.str2bool, default=True, help="oneDNN on CPU (true/false)")
    g = p.add_argument_group("TensorRT (Paddle Inference on GPU; untested here)")
    g.add_argument("--use_trt", type=cli.str2bool, default=False,
                   help="TensorRT on --device gpu (true/false; default false)")
    g.add_argument("--min_shape", type=int, nargs=4, default=None, metavar=("N", "C", "H", "W"),
                   help="TensorRT dynamic shape: smallest input")
    g.add_argument("--opt_shape", type=int, nargs=4, default=None, metavar=("N", "C", "H", "W"),
                   help="TensorRT dynamic shape: the input it optimizes for")
    g.add_argument("--max_shape", type=int, nargs=4, default=None, metavar=("N", "C", "H", "W"),
                   help="TensorRT dynamic shape: largest input")
    g = p.add_argument_group("OpenVINO")
    g.add_argument("--inference_precision", choices=["f32", "bf16"], default="f32",
                   help="OpenVINO's precision hint (default f32; bf16 changes FP32 results)")
    g.add_argument("--save_ir", default=None, metavar="FILE.xml",
                   help="also write the model as OpenVINO IR (FILE.xml + FILE.bin), to run without "
                        "Paddle (never overwritten)")
    g = p.add_argument_group("ONNX Runtime and Paddle Lite (models converted at load)")
    g.add_argument("--save_onnx", default=None,
                   help="also write the checked ONNX model to this path (never overwritten)")
    g.add_argument("--check_images", nargs="+", default=None, metavar="IMAGE",
                   help="images the converted model is checked on against Paddle (default: 2 "
                        "synthetic)")
    g.add_argument("--min_agreement", type=float, default=None,
                   help="refuse a converted model whose labels agree with Paddle's on less than "
                        "this fraction of pixels (default 0.99; 0 only reports)")
    g.add_argument("--lite_python", default=None, metavar="PYTHON",
                   help="Paddle Lite's Python (default: .venv-lite/bin/python, made by make venv-lite)")
    b = p.add_argument_group("benchmark")
    b.add_argument("--benchmark", type=cli.str2bool, default=False,
                   help="time the model instead of writing results (true/false)")
    cli.add_timing(b, warmup=10, repeats=50)
    return p


def list_images(path):
    from segqat.data import read_list_lines
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(IMG_EXTS))
    elif os.path.isfile(path) and path.lower().endswith(IMG_EXTS):
        files = [path]
    elif os.path.isfile(path):
        root = os.path.dirname(os.path.abspath(path))
        lines = read_list_lines(path, "--image_path")
        files = [os.path.join(root, ln.split()[0]) for ln in lines if ln.strip()]
        cli.logger.info("--image_path %s is not an image (%s): read as a list file, one image "
                        "path per line relative to its folder (%d images)", path,
                        ", ".join(IMG_EXTS), len(files))
    else:
        raise FileNotFoundError(f"--image_path not found: {path}")
    if not files:
        raise FileNotFoundError(f"--image_path {path} holds no images ({', '.join(IMG_EXTS)})")
    for f in files:
        if not os.path.isfile(f):
            raise FileNotFoundError(f"--image_path {path}: image not found: {f}")
    return files


# flag -> (runtimes, option name); a flag given for another runtime than --runtime is an error
RUNTIME_FLAGS = {
    "device": (("paddle",), "device"), "enable_mkldnn": (("paddle",), "enable_mkldnn"),
    "use_trt": (("paddle",), "use_trt"),
    "min_shape": (("paddle",), "trt_min_shape"), "opt_shape": (("paddle",), "trt_opt_shape"),
    "max_shape": (("paddle",), "trt_max_shape"),
    "inference_precision": (("openvino",), "inference_precision"), "save_ir": (("openvino",), "save_ir"),
    "save_onnx": (("onnxruntime",), "save_onnx"),
    "check_images": (("onnxruntime", "lite"), "check_images"),
    "min_agreement": (("onnxruntime", "lite"), "min_agreement"),
    "lite_python": (("lite",), "lite_python"),
}


def runtime_options(args):
    """The options of --runtime from its flags; another runtime's flag, if set, is an error."""
    parser = get_args_parser()
    options, foreign = {}, []
    for flag, (runtimes, name) in RUNTIME_FLAGS.items():
        value = getattr(args, flag)
        if args.runtime in runtimes:
            if value is not None:
                options[name] = value
        elif value != parser.get_default(flag):
            foreign.append(f"--{flag} ({'/'.join(runtimes)})")
    if foreign:
        raise ValueError(f"{', '.join(foreign)}: not options of --runtime {args.runtime}")
    if args.runtime == "paddle":  # Paddle sizes its input for the batch; the others take any
        options["batch_size"] = args.batch_size
    return options


def output_names(files):
    """{image: stem} for the label PNG (stem.png) and overlay (stem_overlay.png) of each image;
    two images that would write the same file are an error."""
    names, taken = {}, {}
    for f in files:
        stem = os.path.splitext(os.path.basename(f))[0]
        for out in (stem + ".png", stem + "_overlay.png"):
            if out in taken and taken[out] != f:
                raise ValueError(f"--image_path: {taken[out]} and {f} would both be written as "
                                 f"{out} in --save_dir; rename one of them")
            taken[out] = f
        names[f] = stem
    return names


def main(args):
    import numpy as np
    from segqat import deploy, outputs
    from segqat.data import read_image
    cli.setup(args)
    shapes = [args.min_shape, args.opt_shape, args.max_shape]
    if args.use_trt and any(shapes) and not all(shapes):
        raise ValueError("--min_shape, --opt_shape and --max_shape go together")
    options = runtime_options(args)
    files = list_images(args.image_path)
    target = contextlib.nullcontext()
    if not args.benchmark:
        for flag in ("save_ir", "save_onnx"):
            if getattr(args, flag) and outputs.inside(getattr(args, flag), args.save_dir):
                raise ValueError(f"--{flag} {getattr(args, flag)} is inside --save_dir "
                                 f"{args.save_dir}, which holds the predictions only; choose a "
                                 "path outside it")
        stems = output_names(files)
        # the images, the list file and the export are inputs: never written over
        target = outputs.claim(args.save_dir, "prediction", overwrite=args.overwrite,
                               inputs=[args.image_path, args.config, *files])
    with target:
        pred = deploy.create_predictor(args.config, runtime=args.runtime, precision=args.precision,
                                       threads=args.cpu_threads, verbose=args.verbose,
                                       allow_external_model=args.allow_external_model, **options)

        def read(f):
            return read_image(f, "--image_path")

        try:
            if args.benchmark:
                imgs = [read(f) for f in files[:args.batch_size]]
                while len(imgs) < args.batch_size:
                    imgs.append(imgs[-1])
                batch = np.stack([pred.preprocess(im)[0] for im in imgs])
                times = pred.benchmark(batch, args.warmup, args.repeats)
                per_img = statistics.median(times) / args.batch_size * 1000
                res = {"model": args.config, "runtime": args.runtime, "precision": pred.precision,
                       "threads": args.cpu_threads, "int8_kernels": sum(pred.int8_ops().values()),
                       "input_shape": list(batch.shape), "median_ms_per_image": round(per_img, 3),
                       "repeats": args.repeats}
                print(json.dumps(res))
                return res

            def write(d):
                for i in range(0, len(files), args.batch_size):
                    chunk = files[i:i + args.batch_size]
                    imgs = [read(f) for f in chunk]
                    if len({im.shape for im in imgs}) > 1:
                        labels = [pred.predict([im])[0] for im in imgs]
                    else:
                        labels = pred.predict(imgs)
                    for f, im, lab in zip(chunk, imgs, labels):
                        deploy.save_label_png(lab, os.path.join(d, stems[f] + ".png"))
                        outputs.imwrite(os.path.join(d, stems[f] + "_overlay.png"),
                                        deploy.overlay(im, lab, pred.dep.get("num_classes")))
            outputs.atomic_dir_write(args.save_dir, write, kind="prediction")
            print(f"wrote {len(files)} label PNGs and overlays to {args.save_dir}")
        finally:
            pred.close()


if __name__ == "__main__":
    cli.run(main, get_args_parser().parse_args())
