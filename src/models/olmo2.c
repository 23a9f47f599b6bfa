/* olmo2.c: the OLMo-2 family (Olmo2ForCausalLM): no pre-norms; RMSNorm after each
 * sub-layer, before its residual add; q and k RMSNormed over the whole projection
 * (n_heads * head_dim, resp. n_kv_heads * head_dim) before RoPE:
 *   x = x + post_attn_norm(o_proj(attn(rope(qn(q(x))), rope(kn(k(x))), v(x))))  hook attn_out
 *   x = x + post_ff_norm(down(silu(gate(x)) * up(x)))                           hook mlp_out
 * attn_out / mlp_out are what is added to the residual stream: after the post norms.
 * Semantics: transformers' models/olmo2/modeling_olmo2.py. */
#include <string.h>

#include "family.h"
#include "ls_common.h"

/* ---- config.json --------------------------------------------------------------------------- */
static int parse_config(const cJSON *root, const char *path, ls_config_t *cfg) {
  static const char *const act[] = {"silu", NULL};
  LS_CHECK(ls_cfg_sizes(root, path, 0, cfg));
  if (!ls_cfg_get(root, "rms_norm_eps")) cfg->rms_eps = 1e-5; /* Olmo2Config's default */
  LS_CHECK(ls_cfg_activation(root, path, "hidden_act", act, cfg));
  LS_CHECK(ls_cfg_rope(root, path, cfg));
  int bias = 0;
  LS_CHECK(ls_cfg_bool(root, "attention_bias", 0, path, &bias));
  cfg->qkv_bias = cfg->o_bias = bias;
  return ls_cfg_bool(root, "tie_word_embeddings", 0, path, &cfg->tie_embeddings);
}

/* ---- weight table ------------------------------------------------------------------------------ */
enum {
  W_Q, W_K, W_V, W_O, W_BQ, W_BK, W_BV, W_BO, W_QNORM, W_KNORM, W_ATTN_POST,
  W_GATE, W_UP, W_DOWN, W_MLP_POST,
  W_COUNT
};

static void layer_tensors(const ls_config_t *c, int L, ls_wspec_t *w) {
  const int64_t H = c->hidden, Q = (int64_t)c->n_heads * c->head_dim,
                KV = (int64_t)c->n_kv_heads * c->head_dim;
  ls_wspec_attention(&w[W_Q], L, c); /* W_Q .. W_BO */
  ls_wspec_layer(&w[W_QNORM], L, "self_attn.q_norm.weight", LS_WK_NORM, 1, Q, 0);
  ls_wspec_layer(&w[W_KNORM], L, "self_attn.k_norm.weight", LS_WK_NORM, 1, KV, 0);
  ls_wspec_layer(&w[W_ATTN_POST], L, "post_attention_layernorm.weight", LS_WK_NORM, 1, H, 0);
  ls_wspec_mlp(&w[W_GATE], L, c); /* W_GATE, W_UP, W_DOWN */
  ls_wspec_layer(&w[W_MLP_POST], L, "post_feedforward_layernorm.weight", LS_WK_NORM, 1, H, 0);
}

/* ---- scratch ------------------------------------------------------------------------------------- */
/* S_TMP first: the engine's final norm writes there; it holds each sub-layer's output
 * before its post norm */
enum { S_TMP, S_QRAW, S_KRAW, S_Q, S_K, S_V, S_ATT, S_ATTN_OUT, S_GATE, S_UP, S_MLP_OUT, S_COUNT };

static void widths(const ls_config_t *c, size_t *w) {
  const size_t H = c->hidden, I = c->intermediate, Q = (size_t)c->n_heads * c->head_dim,
               KV = (size_t)c->n_kv_heads * c->head_dim;
  const size_t v[S_COUNT] = {H, Q, KV, Q, KV, KV, Q, H, I, I, H};
  memcpy(w, v, sizeof v);
}

/* ---- forward ---------------------------------------------------------------------------------------- */
static void forward(const ls_block_t *blk, float *x) {
  void *const *w = blk->w;
  float *s[S_COUNT];
  ls_scratch_carve(blk, widths, S_COUNT, s);
  /* attention on the residual stream itself, q and k normed over the whole projection;
   * its output normed before the residual add (and the MLP's the same way) */
  const ls_attn_weights_t aw = {w[W_Q], w[W_K], w[W_V], w[W_O], w[W_BQ], w[W_BK], w[W_BV],
                                w[W_BO], w[W_QNORM], w[W_KNORM], LS_QK_WHOLE};
  const ls_attn_scratch_t as = {s[S_Q], s[S_K], s[S_V], s[S_ATT], s[S_QRAW], s[S_KRAW]};
  ls_recipe_attention(blk, &aw, &as, x, s[S_TMP]);
  ls_recipe_rmsnorm(blk, s[S_ATTN_OUT], s[S_TMP], w[W_ATTN_POST]);
  ls_recipe_add(blk, LS_HOOK_ATTN_OUT, x, s[S_ATTN_OUT]);
  ls_recipe_glu_mlp(blk, w[W_GATE], w[W_UP], w[W_DOWN], NULL, NULL, NULL, s[S_GATE], s[S_UP], x,
                    s[S_TMP], 0);
  ls_recipe_rmsnorm(blk, s[S_MLP_OUT], s[S_TMP], w[W_MLP_POST]);
  ls_recipe_add(blk, LS_HOOK_MLP_OUT, x, s[S_MLP_OUT]);
}

static const char *const archs[] = {"Olmo2ForCausalLM", NULL};
static const char *const types[] = {"olmo2", NULL};

const ls_family_t ls_family_olmo2 = {
    .name = "olmo2",
    .archs = archs,
    .model_types = types,
    .parse_config = parse_config,
    .n_slots = W_COUNT,
    .layer_tensors = layer_tensors,
    .global_tensors = ls_llama_global_tensors,
    .n_scratch = S_COUNT,
    .scratch_widths = widths,
    .forward = forward,
    .final_norm = ls_llama_final_norm,
};
