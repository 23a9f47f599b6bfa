#!/usr/bin/env bash
# tests/cli/plugin.sh (CTest: cli.plugin): the CUDA backend is a plugin.
#   - the layersweep binary has no DT_NEEDED on the CUDA runtime, cuBLAS or NCCL;
#   - a CPU sweep (--backend cpu, and auto on a machine without an NVIDIA driver) maps
#     none of them, nor the plugin (the dynamic loader's own log, LD_DEBUG=files), and its
#     peak RSS is under 100 MiB (not under sanitizers);
#   - when the build has the plugin: it links cuBLAS and NCCL, exports ls_plugin_entry,
#     and loads into the binary (every symbol resolved: RTLD_NOW) when asked for with
#     LS_CUDA_PLUGIN; without a GPU the run is then refused in one line by the plugin's
#     own probe;
#   - a missing or foreign plugin is one clear line naming it.
# env: LS_BIN, LS_BUILD_DIR, LS_HAVE_CUDA (ON/OFF), LS_SANITIZE, LS_TEST_TMP.
set -u
ls=${LS_BIN:?set LS_BIN}
mkdir -p "${LS_TEST_TMP:-/tmp}"
tmp=$(mktemp -d "${LS_TEST_TMP:-/tmp}/plugin.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
fails=0 passes=0
pass() { passes=$((passes + 1)); echo "PASS $1"; }
fail() { fails=$((fails + 1)); echo "FAIL $1: $2"; }
CUDA_RE='libcudart|libcublas|libnccl|liblayersweep-cuda|libcuda\.so'
has_driver=0
[ -e /proc/driver/nvidia/version ] && has_driver=1

# 1. no DT_NEEDED on CUDA libraries
needed=$(readelf -d "$ls" | grep NEEDED)
if [ -z "$needed" ]; then fail needed "readelf -d $ls lists no NEEDED entries (is it dynamic?)"
elif echo "$needed" | grep -Eq "$CUDA_RE"; then fail needed "$(echo "$needed" | grep -E "$CUDA_RE")"
else pass needed; fi

# 2. a tiny CPU sweep maps no CUDA library; its peak RSS
"$ls" make-model --out "$tmp/m" --hidden 64 --intermediate 128 --layers 2 --heads 4 --kv-heads 2 \
  --vocab 256 --dtype f32 >/dev/null 2>&1 || fail setup "make-model failed"
"$ls" make-data --out "$tmp/d.jsonl" --n 16 --min-len 4 --max-len 24 --vocab 256 >/dev/null 2>&1 ||
  fail setup "make-data failed"
modes=(cpu)
[ $has_driver = 0 ] && modes+=(auto)
for be in "${modes[@]}"; do
  unset LS_CUDA_PLUGIN
  LD_DEBUG=files "$ls" run --model "$tmp/m" --data "$tmp/d.jsonl" --out "$tmp/o_$be.h5" \
    --hooks all --backend "$be" --force >"$tmp/ld_$be.log" 2>&1
  rc=$?
  if [ $rc != 0 ]; then fail "cpu_sweep_maps_no_cuda.$be" "exit $rc: $(grep -v '^ *[0-9]*:' "$tmp/ld_$be.log" | tail -n 3)"
  elif ! grep -q 'file=libmpi' "$tmp/ld_$be.log"; then fail "cpu_sweep_maps_no_cuda.$be" "LD_DEBUG=files logged no libraries (cannot tell)"
  elif grep -Eq "file=[^ ]*($CUDA_RE)" "$tmp/ld_$be.log"; then
    fail "cpu_sweep_maps_no_cuda.$be" "$(grep -Eo "file=[^ ]*($CUDA_RE)[^ ]*" "$tmp/ld_$be.log" | sort -u | tr '\n' ' ')"
  else pass "cpu_sweep_maps_no_cuda.$be"; fi
done
if [ "${LS_SANITIZE:-OFF}" = ON ]; then
  echo "SKIP peak_rss (sanitizer build)"
else
  kib=$(python3 - "$ls" "$tmp" <<'PY'
import resource, subprocess, sys
ls, tmp = sys.argv[1], sys.argv[2]
r = subprocess.run([ls, "run", "--model", tmp + "/m", "--data", tmp + "/d.jsonl", "--out",
                    tmp + "/rss.h5", "--hooks", "all", "--backend", "cpu", "--force"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss if r.returncode == 0 else -1)
PY
)
  if [ "${kib:--1}" -lt 0 ]; then fail peak_rss "the sweep failed"
  elif [ "$kib" -ge 102400 ]; then fail peak_rss "peak RSS $((kib / 1024)) MiB >= 100 MiB"
  else pass "peak_rss ($((kib / 1024)) MiB)"; fi
fi

# 3. the plugin itself
plugin="${LS_BUILD_DIR:-}/liblayersweep-cuda.so"
if [ "${LS_HAVE_CUDA:-OFF}" = ON ]; then
  if [ ! -f "$plugin" ]; then fail plugin_built "$plugin is missing"
  else
    pn=$(readelf -d "$plugin" | grep NEEDED)
    if echo "$pn" | grep -q libcublas && echo "$pn" | grep -q libnccl; then pass plugin_links_cuda
    else fail plugin_links_cuda "NEEDED: $(echo "$pn" | tr '\n' ' ')"; fi
    if nm -D --defined-only "$plugin" | grep -qw ls_plugin_entry; then pass plugin_exports_entry
    else fail plugin_exports_entry "no ls_plugin_entry in the dynamic symbols"; fi
    if [ $has_driver = 0 ]; then
      LS_CUDA_PLUGIN="$plugin" "$ls" run --model "$tmp/m" --data "$tmp/d.jsonl" --out "$tmp/c.h5" \
        --backend cuda >"$tmp/cuda.out" 2>"$tmp/cuda.err"
      rc=$?
      errs=$(grep -c 'error' "$tmp/cuda.err")
      if [ $rc = 0 ]; then fail plugin_loads "--backend cuda succeeded without a GPU"
      elif grep -qi 'undefined symbol\|cannot open shared' "$tmp/cuda.err"; then fail plugin_loads "$(cat "$tmp/cuda.err")"
      elif [ "$errs" != 1 ] || ! grep -q 'no usable device' "$tmp/cuda.err"; then fail plugin_loads "want one 'no usable device' line: $(cat "$tmp/cuda.err")"
      elif [ -e "$tmp/c.h5" ]; then fail plugin_loads "an output file was left"
      else pass "plugin_loads ($(cat "$tmp/cuda.err"))"; fi
    else
      echo "SKIP plugin_loads (this machine has an NVIDIA driver: the GPU tests load the plugin)"
    fi
  fi
else
  echo "SKIP plugin checks (built without the CUDA toolkit)"
fi

# 4. a missing or foreign plugin: one line naming it
for case in missing foreign; do
  if [ $case = missing ]; then p="$tmp/nowhere/liblayersweep-cuda.so"; want="nowhere"
  else p=$(ldconfig -p 2>/dev/null | grep -o '/[^ ]*libm\.so\.6' | head -n 1); want="not a layersweep"; fi
  [ -z "$p" ] && { echo "SKIP plugin_$case (no libm found)"; continue; }
  LS_CUDA_PLUGIN="$p" "$ls" run --model "$tmp/m" --data "$tmp/d.jsonl" --out "$tmp/x.h5" \
    --backend cuda >/dev/null 2>"$tmp/$case.err"
  rc=$?
  if [ $rc = 0 ]; then fail "plugin_$case" "exit 0"
  elif [ "$(wc -l <"$tmp/$case.err")" != 1 ] || ! grep -q "$want" "$tmp/$case.err"; then fail "plugin_$case" "$(cat "$tmp/$case.err")"
  else pass "plugin_$case ($(cat "$tmp/$case.err"))"; fi
done

# 5. `layersweep backends`: the registry as this machine sees it
out=$(unset LS_CUDA_PLUGIN; "$ls" backends 2>&1)
if echo "$out" | grep -q '^cpu  *usable  \[bit-identical' && echo "$out" | grep -q '^cuda '; then
  pass "backends ($(echo "$out" | tr '\n' ';'))"
else fail backends "$out"; fi
emu="${LS_BUILD_DIR:-}/liblayersweep-cuda-emu.so"
if [ -f "$emu" ]; then
  out=$(LS_CUDA_PLUGIN="$emu" "$ls" backends 2>&1)
  if echo "$out" | grep -q '^cuda  *usable' && echo "$out" | grep -q "cuda plugin: $emu"; then
    pass "backends_with_plugin (the emulator build of the plugin loads and probes usable)"
  else fail backends_with_plugin "$out"; fi
fi

# 5. idle OpenMP threads sleep: OMP_WAIT_POLICY=passive unless the user chose a policy
(unset OMP_WAIT_POLICY LS_PREINIT_DONE
 "$ls" run --model "$tmp/m" --data "$tmp/d.jsonl" --out "$tmp/w1.h5" --backend cpu --progress off \
   --force 2>"$tmp/w1.log"
 OMP_WAIT_POLICY=active "$ls" run --model "$tmp/m" --data "$tmp/d.jsonl" --out "$tmp/w2.h5" \
   --backend cpu --progress off --force 2>"$tmp/w2.log")
if grep -q "OMP_WAIT_POLICY=passive" "$tmp/w1.log" && grep -q "OMP_WAIT_POLICY=active" "$tmp/w2.log"; then
  pass omp_wait_policy
else
  fail omp_wait_policy "$(grep -h '^backend' "$tmp/w1.log" "$tmp/w2.log" | tr '\n' '|')"
fi

echo "summary: $passes passed, $fails failed"
[ $fails = 0 ]
