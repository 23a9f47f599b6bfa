/* phi3.c: the Phi-3 family (Phi3ForCausalLM): the Llama block with the q, k, v projections
 * fused into one qkv_proj (rows q, then k, then v) and gate / up fused into gate_up_proj
 * (rows gate, then up), both split at load into the plain slots the shared recipes use;
 * partial rotary where partial_rotary_factor says so; a sliding window on every layer
 * when sliding_window is set (Phi-3-mini-4k: 2047):
 *   x = x + o_proj(attn(rope(q(norm1(x))), rope(k(..)), v(..)))     hook attn_out
 *   x = x + down(silu(gate(norm2(x))) * up(norm2(x)))                 hook mlp_out
 * LongRoPE (rope type "longrope", "su", "yarn": Phi-3-*-128k, Phi-3.5) is refused: in
 * transformers its frequencies switch with the longest sequence of the batch.
 * Semantics: transformers' models/phi3/modeling_phi3.py. */
#include <limits.h>
#include <string.h>

#include "family.h"
#include "ls_common.h"

/* ---- config.json --------------------------------------------------------------------------- */
static int check_rope_type(const cJSON *root, const char *path) {
  const cJSON *r = ls_cfg_get(root, "rope_parameters");
  if (!r) r = ls_cfg_get(root, "rope_scaling");
  const cJSON *t = r && cJSON_IsObject(r) ? ls_cfg_get(r, "rope_type") : NULL;
  if (!t && r && cJSON_IsObject(r)) t = ls_cfg_get(r, "type");
  if (!t || (cJSON_IsString(t) && strcmp(t->valuestring, "default") == 0)) return LS_OK;
  char shown[32];
  ls_printable(shown, sizeof shown, cJSON_IsString(t) ? t->valuestring : "?");
  ls_error("%s: Phi-3 rope type \"%s\" is not supported (LongRoPE: transformers switches its "
           "frequencies with the longest sequence in each batch); only the default RoPE of "
           "the 4k-context models is", path, shown);
  return LS_ERR;
}

static int parse_config(const cJSON *root, const char *path, ls_config_t *cfg) {
  static const char *const act[] = {"silu", NULL};
  LS_CHECK(ls_cfg_common_sizes(root, path, cfg));
  LS_CHECK(ls_cfg_activation(root, path, "hidden_act", act, cfg));
  LS_CHECK(check_rope_type(root, path));
  LS_CHECK(ls_cfg_rope_partial(root, path, 10000.0, 1.0, cfg));
  const cJSON *sw = cJSON_GetObjectItemCaseSensitive(root, "sliding_window");
  cfg->sliding_window = 0;
  cfg->window_per_layer = 0; /* every layer, as Phi3Attention */
  if (sw && !cJSON_IsNull(sw))
    LS_CHECK(ls_cfg_int(root, "sliding_window", 0, 0, 1, INT_MAX, path, &cfg->sliding_window));
  return ls_cfg_bool(root, "tie_word_embeddings", 0, path, &cfg->tie_embeddings);
}

/* ---- weight table ------------------------------------------------------------------------------ */
enum {
  W_ATTN_NORM, W_Q, W_K, W_V, W_O, W_MLP_NORM, W_GATE, W_UP, W_DOWN,
  W_COUNT
};

static void layer_tensors(const ls_config_t *c, int L, ls_wspec_t *w) {
  const int64_t H = c->hidden, I = c->intermediate, Q = (int64_t)c->n_heads * c->head_dim,
                KV = (int64_t)c->n_kv_heads * c->head_dim;
  ls_wspec_layer(&w[W_ATTN_NORM], L, "input_layernorm.weight", LS_WK_NORM, 1, H, 0);
  for (int i = 0; i < 3; i++) { /* q, k, v: consecutive rows of qkv_proj */
    ls_wspec_layer(&w[W_Q + i], L, "self_attn.qkv_proj.weight", LS_WK_MATRIX, 1, Q + 2 * KV, H);
    ls_wspec_view(&w[W_Q + i], i == 0 ? 0 : Q + (i - 1) * KV, i == 0 ? Q : KV, 0, 1);
  }
  ls_wspec_layer(&w[W_O], L, "self_attn.o_proj.weight", LS_WK_MATRIX, 1, H, Q);
  ls_wspec_layer(&w[W_MLP_NORM], L, "post_attention_layernorm.weight", LS_WK_NORM, 1, H, 0);
  for (int i = 0; i < 2; i++) { /* gate, up: the halves of gate_up_proj */
    ls_wspec_layer(&w[W_GATE + i], L, "mlp.gate_up_proj.weight", LS_WK_MATRIX, 1, 2 * I, H);
    ls_wspec_view(&w[W_GATE + i], i * I, I, 0, 1);
  }
  ls_wspec_layer(&w[W_DOWN], L, "mlp.down_proj.weight", LS_WK_MATRIX, 1, H, I);
}

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
  void *const *w = blk->w;
  float *s[S_COUNT]; /* s[S_XN] first: the engine's final norm writes there */
  ls_scratch_carve(blk, widths, S_COUNT, s);
  const ls_attn_weights_t aw = {w[W_Q], w[W_K], w[W_V], w[W_O], NULL, NULL, NULL, NULL,
                                NULL, NULL, LS_QK_NONE};
  const ls_attn_scratch_t as = {s[S_Q], s[S_K], s[S_V], s[S_ATT], NULL, NULL};
  ls_recipe_rmsnorm(blk, s[S_XN], x, w[W_ATTN_NORM]);
  ls_recipe_attention(blk, &aw, &as, s[S_XN], s[S_ATTN_OUT]);
  ls_recipe_add(blk, LS_HOOK_ATTN_OUT, x, s[S_ATTN_OUT]);
  ls_recipe_rmsnorm(blk, s[S_XN], x, w[W_MLP_NORM]);
  ls_recipe_glu_mlp(blk, w[W_GATE], w[W_UP], w[W_DOWN], NULL, NULL, NULL, s[S_GATE], s[S_UP],
                    s[S_XN], s[S_MLP_OUT], 0);
  ls_recipe_add(blk, LS_HOOK_MLP_OUT, x, s[S_MLP_OUT]);
}

static const char *const archs[] = {"Phi3ForCausalLM", NULL};
static const char *const types[] = {"phi3", NULL};

const ls_family_t ls_family_phi3 = {
    .name = "phi3",
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
