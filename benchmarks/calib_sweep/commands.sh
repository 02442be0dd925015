# PTQ calibration-size sweeps (FP32 weights of the real-data pipeline runs, see docs/results.md "Real data: training recipe").
# machine (as the README stated for these results): 2-core AMD EPYC with AVX-512 VNNI, 24 GB, Python 3.11.7, paddlepaddle 3.3.1 CPU; commit: not recorded
RUNS=${RUNS:-../runs}   # the runs folder, relative to the repository root (beside the checkout)
python slim/quant/calib_sweep.py --config configs/bisenetv2/bisenetv2_camvid_240x180.yml --model_path $RUNS/camvid_bisenetv2/20261122-152413/fp32/best_model/model.pdparams --save_dir $RUNS/sweep/camvid_bisenetv2 --fractions 0.01 0.05 0.2 1.0 --seeds 0 1 2 --algo hist --cpu_threads 2
python slim/quant/calib_sweep.py --config configs/bisenetv2/bisenetv2_isbi_256x256.yml --model_path $RUNS/isbi_bisenetv2/20261122-152413/fp32/best_model/model.pdparams --save_dir $RUNS/sweep/isbi_bisenetv2 --fractions 0.05 0.2 1.0 --seeds 0 1 2 --algo hist --cpu_threads 2
