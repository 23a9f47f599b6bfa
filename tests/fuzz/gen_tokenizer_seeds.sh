#!/usr/bin/env bash
# tests/fuzz/gen_tokenizer_seeds.sh: the seeds of fuzz_tokenizer, [tokenizer.json] NUL
# [text], from the fixture tokenizers (tests/fixtures/tokenizers) that are small, each with
# a hostile text; plus two texts alone (the harness's fixed tokenizer). Rerun after
# regenerating the fixtures.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
fx=$here/../fixtures/tokenizers
out=$here/corpus/fuzz_tokenizer
mkdir -p "$out"
texts=("Hello world <s> </s> <|endoftext|>" $'tabs\t\t  spaces\r\n\n' "数据集 😀 👨‍👩‍👧 e\u0301 İ ﬁ ①")
i=0
for d in gpt2_bytelevel llama3_split_bytelevel qwen2_nfc_split sp_metaspace_bytefallback \
         sp_llama2_replace_prepend added_tokens_template nfkd_lower_whitespace_digits \
         split_behaviors_strip_nfd gemma_replace_split_prev; do
  { cat "$fx/$d/tokenizer.json"; printf '\0'; printf '%s' "${texts[$((i % 3))]}"; } >"$out/$d"
  i=$((i + 1))
done
# with a tokenizer_config.json naming a class transformers rebuilds
for pair in sp_llama2_replace_prepend:LlamaTokenizer gemma_replace_split_prev:GemmaTokenizerFast \
            llama3_split_bytelevel:Qwen2Tokenizer nfkc_bytelevel:GPT2Tokenizer; do
  d=${pair%%:*}; c=${pair#*:}
  { cat "$fx/$d/tokenizer.json"; printf '\0{"tokenizer_class": "%s", "legacy": true, "add_prefix_space": true}\0' "$c";
    printf '%s' "${texts[0]}"; } >"$out/class_$c"
done
printf 'a b ab <s>  x' >"$out/text_only_ascii"
printf '\xe2\x96\x81\xf0\x9f\x98\x80 \xff\xfe bad utf-8' >"$out/text_only_bad_utf8"
