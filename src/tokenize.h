/* tokenize.h: `layersweep tokenize`: JSONL {"text": ...} lines (or a .txt file of one
 * prompt per line) -> JSONL with "input_ids" added by the model's own tokenizer
 * (io/tokenizer.h), on threads. Other fields are kept; "text" is dropped unless
 * keep_text. The output is written to a temporary file beside it and renamed into place
 * at the end: an error leaves no partial output. */
#ifndef LS_TOKENIZE_H
#define LS_TOKENIZE_H

typedef struct {
  const char *model_dir; /* needs tokenizer.json only (no weights) */
  const char *data_path;
  const char *out_path;
  int keep_text;
  int threads;           /* 0: the CPUs online */
  int force;             /* overwrite an existing out_path */
} ls_tokenize_opts_t;

/* LS_OK, or LS_ERR after one error line naming the file (and line) and what to do. */
int ls_tokenize_main(const ls_tokenize_opts_t *o);

#endif
