/* dataset.h: JSONL prompt reader. One JSON object per line:
 *   {"input_ids": [int, ...], "label": int (optional), "id": "string" (optional),
 *    "attention_mask": [0/1, ...] (optional)}
 * or, with the model's tokenizer (ls_dataset_text_t), {"text": "...", "label", "id"}
 * lines (a line with input_ids uses them; a text is then metadata), or a plain .txt
 * file of one prompt per line (blank lines skipped, a CR before the LF dropped). Text and
 * input_ids prompts are not mixed in one file. Texts are tokenized in chunks on threads.
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
  int from_text;      /* the prompts were text, tokenized with the model's tokenizer */
  char tok_sha256[65];/* when from_text: sha256 of tokenizer.json */
  char tok_policy[160]; /* when from_text: the special tokens added around each prompt */
  int64_t n_truncated;/* prompts cut to max_tokens */
} ls_dataset_t;

/* Text input: how texts are tokenized (NULL: input_ids only, as before). */
typedef struct {
  const char *model_dir; /* its tokenizer.json (+ tokenizer_config.json) */
  int64_t max_tokens;    /* > 0: every prompt is cut to its first max_tokens tokens */
  int threads;           /* tokenizer threads; 0: the CPUs online */
} ls_dataset_text_t;

/* Load and validate. vocab: ids must be < vocab. max_len > 0: prompts longer than
 * max_len are refused (the message names the line and the flag that allows them).
 * text: NULL (input_ids only) or how text lines are tokenized (and --max-tokens). */
int ls_dataset_load(const char *path, int vocab, int64_t max_len, const ls_dataset_text_t *text,
                    ls_dataset_t *d);
void ls_dataset_free(ls_dataset_t *d);

static inline int64_t ls_dataset_len(const ls_dataset_t *d, int64_t i) {
  return d->offsets[i + 1] - d->offsets[i];
}

#endif
