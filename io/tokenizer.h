/* tokenizer.h: a model's own tokenizer, read from its directory's tokenizer.json (the
 * Hugging Face `tokenizers` serialization) and tokenizer_config.json, giving the ids
 * that transformers' AutoTokenizer.from_pretrained(dir)(text)["input_ids"] gives.
 *
 * Implemented: model BPE (byte-level like GPT-2 / Llama 3 / Qwen, and SentencePiece-style
 * with byte_fallback, unk, fuse_unk, ignore_merges, continuing_subword_prefix /
 * end_of_word_suffix); normalizers NFC, NFD, NFKC, NFKD, Lowercase, StripAccents, Strip,
 * Replace, Prepend, Sequence; pre-tokenizers ByteLevel, Split, Metaspace, Digits,
 * Whitespace, WhitespaceSplit, Sequence; post-processors TemplateProcessing, ByteLevel,
 * RobertaProcessing, BertProcessing, Sequence; added tokens with lstrip / rstrip /
 * single_word / normalized. BOS / EOS come from tokenizer.json's post_processor alone:
 * transformers 5 drops tokenizer_config.json's add_bos_token / add_eos_token when
 * tokenizer.json exists. When tokenizer_config.json names a model class that transformers
 * rebuilds from the vocab and merges (LlamaTokenizer, GemmaTokenizer, GPT2Tokenizer,
 * GPTNeoXTokenizer, Qwen2Tokenizer, and their Fast names), that class's normalizer,
 * pre-tokenizer and BPE flags replace the file's, as AutoTokenizer does; another such
 * class is named in a warning and the file is used as it is.
 * Anything else (Unigram, WordPiece, WordLevel, other components) is refused by name.
 *
 * The files are treated as hostile: every field is checked, sizes are capped, regexes
 * run with PCRE2 match and JIT stack limits. A loaded tokenizer is read-only: any
 * number of threads may encode with it, each with its own ls_tok_ctx_t. */
#ifndef LS_TOKENIZER_H
#define LS_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#define LS_TOKENIZER_MAX_JSON ((size_t)512 << 20) /* largest tokenizer.json accepted */
#define LS_TOKENIZER_MAX_TEXT ((size_t)64 << 20)  /* longest text encoded at once */

typedef struct ls_tokenizer ls_tokenizer_t;
typedef struct ls_tok_ctx ls_tok_ctx_t;

/* Load DIR/tokenizer.json (+ DIR/tokenizer_config.json when present). LS_OK, or LS_ERR
 * after one error line naming the file and what is wrong. */
int ls_tokenizer_load(const char *dir, ls_tokenizer_t **out);
/* The same from memory (the fuzz target); config_json may be NULL. name: for messages. */
int ls_tokenizer_load_mem(const char *json, size_t len, const char *config_json,
                          const char *name, ls_tokenizer_t **out);
void ls_tokenizer_free(ls_tokenizer_t *t);

/* sha256 of tokenizer.json's bytes (64 hex digits), and the special-token policy in
 * words (e.g. "bos <s> (1) + text", "text"), for the output file's attributes. */
const char *ls_tokenizer_sha256(const ls_tokenizer_t *t);
const char *ls_tokenizer_policy(const ls_tokenizer_t *t);
/* One more than the largest id the tokenizer can produce. */
int64_t ls_tokenizer_id_bound(const ls_tokenizer_t *t);

/* Per-thread state: regex match data, buffers, the word cache. */
ls_tok_ctx_t *ls_tok_ctx_new(const ls_tokenizer_t *t);
void ls_tok_ctx_free(ls_tok_ctx_t *c);

/* Encode len bytes of UTF-8 text (add_special_tokens=True, as transformers' __call__).
 * *ids (*n of them) stay valid until the next call with c. LS_ERR on invalid UTF-8, a
 * text over LS_TOKENIZER_MAX_TEXT, a regex limit or no memory: the reason is then in
 * ls_tok_ctx_error(c) (nothing is printed: threads call this). */
int ls_tokenizer_encode(ls_tok_ctx_t *c, const char *text, size_t len, const int32_t **ids,
                        size_t *n);
const char *ls_tok_ctx_error(const ls_tok_ctx_t *c);

/* 1 when s[0..len) is valid UTF-8 (no overlong forms, no surrogates, <= U+10FFFF). */
int ls_utf8_valid(const char *s, size_t len);

#endif
