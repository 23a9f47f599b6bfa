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

/* A slot is a checkpoint tensor, or part of one: a fused tensor (GPT-2's c_attn, Phi-3's
 * qkv_proj, GPT-NeoX's per-head interleaved query_key_value) is split at load into the
 * slots the recipe uses, so recipes only ever see plain q / k / v weights. Rank 0 reads
 * the stored tensor, transposes it if asked, and packs the selected rows into the slot. */
typedef struct {
  char name[LS_WNAME_MAX]; /* Hugging Face tensor name */
  int32_t kind;            /* ls_wkind_t */
  int32_t present;         /* 0: this model has no such tensor (e.g. biases turned off) */
  int32_t ndim;
  int64_t shape[2];        /* as stored in the checkpoint */
  int32_t transpose;       /* 1: stored (n_in, n_out) (GPT-2's Conv1D): the slot is the
                            * transpose (2-D only) */
  int32_t view_count;      /* 0: the whole tensor; else the slot is rows view_row0 + j *
                            * view_stride + i (j < view_count, i < view_block) of the
                            * (transposed) tensor, in that order (1-D: elements) */
  int64_t view_row0, view_block, view_stride;
  /* optional row order inside each block of a view (MLA heads, src/models/deepseek.c):
   * LS_VIEW_ROTATE puts rows [view_split, block) first, then [0, view_split);
   * LS_VIEW_ROTATE_DEINT the same with the moved rows de-interleaved (even rows, then odd
   * rows: DeepSeek's interleaved RoPE pairs become rotate_half pairs; q and k get the
   * same order, so their dot products are unchanged) */
  int32_t view_perm;
  int64_t view_split;
} ls_wspec_t;

enum { LS_VIEW_PLAIN = 0, LS_VIEW_ROTATE = 1, LS_VIEW_ROTATE_DEINT = 2 };

/* The slot's own shape: rows (after transpose and view) and columns (1 for 1-D), and
 * its element count. */
int64_t ls_wspec_rows(const ls_wspec_t *w);
int64_t ls_wspec_cols(const ls_wspec_t *w);
static inline int64_t ls_wspec_numel(const ls_wspec_t *w) {
  return ls_wspec_rows(w) * ls_wspec_cols(w);
}
/* w becomes rows [row0 + j * stride, + block) for j < count of its tensor */
void ls_wspec_view(ls_wspec_t *w, int64_t row0, int64_t block, int64_t stride, int64_t count);
/* and each block's rows reordered (LS_VIEW_ROTATE[_DEINT] from row split of the block) */
void ls_wspec_view_perm(ls_wspec_t *w, int perm, int64_t split);

/* The model-level tensors (global_tensors fills those the family has; absent ones
 * keep present = 0). */
enum {
  LS_G_EMBED = 0,      /* token embedding (vocab, H), LS_WK_EMBED: always present */
  LS_G_POS_EMBED = 1,  /* learned position embeddings (max_pos, H), LS_WK_EMBED: GPT-2,
                        * added to the token embedding (part of residual_pre of layer 0) */
  LS_G_FINAL_NORM = 2, /* the final norm's weight (H): always present */
  LS_G_FINAL_BIAS = 3, /* the final norm's bias (H): LayerNorm families */
  LS_G_COUNT
};

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
  const int32_t *seq_start_h, *seq_len_h; /* host copies of seq_start / seq_len (MoE
                                           * routing skips padding rows) */
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
  const float *cos_tab, *sin_tab;  /* (max_len, rope_dim / 2) RoPE tables of this layer's
                                    * parameters (ls_config_rope), backend memory */
  const ls_batch_t *b;
  float *scratch;                  /* scratch_floats(cfg, T_max) floats, backend memory */
  int T_max;
  ls_hook_fn hook;                 /* NULL: no hooks */
  void *hook_ctx;
  void *host;                      /* host_scratch_bytes(cfg, T_max) bytes of host memory
                                    * (families that route on the host), else NULL */
  int64_t *expert_rows;            /* MoE layers: (n_experts) real rows routed to each
                                    * expert, added to; NULL: not counted */
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
  /* optional: tensors per layer for this config (MoE: 3 per expert), instead of n_slots */
  int (*slot_count)(const ls_config_t *cfg);
  void (*layer_tensors)(const ls_config_t *cfg, int layer, ls_wspec_t *slots);
  /* the model-level tensors g[LS_G_COUNT] (zeroed by the caller) */
  void (*global_tensors)(const ls_config_t *cfg, ls_wspec_t *g);
  /* optional: a leading part of every tensor name (e.g. "transformer.") that checkpoints
   * saved from the bare model lack (GPT2Model vs GPT2LMHeadModel); when the embedding
   * is found only without it, every name is used without it */
  const char *optional_prefix;
  /* scratch: n_scratch blocks of T_max rows, widths[i] floats wide (the engine sizes them,
   * ls_scratch_carve hands them to the forward); block 0 first: the engine's final norm
   * writes there */
  int n_scratch;
  void (*scratch_widths)(const ls_config_t *cfg, size_t *widths);
  /* optional: bytes of host scratch the forward needs for T_max rows (blk->host) */
  size_t (*host_scratch_bytes)(const ls_config_t *cfg, int T_max);
  /* x (T, H): the residual stream in (residual_pre), residual_post out */
  void (*forward)(const ls_block_t *blk, float *x);
  /* out (T, H) <- the model's final norm of x with weight w and bias b (NULL unless
   * LS_G_FINAL_BIAS is present) (hook final_norm) */
  void (*final_norm)(ls_backend_t *be, const ls_config_t *cfg, float *out, const float *x,
                     const float *w, const float *b, int T);
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
/* Tensors per layer of a model of family fam with config cfg. */
int ls_family_slots(const ls_family_t *fam, const ls_config_t *cfg);
/* Model GEMM flops per token per layer (2 x the multiply-adds of every GEMM weight),
 * averaged over the layers. */
double ls_family_gemm_flops_per_token(const ls_config_t *cfg);

/* ---- helpers for recipes (src/models/families.c) ---------------------------------------------- */
/* w <- tensor "model.layers.<layer>.<name>" of the given kind and shape (d1 = 0: 1-D) */
void ls_wspec_layer(ls_wspec_t *w, int layer, const char *name, ls_wkind_t kind, int present,
                    int64_t d0, int64_t d1);
/* w <- tensor "<prefix><layer>.<name>" (e.g. prefix "transformer.h.") */
void ls_wspec_layer_at(ls_wspec_t *w, const char *prefix, int layer, const char *name,
                       ls_wkind_t kind, int present, int64_t d0, int64_t d1);
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
void ls_llama_global_tensors(const ls_config_t *c, ls_wspec_t *g);
void ls_llama_final_norm(ls_backend_t *be, const ls_config_t *c, float *out, const float *x,
                         const float *w, const float *b, int T);
/* the final LayerNorm (weight w, bias b, cfg->rms_eps) of GPT-2 and GPT-NeoX */
void ls_layernorm_final_norm(ls_backend_t *be, const ls_config_t *c, float *out,
                             const float *x, const float *w, const float *b, int T);
/* the Gemma families' embedding table and (1 + w) final norm, and their embedding scale
 * sqrt(hidden_size) rounded to float32 (src/models/gemma.c) */
void ls_gemma_global_tensors(const ls_config_t *c, ls_wspec_t *g);
float ls_gemma_embed_scale(const ls_config_t *c);
/* Floats of block scratch the family needs for T_max rows. */
size_t ls_family_scratch_floats(const ls_family_t *fam, const ls_config_t *cfg, int T_max);
/* s[0..n) <- the forward's scratch blocks (widths from `widths`) carved from blk->scratch */
void ls_scratch_carve(const ls_block_t *blk, void (*widths)(const ls_config_t *, size_t *), int n,
                      float **s);
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
/* the same for T rows of explicit intermediate size I (no biases): a shared expert */
void ls_recipe_glu_mlp_n(const ls_block_t *blk, void *w_gate, void *w_up, void *w_down,
                         float *gate, float *up, const float *xin, float *out, int T, int inter);
/* out (T, H) <- down(gelu(up(xin) + b_up)) + b_down, the two-matrix MLP of GPT-2 and
 * GPT-NeoX (gelu_approx: the tanh form, else erf); mid: (T, I) scratch */
void ls_recipe_mlp(const ls_block_t *blk, void *w_up, void *b_up, void *w_down, void *b_down,
                   int gelu_approx, float *mid, const float *xin, float *out);
/* out (T, H) <- LayerNorm(x) with weight w, bias b (may be NULL) and cfg->rms_eps */
void ls_recipe_layernorm(const ls_block_t *blk, float *out, const float *x, const void *w,
                         const void *b);
/* What every sub-layer ends with: hook point h on rows (T, H), then x += rows. */
void ls_recipe_add(const ls_block_t *blk, ls_hook_t h, float *x, float *rows);
/* out (T, H) <- RMSNorm(x) with weight w and cfg->rms_eps */
void ls_recipe_rmsnorm(const ls_block_t *blk, float *out, const float *x, const void *w);

/* ---- the mixture-of-experts block (src/models/moe.c) ------------------------------------------ */
typedef struct {
  void *router;                     /* (n_experts, H) the gate's linear weight */
  void *const *experts;             /* (3 n_experts) gate, up, down of expert e at 3e.. */
  void *sh_gate, *sh_up, *sh_down;  /* the shared expert (NULL: none) */
  void *sh_router;                  /* (1, H) its sigmoid gate (NULL: added as it is) */
  const float *score_bias;          /* (n_experts) e_score_correction_bias (NULL: none) */
} ls_moe_weights_t;

/* scratch blocks the MoE block uses (a family appends them to its own) */
#define LS_MOE_N_SCRATCH 11
void ls_moe_scratch_widths(const ls_config_t *c, size_t *w);
size_t ls_moe_host_bytes(const ls_config_t *c, int T_max);
/* out (T, H) <- the MoE block on xin: hook router_logits on gate(xin) (T, n_experts), then
 * each real row's top_k experts by score (softmax, or sigmoid plus the correction bias;
 * within the best groups when cfg->n_group), weights renormalised when
 * cfg->norm_topk_prob and scaled by cfg->routed_scale, each expert's rows gathered into
 * one GEMM batch, the weighted results scatter-added in ascending expert order (a row's
 * sum never depends on which other rows share the batch), plus the shared expert. s: the
 * LS_MOE_N_SCRATCH blocks. */
void ls_recipe_moe(const ls_block_t *blk, const ls_moe_weights_t *w, float *const *s,
                   const float *xin, float *out);
/* The MoE keys of config.json most families share: num_experts_per_tok, the expert count
 * (key n_key, else num_local_experts), moe_intermediate_size (key i_key; NULL: intermediate_size), norm_topk_prob
 * (absent: norm_def); layer_moe from decoder_sparse_step and mlp_only_layers (absent:
 * every layer). */
int ls_cfg_moe(const cJSON *root, const char *path, const char *n_key, const char *i_key,
               int norm_def, ls_config_t *cfg);

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
/* cfg->rope <- rope_theta + rope_scaling (classic) or rope_parameters (transformers 5):
 * default, linear and llama3; cfg->rope_dim <- head_dim (a partial_rotary_factor other
 * than 1 is refused: the families using this rotate whole heads) */
int ls_cfg_rope(const cJSON *root, const char *path, ls_config_t *cfg);
/* the same, partial rotary allowed: base `theta` when no rope_theta is given, rotary
 * fraction def_factor when no partial_rotary_factor is (Phi-3, GPT-NeoX) */
int ls_cfg_rope_partial(const cJSON *root, const char *path, double theta, double def_factor,
                        ls_config_t *cfg);
/* r <- one rope parameter object (rope_parameters, rope_scaling, or one layer kind's
 * entry; NULL: default RoPE) with base `theta` unless it names its own rope_theta;
 * `what` names the object in messages */
int ls_cfg_rope_params(const cJSON *obj, double theta, const char *path, const char *what,
                       ls_rope_params_t *r);
/* cfg->rope_dim <- int(head_dim * partial_rotary_factor), the factor read from
 * rope_parameters or the top level (absent: def_factor); other than head_dim only when
 * allow_partial */
int ls_cfg_rope_dim(const cJSON *root, const char *path, double def_factor, int allow_partial,
                    ls_config_t *cfg);
/* config key `key` (e.g. hidden_act) must be one of the NULL-ended names, or absent (the
 * family's default, allowed[0]) */
int ls_cfg_activation(const cJSON *root, const char *path, const char *key,
                      const char *const *allowed, const ls_config_t *cfg);

/* cfg->gelu_tanh <- config key `key` (absent: def): "gelu" (exact, erf) or a tanh form
 * ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"), as transformers' ACT2FN names */
int ls_cfg_gelu(const cJSON *root, const char *path, const char *key, const char *def,
                ls_config_t *cfg);

#endif
