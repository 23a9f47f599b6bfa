/* make_model.h: random Hugging Face model directories and random token datasets
 * (`layersweep make-model`, `layersweep make-data`) for demos, tests, benchmarks. */
#ifndef LS_MAKE_MODEL_H
#define LS_MAKE_MODEL_H

#include <stdint.h>

typedef struct {
  const char *out_dir;
  const char *arch;   /* llama | mistral | qwen2 | mixtral */
  int hidden, intermediate, n_layers, n_heads, n_kv_heads, head_dim, vocab, max_pos;
  const char *dtype;  /* bf16 | f16 | f32 */
  int shards;
  uint64_t seed;
  double rope_theta, init_std;
  int tie_embeddings, sliding_window, force;
  int n_experts, top_k; /* mixtral: experts per layer, per token (intermediate: each expert's) */
} ls_make_model_opts_t;

void ls_make_model_default(ls_make_model_opts_t *o);
int ls_make_model(const ls_make_model_opts_t *o);

typedef struct {
  const char *out_path;
  int64_t n;
  int min_len, max_len, vocab;
  uint64_t seed;
  int labels, force;
} ls_make_data_opts_t;

void ls_make_data_default(ls_make_data_opts_t *o);
int ls_make_data(const ls_make_data_opts_t *o);

#endif
