/* moe.c: the mixture-of-experts block the MoE families share (see family.h), and the
 * config keys they share.
 *
 * Routing runs on the host, in double, from the router logits (T x n_experts floats per
 * microbatch, copied back once): it is row-local (a row's experts and weights depend on
 * its own logits only) and one implementation serves every backend. Padding rows are not
 * routed (their mlp_out is 0; real rows never read them).
 *
 * Expert compute: the rows routed to expert e are gathered into one GEMM batch (gate, up,
 * SwiGLU, down), and the weighted results are scatter-added into the output, experts in
 * ascending order, so each row's sum is ((0 + w_a y_a) + w_b y_b) ... over its experts in
 * index order whatever the batch. A GEMM row's result must not depend on where it sits in
 * the batch either: the CPU's sgemm gives a row the same result only at the same position
 * modulo the backend's row alignment (ops_cpu.c), so row r of the microbatch is placed at
 * a position p = r (mod row_align) of the gathered batch: the rows of each residue class
 * take every row_align-th slot, and the slots no row takes are gaps (idx -1) whose
 * results are never used. With row_align 1 (the GPU) there are no gaps. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "family.h"
#include "ls_common.h"

/* ---- scratch ------------------------------------------------------------------------------- */
enum { M_LOGITS, M_XE, M_GE, M_UE, M_YE, M_IDX, M_W, M_SG, M_SU, M_SH, M_SHG };

void ls_moe_scratch_widths(const ls_config_t *c, size_t *w) {
  const size_t H = c->hidden, E = c->n_experts, I = c->moe_intermediate,
               S = c->shared_intermediate;
  /* idx / w: every expert's padded list, at most top_k * LS_ROW_PAD slots per row */
  const size_t K = (size_t)c->top_k * LS_ROW_PAD;
  const size_t v[LS_MOE_N_SCRATCH] = {E, H, I, I, H, K, K, S, S, S ? H : 0, S ? 1 : 0};
  memcpy(w, v, sizeof v);
}

/* host: logits (T, E), each row's experts and weights (T, k), per expert counts and list
 * offsets (E + 1), the rows of each expert in ascending order with their weights (T k),
 * the padded lists idx / w (T k LS_ROW_PAD), the shared gate (T) */
typedef struct {
  float *logits, *sel_w, *w, *sh_w, *bw, *bias;
  int32_t *sel, *count, *off, *idx, *ident, *fill, *brow;
} moe_host_t;

#define N_HOST 13
static size_t host_layout(const ls_config_t *c, int T_max, void *base, moe_host_t *h) {
  const size_t T = (size_t)ls_round_rows(T_max), E = (size_t)c->n_experts, k = (size_t)c->top_k;
  const size_t K = T * k * LS_ROW_PAD;
  const size_t n[N_HOST] = {T * E, T * k, K, T, T * k, T * k, E + 1, E + 1, K, T,
                            (size_t)LS_ROW_PAD, T * k, E};
  void **dst[N_HOST] = {(void **)&h->logits, (void **)&h->sel_w, (void **)&h->w,
                        (void **)&h->sh_w,   (void **)&h->bw,    (void **)&h->sel,
                        (void **)&h->count,  (void **)&h->off,   (void **)&h->idx,
                        (void **)&h->ident,  (void **)&h->fill,  (void **)&h->brow,
                        (void **)&h->bias};
  size_t total = 0;
  for (int i = 0; i < N_HOST; i++) {
    if (base) *dst[i] = (char *)base + total;
    total += (n[i] * 4 + 63) / 64 * 64;
  }
  return total;
}

size_t ls_moe_host_bytes(const ls_config_t *c, int T_max) {
  moe_host_t h;
  return host_layout(c, T_max, NULL, &h);
}

/* ---- routing (host, double) ----------------------------------------------------------------- */
/* Row t's top_k experts and their weights, in double, as transformers' routers:
 *   score = softmax(logits) (Mixtral, Qwen-MoE, OLMoE, DeepSeek-V2) or sigmoid(logits)
 *   (DeepSeek-V3); the choice by score + e_score_correction_bias (V3), only among the
 *   topk_group best groups when n_group > 1 (a group's score: its best choice score, or
 *   the sum of its two best); ties go to the lower index. The weights are the chosen
 *   scores, renormalised when norm_topk_prob (V3: + 1e-20), times routed_scaling_factor. */
static void route_row(const ls_config_t *c, const float *logit, const float *bias, int32_t *sel,
                      float *w) {
  const int E = c->n_experts, k = c->top_k;
  double score[E], choice[E], mx = -INFINITY, sum = 0;
  if (c->router_sigmoid) {
    for (int e = 0; e < E; e++) score[e] = 1.0 / (1.0 + exp(-(double)logit[e]));
  } else {
    for (int e = 0; e < E; e++) mx = fmax(mx, (double)logit[e]);
    for (int e = 0; e < E; e++) sum += exp((double)logit[e] - mx);
    for (int e = 0; e < E; e++) score[e] = exp((double)logit[e] - mx) / sum;
  }
  for (int e = 0; e < E; e++) choice[e] = score[e] + (bias ? (double)bias[e] : 0.0);
  if (c->n_group > 1) {
    const int G = c->n_group, per = E / G;
    double gs[G];
    unsigned char keep[G];
    for (int g = 0; g < G; g++) {
      double b1 = -INFINITY, b2 = -INFINITY;
      for (int e = g * per; e < (g + 1) * per; e++) {
        if (choice[e] > b1) { b2 = b1; b1 = choice[e]; }
        else if (choice[e] > b2) b2 = choice[e];
      }
      gs[g] = c->group_top2 ? b1 + b2 : b1;
      keep[g] = 0;
    }
    for (int j = 0; j < c->topk_group; j++) {
      int best = -1;
      for (int g = 0; g < G; g++)
        if (!keep[g] && (best < 0 || gs[g] > gs[best])) best = g;
      keep[best] = 1;
    }
    for (int e = 0; e < E; e++)
      if (!keep[e / per]) choice[e] = -INFINITY;
  }
  double norm = 0;
  for (int j = 0; j < k; j++) { /* k is small: selection by repeated scans */
    int best = -1;
    for (int e = 0; e < E; e++) {
      int taken = 0;
      for (int i = 0; i < j; i++) taken |= sel[i] == e;
      if (!taken && (best < 0 || choice[e] > choice[best])) best = e;
    }
    sel[j] = best;
    norm += score[best];
  }
  if (c->router_sigmoid) norm += 1e-20;
  const double scale = c->routed_scale > 0 ? c->routed_scale : 1.0;
  for (int j = 0; j < k; j++)
    w[j] = (float)((c->norm_topk_prob ? score[sel[j]] / norm : score[sel[j]]) * scale);
}

/* Real rows of the batch routed; each expert's padded list (ascending rows, row r at a
 * position = r mod align) in h->idx / h->w from h->off[e]; the real rows, ascending, in
 * h->ident (*real of them). Returns the lists' total. */
static int build_lists(const ls_block_t *blk, moe_host_t *h, const float *bias, int align,
                       int *real) {
  const ls_config_t *c = blk->cfg;
  const ls_batch_t *b = blk->b;
  const int E = c->n_experts, k = c->top_k;
  memset(h->count, 0, sizeof(int32_t) * (size_t)(E + 1));
  int n_real = 0;
  for (int s = 0; s < b->n_seq; s++) {
    const int r0 = b->seq_start_h[s];
    const int r1 = r0 + (b->seq_len_h ? b->seq_len_h[s] : b->seq_start_h[s + 1] - r0);
    for (int t = r0; t < r1; t++, n_real++) {
      h->ident[n_real] = t; /* the real rows, ascending */
      route_row(c, h->logits + (size_t)t * E, bias, h->sel + (size_t)t * k,
                h->sel_w + (size_t)t * k);
      for (int j = 0; j < k; j++) h->count[h->sel[(size_t)t * k + j]]++;
    }
  }
  if (blk->expert_rows)
    for (int e = 0; e < E; e++) blk->expert_rows[e] += h->count[e];
  /* bucket the (row, weight) pairs by expert, rows ascending (h->off: bucket starts) */
  h->off[0] = 0;
  for (int e = 0; e < E; e++) h->off[e + 1] = h->off[e] + h->count[e];
  memset(h->count, 0, sizeof(int32_t) * (size_t)E); /* rows placed in each bucket so far */
  for (int i = 0; i < n_real; i++) {
    const int t = h->ident[i];
    for (int j = 0; j < k; j++) {
      const int e = h->sel[(size_t)t * k + j], at = h->off[e] + h->count[e]++;
      h->brow[at] = t;
      h->bw[at] = h->sel_w[(size_t)t * k + j];
    }
  }
  /* each bucket laid out by residue class: row r of class r % align at the next free
   * position of that class; the slots no row takes are gaps */
  int total = 0;
  for (int e = 0; e < E; e++) {
    const int b0 = h->off[e], b1 = b0 + h->count[e];
    h->off[e] = total; /* now: the padded list's start (bucket e's rows are read first) */
    memset(h->fill, 0, sizeof(int32_t) * (size_t)align);
    int longest = 0;
    for (int i = b0; i < b1; i++) {
      const int t = h->brow[i], cls = t % align, p = h->fill[cls]++ * align + cls;
      for (int g = longest; g <= p; g++) { h->idx[total + g] = -1; h->w[total + g] = 0; }
      if (p + 1 > longest) longest = p + 1;
      h->idx[total + p] = t;
      h->w[total + p] = h->bw[i];
    }
    total += longest;
  }
  h->off[E] = total;
  *real = n_real;
  return total;
}

/* ---- the block -------------------------------------------------------------------------------- */
void ls_recipe_moe(const ls_block_t *blk, const ls_moe_weights_t *w, float *const *s,
                   const float *xin, float *out) {
  ls_backend_t *be = blk->be;
  const ls_backend_iface_t *f = be->iface;
  const ls_config_t *c = blk->cfg;
  const int T = blk->b->T, H = c->hidden, E = c->n_experts, I = c->moe_intermediate;
  moe_host_t h;
  host_layout(c, blk->T_max, blk->host, &h);
  f->matmul(be, s[M_LOGITS], xin, w->router, NULL, T, H, E);
  if (blk->hook) blk->hook(blk->hook_ctx, LS_HOOK_ROUTER_LOGITS, s[M_LOGITS], E);
  f->to_host(be, h.logits, s[M_LOGITS], sizeof(float) * (size_t)T * E);
  if (w->score_bias) f->to_host(be, h.bias, w->score_bias, sizeof(float) * (size_t)E);
  if (f->sync) f->sync(be); /* a failure is reported by the engine's sync after the layer */
  const int align = be->row_align > 0 && be->row_align <= LS_ROW_PAD ? be->row_align : 1;
  int n_real = 0;
  const int total = build_lists(blk, &h, w->score_bias ? h.bias : NULL, align, &n_real);
  int32_t *idx = (int32_t *)s[M_IDX];
  float *wts = s[M_W];
  f->to_device(be, idx, h.idx, sizeof(int32_t) * (size_t)total);
  f->to_device(be, wts, h.w, sizeof(float) * (size_t)total);
  f->zero(be, out, (size_t)T * H);
  for (int e = 0; e < E; e++) {
    const int n = h.off[e + 1] - h.off[e];
    if (n == 0) continue;
    void *const *x = w->experts + 3 * e;
    f->gather(be, s[M_XE], xin, idx + h.off[e], n, H);
    ls_recipe_glu_mlp_n(blk, x[0], x[1], x[2], s[M_GE], s[M_UE], s[M_XE], s[M_YE], n, I);
    f->scatter_add(be, out, s[M_YE], idx + h.off[e], wts + h.off[e], n, H);
  }
  if (!w->sh_gate) return;
  /* the shared expert on every row, after the routed ones */
  ls_recipe_glu_mlp_n(blk, w->sh_gate, w->sh_up, w->sh_down, s[M_SG], s[M_SU], xin, s[M_SH], T,
                      c->shared_intermediate);
  /* added to the real rows (in place: row t to row t, padding rows skipped), scaled by
   * sigmoid(gate(x)) when the model gates it */
  if (w->sh_router) {
    f->matmul(be, s[M_SHG], xin, w->sh_router, NULL, T, H, 1);
    f->to_host(be, h.sh_w, s[M_SHG], sizeof(float) * (size_t)T);
    if (f->sync) f->sync(be);
  }
  for (int t = 0; t < T; t++) h.idx[t] = -1;
  for (int i = 0; i < n_real; i++) {
    const int t = h.ident[i];
    h.idx[t] = t;
    h.w[t] = w->sh_router ? (float)(1.0 / (1.0 + exp(-(double)h.sh_w[t]))) : 1.0f;
  }
  f->to_device(be, idx, h.idx, sizeof(int32_t) * (size_t)T);
  f->to_device(be, wts, h.w, sizeof(float) * (size_t)T);
  f->scatter_add(be, out, s[M_SH], idx, wts, T, H);
}

/* ---- config.json --------------------------------------------------------------------------------- */
int ls_cfg_moe(const cJSON *root, const char *path, const char *n_key, const char *i_key,
               int norm_def, ls_config_t *cfg) {
  /* transformers 5 writes some families' expert count as num_local_experts */
  if (!ls_cfg_get(root, n_key) && ls_cfg_get(root, "num_local_experts")) n_key = "num_local_experts";
  LS_CHECK(ls_cfg_int(root, n_key, 1, 0, 1, 4096, path, &cfg->n_experts));
  LS_CHECK(ls_cfg_int(root, "num_experts_per_tok", 1, 0, 1, cfg->n_experts, path, &cfg->top_k));
  if (i_key) LS_CHECK(ls_cfg_int(root, i_key, 1, 0, 1, 1 << 20, path, &cfg->moe_intermediate));
  else cfg->moe_intermediate = cfg->intermediate;
  LS_CHECK(ls_cfg_bool(root, "norm_topk_prob", norm_def, path, &cfg->norm_topk_prob));
  if (cfg->n_layers > LS_MAX_TYPED_LAYERS) {
    ls_error("%s: num_hidden_layers %d: MoE models of more than %d layers are not supported",
             path, cfg->n_layers, LS_MAX_TYPED_LAYERS);
    return LS_ERR;
  }
  int step = 1;
  LS_CHECK(ls_cfg_int(root, "decoder_sparse_step", 0, 1, 1, 1 << 20, path, &step));
  for (int L = 0; L < cfg->n_layers; L++) cfg->layer_moe[L] = (L + 1) % step == 0;
  const cJSON *only = ls_cfg_get(root, "mlp_only_layers");
  if (only && !cJSON_IsArray(only)) {
    ls_error("%s: mlp_only_layers must be a list of layer indices", path);
    return LS_ERR;
  }
  const cJSON *e;
  cJSON_ArrayForEach(e, only) {
    if (!cJSON_IsNumber(e) || e->valuedouble != (double)(int)e->valuedouble || e->valueint < 0 ||
        e->valueint >= cfg->n_layers) {
      ls_error("%s: mlp_only_layers entries must be layer indices in 0..%d", path,
               cfg->n_layers - 1);
      return LS_ERR;
    }
    cfg->layer_moe[e->valueint] = 0;
  }
  return LS_OK;
}
