# INT8/FP32 latency of the zoo entries with random weights (calibrated quantizers):
# slim/quant/bench_latency.py per config at 1x3x512x1024 (512x512 if that fails), 2 threads,
# 1 warm-up + 3 interleaved runs; then python benchmarks/zoo/latency_all.py writes latency_all.md.
# Run it alone on the machine; it skips entries already measured (resumes).
cd "$(dirname "$0")/../.." || exit 1
mkdir -p output/zoo_latency_all
for m in bisenetv2 pp_liteseg_stdc1 pp_liteseg_stdc2 stdcseg bisenetv1 ddrnet23 fastscnn enet espnetv2 lraspp_mobilenetv3 mobileseg_mobilenetv2 pp_mobileseg_tiny pp_humanseg_lite segformer_b0 topformer_tiny rtformer_slim segnext_mscan_t sfnet unet u2netp deeplabv3 isanet ccnet ginet upernet fcn_hrnetw18 ocrnet_hrnetw18 u2net; do
  [ -f output/zoo_latency_all/$m.json ] && continue
  timeout 400 python slim/quant/bench_latency.py --config configs/zoo/$m.yml --input_shape 1 3 512 1024 --cpu_threads 2 --warmup 1 --repeats 3 --save_json output/zoo_latency_all/$m.json > output/zoo_latency_all/$m.log 2>&1 || \
  timeout 400 python slim/quant/bench_latency.py --config configs/zoo/$m.yml --input_shape 1 3 512 512 --cpu_threads 2 --warmup 1 --repeats 3 --save_json output/zoo_latency_all/$m.json > output/zoo_latency_all/$m.512.log 2>&1
  echo "$m $(date +%T) $?"
done
