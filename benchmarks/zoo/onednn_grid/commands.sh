#!/bin/sh
# Why Paddle Inference's INT8 output differs from fake quant (results.md). From the project root,
# on a fresh clone after `make venv`; builds the entries first (a few minutes each, 1 thread).
set -e
PY=${PY:-.venv/bin/python}
MODELS="topformer_tiny pp_mobileseg_tiny deeplabv3p pspnet ann"
$PY tools/zoo.py --phase build --cpu_threads 1 --jobs 2 --num_images 20 --export_timeout 900 \
    --out_dir output/zoo_out --models $MODELS
for m in $MODELS; do
    $PY benchmarks/zoo/onednn_grid/emulate.py $m --num_images 20
    echo
done
