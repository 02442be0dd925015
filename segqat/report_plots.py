"""The benchmark's pictures, readable at any size for 1-3 runtimes x 1-3 models.

    report_plots.plot_all(results, samples, save_dir)

latency.png (bars grouped by runtime), class_iou.png (horizontal bars, one
panel per runtime), confusion.png (row-normalised, a grid of runtimes x
models), confusion_diff.png (INT8 - FP32 of the same runtime, in percentage
points) and samples.png (per runtime: image, label, FP32, each INT8 model and
where it differs from FP32; further runtimes in samples_<runtime>.png).
Each figure's size follows what it holds (classes, models, runtimes), so text
keeps its size instead of being squeezed. ``results`` is benchmark's
results dict (``report.run_benchmark``); plotting reads nothing else.
"""
import os

import numpy as np

_CHAR_IN = 0.075  # inches per character of a 9-point label (a generous average)
# Display colours of class maps: class 0 dark, the other classes bright, so thin
# foreground structures stand out on dark thumbnails; ignored pixels grey; pixels
# where INT8 differs from FP32 white (no class is white).
_CLASS_COLOURS = ["#262626", "#ff5a5a", "#4fdc4f", "#5aa0ff", "#ffd400", "#ff7cf0", "#4fe3e3",
                  "#ffa040", "#b48cff", "#c8ff5a", "#ff9e9e", "#9effc0", "#a8d0ff", "#fff08c",
                  "#d68cff", "#00c8a0", "#ff6f9e", "#e0b070", "#8cb4ff", "#f0ffb0"]
_IGNORE_RGB = (120, 120, 120)
_DIFF_RGB = (255, 255, 255)
THUMB_PX = 200  # longest side of a sample thumbnail, in pixels of the saved figure
_DPI = 100


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _colours(n):
    """One colour per model, the same in every plot: FP32 (first) grey, then tab10's."""
    tab = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22"]
    return ["#7f7f7f"] + [tab[i % len(tab)] for i in range(n - 1)]


def layout(results):
    """(runtimes, models, {(runtime, model): row name}) of a results dict, in row order."""
    rows = list(results["models"].items())
    runtimes = list(dict.fromkeys(r.get("runtime", "paddle") for _, r in rows))
    models = list(dict.fromkeys(r.get("model", n) for n, r in rows))
    cell = {(r.get("runtime", "paddle"), r.get("model", n)): n for n, r in rows}
    return runtimes, models, cell


def _save(fig, path):
    fig.savefig(path, dpi=_DPI)
    _plt().close(fig)


def _model_legend(fig, models, colours):
    """One legend entry per model, below the panels, in as many columns as fit."""
    from matplotlib.patches import Patch
    handles = [Patch(color=c, label=m) for m, c in zip(models, colours)]
    width = fig.get_size_inches()[0]
    ncol = len(models)
    while ncol > 1 and sum(len(m) * _CHAR_IN + 0.6 for m in models[:ncol]) > width:
        ncol -= 1
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, frameon=False, fontsize=9)


def plot_all(results, samples, save_dir):
    """Every picture of a benchmark into ``save_dir``; returns the file names written."""
    written = []
    for name, fn in (("latency.png", plot_latency), ("class_iou.png", plot_class_iou),
                     ("confusion.png", plot_confusion)):
        fn(results, os.path.join(save_dir, name))
        written.append(name)
    if plot_confusion_diff(results, os.path.join(save_dir, "confusion_diff.png")):
        written.append("confusion_diff.png")
    if samples:
        runtimes, _, _ = layout(results)
        for k, rt in enumerate(runtimes):
            name = "samples.png" if k == 0 else f"samples_{rt}.png"
            plot_samples(results, samples, rt, os.path.join(save_dir, name))
            written.append(name)
    return written


# ------------------------------------------------------------------ latency

def plot_latency(results, path):
    """Median ms/image (bar to p90) of every model, grouped by runtime, with the time
    and the ratio to the FP32 model of the same runtime printed above each bar."""
    plt = _plt()
    runtimes, models, cell = layout(results)
    colours = _colours(len(models))
    nm = len(models)
    group_in = 0.55 * nm + 0.45  # room for nm printed values side by side
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 + group_in * len(runtimes)), 4.0),
                           layout="constrained")
    width = 0.8 / nm
    top = max(r["latency"]["p90_ms"] for r in results["models"].values())
    for (rt, model), name in cell.items():
        r = results["models"][name]
        g, k = runtimes.index(rt), models.index(model)
        x = g + (k - (nm - 1) / 2) * width
        med, p90 = r["latency"]["median_ms"], r["latency"]["p90_ms"]
        ax.bar(x, med, width * 0.92, color=colours[k])
        ax.errorbar([x], [med], yerr=[[0], [p90 - med]], fmt="none", ecolor="k", capsize=3)
        ax.text(x, p90 + top * 0.02, f"{med:.1f}\n{r['ratio_to_fp32']:.2f}x", ha="center",
                va="bottom", fontsize=8)
    ax.set_xticks(range(len(runtimes)))
    ax.set_xticklabels(runtimes, fontsize=10)
    ax.set_xlim(-0.5, len(runtimes) - 0.5)
    ax.set_ylim(0, top * 1.3)
    ax.set_ylabel("ms / image (median, bar to p90)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    shape = "x".join(str(v) for v in results["input_shape"][2:])
    fig.suptitle(f"Latency, input {shape}, {results['cpu_threads']} threads\n"
                 "printed: median ms and ratio to FP32 on the same runtime", fontsize=10)
    _model_legend(fig, models, colours)
    _save(fig, path)


# ------------------------------------------------------------------ class IoU

def plot_class_iou(results, path):
    """IoU (%) of every class and the mean as horizontal bars, one bar per model, one
    panel per runtime (class names read across, values printed at the bar ends)."""
    from .report import class_names, evaluated_on
    plt = _plt()
    runtimes, models, cell = layout(results)
    labels = class_names(results) + ["mean (mIoU)"]
    nm, ng, nr = len(models), len(labels), len(runtimes)
    bar_in = 0.17
    group_in = nm * bar_in + 0.22
    label_in = _CHAR_IN * max(len(s) for s in labels) + 0.3
    panel_in = 3.6
    fig, axes = plt.subplots(1, nr, squeeze=False, sharey=True, layout="constrained",
                             figsize=(label_in + panel_in * nr + 0.3, group_in * ng + 1.5))
    colours = _colours(nm)
    h = bar_in / group_in  # bar height in class units
    for ax, rt in zip(axes[0], runtimes):
        for k, model in enumerate(models):
            name = cell.get((rt, model))
            if name is None:
                continue
            r = results["models"][name]
            vals = [100 * v for v in r["class_IoU"]] + [100 * r["mIoU"]]
            y = np.arange(ng) + (k - (nm - 1) / 2) * h
            ax.barh(y, vals, h * 0.9, color=colours[k])
            for yi, v in zip(y, vals):
                ax.text(v + 1, yi, f"{v:.1f}", va="center", ha="left", fontsize=7)
        ax.axhline(ng - 1.5, color="k", lw=0.8, ls=":")  # the mean is not a class
        ax.set_xlim(0, 114)
        ax.set_xticks(range(0, 101, 20))
        ax.set_xlabel("IoU (%)")
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)
        if nr > 1:
            ax.set_title(rt, fontsize=10)
    ax0 = axes[0, 0]
    ax0.set_yticks(np.arange(ng))
    ax0.set_yticklabels(labels, fontsize=9)
    ax0.set_ylim(ng - 0.5, -0.5)  # the first class on top
    fig.suptitle(f"Per-class IoU on {evaluated_on(results)}", fontsize=10)
    _model_legend(fig, models, colours)
    _save(fig, path)


# ------------------------------------------------------------------ confusion

def confusion_grid(results):
    """[(row name or None)] in a rows x cols grid: runtimes x models when there are several
    runtimes, else a near-square grid (4 models: 2 x 2)."""
    runtimes, models, cell = layout(results)
    if len(runtimes) > 1:
        return _rows_or_row([[cell.get((rt, m)) for m in models] for rt in runtimes])
    names = list(results["models"])
    ncols = int(np.ceil(np.sqrt(len(names)))) if len(names) > 3 else len(names)
    return [names[i:i + ncols] + [None] * (ncols - len(names[i:i + ncols]))
            for i in range(0, len(names), ncols)]


def _rows_or_row(grid):
    """A one-column grid (one model on several runtimes) as one row."""
    if len(grid[0]) == 1:
        return [[row[0] for row in grid]]
    return grid


def _matrix_figure(grid, names, cell_in, extra_w=1.4):
    plt = _plt()
    nrows, ncols = len(grid), len(grid[0])
    nc = len(names)
    side = max(2.2, cell_in * nc)
    label_in = _CHAR_IN * max(len(s) for s in names) + 0.5
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, layout="constrained",
                             figsize=(ncols * (side + 0.2) + label_in + extra_w,
                                      nrows * (side + 0.75 * label_in + 0.6) + 0.9))
    return fig, axes


def _matrix_axes(ax, names, cell_in, first_col):
    nc = len(names)
    rot = 45 if max(len(s) for s in names) * _CHAR_IN > 0.95 * cell_in else 0
    ax.set_xticks(range(nc))
    ax.set_yticks(range(nc))
    ax.set_xticklabels(names, rotation=rot, ha="right" if rot else "center",
                       rotation_mode="anchor", fontsize=9)
    ax.set_xlabel("predicted", fontsize=9)
    if first_col:  # the rows are the same classes in every panel
        ax.set_yticklabels(names, fontsize=9)
        ax.set_ylabel("label", fontsize=9)
    else:
        ax.set_yticklabels([])


def plot_confusion(results, path):
    """Row-normalised confusion matrix of each deployed model, the value in each cell."""
    from .report import class_names, evaluated_on, normalised_confusion
    names = class_names(results)
    nc = len(names)
    cell_in = 0.42 if nc > 6 else 0.8
    grid = confusion_grid(results)
    fig, axes = _matrix_figure(grid, names, cell_in)
    cmap = _plt().get_cmap("Blues").with_extremes(bad="#dddddd")  # grey: no labelled pixels
    font = float(np.clip(90 / nc, 7, 12))
    im, absent = None, False
    for (i, j), name in np.ndenumerate(np.array(grid, dtype=object)):
        ax = axes[i, j]
        if name is None:
            ax.set_axis_off()
            continue
        r = results["models"][name]
        norm = normalised_confusion(r["confusion_matrix"])
        absent |= bool(np.isnan(norm).any())
        im = ax.imshow(np.ma.masked_invalid(norm), vmin=0, vmax=1, cmap=cmap)
        for (y, x), v in np.ndenumerate(norm):
            if np.isnan(v) or v < 0.005:  # blank instead of a wall of 0.00
                continue
            lum = np.dot(cmap(v)[:3], [0.299, 0.587, 0.114])
            ax.text(x, y, f"{v:.2f}", ha="center", va="center", fontsize=font,
                    color="white" if lum < 0.5 else "black")
        _matrix_axes(ax, names, cell_in, j == 0)
        ax.set_title(f"{name}\nmIoU {100 * r['mIoU']:.2f}", fontsize=10)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8,
                 label="share of the label's pixels (row sums to 1)")
    fig.suptitle(f"Confusion matrices, rows normalised ({evaluated_on(results)}"
                 + ("; grey: a class without labelled pixels)" if absent else ")"), fontsize=10)
    _save(fig, path)


def plot_confusion_diff(results, path):
    """INT8 - FP32 of the row-normalised confusion matrices, per INT8 row against the FP32
    row of its runtime, in percentage points; red: INT8 puts more of the label's pixels
    there. Returns False (nothing written) when there is no INT8 row."""
    from .report import class_names, confusion_difference, evaluated_on
    diffs = confusion_difference(results)
    if not diffs:
        return False
    names = class_names(results)
    nc = len(names)
    runtimes, models, cell = layout(results)
    rows = [[cell.get((rt, m)) if cell.get((rt, m)) in diffs else None for m in models[1:]]
            for rt in runtimes]
    rows = _rows_or_row(rows)
    if len(runtimes) == 1 and len(rows[0]) > 3:
        flat = rows[0]
        ncols = int(np.ceil(np.sqrt(len(flat))))
        rows = [flat[i:i + ncols] + [None] * (ncols - len(flat[i:i + ncols]))
                for i in range(0, len(flat), ncols)]
    cell_in = 0.46 if nc > 6 else 0.8
    fig, axes = _matrix_figure(rows, names, cell_in)
    pp = {n: 100 * d for n, (_, d) in diffs.items()}
    vmax = max(0.1, max(float(np.nanmax(np.abs(d))) if np.isfinite(d).any() else 0 for d in pp.values()))
    cmap = _plt().get_cmap("RdBu_r").with_extremes(bad="#dddddd")
    font = float(np.clip(80 / nc, 6.5, 11))
    digits = 2 if vmax < 1 else 1
    im = None
    for (i, j), name in np.ndenumerate(np.array(rows, dtype=object)):
        ax = axes[i, j]
        if name is None:
            ax.set_axis_off()
            continue
        d = pp[name]
        im = ax.imshow(np.ma.masked_invalid(d), vmin=-vmax, vmax=vmax, cmap=cmap)
        for (y, x), v in np.ndenumerate(d):
            if np.isnan(v) or round(v, digits) == 0:
                continue
            c = cmap(0.5 + v / (2 * vmax))
            lum = np.dot(c[:3], [0.299, 0.587, 0.114])
            ax.text(x, y, f"{v:+.{digits}f}", ha="center", va="center", fontsize=font,
                    color="white" if lum < 0.5 else "black")
        _matrix_axes(ax, names, cell_in, j == 0)
        ax.set_title(f"{name} - {diffs[name][0]}", fontsize=10)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8,
                 label="INT8 - FP32 (percentage points of the label's pixels)")
    fig.suptitle(f"INT8 - FP32 confusion, rows normalised\n({evaluated_on(results)})\n"
                 "red: INT8 puts more of the label's pixels there; blue diagonal: fewer correct",
                 fontsize=10)
    _save(fig, path)
    return True


# ------------------------------------------------------------------ samples

def class_rgb(n):
    """(n, 3) uint8 display colours of classes 0..n-1 (class 0 dark, the others bright)."""
    out = []
    for c in range(n):
        h = _CLASS_COLOURS[c] if c < len(_CLASS_COLOURS) else _CLASS_COLOURS[1 + (c - 1) % (len(_CLASS_COLOURS) - 1)]
        out.append([int(h[i:i + 2], 16) for i in (1, 3, 5)])
    return np.array(out, np.uint8)


def display_width(shape, thumb_px=THUMB_PX):
    """Pixels a thin structure is widened by for display: about one source pixel per
    thumbnail pixel, so a 1-pixel line stays visible when the image is shrunk."""
    return max(1, int(round(max(shape[:2]) / thumb_px)))


def _widen(lab, k, background=0):
    """Class map with non-background classes dilated by ``k`` pixels over the background."""
    if k <= 1:
        return lab
    import cv2
    fg = np.where(lab == background, 0, lab).astype(np.uint8)
    grown = cv2.dilate(fg, np.ones((k, k), np.uint8))
    return np.where((lab == background) & (grown > 0), grown, lab)


def colour_labels(lab, num_classes, ignore_index=255, k=1):
    """An RGB picture of a class map: display colours, ignored pixels grey, widened by ``k``."""
    pal = class_rgb(num_classes)
    lab = np.asarray(lab).astype(np.int64)
    ignored = (lab == ignore_index) | (lab >= num_classes) | (lab < 0)
    lab = _widen(np.where(ignored, 0, lab), k)
    out = pal[lab]
    out[ignored] = _IGNORE_RGB
    return out


def difference_map(img_bgr, differ, k=1):
    """The image darkened to grey, with the pixels in ``differ`` white (widened by ``k``)."""
    import cv2
    grey = cv2.cvtColor(np.asarray(img_bgr, np.uint8), cv2.COLOR_BGR2GRAY)
    out = np.repeat((grey.astype(np.float32) * 0.35).astype(np.uint8)[..., None], 3, 2)
    mask = np.asarray(differ, np.uint8)
    if k > 1:
        mask = cv2.dilate(mask, np.ones((k, k), np.uint8))
    out[mask > 0] = _DIFF_RGB
    return out


def _thumb(rgb, photo=False):
    """Shrunk to THUMB_PX: a photo by area averaging, a class or difference map by nearest
    pixel (after widening, so thin structures survive)."""
    import cv2
    h, w = rgb.shape[:2]
    s = THUMB_PX / max(h, w)
    if s >= 1:
        return rgb
    return cv2.resize(rgb, (max(1, int(round(w * s))), max(1, int(round(h * s)))),
                      interpolation=cv2.INTER_AREA if photo else cv2.INTER_NEAREST)


def plot_samples(results, samples, runtime, path):
    """The sample images on one runtime: image, label, FP32, then each INT8 model and
    where it differs from FP32 (white), one row per image; the images where INT8
    and FP32 differ most come first, then a spread of the others."""
    from matplotlib.patches import Patch
    from .report import class_names
    plt = _plt()
    runtimes, models, cell = layout(results)
    names = class_names(results)
    nc = len(names)
    ignore = results.get("ignore_index", 255)
    row_names = [cell.get((runtime, m)) for m in models]
    ref = row_names[0]
    int8 = [n for n in row_names[1:] if n is not None]
    cols = 3 + 2 * len(int8)
    h0, w0 = samples[0]["label"].shape[:2]
    aspect = h0 / w0
    tw = 2.0 if aspect <= 1 else 2.0 / aspect
    th = tw * aspect
    fig, axes = plt.subplots(len(samples), cols, squeeze=False, layout="constrained",
                             figsize=(cols * (tw + 0.1) + 0.2, len(samples) * (th + 0.45) + 1.4))
    for r, s in enumerate(samples):
        k = display_width(s["label"].shape)
        panels = [(s["image"][..., ::-1], f"{s['chosen_as']}\n{s['name']}"),
                  (colour_labels(s["label"], nc, ignore, k), "label"),
                  (colour_labels(s["predictions"][ref], nc, ignore, k), results["models"][ref].get("model", ref))]
        for n in int8:
            differ = s["predictions"][n] != s["predictions"][ref]
            panels.append((colour_labels(s["predictions"][n], nc, ignore, k),
                           results["models"][n].get("model", n)))
            panels.append((difference_map(s["image"], differ, k),
                           f"differs from FP32\n{100 * differ.mean():.2f}% of pixels"))
        for c, (im, title) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(_thumb(np.ascontiguousarray(im), photo=c == 0), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            per_row = c == 0 or title.startswith("differs")  # the image's name, its share
            ax.set_title(title if r == 0 or per_row else "", fontsize=8)
    pal = class_rgb(nc) / 255.0
    handles = [Patch(color=pal[c], label=n) for c, n in enumerate(names)]
    handles += [Patch(color=np.array(_IGNORE_RGB) / 255, label="ignored"),
                Patch(facecolor=np.array(_DIFF_RGB) / 255, edgecolor="k", label="INT8 differs")]
    ncol = max(1, min(len(handles), int(fig.get_size_inches()[0] / 1.3)))
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, frameon=False, fontsize=8)
    where = f" on {runtime}" if len(runtimes) > 1 else ""
    widened = max(display_width(s["label"].shape) for s in samples)
    note = f"; thin structures and differing pixels widened by {widened} px for display" if widened > 1 else ""
    fig.suptitle(f"Samples{where}: the images where INT8 and FP32 differ most, then a spread of "
                 f"the others{note}", fontsize=9)
    _save(fig, path)
