/* reduce.c: --reduce (see reduce.h): parsing, buffers, the output's /reductions datasets,
 * and the per-layer step: column maxima (the fixed-point grid, the same on every rank),
 * exact sums on the host, the exact Gram matrix on the backend, an exact merge on rank 0
 * (integer sums in any order), then mean, covariance, eigenvectors and class means
 * formed once from the merged integers. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host_blas.h"
#include "sweep_internal.h"

/* ---- parsing ------------------------------------------------------------------------------ */
int ls_reduce_parse(const char *spec, ls_reduce_spec_t *r) {
  memset(r, 0, sizeof *r);
  if (!spec || !*spec) return LS_OK;
  char buf[256];
  if (strlen(spec) >= sizeof buf) {
    ls_error("--reduce: the list is too long (%zu bytes)", strlen(spec));
    return LS_ERR;
  }
  snprintf(buf, sizeof buf, "%s", spec);
  for (char *save = NULL, *it = strtok_r(buf, ",", &save); it; it = strtok_r(NULL, ",", &save)) {
    if (strcmp(it, "mean") == 0) r->what |= LS_RED_MEAN;
    else if (strcmp(it, "cov") == 0) r->what |= LS_RED_COV;
    else if (strcmp(it, "diffmeans") == 0) r->what |= LS_RED_DIFFMEANS;
    else if (strncmp(it, "pca:", 4) == 0) {
      char *end = NULL;
      long k = strtol(it + 4, &end, 10);
      if (end == it + 4 || *end || k < 1 || k > (1 << 20)) {
        ls_error("--reduce: \"%s\": pca needs a component count, e.g. pca:16", it);
        return LS_ERR;
      }
      r->what |= LS_RED_PCA;
      r->pca_k = (int)k;
    } else {
      ls_error("--reduce: unknown reduction \"%s\"; choose from mean, cov, pca:K, diffmeans%s", it,
               strcmp(it, "pca") == 0 ? " (pca needs a component count: pca:K)" : "");
      return LS_ERR;
    }
  }
  if (!r->what) {
    ls_error("--reduce: \"%s\" names no reduction; choose from mean, cov, pca:K, diffmeans", spec);
    return LS_ERR;
  }
  snprintf(r->canon, sizeof r->canon, "%s%s%s", r->what & LS_RED_MEAN ? "mean," : "",
           r->what & LS_RED_COV ? "cov," : "", r->what & LS_RED_DIFFMEANS ? "diffmeans," : "");
  if (r->what & LS_RED_PCA)
    snprintf(r->canon + strlen(r->canon), sizeof r->canon - strlen(r->canon), "pca:%d,", r->pca_k);
  r->canon[strlen(r->canon) - 1] = '\0';
  return LS_OK;
}

/* ---- exact integers ------------------------------------------------------------------------ */
typedef struct { uint64_t w[4]; } i256_t; /* two's complement */

static i256_t i256_of_i128(ls_i128 v) {
  const uint64_t sign = v < 0 ? ~(uint64_t)0 : 0;
  i256_t r = {{(uint64_t)v, (uint64_t)((unsigned __int128)v >> 64), sign, sign}};
  return r;
}
static i256_t i256_of_192(const uint64_t *a) {
  const uint64_t sign = (a[2] >> 63) ? ~(uint64_t)0 : 0;
  i256_t r = {{a[0], a[1], a[2], sign}};
  return r;
}
/* the product mod 2^256: exact whenever it fits, as every product here does */
static i256_t i256_mul(i256_t a, i256_t b) {
  i256_t r = {{0, 0, 0, 0}};
  for (int i = 0; i < 4; i++) {
    unsigned __int128 carry = 0;
    for (int j = 0; i + j < 4; j++) {
      const unsigned __int128 t = (unsigned __int128)a.w[i] * b.w[j] + r.w[i + j] + carry;
      r.w[i + j] = (uint64_t)t;
      carry = t >> 64;
    }
  }
  return r;
}
static i256_t i256_sub(i256_t a, i256_t b) {
  i256_t r;
  uint64_t borrow = 0;
  for (int i = 0; i < 4; i++) {
    const uint64_t d = a.w[i] - b.w[i];
    const uint64_t b1 = a.w[i] < b.w[i];
    r.w[i] = d - borrow;
    borrow = b1 | (d < borrow);
  }
  return r;
}
static long double i256_ld(i256_t a) {
  const int neg = (int)(a.w[3] >> 63);
  if (neg) { /* negate */
    uint64_t carry = 1;
    for (int i = 0; i < 4; i++) {
      a.w[i] = ~a.w[i] + carry;
      carry = carry && a.w[i] == 0;
    }
  }
  long double v = 0;
  for (int i = 3; i >= 0; i--) v = v * 18446744073709551616.0L + (long double)a.w[i];
  return neg ? -v : v;
}

/* ---- MPI: exact sums of 128- and 192-bit integers --------------------------------------------- */
static void add128_fn(void *in, void *inout, int *len, MPI_Datatype *t) {
  (void)t;
  for (int i = 0; i < *len; i++) {
    ls_i128 a, b;
    memcpy(&a, (char *)in + 16 * (size_t)i, 16);
    memcpy(&b, (char *)inout + 16 * (size_t)i, 16);
    b = (ls_i128)((unsigned __int128)a + (unsigned __int128)b);
    memcpy((char *)inout + 16 * (size_t)i, &b, 16);
  }
}
static void add192_fn(void *in, void *inout, int *len, MPI_Datatype *t) {
  (void)t;
  for (int i = 0; i < *len; i++)
    ls_fx_add3((uint64_t *)inout + 3 * (size_t)i, (const uint64_t *)in + 3 * (size_t)i);
}

/* ---- setup ------------------------------------------------------------------------------------ */
static int cmp_i64(const void *a, const void *b) {
  const int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

/* Collective, after the plan (out rows known): checks, the class of every row, buffers. */
int ls_sw_reduce_setup(sweep_t *s) {
  ls_reduce_t *r = &s->red;
  const unsigned w = r->spec.what;
  if (!w) return LS_OK;
  const ls_dataset_t *d = &s->data;
  const int root = s->rank == 0;
  r->W = 0;
  for (int h = 0; h < LS_HOOK_COUNT; h++)
    if ((s->sel.hooks >> h) & 1) {
      const int W = ls_sw_hook_width(s, h);
      if (r->W < W) r->W = W;
      if ((w & LS_RED_PCA) && r->spec.pca_k > W) {
        if (root)
          ls_error("--reduce pca:%d: %s has only %d columns; ask for at most pca:%d", r->spec.pca_k,
                   ls_hook_name(h), W, W);
        return LS_ERR;
      }
    }
  if ((w & (LS_RED_COV | LS_RED_PCA)) && s->sh.n_out_rows < 2) {
    if (root)
      ls_error("--reduce %s: a covariance needs at least 2 rows; %s gives %lld", r->spec.canon,
               s->o->data_path, (long long)s->sh.n_out_rows);
    return LS_ERR;
  }
  if ((w & (LS_RED_COV | LS_RED_PCA)) && !s->be->iface->gram_fixed) {
    if (root) ls_error("--reduce cov/pca: the %s backend has no gram_fixed op", s->be->iface->name);
    return LS_ERR;
  }
  r->n_class = 1;
  if (w & LS_RED_DIFFMEANS) {
    if (!d->has_label) {
      if (root)
        ls_error("--reduce diffmeans needs a \"label\" (an integer) on every line of %s",
                 s->o->data_path);
      return LS_ERR;
    }
    int64_t *lab = ls_malloc(sizeof(int64_t) * (size_t)d->n, "labels");
    if (!lab) return LS_ERR;
    memcpy(lab, d->labels, sizeof(int64_t) * (size_t)d->n);
    qsort(lab, (size_t)d->n, sizeof *lab, cmp_i64);
    int64_t m = 0;
    for (int64_t i = 0; i < d->n; i++)
      if (i == 0 || lab[i] != lab[m - 1]) lab[m++] = lab[i];
    if (m > LS_RED_MAX_CLASSES) {
      if (root)
        ls_error("--reduce diffmeans: %s has %lld distinct labels; at most %d classes are kept",
                 s->o->data_path, (long long)m, LS_RED_MAX_CLASSES);
      free(lab);
      return LS_ERR;
    }
    r->n_class = (int)m;
    r->class_label = lab;
    r->binary = m == 2 && lab[0] == 0 && lab[1] == 1;
  }
  /* the class of each row: a prompt's, for its pooled row or each of its tokens */
  const int raw = s->sel.pool == LS_POOL_NONE;
  r->class_rows = ls_calloc((size_t)r->n_class, sizeof(int64_t), "classes");
  r->row_class = ls_malloc(sizeof(int32_t) * (size_t)max64(s->sh.out_rows, 1), "classes");
  if (!r->class_rows || !r->row_class) return LS_ERR;
  int64_t k = 0;
  for (int64_t p = 0; p < d->n; p++) {
    int c = 0;
    if (r->class_label) {
      const int64_t *hit = bsearch(&d->labels[p], r->class_label, (size_t)r->n_class,
                                   sizeof(int64_t), cmp_i64);
      c = (int)(hit - r->class_label);
    }
    const int64_t rows = raw ? ls_dataset_len(d, p) : 1;
    r->class_rows[c] += rows;
    if (p >= s->sh.p0 && p < s->sh.p0 + s->sh.n_prompts)
      for (int64_t i = 0; i < rows; i++) r->row_class[k++] = c;
  }
  const size_t W = (size_t)r->W;
  r->colmax = ls_malloc(sizeof(float) * W, "reductions");
  r->shift = ls_malloc(sizeof(int32_t) * W, "reductions");
  r->sums = ls_malloc(sizeof(ls_i128) * W * (size_t)r->n_class, "reductions");
  r->row = ls_malloc(sizeof(double) * W * (size_t)(r->n_class + 1), "reductions");
  if (!r->colmax || !r->shift || !r->sums || !r->row) return LS_ERR;
  if (w & (LS_RED_COV | LS_RED_PCA)) {
    const ls_backend_iface_t *f = s->be->iface;
    r->shift_d = f->alloc(s->be, sizeof(int32_t) * W, "reductions");
    r->acc_d = f->alloc(s->be, sizeof(uint64_t) * 3 * W * W, "covariance sums");
    r->acc_h = s->be->host_visible ? r->acc_d
                                   : f->host_alloc(s->be, sizeof(uint64_t) * 3 * W * W, "covariance sums");
    r->scratch_d = f->alloc(s->be, ls_gram_scratch_bytes(r->W), "covariance scratch");
    if (!r->shift_d || !r->acc_d || !r->acc_h || !r->scratch_d) return LS_ERR;
    if (root) {
      r->mat = ls_malloc(sizeof(double) * W * W, "covariance");
      if (!r->mat) return LS_ERR;
      if (w & LS_RED_PCA) {
        r->vals = ls_malloc(sizeof(double) * (size_t)r->spec.pca_k, "pca");
        r->vecs = ls_malloc(sizeof(double) * (size_t)r->spec.pca_k * W, "pca");
        if (!r->vals || !r->vecs) return LS_ERR;
      }
    }
  }
  MPI_Type_contiguous(2, MPI_UINT64_T, &r->t128);
  MPI_Type_commit(&r->t128);
  MPI_Type_contiguous(3, MPI_UINT64_T, &r->t192);
  MPI_Type_commit(&r->t192);
  MPI_Op_create(add128_fn, 1, &r->add128);
  MPI_Op_create(add192_fn, 1, &r->add192);
  r->mpi_live = 1;
  return LS_OK;
}

void ls_sw_reduce_free(sweep_t *s) {
  ls_reduce_t *r = &s->red;
  if (s->be) {
    const ls_backend_iface_t *f = s->be->iface;
    if (r->acc_h && r->acc_h != r->acc_d) f->host_free(s->be, r->acc_h);
    if (r->acc_d) f->free(s->be, r->acc_d);
    if (r->shift_d) f->free(s->be, r->shift_d);
    if (r->scratch_d) f->free(s->be, r->scratch_d);
  }
  free(r->class_label); free(r->class_rows); free(r->row_class); free(r->colmax); free(r->shift);
  free(r->sums); free(r->row); free(r->mat); free(r->vals); free(r->vecs);
  if (r->mpi_live) {
    MPI_Type_free(&r->t128);
    MPI_Type_free(&r->t192);
    MPI_Op_free(&r->add128);
    MPI_Op_free(&r->add192);
  }
  memset(r, 0, sizeof *r);
}

/* ---- the output's datasets ------------------------------------------------------------------ */
static void red_path(char *buf, size_t cap, int h, const char *name) {
  snprintf(buf, cap, "/reductions/%s/%s", ls_hook_name(h), name);
}

/* A float64 (or int64) dataset of hook h: [layers,] dims... (the layer axis only for
 * layered hooks), its axes attached to the scales named in scales (NULL: none). */
typedef struct {
  const char *scale;        /* "/layer", "/hidden", ... */
  const char *dimname;
  char dsets[24][128];
  int idx[24];
  int n;
} attach_t;

static void attach(attach_t *a, int n_att, const char *scale, const char *dset, int axis) {
  for (int i = 0; i < n_att; i++)
    if (strcmp(a[i].scale, scale) == 0 && a[i].n < 24) {
      snprintf(a[i].dsets[a[i].n], sizeof a[i].dsets[0], "%s", dset);
      a[i].idx[a[i].n++] = axis;
      return;
    }
}

static int make(sweep_t *s, int h, const char *name, hid_t type, int nd, const hsize_t *dims,
                const char *const *axes, attach_t *att, int n_att) {
  char path[128];
  red_path(path, sizeof path, h, name);
  const int layered = ls_hook_layered(h);
  hsize_t full[4];
  int k = 0;
  if (layered) full[k++] = (hsize_t)ls_sw_hook_layers(s, h);
  for (int i = 0; i < nd; i++) full[k++] = dims[i];
  if (ls_h5out_create_dataset(&s->out.h5, path, type, k, full)) return LS_ERR;
  int ax = 0;
  if (layered) attach(att, n_att, h == LS_HOOK_ROUTER_LOGITS ? "/moe_layer" : "/layer", path, ax++);
  for (int i = 0; i < nd; i++, ax++)
    if (axes && axes[i]) attach(att, n_att, axes[i], path, ax);
  return LS_OK;
}

/* an int64 coordinate 0 .. n-1 (or values) written by rank 0 */
static int coord(sweep_t *s, const char *path, hsize_t n, const int64_t *values) {
  int64_t *v = ls_malloc(sizeof(int64_t) * (size_t)(n + 1), "coordinates");
  if (!v) return LS_ERR;
  for (hsize_t i = 0; i < n; i++) v[i] = values ? values[i] : (int64_t)i;
  hsize_t start = 0, count = s->rank == 0 ? n : 0;
  int rc = ls_h5out_create_dataset(&s->out.h5, path, H5T_STD_I64LE, 1, &n);
  if (rc == LS_OK) rc = ls_h5out_write(&s->out.h5, path, H5T_NATIVE_INT64, 1, &start, &count, v);
  free(v);
  return rc;
}

/* Collective, at the output's creation (after its coordinates exist): every dataset of
 * /reductions, with named dimensions for xarray. */
int ls_sw_reduce_create(sweep_t *s) {
  const ls_reduce_t *r = &s->red;
  const unsigned w = r->spec.what;
  if (!w) return LS_OK;
  int rc = ls_sw_write_str_attr(s, "reduce", r->spec.canon);
  const int cov = (w & LS_RED_COV) != 0, pca = (w & LS_RED_PCA) != 0;
  const int router = (s->sel.hooks >> LS_HOOK_ROUTER_LOGITS) & 1;
  const int hidden_hooks = (s->sel.hooks & ~(1u << LS_HOOK_ROUTER_LOGITS)) != 0;
  /* the second axis of a covariance */
  if (rc == LS_OK && cov && hidden_hooks) rc = coord(s, "/hidden_col", (hsize_t)s->cfg->hidden, NULL);
  if (rc == LS_OK && cov && router) rc = coord(s, "/expert_col", (hsize_t)s->cfg->n_experts, NULL);
  attach_t *att = ls_calloc(8, sizeof(attach_t), "dimension scales");
  if (!att) return LS_ERR;
  const char *names[8][2] = {{"/layer", "layer"}, {"/hidden", "hidden"}, {"/moe_layer", "moe_layer"},
                             {"/expert", "expert"}, {"/hidden_col", "hidden_col"},
                             {"/expert_col", "expert_col"}};
  const int n_att = 6;
  for (int i = 0; i < n_att; i++) {
    att[i].scale = names[i][0];
    att[i].dimname = names[i][1];
  }
  char path[128];
  int64_t *sel = ls_malloc(sizeof(int64_t) * (size_t)(s->sel.n_sel + 1), "layers");
  if (!sel) { free(att); return LS_ERR; }
  for (int h = 0; h < LS_HOOK_COUNT && rc == LS_OK; h++) {
    if (!((s->sel.hooks >> h) & 1)) continue;
    const int rt = h == LS_HOOK_ROUTER_LOGITS;
    const hsize_t W = (hsize_t)ls_sw_hook_width(s, h), C = (hsize_t)r->n_class;
    const hsize_t K = (hsize_t)r->spec.pca_k;
    const char *wax = rt ? "/expert" : "/hidden", *wcol = rt ? "/expert_col" : "/hidden_col";
    char comp[128], cls[128];
    red_path(comp, sizeof comp, h, "component");
    red_path(cls, sizeof cls, h, "class_labels");
    /* the group's own axes (component, class) are attached below, the shared ones by make */
    const char *ax_w[1] = {wax}, *ax_ww[2] = {wax, wcol};
    const char *ax_kw[2] = {NULL, wax}, *ax_cw[2] = {NULL, wax};
    const int lay = ls_hook_layered(h);
    char p1[128], p2[128];
    rc = make(s, h, "count", H5T_STD_I64LE, 0, NULL, NULL, att, n_att);
    if (rc == LS_OK) rc = make(s, h, "mean", H5T_IEEE_F64LE, 1, &W, ax_w, att, n_att);
    if (rc == LS_OK && cov) {
      hsize_t d2[2] = {W, W};
      rc = make(s, h, "cov", H5T_IEEE_F64LE, 2, d2, ax_ww, att, n_att);
    }
    if (rc == LS_OK && pca) {
      hsize_t d2[2] = {K, W};
      rc = coord(s, comp, K, NULL);
      if (rc == LS_OK) rc = make(s, h, "pca_components", H5T_IEEE_F64LE, 2, d2, ax_kw, att, n_att);
      if (rc == LS_OK) rc = make(s, h, "pca_explained_variance", H5T_IEEE_F64LE, 1, &K, NULL, att, n_att);
    }
    if (rc == LS_OK && (w & LS_RED_DIFFMEANS)) {
      hsize_t d2[2] = {C, W}, start = 0, count = s->rank == 0 ? C : 0;
      rc = coord(s, cls, C, r->class_label);
      red_path(path, sizeof path, h, "class_counts");
      if (rc == LS_OK) rc = ls_h5out_create_dataset(&s->out.h5, path, H5T_STD_I64LE, 1, &C);
      if (rc == LS_OK)
        rc = ls_h5out_write(&s->out.h5, path, H5T_NATIVE_INT64, 1, &start, &count, r->class_rows);
      if (rc == LS_OK) rc = make(s, h, "class_means", H5T_IEEE_F64LE, 2, d2, ax_cw, att, n_att);
      if (rc == LS_OK && r->binary)
        rc = make(s, h, "diff_of_means", H5T_IEEE_F64LE, 1, &W, ax_w, att, n_att);
      red_path(p1, sizeof p1, h, "class_means");
      const char *cd[3] = {path, p1, NULL};
      const int ax[2] = {0, lay};
      if (rc == LS_OK) rc = ls_h5out_dim_scale(&s->out.h5, cls, "class", cd, ax);
    }
    if (rc == LS_OK && pca) {
      red_path(p1, sizeof p1, h, "pca_components");
      red_path(p2, sizeof p2, h, "pca_explained_variance");
      const char *cd[3] = {p1, p2, NULL};
      const int ax[2] = {lay, lay};
      rc = ls_h5out_dim_scale(&s->out.h5, comp, "component", cd, ax);
    }
    /* the group's layers, as on the hook datasets */
    if (rc == LS_OK && ls_hook_layered(h)) {
      const int n = ls_sw_hook_layers(s, h);
      for (int i = 0; i < n; i++) sel[i] = rt ? s->sel.moe_layers[i] : s->sel.layers[i];
      red_path(path, sizeof path, h, "");
      path[strlen(path) - 1] = '\0';
      rc = ls_h5out_attr_i64(&s->out.h5, path, "layers", sel, n);
    }
  }
  free(sel);
  for (int i = 0; i < n_att && rc == LS_OK; i++) {
    if (att[i].n == 0) continue;
    const char *ds[25];
    for (int j = 0; j < att[i].n; j++) ds[j] = att[i].dsets[j];
    ds[att[i].n] = NULL;
    rc = ls_h5out_dim_scale(&s->out.h5, att[i].scale, att[i].dimname, ds, att[i].idx);
  }
  free(att);
  return rc;
}

/* ---- the per-layer step --------------------------------------------------------------------- */
/* rank 0 writes v as position `at` of hook h's dataset `name` ([layers,] dims...) */
static int put(sweep_t *s, int h, const char *name, int at, hid_t mtype, int nd, const hsize_t *dims,
               const void *v) {
  char path[128];
  red_path(path, sizeof path, h, name);
  hsize_t start[4] = {0, 0, 0, 0}, count[4] = {0, 0, 0, 0};
  int k = 0;
  const int me = s->rank == 0;
  if (ls_hook_layered(h)) {
    start[0] = (hsize_t)at;
    count[k++] = me;
  }
  for (int i = 0; i < nd; i++) count[k++] = me ? dims[i] : 0;
  if (k == 0) /* a scalar: the ranks passing count write it */
    return ls_h5out_write(&s->out.h5, path, mtype, 0, NULL, me ? count : NULL, v);
  return ls_h5out_write(&s->out.h5, path, mtype, k, start, count, v);
}

/* Collective: the reductions of hook h at position `at` of its layer axis (0 for
 * final_norm), from the rows this rank captured (host rows; the backend's rows for the
 * Gram matrix), before anything narrows or projects them. */
int ls_sw_reduce_hook(sweep_t *s, int h, int at, int layer) {
  ls_reduce_t *r = &s->red;
  const unsigned w = r->spec.what;
  if (!w) return LS_OK;
  const int W = ls_sw_hook_width(s, h), C = r->n_class, root = s->rank == 0;
  const int gram = (w & (LS_RED_COV | LS_RED_PCA)) != 0;
  const int64_t n = s->sh.out_rows;
  const float *x = s->buf.out_host[h];
  /* 1. the grid: each column's largest |x| over every rank */
  int64_t bad = 0;
  for (int j = 0; j < W; j++) r->colmax[j] = 0.0f;
  for (int64_t i = 0; i < n; i++)
    for (int j = 0; j < W; j++) {
      const float v = fabsf(x[(size_t)i * W + j]);
      if (!isfinite(v)) bad++;
      else if (v > r->colmax[j]) r->colmax[j] = v;
    }
  MPI_Allreduce(MPI_IN_PLACE, &bad, 1, MPI_INT64_T, MPI_SUM, s->comm);
  if (bad) {
    char where[48];
    if (layer >= 0) snprintf(where, sizeof where, "layer %d", layer);
    else snprintf(where, sizeof where, "the final norm");
    if (root)
      ls_error("--reduce: %s at %s has %lld non-finite values (inf or NaN); the sweep's "
               "activations overflowed, nothing can be summed", ls_hook_name(h), where,
               (long long)bad);
    return LS_ERR;
  }
  MPI_Allreduce(MPI_IN_PLACE, r->colmax, W, MPI_FLOAT, MPI_MAX, s->comm);
  for (int j = 0; j < W; j++) r->shift[j] = ls_fx_shift_of(r->colmax[j]);
  /* 2. exact column sums per class */
  memset(r->sums, 0, sizeof(ls_i128) * (size_t)W * (size_t)C);
  for (int64_t i = 0; i < n; i++) {
    ls_i128 *sr = r->sums + (size_t)r->row_class[i] * W;
    for (int j = 0; j < W; j++)
      sr[j] += (int64_t)nearbyint(ldexp((double)x[(size_t)i * W + j], r->shift[j]));
  }
  /* 3. the Gram matrix on the backend */
  const ls_backend_iface_t *f = s->be->iface;
  const size_t WW = (size_t)W * (size_t)W;
  int rc = LS_OK;
  if (gram) {
    f->zero(s->be, (float *)r->acc_d, 6 * WW);
    rc = f->to_device(s->be, r->shift_d, r->shift, sizeof(int32_t) * (size_t)W);
    if (rc == LS_OK && n > 0) f->gram_fixed(s->be, r->acc_d, s->buf.out[h], (int)n, W, r->shift_d, r->scratch_d);
    if (rc == LS_OK && !s->be->host_visible) rc = f->to_host(s->be, r->acc_h, r->acc_d, sizeof(uint64_t) * 3 * WW);
    if (rc == LS_OK && f->sync) rc = f->sync(s->be);
  }
  if (ls_agree(rc, s->comm)) return LS_ERR;
  /* 4. merged on rank 0: integer sums, so the order does not matter */
  MPI_Reduce(root ? MPI_IN_PLACE : r->sums, r->sums, W * C, r->t128, r->add128, 0, s->comm);
  if (gram)
    MPI_Reduce(root ? MPI_IN_PLACE : r->acc_h, r->acc_h, (int)WW, r->t192, r->add192, 0, s->comm);
  /* 5. rank 0 forms the results */
  const int64_t N = s->sh.n_out_rows;
  double *mean = r->row; /* (W), then class means (C, W) after it */
  if (root) {
    for (int j = 0; j < W; j++) {
      ls_i128 t = 0;
      for (int c = 0; c < C; c++) t += r->sums[(size_t)c * W + j];
      mean[j] = (double)(ldexpl((long double)t, -r->shift[j]) / (long double)N);
      for (int c = 0; c < C; c++)
        mean[(size_t)(c + 1) * W + j] =
            (double)(ldexpl((long double)r->sums[(size_t)c * W + j], -r->shift[j]) /
                     (long double)r->class_rows[c]);
    }
    if (gram) { /* cov_jk = (N S_jk - S_j S_k) / (N (N - 1)), exact up to the last division */
      ls_i128 *tot = ls_malloc(sizeof(ls_i128) * (size_t)W, "covariance");
      if (!tot) rc = LS_ERR;
      for (int j = 0; j < W && tot; j++) {
        tot[j] = 0;
        for (int c = 0; c < C; c++) tot[j] += r->sums[(size_t)c * W + j];
      }
      const i256_t nN = i256_of_i128(N);
      const long double den = (long double)N * (long double)(N - 1);
      for (int j = 0; j < W && tot; j++)
        for (int k = j; k < W; k++) {
          const i256_t num = i256_sub(i256_mul(nN, i256_of_192(r->acc_h + 3 * ((size_t)j * W + k))),
                                      i256_mul(i256_of_i128(tot[j]), i256_of_i128(tot[k])));
          const double v = (double)ldexpl(i256_ld(num) / den, -r->shift[j] - r->shift[k]);
          r->mat[(size_t)j * W + k] = v;
          r->mat[(size_t)k * W + j] = v;
        }
      free(tot);
    }
  }
  if (ls_agree(rc, s->comm)) return LS_ERR;
  /* 6. written (rank 0's rows; every rank takes part) */
  const hsize_t dW = (hsize_t)W, dK = (hsize_t)r->spec.pca_k, dWW[2] = {dW, dW}, dKW[2] = {dK, dW};
  const hsize_t dCW[2] = {(hsize_t)C, dW};
  COLLECTIVE_STEP(s, put(s, h, "count", at, H5T_NATIVE_INT64, 0, NULL, &N));
  COLLECTIVE_STEP(s, put(s, h, "mean", at, H5T_NATIVE_DOUBLE, 1, &dW, mean));
  if (w & LS_RED_DIFFMEANS) {
    COLLECTIVE_STEP(s, put(s, h, "class_means", at, H5T_NATIVE_DOUBLE, 2, dCW, mean + W));
    if (r->binary) { /* mean_1 - mean_0 = (n0 S1 - n1 S0) / (n0 n1), one rounding */
      double *diff = r->row; /* the total mean is written: reuse its row */
      if (root)
        for (int j = 0; j < W; j++) {
          const i256_t num = i256_sub(i256_mul(i256_of_i128(r->class_rows[0]), i256_of_i128(r->sums[W + j])),
                                      i256_mul(i256_of_i128(r->class_rows[1]), i256_of_i128(r->sums[j])));
          diff[j] = (double)ldexpl(i256_ld(num) / ((long double)r->class_rows[0] * r->class_rows[1]),
                                   -r->shift[j]);
        }
      COLLECTIVE_STEP(s, put(s, h, "diff_of_means", at, H5T_NATIVE_DOUBLE, 1, &dW, diff));
    }
  }
  if (w & LS_RED_COV) COLLECTIVE_STEP(s, put(s, h, "cov", at, H5T_NATIVE_DOUBLE, 2, dWW, r->mat));
  if (w & LS_RED_PCA) {
    /* the eigensolver overwrites the matrix (written above when asked for) */
    COLLECTIVE_STEP(s, root ? ls_host_eig_top(r->mat, W, r->spec.pca_k, r->vals, r->vecs) : LS_OK);
    COLLECTIVE_STEP(s, put(s, h, "pca_components", at, H5T_NATIVE_DOUBLE, 2, dKW, r->vecs));
    COLLECTIVE_STEP(s, put(s, h, "pca_explained_variance", at, H5T_NATIVE_DOUBLE, 1, &dK, r->vals));
  }
  return LS_OK;
}
