#!/usr/bin/env bash
# Fault tests of --resume (CPU backend, under mpirun): a sweep is killed (kill -9 of
# rank 0 or of another rank, under -np 2 and 3) at many points and resumed each time;
# resumed with another rank count (elastic: 2 -> 3, 3 -> 1, 1 -> 2);
# stopped by SIGTERM (as Slurm does before the time limit); hit by a write failure
# (injected, and a real ENOSPC on a small tmpfs where mounting one is allowed). Every
# time the final file's activation and sample datasets must equal an uninterrupted
# run's bit for bit, and no file may say "complete" before it is.
# env: LS_BIN (layersweep binary), LS_TEST_TMP (scratch dir)
set -u
ls=${LS_BIN:?set LS_BIN}
tmp=$(mktemp -d "${LS_TEST_TMP:-/tmp}/resume.XXXXXX")
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1
export OMP_NUM_THREADS=1
fails=0 passes=0
pass() { passes=$((passes + 1)); echo "PASS $1"; }
fail() { fails=$((fails + 1)); echo "FAIL $1: $2"; }
status_of() { h5dump -a /status "$1" 2>/dev/null | sed -n 's/.*(0): "\(.*\)".*/\1/p'; }
same_as_ref() { # file -> 0 if every activation and sample dataset equals the reference
  local d
  for d in residual_pre attn_out mlp_out residual_post final_norm samples/length samples/label samples/id; do
    h5diff -q -d 0 "$tmp/ref.h5" "$1" "/$d" "/$d" >/dev/null 2>&1 || { echo "dataset /$d differs"; return 1; }
  done
}

$ls make-model --out "$tmp/model" --hidden 128 --intermediate 320 --layers 12 --heads 4 \
  --kv-heads 2 --vocab 512 --dtype bf16 --force 2>/dev/null
$ls make-data --out "$tmp/data.jsonl" --n 1200 --min-len 1 --max-len 48 --vocab 512 --force 2>/dev/null
args=(--model "$tmp/model" --data "$tmp/data.jsonl" --hooks all --layers all --pool mean --progress lines)
$ls run "${args[@]}" --out "$tmp/ref.h5" --checkpoint-every off 2>"$tmp/ref.log" \
  || { echo "FAIL reference run"; cat "$tmp/ref.log"; exit 1; }

# pid of a given MPI rank of the sweep writing $1
rank_pid() {
  local out=$1 want=$2 p
  for p in $(pgrep -f "layersweep run .*--out $out"); do
    if tr '\0' '\n' </proc/$p/environ 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$want"; then
      echo "$p"; return
    fi
  done
}

# ---- kill -9 at many points, resume until complete ---------------------------------
kill_case() { # np victim-rank: killed after layers 1, 4, 7 and 10 (plus a random few ms,
  # so kills also land inside layers and checkpoint writes), then resumed to the end
  local np=$1 victim=$2 out="$tmp/kill_np$1_r$2.h5" rc pid kills=0 job k
  for k in 1 4 7 10 done; do
    timeout 120 mpirun -np "$np" "$ls" run "${args[@]}" --out "$out" --resume \
      --checkpoint-every 1 >"$tmp/kill.log" 2>&1 &
    job=$!
    if [ "$k" != done ]; then
      for _ in $(seq 1 600); do grep -q "^layer $k/" "$tmp/kill.log" && break; sleep 0.02; done
      sleep "0.0$((RANDOM % 10))"
      pid=$(rank_pid "$out" "$victim")
      [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null && kills=$((kills + 1))
    fi
    wait "$job"; rc=$?
    if [ "$k" != done ]; then
      # a run killed after it marked the file complete (while exiting) may leave it so,
      # but then the file must really be complete
      if [ "$(status_of "$out")" = complete ] && ! msg=$(same_as_ref "$out"); then
        fail "kill np=$np rank=$victim" "file says complete but $msg"; return
      fi
      continue
    fi
    if [ "$rc" != 0 ] || [ "$(status_of "$out")" != complete ]; then
      fail "kill np=$np rank=$victim" "final resume: exit $rc, $(grep error "$tmp/kill.log" | head -n 2)"
    elif ! msg=$(same_as_ref "$out"); then
      fail "kill np=$np rank=$victim" "$msg"
    elif [ -e "$out.ckpt" ]; then
      fail "kill np=$np rank=$victim" "checkpoint left behind"
    elif [ "$kills" -lt 3 ]; then
      fail "kill np=$np rank=$victim" "only $kills kill(s) landed"
    else
      pass "kill -9 rank $victim under -np $np after layers 1, 4, 7, 10: resumed to a bit-identical file"
    fi
  done
}
kill_case 2 0
kill_case 2 1
kill_case 3 0
kill_case 3 2

# ---- SIGTERM to every rank (what Slurm sends): clean stop, then resume ------------------
out="$tmp/term.h5"
mpirun -np 2 "$ls" run "${args[@]}" --out "$out" --checkpoint-every 4 >"$tmp/term.log" 2>&1 &
job=$!
for _ in $(seq 1 100); do grep -q "layer 2/" "$tmp/term.log" && break; sleep 0.05; done
for r in 0 1; do p=$(rank_pid "$out" "$r"); [ -n "$p" ] && kill -TERM "$p"; done
wait "$job"; rc=$?
if [ "$rc" != 0 ] && grep -q "stopped by signal 15 .*--resume" "$tmp/term.log" &&
   [ "$(status_of "$out")" = partial ] && [ -f "$out.ckpt/meta.json" ]; then
  mpirun -np 2 "$ls" run "${args[@]}" --out "$out" --checkpoint-every 4 --resume >"$tmp/term2.log" 2>&1
  if [ $? = 0 ] && grep -q "resuming" "$tmp/term2.log" && msg=$(same_as_ref "$out"); then
    pass "SIGTERM: checkpoint, message naming --resume, resumed bit-identical"
  else
    fail "SIGTERM resume" "$(tail -n 3 "$tmp/term2.log") ${msg:-}"
  fi
else
  fail "SIGTERM stop" "rc=$rc status=$(status_of "$out") log: $(grep -v '^layer' "$tmp/term.log" | tail -n 3)"
fi

# ---- a stuck rank (a lost node or link): the watchdog ends the job, resume continues ------
for victim in 1 0; do
  out="$tmp/stall$victim.h5"
  t0=$(date +%s)
  LS_FAULT_STALL_LAYER=5 LS_FAULT_STALL_RANK=$victim timeout 120 mpirun -np 2 -x LS_FAULT_STALL_LAYER \
    -x LS_FAULT_STALL_RANK "$ls" run "${args[@]}" --out "$out" --checkpoint-every 1 --stall-timeout 3 \
    >"$tmp/stall.log" 2>&1
  rc=$? dt=$(( $(date +%s) - t0 ))
  nerr=$(grep -c "error:" "$tmp/stall.log")
  if [ "$rc" != 0 ] && [ "$rc" != 124 ] && [ "$dt" -lt 60 ] && [ "$nerr" = 1 ] &&
     grep -q "no progress for .* layer 5.*; stall timeout 3 s" "$tmp/stall.log" &&
     grep -q "rank $victim was in loading the weights of layer 5, not waiting for other ranks" "$tmp/stall.log" &&
     [ "$(status_of "$out")" = partial ]; then
    mpirun -np 2 "$ls" run "${args[@]}" --out "$out" --checkpoint-every 1 --resume >"$tmp/stall2.log" 2>&1
    if [ $? = 0 ] && grep -q "before layer 5" "$tmp/stall2.log" && msg=$(same_as_ref "$out"); then
      pass "rank $victim stuck at layer 5: the job ended in ${dt} s with one line naming it; resumed bit-identical"
    else
      fail "stall resume (rank $victim)" "$(tail -n 3 "$tmp/stall2.log") ${msg:-}"
    fi
  else
    fail "stall (rank $victim)" "rc=$rc after ${dt}s, $nerr error lines: $(grep -v '^layer' "$tmp/stall.log" | head -n 3 | tr '\n' '|')"
  fi
done

# ---- injected write failure (disk full), then resume -------------------------------------
out="$tmp/fault.h5"
LS_FAULT_WRITE_LAYER=7 mpirun -np 2 -x LS_FAULT_WRITE_LAYER "$ls" run "${args[@]}" --out "$out" \
  --checkpoint-every 1 >"$tmp/fault.log" 2>&1
rc=$?
nerr=$(grep -c "error:" "$tmp/fault.log")
if [ "$rc" != 0 ] && [ "$nerr" = 1 ] && grep -q "injected write failure at layer 7" "$tmp/fault.log" &&
   [ "$(status_of "$out")" = partial ]; then
  mpirun -np 2 "$ls" run "${args[@]}" --out "$out" --checkpoint-every 1 --resume >"$tmp/fault2.log" 2>&1
  if [ $? = 0 ] && grep -q "before layer 7" "$tmp/fault2.log" && msg=$(same_as_ref "$out"); then
    pass "injected write failure at layer 7: one error line, partial file, resumed from layer 7 bit-identical"
  else
    fail "fault resume" "$(tail -n 3 "$tmp/fault2.log") ${msg:-}"
  fi
else
  fail "fault stop" "rc=$rc errors=$nerr status=$(status_of "$out"): $(grep error "$tmp/fault.log" | head -n 3)"
fi

# ---- a MoE model: router_logits and /router_stats survive a stop and a resume --------------
# (the DeepSeek-V3 fixture: a dense layer, then MoE layers; the stats of the layers before the
# stop are written at its checkpoint)
fx=${LS_FIXTURES:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../fixtures" && pwd)}
margs=(--model "$fx/deepseek_v3_mla" --data "$fx/prompts.jsonl" --hooks all,router_logits --pool none
       --microbatch-tokens 40 --progress off)
mpirun -np 2 "$ls" run "${margs[@]}" --out "$tmp/moe_ref.h5" --checkpoint-every off >"$tmp/moe_ref.log" 2>&1
out="$tmp/moe_fault.h5"
LS_FAULT_WRITE_LAYER=2 mpirun -np 2 -x LS_FAULT_WRITE_LAYER "$ls" run "${margs[@]}" --out "$out" \
  --checkpoint-every 1 >"$tmp/moe_fault.log" 2>&1
mpirun -np 2 "$ls" run "${margs[@]}" --out "$out" --checkpoint-every 1 --resume >"$tmp/moe_fault2.log" 2>&1
rc=$?
ok=1 why=
[ "$rc" = 0 ] && grep -q "before layer 2" "$tmp/moe_fault2.log" || { ok=0; why="resume: rc=$rc $(tail -n 2 "$tmp/moe_fault2.log")"; }
for d in residual_post mlp_out router_logits router_stats/expert_rows; do
  h5diff -q -d 0 "$tmp/moe_ref.h5" "$out" "/$d" "/$d" >/dev/null 2>&1 || { ok=0; why="$why /$d differs"; }
done
if [ "$ok" = 1 ]; then
  pass "MoE (DeepSeek-V3 fixture): write failure at layer 2, resumed: activations, router_logits and router_stats bit-identical"
else
  fail "MoE resume" "$why"
fi

# ---- real ENOSPC on a small tmpfs (needs permission to mount) -----------------------------
mnt="$tmp/smallfs"
mkdir -p "$mnt"
if mount -t tmpfs -o size=96m tmpfs "$mnt" 2>/dev/null; then
  out="$mnt/full.h5"
  mpirun -np 2 "$ls" run "${args[@]}" --out "$out" --checkpoint-every 1 >"$tmp/full.log" 2>&1 &
  job=$!
  for _ in $(seq 1 200); do grep -q "layer 3/" "$tmp/full.log" && break; sleep 0.05; done
  dd if=/dev/zero of="$mnt/filler" bs=64k 2>/dev/null   # fill the disk while the sweep runs
  wait "$job"; rc=$?
  st=$(status_of "$out")
  if [ "$rc" != 0 ] && [ "$st" != complete ]; then
    rm -f "$mnt/filler"
    mpirun -np 2 "$ls" run "${args[@]}" --out "$out" --checkpoint-every 1 --resume >"$tmp/full2.log" 2>&1
    if [ $? = 0 ] && msg=$(same_as_ref "$out"); then
      pass "real ENOSPC mid-sweep: error, not complete; resumed after freeing space, bit-identical"
    else
      fail "ENOSPC resume" "$(grep -E 'error|resum' "$tmp/full2.log" | head -n 3) ${msg:-}"
    fi
  elif [ "$rc" = 0 ]; then
    echo "SKIPPED real ENOSPC: the sweep finished before the disk filled up"
  else
    fail "ENOSPC" "rc=$rc status=$st"
  fi
  # --resume when only the rest of the file fits: the free-space check counts what the
  # partial file already holds (layers 0-6 written, then an injected failure)
  rm -f "$mnt"/* ; rm -rf "$tmp/ck_space"
  out="$mnt/space.h5"
  LS_FAULT_WRITE_LAYER=7 mpirun -np 2 -x LS_FAULT_WRITE_LAYER "$ls" run "${args[@]}" --out "$out" \
    --checkpoint-every 1 --checkpoint-dir "$tmp/ck_space" >/dev/null 2>&1
  size=$(stat -c %s "$tmp/ref.h5")
  held=$(( $(stat -c %b "$out") * $(stat -c %B "$out") ))
  target=$(( (size - held) * 101 / 100 + (4 << 20) ))   # the rest, with room for metadata
  avail=$(( $(df --output=avail -B1 "$mnt" | tail -n 1) ))
  if [ "$target" -lt $(( size * 101 / 100 + (1 << 20) )) ] && [ "$avail" -gt "$target" ]; then
    dd if=/dev/zero of="$mnt/filler" bs=1024 count=$(( (avail - target) / 1024 )) 2>/dev/null
    mpirun -np 2 "$ls" run "${args[@]}" --out "$out" --checkpoint-every 1 --checkpoint-dir "$tmp/ck_space" \
      --resume >"$tmp/space.log" 2>&1
    if [ $? = 0 ] && msg=$(same_as_ref "$out"); then
      pass "--resume with room for the rest only (file $size B, held $held B): plan counts what the file holds"
    else
      fail "resume free space" "$(grep -E 'error' "$tmp/space.log" | head -n 2) ${msg:-}"
    fi
  else
    fail "resume free space setup" "size=$size held=$held target=$target avail=$avail"
  fi
  umount "$mnt"
else
  echo "SKIPPED real ENOSPC: cannot mount a tmpfs here (the injected failure above covers the path)"
fi

# ---- overlapped writes: the same file as collective HDF5 writes -----------------------------
# --pool none, every hook: each layer's rows are written by a thread while the next layer
# computes (default), or by collective H5Dwrite after each layer (--overlap-writes off)
rawargs=(--model "$tmp/model" --data "$tmp/data.jsonl" --hooks all --layers all --pool none --progress off)
ok=1 why=""
$ls run "${rawargs[@]}" --out "$tmp/raw_off.h5" --overlap-writes off --checkpoint-every off 2>"$tmp/raw_off.log" || { ok=0; why="off run failed"; }
for np in 1 2 3; do
  mpirun -np $np "$ls" run "${rawargs[@]}" --out "$tmp/raw_on$np.h5" --checkpoint-every off \
    >"$tmp/raw_on$np.log" 2>&1 || { ok=0; why="np $np run failed: $(grep error "$tmp/raw_on$np.log" | head -n 1)"; }
  for d in residual_pre attn_out mlp_out residual_post final_norm samples/length samples/offsets; do
    h5diff -q -d 0 "$tmp/raw_off.h5" "$tmp/raw_on$np.h5" "/$d" "/$d" >/dev/null 2>&1 || { ok=0; why="np $np: /$d differs"; }
  done
  [ "$(status_of "$tmp/raw_on$np.h5")" = complete ] || { ok=0; why="np $np: not complete"; }
  if grep -q "writes: collective HDF5" "$tmp/raw_on$np.log"; then ok=0; why="np $np did not overlap"; fi
done
if [ $ok = 1 ]; then
  pass "--pool none, all hooks: overlapped writes (np 1, 2, 3) give the file collective writes give"
else
  fail "overlapped writes" "$why"
fi
rm -f "$tmp"/raw_*.h5

# ---- resume refusals and no-ops --------------------------------------------------------------
out="$tmp/done.h5"
cp "$tmp/ref.h5" "$out"
sum=$(md5sum <"$out")
$ls run "${args[@]}" --out "$out" --resume >"$tmp/done.log" 2>&1
if [ $? = 0 ] && grep -q "already complete" "$tmp/done.log" && [ "$(md5sum <"$out")" = "$sum" ]; then
  pass "--resume on a complete file leaves it alone"
else
  fail "resume complete" "$(tail -n 2 "$tmp/done.log")"
fi

# ---- elastic resume: another rank count re-shards the checkpointed residual stream ---------
for pair in "2 3" "3 1" "1 2"; do
  set -- $pair
  out="$tmp/elastic_$1_$2.h5"
  LS_FAULT_WRITE_LAYER=5 mpirun -np "$1" -x LS_FAULT_WRITE_LAYER "$ls" run "${args[@]}" --out "$out" \
    --checkpoint-every 1 >"$tmp/el1.log" 2>&1
  mpirun -np "$2" "$ls" run "${args[@]}" --out "$out" --checkpoint-every 1 --resume >"$tmp/el2.log" 2>&1
  rc=$?
  if [ "$rc" = 0 ] && grep -q "taken with $1 ranks: the residual stream is re-sharded over $2" "$tmp/el2.log" &&
     grep -q "before layer 5" "$tmp/el2.log" && msg=$(same_as_ref "$out") && [ ! -e "$out.ckpt" ] &&
     [ "$(h5dump -a /n_ranks "$out" 2>/dev/null | sed -n 's/.*(0): //p')" = "$2" ]; then
    pass "elastic resume -np $1 -> -np $2 from layer 5: bit-identical, checkpoint removed, n_ranks $2"
  else
    fail "elastic resume -np $1 -> $2" "rc=$rc ${msg:-} $(grep -E 'error|resum' "$tmp/el2.log" | head -n 2)"
  fi
done
out="$tmp/mismatch.h5"
LS_FAULT_WRITE_LAYER=3 mpirun -np 2 -x LS_FAULT_WRITE_LAYER "$ls" run "${args[@]}" --out "$out" --checkpoint-every 1 >/dev/null 2>&1
"$ls" make-data --out "$tmp/data2.jsonl" --n 1200 --min-len 1 --max-len 48 --vocab 512 --seed 9 --force 2>/dev/null
mpirun -np 2 "$ls" run --model "$tmp/model" --data "$tmp/data2.jsonl" --hooks all --layers all --pool mean \
  --out "$out" --resume >"$tmp/mm2.log" 2>&1
if [ $? != 0 ] && grep -q "dataset's contents differ" "$tmp/mm2.log"; then
  pass "--resume with another dataset is refused"
else
  fail "data mismatch" "$(grep error "$tmp/mm2.log" | head -n 2)"
fi
mpirun -np 2 "$ls" run "${args[@]/mean/last_token}" --out "$out" --resume >"$tmp/mm3.log" 2>&1
if [ $? != 0 ] && grep -q "differ from the checkpointed run" "$tmp/mm3.log"; then
  pass "--resume with other options is refused"
else
  fail "options mismatch" "$(grep error "$tmp/mm3.log" | head -n 2)"
fi

echo "resume tests: $passes passed, $fails failed"
rm -rf "$tmp"
[ "$fails" = 0 ]
