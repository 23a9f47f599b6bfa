/* fuzz_jsonl.c: libFuzzer target for ls_dataset_load (JSONL prompts).
 *
 * The input is written to <scratch>/model/prompts.jsonl (ls_dataset_load reads from a
 * path) and loaded with vocab 1000 and max_len 0 (unlimited) and 64. On success the
 * packed arrays must be consistent: offsets start at 0, increase strictly (no empty
 * prompt) and end at n_tokens, every token is in [0, vocab), ids are terminated.
 * A third load tokenizes "text" lines with a small byte-level tokenizer.json written
 * beside the data, on 2 threads, with --max-tokens 8: the same checks, prompts <= 8. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dataset.h"
#include "fuzz_util.h"
#include "ls_common.h"

#define VOCAB 1000

static void check(const ls_dataset_t *d, int64_t max_len) {
  FUZZ_ASSERT(d->n > 0 && d->offsets != NULL && d->tokens != NULL, "empty dataset accepted");
  FUZZ_ASSERT(d->offsets[0] == 0 && d->offsets[d->n] == d->n_tokens, "offsets %lld..%lld, n_tokens %lld",
              (long long)d->offsets[0], (long long)d->offsets[d->n], (long long)d->n_tokens);
  for (int64_t i = 0; i < d->n; i++) {
    const int64_t len = ls_dataset_len(d, i);
    FUZZ_ASSERT(len > 0, "prompt %lld has %lld tokens", (long long)i, (long long)len);
    if (max_len > 0) FUZZ_ASSERT(len <= max_len, "prompt %lld longer than max_len", (long long)i);
    if (d->has_id)
      FUZZ_ASSERT(memchr(d->ids + i * LS_DATASET_MAX_ID, '\0', LS_DATASET_MAX_ID) != NULL,
                  "id %lld unterminated", (long long)i);
  }
  for (int64_t k = 0; k < d->n_tokens; k++)
    FUZZ_ASSERT(d->tokens[k] >= 0 && d->tokens[k] < VOCAB, "token %lld = %d", (long long)k,
                d->tokens[k]);
  if (d->has_label) {
    volatile int64_t sum = 0; /* touch every label: ASan checks the array is n long */
    for (int64_t i = 0; i < d->n; i++) sum += d->labels[i];
    (void)sum;
  }
}

static const char TOKENIZER[] =
    "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2, \"\\u0120\": 3}, "
    "\"merges\": [\"a b\"]}, \"pre_tokenizer\": {\"type\": \"ByteLevel\"}, \"added_tokens\": "
    "[{\"id\": 4, \"content\": \"<s>\", \"special\": true}], \"post_processor\": {\"type\": "
    "\"TemplateProcessing\", \"single\": [{\"SpecialToken\": {\"id\": \"<s>\", \"type_id\": 0}}, "
    "{\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}], \"special_tokens\": {\"<s>\": {\"id\": "
    "\"<s>\", \"ids\": [4], \"tokens\": [\"<s>\"]}}}}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static char path[PATH_MAX];
  if (!path[0]) {
    ls_error_set_quiet(getenv("LS_FUZZ_VERBOSE") == NULL); /* errors on: triage */
    fuzz_scratch_init();
    char tp[PATH_MAX];
    fuzz_path(tp, sizeof tp, fuzz_model_dir, "tokenizer.json");
    fuzz_write_file(tp, TOKENIZER, sizeof TOKENIZER - 1);
    fuzz_path(path, sizeof path, fuzz_model_dir, "prompts.jsonl");
  }
  fuzz_write_file(path, data, size);
  static const int64_t max_lens[] = {0, 64};
  int64_t n_unlimited = -1;
  for (size_t k = 0; k < sizeof max_lens / sizeof max_lens[0]; k++) {
    ls_dataset_t d;
    if (ls_dataset_load(path, VOCAB, max_lens[k], NULL, &d) == LS_OK) {
      check(&d, max_lens[k]);
      if (max_lens[k] == 0) n_unlimited = d.n;
      else FUZZ_ASSERT(d.n == n_unlimited, "max_len %lld accepted a file that max_len 0 refused",
                       (long long)max_lens[k]);
      ls_dataset_free(&d);
    } else {
      FUZZ_ASSERT(d.n == 0 && d.tokens == NULL && d.offsets == NULL,
                  "failed load left data behind");
    }
  }
  const ls_dataset_text_t text = {fuzz_model_dir, 8, 2};
  ls_dataset_t d;
  if (ls_dataset_load(path, VOCAB, 0, &text, &d) == LS_OK) {
    check(&d, 8);
    ls_dataset_free(&d);
  } else {
    FUZZ_ASSERT(d.n == 0 && d.tokens == NULL && d.offsets == NULL, "failed load left data behind");
  }
  return 0;
}
