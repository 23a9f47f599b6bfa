#!/usr/bin/env bash
# tests/cli/tokenize.sh: text input end to end (CTest: cli.tokenize).
#
#   1. `layersweep tokenize --keep-text` of tests/fixtures/tokenizers/texts.jsonl gives,
#      byte for byte, each fixture's expected.jsonl (the ids transformers' AutoTokenizer
#      gave, written by gen_tokenizers.py); without --keep-text, the same ids; 1 and 2
#      threads give the same file; a .txt file gives the ids of the same texts.
#   2. `layersweep run` on text data gives the same file contents (activations,
#      /samples/input_ids) as on the equivalent input_ids file, for a byte-level and a
#      SentencePiece-style tokenizer in a made model; /samples/input_ids holds the
#      expected ids; --max-tokens cuts prompts to their first N ids.
#   3. Bad inputs (mixed lines, an unknown model type, a broken tokenizer.json, no
#      tokenizer.json, an existing --out, --out onto the input): one error line each.
#   4. `layersweep tokenize --help` and `run --help` document every option they take.
set -u
: "${LS_BIN:?set LS_BIN to the layersweep binary}"
: "${LS_TEST_TMP:=${TMPDIR:-/tmp}}"
: "${LS_FIXTURES:=$(cd "$(dirname "${BASH_SOURCE[0]}")/../fixtures" && pwd)}"
export OMPI_ALLOW_RUN_AS_ROOT=${OMPI_ALLOW_RUN_AS_ROOT:-1}
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=${OMPI_ALLOW_RUN_AS_ROOT_CONFIRM:-1}
SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TOK=$LS_FIXTURES/tokenizers
T=$(mktemp -d "$LS_TEST_TMP/tokenize.XXXXXX") || exit 1
N_FAIL=0
N_PASS=0
ok() { N_PASS=$((N_PASS + 1)); echo "PASS $1"; }
bad() { N_FAIL=$((N_FAIL + 1)); echo "FAIL $1: $2"; }
ids_of() { sed 's/.*"input_ids": //' "$1"; } # the ids (the last key) of each line

# ---- 1. tokenize vs the expected ids ----------------------------------------------------
n_dirs=0
for d in "$TOK"/*/; do
  d=${d%/}; name=$(basename "$d")
  [ -f "$d/expected.jsonl" ] || continue
  n_dirs=$((n_dirs + 1))
  if ! "$LS_BIN" tokenize --model "$d" --data "$TOK/texts.jsonl" --out "$T/$name.keep.jsonl" \
       --keep-text --threads 2 2>"$T/$name.err"; then
    bad "tokenize.$name" "exit $?: $(head -n 2 "$T/$name.err")"; continue
  fi
  if cmp -s "$T/$name.keep.jsonl" "$d/expected.jsonl"; then ok "tokenize.$name.keep_text"
  else bad "tokenize.$name.keep_text" "differs from expected.jsonl: $(diff "$T/$name.keep.jsonl" "$d/expected.jsonl" | head -n 3)"; fi
  "$LS_BIN" tokenize --model "$d" --data "$TOK/texts.jsonl" --out "$T/$name.jsonl" --threads 1 2>/dev/null
  if cmp -s <(ids_of "$T/$name.jsonl") <(ids_of "$d/expected.jsonl") && ! grep -q '"text"' "$T/$name.jsonl"; then
    ok "tokenize.$name.ids"
  else bad "tokenize.$name.ids" "ids without --keep-text (1 thread) differ, or a text was kept"; fi
done
[ "$n_dirs" -ge 10 ] && ok "tokenize.fixtures ($n_dirs)" || bad "tokenize.fixtures" "only $n_dirs fixture dirs"

# a .txt file: the single-line texts of texts.jsonl, one per line, give the same ids
L3=$TOK/llama3_split_bytelevel
awk '/^\{"text": "[A-Za-z0-9 ,.;]*[A-Za-z][A-Za-z0-9 ,.;]*"\}$/ { print NR }' "$TOK/texts.jsonl" >"$T/p.lines"
while read -r n; do sed -n "${n}p" "$TOK/texts.jsonl" | sed 's/^{"text": "//; s/"}$//'; done <"$T/p.lines" >"$T/p.txt"
printf '%s\r\n\n   \n' "$(head -n 1 "$T/p.txt")" >>"$T/p.txt" # a CRLF line, blank lines
head -n 1 "$T/p.lines" >>"$T/p.lines"
"$LS_BIN" tokenize --model "$L3" --data "$T/p.txt" --out "$T/p.jsonl" 2>/dev/null
want=$(while read -r n; do sed -n "${n}p" "$L3/expected.jsonl"; done <"$T/p.lines" | sed 's/.*"input_ids": //')
if [ "$(wc -l <"$T/p.txt")" -ge 3 ] && [ "$(ids_of "$T/p.jsonl")" = "$want" ]; then ok "tokenize.txt_file"
else bad "tokenize.txt_file" "ids of the .txt lines differ"; fi

# ---- 2. run on text = run on input_ids ---------------------------------------------------
h5ids() { h5dump -y -w 0 -d /samples/input_ids "$1" 2>/dev/null | sed -n '/DATA {/,/}/p' | tr -d 'DATA{} \n' | tr ',' '\n' | grep -v '^$'; }
for tk in llama3_split_bytelevel sp_metaspace_bytefallback; do
  m=$T/model.$tk
  "$LS_BIN" make-model --out "$m" --layers 2 --hidden 64 --intermediate 128 --heads 4 \
    --kv-heads 2 --vocab 1024 --max-pos 4096 --dtype f32 >/dev/null || { bad "run.$tk" "make-model failed"; continue; }
  cp "$TOK/$tk/tokenizer.json" "$TOK/$tk/tokenizer_config.json" "$m/"
  # the texts that give at least one token (an empty text without BOS is refused)
  grep -v '"input_ids": \[\]' "$TOK/$tk/expected.jsonl" | grep -v '^{"text": "", ' >"$T/$tk.exp"
  sed 's/, "input_ids": \[.*$/}/' "$T/$tk.exp" >"$T/$tk.text.jsonl"
  sed 's/^{"text": .*, "input_ids"/{"input_ids"/' "$T/$tk.exp" >"$T/$tk.ids.jsonl"
  for pool in none last_token; do
    "$LS_BIN" run --model "$m" --data "$T/$tk.text.jsonl" --out "$T/$tk.$pool.text.h5" --pool $pool \
      --hooks residual_post,final_norm --threads 2 --progress off >"$T/$tk.$pool.log" 2>&1 || { bad "run.$tk.$pool" "text run failed: $(grep error "$T/$tk.$pool.log")"; continue; }
    "$LS_BIN" run --model "$m" --data "$T/$tk.ids.jsonl" --out "$T/$tk.$pool.ids.h5" --pool $pool \
      --hooks residual_post,final_norm --threads 2 --progress off >>"$T/$tk.$pool.log" 2>&1 || { bad "run.$tk.$pool" "ids run failed"; continue; }
    same=1
    for ds in /residual_post /final_norm /samples/input_ids /samples/length; do
      h5diff -d 0 "$T/$tk.$pool.text.h5" "$T/$tk.$pool.ids.h5" "$ds" "$ds" >/dev/null 2>&1 || { same=0; bad "run.$tk.$pool" "$ds differs between text and input_ids"; }
    done
    [ "$same" = 1 ] && ok "run.$tk.$pool.text_equals_ids"
    if [ "$(h5ids "$T/$tk.$pool.text.h5")" = "$(sed 's/.*"input_ids": \[//; s/\]}$//' "$T/$tk.exp" | tr ',' '\n' | tr -d ' ' | grep -v '^$')" ]; then
      ok "run.$tk.$pool.samples_input_ids"
    else bad "run.$tk.$pool.samples_input_ids" "/samples/input_ids is not the expected ids"; fi
    sha=$(sha256sum "$m/tokenizer.json" | cut -d' ' -f1)
    if h5dump -a /tokenizer_sha256 "$T/$tk.$pool.text.h5" 2>/dev/null | grep -q "$sha" &&
       ! h5dump -a /tokenizer_sha256 "$T/$tk.$pool.ids.h5" >/dev/null 2>&1; then ok "run.$tk.$pool.tokenizer_attrs"
    else bad "run.$tk.$pool.tokenizer_attrs" "tokenizer_sha256 missing, wrong, or present on the input_ids run"; fi
  done
  # --max-tokens 5: every prompt is its first 5 (or fewer) expected ids
  "$LS_BIN" run --model "$m" --data "$T/$tk.text.jsonl" --out "$T/$tk.cut.h5" --pool none --max-tokens 5 \
    --threads 2 --progress off >"$T/$tk.cut.log" 2>&1
  want=$(sed 's/.*"input_ids": \[//; s/\]}$//' "$T/$tk.exp" | awk -F', ' '{n = NF < 5 ? NF : 5; for (i = 1; i <= n; i++) print $i}')
  if [ "$(h5ids "$T/$tk.cut.h5")" = "$want" ] && grep -q "max-tokens 5: cut" "$T/$tk.cut.log"; then ok "run.$tk.max_tokens"
  else bad "run.$tk.max_tokens" "--max-tokens 5 did not keep the first 5 ids of each prompt"; fi
done

# 2 ranks: the same file as 1 rank (text tokenized on rank 0, the ids broadcast)
tk=llama3_split_bytelevel
if command -v mpirun >/dev/null; then
  mpirun --oversubscribe --allow-run-as-root -np 2 "$LS_BIN" run --model "$T/model.$tk" --data "$T/$tk.text.jsonl" \
    --out "$T/$tk.np2.h5" --pool none --hooks residual_post,final_norm --threads 1 --progress off >"$T/np2.log" 2>&1
  same=1
  for ds in /residual_post /final_norm /samples/input_ids /samples/offsets; do
    h5diff -d 0 "$T/$tk.none.text.h5" "$T/$tk.np2.h5" "$ds" "$ds" >/dev/null 2>&1 || same=0
  done
  [ "$same" = 1 ] && ok "run.$tk.np2_equals_np1" || bad "run.$tk.np2_equals_np1" "2 ranks differ from 1: $(grep error "$T/np2.log")"
fi

# ---- 3. bad inputs: exactly one error line each -------------------------------------------
M=$T/model.llama3_split_bytelevel
one_error() { # name want cmd...
  local name=$1 want=$2; shift 2
  timeout 60 "$@" >"$T/$name.out" 2>"$T/$name.err" </dev/null
  local rc=$? n
  n=$(grep -cE '^layersweep: error: ' "$T/$name.err")
  if [ $rc -eq 0 ] || [ $rc -ge 124 ]; then bad "bad.$name" "exit $rc"
  elif [ "$n" -ne 1 ] || [ "$(grep -vcE '^layersweep: error: ' "$T/$name.err")" -ne 0 ]; then bad "bad.$name" "$n error lines / other lines: $(head -n 3 "$T/$name.err")"
  elif ! grep -qF -- "$want" "$T/$name.err"; then bad "bad.$name" "error line lacks \"$want\": $(cat "$T/$name.err")"
  else ok "bad.$name"; fi
}
printf '{"text": "hello"}\n{"input_ids": [1, 2]}\n' >"$T/mixed.jsonl"
one_error run_mixed_lines "mixed.jsonl:2" "$LS_BIN" run --model "$M" --data "$T/mixed.jsonl" --out "$T/x.h5"
printf '{"input_ids": [1, 2]}\n{"text": "hello"}\n' >"$T/mixed2.jsonl"
one_error run_mixed_lines2 "mixed2.jsonl:2" "$LS_BIN" run --model "$M" --data "$T/mixed2.jsonl" --out "$T/x.h5"
for kind in unigram broken missing nonbpe_pre; do
  mk=$T/tokbad.$kind; mkdir -p "$mk"; cp "$M"/config.json "$M"/model.safetensors "$mk/"
  case $kind in
    unigram) printf '{"model": {"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0]]}}' >"$mk/tokenizer.json"; want='model type "Unigram" is not implemented' ;;
    broken) head -c 5000 "$TOK/llama3_split_bytelevel/tokenizer.json" >"$mk/tokenizer.json"; want="not valid JSON" ;;
    missing) want="tokenizer.json: cannot open" ;;
    nonbpe_pre) sed 's/"type": *"ByteLevel"/"type": "BertPreTokenizer"/' "$TOK/llama3_split_bytelevel/tokenizer.json" >"$mk/tokenizer.json"; want='"BertPreTokenizer" is not implemented' ;;
  esac
  one_error "run_tokenizer_$kind" "$want" "$LS_BIN" run --model "$mk" --data "$T/llama3_split_bytelevel.text.jsonl" --out "$T/x.h5"
  one_error "tokenize_tokenizer_$kind" "$want" "$LS_BIN" tokenize --model "$mk" --data "$T/llama3_split_bytelevel.text.jsonl" --out "$T/x.jsonl"
done
printf '{"text": "a"}\n{"text": 3}\n' >"$T/nottext.jsonl"
one_error tokenize_text_not_string "nottext.jsonl:2" "$LS_BIN" tokenize --model "$M" --data "$T/nottext.jsonl" --out "$T/y.jsonl"
printf '{"text": "a"}\n{"text": "b", "input_ids": [1]}\n' >"$T/hasids.jsonl"
one_error tokenize_has_ids "hasids.jsonl:2" "$LS_BIN" tokenize --model "$M" --data "$T/hasids.jsonl" --out "$T/y.jsonl"
[ ! -e "$T/y.jsonl" ] && ok "tokenize.no_partial_output" || bad "tokenize.no_partial_output" "a failed tokenize left --out"
printf '{"text": "a\\u0000b"}\n' >"$T/nul.jsonl"
one_error tokenize_nul "nul.jsonl:1" "$LS_BIN" tokenize --model "$M" --data "$T/nul.jsonl" --out "$T/y.jsonl"
one_error tokenize_out_exists "--force" "$LS_BIN" tokenize --model "$M" --data "$T/mixed.jsonl" --out "$T/mixed2.jsonl"
one_error tokenize_out_is_input "is the input" "$LS_BIN" tokenize --model "$M" --data "$T/mixed.jsonl" --out "$T/mixed.jsonl" --force
ln -sf "$T/mixed.jsonl" "$T/link.jsonl"
one_error tokenize_out_link_to_input "through a link" "$LS_BIN" tokenize --model "$M" --data "$T/mixed.jsonl" --out "$T/link.jsonl" --force
one_error tokenize_out_is_tokenizer "is the input" "$LS_BIN" tokenize --model "$M" --data "$T/mixed.jsonl" --out "$M/tokenizer.json" --force
one_error run_out_is_tokenizer "is the input" "$LS_BIN" run --model "$M" --data "$T/llama3_split_bytelevel.text.jsonl" --out "$M/tokenizer.json" --force
one_error tokenize_bad_option "--bogus" "$LS_BIN" tokenize --model "$M" --bogus
one_error run_max_tokens_zero "--max-tokens" "$LS_BIN" run --model "$M" --data "$T/mixed.jsonl" --out "$T/x.h5" --max-tokens 0
# a text longer than the model allows: refused, naming --max-tokens
m2=$T/model.short; "$LS_BIN" make-model --out "$m2" --layers 1 --hidden 64 --intermediate 128 --heads 4 --kv-heads 2 --max-pos 8 >/dev/null
cp "$M/tokenizer.json" "$m2/"
printf '{"text": "a long text of many words that is more than eight tokens long"}\n' >"$T/long.jsonl"
one_error run_text_too_long "--max-tokens" "$LS_BIN" run --model "$m2" --data "$T/long.jsonl" --out "$T/x.h5"

# ---- 4. --help documents every option -------------------------------------------------------
src_opts() {
  awk -v fn="$1" '$0 ~ "^static int " fn "\\(" {on=1} on && /^}/ {exit} on' "$SRC_DIR/src/main.c" |
    grep -o '{"[a-z][a-z0-9-]*", *\(required\|no\|optional\)_argument' | sed 's/{"\([^"]*\)".*/--\1/'
}
for spec in "tokenize:cmd_tokenize" "run:cmd_run"; do
  cmd=${spec%%:*}; fn=${spec#*:}
  help=$("$LS_BIN" "$cmd" --help)
  missing=
  for opt in $(src_opts "$fn"); do printf '%s' "$help" | grep -qE -- "(^| )$opt( |$|,)" || missing="$missing $opt"; done
  [ -z "$missing" ] && [ -n "$(src_opts "$fn")" ] && ok "help.$cmd" || bad "help.$cmd" "undocumented:$missing"
done
"$LS_BIN" --help | grep -q '^  tokenize ' && ok "help.main_lists_tokenize" || bad "help.main_lists_tokenize" "layersweep --help lacks tokenize"

echo "tokenize.sh: $N_PASS passed, $N_FAIL failed"
[ "$N_FAIL" -eq 0 ] && rm -rf "$T"
[ "$N_FAIL" -eq 0 ]
