# the steps of this pipeline run, as separate commands
# machine (as the README stated for these results): 2-core AMD EPYC with AVX-512 VNNI, 24 GB, Python 3.11.7, paddlepaddle 3.3.1 CPU; commit: not recorded
RUNS=${RUNS:-../runs}   # the runs folder, relative to the repository root (beside the checkout)
python tools/train.py --config configs/bisenetv2/bisenetv2_isbi_256x256.yml --cpu_threads 1 --num_workers 0 --seed 0 --do_eval --use_vdl --iters 300 --learning_rate 0.05 --save_dir $RUNS/isbi_bisenetv2/20261122-152413/fp32 --save_interval 50 --log_iters 15
python slim/quant/qat_train.py --config configs/bisenetv2/bisenetv2_isbi_256x256.yml --cpu_threads 1 --num_workers 0 --seed 0 --do_eval --use_vdl --model_path $RUNS/isbi_bisenetv2/20261122-152413/fp32/best_model/model.pdparams --iters 100 --learning_rate 0.005 --save_dir $RUNS/isbi_bisenetv2/20261122-152413/qat --save_interval 50 --log_iters 10
python tools/export.py --config configs/bisenetv2/bisenetv2_isbi_256x256.yml --model_path $RUNS/isbi_bisenetv2/20261122-152413/fp32/best_model/model.pdparams --save_dir $RUNS/isbi_bisenetv2/20261122-152413/fp32_infer
python slim/quant/qat_export.py --config configs/bisenetv2/bisenetv2_isbi_256x256.yml --model_path $RUNS/isbi_bisenetv2/20261122-152413/qat/best_model/model.pdparams --save_dir $RUNS/isbi_bisenetv2/20261122-152413/qat_infer
