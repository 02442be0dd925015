#!/bin/bash
# INT8 speed: where the time goes (per-op profiles), what the placement rule, the oneDNN
# scale guard and the QLinearConv chains change, and the CamVid accuracy that must not move.
# Run from the repository root on an otherwise idle machine:  sh benchmarks/speed/commands.sh
# BEFORE: the same measurements on the code before these changes (commit ac2cf99), from a
# worktree beside the checkout that shares .venv. RUNS: trained CamVid models (below).
set -e
RUNS=${RUNS:-../runs}
OUT=${OUT:-output/speed}
BEFORE=${BEFORE:-../segqat-before}
[ -d "$BEFORE" ] || { git worktree add "$BEFORE" ac2cf99 && ln -s "$(pwd)/.venv" "$BEFORE/.venv"; }
PY=.venv/bin/python
mkdir -p $OUT

# 1. latency, random weights, 3 runtimes, 2 threads, medians of 30 interleaved runs
for size in "512 512" "180 240"; do
  tag=$(echo $size | tr ' ' x)
  for cfg in configs/zoo/bisenetv2.yml configs/zoo/pp_liteseg_stdc1.yml; do
    name=$(basename $cfg .yml)
    $PY slim/quant/bench_latency.py --config $cfg --input_shape 1 3 $size --cpu_threads 2 --repeats 30 \
        --runtimes paddle openvino onnxruntime --save_json $OUT/latency_${name}_$tag.json --overwrite
    (cd $BEFORE && $PY slim/quant/bench_latency.py --config $cfg --input_shape 1 3 $size --cpu_threads 2 \
        --repeats 30 --runtimes paddle openvino onnxruntime --save_json $OLDPWD/$OUT/before_${name}_$tag.json)
  done
done

# 2. per-op profiles of the same models at 512x512, now and before
for cfg in configs/zoo/bisenetv2.yml configs/zoo/pp_liteseg_stdc1.yml; do
  name=$(basename $cfg .yml)
  $PY slim/quant/profile_ops.py --config $cfg --input_shape 1 3 512 512 --runtimes paddle openvino onnxruntime \
      --runs 20 --save_dir $OUT/profile_$name --overwrite
done

# ... and BiSeNetV2 with every layer quantized (the placement before skip_layer_kinds)
$PY slim/quant/profile_ops.py --config configs/zoo/bisenetv2.yml --input_shape 1 3 512 512 --runtimes paddle openvino \
    --runs 20 --save_dir $OUT/profile_bisenetv2_every_layer --overwrite --opts quant_config.skip_layer_kinds=[]

# 3. the mobile and transformer families of the issue at 512x1024, now
for m in pp_mobileseg_tiny topformer_tiny segformer_b0 fastscnn; do
  $PY slim/quant/bench_latency.py --config configs/zoo/$m.yml --input_shape 1 3 512 1024 --cpu_threads 2 \
      --repeats 10 --runtimes paddle openvino onnxruntime --save_json $OUT/latency_${m}_512x1024.json --overwrite
done

# 4. CamVid BiSeNetV2 (trained as in docs/results.md#camvid-bisenetv2: FP32 600 iterations, QAT 150),
#    QAT with the default placement and with every layer quantized (skip_layer_kinds: []),
#    deployed on the 3 runtimes: mIoU, agreement with fake quant, time per image
C=configs/bisenetv2/bisenetv2_camvid_240x180.yml
R=$RUNS/camvid_bisenetv2
[ -d data/camvid ] || $PY tools/data/convert_camvid.py --src ../shared/data/camvid --save_dir data/camvid
if [ ! -d $R/qat_all_infer ]; then
  $PY tools/train.py --config $C --cpu_threads 1 --num_workers 0 --seed 0 --do_eval --iters 600 \
      --learning_rate 0.05 --save_dir $R/fp32 --save_interval 150 --log_iters 30
  Q="--cpu_threads 1 --num_workers 0 --seed 0 --do_eval --model_path $R/fp32/best_model/model.pdparams --iters 150 --learning_rate 0.005 --save_interval 150 --log_iters 15"
  $PY slim/quant/qat_train.py --config $C $Q --save_dir $R/qat
  $PY slim/quant/qat_train.py --config $C $Q --save_dir $R/qat_all --opts quant_config.skip_layer_kinds=[]
  $PY tools/export.py --config $C --model_path $R/fp32/best_model/model.pdparams --save_dir $R/fp32_infer
  $PY slim/quant/qat_export.py --config $C --model_path $R/qat/best_model/model.pdparams --save_dir $R/qat_infer
  $PY slim/quant/qat_export.py --config $C --model_path $R/qat_all/best_model/model.pdparams \
      --save_dir $R/qat_all_infer --opts quant_config.skip_layer_kinds=[]
fi
$PY deploy/python/benchmark.py --config $C --fp32 $R/fp32_infer --int8 $R/qat_infer $R/qat_all_infer \
    --names FP32 "QAT (default placement)" "QAT (every layer)" --qat_model_path $R/qat/best_model/model.pdparams \
    --runtimes paddle openvino onnxruntime --cpu_threads 2 --repeats 3 --save_dir $OUT/camvid_bisenetv2 --overwrite
