#!/usr/bin/env python3
"""PyTorch / transformers CPU baseline for the layersweep benchmark.

    python torch_forward.py --model DIR --data FILE.jsonl --threads N [--batch-tokens 4096] [--layers all]

Loads DIR with transformers (float32), runs the base model (model.model, no lm_head) under
torch.inference_mode() with output_hidden_states=True over every prompt of FILE.jsonl (one JSON
object per line with an "input_ids" list), and prints ONE JSON line on stdout:

    {"tokens": ..., "seconds": ..., "tokens_per_s": ..., "threads": N,
     "torch": "...", "transformers": "...", "attn": "..."}

Timing excludes model loading and one warm-up batch; "tokens" counts real (unpadded) tokens.

Batching: prompts of equal length are batched together without padding (batch size
floor(batch_tokens / length), at least 1).  Only the prompts left over after that (fewer than a
full batch of their length) are packed, sorted by length, into right-padded batches with an
attention mask, and only batches that really mix lengths get a mask.

--layers: "all" (default) or a comma-separated list of decoder-layer indices, e.g. "0,5,11".
With a list, the forward stops after the deepest requested layer (the later layers are not
run), as a layer-sweep extractor would; hidden_states are still returned for the layers run.

--attn: eager, sdpa, or auto (default).  auto = sdpa: on CPU (torch 2.11, transformers 5.17)
sdpa was measured faster than eager at these sizes (see tests/fixtures/README.md / the report).
"""

import argparse
import json
import sys
import time

import torch
import transformers
from transformers import AutoModelForCausalLM


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def load_prompts(path):
    prompts = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            ids = json.loads(line)["input_ids"]
            if len(ids) == 0:
                continue
            prompts.append([int(t) for t in ids])
    if not prompts:
        raise SystemExit(f"no prompts in {path}")
    return prompts


def make_batches(prompts, batch_tokens):
    """Return a list of (input_ids LongTensor [B, T], attention_mask or None, real_tokens)."""
    by_len = {}
    for p in prompts:
        by_len.setdefault(len(p), []).append(p)
    batches, leftovers = [], []
    for n in sorted(by_len):
        group = by_len[n]
        bs = max(1, batch_tokens // n)
        full = len(group) // bs * bs
        for i in range(0, full, bs):
            chunk = group[i:i + bs]
            batches.append((torch.tensor(chunk, dtype=torch.long), None, n * len(chunk)))
        leftovers.extend(group[full:])
    # leftovers: sorted by length, greedily packed so that rows * max_len <= batch_tokens
    cur = []
    for p in leftovers + [None]:
        if p is not None and (not cur or (len(cur) + 1) * len(p) <= batch_tokens):
            cur.append(p)
            continue
        if cur:
            maxlen = max(len(q) for q in cur)
            if all(len(q) == maxlen for q in cur):
                batches.append((torch.tensor(cur, dtype=torch.long), None, maxlen * len(cur)))
            else:
                ids = torch.zeros(len(cur), maxlen, dtype=torch.long)
                mask = torch.zeros(len(cur), maxlen, dtype=torch.long)
                for r, q in enumerate(cur):  # right padding: positions 0..len-1 stay correct
                    ids[r, :len(q)] = torch.tensor(q, dtype=torch.long)
                    mask[r, :len(q)] = 1
                batches.append((ids, mask, sum(len(q) for q in cur)))
        cur = [p] if p is not None else []
    return batches


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--layers", default="all")
    ap.add_argument("--attn", default="auto", choices=["auto", "eager", "sdpa"])
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    attn = "sdpa" if args.attn == "auto" else args.attn

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation=attn)
    model.eval()
    base = model.model  # decoder stack + final norm, without lm_head
    nlayers = len(base.layers)
    if args.layers != "all":
        wanted = sorted({int(x) for x in args.layers.split(",") if x.strip() != ""})
        if not wanted or wanted[0] < 0 or wanted[-1] >= nlayers:
            raise SystemExit(f"--layers must be 'all' or indices in [0, {nlayers})")
        # LlamaModel & co. iterate over layers[: config.num_hidden_layers]
        base.config.num_hidden_layers = wanted[-1] + 1

    prompts = load_prompts(args.data)
    batches = make_batches(prompts, args.batch_tokens)
    log(f"{len(prompts)} prompts -> {len(batches)} batches "
        f"({sum(1 for b in batches if b[1] is not None)} padded), attn={attn}, threads={torch.get_num_threads()}")

    def run(ids, mask):
        out = base(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
        return out.hidden_states

    with torch.inference_mode():
        run(*batches[0][:2])  # warm-up
        tokens = 0
        t0 = time.perf_counter()
        for ids, mask, real in batches:
            hs = run(ids, mask)
            tokens += real
        seconds = time.perf_counter() - t0
        del hs

    print(json.dumps({
        "tokens": tokens,
        "seconds": round(seconds, 6),
        "tokens_per_s": round(tokens / seconds, 3),
        "threads": args.threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "attn": attn,
    }), flush=True)


if __name__ == "__main__":
    main()
