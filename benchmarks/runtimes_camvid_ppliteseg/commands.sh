# CamVid PP-LiteSeg (STDC1): FP32 / QAT / PTQ on Paddle Inference, OpenVINO and ONNX Runtime
# machine (as the README stated for these results): 2-core AMD EPYC with AVX-512 VNNI, paddlepaddle 3.3.1 CPU; commit: not recorded
python tools/data/convert_camvid.py --src ../shared/data/camvid --save_dir data/camvid
python tools/pipeline.py --config configs/pp_liteseg/pp_liteseg_stdc1_camvid_240x180.yml --fp32_iters 400 \
    --qat_iters 100 --learning_rate 0.05 --save_interval 100 --cpu_threads 2 --ptq_algo hist \
    --skip_benchmark --save_dir output/camvid_ppl
RUN=$(ls -d output/camvid_ppl/*/ | tail -1)
python deploy/python/benchmark.py --config configs/pp_liteseg/pp_liteseg_stdc1_camvid_240x180.yml \
    --fp32 ${RUN}fp32_infer --int8 ${RUN}qat_infer ${RUN}ptq_infer --names FP32 QAT PTQ \
    --qat_model_path ${RUN}qat/best_model/model.pdparams --runtimes paddle openvino onnxruntime \
    --cpu_threads 2 --save_dir output/runtimes_camvid_ppliteseg
