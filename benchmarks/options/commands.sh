# Real-data runs of the quant_config options (issue 5). Training/eval only: latency is measured later, alone.
# machine (as the README stated for these results): 2-core AMD EPYC with AVX-512 VNNI, 24 GB, Python 3.11.7, paddlepaddle 3.3.1 CPU; commit: not recorded
RUNS=${RUNS:-../runs}   # the runs folder, relative to the repository root (beside the checkout)
IB=$RUNS/isbi_bisenetv2/20261122-152413
CP=$RUNS/camvid_ppliteseg/20261122-160126
O=$RUNS/options
# PACT QAT, ISBI BiSeNetV2: same recipe as the plain QAT run (alpha starts at 100, the default)
python slim/quant/qat_train.py --config configs/bisenetv2/bisenetv2_isbi_256x256.yml --cpu_threads 2 --num_workers 0 --seed 0 --do_eval --use_vdl --model_path $IB/fp32/best_model/model.pdparams --iters 100 --learning_rate 0.005 --save_dir $O/isbi_bisenetv2_pact/qat --save_interval 50 --log_iters 10 --opts quant_config.pact=true
python slim/quant/qat_export.py --config configs/bisenetv2/bisenetv2_isbi_256x256.yml --model_path $O/isbi_bisenetv2_pact/qat/best_model/model.pdparams --save_dir $O/isbi_bisenetv2_pact/qat_infer --opts quant_config.pact=true
# backbone-only QAT, CamVid PP-LiteSeg: same recipe as its plain QAT run
python slim/quant/qat_train.py --config configs/pp_liteseg/pp_liteseg_stdc1_camvid_240x180.yml --cpu_threads 2 --num_workers 0 --seed 0 --do_eval --use_vdl --model_path $CP/fp32/best_model/model.pdparams --iters 100 --learning_rate 0.005 --save_dir $O/camvid_ppliteseg_backbone/qat --save_interval 50 --log_iters 10 --opts quant_config.quantize_scope=backbone
python slim/quant/qat_export.py --config configs/pp_liteseg/pp_liteseg_stdc1_camvid_240x180.yml --model_path $O/camvid_ppliteseg_backbone/qat/best_model/model.pdparams --save_dir $O/camvid_ppliteseg_backbone/qat_infer --opts quant_config.quantize_scope=backbone
# 16-bit diagnostic vs 8-bit, fake quantization from FP32 weights, all 101 CamVid val images
for bits in 8 16; do
python slim/quant/analysis.py --config configs/pp_liteseg/pp_liteseg_stdc1_camvid_240x180.yml --model_path $CP/fp32/best_model/model.pdparams --save_dir $O/camvid_ppliteseg_bits$bits --num_images 0 --layers seg_heads.0.conv_out --cpu_threads 2 --opts quant_config.weight_bits=$bits quant_config.activation_bits=$bits
done
# PACT QAT with alpha starting at 10
python slim/quant/qat_train.py --config configs/bisenetv2/bisenetv2_isbi_256x256.yml --cpu_threads 2 --num_workers 0 --seed 0 --do_eval --use_vdl --model_path $IB/fp32/best_model/model.pdparams --iters 100 --learning_rate 0.005 --save_dir $O/isbi_bisenetv2_pact10/qat --save_interval 50 --log_iters 10 --opts quant_config.pact=true quant_config.pact_alpha_init=10
python slim/quant/qat_export.py --config configs/bisenetv2/bisenetv2_isbi_256x256.yml --model_path $O/isbi_bisenetv2_pact10/qat/best_model/model.pdparams --save_dir $O/isbi_bisenetv2_pact10/qat_infer --opts quant_config.pact=true quant_config.pact_alpha_init=10
# benchmarks, alone on the idle machine
python deploy/python/benchmark.py --config configs/pp_liteseg/pp_liteseg_stdc1_camvid_240x180.yml --fp32 $CP/fp32_infer --int8 $CP/qat_infer $O/camvid_ppliteseg_backbone/qat_infer --names FP32 "INT8 QAT" "INT8 QAT backbone only" --save_dir $O/camvid_ppliteseg_backbone/benchmark --cpu_threads 2 --repeats 30
python deploy/python/benchmark.py --config configs/bisenetv2/bisenetv2_isbi_256x256.yml --fp32 $IB/fp32_infer --int8 $IB/qat_infer $O/isbi_bisenetv2_pact/qat_infer $O/isbi_bisenetv2_pact10/qat_infer --names FP32 "INT8 QAT" "INT8 QAT PACT a0=100" "INT8 QAT PACT a0=10" --save_dir $O/isbi_bisenetv2_pact/benchmark --cpu_threads 2 --repeats 30
# figures quoted in docs/results.md
python benchmarks/options/inspect_pact.py
python benchmarks/options/check_16bit_export.py
