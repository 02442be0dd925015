# Per-layer sensitivity on CamVid (FP32 weights of the real-data pipeline runs, see docs/results.md "Real data: training recipe").
# machine (as the README stated for these results): 2-core AMD EPYC with AVX-512 VNNI, 24 GB, Python 3.11.7, paddlepaddle 3.3.1 CPU; commit: not recorded
RUNS=${RUNS:-../runs}   # the runs folder, relative to the repository root (beside the checkout)
python slim/quant/analysis.py --config configs/bisenetv2/bisenetv2_camvid_240x180.yml --model_path $RUNS/camvid_bisenetv2/20261122-152413/fp32/best_model/model.pdparams --save_dir $RUNS/analysis/camvid_bisenetv2_idle --mode both --num_images 24 --skip_top 5 --cpu_threads 2
python slim/quant/analysis.py --config configs/pp_liteseg/pp_liteseg_stdc1_camvid_240x180.yml --model_path $RUNS/camvid_ppliteseg/20261122-160126/fp32/best_model/model.pdparams --save_dir $RUNS/analysis/camvid_ppliteseg --mode single --num_images 24 --skip_top 5 --cpu_threads 2
