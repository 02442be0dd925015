#!/bin/bash
# The benchmark step of the real-data results (docs/results.md), run alone on the idle machine after all
# trainings (PTQ first where missing). $RUNS/<name>/<timestamp> are the pipeline folders
# (RUNS defaults to ../runs, relative to the repository root).
set -x
cd "$(dirname "$0")/.." || exit 1
RUNS=${RUNS:-../runs}
for spec in isbi_bisenetv2:configs/bisenetv2/bisenetv2_isbi_256x256.yml isbi_ppliteseg:configs/pp_liteseg/pp_liteseg_stdc1_isbi_256x256.yml camvid_bisenetv2:configs/bisenetv2/bisenetv2_camvid_240x180.yml camvid_ppliteseg:configs/pp_liteseg/pp_liteseg_stdc1_camvid_240x180.yml; do
  name=${spec%%:*}; cfg=${spec#*:}
  R=$(ls -d "$RUNS/$name"/2026* 2>/dev/null | tail -1)
  [ -f "$R/qat_infer/deploy.yaml" ] || { echo "SKIP $name: not finished"; continue; }
  [ -f "$R/ptq_infer/deploy.yaml" ] || .venv/bin/python slim/quant/ptq.py --config $cfg --model_path $R/fp32/best_model/model.pdparams --save_dir $R/ptq_infer --algo hist --cpu_threads 2
  .venv/bin/python deploy/python/benchmark.py --config $cfg --fp32 $R/fp32_infer --int8 $R/qat_infer $R/ptq_infer --names FP32 "INT8 QAT" "INT8 PTQ" --qat_model_path $R/qat/best_model/model.pdparams --save_dir $R/benchmark --cpu_threads 2 --repeats 30
done
.venv/bin/python slim/quant/bench_latency.py --config configs/bisenetv2/bisenetv2_synthetic_64x64.yml --config configs/pp_liteseg/pp_liteseg_stdc1_synthetic_64x64.yml --input_shape 1 3 512 512 --cpu_threads 2 --repeats 50 --save_json benchmarks/latency_512.json
