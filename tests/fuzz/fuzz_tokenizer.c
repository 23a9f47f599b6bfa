/* fuzz_tokenizer.c: libFuzzer target for io/tokenizer.c (tokenizer.json + texts).
 *
 * Input: [tokenizer.json] NUL [text], or [tokenizer.json] NUL {tokenizer_config.json} NUL
 * [text] (the middle part starts with '{'), or without a NUL the whole input as a text for
 * a fixed byte-level tokenizer (so that every part is explored). The JSON is loaded with
 * ls_tokenizer_load_mem; when it loads, the text (if valid
 * UTF-8) and a few fixed hostile texts are encoded. Checked: a load failure leaves no
 * tokenizer; every id is in [0, id_bound); encoding twice gives the same ids (the word
 * cache changes nothing); invalid UTF-8 is refused, never encoded. Seeds: the committed
 * fixture tokenizers (tests/fuzz/corpus/fuzz_tokenizer, made by gen_tokenizer_seeds.sh). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "ls_common.h"
#include "tokenizer.h"

static const char *const FIXED =
    "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2, \"\\u0120\": 3, "
    "\"\\u0120a\": 4}, \"merges\": [\"a b\", [\"\\u0120\", \"a\"]]}, \"pre_tokenizer\": "
    "{\"type\": \"ByteLevel\", \"add_prefix_space\": true}, \"added_tokens\": [{\"id\": 5, "
    "\"content\": \"<s>\", \"special\": true, \"lstrip\": true, \"rstrip\": true}], "
    "\"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"NFKC\"}, "
    "{\"type\": \"Lowercase\"}]}}";

static void encode_check(ls_tokenizer_t *t, ls_tok_ctx_t *c, const char *s, size_t n) {
  const int32_t *ids;
  size_t k;
  const int valid = ls_utf8_valid(s, n);
  int rc = ls_tokenizer_encode(c, s, n, &ids, &k);
  if (!valid) {
    FUZZ_ASSERT(rc != LS_OK, "invalid UTF-8 encoded");
    return;
  }
  if (rc != LS_OK) return; /* a regex limit */
  const int64_t bound = ls_tokenizer_id_bound(t);
  int32_t *copy = malloc((k ? k : 1) * sizeof *copy);
  if (!copy) return;
  for (size_t i = 0; i < k; i++) {
    FUZZ_ASSERT(ids[i] >= 0 && ids[i] < bound, "id %d outside [0, %lld)", ids[i], (long long)bound);
    copy[i] = ids[i];
  }
  rc = ls_tokenizer_encode(c, s, n, &ids, &k);
  FUZZ_ASSERT(rc == LS_OK, "second encode failed");
  for (size_t i = 0; i < k; i++) FUZZ_ASSERT(ids[i] == copy[i], "second encode differs at %zu", i);
  free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int init;
  if (!init) {
    ls_error_set_quiet(getenv("LS_FUZZ_VERBOSE") == NULL);
    init = 1;
  }
  const uint8_t *nul = memchr(data, 0, size);
  char *json = NULL, *cfg = NULL;
  const char *text;
  size_t json_n, text_n;
  if (nul) {
    json_n = (size_t)(nul - data);
    json = malloc(json_n + 1);
    if (!json) return 0;
    memcpy(json, data, json_n);
    json[json_n] = '\0';
    text = (const char *)nul + 1;
    text_n = size - json_n - 1;
    const char *nul2 = text_n && text[0] == '{' ? memchr(text, 0, text_n) : NULL;
    if (nul2) { /* a tokenizer_config.json */
      const size_t cn = (size_t)(nul2 - text);
      cfg = malloc(cn + 1);
      if (!cfg) { free(json); return 0; }
      memcpy(cfg, text, cn);
      cfg[cn] = '\0';
      text = nul2 + 1;
      text_n -= cn + 1;
    }
  } else {
    json_n = strlen(FIXED);
    text = (const char *)data;
    text_n = size;
  }
  ls_tokenizer_t *t = (ls_tokenizer_t *)1;
  int rc = ls_tokenizer_load_mem(json ? json : FIXED, json_n, cfg, "fuzz.json", &t);
  free(cfg);
  if (rc != LS_OK) {
    FUZZ_ASSERT(t == NULL, "failed load left a tokenizer");
    free(json);
    return 0;
  }
  ls_tok_ctx_t *c = ls_tok_ctx_new(t);
  if (c) {
    encode_check(t, c, text, text_n);
    static const char *const fixed[] = {"", " ", "Hello world", "<s>x</s> <unk>", ("\xe2\x96\x81\xe2\x96\x81" "a"),
                                        "\xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9 \t\r\n x\xcc\x81"};
    if (json)
      for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) encode_check(t, c, fixed[i], strlen(fixed[i]));
  }
  ls_tok_ctx_free(c);
  ls_tokenizer_free(t);
  free(json);
  return 0;
}
