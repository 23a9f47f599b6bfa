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

#include "backend_cuda.h"
#include "sweep_internal.h"


void ls_run_opts_default(ls_run_opts_t *o) {
  memset(o, 0, sizeof *o);
  o->hooks = "residual_post";
  o->layers = "all";
  o->pool = "last_token";
  o->backend = "auto";
  o->dtype = "auto";
  o->microbatch_tokens = 4096;
  o->progress = -1;
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

static int alloc_buffers(sweep_t *s) {
  const ls_config_t *c = s->cfg;
  ls_backend_t *be = s->be;
  const ls_backend_iface_t *f = be->iface;
  const size_t H = (size_t)c->hidden;
  const size_t resid_bytes = sizeof(float) * (size_t)max64(s->n_rows, 1) * H;
  int rc = LS_OK;
  if (s->x_on_host) {
    s->x = f->host_alloc(be, resid_bytes, "residual stream (host)");
    s->xd = f->alloc(be, sizeof(float) * (size_t)ls_round_rows(s->T_max) * H, "microbatch staging");
    if (!s->xd) rc = LS_ERR;
  } else {
    s->x = f->alloc(be, resid_bytes, "residual stream");
  }
  size_t nsc = ls_block_scratch_floats(c, s->T_max);
  s->scratch_base = f->alloc(be, sizeof(float) * nsc, "block scratch");
  s->wbuf_bytes = ls_sw_layer_weight_bytes(s);
  s->wbuf = f->alloc(be, s->wbuf_bytes * (size_t)(s->o->preload_weights ? s->n_run : 1),
                     s->o->preload_weights ? "preloaded weights of every layer" : "layer weights");
  s->final_norm_w = f->alloc(be, sizeof(float) * H, "final norm");
  if (!s->x || !s->scratch_base || !s->wbuf || !s->final_norm_w) rc = LS_ERR;
  for (int h = 0; h < LS_HOOK_COUNT && rc == LS_OK; h++) {
    if (!((s->hooks >> h) & 1)) continue;
    const size_t bytes = sizeof(float) * (size_t)max64(s->out_rows, 1) * H;
    s->out[h] = f->alloc(be, bytes, "hook output");
    s->out_host[h] = be->host_visible ? s->out[h] : f->host_alloc(be, bytes, "hook output (host)");
    if (!s->out[h] || !s->out_host[h]) rc = LS_ERR;
  }
  if (rc == LS_OK) {
    const size_t rope = sizeof(float) * (size_t)s->max_len * (size_t)(c->head_dim / 2);
    s->seq_start_d = index_copy(s, s->seq_start, sizeof(int32_t) * (size_t)(2 * s->n_prompts + 2), "microbatches");
    s->seq_len_d = index_copy(s, s->seq_len, sizeof(int32_t) * (size_t)(2 * s->n_prompts + 2), "microbatches");
    s->pos_d = index_copy(s, s->pos, sizeof(int32_t) * (size_t)max64(s->n_rows, 1), "positions");
    s->cos_d = index_copy(s, s->cos_tab, rope, "rope table");
    s->sin_d = index_copy(s, s->sin_tab, rope, "rope table");
    if (!s->seq_start_d || !s->seq_len_d || !s->pos_d || !s->cos_d || !s->sin_d) rc = LS_ERR;
  }
  if (rc == LS_OK && f->reserve) {
    const int max_dim = (int)max64(max64(c->hidden, c->intermediate), (int64_t)c->n_heads * c->head_dim);
    rc = f->reserve(be, s->T_max, max_dim);
  }
  if (rc == LS_OK) ls_block_scratch_carve(c, s->T_max, s->scratch_base, &s->scratch);
  return rc;
}

/* Layer L in the backend's format at base (wbuf_bytes), converted from the raw
 * checkpoint bytes (host memory, or backend memory when the layer came by a device
 * broadcast); lw points into it. */
static int convert_layer(sweep_t *s, int layer, const void *raw, int raw_on_device, void *base,
                         ls_layer_weights_t *lw) {
  char *p = base;
  for (int id = 0; id < LS_W_COUNT; id++) {
    const ls_wslot_t *w = &s->model.slots[(size_t)layer * LS_W_COUNT + id];
    if (!w->present) { lw->w[id] = NULL; continue; }
    const int matrix = ls_weight_is_matrix(id);
    lw->w[id] = p;
    if (s->be->iface->load_weight(s->be, p, (const char *)raw + w->offset, w->dtype,
                                  (size_t)w->numel, matrix, raw_on_device))
      return LS_ERR;
    p += (size_t)ls_sw_slot_max_numel(s, id) *
         (matrix ? ls_dtype_size(s->be->wtype) : sizeof(float));
  }
  return LS_OK;
}

/* Rows [row0, row0 + n) of the residual stream <- host rows src (float32). */
static int put_rows(sweep_t *s, int64_t row0, const float *src, int64_t n) {
  const size_t H = (size_t)s->cfg->hidden, bytes = sizeof(float) * H * (size_t)n;
  float *dst = s->x + (size_t)row0 * H;
  if (s->x_on_host) {
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

static int64_t sort_unique(int32_t *v, int64_t n) {
  if (n == 0) return 0;
  qsort(v, (size_t)n, sizeof *v, cmp_i32);
  int64_t m = 1;
  for (int64_t i = 1; i < n; i++)
    if (v[i] != v[m - 1]) v[m++] = v[i];
  return m;
}

static int embed(sweep_t *s) {
  double t0 = ls_now();
  const ls_config_t *c = s->cfg;
  const size_t H = (size_t)c->hidden, dsz = ls_dtype_size(s->model.embed_dtype);
  const size_t row = H * dsz;
  int32_t *mine = ls_malloc(sizeof(int32_t) * (size_t)max64(s->n_tokens, 1), "token ids");
  if (!mine) return LS_ERR;
  memcpy(mine, s->data.tokens + s->t0, sizeof(int32_t) * (size_t)s->n_tokens);
  int n_mine = (int)sort_unique(mine, s->n_tokens);
  int *counts = NULL, *displs = NULL;
  int32_t *all = NULL, *uni = NULL;
  char *rows = NULL, *sendbuf = NULL;
  int64_t n_uni = 0;
  MPI_Datatype row_t;
  MPI_Type_contiguous((int)row, MPI_BYTE, &row_t);
  MPI_Type_commit(&row_t);
  int rc = LS_OK;
  if (s->rank == 0) {
    counts = ls_malloc(sizeof(int) * (size_t)s->size, "counts");
    displs = ls_malloc(sizeof(int) * (size_t)s->size, "counts");
    if (!counts || !displs) MPI_Abort(s->comm, 1);
  }
  MPI_Gather(&n_mine, 1, MPI_INT, counts, 1, MPI_INT, 0, s->comm);
  int64_t total = 0;
  if (s->rank == 0) {
    for (int r = 0; r < s->size; r++) { displs[r] = (int)total; total += counts[r]; }
    all = ls_malloc(sizeof(int32_t) * (size_t)max64(total, 1), "token ids");
    uni = ls_malloc(sizeof(int32_t) * (size_t)max64(total, 1), "token ids");
    if (!all || !uni) MPI_Abort(s->comm, 1);
  }
  MPI_Gatherv(mine, n_mine, MPI_INT32_T, all, counts, displs, MPI_INT32_T, 0, s->comm);
  char *myrows = ls_malloc(row * (size_t)(n_mine > 0 ? n_mine : 1), "embedding rows");
  if (!myrows) MPI_Abort(s->comm, 1);
  if (s->rank == 0) {
    memcpy(uni, all, sizeof(int32_t) * (size_t)total);
    n_uni = sort_unique(uni, total);
    rows = ls_malloc(row * (size_t)max64(n_uni, 1), "embedding rows");
    if (!rows) MPI_Abort(s->comm, 1);
    uint64_t before = s->model.st.bytes_read;
    rc = ls_model_read_embed_rows(&s->model, uni, n_uni, rows);
    s->embed_bytes = s->model.st.bytes_read - before;
  }
  if (ls_agree(rc, s->comm)) goto done;
  if (s->rank == 0) {
    int max_count = 0;
    for (int r = 0; r < s->size; r++) max_count = counts[r] > max_count ? counts[r] : max_count;
    sendbuf = ls_malloc(row * (size_t)(max_count > 0 ? max_count : 1), "embedding rows");
    if (!sendbuf) MPI_Abort(s->comm, 1);
    for (int r = 0; r < s->size; r++) {
      char *dst = r == 0 ? myrows : sendbuf;
      for (int i = 0; i < counts[r]; i++) {
        int32_t *hit = bsearch(&all[displs[r] + i], uni, (size_t)n_uni, sizeof(int32_t), cmp_i32);
        memcpy(dst + (size_t)i * row, rows + (size_t)(hit - uni) * row, row);
      }
      if (r > 0) MPI_Send(sendbuf, counts[r], row_t, r, 7, s->comm);
    }
  } else {
    MPI_Recv(myrows, n_mine, row_t, 0, 7, s->comm, MPI_STATUS_IGNORE);
  }
  /* residual stream = embedding rows of this rank's tokens (float32), staged through a
   * bounded host buffer (never a second copy of the whole stream) */
  {
    float *table = ls_malloc(sizeof(float) * H * (size_t)(n_mine > 0 ? n_mine : 1), "embedding");
    const int64_t chunk_rows = max64(1, ((int64_t)64 << 20) / (int64_t)(sizeof(float) * H));
    float *xh = ls_malloc(sizeof(float) * H * (size_t)chunk_rows, "embedding staging");
    if (!table || !xh) MPI_Abort(s->comm, 1);
    ls_convert_to_f32(table, myrows, s->model.embed_dtype, H * (size_t)n_mine);
    int64_t staged0 = 0, staged = 0; /* rows [staged0, staged0 + staged) are in xh */
    for (int64_t i = 0; i < s->n_prompts && rc == LS_OK; i++) {
      const int64_t len = ls_dataset_len(&s->data, s->p0 + i);
      const int32_t *tok = s->data.tokens + s->data.offsets[s->p0 + i];
      /* padding rows repeat the prompt's last token (finite, never seen by real rows) */
      for (int64_t r = s->poff[i]; r < s->poff[i + 1] && rc == LS_OK; r++) {
        int64_t t = r - s->poff[i] < len ? r - s->poff[i] : len - 1;
        int32_t *hit = bsearch(&tok[t], mine, (size_t)n_mine, sizeof(int32_t), cmp_i32);
        memcpy(xh + (size_t)staged * H, table + (size_t)(hit - mine) * H, sizeof(float) * H);
        if (++staged == chunk_rows || r + 1 == s->n_rows) {
          rc = put_rows(s, staged0, xh, staged);
          staged0 += staged;
          staged = 0;
        }
      }
    }
    free(table);
    free(xh);
  }
  rc = ls_agree(rc, s->comm);
done:
  MPI_Type_free(&row_t);
  free(mine); free(counts); free(displs); free(all); free(uni); free(rows); free(sendbuf);
  free(myrows);
  s->t_embed = ls_now() - t0;
  return rc;
}

/* final norm weight: rank 0 reads, everyone receives */
static int load_final_norm(sweep_t *s) {
  const size_t H = (size_t)s->cfg->hidden, bytes = H * ls_dtype_size(s->model.norm_dtype);
  char *raw = ls_malloc(bytes, "final norm");
  float *tmp = ls_malloc(sizeof(float) * H, "final norm");
  int rc = raw && tmp ? LS_OK : LS_ERR;
  if (rc == LS_OK && s->rank == 0) rc = ls_model_read_final_norm(&s->model, raw);
  if (ls_agree(rc, s->comm) == LS_OK) {
    ls_bcast_bytes(raw, bytes, 0, s->comm);
    rc = s->be->iface->load_weight(s->be, s->final_norm_w, raw, s->model.norm_dtype, H, 0, 0);
    if (rc == LS_OK && s->be->iface->sync) rc = s->be->iface->sync(s->be);
  } else {
    rc = LS_ERR;
  }
  free(raw);
  free(tmp);
  return ls_agree(rc, s->comm); /* the backend's part is local */
}

/* ---- the layer loop ---------------------------------------------------------------------------------- */
static void capture(sweep_t *s, ls_hook_t h, const float *src, int mb, const ls_batch_t *b) {
  const size_t H = (size_t)s->cfg->hidden;
  int64_t row = s->pool == LS_POOL_NONE ? s->data.offsets[s->mb_p[mb]] - s->t0
                                        : s->mb_p[mb] - s->p0;
  s->be->iface->pool(s->be, s->out[h] + (size_t)row * H, src, b->seq_start, b->seq_len,
                     b->n_seq, (int)H, s->pool);
}

/* Microbatch mb as a batch for the block (backend pointers); returns its first row in
 * the residual stream. */
static int64_t batch_of(const sweep_t *s, int mb, ls_batch_t *b) {
  const int64_t i0 = s->mb_p[mb] - s->p0, i1 = s->mb_p[mb + 1] - s->p0;
  b->T = (int)(s->poff[i1] - s->poff[i0]);
  b->n_seq = (int)(i1 - i0);
  b->seq_start = s->seq_start_d + s->seq_start_off[mb];
  b->seq_len = s->seq_len_d + s->seq_start_off[mb];
  b->pos = s->pos_d + s->poff[i0];
  b->max_len = s->mb_max_len[mb];
  return s->poff[i0];
}

/* The backend rows of a microbatch's residual stream: in place, or staged in from the
 * host (stage_out copies them back after the block changed them). */
static float *stage_in(sweep_t *s, int64_t row0, int T) {
  const size_t H = (size_t)s->cfg->hidden;
  if (!s->x_on_host) return s->x + (size_t)row0 * H;
  s->be->iface->to_device(s->be, s->xd, s->x + (size_t)row0 * H, sizeof(float) * H * (size_t)T);
  return s->xd;
}

static void stage_out(sweep_t *s, int64_t row0, int T) {
  const size_t H = (size_t)s->cfg->hidden;
  if (s->x_on_host)
    s->be->iface->to_host(s->be, s->x + (size_t)row0 * H, s->xd, sizeof(float) * H * (size_t)T);
}

/* Wait for the backend, bring the rows of the hooks in mask (captured since the last
 * call) to the host; collective, so a device failure on any rank stops every rank. */
static int finish_layer(sweep_t *s, unsigned mask) {
  const ls_backend_iface_t *f = s->be->iface;
  const size_t H = (size_t)s->cfg->hidden;
  int rc = LS_OK;
  if (!s->be->host_visible)
    for (int h = 0; h < LS_HOOK_COUNT && rc == LS_OK; h++)
      if (s->out[h] && ((mask >> h) & 1))
        rc = f->to_host(s->be, s->out_host[h], s->out[h], sizeof(float) * H * (size_t)s->out_rows);
  if (f->sync && f->sync(s->be)) rc = LS_ERR;
  return ls_agree(rc, s->comm);
}

/* --preload-weights: every layer still to compute is read, broadcast and converted
 * before the layer loop, which then never waits for weights. */
static int preload_layers(sweep_t *s, ls_wpipe_t *wp) {
  double t0 = ls_now();
  s->lw_all = ls_calloc((size_t)s->cfg->n_layers, sizeof *s->lw_all, "layer table");
  if (ls_agree(s->lw_all ? LS_OK : LS_ERR, s->comm)) return LS_ERR;
  for (int L = s->start; L < s->n_run; L++) {
    const void *raw = ls_wpipe_acquire(wp, L);
    /* a conversion failure on one rank stops all of them here, before the next
     * broadcast (which every rank must enter) */
    if (!raw ||
        ls_agree(convert_layer(s, L, raw, wp->on_device,
                               (char *)s->wbuf + (size_t)L * s->wbuf_bytes, &s->lw_all[L]),
                 s->comm) ||
        ls_wpipe_release(wp, L))
      return LS_ERR;
  }
  if (ls_agree(s->be->iface->sync ? s->be->iface->sync(s->be) : LS_OK, s->comm)) return LS_ERR;
  double dt = ls_now() - t0;
  MPI_Allreduce(&dt, &s->t_preload, 1, MPI_DOUBLE, MPI_MAX, s->comm);
  ls_info("preloaded the weights of layers %d..%d in %.2f s", s->start, s->n_run - 1, s->t_preload);
  return LS_OK;
}

static int run_layers(sweep_t *s, ls_wpipe_t *wp) {
  const ls_config_t *c = s->cfg;
  if (s->o->preload_weights && preload_layers(s, wp)) return LS_ERR;
  double t_start = ls_now();
  for (int L = s->start; L < s->n_run; L++) {
    double t0 = ls_now();
    const ls_layer_weights_t *lw = &s->lw;
    if (s->lw_all) {
      lw = &s->lw_all[L];
    } else {
      const void *raw = ls_wpipe_acquire(wp, L);
      if (!raw || ls_agree(convert_layer(s, L, raw, wp->on_device, s->wbuf, &s->lw), s->comm) ||
          ls_wpipe_release(wp, L))
        return LS_ERR;
    }
    double t1 = ls_now();
    s->t_load[L] = t1 - t0;
    int sel = s->sel_index[L];
    double th = 0;
    for (int mb = 0; mb < s->n_mb; mb++) {
      ls_batch_t b;
      int64_t row0 = batch_of(s, mb, &b);
      float *x = stage_in(s, row0, b.T);
      double th0 = ls_now();
      if (sel >= 0 && (s->hooks & (1u << LS_HOOK_RESIDUAL_PRE)))
        capture(s, LS_HOOK_RESIDUAL_PRE, x, mb, &b);
      th += ls_now() - th0;
      ls_block_forward(s->be, c, lw, s->cos_d, s->sin_d, x, &b, &s->scratch);
      th0 = ls_now();
      if (sel >= 0) {
        if (s->hooks & (1u << LS_HOOK_ATTN_OUT)) capture(s, LS_HOOK_ATTN_OUT, s->scratch.attn_out, mb, &b);
        if (s->hooks & (1u << LS_HOOK_MLP_OUT)) capture(s, LS_HOOK_MLP_OUT, s->scratch.mlp_out, mb, &b);
        if (s->hooks & (1u << LS_HOOK_RESIDUAL_POST)) capture(s, LS_HOOK_RESIDUAL_POST, x, mb, &b);
      }
      stage_out(s, row0, b.T);
      th += ls_now() - th0;
      ls_wpipe_progress(wp);
    }
    if (finish_layer(s, sel >= 0 ? s->hooks & ~(1u << LS_HOOK_FINAL_NORM) : 0)) return LS_ERR;
    double t2 = ls_now();
    s->t_hooks[L] = th;
    s->t_forward[L] = t2 - t1 - th;
    if (sel >= 0) {
      /* every collective step is agreed on before the next, so a failure on any rank
       * stops all of them at the same point, reported once */
      for (int h = 0; h < LS_HOOK_PER_LAYER_COUNT; h++)
        if (s->hooks & (1u << h)) COLLECTIVE_STEP(s, ls_sw_write_hook(s, h, sel));
      /* the marker goes in only after the rows are on disk */
      COLLECTIVE_STEP(s, ls_h5out_flush(&s->h5));
      s->done_marks[sel] = L;
      COLLECTIVE_STEP(s, ls_h5out_attr_i64(&s->h5, "/", "layers_completed", s->done_marks, s->n_sel));
      COLLECTIVE_STEP(s, ls_h5out_flush(&s->h5));
    }
    s->t_write[L] = ls_now() - t2;
    ls_sw_progress(s, L, ls_now() - t_start);
    int stop = ls_sw_maybe_checkpoint(s, L + 1, ls_now() - t0);
    if (stop) return stop;
  }
  return LS_OK;
}

static int run_final_norm(sweep_t *s) {
  if (!(s->hooks & (1u << LS_HOOK_FINAL_NORM))) return LS_OK;
  const ls_config_t *c = s->cfg;
  const size_t H = (size_t)c->hidden;
  for (int mb = 0; mb < s->n_mb; mb++) {
    ls_batch_t b;
    int64_t row0 = batch_of(s, mb, &b);
    s->be->iface->rmsnorm(s->be, s->scratch.xn, stage_in(s, row0, b.T), s->final_norm_w, b.T,
                          (int)H, (float)c->rms_eps);
    capture(s, LS_HOOK_FINAL_NORM, s->scratch.xn, mb, &b);
  }
  if (finish_layer(s, 1u << LS_HOOK_FINAL_NORM)) return LS_ERR;
  COLLECTIVE_STEP(s, ls_sw_write_hook(s, LS_HOOK_FINAL_NORM, 0));
  return LS_OK;
}

/* ---- entry point --------------------------------------------------------------------------------------- */
static void sweep_free(sweep_t *s) {
  if (s->be) {
    ls_backend_t *be = s->be;
    const ls_backend_iface_t *f = be->iface;
    if (s->x_on_host) f->host_free(be, s->x); else f->free(be, s->x);
    f->free(be, s->xd);
    f->free(be, s->scratch_base);
    f->free(be, s->wbuf);
    f->free(be, s->final_norm_w);
    for (int h = 0; h < LS_HOOK_COUNT; h++) {
      f->free(be, s->out[h]);
      if (!be->host_visible) f->host_free(be, s->out_host[h]);
    }
    if (!be->host_visible) {
      f->free(be, s->seq_start_d); f->free(be, s->seq_len_d); f->free(be, s->pos_d);
      f->free(be, s->cos_d); f->free(be, s->sin_d);
    }
    ls_backend_free(be);
  }
  free(s->layers); free(s->sel_index); free(s->bounds); free(s->mb_p); free(s->seq_start);
  free(s->seq_start_off); free(s->pos); free(s->poff); free(s->seq_len); free(s->mb_max_len); free(s->cos_tab); free(s->sin_tab);
  free(s->done_marks); free(s->lw_all);
  free(s->t_load); free(s->t_forward); free(s->t_hooks); free(s->t_write);
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

/* The backend: --backend cpu or cuda, or auto: cuda when every rank has a usable GPU.
 * Every rank takes the same choice; the log says which and why. */
static int make_backend(sweep_t *s, int threads, int max_seq) {
  const ls_run_opts_t *o = s->o;
  char why[256] = "";
  int usable = strcmp(o->backend, "cpu") != 0 && ls_cuda_usable(why, sizeof why) > 0;
  int all = 0;
  MPI_Allreduce(&usable, &all, 1, MPI_INT, MPI_MIN, s->comm);
  const int cuda = strcmp(o->backend, "cuda") == 0 || (strcmp(o->backend, "auto") == 0 && all);
  const int bf16 = strcmp(o->dtype, "float32") != 0;
  if (cuda && !all) {
    ls_error_defer(1);
    if (!usable)
      ls_error("--backend cuda: no usable GPU on rank %d (%s); run with --backend cpu", s->rank,
               why);
    ls_agree_report(usable ? LS_OK : LS_ERR, s->comm);
    return LS_ERR;
  }
  if (!cuda && strcmp(o->dtype, "bf16") == 0) {
    if (s->rank == 0)
      ls_error("--dtype bf16: no usable GPU (%s) and the CPU backend computes in float32; use "
               "--dtype float32 or auto", why[0] ? why : "--backend cpu");
    return LS_ERR;
  }
  /* a failure on one rank makes every rank fail: the lowest rank with a reason says it */
  ls_error_defer(1);
  s->be = cuda ? ls_backend_cuda_new(bf16, max_seq, s->comm) : ls_backend_cpu_new(threads, max_seq);
  int failed = s->be == NULL, any = 0;
  MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, s->comm);
  ls_agree_report(ls_error_pending() ? LS_ERR : LS_OK, s->comm);
  if (any) {
    ls_backend_free(s->be);
    s->be = NULL;
    return LS_ERR;
  }
  if (!cuda && strcmp(o->backend, "auto") == 0 && why[0])
    ls_info("backend: %s; no usable GPU (%s)", s->be->desc, why);
  else
    ls_info("backend: %s", s->be->desc);
  return LS_OK;
}

int ls_sweep_run(const ls_run_opts_t *o, MPI_Comm comm) {
  sweep_t S, *s = &S;
  memset(s, 0, sizeof S);
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

  /* options are checked identically on every rank; rank 0 reports */
  ls_error_set_quiet(s->rank != 0);
  int orc = ls_hooks_parse(o->hooks, &s->hooks) || ls_pool_parse(o->pool, &s->pool) ? LS_ERR : LS_OK;
  if (orc == LS_OK && strcmp(o->backend, "auto") != 0 && strcmp(o->backend, "cpu") != 0 &&
      strcmp(o->backend, "cuda") != 0) {
    ls_error("--backend: unknown backend \"%s\"; choose auto, cpu or cuda", o->backend);
    orc = LS_ERR;
  }
  if (orc == LS_OK && strcmp(o->dtype, "auto") != 0 && strcmp(o->dtype, "bf16") != 0 &&
      strcmp(o->dtype, "float32") != 0) {
    ls_error("--dtype: unknown compute dtype \"%s\"; choose auto, bf16 or float32", o->dtype);
    orc = LS_ERR;
  }
  if (orc == LS_OK && strcmp(o->backend, "cpu") == 0 && strcmp(o->dtype, "bf16") == 0) {
    ls_error("--dtype bf16: the CPU backend computes in float32; use --dtype float32 (or auto), "
             "or --backend cuda");
    orc = LS_ERR;
  }
  if (orc == LS_OK && o->microbatch_tokens < 1) {
    ls_error("--microbatch-tokens must be at least 1 (got %lld)", (long long)o->microbatch_tokens);
    orc = LS_ERR;
  }
  ls_error_set_quiet(0);
  if (orc) return LS_ERR;
  if (ls_model_open(&s->model, o->model_dir, comm)) return LS_ERR;
  s->cfg = &s->model.cfg;
  const ls_config_t *c = s->cfg;
  ls_error_set_quiet(s->rank != 0);
  orc = ls_layers_parse(o->layers, c->n_layers, &s->layers, &s->n_sel);
  ls_error_set_quiet(0);
  if (orc) goto out;
  s->sel_index = ls_malloc(sizeof(int) * (size_t)c->n_layers, "layers");
  s->t_load = ls_calloc((size_t)c->n_layers, sizeof(double), "profile");
  s->t_forward = ls_calloc((size_t)c->n_layers, sizeof(double), "profile");
  s->t_hooks = ls_calloc((size_t)c->n_layers, sizeof(double), "profile");
  s->t_write = ls_calloc((size_t)c->n_layers, sizeof(double), "profile");
  if (!s->sel_index || !s->t_load || !s->t_forward || !s->t_hooks || !s->t_write) goto out;
  for (int L = 0; L < c->n_layers; L++) s->sel_index[L] = -1;
  for (int i = 0; i < s->n_sel; i++) s->sel_index[s->layers[i]] = i;
  /* compute only as deep as needed: the last selected layer, or all for final_norm */
  s->n_run = (s->hooks & (1u << LS_HOOK_FINAL_NORM)) ? c->n_layers : 0;
  if (s->hooks & ((1u << LS_HOOK_PER_LAYER_COUNT) - 1))
    for (int i = 0; i < s->n_sel; i++)
      if (s->layers[i] + 1 > s->n_run) s->n_run = s->layers[i] + 1;
  if (ls_sw_load_dataset(s)) goto out;
  int64_t longest = 1;
  for (int64_t i = 0; i < s->data.n; i++) longest = max64(longest, ls_dataset_len(&s->data, i));
  int threads = o->threads > 0 ? o->threads : default_threads(comm);
  s->threads = threads;
  if (make_backend(s, threads, (int)longest + LS_ROW_PAD)) goto out;
  MPI_Allreduce(&s->be->row_align, &s->align, 1, MPI_INT, MPI_MAX, comm);
  if (ls_sw_plan(s)) goto out;
  if (o->plan_only) { rc = LS_OK; goto out; }
  if (ls_agree(alloc_buffers(s), comm)) goto out;
  s->done_marks = ls_malloc(sizeof(int64_t) * (size_t)(s->n_sel + 1), "markers");
  if (!s->done_marks) goto out;
  for (int i = 0; i < s->n_sel; i++) s->done_marks[i] = -1;
  ls_sw_fingerprints(s);
  int resumed = 0;
  if (o->resume) {
    resumed = ls_sw_try_resume(s);
    if (resumed < 0) goto out;
    if (resumed == 2) { rc = LS_OK; goto out; } /* already complete */
  }
  if (!resumed) {
    ls_error_defer(1); /* a failure every rank sees is reported once */
    int crc = ls_sw_create_output(s);
    if (ls_agree_report(crc, comm) || embed(s)) goto out;
  }
  if (load_final_norm(s)) goto out;
  if (ls_agree(ls_wpipe_init(&wp, &s->model, s->be, s->start, s->n_run, comm), comm)) goto out;
  wp_live = 1;
  ls_sw_install_signals();
  s->last_ckpt = s->start;
  int lr = run_layers(s, &wp);
  if (lr == LS_STOPPED) { rc = LS_STOPPED; goto out; }
  if (lr || run_final_norm(s)) goto out;
  s->t_total = ls_now() - t_begin;
  if (ls_sw_write_profile(s, &wp)) goto out;
  /* complete only after every collective write finished and the file was flushed */
  if (ls_agree(ls_h5out_flush(&s->h5), comm)) goto out;
  if (ls_agree(ls_sw_write_str_attr(s, "status", "complete"), comm)) goto out;
  rc = ls_agree(ls_h5out_close(&s->h5), comm);
  s->h5_open = 0;
  if (rc == LS_OK) {
    if (o->checkpoint_every >= 0) ls_ckpt_remove(s->ckpt_dir, comm);
    ls_sw_print_summary(s, &wp);
    ls_info("wrote %s (complete)", o->out_path);
  }
out:
  if (wp_live) ls_wpipe_free(&wp);
  if (s->h5_open) {
    ls_h5out_close(&s->h5);
    if (s->rank == 0) ls_info("%s left with status \"partial\"", o->out_path);
  }
  sweep_free(s);
  return rc;
}
