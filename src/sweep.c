/* sweep.c: the layer-outer sweep (see sweep.h and shared/DESIGN.md).
 *
 * Every rank holds a contiguous, token-balanced shard of the prompts and its
 * residual stream (T_rank, H). Weights come through the pipeline of weights.c (rank
 * 0 reads, everyone receives by broadcast); each layer is converted once and the
 * whole shard is streamed through it in packed microbatches. Pooled hook outputs
 * are written collectively into one HDF5 file at the end of each layer. */
#include "sweep.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <signal.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "backend.h"
#include "block.h"
#include "checkpoint.h"
#include "comm.h"
#include "dataset.h"
#include "h5out.h"
#include "hooks.h"
#include "ls_common.h"
#include "model.h"
#include "weights.h"

#define FORMAT_VERSION "1"

void ls_run_opts_default(ls_run_opts_t *o) {
  memset(o, 0, sizeof *o);
  o->hooks = "residual_post";
  o->layers = "all";
  o->pool = "last_token";
  o->microbatch_tokens = 4096;
  o->progress = -1;
}

/* ---- the sweep's state -------------------------------------------------------------- */
typedef struct {
  const ls_run_opts_t *o;
  MPI_Comm comm;
  int rank, size;
  ls_model_t model;
  ls_config_t *cfg;
  ls_dataset_t data;
  /* selection */
  unsigned hooks;
  ls_pool_t pool;
  int *layers, n_sel; /* selected layers, ascending */
  int *sel_index;     /* (n_layers) position in the output, -1 if not selected */
  int n_run;          /* layers computed: 0 .. n_run-1 */
  /* shard */
  int64_t *bounds;    /* (size + 1) prompt ranges per rank */
  int64_t p0, p1, t0, t1;
  int64_t n_prompts, n_tokens; /* this rank */
  int64_t out_rows, out_row0;  /* rows this rank writes (prompts or tokens) */
  int64_t n_out_rows;          /* global rows of each hook dataset */
  /* Row layout: prompt i of this rank occupies rows poff[i] .. poff[i] + len_i of the
   * residual stream, and each prompt starts at a multiple of `align` (the backend's
   * row alignment); rows up to poff[i + 1] are padding that continues the prompt
   * causally (real tokens never see them). */
  int align;
  int64_t *poff;      /* (n_prompts + 1) padded row offsets */
  int64_t n_rows;     /* padded rows of this rank */
  /* microbatches: prompts [mb_p[i], mb_p[i+1]) */
  int n_mb;
  int64_t *mb_p;
  int T_max;          /* most rows in one microbatch */
  int32_t *seq_start; /* per microbatch (n + 1) relative padded offsets, packed */
  int32_t *seq_len;   /* per microbatch (n) real lengths, packed like seq_start */
  int64_t *seq_start_off; /* (n_mb) where each microbatch's seq_start begins */
  int32_t *pos;       /* (n_rows) position of each row in its prompt */
  /* compute */
  ls_backend_t *be;
  float *x;           /* (n_tokens, H) residual stream */
  float *scratch_base;
  ls_block_scratch_t scratch;
  float *wbuf;        /* all float32 weights of one layer, carved into lw */
  ls_layer_weights_t lw;
  float *final_norm_w;/* (H) */
  float *cos_tab, *sin_tab; /* (max_len, head_dim / 2) */
  float *out[LS_HOOK_COUNT]; /* (out_rows, H) per requested hook */
  /* output */
  ls_h5out_t h5;
  int h5_open;
  /* profile, per layer (n_layers) */
  double *t_load, *t_forward, *t_hooks, *t_write;
  double t_embed, t_total;
  int threads;
  /* resume / checkpoints */
  int start;              /* first layer computed by this run (> 0 when resumed) */
  int64_t *done_marks;    /* (n_sel) layer index once its rows are written, else -1 */
  char ckpt_dir[4200];
  ls_ckpt_meta_t meta;    /* this run's fingerprints */
  int last_ckpt;          /* layer_next of the last checkpoint taken */
  double since_ckpt_s;    /* layer time since then (max over ranks) */
  double ckpt_cost_s;     /* (estimated) seconds one checkpoint takes */
  int fault_layer;        /* test switch LS_FAULT_WRITE_LAYER: fail this layer's write */
  uint64_t embed_bytes;
} sweep_t;

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* Run one collective step on every rank; if it failed anywhere, the lowest failing
 * rank reports it (one line) and the caller returns LS_ERR on every rank. */
#define COLLECTIVE_STEP(s, expr)                                  \
  do {                                                            \
    ls_error_defer(1);                                            \
    int step_rc_ = (expr);                                        \
    if (ls_agree_report(step_rc_, (s)->comm)) return LS_ERR;      \
  } while (0)

/* ---- dataset: rank 0 reads and validates, everyone receives ------------------------------ */
static int load_dataset(sweep_t *s) {
  ls_dataset_t *d = &s->data;
  int rc = LS_OK;
  if (s->rank == 0) {
    int64_t max_len = s->o->allow_long_prompts ? 0 : s->cfg->max_pos;
    rc = ls_dataset_load(s->o->data_path, s->cfg->vocab, max_len, d);
  }
  if (ls_agree(rc, s->comm)) return LS_ERR; /* rank 0 printed why */
  int64_t hdr[4] = {d->n, d->n_tokens, d->has_label, d->has_id};
  MPI_Bcast(hdr, 4, MPI_INT64_T, 0, s->comm);
  if (s->rank != 0) {
    d->n = hdr[0];
    d->n_tokens = hdr[1];
    d->has_label = (int)hdr[2];
    d->has_id = (int)hdr[3];
    d->tokens = ls_malloc((size_t)d->n_tokens * sizeof(int32_t), "tokens");
    d->offsets = ls_malloc((size_t)(d->n + 1) * sizeof(int64_t), "offsets");
    if (d->has_label) d->labels = ls_malloc((size_t)d->n * sizeof(int64_t), "labels");
    if (d->has_id) d->ids = ls_malloc((size_t)d->n * LS_DATASET_MAX_ID, "ids");
    rc = d->tokens && d->offsets && (!d->has_label || d->labels) && (!d->has_id || d->ids)
             ? LS_OK : LS_ERR;
  }
  if (ls_agree(rc, s->comm)) return LS_ERR;
  ls_bcast_bytes(d->tokens, (size_t)d->n_tokens * sizeof(int32_t), 0, s->comm);
  ls_bcast_bytes(d->offsets, (size_t)(d->n + 1) * sizeof(int64_t), 0, s->comm);
  if (d->has_label) ls_bcast_bytes(d->labels, (size_t)d->n * sizeof(int64_t), 0, s->comm);
  if (d->has_id) ls_bcast_bytes(d->ids, (size_t)d->n * LS_DATASET_MAX_ID, 0, s->comm);
  return LS_OK;
}

/* Largest tensor of each kind over all layers (16-float aligned): the float32 buffer one
 * layer is converted into, carved in ls_weight_id_t order. */
static int64_t slot_max_numel(const sweep_t *s, int id) {
  int64_t mx = 0;
  for (int L = 0; L < s->cfg->n_layers; L++)
    mx = max64(mx, s->model.slots[(size_t)L * LS_W_COUNT + id].numel);
  return (mx + 15) / 16 * 16;
}

static size_t layer_f32_floats(const sweep_t *s) {
  size_t n = 0;
  for (int id = 0; id < LS_W_COUNT; id++) n += (size_t)slot_max_numel(s, id);
  return n;
}

/* ---- plan: shard, microbatches, sizes ------------------------------------------------------ */
/* Contiguous prompt ranges with token counts as equal as prompt boundaries allow. */
static void shard_prompts(const int64_t *offsets, int64_t n, int P, int64_t *bounds) {
  const int64_t T = offsets[n];
  bounds[0] = 0;
  for (int r = 1; r < P; r++) {
    double target = (double)T * r / P;
    int64_t lo = 0, hi = n; /* first i with offsets[i] >= target */
    while (lo < hi) {
      int64_t mid = (lo + hi) / 2;
      if ((double)offsets[mid] < target) lo = mid + 1;
      else hi = mid;
    }
    if (lo > 0 && target - (double)offsets[lo - 1] < (double)offsets[lo] - target) lo--;
    bounds[r] = lo < bounds[r - 1] ? bounds[r - 1] : lo;
  }
  bounds[P] = n;
}

static int plan(sweep_t *s) {
  const ls_dataset_t *d = &s->data;
  const ls_config_t *c = s->cfg;
  s->bounds = ls_malloc(sizeof(int64_t) * (size_t)(s->size + 1), "shard bounds");
  if (!s->bounds) return LS_ERR;
  shard_prompts(d->offsets, d->n, s->size, s->bounds);
  s->p0 = s->bounds[s->rank];
  s->p1 = s->bounds[s->rank + 1];
  s->t0 = d->offsets[s->p0];
  s->t1 = d->offsets[s->p1];
  s->n_prompts = s->p1 - s->p0;
  s->n_tokens = s->t1 - s->t0;
  const int none = s->pool == LS_POOL_NONE;
  s->out_rows = none ? s->n_tokens : s->n_prompts;
  s->out_row0 = none ? s->t0 : s->p0;
  s->n_out_rows = none ? d->n_tokens : d->n;

  /* padded layout, then microbatches: greedy, whole prompts, at most
   * microbatch_tokens rows unless one prompt alone is longer */
  const int64_t np = s->n_prompts, A = s->align;
  s->poff = ls_malloc(sizeof(int64_t) * (size_t)(np + 1), "row layout");
  s->mb_p = ls_malloc(sizeof(int64_t) * (size_t)(np + 2), "microbatches");
  s->seq_start = ls_malloc(sizeof(int32_t) * (size_t)(2 * np + 2), "microbatches");
  s->seq_len = ls_malloc(sizeof(int32_t) * (size_t)(2 * np + 2), "microbatches");
  s->seq_start_off = ls_malloc(sizeof(int64_t) * (size_t)(np + 1), "microbatches");
  if (!s->poff || !s->mb_p || !s->seq_start || !s->seq_len || !s->seq_start_off) return LS_ERR;
  s->poff[0] = 0;
  for (int64_t i = 0; i < np; i++)
    s->poff[i + 1] = s->poff[i] + (ls_dataset_len(d, s->p0 + i) + A - 1) / A * A;
  s->n_rows = s->poff[np];
  s->pos = ls_malloc(sizeof(int32_t) * (size_t)max64(s->n_rows, 1), "positions");
  if (!s->pos) return LS_ERR;
  int64_t max_len = 1;
  for (int64_t i = 0; i < d->n; i++) max_len = max64(max_len, ls_dataset_len(d, i));
  max_len = (max_len + A - 1) / A * A; /* padding rows have positions too */
  int64_t p = 0, ss = 0;
  s->n_mb = 0;
  s->T_max = 1;
  while (p < np) {
    int64_t q = p + 1;
    while (q < np && s->poff[q + 1] - s->poff[p] <= s->o->microbatch_tokens) q++;
    s->mb_p[s->n_mb] = s->p0 + p;
    s->seq_start_off[s->n_mb] = ss;
    for (int64_t i = p; i <= q; i++) {
      s->seq_len[ss] = i < q ? (int32_t)ls_dataset_len(d, s->p0 + i) : 0;
      s->seq_start[ss++] = (int32_t)(s->poff[i] - s->poff[p]);
    }
    s->T_max = (int)max64(s->T_max, s->poff[q] - s->poff[p]);
    s->n_mb++;
    p = q;
  }
  s->mb_p[s->n_mb] = s->p1;
  for (int64_t i = 0; i < np; i++)
    for (int64_t r = s->poff[i]; r < s->poff[i + 1]; r++) s->pos[r] = (int32_t)(r - s->poff[i]);

  /* memory and disk estimates; refuse what cannot fit */
  const double H = c->hidden;
  int n_hooks = 0;
  for (int h = 0; h < LS_HOOK_COUNT; h++) n_hooks += (s->hooks >> h) & 1;
  double resid = (double)s->n_rows * H * 4;
  double scratch = (double)ls_block_scratch_floats(c, s->T_max) * 4;
  double wf32 = (double)layer_f32_floats(s) * 4;
  double staging = 2.0 * (double)s->model.max_layer_bytes;
  double outbuf = (double)n_hooks * (double)s->out_rows * H * 4;
  double rank_bytes = resid + scratch + wf32 + staging + outbuf;
  double file_bytes = 0;
  for (int h = 0; h < LS_HOOK_COUNT; h++) {
    if (!((s->hooks >> h) & 1)) continue;
    double layers = h == LS_HOOK_FINAL_NORM ? 1 : s->n_sel;
    file_bytes += layers * (double)s->n_out_rows * H * 4;
  }
  double max_rank_bytes = 0;
  MPI_Allreduce(&rank_bytes, &max_rank_bytes, 1, MPI_DOUBLE, MPI_MAX, s->comm);
  long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  double avail = pages > 0 && page > 0 ? (double)pages * page : 0;
  int local_size = 1;
  {
    MPI_Comm node;
    MPI_Comm_split_type(s->comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
    MPI_Comm_size(node, &local_size);
    MPI_Comm_free(&node);
  }
  if (s->rank == 0) {
    ls_info("plan: %s, %d layers (computing %d, capturing %d), hidden %d, %lld prompts, "
            "%lld tokens, %d rank%s", c->arch_name, c->n_layers, s->n_run, s->n_sel, c->hidden,
            (long long)d->n, (long long)d->n_tokens, s->size, s->size > 1 ? "s" : "");
    for (int r = 0; r < s->size && r < 16; r++)
      ls_info("plan:   rank %d: prompts [%lld, %lld), %lld tokens", r, (long long)s->bounds[r],
              (long long)s->bounds[r + 1],
              (long long)(d->offsets[s->bounds[r + 1]] - d->offsets[s->bounds[r]]));
    if (s->size > 16) ls_info("plan:   ... (%d ranks)", s->size);
    ls_info("plan: microbatch <= %lld tokens (rank 0: %d microbatches, largest %d rows; prompts "
            "start at multiples of %d rows, %.1f%% padding); memory per rank <= %.2f GiB; output "
            "%.3f GiB; weights read once: %.3f GiB", (long long)s->o->microbatch_tokens, s->n_mb,
            s->T_max, s->align, s->n_rows ? 100.0 * (double)(s->n_rows - s->n_tokens) / (double)s->n_rows : 0.0,
            max_rank_bytes / 1073741824.0,
            file_bytes / 1073741824.0, (double)s->model.total_tensor_bytes / 1073741824.0);
  }
  int rc = LS_OK;
  if (avail > 0 && max_rank_bytes * local_size > 0.95 * avail) {
    if (s->rank == 0)
      ls_error("plan: the sweep needs about %.2f GiB per rank x %d ranks on this node but only "
               "%.2f GiB is free; lower --microbatch-tokens, capture fewer --hooks/--layers, use "
               "pooling, or run on more nodes", max_rank_bytes / 1073741824.0, local_size,
               avail / 1073741824.0);
    rc = LS_ERR;
  }
  if (rc == LS_OK && s->rank == 0 && !s->o->plan_only) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", s->o->out_path);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = '\0'; else snprintf(dir, sizeof dir, ".");
    struct statvfs vfs;
    if (statvfs(dir[0] ? dir : "/", &vfs) == 0 &&
        (double)vfs.f_bavail * vfs.f_frsize < file_bytes * 1.01 + (1 << 20)) {
      ls_error("plan: %s needs about %.3f GiB but its file system has %.3f GiB free; free "
               "space, write elsewhere, or capture fewer --hooks/--layers", s->o->out_path,
               file_bytes / 1073741824.0, (double)vfs.f_bavail * vfs.f_frsize / 1073741824.0);
      rc = LS_ERR;
    }
  }
  if (ls_agree(rc, s->comm)) return LS_ERR;
  /* rope tables for every position a prompt can have */
  const int half = c->head_dim / 2;
  s->cos_tab = ls_malloc(sizeof(float) * (size_t)max_len * half, "rope table");
  s->sin_tab = ls_malloc(sizeof(float) * (size_t)max_len * half, "rope table");
  float *inv = ls_malloc(sizeof(float) * (size_t)half, "rope table");
  if (!s->cos_tab || !s->sin_tab || !inv) return LS_ERR;
  ls_config_rope_inv_freq(c, inv);
  for (int64_t pp = 0; pp < max_len; pp++)
    for (int i = 0; i < half; i++) {
      float a = (float)pp * inv[i];
      s->cos_tab[pp * half + i] = (float)cos((double)a);
      s->sin_tab[pp * half + i] = (float)sin((double)a);
    }
  free(inv);
  return LS_OK;
}

/* ---- buffers --------------------------------------------------------------------------------- */
static int alloc_buffers(sweep_t *s) {
  const ls_config_t *c = s->cfg;
  const ls_backend_iface_t *f = s->be->iface;
  const size_t H = (size_t)c->hidden;
  int rc = LS_OK;
  s->x = f->alloc(s->be, sizeof(float) * (size_t)max64(s->n_rows, 1) * H, "residual stream");
  size_t nsc = ls_block_scratch_floats(c, s->T_max);
  s->scratch_base = f->alloc(s->be, sizeof(float) * nsc, "block scratch");
  s->wbuf = f->alloc(s->be, sizeof(float) * layer_f32_floats(s), "layer weights");
  s->final_norm_w = f->alloc(s->be, sizeof(float) * H, "final norm");
  if (!s->x || !s->scratch_base || !s->wbuf || !s->final_norm_w) rc = LS_ERR;
  for (int h = 0; h < LS_HOOK_COUNT && rc == LS_OK; h++) {
    if (!((s->hooks >> h) & 1)) continue;
    s->out[h] = ls_aligned_alloc(sizeof(float) * (size_t)max64(s->out_rows, 1) * H, "hook output");
    if (!s->out[h]) rc = LS_ERR;
  }
  if (rc == LS_OK) ls_block_scratch_carve(c, s->T_max, s->scratch_base, &s->scratch);
  return rc;
}

/* Point lw at the float32 copy of layer L (converted from raw checkpoint bytes). */
static int convert_layer(sweep_t *s, int layer, const void *raw) {
  float *p = s->wbuf;
  for (int id = 0; id < LS_W_COUNT; id++) {
    const ls_wslot_t *w = &s->model.slots[(size_t)layer * LS_W_COUNT + id];
    if (!w->present) { s->lw.w[id] = NULL; continue; }
    s->lw.w[id] = p;
    if (s->be->iface->load_weight(s->be, p, (const char *)raw + w->offset, w->dtype,
                                  (size_t)w->numel))
      return LS_ERR;
    p += slot_max_numel(s, id);
  }
  return LS_OK;
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
          rc = s->be->iface->to_device(s->be, s->x + (size_t)staged0 * H, xh,
                                       sizeof(float) * H * (size_t)staged);
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
    rc = s->be->iface->load_weight(s->be, s->final_norm_w, raw, s->model.norm_dtype, H);
  } else {
    rc = LS_ERR;
  }
  free(raw);
  free(tmp);
  return rc;
}

/* ---- output file ---------------------------------------------------------------------------------- */
static const char *profile_fields[7] = {"read_s", "read_wait_s", "bcast_wait_s", "load_s",
                                        "forward_s", "hooks_s", "write_s"};

static int write_str_attr(sweep_t *s, const char *name, const char *v) {
  return ls_h5out_attr_str(&s->h5, "/", name, v);
}

static int create_output(sweep_t *s) {
  const ls_dataset_t *d = &s->data;
  const hsize_t H = (hsize_t)s->cfg->hidden;
  /* --resume without a usable checkpoint overwrites a partial file (a complete one
   * never reaches here) */
  if (ls_h5out_create(&s->h5, s->o->out_path, s->comm, s->o->force || s->o->resume))
    return LS_ERR;
  s->h5_open = 1;
  char hooks[256] = "";
  for (int h = 0; h < LS_HOOK_COUNT; h++)
    if ((s->hooks >> h) & 1)
      snprintf(hooks + strlen(hooks), sizeof hooks - strlen(hooks), "%s%s", hooks[0] ? "," : "",
               ls_hook_name(h));
  int rc = LS_OK;
  rc |= ls_h5out_attr_str_sized(&s->h5, "/", "status", "partial", 16);
  rc |= write_str_attr(s, "format_version", FORMAT_VERSION);
  rc |= write_str_attr(s, "layersweep_version", LS_VERSION);
  rc |= write_str_attr(s, "model_path", s->o->model_dir);
  rc |= write_str_attr(s, "model_config", s->model.config_json);
  rc |= write_str_attr(s, "model_architecture", s->cfg->arch_name);
  rc |= write_str_attr(s, "data_path", s->o->data_path);
  rc |= write_str_attr(s, "compute_dtype", "float32");
  rc |= write_str_attr(s, "backend", s->be->iface->name);
  rc |= write_str_attr(s, "pool", ls_pool_name(s->pool));
  rc |= write_str_attr(s, "hooks", hooks);
  rc |= write_str_attr(s, "command", s->o->command ? s->o->command : "");
  int64_t nranks = s->size;
  rc |= ls_h5out_attr_i64(&s->h5, "/", "n_ranks", &nranks, 1);
  rc |= ls_h5out_attr_i64(&s->h5, "/", "layers_completed", s->done_marks, s->n_sel);
  if (rc) return LS_ERR;
  /* every dataset is created now, so that later writes touch raw data and fixed-size
   * attributes only: a killed run leaves the file's metadata as last flushed */
  for (size_t i = 0; i < sizeof profile_fields / sizeof profile_fields[0] && rc == LS_OK; i++) {
    char name[64];
    snprintf(name, sizeof name, "/profile/%s", profile_fields[i]);
    hsize_t dims[2] = {(hsize_t)s->size, (hsize_t)s->n_run};
    rc = ls_h5out_create_dataset(&s->h5, name, H5T_IEEE_F64LE, 2, dims);
  }
  hsize_t nrun = (hsize_t)s->n_run;
  if (rc == LS_OK) rc = ls_h5out_create_dataset(&s->h5, "/profile/layer_bytes", H5T_IEEE_F64LE, 1, &nrun);
  if (rc) return LS_ERR;
  int64_t *sel = ls_malloc(sizeof(int64_t) * (size_t)(s->n_sel + 1), "layers");
  if (!sel) return LS_ERR;
  for (int i = 0; i < s->n_sel; i++) sel[i] = s->layers[i];
  for (int h = 0; h < LS_HOOK_PER_LAYER_COUNT && rc == LS_OK; h++) {
    if (!((s->hooks >> h) & 1)) continue;
    char name[64];
    snprintf(name, sizeof name, "/%s", ls_hook_name(h));
    hsize_t dims[3] = {(hsize_t)s->n_sel, (hsize_t)s->n_out_rows, H};
    rc = ls_h5out_create_dataset(&s->h5, name, H5T_IEEE_F32LE, 3, dims);
    if (!rc) rc = ls_h5out_attr_i64(&s->h5, name, "layers", sel, s->n_sel);
  }
  free(sel);
  if (rc == LS_OK && ((s->hooks >> LS_HOOK_FINAL_NORM) & 1)) {
    hsize_t dims[2] = {(hsize_t)s->n_out_rows, H};
    rc = ls_h5out_create_dataset(&s->h5, "/final_norm", H5T_IEEE_F32LE, 2, dims);
  }
  if (rc) return LS_ERR;

  /* /samples: each rank writes its own prompts */
  hsize_t N = (hsize_t)d->n, start = (hsize_t)s->p0, count = (hsize_t)s->n_prompts;
  int64_t *len = ls_malloc(sizeof(int64_t) * (size_t)(s->n_prompts + 1), "samples");
  if (!len) return LS_ERR;
  for (int64_t i = 0; i < s->n_prompts; i++) len[i] = ls_dataset_len(d, s->p0 + i);
  rc = ls_h5out_create_dataset(&s->h5, "/samples/length", H5T_STD_I64LE, 1, &N);
  rc |= ls_h5out_write(&s->h5, "/samples/length", H5T_NATIVE_INT64, 1, &start, &count, len);
  free(len);
  if (rc == LS_OK && s->pool == LS_POOL_NONE) {
    hsize_t n1 = N + 1, cnt = count + (s->rank == s->size - 1 ? 1 : 0);
    rc = ls_h5out_create_dataset(&s->h5, "/samples/offsets", H5T_STD_I64LE, 1, &n1);
    rc |= ls_h5out_write(&s->h5, "/samples/offsets", H5T_NATIVE_INT64, 1, &start, &cnt,
                         d->offsets + s->p0);
  }
  if (rc == LS_OK && d->has_label) {
    rc = ls_h5out_create_dataset(&s->h5, "/samples/label", H5T_STD_I64LE, 1, &N);
    rc |= ls_h5out_write(&s->h5, "/samples/label", H5T_NATIVE_INT64, 1, &start, &count,
                         d->labels + s->p0);
  }
  if (rc == LS_OK && d->has_id) {
    size_t width = 1;
    for (int64_t i = 0; i < d->n; i++) {
      size_t l = strlen(d->ids + (size_t)i * LS_DATASET_MAX_ID) + 1;
      width = l > width ? l : width;
    }
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, width);
    H5Tset_strpad(t, H5T_STR_NULLTERM);
    H5Tset_cset(t, H5T_CSET_UTF8);
    char *buf = ls_calloc((size_t)(s->n_prompts + 1), width, "ids");
    if (!buf) { H5Tclose(t); return LS_ERR; }
    for (int64_t i = 0; i < s->n_prompts; i++)
      memcpy(buf + (size_t)i * width, d->ids + (size_t)(s->p0 + i) * LS_DATASET_MAX_ID,
             strlen(d->ids + (size_t)(s->p0 + i) * LS_DATASET_MAX_ID));
    rc = ls_h5out_create_dataset(&s->h5, "/samples/id", t, 1, &N);
    rc |= ls_h5out_write(&s->h5, "/samples/id", t, 1, &start, &count, buf);
    free(buf);
    H5Tclose(t);
  }
  if (rc == LS_OK) rc = ls_h5out_flush(&s->h5);
  return ls_agree(rc, s->comm);
}

static int write_hook(sweep_t *s, ls_hook_t h, int sel) {
  const hsize_t H = (hsize_t)s->cfg->hidden;
  if (s->fault_layer >= 0 && sel >= 0 && h != LS_HOOK_FINAL_NORM &&
      s->layers[sel] == s->fault_layer) {
    ls_error("%s: injected write failure at layer %d (LS_FAULT_WRITE_LAYER, as if the disk "
             "were full); rerun with --resume", s->o->out_path, s->fault_layer);
    return LS_ERR;
  }
  char name[64];
  snprintf(name, sizeof name, "/%s", ls_hook_name(h));
  if (h == LS_HOOK_FINAL_NORM) {
    hsize_t start[2] = {(hsize_t)s->out_row0, 0}, count[2] = {(hsize_t)s->out_rows, H};
    return ls_h5out_write(&s->h5, name, H5T_NATIVE_FLOAT, 2, start, count, s->out[h]);
  }
  hsize_t start[3] = {(hsize_t)sel, (hsize_t)s->out_row0, 0};
  hsize_t count[3] = {1, (hsize_t)s->out_rows, H};
  if (s->out_rows == 0) count[0] = count[2] = 0;
  return ls_h5out_write(&s->h5, name, H5T_NATIVE_FLOAT, 3, start, count, s->out[h]);
}

/* ---- progress ------------------------------------------------------------------------------------- */
static void progress(sweep_t *s, int layer, double elapsed) {
  if (s->rank != 0 || s->o->progress == 0) return;
  int tty = isatty(STDERR_FILENO) && s->o->progress < 0;
  double frac = (double)(layer + 1 - s->start) / (s->n_run - s->start);
  double eta = elapsed / frac - elapsed;
  /* prompt tokens through the whole model per second, at this pace */
  double tps = (double)s->data.n_tokens * (layer + 1 - s->start) / s->n_run /
               (elapsed > 0 ? elapsed : 1e-9);
  if (tty) {
    char bar[41];
    int fill = (int)(frac * 40);
    for (int i = 0; i < 40; i++) bar[i] = i < fill ? '#' : '.';
    bar[40] = '\0';
    fprintf(stderr, "\r[%s] layer %d/%d  %.0f tok/s  elapsed %.1fs  eta %.1fs ", bar, layer + 1,
            s->n_run, tps, elapsed, eta);
    if (layer + 1 == s->n_run) fputc('\n', stderr);
  } else {
    fprintf(stderr, "layer %d/%d done: load %.3fs forward %.3fs hooks %.3fs write %.3fs; "
            "%.0f tok/s; elapsed %.1fs, eta %.1fs\n", layer + 1, s->n_run, s->t_load[layer],
            s->t_forward[layer], s->t_hooks[layer], s->t_write[layer], tps, elapsed, eta);
  }
  fflush(stderr);
}

/* ---- the layer loop ---------------------------------------------------------------------------------- */
static void capture(sweep_t *s, ls_hook_t h, const float *src, int mb, const ls_batch_t *b) {
  const size_t H = (size_t)s->cfg->hidden;
  int64_t row = s->pool == LS_POOL_NONE ? s->data.offsets[s->mb_p[mb]] - s->t0
                                        : s->mb_p[mb] - s->p0;
  s->be->iface->pool(s->be, s->out[h] + (size_t)row * H, src, b->seq_start,
                     s->seq_len + s->seq_start_off[mb], b->n_seq, (int)H, s->pool);
}

/* ---- checkpoints and signals ----------------------------------------------------------------------- */
static volatile sig_atomic_t g_signal = 0;
static void on_signal(int sig) { g_signal = sig; }

static void install_signals(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
}

static int save_checkpoint(sweep_t *s, int next) {
  double t0 = ls_now();
  s->meta.layer_next = next;
  const size_t n = (size_t)s->n_rows * (size_t)s->cfg->hidden;
  int rc = ls_ckpt_save(s->ckpt_dir, s->comm, &s->meta, s->x, n);
  double dt = ls_now() - t0;
  MPI_Allreduce(&dt, &s->ckpt_cost_s, 1, MPI_DOUBLE, MPI_MAX, s->comm);
  if (rc == LS_OK) {
    s->last_ckpt = next;
    s->since_ckpt_s = 0;
  }
  return rc;
}

/* After layer next-1: checkpoint when due (every N layers, or when the work since the
 * last checkpoint makes its cost < 5%), and stop cleanly on SIGTERM / SIGINT. The
 * decision is collective: every rank takes the same branch. Returns 0 to go on,
 * LS_STOPPED or LS_ERR to stop. */
static int maybe_checkpoint(sweep_t *s, int next, double layer_s) {
  double in[2] = {layer_s, (double)g_signal}, out[2];
  MPI_Allreduce(in, out, 2, MPI_DOUBLE, MPI_MAX, s->comm);
  s->since_ckpt_s += out[0];
  const int signalled = out[1] != 0;
  int every = s->o->checkpoint_every;
  int due = every > 0 ? next - s->last_ckpt >= every
                      : every == 0 && s->since_ckpt_s * 0.05 >= s->ckpt_cost_s;
  if (next >= s->n_run && !signalled) due = 0; /* the end is near: nothing to save */
  if ((due || (signalled && every >= 0)) && next != s->last_ckpt)
    if (save_checkpoint(s, next)) return LS_ERR;
  if (!signalled) return 0;
  if (s->rank == 0)
    ls_error("stopped by signal %d after layer %d of %d; %s is partial%s", (int)out[1], next - 1,
             s->n_run, s->o->out_path,
             every >= 0 ? "; rerun the same command with --resume to continue" : "");
  return LS_STOPPED;
}

/* Microbatch mb as a batch for the block; returns its first row in the residual stream. */
static int64_t batch_of(const sweep_t *s, int mb, ls_batch_t *b) {
  const int64_t i0 = s->mb_p[mb] - s->p0, i1 = s->mb_p[mb + 1] - s->p0;
  b->T = (int)(s->poff[i1] - s->poff[i0]);
  b->n_seq = (int)(i1 - i0);
  b->seq_start = s->seq_start + s->seq_start_off[mb];
  b->seq_len = s->seq_len + s->seq_start_off[mb];
  b->pos = s->pos + s->poff[i0];
  return s->poff[i0];
}

static int run_layers(sweep_t *s, ls_wpipe_t *wp) {
  const ls_config_t *c = s->cfg;
  const size_t H = (size_t)c->hidden;
  const ls_backend_iface_t *f = s->be->iface;
  double t_start = ls_now();
  for (int L = s->start; L < s->n_run; L++) {
    double t0 = ls_now();
    const void *raw = ls_wpipe_acquire(wp, L);
    if (!raw || convert_layer(s, L, raw) || ls_wpipe_release(wp, L)) return LS_ERR;
    double t1 = ls_now();
    s->t_load[L] = t1 - t0;
    int sel = s->sel_index[L];
    double th = 0;
    for (int mb = 0; mb < s->n_mb; mb++) {
      ls_batch_t b;
      int64_t row0 = batch_of(s, mb, &b);
      float *x = s->x + (size_t)row0 * H;
      double th0 = ls_now();
      if (sel >= 0 && (s->hooks & (1u << LS_HOOK_RESIDUAL_PRE)))
        capture(s, LS_HOOK_RESIDUAL_PRE, x, mb, &b);
      th += ls_now() - th0;
      ls_block_forward(s->be, c, &s->lw, s->cos_tab, s->sin_tab, x, &b, &s->scratch);
      th0 = ls_now();
      if (sel >= 0) {
        if (s->hooks & (1u << LS_HOOK_ATTN_OUT)) capture(s, LS_HOOK_ATTN_OUT, s->scratch.attn_out, mb, &b);
        if (s->hooks & (1u << LS_HOOK_MLP_OUT)) capture(s, LS_HOOK_MLP_OUT, s->scratch.mlp_out, mb, &b);
        if (s->hooks & (1u << LS_HOOK_RESIDUAL_POST)) capture(s, LS_HOOK_RESIDUAL_POST, x, mb, &b);
      }
      th += ls_now() - th0;
      ls_wpipe_progress(wp);
    }
    if (f->sync && f->sync(s->be)) return LS_ERR;
    double t2 = ls_now();
    s->t_hooks[L] = th;
    s->t_forward[L] = t2 - t1 - th;
    if (sel >= 0) {
      /* every collective step is agreed on before the next, so a failure on any rank
       * stops all of them at the same point, reported once */
      for (int h = 0; h < LS_HOOK_PER_LAYER_COUNT; h++)
        if (s->hooks & (1u << h)) COLLECTIVE_STEP(s, write_hook(s, h, sel));
      /* the marker goes in only after the rows are on disk */
      COLLECTIVE_STEP(s, ls_h5out_flush(&s->h5));
      s->done_marks[sel] = L;
      COLLECTIVE_STEP(s, ls_h5out_attr_i64(&s->h5, "/", "layers_completed", s->done_marks, s->n_sel));
      COLLECTIVE_STEP(s, ls_h5out_flush(&s->h5));
    }
    s->t_write[L] = ls_now() - t2;
    progress(s, L, ls_now() - t_start);
    int stop = maybe_checkpoint(s, L + 1, ls_now() - t0);
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
    s->be->iface->rmsnorm(s->be, s->scratch.xn, s->x + (size_t)row0 * H, s->final_norm_w, b.T,
                          (int)H, (float)c->rms_eps);
    capture(s, LS_HOOK_FINAL_NORM, s->scratch.xn, mb, &b);
  }
  COLLECTIVE_STEP(s, write_hook(s, LS_HOOK_FINAL_NORM, 0));
  return LS_OK;
}

/* ---- profile ---------------------------------------------------------------------------------------- */
static int write_profile(sweep_t *s, const ls_wpipe_t *wp) {
  const int n = s->n_run, first = s->start;
  const double *fields[7] = {wp->read_s, wp->read_wait_s, wp->bcast_wait_s, s->t_load,
                             s->t_forward, s->t_hooks, s->t_write};
  int rc = LS_OK;
  /* this run's layers only: a resumed run keeps the earlier run's columns */
  for (int i = 0; i < 7 && rc == LS_OK; i++) {
    char name[64];
    snprintf(name, sizeof name, "/profile/%s", profile_fields[i]);
    hsize_t start[2] = {(hsize_t)s->rank, (hsize_t)first}, count[2] = {1, (hsize_t)(n - first)};
    if (n == first) count[0] = 0;
    rc = ls_h5out_write(&s->h5, name, H5T_NATIVE_DOUBLE, 2, start, count, fields[i] + first);
  }
  double *bytes = ls_calloc((size_t)n + 1, sizeof(double), "profile");
  if (!bytes) return LS_ERR;
  for (int L = 0; L < n; L++) bytes[L] = (double)s->model.layer_bytes[L];
  hsize_t start1 = 0, count1 = s->rank == 0 ? (hsize_t)n : 0;
  if (rc == LS_OK) rc = ls_h5out_write(&s->h5, "/profile/layer_bytes", H5T_NATIVE_DOUBLE, 1, &start1, &count1, bytes);
  free(bytes);
  double totals[3] = {(double)(s->rank == 0 ? s->model.st.bytes_read : 0), (double)s->embed_bytes,
                      s->t_total};
  MPI_Bcast(totals, 3, MPI_DOUBLE, 0, s->comm);
  if (rc == LS_OK) rc = ls_h5out_attr_f64(&s->h5, "/profile", "bytes_read", &totals[0], 1);
  if (rc == LS_OK) rc = ls_h5out_attr_f64(&s->h5, "/profile", "embedding_bytes_read", &totals[1], 1);
  if (rc == LS_OK) rc = ls_h5out_attr_f64(&s->h5, "/profile", "total_s", &totals[2], 1);
  return ls_agree(rc, s->comm);
}

static const char *phase_names[8] = {"read", "read_wait", "bcast_wait", "load", "forward",
                                     "hooks", "write", "embed"};

static int write_summary_json(const sweep_t *s, const double *mn, const double *mx,
                              double flops) {
  cJSON *j = cJSON_CreateObject();
  cJSON_AddStringToObject(j, "layersweep_version", LS_VERSION);
  cJSON_AddStringToObject(j, "backend", s->be->iface->name);
  cJSON_AddNumberToObject(j, "ranks", s->size);
  cJSON_AddNumberToObject(j, "threads_per_rank", s->threads);
  cJSON_AddNumberToObject(j, "prompts", (double)s->data.n);
  cJSON_AddNumberToObject(j, "tokens", (double)s->data.n_tokens);
  cJSON_AddNumberToObject(j, "layers_computed", s->n_run);
  cJSON_AddNumberToObject(j, "row_align", s->align);
  cJSON_AddNumberToObject(j, "total_s", s->t_total);
  cJSON_AddNumberToObject(j, "tokens_per_s", (double)s->data.n_tokens / s->t_total);
  cJSON_AddNumberToObject(j, "gemm_gflop", flops / 1e9);
  cJSON_AddNumberToObject(j, "gemm_gflops_overall", flops / s->t_total / 1e9);
  cJSON_AddNumberToObject(j, "weight_bytes_read", (double)(s->model.st.bytes_read - s->embed_bytes));
  cJSON_AddNumberToObject(j, "embedding_bytes_read", (double)s->embed_bytes);
  cJSON *ph = cJSON_AddObjectToObject(j, "phase_s");
  for (int i = 0; i < 8; i++) {
    cJSON *p = cJSON_AddObjectToObject(ph, phase_names[i]);
    cJSON_AddNumberToObject(p, "min", mn[i]);
    cJSON_AddNumberToObject(p, "max", mx[i]);
  }
  char *text = cJSON_Print(j);
  cJSON_Delete(j);
  FILE *f = fopen(s->o->summary_json, "w");
  int rc = f && fputs(text, f) >= 0 && fputc('\n', f) >= 0 ? LS_OK : LS_ERR;
  if (f && fclose(f) != 0) rc = LS_ERR;
  if (rc) ls_error("%s: cannot write the JSON summary", s->o->summary_json);
  free(text);
  return rc;
}

static void print_summary(sweep_t *s, const ls_wpipe_t *wp) {
  const int n = s->n_run;
  double sums[8] = {0}, mx[8], mn[8];
  for (int L = 0; L < n; L++) {
    sums[0] += wp->read_s[L];
    sums[1] += wp->read_wait_s[L];
    sums[2] += wp->bcast_wait_s[L];
    sums[3] += s->t_load[L];
    sums[4] += s->t_forward[L];
    sums[5] += s->t_hooks[L];
    sums[6] += s->t_write[L];
  }
  sums[7] = s->t_embed;
  MPI_Reduce(sums, mx, 8, MPI_DOUBLE, MPI_MAX, 0, s->comm);
  MPI_Reduce(sums, mn, 8, MPI_DOUBLE, MPI_MIN, 0, s->comm);
  if (s->rank != 0) return;
  /* model GEMM flops on real tokens (alignment padding not counted) */
  double flops = ls_config_gemm_flops_per_token(s->cfg) * (double)s->data.n_tokens * n;
  fprintf(stderr, "profile (seconds summed over %d layers; min..max across %d rank%s):\n", n,
          s->size, s->size > 1 ? "s" : "");
  const char *names[8] = {"read (rank 0 reader)", "read wait", "bcast wait", "load (bcast+convert)",
                          "forward", "hooks/pooling", "write", "embed"};
  for (int i = 0; i < 8; i++)
    fprintf(stderr, "  %-22s %10.3f .. %-10.3f\n", names[i], mn[i], mx[i]);
  fprintf(stderr, "  weight bytes read: %.3f GiB (+ %.3f MiB embedding rows) by rank 0\n",
          (double)(s->model.st.bytes_read - s->embed_bytes) / 1073741824.0,
          (double)s->embed_bytes / 1048576.0);
  fprintf(stderr, "  %lld prompts, %lld tokens through %d layers in %.2f s: %.0f tokens/s; model "
          "GEMM %.1f GFLOP/s overall, %.1f GFLOP/s in forward\n", (long long)s->data.n,
          (long long)s->data.n_tokens, n, s->t_total, (double)s->data.n_tokens / s->t_total,
          flops / s->t_total / 1e9, flops / (mx[4] > 0 ? mx[4] : 1e-9) / 1e9);
  if (s->o->summary_json) write_summary_json(s, mn, mx, flops);
}

/* ---- resume ------------------------------------------------------------------------------------------ */
static void fingerprints(sweep_t *s) {
  const ls_dataset_t *d = &s->data;
  if (s->o->checkpoint_dir && s->o->checkpoint_dir[0])
    snprintf(s->ckpt_dir, sizeof s->ckpt_dir, "%s", s->o->checkpoint_dir);
  else
    snprintf(s->ckpt_dir, sizeof s->ckpt_dir, "%s.ckpt", s->o->out_path);
  ls_ckpt_meta_t *m = &s->meta;
  m->ranks = s->size;
  m->row_align = s->align;
  m->model_fp = ls_model_fingerprint(&s->model, s->comm);
  uint64_t h = LS_FNV_INIT;
  h = ls_fnv1a(h, d->tokens, sizeof(int32_t) * (size_t)d->n_tokens);
  h = ls_fnv1a(h, d->offsets, sizeof(int64_t) * (size_t)(d->n + 1));
  if (d->has_label) h = ls_fnv1a(h, d->labels, sizeof(int64_t) * (size_t)d->n);
  if (d->has_id) h = ls_fnv1a(h, d->ids, (size_t)d->n * LS_DATASET_MAX_ID);
  m->data_fp = h;
  int opts[5] = {(int)s->hooks, (int)s->pool, s->n_sel, s->o->allow_long_prompts, s->n_run};
  h = ls_fnv1a(LS_FNV_INIT, opts, sizeof opts);
  m->options_fp = ls_fnv1a(h, s->layers, sizeof(int) * (size_t)s->n_sel);
  snprintf(m->model_desc, sizeof m->model_desc, "%s", s->o->model_dir);
  /* until one has been timed, assume a checkpoint writes 0.5 GB/s */
  double bytes = (double)s->n_rows * s->cfg->hidden * 4, mx = 0;
  MPI_Allreduce(&bytes, &mx, 1, MPI_DOUBLE, MPI_MAX, s->comm);
  s->ckpt_cost_s = mx / 0.5e9;
  const char *fl = getenv("LS_FAULT_WRITE_LAYER");
  s->fault_layer = fl && *fl ? atoi(fl) : -1;
}

/* The output file of a resumed run must be the one this run would have created. */
static int check_output(sweep_t *s) {
  const hsize_t H = (hsize_t)s->cfg->hidden, R = (hsize_t)s->n_out_rows;
  hsize_t dims[4];
  for (int h = 0; h < LS_HOOK_COUNT; h++) {
    char name[64];
    snprintf(name, sizeof name, "/%s", ls_hook_name(h));
    int nd = ls_h5out_dataset_dims(&s->h5, name, dims, 4);
    int want = (s->hooks >> h) & 1;
    int ok = !want ? nd < 0
             : h == LS_HOOK_FINAL_NORM ? nd == 2 && dims[0] == R && dims[1] == H
                                       : nd == 3 && dims[0] == (hsize_t)s->n_sel && dims[1] == R && dims[2] == H;
    if (!ok) return LS_ERR;
  }
  int nd = ls_h5out_dataset_dims(&s->h5, "/profile/read_s", dims, 4);
  return nd == 2 && dims[0] == (hsize_t)s->size && dims[1] == (hsize_t)s->n_run ? LS_OK : LS_ERR;
}

/* --resume: 1 resumed from a checkpoint (output open, residual loaded, s->start set),
 * 0 start from the beginning, 2 the file is already complete, -1 error. */
static int try_resume(sweep_t *s) {
  int exists = s->rank == 0 ? access(s->o->out_path, F_OK) == 0 : 0;
  MPI_Bcast(&exists, 1, MPI_INT, 0, s->comm);
  ls_ckpt_meta_t saved;
  int found = ls_ckpt_load_meta(s->ckpt_dir, s->comm, &saved);
  if (found < 0) return -1;
  if (exists) {
    if (ls_h5out_open(&s->h5, s->o->out_path, s->comm)) return -1;
    s->h5_open = 1;
    char status[32];
    ls_h5out_read_attr_str(&s->h5, "/", "status", status, sizeof status);
    if (strcmp(status, "complete") == 0) {
      ls_info("%s is already complete; nothing to resume", s->o->out_path);
      ls_h5out_close(&s->h5);
      s->h5_open = 0;
      return 2;
    }
    if (found == 1 && ls_ckpt_check(&saved, &s->meta, s->ckpt_dir, s->comm)) return -1;
    if (found == 1 && ls_agree(check_output(s), s->comm)) {
      if (s->rank == 0)
        ls_error("%s does not match this run's hooks, layers, pooling or data; rerun with "
                 "--force to start over", s->o->out_path);
      return -1;
    }
  }
  if (found == 1 && exists) {
    s->meta.layer_next = saved.layer_next;
    const size_t n = (size_t)s->n_rows * (size_t)s->cfg->hidden;
    if (ls_ckpt_load_rows(s->ckpt_dir, s->comm, saved.layer_next, ls_ckpt_fp(&s->meta), s->x, n))
      return -1;
    s->start = saved.layer_next;
    for (int i = 0; i < s->n_sel; i++)
      if (s->layers[i] < s->start) s->done_marks[i] = s->layers[i];
    ls_info("resuming %s from the checkpoint before layer %d (%s)", s->o->out_path, s->start,
            s->ckpt_dir);
    return 1;
  }
  if (s->h5_open) {
    ls_h5out_close(&s->h5);
    s->h5_open = 0;
  }
  ls_info("--resume: no usable checkpoint in %s; starting from the beginning", s->ckpt_dir);
  return 0;
}

/* ---- entry point --------------------------------------------------------------------------------------- */
static void sweep_free(sweep_t *s) {
  if (s->be) {
    const ls_backend_iface_t *f = s->be->iface;
    f->free(s->be, s->x);
    f->free(s->be, s->scratch_base);
    f->free(s->be, s->wbuf);
    f->free(s->be, s->final_norm_w);
    ls_backend_free(s->be);
  }
  for (int h = 0; h < LS_HOOK_COUNT; h++) free(s->out[h]);
  free(s->layers); free(s->sel_index); free(s->bounds); free(s->mb_p); free(s->seq_start);
  free(s->seq_start_off); free(s->pos); free(s->poff); free(s->seq_len); free(s->cos_tab); free(s->sin_tab);
  free(s->done_marks);
  free(s->t_load); free(s->t_forward); free(s->t_hooks); free(s->t_write);
  ls_dataset_free(&s->data);
  ls_model_close(&s->model);
}

static int default_threads(MPI_Comm comm) {
  MPI_Comm node;
  int local = 1;
  MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  MPI_Comm_size(node, &local);
  MPI_Comm_free(&node);
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  int t = (int)(cores / local);
  return t > 0 ? t : 1;
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
  if (load_dataset(s)) goto out;
  int64_t longest = 1;
  for (int64_t i = 0; i < s->data.n; i++) longest = max64(longest, ls_dataset_len(&s->data, i));
  int threads = o->threads > 0 ? o->threads : default_threads(comm);
  s->threads = threads;
  s->be = ls_backend_cpu_new(threads, (int)longest + LS_ROW_PAD);
  if (ls_agree(s->be ? LS_OK : LS_ERR, comm)) goto out;
  MPI_Allreduce(&s->be->row_align, &s->align, 1, MPI_INT, MPI_MAX, comm);
  if (plan(s)) goto out;
  if (o->plan_only) { rc = LS_OK; goto out; }
  ls_info("backend: %s, %d thread%s per rank", s->be->iface->name, threads, threads > 1 ? "s" : "");
  if (ls_agree(alloc_buffers(s), comm)) goto out;
  s->done_marks = ls_malloc(sizeof(int64_t) * (size_t)(s->n_sel + 1), "markers");
  if (!s->done_marks) goto out;
  for (int i = 0; i < s->n_sel; i++) s->done_marks[i] = -1;
  fingerprints(s);
  int resumed = 0;
  if (o->resume) {
    resumed = try_resume(s);
    if (resumed < 0) goto out;
    if (resumed == 2) { rc = LS_OK; goto out; } /* already complete */
  }
  if (!resumed) {
    ls_error_defer(1); /* a failure every rank sees is reported once */
    int crc = create_output(s);
    if (ls_agree_report(crc, comm) || embed(s)) goto out;
  }
  if (load_final_norm(s)) goto out;
  if (ls_agree(ls_wpipe_init(&wp, &s->model, s->start, s->n_run, comm), comm)) goto out;
  wp_live = 1;
  install_signals();
  s->last_ckpt = s->start;
  int lr = run_layers(s, &wp);
  if (lr == LS_STOPPED) { rc = LS_STOPPED; goto out; }
  if (lr || run_final_norm(s)) goto out;
  s->t_total = ls_now() - t_begin;
  if (write_profile(s, &wp)) goto out;
  /* complete only after every collective write finished and the file was flushed */
  if (ls_agree(ls_h5out_flush(&s->h5), comm)) goto out;
  if (ls_agree(write_str_attr(s, "status", "complete"), comm)) goto out;
  rc = ls_agree(ls_h5out_close(&s->h5), comm);
  s->h5_open = 0;
  if (rc == LS_OK) {
    if (o->checkpoint_every >= 0) ls_ckpt_remove(s->ckpt_dir, comm);
    print_summary(s, &wp);
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
