#!/usr/bin/env bash
# tests/cli/reduce.sh (CTest: cli.reduce): --reduce, --no-store, --project and steering
# with a previous run's diff-of-means (README "Reductions"), on a made model:
#   1. /reductions bit-identical (h5diff, exact) at 1, 2 and 3 ranks and three microbatch
#      sizes, token rows (--pool none) and pooled rows (last_token);
#   2. --no-store: the same /reductions, no activation dataset;
#   3. a run stopped by a write failure at layer 2 and resumed: the same /reductions;
#   4. --project on pass 1's per-layer PCA components: stored [layers, rows, K];
#   5. pass 2 steers with pass 1's diff_of_means: the steered layers' rows change, the
#      earlier ones do not;
#   7. --verify against the CPU oracle at 1 and 3 ranks; an injected error warns or stops;
#   6. with a Python that has numpy and h5py (LS_TEST_PYTHON, else python3 if it has
#      them): every reduction and projection against numpy on the stored rows
#      (tests/cli/check_reduce.py; CI runs it on the real checkpoint, tests/real/run.sh).
# env: LS_BIN, LS_TEST_TMP
set -u
ls=${LS_BIN:?set LS_BIN}
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d "${LS_TEST_TMP:-/tmp}/reduce.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMP_NUM_THREADS=1
fails=0
ok() { echo "PASS $1"; }
bad() { echo "FAIL $1"; fails=$((fails + 1)); }
same() { # name a b: /reductions exactly equal
  if h5diff -r "$2" "$3" /reductions /reductions >"$tmp/diff.log" 2>&1; then ok "$1"
  else bad "$1 ($(grep -v DIMENSION_LIST "$tmp/diff.log" | head -3 | tr '\n' ' '))"; fi
}
"$ls" make-model --out "$tmp/m" --hidden 64 --intermediate 128 --layers 3 --heads 4 --kv-heads 2 \
  --vocab 256 --dtype f32 --force >/dev/null 2>&1 || { echo "FAIL make-model"; exit 1; }
"$ls" make-data --out "$tmp/d.jsonl" --n 60 --min-len 3 --max-len 24 --vocab 256 --force \
  >/dev/null 2>&1 || { echo "FAIL make-data"; exit 1; }
common=(--model "$tmp/m" --data "$tmp/d.jsonl" --progress off --force --checkpoint-every off)
red=(--hooks residual_pre,mlp_out,residual_post,final_norm --reduce mean,cov,pca:5,diffmeans)
sweep() { # np out args...
  local np=$1 out=$2; shift 2
  if [ "$np" = 1 ]; then "$ls" run "${common[@]}" --out "$out" "$@" >"$out.log" 2>&1
  else mpirun -np "$np" "$ls" run "${common[@]}" --out "$out" "$@" >"$out.log" 2>&1; fi
}
for pool in none last_token; do
  sweep 1 "$tmp/$pool.1.h5" "${red[@]}" --pool $pool || { bad "$pool np1 ($(tail -2 "$tmp/$pool.1.h5.log"))"; continue; }
  for np in 2 3; do
    mb=$((np * 11))
    if sweep $np "$tmp/$pool.$np.h5" "${red[@]}" --pool $pool --microbatch-tokens $mb; then
      same "$pool: /reductions at np $np, microbatches of $mb tokens == np 1" "$tmp/$pool.1.h5" "$tmp/$pool.$np.h5"
    else bad "$pool np$np ($(tail -2 "$tmp/$pool.$np.h5.log"))"; fi
  done
done
a=$tmp/none.1.h5
# 2. --no-store
if sweep 2 "$tmp/nostore.h5" "${red[@]}" --pool none --no-store; then
  same "--no-store: same /reductions" "$a" "$tmp/nostore.h5"
  if h5ls "$tmp/nostore.h5" | grep -qE '^(residual_post|mlp_out|final_norm) '; then bad "--no-store: activations stored"
  else ok "--no-store: no activation dataset"; fi
else bad "--no-store run ($(tail -2 "$tmp/nostore.h5.log"))"; fi
# 3. stopped at layer 2 by a write failure, resumed
LS_FAULT_WRITE_LAYER=2 "$ls" run --model "$tmp/m" --data "$tmp/d.jsonl" --progress off --force \
  --checkpoint-every 1 --out "$tmp/res.h5" "${red[@]}" --pool none >"$tmp/res1.log" 2>&1
rc1=$?
if [ $rc1 -ne 0 ] && "$ls" run --model "$tmp/m" --data "$tmp/d.jsonl" --progress off \
     --checkpoint-every 1 --out "$tmp/res.h5" "${red[@]}" --pool none --resume >"$tmp/res2.log" 2>&1 &&
   grep -q "resum" "$tmp/res2.log"; then
  same "resumed after a failure at layer 2: same /reductions" "$a" "$tmp/res.h5"
else bad "resume (first rc $rc1; $(tail -2 "$tmp/res2.log"))"; fi
# 4. --project on pass 1's components (per layer, found through the group's "layers")
proj="$a:/reductions/residual_post/pca_components"
if sweep 2 "$tmp/proj.h5" --hooks residual_post --pool none --project "$proj"; then
  dims=$(h5ls "$tmp/proj.h5/residual_post" | sed -n 's/.*Dataset {\(.*\)}.*/\1/p')
  rows=$(h5ls "$a/residual_post" | sed -n 's/.*Dataset {[0-9]*, \([0-9]*\),.*/\1/p')
  if [ "$dims" = "3, $rows, 5" ]; then ok "--project: residual_post stored [3, $rows, 5]"
  else bad "--project: residual_post is {$dims}, expected {3, $rows, 5}"; fi
else bad "--project run ($(tail -2 "$tmp/proj.h5.log"))"; fi
# 5. pass 2: steer layer 1 with pass 1's diff_of_means at layer 1 (index 1 of its layer axis)
cat >"$tmp/steer.json" <<JSON
[{"layer": 1, "hook": "residual_post", "op": "add", "alpha": 4.0, "positions": "all",
  "vector": {"file": "$a", "dataset": "/reductions/residual_post/diff_of_means", "index": 1}}]
JSON
if sweep 1 "$tmp/steer.h5" --hooks residual_post --pool none --steer "$tmp/steer.json"; then
  h5diff "$a" "$tmp/steer.h5" /residual_post /residual_post >"$tmp/sd.log" 2>&1; d=$?
  # layers 1 and 2 differ (the edit at layer 1's output), layer 0 is untouched
  if h5diff -p 0 "$a" "$tmp/steer.h5" /residual_post /residual_post >/dev/null 2>&1; then
    bad "steering with diff_of_means changed nothing"
  elif grep -q "\[ 0 " "$tmp/sd.log"; then bad "steering at layer 1 changed layer 0's rows"
  elif [ $d -eq 1 ]; then ok "pass 2 steered with pass 1's diff_of_means: layers 1-2 changed, layer 0 not"
  else bad "steer compare ($(head -2 "$tmp/sd.log"))"; fi
else bad "steer run ($(tail -2 "$tmp/steer.h5.log"))"; fi
# 7. --verify: every layer of 5 sampled prompts against the CPU oracle (1 and 3 ranks:
# rank 0 gathers the rows), below the float32 tolerance; an injected 1% error at layer 1
# (LS_FAULT_VERIFY_LAYER) warns, and stops the run with --verify-strict
verrs() { h5dump -d /verify/max_rel_error "$1" 2>/dev/null | sed -n '/DATA {/,/}/p' | head -n -1 |
          sed -n 's/^ *([0-9]*,[0-9]*): *//p' | tr ',' '\n' | sed '/^ *$/d'; }
for np in 1 3; do
  if sweep $np "$tmp/verify$np.h5" --hooks residual_post --verify 5 --verify-strict; then
    e=$(verrs "$tmp/verify$np.h5")
    if [ "$(wc -l <<<"$e")" = 9 ] && awk '{ if (!($1 + 0 >= 0 && $1 + 0 < 1e-4) || $1 ~ /nan/) b = 1 } END { exit b }' <<<"$e"; then
      ok "--verify 5 at np $np: 3 layers x 3 hooks within 1e-4 (worst $(sort -g <<<"$e" | tail -n 1))"
    else bad "--verify at np $np: $(tr '\n' ' ' <<<"$e")"; fi
  else bad "--verify run np $np ($(tail -2 "$tmp/verify$np.h5.log"))"; fi
done
if LS_FAULT_VERIFY_LAYER=1 sweep 2 "$tmp/vf.h5" --hooks residual_post --verify 5 &&
   grep -q "warning: --verify: layer 1 residual_post" "$tmp/vf.h5.log"; then ok "--verify: an injected 1% error warns"
else bad "--verify: no warning for an injected error ($(tail -2 "$tmp/vf.h5.log"))"; fi
if ! LS_FAULT_VERIFY_LAYER=1 sweep 2 "$tmp/vfs.h5" --hooks residual_post --verify 5 --verify-strict &&
   grep -q "error: --verify-strict: layer 1 residual_post" "$tmp/vfs.h5.log" &&
   h5dump -a /status "$tmp/vfs.h5" | grep -q partial; then ok "--verify-strict: an injected error stops the run, file partial"
else bad "--verify-strict did not stop the run ($(tail -2 "$tmp/vfs.h5.log"))"; fi
# 6. numpy
py=${LS_TEST_PYTHON:-python3}
if "$py" -c 'import numpy, h5py' 2>/dev/null; then
  for f in "$a" "$tmp/last_token.1.h5"; do
    if "$py" "$here/check_reduce.py" "$f" >"$tmp/np.log" 2>&1; then ok "$(tail -1 "$tmp/np.log")"
    else bad "$(tail -1 "$tmp/np.log")"; fi
  done
  if "$py" "$here/check_reduce.py" "$a" --project "$tmp/proj.h5" >"$tmp/np.log" 2>&1; then ok "$(tail -1 "$tmp/np.log")"
  else bad "$(tail -1 "$tmp/np.log")"; fi
else
  echo "NOTE numpy check not run here ($py has no numpy/h5py; tests/real/run.sh runs it in CI)"
fi
[ $fails -eq 0 ] && echo "all reduce checks passed" || { echo "$fails reduce checks failed"; exit 1; }
