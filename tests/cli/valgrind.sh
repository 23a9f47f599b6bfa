#!/usr/bin/env bash
# valgrind memcheck on small sweeps: no invalid access, no uninitialised value used, no
# leak in layersweep's own code (reports from inside Open MPI / HDF5 / libgomp are
# suppressed by tests/valgrind.supp). Covers a raw sweep of every hook, a pooled
# sweep of a sharded Qwen2 model, an interrupted sweep (injected write failure) and
# its --resume. Needs a build without -march=native (valgrind lacks AVX-512).
set -u
ls=${LS_BIN:?set LS_BIN}
fx=${LS_FIXTURES:?set LS_FIXTURES}
tmp=$(mktemp -d "${LS_TEST_TMP:-/tmp}/valgrind.XXXXXX")
supp=$(dirname "$0")/../valgrind.supp
vg=(valgrind -q --suppressions="$supp" --leak-check=full --errors-for-leak-kinds=definite
    --error-exitcode=99 --num-callers=30)
export OMP_NUM_THREADS=1
# no restart for other OpenBLAS kernels (kernels/cpu/ops_cpu.c): valgrind must see the run
export LS_BLAS_CORE=keep OMP_WAIT_POLICY=passive # no restart under valgrind (ops_cpu.c preinit)
fails=0
check() { # name expected-exit command...
  local name=$1 want=$2; shift 2
  "${vg[@]}" "$@" >"$tmp/out.log" 2>&1
  local rc=$?
  if [ "$rc" = 99 ] || grep -q "==[0-9]*== [A-Z]" "$tmp/out.log"; then
    echo "FAIL $name: valgrind reported errors"; grep "==[0-9]*==" "$tmp/out.log" | head -n 40
    fails=$((fails + 1))
  elif [ "$rc" != "$want" ]; then
    echo "FAIL $name: exit $rc, expected $want"; tail -n 5 "$tmp/out.log"; fails=$((fails + 1))
  else
    echo "PASS $name"
  fi
}
check "raw sweep, all hooks" 0 "$ls" run --model "$fx/llama_gqa_f32" --data "$fx/prompts.jsonl" \
  --out "$tmp/a.h5" --hooks all --pool none --progress off --threads 1
check "pooled sweep, sharded qwen2" 0 "$ls" run --model "$fx/qwen2_bias_sharded" \
  --data "$fx/prompts.jsonl" --out "$tmp/b.h5" --hooks residual_post,final_norm --pool mean \
  --microbatch-tokens 20 --progress off --threads 1
LS_FAULT_WRITE_LAYER=2 check "interrupted sweep" 1 "$ls" run --model "$fx/mistral_window" \
  --data "$fx/prompts.jsonl" --out "$tmp/c.h5" --hooks all --checkpoint-every 1 --progress off --threads 1
check "resumed sweep" 0 "$ls" run --model "$fx/mistral_window" --data "$fx/prompts.jsonl" \
  --out "$tmp/c.h5" --hooks all --checkpoint-every 1 --resume --progress off --threads 1
check "bad model" 1 "$ls" run --model "$tmp" --data "$fx/prompts.jsonl" --out "$tmp/d.h5" --progress off
check "make-model" 0 "$ls" make-model --out "$tmp/m" --hidden 64 --layers 2 --heads 4 --kv-heads 2 \
  --vocab 128 --shards 2
rm -rf "$tmp"
[ "$fails" = 0 ]
