#!/usr/bin/env python3
"""layersweep's activations against transformers' own forward, on the GPU (or the CPU).

    python3 tests/gpu/compare_hf.py --layersweep build-gpu/layersweep [--device cuda --backend cuda]
                                    [--dtypes float32,bf16] [--json OUT.json] [--work DIR]

1. Makes a random Llama (hidden 512, 4 layers, 8 heads / 2 kv heads, intermediate 1408, vocab
   1000; seeded) with transformers' LlamaConfig + LlamaForCausalLM and saves it in bf16
   (save_pretrained, safetensors), and a JSONL of 64 prompts of 8..200 tokens.
2. Runs transformers' base model (no lm_head) on DEVICE, one prompt at a time (no padding), with
   output_hidden_states=True, twice: in bf16 (the checkpoint as stored, sdpa attention) and in
   float32 (the bf16 weights upcast, eager attention, TF32 off).
3. Runs `layersweep run --backend BACKEND --dtype D --hooks residual_post,final_norm --pool none`
   for each D of --dtypes on the same files and reads the HDF5 output with h5py.
4. Compares, per hook and layer, the row-wise relative error  max|a-b| / max|b|  (over the hidden
   dimension, one row per token; mean and max over the rows), prints a table and writes JSON.

Mapping (transformers 5.17, models/llama/modeling_llama.py): hidden_states[L] is the input of
decoder layer L and hidden_states[-1] is the output of the final norm (LlamaModel applies
self.norm before returning, and the recorded tuple ends with the normed state). So
residual_post[L] = hidden_states[L+1] for L < n_layers-1, final_norm = hidden_states[-1], and the
last layer's residual_post, which is not in hidden_states, is taken with a forward hook on that
decoder layer (tests/fixtures/gen_fixtures.py asserts the same identities).

Pass / fail (exit 1 on fail, 2 on an error): every hook, layer and row must be finite and
  - layersweep float32 vs transformers float32: max row error <= 1e-4. Both compute in float32 from
    the same (upcast) weights; only the summation order differs, which gives ~1e-6 (the CPU
    fixtures measure ~3e-7); 1e-4 leaves room for four layers of growth, not for a wrong op.
  - layersweep bf16 vs transformers float32: max row error <= 3e-2. bf16 has 8 bits of mantissa,
    a relative rounding error of up to 2^-9 ~ 2e-3 (~4e-3 between two neighbours) each time a
    GEMM input is rounded; the rounding of the normed inputs of 7 GEMMs per layer compounds over
    4 layers to ~1e-2 on the worst rows. transformers' own bf16 forward, which also rounds the
    residual stream and every intermediate to bf16, differs from its float32 forward by about as
    much or more (printed as hf_bf16~hf_f32 for scale); layersweep keeps the residual stream in
    float32 and should be closer.
The comparison against transformers' bf16 forward is printed, not judged: two different
bf16 rounding schedules, each ~1e-2 from the exact result.

--device cpu --backend cpu --dtypes float32 checks the same logic on a machine without a GPU
(the CPU backend has no bf16 mode).
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

THRESH = {"float32": 1e-4, "bf16": 3e-2}  # vs transformers float32; see the docstring


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- model + data


def make_model(path, args):
    cfg = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False,
        hidden_act="silu",
    )
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(cfg)
    # O(1) activations everywhere (the default init, std 0.02, leaves the residual stream at
    # ~0.02 and every layer a small perturbation of it): embeddings N(0, 1), each Linear
    # N(0, 1/fan_in) (variance preserving), RMSNorm weights N(1, 0.1)
    g = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            r = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * r)
            elif "embed_tokens" in name:
                p.copy_(r)
            else:
                p.copy_(r / p.shape[-1] ** 0.5)
    model.to(torch.bfloat16).save_pretrained(path, safe_serialization=True)


def make_data(path, args):
    rng = np.random.default_rng(args.seed)
    lens = rng.integers(args.min_len, args.max_len + 1, size=args.n)
    lens[0], lens[-1] = args.min_len, args.max_len  # both ends of the range
    prompts = []
    with open(path, "w") as f:
        for i, n in enumerate(lens):
            ids = rng.integers(0, args.vocab, size=int(n)).tolist()
            prompts.append(ids)
            f.write(json.dumps({"input_ids": ids, "id": f"p{i}"}) + "\n")
    return prompts


# ----------------------------------------------------------------------------- transformers


def hf_forward(model_dir, prompts, device, dtype):
    """Per hook: float32 numpy arrays, residual_post [L, T, H] and final_norm [T, H]."""
    attn = "sdpa" if dtype == torch.bfloat16 else "eager"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation=attn)
    model.to(device).eval()
    base = model.model
    nl = len(base.layers)
    last = {}
    hook = base.layers[-1].register_forward_hook(
        lambda m, a, o: last.__setitem__("x", (o[0] if isinstance(o, (tuple, list)) else o).detach()))
    post = [[] for _ in range(nl)]
    fin = []
    try:
        with torch.inference_mode():
            for ids in prompts:
                x = torch.tensor([ids], dtype=torch.long, device=device)
                out = base(input_ids=x, output_hidden_states=True, use_cache=False)
                hs = out.hidden_states
                assert len(hs) == nl + 1, f"expected {nl + 1} hidden states, got {len(hs)}"
                assert torch.equal(hs[-1], out.last_hidden_state)
                for L in range(nl - 1):
                    post[L].append(hs[L + 1][0].float().cpu())
                post[nl - 1].append(last["x"][0].float().cpu())
                fin.append(hs[-1][0].float().cpu())
    finally:
        hook.remove()
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {
        "residual_post": torch.stack([torch.cat(p, 0) for p in post], 0).numpy(),
        "final_norm": torch.cat(fin, 0).numpy(),
    }


# ----------------------------------------------------------------------------- layersweep


def ls_run(args, model_dir, data, out, dtype, summary):
    cmd = shlex.split(args.layersweep) + [
        "run", "--model", model_dir, "--data", data, "--out", out,
        "--backend", args.backend, "--dtype", dtype,
        "--hooks", "residual_post,final_norm", "--layers", "all", "--pool", "none",
        "--microbatch-tokens", str(args.microbatch_tokens),
        "--progress", "off", "--force", "--summary-json", summary,
    ]
    log("+ " + " ".join(shlex.quote(c) for c in cmd))
    t0 = time.perf_counter()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=args.timeout)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        log(p.stdout)
        raise RuntimeError(f"layersweep --dtype {dtype} exited with {p.returncode}")
    for line in p.stdout.splitlines():
        if line.startswith(("backend:", "wrote")):
            log("  " + line)
    return dt


def ls_read(path, prompts, want_dtype, backend, nl):
    import h5py

    with h5py.File(path, "r") as f:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        problems = []
        if str(attrs.get("status")) != "complete":
            problems.append(f"status {attrs.get('status')!r}")
        if str(attrs.get("compute_dtype")) != want_dtype:
            problems.append(f"compute_dtype {attrs.get('compute_dtype')!r} != {want_dtype!r}")
        if str(attrs.get("backend")) != backend:
            problems.append(f"backend {attrs.get('backend')!r} != {backend!r}")
        lens = f["samples/length"][:]
        offs = f["samples/offsets"][:]
        want = np.array([len(p) for p in prompts])
        if not np.array_equal(lens, want):
            problems.append("samples/length differs from the data")
        if not np.array_equal(offs, np.concatenate([[0], np.cumsum(want)])):
            problems.append("samples/offsets are not the prompts' cumulative lengths")
        layers = f["residual_post"].attrs["layers"].tolist()
        if layers != list(range(nl)):
            problems.append(f"residual_post layers {layers}")
        res = {"residual_post": f["residual_post"][:], "final_norm": f["final_norm"][:]}
    return res, attrs, problems


# ----------------------------------------------------------------------------- comparison


def row_err(a, b):
    """Row-wise max|a-b| / max|b| over the last axis, float64; inf where a is not finite."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    num = np.abs(a - b).max(-1)
    den = np.maximum(np.abs(b).max(-1), 1e-30)
    e = num / den
    e[~np.isfinite(a).all(-1)] = np.inf
    return e


def compare(a, b):
    """{"residual_post": [{"layer", "mean", "max"}...], "final_norm": [...]} for a vs reference b."""
    out = {}
    for hook in ("residual_post", "final_norm"):
        x, y = a[hook], b[hook]
        if x.shape != y.shape:
            raise RuntimeError(f"{hook}: shape {x.shape} vs {y.shape}")
        if hook == "final_norm":
            x, y = x[None], y[None]
        rows = []
        for L in range(x.shape[0]):
            e = row_err(x[L], y[L])
            rows.append({"layer": L if hook == "residual_post" else -1,
                         "mean": float(e.mean()), "max": float(e.max())})
        out[hook] = rows
    return out


def worst(cmp):
    return max(r["max"] for rows in cmp.values() for r in rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layersweep", default="build-gpu/layersweep",
                    help="the layersweep binary (a command line: split like a shell would)")
    ap.add_argument("--device", default="cuda", help="torch device for transformers (cuda, cpu)")
    ap.add_argument("--backend", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--dtypes", default="float32,bf16", help="layersweep --dtype values to run")
    ap.add_argument("--work", default="build-gpu/work/compare_hf")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--min-len", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=200)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--intermediate", type=int, default=1408)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=1000)
    ap.add_argument("--microbatch-tokens", type=int, default=2048,
                    help="layersweep microbatch (below the data's ~6.6k tokens: several microbatches)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds allowed per layersweep run")
    args = ap.parse_args(argv)
    try:
        return run(args, ap)
    except (RuntimeError, AssertionError, subprocess.TimeoutExpired, OSError) as e:
        print(f"# compare_hf: error: {e}")
        print("# FAILED")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"ok": False, "error": str(e)}, f, indent=1)
                f.write("\n")
        return 2


def run(args, ap):
    dtypes = [d for d in args.dtypes.split(",") if d]
    for d in dtypes:
        if d not in THRESH:
            ap.error(f"--dtypes: {d!r} is not float32 or bf16")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("compare_hf: torch sees no CUDA device (use --device cpu --backend cpu)")

    transformers.utils.logging.disable_progress_bar()
    # reference float32 matmuls in true float32 (TF32 would be ~1e-3 off)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")

    os.makedirs(args.work, exist_ok=True)
    model_dir = os.path.join(args.work, "model")
    data = os.path.join(args.work, "prompts.jsonl")
    t0 = time.perf_counter()
    make_model(model_dir, args)
    prompts = make_data(data, args)
    ntok = sum(len(p) for p in prompts)
    dev_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    log(f"compare_hf: model {model_dir} (hidden {args.hidden}, {args.layers} layers, {args.heads}/{args.kv_heads} "
        f"heads, inter {args.intermediate}, vocab {args.vocab}, bf16), {len(prompts)} prompts, {ntok} tokens")

    hf = {"f32": hf_forward(model_dir, prompts, args.device, torch.float32)}
    if "bf16" in dtypes or args.device.startswith("cuda"):
        hf["bf16"] = hf_forward(model_dir, prompts, args.device, torch.bfloat16)
    log(f"compare_hf: transformers forwards done ({time.perf_counter() - t0:.1f} s)")

    results = {"comparisons": {}, "runs": {}}
    problems = []
    ls = {}
    for d in dtypes:
        out = os.path.join(args.work, f"ls_{d}.h5")
        summ = os.path.join(args.work, f"ls_{d}.json")
        secs = ls_run(args, model_dir, data, out, d, summ)
        ls[d], attrs, probs = ls_read(out, prompts, d, args.backend, args.layers)
        problems += [f"layersweep {d}: {p}" for p in probs]
        with open(summ) as f:
            s = json.load(f)
        results["runs"][d] = {"seconds": round(secs, 3), "device": s.get("device"),
                              "compute_dtype": s.get("compute_dtype"), "tokens_per_s": s.get("tokens_per_s")}

    pairs = []  # (name, a, b, threshold or None)
    if "float32" in ls:
        pairs.append(("ls_f32~hf_f32", ls["float32"], hf["f32"], THRESH["float32"]))
    if "bf16" in ls:
        pairs.append(("ls_bf16~hf_f32", ls["bf16"], hf["f32"], THRESH["bf16"]))
        pairs.append(("ls_bf16~hf_bf16", ls["bf16"], hf["bf16"], None))
    if "bf16" in hf:
        pairs.append(("hf_bf16~hf_f32", hf["bf16"], hf["f32"], None))
    for name, a, b, th in pairs:
        c = compare(a, b)
        w = worst(c)
        results["comparisons"][name] = {"threshold": th, "worst": w, "per_layer": c}
        if th is not None and not (w <= th):  # NaN / inf fail too
            problems.append(f"{name}: worst row error {w:.3g} > {th:g}")

    # ---- table (the last lines of the output)
    names = [p[0] for p in pairs]
    print(f"# compare_hf: layersweep --backend {args.backend} vs transformers {transformers.__version__} "
          f"(torch {torch.__version__}) on {dev_name}")
    print(f"# model: llama hidden {args.hidden}, {args.layers} layers, {args.heads} heads / {args.kv_heads} kv, "
          f"intermediate {args.intermediate}, vocab {args.vocab}, bf16 checkpoint; data: {len(prompts)} prompts, "
          f"{args.min_len}..{args.max_len} tokens, {ntok} rows")
    print("# row error = max|a-b| / max|b| over the hidden dimension, per token row; mean / max over rows")
    print(f"# {'hook':<14}{'layer':>6}" + "".join(f"  {n:>21}" for n in names))
    print(f"# {'':<14}{'':>6}" + "".join(f"  {'mean':>10} {'max':>10}" for _ in names))
    for hook in ("residual_post", "final_norm"):
        nrows = len(results["comparisons"][names[0]]["per_layer"][hook]) if names else 0
        for i in range(nrows):
            cells = []
            for n in names:
                r = results["comparisons"][n]["per_layer"][hook][i]
                cells.append(f"  {r['mean']:>10.2e} {r['max']:>10.2e}")
            layer = results["comparisons"][names[0]]["per_layer"][hook][i]["layer"]
            print(f"  {hook:<14}{(layer if layer >= 0 else '-'):>6}" + "".join(cells))
    for n, a, b, th in pairs:
        w = results["comparisons"][n]["worst"]
        verdict = "(printed only)" if th is None else ("OK" if w <= th else "FAILED")
        limit = "" if th is None else f" <= {th:g}"
        print(f"# {n:<18} worst {w:.3e}{limit}  {verdict}")
    for p in problems:
        print(f"# problem: {p}")
    ok = not problems
    print(f"# errors: {len(problems)}")
    print("# OK" if ok else "# FAILED")

    results.update({
        "ok": ok, "problems": problems, "thresholds": THRESH,
        "device": dev_name, "backend": args.backend, "torch": torch.__version__,
        "transformers": transformers.__version__, "prompts": len(prompts), "tokens": ntok,
        "model": {"hidden": args.hidden, "layers": args.layers, "heads": args.heads, "kv_heads": args.kv_heads,
                  "intermediate": args.intermediate, "vocab": args.vocab, "seed": args.seed},
        "seconds": round(time.perf_counter() - t0, 3),
    })
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
            f.write("\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
