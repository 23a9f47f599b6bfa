/* sweep.c: the layer-outer sweep (see sweep.h and shared/DESIGN.md): buffers, the
 * embedding, the layer loop, the final norm and the entry point. The plan, the output
 * file, progress/summary and checkpoints/resume live in plan.c, output.c, report.c
 * and resume.c (shared state: sweep_internal.h).
 *
 * Every rank holds a contiguous, token-balanced shard of the prompts and its
 * residual stream (T_rank, H). Weights come through the pipeline of weights.c (rank
 * 0 reads, everyone receives by broadcast); each layer is converted once and the
 * whole shard is streamed through it in packed microbatches. Pooled hook outputs
 * are written collectively into one HDF5 file at the end of each layer. */
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sys/stat.h>

#include "guard.h"
#include "http.h"
#include "host_blas.h"
#include "registry.h"
#include "sweep_internal.h"


void ls_run_opts_default(ls_run_opts_t *o) {
  memset(o, 0, sizeof *o);
  o->hooks = "residual_post";
  o->layers = "all";
  o->pool = "last_token";
  o->http_cache_max = -1;
  o->backend = "auto";
  o->dtype = "auto";
  o->microbatch_tokens = 4096;
  o->progress = -1;
  o->overlap_writes = 1;
  o->out_dtype = "float32";
  o->stall_timeout = -1;
}

/* ---- buffers --------------------------------------------------------------------------------- */
/* A backend copy of a host index array (the host array itself when the backend's
 * memory is host memory). */
static void *index_copy(sweep_t *s, const void *host, size_t bytes, const char *what) {
  if (s->be->host_visible) return (void *)host;
  void *d = s->be->iface->alloc(s->be, bytes ? bytes : 4, what);
  if (d && bytes && s->be->iface->to_device(s->be, d, host, bytes)) {
    s->be->iface->free(s->be, d);
    return NULL;
  }
  return d;
}

/* The spilled residual stream (plan.c decided): the ring's slots (page-locked host memory
 * on a device backend, 4 KiB-aligned for O_DIRECT), each microbatch's first stored row,
 * and this rank's spill file. */
static int open_spill(sweep_t *s) {
  const ls_shard_t *sh = &s->sh;
  ls_bufs_t *bf = &s->buf;
  const size_t row = sizeof(float) * (size_t)s->cfg->hidden;
  bf->spill_rows = ls_malloc(sizeof(int64_t) * (size_t)(sh->n_mb + 1), "spill layout");
  if (!bf->spill_rows) return LS_ERR;
  for (int k = 0; k <= sh->n_mb; k++) bf->spill_rows[k] = sh->soff[sh->mb_p[k] - sh->p0];
  const size_t slot = ls_spill_slot_bytes(sh->n_mb, bf->spill_rows, row);
  for (int i = 0; i < LS_SPILL_SLOTS; i++) {
    bf->spill_slot[i] = s->be->host_visible ? ls_aligned_alloc_to(slot, LS_SPILL_ALIGN, "spill slot")
                                            : s->be->iface->host_alloc(s->be, slot, "spill slot");
    if (!bf->spill_slot[i]) return LS_ERR;
    memset(bf->spill_slot[i], 0, slot); /* a region's tail past its rows is written too */
  }
  bf->spill = ls_spill_open(bf->spill_dir, s->rank, sh->n_mb, bf->spill_rows, row,
                            bf->spill_slot, slot);
  if (bf->spill && s->rank == 0) {
    ls_spill_stats_t st;
    ls_spill_stats(bf->spill, &st);
    ls_info("residual stream spilled to %s (rank 0: %.4g GiB, %s)", bf->spill_dir,
            (double)st.file_bytes / 1073741824.0,
            st.direct ? "O_DIRECT" : "buffered, dropped from the page cache");
  }
  return bf->spill ? LS_OK : LS_ERR;
}

/* Every buffer of the sweep, once: nothing is allocated in the layer loop. */
static int alloc_buffers(sweep_t *s) {
  const ls_config_t *c = s->cfg;
  const ls_shard_t *sh = &s->sh;
  ls_bufs_t *bf = &s->buf;
  ls_backend_t *be = s->be;
  const ls_backend_iface_t *f = be->iface;
  const size_t H = (size_t)c->hidden;
  /* LS_ROW_PAD rows of slack after the last row: a block whose GEMM input is the residual
   * stream itself (OLMo-2 has no pre-norm) reads up to ls_round_rows(T) rows of it, the
   * padding rows past the shard's end included (zeroed below; their results are never
   * used) */
  const size_t resid_rows = (size_t)max64(sh->n_store, 1) + LS_ROW_PAD;
  const size_t resid_bytes = sizeof(float) * resid_rows * H;
  int rc = LS_OK;
  if (bf->spilled) {
    rc = open_spill(s);
  } else if (bf->x_on_host) {
    bf->x = f->host_alloc(be, resid_bytes, "residual stream (host)");
  } else {
    bf->x = f->alloc(be, resid_bytes, "residual stream");
  }
  if (bf->x_on_host || sh->compact || bf->spilled) { /* the block works on a padded copy of each microbatch */
    bf->xd = f->alloc(be, sizeof(float) * ((size_t)ls_round_rows(sh->T_max) + LS_ROW_PAD) * H,
                      "microbatch staging");
    if (!bf->xd) rc = LS_ERR;
  }
  if (bf->x && be->host_visible)
    memset(bf->x + (size_t)sh->n_store * H, 0, sizeof(float) * (resid_rows - (size_t)sh->n_store) * H);
  bf->scratch = f->alloc(be, sizeof(float) * ls_family_scratch_floats(s->fam, c, sh->T_max), "block scratch");
  bf->wbuf_bytes = ls_sw_layer_weight_bytes(&s->model, be);
  const int preload = s->o->preload_weights;
  bf->wbuf = f->alloc(be, bf->wbuf_bytes * (size_t)(preload ? s->sel.n_run : 1),
                      preload ? "preloaded weights of every layer" : "layer weights");
  bf->lw = ls_calloc((size_t)s->model.n_slots, sizeof(void *), "layer table");
  if (preload)
    bf->lw_all = ls_calloc((size_t)c->n_layers * (size_t)s->model.n_slots, sizeof(void *),
                           "layer table");
  bf->final_norm_w = f->alloc(be, sizeof(float) * H, "final norm");
  const int has_bias = s->model.glob[LS_G_FINAL_BIAS].spec.present;
  if (has_bias) bf->final_bias_w = f->alloc(be, sizeof(float) * H, "final norm bias");
  if ((!bf->x && !bf->spill) || !bf->scratch || !bf->wbuf || !bf->lw || (preload && !bf->lw_all) ||
      !bf->final_norm_w || (has_bias && !bf->final_bias_w))
    rc = LS_ERR;
  if (s->steer.n > 0 && rc == LS_OK) { /* --steer: the vectors, a row list */
    s->steer_v = ls_calloc((size_t)s->steer.n, sizeof(float *), "steering");
    s->steer_idx = f->alloc(be, sizeof(int32_t) * (size_t)ls_round_rows(sh->T_max), "steering");
    s->steer_idx_h = ls_malloc(sizeof(int32_t) * (size_t)ls_round_rows(sh->T_max), "steering");
    if (!s->steer_v || !s->steer_idx || !s->steer_idx_h) rc = LS_ERR;
    for (int k = 0; k < s->steer.n && rc == LS_OK; k++) {
      s->steer_v[k] = f->alloc(be, sizeof(float) * H, "steering vector");
      if (!s->steer_v[k] || f->to_device(be, s->steer_v[k], s->steer.e[k].v, sizeof(float) * H))
        rc = LS_ERR;
    }
  }
  if (s->fam->host_scratch_bytes && rc == LS_OK) {
    bf->host_scratch = ls_aligned_alloc(s->fam->host_scratch_bytes(c, sh->T_max), "MoE routing");
    if (!bf->host_scratch) rc = LS_ERR;
  }
  for (int h = 0; h < LS_HOOK_COUNT && rc == LS_OK; h++) {
    if (!((s->sel.hooks >> h) & 1)) continue;
    const size_t bytes = sizeof(float) * (size_t)max64(sh->out_rows, 1) * (size_t)ls_sw_hook_width(s, h);
    bf->out[h] = f->alloc(be, bytes, "hook output");
    bf->out_host[h] = be->host_visible ? bf->out[h] : f->host_alloc(be, bytes, "hook output (host)");
    if (!bf->out[h] || !bf->out_host[h]) rc = LS_ERR;
    /* overlapped writes: the writer's copy (swapped with out_host, and out on a host
     * backend: allocated as those are) */
    if (s->o->overlap_writes && !s->o->no_store && ls_hook_layered(h) && rc == LS_OK) {
      bf->out_alt[h] = be->host_visible ? f->alloc(be, bytes, "hook output (writer)")
                                        : f->host_alloc(be, bytes, "hook output (writer)");
      if (!bf->out_alt[h]) rc = LS_ERR;
    }
  }
  if (rc == LS_OK) {
    const size_t rope = sizeof(float) * (size_t)sh->max_len * (size_t)(c->rope_dim > 0 ? c->rope_dim / 2 : 1);
    const size_t nseq = sizeof(int32_t) * (size_t)(2 * sh->n_prompts + 2);
    bf->seq_start_d = index_copy(s, sh->seq_start, nseq, "microbatches");
    bf->seq_len_d = index_copy(s, sh->seq_len, nseq, "microbatches");
    bf->pos_d = index_copy(s, sh->pos, sizeof(int32_t) * (size_t)max64(sh->n_rows, 1), "positions");
    for (int k = 0; k < 2 && rc == LS_OK; k++) {
      bf->cos_d[k] = index_copy(s, bf->cos_tab[k], rope, "rope table");
      bf->sin_d[k] = index_copy(s, bf->sin_tab[k], rope, "rope table");
      if (!bf->cos_d[k] || !bf->sin_d[k]) rc = LS_ERR;
    }
    if (!bf->seq_start_d || !bf->seq_len_d || !bf->pos_d) rc = LS_ERR;
  }
  if (rc == LS_OK && f->reserve) rc = f->reserve(be, sh->T_max, ls_sw_max_gemm_in(&s->model));
  return rc;
}

/* Layer L in backend be's format at base (wbuf_bytes), converted from the raw
 * checkpoint bytes (host memory, or backend memory when the layer came by a device
 * broadcast); w (n_slots) points into it. */
int ls_sw_convert_layer(sweep_t *s, ls_backend_t *be, int layer, const void *raw,
                        int raw_on_device, void *base, void **w) {
  const ls_model_t *m = &s->model;
  ls_sw_carve_layer(m, be, layer, base, w);
  for (int i = 0; i < m->n_slots; i++) {
    const ls_wslot_t *ws = ls_model_slot(m, layer, i);
    if (!ws->spec.present) continue;
    const char *src = (const char *)raw + ws->offset;
    if (ls_dtype_is_fp8(ws->dtype)) { /* dequantized at load: scales packed after the weight */
      if (be->iface->load_weight_fp8(be, w[i], src,
                                        (const float *)((const char *)raw + ws->scale_offset),
                                        ws->dtype, ws->spec.shape[0], ws->spec.shape[1],
                                        s->cfg->fp8_block[0], s->cfg->fp8_block[1],
                                        raw_on_device))
        return LS_ERR;
      continue;
    }
    if (be->iface->load_weight(be, w[i], src, ws->dtype, (size_t)ws->numel,
                                  ws->spec.kind == LS_WK_MATRIX, raw_on_device))
      return LS_ERR;
    if (ws->spec.kind == LS_WK_NORM_P1) be->iface->shift(be, w[i], 1.0f, (size_t)ws->numel);
  }
  return LS_OK;
}

/* Rows [row0, row0 + n) of the residual stream <- host rows src (float32). */
static int put_rows(sweep_t *s, int64_t row0, const float *src, int64_t n) {
  if (s->buf.spill) return ls_spill_put(s->buf.spill, row0, n, src);
  const size_t H = (size_t)s->cfg->hidden, bytes = sizeof(float) * H * (size_t)n;
  float *dst = s->buf.x + (size_t)row0 * H;
  if (s->buf.x_on_host) {
    memcpy(dst, src, bytes);
    return LS_OK;
  }
  return s->be->iface->to_device(s->be, dst, src, bytes);
}

/* ---- embeddings: rank 0 reads only the distinct rows the world needs --------------------------- */
static int cmp_i32(const void *a, const void *b) {
  int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
  return (x > y) - (x < y);
}

/* The distinct ids of tok[0..n), sorted (malloc'd; NULL after a message). */
static int32_t *distinct_ids(const int32_t *tok, int64_t n, int64_t *n_out) {
  int32_t *v = ls_malloc(sizeof(int32_t) * (size_t)max64(n, 1), "token ids");
  *n_out = 0;
  if (!v || n == 0) return v;
  memcpy(v, tok, sizeof(int32_t) * (size_t)n);
  qsort(v, (size_t)n, sizeof *v, cmp_i32);
  int64_t m = 1;
  for (int64_t i = 1; i < n; i++)
    if (v[i] != v[m - 1]) v[m++] = v[i];
  *n_out = m;
  return v;
}

/* Rank 0: the rows of rank r's distinct ids (sorted, as that rank computes them), packed
 * from the world's rows (uni: the world's distinct ids; mark: n_uni scratch bytes, left
 * zero). Returns the row count; pack NULL only counts. */
static int64_t rank_rows(const sweep_t *s, int r, const int32_t *uni, int64_t n_uni,
                         const char *rows, size_t row, unsigned char *mark, char *pack) {
  const ls_dataset_t *d = &s->data;
  const int64_t t0 = d->offsets[s->sh.bounds[r]], t1 = d->offsets[s->sh.bounds[r + 1]];
  for (int64_t t = t0; t < t1; t++) {
    const int32_t *hit = bsearch(&d->tokens[t], uni, (size_t)n_uni, sizeof(int32_t), cmp_i32);
    mark[hit - uni] = 1;
  }
  int64_t k = 0;
  for (int64_t i = 0; i < n_uni; i++) {
    if (!mark[i]) continue;
    if (pack) memcpy(pack + (size_t)k * row, rows + (size_t)i * row, row);
    mark[i] = 0;
    k++;
  }
  return k;
}

/* Learned position embeddings (GPT-2): rows 0 .. (longest prompt) - 1, float32, on every
 * rank (rank 0 reads, everyone receives); NULL after an error, on every rank. */
static float *position_rows(sweep_t *s) {
  const ls_dataset_t *d = &s->data;
  const ls_wslot_t *g = &s->model.glob[LS_G_POS_EMBED];
  const size_t H = (size_t)s->cfg->hidden, row = H * ls_dtype_size(g->dtype);
  int64_t n = 1;
  for (int64_t i = 0; i < d->n; i++) n = max64(n, ls_dataset_len(d, i));
  int32_t *ids = ls_malloc(sizeof(int32_t) * (size_t)n, "position ids");
  char *raw = ls_malloc(row * (size_t)n, "position embeddings");
  float *tab = ls_malloc(sizeof(float) * H * (size_t)n, "position embeddings");
  int rc = ids && raw && tab ? LS_OK : LS_ERR;
  if (rc == LS_OK && n > g->spec.shape[0]) { /* the dataset reader caps prompts at max_pos */
    ls_error("a prompt has %lld tokens but the model has %lld learned positions",
             (long long)n, (long long)g->spec.shape[0]);
    rc = LS_ERR;
  }
  for (int64_t i = 0; i < n && rc == LS_OK; i++) ids[i] = (int32_t)i;
  if (rc == LS_OK && s->rank == 0) rc = ls_model_read_rows(&s->model, LS_G_POS_EMBED, ids, n, raw);
  if (ls_agree(rc, s->comm) == LS_OK) {
    ls_bcast_bytes(raw, row * (size_t)n, 0, s->comm);
    ls_convert_to_f32(tab, raw, g->dtype, H * (size_t)n);
  } else {
    free(tab);
    tab = NULL;
  }
  free(ids);
  free(raw);
  return tab;
}

/* The residual stream <- the embedding rows of this rank's tokens. Every rank holds the
 * whole dataset, so rank 0 knows which distinct ids each rank needs: it reads the
 * world's distinct rows once and sends each rank its rows (a scatter done as one
 * message per rank, so that rank 0 holds the world's rows plus one rank's, never every
 * rank's at once). */
static int embed(sweep_t *s) {
  double t0 = ls_now();
  const ls_shard_t *sh = &s->sh;
  const ls_dataset_t *d = &s->data;
  const size_t H = (size_t)s->cfg->hidden,
               row = H * ls_dtype_size(s->model.glob[LS_G_EMBED].dtype);
  int64_t n_mine = 0, n_uni = 0;
  int32_t *mine = distinct_ids(d->tokens + sh->t0, sh->n_tokens, &n_mine);
  char *myrows = ls_malloc(row * (size_t)max64(n_mine, 1), "embedding rows");
  int32_t *uni = NULL;
  char *rows = NULL, *pack = NULL;
  unsigned char *mark = NULL;
  float *table = NULL, *xh = NULL, *pos_tab = NULL;
  int rc = mine && myrows ? LS_OK : LS_ERR;
  MPI_Datatype row_t;
  MPI_Type_contiguous((int)row, MPI_BYTE, &row_t);
  MPI_Type_commit(&row_t);
  int64_t max_count = 0;
  if (s->rank == 0 && rc == LS_OK) {
    uni = distinct_ids(d->tokens, d->n_tokens, &n_uni);
    rows = ls_malloc(row * (size_t)max64(n_uni, 1), "embedding rows");
    mark = ls_calloc((size_t)max64(n_uni, 1), 1, "embedding rows");
    rc = uni && rows && mark ? LS_OK : LS_ERR;
    if (rc == LS_OK) {
      uint64_t before = s->model.st.bytes_read;
      rc = ls_model_read_rows(&s->model, LS_G_EMBED, uni, n_uni, rows);
      s->prof.embed_bytes = s->model.st.bytes_read - before;
    }
    for (int r = 1; r < s->size && rc == LS_OK; r++)
      max_count = max64(max_count, rank_rows(s, r, uni, n_uni, rows, row, mark, NULL));
    if (rc == LS_OK && !(pack = ls_malloc(row * (size_t)max64(max_count, 1), "embedding rows")))
      rc = LS_ERR;
  }
  if (ls_agree(rc, s->comm)) goto done;
  if (s->rank == 0) {
    rank_rows(s, 0, uni, n_uni, rows, row, mark, myrows);
    for (int r = 1; r < s->size; r++) {
      int64_t k = rank_rows(s, r, uni, n_uni, rows, row, mark, pack);
      MPI_Send(pack, (int)k, row_t, r, 7, s->comm);
    }
  } else {
    MPI_Recv(myrows, (int)n_mine, row_t, 0, 7, s->comm, MPI_STATUS_IGNORE);
  }
  /* residual stream = embedding rows of this rank's tokens (float32), staged through a
   * bounded host buffer (never a second copy of the whole stream) */
  const int64_t chunk_rows = max64(1, ((int64_t)64 << 20) / (int64_t)(sizeof(float) * H));
  table = ls_malloc(sizeof(float) * H * (size_t)max64(n_mine, 1), "embedding");
  xh = ls_malloc(sizeof(float) * H * (size_t)chunk_rows, "embedding staging");
  rc = table && xh ? LS_OK : LS_ERR;
  if (rc == LS_OK)
    ls_convert_to_f32(table, myrows, s->model.glob[LS_G_EMBED].dtype, H * (size_t)n_mine);
  const float scale = s->fam->embed_scale ? s->fam->embed_scale(s->cfg) : 1.0f;
  if (rc == LS_OK && scale != 1.0f)
    for (size_t i = 0; i < H * (size_t)n_mine; i++) table[i] *= scale;
  if (ls_agree(rc, s->comm) || (s->model.glob[LS_G_POS_EMBED].spec.present &&
                                !(pos_tab = position_rows(s)))) {
    rc = LS_ERR;
    goto done;
  }
  int64_t staged0 = 0, staged = 0; /* rows [staged0, staged0 + staged) are in xh */
  for (int64_t i = 0; i < sh->n_prompts && rc == LS_OK; i++) {
    const int64_t len = ls_dataset_len(d, sh->p0 + i);
    const int32_t *tok = d->tokens + d->offsets[sh->p0 + i];
    /* padding rows repeat the prompt's last token (finite, never seen by real rows);
     * compact storage holds none */
    for (int64_t r = sh->soff[i]; r < sh->soff[i + 1] && rc == LS_OK; r++) {
      int64_t t = r - sh->soff[i] < len ? r - sh->soff[i] : len - 1;
      int32_t *hit = bsearch(&tok[t], mine, (size_t)n_mine, sizeof(int32_t), cmp_i32);
      float *xr = xh + (size_t)staged * H;
      memcpy(xr, table + (size_t)(hit - mine) * H, sizeof(float) * H);
      if (pos_tab) /* token + position, as transformers adds them (float32) */
        for (size_t j = 0; j < H; j++) xr[j] += pos_tab[(size_t)t * H + j];
      if (++staged == chunk_rows || r + 1 == sh->n_store) {
        rc = put_rows(s, staged0, xh, staged);
        staged0 += staged;
        staged = 0;
      }
    }
  }
  rc = ls_agree(rc, s->comm);
done:
  MPI_Type_free(&row_t);
  free(mine); free(myrows); free(uni); free(rows); free(pack); free(mark); free(table); free(xh);
  free(pos_tab);
  s->prof.t_embed = ls_now() - t0;
  return rc;
}

/* The final norm's weight (and bias): rank 0 reads, everyone receives. */
static int load_global_vector(sweep_t *s, int g, float *dst) {
  const ls_wslot_t *w = &s->model.glob[g];
  const size_t H = (size_t)s->cfg->hidden, bytes = H * ls_dtype_size(w->dtype);
  char *raw = ls_malloc(bytes, "final norm");
  int rc = raw ? LS_OK : LS_ERR;
  if (rc == LS_OK && s->rank == 0) rc = ls_model_read_global(&s->model, g, raw);
  if (ls_agree(rc, s->comm) == LS_OK) {
    ls_bcast_bytes(raw, bytes, 0, s->comm);
    rc = s->be->iface->load_weight(s->be, dst, raw, w->dtype, H, 0, 0);
    if (rc == LS_OK && w->spec.kind == LS_WK_NORM_P1) s->be->iface->shift(s->be, dst, 1.0f, H);
    if (rc == LS_OK && s->be->iface->sync) rc = s->be->iface->sync(s->be);
  } else {
    rc = LS_ERR;
  }
  free(raw);
  return ls_agree(rc, s->comm); /* the backend's part is local */
}

static int load_final_norm(sweep_t *s) {
  if (load_global_vector(s, LS_G_FINAL_NORM, s->buf.final_norm_w)) return LS_ERR;
  return s->buf.final_bias_w ? load_global_vector(s, LS_G_FINAL_BIAS, s->buf.final_bias_w) : LS_OK;
}

/* ---- the layer loop ---------------------------------------------------------------------------------- */
static void capture(sweep_t *s, ls_hook_t h, const float *src, int mb, const ls_batch_t *b) {
  const size_t H = (size_t)ls_sw_hook_width(s, h);
  int64_t row = s->sel.pool == LS_POOL_NONE ? s->data.offsets[s->sh.mb_p[mb]] - s->sh.t0
                                            : s->sh.mb_p[mb] - s->sh.p0;
  s->be->iface->pool(s->be, s->buf.out[h] + (size_t)row * H, src, b->seq_start, b->seq_len,
                     b->n_seq, (int)H, s->sel.pool);
}

/* The block's hook points: capture the requested hooks of a selected layer. */
typedef struct {
  sweep_t *s;
  int mb;
  const ls_batch_t *b;
  double t;          /* seconds spent capturing */
  int layer;
} hook_ctx_t;

/* --steer: the edits of layer L at hook point h on the microbatch's rows (T, H) */
static void apply_edits(sweep_t *s, int L, ls_hook_t h, float *rows, const ls_batch_t *b) {
  const ls_backend_iface_t *f = s->be->iface;
  for (int k = 0; k < s->steer.n; k++) {
    const ls_edit_t *e = &s->steer.e[k];
    if (e->layer != L || e->hook != (int)h) continue;
    if (!e->last) { /* every row (padding rows too: real rows never see them) */
      f->edit_rows(s->be, rows, s->cfg->hidden, NULL, b->T, s->steer_v[k], e->alpha, e->ablate);
      continue;
    }
    for (int q = 0; q < b->n_seq; q++) /* each prompt's last real row */
      s->steer_idx_h[q] = b->seq_start_h[q] +
                          (b->seq_len_h ? b->seq_len_h[q] : b->seq_start_h[q + 1] - b->seq_start_h[q]) - 1;
    f->to_device(s->be, s->steer_idx, s->steer_idx_h, sizeof(int32_t) * (size_t)b->n_seq);
    f->edit_rows(s->be, rows, s->cfg->hidden, s->steer_idx, b->n_seq, s->steer_v[k], e->alpha,
                 e->ablate);
  }
}

/* A hook point of a block: the --steer edits made there first, then (selected layers) the
 * captures, which so record the edited value. */
static void on_hook(void *ctx, ls_hook_t h, float *rows, int width) {
  hook_ctx_t *k = ctx;
  if (width == k->s->cfg->hidden) apply_edits(k->s, k->layer, h, rows, k->b);
  if (k->s->vf.n > 0) ls_sw_verify_capture(k->s, h, rows, width, k->mb, k->b);
  if (k->s->sel.sel_index[k->layer] < 0) return;
  if (!((k->s->sel.hooks >> h) & 1) || width != ls_sw_hook_width(k->s, h)) return;
  if (h == LS_HOOK_ROUTER_LOGITS && k->s->sel.moe_index[k->layer] < 0) return;
  double t0 = ls_now();
  capture(k->s, h, rows, k->mb, k->b);
  k->t += ls_now() - t0;
}

/* Microbatch mb as a batch for the block (backend pointers); returns its first row in
 * the residual stream. */
static int64_t batch_of(const sweep_t *s, int mb, ls_batch_t *b) {
  const ls_shard_t *sh = &s->sh;
  const int64_t i0 = sh->mb_p[mb] - sh->p0, i1 = sh->mb_p[mb + 1] - sh->p0;
  b->T = (int)(sh->poff[i1] - sh->poff[i0]);
  b->n_seq = (int)(i1 - i0);
  b->seq_start = s->buf.seq_start_d + sh->seq_start_off[mb];
  b->seq_len = s->buf.seq_len_d + sh->seq_start_off[mb];
  b->pos = s->buf.pos_d + sh->poff[i0];
  b->max_len = sh->mb_max_len[mb];
  b->seq_start_h = sh->seq_start + sh->seq_start_off[mb];
  b->seq_len_h = sh->seq_len + sh->seq_start_off[mb];
  return sh->poff[i0];
}

/* Compact storage: the real rows of microbatch mb between the stored stream (rows from
 * stored row `first` at `stored`) and the padded staging buffer (to_staging 1: into it;
 * the padding rows keep whatever they held, finite values real rows never see). */
static void compact_copy(sweep_t *s, int mb, float *stored, int64_t first, int to_staging) {
  const ls_shard_t *sh = &s->sh;
  const size_t H = (size_t)s->cfg->hidden;
  const int64_t i0 = sh->mb_p[mb] - sh->p0, i1 = sh->mb_p[mb + 1] - sh->p0;
  for (int64_t i = i0; i < i1; i++) {
    float *st = stored + (size_t)(sh->soff[i] - first) * H;
    float *pd = s->buf.xd + (size_t)(sh->poff[i] - sh->poff[i0]) * H;
    const size_t bytes = sizeof(float) * H * (size_t)(sh->soff[i + 1] - sh->soff[i]);
    if (to_staging) memcpy(pd, st, bytes);
    else memcpy(st, pd, bytes);
  }
}

/* The backend rows of microbatch mb's residual stream (T rows from stored row row0): in
 * place, staged in from the host, or laid out padded from compact storage (stage_out
 * copies them back after the block changed them). */
static float *stage_in(sweep_t *s, int mb, int64_t row0, int T) {
  const size_t H = (size_t)s->cfg->hidden;
  ls_bufs_t *bf = &s->buf;
  if (bf->spill) { /* the microbatch's slot, read ahead by the spill's thread */
    if (bf->io_err || !(bf->x_mb = ls_spill_acquire(bf->spill, mb))) {
      bf->io_err = 1;
      return NULL;
    }
    if (s->sh.compact) compact_copy(s, mb, bf->x_mb, bf->spill_rows[mb], 1);
    else s->be->iface->to_device(s->be, bf->xd, bf->x_mb, sizeof(float) * H * (size_t)T);
    return bf->xd;
  }
  if (s->sh.compact) {
    compact_copy(s, mb, s->buf.x, 0, 1);
    return s->buf.xd;
  }
  if (!s->buf.x_on_host) return s->buf.x + (size_t)row0 * H;
  s->be->iface->to_device(s->be, s->buf.xd, s->buf.x + (size_t)row0 * H, sizeof(float) * H * (size_t)T);
  return s->buf.xd;
}

/* dirty 0: the block only read the rows (the final norm) */
static void stage_out(sweep_t *s, int mb, int64_t row0, int T, int dirty) {
  const size_t H = (size_t)s->cfg->hidden;
  ls_bufs_t *bf = &s->buf;
  if (bf->spill) { /* back into the slot, which the spill's thread writes behind */
    if (!bf->x_mb) return;
    const ls_backend_iface_t *f = s->be->iface;
    /* a device's copies of the slot (in, and back when dirty) are asynchronous: they
     * must be complete before the spill's thread reuses it */
    if (s->sh.compact) {
      if (dirty) compact_copy(s, mb, bf->x_mb, bf->spill_rows[mb], 0);
    } else if ((dirty && f->to_host(s->be, bf->x_mb, bf->xd, sizeof(float) * H * (size_t)T)) ||
               (f->sync && f->sync(s->be))) {
      bf->io_err = 1; /* the device failed: the layer fails at finish_layer */
    }
    ls_spill_release(bf->spill, mb, dirty && !bf->io_err);
    bf->x_mb = NULL;
    return;
  }
  if (!dirty) return;
  if (s->sh.compact) compact_copy(s, mb, s->buf.x, 0, 0);
  else if (s->buf.x_on_host)
    s->be->iface->to_host(s->be, s->buf.x + (size_t)row0 * H, s->buf.xd, sizeof(float) * H * (size_t)T);
}

/* Wait for the backend, bring the rows of the hooks in mask (captured since the last
 * call) to the host; collective, so a device failure on any rank stops every rank. */
static int finish_layer(sweep_t *s, unsigned mask) {
  const ls_backend_iface_t *f = s->be->iface;
  int rc = s->buf.io_err ? LS_ERR : LS_OK;
  if (!s->be->host_visible)
    for (int h = 0; h < LS_HOOK_COUNT && rc == LS_OK; h++)
      if (s->buf.out[h] && ((mask >> h) & 1))
        rc = f->to_host(s->be, s->buf.out_host[h], s->buf.out[h],
                        sizeof(float) * (size_t)ls_sw_hook_width(s, h) * (size_t)s->sh.out_rows);
  if (f->sync && f->sync(s->be)) rc = LS_ERR;
  return ls_agree(rc, s->comm);
}

/* After a selected layer's rows of the hooks in mask are on the host (L -1: final_norm):
 * --reduce over them, then --project replaces them by their projections. Collective. */
static int post_process(sweep_t *s, unsigned mask, int L) {
  for (int h = 0; h < LS_HOOK_COUNT; h++) {
    if (!((mask >> h) & 1)) continue;
    const int at = L < 0 ? 0 : ls_sw_hook_index(s, h, L);
    if (at < 0) continue;
    if (ls_sw_reduce_hook(s, h, at, L)) return LS_ERR;
    if (s->proj.K > 0 && h != LS_HOOK_ROUTER_LOGITS && !s->o->no_store) {
      const int set = L < 0 ? 0 : s->proj.set_of_layer[L];
      const size_t H = (size_t)s->cfg->hidden, K = (size_t)s->proj.K;
      ls_host_project(s->proj_tmp, s->buf.out_host[h], s->proj.Dt + (size_t)set * H * K,
                      s->sh.out_rows, (int)H, (int)K);
      memcpy(s->buf.out_host[h], s->proj_tmp, sizeof(float) * K * (size_t)s->sh.out_rows);
    }
  }
  return LS_OK;
}

/* --preload-weights: every layer still to compute is read, broadcast and converted
 * before the layer loop, which then never waits for weights. */
static int preload_layers(sweep_t *s, ls_wpipe_t *wp) {
  double t0 = ls_now();
  const size_t ns = (size_t)s->model.n_slots;
  for (int L = s->start; L < s->sel.n_run; L++) {
    ls_watchdog_beat(&s->wd, "preloading the weights", L);
    const void *raw = ls_wpipe_acquire(wp, L);
    /* a conversion failure on one rank stops all of them here, before the next
     * broadcast (which every rank must enter) */
    if (!raw ||
        ls_agree(ls_sw_convert_layer(s, s->be, L, raw, wp->on_device,
                               (char *)s->buf.wbuf + (size_t)L * s->buf.wbuf_bytes,
                               s->buf.lw_all + (size_t)L * ns),
                 s->comm) ||
        ls_wpipe_release(wp, L))
      return LS_ERR;
  }
  if (ls_agree(s->be->iface->sync ? s->be->iface->sync(s->be) : LS_OK, s->comm)) return LS_ERR;
  double dt = ls_now() - t0;
  MPI_Allreduce(&dt, &s->prof.t_preload, 1, MPI_DOUBLE, MPI_MAX, s->comm);
  ls_info("preloaded the weights of layers %d..%d in %.2f s", s->start, s->sel.n_run - 1,
          s->prof.t_preload);
  return LS_OK;
}

static int run_layers(sweep_t *s, ls_wpipe_t *wp) {
  ls_profile_t *pf = &s->prof;
  if (s->o->preload_weights && preload_layers(s, wp)) return LS_ERR;
  double t_start = ls_now();
  const char *stall = getenv("LS_FAULT_STALL_LAYER"), *stall_rank = getenv("LS_FAULT_STALL_RANK");
  for (int L = s->start; L < s->sel.n_run; L++) {
    double t0 = ls_now();
    ls_watchdog_beat(&s->wd, "loading the weights", L);
    /* test switch: this rank stops making progress here (a stuck or lost rank) */
    if (stall && atoi(stall) == L && (!stall_rank || atoi(stall_rank) == s->rank))
      for (;;) pause();
    void **lw = s->buf.lw;
    if (s->buf.lw_all) {
      lw = s->buf.lw_all + (size_t)L * (size_t)s->model.n_slots;
    } else {
      const void *raw = ls_wpipe_acquire(wp, L);
      /* rank 0 also converts the raw host bytes for --verify's oracle before they go */
      if (!raw ||
          ls_agree(ls_sw_convert_layer(s, s->be, L, raw, wp->on_device, s->buf.wbuf, lw) ||
                       ls_sw_verify_convert(s, L, s->rank == 0 ? wp->raw[L % 2] : NULL),
                   s->comm) ||
          ls_wpipe_release(wp, L))
        return LS_ERR;
    }
    double t1 = ls_now();
    pf->t_load[L] = t1 - t0;
    ls_watchdog_beat(&s->wd, "the forward", L);
    const int sel = s->sel.sel_index[L];
    double th = 0;
    for (int mb = 0; mb < s->sh.n_mb; mb++) {
      ls_batch_t b;
      int64_t row0 = batch_of(s, mb, &b);
      float *x = stage_in(s, mb, row0, b.T);
      if (!x) break; /* a spill read failed (said): the layer fails at finish_layer */
      hook_ctx_t hk = {s, mb, &b, 0, L};
      const int points = sel >= 0 || ls_steer_at_layer(&s->steer, L) || s->vf.n > 0; /* hooks called */
      if (points) on_hook(&hk, LS_HOOK_RESIDUAL_PRE, x, s->cfg->hidden);
      const int lr = s->cfg->local_rope && ls_config_rope(s->cfg, L) == &s->cfg->rope_local;
      const ls_block_t blk = {s->be, s->cfg, L, lw, s->buf.cos_d[lr], s->buf.sin_d[lr], &b,
                              s->buf.scratch, s->sh.T_max, points ? on_hook : NULL, &hk,
                              s->buf.host_scratch,
                              pf->expert_rows ? pf->expert_rows + (size_t)L * s->cfg->n_experts : NULL};
      s->fam->forward(&blk, x);
      if (points) on_hook(&hk, LS_HOOK_RESIDUAL_POST, x, s->cfg->hidden);
      double ts = ls_now();
      stage_out(s, mb, row0, b.T, 1);
      th += hk.t + ls_now() - ts;
      ls_wpipe_progress(wp);
    }
    unsigned mask = sel >= 0 ? s->sel.hooks & ~(1u << LS_HOOK_FINAL_NORM) : 0;
    if (s->sel.moe_index && s->sel.moe_index[L] < 0) mask &= ~(1u << LS_HOOK_ROUTER_LOGITS);
    if (finish_layer(s, mask)) return LS_ERR;
    double tr = ls_now();
    if (ls_sw_verify_layer(s, L)) return LS_ERR;
    if (sel >= 0 && post_process(s, mask, L)) return LS_ERR;
    th += ls_now() - tr;
    if (pf->expert_rows && ls_config_is_moe(s->cfg, L)) /* exact integer sums */
      MPI_Allreduce(MPI_IN_PLACE, pf->expert_rows + (size_t)L * s->cfg->n_experts,
                    s->cfg->n_experts, MPI_INT64_T, MPI_SUM, s->comm);
    double t2 = ls_now();
    pf->t_hooks[L] = th;
    pf->t_forward[L] = t2 - t1 - th;
    ls_watchdog_beat(&s->wd, "writing", L);
    if (sel >= 0 && ls_sw_write_layer(s, L, sel)) return LS_ERR;
    pf->t_write[L] = ls_now() - t2;
    ls_watchdog_layer_time(&s->wd, ls_now() - t0);
    ls_watchdog_beat(&s->wd, "the checkpoint after", L);
    ls_sw_progress(s, L, ls_now() - t_start);
    int stop = ls_sw_maybe_checkpoint(s, L + 1, ls_now() - t0);
    if (stop) return stop;
  }
  return LS_OK;
}

static int run_final_norm(sweep_t *s) {
  if (!(s->sel.hooks & (1u << LS_HOOK_FINAL_NORM))) return LS_OK;
  for (int mb = 0; mb < s->sh.n_mb; mb++) {
    ls_batch_t b;
    int64_t row0 = batch_of(s, mb, &b);
    float *x = stage_in(s, mb, row0, b.T);
    if (!x) break; /* a spill read failed (said): fails at finish_layer */
    s->fam->final_norm(s->be, s->cfg, s->buf.scratch, x, s->buf.final_norm_w,
                       s->buf.final_bias_w, b.T);
    capture(s, LS_HOOK_FINAL_NORM, s->buf.scratch, mb, &b);
    stage_out(s, mb, row0, b.T, 0);
  }
  if (finish_layer(s, 1u << LS_HOOK_FINAL_NORM) || post_process(s, 1u << LS_HOOK_FINAL_NORM, -1))
    return LS_ERR;
  if (!s->o->no_store) COLLECTIVE_STEP(s, ls_sw_write_hook(s, LS_HOOK_FINAL_NORM, 0));
  return LS_OK;
}

/* ---- entry point --------------------------------------------------------------------------------------- */
static void sweep_free(sweep_t *s) {
  ls_bufs_t *bf = &s->buf;
  ls_sw_reduce_free(s); /* its backend buffers before the backend goes */
  ls_sw_verify_free(s);
  if (s->be) {
    ls_backend_t *be = s->be;
    const ls_backend_iface_t *f = be->iface;
    ls_spill_close(bf->spill); /* its thread stops before the slots go */
    for (int i = 0; i < LS_SPILL_SLOTS; i++) {
      if (!bf->spill_slot[i]) continue;
      if (be->host_visible) free(bf->spill_slot[i]);
      else f->host_free(be, bf->spill_slot[i]);
    }
    if (bf->x_on_host) f->host_free(be, bf->x); else f->free(be, bf->x);
    f->free(be, bf->xd);
    if (bf->x_ckpt) f->host_free(be, bf->x_ckpt);
    f->free(be, bf->scratch);
    f->free(be, bf->wbuf);
    f->free(be, bf->final_norm_w);
    if (bf->final_bias_w) f->free(be, bf->final_bias_w);
    for (int h = 0; h < LS_HOOK_COUNT; h++) {
      f->free(be, bf->out[h]);
      if (!be->host_visible) f->host_free(be, bf->out_host[h]);
      if (bf->out_alt[h]) {
        if (be->host_visible) f->free(be, bf->out_alt[h]);
        else f->host_free(be, bf->out_alt[h]);
      }
    }
    if (!be->host_visible) {
      f->free(be, bf->seq_start_d); f->free(be, bf->seq_len_d); f->free(be, bf->pos_d);
      for (int k = 0; k < 2; k++) { f->free(be, bf->cos_d[k]); f->free(be, bf->sin_d[k]); }
    }
    for (int k = 0; k < s->steer.n && s->steer_v; k++) f->free(be, s->steer_v[k]);
    f->free(be, s->steer_idx);
    ls_backend_free(be);
  }
  free(s->steer_v); free(s->steer_idx_h); free(s->proj_tmp);
  ls_project_free(&s->proj);
  ls_steer_free(&s->steer);
  for (int k = 0; k < 2; k++) { free(bf->cos_tab[k]); free(bf->sin_tab[k]); }
  free(bf->lw); free(bf->lw_all); free(bf->host_scratch); free(bf->spill_rows);
  ls_shard_free(&s->sh);
  free(s->sel.layers); free(s->sel.sel_index); free(s->sel.moe_index); free(s->sel.moe_layers);
  free(s->prof.expert_rows);
  free(s->out.done_marks);
  free(s->prof.t_load); free(s->prof.t_forward); free(s->prof.t_hooks); free(s->prof.t_write);
  ls_dataset_free(&s->data);
  ls_model_close(&s->model);
}

/* Threads per rank when --threads is not given: OMP_NUM_THREADS if set; else the CPUs
 * this rank may run on. An affinity mask narrower than the machine is the rank's own
 * share (mpirun / srun binding, cgroup cpusets) and is used as is; a mask of the whole
 * node is shared by the node's ranks and divided among them. */
static int default_threads(MPI_Comm comm) {
  MPI_Comm node;
  int local = 1;
  MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  MPI_Comm_size(node, &local);
  MPI_Comm_free(&node);
  const char *env = getenv("OMP_NUM_THREADS");
  if (env && atoi(env) > 0) return atoi(env);
  long online = sysconf(_SC_NPROCESSORS_ONLN);
  cpu_set_t set;
  long mine = online;
  if (sched_getaffinity(0, sizeof set, &set) == 0) mine = CPU_COUNT(&set);
  long t = mine < online ? mine : mine / local;
  return t > 0 ? (int)t : 1;
}

/* Names of the registered backends that have every capability in caps ("" if none). */
static void names_with(unsigned caps, char *buf, size_t cap) {
  buf[0] = '\0';
  for (int i = 0; i < ls_backend_count(); i++)
    if ((ls_backend_at(i)->caps & caps) == caps)
      snprintf(buf + strlen(buf), cap - strlen(buf), "%s--backend %s", buf[0] ? " or " : "",
               ls_backend_at(i)->name);
}

/* The backend: --backend NAME, or auto: of the backends usable on every rank (and with
 * a bf16 mode when --dtype bf16), the one of highest priority. Every rank takes the same
 * choice; the log says which and why. */
static int make_backend(sweep_t *s, int threads, int max_seq) {
  const ls_run_opts_t *o = s->o;
  const int is_auto = strcmp(o->backend, "auto") == 0;
  const int want_bf16 = strcmp(o->dtype, "bf16") == 0;
  const ls_backend_entry_t *e = is_auto ? NULL : ls_backend_lookup(o->backend);
  char why[1024] = "", skipped[1400] = "";
  if (e) {
    int usable = e->probe(1, why, sizeof why) > 0, all = 0;
    MPI_Allreduce(&usable, &all, 1, MPI_INT, MPI_MIN, s->comm);
    if (!all) {
      ls_error_defer(1);
      if (!usable)
        ls_error("--backend %s: no usable device on rank %d (%s); run with --backend cpu",
                 e->name, s->rank, why);
      ls_agree_report(usable ? LS_OK : LS_ERR, s->comm);
      return LS_ERR;
    }
  } else {
    /* auto: entries by descending priority; the first usable on every rank wins */
    int done[16] = {0};
    for (int k = 0; k < ls_backend_count() && k < 16 && !e; k++) {
      int best = -1;
      for (int i = 0; i < ls_backend_count() && i < 16; i++)
        if (!done[i] && (best < 0 || ls_backend_at(i)->auto_priority > ls_backend_at(best)->auto_priority))
          best = i;
      done[best] = 1;
      const ls_backend_entry_t *c = ls_backend_at(best);
      if (want_bf16 && !(c->caps & LS_BE_BF16)) continue;
      why[0] = '\0';
      int usable = c->probe(0, why, sizeof why) > 0, all = 0;
      MPI_Allreduce(&usable, &all, 1, MPI_INT, MPI_MIN, s->comm);
      if (all) e = c;
      else
        snprintf(skipped + strlen(skipped), sizeof skipped - strlen(skipped), "%s%s: %s",
                 skipped[0] ? "; " : "", c->name, usable ? "not usable on another rank" : why);
    }
    if (!e) {
      if (s->rank == 0)
        ls_error("--dtype bf16: no backend with a bf16 mode is usable (%s); use --dtype float32 "
                 "or auto", skipped);
      return LS_ERR;
    }
  }
  if (o->precise_gemm && strcmp(e->name, "cpu") != 0) {
    if (s->rank == 0)
      ls_error("--precise-gemm is a CPU backend option (the %s backend's GEMMs are cuBLAS's); "
               "use --backend cpu or drop it", e->name);
    return LS_ERR;
  }
  const ls_backend_params_t p = {threads, max_seq, (e->caps & LS_BE_BF16) && strcmp(o->dtype, "float32") != 0,
                                 s->comm, o->precise_gemm};
  /* a failure on one rank makes every rank fail: the lowest rank with a reason says it */
  ls_error_defer(1);
  s->be = ls_backend_create(e, &p);
  int failed = s->be == NULL, any = 0;
  MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, s->comm);
  ls_agree_report(ls_error_pending() ? LS_ERR : LS_OK, s->comm);
  if (any) {
    ls_backend_free(s->be);
    s->be = NULL;
    return LS_ERR;
  }
  if (is_auto && skipped[0])
    ls_info("backend: %s; not %s", s->be->desc, skipped);
  else
    ls_info("backend: %s", s->be->desc);
  return LS_OK;
}

/* Rank 0, before anything is opened for writing: no path the sweep writes may be one of
 * its inputs (guard.h); --summary-json, like --out, is not overwritten without --force,
 * and its directory must be writable now rather than after hours of work. */
static int guard_outputs(sweep_t *s) {
  const ls_run_opts_t *o = s->o;
  ls_guard_t g = {0};
  char path[4400];
  int rc = LS_OK;
  snprintf(path, sizeof path, "%s/config.json", o->model_dir);
  rc |= ls_guard_add(&g, path);
  snprintf(path, sizeof path, "%s/model.safetensors.index.json", o->model_dir);
  rc |= ls_guard_add(&g, path);
  for (int i = 0; i < s->model.st.n_files; i++) rc |= ls_guard_add(&g, s->model.st.files[i].path);
  rc |= ls_guard_add(&g, o->data_path);
  snprintf(path, sizeof path, "%s/tokenizer.json", o->model_dir); /* text input */
  rc |= ls_guard_add(&g, path);
  snprintf(path, sizeof path, "%s/tokenizer_config.json", o->model_dir);
  rc |= ls_guard_add(&g, path);
  for (int i = 0; i < s->steer.n_inputs; i++) rc |= ls_guard_add(&g, s->steer.inputs[i]);
  if (s->proj.K > 0) rc |= ls_guard_add(&g, s->proj.file);
  if (rc == LS_OK) rc = ls_guard_check_file(&g, o->out_path, "--out");
  if (rc == LS_OK) rc = ls_guard_check_file(&g, o->summary_json, "--summary-json");
  char lock[4200];
  snprintf(lock, sizeof lock, "%s.lock", o->out_path ? o->out_path : "");
  if (rc == LS_OK && o->out_path) rc = ls_guard_check_file(&g, lock, "--out's lock file");
  if (rc == LS_OK && o->checkpoint_every >= 0 && o->out_path) {
    ls_sw_checkpoint_dir(s);
    rc = ls_guard_check_dir(&g, s->ck.dir, "--checkpoint-dir");
    if (rc == LS_OK && !ls_ckpt_dir_is_ours(s->ck.dir)) {
      ls_error("--checkpoint-dir %s is a non-empty directory layersweep did not make; give "
               "an empty or new directory (checkpoints are removed when the sweep completes)",
               s->ck.dir);
      rc = LS_ERR;
    }
  }
  /* a spill file is new (O_EXCL) and unlinked at once, but never beside an input either */
  if (rc == LS_OK) rc = ls_guard_check_dir(&g, s->buf.spill_dir, "--spill-dir");
  ls_guard_free(&g);
  if (rc == LS_OK && o->summary_json && !o->plan_only) {
    if (!o->force && access(o->summary_json, F_OK) == 0) {
      ls_error("--summary-json %s exists; pass --force to overwrite it, or choose another path",
               o->summary_json);
      rc = LS_ERR;
    } else {
      char dir[4096];
      snprintf(dir, sizeof dir, "%s", o->summary_json);
      char *slash = strrchr(dir, '/');
      if (slash) *slash = '\0'; else snprintf(dir, sizeof dir, ".");
      if (access(dir[0] ? dir : "/", W_OK) != 0) {
        ls_error("--summary-json %s: its directory %s is not writable (or does not exist)",
                 o->summary_json, dir[0] ? dir : "/");
        rc = LS_ERR;
      }
    }
  }
  return rc;
}

/* Rank 0, before the model is opened: a remote model writes its range cache, an output
 * too, which must not be (or hold) an input. A local --model never touches the cache. */
static int guard_http_cache(const ls_run_opts_t *o) {
  struct stat st;
  if (!o->model_dir || stat(o->model_dir, &st) == 0) return LS_OK;
  ls_http_opts_t ho = {o->http_cache, o->http_cache_max};
  ls_http_configure(&ho);
  char dir[4096];
  ls_http_cache_path(dir, sizeof dir);
  if (!dir[0]) return LS_OK;
  ls_guard_t g = {0};
  int rc = ls_guard_add(&g, o->data_path);
  if (o->steer) rc |= ls_guard_add(&g, o->steer);
  if (o->project) {
    char pf[4096];
    snprintf(pf, sizeof pf, "%s", o->project);
    char *colon = strrchr(pf, ':');
    if (colon) *colon = '\0';
    rc |= ls_guard_add(&g, pf);
  }
  if (rc == LS_OK) rc = ls_guard_check_dir(&g, dir, "--http-cache");
  ls_guard_free(&g);
  return rc;
}

/* The options every rank checks identically (rank 0 reports). */
static int check_options(sweep_t *s) {
  const ls_run_opts_t *o = s->o;
  if (ls_hooks_parse(o->hooks, &s->sel.hooks) || ls_pool_parse(o->pool, &s->sel.pool)) return LS_ERR;
  const char *od = o->out_dtype ? o->out_dtype : "float32";
  if (strcmp(od, "float32") == 0) s->out.out_dt = LS_DT_F32;
  else if (strcmp(od, "float16") == 0) s->out.out_dt = LS_DT_F16;
  else if (strcmp(od, "bfloat16") == 0) s->out.out_dt = LS_DT_BF16;
  else {
    ls_error("--out-dtype: unknown dtype \"%s\"; choose float32, float16 or bfloat16", od);
    return LS_ERR;
  }
  if (strcmp(o->backend, "auto") != 0 && !ls_backend_lookup(o->backend)) {
    ls_error("--backend: unknown backend \"%s\"; choose auto, %s", o->backend, ls_backend_names());
    return LS_ERR;
  }
  if (strcmp(o->dtype, "auto") != 0 && strcmp(o->dtype, "bf16") != 0 &&
      strcmp(o->dtype, "float32") != 0) {
    ls_error("--dtype: unknown compute dtype \"%s\"; choose auto, bf16 or float32", o->dtype);
    return LS_ERR;
  }
  const ls_backend_entry_t *e = ls_backend_lookup(o->backend);
  if (e && strcmp(o->dtype, "bf16") == 0 && !(e->caps & LS_BE_BF16)) {
    char alt[256];
    names_with(LS_BE_BF16, alt, sizeof alt);
    ls_error("--dtype bf16: the %s backend has no bf16 mode (it computes in float32); use "
             "--dtype float32 (or auto)%s%s", e->name, alt[0] ? ", or " : "", alt);
    return LS_ERR;
  }
  if (ls_reduce_parse(o->reduce, &s->red.spec)) return LS_ERR;
  if (o->no_store && !s->red.spec.what) {
    ls_error("--no-store keeps nothing without --reduce; add --reduce LIST (e.g. mean,pca:16) "
             "or drop --no-store");
    return LS_ERR;
  }
  if (o->no_store && o->project) {
    ls_error("--project changes the stored activations, and --no-store stores none; drop one");
    return LS_ERR;
  }
  if (o->verify && o->steer) {
    ls_error("--verify recomputes layers without the --steer edits; run them separately");
    return LS_ERR;
  }
  if (o->verify && o->preload_weights) {
    ls_error("--verify converts each layer as it streams; it does not work with --preload-weights");
    return LS_ERR;
  }
  if (o->verify_strict && !o->verify) {
    ls_error("--verify-strict needs --verify N (the prompts to check)");
    return LS_ERR;
  }
  if (o->microbatch_tokens < 1) {
    ls_error("--microbatch-tokens must be at least 1 (got %lld)", (long long)o->microbatch_tokens);
    return LS_ERR;
  }
  return LS_OK;
}

/* --layers, and how deep the sweep computes: the last selected layer, or every layer
 * for final_norm. */
static int select_layers(sweep_t *s) {
  const ls_config_t *c = s->cfg;
  ls_select_t *sl = &s->sel;
  ls_error_set_quiet(s->rank != 0);
  int rc = ls_layers_parse(s->o->layers, c->n_layers, &sl->layers, &sl->n_sel);
  ls_error_set_quiet(0);
  if (rc) return LS_ERR;
  sl->sel_index = ls_malloc(sizeof(int) * (size_t)c->n_layers, "layers");
  if (!sl->sel_index) return LS_ERR;
  for (int L = 0; L < c->n_layers; L++) sl->sel_index[L] = -1;
  for (int i = 0; i < sl->n_sel; i++) sl->sel_index[sl->layers[i]] = i;
  sl->n_run = (sl->hooks & (1u << LS_HOOK_FINAL_NORM)) ? c->n_layers : 0;
  if (sl->hooks & ~(1u << LS_HOOK_FINAL_NORM))
    for (int i = 0; i < sl->n_sel; i++)
      if (sl->layers[i] + 1 > sl->n_run) sl->n_run = sl->layers[i] + 1;
  /* router_logits: the selected layers that are MoE */
  sl->moe_index = ls_malloc(sizeof(int) * (size_t)c->n_layers, "layers");
  sl->moe_layers = ls_malloc(sizeof(int) * (size_t)(sl->n_sel + 1), "layers");
  if (!sl->moe_index || !sl->moe_layers) return LS_ERR;
  for (int L = 0; L < c->n_layers; L++) sl->moe_index[L] = -1;
  for (int i = 0; i < sl->n_sel; i++)
    if (ls_config_is_moe(c, sl->layers[i])) {
      sl->moe_index[sl->layers[i]] = sl->n_moe_sel;
      sl->moe_layers[sl->n_moe_sel++] = sl->layers[i];
    }
  if ((sl->hooks >> LS_HOOK_ROUTER_LOGITS) & 1 && sl->n_moe_sel == 0) {
    if (s->rank == 0) {
      if (c->n_experts == 0)
        ls_error("--hooks router_logits: %s is not a mixture-of-experts model (it has no router)",
                 c->arch_name);
      else
        ls_error("--hooks router_logits: none of the --layers %s is a MoE layer of this %s",
                 s->o->layers, c->arch_name);
    }
    return LS_ERR;
  }
  return LS_OK;
}

int ls_sweep_run(const ls_run_opts_t *o, MPI_Comm comm) {
  sweep_t S, *s = &S;
  memset(s, 0, sizeof S);
  s->out.lock.fd = -1; /* not held */
  s->o = o;
  s->comm = comm;
  MPI_Comm_rank(comm, &s->rank);
  MPI_Comm_size(comm, &s->size);
  ls_log_set_rank(s->rank, s->size);
  double t_begin = ls_now();
  int rc = LS_ERR;
  ls_wpipe_t wp;
  memset(&wp, 0, sizeof wp);
  int wp_live = 0;

  ls_error_set_quiet(s->rank != 0);
  int orc = check_options(s);
  ls_error_set_quiet(0);
  if (orc) return LS_ERR;
  if (o->spill_dir && o->spill_dir[0])
    snprintf(s->buf.spill_dir, sizeof s->buf.spill_dir, "%s", o->spill_dir);
  else
    snprintf(s->buf.spill_dir, sizeof s->buf.spill_dir, "%s.spill", o->out_path ? o->out_path : "out");
  /* from here on a lost rank or link ends the job instead of hanging it */
  if (!o->plan_only && ls_watchdog_start(&s->wd, o->stall_timeout, comm)) return LS_ERR;
  ls_watchdog_beat(&s->wd, "reading the model description", -1);
  if (ls_agree(s->rank == 0 ? guard_http_cache(o) : LS_OK, comm)) {
    ls_watchdog_stop(&s->wd);
    return LS_ERR;
  }
  if (ls_model_open(&s->model, o->model_dir, comm)) {
    if (s->rank == 0) ls_http_shutdown();
    ls_watchdog_stop(&s->wd);
    return LS_ERR;
  }
  s->cfg = &s->model.cfg;
  s->fam = s->model.fam;
  const ls_config_t *c = s->cfg;
  ls_profile_t *pf = &s->prof;
  if (select_layers(s)) goto out;
  if (ls_steer_load(o->steer, c->hidden, c->n_layers, comm, &s->steer)) goto out;
  if (ls_project_load(o->project, c->hidden, c->n_layers, s->sel.layers, s->sel.n_sel,
                      (s->sel.hooks >> LS_HOOK_FINAL_NORM) & 1, comm, &s->proj))
    goto out;
  pf->t_load = ls_calloc((size_t)c->n_layers, sizeof(double), "profile");
  pf->t_forward = ls_calloc((size_t)c->n_layers, sizeof(double), "profile");
  pf->t_hooks = ls_calloc((size_t)c->n_layers, sizeof(double), "profile");
  pf->t_write = ls_calloc((size_t)c->n_layers, sizeof(double), "profile");
  if (!pf->t_load || !pf->t_forward || !pf->t_hooks || !pf->t_write) goto out;
  if (c->n_experts > 0) {
    pf->expert_rows = ls_calloc((size_t)c->n_layers * (size_t)c->n_experts, sizeof(int64_t), "router stats");
    if (!pf->expert_rows) goto out;
  }
  ls_watchdog_beat(&s->wd, "reading the dataset", -1);
  if (ls_sw_load_dataset(s)) goto out;
  if (ls_agree(s->rank == 0 ? guard_outputs(s) : LS_OK, comm)) goto out;
  /* one writer per output, from before the file is created or reopened to the end */
  if (!o->plan_only && ls_agree(s->rank == 0 ? ls_lock_take(&s->out.lock, o->out_path) : LS_OK, comm))
    goto out;
  int64_t longest = 1;
  for (int64_t i = 0; i < s->data.n; i++) longest = max64(longest, ls_dataset_len(&s->data, i));
  s->threads = o->threads > 0 ? o->threads : default_threads(comm);
  {
    cpu_set_t set;
    if (o->threads > 0 && sched_getaffinity(0, sizeof set, &set) == 0 && o->threads > CPU_COUNT(&set))
      ls_warn("--threads %d is more than the %d CPUs this rank may run on; threads will share "
              "cores and run slower", o->threads, CPU_COUNT(&set));
  }
  if (make_backend(s, s->threads, (int)longest + LS_ROW_PAD)) goto out;
  int align = 1;
  MPI_Allreduce(&s->be->row_align, &align, 1, MPI_INT, MPI_MAX, comm);
  if (ls_agree(ls_shard_build(&s->sh, &s->data, s->rank, s->size, align, o->microbatch_tokens,
                              s->sel.pool) ||
                   ls_shard_storage(&s->sh, &s->data, s->be->host_visible),
               comm))
    goto out;
  if (ls_sw_plan(s) || ls_sw_predict(s)) goto out;
  if (o->plan_only) { rc = LS_OK; goto out; }
  if (ls_agree(alloc_buffers(s), comm)) goto out;
  if (ls_agree(ls_sw_reduce_setup(s), comm) || ls_agree(ls_sw_verify_setup(s), comm)) goto out;
  if (s->proj.K > 0 &&
      ls_agree((s->proj_tmp = ls_malloc(sizeof(float) * (size_t)s->proj.K *
                                        (size_t)max64(s->sh.out_rows, 1), "projection"))
                   ? LS_OK : LS_ERR, comm))
    goto out;
  s->out.done_marks = ls_malloc(sizeof(int64_t) * (size_t)(s->sel.n_sel + 1), "markers");
  if (ls_agree(s->out.done_marks ? LS_OK : LS_ERR, comm)) goto out;
  for (int i = 0; i < s->sel.n_sel; i++) s->out.done_marks[i] = -1;
  ls_sw_fingerprints(s);
  int resumed = 0;
  if (o->resume) {
    resumed = ls_sw_try_resume(s);
    if (resumed < 0) goto out;
    if (resumed == 2) { rc = LS_OK; goto out; } /* already complete */
    ls_sw_predict_refresh(s);
  }
  if (!resumed) {
    ls_error_defer(1); /* a failure every rank sees is reported once */
    ls_watchdog_beat(&s->wd, "creating the output", -1);
    int crc = ls_sw_create_output(s);
    ls_watchdog_beat(&s->wd, "embedding", -1);
    if (ls_agree_report(crc, comm) || embed(s)) goto out;
  }
  if (load_final_norm(s) || ls_sw_writer_start(s)) goto out;
  if (ls_agree(ls_wpipe_init(&wp, &s->model, s->be, s->start, s->sel.n_run, comm), comm)) goto out;
  wp_live = 1;
  ls_sw_install_signals();
  s->ck.last = s->start;
  s->prof.stats_next = s->start; /* earlier runs wrote theirs at their checkpoints */
  double t_loop0 = ls_now();
  int lr = run_layers(s, &wp);
  pf->t_loop = ls_now() - t_loop0;
  if (lr == LS_STOPPED) { rc = LS_STOPPED; goto out; }
  ls_watchdog_beat(&s->wd, "final norm", -1);
  if (lr || ls_sw_drain_writes(s) || run_final_norm(s)) goto out;
  ls_sw_writer_stop(s);
  pf->t_total = ls_now() - t_begin;
  if (ls_sw_write_profile(s, &wp)) goto out;
  /* complete only after every collective write finished and the file was flushed */
  if (ls_agree(ls_h5out_flush(&s->out.h5), comm)) goto out;
  if (ls_agree(ls_sw_write_str_attr(s, "status", "complete"), comm)) goto out;
  rc = ls_agree(ls_h5out_close(&s->out.h5), comm);
  s->out.open = 0;
  if (rc == LS_OK) {
    if (o->checkpoint_every >= 0) ls_ckpt_remove(s->ck.dir, comm);
    ls_info("wrote %s (complete)", o->out_path);
    /* a summary that could not be written fails the run (the file is complete) */
    rc = ls_sw_print_summary(s, &wp);
  }
out:
  ls_watchdog_stop(&s->wd);
  ls_sw_writer_stop(s); /* a layer in flight finishes; it is not marked */
  if (wp_live) ls_wpipe_free(&wp);
  if (s->out.open) {
    ls_h5out_close(&s->out.h5);
    if (s->rank == 0) ls_info("%s left with status \"partial\"", o->out_path);
  }
  ls_lock_release(&s->out.lock);
  sweep_free(s);
  if (s->rank == 0) ls_http_shutdown();
  return rc;
}
