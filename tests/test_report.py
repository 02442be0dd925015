"""deploy/python/benchmark.py on tiny synthetic exports."""
import json
import logging
import os

import numpy as np
import pytest

from conftest import run_script
from segqat import deploy, report, report_plots
from segqat.metrics import compute_metrics


@pytest.mark.core
def test_benchmark_outputs(syn_cfg, synth, fp32_run, qat_run, exports, tmp_path, caplog):
    out = tmp_path / "bench"
    val_list = os.path.relpath(synth / "val.txt")  # a relative path, as a user types it
    res = run_script("deploy/python/benchmark.py", [
        "--config", syn_cfg, "--fp32", exports / "fp32", "--int8", exports / "int8",
        "--qat_model_path", qat_run / "best_model" / "model.pdparams", "--save_dir", out,
        "--repeats", 3, "--warmup", 1, "--cpu_threads", 2,
        "--opts", f"val_dataset.val_path={val_list}", "test_config.aug_eval=False"])
    for f in ("results.json", "results.md", "latency.png", "class_iou.png", "confusion.png",
              "confusion_diff.png", "samples.png"):
        assert (out / f).stat().st_size > 0, f
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["models"]) == {"FP32", "INT8"} and saved["num_images"] == 12
    fp32, int8 = saved["models"]["FP32"], saved["models"]["INT8"]
    assert fp32["agreement_with_fp32"] == 1.0 and 0.9 < int8["agreement_with_fp32"] <= 1.0
    assert int8["agreement_with_fake_quant"] >= 0.99
    # where the differing pixels are: near ties + clear margins account for all of them
    share, clear = int8["clear_margin_share"], int8["agreement_with_fake_quant_clear_margin"]
    assert 0.5 < share <= 1 and clear >= int8["agreement_with_fake_quant"]
    ties = int8["fake_quant_disagreement_at_near_ties"] or 0
    differ = 1 - int8["agreement_with_fake_quant"]
    assert differ * (1 - ties) == pytest.approx(share * (1 - clear), abs=1e-9)
    assert "with a clear margin" in (out / "results.md").read_text()
    assert int8["params_mb"] <= 0.3 * fp32["params_mb"]
    assert fp32["num_params"] > 1e6 and fp32["macs"] > 1e6
    assert len(fp32["latency"]) and fp32["ratio_to_fp32"] == 1.0
    # the fake-quant mIoU is exactly what qat_val reports; the deployed FP32 model is within
    # oneDNN-vs-dygraph rounding of what tools/val.py reports for the same weights
    qv = run_script("slim/quant/qat_val.py", ["--config", syn_cfg, "--model_path",
                                              qat_run / "best_model" / "model.pdparams"])
    assert saved["fake_quant"]["mIoU"] == pytest.approx(qv["mIoU"], abs=1e-12)
    caplog.set_level(logging.INFO)
    caplog.clear()
    v = run_script("tools/val.py", ["--config", syn_cfg, "--model_path", fp32_run / "best_model" / "model.pdparams"])
    # per-class values on the console, named from the data set's labels.txt
    assert ("[EVAL] Class IoU: " + ", ".join(f"{n} {x:.4f}" for n, x in zip(
        ["background", "circle", "square", "triangle"], v["class_IoU"]))) in caplog.text
    assert fp32["mIoU"] == pytest.approx(v["mIoU"], abs=0.005)
    md = (out / "results.md").read_text()
    assert md.startswith("| Model | Runtime | Dtype | mIoU |") and "| INT8 | paddle | INT8 |" in md
    # what was evaluated: the list as given, its config section and every override
    assert saved["data"]["list"] == val_list and saved["data"]["split"] == "val_dataset"
    assert saved["data"]["opts"] == [f"val_dataset.val_path={val_list}", "test_config.aug_eval=False"]
    assert f"Evaluated: all 12 images listed in `{val_list}` (val_dataset.val_path)" in md
    assert (f"Overrides: `--opts val_dataset.val_path={val_list}` `--opts test_config.aug_eval=False`"
            in md)
    assert f"Per class (%): IoU and Dice of each model; Pixels is the class's share of the labelled " \
           f"pixels of the 12 images of {val_list}." in md
    # samples.png: the images where INT8 and FP32 differ most (recomputed here), then a spread
    differ = []
    fp, i8 = (deploy.create_predictor(str(exports / d)) for d in ("fp32", "int8"))
    try:
        for line in (synth / "val.txt").read_text().splitlines():
            img = __import__("cv2").imread(str(synth / line.split()[0]))
            differ.append(float(np.mean(fp.predict([img])[0] != i8.predict([img])[0])))
    finally:
        fp.close()
        i8.close()
    chosen = saved["samples"]
    assert len(chosen) == 6
    most = [sm["index"] for sm in chosen if sm["chosen_as"] == "most different"]
    assert most == [i for i, _ in report.choose_samples(differ, 6) if differ[i] > 0][:len(most)]
    assert most and all(differ[i] >= max(differ[j] for j in range(12) if j not in most) for i in most)
    for sm in chosen:
        assert sm["disagreement_with_fp32"]["INT8"] == pytest.approx(differ[sm["index"]], abs=1e-9)
    assert "samples.png: " in md and "where INT8 and FP32 differ most" in md
    # the confusion difference is INT8 - FP32 of the row-normalised matrices
    (ref, d), = report.confusion_difference(saved).values()
    assert ref == "FP32" and np.allclose(d, report.normalised_confusion(int8["confusion_matrix"])
                                         - report.normalised_confusion(fp32["confusion_matrix"]),
                                         equal_nan=True)
    assert "INT8 - FP32, largest confusion changes" in md
    assert res["models"]["INT8"]["mIoU"] == int8["mIoU"]
    # per class: the names of the data set's labels.txt, IoU and Dice of every model
    names = ["background", "circle", "square", "triangle"]
    assert saved["class_names"] == names
    for r in (fp32, int8, saved["fake_quant"]):
        assert len(r["class_Dice"]) == 4 and r["class_Dice"] == pytest.approx(
            compute_metrics(r["confusion_matrix"])["class_Dice"])
    assert "| Class | Pixels | FP32 IoU | FP32 Dice | INT8 IoU | INT8 Dice | fake-quant IoU | fake-quant Dice |" in md
    rows = {ln.split("|")[1].strip(): ln.split("|")[2:-1] for ln in md.splitlines()
            if ln.startswith("| ") and ln.split("|")[1].strip() in names}
    assert list(rows) == names
    for c, cells in enumerate(rows.values()):
        vals = [float(v) for v in cells]  # pixel share, then IoU and Dice of FP32, INT8, fake-quant
        assert vals[1:3] == pytest.approx([100 * fp32["class_IoU"][c], 100 * fp32["class_Dice"][c]], abs=0.006)
        assert vals[3:5] == pytest.approx([100 * int8["class_IoU"][c], 100 * int8["class_Dice"][c]], abs=0.006)


def _fake_results(names, models=("FP32", "INT8 QAT", "INT8 PTQ"), seed=0):
    rng = np.random.RandomState(seed)
    nc = len(names)
    res = {"num_images": 5, "class_names": list(names), "models": {}}
    for k, name in enumerate(models):
        cm = np.diag(rng.randint(100, 10000, nc)) + (rng.rand(nc, nc) * 50 * (k + 1)).astype(np.int64)
        res["models"][name] = {**compute_metrics(cm), "confusion_matrix": cm.tolist()}
    return res


def test_class_dice_hand_case():
    # rows: label, columns: prediction
    cm = np.array([[3, 1, 0],
                   [0, 2, 2],
                   [1, 0, 1]])
    m = compute_metrics(cm)
    # Dice = 2 tp / (labelled + predicted): class 0: 6 / (4 + 4); class 1: 4 / (4 + 3); class 2: 2 / (2 + 3)
    assert m["class_Dice"] == pytest.approx([6 / 8, 4 / 7, 2 / 5])
    assert m["Dice"] == pytest.approx((6 / 8 + 4 / 7 + 2 / 5) / 3)
    # results written before class_Dice was stored: the table derives it from the confusion matrix
    res = {"num_images": 1, "models": {"FP32": {**m, "confusion_matrix": cm.tolist()}}}
    del res["models"]["FP32"]["class_Dice"]
    lines = report.class_table(res)
    assert "| 0 | 40.00 | 60.00 | 75.00 |" in lines  # no class_names: the indices
    assert "| 1 | 40.00 | 40.00 | 57.14 |" in lines  # 4 of 10 pixels, IoU 2 / 5


def test_plots_and_table_many_classes(tmp_path):
    camvid = ["sky", "building", "pole", "road", "sidewalk", "tree", "sign", "fence", "car",
              "pedestrian", "bicyclist"]
    res = _fake_results(camvid)
    res["models"]["INT8 PTQ"]["confusion_matrix"][2] = [0] * 11  # a class with no labelled pixels
    report_plots.plot_class_iou(res, tmp_path / "class_iou.png")
    report_plots.plot_confusion(res, tmp_path / "confusion.png")
    assert report_plots.plot_confusion_diff(res, tmp_path / "confusion_diff.png")
    for f in ("class_iou.png", "confusion.png", "confusion_diff.png"):
        assert (tmp_path / f).stat().st_size > 10_000, f
    lines = report.class_table(res)
    assert lines[2].startswith("| Class | Pixels | FP32 IoU | FP32 Dice | INT8 QAT IoU |")
    body = [ln for ln in lines if ln.startswith("| ") and not ln.startswith("| Class")]
    assert [ln.split("|")[1].strip() for ln in body] == camvid + ["**mean**"]
    assert all(len(ln.split("|")) == 2 + 2 + 2 * 3 for ln in body)  # edges, class, pixels, 3 x (IoU, Dice)


def test_benchmark_warns(tmp_path):
    res = {"models": {"FP32": {"precision": "fp32", "mIoU": 0.6, "latency": {"median_ms": 10.0},
                               "ratio_to_fp32": 1.0},
                      "INT8": {"precision": "int8", "mIoU": 0.58, "latency": {"median_ms": 11.0},
                               "ratio_to_fp32": 1.1, "agreement_with_fake_quant": 0.97},
                      "PTQ": {"precision": "int8", "mIoU": 0.55, "latency": {"median_ms": 5.0},
                              "ratio_to_fp32": 0.5}},
           "fake_quant": {"mIoU": 0.60}}
    ref_of = dict.fromkeys(res["models"], "FP32")
    w = report.benchmark_warnings(res, ref_of)
    assert any("not faster" in x for x in w) and any("differs from the fake-quant" in x for x in w)
    assert not any(x.startswith("PTQ") for x in w)  # the QAT weights are not the PTQ model's
    res["models"]["INT8"].update(mIoU=0.598, ratio_to_fp32=0.5)
    assert report.benchmark_warnings(res, ref_of) == []


@pytest.mark.runtimes
def test_benchmark_across_runtimes(syn_cfg, qat_run, exports, tmp_path, caplog):
    """Every model on every runtime: one row each, ratios and agreement within the runtime."""
    caplog.set_level(logging.INFO)
    out = tmp_path / "bench_rt"
    res = run_script("deploy/python/benchmark.py", [
        "--config", syn_cfg, "--fp32", exports / "fp32", "--int8", exports / "int8",
        "--qat_model_path", qat_run / "best_model" / "model.pdparams", "--save_dir", out,
        "--runtimes", "paddle", "openvino", "--num_images", 4, "--repeats", 2, "--warmup", 1,
        "--cpu_threads", 1])
    # the header states the threads it was given
    assert "cpu threads 1 |" in caplog.text and "paddle's default" not in caplog.text
    rows = res["models"]
    assert list(rows) == ["FP32 (paddle)", "INT8 (paddle)", "FP32 (openvino)", "INT8 (openvino)"]
    for rt in ("paddle", "openvino"):
        fp32, int8 = rows[f"FP32 ({rt})"], rows[f"INT8 ({rt})"]
        assert fp32["runtime"] == int8["runtime"] == rt and fp32["ratio_to_fp32"] == 1.0
        assert int8["ratio_to_fp32"] == pytest.approx(
            int8["latency"]["median_ms"] / fp32["latency"]["median_ms"])
        assert fp32["int8_kernels"] == 0 and int8["int8_kernels"] >= 40
        assert int8["agreement_with_fake_quant"] >= 0.99
    md = (out / "results.md").read_text()
    assert "| INT8 (openvino) | openvino | INT8 |" in md
    assert (out / "latency.png").stat().st_size > 0
    with pytest.raises(SystemExit):
        run_script("deploy/python/benchmark.py", [
            "--config", syn_cfg, "--fp32", exports / "fp32", "--int8", exports / "int8",
            "--save_dir", tmp_path / "x", "--runtimes", "paddle", "tensorrt"])
    assert not (tmp_path / "x").exists()


def test_latency_groups_are_timed_apart():
    """Predictors of one group (runtime) are interleaved with each other; groups run one after
    another, so one runtime's spinning threads never precede another runtime's run."""
    from segqat import bench
    order = []

    class P:
        def __init__(self, name):
            self.name = name

        def run(self, batch):
            order.append(self.name)

    preds = {n: P(n) for n in ("a fp32", "a int8", "b fp32", "b int8")}
    times = bench.interleaved_latency(preds, None, warmup=1, repeats=2, group=lambda k: k.split()[0], pause=0)
    assert order == ["a fp32", "a int8", "a fp32", "a int8", "a fp32", "a int8",
                     "b fp32", "b int8", "b fp32", "b int8", "b fp32", "b int8"]
    assert {k: len(v) for k, v in times.items()} == dict.fromkeys(preds, 2)
    order.clear()
    bench.interleaved_latency(preds, None, warmup=0, repeats=1)  # no groups: all interleaved
    assert order == list(preds)


def test_machine_record_names_the_int8_instructions():
    from segqat import bench
    m = bench.machine()
    assert m["cores"] >= 1 and isinstance(m["cpu"], str)
    assert set(m["isa"]) <= set(bench.ISA_FLAGS)
    assert m["vnni"] == bool({"avx512_vnni", "avx_vnni"} & set(m["isa"]))
    assert bench.isa_label(m) in ("VNNI", "AVX2, no VNNI", "no VNNI")
    assert bench.isa_label({"isa": ["avx2"], "vnni": False}) == "AVX2, no VNNI"
    assert bench.isa_label({"cpu": "x"}) == ""  # recorded before the flags were


def test_benchmark_checks_what_each_export_is(syn_cfg, exports, tmp_path, caplog):
    """--fp32 <INT8 export> / --int8 <FP32 export> would fill the report's FP32 row with INT8
    results: refused in one line naming the flag, the folder and what it holds."""
    import logging
    caplog.set_level(logging.ERROR)
    for fp32, int8, flag, holds in ((exports / "int8", exports / "fp32", "--fp32", "INT8 (quantized)"),
                                    (exports / "fp32", exports / "fp32", "--int8", "FP32 (not quantized)")):
        caplog.clear()
        with pytest.raises(SystemExit) as e:
            run_script("deploy/python/benchmark.py", ["--config", syn_cfg, "--fp32", fp32, "--int8", int8,
                                                      "--save_dir", tmp_path / "b"])
        assert e.value.code == 1
        bad = fp32 if flag == "--fp32" else int8
        assert f"{flag} {bad} holds an {holds} model" in caplog.text
        assert "Traceback" not in caplog.text and not (tmp_path / "b").exists()


@pytest.mark.unit
def test_choose_samples():
    d = [0.0, 0.5, 0.1, 0.0, 0.3, 0.0, 0.0, 0.2, 0.0, 0.0]
    got = report.choose_samples(d, 4)
    assert got[:2] == [(1, "most different"), (4, "most different")]
    spread = [i for i, why in got if why == "spread"]
    assert len(spread) == 2 and not {1, 4} & set(spread) and spread[0] < 5 <= spread[1]
    # no image differs: all spread; fewer images than asked: all of them
    assert [w for _, w in report.choose_samples([0.0] * 8, 4)] == ["spread"] * 4
    assert sorted(i for i, _ in report.choose_samples([0.1, 0.0, 0.2], 6)) == [0, 1, 2]


def _grid_results(runtimes, models, names=("road", "car", "sky")):
    rng = np.random.RandomState(0)
    res = {"num_images": 3, "class_names": list(names), "input_shape": [1, 3, 64, 64],
           "cpu_threads": 2, "runtimes": list(runtimes), "models": {},
           "data": {"list": "data/x/test.txt"}}
    for rt in runtimes:
        for k, m in enumerate(models):
            cm = np.diag(rng.randint(100, 1000, len(names))) + rng.randint(0, 30 * (k + 1), (len(names),) * 2)
            row = m if len(runtimes) == 1 else f"{m} ({rt})"
            res["models"][row] = {**compute_metrics(cm), "confusion_matrix": cm.tolist(), "model": m,
                                  "runtime": rt, "latency": {"median_ms": 10.0 - k, "p90_ms": 11.0 - k},
                                  "ratio_to_fp32": (10.0 - k) / 10}
    return res


@pytest.mark.unit
@pytest.mark.parametrize("nr", [1, 2, 3])
@pytest.mark.parametrize("nm", [1, 2, 3])
def test_plots_for_runtimes_and_models(nr, nm, tmp_path):
    """Every picture for 1-3 runtimes x 1-3 models; each INT8 row's difference panel is against
    the FP32 row of its own runtime."""
    res = _grid_results(["paddle", "openvino", "onnxruntime"][:nr], ["FP32", "QAT", "PTQ"][:nm])
    if (nr, nm) in ((1, 1), (3, 2)):  # drawing takes seconds: two cases (all nine were looked at)
        written = report_plots.plot_all(res, [], tmp_path)
        assert written[:3] == ["latency.png", "class_iou.png", "confusion.png"]
        assert ("confusion_diff.png" in written) == (nm > 1)
    diffs = report.confusion_difference(res)
    assert len(diffs) == nr * (nm - 1)
    for row, (ref, d) in diffs.items():
        r, f = res["models"][row], res["models"][ref]
        assert f["model"] == "FP32" and f["runtime"] == r["runtime"]
        assert np.allclose(d, report.normalised_confusion(r["confusion_matrix"])
                           - report.normalised_confusion(f["confusion_matrix"]))
    assert report.class_table(res)[0].endswith("labelled pixels of the 3 images of data/x/test.txt.")


@pytest.mark.unit
def test_confusion_grid_has_no_gap():
    """4 models on one runtime: a 2 x 2 grid (3 + 1 left a large empty area)."""
    res = _grid_results(["paddle"], ["FP32", "QAT", "PTQ", "QAT all"])
    grid = report_plots.confusion_grid(res)
    assert [len(r) for r in grid] == [2, 2] and None not in sum(grid, [])
    res = _grid_results(["paddle", "openvino"], ["FP32"])
    assert report_plots.confusion_grid(res) == [["FP32 (paddle)", "FP32 (openvino)"]]


@pytest.mark.unit
def test_sample_pictures(tmp_path):
    """The difference map lights exactly the differing pixels (widened for display only);
    thin foreground structures stay visible on the dark class-0 colour."""
    img = np.full((40, 60, 3), 100, np.uint8)
    differ = np.zeros((40, 60), bool)
    differ[10, 20] = True
    m = report_plots.difference_map(img, differ)
    assert (m[10, 20] == 255).all() and (m[~differ] < 100).all()
    m3 = report_plots.difference_map(img, differ, k=3)
    assert (m3[9:12, 19:22] == 255).all() and (m3[20, 40] < 100).all()
    lab = np.zeros((40, 60), np.uint8)
    lab[:, 30] = 1  # a 1-pixel vessel
    lab[0, 0] = 255
    rgb = report_plots.colour_labels(lab, 2, 255, k=3)
    assert rgb[5, 30].max() > 200 and rgb[5, 29].max() > 200  # bright, widened
    assert rgb[5, 10].max() < 60 and tuple(rgb[0, 0]) == (120, 120, 120)  # dark background, grey ignore
    assert report_plots.display_width((584, 565)) == 3 and report_plots.display_width((64, 64)) == 1
    res = _grid_results(["paddle"], ["FP32", "INT8"], names=("background", "vessel", "x"))
    pred = lab.copy()
    pred[10, 20] = 1
    samples = [{"index": 0, "image": img, "label": lab, "chosen_as": "most different", "name": "a.png",
                "predictions": {"FP32": lab, "INT8": pred}}]
    report_plots.plot_samples(res, samples, "paddle", tmp_path / "samples.png")
    assert (tmp_path / "samples.png").stat().st_size > 5000
