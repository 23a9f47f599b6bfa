#!/usr/bin/env bash
# tests/bench/bench_tokenize.sh [BUILD_DIR]: tokens/s of `layersweep tokenize` against the
# `tokenizers` library's batch encoding (Tokenizer.encode_batch, Rust, Rayon threads) on
# the same corpus, tokenizer and thread count, in one run; also checks that both give the
# same ids for every text (a differential test on a corpus the fixtures do not hold).
#
# Corpus: this repository's C/headers/Markdown/shell files, cut into texts of about 1000
# characters at line ends, repeated to LS_BENCH_MB MiB (default 16), as JSONL {"text"}.
# Tokenizers: the real ones (real_anthropic_0_20: 65000 tokens, NFKC + ByteLevel;
# real_smollm2_135m_gguf: SmolLM2's 49152 tokens, ByteLevel), and two
# trained fixtures: llama3_split_bytelevel (Split regex + ByteLevel) and
# sp_llama2_replace_prepend (no pre-tokenizer: each text is one BPE word).
#
# Timed: layersweep: the whole command (read JSONL, parse, tokenize, write JSONL), best of
# 3; tokenizers: encode_batch alone on texts already in memory (file reading, JSON parsing
# and writing excluded), best of 3. tokens/s = ids produced (BOS/EOS included) / seconds.
# Output: "name value (note)" lines.
#   PYTHON=/work/venv/bin/python tests/bench/bench_tokenize.sh build
set -eu
BUILD=${1:-build}
BIN=$(cd "$BUILD" && pwd)/layersweep
PY=${PYTHON:-python3}
THREADS=${LS_BENCH_THREADS:-$(nproc)}
MB=${LS_BENCH_MB:-16}
SRC=$(cd "$(dirname "$0")/../.." && pwd)
TOK=$SRC/tests/fixtures/tokenizers
T=$(mktemp -d "${TMPDIR:-/tmp}/bench_tok.XXXXXX")
trap 'rm -rf "$T"' EXIT

"$PY" - "$SRC" "$T/corpus.jsonl" "$MB" <<'PYEOF'
import json, os, sys
src, out, mb = sys.argv[1], sys.argv[2], int(sys.argv[3])
texts, cur = [], []
for root, _, files in sorted(os.walk(src)):
    if "/build" in root or "/.git" in root or "fixtures" in root or "corpus" in root:
        continue
    for f in sorted(files):
        if f.endswith((".c", ".h", ".md", ".sh", ".cu", ".py")):
            for line in open(os.path.join(root, f), encoding="utf-8", errors="replace"):
                cur.append(line)
                if sum(map(len, cur)) > 1000:
                    texts.append("".join(cur)); cur = []
with open(out, "w", encoding="utf-8") as fo:
    n = 0
    while n < mb << 20:
        for t in texts:
            s = json.dumps({"text": t}, ensure_ascii=False) + "\n"
            fo.write(s); n += len(s.encode())
            if n >= mb << 20:
                break
PYEOF
echo "corpus $(wc -l <"$T/corpus.jsonl") texts, $(du -m "$T/corpus.jsonl" | cut -f1) MiB, threads $THREADS, $(date -u +%F)"

for tk in real_anthropic_0_20 real_smollm2_135m_gguf llama3_split_bytelevel sp_llama2_replace_prepend; do
  best=
  for rep in 1 2 3; do
    t0=$(date +%s.%N)
    "$BIN" tokenize --model "$TOK/$tk" --data "$T/corpus.jsonl" --out "$T/$tk.jsonl" --threads "$THREADS" --force 2>"$T/$tk.log"
    t1=$(date +%s.%N)
    s=$(echo "$t1 - $t0" | bc -l)
    if [ -z "$best" ] || [ "$(echo "$s < $best" | bc -l)" = 1 ]; then best=$s; fi
  done
  RAYON_NUM_THREADS=$THREADS "$PY" - "$TOK/$tk" "$T/corpus.jsonl" "$T/$tk.jsonl" "$best" "$tk" "$THREADS" <<'PYEOF'
import json, sys, time
import tokenizers
from tokenizers import Tokenizer
d, corpus, ours, ls_s, name, threads = sys.argv[1:7]
texts = [json.loads(l)["text"] for l in open(corpus, encoding="utf-8")]
tok = Tokenizer.from_file(d + "/tokenizer.json")
best = None
for _ in range(3):
    t0 = time.perf_counter()
    enc = tok.encode_batch(texts)
    s = time.perf_counter() - t0
    best = s if best is None or s < best else best
n_hf = sum(len(e.ids) for e in enc)
mine = [json.loads(l)["input_ids"] for l in open(ours, encoding="utf-8")]
same = len(mine) == len(enc) and all(m == e.ids for m, e in zip(mine, enc))
n_ls = sum(map(len, mine))
ls_rate, hf_rate = n_ls / float(ls_s), n_hf / best
print(f"{name}.layersweep_tokens_per_s {ls_rate:.0f} (whole command: JSONL in and out, {threads} threads, {float(ls_s):.3f} s, {n_ls} tokens)")
print(f"{name}.tokenizers_tokens_per_s {hf_rate:.0f} (encode_batch only, tokenizers {tokenizers.__version__}, RAYON_NUM_THREADS={threads}, {best:.3f} s)")
print(f"{name}.ratio {ls_rate / hf_rate:.2f}x (goal >= 1.0x)")
print(f"{name}.ids_identical {'yes' if same else 'NO'} ({len(enc)} texts)")
PYEOF
done
