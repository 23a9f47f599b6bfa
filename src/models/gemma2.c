/* gemma2.c: the Gemma 2 family (Gemma2ForCausalLM): Gemma's (1 + w) RMSNorms, GeGLU
 * (hidden_activation) and sqrt(hidden)-scaled embeddings, plus a norm before and after
 * each sub-layer, attention scores scaled by query_pre_attn_scalar ** -0.5 and
 * soft-capped (attn_logit_softcapping * tanh(s / cap)), and sliding-window layers from
 * layer_types (default: every other layer from layer 0, as Gemma2Config):
 *   x = x + post_attn_norm(o_proj(attn(rope(q(pre_norm(x))), ..)))     hook attn_out
 *   x = x + post_ff_norm(down(gelu_tanh(gate(pre_ff_norm(x))) * up(..))) hook mlp_out
 * attn_out / mlp_out are what is added to the residual stream: after the post norms. The
 * final logit soft-capping acts on logits only (no hook sees it).
 * Semantics: transformers' models/gemma2/modeling_gemma2.py. */
#include <limits.h>
#include <math.h>
#include <string.h>

#include "family.h"
#include "ls_common.h"

/* ---- config.json --------------------------------------------------------------------------- */
static int parse_config(const cJSON *root, const char *path, ls_config_t *cfg) {
  static const char *const act[] = {"gelu_pytorch_tanh", NULL}; /* Gemma2MLP's key */
  LS_CHECK(ls_cfg_sizes(root, path, 256, cfg));
  LS_CHECK(ls_cfg_activation(root, path, "hidden_activation", act, cfg));
  LS_CHECK(ls_cfg_rope(root, path, cfg));
  int bias = 0, bidir = 0, qpas = 256;
  LS_CHECK(ls_cfg_bool(root, "attention_bias", 0, path, &bias));
  LS_CHECK(ls_cfg_bool(root, "use_bidirectional_attention", 0, path, &bidir));
  if (bidir) {
    ls_error("%s: use_bidirectional_attention is not supported (layersweep runs causal "
             "decoders)", path);
    return LS_ERR;
  }
  cfg->qkv_bias = cfg->o_bias = bias;
  LS_CHECK(ls_cfg_int(root, "query_pre_attn_scalar", 0, 256, 1, INT_MAX, path, &qpas));
  cfg->attn_scale = pow((double)qpas, -0.5);
  /* soft-capping: default 50; an explicit null turns it off */
  const cJSON *cap = cJSON_GetObjectItemCaseSensitive(root, "attn_logit_softcapping");
  cfg->attn_softcap = 0;
  if (!cJSON_IsNull(cap))
    LS_CHECK(ls_cfg_num(root, "attn_logit_softcapping", 50.0, 1e-6, 1e9, path, &cfg->attn_softcap));
  const cJSON *sw = cJSON_GetObjectItemCaseSensitive(root, "sliding_window");
  cfg->sliding_window = 0;
  if (!cJSON_IsNull(sw))
    LS_CHECK(ls_cfg_int(root, "sliding_window", 0, 4096, 0, INT_MAX, path, &cfg->sliding_window));
  LS_CHECK(ls_cfg_layer_types(root, path, 0, 2, cfg));
  return ls_cfg_bool(root, "tie_word_embeddings", 1, path, &cfg->tie_embeddings);
}

/* ---- weight table ------------------------------------------------------------------------------ */
enum {
  W_PRE_ATTN, W_Q, W_K, W_V, W_O, W_BQ, W_BK, W_BV, W_BO, W_POST_ATTN,
  W_PRE_FF, W_GATE, W_UP, W_DOWN, W_POST_FF,
  W_COUNT
};

static void layer_tensors(const ls_config_t *c, int L, ls_wspec_t *w) {
  const int64_t H = c->hidden;
  ls_wspec_layer(&w[W_PRE_ATTN], L, "input_layernorm.weight", LS_WK_NORM_P1, 1, H, 0);
  ls_wspec_attention(&w[W_Q], L, c); /* W_Q .. W_BO */
  ls_wspec_layer(&w[W_POST_ATTN], L, "post_attention_layernorm.weight", LS_WK_NORM_P1, 1, H, 0);
  ls_wspec_layer(&w[W_PRE_FF], L, "pre_feedforward_layernorm.weight", LS_WK_NORM_P1, 1, H, 0);
  ls_wspec_mlp(&w[W_GATE], L, c); /* W_GATE, W_UP, W_DOWN */
  ls_wspec_layer(&w[W_POST_FF], L, "post_feedforward_layernorm.weight", LS_WK_NORM_P1, 1, H, 0);
}

/* ---- scratch ------------------------------------------------------------------------------------- */
/* S_XN first: the engine's final norm writes there */
enum { S_XN, S_Q, S_K, S_V, S_ATT, S_TMP, S_ATTN_OUT, S_GATE, S_UP, S_MLP_OUT, S_COUNT };

static void widths(const ls_config_t *c, size_t *w) {
  const size_t H = c->hidden, I = c->intermediate, Q = (size_t)c->n_heads * c->head_dim,
               KV = (size_t)c->n_kv_heads * c->head_dim;
  const size_t v[S_COUNT] = {H, Q, KV, KV, Q, H, H, I, I, H};
  memcpy(w, v, sizeof v);
}

/* ---- forward ---------------------------------------------------------------------------------------- */
static void forward(const ls_block_t *blk, float *x) {
  void *const *w = blk->w; /* the norm weights already hold 1 + w */
  float *s[S_COUNT];
  ls_scratch_carve(blk, widths, S_COUNT, s);
  /* a norm before and after each sub-layer; scaled, soft-capped scores (cfg) */
  const ls_attn_weights_t aw = {w[W_Q], w[W_K], w[W_V], w[W_O], w[W_BQ], w[W_BK], w[W_BV],
                                w[W_BO], NULL, NULL, LS_QK_NONE};
  const ls_attn_scratch_t as = {s[S_Q], s[S_K], s[S_V], s[S_ATT], NULL, NULL};
  ls_recipe_rmsnorm(blk, s[S_XN], x, w[W_PRE_ATTN]);
  ls_recipe_attention(blk, &aw, &as, s[S_XN], s[S_TMP]);
  ls_recipe_rmsnorm(blk, s[S_ATTN_OUT], s[S_TMP], w[W_POST_ATTN]);
  ls_recipe_add(blk, LS_HOOK_ATTN_OUT, x, s[S_ATTN_OUT]);
  ls_recipe_rmsnorm(blk, s[S_XN], x, w[W_PRE_FF]);
  ls_recipe_glu_mlp(blk, w[W_GATE], w[W_UP], w[W_DOWN], NULL, NULL, NULL, s[S_GATE], s[S_UP],
                    s[S_XN], s[S_TMP], 1);
  ls_recipe_rmsnorm(blk, s[S_MLP_OUT], s[S_TMP], w[W_POST_FF]);
  ls_recipe_add(blk, LS_HOOK_MLP_OUT, x, s[S_MLP_OUT]);
}

static const char *const archs[] = {"Gemma2ForCausalLM", NULL};
static const char *const types[] = {"gemma2", NULL};

const ls_family_t ls_family_gemma2 = {
    .name = "gemma2",
    .archs = archs,
    .model_types = types,
    .parse_config = parse_config,
    .n_slots = W_COUNT,
    .layer_tensors = layer_tensors,
    .global_tensors = ls_gemma_global_tensors,
    .n_scratch = S_COUNT,
    .scratch_widths = widths,
    .forward = forward,
    .final_norm = ls_llama_final_norm, /* its weight holds 1 + w */
    .embed_scale = ls_gemma_embed_scale,
};
