"""A figure as a 256-colour PNG that keeps segqat's class colours exact (docs pictures < 150 KB).

    python benchmarks/plots_preview/shrink_png.py SRC.png DST.png NUM_CLASSES

A plain median-cut palette merges rare class colours (CamVid's Pole and
SignSymbol came out the same green); here the class colours, the ignore grey,
white and black are fixed entries and the rest of the palette is median cut.
"""
import os
import sys

from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from segqat import report_plots  # noqa: E402


def main(src, dst, num_classes):
    im = Image.open(src).convert("RGB")
    exact = [tuple(c) for c in report_plots.class_rgb(num_classes).tolist()]
    exact += [(120, 120, 120), (255, 255, 255), (0, 0, 0)]
    n_rest = 256 - len(exact)
    rest = im.quantize(colors=n_rest, method=Image.Quantize.MEDIANCUT).getpalette()[:3 * n_rest]
    pal = Image.new("P", (1, 1))
    pal.putpalette([v for c in exact for v in c] + rest)
    im.quantize(palette=pal, dither=Image.Dither.NONE).save(dst, optimize=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
