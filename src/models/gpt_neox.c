/* gpt_neox.c: the GPT-NeoX family (GPTNeoXForCausalLM: Pythia, GPT-NeoX-20B): LayerNorms
 * with bias, rotary attention over the first rotary_pct of each head (partial rotary),
 * q, k, v fused in one query_key_value projection interleaved per head (rows [q_h; k_h;
 * v_h] for each head h), split at load into plain slots; biases everywhere (attention
 * biases unless attention_bias is false); a two-matrix MLP with the exact (erf) GELU
 * (hidden_act). With use_parallel_residual (the default) both sub-layers read the block's
 * input:
 *   x = x + dense(attn(rope(q(ln1(x))), ..)) + down(gelu(up(ln2(x))))
 * otherwise they run in sequence, as the Llama-shaped families:
 *   x = x + dense(attn(..ln1(x)..));  x = x + down(gelu(up(ln2(x))))
 * attn_out and mlp_out are the two terms added to the residual stream, so
 * residual_post = residual_pre + attn_out + mlp_out in both modes.
 * Semantics: transformers' models/gpt_neox/modeling_gpt_neox.py. */
#include <string.h>

#include "family.h"
#include "ls_common.h"

/* ---- config.json --------------------------------------------------------------------------- */
static int parse_config(const cJSON *root, const char *path, ls_config_t *cfg) {
  LS_CHECK(ls_cfg_sizes(root, path, 0, cfg));
  if (ls_cfg_get(root, "num_key_value_heads") && cfg->n_kv_heads != cfg->n_heads) {
    ls_error("%s: GPT-NeoX has no grouped-query attention (num_key_value_heads %d != "
             "num_attention_heads %d)", path, cfg->n_kv_heads, cfg->n_heads);
    return LS_ERR;
  }
  LS_CHECK(ls_cfg_num(root, "layer_norm_eps", 1e-5, 0.0, 1.0, path, &cfg->rms_eps));
  LS_CHECK(ls_cfg_gelu(root, path, "hidden_act", "gelu", cfg));
  /* the classic keys rotary_emb_base / rotary_pct, else rope_parameters */
  double base, pct;
  LS_CHECK(ls_cfg_num(root, "rotary_emb_base", 10000.0, 1e-6, 1e30, path, &base));
  LS_CHECK(ls_cfg_num(root, "rotary_pct", 0.25, 1e-9, 1.0, path, &pct));
  LS_CHECK(ls_cfg_rope_partial(root, path, base, pct, cfg));
  LS_CHECK(ls_cfg_bool(root, "use_parallel_residual", 1, path, &cfg->parallel_residual));
  int bias = 1;
  LS_CHECK(ls_cfg_bool(root, "attention_bias", 1, path, &bias));
  cfg->qkv_bias = cfg->o_bias = bias;
  cfg->mlp_bias = 1;
  return ls_cfg_bool(root, "tie_word_embeddings", 0, path, &cfg->tie_embeddings);
}

/* ---- weight table ------------------------------------------------------------------------------ */
enum {
  W_LN1, W_LN1_B, W_Q, W_K, W_V, W_O, W_BQ, W_BK, W_BV, W_BO,
  W_LN2, W_LN2_B, W_UP, W_BUP, W_DOWN, W_BDOWN,
  W_COUNT
};

#define LAYERS "gpt_neox.layers."

static void layer_tensors(const ls_config_t *c, int L, ls_wspec_t *w) {
  const int64_t H = c->hidden, I = c->intermediate, D = c->head_dim, nh = c->n_heads;
  ls_wspec_layer_at(&w[W_LN1], LAYERS, L, "input_layernorm.weight", LS_WK_NORM, 1, H, 0);
  ls_wspec_layer_at(&w[W_LN1_B], LAYERS, L, "input_layernorm.bias", LS_WK_BIAS, 1, H, 0);
  for (int i = 0; i < 3; i++) { /* q, k, v: rows [i D, (i + 1) D) of each head's 3 D */
    ls_wspec_layer_at(&w[W_Q + i], LAYERS, L, "attention.query_key_value.weight", LS_WK_MATRIX,
                      1, 3 * H, H);
    ls_wspec_view(&w[W_Q + i], i * D, D, 3 * D, nh);
    ls_wspec_layer_at(&w[W_BQ + i], LAYERS, L, "attention.query_key_value.bias", LS_WK_BIAS,
                      c->qkv_bias, 3 * H, 0);
    ls_wspec_view(&w[W_BQ + i], i * D, D, 3 * D, nh);
  }
  ls_wspec_layer_at(&w[W_O], LAYERS, L, "attention.dense.weight", LS_WK_MATRIX, 1, H, H);
  ls_wspec_layer_at(&w[W_BO], LAYERS, L, "attention.dense.bias", LS_WK_BIAS, c->o_bias, H, 0);
  ls_wspec_layer_at(&w[W_LN2], LAYERS, L, "post_attention_layernorm.weight", LS_WK_NORM, 1, H, 0);
  ls_wspec_layer_at(&w[W_LN2_B], LAYERS, L, "post_attention_layernorm.bias", LS_WK_BIAS, 1, H, 0);
  ls_wspec_layer_at(&w[W_UP], LAYERS, L, "mlp.dense_h_to_4h.weight", LS_WK_MATRIX, 1, I, H);
  ls_wspec_layer_at(&w[W_BUP], LAYERS, L, "mlp.dense_h_to_4h.bias", LS_WK_BIAS, 1, I, 0);
  ls_wspec_layer_at(&w[W_DOWN], LAYERS, L, "mlp.dense_4h_to_h.weight", LS_WK_MATRIX, 1, H, I);
  ls_wspec_layer_at(&w[W_BDOWN], LAYERS, L, "mlp.dense_4h_to_h.bias", LS_WK_BIAS, 1, H, 0);
}

static void global_tensors(const ls_config_t *c, ls_wspec_t *g) {
  ls_wspec_global(&g[LS_G_EMBED], "gpt_neox.embed_in.weight", LS_WK_EMBED, c->vocab, c->hidden);
  ls_wspec_global(&g[LS_G_FINAL_NORM], "gpt_neox.final_layer_norm.weight", LS_WK_NORM, c->hidden, 0);
  ls_wspec_global(&g[LS_G_FINAL_BIAS], "gpt_neox.final_layer_norm.bias", LS_WK_BIAS, c->hidden, 0);
}

/* ---- scratch ------------------------------------------------------------------------------------- */
/* S_XN first: the engine's final norm writes there */
enum { S_XN, S_Q, S_K, S_V, S_ATT, S_ATTN_OUT, S_MID, S_MLP_OUT, S_COUNT };

static void widths(const ls_config_t *c, size_t *w) {
  const size_t H = c->hidden, I = c->intermediate;
  const size_t v[S_COUNT] = {H, H, H, H, H, H, I, H};
  memcpy(w, v, sizeof v);
}

/* ---- forward ---------------------------------------------------------------------------------------- */
static void forward(const ls_block_t *blk, float *x) {
  void *const *w = blk->w;
  float *s[S_COUNT];
  ls_scratch_carve(blk, widths, S_COUNT, s);
  const ls_attn_weights_t aw = {w[W_Q], w[W_K], w[W_V], w[W_O], w[W_BQ], w[W_BK], w[W_BV],
                                w[W_BO], NULL, NULL, LS_QK_NONE};
  const ls_attn_scratch_t as = {s[S_Q], s[S_K], s[S_V], s[S_ATT], NULL, NULL};
  const int gt = blk->cfg->gelu_tanh;
  ls_recipe_layernorm(blk, s[S_XN], x, w[W_LN1], w[W_LN1_B]);
  ls_recipe_attention(blk, &aw, &as, s[S_XN], s[S_ATTN_OUT]);
  if (blk->cfg->parallel_residual) { /* the MLP reads x before the attention is added */
    ls_recipe_layernorm(blk, s[S_XN], x, w[W_LN2], w[W_LN2_B]);
    ls_recipe_mlp(blk, w[W_UP], w[W_BUP], w[W_DOWN], w[W_BDOWN], gt, s[S_MID], s[S_XN],
                  s[S_MLP_OUT]);
    ls_recipe_add(blk, LS_HOOK_ATTN_OUT, x, s[S_ATTN_OUT]);
  } else {
    ls_recipe_add(blk, LS_HOOK_ATTN_OUT, x, s[S_ATTN_OUT]);
    ls_recipe_layernorm(blk, s[S_XN], x, w[W_LN2], w[W_LN2_B]);
    ls_recipe_mlp(blk, w[W_UP], w[W_BUP], w[W_DOWN], w[W_BDOWN], gt, s[S_MID], s[S_XN],
                  s[S_MLP_OUT]);
  }
  ls_recipe_add(blk, LS_HOOK_MLP_OUT, x, s[S_MLP_OUT]);
}

static const char *const archs[] = {"GPTNeoXForCausalLM", NULL};
static const char *const types[] = {"gpt_neox", NULL};

const ls_family_t ls_family_gpt_neox = {
    .name = "gpt_neox",
    .archs = archs,
    .model_types = types,
    .parse_config = parse_config,
    .n_slots = W_COUNT,
    .layer_tensors = layer_tensors,
    .global_tensors = global_tensors,
    .optional_prefix = "gpt_neox.",
    .n_scratch = S_COUNT,
    .scratch_widths = widths,
    .forward = forward,
    .final_norm = ls_layernorm_final_norm,
};
