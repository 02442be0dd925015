# CamVid MobileSeg (MobileNetV3-large): FP32 500 iterations from scratch, then four PTQs
# (per-tensor abs_max, per-channel hist, and per-tensor on BN-folded convolutions with hist and abs_max).
# The commands as published with these results; ptq_*.json are the runs' ptq_info.json.
RUNS=${RUNS:-../runs}   # the runs folder, relative to the repository root (beside the checkout)
python tools/data/convert_camvid.py --src ../shared/data/camvid --save_dir data/camvid
python tools/train.py --config configs/mobileseg/mobileseg_mv3_camvid_240x180.yml --iters 500 --learning_rate 0.05 \
    --save_interval 100 --do_eval --cpu_threads 1 --save_dir $RUNS/camvid_mobileseg/fp32
python slim/quant/ptq.py --config configs/mobileseg/mobileseg_mv3_camvid_240x180.yml \
    --model_path $RUNS/camvid_mobileseg/fp32/best_model/model.pdparams --save_dir $RUNS/camvid_mobileseg/ptq_pt_absmax \
    --algo abs_max --batch_size 4 --batch_nums 10 --cpu_threads 1 --opts quant_config.weight_granularity=per_tensor
python slim/quant/ptq.py --config configs/mobileseg/mobileseg_mv3_camvid_240x180.yml \
    --model_path $RUNS/camvid_mobileseg/fp32/best_model/model.pdparams --save_dir $RUNS/camvid_mobileseg/ptq_pc_hist \
    --algo hist --batch_size 4 --batch_nums 10 --cpu_threads 1
# ptq_pt_fold_*.json record the FP32 weights as output/camvid_mobileseg/fp32/...: that pair ran
# with the weights in output/ instead of $RUNS
for algo in hist abs_max; do
python slim/quant/ptq.py --config configs/mobileseg/mobileseg_mv3_camvid_240x180.yml \
    --model_path $RUNS/camvid_mobileseg/fp32/best_model/model.pdparams --save_dir $RUNS/camvid_mobileseg/ptq_pt_fold_$algo \
    --algo $algo --batch_size 4 --batch_nums 10 --cpu_threads 1 \
    --opts quant_config.fuse_conv_bn=true quant_config.weight_granularity=per_tensor
done
