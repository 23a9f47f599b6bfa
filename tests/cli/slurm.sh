#!/usr/bin/env bash
# tests/cli/slurm.sh (CTest: cli.slurm): the Slurm template cluster/slurm_cpu.sbatch, as
# shipped, on a real one-node Slurm (slurmctld + slurmd + munge, cluster/slurm-local.sh),
# its resource lines overridden on the sbatch command line to fit the node:
#   1. a 2-task sweep (srun, PMIx) is bit-identical to 1 rank;
#   2. scancel --signal=TERM mid-run: every rank checkpoints at the end of its layer and
#      exits 3, the file partial; the same job resubmitted (the template always runs with
#      --resume) completes it, bit-identical to 1 rank.
# Skipped (77) without slurm-wlm and munge, or not as root.
# env: LS_BIN, LS_TEST_TMP
set -u
ls=$(readlink -f "${LS_BIN:?set LS_BIN}")
here=$(cd "$(dirname "$0")" && pwd)
root=$(readlink -f "$here/../..")
tmp=$(mktemp -d "${LS_TEST_TMP:-/tmp}/slurm.XXXXXX")
tmp=$(readlink -f "$tmp")
cleanup() { "$root/cluster/slurm-local.sh" down "$tmp/slurm" >/dev/null 2>&1; rm -rf "$tmp"; }
trap cleanup EXIT
"$root/cluster/slurm-local.sh" up "$tmp/slurm" >"$tmp/up.log" 2>&1
rc=$?
if [ $rc = 77 ]; then echo "SKIPPED: $(tail -1 "$tmp/up.log")"; exit 77; fi
[ $rc = 0 ] || { echo "FAIL slurm-local up: $(tail -2 "$tmp/up.log")"; exit 1; }
export SLURM_CONF=$tmp/slurm/slurm.conf PATH=$(dirname "$ls"):$PATH
unset OMPI_MCA_rmaps_base_oversubscribe
fails=0
ok() { echo "PASS $1"; }
bad() { echo "FAIL $1"; fails=$((fails + 1)); }
status_of() { h5dump -a /status "$1" 2>/dev/null | sed -n 's/.*(0): "\(.*\)".*/\1/p'; }
same_file() {
  local d
  for d in /residual_post /samples/length; do
    h5diff -q "$1" "$2" "$d" "$d" >/dev/null 2>&1 || { echo "$d differs"; return 1; }
  done
}
"$ls" make-model --out "$tmp/m" --hidden 384 --intermediate 1024 --layers 8 --heads 6 --kv-heads 2 \
  --vocab 1024 --dtype f32 --force >/dev/null 2>&1 || { echo "FAIL make-model"; exit 1; }
"$ls" make-data --out "$tmp/d.jsonl" --n 240 --min-len 40 --max-len 80 --vocab 1024 --force \
  >/dev/null 2>&1 || { echo "FAIL make-data"; exit 1; }
extra=(--hooks residual_post --pool none --checkpoint-every 1)
"$ls" run --model "$tmp/m" --data "$tmp/d.jsonl" --out "$tmp/ref.h5" "${extra[@]}" --threads 1 \
  --progress off --force >"$tmp/ref.log" 2>&1 || { echo "FAIL reference run"; exit 1; }
fit=(--nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --time=10)
sub() { # out log -> job id
  sbatch --parsable "${fit[@]}" -o "$2" "$root/cluster/slurm_cpu.sbatch" "$tmp/m" "$tmp/d.jsonl" "$1" \
    "${extra[@]}"
}
wait_job() { # id seconds
  for _ in $(seq 1 $(( $2 * 5 ))); do squeue -h -j "$1" 2>/dev/null | grep -q . || return 0; sleep 0.2; done
  return 1
}
# 1. the template as shipped, 2 tasks
j=$(sub "$tmp/a.h5" "$tmp/a.log")
if wait_job "$j" 120 && [ "$(status_of "$tmp/a.h5")" = complete ] && grep -q "2 ranks" "$tmp/a.log"; then
  if msg=$(same_file "$tmp/ref.h5" "$tmp/a.h5"); then ok "sbatch slurm_cpu.sbatch, 2 tasks: bit-identical to 1 rank"
  else bad "2 tasks: $msg"; fi
else bad "sbatch job $j: $(grep -v '^  \|^plan\|^layer' "$tmp/a.log" | tail -3 | tr '\n' ' ')"; fi
# 2. scancel --signal=TERM mid-run, then the same job again
j=$(sub "$tmp/b.h5" "$tmp/b1.log")
for _ in $(seq 1 300); do grep -q "^layer 2/8" "$tmp/b1.log" 2>/dev/null && break; sleep 0.1; done
scancel --signal=TERM "$j"
if wait_job "$j" 60 && grep -q "stopped by signal 15" "$tmp/b1.log" &&
   [ "$(status_of "$tmp/b.h5")" = partial ]; then
  ok "scancel --signal=TERM: checkpointed and stopped ($(grep -o 'after layer [0-9]* of 8' "$tmp/b1.log" | head -1)), file partial"
  j=$(sub "$tmp/b.h5" "$tmp/b2.log")
  if wait_job "$j" 120 && [ "$(status_of "$tmp/b.h5")" = complete ] && grep -q "resum" "$tmp/b2.log" &&
     msg=$(same_file "$tmp/ref.h5" "$tmp/b.h5"); then
    ok "resubmitted: resumed and completed, bit-identical to 1 rank"
  else bad "resubmission: ${msg:-} $(grep -v '^  \|^plan\|^layer' "$tmp/b2.log" | tail -3 | tr '\n' ' ')"; fi
else bad "scancel: $(grep -v '^  \|^plan\|^layer' "$tmp/b1.log" | tail -3 | tr '\n' ' ')"; fi
[ $fails -eq 0 ] && echo "all slurm checks passed" || { echo "$fails slurm checks failed"; exit 1; }
