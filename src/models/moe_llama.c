/* moe_llama.c: the Llama-shaped mixture-of-experts families: pre-norm decoder blocks with
 * RMSNorm and rotary GQA attention whose MLP is, on MoE layers, a routed set of SwiGLU
 * experts (src/models/moe.c):
 *   x = x + o_proj(attn(rope(q(norm1(x))), rope(k(..)), v(..)))            hook attn_out
 *   x = x + moe(norm2(x))   (dense layers: the SwiGLU MLP)                   hook mlp_out
 * with, per family:
 *   MixtralForCausalLM   top-k over the softmax, always renormalised; optional sliding
 *                        window on every layer (block_sparse_moe.experts.N.w1/w3/w2)
 *   Qwen2MoeForCausalLM  q/k/v biases, a shared expert scaled by sigmoid(shared_expert_gate),
 *                        norm_topk_prob, dense layers (mlp_only_layers, decoder_sparse_step)
 *   Qwen3MoeForCausalLM  RMSNorm of each head's q and k, norm_topk_prob, dense layers
 *   OlmoeForCausalLM     RMSNorm of the whole q and k projections, norm_topk_prob
 * mlp_out of a MoE layer is the whole block's output (routed + shared experts).
 * Semantics: transformers' modeling_mixtral.py, modeling_qwen2_moe.py,
 * modeling_qwen3_moe.py, modeling_olmoe.py. */
#include <stdio.h>
#include <string.h>

#include "family.h"
#include "ls_common.h"

/* ---- config.json --------------------------------------------------------------------------- */
typedef enum { K_MIXTRAL, K_QWEN2_MOE, K_QWEN3_MOE, K_OLMOE } kind_t;

static kind_t kind_of(const ls_config_t *c) {
  if (strcmp(c->model_type, "mixtral") == 0) return K_MIXTRAL;
  if (strcmp(c->model_type, "qwen2_moe") == 0) return K_QWEN2_MOE;
  if (strcmp(c->model_type, "qwen3_moe") == 0) return K_QWEN3_MOE;
  return K_OLMOE;
}

/* Sliding windows: Mixtral's on every layer when set; the Qwen MoE models' only with
 * use_sliding_window, which no released checkpoint turns on: refused */
static int parse_window(const cJSON *root, const char *path, kind_t k, ls_config_t *cfg) {
  cfg->sliding_window = 0;
  if (k == K_MIXTRAL)
    return ls_cfg_int(root, "sliding_window", 0, 0, 0, 0x7fffffff, path, &cfg->sliding_window);
  int use = 0;
  if (k == K_QWEN2_MOE || k == K_QWEN3_MOE)
    LS_CHECK(ls_cfg_bool(root, "use_sliding_window", 0, path, &use));
  if (use) {
    ls_error("%s: use_sliding_window is not supported for %s yet; set it to false", path,
             cfg->arch_name);
    return LS_ERR;
  }
  return LS_OK;
}

static int parse_config(const cJSON *root, const char *path, ls_config_t *cfg) {
  static const char *const act[] = {"silu", NULL};
  const kind_t k = kind_of(cfg);
  LS_CHECK(ls_cfg_common_sizes(root, path, cfg));
  LS_CHECK(ls_cfg_activation(root, path, "hidden_act", act, cfg));
  LS_CHECK(ls_cfg_rope(root, path, cfg));
  LS_CHECK(parse_window(root, path, k, cfg));
  if (k == K_MIXTRAL) {
    LS_CHECK(ls_cfg_moe(root, path, "num_local_experts", NULL, 1, cfg));
    cfg->norm_topk_prob = 1; /* Mixtral always renormalises its top-k */
    double jitter = 0;
    LS_CHECK(ls_cfg_num(root, "router_jitter_noise", 0, 0, 1e9, path, &jitter)); /* training only */
  } else {
    /* OLMoE's experts are intermediate_size wide */
    LS_CHECK(ls_cfg_moe(root, path, "num_experts", k == K_OLMOE ? NULL : "moe_intermediate_size",
                        0, cfg));
  }
  if (k == K_QWEN2_MOE) {
    int bias = 1;
    LS_CHECK(ls_cfg_bool(root, "qkv_bias", 1, path, &bias));
    cfg->qkv_bias = bias;
    LS_CHECK(ls_cfg_int(root, "shared_expert_intermediate_size", 1, 0, 0, 1 << 20, path,
                        &cfg->shared_intermediate));
    cfg->shared_gate = cfg->shared_intermediate > 0;
  } else if (k != K_MIXTRAL) {
    int bias = 0;
    LS_CHECK(ls_cfg_bool(root, "attention_bias", 0, path, &bias));
    cfg->qkv_bias = cfg->o_bias = bias;
  }
  if (k == K_OLMOE && ls_cfg_get(root, "clip_qkv")) {
    ls_error("%s: clip_qkv is not supported yet (no released OLMoE checkpoint sets it); set it "
             "to null", path);
    return LS_ERR;
  }
  return ls_cfg_bool(root, "tie_word_embeddings", 0, path, &cfg->tie_embeddings);
}

/* ---- weight table ------------------------------------------------------------------------------ */
enum {
  W_ATTN_NORM, W_Q, W_K, W_V, W_O, W_BQ, W_BK, W_BV, W_BO, W_QNORM, W_KNORM,
  W_MLP_NORM, W_GATE, W_UP, W_DOWN,            /* dense layers */
  W_ROUTER, W_SH_GATE, W_SH_UP, W_SH_DOWN, W_SH_ROUTER,
  W_EXPERTS                                    /* then gate, up, down of each expert */
};

static int slot_count(const ls_config_t *c) { return W_EXPERTS + 3 * c->n_experts; }

static void layer_tensors(const ls_config_t *c, int L, ls_wspec_t *w) {
  const kind_t k = kind_of(c);
  const int64_t H = c->hidden, D = c->head_dim, Q = (int64_t)c->n_heads * D,
                KV = (int64_t)c->n_kv_heads * D, E = c->n_experts, I = c->moe_intermediate,
                S = c->shared_intermediate;
  const int moe = ls_config_is_moe(c, L), qkn = k == K_QWEN3_MOE || k == K_OLMOE;
  ls_wspec_layer(&w[W_ATTN_NORM], L, "input_layernorm.weight", LS_WK_NORM, 1, H, 0);
  ls_wspec_attention(&w[W_Q], L, c); /* W_Q .. W_BO */
  /* q/k norm: per head (Qwen3-MoE) or over the whole projection (OLMoE) */
  ls_wspec_layer(&w[W_QNORM], L, "self_attn.q_norm.weight", LS_WK_NORM, qkn,
                 k == K_OLMOE ? Q : D, 0);
  ls_wspec_layer(&w[W_KNORM], L, "self_attn.k_norm.weight", LS_WK_NORM, qkn,
                 k == K_OLMOE ? KV : D, 0);
  ls_wspec_layer(&w[W_MLP_NORM], L, "post_attention_layernorm.weight", LS_WK_NORM, 1, H, 0);
  ls_wspec_mlp(&w[W_GATE], L, c); /* W_GATE, W_UP, W_DOWN */
  for (int i = W_GATE; i <= W_DOWN; i++) w[i].present = !moe;
  const char *blk = k == K_MIXTRAL ? "block_sparse_moe" : "mlp";
  char name[LS_WNAME_MAX];
  snprintf(name, sizeof name, "%s.gate.weight", blk);
  ls_wspec_layer(&w[W_ROUTER], L, name, LS_WK_MATRIX, moe, E, H);
  const int sh = moe && S > 0;
  ls_wspec_layer(&w[W_SH_GATE], L, "mlp.shared_expert.gate_proj.weight", LS_WK_MATRIX, sh, S, H);
  ls_wspec_layer(&w[W_SH_UP], L, "mlp.shared_expert.up_proj.weight", LS_WK_MATRIX, sh, S, H);
  ls_wspec_layer(&w[W_SH_DOWN], L, "mlp.shared_expert.down_proj.weight", LS_WK_MATRIX, sh, H, S);
  ls_wspec_layer(&w[W_SH_ROUTER], L, "mlp.shared_expert_gate.weight", LS_WK_MATRIX,
                 sh && c->shared_gate, 1, H);
  static const char *const mixtral[3] = {"w1", "w3", "w2"};
  static const char *const hub[3] = {"gate_proj", "up_proj", "down_proj"};
  for (int e = 0; e < E; e++)
    for (int j = 0; j < 3; j++) {
      snprintf(name, sizeof name, "%s.experts.%d.%s.weight", blk, e,
               k == K_MIXTRAL ? mixtral[j] : hub[j]);
      ls_wspec_layer(&w[W_EXPERTS + 3 * e + j], L, name, LS_WK_MATRIX, moe, j == 2 ? H : I,
                     j == 2 ? I : H);
    }
}

/* ---- scratch ------------------------------------------------------------------------------------- */
enum { S_XN, S_QRAW, S_KRAW, S_Q, S_K, S_V, S_ATT, S_ATTN_OUT, S_GATE, S_UP, S_MLP_OUT, S_MOE,
       S_COUNT = S_MOE + LS_MOE_N_SCRATCH };

static void widths(const ls_config_t *c, size_t *w) {
  const size_t H = c->hidden, I = c->intermediate, Q = (size_t)c->n_heads * c->head_dim,
               KV = (size_t)c->n_kv_heads * c->head_dim;
  const size_t v[S_MOE] = {H, Q, KV, Q, KV, KV, Q, H, I, I, H};
  memcpy(w, v, sizeof v);
  ls_moe_scratch_widths(c, w + S_MOE);
}

/* ---- forward ---------------------------------------------------------------------------------------- */
static void forward(const ls_block_t *blk, float *x) {
  void *const *w = blk->w;
  const ls_config_t *c = blk->cfg;
  const kind_t k = kind_of(c);
  float *s[S_COUNT]; /* s[S_XN] first: the engine's final norm writes there */
  ls_scratch_carve(blk, widths, S_COUNT, s);
  const ls_qknorm_t qkn = k == K_QWEN3_MOE ? LS_QK_PER_HEAD : k == K_OLMOE ? LS_QK_WHOLE : LS_QK_NONE;
  const ls_attn_weights_t aw = {w[W_Q], w[W_K], w[W_V], w[W_O], w[W_BQ], w[W_BK], w[W_BV],
                                w[W_BO], w[W_QNORM], w[W_KNORM], qkn};
  const ls_attn_scratch_t as = {s[S_Q], s[S_K], s[S_V], s[S_ATT], s[S_QRAW], s[S_KRAW]};
  ls_recipe_rmsnorm(blk, s[S_XN], x, w[W_ATTN_NORM]);
  ls_recipe_attention(blk, &aw, &as, s[S_XN], s[S_ATTN_OUT]);
  ls_recipe_add(blk, LS_HOOK_ATTN_OUT, x, s[S_ATTN_OUT]);
  ls_recipe_rmsnorm(blk, s[S_XN], x, w[W_MLP_NORM]);
  if (ls_config_is_moe(c, blk->layer)) {
    const ls_moe_weights_t mw = {w[W_ROUTER], w + W_EXPERTS, w[W_SH_GATE], w[W_SH_UP],
                                 w[W_SH_DOWN], w[W_SH_ROUTER], NULL};
    ls_recipe_moe(blk, &mw, s + S_MOE, s[S_XN], s[S_MLP_OUT]);
  } else {
    ls_recipe_glu_mlp(blk, w[W_GATE], w[W_UP], w[W_DOWN], NULL, NULL, NULL, s[S_GATE], s[S_UP],
                      s[S_XN], s[S_MLP_OUT], 0);
  }
  ls_recipe_add(blk, LS_HOOK_MLP_OUT, x, s[S_MLP_OUT]);
}

#define MOE_FAMILY(sym, fname, arch, type)                                                     \
  static const char *const sym##_archs[] = {arch, NULL};                                     \
  static const char *const sym##_types[] = {type, NULL};                                     \
  const ls_family_t sym = {                                                                  \
      .name = fname,                                                                         \
      .archs = sym##_archs,                                                                  \
      .model_types = sym##_types,                                                            \
      .parse_config = parse_config,                                                          \
      .n_slots = W_EXPERTS,                                                                  \
      .slot_count = slot_count,                                                              \
      .layer_tensors = layer_tensors,                                                        \
      .global_tensors = ls_llama_global_tensors,                                             \
      .n_scratch = S_COUNT,                                                                  \
      .scratch_widths = widths,                                                              \
      .host_scratch_bytes = ls_moe_host_bytes,                                               \
      .forward = forward,                                                                    \
      .final_norm = ls_llama_final_norm,                                                     \
  }

MOE_FAMILY(ls_family_mixtral, "mixtral", "MixtralForCausalLM", "mixtral");
MOE_FAMILY(ls_family_qwen2_moe, "qwen2_moe", "Qwen2MoeForCausalLM", "qwen2_moe");
MOE_FAMILY(ls_family_qwen3_moe, "qwen3_moe", "Qwen3MoeForCausalLM", "qwen3_moe");
MOE_FAMILY(ls_family_olmoe, "olmoe", "OlmoeForCausalLM", "olmoe");
