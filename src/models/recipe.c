/* recipe.c: the sub-layers the decoder families share, composed from backend ops (see
 * family.h). A family's forward strings these together with its own norms; the op order
 * inside each is the one the families had written out. */
#include <math.h>

#include "family.h"

/* ---- weight tables -------------------------------------------------------------------------- */
void ls_wspec_attention(ls_wspec_t *w, int L, const ls_config_t *c) {
  const int64_t H = c->hidden, Q = (int64_t)c->n_heads * c->head_dim,
                KV = (int64_t)c->n_kv_heads * c->head_dim;
  ls_wspec_layer(&w[0], L, "self_attn.q_proj.weight", LS_WK_MATRIX, 1, Q, H);
  ls_wspec_layer(&w[1], L, "self_attn.k_proj.weight", LS_WK_MATRIX, 1, KV, H);
  ls_wspec_layer(&w[2], L, "self_attn.v_proj.weight", LS_WK_MATRIX, 1, KV, H);
  ls_wspec_layer(&w[3], L, "self_attn.o_proj.weight", LS_WK_MATRIX, 1, H, Q);
  ls_wspec_layer(&w[4], L, "self_attn.q_proj.bias", LS_WK_BIAS, c->qkv_bias, Q, 0);
  ls_wspec_layer(&w[5], L, "self_attn.k_proj.bias", LS_WK_BIAS, c->qkv_bias, KV, 0);
  ls_wspec_layer(&w[6], L, "self_attn.v_proj.bias", LS_WK_BIAS, c->qkv_bias, KV, 0);
  ls_wspec_layer(&w[7], L, "self_attn.o_proj.bias", LS_WK_BIAS, c->o_bias, H, 0);
}

void ls_wspec_mlp(ls_wspec_t *w, int L, const ls_config_t *c) {
  const int64_t H = c->hidden, I = c->intermediate;
  ls_wspec_layer(&w[0], L, "mlp.gate_proj.weight", LS_WK_MATRIX, 1, I, H);
  ls_wspec_layer(&w[1], L, "mlp.up_proj.weight", LS_WK_MATRIX, 1, I, H);
  ls_wspec_layer(&w[2], L, "mlp.down_proj.weight", LS_WK_MATRIX, 1, H, I);
}

/* ---- sub-layers ---------------------------------------------------------------------------------- */
void ls_recipe_rmsnorm(const ls_block_t *blk, float *out, const float *x, const void *w) {
  blk->be->iface->rmsnorm(blk->be, out, x, w, blk->b->T, blk->cfg->hidden,
                          (float)blk->cfg->rms_eps);
}

void ls_recipe_attention(const ls_block_t *blk, const ls_attn_weights_t *w,
                         const ls_attn_scratch_t *s, const float *xin, float *out) {
  ls_backend_t *be = blk->be;
  const ls_backend_iface_t *f = be->iface;
  const ls_config_t *c = blk->cfg;
  const ls_batch_t *b = blk->b;
  const int T = b->T, H = c->hidden, hd = c->head_dim;
  const int Q = c->n_heads * hd, KV = c->n_kv_heads * hd;
  const float eps = (float)c->rms_eps;
  const int normed = w->qk_norm != LS_QK_NONE;
  /* q, k, v share one input: consecutive, so a backend may convert it once */
  f->matmul(be, normed ? s->q_raw : s->q, xin, w->q, w->bq, T, H, Q);
  f->matmul(be, normed ? s->k_raw : s->k, xin, w->k, w->bk, T, H, KV);
  f->matmul(be, s->v, xin, w->v, w->bv, T, H, KV);
  if (w->qk_norm == LS_QK_PER_HEAD) { /* rows of head_dim */
    f->rmsnorm(be, s->q, s->q_raw, w->q_norm, T * c->n_heads, hd, eps);
    f->rmsnorm(be, s->k, s->k_raw, w->k_norm, T * c->n_kv_heads, hd, eps);
  } else if (w->qk_norm == LS_QK_WHOLE) {
    f->rmsnorm(be, s->q, s->q_raw, w->q_norm, T, Q, eps);
    f->rmsnorm(be, s->k, s->k_raw, w->k_norm, T, KV, eps);
  }
  if (c->rope_dim > 0) {
    f->rope(be, s->q, b->pos, blk->cos_tab, blk->sin_tab, T, c->n_heads, hd, c->rope_dim);
    f->rope(be, s->k, b->pos, blk->cos_tab, blk->sin_tab, T, c->n_kv_heads, hd, c->rope_dim);
  }
  double scale = c->attn_scale; /* <= 0: the op's 1 / sqrt(head_dim) */
  if (c->attn_scale_by_layer) /* as GPT-2: in float64 */
    scale = (scale > 0 ? scale : 1.0 / sqrt((double)hd)) / (double)(blk->layer + 1);
  f->attention(be, s->att, s->q, s->k, s->v, b->seq_start, b->seq_len, b->n_seq, b->max_len,
               c->n_heads, c->n_kv_heads, hd, ls_config_window(c, blk->layer), (float)scale,
               (float)c->attn_softcap);
  f->matmul(be, out, s->att, w->o, w->bo, T, Q, H);
}

static void glu_mlp(ls_backend_t *be, void *w_gate, void *w_up, void *w_down, void *b_gate,
                    void *b_up, void *b_down, float *gate, float *up, const float *xin,
                    float *out, int gelu, int T, int H, int I) {
  const ls_backend_iface_t *f = be->iface;
  f->matmul(be, gate, xin, w_gate, b_gate, T, H, I);
  f->matmul(be, up, xin, w_up, b_up, T, H, I);
  if (gelu) f->geglu(be, gate, up, (size_t)T * I);
  else f->swiglu(be, gate, up, (size_t)T * I);
  f->matmul(be, out, gate, w_down, b_down, T, I, H);
}

void ls_recipe_glu_mlp(const ls_block_t *blk, void *w_gate, void *w_up, void *w_down,
                       void *b_gate, void *b_up, void *b_down, float *gate, float *up,
                       const float *xin, float *out, int gelu) {
  glu_mlp(blk->be, w_gate, w_up, w_down, b_gate, b_up, b_down, gate, up, xin, out, gelu,
          blk->b->T, blk->cfg->hidden, blk->cfg->intermediate);
}

void ls_recipe_glu_mlp_n(const ls_block_t *blk, void *w_gate, void *w_up, void *w_down,
                         float *gate, float *up, const float *xin, float *out, int T, int I) {
  glu_mlp(blk->be, w_gate, w_up, w_down, NULL, NULL, NULL, gate, up, xin, out, 0, T,
          blk->cfg->hidden, I);
}

void ls_recipe_mlp(const ls_block_t *blk, void *w_up, void *b_up, void *w_down, void *b_down,
                   int gelu_approx, float *mid, const float *xin, float *out) {
  ls_backend_t *be = blk->be;
  const ls_backend_iface_t *f = be->iface;
  const int T = blk->b->T, H = blk->cfg->hidden, I = blk->cfg->intermediate;
  f->matmul(be, mid, xin, w_up, b_up, T, H, I);
  f->gelu(be, mid, (size_t)T * I, gelu_approx);
  f->matmul(be, out, mid, w_down, b_down, T, I, H);
}

void ls_recipe_layernorm(const ls_block_t *blk, float *out, const float *x, const void *w,
                         const void *b) {
  blk->be->iface->layernorm(blk->be, out, x, w, b, blk->b->T, blk->cfg->hidden,
                            (float)blk->cfg->rms_eps);
}

void ls_recipe_add(const ls_block_t *blk, ls_hook_t h, float *x, float *rows) {
  const int H = blk->cfg->hidden;
  if (blk->hook) blk->hook(blk->hook_ctx, h, rows, H);
  blk->be->iface->add(blk->be, x, rows, (size_t)blk->b->T * H);
}
