/* block.c: decoder block forward over a backend op table (see block.h). */
#include "block.h"

#include <stdio.h>

/* ---- tensor names and shapes ------------------------------------------------------ */
int ls_weight_spec(const ls_config_t *c, int layer, ls_weight_id_t id, char *name,
                   size_t cap, int64_t shape[2], int *ndim) {
  const int64_t H = c->hidden, I = c->intermediate, Q = (int64_t)c->n_heads * c->head_dim,
                KV = (int64_t)c->n_kv_heads * c->head_dim;
  static const char *names[LS_W_COUNT] = {
      "input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
      "self_attn.v_proj.weight", "self_attn.o_proj.weight", "self_attn.q_proj.bias",
      "self_attn.k_proj.bias", "self_attn.v_proj.bias", "self_attn.o_proj.bias",
      "post_attention_layernorm.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
      "mlp.down_proj.weight", "mlp.gate_proj.bias", "mlp.up_proj.bias", "mlp.down_proj.bias"};
  const int64_t dims[LS_W_COUNT][2] = {
      {H, 0}, {Q, H}, {KV, H}, {KV, H}, {H, Q}, {Q, 0}, {KV, 0}, {KV, 0}, {H, 0},
      {H, 0}, {I, H}, {I, H}, {H, I}, {I, 0}, {I, 0}, {H, 0}};
  int present = 1;
  if (id >= LS_W_BQ && id <= LS_W_BV) present = c->qkv_bias;
  if (id == LS_W_BO) present = c->o_bias;
  if (id >= LS_W_BGATE) present = c->mlp_bias;
  if (!present) return 0;
  snprintf(name, cap, "model.layers.%d.%s", layer, names[id]);
  shape[0] = dims[id][0];
  shape[1] = dims[id][1];
  *ndim = dims[id][1] ? 2 : 1;
  return 1;
}

/* ---- scratch ------------------------------------------------------------------------- */
size_t ls_block_scratch_floats(const ls_config_t *c, int T) {
  size_t H = c->hidden, I = c->intermediate, Q = (size_t)c->n_heads * c->head_dim,
         KV = (size_t)c->n_kv_heads * c->head_dim;
  /* xn, q, k, v, att, attn_out, gate, up, mlp_out; each rounded to 16 floats */
  size_t per = 3 * H + 2 * Q + 2 * KV + 2 * I;
  return (size_t)ls_round_rows(T) * per + 9 * 16;
}

void ls_block_scratch_carve(const ls_config_t *c, int T, float *base, ls_block_scratch_t *s) {
  size_t H = c->hidden, I = c->intermediate, Q = (size_t)c->n_heads * c->head_dim,
         KV = (size_t)c->n_kv_heads * c->head_dim;
  float *p = base;
  T = ls_round_rows(T);
#define TAKE(ptr, n)                           \
  do {                                         \
    (ptr) = p;                                 \
    p += (((size_t)T * (n)) + 15) / 16 * 16;   \
  } while (0)
  TAKE(s->xn, H);
  TAKE(s->q, Q);
  TAKE(s->k, KV);
  TAKE(s->v, KV);
  TAKE(s->att, Q);
  TAKE(s->attn_out, H);
  TAKE(s->gate, I);
  TAKE(s->up, I);
  TAKE(s->mlp_out, H);
#undef TAKE
}

/* ---- forward ---------------------------------------------------------------------------- */
void ls_block_forward(ls_backend_t *be, const ls_config_t *c, const ls_layer_weights_t *lw,
                      const float *cos_tab, const float *sin_tab, float *x,
                      const ls_batch_t *b, ls_block_scratch_t *s) {
  const ls_backend_iface_t *f = be->iface;
  void *const *w = lw->w;
  const int T = b->T, H = c->hidden, I = c->intermediate, hd = c->head_dim;
  const int Q = c->n_heads * hd, KV = c->n_kv_heads * hd;
  const float eps = (float)c->rms_eps;

  /* attention */
  f->rmsnorm(be, s->xn, x, w[LS_W_ATTN_NORM], T, H, eps);
  f->matmul(be, s->q, s->xn, w[LS_W_Q], w[LS_W_BQ], T, H, Q);
  f->matmul(be, s->k, s->xn, w[LS_W_K], w[LS_W_BK], T, H, KV);
  f->matmul(be, s->v, s->xn, w[LS_W_V], w[LS_W_BV], T, H, KV);
  f->rope(be, s->q, b->pos, cos_tab, sin_tab, T, c->n_heads, hd);
  f->rope(be, s->k, b->pos, cos_tab, sin_tab, T, c->n_kv_heads, hd);
  f->attention(be, s->att, s->q, s->k, s->v, b->seq_start, b->seq_len, b->n_seq, b->max_len,
               c->n_heads, c->n_kv_heads, hd, c->sliding_window);
  f->matmul(be, s->attn_out, s->att, w[LS_W_O], w[LS_W_BO], T, Q, H);
  f->add(be, x, s->attn_out, (size_t)T * H);

  /* MLP */
  f->rmsnorm(be, s->xn, x, w[LS_W_MLP_NORM], T, H, eps);
  f->matmul(be, s->gate, s->xn, w[LS_W_GATE], w[LS_W_BGATE], T, H, I);
  f->matmul(be, s->up, s->xn, w[LS_W_UP], w[LS_W_BUP], T, H, I);
  f->swiglu(be, s->gate, s->up, (size_t)T * I);
  f->matmul(be, s->mlp_out, s->gate, w[LS_W_DOWN], w[LS_W_BDOWN], T, I, H);
  f->add(be, x, s->mlp_out, (size_t)T * H);
}
