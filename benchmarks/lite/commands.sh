#!/bin/bash
# Paddle Lite (paddlelite 2.13rc0, x86) against Paddle Inference on CamVid BiSeNetV2 and
# PP-LiteSeg: label agreement and mIoU over the 101 validation images (agreement.py), then the
# latency commands. The 512x512 random-weight latency of all four runtimes is in latency/README.md.
# machine: 2-core AMD EPYC without VNNI, paddlepaddle 3.3.1, paddlelite 2.13rc0 (.venv-lite);
# models trained briefly from scratch (200 FP32 + 40 QAT iterations): agreement, not accuracy.
# Run from the repository root.
set -e
RUNS=${RUNS:-output/lite}
PY=.venv/bin/python
make venv-lite
$PY tools/data/convert_camvid.py --src ../shared/data/camvid --save_dir data/camvid
# the first N validation images (val.txt lists them absolute or relative to data/camvid)
val_images() { head -$1 data/camvid/val.txt | cut -d' ' -f1 | while read -r f; do
  case $f in /*) echo "$f" ;; *) echo "$PWD/data/camvid/$f" ;; esac; done; }
for m in bisenetv2/bisenetv2 pp_liteseg/pp_liteseg_stdc1; do
  n=$(basename $m)
  cfg=configs/${m}_camvid_240x180.yml
  $PY tools/pipeline.py --config $cfg --fp32_iters 200 --learning_rate 0.05 --qat_iters 40 \
      --qat_learning_rate 0.005 --save_interval 200 --cpu_threads 1 --ptq_algo hist --skip_benchmark \
      --save_dir $RUNS/pipe_$n
  RUN=$(ls -d $RUNS/pipe_$n/*/ | tail -1)
  # agreement (benchmarks/lite/camvid_<model>/results.md)
  $PY benchmarks/lite/agreement.py --config $cfg --fp32 ${RUN}fp32_infer \
      --int8 ${RUN}qat_infer ${RUN}ptq_infer --names QAT PTQ \
      --qat_model_path ${RUN}qat/best_model/model.pdparams --save_dir $RUNS/agree_$n
  # the deployable files: model_x86.nb, model_arm.nb, lite.json, checked on 4 CamVid images
  val_images 4 > $RUNS/check_$n.txt
  for k in fp32 qat ptq; do
    $PY deploy/python/export_lite.py --config ${RUN}${k}_infer --save_dir $RUNS/lite_${n}_$k \
        --valid_targets x86 arm --image_path $RUNS/check_$n.txt
  done
  # latency (NOT MEASURED YET): Paddle Inference vs Lite, FP32 and INT8, 2 threads, one
  # CamVid image; Lite's time is its own run() inside its process
  img=$(val_images 1)
  for k in fp32 qat; do
    for rt in paddle lite; do
      opts=""; [ $rt = lite ] && opts="--check_images $img"
      $PY deploy/python/infer.py --config ${RUN}${k}_infer --image_path $img \
          --runtime $rt --cpu_threads 2 --benchmark true --repeats 50 $opts
    done
  done
  # random weights at 180x240, interleaved within each runtime
  $PY slim/quant/bench_latency.py --config $cfg --input_shape 1 3 180 240 --cpu_threads 2 \
      --runtimes paddle lite --repeats 30 --save_json $RUNS/latency_$n.json --overwrite
done
