#!/usr/bin/env bash
# tests/cli/spill.sh (CTest: cli.spill): the residual stream beyond memory (CPU backend).
# A made model over a dataset whose residual stream (about 48 MiB) dominates the
# sweep's host memory; --memory-limit set from the plan's own numbers so that the stream
# cannot stay in memory but everything else fits. Every spilled file must equal the
# in-memory run's bit for bit:
#   - the plan decides: no spill with room, spill below it, refusal (one line, no output)
#     when even the spilled sweep cannot fit; it measures --spill-dir's disk and predicts
#     the spill's I/O, which the summary compares;
#   - 1 and 2 ranks, O_DIRECT and buffered (LS_SPILL_DIRECT=0) I/O, every hook of every
#     layer raw (--pool none, the final norm too) on a fixture model;
#   - an injected spill write failure: one error line, a partial file, and --resume
#     (spilled) completes it; a checkpoint taken spilled resumed in memory and one taken in
#     memory resumed spilled, and elastically (1 -> 2 ranks); kill -9 mid-run, resumed;
#   - nothing left in --spill-dir; a --spill-dir beside the model or unwritable, or too
#     small (a 1 MiB tmpfs, where mounting is allowed) refused in one line.
# env: LS_BIN (layersweep binary), LS_FIXTURES, LS_TEST_TMP (scratch dir)
set -u
ls=${LS_BIN:?set LS_BIN}
: "${LS_FIXTURES:=$(cd "$(dirname "${BASH_SOURCE[0]}")/../fixtures" && pwd)}"
mkdir -p "${LS_TEST_TMP:-/tmp}"
tmp=$(mktemp -d "${LS_TEST_TMP:-/tmp}/spill.XXXXXX") || exit 1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
fails=0 passes=0
pass() { passes=$((passes + 1)); echo "PASS $1"; }
fail() { fails=$((fails + 1)); echo "FAIL $1: $2"; }
status_of() { h5dump -a /status "$1" 2>/dev/null | sed -n 's/.*(0): "\(.*\)".*/\1/p'; }
same() { # ref file -> 0 if every activation and sample dataset of ref is equal in file
  local d
  for d in residual_pre attn_out mlp_out residual_post final_norm samples/length samples/offsets; do
    h5dump -d "/$d" -H "$1" >/dev/null 2>&1 || continue
    h5diff -q -d 0 "$1" "$2" "/$d" "/$d" >/dev/null 2>&1 || { echo "/$d differs"; return 1; }
  done
}
spilled() { grep -q "residual stream spilled to" "$1"; }
errline() { grep "error:" "$1" | head -n 2 | tr '\n' ' '; }

$ls make-model --out "$tmp/model" --hidden 128 --intermediate 256 --layers 4 --heads 4 \
  --kv-heads 2 --vocab 512 --dtype bf16 --force 2>/dev/null
$ls make-data --out "$tmp/data.jsonl" --n 4000 --min-len 1 --max-len 48 --vocab 512 --force 2>/dev/null
args=(--model "$tmp/model" --data "$tmp/data.jsonl" --hooks all --layers all --pool mean
      --microbatch-tokens 2048 --progress lines)
ref="$tmp/ref.h5"
$ls run "${args[@]}" --out "$ref" --checkpoint-every off 2>"$tmp/ref.log" ||
  { echo "FAIL reference run: $(tail -n 3 "$tmp/ref.log")"; exit 1; }

# ---- the plan's decision, from its own numbers -------------------------------------------
gib() { sed -n 's/.*memory per rank <= \([0-9.]*\) GiB.*/\1/p' "$1" | head -n 1; }
$ls plan "${args[@]}" --out "$tmp/p.h5" --memory-limit 64G >"$tmp/plan_room.log" 2>&1
room=$(gib "$tmp/plan_room.log")
# the stream: real tokens x hidden x 4 bytes (compact) or padded rows (align 1): the limit
# takes half of it away, which the ring of three microbatch slots (3 x 1 MiB) stays under
tokens=$(sed -n 's/.* prompts, \([0-9]*\) tokens, .*/\1/p' "$tmp/plan_room.log" | head -n 1)
limit=$(awk -v g="$room" -v t="$tokens" 'BEGIN { printf "%d", g * 1073741824 - t * 128 * 4 / 2 }')
if [ -z "$room" ] || [ -z "$tokens" ] || spilled "$tmp/plan_room.log" ||
   grep -q "spilled on" "$tmp/plan_room.log"; then
  fail "plan with room" "spilled, or no memory line: $(grep 'plan:' "$tmp/plan_room.log" | tail -n 2)"
else
  pass "plan with --memory-limit 64G: the stream stays in memory ($room GiB per rank)"
fi
$ls plan "${args[@]}" --out "$tmp/p.h5" --memory-limit "$limit" >"$tmp/plan_tight.log" 2>&1
if [ $? = 0 ] && grep -q "residual stream spilled on 1 of 1 ranks .*--memory-limit" "$tmp/plan_tight.log"; then
  pass "plan with --memory-limit $limit (room less half the stream): spilled"
else
  fail "plan below room" "$(grep 'plan:\|error' "$tmp/plan_tight.log" | tail -n 2)"
fi
$ls run "${args[@]}" --out "$tmp/small.h5" --memory-limit 2M >"$tmp/small.log" 2>&1
rc=$?
if [ $rc != 0 ] && [ "$(grep -c 'error:' "$tmp/small.log")" = 1 ] &&
   grep -q "host memory but may use .*--memory-limit" "$tmp/small.log" && [ ! -e "$tmp/small.h5" ]; then
  pass "--memory-limit 2M: refused by the plan in one line, no output"
else
  fail "--memory-limit 2M" "rc $rc, $(errline "$tmp/small.log"), output $(ls "$tmp/small.h5" 2>&1)"
fi

# ---- spilled runs equal the in-memory run ---------------------------------------------------
run_case() { # name out launcher... -- extra args
  local name=$1 out=$2; shift 2
  local launch=()
  while [ "$1" != -- ]; do launch+=("$1"); shift; done
  shift
  timeout 300 "${launch[@]}" "$ls" run "${args[@]}" --out "$out" --checkpoint-every off "$@" \
    >"$tmp/case.log" 2>&1
  local rc=$? msg
  if [ $rc != 0 ] || [ "$(status_of "$out")" != complete ]; then
    fail "$name" "exit $rc: $(errline "$tmp/case.log")"
  elif ! spilled "$tmp/case.log" || ! grep -q "spilled residual stream (" "$tmp/case.log"; then
    fail "$name" "not spilled, or no spill line in the summary"
  elif ! grep -q "plan:   --spill-dir [0-9.]* GB/s" "$tmp/case.log" ||
       ! grep -q "predicted vs measured:.*; spill I/O [0-9.]* vs [0-9.]*" "$tmp/case.log"; then
    fail "$name" "the plan's time model has no spill (probe line or predicted vs measured)"
  elif ! msg=$(same "$ref" "$out"); then
    fail "$name" "$msg"
  elif [ -n "$(ls -A "$out.spill" 2>/dev/null)" ]; then
    fail "$name" "files left in $out.spill"
  else
    pass "$name: bit-identical to the in-memory run ($(grep -o 'spilled residual stream.*' "$tmp/case.log" | cut -c1-150))"
  fi
}
run_case "spilled, 1 rank, O_DIRECT" "$tmp/s1.h5" -- --memory-limit "$limit"
grep -q "O_DIRECT" "$tmp/case.log" || echo "NOTE: the scratch file system refused O_DIRECT (buffered I/O was used)"
LS_SPILL_DIRECT=0 run_case "spilled, 1 rank, buffered I/O" "$tmp/s1b.h5" -- --memory-limit "$limit"
grep -q "buffered, dropped" "$tmp/case.log" || fail "LS_SPILL_DIRECT=0" "not buffered"
run_case "spilled, mpirun -np 2" "$tmp/s2.h5" mpirun -np 2 -- --memory-limit "$((limit / 2))"

# every hook raw, the final norm too, on a fixture model (the test switch spills it)
fx=(--model "$LS_FIXTURES/llama_gqa_f32" --data "$LS_FIXTURES/prompts.jsonl" --hooks all
    --layers all --pool none --microbatch-tokens 20 --force --checkpoint-every off)
$ls run "${fx[@]}" --out "$tmp/fx_ref.h5" >"$tmp/fx.log" 2>&1
for np in 1 3; do
  launch=()
  [ $np = 3 ] && launch=(mpirun -np 3)
  LS_TEST_SPILL=1 timeout 300 "${launch[@]}" "$ls" run "${fx[@]}" --out "$tmp/fx_s$np.h5" \
    >"$tmp/fx_s.log" 2>&1
  rc=$?
  if [ $rc = 0 ] && spilled "$tmp/fx_s.log" && msg=$(same "$tmp/fx_ref.h5" "$tmp/fx_s$np.h5"); then
    pass "fixture llama_gqa_f32, --pool none --hooks all, $np rank(s), spilled: bit-identical"
  else
    fail "fixture spilled, $np rank(s)" "rc $rc ${msg:-} $(errline "$tmp/fx_s.log")"
  fi
done

# ---- failures and resume ---------------------------------------------------------------------
out="$tmp/fault.h5"
# the failing write is in layer 2 (after two checkpoints)
n_mb=$(sed -n 's/.*(rank 0: \([0-9]*\) microbatches.*/\1/p' "$tmp/plan_tight.log" | head -n 1)
LS_FAULT_SPILL_WRITE=$((2 * ${n_mb:-1} + 3)) $ls run "${args[@]}" --out "$out" --memory-limit "$limit" \
  --checkpoint-every 1 >"$tmp/fault.log" 2>&1
rc=$?
if [ $rc != 0 ] && [ "$(grep -c 'error:' "$tmp/fault.log")" = 1 ] &&
   grep -q "cannot write the spilled residual stream .*injected" "$tmp/fault.log" &&
   [ "$(status_of "$out")" = partial ]; then
  $ls run "${args[@]}" --out "$out" --memory-limit "$limit" --checkpoint-every 1 --resume \
    >"$tmp/fault2.log" 2>&1
  if [ $? = 0 ] && grep -q "before layer 2" "$tmp/fault2.log" && spilled "$tmp/fault2.log" &&
     msg=$(same "$ref" "$out"); then
    pass "a spill write failure: one error line, partial file; resumed spilled, bit-identical"
  else
    fail "spill write failure resume" "$(errline "$tmp/fault2.log") ${msg:-}"
  fi
else
  fail "spill write failure" "rc $rc, $(grep -c 'error:' "$tmp/fault.log") error lines: $(errline "$tmp/fault.log")"
fi

# a checkpoint taken spilled, resumed in memory; one taken in memory, resumed spilled (and
# on 2 ranks: elastic)
resume_case() { # name first-args -- resume-launch... -- resume-args
  local name=$1 out="$tmp/rs_$RANDOM.h5"; shift
  local first=() launch=() second=()
  while [ "$1" != -- ]; do first+=("$1"); shift; done
  shift
  while [ "$1" != -- ]; do launch+=("$1"); shift; done
  shift
  second=("$@")
  LS_FAULT_WRITE_LAYER=2 $ls run "${args[@]}" --out "$out" --checkpoint-every 1 "${first[@]}" \
    >"$tmp/rs1.log" 2>&1
  if ! grep -q "injected write failure at layer 2" "$tmp/rs1.log"; then
    fail "$name" "the first run did not stop at layer 2: $(errline "$tmp/rs1.log")"; return
  fi
  timeout 300 "${launch[@]}" "$ls" run "${args[@]}" --out "$out" --checkpoint-every 1 --resume \
    "${second[@]}" >"$tmp/rs2.log" 2>&1
  local rc=$? msg
  if [ $rc = 0 ] && grep -q "before layer 2" "$tmp/rs2.log" && msg=$(same "$ref" "$out"); then
    pass "$name: bit-identical"
  else
    fail "$name" "rc $rc $(errline "$tmp/rs2.log") ${msg:-}"
  fi
}
resume_case "checkpoint taken spilled, resumed in memory" --memory-limit "$limit" -- -- --memory-limit 64G
resume_case "checkpoint taken in memory, resumed spilled" --memory-limit 64G -- -- --memory-limit "$limit"
resume_case "checkpoint taken spilled on 1 rank, resumed spilled on 2" --memory-limit "$limit" -- \
  mpirun -np 2 -- --memory-limit "$((limit / 2))"

# kill -9 while spilled (after layer 2, a few ms into layer 3: the checkpoint before layer 2
# is committed, the next one may be being written), then resume
out="$tmp/kill.h5"
$ls run "${args[@]}" --out "$out" --memory-limit "$limit" --checkpoint-every 1 >"$tmp/kill.log" 2>&1 &
job=$!
for _ in $(seq 1 1500); do grep -q "^layer 2/" "$tmp/kill.log" && break; sleep 0.02; done
sleep "0.0$((RANDOM % 10))"
kill -9 $job 2>/dev/null
wait $job 2>/dev/null
$ls run "${args[@]}" --out "$out" --memory-limit "$limit" --checkpoint-every 1 --resume >"$tmp/kill2.log" 2>&1
rc=$?
if [ $rc = 0 ] && grep -q "resuming" "$tmp/kill2.log" && msg=$(same "$ref" "$out") &&
   [ -z "$(ls -A "$out.spill" 2>/dev/null)" ]; then
  pass "kill -9 while spilled, resumed: bit-identical, nothing left in the spill directory"
else
  fail "kill -9 while spilled" "rc $rc $(errline "$tmp/kill2.log") ${msg:-}"
fi

# ---- bad --spill-dir ----------------------------------------------------------------------------
bad_dir() { # name expected-regex dir
  $ls run "${args[@]}" --out "$tmp/bad.h5" --force --memory-limit "$limit" --spill-dir "$3" \
    >"$tmp/bad.log" 2>&1
  local rc=$?
  if [ $rc != 0 ] && [ "$(grep -c 'error:' "$tmp/bad.log")" = 1 ] && grep -q -- "$2" "$tmp/bad.log" &&
     [ "$(status_of "$tmp/bad.h5")" != complete ]; then
    pass "$1: refused in one line"
  else
    fail "$1" "rc $rc: $(errline "$tmp/bad.log")"
  fi
}
bad_dir "--spill-dir is the model's directory" "spill-dir" "$tmp/model"
bad_dir "--spill-dir unwritable" "/proc/ls-spill-test" /proc/ls-spill-test
mkdir -p "$tmp/tiny"
if mount -t tmpfs -o size=1m tmpfs "$tmp/tiny" 2>/dev/null; then
  bad_dir "--spill-dir on a 1 MiB tmpfs" "spilled residual stream needs about .* free" "$tmp/tiny"
  umount "$tmp/tiny"
else
  echo "NOTE: cannot mount a tmpfs here; the too-small --spill-dir case is not run"
fi

echo "cli.spill: $passes passed, $fails failed"
[ $fails = 0 ] && rm -rf "$tmp"
[ $fails = 0 ]
