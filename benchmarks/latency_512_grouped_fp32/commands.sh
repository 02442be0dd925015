# BiSeNetV2 at 1x3x512x512, 2 threads, OpenVINO and ONNX Runtime (random weights, calibrated):
# the default quantization against the 8 channel-expanding grouped convolutions left in FP32
# (the skip list of configs/bisenetv2/bisenetv2_camvid_240x180_openvino.yml). Run in the order
# skip, base, base, skip on an idle machine (session 9): *_run1.json, then *_run2.json.
# machine: recorded in the JSONs beside this file (AMD EPYC, 2 cores, avx512_vnni); commit: not recorded
S='["sb.stage3.0.branch_1.1.depthwise_conv._conv","sb.stage3.1.conv.1.depthwise_conv._conv","sb.stage4.0.branch_1.1.depthwise_conv._conv","sb.stage4.1.conv.1.depthwise_conv._conv","sb.stage5_4.0.branch_1.1.depthwise_conv._conv","sb.stage5_4.1.conv.1.depthwise_conv._conv","sb.stage5_4.2.conv.1.depthwise_conv._conv","sb.stage5_4.3.conv.1.depthwise_conv._conv"]'
OUT=benchmarks/latency_512_grouped_fp32
for run in 1 2; do
  for v in $( [ $run = 1 ] && echo "grouped_fp32 base" || echo "base grouped_fp32" ); do
    opts=""; [ $v = grouped_fp32 ] && opts="--opts quant_config.skip_layers=$S"
    python slim/quant/bench_latency.py --config configs/bisenetv2/bisenetv2_camvid_240x180.yml --input_shape 1 3 512 512 \
        --runtimes openvino onnxruntime --cpu_threads 2 --repeats 30 $opts --save_json $OUT/${v}_run$run.json
  done
done
