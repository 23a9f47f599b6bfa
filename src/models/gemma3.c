/* gemma3.c: the Gemma 3 text family (Gemma3ForCausalLM, model_type gemma3_text): the Gemma 2
 * block (a (1 + w) RMSNorm before and after each sub-layer, GeGLU, sqrt(hidden)-scaled
 * embeddings, scores scaled by query_pre_attn_scalar ** -0.5) with a per-head (1 + w)
 * RMSNorm of q and k before RoPE, no soft-capping unless attn_logit_softcapping is set,
 * and sliding / full layers (layer_types, or sliding_window_pattern: every 6th layer full)
 * with their own RoPE: sliding layers the local base frequency (rope_local_base_freq, or
 * rope_parameters["sliding_attention"]), full layers rope_theta with any rope scaling
 * (rope_parameters["full_attention"]):
 *   x = x + post_attn_norm(o_proj(attn(rope_L(qn(q(pre_norm(x)))), rope_L(kn(k(..))), v)))
 *   x = x + post_ff_norm(down(gelu_tanh(gate(pre_ff_norm(x))) * up(..)))
 * Semantics: transformers' models/gemma3/modeling_gemma3.py (Gemma3TextModel). */
#include <limits.h>
#include <math.h>
#include <string.h>

#include "family.h"
#include "ls_common.h"

/* ---- config.json --------------------------------------------------------------------------- */
/* RoPE per layer kind: transformers 5's rope_parameters {"full_attention": {..},
 * "sliding_attention": {..}}, or the classic rope_theta (1e6) + rope_scaling (full layers)
 * and rope_local_base_freq (1e4, sliding layers). */
static int parse_rope(const cJSON *root, const char *path, ls_config_t *cfg) {
  double theta, local;
  LS_CHECK(ls_cfg_num(root, "rope_theta", 1e6, 1e-6, 1e30, path, &theta));
  LS_CHECK(ls_cfg_num(root, "rope_local_base_freq", 1e4, 1e-6, 1e30, path, &local));
  const cJSON *params = ls_cfg_get(root, "rope_parameters");
  const cJSON *full = ls_cfg_get(root, "rope_scaling"), *sliding = NULL;
  if (params) {
    if (!cJSON_IsObject(params)) {
      ls_error("%s: \"rope_parameters\" must be an object", path);
      return LS_ERR;
    }
    full = ls_cfg_get(params, "full_attention");
    sliding = ls_cfg_get(params, "sliding_attention");
    if (!full && !sliding) full = params; /* one set for the full layers */
  }
  LS_CHECK(ls_cfg_rope_params(full, theta, path, "rope_parameters[\"full_attention\"]", &cfg->rope));
  LS_CHECK(ls_cfg_rope_params(sliding, local, path, "rope_parameters[\"sliding_attention\"]",
                              &cfg->rope_local));
  cfg->local_rope = 1;
  return ls_cfg_rope_dim(root, path, 1.0, 0, cfg);
}

static int parse_config(const cJSON *root, const char *path, ls_config_t *cfg) {
  static const char *const act[] = {"gelu_pytorch_tanh", NULL}; /* Gemma3MLP's key */
  LS_CHECK(ls_cfg_sizes(root, path, 256, cfg));
  LS_CHECK(ls_cfg_activation(root, path, "hidden_activation", act, cfg));
  LS_CHECK(parse_rope(root, path, cfg));
  int bias = 0, bidir = 0, qpas = 256, pattern = 6;
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
  /* soft-capping: off unless set (Gemma3TextConfig's default is None) */
  LS_CHECK(ls_cfg_num(root, "attn_logit_softcapping", 0.0, 0.0, 1e9, path, &cfg->attn_softcap));
  const cJSON *sw = cJSON_GetObjectItemCaseSensitive(root, "sliding_window");
  cfg->sliding_window = 0;
  if (!cJSON_IsNull(sw))
    LS_CHECK(ls_cfg_int(root, "sliding_window", 0, 4096, 0, INT_MAX, path, &cfg->sliding_window));
  LS_CHECK(ls_cfg_int(root, "sliding_window_pattern", 0, 6, 1, INT_MAX, path, &pattern));
  LS_CHECK(ls_cfg_layer_types(root, path, 0, pattern, cfg));
  return ls_cfg_bool(root, "tie_word_embeddings", 1, path, &cfg->tie_embeddings);
}

/* ---- weight table ------------------------------------------------------------------------------ */
enum {
  W_PRE_ATTN, W_Q, W_K, W_V, W_O, W_BQ, W_BK, W_BV, W_BO, W_QNORM, W_KNORM, W_POST_ATTN,
  W_PRE_FF, W_GATE, W_UP, W_DOWN, W_POST_FF,
  W_COUNT
};

static void layer_tensors(const ls_config_t *c, int L, ls_wspec_t *w) {
  const int64_t H = c->hidden, D = c->head_dim;
  ls_wspec_layer(&w[W_PRE_ATTN], L, "input_layernorm.weight", LS_WK_NORM_P1, 1, H, 0);
  ls_wspec_attention(&w[W_Q], L, c); /* W_Q .. W_BO */
  ls_wspec_layer(&w[W_QNORM], L, "self_attn.q_norm.weight", LS_WK_NORM_P1, 1, D, 0);
  ls_wspec_layer(&w[W_KNORM], L, "self_attn.k_norm.weight", LS_WK_NORM_P1, 1, D, 0);
  ls_wspec_layer(&w[W_POST_ATTN], L, "post_attention_layernorm.weight", LS_WK_NORM_P1, 1, H, 0);
  ls_wspec_layer(&w[W_PRE_FF], L, "pre_feedforward_layernorm.weight", LS_WK_NORM_P1, 1, H, 0);
  ls_wspec_mlp(&w[W_GATE], L, c); /* W_GATE, W_UP, W_DOWN */
  ls_wspec_layer(&w[W_POST_FF], L, "post_feedforward_layernorm.weight", LS_WK_NORM_P1, 1, H, 0);
}

/* ---- scratch ------------------------------------------------------------------------------------- */
/* S_XN first: the engine's final norm writes there */
enum { S_XN, S_QRAW, S_KRAW, S_Q, S_K, S_V, S_ATT, S_TMP, S_ATTN_OUT, S_GATE, S_UP, S_MLP_OUT,
       S_COUNT };

static void widths(const ls_config_t *c, size_t *w) {
  const size_t H = c->hidden, I = c->intermediate, Q = (size_t)c->n_heads * c->head_dim,
               KV = (size_t)c->n_kv_heads * c->head_dim;
  const size_t v[S_COUNT] = {H, Q, KV, Q, KV, KV, Q, H, H, I, I, H};
  memcpy(w, v, sizeof v);
}

/* ---- forward ---------------------------------------------------------------------------------------- */
static void forward(const ls_block_t *blk, float *x) {
  void *const *w = blk->w; /* the norm weights already hold 1 + w */
  float *s[S_COUNT];
  ls_scratch_carve(blk, widths, S_COUNT, s);
  /* the engine hands this layer's RoPE tables (local or global) in blk */
  const ls_attn_weights_t aw = {w[W_Q], w[W_K], w[W_V], w[W_O], w[W_BQ], w[W_BK], w[W_BV],
                                w[W_BO], w[W_QNORM], w[W_KNORM], LS_QK_PER_HEAD};
  const ls_attn_scratch_t as = {s[S_Q], s[S_K], s[S_V], s[S_ATT], s[S_QRAW], s[S_KRAW]};
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

static const char *const archs[] = {"Gemma3ForCausalLM", NULL};
static const char *const types[] = {"gemma3_text", NULL};

const ls_family_t ls_family_gemma3 = {
    .name = "gemma3",
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
