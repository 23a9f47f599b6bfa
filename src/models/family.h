/* family.h: a model family as a recipe. A family is one file in src/models that
 * declares
 *   (a) how its config.json is read (parse_config, with the JSON helpers below),
 *   (b) its weight table: the Hugging Face name, shape and kind of every tensor of a
 *       layer (layer_tensors) and of the whole model (global_tensors), built once per
 *       model (src/model.c) and used by the plan, the weight reader, the converter and
 *       the checkpoint fingerprint,
 *   (c) its block forward, composed from backend ops (kernels/backend.h), calling the
 *       hook callback at every hook point it has,
 * and is listed once in src/models/families.c. Compare llama.cpp's per-architecture
 * graph builders over one op set. */
#ifndef LS_FAMILY_H
#define LS_FAMILY_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "config.h"
#include "hooks.h"

/* ---- the weight table ------------------------------------------------------------------- */
#define LS_WNAME_MAX 256

typedef enum {
  LS_WK_MATRIX = 0, /* GEMM weight (n_out, n_in): stored in the backend's weight format */
  LS_WK_NORM = 1,   /* norm weight (float32 in backend memory) */
  LS_WK_BIAS = 2,   /* bias (float32) */
  LS_WK_EMBED = 3,  /* embedding table (vocab, H): read by rows, never converted whole */
  LS_WK_NORM_P1 = 4 /* norm weight stored as w, used as 1 + w (Gemma): float32, +1 at load */
} ls_wkind_t;

typedef struct {
  char name[LS_WNAME_MAX]; /* Hugging Face tensor name */
  int32_t kind;            /* ls_wkind_t */
  int32_t present;         /* 0: this model has no such tensor (e.g. biases turned off) */
  int32_t ndim;
  int64_t shape[2];        /* as stored in the checkpoint */
} ls_wspec_t;

/* ---- the block forward -------------------------------------------------------------------- */
/* A microbatch of packed prompts (all backend memory). */
typedef struct {
  int T;                    /* rows (tokens) */
  int n_seq;                /* prompts */
  const int32_t *seq_start; /* (n_seq + 1) row offsets, seq_start[0] = 0 */
  const int32_t *seq_len;   /* (n_seq) real rows of each sequence (the rest up to the
                             * next start is alignment padding); NULL: no padding */
  const int32_t *pos;       /* (T) position of each row inside its prompt */
  int max_len;              /* >= every seq_start[s + 1] - seq_start[s] */
} ls_batch_t;

/* Called by a block at each of its hook points with the rows (T, width) that point
 * exposes (backend memory). The callee may read them (capture, pooling) and, for edit
 * points, change them in place before the block uses them (steering). */
typedef void (*ls_hook_fn)(void *ctx, ls_hook_t hook, float *rows, int width);

typedef struct {
  ls_backend_t *be;
  const ls_config_t *cfg;
  int layer;                       /* the layer's index (per-layer windows, RoPE tables) */
  void *const *w;                  /* (n_slots) this layer's tensors, backend memory, in
                                    * layer_tensors order; NULL where absent */
  const float *cos_tab, *sin_tab;  /* (max_len, head_dim / 2) RoPE tables, backend memory */
  const ls_batch_t *b;
  float *scratch;                  /* scratch_floats(cfg, T_max) floats, backend memory */
  int T_max;
  ls_hook_fn hook;                 /* NULL: no hooks */
  void *hook_ctx;
} ls_block_t;

typedef struct {
  const char *name;               /* e.g. "llama" */
  const char *const *archs;       /* config "architectures" values it reads, NULL-ended */
  const char *const *model_types; /* the matching "model_type" values (used when
                                   * "architectures" is absent), same order */
  /* Fill cfg from config.json's root object (cfg->arch_name / model_type / family are
   * already set); LS_ERR after one line naming path and the key. */
  int (*parse_config)(const cJSON *root, const char *path, ls_config_t *cfg);
  int n_slots;                    /* tensors per layer (present or not) */
  void (*layer_tensors)(const ls_config_t *cfg, int layer, ls_wspec_t *slots);
  /* the embedding table and the final norm's weight */
  void (*global_tensors)(const ls_config_t *cfg, ls_wspec_t *embed, ls_wspec_t *final_norm);
  size_t (*scratch_floats)(const ls_config_t *cfg, int T_max);
  /* x (T, H): the residual stream in (residual_pre), residual_post out */
  void (*forward)(const ls_block_t *blk, float *x);
  /* out (T, H) <- the model's final norm of x with weight w (hook final_norm) */
  void (*final_norm)(ls_backend_t *be, const ls_config_t *cfg, float *out, const float *x,
                     const float *w, int T);
  /* optional (NULL: 1): the factor the embedding rows are multiplied by (Gemma: sqrt(H)
   * rounded to float32, as transformers' scaled embedding) */
  float (*embed_scale)(const ls_config_t *cfg);
} ls_family_t;

/* The family of index i (cfg->family), NULL past the end. */
const ls_family_t *ls_family_get(int i);
/* Index of the family that reads architecture `arch` (or, when arch is NULL,
 * model_type `type`); -1 if none. */
int ls_family_find(const char *arch, const char *type);
/* "LlamaForCausalLM, MistralForCausalLM, ..." for messages */
const char *ls_family_supported(void);
/* Model GEMM flops per token per layer (2 x the multiply-adds of every GEMM weight),
 * averaged over the layers. */
double ls_family_gemm_flops_per_token(const ls_config_t *cfg);

/* ---- helpers for recipes (src/models/families.c) ---------------------------------------------- */
/* w <- tensor "model.layers.<layer>.<name>" of the given kind and shape (d1 = 0: 1-D) */
void ls_wspec_layer(ls_wspec_t *w, int layer, const char *name, ls_wkind_t kind, int present,
                    int64_t d0, int64_t d1);
/* w[0..8) <- the attention projections of the Llama-shaped families, in the order q, k,
 * v, o weights, then q, k, v, o biases (present per cfg->qkv_bias / o_bias):
 * self_attn.{q,k,v,o}_proj.{weight,bias} */
void ls_wspec_attention(ls_wspec_t *w, int layer, const ls_config_t *c);
/* w[0..3) <- mlp.{gate,up,down}_proj.weight */
void ls_wspec_mlp(ls_wspec_t *w, int layer, const ls_config_t *c);
/* w <- the model-level tensor `name` (d1 = 0: 1-D) */
void ls_wspec_global(ls_wspec_t *w, const char *name, ls_wkind_t kind, int64_t d0, int64_t d1);
/* the embedding table and final RMSNorm of the Llama-shaped families (model.embed_tokens,
 * model.norm: Llama, Mistral, Qwen2/3, OLMo-2), and that final norm (weight w,
 * cfg->rms_eps) */
void ls_llama_global_tensors(const ls_config_t *c, ls_wspec_t *embed, ls_wspec_t *norm);
void ls_llama_final_norm(ls_backend_t *be, const ls_config_t *c, float *out, const float *x,
                         const float *w, int T);
/* the Gemma families' embedding table and (1 + w) final norm, and their embedding scale
 * sqrt(hidden_size) rounded to float32 (src/models/gemma.c) */
void ls_gemma_global_tensors(const ls_config_t *c, ls_wspec_t *embed, ls_wspec_t *norm);
float ls_gemma_embed_scale(const ls_config_t *c);
/* Scratch carving: the next (ls_round_rows(T), width) block at *p, 16-float aligned. */
float *ls_scratch_take(float **p, int T, size_t width);
/* Floats ls_scratch_take needs for `n` blocks of the given widths at T rows. */
size_t ls_scratch_floats(int T, const size_t *widths, int n);

/* ---- the sub-layers the decoder families share (src/models/recipe.c) ------------------------ */
typedef enum {
  LS_QK_NONE = 0,     /* q, k straight from their projections */
  LS_QK_PER_HEAD = 1, /* RMSNorm of each head's q / k (weights (head_dim): Qwen3) */
  LS_QK_WHOLE = 2     /* RMSNorm of the whole projection (weights (n_heads * head_dim): OLMo-2) */
} ls_qknorm_t;

typedef struct {
  void *q, *k, *v, *o;     /* GEMM weights */
  void *bq, *bk, *bv, *bo; /* biases, NULL when absent */
  void *q_norm, *k_norm;   /* with qk_norm != LS_QK_NONE */
  ls_qknorm_t qk_norm;
} ls_attn_weights_t;

typedef struct {
  float *q, *k, *v, *att;  /* (T, Q), (T, KV), (T, KV), (T, Q); Q = n_heads * head_dim */
  float *q_raw, *k_raw;    /* (T, Q), (T, KV): projections before a q/k norm (else unused) */
} ls_attn_scratch_t;

/* out (T, H) <- o_proj(attention(rope(q(xin)), rope(k(xin)), v(xin))), with the layer's
 * window and cfg's attention scale and soft-capping; biases when present; q/k normed
 * before RoPE when w->qk_norm says so. */
void ls_recipe_attention(const ls_block_t *blk, const ls_attn_weights_t *w,
                         const ls_attn_scratch_t *s, const float *xin, float *out);
/* out (T, H) <- down(act(gate(xin)) * up(xin)) (+ biases); gate, up: (T, I) scratch;
 * act: SiLU (SwiGLU), or the tanh GELU (GeGLU) when gelu */
void ls_recipe_glu_mlp(const ls_block_t *blk, void *w_gate, void *w_up, void *w_down,
                       void *b_gate, void *b_up, void *b_down, float *gate, float *up,
                       const float *xin, float *out, int gelu);
/* What every sub-layer ends with: hook point h on rows (T, H), then x += rows. */
void ls_recipe_add(const ls_block_t *blk, ls_hook_t h, float *x, float *rows);
/* out (T, H) <- RMSNorm(x) with weight w and cfg->rms_eps */
void ls_recipe_rmsnorm(const ls_block_t *blk, float *out, const float *x, const void *w);

/* ---- config.json helpers for parse_config (src/config.c) ------------------------------------ */
/* the value of key, NULL when absent or null */
const cJSON *ls_cfg_get(const cJSON *o, const char *key);
/* integer in [lo, hi]; absent: def, or an error when required */
int ls_cfg_int(const cJSON *o, const char *key, int required, int def, int lo, int hi,
               const char *path, int *out);
/* finite number in [lo, hi]; absent: def */
int ls_cfg_num(const cJSON *o, const char *key, double def, double lo, double hi,
               const char *path, double *out);
int ls_cfg_bool(const cJSON *o, const char *key, int def, const char *path, int *out);
/* the sizes every decoder has: hidden_size, intermediate_size, num_hidden_layers,
 * num_attention_heads, num_key_value_heads, head_dim, vocab_size,
 * max_position_embeddings, rms_norm_eps, checked for consistency */
int ls_cfg_common_sizes(const cJSON *root, const char *path, ls_config_t *cfg);
/* the same with the family's own default head_dim when the key is absent (0: hidden /
 * num_attention_heads, as most families) */
int ls_cfg_sizes(const cJSON *root, const char *path, int default_head_dim, ls_config_t *cfg);
/* Per-layer attention kinds: "layer_types" (a list of "full_attention" /
 * "sliding_attention", one per layer) when given, else the family's default rule: layer L
 * >= first_sliding slides when (period > 0) (L + 1) % period != 0 (Gemma 2: period 2,
 * every other layer from 0), or (period 0) cfg->sliding_window > 0 (Qwen2/3:
 * first_sliding = max_window_layers). Sliding layers without a window are refused (as
 * transformers does). Sets window_per_layer and layer_sliding. */
int ls_cfg_layer_types(const cJSON *root, const char *path, int first_sliding, int period,
                       ls_config_t *cfg);
/* rope_theta + rope_scaling (classic) or rope_parameters (transformers 5): default,
 * linear and llama3 */
int ls_cfg_rope(const cJSON *root, const char *path, ls_config_t *cfg);
/* config key `key` (e.g. hidden_act) must be one of the NULL-ended names, or absent (the
 * family's default, allowed[0]) */
int ls_cfg_activation(const cJSON *root, const char *path, const char *key,
                      const char *const *allowed, const ls_config_t *cfg);

#endif
