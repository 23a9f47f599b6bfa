#!/usr/bin/env bash
# tests/cli/padding.sh (CTest: cli.padding): with OpenBLAS's Haswell kernels the CPU
# backend's row alignment is 12, so one-token prompts take 12 rows each in a microbatch;
# the residual stream between layers must still hold only the real rows (src/plan.c,
# compact storage): the plan's memory for 100k one-token prompts stays near the real rows'
# size instead of 12x it. Skipped (77) on a CPU without AVX2.
# env: LS_BIN (layersweep binary), LS_TEST_TMP (scratch dir)
set -u
grep -qw avx2 /proc/cpuinfo || { echo "SKIPPED: no AVX2 (OpenBLAS Haswell kernels)"; exit 77; }
ls=${LS_BIN:?set LS_BIN}
tmp=$(mktemp -d "${LS_TEST_TMP:-/tmp}/padding.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
export OPENBLAS_CORETYPE=Haswell OMP_NUM_THREADS=1
"$ls" make-model --out "$tmp/m" --hidden 1024 --intermediate 256 --layers 2 --heads 4 \
  --kv-heads 2 --vocab 256 --force 2>/dev/null || { echo "FAIL make-model"; exit 1; }
"$ls" make-data --out "$tmp/d.jsonl" --n 100000 --min-len 1 --max-len 1 --vocab 256 --force \
  2>/dev/null || { echo "FAIL make-data"; exit 1; }
line=$("$ls" plan --model "$tmp/m" --data "$tmp/d.jsonl" 2>&1 | grep "memory per rank")
align=$(sed -n 's/.*multiples of \([0-9]*\) rows.*/\1/p' <<<"$line")
mem=$(sed -n 's/.*memory per rank <= \([0-9.]*\) GiB.*/\1/p' <<<"$line")
# real rows: 100k x 1024 floats = 0.38 GiB; padded to 12 rows each it would be 4.6 GiB (the
# pooled outputs add 2 x 0.38 GiB either way)
if [ "${align:-0}" -ge 2 ] && awk -v m="$mem" 'BEGIN { exit !(m > 0 && m < 2.0) }'; then
  echo "PASS 100k one-token prompts at row alignment $align: plan memory $mem GiB (padded stream would be 4.6 GiB)"
else
  echo "FAIL plan at alignment ${align:-?}: memory ${mem:-?} GiB; $line"
  exit 1
fi
