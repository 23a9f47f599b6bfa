/* deepseek.c: DeepSeek-V2 and DeepSeek-V3 (DeepseekV2ForCausalLM, DeepseekV3ForCausalLM):
 * pre-norm decoder blocks with multi-head latent attention and, from layer
 * first_k_dense_replace on, a routed MoE with shared experts (src/models/moe.c):
 *   q   = q_b(norm(q_a(x)))  (or q_proj(x) without q_lora_rank), per head [nope | rope]
 *   ckv = kv_a(x) = [c (kv_lora_rank) | k_rope (qk_rope_head_dim, one head for all)]
 *   k   = [kv_b(norm(c)) nope part | rope(k_rope)],  v = kv_b(norm(c)) v part
 *   x = x + o_proj(attn(rope(q), k, v))                                       hook attn_out
 *   x = x + moe(norm2(x))  (dense layers: the SwiGLU MLP)                       hook mlp_out
 * Routing: V3 sigmoid scores, e_score_correction_bias for the choice, group-limited top-k
 * (a group's score: its two best), norm_topk_prob, routed_scaling_factor; V2 softmax,
 * greedy or group_limited_greedy (a group's score: its best), routed_scaling_factor.
 * Shared experts (moe_intermediate_size x n_shared_experts) are added ungated.
 *
 * RoPE: rank 0 reorders the rows of q_b_proj (q_proj) and of kv_a_proj_with_mqa's rope
 * part as it reads them (weight views, src/models/family.h): each head becomes [rope |
 * nope], and with interleaved RoPE (rope_interleave, V2's complex form) the rope rows are
 * de-interleaved (evens, then odds). The interleaved rotation of (x0, x1), (x2, x3), ...
 * is then the ordinary rotate_half one, and q and k share the order, so q . k, hence the
 * attention, is unchanged. yarn rope_scaling scales cos / sin by its attention factor and
 * (mscale_all_dim) the attention scale by mscale^2, as transformers.
 * q_a_layernorm and kv_a_layernorm use eps 1e-6 whatever rms_norm_eps says (transformers
 * builds them with its RMSNorm's default).
 * v_head_dim may differ from the q/k head: v is padded with zeros to the attention's head
 * width and the padding dropped before o_proj.
 * Semantics: transformers' modeling_deepseek_v2.py / modeling_deepseek_v3.py. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "family.h"
#include "ls_common.h"

static int is_v3(const ls_config_t *c) { return strcmp(c->model_type, "deepseek_v3") == 0; }

/* ---- config.json --------------------------------------------------------------------------- */
static int parse_mla(const cJSON *root, const char *path, ls_config_t *cfg) {
  const int BIG = 1 << 20;
  LS_CHECK(ls_cfg_int(root, "kv_lora_rank", 1, 0, 1, BIG, path, &cfg->kv_lora_rank));
  LS_CHECK(ls_cfg_int(root, "qk_nope_head_dim", 1, 0, 0, BIG, path, &cfg->qk_nope_dim));
  LS_CHECK(ls_cfg_int(root, "qk_rope_head_dim", 1, 0, 2, BIG, path, &cfg->qk_rope_dim));
  LS_CHECK(ls_cfg_int(root, "v_head_dim", 1, 0, 1, BIG, path, &cfg->v_head_dim));
  const cJSON *q = ls_cfg_get(root, "q_lora_rank"); /* null: q_proj */
  cfg->q_lora_rank = 0;
  if (q) LS_CHECK(ls_cfg_int(root, "q_lora_rank", 1, 0, 1, BIG, path, &cfg->q_lora_rank));
  if (cfg->qk_rope_dim % 2 != 0) {
    ls_error("%s: qk_rope_head_dim %d must be even", path, cfg->qk_rope_dim);
    return LS_ERR;
  }
  if (cfg->n_kv_heads != cfg->n_heads) {
    ls_error("%s: num_key_value_heads %d: multi-head latent attention expands k and v to every "
             "head (num_attention_heads %d)", path, cfg->n_kv_heads, cfg->n_heads);
    return LS_ERR;
  }
  int bias = 0;
  LS_CHECK(ls_cfg_bool(root, "attention_bias", 0, path, &bias));
  if (bias) {
    ls_error("%s: attention_bias true is not supported for %s yet (no released checkpoint sets "
             "it)", path, cfg->arch_name);
    return LS_ERR;
  }
  cfg->rope_interleave = 1; /* V2: the complex (pairwise) form always */
  if (is_v3(cfg)) LS_CHECK(ls_cfg_bool(root, "rope_interleave", 1, path, &cfg->rope_interleave));
  /* RoPE over qk_rope_head_dim; the head itself is nope + rope wide */
  cfg->head_dim = cfg->qk_rope_dim;
  LS_CHECK(ls_cfg_rope(root, path, cfg));
  cfg->head_dim = cfg->qk_nope_dim + cfg->qk_rope_dim;
  return LS_OK;
}

/* a string key that, when present, must be one of the NULL-ended values */
static int cfg_choice(const cJSON *root, const char *path, const char *key,
                      const char *const *allowed, int *idx) {
  const cJSON *v = ls_cfg_get(root, key);
  *idx = 0;
  if (!v) return LS_OK;
  for (int i = 0; cJSON_IsString(v) && allowed[i]; i++)
    if (strcmp(v->valuestring, allowed[i]) == 0) {
      *idx = i;
      return LS_OK;
    }
  char list[256] = "";
  for (int i = 0; allowed[i]; i++)
    snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "", allowed[i]);
  ls_error("%s: \"%s\" must be one of %s", path, key, list);
  return LS_ERR;
}

static int parse_moe(const cJSON *root, const char *path, ls_config_t *cfg) {
  const int v3 = is_v3(cfg);
  LS_CHECK(ls_cfg_moe(root, path, "n_routed_experts", "moe_intermediate_size", v3, cfg));
  if (!v3) cfg->norm_topk_prob = 0; /* V2's router never renormalises (transformers) */
  int first_dense = 0, freq = 1, shared = 0;
  LS_CHECK(ls_cfg_int(root, "first_k_dense_replace", 0, 0, 0, cfg->n_layers, path, &first_dense));
  LS_CHECK(ls_cfg_int(root, "moe_layer_freq", 0, 1, 1, 1 << 20, path, &freq));
  if (freq != 1) {
    ls_error("%s: moe_layer_freq %d: transformers makes every layer from first_k_dense_replace "
             "on a MoE layer (moe_layer_freq 1); other values are not supported", path, freq);
    return LS_ERR;
  }
  for (int L = 0; L < cfg->n_layers; L++) cfg->layer_moe[L] = L >= first_dense;
  LS_CHECK(ls_cfg_int(root, "n_shared_experts", 0, 0, 0, 1024, path, &shared));
  cfg->shared_intermediate = shared * cfg->moe_intermediate;
  cfg->shared_gate = 0;
  LS_CHECK(ls_cfg_num(root, "routed_scaling_factor", 1.0, 1e-9, 1e9, path, &cfg->routed_scale));
  /* scoring and top-k: V3 sigmoid + bias over groups (noaux_tc), V2 softmax (greedy or
   * group_limited_greedy) */
  static const char *const v3_score[] = {"sigmoid", NULL}, *const v2_score[] = {"softmax", NULL};
  static const char *const v3_topk[] = {"noaux_tc", NULL},
                           *const v2_topk[] = {"greedy", "group_limited_greedy", NULL};
  int score, method;
  LS_CHECK(cfg_choice(root, path, "scoring_func", v3 ? v3_score : v2_score, &score));
  LS_CHECK(cfg_choice(root, path, "topk_method", v3 ? v3_topk : v2_topk, &method));
  cfg->router_sigmoid = v3;
  cfg->router_bias = v3;
  cfg->group_top2 = v3;
  cfg->n_group = cfg->topk_group = 0;
  if (v3 || method == 1) {
    LS_CHECK(ls_cfg_int(root, "n_group", 0, 1, 1, cfg->n_experts, path, &cfg->n_group));
    LS_CHECK(ls_cfg_int(root, "topk_group", 0, cfg->n_group, 1, cfg->n_group, path,
                        &cfg->topk_group));
    if (cfg->n_experts % cfg->n_group != 0 || (v3 && cfg->n_experts / cfg->n_group < 2) ||
        cfg->topk_group * (cfg->n_experts / cfg->n_group) < cfg->top_k) {
      ls_error("%s: n_group %d and topk_group %d do not fit %d experts with "
               "num_experts_per_tok %d", path, cfg->n_group, cfg->topk_group, cfg->n_experts,
               cfg->top_k);
      return LS_ERR;
    }
  }
  return LS_OK;
}

static int parse_config(const cJSON *root, const char *path, ls_config_t *cfg) {
  static const char *const act[] = {"silu", NULL};
  LS_CHECK(ls_cfg_sizes(root, path, 2, cfg));
  LS_CHECK(ls_cfg_activation(root, path, "hidden_act", act, cfg));
  LS_CHECK(parse_mla(root, path, cfg));
  LS_CHECK(parse_moe(root, path, cfg));
  return ls_cfg_bool(root, "tie_word_embeddings", 0, path, &cfg->tie_embeddings);
}

/* ---- weight table ------------------------------------------------------------------------------ */
enum {
  W_ATTN_NORM, W_Q_A, W_Q_A_NORM, W_Q, /* W_Q: q_b_proj (or q_proj), heads as [rope | nope] */
  W_KV_C, W_K_ROPE,                    /* the two parts of kv_a_proj_with_mqa */
  W_KV_NORM, W_K_NOPE, W_V,            /* kv_a_layernorm; the two parts of kv_b_proj */
  W_O, W_MLP_NORM, W_GATE, W_UP, W_DOWN,
  W_ROUTER, W_SCORE_BIAS, W_SH_GATE, W_SH_UP, W_SH_DOWN,
  W_EXPERTS
};

static int slot_count(const ls_config_t *c) { return W_EXPERTS + 3 * c->n_experts; }

#define put ls_wspec_layer

static void layer_tensors(const ls_config_t *c, int L, ls_wspec_t *w) {
  const int64_t H = c->hidden, nh = c->n_heads, nope = c->qk_nope_dim, rope = c->qk_rope_dim,
                qk = nope + rope, dv = c->v_head_dim, ql = c->q_lora_rank, kl = c->kv_lora_rank,
                E = c->n_experts, I = c->moe_intermediate, S = c->shared_intermediate;
  const int moe = ls_config_is_moe(c, L), lora = ql > 0;
  const int perm = c->rope_interleave ? LS_VIEW_ROTATE_DEINT : LS_VIEW_ROTATE;
  put(&w[W_ATTN_NORM], L, "input_layernorm.weight", LS_WK_NORM, 1, H, 0);
  put(&w[W_Q_A], L, "self_attn.q_a_proj.weight", LS_WK_MATRIX, lora, ql, H);
  put(&w[W_Q_A_NORM], L, "self_attn.q_a_layernorm.weight", LS_WK_NORM, lora, ql, 0);
  if (lora) put(&w[W_Q], L, "self_attn.q_b_proj.weight", LS_WK_MATRIX, 1, nh * qk, ql);
  else put(&w[W_Q], L, "self_attn.q_proj.weight", LS_WK_MATRIX, 1, nh * qk, H);
  ls_wspec_view(&w[W_Q], 0, qk, qk, nh);
  ls_wspec_view_perm(&w[W_Q], perm, nope);
  put(&w[W_KV_C], L, "self_attn.kv_a_proj_with_mqa.weight", LS_WK_MATRIX, 1, kl + rope, H);
  w[W_K_ROPE] = w[W_KV_C];
  ls_wspec_view(&w[W_KV_C], 0, kl, kl, 1);
  ls_wspec_view(&w[W_K_ROPE], kl, rope, rope, 1);
  ls_wspec_view_perm(&w[W_K_ROPE], perm, 0);
  put(&w[W_KV_NORM], L, "self_attn.kv_a_layernorm.weight", LS_WK_NORM, 1, kl, 0);
  put(&w[W_K_NOPE], L, "self_attn.kv_b_proj.weight", LS_WK_MATRIX, 1, nh * (nope + dv), kl);
  w[W_V] = w[W_K_NOPE];
  if (nope > 0) ls_wspec_view(&w[W_K_NOPE], 0, nope, nope + dv, nh);
  else w[W_K_NOPE].present = 0;
  ls_wspec_view(&w[W_V], nope, dv, nope + dv, nh);
  put(&w[W_O], L, "self_attn.o_proj.weight", LS_WK_MATRIX, 1, H, nh * dv);
  put(&w[W_MLP_NORM], L, "post_attention_layernorm.weight", LS_WK_NORM, 1, H, 0);
  ls_wspec_mlp(&w[W_GATE], L, c); /* W_GATE, W_UP, W_DOWN: the dense layers */
  for (int i = W_GATE; i <= W_DOWN; i++) w[i].present = !moe;
  put(&w[W_ROUTER], L, "mlp.gate.weight", LS_WK_MATRIX, moe, E, H);
  put(&w[W_SCORE_BIAS], L, "mlp.gate.e_score_correction_bias", LS_WK_BIAS, moe && c->router_bias,
      E, 0);
  const int sh = moe && S > 0;
  put(&w[W_SH_GATE], L, "mlp.shared_experts.gate_proj.weight", LS_WK_MATRIX, sh, S, H);
  put(&w[W_SH_UP], L, "mlp.shared_experts.up_proj.weight", LS_WK_MATRIX, sh, S, H);
  put(&w[W_SH_DOWN], L, "mlp.shared_experts.down_proj.weight", LS_WK_MATRIX, sh, H, S);
  static const char *const hub[3] = {"gate_proj", "up_proj", "down_proj"};
  for (int e = 0; e < E; e++)
    for (int j = 0; j < 3; j++) {
      char name[LS_WNAME_MAX];
      snprintf(name, sizeof name, "mlp.experts.%d.%s.weight", e, hub[j]);
      put(&w[W_EXPERTS + 3 * e + j], L, name, LS_WK_MATRIX, moe, j == 2 ? H : I, j == 2 ? I : H);
    }
}

/* ---- scratch ------------------------------------------------------------------------------------- */
enum { S_XN, S_QA, S_QAN, S_Q, S_KVC, S_KVN, S_KROPE, S_KNOPE, S_V, S_K, S_VPAD, S_ATT, S_ATTV,
       S_ATTN_OUT, S_GATE, S_UP, S_MLP_OUT, S_MOE, S_COUNT = S_MOE + LS_MOE_N_SCRATCH };

/* the attention's head width: the q/k head, or v's when wider (then q and k are padded) */
static int att_dim(const ls_config_t *c) {
  const int qk = c->qk_nope_dim + c->qk_rope_dim;
  return qk > c->v_head_dim ? qk : c->v_head_dim;
}

static void widths(const ls_config_t *c, size_t *w) {
  const size_t H = c->hidden, nh = c->n_heads, d = (size_t)att_dim(c),
               qk = (size_t)(c->qk_nope_dim + c->qk_rope_dim), dv = c->v_head_dim;
  const size_t v[S_MOE] = {H, (size_t)c->q_lora_rank, (size_t)c->q_lora_rank, nh * qk,
                           (size_t)c->kv_lora_rank, (size_t)c->kv_lora_rank,
                           (size_t)c->qk_rope_dim, nh * (size_t)c->qk_nope_dim, nh * dv, nh * d,
                           nh * d, nh * d, nh * dv, H, (size_t)c->intermediate,
                           (size_t)c->intermediate, H};
  memcpy(w, v, sizeof v);
  ls_moe_scratch_widths(c, w + S_MOE);
}

/* ---- forward ---------------------------------------------------------------------------------------- */
/* the attention scale: qk_head_dim^-0.5, times yarn's mscale(factor, mscale_all_dim)^2 */
static double att_scale(const ls_config_t *c) {
  double s = 1.0 / sqrt((double)(c->qk_nope_dim + c->qk_rope_dim));
  if (c->rope.type != LS_ROPE_DEFAULT && c->rope.mscale_all_dim > 0) {
    const double m = ls_yarn_mscale(c->rope.factor, c->rope.mscale_all_dim);
    s = s * m * m;
  }
  return s;
}

static void attention(const ls_block_t *blk, void *const *w, float *const *s) {
  ls_backend_t *be = blk->be;
  const ls_backend_iface_t *f = be->iface;
  const ls_config_t *c = blk->cfg;
  const ls_batch_t *b = blk->b;
  const int T = b->T, H = c->hidden, nh = c->n_heads, nope = c->qk_nope_dim,
            rope = c->qk_rope_dim, qk = nope + rope, dv = c->v_head_dim, d = att_dim(c),
            kl = c->kv_lora_rank;
  /* the latent norms are built without the config's eps in transformers: its default */
  const float eps = 1e-6f;
  const float *xn = s[S_XN];
  float *q = s[S_Q];
  if (c->q_lora_rank > 0) {
    f->matmul(be, s[S_QA], xn, w[W_Q_A], NULL, T, H, c->q_lora_rank);
    f->rmsnorm(be, s[S_QAN], s[S_QA], w[W_Q_A_NORM], T, c->q_lora_rank, eps);
    f->matmul(be, q, s[S_QAN], w[W_Q], NULL, T, c->q_lora_rank, nh * qk);
  } else {
    f->matmul(be, q, xn, w[W_Q], NULL, T, H, nh * qk);
  }
  f->matmul(be, s[S_KVC], xn, w[W_KV_C], NULL, T, H, kl);
  f->matmul(be, s[S_KROPE], xn, w[W_K_ROPE], NULL, T, H, rope);
  f->rmsnorm(be, s[S_KVN], s[S_KVC], w[W_KV_NORM], T, kl, eps);
  if (nope > 0) f->matmul(be, s[S_KNOPE], s[S_KVN], w[W_K_NOPE], NULL, T, kl, nh * nope);
  f->matmul(be, s[S_V], s[S_KVN], w[W_V], NULL, T, kl, nh * dv);
  /* heads are [rope | nope]: RoPE on the first qk_rope_head_dim dims of each */
  f->rope(be, q, b->pos, blk->cos_tab, blk->sin_tab, T, nh, qk, rope);
  f->rope(be, s[S_KROPE], b->pos, blk->cos_tab, blk->sin_tab, T, 1, rope, rope);
  float *qd = q, *vd = s[S_V];
  if (d > qk) { /* v wider than q / k: q padded (into S_ATT, free until the attention) */
    f->concat_heads(be, s[S_ATTV], d, q, qk, qk, 0, NULL, 0, 0, 0, T, nh);
    qd = s[S_ATTV];
  }
  f->concat_heads(be, s[S_K], d, s[S_KROPE], rope, rope, 1, s[S_KNOPE], nope, nope, 0, T, nh);
  if (d > dv) {
    f->concat_heads(be, s[S_VPAD], d, s[S_V], dv, dv, 0, NULL, 0, 0, 0, T, nh);
    vd = s[S_VPAD];
  }
  f->attention(be, s[S_ATT], qd, s[S_K], vd, b->seq_start, b->seq_len, b->n_seq, b->max_len, nh,
               nh, d, 0, (float)att_scale(c), 0.0f);
  float *att = s[S_ATT];
  if (d > dv) { /* v's padding dropped */
    f->concat_heads(be, s[S_ATTV], dv, s[S_ATT], dv, d, 0, NULL, 0, 0, 0, T, nh);
    att = s[S_ATTV];
  }
  f->matmul(be, s[S_ATTN_OUT], att, w[W_O], NULL, T, nh * dv, H);
}

static void forward(const ls_block_t *blk, float *x) {
  void *const *w = blk->w;
  float *s[S_COUNT]; /* s[S_XN] first: the engine's final norm writes there */
  ls_scratch_carve(blk, widths, S_COUNT, s);
  ls_recipe_rmsnorm(blk, s[S_XN], x, w[W_ATTN_NORM]);
  attention(blk, w, s);
  ls_recipe_add(blk, LS_HOOK_ATTN_OUT, x, s[S_ATTN_OUT]);
  ls_recipe_rmsnorm(blk, s[S_XN], x, w[W_MLP_NORM]);
  if (ls_config_is_moe(blk->cfg, blk->layer)) {
    const ls_moe_weights_t mw = {w[W_ROUTER], w + W_EXPERTS, w[W_SH_GATE], w[W_SH_UP],
                                 w[W_SH_DOWN], NULL, w[W_SCORE_BIAS]};
    ls_recipe_moe(blk, &mw, s + S_MOE, s[S_XN], s[S_MLP_OUT]);
  } else {
    ls_recipe_glu_mlp(blk, w[W_GATE], w[W_UP], w[W_DOWN], NULL, NULL, NULL, s[S_GATE], s[S_UP],
                      s[S_XN], s[S_MLP_OUT], 0);
  }
  ls_recipe_add(blk, LS_HOOK_MLP_OUT, x, s[S_MLP_OUT]);
}

#define DEEPSEEK_FAMILY(sym, fname, arch, type)                                                \
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

DEEPSEEK_FAMILY(ls_family_deepseek_v2, "deepseek_v2", "DeepseekV2ForCausalLM", "deepseek_v2");
DEEPSEEK_FAMILY(ls_family_deepseek_v3, "deepseek_v3", "DeepseekV3ForCausalLM", "deepseek_v3");
