"""Post-training quantization (slim/quant/ptq.py): INT8 export, calibration data, errors."""
import json
import logging
import os

import cv2
import numpy as np
import pytest
import yaml

from conftest import run_script
from segqat import deploy, ptq
from segqat.calibration import Calibration, CalibrationOptions, select_calibration_indices
from segqat.config import load_config
from segqat.metrics import agreement

PTQ = "slim/quant/ptq.py"


def val_images(synth):
    pairs = [ln.split() for ln in (synth / "val.txt").read_text().splitlines()]
    return [cv2.imread(str(synth / p[0])) for p in pairs]


def fp32_weights(fp32_run):
    return fp32_run / "best_model" / "model.pdparams"


def run_ptq(syn_cfg, fp32_run, out, *extra):
    return run_script(PTQ, ["--config", syn_cfg, "--model_path", fp32_weights(fp32_run),
                            "--save_dir", out, "--batch_size", 4, "--batch_nums", 4,
                            "--cpu_threads", 2, *extra])


def op_counts(pdmodel):
    return ptq.program_op_counts(str(pdmodel))


@pytest.fixture(scope="module")
def fp32_labels(synth, exports):
    pred = deploy.create_predictor(str(exports / "fp32"), precision="fp32", threads=2)
    try:
        return [pred.predict([im])[0] for im in val_images(synth)]
    finally:
        pred.close()


# The default algorithm (hist) runs in `make test`; the others run with `make test-slow`
# (KL calibration alone takes ~3 min here, each other one ~25 s).
@pytest.mark.core
@pytest.mark.parametrize("algo", [a if a == "hist" else pytest.param(a, marks=pytest.mark.slow)
                                  for a in ptq.ALGOS])
def test_ptq_int8_export_agrees_with_fp32(algo, syn_cfg, synth, fp32_run, exports, fp32_labels,
                                          tmp_path, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / f"ptq_{algo}"
    info = run_ptq(syn_cfg, fp32_run, out, "--algo", algo)

    # the same directory as qat_export: old-IR program, int8 weights, quantize/dequantize ops
    names = set(os.listdir(out))
    assert {"model.pdmodel", "model.pdiparams", "deploy.yaml", "ptq_info.json"} <= names, names
    assert not any(n.endswith(".json") and n.startswith("model") for n in names)  # no new-IR model.json
    ops = op_counts(out / "model.pdmodel")
    assert ops["quantize_linear"] > 0 and ops["dequantize_linear"] > 0, ops
    assert not any(t.startswith("fake_") for t in ops), ops
    # conv biases in paddle 2.x form (compat.fix_conv_bias_axis): no reshape2 feeding the adds
    assert op_counts(exports / "fp32" / "model.pdmodel")["reshape2"] == ops["reshape2"]
    size8 = os.path.getsize(out / "model.pdiparams")
    size32 = os.path.getsize(exports / "fp32" / "model.pdiparams")
    assert size8 <= 0.3 * size32, (size8, size32)
    dep = yaml.safe_load((out / "deploy.yaml").read_text())["Deploy"]
    dep32 = yaml.safe_load((exports / "fp32" / "deploy.yaml").read_text())["Deploy"]
    assert dep["precision"] == "int8"
    assert {k: v for k, v in dep.items() if k != "precision"} == \
        {k: v for k, v in dep32.items() if k != "precision"}
    with open(exports / "int8" / "deploy.yaml") as f:  # written the same way as qat_export's
        assert (out / "deploy.yaml").read_text() == f.read()

    # real INT8 kernels, and the same labels as FP32 on the validation images
    pred = deploy.create_predictor(str(out / "deploy.yaml"), precision="int8", threads=2)
    try:
        int8 = pred.int8_ops()
        assert int8.get("fused_conv2d", 0) > 40, int8
        got = [pred.predict([im])[0] for im in val_images(synth)]
    finally:
        pred.close()
    agree = float(np.mean([agreement(a, b) for a, b in zip(fp32_labels, got)]))
    print(f"PTQ {algo}: agreement with FP32 {agree * 100:.2f}% on {len(got)} images, "
          f"int8 ops {dict(int8)}, params {size8 / 2 ** 20:.2f} MB vs {size32 / 2 ** 20:.2f} MB, "
          f"mIoU {info['mIoU']:.4f}")
    assert agree >= 0.98, agree

    saved = json.loads((out / "ptq_info.json").read_text())
    assert saved["algo"] == algo and saved["batch_nums"] == 4 and saved["batch_size"] == 4
    assert saved["split"] == 1.0 and saved["seed"] == 0 and saved["calibration"] == "train_dataset"
    assert saved["calibration_images"] == 16 and saved["accuracy_meaningful"] is True
    assert 0 < saved["mIoU"] <= 1 and saved["mIoU"] == pytest.approx(info["mIoU"])
    assert saved["metrics"]["num_images"] == 12
    assert "Evaluate PTQ INT8 model" in caplog.text
    assert f"[EVAL] #Images: 12 mIoU: {saved['mIoU']:.4f}" in caplog.text


def test_fuse_conv_bn_folds_before_quantizing(syn_cfg, fp32_run, exports, tmp_path):
    """quant_config.fuse_conv_bn: paddleslim folds the batch norms into the convolutions
    before quantizing their weights (optimize_model), as per-tensor targets need."""
    out = tmp_path / "ptq_fold"
    run_ptq(syn_cfg, fp32_run, out, "--algo", "abs_max", "--batch_nums", 1,
            "--opts", "quant_config.fuse_conv_bn=true")
    n_fp32 = op_counts(exports / "fp32" / "model.pdmodel")["batch_norm"]
    assert n_fp32 > 30
    # paddle's fuse passes fold 36 of BiSeNetV2's 53; the other 17 stay batch norms (README)
    assert op_counts(out / "model.pdmodel")["batch_norm"] < n_fp32 / 2


def test_random_calibration_warns(syn_cfg, fp32_run, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "ptq_random"
    info = run_ptq(syn_cfg, fp32_run, out, "--random_calibration", "--batch_nums", 2, "--algo", "avg")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("RANDOM" in w and "MEANINGLESS" in w for w in warnings), warnings
    saved = json.loads((out / "ptq_info.json").read_text())
    assert saved["calibration"] == "random" and saved["accuracy_meaningful"] is False
    assert "meaningless" in saved["warning"].lower()
    assert saved["calibration_images"] == 8 and saved["onednn_int8_ops"].get("fused_conv2d", 0) > 40
    assert "64x64" in saved["calibration_detail"]  # the config's input size (a validation image)
    assert info["mIoU"] is not None  # still reported (a val_dataset exists)


def test_no_train_dataset_falls_back_to_random(synth, fp32_run, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    cfg = tmp_path / "no_train.yml"
    cfg.write_text(
        "model:\n  type: BiSeNetV2\n  num_classes: 4\n  pretrained: null\n"
        f"val_dataset:\n  type: Dataset\n  dataset_root: {synth}\n  val_path: {synth}/val.txt\n"
        "  num_classes: 4\n  mode: val\n  transforms:\n    - type: Normalize\n")
    out = tmp_path / "ptq_auto_random"
    run_script(PTQ, ["--config", cfg, "--model_path", fp32_weights(fp32_run), "--save_dir", out,
                     "--batch_size", 2, "--batch_nums", 1, "--algo", "abs_max"])
    assert "has no train_dataset" in caplog.text
    assert any("MEANINGLESS" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert json.loads((out / "ptq_info.json").read_text())["calibration"] == "random"


def test_quantization_split_is_seeded(syn_cfg, fp32_run, tmp_path):
    cfg = load_config(str(syn_cfg))
    opts = CalibrationOptions(split=0.25, seed=3, batch_size=4, batch_nums=100)
    a, n_a = select_calibration_indices(64, opts)
    b, _ = select_calibration_indices(64, opts)
    c, _ = select_calibration_indices(64, CalibrationOptions(split=0.25, seed=4, batch_size=4,
                                                             batch_nums=100))
    assert a == b and n_a == 16 and len(a) == 16 and len(set(a)) == 16
    assert all(0 <= i < 64 for i in a) and set(a) != set(c)
    # batch_nums x batch_size smaller than the subset: a prefix of the same seeded subset
    d, _ = select_calibration_indices(64, CalibrationOptions(split=0.25, seed=3, batch_size=2,
                                                             batch_nums=3))
    assert d == a[:6]
    # the feeds themselves are identical for the same seed
    c1 = Calibration(cfg, CalibrationOptions(split=0.25, seed=3, batch_size=4, batch_nums=2))
    c2 = Calibration(cfg, CalibrationOptions(split=0.25, seed=3, batch_size=4, batch_nums=2))
    f1, f2 = list(c1()), list(c1())
    assert len(f1) == 2 and f1[0]["x"].shape == (4, 3, 64, 64)
    assert all(np.array_equal(x["x"], y["x"]) for x, y in zip(f1, f2))
    assert all(np.array_equal(x["x"], y["x"]) for x, y in zip(f1, list(c2())))

    out = tmp_path / "ptq_split"
    run_ptq(syn_cfg, fp32_run, out, "--quantization_split", 0.25, "--seed", 3, "--batch_nums", 100,
            "--algo", "abs_max")
    saved = json.loads((out / "ptq_info.json").read_text())
    assert saved["split"] == 0.25 and saved["seed"] == 3
    assert saved["calibration_images"] == 16 and saved["calibration_batches"] == 4


def test_failed_run_keeps_earlier_export(syn_cfg, fp32_run, tmp_path, monkeypatch):
    out = tmp_path / "ptq_keep"
    run_ptq(syn_cfg, fp32_run, out, "--algo", "abs_max", "--batch_nums", 1)
    before = {n: (out / n).read_bytes() for n in os.listdir(out)}

    def boom(*a, **k):
        raise ValueError("evaluation failed on purpose")
    monkeypatch.setattr(ptq, "evaluate", boom)
    with pytest.raises(SystemExit) as e:
        run_ptq(syn_cfg, fp32_run, out, "--algo", "avg", "--batch_nums", 1)
    assert e.value.code == 1
    assert {n: (out / n).read_bytes() for n in os.listdir(out)} == before
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".ptq_keep")]


def test_missing_model_path_exits_1(syn_cfg, tmp_path, caplog):
    with pytest.raises(SystemExit) as e:
        run_script(PTQ, ["--config", syn_cfg, "--model_path", tmp_path / "nope.pdparams",
                         "--save_dir", tmp_path / "out"])
    assert e.value.code == 1
    assert "weights file not found" in caplog.text and "nope.pdparams" in caplog.text
    assert not (tmp_path / "out").exists()


def test_qat_weights_are_rejected(syn_cfg, qat_run, tmp_path, caplog):
    with pytest.raises(SystemExit) as e:
        run_script(PTQ, ["--config", syn_cfg, "--model_path", qat_run / "best_model" / "model.pdparams",
                         "--save_dir", tmp_path / "out"])
    assert e.value.code == 1
    assert "holds QAT weights" in caplog.text


@pytest.mark.parametrize("argv", [["--quantization_split", "0"], ["--quantization_split", "1.5"],
                                  ["--quantization_split", "x"], ["--algo", "percentile"],
                                  ["--batch_nums", "0"]])
def test_bad_flags_are_argparse_errors(argv, capsys):
    from conftest import load_script
    parser = load_script(PTQ).get_args_parser()
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["--config", "c.yml", "--model_path", "m.pdparams", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err if argv[0] == "--algo" else "(0, 1]" in err or "positive" in err


def test_script_algos_match_library():
    from conftest import load_script
    assert tuple(load_script(PTQ).ALGOS) == ptq.ALGOS


def test_calibration_list(synth, syn_cfg, fp32_run, tmp_path, caplog):
    """quant_config.calibration_list: a dedicated list of calibration images."""
    val_lines = (synth / "val.txt").read_text().splitlines()[:6]
    lst = tmp_path / "calib.txt"
    lst.write_text("\n".join(val_lines) + "\n\n")  # "image label" lines: the label is ignored
    cfg = tmp_path / "c.yml"
    cfg.write_text(f"_base_: {syn_cfg}\nquant_config:\n  calibration_list: {lst}\n")
    out = tmp_path / "ptq_list"
    run_script(PTQ, ["--config", cfg, "--model_path", fp32_weights(fp32_run), "--save_dir", out,
                     "--batch_size", 4, "--batch_nums", 100, "--algo", "abs_max", "--cpu_threads", 2])
    saved = json.loads((out / "ptq_info.json").read_text())
    assert saved["calibration"] == "calibration_list" and saved["calibration_images"] == 6
    assert saved["calibration_batches"] == 2 and str(lst) in saved["calibration_detail"]
    # a missing image is an error naming the list, the line and the path
    lst.write_text(val_lines[0] + "\nimages/nope.png\n")
    with pytest.raises(SystemExit):
        run_script(PTQ, ["--config", cfg, "--model_path", fp32_weights(fp32_run), "--save_dir",
                         tmp_path / "bad", "--algo", "abs_max"])
    assert f"{lst} line 2: image not found" in caplog.text and "nope.png" in caplog.text
    assert not (tmp_path / "bad").exists()


def test_ptq_options_in_program(syn_cfg, fp32_run, tmp_path):
    """per_tensor weights and skip patterns reach PTQ's exported program too."""
    from paddle.base import core
    out = tmp_path / "ptq_opts"
    run_ptq(syn_cfg, fp32_run, out, "--algo", "abs_max", "--batch_nums", 1, "--opts",
            "quant_config.weight_granularity=per_tensor", "quant_config.skip_layers=['head.*']")
    desc = core.ProgramDesc((out / "model.pdmodel").read_bytes())
    blk = desc.block(0)
    ops = [blk.op(i) for i in range(blk.op_size())]
    convs = [op for op in ops if op.type() in ("conv2d", "depthwise_conv2d", "conv2d_transpose")]
    weight_dequant = [op for op in ops if op.type() == "dequantize_linear"
                      and blk.var(op.input("X")[0].encode()).persistable()]
    assert {op.attr("quant_axis") for op in weight_dequant} == {-1}  # one scale per tensor
    # BiSeNetV2's main head has two convs (head.conv_3x3, head.conv_1x1): left in float, as
    # are its 8 channel-multiplying depthwise convs (quant_config.skip_layer_kinds' default)
    assert len(weight_dequant) == len(convs) - 2 - 8, (len(weight_dequant), len(convs))
    info = json.loads((out / "ptq_info.json").read_text())
    assert info["weight_quantize_type"] == "abs_max" and len(info["skipped_weights"]) == 2 + 8
    pred = deploy.create_predictor(str(out), precision="int8", threads=2)
    assert sum(pred.int8_ops().values()) > 40
    pred.close()


@pytest.mark.parametrize("opt,match", [("quant_config.weight_bits=16", "16 bits is a diagnostic"),
                                       ("quant_config.pact=true", "PACT learns")])
def test_ptq_refuses_unsupported_options(syn_cfg, fp32_run, tmp_path, caplog, opt, match):
    with pytest.raises(SystemExit):
        run_ptq(syn_cfg, fp32_run, tmp_path / "out", "--opts", opt)
    assert match in caplog.text
    assert not (tmp_path / "out").exists()
