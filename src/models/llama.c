/* llama.c: the Llama family (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM):
 * pre-norm decoder blocks with RMSNorm, rotary attention (GQA, optional sliding
 * window, optional biases) and a SwiGLU MLP:
 *   x = x + o_proj(attn(rope(q(norm1(x))), rope(k(..)), v(..)))     hook attn_out
 *   x = x + down(silu(gate(norm2(x))) * up(norm2(x)))                 hook mlp_out
 * Semantics: transformers' modeling_llama.py / modeling_mistral.py / modeling_qwen2.py. */
#include <stdio.h>
#include <string.h>

#include "family.h"
#include "ls_common.h"

/* ---- config.json --------------------------------------------------------------------------- */
/* Sliding window: Mistral everywhere it is set; Qwen2 only with use_sliding_window; Llama
 * never. Models mixing sliding and full layers are another family's business. */
static int parse_window(const cJSON *root, const char *path, ls_config_t *cfg) {
  const int llama = strcmp(cfg->model_type, "llama") == 0,
            qwen2 = strcmp(cfg->model_type, "qwen2") == 0;
  cfg->sliding_window = 0;
  if (llama) return LS_OK;
  int use = 1;
  if (qwen2) LS_CHECK(ls_cfg_bool(root, "use_sliding_window", 0, path, &use));
  const cJSON *types = ls_cfg_get(root, "layer_types");
  if (types && cJSON_IsArray(types)) {
    int any_sliding = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, types) {
      if (cJSON_IsString(e) && strcmp(e->valuestring, "sliding_attention") == 0) any_sliding = 1;
      else if (!cJSON_IsString(e) || strcmp(e->valuestring, "full_attention") != 0) {
        ls_error("%s: layer_types entry must be \"full_attention\" or \"sliding_attention\"", path);
        return LS_ERR;
      }
    }
    if (qwen2) use = any_sliding;
    if (any_sliding && cJSON_GetArraySize(types) > 0) {
      cJSON_ArrayForEach(e, types) {
        if (strcmp(e->valuestring, "sliding_attention") != 0) {
          ls_error("%s: models mixing sliding and full attention layers are not supported yet",
                   path);
          return LS_ERR;
        }
      }
    }
  }
  if (!use) return LS_OK;
  return ls_cfg_int(root, "sliding_window", 0, 0, 0, 0x7fffffff, path, &cfg->sliding_window);
}

static int parse_config(const cJSON *root, const char *path, ls_config_t *cfg) {
  static const char *const act[] = {"silu", NULL};
  LS_CHECK(ls_cfg_common_sizes(root, path, cfg));
  LS_CHECK(ls_cfg_activation(root, path, "hidden_act", act, cfg));
  LS_CHECK(ls_cfg_rope(root, path, cfg));
  LS_CHECK(parse_window(root, path, cfg));
  if (strcmp(cfg->model_type, "qwen2") == 0) {
    cfg->qkv_bias = 1;
  } else {
    int attn_bias = 0;
    LS_CHECK(ls_cfg_bool(root, "attention_bias", 0, path, &attn_bias));
    cfg->qkv_bias = cfg->o_bias = attn_bias;
    if (strcmp(cfg->model_type, "llama") == 0)
      LS_CHECK(ls_cfg_bool(root, "mlp_bias", 0, path, &cfg->mlp_bias));
  }
  return ls_cfg_bool(root, "tie_word_embeddings", 0, path, &cfg->tie_embeddings);
}

/* ---- weight table ------------------------------------------------------------------------------ */
enum {
  W_ATTN_NORM, W_Q, W_K, W_V, W_O, W_BQ, W_BK, W_BV, W_BO,
  W_MLP_NORM, W_GATE, W_UP, W_DOWN, W_BGATE, W_BUP, W_BDOWN,
  W_COUNT
};

#define put ls_wspec_layer

static void layer_tensors(const ls_config_t *c, int L, ls_wspec_t *w) {
  const int64_t H = c->hidden, I = c->intermediate;
  put(&w[W_ATTN_NORM], L, "input_layernorm.weight", LS_WK_NORM, 1, H, 0);
  ls_wspec_attention(&w[W_Q], L, c); /* W_Q .. W_BO */
  put(&w[W_MLP_NORM], L, "post_attention_layernorm.weight", LS_WK_NORM, 1, H, 0);
  ls_wspec_mlp(&w[W_GATE], L, c); /* W_GATE, W_UP, W_DOWN */
  put(&w[W_BGATE], L, "mlp.gate_proj.bias", LS_WK_BIAS, c->mlp_bias, I, 0);
  put(&w[W_BUP], L, "mlp.up_proj.bias", LS_WK_BIAS, c->mlp_bias, I, 0);
  put(&w[W_BDOWN], L, "mlp.down_proj.bias", LS_WK_BIAS, c->mlp_bias, H, 0);
}

/* the embedding table and the final RMSNorm (every family of this shape) */
void ls_llama_global_tensors(const ls_config_t *c, ls_wspec_t *g) {
  ls_wspec_global(&g[LS_G_EMBED], "model.embed_tokens.weight", LS_WK_EMBED, c->vocab, c->hidden);
  ls_wspec_global(&g[LS_G_FINAL_NORM], "model.norm.weight", LS_WK_NORM, c->hidden, 0);
}

/* ---- scratch ------------------------------------------------------------------------------------- */
typedef struct {
  float *xn;       /* (T, H) normed input (first: the engine's final norm writes there) */
  float *q;        /* (T, n_heads * head_dim) */
  float *k, *v;    /* (T, n_kv_heads * head_dim) */
  float *att;      /* (T, n_heads * head_dim) attention output before o_proj */
  float *attn_out; /* (T, H) hook attn_out */
  float *gate;     /* (T, I) */
  float *up;       /* (T, I) */
  float *mlp_out;  /* (T, H) hook mlp_out */
} scratch_t;

#define N_SCRATCH 9
static void widths(const ls_config_t *c, size_t *w) {
  const size_t H = c->hidden, I = c->intermediate, Q = (size_t)c->n_heads * c->head_dim,
               KV = (size_t)c->n_kv_heads * c->head_dim;
  const size_t v[N_SCRATCH] = {H, Q, KV, KV, Q, H, I, I, H};
  memcpy(w, v, sizeof v);
}

static void carve(const ls_block_t *blk, scratch_t *s) {
  float *b[N_SCRATCH];
  ls_scratch_carve(blk, widths, N_SCRATCH, b);
  float **dst[N_SCRATCH] = {&s->xn, &s->q, &s->k, &s->v, &s->att, &s->attn_out, &s->gate, &s->up,
                            &s->mlp_out};
  for (int i = 0; i < N_SCRATCH; i++) *dst[i] = b[i];
}

/* ---- forward ---------------------------------------------------------------------------------------- */
static void forward(const ls_block_t *blk, float *x) {
  void *const *w = blk->w;
  scratch_t s;
  carve(blk, &s);
  const ls_attn_weights_t aw = {w[W_Q], w[W_K], w[W_V], w[W_O], w[W_BQ], w[W_BK],
                                w[W_BV], w[W_BO], NULL, NULL, LS_QK_NONE};
  const ls_attn_scratch_t as = {s.q, s.k, s.v, s.att, NULL, NULL};
  ls_recipe_rmsnorm(blk, s.xn, x, w[W_ATTN_NORM]);
  ls_recipe_attention(blk, &aw, &as, s.xn, s.attn_out);
  ls_recipe_add(blk, LS_HOOK_ATTN_OUT, x, s.attn_out);
  ls_recipe_rmsnorm(blk, s.xn, x, w[W_MLP_NORM]);
  ls_recipe_glu_mlp(blk, w[W_GATE], w[W_UP], w[W_DOWN], w[W_BGATE], w[W_BUP], w[W_BDOWN],
                    s.gate, s.up, s.xn, s.mlp_out, 0);
  ls_recipe_add(blk, LS_HOOK_MLP_OUT, x, s.mlp_out);
}

void ls_llama_final_norm(ls_backend_t *be, const ls_config_t *c, float *out, const float *x,
                         const float *w, const float *b, int T) {
  (void)b;
  be->iface->rmsnorm(be, out, x, w, T, c->hidden, (float)c->rms_eps);
}

void ls_layernorm_final_norm(ls_backend_t *be, const ls_config_t *c, float *out,
                             const float *x, const float *w, const float *b, int T) {
  be->iface->layernorm(be, out, x, w, b, T, c->hidden, (float)c->rms_eps);
}

static const char *const archs[] = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
                                    NULL};
static const char *const types[] = {"llama", "mistral", "qwen2", NULL};

const ls_family_t ls_family_llama = {
    .name = "llama",
    .archs = archs,
    .model_types = types,
    .parse_config = parse_config,
    .n_slots = W_COUNT,
    .layer_tensors = layer_tensors,
    .global_tensors = ls_llama_global_tensors,
    .n_scratch = N_SCRATCH,
    .scratch_widths = widths,
    .forward = forward,
    .final_norm = ls_llama_final_norm,
};
