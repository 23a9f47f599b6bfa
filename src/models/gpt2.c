/* gpt2.c: the GPT-2 family (GPT2LMHeadModel): learned position embeddings added to the
 * token embedding (so residual_pre of layer 0 includes them), LayerNorms with bias,
 * attention without RoPE whose q, k, v are one fused c_attn projection, and a two-matrix
 * MLP with the tanh GELU (activation_function "gelu_new"), biases everywhere. Every
 * projection is a Conv1D, stored (n_in, n_out): transposed at load, and c_attn split
 * into q, k, v slots. Checkpoints of GPT2LMHeadModel name tensors "transformer.h.N...",
 * those saved from GPT2Model "h.N...": both are read.
 *   x = x + c_proj(attn(q(ln_1(x)), k(..), v(..)))      hook attn_out
 *   x = x + mlp.c_proj(gelu(c_fc(ln_2(x))))              hook mlp_out
 * Semantics: transformers' models/gpt2/modeling_gpt2.py. */
#include <limits.h>
#include <string.h>

#include "family.h"
#include "ls_common.h"

/* ---- config.json --------------------------------------------------------------------------- */
static int parse_config(const cJSON *root, const char *path, ls_config_t *cfg) {
  const int BIG = 1 << 24;
  int inner = 0;
  LS_CHECK(ls_cfg_int(root, "n_embd", 1, 0, 1, BIG, path, &cfg->hidden));
  LS_CHECK(ls_cfg_int(root, "n_layer", 1, 0, 1, 100000, path, &cfg->n_layers));
  LS_CHECK(ls_cfg_int(root, "n_head", 1, 0, 1, 65536, path, &cfg->n_heads));
  LS_CHECK(ls_cfg_int(root, "n_inner", 0, 4 * cfg->hidden, 1, BIG, path, &inner));
  LS_CHECK(ls_cfg_int(root, "vocab_size", 1, 0, 1, 1 << 30, path, &cfg->vocab));
  LS_CHECK(ls_cfg_int(root, "n_positions", 0, 1024, 1, INT_MAX, path, &cfg->max_pos));
  LS_CHECK(ls_cfg_num(root, "layer_norm_epsilon", 1e-5, 0.0, 1.0, path, &cfg->rms_eps));
  if (cfg->hidden % cfg->n_heads != 0) {
    ls_error("%s: n_embd %d is not divisible by n_head %d", path, cfg->hidden, cfg->n_heads);
    return LS_ERR;
  }
  cfg->intermediate = inner;
  cfg->n_kv_heads = cfg->n_heads;
  cfg->head_dim = cfg->hidden / cfg->n_heads;
  cfg->rope_dim = 0; /* learned positions */
  LS_CHECK(ls_cfg_gelu(root, path, "activation_function", "gelu_new", cfg));
  int cross = 0, scale = 1;
  LS_CHECK(ls_cfg_bool(root, "add_cross_attention", 0, path, &cross));
  if (cross) {
    ls_error("%s: add_cross_attention is not supported (layersweep runs decoder-only models)",
             path);
    return LS_ERR;
  }
  LS_CHECK(ls_cfg_bool(root, "scale_attn_weights", 1, path, &scale));
  LS_CHECK(ls_cfg_bool(root, "scale_attn_by_inverse_layer_idx", 0, path, &cfg->attn_scale_by_layer));
  cfg->attn_scale = scale ? 0.0 : 1.0; /* 0: 1 / sqrt(head_dim) */
  cfg->qkv_bias = cfg->o_bias = cfg->mlp_bias = 1;
  return ls_cfg_bool(root, "tie_word_embeddings", 1, path, &cfg->tie_embeddings);
}

/* ---- weight table ------------------------------------------------------------------------------ */
enum {
  W_LN1, W_LN1_B, W_Q, W_K, W_V, W_O, W_BQ, W_BK, W_BV, W_BO,
  W_LN2, W_LN2_B, W_UP, W_BUP, W_DOWN, W_BDOWN,
  W_COUNT
};

#define LAYERS "transformer.h."

/* a Conv1D weight stored (n_in, n_out): the slot is its transpose */
static void conv1d(ls_wspec_t *w, int L, const char *name, int64_t n_in, int64_t n_out) {
  ls_wspec_layer_at(w, LAYERS, L, name, LS_WK_MATRIX, 1, n_in, n_out);
  w->transpose = 1;
}

static void layer_tensors(const ls_config_t *c, int L, ls_wspec_t *w) {
  const int64_t H = c->hidden, I = c->intermediate;
  ls_wspec_layer_at(&w[W_LN1], LAYERS, L, "ln_1.weight", LS_WK_NORM, 1, H, 0);
  ls_wspec_layer_at(&w[W_LN1_B], LAYERS, L, "ln_1.bias", LS_WK_BIAS, 1, H, 0);
  for (int i = 0; i < 3; i++) { /* q, k, v: output columns [i H, (i + 1) H) of c_attn */
    conv1d(&w[W_Q + i], L, "attn.c_attn.weight", H, 3 * H);
    ls_wspec_view(&w[W_Q + i], i * H, H, 0, 1);
    ls_wspec_layer_at(&w[W_BQ + i], LAYERS, L, "attn.c_attn.bias", LS_WK_BIAS, 1, 3 * H, 0);
    ls_wspec_view(&w[W_BQ + i], i * H, H, 0, 1);
  }
  conv1d(&w[W_O], L, "attn.c_proj.weight", H, H);
  ls_wspec_layer_at(&w[W_BO], LAYERS, L, "attn.c_proj.bias", LS_WK_BIAS, 1, H, 0);
  ls_wspec_layer_at(&w[W_LN2], LAYERS, L, "ln_2.weight", LS_WK_NORM, 1, H, 0);
  ls_wspec_layer_at(&w[W_LN2_B], LAYERS, L, "ln_2.bias", LS_WK_BIAS, 1, H, 0);
  conv1d(&w[W_UP], L, "mlp.c_fc.weight", H, I);
  ls_wspec_layer_at(&w[W_BUP], LAYERS, L, "mlp.c_fc.bias", LS_WK_BIAS, 1, I, 0);
  conv1d(&w[W_DOWN], L, "mlp.c_proj.weight", I, H);
  ls_wspec_layer_at(&w[W_BDOWN], LAYERS, L, "mlp.c_proj.bias", LS_WK_BIAS, 1, H, 0);
}

static void global_tensors(const ls_config_t *c, ls_wspec_t *g) {
  ls_wspec_global(&g[LS_G_EMBED], "transformer.wte.weight", LS_WK_EMBED, c->vocab, c->hidden);
  ls_wspec_global(&g[LS_G_POS_EMBED], "transformer.wpe.weight", LS_WK_EMBED, c->max_pos, c->hidden);
  ls_wspec_global(&g[LS_G_FINAL_NORM], "transformer.ln_f.weight", LS_WK_NORM, c->hidden, 0);
  ls_wspec_global(&g[LS_G_FINAL_BIAS], "transformer.ln_f.bias", LS_WK_BIAS, c->hidden, 0);
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
  ls_recipe_layernorm(blk, s[S_XN], x, w[W_LN1], w[W_LN1_B]);
  ls_recipe_attention(blk, &aw, &as, s[S_XN], s[S_ATTN_OUT]); /* no RoPE: rope_dim 0 */
  ls_recipe_add(blk, LS_HOOK_ATTN_OUT, x, s[S_ATTN_OUT]);
  ls_recipe_layernorm(blk, s[S_XN], x, w[W_LN2], w[W_LN2_B]);
  ls_recipe_mlp(blk, w[W_UP], w[W_BUP], w[W_DOWN], w[W_BDOWN], blk->cfg->gelu_tanh, s[S_MID],
                s[S_XN], s[S_MLP_OUT]);
  ls_recipe_add(blk, LS_HOOK_MLP_OUT, x, s[S_MLP_OUT]);
}

static const char *const archs[] = {"GPT2LMHeadModel", "GPT2Model", NULL};
static const char *const types[] = {"gpt2", "gpt2", NULL};

const ls_family_t ls_family_gpt2 = {
    .name = "gpt2",
    .archs = archs,
    .model_types = types,
    .parse_config = parse_config,
    .n_slots = W_COUNT,
    .layer_tensors = layer_tensors,
    .global_tensors = global_tensors,
    .optional_prefix = "transformer.",
    .n_scratch = S_COUNT,
    .scratch_widths = widths,
    .forward = forward,
    .final_norm = ls_layernorm_final_norm,
};
