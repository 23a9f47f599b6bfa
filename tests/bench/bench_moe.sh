#!/usr/bin/env bash
# Mixture-of-experts benchmark (CPU): a Mixtral-shaped model (8 experts, top-2, each expert
# I wide) against the dense Llama with the same active GEMM work per token (one MLP 2I
# wide), same hidden size, heads and layers, on the same data, in the same run. Reports
# the forward time per token of each and their ratio: what the routing, the gathers and
# scatters and the per-expert GEMM batches cost over a dense MLP of equal FLOPs; and the
# routing's load imbalance from /router_stats (the busiest expert's rows over the mean).
# usage: tests/bench/bench_moe.sh [BUILD_DIR]   env: BENCH_DIR, N, LEN
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
ls=$build/layersweep
work=${BENCH_DIR:-/tmp/layersweep-bench-moe}
n=${N:-128} len=${LEN:-128}
mkdir -p "$work"
json() { sed -n "s/.*\"$2\":[[:space:]]*\([0-9.e+-]*\).*/\1/p" "$1" | head -n 1; }
field_max() { sed -n "/\"$2\"/,/}/p" "$1" | sed -n 's/.*"max":[[:space:]]*\([0-9.e+-]*\).*/\1/p' | head -n 1; }
common=(--hidden 1024 --layers 6 --heads 16 --kv-heads 8 --vocab 32000 --dtype bf16 --force)
$ls make-model --out "$work/moe" --arch mixtral --intermediate 1024 --experts 8 --top-k 2 "${common[@]}" 2>/dev/null
$ls make-model --out "$work/dense" --arch llama --intermediate 2048 "${common[@]}" 2>/dev/null
$ls make-data --out "$work/data.jsonl" --n "$n" --min-len "$len" --max-len "$len" --vocab 32000 --force 2>/dev/null
echo "# layersweep MoE benchmark  $(date -u +%Y-%m-%dT%H:%MZ)  $(nproc) cores, 1 rank"
echo "# hidden 1024, 6 layers, 16 heads / 8 kv, bf16; data $n x $len tokens; --hooks residual_post,router_logits (moe)"
for m in dense moe; do
  hooks=residual_post
  [ "$m" = moe ] && hooks=residual_post,router_logits
  $ls run --model "$work/$m" --data "$work/data.jsonl" --out "$work/$m.h5" --hooks "$hooks" \
    --force --progress off --checkpoint-every off --summary-json "$work/$m.json" 2>"$work/$m.log"
  fwd=$(field_max "$work/$m.json" forward)
  tot=$(json "$work/$m.json" total_s)
  printf '%-6s forward %7.2f s  total %7.2f s  %8.1f tokens/s (forward)\n' "$m" "$fwd" "$tot" \
    "$(awk -v f="$fwd" -v t=$((n * len)) 'BEGIN { print t / f }')"
  eval "fwd_$m=$fwd"
done
awk -v m="$fwd_moe" -v d="$fwd_dense" 'BEGIN { printf "moe_over_dense_forward  %.2fx  (equal active GEMM FLOPs per token)\n", m / d }'
h5dump -d /router_stats/expert_rows -m %d "$work/moe.h5" 2>/dev/null |
  sed -n '/DATASET "\/router_stats\/expert_rows"/,/^   }/p' |
  sed -n 's/^ *(\([0-9]*\),\([0-9]*\)): *\([0-9]*\).*/\1 \2 \3/p' |
  awk '{ v[$1] = v[$1] " " $3; s[$1] += $3; k[$1]++; if ($3 > mx[$1]) mx[$1] = $3; n = $1 + 1 }
       END { for (L = 0; L < n; L++)
               printf "moe layer %d  expert rows%s  max/mean %.2f\n", L, v[L], mx[L] / (s[L] / k[L]) }'
