#!/usr/bin/env bash
# Write-overlap benchmark (--pool none, every hook: raw token activations, the SAE-data
# path): the same sweep with each layer's rows written by collective HDF5 after the layer
# (--overlap-writes off) and by the writer thread while the next layer computes (on, the
# default). Reports the share of wall time the layer loop waits for writes ("write" in
# the profile: with overlap, the time the main thread blocks on the writer), the output
# rate, and the disk's own sequential write bandwidth (dd + fdatasync) in the same run.
# usage: tests/bench/bench_write.sh [BUILD_DIR]   env: BENCH_DIR, N, LEN, NP (ranks, default 1)
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
ls=$build/layersweep
work=${BENCH_DIR:-/tmp/layersweep-bench-write}
n=${N:-256} len=${LEN:-128} np=${NP:-1}
threads=$(( $(nproc) / np ))
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1
mkdir -p "$work"
json() { sed -n "s/.*\"$2\":[[:space:]]*\([0-9.e+-]*\).*/\1/p" "$1" | head -n 1; }
field_max() { sed -n "/\"$2\"/,/}/p" "$1" | sed -n 's/.*"max":[[:space:]]*\([0-9.e+-]*\).*/\1/p' | head -n 1; }

$ls make-model --out "$work/model" --hidden 1024 --intermediate 2816 --layers 8 --heads 16 \
  --kv-heads 8 --vocab 32000 --dtype bf16 --force 2>/dev/null
$ls make-data --out "$work/data.jsonl" --n "$n" --min-len "$len" --max-len "$len" \
  --vocab 32000 --force 2>/dev/null

echo "# layersweep write-overlap benchmark  $(date -u +%Y-%m-%dT%H:%MZ)  $(nproc) cores, $np rank(s) x $threads threads"
echo "# model: llama hidden 1024, 8 layers, bf16; data: $n x $len tokens; --hooks all --pool none"
# the disk: 1 GiB written sequentially and synced, in the output's directory
dd_out=$(dd if=/dev/zero of="$work/dd.bin" bs=4M count=256 conv=fdatasync 2>&1 | tail -n 1)
rm -f "$work/dd.bin"
disk=$(echo "$dd_out" | sed -n 's/.*, \([0-9.]* [GMk]B\/s\)$/\1/p')
echo "disk_write_bandwidth     ${disk:-?}   (dd 1 GiB, conv=fdatasync: $dd_out)"
for mode in off on; do
  rm -f "$work/out_$mode.h5"
  mpirun -np "$np" $ls run --model "$work/model" --data "$work/data.jsonl" --out "$work/out_$mode.h5" \
    --hooks all --pool none --force --progress off --threads "$threads" --overlap-writes "$mode" \
    --checkpoint-every off --summary-json "$work/$mode.json" 2>"$work/$mode.log"
  total=$(json "$work/$mode.json" total_s)
  wr=$(field_max "$work/$mode.json" write)
  bytes=$(stat -c %s "$work/out_$mode.h5")
  printf 'overlap_%-3s              total %7.2f s  write wait %6.2f s  write share %5.1f%%  output %.2f GiB (%.0f MB/s of output)\n' \
    "$mode" "$total" "$wr" "$(awk -v a="$wr" -v t="$total" 'BEGIN{print 100*a/t}')" \
    "$(awk -v b="$bytes" 'BEGIN{print b/1073741824}')" "$(awk -v b="$bytes" -v t="$total" 'BEGIN{print b/t/1e6}')"
done
same=yes
for d in residual_pre attn_out mlp_out residual_post; do
  h5diff -q -d 0 "$work/out_off.h5" "$work/out_on.h5" "/$d" "/$d" >/dev/null 2>&1 || same=no
done
echo "files_identical          $same   (every hook dataset, h5diff -d 0)"
rm -f "$work"/out_*.h5
