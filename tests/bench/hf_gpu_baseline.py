#!/usr/bin/env python3
"""The transformers baselines of the GPU benchmark (tests/bench/bench_gpu.sh).

    python3 hf_gpu_baseline.py --model DIR --data A.jsonl [--data B.jsonl ...]
        [--modes plain,offload] [--device cuda] [--dtype bf16] [--batch-tokens 4096]
        [--offload-prompts 256] [--attn sdpa]

Loads DIR once with transformers (load time measured and excluded from every rate) and runs
the base model (model.model: the decoder stack and final norm, no lm_head) under
torch.inference_mode() with output_hidden_states=True over the prompts of each --data file, in
each mode:

  plain    the whole model on DEVICE (model.to(device)): transformers' ordinary forward.
  offload  the weights stay in CPU memory and accelerate moves each module's weights to DEVICE
           when it runs (accelerate.cpu_offload(model, execution_device=DEVICE)): the usual way
           to run a model that does not fit on the GPU, and what layersweep is measured against.
           It is slow, so only the first --offload-prompts prompts of each file are run; its
           tokens/s on that subset stands for the whole file (the cost per token does not
           depend on how many batches follow: every batch moves every weight once) and the
           JSON says so ("subset": true, "extrapolated": true).

Batching as tests/bench/torch_forward.py (imported from there): prompts of equal length are
batched without padding (floor(batch_tokens / length) prompts a batch); the leftovers are packed
by length into right-padded batches with an attention mask. The hidden states stay on the device
and are dropped (no pooling, no copy to the host): the baseline is the forward alone. One warm-up
batch per (mode, file) is not timed; the device is synchronized before each clock read. "tokens"
counts real tokens, padding excluded.

Prints one JSON line per (mode, file) on stdout:
  {"mode", "data", "prompts", "tokens", "batches", "seconds", "tokens_per_s", "subset",
   "extrapolated", "load_s", "device", "dtype", "attn", "batch_tokens", "peak_mem_gib",
   "torch", "transformers", "accelerate"}
A mode that fails prints {"mode", "data", "error"} instead and the exit status is 1.
On a machine without a GPU: --device cpu --dtype float32 (used to test this script).
"""

import argparse
import json
import os
import sys
import time

import torch
import transformers
from transformers import AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_forward import load_prompts, make_batches  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "float32": torch.float32, "f16": torch.float16}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_file(base, batches, device):
    """Time the forward over `batches` (after one untimed warm-up batch); returns (tokens, seconds)."""

    def fwd(ids, mask):
        ids = ids.to(device, non_blocking=True)
        mask = mask.to(device, non_blocking=True) if mask is not None else None
        out = base(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
        return out.hidden_states

    with torch.inference_mode():
        hs = fwd(*batches[0][:2])  # warm-up: kernels, allocator, offload hooks
        del hs
        sync(device)
        tokens = 0
        t0 = time.perf_counter()
        for ids, mask, real in batches:
            hs = fwd(ids, mask)
            del hs
            tokens += real
        sync(device)
        return tokens, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, action="append", help="JSONL prompts (repeatable)")
    ap.add_argument("--modes", default="plain,offload")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--offload-prompts", type=int, default=256)
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in ("plain", "offload"):
            ap.error(f"--modes: unknown mode {m!r}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("hf_gpu_baseline: torch sees no CUDA device (use --device cpu)")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    try:
        import accelerate
        acc_version = accelerate.__version__
    except ImportError:
        accelerate, acc_version = None, None

    data = {path: load_prompts(path) for path in args.data}
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=DTYPES[args.dtype], attn_implementation=args.attn)
    model.eval()
    load_s = time.perf_counter() - t0
    log(f"hf_gpu_baseline: loaded {args.model} in {load_s:.1f} s ({args.dtype}, attn {args.attn})")
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"

    failed = 0
    for mode in modes:  # plain first (the model is still whole), offload last (cpu_offload changes it)
        try:
            t0 = time.perf_counter()
            if mode == "plain":
                model.to(device)
            else:
                if accelerate is None:
                    raise RuntimeError("accelerate is not installed")
                model.to("cpu")
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                accelerate.cpu_offload(model, execution_device=device)
            sync(device)
            place_s = time.perf_counter() - t0
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
        except Exception as e:  # report and go on with the next mode
            failed += 1
            for path in args.data:
                print(json.dumps({"mode": mode, "data": path, "error": f"{type(e).__name__}: {e}"}), flush=True)
            continue
        for path, prompts in data.items():
            subset = mode == "offload" and len(prompts) > args.offload_prompts
            ps = prompts[: args.offload_prompts] if mode == "offload" else prompts
            batches = make_batches(ps, args.batch_tokens)
            try:
                tokens, secs = run_file(model.model, batches, device)
            except Exception as e:
                failed += 1
                print(json.dumps({"mode": mode, "data": path, "error": f"{type(e).__name__}: {e}"}), flush=True)
                continue
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
            print(json.dumps({
                "mode": mode, "data": path, "prompts": len(ps), "tokens": tokens,
                "batches": len(batches), "seconds": round(secs, 6),
                "tokens_per_s": round(tokens / secs, 3), "subset": subset, "extrapolated": subset,
                "load_s": round(load_s, 3), "place_s": round(place_s, 3), "device": dev_name,
                "dtype": args.dtype, "attn": args.attn, "batch_tokens": args.batch_tokens,
                "peak_mem_gib": round(peak, 3), "torch": torch.__version__,
                "transformers": transformers.__version__, "accelerate": acc_version,
            }), flush=True)
            log(f"hf_gpu_baseline: {mode} {os.path.basename(path)}: {len(ps)} prompts, {tokens} tokens, "
                f"{len(batches)} batches in {secs:.2f} s = {tokens / secs:.0f} tokens/s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
