# camvid_bisenetv2_openvino_samples.png (docs/deployment.md): the samples.png of a benchmark of
# the CamVid BiSeNetV2 exports of benchmarks/speed/commands.sh ($RUNS/camvid_bisenetv2) on
# OpenVINO, 2 samples, reduced to 256 colours (class colours exact) to stay under 150 KB.
# Its timings are not published.
RUNS=${RUNS:-../runs}
R=$RUNS/camvid_bisenetv2
python deploy/python/benchmark.py --config configs/bisenetv2/bisenetv2_camvid_240x180.yml \
    --fp32 $R/fp32_infer --int8 $R/qat_infer --names FP32 "INT8 QAT" --runtimes openvino \
    --num_samples 2 --repeats 2 --warmup 1 --cpu_threads 1 --save_dir $RUNS/bench_samples_openvino
python benchmarks/plots_preview/shrink_png.py $RUNS/bench_samples_openvino/samples.png \
    benchmarks/plots_preview/camvid_bisenetv2_openvino_samples.png 11
