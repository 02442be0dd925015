"""FP32 -> qat_train -> qat_val -> qat_export -> infer.py --precision int8, and its errors."""
import json
import logging
import os
import re

import cv2
import numpy as np
import paddle
import pytest
import yaml

from conftest import run_script
from segqat import deploy, quant, workflow
from segqat.config import load_config
from segqat.metrics import agreement


def val_images(synth):
    pairs = [ln.split() for ln in (synth / "val.txt").read_text().splitlines()]
    return [cv2.imread(str(synth / p[0])) for p in pairs], [str(synth / p[0]) for p in pairs]


def dygraph_labels(model, pred, imgs):
    model.eval()
    out = []
    with paddle.no_grad():
        for im in imgs:
            x, _ = pred.preprocess(im)
            out.append(paddle.argmax(model(paddle.to_tensor(x[None]))[0], axis=1).numpy()[0])
    return out


@pytest.mark.core
def test_qat_train_outputs(qat_run):
    state = json.loads((qat_run / "best_model" / "state.json").read_text())
    assert state["best_iter"] in (15, 30) and state["best_mIoU"] > 0.4
    keys = paddle.load(str(qat_run / "best_model" / "model.pdparams")).keys()
    assert any("_fake_quant_input._scale" in k for k in keys)
    log = (qat_run / "train.log").read_text()
    assert "Evaluate QAT model (fake quantization)" in log and "[TRAIN] epoch" in log
    # --do_eval: the quantized FP32 weights are evaluated before the first step (scales
    # calibrated for it; uncalibrated they would score near nothing), and kept for comparison
    assert re.search(r"\[EVAL\] before QAT fine-tuning \(iter 0\): mIoU: [\d.]+ Acc", log)
    assert re.search(r"\[EVAL\] QAT fine-tuning: mIoU [\d.]+ before \(iter 0\) -> [\d.]+ best", log)
    start = state["start_metrics"]
    assert start["iter"] == 0 and start["mIoU"] > 0.3 and len(start["class_IoU"]) == 4


@pytest.mark.core
def test_qat_val_matches_training_eval(syn_cfg, qat_run, tmp_path):
    m = run_script("slim/quant/qat_val.py", ["--config", syn_cfg, "--model_path",
                                             qat_run / "best_model" / "model.pdparams",
                                             "--save_metrics", tmp_path / "q.json"])
    state = json.loads((qat_run / "best_model" / "state.json").read_text())
    assert m["quantized"] is True
    assert m["mIoU"] == pytest.approx(state["best_mIoU"], abs=1e-9)
    assert json.loads((tmp_path / "q.json").read_text())["mIoU"] == pytest.approx(m["mIoU"])


@pytest.mark.core
def test_fp32_predictor_equals_dygraph(syn_cfg, synth, fp32_run, exports):
    cfg = load_config(str(syn_cfg))
    model, _ = quant.build_model(cfg, str(fp32_run / "best_model" / "model.pdparams"))
    pred = deploy.create_predictor(str(exports / "fp32" / "deploy.yaml"), precision="fp32", threads=2)
    imgs, _ = val_images(synth)
    ref = dygraph_labels(model, pred, imgs)
    got = pred.predict(imgs)
    agree = np.mean([agreement(a, b) for a, b in zip(ref, got)])
    assert agree >= 0.999, agree
    dep = yaml.safe_load((exports / "fp32" / "deploy.yaml").read_text())["Deploy"]
    assert dep["output_op"] == "argmax" and dep["output_dtype"] == "int32" and dep["precision"] == "fp32"
    assert got[0].shape == imgs[0].shape[:2]


@pytest.mark.core
def test_int8_predictor_runs_int8_and_agrees(syn_cfg, synth, qat_run, exports):
    cfg = load_config(str(syn_cfg))
    model, _ = quant.build_model(cfg, str(qat_run / "best_model" / "model.pdparams"),
                                 quantized=True, stage="eval")
    pred = deploy.create_predictor(str(exports / "int8" / "deploy.yaml"), precision="int8", threads=2)
    # proof of real INT8 kernels: oneDNN convolutions with int8 data type in the optimized program
    ops = pred.optimized_op_types()
    int8_convs = sum(n for (t, dt), n in ops.items() if "conv" in t and dt == "int8")
    float_convs = sum(n for (t, dt), n in ops.items() if "conv" in t and dt != "int8")
    # 8 of BiSeNetV2's 56 convs are not quantized (channel-multiplying depthwise convs,
    # quant_config.skip_layer_kinds); of the other 48, one with a fused residual add stays
    # float32 in oneDNN's int8 pass
    assert int8_convs >= 47 and float_convs <= 8 + 1, ops
    # batch norms folded into the convolutions (compat.fix_conv_bias_axis); BiSeNetV2 keeps
    # one, on globally pooled features with no conv before it
    assert sum(n for (t, _), n in ops.items() if t == "batch_norm") <= 1, ops
    assert not any(t.startswith("fake_") or t in ("quantize_linear", "dequantize_linear")
                   for (t, _) in ops), "fake quantization left in the optimized program"
    imgs, _ = val_images(synth)
    ref = dygraph_labels(model, pred, imgs)
    got = pred.predict(imgs)
    pixels = sum(r.size for r in ref)
    agree = sum((a == b).sum() for a, b in zip(ref, got)) / pixels
    assert agree >= 0.99, f"INT8 vs fake-quant agreement {agree:.4f}"
    # weights stored as int8
    ratio = (os.path.getsize(exports / "int8" / "model.pdiparams")
             / os.path.getsize(exports / "fp32" / "model.pdiparams"))
    assert ratio <= 0.3, ratio
    pred.close()


@pytest.mark.core
def test_infer_script_int8(synth, exports, tmp_path):
    out = tmp_path / "pred"
    # no --precision: deploy.yaml says int8
    run_script("deploy/python/infer.py", ["--config", exports / "int8" / "deploy.yaml", "--image_path",
                                          synth / "val.txt", "--save_dir", out,
                                          "--cpu_threads", 2, "--batch_size", 3])
    pngs = sorted(p for p in out.glob("val_*.png") if not p.name.endswith("_overlay.png"))
    assert len(pngs) == 12 and len(list(out.glob("*_overlay.png"))) == 12
    from PIL import Image
    im = Image.open(pngs[0])
    assert im.mode == "P" and im.size == (64, 64) and max(np.unique(np.array(im))) < 4
    res = run_script("deploy/python/infer.py", ["--config", exports / "int8" / "deploy.yaml",
                                                "--image_path", synth / "images" / "val_0000.png",
                                                "--precision", "int8", "--benchmark", "true",
                                                "--warmup", 2, "--repeats", 3])
    assert res["median_ms_per_image"] > 0 and res["input_shape"] == [1, 3, 64, 64]


def test_qat_model_never_runs_as_fake_quant_fp32(exports, synth, caplog):
    caplog.set_level(logging.ERROR)
    for extra in (["--precision", "fp32"], ["--precision", "int8", "--enable_mkldnn", "false"]):
        with pytest.raises(SystemExit) as e:
            run_script("deploy/python/infer.py", ["--config", exports / "int8" / "deploy.yaml",
                                                  "--image_path", synth / "val.txt", *extra])
        assert e.value.code == 1
    assert "would execute its fake quantization in floating point" in caplog.text
    assert "fake quantization in FP32" in caplog.text
    with pytest.raises(SystemExit):
        run_script("deploy/python/infer.py", ["--config", exports / "int8" / "deploy.yaml",
                                              "--image_path", synth / "val.txt", "--benchmark", "maybe"])


def test_qat_export_rejects_fp32_weights(syn_cfg, fp32_run, tmp_path, caplog):
    caplog.set_level(logging.ERROR)
    out = tmp_path / "int8"
    with pytest.raises(SystemExit) as e:
        run_script("slim/quant/qat_export.py", ["--config", syn_cfg, "--model_path",
                                                fp32_run / "best_model" / "model.pdparams", "--save_dir", out])
    assert e.value.code == 1 and "holds FP32 weights" in caplog.text
    assert not out.exists()


def test_qat_train_model_path_errors(syn_cfg, qat_run, tmp_path, caplog):
    caplog.set_level(logging.ERROR)
    with pytest.raises(SystemExit) as e:  # required
        run_script("slim/quant/qat_train.py", ["--config", syn_cfg])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:  # missing file
        run_script("slim/quant/qat_train.py", ["--config", syn_cfg, "--model_path", tmp_path / "no.pdparams",
                                               "--save_dir", tmp_path / "o"])
    assert e.value.code == 1 and "weights file not found" in caplog.text and "no.pdparams" in caplog.text
    with pytest.raises(SystemExit) as e:  # QAT weights where FP32 ones belong
        run_script("slim/quant/qat_train.py", ["--config", syn_cfg, "--model_path",
                                               qat_run / "best_model" / "model.pdparams",
                                               "--save_dir", tmp_path / "o"])
    assert e.value.code == 1 and "holds QAT weights" in caplog.text


def test_program_another_paddle_cannot_load_names_both_versions(exports, synth, tmp_path, caplog):
    # deploy.yaml records the Paddle that wrote the program (docs/stacks.md)
    dep = yaml.safe_load((exports / "fp32" / "deploy.yaml").read_text())
    assert dep["Deploy"]["paddle_version"] == paddle.__version__
    d = tmp_path / "other"
    d.mkdir()
    (d / "model.pdiparams").write_bytes((exports / "fp32" / "model.pdiparams").read_bytes())
    (d / "model.pdmodel").write_bytes((exports / "fp32" / "model.pdmodel").read_bytes()[:2000])
    dep["Deploy"]["paddle_version"] = "2.6.2" if paddle.__version__ != "2.6.2" else "3.3.1"
    (d / "deploy.yaml").write_text(yaml.safe_dump(dep))
    caplog.set_level(logging.ERROR)
    with pytest.raises(SystemExit) as e:
        run_script("deploy/python/infer.py", ["--config", d / "deploy.yaml", "--image_path",
                                              synth / "images" / "val_0000.png", "--save_dir", tmp_path / "p"])
    assert e.value.code == 1
    line = caplog.records[-1].getMessage()
    assert "\n" not in line and f"exported by paddle {dep['Deploy']['paddle_version']}" in line
    assert f"paddle {paddle.__version__}'s Paddle Inference cannot load it" in line


def test_infer_without_deploy_yaml(tmp_path, synth, caplog):
    caplog.set_level(logging.ERROR)
    with pytest.raises(SystemExit) as e:
        run_script("deploy/python/infer.py", ["--config", tmp_path, "--image_path", synth / "val.txt"])
    assert e.value.code == 1 and "deploy.yaml not found" in caplog.text


def test_qat_resume_restores_scales(syn_cfg, fp32_run, tmp_path, monkeypatch):
    """--resume_model in QAT restores weights, optimizer and the quantizers' scales.

    With --do_eval, QAT evaluates the quantized FP32 weights before its first step
    (calibrating the scales for that and restoring them after): it must not change
    what training computes.
    """
    base = ["--config", syn_cfg, "--model_path", fp32_run / "best_model" / "model.pdparams",
            "--iters", 6, "--batch_size", 4, "--save_interval", 3, "--learning_rate", 0.005,
            "--log_iters", 3, "--keep_checkpoint_max", 0]
    run_script("slim/quant/qat_train.py", base + ["--save_dir", tmp_path / "full", "--do_eval", "--use_vdl"])
    run_script("slim/quant/qat_train.py", base + ["--save_dir", tmp_path / "res", "--do_eval",
                                                  "--resume_model", tmp_path / "full" / "iter_3"])
    with monkeypatch.context() as mp:  # the same run without the evaluation before the first step
        mp.setattr(workflow, "qat_start_eval", lambda *a: None)
        run_script("slim/quant/qat_train.py", base + ["--save_dir", tmp_path / "plain", "--do_eval"])

    def same(x, y):
        a, b = paddle.load(str(tmp_path / x / "model.pdparams")), paddle.load(str(tmp_path / y / "model.pdparams"))
        scales = [k for k in a if k.endswith("_fake_quant_input._scale")]
        return scales and a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)

    assert same("full/iter_6", "res/iter_6")
    assert same("full/iter_3", "plain/iter_3") and same("full/iter_6", "plain/iter_6")
    # iter 0 is evaluated once, in the run that starts from FP32 weights; its numbers travel on
    assert "before QAT fine-tuning (iter 0)" in (tmp_path / "full" / "train.log").read_text()
    assert "before QAT fine-tuning (iter 0)" not in (tmp_path / "res" / "train.log").read_text()
    start = json.loads((tmp_path / "full/iter_3/state.json").read_text())["start_metrics"]
    assert json.loads((tmp_path / "res/iter_6/state.json").read_text())["start_metrics"] == start
    assert "start_metrics" not in json.loads((tmp_path / "plain/iter_3/state.json").read_text())
    # VisualDL: the iter-0 evaluation at step 0, per-class IoU named from labels.txt, Kappa, Dice
    from visualdl import LogReader
    (vdl,) = (tmp_path / "full" / "vdl_log").glob("vdlrecords.*")
    reader = LogReader(file_path=str(vdl))
    tags = set(reader.get_tags()["scalar"])
    assert {"Evaluate/mIoU", "Evaluate/Acc", "Evaluate/Kappa", "Evaluate/Dice"} <= tags
    assert {f"Evaluate/IoU/{c}" for c in ("background", "circle", "square", "triangle")} <= tags
    assert [r.id for r in reader.get_data("scalar", "Evaluate/mIoU")] == [0, 3, 6]
    iou0 = [r.value for r in reader.get_data("scalar", "Evaluate/IoU/circle") if r.id == 0]
    assert iou0 == pytest.approx([start["class_IoU"][1]])


def test_output_ops_and_legacy_flags(syn_cfg, fp32_run, synth, tmp_path):
    weights = fp32_run / "best_model" / "model.pdparams"
    img = cv2.imread(str(synth / "images" / "val_0000.png"))
    cases = {  # flags -> (output_op, output shape after batch dim, dtype)
        ("--output_op", "softmax"): ("softmax", (4, 64, 64), np.float32),
        ("--without_argmax",): ("none", (4, 64, 64), np.float32),
        ("--without_argmax", "--with_softmax"): ("softmax", (4, 64, 64), np.float32),
        ("--with_softmax",): ("argmax", (64, 64), np.int32),
    }
    for i, (flags, (op, shape, dtype)) in enumerate(cases.items()):
        d = tmp_path / f"e{i}"
        run_script("tools/export.py", ["--config", syn_cfg, "--model_path", weights, "--save_dir", d,
                                       "--input_shape", 1, 3, 64, 64, *flags])
        dep = yaml.safe_load((d / "deploy.yaml").read_text())["Deploy"]
        assert dep["output_op"] == op and dep["input_shape"] == [1, 3, 64, 64]
        pred = deploy.create_predictor(str(d / "deploy.yaml"), threads=2)
        out = pred.run(pred.preprocess(img)[0][None])
        assert out.shape[1:] == shape and out.dtype == dtype
        if op == "softmax":
            assert np.allclose(out.sum(axis=1), 1, atol=1e-4)
    with pytest.raises(SystemExit) as e:
        run_script("tools/export.py", ["--config", syn_cfg, "--model_path", weights, "--save_dir",
                                       tmp_path / "x", "--output_op", "argmax", "--without_argmax"])
    assert e.value.code == 2


def test_pact_qat_end_to_end(syn_cfg, synth, fp32_run, tmp_path, caplog):
    """quant_config.pact: QAT learns clipping thresholds; the export runs in INT8 like fake quant."""
    pact = ["--opts", "quant_config.pact=true", "quant_config.pact_alpha_init=4"]
    out = tmp_path / "qat_pact"
    run_script("slim/quant/qat_train.py", [
        "--config", syn_cfg, "--model_path", fp32_run / "best_model" / "model.pdparams",
        "--learning_rate", 0.005, "--iters", 10, "--batch_size", 8, "--save_interval", 10,
        "--log_iters", 5, "--save_dir", out, "--cpu_threads", 2] + pact)
    weights = out / "iter_10" / "model.pdparams"
    alphas = {k: v for k, v in paddle.load(str(weights)).items() if k.endswith("_act_preprocess.alpha")}
    assert len(alphas) > 40
    assert any(abs(float(v.item()) - 4.0) > 1e-3 for v in alphas.values())  # alpha was trained
    # the same weights under a config without pact: a clear error, not a silent mismatch
    with pytest.raises(SystemExit):
        run_script("slim/quant/qat_val.py", ["--config", syn_cfg, "--model_path", weights])
    assert "trained with PACT" in caplog.text
    run_script("slim/quant/qat_export.py", ["--config", syn_cfg, "--model_path", weights,
                                            "--save_dir", tmp_path / "infer"] + pact)
    cfg = load_config(str(syn_cfg), opts=pact[1:])
    model, _ = quant.build_model(cfg, str(weights), quantized=True, stage="eval")
    pred = deploy.create_predictor(str(tmp_path / "infer" / "deploy.yaml"), precision="int8", threads=2)
    assert sum(pred.int8_ops().values()) > 40
    imgs, _ = val_images(synth)
    ref = dygraph_labels(model, pred, imgs)
    got = pred.predict(imgs)
    agree = sum((a == b).sum() for a, b in zip(ref, got)) / sum(r.size for r in ref)
    assert agree >= 0.98, f"PACT INT8 vs fake-quant agreement {agree:.4f}"
    pred.close()
