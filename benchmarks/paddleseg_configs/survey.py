"""Which of PaddleSeg's own configs segqat loads, and builds (model, losses, LR, optimizer).

    git clone -b release/2.8 https://github.com/PaddlePaddle/PaddleSeg
    python benchmarks/paddleseg_configs/survey.py --paddleseg PaddleSeg            # load every config
    python benchmarks/paddleseg_configs/survey.py --paddleseg PaddleSeg --build    # + build one per folder

Loading: every ``configs/**/*.yml`` outside ``_base_``. Building: one config per
model folder (a Cityscapes one where there is one), with every ``pretrained``
set to null (nothing is downloaded). Prints one line per config and a count.
"""
import argparse
import glob
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))


def null_pretrained(d):
    if isinstance(d, dict):
        for k in list(d):
            if k == "pretrained":
                d[k] = None
            else:
                null_pretrained(d[k])
    elif isinstance(d, list):
        for x in d:
            null_pretrained(x)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--paddleseg", required=True, help="a checkout of PaddleSeg release/2.8")
    ap.add_argument("--build", action="store_true", help="also build one config per model folder")
    args = ap.parse_args()
    from segqat import builder
    from segqat.config import load_config
    root = os.path.join(args.paddleseg, "configs")
    files = sorted(f for f in glob.glob(os.path.join(root, "**", "*.yml"), recursive=True)
                   if "_base_" not in f.split(os.sep))
    loaded = 0
    for f in files:
        try:
            load_config(f)
            loaded += 1
        except Exception as e:  # noqa: BLE001  (reported)
            print(f"load failed: {os.path.relpath(f, root)}: {type(e).__name__}: {str(e)[:200]}")
    print(f"loaded {loaded} of {len(files)} configs")
    if not args.build:
        return
    import paddle
    paddle.set_device("cpu")
    ok = folders = 0
    for d in sorted(glob.glob(os.path.join(root, "*", ""))):
        fs = sorted(glob.glob(os.path.join(d, "*.yml")), key=lambda f: ("cityscapes" not in f, len(f)))
        if not fs or os.path.basename(d.rstrip(os.sep)) == "_base_":
            continue
        folders += 1
        step = "load"
        try:
            cfg = load_config(fs[0])
            null_pretrained(cfg.dic["model"])
            step = "model"
            m = builder.build_model(cfg)
            step = "loss"
            if cfg.get("loss"):
                builder.build_losses(cfg)
            step = "lr"
            lr = builder.build_lr_scheduler(cfg)
            step = "optimizer"
            builder.build_optimizer(cfg, m, lr)
            ok += 1
            print(f"ok: {os.path.relpath(fs[0], root)}")
        except Exception as e:  # noqa: BLE001  (reported)
            print(f"failed at {step}: {os.path.relpath(fs[0], root)}: {type(e).__name__}: {str(e)[:200]}")
    print(f"built {ok} of {folders} model folders")


if __name__ == "__main__":
    main()
