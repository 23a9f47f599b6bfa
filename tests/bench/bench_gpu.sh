#!/usr/bin/env bash
# GPU benchmark, everything measured in one run on the same machine:
#   1. cuBLAS bf16 GEMM rate (bench_cublas.cu, built here with nvcc) on one Llama-3.1-8B
#      layer's 7 GEMM shapes at 4096 token rows, and on 8192^3: the reference rate;
#   2. a random Llama-3.1-8B-shaped model (hidden 4096, intermediate 14336, 32 heads / 8 kv of
#      128, vocab 128256, bf16, rope theta 5e5; tied embeddings: lm_head is used by none of the
#      runs) with LS_BENCH_LAYERS of its 32 layers (default 16: 8 GB, written in ~1.5 min; the
#      ratios below do not depend on the depth), and two datasets: 4096 prompts x 128 tokens
#      ("fixed") and 4096 prompts of 16..256 tokens ("mixed");
#   3. layersweep (--backend cuda --dtype bf16 --hooks residual_post --pool mean) on each
#      dataset with --preload-weights and streamed: tokens/s, GEMM TFLOP/s, FLOP utilisation,
#      per-phase profile;
#   4. transformers on the same model and data (hf_gpu_baseline.py): the plain forward with the
#      whole model on the GPU, and accelerate.cpu_offload (weights in CPU memory, moved to the
#      GPU module by module) on the first LS_BENCH_OFFLOAD_PROMPTS (256) prompts of each
#      dataset, its tokens/s standing for the whole dataset (said in the output);
#   5. a report: header with units, fixed columns, the ratios next to their goals, an error
#      count and an OK/FAILED footer (failed runs, not missed goals), written to stdout,
#      $OUT/bench.txt and $OUT/bench.json.
# Formulas:
#   GEMM FLOP       = 2 x P x tokens x layers, P = GEMM weights per layer =
#                     H*(nh*hd) + 2*H*(nkv*hd) + (nh*hd)*H + 3*H*I   (218.1 M for Llama-3.1-8B)
#   time            = layersweep streamed: total_s (whole sweep: startup, embedding, weight reads,
#                     forward, hooks, writes); layersweep preloaded: total_s - weights_preload_s
#                     (the layer loop with every weight already on the GPU); transformers: the
#                     forward loop (load and placement excluded)
#   tokens/s        = real tokens / time;  TFLOP/s = GEMM FLOP / time
#   FLOP utilisation (MFU) = TFLOP/s / cublas layer rate (bf16 in, float32 out: as layersweep)
#   streamed overhead = time(streamed) / time(preloaded) - 1
# usage: tests/bench/bench_gpu.sh [--layers N] [BUILD_DIR]   (from anywhere; BUILD_DIR default
#        build-gpu; --layers N: N of the 32 layers, same as LS_BENCH_LAYERS=N)
# env:   PYTHON (python3)  BENCH_DIR (BUILD_DIR/work/bench)  OUT (where bench.json / bench.txt go;
#        default BENCH_DIR)  LS_BENCH_LAYERS (16)  LS_BENCH_N (4096)  LS_BENCH_LEN (128)
#        LS_BENCH_MIN_LEN / LS_BENCH_MAX_LEN (16 / 256)  LS_BENCH_OFFLOAD_PROMPTS (256)
#        LS_BENCH_MB (4096: layersweep --microbatch-tokens and the baselines' batch tokens)
#        LS_BENCH_STEPS (cublas,model,ls,hf)  LS_DEADLINE (epoch seconds to be done by: steps
#        that would not fit are skipped, running ones are stopped, the report still comes)
#        Dry run without a GPU: LS_BENCH_SHAPE=tiny LS_BENCH_BACKEND=cpu LS_BENCH_DEVICE=cpu
#        LS_BENCH_DTYPE=float32 LS_BENCH_N=64 (hidden 256, 2 layers; bench_cublas only compiled)
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
build="build-gpu"
while [ $# -gt 0 ]; do
  case $1 in
    --layers) LS_BENCH_LAYERS=${2:?--layers needs a number}; shift 2 ;;
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 0 ;;
    *) build=$1; shift ;;
  esac
done
ls_bin=$build/layersweep
py=${PYTHON:-python3}
work=${BENCH_DIR:-$build/work/bench}
out=${OUT:-$work}
shape=${LS_BENCH_SHAPE:-8b}
backend=${LS_BENCH_BACKEND:-cuda}
device=${LS_BENCH_DEVICE:-cuda}
dtype=${LS_BENCH_DTYPE:-bf16}
n=${LS_BENCH_N:-4096} len=${LS_BENCH_LEN:-128}
minlen=${LS_BENCH_MIN_LEN:-16} maxlen=${LS_BENCH_MAX_LEN:-256}
offn=${LS_BENCH_OFFLOAD_PROMPTS:-256} mb=${LS_BENCH_MB:-4096}
steps=,${LS_BENCH_STEPS:-cublas,model,ls,hf},
deadline=${LS_DEADLINE:-$(($(date +%s) + 86400))}
case $shape in
  8b) H=4096 I=14336 NH=32 NKV=8 HD=128 V=128256 NL=32 THETA=500000 L=${LS_BENCH_LAYERS:-16} ;;
  tiny) H=256 I=688 NH=8 NKV=2 HD=32 V=1000 NL=2 THETA=10000 L=${LS_BENCH_LAYERS:-2} ;;
  *) echo "bench_gpu: LS_BENCH_SHAPE must be 8b or tiny" >&2; exit 2 ;;
esac
mkdir -p "$work" "$out"
status=$work/status.txt
: >"$status"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none PYTHONUNBUFFERED=1
[ -x "$ls_bin" ] || { echo "bench_gpu: $ls_bin not found: build first (launch/device-run build)" >&2; exit 2; }

# step NAME SECONDS_NEEDED CMD...: run CMD under a timeout that ends 25 s before the deadline
# (the report needs them); skip it when fewer than SECONDS_NEEDED are left. Status -> $status.
step() {
  local name=$1 need=$2 left rc t0
  shift 2
  left=$((deadline - $(date +%s) - 25))
  if [ "$left" -lt "$need" ]; then
    echo "bench_gpu: skipping $name: ${left}s left before the deadline, it needs ~${need}s" >&2
    echo "$name skipped 0" >>"$status"
    return 1
  fi
  t0=$(date +%s)
  timeout -k 10 "$left" "$@"
  rc=$?
  echo "$name $rc $(($(date +%s) - t0))" >>"$status"
  [ $rc -eq 0 ] || echo "bench_gpu: $name failed (exit $rc$([ $rc -eq 124 ] && echo ': stopped at the deadline'))" >&2
  return $rc
}

# ---- 1. cuBLAS reference rate ------------------------------------------------------------------
if [[ $steps == *,cublas,* ]]; then
  cub=$work/bench_cublas
  if [ ! -x "$cub" ] || [ tests/bench/bench_cublas.cu -nt "$cub" ]; then
    arch=${LS_CUDA_ARCH:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d .)}
    nvcc_bin=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
    cuda_home=${CUDA_HOME:-$(dirname "$(dirname "$(readlink -f "$nvcc_bin")")")}
    # a RUNPATH to the toolkit's libraries: ld.so may not know them
    step cublas_build 20 "$nvcc_bin" -O2 -std=c++17 -arch=sm_"${arch:-90}" tests/bench/bench_cublas.cu -o "$cub" \
      -lcublas -Xlinker -rpath -Xlinker "$cuda_home/lib64:$cuda_home/lib:$cuda_home/targets/x86_64-linux/lib"
  fi
  rm -f "$work/cublas.json"
  if [ "$device" = cuda ] && [ -x "$cub" ]; then
    step cublas 30 "$cub" --tokens "$mb" --hidden $H --intermediate $I --heads $NH --kv-heads $NKV \
      --head-dim $HD --json "$work/cublas.json"
  fi
fi

# ---- 2. model and data -------------------------------------------------------------------------
model=$work/model
fixed=$work/fixed_${n}x${len}.jsonl
mixed=$work/mixed_${n}x${minlen}-${maxlen}.jsonl
if [[ $steps == *,model,* ]]; then
  want="llama $H $I $L $NH $NKV $HD $V $THETA bf16 tie seed1"
  if [ "$(cat "$model/bench.stamp" 2>/dev/null)" != "$want" ]; then
    P=$((H * NH * HD + 2 * H * NKV * HD + NH * HD * H + 3 * H * I))
    need_b=$((2 * (P * L + V * H) + 4 * n * H * L + (4 << 30)))   # model + mean-pooled output + 4 GiB
    avail=$(df --output=avail -B1 "$work" | tail -n 1)
    if [ "$avail" -lt "$need_b" ]; then
      echo "bench_gpu: $((avail >> 30)) GiB free in $work, $((need_b >> 30)) GiB needed: set LS_BENCH_LAYERS lower" >&2
      echo "model nospace 0" >>"$status"
    else
      rm -rf "$model" "$work"/ls_*.json "$work"/hf.jsonl # results of another model
      # ~100 MB/s single-threaded on the CPU that wrote this (2026-11): seconds ~ GB * 10
      step model $((2 * (P * L + V * H) / 100000000 + 10)) "$ls_bin" make-model --out "$model" --arch llama \
        --hidden $H --intermediate $I --layers "$L" --heads $NH --kv-heads $NKV --head-dim $HD --vocab $V \
        --max-pos 8192 --rope-theta $THETA --dtype bf16 --shards 4 --seed 1 --tie --force &&
        echo "$want" >"$model/bench.stamp"
    fi
  fi
  [ -s "$fixed" ] || step data_fixed 5 "$ls_bin" make-data --out "$fixed" --n "$n" --min-len "$len" \
    --max-len "$len" --vocab $V --seed 1 --no-labels --force
  [ -s "$mixed" ] || step data_mixed 5 "$ls_bin" make-data --out "$mixed" --n "$n" --min-len "$minlen" \
    --max-len "$maxlen" --vocab $V --seed 2 --no-labels --force
fi

# ---- 3. layersweep: each dataset preloaded, then streamed --------------------------------------
if [[ $steps == *,ls,* ]] && [ -s "$model/bench.stamp" ]; then
  for d in fixed mixed; do
    f=$fixed
    [ $d = mixed ] && f=$mixed
    [ -s "$f" ] || continue
    for m in preload stream; do
      extra=()
      [ $m = preload ] && extra=(--preload-weights)
      rm -f "$work/ls_${d}_${m}.json"
      step "ls_${d}_${m}" 15 "$ls_bin" run --model "$model" --data "$f" --out "$work/out.h5" \
        --backend "$backend" --dtype "$dtype" --hooks residual_post --pool mean --layers all \
        --microbatch-tokens "$mb" --progress lines --force --summary-json "$work/ls_${d}_${m}.json" \
        "${extra[@]}" >"$work/ls_${d}_${m}.log" 2>&1
      grep -E '^(backend|plan:  *rank 0|preloaded|.*tokens/s;)' "$work/ls_${d}_${m}.log" | sed "s/^/  [$d $m] /" | head -n 6
    done
  done
  rm -f "$work/out.h5"
fi

# ---- 4. transformers: plain forward and accelerate.cpu_offload ---------------------------------
if [[ $steps == *,hf,* ]] && [ -s "$model/bench.stamp" ] && [ -s "$fixed" ] && [ -s "$mixed" ]; then
  hf_dtype=$dtype
  rm -f "$work/hf.jsonl"
  step hf 60 "$py" tests/bench/hf_gpu_baseline.py --model "$model" --data "$fixed" --data "$mixed" \
    --modes plain,offload --device "$device" --dtype "$hf_dtype" --batch-tokens "$mb" \
    --offload-prompts "$offn" >"$work/hf.jsonl"
fi

# ---- 5. report ---------------------------------------------------------------------------------
export BENCH_WORK=$work BENCH_OUT=$out BENCH_SHAPE="$H $I $NH $NKV $HD $V $NL $L" BENCH_DATA="$n $len $minlen $maxlen $offn $mb"
export BENCH_FIXED=$fixed BENCH_MIXED=$mixed BENCH_BACKEND=$backend BENCH_DTYPE=$dtype
"$py" - <<'PY'
import datetime, json, os, subprocess

w, out = os.environ["BENCH_WORK"], os.environ["BENCH_OUT"]
H, I, NH, NKV, HD, V, NL, L = map(int, os.environ["BENCH_SHAPE"].split())
n, ln, minlen, maxlen, offn, mb = map(int, os.environ["BENCH_DATA"].split())
P = H * NH * HD + 2 * H * NKV * HD + NH * HD * H + 3 * H * I  # GEMM weights per layer
files = {"fixed": os.environ["BENCH_FIXED"], "mixed": os.environ["BENCH_MIXED"]}
lines = []


def say(s=""):
    lines.append(s)
    print(s, flush=True)


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def smi(q):
    try:
        r = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"], capture_output=True,
                           text=True, timeout=20)
        return r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else "-"
    except (OSError, subprocess.SubprocessError):
        return "-"


status = []
if os.path.exists(os.path.join(w, "status.txt")):
    for line in open(os.path.join(w, "status.txt")):
        p = line.split()
        if len(p) == 3:
            status.append({"step": p[0], "rc": p[1], "seconds": int(p[2])})
errors = [s for s in status if s["rc"] != "0"]

cub = load(os.path.join(w, "cublas.json"))
ref = cub["layer_tflops_f32"] if cub else None
gpu = smi("name,driver_version,memory.total")
date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
say(f"# layersweep GPU benchmark  {date}  {gpu}; {os.cpu_count()} CPUs")
say(f"# model: llama hidden {H}, intermediate {I}, {L} of {NL} layers, {NH} heads / {NKV} kv of {HD}, vocab {V}, "
    f"bf16 (random, make-model); GEMM weights per layer P = {P / 1e6:.1f} M")
say(f"# data: fixed = {n} x {ln} tokens; mixed = {n} prompts of {minlen}..{maxlen} tokens; "
    f"layersweep --microbatch-tokens {mb}, baselines {mb} tokens a batch")
say("# GEMM FLOP = 2 x P x tokens x layers; TFLOP/s = GEMM FLOP / time; MFU = TFLOP/s / cublas_layer (bf16 in, f32 out)")
say("# time: layersweep stream = total_s (whole sweep); preload = total_s - weights_preload_s (layer loop, "
    "weights on the GPU); hf = forward loop (load excluded)")
if cub:
    say(f"# cublas_layer_tflops {cub['layer_tflops_f32']:.1f} (C f32), {cub['layer_tflops_bf16']:.1f} (C bf16); "
        f"square {cub['square']}^3: {cub['square_tflops_bf16']:.1f} (C bf16)   [bench_cublas, {cub['device']}, "
        f"median of {cub['iters']}]")
else:
    say("# cublas_layer_tflops  -   (bench_cublas did not run: no MFU)")

runs = []
for d in ("fixed", "mixed"):
    for m in ("preload", "stream"):
        s = load(os.path.join(w, f"ls_{d}_{m}.json"))
        if not s:
            continue
        pre = float(s.get("weights_preload_s", 0) or 0)
        t = s["total_s"] - (pre if m == "preload" else 0.0)
        flop = 2.0 * P * s["tokens"] * s["layers_computed"]
        runs.append({"name": f"ls_{d}_{m}", "kind": "layersweep", "data": d, "mode": m,
                     "prompts": s["prompts"], "tokens": s["tokens"], "layers": s["layers_computed"],
                     "seconds": t, "wall_s": s["total_s"], "preload_s": pre, "tokens_per_s": s["tokens"] / t,
                     "tflops": flop / t / 1e12, "gemm_tflop": flop / 1e12,
                     "ls_gemm_tflop": s.get("gemm_gflop", 0) / 1e3, "device": s.get("device"),
                     "compute_dtype": s.get("compute_dtype"),
                     "phases": {k: v.get("max") for k, v in s.get("phase_s", {}).items()}, "summary": s})
hf_rows = []
if os.path.exists(os.path.join(w, "hf.jsonl")):
    for line in open(os.path.join(w, "hf.jsonl")):
        try:
            hf_rows.append(json.loads(line))
        except ValueError:
            pass
for r in hf_rows:
    d = "fixed" if r.get("data") == files["fixed"] else "mixed"
    name = f"hf_{r['mode']}_{d}"
    if "error" in r:
        errors.append({"step": name, "rc": r["error"], "seconds": 0})
        continue
    flop = 2.0 * P * r["tokens"] * L
    runs.append({"name": name, "kind": f"hf_{r['mode']}", "data": d, "mode": r["mode"], "prompts": r["prompts"],
                 "tokens": r["tokens"], "layers": L, "seconds": r["seconds"], "wall_s": r["seconds"],
                 "preload_s": 0.0, "tokens_per_s": r["tokens_per_s"], "tflops": flop / r["seconds"] / 1e12,
                 "gemm_tflop": flop / 1e12, "extrapolated": r.get("extrapolated", False), "hf": r})
for r in runs:
    r["mfu"] = r["tflops"] / ref if ref else None

say("#")
say(f"# {'run':<22} {'prompts':>7} {'tokens':>9} {'time_s':>8} {'preload_s':>9} {'tokens/s':>10} "
    f"{'TFLOP/s':>8} {'MFU%':>6}  note")
for r in runs:
    note = ""
    if r["kind"] == "layersweep" and r["ls_gemm_tflop"] and abs(r["ls_gemm_tflop"] / r["gemm_tflop"] - 1) > 0.01:
        note = f"layersweep counts {r['ls_gemm_tflop']:.2f} TFLOP"
    if r.get("extrapolated"):
        note = f"first {r['prompts']} prompts; tokens/s stands for all {n}"
    mfu = f"{100 * r['mfu']:6.1f}" if r["mfu"] is not None else f"{'-':>6}"
    pre = f"{r['preload_s']:9.2f}" if r["mode"] == "preload" else f"{'-':>9}"
    say(f"  {r['name']:<22} {r['prompts']:>7} {r['tokens']:>9} {r['seconds']:8.2f} {pre} {r['tokens_per_s']:10.0f} "
        f"{r['tflops']:8.1f} {mfu}  {note}".rstrip())

lsr = [r for r in runs if r["kind"] == "layersweep"]
if lsr:
    names = ["read", "read_wait", "bcast_wait", "load", "forward", "hooks", "write", "embed"]
    say("#")
    say("# layersweep phase profile, seconds summed over layers (max over ranks); preload = weights_preload_s")
    say(f"# {'run':<22}" + "".join(f" {k:>10}" for k in names) + f" {'preload':>8} {'wall_s':>8}")
    for r in lsr:
        say(f"  {r['name']:<22}" + "".join(f" {(r['phases'].get(k) or 0):10.3f}" for k in names)
            + f" {r['preload_s']:8.2f} {r['wall_s']:8.2f}")

by = {r["name"]: r for r in runs}
ratios = []


def ratio(name, val, goal, met, fmt):
    ratios.append({"name": name, "value": val, "goal": goal, "met": met})
    say(f"  {name:<34} {fmt(val):>9}   {goal:<10} {'' if met is None else ('met' if met else 'MISSED')}".rstrip())


say("#")
say(f"# {'ratio':<34} {'value':>9}   {'goal':<10} verdict")
for d in ("fixed", "mixed"):
    st, pl = by.get(f"ls_{d}_stream"), by.get(f"ls_{d}_preload")
    if st and st["mfu"] is not None:
        ratio(f"mfu_stream_{d}", st["mfu"], ">= 60%", st["mfu"] >= 0.60, lambda v: f"{100 * v:.1f}%")
    if st and pl:
        ov = st["seconds"] / pl["seconds"] - 1
        ratio(f"stream_overhead_{d}", ov, "<= 10%", ov <= 0.10, lambda v: f"{100 * v:+.1f}%")
    hp, ho = by.get(f"hf_plain_{d}"), by.get(f"hf_offload_{d}")
    if st and hp:
        ratio(f"ls_stream_vs_hf_plain_{d}", st["tokens_per_s"] / hp["tokens_per_s"], "(none)", None,
              lambda v: f"{v:.2f}x")
    if st and ho:
        ratio(f"ls_stream_vs_cpu_offload_{d}", st["tokens_per_s"] / ho["tokens_per_s"], ">= 10x",
              st["tokens_per_s"] / ho["tokens_per_s"] >= 10, lambda v: f"{v:.1f}x")
say("#")
for s in status:
    if s["rc"] != "0":
        say(f"# step {s['step']}: {'skipped (deadline or disk)' if s['rc'] in ('skipped', 'nospace') else 'exit ' + s['rc']}")
for e in errors:
    if not e["rc"].lstrip("-").isdigit() and e["rc"] not in ("skipped", "nospace"):
        say(f"# {e['step']}: {e['rc']}")
say(f"# errors: {len(errors)}")
say("# OK" if not errors else "# FAILED")

res = {"date": date, "gpu": gpu, "cpus": os.cpu_count(),
       "model": {"hidden": H, "intermediate": I, "heads": NH, "kv_heads": NKV, "head_dim": HD, "vocab": V,
                 "layers": L, "layers_of": NL, "gemm_weights_per_layer": P, "dtype": "bf16"},
       "data": {"fixed": {"prompts": n, "len": ln}, "mixed": {"prompts": n, "min_len": minlen, "max_len": maxlen},
                "offload_prompts": offn, "batch_tokens": mb},
       "backend": os.environ["BENCH_BACKEND"], "dtype": os.environ["BENCH_DTYPE"],
       "formulas": {"gemm_flop": "2 * P * tokens * layers",
                    "time": "layersweep stream: total_s; preload: total_s - weights_preload_s; hf: forward loop",
                    "mfu": "gemm_flop / time / cublas layer_tflops_f32",
                    "stream_overhead": "time(stream) / time(preload) - 1"},
       "cublas": cub, "runs": runs, "ratios": ratios, "steps": status, "errors": len(errors), "ok": not errors}
with open(os.path.join(out, "bench.json"), "w") as f:
    json.dump(res, f, indent=1)
    f.write("\n")
with open(os.path.join(out, "bench.txt"), "w") as f:
    f.write("\n".join(lines) + "\n")
raise SystemExit(0 if not errors else 1)
PY
