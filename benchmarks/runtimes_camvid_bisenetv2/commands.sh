# CamVid BiSeNetV2: FP32 / QAT / PTQ, each deployed on Paddle Inference, OpenVINO and ONNX Runtime
# machine (as the README stated for these results): 2-core AMD EPYC with AVX-512 VNNI, paddlepaddle 3.3.1 CPU; commit: not recorded
python tools/data/convert_camvid.py --src ../shared/data/camvid --save_dir data/camvid
python tools/pipeline.py --config configs/bisenetv2/bisenetv2_camvid_240x180.yml --fp32_iters 600 \
    --learning_rate 0.05 --qat_iters 150 --qat_learning_rate 0.005 --save_interval 150 --cpu_threads 1 \
    --ptq_algo hist --skip_benchmark --save_dir output/camvid_bv2
RUN=$(ls -d output/camvid_bv2/*/ | tail -1)
python deploy/python/benchmark.py --config configs/bisenetv2/bisenetv2_camvid_240x180.yml \
    --fp32 ${RUN}fp32_infer --int8 ${RUN}qat_infer ${RUN}ptq_infer --names FP32 QAT PTQ \
    --qat_model_path ${RUN}qat/best_model/model.pdparams --runtimes paddle openvino onnxruntime \
    --cpu_threads 2 --save_dir output/runtimes_camvid_bisenetv2
