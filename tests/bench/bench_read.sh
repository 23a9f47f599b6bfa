#!/usr/bin/env bash
# Weight reads at disk speed: rank 0's reader on a checkpoint that is not in the page cache
# (evicted with dd iflag=nocache before each read, as a checkpoint larger than the page
# cache would be), against `dd iflag=direct` of the same file in the same run. The sweep
# computes almost nothing (one 1-token prompt), so its layer loop waits on the reader:
# rate = weight bytes read / the reader's seconds (profile read_s, summed over layers).
# usage: tests/bench/bench_read.sh [BUILD_DIR]   env: BENCH_DIR, HIDDEN, LAYERS
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
ls=$build/layersweep
work=${BENCH_DIR:-/tmp/layersweep-bench-read}
hidden=${HIDDEN:-4096} layers=${LAYERS:-8}
mkdir -p "$work"
json() { sed -n "s/.*\"$2\":[[:space:]]*\([0-9.e+-]*\).*/\1/p" "$1" | head -n 1; }
[ -e "$work/m/model.safetensors" ] ||
  $ls make-model --out "$work/m" --hidden "$hidden" --intermediate $((hidden * 11 / 4)) \
    --layers "$layers" --heads 32 --kv-heads 8 --vocab 32000 --dtype bf16 --force 2>/dev/null
printf '{"input_ids": [1]}\n' >"$work/d.jsonl"
f=$work/m/model.safetensors
size=$(stat -c %s "$f")
evict() { dd if="$f" iflag=nocache count=0 status=none; }
cached() { fincore --bytes --noheadings --output RES "$f" 2>/dev/null | tr -d ' '; }
echo "# layersweep weight-read benchmark  $(date -u +%Y-%m-%dT%H:%MZ)  $(nproc) cores"
echo "# checkpoint $(awk -v b="$size" 'BEGIN { printf "%.2f GiB", b / 2^30 }') (hidden $hidden, $layers layers, bf16), evicted from the page cache before each read"
for k in 1 2; do
  evict
  echo "cached before dd: $(cached) bytes"
  t0=$(date +%s.%N)
  dd if="$f" of=/dev/null bs=16M iflag=direct status=none
  t1=$(date +%s.%N)
  dd_rate=$(awk -v b="$size" -v a="$t0" -v c="$t1" 'BEGIN { print b / (c - a) / 1e9 }')
  evict
  echo "cached before layersweep: $(cached) bytes"
  $ls run --model "$work/m" --data "$work/d.jsonl" --out "$work/o.h5" --layers -1 --force \
    --progress off --checkpoint-every off --summary-json "$work/s.json" 2>"$work/run.log"
  bytes=$(json "$work/s.json" weight_bytes_read)
  rs=$(sed -n '/"read"/,/}/p' "$work/s.json" | sed -n 's/.*"max":[[:space:]]*\([0-9.e+-]*\).*/\1/p' | head -n 1)
  loop=$(json "$work/s.json" layer_loop_s)
  awk -v b="$bytes" -v r="$rs" -v l="$loop" -v d="$dd_rate" 'BEGIN {
    printf "try %d: dd iflag=direct %.2f GB/s; layersweep reader %.2f GB/s (%.2f GiB in %.2f s; layer loop %.2f s) = %.0f%% of dd\n",
      '"$k"', d, b / r / 1e9, b / 2^30, r, l, 100 * b / r / 1e9 / d }'
done
