# CamVid BiSeNetV2 (FP32 600 iterations from scratch, QAT 150) and two PTQs with batch norm
# folded into the convolutions before per-tensor weight quantization (quant_config.fuse_conv_bn)
python tools/data/convert_camvid.py --src ../shared/data/camvid --save_dir data/camvid
python tools/pipeline.py --config configs/bisenetv2/bisenetv2_camvid_240x180.yml --fp32_iters 600 \
    --learning_rate 0.05 --qat_iters 150 --qat_learning_rate 0.005 --save_interval 150 --cpu_threads 1 \
    --ptq_algo hist --skip_benchmark --save_dir output/camvid_bv2
RUN=$(ls -d output/camvid_bv2/*/ | tail -1)
for algo in hist abs_max; do
python slim/quant/ptq.py --config configs/bisenetv2/bisenetv2_camvid_240x180.yml \
    --model_path $RUN/fp32/best_model/model.pdparams --save_dir output/ptq_fold/bv2_pt_fold_$algo \
    --algo $algo --batch_size 4 --batch_nums 10 --cpu_threads 1 \
    --opts quant_config.fuse_conv_bn=true quant_config.weight_granularity=per_tensor
done
python benchmarks/ptq_loss_search/camvid_bisenetv2_fold/bn_spread.py $RUN/fp32/best_model/model.pdparams
