/* qwen3.c: the Qwen3 family (Qwen3ForCausalLM): the Llama block with a per-head RMSNorm of
 * q and k (over head_dim, one weight shared by the heads) between the projections and
 * RoPE, explicit head_dim (128 when absent, as Qwen3Config), optional attention biases,
 * and sliding-window layers chosen by layer_types (or from max_window_layers on):
 *   x = x + o_proj(attn(rope(qn(q(norm1(x)))), rope(kn(k(..))), v(..)))   hook attn_out
 *   x = x + down(silu(gate(norm2(x))) * up(norm2(x)))                     hook mlp_out
 * Semantics: transformers' models/qwen3/modeling_qwen3.py. */
#include <limits.h>
#include <string.h>

#include "family.h"
#include "ls_common.h"

/* ---- config.json --------------------------------------------------------------------------- */
static int parse_config(const cJSON *root, const char *path, ls_config_t *cfg) {
  static const char *const act[] = {"silu", NULL};
  LS_CHECK(ls_cfg_sizes(root, path, 128, cfg));
  LS_CHECK(ls_cfg_activation(root, path, "hidden_act", act, cfg));
  LS_CHECK(ls_cfg_rope(root, path, cfg));
  /* sliding_window counts only with use_sliding_window; an explicit null is "none" */
  int use = 0, first_sliding = 28;
  LS_CHECK(ls_cfg_bool(root, "use_sliding_window", 0, path, &use));
  LS_CHECK(ls_cfg_int(root, "max_window_layers", 0, 28, 0, INT_MAX, path, &first_sliding));
  const cJSON *sw = cJSON_GetObjectItemCaseSensitive(root, "sliding_window");
  cfg->sliding_window = 0;
  if (use && !cJSON_IsNull(sw))
    LS_CHECK(ls_cfg_int(root, "sliding_window", 0, 4096, 0, INT_MAX, path, &cfg->sliding_window));
  LS_CHECK(ls_cfg_layer_types(root, path, first_sliding, 0, cfg));
  int bias = 0;
  LS_CHECK(ls_cfg_bool(root, "attention_bias", 0, path, &bias));
  cfg->qkv_bias = cfg->o_bias = bias;
  return ls_cfg_bool(root, "tie_word_embeddings", 0, path, &cfg->tie_embeddings);
}

/* ---- weight table ------------------------------------------------------------------------------ */
enum {
  W_ATTN_NORM, W_Q, W_K, W_V, W_O, W_BQ, W_BK, W_BV, W_BO, W_QNORM, W_KNORM,
  W_MLP_NORM, W_GATE, W_UP, W_DOWN,
  W_COUNT
};

static void layer_tensors(const ls_config_t *c, int L, ls_wspec_t *w) {
  const int64_t H = c->hidden, D = c->head_dim;
  ls_wspec_layer(&w[W_ATTN_NORM], L, "input_layernorm.weight", LS_WK_NORM, 1, H, 0);
  ls_wspec_attention(&w[W_Q], L, c); /* W_Q .. W_BO */
  ls_wspec_layer(&w[W_QNORM], L, "self_attn.q_norm.weight", LS_WK_NORM, 1, D, 0);
  ls_wspec_layer(&w[W_KNORM], L, "self_attn.k_norm.weight", LS_WK_NORM, 1, D, 0);
  ls_wspec_layer(&w[W_MLP_NORM], L, "post_attention_layernorm.weight", LS_WK_NORM, 1, H, 0);
  ls_wspec_mlp(&w[W_GATE], L, c); /* W_GATE, W_UP, W_DOWN */
}

/* ---- scratch ------------------------------------------------------------------------------------- */
enum { S_XN, S_QRAW, S_KRAW, S_Q, S_K, S_V, S_ATT, S_ATTN_OUT, S_GATE, S_UP, S_MLP_OUT, S_COUNT };

static void widths(const ls_config_t *c, size_t *w) {
  const size_t H = c->hidden, I = c->intermediate, Q = (size_t)c->n_heads * c->head_dim,
               KV = (size_t)c->n_kv_heads * c->head_dim;
  const size_t v[S_COUNT] = {H, Q, KV, Q, KV, KV, Q, H, I, I, H};
  memcpy(w, v, sizeof v);
}

/* ---- forward ---------------------------------------------------------------------------------------- */
static void forward(const ls_block_t *blk, float *x) {
  void *const *w = blk->w;
  float *s[S_COUNT]; /* s[S_XN] first: the engine's final norm writes there */
  ls_scratch_carve(blk, widths, S_COUNT, s);
  /* q and k normed per head (rows of head_dim) before RoPE */
  const ls_attn_weights_t aw = {w[W_Q], w[W_K], w[W_V], w[W_O], w[W_BQ], w[W_BK], w[W_BV],
                                w[W_BO], w[W_QNORM], w[W_KNORM], LS_QK_PER_HEAD};
  const ls_attn_scratch_t as = {s[S_Q], s[S_K], s[S_V], s[S_ATT], s[S_QRAW], s[S_KRAW]};
  ls_recipe_rmsnorm(blk, s[S_XN], x, w[W_ATTN_NORM]);
  ls_recipe_attention(blk, &aw, &as, s[S_XN], s[S_ATTN_OUT]);
  ls_recipe_add(blk, LS_HOOK_ATTN_OUT, x, s[S_ATTN_OUT]);
  ls_recipe_rmsnorm(blk, s[S_XN], x, w[W_MLP_NORM]);
  ls_recipe_glu_mlp(blk, w[W_GATE], w[W_UP], w[W_DOWN], NULL, NULL, NULL, s[S_GATE], s[S_UP],
                    s[S_XN], s[S_MLP_OUT], 0);
  ls_recipe_add(blk, LS_HOOK_MLP_OUT, x, s[S_MLP_OUT]);
}

static const char *const archs[] = {"Qwen3ForCausalLM", NULL};
static const char *const types[] = {"qwen3", NULL};

const ls_family_t ls_family_qwen3 = {
    .name = "qwen3",
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
