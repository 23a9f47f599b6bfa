/* dataset.h: JSONL prompt reader. One JSON object per line:
 *   {"input_ids": [int, ...], "label": int (optional), "id": "string" (optional),
 *    "attention_mask": [0/1, ...] (optional)}
 * An attention_mask's leading and trailing zeros are padding: those tokens are dropped
 * (said once, with the count); a mask with a hole, of another length or with values
 * other than 0/1 is refused, and so are token_type_ids / position_ids / inputs_embeds,
 * which would change the tokens' meaning. Other fields are metadata, ignored.
 * Every error names the file and line and says what to fix. Prompts are stored
 * concatenated (packed) with offsets. */
#ifndef LS_DATASET_H
#define LS_DATASET_H

#include <stdint.h>

#define LS_DATASET_MAX_ID 256 /* longest "id" string accepted (bytes) */
/* Longest line accepted: 32 MiB is millions of tokens, beyond any model's context; a
 * longer line is refused before it is parsed (parsing costs ~64 bytes per token). */
#define LS_DATASET_MAX_LINE ((size_t)32 << 20)

typedef struct {
  int64_t n;          /* prompts */
  int64_t n_tokens;   /* total tokens */
  int32_t *tokens;    /* [n_tokens] all prompts back to back */
  int64_t *offsets;   /* [n + 1] prompt i is tokens[offsets[i] .. offsets[i+1]) */
  int has_label;
  int64_t *labels;    /* [n] when has_label */
  int has_id;
  char *ids;          /* [n * LS_DATASET_MAX_ID] NUL-terminated strings when has_id */
} ls_dataset_t;

/* Load and validate. vocab: ids must be < vocab. max_len > 0: prompts longer than
 * max_len are refused (the message names the line and the flag that allows them). */
int ls_dataset_load(const char *path, int vocab, int64_t max_len, ls_dataset_t *d);
void ls_dataset_free(ls_dataset_t *d);

static inline int64_t ls_dataset_len(const ls_dataset_t *d, int64_t i) {
  return d->offsets[i + 1] - d->offsets[i];
}

#endif
