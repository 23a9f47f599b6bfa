#!/usr/bin/env bash
# tests/cli/golden.sh: golden-output test of the CPU backend (CTest: cli.golden).
#
# Runs a fixed list of sweeps on the fixture models and compares a sha256 of every output
# dataset and of every deterministic attribute with tests/fixtures/golden/cpu_outputs.sha256,
# recorded from an earlier binary. It proves that a change of the engine writes the same
# files, bit for bit.
#
#   golden.sh                 verify against tests/fixtures/golden/cpu_outputs.sha256
#   golden.sh --golden FILE   verify against FILE
#   golden.sh --record FILE   run the cases and write FILE (nothing is written if any fails)
#
# Environment (set by tests/CMakeLists.txt): LS_BIN (the layersweep binary), LS_FIXTURES
# (tests/fixtures), LS_TEST_TMP (scratch directory).
#
# Exit status: 0 every hash matches; 1 a mismatch, a dataset or attribute present on one side
# only, a case whose command failed or whose file is not "complete", a malformed golden file;
# 77 (CTest SKIP_RETURN_CODE) when the golden file was recorded on another kind of machine;
# 2 usage.
#
# Cases (the six model directories of tests/fixtures the golden file was recorded on, with
# tests/fixtures/prompts.jsonl, which has labels and ids; all with --backend cpu):
#   <model>.{last_token,mean,none}        --hooks all --layers all, single rank
#   <model>.none.np3.mb20                 mpirun -np 3, --pool none --microbatch-tokens 20
#                                         (mistral_window, qwen2_bias_sharded)
#   subset.*                              --layers 0,-1 / 1 / -2--1 with a few hooks
#   data_labels_only.*, data_plain.*      prompts.jsonl with the ids, or ids and labels,
#                                         removed (written to the scratch dir by sed)
#
# What is hashed, per output file (one line per object: "<case> <kind> <object> <sha256>"):
#   dataset        every dataset outside /profile: its type and shape (the header that
#                  h5dump -b prints) followed by its raw bytes (h5dump -b LE; the byte count
#                  is checked against the shape, since h5dump writes no bytes for some
#                  types); string and other non-numeric datasets are hashed from their
#                  full text dump (h5dump -m %.17g), because h5dump -b writes nothing for
#                  them (-b LE) or drops the string padding (-b FILE).
#   dataset-shape  /profile/* timing datasets (read_s, forward_s, ...): type and shape only
#                  (h5dump -H), their values are wall-clock times. /profile/layer_bytes is
#                  deterministic and hashed in full as a "dataset".
#   attr           every attribute, as h5dump -m %.17g prints it (floats exact), except:
#   attr-shape     /profile/total_s: the run's wall-clock time, different on every run (the
#                  only attribute that differed between two runs of the same binary with the
#                  same arguments); only its type and shape are hashed.
#                  The path-bearing root attributes /command (argv: the binary's path, the
#                  scratch dir, --out), /model_path and /data_path (the fixtures' location)
#                  differ between binaries and checkouts, not between runs: they are hashed
#                  after the paths of LS_BIN, LS_FIXTURES and the scratch dir are replaced by
#                  @LS_BIN@, @FIXTURES@ and @TMP@ (and their STRSIZE lines dropped, as the
#                  length follows the paths), so everything else in them is still checked.
#   group          every group (name only), so a new or missing group is noticed too.
#
# Bit-identical floats depend on the machine: OpenBLAS picks its sgemm kernels per CPU, the
# build uses -march=native, and the attribute text comes from h5dump. So the golden file
# starts with a signature line: CPU model name, a digest of the CPU flags, the OpenBLAS core
# that LS_BIN selects (OPENBLAS_VERBOSE=2 prints "Core: ...") and the OpenBLAS library file
# it loads, the compiler named in LS_BIN's .comment section, the h5dump version, and the
# number of hashes. On a machine with another signature the test prints SKIPPED and exits
# 77; re-record there with --record if wanted.
# They also depend on the build flags, which the binary does not record: the golden file
# holds the outputs of an optimized -march=native build (Release -O3; RelWithDebInfo -O2
# with ASan+UBSan gives the same bits); a -O0 (Debug) or -DLS_NATIVE=OFF build writes other
# last bits and fails here, so CTest should register this test only for the former.
set -u
export LC_ALL=C

usage() {
  echo "usage: golden.sh [--golden FILE] | --record FILE   (env: LS_BIN, LS_FIXTURES, LS_TEST_TMP)" >&2
  exit 2
}

: "${LS_BIN:?set LS_BIN to the layersweep binary}"
: "${LS_TEST_TMP:=${TMPDIR:-/tmp}}"
: "${LS_FIXTURES:=$(cd "$(dirname "${BASH_SOURCE[0]}")/../fixtures" 2>/dev/null && pwd)}"

MODE=verify
GOLDEN=$LS_FIXTURES/golden/cpu_outputs.sha256
case $# in
  0) ;;
  2) case $1 in
       --record) MODE=record; GOLDEN=$2 ;;
       --golden) GOLDEN=$2 ;;
       *) usage ;;
     esac ;;
  *) usage ;;
esac

# The golden hashes were recorded with one thread per rank (as the CTest environment
# runs every test): force it, whatever the caller's environment says.
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
# OpenBLAS's own kernel choice, as the golden binary used it: layersweep restarts with
# better kernels when OpenBLAS falls back to pre-AVX2 ones (kernels/cpu/ops_cpu.c), and
# other kernels give other last bits
export LS_BLAS_CORE=keep
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=${OMPI_MCA_btl_vader_single_copy_mechanism:-none}
export OMPI_MCA_rmaps_base_oversubscribe=1
TO=120 # seconds per sweep

die() { echo "FAIL golden: $*"; exit 1; }

for tool in h5dump sha256sum mpirun timeout awk sed sort ldd readelf; do
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found (hdf5-tools, coreutils, binutils, Open MPI are needed)"
done
[ -x "$LS_BIN" ] || die "LS_BIN=$LS_BIN is not an executable"
FIX=$(cd "$LS_FIXTURES" 2>/dev/null && pwd -P) || die "LS_FIXTURES=$LS_FIXTURES is not a directory"
[ -f "$FIX/prompts.jsonl" ] || die "$FIX/prompts.jsonl not found"

# ---- machine signature -------------------------------------------------------------------
machine_signature() {
  local model flags help core blas cc h5v
  model=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo | head -n 1)
  [ -n "$model" ] || model="$(uname -m) (no model name in /proc/cpuinfo)"
  flags=$(sed -n 's/^\(flags\|Features\)[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo | head -n 1 |
          tr ' ' '\n' | sed '/^$/d' | sort -u | sha256sum | cut -c1-12)
  help=$(OPENBLAS_VERBOSE=2 "$LS_BIN" --help 2>&1) || { echo "'$LS_BIN --help' failed" >&2; return 1; }
  core=$(printf '%s\n' "$help" | sed -n 's/^Core:[[:space:]]*//p' | head -n 1)
  [ -n "$core" ] || core="unknown (no Core: line with OPENBLAS_VERBOSE=2)"
  # the OpenBLAS library LS_BIN loads (else the system's libopenblas.so.0)
  blas=$(ldd "$LS_BIN" 2>/dev/null | awk '/libopenblas/ { print $3; exit }')
  [ -n "$blas" ] || blas=$(ldconfig -p 2>/dev/null | awk '/libopenblas\.so\.0 / { print $NF; exit }')
  if [ -n "$blas" ] && [ -e "$blas" ]; then blas=$(basename "$(readlink -f "$blas")"); else blas=unknown; fi
  # the compiler that built LS_BIN (its code generation decides FMA contraction)
  cc=$(readelf -p .comment "$LS_BIN" 2>/dev/null | sed -n 's/^ *\[ *[0-9a-f]*\] *//p' | head -n 1)
  [ -n "$cc" ] || cc=unknown
  h5v=$(h5dump --version 2>&1 | sed -n 's/.*Version[[:space:]]*//p' | head -n 1)
  printf 'cpu=%s; cpuflags=%s; openblas core=%s lib=%s; compiler=%s; h5dump=%s' \
    "$model" "$flags" "$core" "$blas" "$cc" "$h5v"
}
SIG=$(machine_signature) || die "cannot compute the machine signature"

if [ "$MODE" = verify ]; then
  [ -r "$GOLDEN" ] || die "golden file $GOLDEN not found (record it with: golden.sh --record FILE)"
  first=$(head -n 1 "$GOLDEN")
  gsig=$(printf '%s\n' "$first" | sed -n 's/^# signature: \(.*\); hashes=[0-9][0-9]*$/\1/p')
  gcount=$(printf '%s\n' "$first" | sed -n 's/^# signature: .*; hashes=\([0-9][0-9]*\)$/\1/p')
  if [ -z "$gsig" ] || [ -z "$gcount" ]; then
    die "$GOLDEN: the first line is not '# signature: ...; hashes=N'"
  fi
  if [ "$gsig" != "$SIG" ]; then
    echo "SKIPPED: golden hashes were recorded on $gsig, this machine is $SIG"
    exit 77
  fi
  nbody=$(grep -vc '^#' "$GOLDEN")
  [ "$nbody" = "$gcount" ] || die "$GOLDEN: the signature says $gcount hashes, the file has $nbody lines"
  bad=$(grep -v '^#' "$GOLDEN" | grep -Evx '[^ ]+ [^ ]+ /[^ ]* [0-9a-f]{64}' | head -n 1)
  [ -z "$bad" ] || die "$GOLDEN: malformed line: $bad"
  dup=$(grep -v '^#' "$GOLDEN" | awk '{ print $1, $2, $3 }' | sort | uniq -d | head -n 1)
  [ -z "$dup" ] || die "$GOLDEN: duplicate entry: $dup"
fi

mkdir -p "$LS_TEST_TMP" || die "cannot create $LS_TEST_TMP"
T=$(mktemp -d "$LS_TEST_TMP/golden.XXXXXX") || die "cannot create a scratch dir in $LS_TEST_TMP"
T=$(cd "$T" && pwd -P) || die "scratch dir vanished"
NEW=$T/new.sha256
: >"$NEW"

# ---- path normalization of attribute text ------------------------------------------------
# "<from>\t<to>" lines, longest <from> first, read by the awk program in hash_attrs
NORM=$T/norm.tsv
add_norm() { [ -n "$1" ] && printf '%d\t%s\t%s\n' "${#1}" "$1" "$2"; }
{ add_norm "$T" @TMP@
  add_norm "$FIX" @FIXTURES@
  add_norm "$LS_BIN" @LS_BIN@
  real_bin=$(readlink -f "$LS_BIN")
  [ "$real_bin" != "$LS_BIN" ] && add_norm "$real_bin" @LS_BIN@
  [ "$LS_FIXTURES" != "$FIX" ] && add_norm "$LS_FIXTURES" @FIXTURES@
} | sort -t$'\t' -k1,1nr | cut -f 2- >"$NORM" || die "cannot write $NORM"

# ---- hashing of one output file -----------------------------------------------------------
# Each object's hashed bytes are written to a file <dir>/<index>; one sha256sum call hashes
# them all (a few processes per dataset, one h5dump for all attributes of a file).
HASH_ERR=
RE_DT=$'\n''   DATATYPE  ([^'$'\n'']*)'
RE_DS=$'\n''   DATASPACE  ([^'$'\n'']*)'
RE_NUM='^H5T_(IEEE_F|STD_I|STD_U|STD_B)(8|16|32|64)(LE|BE)$'
RE_SIMPLE='^SIMPLE \{ \( ([0-9, ]+) \)'

# h5dump text without the DIMENSION_LIST attribute blocks (the named dimensions, added to
# the format after the golden file was recorded: see ADDED_RE below)
no_dimlist() {
  awk '/^ *ATTRIBUTE "DIMENSION_LIST" \{/ { skip = 1; depth = 0 }
       skip { depth += gsub(/\{/, "{"); depth -= gsub(/\}/, "}"); if (depth <= 0) skip = 0; next }
       { print }'
}

hash_dataset() { # file path kind(dataset|dataset-shape) outfile: writes the bytes to hash
  local file=$1 path=$2 kind=$3 o=$4 hdr dt ds bits nelem want got d
  if [ "$kind" = dataset-shape ]; then
    h5dump -H -d "$path" "$file" >"$o.hdr" 2>&1 || { HASH_ERR="h5dump -H -d $path failed: $(head -c 300 "$o.hdr")"; return 1; }
    tail -n +2 "$o.hdr" | no_dimlist >"$o" # without 'HDF5 "<file>" {'
    return
  fi
  # h5dump -b writes the raw bytes to -o and the type and shape to stdout
  rm -f "$o.bin"
  h5dump -b LE -d "$path" -o "$o.bin" "$file" >"$o.hdr" 2>&1 || { HASH_ERR="h5dump -b -d $path failed: $(head -c 300 "$o.hdr")"; return 1; }
  IFS= read -r -d '' hdr <"$o.hdr"
  [[ $hdr =~ $RE_DT ]] || { HASH_ERR="$path: no DATATYPE in: ${hdr:0:300}"; return 1; }
  dt=${BASH_REMATCH[1]}
  if [[ $dt =~ $RE_NUM ]]; then
    bits=${BASH_REMATCH[2]}
    [[ $hdr =~ $RE_DS ]] || { HASH_ERR="$path: no DATASPACE in: ${hdr:0:300}"; return 1; }
    ds=${BASH_REMATCH[1]}
    if [ "$ds" = SCALAR ]; then nelem=1
    elif [ "$ds" = NULL ]; then nelem=0
    elif [[ $ds =~ $RE_SIMPLE ]]; then
      nelem=1
      for d in ${BASH_REMATCH[1]//,/ }; do nelem=$((nelem * d)); done
    else HASH_ERR="$path: unknown dataspace '$ds'"; return 1
    fi
    want=$((nelem * bits / 8))
    [ -e "$o.bin" ] || : >"$o.bin"
    got=$(stat -c %s "$o.bin")
    [ "$got" = "$want" ] || { HASH_ERR="$path: h5dump -b wrote $got bytes, the shape says $want"; return 1; }
    { tail -n +2 "$o.hdr"; cat "$o.bin"; } >"$o"
  else
    # strings (/samples/id) and any other non-numeric type: the full text dump, because
    # h5dump -b writes nothing (-b LE) or the strings without their padding (-b FILE)
    h5dump -m %.17g -d "$path" "$file" >"$o.txt" 2>&1 || { HASH_ERR="h5dump -d $path failed: $(head -c 300 "$o.txt")"; return 1; }
    tail -n +2 "$o.txt" | no_dimlist >"$o"
  fi
}

hash_attrs() { # file dir manifest: one h5dump for every attribute listed in manifest
  # ("<index>\t<kind>\t<path>" lines); writes <dir>/<index> for each
  local file=$1 dir=$2 man=$3 args=() path
  while IFS=$'\t' read -r _ _ path; do args+=(-a "$path"); done <"$man"
  [ "${#args[@]}" -gt 0 ] || return 0
  h5dump -m %.17g "${args[@]}" "$file" >"$dir/attrs.txt" 2>&1 ||
    { HASH_ERR="h5dump -a ... failed: $(grep -m 1 -i error "$dir/attrs.txt")"; return 1; }
  # split the dump into its top-level ATTRIBUTE blocks, in the order asked; check each
  # block's name; replace the paths (NORM) and then drop STRSIZE; attr-shape: no DATA
  awk -v dir="$dir" '
    function repl(s, from, to,   out, p) {
      out = ""
      while ((p = index(s, from)) > 0) { out = out substr(s, 1, p - 1) to; s = substr(s, p + length(from)) }
      return out s
    }
    function flush(   t, i, n, lines, o, out) {
      t = block
      for (i = 1; i <= nnorm; i++) t = repl(t, nfrom[i], nto[i])
      n = split(t, lines, "\n"); out = ""
      for (i = 1; i <= n; i++) {
        if (t != block && lines[i] ~ /^[ \t]*STRSIZE /) continue
        out = out lines[i] "\n"
      }
      o = dir "/" midx[cur]
      printf "%s", out > o
      close(o)
    }
    FILENAME == ARGV[1] { split($0, f, "\t"); nnorm++; nfrom[nnorm] = f[1]; nto[nnorm] = f[2]; next }
    FILENAME == ARGV[2] { split($0, f, "\t"); nman++; midx[nman] = f[1]; mkind[nman] = f[2]; mpath[nman] = f[3]; next }
    inblk == 0 && /^ATTRIBUTE "/ {
      cur++
      if (cur > nman) { print "more attribute blocks than asked for"; bad = 1; exit 1 }
      name = mpath[cur]; sub(/.*\//, "", name)
      if ($0 != "ATTRIBUTE \"" name "\" {") { print "expected attribute " mpath[cur] ", h5dump printed: " $0; bad = 1; exit 1 }
      inblk = 1; skipdata = 0; block = $0; next
    }
    inblk == 1 && /^}$/ { block = block "\n" $0; flush(); inblk = 0; next }
    inblk == 1 {
      if (mkind[cur] == "attr-shape" && $0 ~ /^[ \t]*DATA \{/) skipdata = 1
      if (!skipdata) block = block "\n" $0
      next
    }
    END { if (!bad && (inblk || cur != nman)) { print "h5dump printed " cur " attributes of " nman; exit 1 } }
  ' "$NORM" "$man" "$dir/attrs.txt" >"$dir/attrs.err" ||
    { HASH_ERR="splitting the attributes of $file: $(head -c 300 "$dir/attrs.err")"; return 1; }
}

RE_LIST='^ (attribute|dataset|group) +(/[^[:space:]]*)$'

hash_file() { # case file dir -> "<case> <kind> <object> <sha256>" lines on stdout
  local name=$1 file=$2 dir=$3 listing line kind path n=0 nd=0 h f i
  local kinds=() paths=()
  if ! rm -rf "$dir" || ! mkdir -p "$dir"; then HASH_ERR="cannot create $dir"; return 1; fi
  listing=$(h5dump -n 1 "$file" 2>&1) || { HASH_ERR="h5dump -n failed: ${listing:0:300}"; return 1; }
  : >"$dir/attrs.manifest"
  while IFS= read -r line; do
    if [[ $line =~ $RE_LIST ]]; then
      kind=${BASH_REMATCH[1]} path=${BASH_REMATCH[2]}
    elif [[ $line =~ ^\ [a-z] ]]; then # a link, a named datatype, a name with white space
      HASH_ERR="h5dump -n line not handled by golden.sh: '$line'"; return 1
    else
      continue # 'HDF5 "..." {', 'FILE_CONTENTS {', ' }', '}'
    fi
    [ "$kind" = attribute ] && kind=attr
    case $kind:$path in
      dataset:/profile/layer_bytes) ;;
      dataset:/profile/*) kind=dataset-shape ;;
      attr:/profile/total_s) kind=attr-shape ;;
    esac
    case $kind in
      group) printf 'group %s\n' "$path" >"$dir/$n" ;;
      dataset*) hash_dataset "$file" "$path" "$kind" "$dir/$n" || return 1; nd=$((nd + 1)) ;;
      attr*) printf '%s\t%s\t%s\n' "$n" "$kind" "$path" >>"$dir/attrs.manifest" ;;
    esac
    kinds+=("$kind"); paths+=("$path"); n=$((n + 1))
  done <<<"$listing"
  [ "$nd" -gt 0 ] || { HASH_ERR="no dataset found in the file (h5dump -n: ${listing:0:300})"; return 1; }
  hash_attrs "$file" "$dir" "$dir/attrs.manifest" || return 1
  i=0
  while read -r h f; do
    [ "$f" = "$i" ] || { HASH_ERR="sha256sum output out of order ($f, expected $i)"; return 1; }
    printf '%s %s %s %s\n' "$name" "${kinds[$i]}" "${paths[$i]}" "$h"
    i=$((i + 1))
  done < <(cd "$dir" && sha256sum -- $(seq 0 $((n - 1))))
  [ "$i" = "$n" ] || { HASH_ERR="sha256sum hashed $i of $n objects"; return 1; }
}

h5_status() { # root attribute "status" ("" when absent / unreadable)
  h5dump -a /status "$1" 2>/dev/null | sed -n 's/.*(0): "\(.*\)".*/\1/p' | head -n 1
}

# ---- running the cases --------------------------------------------------------------------
CASES=()
declare -A CASE_ERR=()
N_RUN_FAIL=0

case_error() { CASE_ERR[$1]=$2; N_RUN_FAIL=$((N_RUN_FAIL + 1)); echo "FAIL $1: $2"; }

run_case() { # name np model data [run options...]
  local name=$1 np=$2 model=$3 data=$4 dir out rc st
  shift 4
  CASES+=("$name")
  dir=$T/cases/$name
  out=$dir/out.h5
  mkdir -p "$dir" || { case_error "$name" "cannot create $dir"; return; }
  local cmd=("$LS_BIN" run --model "$FIX/$model" --data "$data" --out "$out" --backend cpu
             --progress lines "$@")
  if [ "$np" -gt 1 ]; then
    cmd=(mpirun --oversubscribe --allow-run-as-root -np "$np" -x OMP_NUM_THREADS -x LS_BLAS_CORE
         -x OPENBLAS_NUM_THREADS "${cmd[@]}")
  fi
  printf '%s\n' "${cmd[*]}" >"$dir/cmd"
  timeout "$TO" "${cmd[@]}" >"$dir/log" 2>&1
  rc=$?
  if [ "$rc" != 0 ]; then
    case_error "$name" "exit status $rc ($( { grep -m 1 'error' "$dir/log" || tail -n 1 "$dir/log"; } | head -c 300)); command: ${cmd[*]}"
    return
  fi
  st=$(h5_status "$out")
  if [ "$st" != complete ]; then
    case_error "$name" "exit status 0 but /status is '$st', not 'complete'"
    return
  fi
  HASH_ERR=
  if ! hash_file "$name" "$out" "$dir/h" >"$dir/hashes"; then
    case_error "$name" "hashing $out: ${HASH_ERR:-failed}"
    return
  fi
  cat "$dir/hashes" >>"$NEW"
}

# derived data files: prompts.jsonl without ids, and without ids and labels
mkdir -p "$T/data" || die "cannot create $T/data"
P=$FIX/prompts.jsonl
NP=$(grep -c . "$P")
sed -E 's/, "id": "[^"]*"}$/}/' "$P" >"$T/data/labels_only.jsonl" || die "sed failed"
sed -E 's/, "label": -?[0-9]+, "id": "[^"]*"}$/}/' "$P" >"$T/data/plain.jsonl" || die "sed failed"
if [ "$(grep -c '"label": ' "$T/data/labels_only.jsonl")" != "$NP" ] ||
   [ "$(grep -c '"id": ' "$T/data/labels_only.jsonl")" != 0 ] ||
   [ "$(grep -c -E '"(label|id)": ' "$T/data/plain.jsonl")" != 0 ] ||
   [ "$(grep -c '"input_ids": ' "$T/data/plain.jsonl")" != "$NP" ]; then
  die "could not derive the label-only / plain data files from $P (has its format changed?)"
fi

# the models the golden file was recorded on (the fixtures of the pre-redesign binary);
# fixtures added since are checked against transformers by test_fixtures, not here
MODELS=(llama3_rope_f16 llama_gqa_f32 llama_linear_rope llama_mqa_bf16 mistral_window
        qwen2_bias_sharded)
for m in "${MODELS[@]}"; do [ -f "$FIX/$m/config.json" ] || die "fixture model $m not found in $FIX"; done
has_model() { local m; for m in "${MODELS[@]}"; do [ "$m" = "$1" ] && return 0; done; return 1; }
for m in mistral_window qwen2_bias_sharded llama3_rope_f16 llama_linear_rope llama_mqa_bf16 llama_gqa_f32; do
  has_model "$m" || die "fixture model $m not found in $FIX"
done

START=$SECONDS
echo "golden: $MODE, LS_BIN=$LS_BIN, ${#MODELS[@]} fixture models, scratch $T"
for m in "${MODELS[@]}"; do
  for pool in last_token mean none; do
    run_case "$m.$pool" 1 "$m" "$P" --hooks all --layers all --pool "$pool"
  done
done
for m in mistral_window qwen2_bias_sharded; do
  run_case "$m.none.np3.mb20" 3 "$m" "$P" --hooks all --layers all --pool none --microbatch-tokens 20
done
run_case "subset.llama3_rope_f16.L0,-1.mean" 1 llama3_rope_f16 "$P" \
  --hooks residual_post,final_norm --layers 0,-1 --pool mean
run_case "subset.llama_linear_rope.L1.last_token" 1 llama_linear_rope "$P" \
  --hooks residual_pre,attn_out --layers 1 --pool last_token
run_case "subset.qwen2_bias_sharded.L-2--1.none" 1 qwen2_bias_sharded "$P" \
  --hooks mlp_out,residual_post --layers -2--1 --pool none
run_case "data_labels_only.llama_mqa_bf16.mean" 1 llama_mqa_bf16 "$T/data/labels_only.jsonl" \
  --hooks all --layers all --pool mean
run_case "data_plain.llama_gqa_f32.none" 1 llama_gqa_f32 "$T/data/plain.jsonl" \
  --hooks all --layers all --pool none
ELAPSED=$((SECONDS - START))

NHASH=$(wc -l <"$NEW")

# ---- record -------------------------------------------------------------------------------
if [ "$MODE" = record ]; then
  if [ "$N_RUN_FAIL" != 0 ]; then
    echo "golden: $N_RUN_FAIL case(s) failed, nothing written (scratch kept: $T)"
    exit 1
  fi
  mkdir -p "$(dirname "$GOLDEN")" || die "cannot create the directory of $GOLDEN"
  version=$("$LS_BIN" --version 2>&1 | head -n 1)
  if ! { printf '# signature: %s; hashes=%s\n' "$SIG" "$NHASH" &&
          printf '# written by tests/cli/golden.sh --record from %s; lines: <case> <kind> <object> <sha256>\n' "$version" &&
          cat "$NEW"; } >"$GOLDEN.tmp.$$" ||
     ! mv "$GOLDEN.tmp.$$" "$GOLDEN"; then
    rm -f "$GOLDEN.tmp.$$"
    die "cannot write $GOLDEN"
  fi
  echo "golden: wrote $GOLDEN: ${#CASES[@]} cases, $NHASH hashes (${ELAPSED}s)"
  rm -rf "$T"
  exit 0
fi

# ---- verify -------------------------------------------------------------------------------
grep -v '^#' "$GOLDEN" >"$T/golden.body" || die "cannot read $GOLDEN"
failed_cases=$(for c in "${!CASE_ERR[@]}"; do printf '%s\n' "$c"; done)
# one line per difference: "<case>\t<message>"
printf '%s\n' "$failed_cases" >"$T/failed_cases"
# Objects the format gained after the golden file was recorded (metadata only: every
# activation dataset is still compared by its bytes): the named dimensions (coordinate
# datasets, their dimension-scale attributes, each dataset's DIMENSION_LIST) and the
# out_dtype, compress, steer, activations_stored and project attributes, the model's source
# (model_source, model_location, model_hub_id, model_revision), the network counters of
# /profile, /samples/input_ids (the ids that went in: the data's own). New in the output but not in the golden file is
# then not a failure.
ADDED_RE='^((attr|dataset) /(layer|hidden|sample|token|sample_edge|rank|layer_computed)(/(CLASS|NAME|REFERENCE_LIST))?|attr /.*/DIMENSION_LIST|attr /(out_dtype|compress|steer|activations_stored|project|model_source|model_location|model_hub_id|model_revision)|attr /profile/(network_bytes|network_s|http_cache_bytes|http_retries)|dataset /samples/input_ids)$'
awk -v OFS='\t' -v added="$ADDED_RE" '
  FILENAME == ARGV[1] { if (NF) skip[$1] = 1; next }
  FILENAME == ARGV[2] { k = $1 " " $2 " " $3; g[k] = $4; gcase[k] = $1; what[k] = $2 " " $3; next }
  { k = $1 " " $2 " " $3; seen[k] = 1
    if (!(k in g) && ($2 " " $3) ~ added) next
    if (!(k in g)) print $1, $2 " " $3 " is in the new output but not in the golden file"
    else if (g[k] != $4) print $1, $2 " " $3 " differs" }
  END { for (k in g) if (!(k in seen) && !(gcase[k] in skip))
          print gcase[k], what[k] " is in the golden file but missing from the new output" }
' "$T/failed_cases" "$T/golden.body" "$NEW" | sort >"$T/diffs" || die "comparison failed"

N_PASS=0
N_FAIL=$N_RUN_FAIL
declare -A RAN=()
for c in "${CASES[@]}"; do
  RAN[$c]=1
  [ -n "${CASE_ERR[$c]+x}" ] && continue # already reported as FAIL
  msgs=$(awk -F '\t' -v c="$c" '$1 == c { print "    " $2 }' "$T/diffs")
  n=$(awk -v c="$c" '$1 == c' "$T/golden.body" | wc -l)
  if [ -z "$msgs" ] && [ "$n" -gt 0 ]; then
    N_PASS=$((N_PASS + 1))
    echo "PASS $c ($n hashes)"
  else
    N_FAIL=$((N_FAIL + 1))
    [ "$n" -gt 0 ] || msgs="    the case is not in the golden file (re-record it)"
    echo "FAIL $c:"
    printf '%s\n' "$msgs"
  fi
done
while IFS= read -r c; do
  if [ -z "${RAN[$c]+x}" ]; then
    N_FAIL=$((N_FAIL + 1))
    echo "FAIL $c: in the golden file, but this script does not run it (or the fixture is gone)"
  fi
done < <(awk '{ print $1 }' "$T/golden.body" | sort -u)

echo "golden tests: $N_PASS passed, $N_FAIL failed; $NHASH hashes computed, $gcount in the golden file (${ELAPSED}s)"
if [ "$N_FAIL" != 0 ]; then
  echo "scratch dir kept for inspection: $T"
  exit 1
fi
rm -rf "$T"
exit 0
