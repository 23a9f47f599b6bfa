#!/usr/bin/env bash
# The spilled residual stream against the in-memory one, in the same run (CPU backend):
# the same sweep with the stream in memory and spilled (--memory-limit below the stream,
# O_DIRECT; then buffered I/O, LS_SPILL_DIRECT=0), alternating, REPS times each; the
# spill directory's disk measured with dd (O_DIRECT write and read of as many bytes as
# one rank's stream) in the same run. Reported: the layer loop's time of each (median),
# the ratio spilled / in memory, the disk bandwidth the spill needed (2 x stream per layer
# over the in-memory layer time) against what its I/O thread measured and what dd
# measured, the seconds the layer loop waited for the spill, and the files' equality.
# The forward must hide 2 x stream / disk rate per layer: the layer time below which this
# disk becomes the bottleneck is printed too.
# usage: tests/bench/bench_spill.sh [BUILD_DIR]   env: BENCH_DIR (its disk is measured),
#        N (prompts), LEN (tokens each), HIDDEN, LAYERS, REPS
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
ls=$build/layersweep
work=${BENCH_DIR:-/tmp/layersweep-bench-spill}
n=${N:-4096} len=${LEN:-64} hidden=${HIDDEN:-256} layers=${LAYERS:-3} reps=${REPS:-3}
mkdir -p "$work"
json() { sed -n "s/.*\"$2\":[[:space:]]*\([0-9.e+-]*\).*/\1/p" "$1" | head -n 1; }
median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
$ls make-model --out "$work/m" --hidden "$hidden" --intermediate $((hidden * 11 / 4)) \
  --layers "$layers" --heads 8 --kv-heads 4 --vocab 8192 --dtype bf16 --force 2>/dev/null
$ls make-data --out "$work/d.jsonl" --n "$n" --min-len "$len" --max-len "$len" --vocab 8192 \
  --force 2>/dev/null
args=(--model "$work/m" --data "$work/d.jsonl" --pool last_token --hooks residual_post --force
      --progress off --checkpoint-every off)
stream=$((n * len * hidden * 4))
# the plan's memory with room, less half the stream: spilled, everything else fits
$ls plan "${args[@]}" --out "$work/p.h5" --memory-limit 64G >"$work/plan.log" 2>&1
room=$(sed -n 's/.*memory per rank <= \([0-9.]*\) GiB.*/\1/p' "$work/plan.log" | head -n 1)
limit=$(awk -v g="$room" -v s="$stream" 'BEGIN { printf "%d", g * 1073741824 - s / 2 }')
# the disk under BENCH_DIR: O_DIRECT write and read of one stream's bytes
mb=$((stream / 1048576 + 1))
wr=$(dd if=/dev/zero of="$work/dd.bin" bs=1M count=$mb oflag=direct conv=fsync 2>&1 | sed -n 's/.*, \([0-9.]*\) s, .*/\1/p')
rd=$(dd if="$work/dd.bin" of=/dev/null bs=1M iflag=direct 2>&1 | sed -n 's/.*, \([0-9.]*\) s, .*/\1/p')
rm -f "$work/dd.bin"
echo "# layersweep spill benchmark  $(date -u +%Y-%m-%dT%H:%MZ)  $(getconf _NPROCESSORS_ONLN) cores, 1 rank"
echo "# hidden $hidden, $layers layers, $n prompts x $len tokens: residual stream $((stream / 1048576)) MiB;" \
     "--memory-limit $limit (plan's $room GiB less half the stream)"
awk -v m="$mb" -v w="$wr" -v r="$rd" -v d="$work" 'BEGIN { printf "# dd in %s: write %.2f GB/s, read %.2f GB/s (O_DIRECT, 1 MiB blocks)\n", d, m * 1.048576e-3 / w, m * 1.048576e-3 / r }'
for i in $(seq 1 "$reps"); do
  for mode in memory direct buffered; do
    extra=() env=()
    [ $mode != memory ] && extra=(--memory-limit "$limit")
    [ $mode = buffered ] && env=(LS_SPILL_DIRECT=0)
    env "${env[@]}" "$ls" run "${args[@]}" "${extra[@]}" --out "$work/$mode.h5" \
      --summary-json "$work/$mode.$i.json" 2>"$work/$mode.log"
    [ $mode != memory ] && ! grep -q "residual stream spilled to" "$work/$mode.log" &&
      { echo "FAILED: the $mode run did not spill"; exit 1; }
    [ $mode != memory ] && { h5diff -q "$work/memory.h5" "$work/$mode.h5" /residual_post /residual_post ||
      { echo "FAILED: the $mode run's /residual_post differs from the in-memory run's"; exit 1; }; }
  done
done
printf '%-9s %12s %8s %11s %11s %10s %10s\n' mode "loop_s(med)" ratio "need_GB/s" "io_GB/s" wait_s "bytes_GiB"
base=
for mode in memory direct buffered; do
  t=$(for i in $(seq 1 "$reps"); do json "$work/$mode.$i.json" layer_loop_s; done | median)
  [ -z "$base" ] && base=$t
  j="$work/$mode.$reps.json"
  br=$(json "$j" spill_bytes_read) bw=$(json "$j" spill_bytes_written) io=$(json "$j" spill_io_s)
  wait=$(json "$j" spill_wait_s)
  awk -v m="$mode" -v t="$t" -v b="$base" -v br="$br" -v bw="$bw" -v io="$io" -v w="$wait" \
      -v s="$stream" -v L="$layers" 'BEGIN {
    need = 2 * s * L / b / 1e9
    rate = "-"
    if (io > 0) rate = sprintf("%.3f", (br + bw) / io / 1e9)
    printf "%-9s %12.3f %8.3f %11.3f %11s %10.3f %10.3f\n", m, t, t / b, need, rate, w,
           (br + bw) / 1073741824 }'
done
awk -v s="$stream" -v r="$rd" -v w="$wr" -v m="$mb" 'BEGIN {
  rate = 1 / (1 / (m * 1.048576e6 / r) + 1 / (m * 1.048576e6 / w))
  printf "# this disk hides the spill while a layer takes at least %.3f s (2 x %d MiB at dd'"'"'s read and write rates)\n", s / rate, s / 1048576 }'
echo "# files: every spilled /residual_post equal to the in-memory run's (h5diff)"
