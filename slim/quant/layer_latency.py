"""Which layers to leave FP32 on a runtime: each kind of layer's INT8 gain, in the whole model.

    python slim/quant/layer_latency.py --config configs/zoo/bisenetv2.yml \
        --runtime openvino --input_shape 1 3 512 512 --save_dir output/layers_bisenetv2_openvino

The quantizable layers are sorted into kinds (dense 1x1 and kxk convolutions, depthwise,
channel-multiplying depthwise, grouped, Linear); the model is exported INT8 once per
kind with that kind left FP32, and every variant is timed, whole, against the all-INT8
and the FP32 model (segqat/layer_latency.py). Writes to --save_dir: ``layer_latency.md``
(a row per kind: model time with it FP32, what that saves), ``layer_latency.json``, and,
as slim/quant/analysis.py does for accuracy, ``skip_layers.yml`` (the kinds whose FP32 variant is faster by more
than --min_gain, as quant_config.skip_layer_kinds, and the config's skip_layers) and ``config_with_skips.yml`` to use as --config for
qat_train.py / ptq.py. --with_skips adds the skip_layers of another such file (the
accuracy-sensitivity analysis's) to the list, so one config carries both.
Run it on an otherwise idle machine.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from segqat import cli  # noqa: E402


def get_args_parser():
    p = argparse.ArgumentParser(description="INT8 vs FP32 time of each quantizable layer on a runtime")
    p.add_argument("--config", required=True, help="model config (PaddleSeg YAML)")
    p.add_argument("--model_path", default=None, help="FP32 weights (default: random; time does not "
                   "depend on them)")
    cli.add_runtime(p)
    p.add_argument("--input_shape", type=int, nargs=4, default=[1, 3, 512, 512], metavar=("N", "C", "H", "W"),
                   help="input shape the models are exported and timed at (default 1 3 512 512)")
    cli.add_cpu_threads(p, default=2)
    cli.add_timing(p, warmup=5, repeats=20)
    p.add_argument("--kinds", nargs="+", default=None, metavar="KIND",
                   choices=["conv1x1", "conv", "depthwise", "depthwise_multiplier", "grouped", "linear"],
                   help="measure only these kinds of layer (default: every kind the model has)")
    p.add_argument("--min_gain", type=float, default=0.02,
                   help="a kind stays FP32 when that makes the model faster by more than this "
                        "fraction (default 0.02)")
    p.add_argument("--with_skips", default=None,
                   help="a skip_layers.yml (e.g. from slim/quant/analysis.py) whose layers are added")
    p.add_argument("--save_dir", required=True, help="folder for the per-layer table and skip list")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier result in --save_dir")
    cli.add_opts(p)
    return p


def _read_skips(path):
    import yaml
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    skips = (data.get("quant_config") or {}).get("skip_layers") if isinstance(data, dict) else None
    if not isinstance(skips, list):
        raise ValueError(f"--with_skips {path}: expected quant_config.skip_layers (a list), as "
                         "slim/quant/analysis.py writes it")
    return skips


def main(args):
    import paddle
    import yaml
    from segqat import bench, layer_latency, outputs
    from segqat.config import load_config
    outputs.check_save_dir(args.save_dir, "analysis", overwrite=args.overwrite,
                           inputs=[args.model_path, args.with_skips, args.config])
    extra = _read_skips(args.with_skips) if args.with_skips else []
    cli.setup(args)
    cfg = load_config(args.config, opts=args.opts)

    res = layer_latency.measure(cfg, args.runtime, args.input_shape, args.cpu_threads, args.warmup,
                                args.repeats, args.model_path, args.kinds)
    print(f"FP32 {res['fp32_ms']:.2f} ms, INT8 {res['int8_ms']:.2f} ms "
          f"(INT8/FP32 {res['int8_ms'] / res['fp32_ms']:.2f})")
    for r in res["kinds"]:
        print(f"  {r['kind']} ({len(r['layers'])} layers) left FP32: {r['ms']:.2f} ms, saves "
              f"{100 * r['gain']:+.1f}%")
    slow = layer_latency.faster_in_fp32(res, args.min_gain)
    command = "python slim/quant/layer_latency.py " + " ".join(sys.argv[1:])
    machine = dict(bench.machine(), paddle=paddle.__version__)
    existing = list((cfg.get("quant_config") or {}).get("skip_layers") or [])
    skips = list(dict.fromkeys(existing + extra))
    config_rel = os.path.relpath(os.path.abspath(args.config), os.path.abspath(args.save_dir))

    def write(d):
        with open(os.path.join(d, "layer_latency.md"), "w") as f:
            f.write(layer_latency.markdown(res, args.runtime, args.input_shape, args.min_gain, machine, command))
        with open(os.path.join(d, "layer_latency.json"), "w") as f:
            json.dump({"machine": machine, "runtime": args.runtime, "input_shape": args.input_shape,
                       "min_gain": args.min_gain, "command": command, **res, "skip_layer_kinds": slow}, f, indent=1)
        head = (f"# Written by slim/quant/layer_latency.py: the kinds of layer of {args.config} that make\n"
                f"# the model faster FP32 than INT8 on {args.runtime} ({machine['cpu']}, ISA "
                f"{', '.join(machine['isa'])})" + (f", and the layers of {args.with_skips}," if extra else "")
                + " stay float.\n")
        with open(os.path.join(d, "skip_layers.yml"), "w") as f:
            f.write(head + "# Include it in a config: _base_: [your_config.yml, skip_layers.yml]\n")
            yaml.safe_dump({"quant_config": {"skip_layer_kinds": slow, "skip_layers": skips}}, f,
                           sort_keys=False)
        with open(os.path.join(d, "config_with_skips.yml"), "w") as f:
            f.write(head + "# Use it as --config for slim/quant/qat_train.py or ptq.py.\n")
            yaml.safe_dump({"_base_": [config_rel, "skip_layers.yml"]}, f, sort_keys=False)

    outputs.atomic_dir_write(args.save_dir, write, kind="analysis")
    print(f"Faster left FP32 on {args.runtime}: {slow or 'no kind'}; quant_config in "
          f"{os.path.join(args.save_dir, 'skip_layers.yml')}")
    return dict(res, skip_layer_kinds=slow, skip_layers=skips)


if __name__ == "__main__":
    cli.run(main, get_args_parser().parse_args())
