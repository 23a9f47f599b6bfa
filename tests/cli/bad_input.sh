#!/usr/bin/env bash
# tests/cli/bad_input.sh: bad-input tests of the layersweep command line (CTest: cli.bad_input).
#
# Project rule checked for every bad input (model files, configs, datasets, options):
#   - exit status non-zero and < 128 (no crash, no signal), no hang (every command runs
#     under `timeout 60`);
#   - stderr holds exactly ONE line "layersweep: error: ..." ("layersweep[rank 0]: error: ..."
#     under mpirun) that contains the expected file name / line / tensor / option, and no
#     other unexpected line (getopt's own complaints, sanitizer reports, ...); progress and
#     plan lines of the tool and Open MPI's own job-abort banner are allowed;
#   - every --option the error line recommends exists;
#   - the output file does not exist or its root attribute "status" is not "complete".
# Plus positive controls (valid single-file, sharded and HF-cache-layout models, long prompts
# with --allow-long-prompts), --help / --version, and some cases under mpirun -np 2.
#
# Environment (set by tests/CMakeLists.txt): LS_BIN (the layersweep binary), LS_FIXTURES
# (tests/fixtures), LS_TEST_TMP (scratch directory).
set -u

: "${LS_BIN:?set LS_BIN to the layersweep binary}"
: "${LS_TEST_TMP:=${TMPDIR:-/tmp}}"
: "${LS_FIXTURES:=$(cd "$(dirname "${BASH_SOURCE[0]}")/../fixtures" 2>/dev/null && pwd)}"
export OMPI_ALLOW_RUN_AS_ROOT=${OMPI_ALLOW_RUN_AS_ROOT:-1}
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=${OMPI_ALLOW_RUN_AS_ROOT_CONFIRM:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TO=60 # seconds per command
mkdir -p "$LS_TEST_TMP"
T=$(mktemp -d "$LS_TEST_TMP/bad_input.XXXXXX") || { echo "cannot create a scratch dir"; exit 1; }
LOGS=$T/logs
mkdir -p "$LOGS" "$T/c" "$T/out"

N_PASS=0
N_FAIL=0
FAILED=()
REASONS=()
WANT=()   # substrings the error line must contain (set before each bad case)
LAST_ERR= # stderr file of the last command
LAST_RC=0

# ---- helpers ---------------------------------------------------------------------------------
ERR_RE='^layersweep(\[rank [0-9]+\])?: error: '
# lines that may accompany an error: the tool's own plan / progress / info lines, make-model
# and make-data reports, and Open MPI's job-abort banner.
OK_RE='^(plan:|backend:|layer [0-9]+/[0-9]+|profile |  |wrote |make-model: wrote|make-data: wrote|.* left with status "partial"$)'
MPI_NOISE_RE='^(-{20,}|Primary job +terminated normally|a non-zero exit code\. Per user-direction|mpirun detected that one or more|mpirun noticed that|prterun detected|the job to be terminated\. The first process|The first process to do so was|[[:space:]]*Process name:|[[:space:]]*Exit code:|[[:space:]]*$)'

# Open MPI prints its messages as blocks between lines of dashes, and some warnings as
# "[host:pid] ..." lines: drop both (crash reports "[host:pid] *** ..." are kept).
strip_mpi_banners() {
  awk '/^-{20,}[[:space:]]*$/ { inblock = !inblock; next }
       inblock { next }
       /^\[[^]]+:[0-9]+\] / && !/\*\*\*/ { next }
       { print }'
}

h5_status() { # root attribute "status" of an HDF5 file ("" when absent / unreadable)
  h5dump -a /status "$1" 2>/dev/null | sed -n 's/.*(0): "\(.*\)".*/\1/p' | head -n 1
}

# Options of a command, from the option table in src/main.c (when the source is at hand)
# united with the list known when this test was written.
src_opts() { # $1 = C function name (cmd_run, cmd_make_model, cmd_make_data)
  local f=$SRC_DIR/src/main.c
  [ -r "$f" ] || return 0
  awk -v fn="$1" '$0 ~ "^static int " fn "\\(" {on=1} on && /^}/ {exit} on' "$f" |
    grep -o '{"[a-z][a-z0-9-]*", *\(required\|no\|optional\)_argument' |
    sed 's/{"\([^"]*\)".*/--\1/'
}
RUN_OPTS=$( { printf -- '%s\n' --model --data --out --hooks --layers --pool --microbatch-tokens \
              --threads --allow-long-prompts --force --progress --help; src_opts cmd_run; } | sort -u)
MM_OPTS=$( { printf -- '%s\n' --out --arch --hidden --intermediate --layers --heads --kv-heads \
             --head-dim --vocab --max-pos --dtype --shards --seed --rope-theta --init-std \
             --sliding-window --tie --force --help; src_opts cmd_make_model; } | sort -u)
MD_OPTS=$( { printf -- '%s\n' --out --n --min-len --max-len --vocab --seed --no-labels --force \
             --help; src_opts cmd_make_data; } | sort -u)

pass() { N_PASS=$((N_PASS + 1)); echo "PASS $1"; }
fail() { # name reason...
  local name=$1; shift
  N_FAIL=$((N_FAIL + 1))
  FAILED+=("$name")
  echo "FAIL $name"
  local r
  for r in "$@"; do echo "     - $r"; done
  if [ -n "$LAST_ERR" ] && [ -s "$LAST_ERR" ]; then
    echo "     stderr (exit $LAST_RC):"
    head -n 15 "$LAST_ERR" | sed 's/^/       | /'
  fi
}
finish() { # name: report the case from REASONS, then reset the per-case state
  if [ ${#REASONS[@]} -eq 0 ]; then pass "$1"; else fail "$1" "${REASONS[@]}"; fi
  REASONS=()
  WANT=()
  LAST_ERR=
}

# run NAME MODE cmd...: MODE is "1" (plain) or "mpi" (mpirun -np 2); stdout/stderr to $LOGS.
run() {
  local name=$1 mode=$2; shift 2
  LAST_ERR=$LOGS/$name.err
  if [ "$mode" = mpi ]; then
    timeout -k 5 $TO mpirun --oversubscribe --allow-run-as-root -np 2 "$@" \
      >"$LOGS/$name.out" 2>"$LAST_ERR" </dev/null
  else
    timeout -k 5 $TO "$@" >"$LOGS/$name.out" 2>"$LAST_ERR" </dev/null
  fi
  LAST_RC=$?
}

# check_bad OUT [ARGS...]: the checks of a bad case on the last run; appends to REASONS.
# OUT is the output file that must not be left "complete" ("" if none applies); ARGS are
# the arguments given (an option the message names may be one of them).
check_bad() {
  local out=$1; shift
  local rc=$LAST_RC err=$LAST_ERR
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    REASONS+=("hang: killed by timeout after ${TO}s (exit $rc)")
  elif [ "$rc" -eq 0 ]; then
    REASONS+=("exit status 0; expected a non-zero exit")
  elif [ "$rc" -ge 128 ]; then
    REASONS+=("exit status $rc >= 128 (crash / signal)")
  fi
  if grep -qE 'Sanitizer|runtime error:|Segmentation fault|core dumped|signal [0-9]+|Signal: ' "$err"; then
    REASONS+=("sanitizer report or crash on stderr")
  fi
  local n_err
  n_err=$(grep -cE "$ERR_RE" "$err")
  if [ "$n_err" -ne 1 ]; then
    REASONS+=("$n_err error lines on stderr; expected exactly one")
  fi
  local line
  line=$(grep -E "$ERR_RE" "$err" | head -n 1)
  local w
  for w in "${WANT[@]+"${WANT[@]}"}"; do
    if [ -n "$line" ] && ! printf '%s' "$line" | grep -qF -- "$w"; then
      REASONS+=("error line does not contain \"$w\"")
    fi
  done
  # every --option the message names must be an option of the command (or an argument given)
  local o known
  case "${2:-}" in
    run | plan) known=$RUN_OPTS ;;
    make-model) known=$MM_OPTS ;;
    make-data) known=$MD_OPTS ;;
    *) known="$RUN_OPTS $MM_OPTS $MD_OPTS" ;;
  esac
  for o in $(printf '%s' "$line" | grep -oE -- '--[a-z][a-z0-9-]*' | sort -u); do
    if ! printf '%s\n' $known "$@" | grep -qxF -- "$o"; then
      REASONS+=("error line names $o, which is not an option of layersweep ${2:-}")
    fi
  done
  # nothing else on stderr but allowed info lines and MPI's own banner
  local stray
  stray=$(strip_mpi_banners <"$err" | grep -vE "$ERR_RE" | grep -vE "$OK_RE" |
          grep -vE "$MPI_NOISE_RE" | head -n 3)
  if [ -n "$stray" ]; then
    REASONS+=("unexpected extra stderr line(s): $(printf '%s' "$stray" | tr '\n' '|')")
  fi
  if [ -n "$out" ] && [ -e "$out" ]; then
    local st
    st=$(h5_status "$out")
    if [ "$st" = complete ]; then
      REASONS+=("output $out was left with status \"complete\"")
    fi
  fi
}

# bad NAME OUT cmd...: a bad input run with one rank.  bad_mpi: the same under mpirun -np 2.
bad() { local name=$1 out=$2; shift 2; run "$name" 1 "$@"; check_bad "$out" "$@"; finish "$name"; }
bad_mpi() { local name=$1 out=$2; shift 2; run "$name" mpi "$@"; check_bad "$out" "$@"; finish "$name"; }

# good NAME OUT cmd...: a valid run; exit 0, no error line, output complete.
good() {
  local name=$1 out=$2; shift 2
  run "$name" 1 "$@"
  [ "$LAST_RC" -eq 0 ] || REASONS+=("exit status $LAST_RC; expected 0")
  if grep -qE "$ERR_RE" "$LAST_ERR"; then REASONS+=("error line on stderr"); fi
  if grep -qE 'Sanitizer|runtime error:' "$LAST_ERR"; then REASONS+=("sanitizer report"); fi
  local st
  st=$(h5_status "$out")
  [ "$st" = complete ] || REASONS+=("output $out has status \"$st\"; expected \"complete\"")
  finish "$name"
}

# no_open NAME REGEX cmd...: run cmd under strace (when strace works here) and fail if it
# successfully opened a path matching REGEX that a valid run does not open anyway.
STRACE_OK=0
strace -o /dev/null true >/dev/null 2>&1 && STRACE_OK=1
STRACE_BASE=
no_open() {
  local name=$1 re=$2; shift 2
  [ "$STRACE_OK" = 1 ] || { echo "SKIP $name (strace unavailable)"; return 0; }
  if [ -z "$STRACE_BASE" ]; then # what a valid run opens
    STRACE_BASE=$LOGS/strace.valid.log
    timeout $TO strace -f -qq -e trace=open,openat -o "$STRACE_BASE" "$LS_BIN" run --model "$BASE" \
      --data "$DATA" --out "$T/out/strace_valid.h5" --progress off >/dev/null 2>&1 </dev/null
  fi
  local log=$LOGS/$name.strace.log
  LAST_ERR=$LOGS/$name.err
  timeout $TO strace -f -qq -e trace=open,openat -o "$log" "$@" >/dev/null 2>"$LAST_ERR" </dev/null
  LAST_RC=$?
  if grep -E "$re" "$STRACE_BASE" | grep -vqE '= -1 '; then
    echo "SKIP $name (a valid run opens $re too)"
    LAST_ERR=
    return 0
  fi
  local hit
  hit=$(grep -E "$re" "$log" | grep -vE '= -1 ' | head -n 1)
  [ -z "$hit" ] || REASONS+=("opened a file outside the model directory: $hit")
  finish "$name"
}

# case_model NAME [SRC]: a fresh copy of model SRC (default: the base model) for one case
case_model() {
  local d=$T/c/$1
  rm -rf "$d"
  mkdir -p "$d"
  cp -r "${2:-$BASE}" "$d/m"
  printf '%s' "$d/m"
}

# ---- fixtures: small valid models and a dataset ---------------------------------------------
MODEL_ARGS=(--hidden 64 --intermediate 128 --layers 2 --heads 4 --kv-heads 2 --vocab 128
            --dtype f32 --seed 7)
BASE=$T/base
SHARDED=$T/base_sharded
MP16=$T/base_mp16
ONELAYER=$T/base_1layer
DATA=$T/data.jsonl
setup_ok=1
timeout $TO "$LS_BIN" make-model --out "$BASE" "${MODEL_ARGS[@]}" >"$LOGS/setup.log" 2>&1 || setup_ok=0
timeout $TO "$LS_BIN" make-model --out "$SHARDED" "${MODEL_ARGS[@]}" --shards 3 >>"$LOGS/setup.log" 2>&1 || setup_ok=0
timeout $TO "$LS_BIN" make-model --out "$MP16" "${MODEL_ARGS[@]}" --max-pos 16 >>"$LOGS/setup.log" 2>&1 || setup_ok=0
timeout $TO "$LS_BIN" make-model --out "$ONELAYER" "${MODEL_ARGS[@]}" --layers 1 >>"$LOGS/setup.log" 2>&1 || setup_ok=0
timeout $TO "$LS_BIN" make-data --out "$DATA" --n 6 --min-len 4 --max-len 12 --vocab 128 >>"$LOGS/setup.log" 2>&1 || setup_ok=0
for f in "$BASE/config.json" "$BASE/model.safetensors" "$SHARDED/model.safetensors.index.json" \
         "$SHARDED/model-00003-of-00003.safetensors" "$MP16/config.json" \
         "$ONELAYER/model.safetensors" "$DATA"; do
  [ -s "$f" ] || setup_ok=0
done
if [ $setup_ok -ne 1 ]; then
  echo "FAIL setup: make-model / make-data did not produce the fixtures:"
  sed 's/^/  | /' "$LOGS/setup.log"
  echo "summary: setup failed ($T kept)"
  exit 1
fi
SHARD3=model-00003-of-00003.safetensors
INDEX=model.safetensors.index.json

# ---- help and version --------------------------------------------------------------------------
help_case() { # name "cmd args" required-words...
  local name=$1 args=$2; shift 2
  LAST_ERR=$LOGS/$name.err
  # shellcheck disable=SC2086
  timeout $TO "$LS_BIN" $args >"$LOGS/$name.out" 2>"$LAST_ERR" </dev/null
  LAST_RC=$?
  [ "$LAST_RC" -eq 0 ] || REASONS+=("exit status $LAST_RC; expected 0")
  grep -q 'usage:' "$LOGS/$name.out" || REASONS+=("no usage text on stdout")
  local w
  for w in "$@"; do
    grep -qE -- "(^|[^a-z0-9-])$w([^a-z0-9-]|$)" "$LOGS/$name.out" || REASONS+=("usage does not mention $w")
  done
  finish "$name"
}
help_case help.main "--help" run plan make-model make-data --version
help_case help.run "run --help" $RUN_OPTS
help_case help.make_model "make-model --help" $MM_OPTS
help_case help.make_data "make-data --help" $MD_OPTS

run version 1 "$LS_BIN" --version
[ "$LAST_RC" -eq 0 ] || REASONS+=("exit status $LAST_RC; expected 0")
grep -qE '^layersweep [0-9]+\.[0-9]+' "$LOGS/version.out" || REASONS+=("stdout is not \"layersweep X.Y...\"")
finish version

run usage.no_args 1 "$LS_BIN"
{ [ "$LAST_RC" -ne 0 ] && [ "$LAST_RC" -lt 128 ]; } || REASONS+=("exit status $LAST_RC; expected non-zero < 128")
grep -q 'usage:' "$LAST_ERR" || REASONS+=("no usage text on stderr")
finish usage.no_args

WANT=(bogus-cmd --help); bad opt.unknown_command "" "$LS_BIN" bogus-cmd

# ---- positive controls ----------------------------------------------------------------------------
VALID_OUT=$T/out/valid.h5
good valid.single "$VALID_OUT" "$LS_BIN" run --model "$BASE" --data "$DATA" --out "$VALID_OUT" --progress off
good valid.sharded "$T/out/valid_sharded.h5" "$LS_BIN" run --model "$SHARDED" --data "$DATA" \
  --out "$T/out/valid_sharded.h5" --progress off

# Hugging Face cache layout: snapshots/<rev>/<file> are symlinks to ../../blobs/<sha256>
hf_cache() { # src model dir, cache root -> prints the snapshot dir
  local src=$1 root=$2 rev=0123456789abcdef0123456789abcdef01234567 f h
  mkdir -p "$root/blobs" "$root/snapshots/$rev" "$root/refs"
  printf '%s' "$rev" >"$root/refs/main"
  for f in "$src"/*; do
    h=$(sha256sum "$f" | cut -d' ' -f1)
    cp "$f" "$root/blobs/$h"
    ln -s "../../blobs/$h" "$root/snapshots/$rev/$(basename "$f")"
  done
  printf '%s' "$root/snapshots/$rev"
}
HF1=$(hf_cache "$BASE" "$T/hub/models--test--tiny")
good valid.hf_cache "$T/out/hf.h5" "$LS_BIN" run --model "$HF1" --data "$DATA" --out "$T/out/hf.h5" --progress off
HF3=$(hf_cache "$SHARDED" "$T/hub/models--test--tiny-sharded")
good valid.hf_cache_sharded "$T/out/hf3.h5" "$LS_BIN" run --model "$HF3" --data "$DATA" \
  --out "$T/out/hf3.h5" --progress off

# ---- model directory -------------------------------------------------------------------------------
o() { printf '%s' "$T/out/$1.h5"; } # the output path of a case

m=$(case_model no_config); rm "$m/config.json"
WANT=("$m/config.json"); bad model.no_config "$(o no_config)" "$LS_BIN" run --model "$m" --data "$DATA" --out "$(o no_config)"

m=$(case_model config_not_json); printf 'this is { not JSON\n' >"$m/config.json"
WANT=("$m/config.json"); bad model.config_not_json "$(o config_not_json)" "$LS_BIN" run --model "$m" --data "$DATA" --out "$(o config_not_json)"

m=$(case_model config_truncated); head -c 100 "$BASE/config.json" >"$m/config.json"
WANT=("$m/config.json"); bad model.config_truncated "$(o config_truncated)" "$LS_BIN" run --model "$m" --data "$DATA" --out "$(o config_truncated)"

m=$(case_model bloom)
sed -i -e 's/"LlamaForCausalLM"/"BloomForCausalLM"/' -e 's/"model_type":[[:space:]]*"llama"/"model_type": "bloom"/' "$m/config.json"
WANT=("$m/config.json" BloomForCausalLM LlamaForCausalLM GPT2LMHeadModel GPTNeoXForCausalLM)
bad model.unsupported_arch "$(o bloom)" "$LS_BIN" run --model "$m" --data "$DATA" --out "$(o bloom)"

m=$(case_model hidden_mismatch)
sed -i 's/"hidden_size":[[:space:]]*64,/"hidden_size": 96,/' "$m/config.json"
WANT=("$m/model.safetensors" model.embed_tokens.weight)
bad model.hidden_mismatch "$(o hidden_mismatch)" "$LS_BIN" run --model "$m" --data "$DATA" --out "$(o hidden_mismatch)"

m=$(case_model missing_required_key)
sed -i '/"num_hidden_layers"/d' "$m/config.json"
WANT=("$m/config.json" num_hidden_layers)
bad model.config_missing_key "$(o missing_required_key)" "$LS_BIN" run --model "$m" --data "$DATA" --out "$(o missing_required_key)"

m=$(case_model no_safetensors); rm "$m/model.safetensors"
WANT=("$m" model.safetensors)
bad model.no_safetensors "$(o no_safetensors)" "$LS_BIN" run --model "$m" --data "$DATA" --out "$(o no_safetensors)"

m=$(case_model st_truncated_header)
head -c 64 "$BASE/model.safetensors" >"$m/model.safetensors"
WANT=("$m/model.safetensors")
bad model.st_header_past_end "$(o st_truncated_header)" "$LS_BIN" run --model "$m" --data "$DATA" --out "$(o st_truncated_header)"

m=$(case_model st_truncated_data)
truncate -s -100 "$m/model.safetensors"
WANT=("$m/model.safetensors" lm_head.weight)
bad model.st_data_truncated "$(o st_truncated_data)" "$LS_BIN" run --model "$m" --data "$DATA" --out "$(o st_truncated_data)"

m=$(case_model st_tiny); printf 'abc' >"$m/model.safetensors"
WANT=("$m/model.safetensors")
bad model.st_3_bytes "$(o st_tiny)" "$LS_BIN" run --model "$m" --data "$DATA" --out "$(o st_tiny)"

m=$(case_model st_garbage_header)
{ printf '\x10\x00\x00\x00\x00\x00\x00\x00'; printf 'not json at all!'; head -c 64 /dev/zero; } >"$m/model.safetensors"
WANT=("$m/model.safetensors")
bad model.st_header_not_json "$(o st_garbage_header)" "$LS_BIN" run --model "$m" --data "$DATA" --out "$(o st_garbage_header)"

# I64 tensor: patch the dtype of model.norm.weight in the header (same length, F32 -> I64)
m=$(case_model st_i64)
hit=$(grep -obUa '"model.norm.weight":{[^}]*"dtype":"F32"' "$m/model.safetensors" | head -n 1)
if [ -n "$hit" ]; then
  off=${hit%%:*}
  match=${hit#*:}
  pos=$((off + ${#match} - 4)) # the F of F32: the match ends in F32"
  printf 'I64' | dd of="$m/model.safetensors" bs=1 seek="$pos" conv=notrunc status=none
fi
if grep -qaF '"model.norm.weight":{' "$m/model.safetensors" && grep -qaF '"dtype":"I64"' "$m/model.safetensors"; then
  WANT=("$m/model.safetensors" model.norm.weight I64)
  bad model.st_i64_tensor "$(o st_i64)" "$LS_BIN" run --model "$m" --data "$DATA" --out "$(o st_i64)"
else
  fail model.st_i64_tensor "test setup: could not patch the dtype in the safetensors header"
fi

# NaN / Inf in a weight: refused (documented), naming the file and the tensor. The value
# is patched into a layer weight (read by the weight pipeline) and into the final norm.
patch_value() { # model-dir tensor element hex-bytes-le
  python3 - "$1/model.safetensors" "$2" "$3" "$4" <<'PY'
import json, struct, sys
path, name, elem, hexval = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
b = bytearray(open(path, "rb").read())
n = struct.unpack("<Q", b[:8])[0]
t = json.loads(b[8:8 + n])[name]
size = {"F32": 4, "F16": 2, "BF16": 2}[t["dtype"]]
off = 8 + n + t["data_offsets"][0] + elem * size
b[off:off + size] = bytes.fromhex(hexval)
open(path, "wb").write(b)
PY
}
if command -v python3 >/dev/null 2>&1; then
  m=$(case_model nan_weight)
  patch_value "$m" model.layers.1.mlp.up_proj.weight 37 0000c07f   # float32 NaN
  WANT=("$m/model.safetensors" model.layers.1.mlp.up_proj.weight "NaN or Inf")
  bad model.nan_in_layer_weight "$(o nan_weight)" "$LS_BIN" run --model "$m" --data "$DATA" --out "$(o nan_weight)"
  m=$(case_model inf_norm)
  patch_value "$m" model.norm.weight 3 0000807f   # float32 +Inf
  WANT=("$m/model.safetensors" model.norm.weight "NaN or Inf")
  bad model.inf_in_final_norm "$(o inf_norm)" "$LS_BIN" run --model "$m" --data "$DATA" --out "$(o inf_norm)"
  m=$(case_model nan_weight_mpi)
  patch_value "$m" model.layers.0.self_attn.k_proj.weight 5 0000c0ff
  WANT=("$m/model.safetensors" model.layers.0.self_attn.k_proj.weight "NaN or Inf")
  bad_mpi mpi.nan_in_layer_weight "$(o nan_weight_mpi)" "$LS_BIN" run --model "$m" --data "$DATA" --out "$(o nan_weight_mpi)"
  # a bad tensor in a late layer is read by rank 0's reader thread while the main thread
  # is inside the collective writes (and checkpoints) of earlier layers: its message must
  # still be the one line reported
  deep=$T/base_6layer
  if timeout $TO "$LS_BIN" make-model --out "$deep" "${MODEL_ARGS[@]}" --layers 6 >>"$LOGS/setup.log" 2>&1; then
    m=$(case_model nan_late_layer "$deep")
    patch_value "$m" model.layers.5.self_attn.o_proj.weight 11 0000c07f
    WANT=("$m/model.safetensors" model.layers.5.self_attn.o_proj.weight "NaN or Inf")
    bad_mpi mpi.nan_in_late_layer "$(o nan_late)" "$LS_BIN" run --model "$m" --data "$DATA" \
      --out "$(o nan_late)" --hooks all --pool none --checkpoint-every 1
  else
    fail mpi.nan_in_late_layer "test setup: make-model --layers 6 failed"
  fi
  # a tensor read with O_DIRECT in 16 MiB chunks (32 MiB, not in the page cache), checked
  # chunk by chunk as it arrives: a NaN in its second chunk is found and named exactly
  direct=$T/base_direct
  if timeout $TO "$LS_BIN" make-model --out "$direct" --hidden 2048 --intermediate 4096 --layers 1 \
       --heads 16 --kv-heads 4 --vocab 128 --dtype f32 >>"$LOGS/setup.log" 2>&1; then
    m=$(case_model nan_direct_chunk "$direct")
    patch_value "$m" model.layers.0.mlp.up_proj.weight 6000001 0000c07f
    dd if="$m/model.safetensors" iflag=nocache count=0 status=none 2>/dev/null
    WANT=("$m/model.safetensors" model.layers.0.mlp.up_proj.weight "NaN or Inf" "element 6000001")
    bad model.nan_in_direct_read_chunk "$(o nan_direct)" "$LS_BIN" run --model "$m" --data "$DATA" \
      --out "$(o nan_direct)"
  else
    fail model.nan_in_direct_read_chunk "test setup: make-model (hidden 2048) failed"
  fi
else
  echo "SKIP model.nan_in_layer_weight (no python3 to patch the file)"
fi

# a FIFO where a file should be must be refused, not block the open forever
m=$(case_model fifo_weights); rm -f "$m/model.safetensors"; mkfifo "$m/model.safetensors"
WANT=("$m/model.safetensors" "not a regular file")
bad model.fifo_safetensors "$(o fifo_weights)" "$LS_BIN" run --model "$m" --data "$DATA" --out "$(o fifo_weights)"
m=$(case_model fifo_config); rm -f "$m/config.json"; mkfifo "$m/config.json"
WANT=("$m/config.json" "not a regular file")
bad model.fifo_config "$(o fifo_config)" "$LS_BIN" run --model "$m" --data "$DATA" --out "$(o fifo_config)"

# a tensor missing: the weights of a 1-layer model under the config of the 2-layer one
m=$(case_model tensor_missing); cp "$ONELAYER/model.safetensors" "$m/model.safetensors"
WANT=("$m" model.layers.1.)
bad model.tensor_missing "$(o tensor_missing)" "$LS_BIN" run --model "$m" --data "$DATA" --out "$(o tensor_missing)"

# --model is not a directory / does not exist
WANT=("$T/c/nonexistent"); bad model.dir_missing "$(o dir_missing)" "$LS_BIN" run --model "$T/c/nonexistent" --data "$DATA" --out "$(o dir_missing)"

# ---- --model as a URL or a hub id (io/hub.c): malformed ones are refused before any
# request (no server is needed), HTTP cache options --------------------------------------
url_bad() { # name model want...
  local name=$1 model=$2; shift 2
  WANT=("$@")
  bad "$name" "$(o "$name")" "$LS_BIN" run --model "$model" --data "$DATA" --out "$(o "$name")" --http-cache off
}
url_bad url.no_host "http://" "http://" "not a valid http(s) URL"
url_bad url.bad_port "http://127.0.0.1:99999999/m" "not a valid http(s) URL"
url_bad url.credentials "https://user:secret@example.invalid/m" "credentials in the URL" HF_TOKEN
url_bad url.query "https://example.invalid/m?rev=1" "no ?query"
url_bad url.fragment "https://example.invalid/m#x" "no ?query or #fragment"
url_bad url.scheme_ftp "ftp://example.invalid/m" "ftp://example.invalid/m" "only http:// and https://"
url_bad hub.double_dash "org/name--" "org/name--" "not a hub id"
url_bad hub.dotdot "org/..x" "org/..x" "not a hub id"
url_bad hub.bad_char "org/na\$me" "not a hub id"
url_bad hub.empty_name "org/" "org/" "not a hub id"
url_bad hub.empty_revision "org/name@" "org/name@" "revision"
url_bad hub.revision_dotdot "org/name@../x" "revision"
if printf '%s' "$(grep -hE "$ERR_RE" "$LOGS"/url.credentials.err)" | grep -q secret; then
  fail url.credentials_not_echoed "the error line repeats the password"
else
  pass url.credentials_not_echoed
fi
WANT=(--http-cache-max 12Q); bad opt.http_cache_max_bad "$(o hcm)" "$LS_BIN" run --model "$BASE" --data "$DATA" --out "$(o hcm)" --http-cache-max 12Q
WANT=(--http-cache-max -5); bad opt.http_cache_max_negative "$(o hcm2)" "$LS_BIN" run --model "$BASE" --data "$DATA" --out "$(o hcm2)" --http-cache-max -5
WANT=(--http-cache); bad opt.http_cache_empty "$(o hce)" "$LS_BIN" run --model "$BASE" --data "$DATA" --out "$(o hce)" --http-cache ""
# the cache of a remote model is an output: not the data file's directory
mkdir -p "$T/hc_guard" && cp "$DATA" "$T/hc_guard/d.jsonl"
WANT=(--http-cache "$T/hc_guard" "$T/hc_guard/d.jsonl"); bad guard.http_cache_holds_data "$(o hcg)" "$LS_BIN" run \
  --model "http://127.0.0.1:1/m" --data "$T/hc_guard/d.jsonl" --out "$(o hcg)" --http-cache "$T/hc_guard"
# a local model never creates the cache directory
good valid.local_no_http_cache "$T/out/nocache.h5" "$LS_BIN" run --model "$BASE" --data "$DATA" \
  --out "$T/out/nocache.h5" --http-cache "$T/should_not_exist"
[ ! -e "$T/should_not_exist" ] || fail valid.local_no_http_cache "a local run created --http-cache's directory"
WANT=("$BASE/model.safetensors"); bad model.dir_is_file "$(o dir_is_file)" "$LS_BIN" run --model "$BASE/model.safetensors" --data "$DATA" --out "$(o dir_is_file)"

# sharded: an index that names a file outside the model directory. A valid shard is put at
# ../outside.safetensors so that a reader that follows the name would succeed.
m=$(case_model shard_dotdot "$SHARDED")
mv "$m/$SHARD3" "$(dirname "$m")/outside.safetensors"
sed -i "s|\"$SHARD3\"|\"../outside.safetensors\"|g" "$m/$INDEX"
WANT=("$m/$INDEX" ../outside.safetensors)
bad model.index_dotdot "$(o shard_dotdot)" "$LS_BIN" run --model "$m" --data "$DATA" --out "$(o shard_dotdot)"
no_open "model.index_dotdot.no_open" 'outside\.safetensors' "$LS_BIN" run --model "$m" --data "$DATA" \
  --out "$(o shard_dotdot_strace)"

m=$(case_model shard_abs "$SHARDED")
sed -i "s|\"$SHARD3\"|\"/etc/passwd\"|g" "$m/$INDEX"
WANT=("$m/$INDEX" /etc/passwd)
bad model.index_abs_path "$(o shard_abs)" "$LS_BIN" run --model "$m" --data "$DATA" --out "$(o shard_abs)"
no_open model.index_abs_path.no_open '"/etc/passwd"' "$LS_BIN" run --model "$m" --data "$DATA" \
  --out "$(o shard_abs_strace)"

m=$(case_model shard_missing "$SHARDED"); rm "$m/model-00002-of-00003.safetensors"
WANT=("$m/model-00002-of-00003.safetensors" "$INDEX")
bad model.index_shard_missing "$(o shard_missing)" "$LS_BIN" run --model "$m" --data "$DATA" --out "$(o shard_missing)"

m=$(case_model index_not_json "$SHARDED"); printf '{"weight_map": {' >"$m/$INDEX"
WANT=("$m/$INDEX")
bad model.index_not_json "$(o index_not_json)" "$LS_BIN" run --model "$m" --data "$DATA" --out "$(o index_not_json)"

# an index entry pointing a tensor at a shard that does not hold it
m=$(case_model index_wrong_shard "$SHARDED")
sed -i 's|\("model.norm.weight":[[:space:]]*"\)model-0000[0-9]-of-00003|\1model-00001-of-00003|' "$m/$INDEX"
if cmp -s "$m/$INDEX" "$SHARDED/$INDEX"; then # norm was already in shard 1: move it to shard 2
  sed -i 's|\("model.norm.weight":[[:space:]]*"\)model-0000[0-9]-of-00003|\1model-00002-of-00003|' "$m/$INDEX"
fi
WANT=("$m/$INDEX" model.norm.weight)
bad model.index_wrong_shard "$(o index_wrong_shard)" "$LS_BIN" run --model "$m" --data "$DATA" --out "$(o index_wrong_shard)"

# ---- mixture of experts and FP8 (the MoE fixtures) ----------------------------------------------
FP8=$LS_FIXTURES/qwen3_moe_fp8
FXDATA=$LS_FIXTURES/prompts.jsonl
good valid.moe_fp8 "$T/out/moe_fp8.h5" "$LS_BIN" run --model "$FP8" --data "$FXDATA" \
  --out "$T/out/moe_fp8.h5" --hooks all,router_logits --progress off
# tensors the forward does not use (an I64 position_ids buffer, a stray F8 block-scale-like
# F32 tensor) leave the checkpoint readable
if command -v python3 >/dev/null 2>&1; then
  m=$(case_model unused_tensors)
  python3 - "$m/model.safetensors" <<'PY'
import json, struct, sys
path = sys.argv[1]
b = open(path, "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
data = b[8 + n:]
end = len(data)
h["model.position_ids"] = {"dtype": "I64", "shape": [4], "data_offsets": [end, end + 32]}
h["model.layers.0.mlp.up_proj.weight_scale_inv"] = {"dtype": "F32", "shape": [2],
                                                    "data_offsets": [end + 32, end + 40]}
hj = json.dumps(h, separators=(",", ":")).encode()
hj += b" " * (-len(hj) % 8)
extra = struct.pack("<4q", 0, 1, 2, 3) + struct.pack("<2f", 1.0, 2.0)
open(path, "wb").write(struct.pack("<Q", len(hj)) + hj + data + extra)
PY
  good valid.unused_tensors "$T/out/unused.h5" "$LS_BIN" run --model "$m" --data "$DATA" \
    --out "$T/out/unused.h5" --progress off
fi
# a quantization this tool does not read: packed integers must never be taken for floats
m=$(case_model quant_gptq "$FP8")
sed -i 's/"quant_method": "fp8"/"quant_method": "gptq"/' "$m/config.json"
WANT=("$m/config.json" quant_method gptq)
bad model.quantization_gptq "$(o quant_gptq)" "$LS_BIN" run --model "$m" --data "$FXDATA" --out "$(o quant_gptq)"
# FP8 tensors with no quantization_config to say how they were scaled
m=$(case_model fp8_no_config "$FP8")
python3 - "$m/config.json" <<'PY' || sed -i '/quantization_config/,/}/d' "$m/config.json"
import json, sys
c = json.load(open(sys.argv[1])); c.pop("quantization_config"); json.dump(c, open(sys.argv[1], "w"))
PY
WANT=("$m/model.safetensors" model.layers.0.self_attn.q_proj.weight F8_E4M3 quantization_config)
bad model.fp8_without_config "$(o fp8_no_config)" "$LS_BIN" run --model "$m" --data "$FXDATA" --out "$(o fp8_no_config)"
# a weight's block scales missing (renamed in the header, same length)
m=$(case_model fp8_no_scale "$FP8")
if grep -qaF 'model.layers.1.mlp.experts.2.up_proj.weight_scale_inv' "$m/model.safetensors"; then
  sed -i 's/model\.layers\.1\.mlp\.experts\.2\.up_proj\.weight_scale_inv/model.layers.1.mlp.experts.2.up_proj.weight_scale_xxx/' "$m/model.safetensors"
  WANT=("$m/model.safetensors" model.layers.1.mlp.experts.2.up_proj.weight_scale_inv missing)
  bad model.fp8_scale_missing "$(o fp8_no_scale)" "$LS_BIN" run --model "$m" --data "$FXDATA" --out "$(o fp8_no_scale)"
else
  fail model.fp8_scale_missing "test setup: the FP8 fixture has no such scale tensor"
fi
# router_logits of a dense model, or of selected layers none of which is MoE
WANT=(router_logits LlamaForCausalLM)
bad option.router_logits_dense "$(o router_dense)" "$LS_BIN" run --model "$BASE" --data "$DATA" \
  --out "$(o router_dense)" --hooks router_logits
WANT=(router_logits "--layers 0,2" Qwen3MoeForCausalLM)
bad option.router_logits_no_moe_layer "$(o router_nomoe)" "$LS_BIN" run \
  --model "$LS_FIXTURES/qwen3_moe_sparse_step" --data "$FXDATA" --out "$(o router_nomoe)" \
  --hooks all,router_logits --layers 0,2

# ---- --steer edits: validated up front, one line naming the file and the entry -----------------
st=$T/c/steer
mkdir -p "$st"
vec64="$(printf '0.1%.0s,' $(seq 1 63))0.1" # 64 numbers
printf '[{"layer": 0, "hook": "mlp_in", "op": "add", "vector": [%s]}]\n' "$vec64" >"$st/hook.json"
WANT=("$st/hook.json" "entry 0" hook)
bad option.steer_bad_hook "$(o steer_hook)" "$LS_BIN" run --model "$BASE" --data "$DATA" --out "$(o steer_hook)" --steer "$st/hook.json"
printf '[{"layer": 0, "hook": "attn_out", "op": "add", "vector": [1, 2, 3]}]\n' >"$st/len.json"
WANT=("$st/len.json" "entry 0" "3 values" "hidden_size is 64")
bad option.steer_bad_length "$(o steer_len)" "$LS_BIN" run --model "$BASE" --data "$DATA" --out "$(o steer_len)" --steer "$st/len.json"
printf '[{"layer": 5, "hook": "attn_out", "op": "add", "vector": [%s]}]\n' "$vec64" >"$st/layer.json"
WANT=("$st/layer.json" "layer 5" "2 layers")
bad option.steer_bad_layer "$(o steer_layer)" "$LS_BIN" run --model "$BASE" --data "$DATA" --out "$(o steer_layer)" --steer "$st/layer.json"
printf '[{"layer": 0, "hook": "attn_out", "op": "ablate", "vector": {"file": "nothere.h5", "dataset": "/d"}}]\n' >"$st/file.json"
WANT=("$st/file.json" "entry 0" "$st/nothere.h5")
bad option.steer_missing_file "$(o steer_file)" "$LS_BIN" run --model "$BASE" --data "$DATA" --out "$(o steer_file)" --steer "$st/file.json"
# the steering file is an input: never overwritten
WANT=("$st/hook.json")
bad guard.out_is_steer_file "$st/hook.json" "$LS_BIN" run --model "$BASE" --data "$DATA" --out "$st/hook.json" --force --steer "$st/hook.json"

# ---- --reduce / --no-store / --project: refused before any work, one line -----------------------
bad option.reduce_unknown "$(o red_unknown)" "$LS_BIN" run --model "$BASE" --data "$DATA" --out "$(o red_unknown)" --reduce mean,median
bad option.reduce_pca_no_k "$(o red_pca)" "$LS_BIN" run --model "$BASE" --data "$DATA" --out "$(o red_pca)" --reduce pca
bad option.reduce_pca_too_many "$(o red_pcak)" "$LS_BIN" run --model "$BASE" --data "$DATA" --out "$(o red_pcak)" --reduce pca:100000
bad option.no_store_alone "$(o nostore)" "$LS_BIN" run --model "$BASE" --data "$DATA" --out "$(o nostore)" --no-store
bad option.verify_strict_alone "$(o vstrict)" "$LS_BIN" run --model "$BASE" --data "$DATA" --out "$(o vstrict)" --verify-strict
bad option.verify_not_a_number "$(o vnan)" "$LS_BIN" run --model "$BASE" --data "$DATA" --out "$(o vnan)" --verify some
bad option.verify_with_preload "$(o vpre)" "$LS_BIN" run --model "$BASE" --data "$DATA" --out "$(o vpre)" --verify 2 --preload-weights
bad option.assume_ranks_zero "$(o aranks)" "$LS_BIN" plan --model "$BASE" --data "$DATA" --out "$(o aranks)" --assume-ranks 0
nolab=$T/c/nolabels.jsonl
printf '%s\n' '{"input_ids": [1, 2, 3]}' '{"input_ids": [4, 5]}' >"$nolab"
bad option.diffmeans_no_labels "$(o red_nolab)" "$LS_BIN" run --model "$BASE" --data "$nolab" --out "$(o red_nolab)" --reduce diffmeans
bad option.project_not_file_dataset "$(o proj_spec)" "$LS_BIN" run --model "$BASE" --data "$DATA" --out "$(o proj_spec)" --project nofile.h5
bad option.project_missing_file "$(o proj_file)" "$LS_BIN" run --model "$BASE" --data "$DATA" --out "$(o proj_file)" --project "$T/c/absent.h5:/x"
bad option.project_not_hdf5 "$(o proj_h5)" "$LS_BIN" run --model "$BASE" --data "$DATA" --out "$(o proj_h5)" --project "$DATA:/x"

# ---- dataset -------------------------------------------------------------------------------------------
D=$T/c/data
mkdir -p "$D"
mkdata() { # name lines... -> path
  local f=$D/$1.jsonl; shift
  printf '%s\n' "$@" >"$f"
  printf '%s' "$f"
}
L1='{"input_ids": [1, 2, 3, 4], "label": 0}'
L2='{"input_ids": [5, 6, 7], "label": 1}'
L3='{"input_ids": [8, 9, 10, 11, 12], "label": 0}'
L4='{"input_ids": [13, 14], "label": 1}'
drun() { # name data-file -> bad run against the base model
  bad "$1" "$(o "$1")" "$LS_BIN" run --model "$BASE" --data "$2" --out "$(o "$1")"
}
WANT=("$D/missing.jsonl"); drun data.missing "$D/missing.jsonl"
: >"$D/empty.jsonl"
WANT=("$D/empty.jsonl"); drun data.empty "$D/empty.jsonl"
f=$(mkdata blank_lines "" "   " ""); WANT=("$f"); drun data.only_blank_lines "$f"
f=$(mkdata bad_json "$L1" "$L2" '{"input_ids": [1, 2, 3' "$L4"); WANT=("$f:3:"); drun data.bad_json_line3 "$f"
f=$(mkdata empty_ids "$L1" '{"input_ids": [], "label": 1}' "$L3"); WANT=("$f:2:"); drun data.empty_input_ids_line2 "$f"
f=$(mkdata vocab "$L1" "$L2" "$L3" '{"input_ids": [1, 128], "label": 1}'); WANT=("$f:4:" 128); drun data.id_ge_vocab_line4 "$f"
f=$(mkdata negative "$L1" '{"input_ids": [3, -1, 4], "label": 1}'); WANT=("$f:2:"); drun data.negative_id "$f"
f=$(mkdata float "$L1" "$L2" '{"input_ids": [3, 1.5], "label": 0}'); WANT=("$f:3:"); drun data.float_id "$f"
f=$(mkdata string_id "$L1" '{"input_ids": [3, "4"], "label": 0}'); WANT=("$f:2:"); drun data.string_id "$f"
f=$(mkdata no_ids "$L1" '{"tokens": [3, 4], "label": 0}'); WANT=("$f:2:" input_ids); drun data.no_input_ids "$f"
f=$(mkdata label_some "$L1" "$L2" '{"input_ids": [8, 9]}' "$L4"); WANT=("$f:3:" label); drun data.label_some_lines "$f"
f=$(mkdata label_late '{"input_ids": [1, 2]}' "$L2"); WANT=("$f:2:" label); drun data.label_only_later "$f"
f=$(mkdata label_float "$L1" '{"input_ids": [1, 2], "label": 0.5}'); WANT=("$f:2:" label); drun data.label_float "$f"
printf '%s\n' "$L1" >"$D/nul.jsonl"; printf '{"input_ids": [1]}\0\n' >>"$D/nul.jsonl"
WANT=("$D/nul.jsonl:2:"); drun data.nul_byte "$D/nul.jsonl"
mkdir -p "$D/a_directory.jsonl"
WANT=("$D/a_directory.jsonl"); drun data.is_directory "$D/a_directory.jsonl"

# prompts longer than max_position_embeddings (16): refused, then accepted on request
f=$(mkdata long "$L1" '{"input_ids": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20], "label": 0}')
WANT=("$f:2:" --allow-long-prompts)
bad data.long_prompt "$(o long)" "$LS_BIN" run --model "$MP16" --data "$f" --out "$(o long)"
good data.long_prompt_allowed "$(o long_ok)" "$LS_BIN" run --model "$MP16" --data "$f" --out "$(o long_ok)" \
  --allow-long-prompts --progress off
# --out-dtype float16 with activations beyond 65504 (embeddings of std 3e4): refused at
# the first layer, naming the hook, the layer and the way out; the file stays partial
big=$T/base_big
"$LS_BIN" make-model --out "$big" "${MODEL_ARGS[@]}" --init-std 30000 >/dev/null 2>&1
WANT=("$(o f16_overflow)" "beyond float16's range" "residual_pre" "layer 0" "--out-dtype bfloat16")
bad output.float16_overflow "$(o f16_overflow)" "$LS_BIN" run --model "$big" --data "$DATA" \
  --out "$(o f16_overflow)" --hooks all --out-dtype float16
WANT=(--stall-timeout); bad option.stall_timeout "$(o stall)" "$LS_BIN" run --model "$BASE" --data "$DATA" --out "$(o stall)" --stall-timeout soon
WANT=(--out-dtype float64); bad option.out_dtype "$(o odt)" "$LS_BIN" run --model "$BASE" --data "$DATA" --out "$(o odt)" --out-dtype float64
good output.bfloat16_big_values "$(o bf16_big)" "$LS_BIN" run --model "$big" --data "$DATA" \
  --out "$(o bf16_big)" --hooks all --out-dtype bfloat16 --progress off

# GPT-2's learned positions (the fixture's n_positions is 128): a longer prompt is refused
ids=$(seq -s ', ' 1 130)
f=$(mkdata gpt2_long "$L1" "{\"input_ids\": [$ids]}")
WANT=("$f:2:" "max_position_embeddings 128")
bad data.gpt2_past_positions "$(o gpt2_long)" "$LS_BIN" run --model "$LS_FIXTURES/gpt2_conv1d" --data "$f" --out "$(o gpt2_long)"
f16=$(mkdata exactly16 '{"input_ids": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]}')
good data.prompt_of_max_pos "$(o exactly16)" "$LS_BIN" run --model "$MP16" --data "$f16" --out "$(o exactly16)" --progress off

# ---- bounded reading: a stream without newlines is refused at the line cap; a FIFO is read
# (process substitution) or, with no writer, found empty; never a hang --------------------
WANT=(/dev/zero "longer than the 32 MiB"); bad data.dev_zero "$(o dev_zero)" "$LS_BIN" run --model "$BASE" \
  --data /dev/zero --out "$(o dev_zero)"
mkfifo "$T/nowriter.fifo"
WANT=("$T/nowriter.fifo" empty); bad data.fifo_no_writer "$(o fifo_data)" "$LS_BIN" run --model "$BASE" \
  --data "$T/nowriter.fifo" --out "$(o fifo_data)"
good data.process_substitution "$T/out/procsub.h5" "$LS_BIN" run --model "$BASE" --data <(cat "$DATA") \
  --out "$T/out/procsub.h5"

# ---- attention_mask: padding dropped, the activations those of the unpadded prompts ----------------
P=$T/padded.jsonl
python3 - "$DATA" "$P" <<'PY'
import json, sys
src, dst = sys.argv[1], sys.argv[2]
with open(src) as f, open(dst, "w") as g:
    for i, line in enumerate(f):
        o = json.loads(line)
        ids = o["input_ids"]
        pad = i % 3 + 1  # 1..3 pad tokens, on the right for even lines, on the left for odd
        o["input_ids"] = ids + [0] * pad if i % 2 == 0 else [0] * pad + ids
        o["attention_mask"] = [1] * len(ids) + [0] * pad if i % 2 == 0 else [0] * pad + [1] * len(ids)
        g.write(json.dumps(o) + "\n")
PY
for pool in last_token mean; do
  good "data.attention_mask_$pool" "$T/out/pad_$pool.h5" "$LS_BIN" run --model "$BASE" --data "$P" \
    --out "$T/out/pad_$pool.h5" --hooks residual_post,final_norm --pool $pool
  "$LS_BIN" run --model "$BASE" --data "$DATA" --out "$T/out/nopad_$pool.h5" \
    --hooks residual_post,final_norm --pool $pool >/dev/null 2>&1
  for dset in residual_post final_norm samples/length; do
    h5diff -q "$T/out/pad_$pool.h5" "$T/out/nopad_$pool.h5" /$dset /$dset >/dev/null 2>&1 ||
      fail "data.attention_mask_$pool" "/$dset differs from the run on the unpadded prompts"
  done
  grep -q "attention_mask: dropped" "$LOGS/data.attention_mask_$pool.err" ||
    fail "data.attention_mask_$pool" "no log line saying how many padding tokens were dropped"
done

# ---- options ---------------------------------------------------------------------------------------------
R=("$LS_BIN" run --model "$BASE" --data "$DATA")
WANT=(--bogus); bad opt.unknown_option "$(o unknown_opt)" "${R[@]}" --out "$(o unknown_opt)" --bogus
WANT=(--out); bad opt.missing_out "" "${R[@]}"
WANT=(--model); bad opt.missing_model "$(o missing_model)" "$LS_BIN" run --data "$DATA" --out "$(o missing_model)"
WANT=(--layers 99); bad opt.layers_99 "$(o layers_99)" "${R[@]}" --out "$(o layers_99)" --layers 99
WANT=(--layers 1-0); bad opt.layers_1-0 "$(o layers_10)" "${R[@]}" --out "$(o layers_10)" --layers 1-0
WANT=(--layers); bad opt.layers_garbage "$(o layers_x)" "${R[@]}" --out "$(o layers_x)" --layers 0,x
WANT=(--layers); bad opt.layers_trailing_comma "$(o layers_c)" "${R[@]}" --out "$(o layers_c)" --layers 0,
WANT=(--hooks bogus); bad opt.hooks_bogus "$(o hooks)" "${R[@]}" --out "$(o hooks)" --hooks bogus
WANT=(--pool bogus); bad opt.pool_bogus "$(o pool)" "${R[@]}" --out "$(o pool)" --pool bogus
if [ -e /proc/driver/nvidia/version ]; then
  echo "SKIP opt.backend_cuda (this machine has an NVIDIA driver: --backend cuda is not bad input here)"
else
  WANT=(--backend "--backend cpu" "no usable device" "no NVIDIA driver"); bad opt.backend_cuda "$(o backend_cuda)" "${R[@]}" --out "$(o backend_cuda)" --backend cuda
  WANT=(--dtype bf16 "--dtype float32"); bad opt.dtype_bf16_no_gpu "$(o dtype_bf16_auto)" "${R[@]}" --out "$(o dtype_bf16_auto)" --dtype bf16
fi
WANT=(--dtype bf16 "no bf16 mode" "--backend cuda"); bad opt.dtype_bf16_cpu "$(o dtype_bf16)" "${R[@]}" --out "$(o dtype_bf16)" --backend cpu --dtype bf16
WANT=(--dtype bogus); bad opt.dtype_bogus "$(o dtype_bogus)" "${R[@]}" --out "$(o dtype_bogus)" --dtype bogus
WANT=(--backend bogus); bad opt.backend_bogus "$(o backend_bogus)" "${R[@]}" --out "$(o backend_bogus)" --backend bogus
WANT=(--microbatch-tokens); bad opt.microbatch_0 "$(o mb0)" "${R[@]}" --out "$(o mb0)" --microbatch-tokens 0
WANT=(--threads); bad opt.threads_0 "$(o threads0)" "${R[@]}" --out "$(o threads0)" --threads 0
WANT=(--progress); bad opt.progress_bogus "$(o progress)" "${R[@]}" --out "$(o progress)" --progress bogus
WANT=(stray); bad opt.positional_argument "$(o positional)" "${R[@]}" --out "$(o positional)" stray
WANT=(--out); bad opt.out_without_value "" "${R[@]}" --out

# an existing output file is refused without --force and left byte-identical
EXIST=$T/out/existing.h5
cp "$VALID_OUT" "$EXIST"
sum_before=$(sha256sum <"$EXIST")
WANT=("$EXIST" --force)
run opt.existing_output 1 "${R[@]}" --out "$EXIST"
check_bad "" "${R[@]}" --out "$EXIST"
[ "$(sha256sum <"$EXIST")" = "$sum_before" ] || REASONS+=("the existing output file was modified")
finish opt.existing_output

# an output path in a directory that does not exist: refused, and the directory not created
NODIR_OUT=$T/out/no/such/dir/o.h5
WANT=("$NODIR_OUT")
run opt.out_dir_missing 1 "${R[@]}" --out "$NODIR_OUT"
check_bad "$NODIR_OUT" "${R[@]}" --out "$NODIR_OUT"
[ ! -e "$T/out/no" ] || REASONS+=("the tool created $T/out/no")
finish opt.out_dir_missing

# make-model / make-data options
WANT=(--dtype); bad opt.make_model_dtype "" "$LS_BIN" make-model --out "$T/c/mm_dtype" --dtype i8
WANT=("$BASE" --force); bad opt.make_model_exists "" "$LS_BIN" make-model --out "$BASE" "${MODEL_ARGS[@]}"
WANT=(--hidden); bad opt.make_model_hidden_0 "" "$LS_BIN" make-model --out "$T/c/mm_h0" --hidden 0
WANT=(--n); bad opt.make_data_n_0 "" "$LS_BIN" make-data --out "$T/c/md_n0.jsonl" --n 0
WANT=("$DATA" --force); bad opt.make_data_exists "" "$LS_BIN" make-data --out "$DATA"

# ---- under mpirun -np 2 --------------------------------------------------------------------------------------
if command -v mpirun >/dev/null 2>&1; then
  f=$D/bad_json.jsonl
  WANT=("$f:3:"); bad_mpi mpi.data_bad_json_line3 "$(o mpi_json)" "$LS_BIN" run --model "$BASE" --data "$f" --out "$(o mpi_json)"
  WANT=(--layers 99); bad_mpi mpi.layers_99 "$(o mpi_layers)" "${R[@]}" --out "$(o mpi_layers)" --layers 99
  m=$T/c/tensor_missing/m
  WANT=("$m" model.layers.1.); bad_mpi mpi.tensor_missing "$(o mpi_tensor)" "$LS_BIN" run --model "$m" --data "$DATA" --out "$(o mpi_tensor)"
  m=$T/c/shard_dotdot/m
  WANT=("$m/$INDEX" ../outside.safetensors); bad_mpi mpi.index_dotdot "$(o mpi_dotdot)" "$LS_BIN" run --model "$m" --data "$DATA" --out "$(o mpi_dotdot)"
  EXIST2=$T/out/existing_mpi.h5
  cp "$VALID_OUT" "$EXIST2"
  sum_before=$(sha256sum <"$EXIST2")
  WANT=("$EXIST2" --force)
  run mpi.existing_output mpi "${R[@]}" --out "$EXIST2"
  check_bad "" "${R[@]}" --out "$EXIST2"
  [ "$(sha256sum <"$EXIST2")" = "$sum_before" ] || REASONS+=("the existing output file was modified")
  finish mpi.existing_output
else
  fail mpi "mpirun not found"
fi

# ---- never write to an input (src/guard.c) ------------------------------------------------------------------
# every path a run writes is checked against every input by device + inode before
# anything is opened for writing; each case also checks that the inputs are unchanged
G=$T/guard
mkdir -p "$G"
cp -r "$BASE" "$G/m"
cp "$DATA" "$G/d.jsonl"
guard_sums() { sha256sum "$G/m/config.json" "$G/m/model.safetensors" "$G/d.jsonl"; }
SUMS=$(guard_sums)
GR=("$LS_BIN" run --model "$G/m" --data "$G/d.jsonl")
guard_case() { # name out want... -- args...
  local name=$1 out=$2; shift 2
  WANT=()
  while [ "$1" != -- ]; do WANT+=("$1"); shift; done
  shift
  run "$name" 1 "${GR[@]}" "$@"
  check_bad "$out" "${GR[@]}" "$@"
  [ "$(guard_sums)" = "$SUMS" ] || REASONS+=("an input was modified")
  finish "$name"
}
guard_case guard.summary_json_is_weights "$G/o1.h5" --summary-json "$G/m/model.safetensors" "same file" \
  -- --out "$G/o1.h5" --summary-json "$G/m/model.safetensors" --force
guard_case guard.out_is_data "" --out "$G/d.jsonl" "same file" -- --out "$G/d.jsonl" --force
ln -s m/config.json "$G/symlink.h5"
guard_case guard.out_symlink_to_config "" --out "$G/m/config.json" "through a link" \
  -- --out "$G/symlink.h5" --force
ln "$G/m/model.safetensors" "$G/hardlink.h5"
guard_case guard.out_hardlink_to_shard "" --out "$G/m/model.safetensors" "through a link" \
  -- --out "$G/hardlink.h5" --force
guard_case guard.ckpt_dir_holds_data "$G/o2.h5" --checkpoint-dir "$G/d.jsonl" \
  -- --out "$G/o2.h5" --checkpoint-dir "$G"
mkdir -p "$G/notes" && echo keep >"$G/notes/mine.txt"
guard_case guard.ckpt_dir_not_ours "$G/o3.h5" --checkpoint-dir "non-empty" \
  -- --out "$G/o3.h5" --checkpoint-dir "$G/notes" --checkpoint-every 1
[ -f "$G/notes/mine.txt" ] || fail guard.ckpt_dir_not_ours "a file of the user's directory was removed"
echo old >"$G/summary.json"
guard_case guard.summary_json_exists "$G/o4.h5" --summary-json "$G/summary.json" --force \
  -- --out "$G/o4.h5" --summary-json "$G/summary.json"
[ "$(cat "$G/summary.json")" = old ] || fail guard.summary_json_exists "the summary file was overwritten"
guard_case guard.summary_json_dir_missing "$G/o5.h5" --summary-json "$G/nowhere" "not writable" \
  -- --out "$G/o5.h5" --summary-json "$G/nowhere/s.json"
# the controls: with --force the summary is replaced; an empty or new checkpoint
# directory is taken, used and removed again
run guard.control 1 "${GR[@]}" --out "$G/ok.h5" --summary-json "$G/summary.json" --force \
  --checkpoint-dir "$G/fresh" --checkpoint-every 1
[ "$LAST_RC" = 0 ] || REASONS+=("exit $LAST_RC")
grep -q '"tokens_per_s"' "$G/summary.json" || REASONS+=("the summary was not written")
[ ! -e "$G/fresh" ] || REASONS+=("the checkpoint directory was left behind")
[ "$(guard_sums)" = "$SUMS" ] || REASONS+=("an input was modified")
finish guard.control

# ---- one writer per output: OUT.lock ------------------------------------------------------------------------
LOCKED=$T/out/locked.h5
python3 - "$LOCKED.lock" "$T/lock.ready" <<'PY' &
import fcntl, sys, time
f = open(sys.argv[1], "w")
fcntl.lockf(f, fcntl.LOCK_EX)
f.write("host otherhost pid 4242\n")
f.flush()
open(sys.argv[2], "w").close()
time.sleep(60)
PY
holder=$!
for _ in $(seq 100); do [ -e "$T/lock.ready" ] && break; sleep 0.1; done
WANT=("$LOCKED" "otherhost pid 4242"); bad lock.held_by_another_run "$LOCKED" "${R[@]}" --out "$LOCKED" --force
kill "$holder" 2>/dev/null; wait "$holder" 2>/dev/null
# a lock file left by a killed run holds no lock: taken over, and removed at the end
good lock.stale_taken_over "$LOCKED" "${R[@]}" --out "$LOCKED" --force
[ ! -e "$LOCKED.lock" ] || fail lock.stale_taken_over "the lock file was left behind"

# ---- summary -------------------------------------------------------------------------------------------------
echo "summary: $N_PASS passed, $N_FAIL failed"
if [ "$N_FAIL" -gt 0 ]; then
  echo "failed: ${FAILED[*]}"
  echo "logs kept in $LOGS"
  exit 1
fi
rm -rf "$T"
exit 0
