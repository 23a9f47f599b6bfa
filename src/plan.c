/* plan.c: the preflight of a sweep: rank 0 reads and validates the dataset and every
 * rank receives it; the token-balanced shards, the padded row layout, the microbatches,
 * the memory and disk estimates (refusing what cannot fit) and the RoPE tables. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "sweep_internal.h"

/* ---- dataset: rank 0 reads and validates, everyone receives ------------------------------ */
int ls_sw_load_dataset(sweep_t *s) {
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
int64_t ls_sw_slot_max_numel(const sweep_t *s, int id) {
  int64_t mx = 0;
  for (int L = 0; L < s->cfg->n_layers; L++)
    mx = max64(mx, s->model.slots[(size_t)L * LS_W_COUNT + id].numel);
  return (mx + 15) / 16 * 16;
}

/* Bytes of one layer's weights in the backend's format (GEMM weights as be->wtype,
 * vectors float32), each tensor's slot sized for the largest layer. */
size_t ls_sw_layer_weight_bytes(const sweep_t *s) {
  size_t n = 0;
  for (int id = 0; id < LS_W_COUNT; id++)
    n += (size_t)ls_sw_slot_max_numel(s, id) *
         (ls_weight_is_matrix(id) ? ls_dtype_size(s->be->wtype) : sizeof(float));
  return n;
}

/* ---- plan: shard, microbatches, sizes ------------------------------------------------------ */
/* Contiguous prompt ranges with token counts as equal as prompt boundaries allow. */
/* Memory the kernel can give without swapping: MemAvailable (free + reclaimable page
 * cache), falling back to free pages; 0 if unknown (then nothing is refused). */
static double available_memory(void) {
  FILE *f = fopen("/proc/meminfo", "r");
  char line[256];
  long long kb = -1;
  while (f && fgets(line, sizeof line, f))
    if (sscanf(line, "MemAvailable: %lld kB", &kb) == 1) break;
  if (f) fclose(f);
  if (kb > 0) return (double)kb * 1024.0;
  long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? (double)pages * page : 0;
}

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

int ls_sw_plan(sweep_t *s) {
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
  s->mb_max_len = ls_malloc(sizeof(int) * (size_t)(np + 1), "microbatches");
  if (!s->poff || !s->mb_p || !s->seq_start || !s->seq_len || !s->seq_start_off ||
      !s->mb_max_len)
    return LS_ERR;
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
    s->mb_max_len[s->n_mb] = 1;
    for (int64_t i = p; i < q; i++)
      s->mb_max_len[s->n_mb] = (int)max64(s->mb_max_len[s->n_mb], s->poff[i + 1] - s->poff[i]);
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

  s->max_len = (int)max_len;

  /* memory and disk estimates; refuse what cannot fit */
  const double H = c->hidden;
  int n_hooks = 0;
  for (int h = 0; h < LS_HOOK_COUNT; h++) n_hooks += (s->hooks >> h) & 1;
  const ls_backend_t *be = s->be;
  double resid = (double)s->n_rows * H * 4;
  double scratch = (double)ls_block_scratch_floats(c, s->T_max) * 4;
  double wconv = (double)ls_sw_layer_weight_bytes(s) * (s->o->preload_weights ? s->n_run : 1);
  double staging = 2.0 * (double)s->model.max_layer_bytes;
  double outbuf = (double)n_hooks * (double)s->out_rows * H * 4;
  double rank_bytes = resid + scratch + wconv + staging + outbuf;
  int dev_rc = LS_OK;
  double dev_bytes = 0;
  ls_error_defer(1); /* ranks that cannot fit: the lowest one reports */
  if (be->mem_bytes > 0) {
    /* a device backend: weights (two raw receive slots + the converted layer), scratch,
     * pooled outputs, index arrays, rope tables and GEMM-input scratch on the device;
     * the residual stream too if it fits, else on the host, staged per microbatch */
    const int max_dim = (int)max64(max64(c->hidden, c->intermediate),
                                   (int64_t)c->n_heads * c->head_dim);
    double idx = (double)(s->n_rows + 4 * np + 8) * 4 + 2.0 * max_len * (c->head_dim / 2) * 4;
    double gemm_in = be->wtype == LS_DT_F32 ? 0 : (double)ls_round_rows(s->T_max) * max_dim * 2;
    double fixed = staging + wconv + scratch + outbuf + idx + gemm_in + (double)(256 << 20);
    s->x_on_host = fixed + resid > 0.92 * be->mem_bytes;
    /* test switch: exercise the host-staged path on a GPU that could hold everything */
    const char *force_host = getenv("LS_TEST_RESIDUAL_ON_HOST");
    if (force_host && strcmp(force_host, "1") == 0) s->x_on_host = 1;
    dev_bytes = fixed + (s->x_on_host ? (double)s->T_max * H * 4 : resid);
    /* host: rank 0's read staging, the pooled rows, the residual stream if it lives
     * there, or its copy while a checkpoint is written */
    rank_bytes = (s->rank == 0 ? staging : 0) + outbuf +
                 (s->x_on_host || s->o->checkpoint_every >= 0 ? resid : 0);
    if (dev_bytes > 0.92 * be->mem_bytes) {
      ls_error("plan: rank %d needs about %.2f GiB of GPU memory (layer weights %.2f, "
               "microbatch scratch %.2f, pooled outputs %.2f, CUDA libraries 0.25) but may use "
               "%.2f GiB (92%% of its GPU's %.2f GiB free); lower --microbatch-tokens, capture "
               "fewer --hooks, use --pool last_token or mean, or run on more GPUs", s->rank,
               dev_bytes / 1073741824.0, (staging + wconv) / 1073741824.0,
               (scratch + gemm_in) / 1073741824.0, outbuf / 1073741824.0,
               0.92 * be->mem_bytes / 1073741824.0, be->mem_bytes / 1073741824.0);
      dev_rc = LS_ERR;
    }
  }
  int any_on_host = 0;
  MPI_Allreduce(&s->x_on_host, &any_on_host, 1, MPI_INT, MPI_MAX, s->comm);
  double file_bytes = 0;
  for (int h = 0; h < LS_HOOK_COUNT; h++) {
    if (!((s->hooks >> h) & 1)) continue;
    double layers = h == LS_HOOK_FINAL_NORM ? 1 : s->n_sel;
    file_bytes += layers * (double)s->n_out_rows * H * 4;
  }
  double max_rank_bytes = 0;
  MPI_Allreduce(&rank_bytes, &max_rank_bytes, 1, MPI_DOUBLE, MPI_MAX, s->comm);
  double avail = available_memory();
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
    if (be->mem_bytes > 0)
      ls_info("plan: GPU memory per rank %.2f of %.2f GiB; residual stream %s", dev_bytes / 1073741824.0,
              be->mem_bytes / 1073741824.0,
              any_on_host ? "in page-locked host memory, staged per microbatch (it does not fit "
                            "on the GPU)"
                          : "on the GPU");
    ls_info("plan: microbatch <= %lld tokens (rank 0: %d microbatches, largest %d rows; prompts "
            "start at multiples of %d rows, %.1f%% padding); memory per rank <= %.2f GiB; output "
            "%.3f GiB; weights read once: %.3f GiB", (long long)s->o->microbatch_tokens, s->n_mb,
            s->T_max, s->align, s->n_rows ? 100.0 * (double)(s->n_rows - s->n_tokens) / (double)s->n_rows : 0.0,
            max_rank_bytes / 1073741824.0,
            file_bytes / 1073741824.0, (double)s->model.total_tensor_bytes / 1073741824.0);
  }
  if (ls_agree_report(dev_rc, s->comm)) return LS_ERR;
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
