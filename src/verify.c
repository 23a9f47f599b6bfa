/* verify.c: --verify (see verify.h): the sample, the rows each rank keeps, the CPU oracle
 * on rank 0 and the per-layer comparison. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "registry.h"
#include "sweep_internal.h"

static const char *const k_vhooks = "attn_out,mlp_out,residual_post";

/* Collective, after the buffers: the sample, this rank's rows, rank 0's oracle. */
int ls_sw_verify_setup(sweep_t *s) {
  ls_verify_t *v = &s->vf;
  if (s->o->verify <= 0) return LS_OK;
  const ls_dataset_t *d = &s->data;
  const size_t H = (size_t)s->cfg->hidden;
  v->n = s->o->verify < d->n ? s->o->verify : (int)d->n;
  v->strict = s->o->verify_strict;
  /* float32 GEMMs against the double-summed oracle: ~1e-6; bf16 GEMM inputs: ~1e-2 */
  v->tol = strcmp(s->be->compute_dtype, "bf16") == 0 ? 5e-2 : 1e-4;
  v->prompts = ls_malloc(sizeof(int64_t) * (size_t)v->n, "verify");
  v->mine = ls_malloc(sizeof(int64_t) * (size_t)v->n, "verify");
  v->mine_row = ls_malloc(sizeof(int64_t) * (size_t)(v->n + 1), "verify");
  v->err = ls_malloc(sizeof(double) * LS_VERIFY_HOOKS, "verify");
  if (!v->prompts || !v->mine || !v->mine_row || !v->err) return LS_ERR;
  v->mine_row[0] = 0;
  int64_t rows_all = 0, longest = 1;
  for (int i = 0; i < v->n; i++) { /* evenly spread, distinct */
    const int64_t p = (int64_t)(((2.0 * i + 1.0) * (double)d->n) / (2.0 * v->n));
    v->prompts[i] = p;
    const int64_t len = ls_dataset_len(d, p);
    rows_all += len;
    longest = max64(longest, len);
    if (p >= s->sh.p0 && p < s->sh.p0 + s->sh.n_prompts) {
      v->mine[v->n_mine] = p;
      v->mine_row[v->n_mine + 1] = v->mine_row[v->n_mine] + len;
      v->n_mine++;
    }
  }
  v->rows_all = rows_all;
  for (int k = 0; k < 4; k++) {
    v->cap[k] = ls_malloc(sizeof(float) * H * (size_t)max64(v->mine_row[v->n_mine], 1), "verify");
    if (!v->cap[k]) return LS_ERR;
  }
  if (s->rank != 0) return LS_OK;
  /* rank 0: the oracle, its layer weights and one batch of the sampled prompts */
  const ls_backend_entry_t *e = ls_backend_lookup("cpu");
  v->counts = ls_calloc((size_t)s->size, sizeof(int), "verify");
  v->displs = ls_calloc((size_t)s->size, sizeof(int), "verify");
  if (!e || !v->counts || !v->displs) return LS_ERR;
  const ls_backend_params_t p = {s->threads, (int)longest + LS_ROW_PAD, 0, MPI_COMM_SELF, 1};
  if (!(v->be = ls_backend_create(e, &p))) return LS_ERR;
  const int align = v->be->row_align > 0 ? v->be->row_align : 1;
  v->seq_start = ls_malloc(sizeof(int32_t) * (size_t)(v->n + 1), "verify");
  v->seq_len = ls_malloc(sizeof(int32_t) * (size_t)(v->n + 1), "verify");
  if (!v->seq_start || !v->seq_len) return LS_ERR;
  int64_t T = 0;
  for (int i = 0; i < v->n; i++) {
    const int64_t len = ls_dataset_len(d, v->prompts[i]);
    const int64_t padded = (len + align - 1) / align * align;
    v->seq_start[i] = (int32_t)T;
    v->seq_len[i] = (int32_t)len;
    v->max_len = (int)max64(v->max_len, padded);
    T += padded;
  }
  v->seq_start[v->n] = (int32_t)T;
  v->T = (int)T;
  v->pos = ls_malloc(sizeof(int32_t) * (size_t)ls_round_rows(v->T), "verify");
  if (!v->pos) return LS_ERR;
  for (int i = 0; i < v->n; i++)
    for (int32_t r = v->seq_start[i]; r < v->seq_start[i + 1]; r++) v->pos[r] = r - v->seq_start[i];
  const ls_backend_iface_t *f = v->be->iface;
  const size_t rows = (size_t)ls_round_rows(v->T) + LS_ROW_PAD;
  v->x = f->alloc(v->be, sizeof(float) * rows * H, "verify");
  v->scratch = f->alloc(v->be, sizeof(float) * ls_family_scratch_floats(s->fam, s->cfg, v->T), "verify");
  v->wbuf = f->alloc(v->be, ls_sw_layer_weight_bytes(&s->model, v->be), "verify: layer weights");
  v->lw = ls_calloc((size_t)s->model.n_slots, sizeof(void *), "verify");
  v->erows = ls_calloc((size_t)(s->cfg->n_experts + 1), sizeof(int64_t), "verify");
  if (!v->x || !v->scratch || !v->wbuf || !v->lw || !v->erows) return LS_ERR;
  if (s->fam->host_scratch_bytes &&
      !(v->host = ls_aligned_alloc(s->fam->host_scratch_bytes(s->cfg, v->T), "verify")))
    return LS_ERR;
  for (int k = 0; k < 4; k++) {
    v->all[k] = ls_malloc(sizeof(float) * H * (size_t)rows_all, "verify");
    v->ref[k] = ls_malloc(sizeof(float) * H * (size_t)rows_all, "verify");
    if (!v->all[k] || !v->ref[k]) return LS_ERR;
  }
  if (f->reserve && f->reserve(v->be, v->T, ls_sw_max_gemm_in(&s->model))) return LS_ERR;
  ls_info("--verify: %d prompts (%lld tokens) checked at every layer against the CPU oracle, "
          "tolerance %.0e", v->n, (long long)rows_all, v->tol);
  return LS_OK;
}

void ls_sw_verify_free(sweep_t *s) {
  ls_verify_t *v = &s->vf;
  if (v->be) {
    const ls_backend_iface_t *f = v->be->iface;
    f->free(v->be, v->x);
    f->free(v->be, v->scratch);
    f->free(v->be, v->wbuf);
    ls_backend_free(v->be);
  }
  for (int k = 0; k < 4; k++) { free(v->cap[k]); free(v->all[k]); free(v->ref[k]); }
  free(v->prompts); free(v->mine); free(v->mine_row); free(v->err); free(v->counts);
  free(v->displs); free(v->seq_start); free(v->seq_len); free(v->pos); free(v->lw);
  free(v->erows); free(v->host);
  memset(v, 0, sizeof *v);
}

/* Collective, at the output's creation: /verify/max_rel_error, NaN until a layer is checked */
int ls_sw_verify_create(sweep_t *s) {
  const ls_verify_t *v = &s->vf;
  if (v->n == 0) return LS_OK;
  const hsize_t dims[2] = {(hsize_t)s->sel.n_run, LS_VERIFY_HOOKS}, start[2] = {0, 0};
  const hsize_t count[2] = {s->rank == 0 ? dims[0] : 0, s->rank == 0 ? dims[1] : 0};
  double *nan = ls_malloc(sizeof(double) * (size_t)(dims[0] * dims[1] + 1), "verify");
  if (!nan) return LS_ERR;
  for (hsize_t i = 0; i < dims[0] * dims[1]; i++) nan[i] = NAN;
  const char *ds = "/verify/max_rel_error";
  int rc = ls_h5out_create_dataset(&s->out.h5, ds, H5T_IEEE_F64LE, 2, dims);
  if (rc == LS_OK) rc = ls_h5out_write(&s->out.h5, ds, H5T_NATIVE_DOUBLE, 2, start, count, nan);
  free(nan);
  if (rc == LS_OK) rc = ls_h5out_attr_str(&s->out.h5, ds, "hooks", k_vhooks);
  if (rc == LS_OK) rc = ls_h5out_attr_i64(&s->out.h5, ds, "prompts", v->prompts, v->n);
  if (rc == LS_OK) rc = ls_h5out_attr_f64(&s->out.h5, ds, "tolerance", &v->tol, 1);
  if (rc == LS_OK)
    rc = ls_h5out_attr_str(&s->out.h5, ds, "oracle",
                           "cpu backend, float32 with GEMM sums in double (--precise-gemm)");
  return rc;
}

/* A hook point of microbatch mb: the rows of this rank's sampled prompts in it */
void ls_sw_verify_capture(sweep_t *s, int h, const float *rows, int width, int mb,
                          const ls_batch_t *b) {
  ls_verify_t *v = &s->vf;
  if (h >= 4 || width != s->cfg->hidden) return;
  const size_t H = (size_t)width;
  const int64_t p0 = s->sh.mb_p[mb], p1 = s->sh.mb_p[mb + 1];
  for (int k = 0; k < v->n_mine; k++) {
    if (v->mine[k] < p0 || v->mine[k] >= p1) continue;
    const int q = (int)(v->mine[k] - p0);
    const size_t len = (size_t)(v->mine_row[k + 1] - v->mine_row[k]);
    s->be->iface->to_host(s->be, v->cap[h] + (size_t)v->mine_row[k] * H,
                          rows + (size_t)b->seq_start_h[q] * H, sizeof(float) * H * len);
    v->seen |= 1u << h;
  }
}

/* Rank 0, while it still holds layer L's raw bytes (host memory): the oracle's weights */
int ls_sw_verify_convert(sweep_t *s, int L, const void *raw) {
  if (s->vf.n == 0 || s->rank != 0) return LS_OK;
  return ls_sw_convert_layer(s, s->vf.be, L, raw, 0, s->vf.wbuf, s->vf.lw);
}

typedef struct {
  sweep_t *s;
} oracle_ctx_t;

static void oracle_hook(void *ctx, ls_hook_t h, float *rows, int width) {
  sweep_t *s = ((oracle_ctx_t *)ctx)->s;
  ls_verify_t *v = &s->vf;
  if (h < 1 || h > 2 || width != s->cfg->hidden) return;
  const size_t H = (size_t)width;
  int64_t r = 0;
  for (int i = 0; i < v->n; i++) {
    memcpy(v->ref[h] + (size_t)r * H, rows + (size_t)v->seq_start[i] * H,
           sizeof(float) * H * (size_t)v->seq_len[i]);
    r += v->seq_len[i];
  }
  v->ref_seen |= 1u << h;
}

/* the largest row-wise relative error of a against ref (rows x H) */
static double max_rel(const float *a, const float *ref, int64_t rows, size_t H) {
  double worst = 0;
  for (int64_t r = 0; r < rows; r++) {
    double err = 0, mag = 0;
    for (size_t j = 0; j < H; j++) {
      const double x = a[(size_t)r * H + j], y = ref[(size_t)r * H + j];
      err = fmax(err, isfinite(x) ? fabs(x - y) : INFINITY);
      mag = fmax(mag, fabs(y));
    }
    const double e = mag > 0 ? err / mag : err;
    worst = fmax(worst, e);
  }
  return worst;
}

/* Collective, after layer L's rows are on the host: gather, recompute, compare, store. */
int ls_sw_verify_layer(sweep_t *s, int L) {
  ls_verify_t *v = &s->vf;
  if (v->n == 0) return LS_OK;
  const size_t H = (size_t)s->cfg->hidden;
  MPI_Datatype row_t;
  MPI_Type_contiguous((int)H, MPI_FLOAT, &row_t);
  MPI_Type_commit(&row_t);
  const int mine = (int)v->mine_row[v->n_mine];
  MPI_Gather(&mine, 1, MPI_INT, v->counts, 1, MPI_INT, 0, s->comm);
  if (s->rank == 0)
    for (int r = 1; r < s->size; r++) v->displs[r] = v->displs[r - 1] + v->counts[r - 1];
  unsigned seen = 0;
  MPI_Allreduce(&v->seen, &seen, 1, MPI_UNSIGNED, MPI_BOR, s->comm);
  v->seen = 0;
  for (int k = 0; k < 4; k++) /* prompts ascending = ranks ascending: in sample order */
    MPI_Gatherv(v->cap[k], mine, row_t, v->all[k], v->counts, v->displs, row_t, 0, s->comm);
  MPI_Type_free(&row_t);
  int rc = LS_OK;
  double err[LS_VERIFY_HOOKS] = {NAN, NAN, NAN};
  if (s->rank == 0) {
    /* test switch: the backend's residual_post of the first sampled row is off by 1% of
     * the row's largest value at this layer (a wrong kernel) */
    const char *fault = getenv("LS_FAULT_VERIFY_LAYER");
    if (fault && *fault && atoi(fault) == L) {
      float mx = 0;
      for (size_t j = 0; j < H; j++) mx = fmaxf(mx, fabsf(v->all[3][j]));
      v->all[3][0] += 0.01f * mx;
    }
    /* the batch: each sampled prompt's input rows, padding repeating the last real row */
    int64_t r = 0;
    for (int i = 0; i < v->n; i++) {
      const int len = v->seq_len[i];
      memcpy(v->x + (size_t)v->seq_start[i] * H, v->all[0] + (size_t)r * H, sizeof(float) * H * (size_t)len);
      for (int32_t t = v->seq_start[i] + len; t < v->seq_start[i + 1]; t++)
        memcpy(v->x + (size_t)t * H, v->all[0] + (size_t)(r + len - 1) * H, sizeof(float) * H);
      r += len;
    }
    const ls_batch_t b = {v->T, v->n, v->seq_start, v->seq_len, v->pos, v->max_len, v->seq_start,
                          v->seq_len};
    const int lr = s->cfg->local_rope && ls_config_rope(s->cfg, L) == &s->cfg->rope_local;
    oracle_ctx_t ctx = {s};
    v->ref_seen = 0;
    const ls_block_t blk = {v->be, s->cfg, L, v->lw, s->buf.cos_tab[lr], s->buf.sin_tab[lr], &b,
                            v->scratch, v->T, oracle_hook, &ctx, v->host, v->erows};
    s->fam->forward(&blk, v->x);
    r = 0;
    for (int i = 0; i < v->n; i++) {
      memcpy(v->ref[3] + (size_t)r * H, v->x + (size_t)v->seq_start[i] * H,
             sizeof(float) * H * (size_t)v->seq_len[i]);
      r += v->seq_len[i];
    }
    v->ref_seen |= 1u << LS_HOOK_RESIDUAL_POST;
    for (int k = 1; k < 4; k++)
      if ((seen >> k) & 1 && (v->ref_seen >> k) & 1)
        err[k - 1] = max_rel(v->all[k], v->ref[k], v->rows_all, H);
  }
  /* the layer's row of /verify/max_rel_error (rank 0 writes, every rank takes part) */
  const hsize_t start[2] = {(hsize_t)L, 0};
  const hsize_t count[2] = {s->rank == 0 ? 1 : 0, s->rank == 0 ? LS_VERIFY_HOOKS : 0};
  COLLECTIVE_STEP(s, ls_h5out_write(&s->out.h5, "/verify/max_rel_error", H5T_NATIVE_DOUBLE, 2,
                                    start, count, err));
  if (s->rank == 0)
    for (int k = 0; k < LS_VERIFY_HOOKS; k++) {
      if (!(err[k] > v->tol)) continue; /* NaN: not at this layer */
      const char *hook = ls_hook_name((ls_hook_t)(k + 1));
      if (v->strict) {
        ls_error("--verify-strict: layer %d %s: the backend's rows are %.3g (row-wise relative) "
                 "from the CPU oracle's, above the %s tolerance %.0e; %s is partial", L, hook,
                 err[k], s->be->compute_dtype, v->tol, s->o->out_path);
        rc = LS_ERR;
        break;
      }
      ls_warn("--verify: layer %d %s: the backend's rows are %.3g (row-wise relative) from the "
              "CPU oracle's, above the %s tolerance %.0e", L, hook, err[k], s->be->compute_dtype,
              v->tol);
    }
  for (int k = 0; k < LS_VERIFY_HOOKS; k++) v->err[k] = err[k];
  return ls_agree(rc, s->comm);
}
