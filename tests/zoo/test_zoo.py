"""tools/zoo.py on two tiny entries: one that builds, one that fails; resume; timeouts."""
import json
import os

import pytest

from conftest import ROOT, run_script


def _entry(path, data_root, extra=""):
    path.write_text(
        f"_base_: {ROOT / 'configs' / 'zoo' / 'pp_humanseg_lite.yml'}\nbatch_size: 2\n"
        f"train_dataset:\n  dataset_root: {data_root}\n  train_path: {data_root}/train.txt\n"
        f"val_dataset:\n  dataset_root: {data_root}\n  val_path: {data_root}/val.txt\n" + extra)


def test_zoo_build_resume_and_failures(tmp_path):
    from segqat import datagen
    data = tmp_path / "data"
    datagen.make_synthetic(str(data), num_train=8, num_val=2, size=64, num_classes=4, seed=0)
    cfgs = tmp_path / "configs"
    cfgs.mkdir()
    _entry(cfgs / "tiny.yml", data)
    _entry(cfgs / "broken.yml", data, "model:\n  no_such_arg: 1\n")
    _entry(cfgs / "slow.yml", data)
    work, out = tmp_path / "work", tmp_path / "out"
    common = ["--config_dir", cfgs, "--work_dir", work, "--out_dir", out, "--fp32_iters", 2, "--qat_iters", 1]

    rows = run_script("tools/zoo.py", common + ["--models", "tiny", "broken"])
    by = {r["model"]: r for r in rows}
    tiny, broken = by["tiny"], by["broken"]
    # tiny: every build step ran; INT8 kernels proven; the row's mark follows the 99% rule
    assert tiny["int8_convs"] > 0 and tiny["int8_convs"] <= tiny["all_convs"]
    assert 0 < tiny["params_ratio"] < 0.5
    # what QAT quantized (ops reading an int8 weight), to compare with what runs INT8
    assert tiny["quantized_ops"].get("conv2d", 0) >= 20
    assert sum(tiny["quantized_ops"].values()) >= tiny["int8_convs"]
    assert 0 <= tiny["clear_margin_share"] <= 1  # 2 iterations: nearly every pixel is a near tie
    assert tiny["num_classes"] == 4 and 0 < tiny["majority_class_mIoU"] < 0.25 and tiny["num_images"] == 2
    assert tiny["status"] == "✓" or tiny["status"] == "✗" and tiny["reason"]
    # the same exports on OpenVINO, compared with the same fake-quant model
    ov = tiny["openvino"]
    assert ov["int8_kernels"] > 0 and 0 < ov["agreement_int8_vs_fake_quant"] <= 1, ov
    assert tiny["openvino_status"] in ("✓", "✗")
    # broken: ✗ at its first step, with the real error (the bad argument) as the reason
    assert broken["status"] == "✗" and broken["failed_step"] == "fp32_train"
    assert "no_such_arg" in broken["reason"] and "PPHumanSegLite" in broken["reason"]
    assert by["slow"]["status"] == "…" and by["slow"]["reason"] == "not built yet"

    md = (out / "zoo.md").read_text()
    assert "| broken (PPHumanSegLite) | ✗ |" in md and "no_such_arg" in md and "not measured" in md
    assert "| OpenVINO INT8 vs fake-quant |" in md and "OpenVINO, running the same INT8 exports" in md
    saved = json.loads((out / "zoo.json").read_text())
    assert [r["model"] for r in saved["rows"]] == ["broken", "slow", "tiny"]
    assert (out / "zoo.png").stat().st_size > 10000

    # resume: finished steps (ok or failed) are skipped, nothing is re-run
    state1 = json.loads((work / "state.json").read_text())
    log_mtime = os.path.getmtime(work / "tiny" / "evaluate.log")
    run_script("tools/zoo.py", common + ["--models", "tiny", "broken"])
    assert json.loads((work / "state.json").read_text()) == state1
    assert os.path.getmtime(work / "tiny" / "evaluate.log") == log_mtime

    # a second zoo run on the same work dir is refused while one holds it
    from segqat.zoo import lock_work_dir
    held = lock_work_dir(str(work))
    with pytest.raises(SystemExit):
        run_script("tools/zoo.py", common + ["--models", "tiny"])
    held.close()

    # a step over its time limit is killed and recorded as such; the zoo goes on
    rows = run_script("tools/zoo.py", common + ["--models", "slow", "--train_timeout", 1])
    slow = {r["model"]: r for r in rows}["slow"]
    assert slow["status"] == "✗" and slow["reason"].startswith("fp32_train timed out after 1 s")

    # an entry whose config changed after its build is not reported with the old results
    _entry(cfgs / "tiny.yml", data, "iters: 3\n")
    rows = run_script("tools/zoo.py", common + ["--phase", "report"])
    tiny = {r["model"]: r for r in rows}["tiny"]
    assert tiny["status"] == "…" and "changed since its last build" in tiny["reason"]
    assert "int8_convs" not in tiny


def test_error_reason_picks_the_exception_and_its_frame():
    from segqat.zoo import error_reason
    log = ("noise\nTraceback (most recent call last):\n"
           '  File "/x/site-packages/paddleseg/models/sfnet.py", line 222, in flow_warp\n'
           "    grid = grid + flow / norm\n"
           "TypeError: (InvalidType) Type promotion only support calculations\n")
    assert error_reason(log) == ("TypeError: (InvalidType) Type promotion only support calculations "
                                 "(at paddleseg/models/sfnet.py:222 in flow_warp)")
    assert error_reason("2026 [ERROR] ConfigError: Unknown argument(s) ['a']\n") == \
        "ConfigError: Unknown argument(s) ['a']"
    assert error_reason("all fine\n") is None
    dy2static = ("segqat.compat.ExportError: failed at layer model.head: ValueError: In transformed code:\n\n"
                 "    File \"isanet.py\", line 131, in forward\n"
                 "    ValueError: (InvalidArgument) The axis is expected to be in range of [0, 0), but got 0\n")
    assert error_reason(dy2static) == (
        "segqat.compat.ExportError: failed at layer model.head: ValueError: "
        "(InvalidArgument) The axis is expected to be in range of [0, 0), but got 0")


def test_row_marks():
    """✓ needs INT8 convolutions, >= 99% agreement and a model clearly better than the majority class."""
    from segqat.zoo import entry_row
    ev = {"int8_convs": 50, "all_convs": 52, "agreement_int8_vs_fake_quant": 0.995, "fp32_mIoU": 0.6,
          "majority_class_mIoU": 0.214, "num_classes": 4, "predicted_classes_fp32": 4,
          "predicted_classes_int8": 4}
    ok = {"status": "ok", "seconds": 1.0}

    def row(**changes):
        steps = {s: dict(ok) for s in ("fp32_train", "qat_train", "fp32_export", "int8_export")}
        steps["evaluate"] = dict(ok, result=dict(ev, **changes))
        return entry_row("m", {"fp32_iters": 20, "qat_iters": 5, "batch_size": 2, "steps": steps})

    assert row()["status"] == "✓" and row()["reason"] is None and row()["build_seconds"] == 5.0
    low = row(agreement_int8_vs_fake_quant=0.985)
    assert low["status"] == "✗" and "98.50% of pixels (< 99%)" in low["reason"]
    margins = dict(agreement_int8_vs_fake_quant=0.985, clear_margin_share=0.9, near_tie=0.1)
    ties = row(**margins, agreement_clear_margin=0.995, disagreement_at_near_ties=0.7)
    assert ties["status"] == "✗" and "70% of the differing pixels are near ties" in ties["reason"]
    assert "margins are too small, train longer" in ties["reason"]
    real = row(**margins, agreement_clear_margin=0.97, disagreement_at_near_ties=0.2)
    assert "even on the 90% of pixels with a clear margin (>= 0.1) it agrees on only 97.00%" in real["reason"]
    assert "not explained by the export: no other runtime measured" in real["reason"]
    # the same export on OpenVINO: agreeing there puts the difference in Paddle Inference's passes
    ov = {"fp32_mIoU": 0.6, "int8_mIoU": 0.6, "int8_kernels": 50, "agreement_int8_vs_fake_quant": 0.995,
          "agreement_clear_margin": 0.9999, "clear_margin_share": 0.9, "disagreement_at_near_ties": 1.0}
    onednn = row(**margins, agreement_clear_margin=0.97, disagreement_at_near_ties=0.2, openvino=ov)
    assert onednn["status"] == "✗" and "OpenVINO runs it at 99.99% on those pixels" in onednn["reason"]
    assert "by Paddle Inference's oneDNN INT8 passes" in onednn["reason"]
    assert onednn["reason"].endswith("OpenVINO runs the same export at 99.50% (99.99% on clear margins): "
                                     "deploy with --runtime openvino")
    ov_ties = row(**margins, agreement_clear_margin=0.97, disagreement_at_near_ties=0.2,
                  openvino=dict(ov, agreement_int8_vs_fake_quant=0.986))
    assert ov_ties["reason"].endswith("on OpenVINO the near ties leave 98.60% in all: train longer (--fp32_iters)")
    ties_ov = row(**margins, agreement_clear_margin=0.995, disagreement_at_near_ties=0.7, openvino=ov)
    assert ties_ov["reason"].endswith("agrees on 99.50%: OpenVINO runs the same export at 99.50% (99.99% on "
                                      "clear margins): deploy with --runtime openvino")
    assert onednn["openvino_status"] == "✓" and onednn["openvino_reason"] == ""
    both = row(**margins, agreement_clear_margin=0.97, disagreement_at_near_ties=0.2,
               openvino=dict(ov, agreement_int8_vs_fake_quant=0.96, agreement_clear_margin=0.98))
    assert "not explained by the export: OpenVINO agrees on 98.00% of them too" in both["reason"]
    assert both["openvino_status"] == "✗" and both["openvino_reason"] == "clear-margin pixels differ"
    assert row(openvino=dict(ov, agreement_int8_vs_fake_quant=0.985))["openvino_reason"] == "near ties"
    assert row(openvino=dict(ov, int8_kernels=0))["openvino_status"] == "✗"
    broken = row(openvino={"error": "RuntimeError: cannot convert op X"})
    assert broken["status"] == "✓" and broken["openvino_status"] == "✗"
    assert broken["openvino_reason"] == "RuntimeError: cannot convert op X"
    assert row(fp32_mIoU=0.30, openvino=ov)["openvino_status"] == "✗"  # same training rule
    assert "openvino_status" not in row()  # evaluated before OpenVINO was added
    fp32_convs = row(**margins, agreement_clear_margin=0.97, disagreement_at_near_ties=0.2,
                     quantized_ops={"conv2d": 45, "depthwise_conv2d": 8, "matmul_v2": 2})
    assert "3 of the 53 convolutions QAT quantized run in FP32" in fp32_convs["reason"]
    flat = row(fp32_mIoU=0.30, predicted_classes_fp32=2, agreement_int8_vs_fake_quant=1.0)
    assert flat["status"] == "✗"
    assert "after 20 iterations FP32 mIoU 30.0 is not 10 points above" in flat["reason"]
    assert row(fp32_mIoU=0.32)["status"] == "✓"
    assert "no convolution runs INT8" in row(int8_convs=0)["reason"]
    failed = entry_row("m", {"steps": {"fp32_train": dict(ok), "qat_train": {
        "status": "failed", "seconds": 2.0, "reason": "qat_train: TypeError: boom"}}})
    assert failed["status"] == "✗" and failed["failed_step"] == "qat_train"
    assert failed["reason"] == "qat_train: TypeError: boom"


def test_table_keeps_rows_built_elsewhere_while_their_config_is_unchanged(tmp_path):
    """A zoo run in a new work dir (a fresh clone, another machine) rewrites the table without
    losing the rows it did not rebuild, unless their config changed since."""
    import threading
    from types import SimpleNamespace
    from segqat.zoo import file_hash, write_outputs
    cfgs, out = tmp_path / "configs", tmp_path / "out"
    cfgs.mkdir()
    out.mkdir()
    for n in ("kept", "edited", "rebuilt"):
        (cfgs / f"{n}.yml").write_text(f"# {n}\n")
    entries = {n: str(cfgs / f"{n}.yml") for n in ("edited", "kept", "rebuilt")}
    old_run = {"event": "end", "time": "2026-01-01T00:00:00", "command": "python tools/zoo.py --old",
               "seconds": 5}
    old_row = {"status": "✓", "reason": None, "model_type": "X", "build_seconds": 9.0, "int8_convs": 5,
               "all_convs": 5, "agreement_int8_vs_fake_quant": 0.995}
    (out / "zoo.json").write_text(json.dumps({"meta": {"runs": [old_run]}, "rows": [
        dict(old_row, model="kept", config_hash=file_hash(entries["kept"])),
        dict(old_row, model="edited", config_hash="0123456789ab"),
        dict(old_row, model="rebuilt", config_hash=file_hash(entries["rebuilt"]))]}))
    failed = {"status": "failed", "seconds": 1.0, "reason": "fp32_train: RuntimeError: boom"}
    state = SimpleNamespace(lock=threading.Lock(), data={"rebuilt": {
        "config_hash": file_hash(entries["rebuilt"]), "steps": {"fp32_train": failed}}})
    args = SimpleNamespace(out_dir=str(out), work_dir=str(tmp_path / "work"), argv=["--phase", "report"])
    rows = {r["model"]: r for r in write_outputs(state, entries, args)}
    assert rows["kept"]["status"] == "✓" and rows["kept"]["carried_over"] is True
    assert rows["kept"]["agreement_int8_vs_fake_quant"] == 0.995
    assert rows["edited"]["status"] == "…" and "carried_over" not in rows["edited"]  # its config changed
    assert rows["rebuilt"]["status"] == "✗" and rows["rebuilt"]["reason"] == failed["reason"]
    saved = json.loads((out / "zoo.json").read_text())
    assert saved["meta"]["carried_over"] == ["kept"] and saved["meta"]["runs"] == [old_run]
    assert "Rows of kept are carried over" in (out / "zoo.md").read_text()
    # a carried row is carried again by the next report, and dropped once its config changes
    (cfgs / "kept.yml").write_text("# kept, edited\n")
    rows = {r["model"]: r for r in write_outputs(state, entries, args)}
    assert rows["kept"]["status"] == "…" and "carried_over" not in rows["kept"]
