#!/usr/bin/env bash
# --reduce cost (CPU): the same sweep with and without --reduce mean,cov,pca:16 in the same
# run, pooled rows (last_token: one row per prompt) and token rows (--pool none: the
# covariance's Gram matrix over every token), and --no-store; reports the total time of
# each and the ratio over the plain sweep. The Gram matrix costs 6 H^2 float64 FLOPs per
# row and layer (four digit-pair products, two of them symmetric), against about 24 H^2
# float32 FLOPs per token and layer for the forward (2 x 12 H^2 for a Llama block).
# usage: tests/bench/bench_reduce.sh [BUILD_DIR]   env: BENCH_DIR, N, LEN, HIDDEN
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
ls=$build/layersweep
work=${BENCH_DIR:-/tmp/layersweep-bench-reduce}
n=${N:-512} len=${LEN:-64} hidden=${HIDDEN:-512}
mkdir -p "$work"
json() { sed -n "s/.*\"$2\":[[:space:]]*\([0-9.e+-]*\).*/\1/p" "$1" | head -n 1; }
$ls make-model --out "$work/m" --hidden "$hidden" --intermediate $((hidden * 11 / 4)) --layers 4 \
  --heads 8 --kv-heads 4 --vocab 8192 --dtype bf16 --force 2>/dev/null
$ls make-data --out "$work/d.jsonl" --n "$n" --min-len "$len" --max-len "$len" --vocab 8192 \
  --force 2>/dev/null
echo "# layersweep --reduce benchmark  $(date -u +%Y-%m-%dT%H:%MZ)  $(nproc) cores, 1 rank"
echo "# hidden $hidden, 4 layers, bf16 weights, float32 compute; $n prompts x $len tokens; --hooks residual_post"
for pool in last_token none; do
  base=
  for mode in plain reduce nostore; do
    extra=()
    [ "$mode" != plain ] && extra=(--reduce mean,cov,pca:16)
    [ "$mode" = nostore ] && extra+=(--no-store)
    $ls run --model "$work/m" --data "$work/d.jsonl" --out "$work/$pool.$mode.h5" --pool $pool \
      --force --progress off --checkpoint-every off --summary-json "$work/$pool.$mode.json" \
      "${extra[@]}" 2>"$work/$pool.$mode.log"
    t=$(json "$work/$pool.$mode.json" total_s)
    [ -z "$base" ] && base=$t
    printf '%-10s %-8s total %7.2f s  %5.2fx of the plain sweep\n' "$pool" "$mode" "$t" \
      "$(awk -v a="$t" -v b="$base" 'BEGIN { print a / b }')"
  done
done
