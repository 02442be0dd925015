# CamVid PP-LiteSeg: the pipeline's FP32 step, then (its QAT step was interrupted when the
# data folder was moved away mid-run) the remaining steps by hand, with these exact commands.
# machine (as the README stated for these results): 2-core AMD EPYC with AVX-512 VNNI, 24 GB, Python 3.11.7, paddlepaddle 3.3.1 CPU; commit: not recorded
RUNS=${RUNS:-../runs}   # the runs folder, relative to the repository root (beside the checkout)
python tools/pipeline.py --config configs/pp_liteseg/pp_liteseg_stdc1_camvid_240x180.yml --fp32_iters 400 --qat_iters 100 --learning_rate 0.05 --save_interval 100 --cpu_threads 1 --skip_benchmark --save_dir $RUNS/camvid_ppliteseg
python slim/quant/qat_train.py --config configs/pp_liteseg/pp_liteseg_stdc1_camvid_240x180.yml --cpu_threads 2 --num_workers 0 --seed 0 --do_eval --use_vdl --model_path $RUNS/camvid_ppliteseg/20261122-160126/fp32/best_model/model.pdparams --iters 100 --learning_rate 0.005 --save_dir $RUNS/camvid_ppliteseg/20261122-160126/qat --save_interval 50 --log_iters 10
python tools/export.py --config configs/pp_liteseg/pp_liteseg_stdc1_camvid_240x180.yml --model_path $RUNS/camvid_ppliteseg/20261122-160126/fp32/best_model/model.pdparams --save_dir $RUNS/camvid_ppliteseg/20261122-160126/fp32_infer
python slim/quant/qat_export.py --config configs/pp_liteseg/pp_liteseg_stdc1_camvid_240x180.yml --model_path $RUNS/camvid_ppliteseg/20261122-160126/qat/best_model/model.pdparams --save_dir $RUNS/camvid_ppliteseg/20261122-160126/qat_infer
python slim/quant/ptq.py --config configs/pp_liteseg/pp_liteseg_stdc1_camvid_240x180.yml --model_path $RUNS/camvid_ppliteseg/20261122-160126/fp32/best_model/model.pdparams --save_dir $RUNS/camvid_ppliteseg/20261122-160126/ptq_infer --algo hist --cpu_threads 2
