/* gemma.c: the Gemma family (GemmaForCausalLM): the Llama block with RMSNorms that scale by
 * (1 + w) (the weights are stored as w; +1 is added once at load, in float32, as
 * transformers' 1.0 + weight.float()), a GeGLU MLP with the tanh GELU, explicit head_dim
 * (256 when absent, as GemmaConfig), and embeddings multiplied by sqrt(hidden_size)
 * rounded to float32 (transformers' scaled embedding):
 *   x = embed * sqrt(H)
 *   x = x + o_proj(attn(rope(q(norm1(x))), rope(k(..)), v(..)))        hook attn_out
 *   x = x + down(gelu_tanh(gate(norm2(x))) * up(norm2(x)))              hook mlp_out
 * Semantics: transformers' models/gemma/modeling_gemma.py. */
#include <math.h>
#include <string.h>

#include "family.h"
#include "ls_common.h"

/* ---- config.json --------------------------------------------------------------------------- */
static int parse_config(const cJSON *root, const char *path, ls_config_t *cfg) {
  /* GemmaMLP applies ACT2FN[config.hidden_act]; only the tanh GELU is implemented */
  static const char *const act[] = {"gelu_pytorch_tanh", NULL};
  LS_CHECK(ls_cfg_sizes(root, path, 256, cfg));
  LS_CHECK(ls_cfg_activation(root, path, "hidden_act", act, cfg));
  LS_CHECK(ls_cfg_rope(root, path, cfg));
  int bias = 0, bidir = 0;
  LS_CHECK(ls_cfg_bool(root, "attention_bias", 0, path, &bias));
  LS_CHECK(ls_cfg_bool(root, "use_bidirectional_attention", 0, path, &bidir));
  if (bidir) {
    ls_error("%s: use_bidirectional_attention is not supported (layersweep runs causal "
             "decoders)", path);
    return LS_ERR;
  }
  cfg->qkv_bias = cfg->o_bias = bias;
  return ls_cfg_bool(root, "tie_word_embeddings", 1, path, &cfg->tie_embeddings);
}

/* ---- weight table ------------------------------------------------------------------------------ */
enum {
  W_ATTN_NORM, W_Q, W_K, W_V, W_O, W_BQ, W_BK, W_BV, W_BO,
  W_MLP_NORM, W_GATE, W_UP, W_DOWN,
  W_COUNT
};

static void layer_tensors(const ls_config_t *c, int L, ls_wspec_t *w) {
  const int64_t H = c->hidden;
  ls_wspec_layer(&w[W_ATTN_NORM], L, "input_layernorm.weight", LS_WK_NORM_P1, 1, H, 0);
  ls_wspec_attention(&w[W_Q], L, c); /* W_Q .. W_BO */
  ls_wspec_layer(&w[W_MLP_NORM], L, "post_attention_layernorm.weight", LS_WK_NORM_P1, 1, H, 0);
  ls_wspec_mlp(&w[W_GATE], L, c); /* W_GATE, W_UP, W_DOWN */
}

/* the Gemma families' embedding and (1 + w) final norm */
void ls_gemma_global_tensors(const ls_config_t *c, ls_wspec_t *g) {
  ls_llama_global_tensors(c, g);
  g[LS_G_FINAL_NORM].kind = LS_WK_NORM_P1;
}

/* sqrt(hidden_size) rounded to float32: transformers' torch.tensor(hidden ** 0.5) */
float ls_gemma_embed_scale(const ls_config_t *c) { return (float)sqrt((double)c->hidden); }

/* ---- scratch ------------------------------------------------------------------------------------- */
enum { S_XN, S_Q, S_K, S_V, S_ATT, S_ATTN_OUT, S_GATE, S_UP, S_MLP_OUT, S_COUNT };

static void widths(const ls_config_t *c, size_t *w) {
  const size_t H = c->hidden, I = c->intermediate, Q = (size_t)c->n_heads * c->head_dim,
               KV = (size_t)c->n_kv_heads * c->head_dim;
  const size_t v[S_COUNT] = {H, Q, KV, KV, Q, H, I, I, H};
  memcpy(w, v, sizeof v);
}

/* ---- forward ---------------------------------------------------------------------------------------- */
static void forward(const ls_block_t *blk, float *x) {
  void *const *w = blk->w; /* the norm weights already hold 1 + w */
  float *s[S_COUNT]; /* s[S_XN] first: the engine's final norm writes there */
  ls_scratch_carve(blk, widths, S_COUNT, s);
  const ls_attn_weights_t aw = {w[W_Q], w[W_K], w[W_V], w[W_O], w[W_BQ], w[W_BK], w[W_BV],
                                w[W_BO], NULL, NULL, LS_QK_NONE};
  const ls_attn_scratch_t as = {s[S_Q], s[S_K], s[S_V], s[S_ATT], NULL, NULL};
  ls_recipe_rmsnorm(blk, s[S_XN], x, w[W_ATTN_NORM]);
  ls_recipe_attention(blk, &aw, &as, s[S_XN], s[S_ATTN_OUT]);
  ls_recipe_add(blk, LS_HOOK_ATTN_OUT, x, s[S_ATTN_OUT]);
  ls_recipe_rmsnorm(blk, s[S_XN], x, w[W_MLP_NORM]);
  ls_recipe_glu_mlp(blk, w[W_GATE], w[W_UP], w[W_DOWN], NULL, NULL, NULL, s[S_GATE], s[S_UP],
                    s[S_XN], s[S_MLP_OUT], 1);
  ls_recipe_add(blk, LS_HOOK_MLP_OUT, x, s[S_MLP_OUT]);
}

static const char *const archs[] = {"GemmaForCausalLM", NULL};
static const char *const types[] = {"gemma", NULL};

const ls_family_t ls_family_gemma = {
    .name = "gemma",
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
