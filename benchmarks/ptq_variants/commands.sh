# PTQ variants of CamVid BiSeNetV2 (hist_per_channel_all_train.json is the calibration sweep's fraction-1 point).
# machine (as the README stated for these results): 2-core AMD EPYC with AVX-512 VNNI, 24 GB, Python 3.11.7, paddlepaddle 3.3.1 CPU; commit: not recorded
RUNS=${RUNS:-../runs}   # the runs folder, relative to the repository root (beside the checkout)
M=$RUNS/camvid_bisenetv2/20261122-152413/fp32/best_model/model.pdparams
C=configs/bisenetv2/bisenetv2_camvid_240x180.yml
python slim/quant/ptq.py --config $C --model_path $M --save_dir $RUNS/sweep/camvid_bisenetv2_ptq_per_tensor --algo hist --batch_size 4 --batch_nums 10 --cpu_threads 2 --opts quant_config.weight_granularity=per_tensor
python slim/quant/ptq.py --config $C --model_path $M --save_dir $RUNS/sweep/camvid_bisenetv2_ptq_random --algo hist --batch_size 4 --batch_nums 10 --cpu_threads 2 --random_calibration
python slim/quant/ptq.py --config $C --model_path $M --save_dir $RUNS/sweep/camvid_bisenetv2_ptq_abs_max --algo abs_max --batch_size 4 --batch_nums 10 --cpu_threads 2
python benchmarks/ptq_variants/compare_scales.py   # the scale ratios quoted in docs/results.md
