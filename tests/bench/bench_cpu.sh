#!/usr/bin/env bash
# CPU benchmark, everything measured in one run on the same machine:
#   1. OpenBLAS sgemm rate on one decoder layer's GEMM shapes (bench_sgemm), all threads;
#   2. layersweep on a random Llama-shaped model (hidden 1024, 8 layers, bf16) over
#      256 prompts x 128 tokens: tokens/s, GEMM GFLOP/s, efficiency vs (1), peak RSS;
#   3. the same model and data through PyTorch + transformers (tests/bench/torch_forward.py),
#      when importable, and the ratio;
#   4. 1 rank x T threads vs T ranks x 1 thread (mpirun), and the share of each layer's
#      time spent in broadcast + write.
# usage: tests/bench/bench_cpu.sh [BUILD_DIR]   env: PYTHON (default python3), BENCH_DIR, N, LEN
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
ls=$build/layersweep
py=${PYTHON:-python3}
work=${BENCH_DIR:-/tmp/layersweep-bench}
n=${N:-256} len=${LEN:-128}
threads=$(nproc)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
mkdir -p "$work"
json() { sed -n "s/.*\"$2\":[[:space:]]*\([0-9.e+-]*\).*/\1/p" "$1" | head -n 1; }

$ls make-model --out "$work/model" --hidden 1024 --intermediate 2816 --layers 8 --heads 16 \
  --kv-heads 8 --vocab 32000 --dtype bf16 --force 2>/dev/null
$ls make-data --out "$work/data.jsonl" --n "$n" --min-len "$len" --max-len "$len" \
  --vocab 32000 --force 2>/dev/null

echo "# layersweep CPU benchmark  $(date -u +%Y-%m-%dT%H:%MZ)  $(nproc) cores: $(lscpu | sed -n 's/^Model name: *//p')"
echo "# model: llama hidden 1024, intermediate 2816, 8 layers, 16 heads / 8 kv, bf16; data: $n x $len tokens"
# the sgemm peak with the OpenBLAS kernels layersweep runs with (it restarts with better
# ones when OpenBLAS does not recognise the CPU: kernels/cpu/ops_cpu.c)
core=$($ls plan --model "$work/model" --data "$work/data.jsonl" 2>&1 | sed -n 's/.*OpenBLAS \([A-Za-z0-9]*\) kernels.*/\1/p' | head -n 1)
echo "# OpenBLAS kernels: ${core:-unknown} (layersweep's backend line)"
peak_json=$(OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-$core} $build/tests/bench_sgemm 4096 1024 2816 512 "$threads")
peak=$(echo "$peak_json" | sed -n 's/.*"openblas_sgemm_gflops": *\([0-9.]*\).*/\1/p')
echo "sgemm_peak_gflops        $peak   (OpenBLAS, $threads threads, layer GEMM shapes, 4096 rows)"

/usr/bin/time -v $ls run --model "$work/model" --data "$work/data.jsonl" --out "$work/out.h5" \
  --hooks residual_post --pool mean --force --progress off --threads "$threads" \
  --summary-json "$work/run1.json" 2>"$work/run1.log"
tps=$(json "$work/run1.json" tokens_per_s)
gf=$(json "$work/run1.json" gemm_gflops_overall)
rss=$(sed -n 's/.*Maximum resident set size (kbytes): *//p' "$work/run1.log")
echo "layersweep_tokens_per_s  $tps"
echo "layersweep_gemm_gflops   $gf   efficiency $(awk -v a="$gf" -v b="$peak" 'BEGIN{printf "%.1f%%", 100*a/b}') of sgemm peak (goal >= 75%)"
plan_mem=$(sed -n 's/.*memory per rank <= \([0-9.]* GiB\).*/\1/p' "$work/run1.log")
echo "layersweep_peak_rss_mib  $((rss / 1024))   (plan: residual stream + 1 layer f32 + 2 raw staging + scratch <= $plan_mem)"

if $py -c 'import torch, transformers' 2>/dev/null; then
  tj=$($py tests/bench/torch_forward.py --model "$work/model" --data "$work/data.jsonl" --threads "$threads")
  ttps=$(echo "$tj" | sed -n 's/.*"tokens_per_s": *\([0-9.]*\).*/\1/p')
  echo "torch_tokens_per_s       $ttps   ($tj)"
  echo "ratio_vs_torch           $(awk -v a="$tps" -v b="$ttps" 'BEGIN{printf "%.2fx", a/b}')   (goal >= 1.5x)"
else
  echo "torch_tokens_per_s       skipped ($py cannot import torch + transformers; set PYTHON)"
fi

if [ "$threads" -ge 2 ]; then
  mpirun -np "$threads" $ls run --model "$work/model" --data "$work/data.jsonl" --out "$work/out_np.h5" \
    --hooks residual_post --pool mean --force --progress off --threads 1 \
    --summary-json "$work/runP.json" 2>"$work/runP.log"
  tpsP=$(json "$work/runP.json" tokens_per_s)
  total=$(json "$work/runP.json" total_s)
  bw=$(sed -n '/"bcast_wait"/,/}/p' "$work/runP.json" | sed -n 's/.*"max":[[:space:]]*\([0-9.e+-]*\).*/\1/p')
  wr=$(sed -n '/"write"/,/}/p' "$work/runP.json" | sed -n 's/.*"max":[[:space:]]*\([0-9.e+-]*\).*/\1/p')
  ld=$(sed -n '/"load"/,/}/p' "$work/runP.json" | sed -n 's/.*"max":[[:space:]]*\([0-9.e+-]*\).*/\1/p')
  echo "ranks_x1_tokens_per_s    $tpsP   ($threads ranks x 1 thread; 1 rank x $threads threads: $tps)"
  echo "bcast_write_share        $(awk -v a="$ld" -v b="$wr" -v t="$total" 'BEGIN{printf "%.2f%%", 100*(a+b)/t}')   (load = bcast wait + convert, plus write, of total; goal < 5%)"
fi
