#!/usr/bin/env bash
# tests/cuda_emu/cli_emu.sh (CTest: emu.cli): the layersweep command line built against
# the emulated CUDA runtime (layersweep_emu: the real engine and the real CUDA backend,
# kernels under the SIMT emulator; see emu_runtime.cpp). A logic test of the CUDA paths
# of the engine that test_fixtures does not reach, each compared with the CPU backend's
# file of the same binary (h5diff -d 1e-4 on every captured hook, --dtype float32):
#   - --preload-weights (every layer broadcast and converted before the layer loop), on
#     1 rank and under mpirun -np 2 (the NCCL broadcast path of rank 1);
#   - --checkpoint-every 1 (the residual stream copied from the device at each layer);
#   - --verify 3 --verify-strict on 1 and 2 ranks: the CUDA backend's layers against the CPU
#     oracle (/verify/max_rel_error below 1e-4 everywhere);
#   - a write failure injected at the last layer (LS_FAULT_WRITE_LAYER) after
#     checkpoints, then --resume (the checkpoint copied back to the device), with the
#     residual stream on the device, in host memory (LS_TEST_RESIDUAL_ON_HOST=1) and in a
#     spill file staged through page-locked slots (LS_TEST_SPILL=1).
# The emulator aborts with a message on any misuse of the CUDA API it sees.
# env: LS_EMU_BIN (layersweep_emu), LS_FIXTURES (tests/fixtures), LS_TEST_TMP (scratch).
set -u
ls=${LS_EMU_BIN:?set LS_EMU_BIN to the layersweep_emu binary}
: "${LS_FIXTURES:=$(cd "$(dirname "${BASH_SOURCE[0]}")/../fixtures" && pwd)}"
mkdir -p "${LS_TEST_TMP:-/tmp}"
tmp=$(mktemp -d "${LS_TEST_TMP:-/tmp}/cli_emu.XXXXXX") || exit 1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
MPIRUN=(mpirun --oversubscribe --allow-run-as-root -np 2)
data="$LS_FIXTURES/prompts.jsonl"
fails=0 passes=0
pass() { passes=$((passes + 1)); echo "PASS $1"; }
fail() { fails=$((fails + 1)); echo "FAIL $1: $2"; }
status_of() { h5dump -a /status "$1" 2>/dev/null | sed -n 's/.*(0): "\(.*\)".*/\1/p'; }
# file ref -> 0 if every hook dataset of ref is in file, within 1e-4
same_as() {
  local d
  for d in residual_pre attn_out mlp_out residual_post final_norm; do
    h5diff -q -d 1e-4 "$2" "$1" "/$d" "/$d" >/dev/null 2>&1 || {
      echo "/$d differs by more than 1e-4: $(h5diff -d 1e-4 "$2" "$1" "/$d" "/$d" 2>&1 | tail -n 2 | tr '\n' ' ')"
      return 1
    }
  done
}
check() { # name rc out ref log
  local msg
  if [ "$2" != 0 ]; then fail "$1" "exit status $2: $(grep -v '^layer\|^plan\|^  ' "$5" | tail -n 4)"; return; fi
  if [ "$(status_of "$3")" != complete ]; then fail "$1" "status is not complete"; return; fi
  if msg=$(same_as "$3" "$4"); then pass "$1"; else fail "$1" "$msg"; fi
}

for model in llama_gqa_f32 qwen2_bias_sharded; do
  args=(--model "$LS_FIXTURES/$model" --data "$data" --hooks all --layers all --pool none
        --dtype float32 --microbatch-tokens 20 --force)
  ref="$tmp/${model}_cpu.h5"
  timeout 120 "$ls" run "${args[@]}" --backend cpu --out "$ref" >"$tmp/ref.log" 2>&1 ||
    { fail "$model: CPU reference" "$(tail -n 3 "$tmp/ref.log")"; continue; }

  out="$tmp/${model}_preload.h5"
  timeout 300 "$ls" run "${args[@]}" --backend cuda --preload-weights --out "$out" >"$tmp/log" 2>&1
  check "$model: --backend cuda --preload-weights" $? "$out" "$ref" "$tmp/log"

  out="$tmp/${model}_preload_np2.h5"
  timeout 300 "${MPIRUN[@]}" "$ls" run "${args[@]}" --backend cuda --preload-weights \
    --out "$out" >"$tmp/log" 2>&1
  check "$model: --backend cuda --preload-weights, mpirun -np 2" $? "$out" "$ref" "$tmp/log"

  out="$tmp/${model}_ckpt.h5"
  timeout 300 "$ls" run "${args[@]}" --backend cuda --checkpoint-every 1 --out "$out" >"$tmp/log" 2>&1
  rc=$?
  if [ $rc = 0 ] && ! grep -q "checkpoints: [1-9][0-9]* taken" "$tmp/log"; then
    fail "$model: --backend cuda --checkpoint-every 1" "no checkpoint taken"
  elif [ $rc = 0 ] && [ -e "$out.ckpt" ]; then
    fail "$model: --backend cuda --checkpoint-every 1" "checkpoint left behind after a complete run"
  else
    check "$model: --backend cuda --checkpoint-every 1" $rc "$out" "$ref" "$tmp/log"
  fi

  # --verify: the CUDA backend's rows of 3 prompts at every layer against the CPU oracle
  # (1 and 2 ranks: the gather), within the float32 tolerance, none missing
  for np in 1 2; do
    name="$model: --backend cuda --verify 3, $np rank(s)"
    out="$tmp/${model}_verify$np.h5"
    launch=()
    [ $np = 2 ] && launch=("${MPIRUN[@]}")
    timeout 300 "${launch[@]}" "$ls" run "${args[@]}" --backend cuda --verify 3 --verify-strict \
      --out "$out" >"$tmp/log" 2>&1
    rc=$?
    errs=$(h5dump -d /verify/max_rel_error "$out" 2>/dev/null | sed -n '/DATA {/,/}/p' | head -n -1 |
           sed -n 's/^ *([0-9]*,[0-9]*): *//p' | tr ',' '\n' | sed '/^ *$/d')
    if [ $rc != 0 ]; then fail "$name" "exit status $rc: $(grep -v '^layer\|^plan\|^  ' "$tmp/log" | tail -n 3)"
    elif [ -z "$errs" ] || ! awk '{ if (!($1 + 0 >= 0 && $1 + 0 < 1e-4) || $1 ~ /nan/) bad = 1 } END { exit bad }' <<<"$errs"; then
      fail "$name" "max_rel_error not all in [0, 1e-4): $(tr '\n' ' ' <<<"$errs")"
    else
      check "$name (worst $(sort -g <<<"$errs" | tail -n 1))" $rc "$out" "$ref" "$tmp/log"
    fi
  done

  for where in device host spill; do
    env=()
    [ $where = host ] && env=(LS_TEST_RESIDUAL_ON_HOST=1)
    [ $where = spill ] && env=(LS_TEST_SPILL=1) # a spill file, through page-locked slots
    name="$model: write failure at layer 2, then --resume (residual stream on the $where)"
    out="$tmp/${model}_resume_$where.h5"
    env "${env[@]}" LS_FAULT_WRITE_LAYER=2 timeout 300 "$ls" run "${args[@]}" --backend cuda \
      --checkpoint-every 1 --out "$out" >"$tmp/log1" 2>&1
    rc=$?
    if [ $rc = 0 ] || ! grep -q "injected write failure at layer 2" "$tmp/log1" ||
       [ "$(status_of "$out")" = complete ]; then
      fail "$name" "the injected failure did not stop the run (rc $rc)"
      continue
    fi
    env "${env[@]}" timeout 300 "$ls" run "${args[@]}" --backend cuda --checkpoint-every 1 --resume \
      --out "$out" >"$tmp/log" 2>&1
    rc=$?
    if [ $rc = 0 ] && ! grep -q "from the checkpoint before layer 2" "$tmp/log"; then
      fail "$name" "did not resume from the checkpoint before layer 2"
    elif [ $where = spill ] && ! grep -q "residual stream spilled to" "$tmp/log"; then
      fail "$name" "the resumed run did not spill"
    else
      check "$name" $rc "$out" "$ref" "$tmp/log"
    fi
  done
done

echo "cli_emu: $passes passed, $fails failed"
[ $fails = 0 ] && rm -rf "$tmp"
[ $fails = 0 ]
