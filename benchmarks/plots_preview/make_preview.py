"""Re-draw class_iou.png, confusion.png and the per-class table from kept benchmark results.

    python benchmarks/plots_preview/make_preview.py

Reads benchmarks/camvid_bisenetv2/results.json (11 classes) and
benchmarks/isbi_bisenetv2/results.json (2 classes), written before results
carried class names, adds the names of the data sets' labels.txt and writes
<run>_class_iou.png, <run>_confusion.png, <run>_confusion_diff.png and <run>_classes.md here. No model is run.
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))

from segqat import datagen, report, report_plots  # noqa: E402

RUNS = {"camvid_bisenetv2": datagen.CAMVID_CLASSES, "isbi_bisenetv2": datagen.ISBI_CLASSES}


def main():
    for run, names in RUNS.items():
        with open(os.path.join(HERE, "..", run, "results.json")) as f:
            results = json.load(f)
        results.setdefault("class_names", list(names))
        report_plots.plot_class_iou(results, os.path.join(HERE, f"{run}_class_iou.png"))
        report_plots.plot_confusion(results, os.path.join(HERE, f"{run}_confusion.png"))
        report_plots.plot_confusion_diff(results, os.path.join(HERE, f"{run}_confusion_diff.png"))
        with open(os.path.join(HERE, f"{run}_classes.md"), "w") as f:
            f.write("\n".join(report.class_table(results)) + "\n")
        print(f"{run}: written to {HERE}")


if __name__ == "__main__":
    main()
