/* plan.c: the preflight of a sweep: rank 0 reads and validates the dataset and every
 * rank receives it; the token-balanced shards, the padded row layout, the microbatches,
 * the memory and disk estimates (refusing what cannot fit) and the RoPE tables. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "sweep_internal.h"

/* ---- dataset: rank 0 reads and validates, everyone receives ------------------------------ */
int ls_sw_load_dataset(sweep_t *s) {
  ls_dataset_t *d = &s->data;
  int rc = LS_OK;
  if (s->rank == 0) {
    /* learned positions (GPT-2) end at max_pos: no flag goes past them */
    const int learned = s->model.glob[LS_G_POS_EMBED].spec.present;
    if (learned && s->o->allow_long_prompts)
      ls_warn("--allow-long-prompts has no effect on %s: its %d learned positions are all it "
              "has", s->cfg->arch_name, s->cfg->max_pos);
    int64_t max_len = s->o->allow_long_prompts && !learned ? 0 : s->cfg->max_pos;
    const ls_dataset_text_t text = {s->o->model_dir, s->o->max_tokens, s->o->threads};
    rc = ls_dataset_load(s->o->data_path, s->cfg->vocab, max_len, &text, d);
  }
  if (ls_agree(rc, s->comm)) return LS_ERR; /* rank 0 printed why */
  /* text input: the tokenizer's identity goes into the file's attributes (every rank) */
  MPI_Bcast(&d->from_text, 1, MPI_INT, 0, s->comm);
  MPI_Bcast(d->tok_sha256, sizeof d->tok_sha256, MPI_CHAR, 0, s->comm);
  MPI_Bcast(d->tok_policy, sizeof d->tok_policy, MPI_CHAR, 0, s->comm);
  MPI_Bcast(&d->n_truncated, 1, MPI_INT64_T, 0, s->comm);
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

/* Largest tensor of slot i over all layers (16-float aligned): one layer's weights are
 * converted into a buffer carved in table order, each slot sized for the largest layer. */
static int64_t slot_max_numel(const ls_model_t *m, int i) {
  int64_t mx = 0;
  for (int L = 0; L < m->cfg.n_layers; L++) mx = max64(mx, ls_model_slot(m, L, i)->numel);
  return (mx + 15) / 16 * 16;
}

static size_t slot_bytes(const ls_model_t *m, const ls_backend_t *be, int i) {
  const int matrix = ls_model_slot(m, 0, i)->spec.kind == LS_WK_MATRIX;
  return (size_t)slot_max_numel(m, i) * (matrix ? ls_dtype_size(be->wtype) : sizeof(float));
}

/* Bytes of one layer's weights in the backend's format (GEMM weights as be->wtype,
 * the rest float32). */
size_t ls_sw_layer_weight_bytes(const ls_model_t *m, const ls_backend_t *be) {
  size_t n = 0;
  for (int i = 0; i < m->n_slots; i++) n += slot_bytes(m, be, i);
  return n;
}

/* The widest GEMM input of the model (the bf16 GEMM-input scratch is sized by it). */
int ls_sw_max_gemm_in(const ls_model_t *m) {
  int64_t mx = 1;
  for (int L = 0; L < m->cfg.n_layers; L++)
    for (int i = 0; i < m->n_slots; i++) {
      const ls_wslot_t *w = ls_model_slot(m, L, i);
      if (w->spec.present && w->spec.kind == LS_WK_MATRIX) mx = max64(mx, w->spec.shape[1]);
    }
  return (int)mx;
}

/* Carve base (ls_sw_layer_weight_bytes) into the slots' pointers (NULL where the layer
 * has no such tensor). */
void ls_sw_carve_layer(const ls_model_t *m, const ls_backend_t *be, int layer, void *base,
                       void **w) {
  char *p = base;
  for (int i = 0; i < m->n_slots; i++) {
    w[i] = ls_model_slot(m, layer, i)->spec.present ? p : NULL;
    p += slot_bytes(m, be, i);
  }
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

/* The first padded row of each of `size` ranks' shards (and the total) in the whole
 * dataset's row order: the rows a checkpoint of that many ranks holds in each file. */
int ls_shard_row_starts(const ls_dataset_t *d, int size, int align, int compact, int64_t *rows) {
  int64_t *bounds = ls_malloc(sizeof(int64_t) * (size_t)(size + 1), "shard bounds");
  if (!bounds) return LS_ERR;
  shard_prompts(d->offsets, d->n, size, bounds);
  int64_t g = 0, p = 0;
  const int64_t A = compact ? 1 : align; /* compact: the real rows only */
  for (int r = 0; r <= size; r++) {
    for (; p < bounds[r]; p++) g += (ls_dataset_len(d, p) + A - 1) / A * A;
    rows[r] = g;
  }
  free(bounds);
  return LS_OK;
}

int ls_shard_storage(ls_shard_t *sh, const ls_dataset_t *d, int compact) {
  sh->compact = compact && sh->align > 1;
  sh->soff = ls_malloc(sizeof(int64_t) * (size_t)(sh->n_prompts + 1), "row layout");
  if (!sh->soff) return LS_ERR;
  for (int64_t i = 0; i <= sh->n_prompts; i++)
    sh->soff[i] = sh->compact ? d->offsets[sh->p0 + i] - sh->t0 : sh->poff[i];
  sh->n_store = sh->soff[sh->n_prompts];
  return LS_OK;
}

/* The shard of rank `rank` of `size`: token-balanced contiguous prompts, the padded
 * row layout (prompts start at multiples of align), greedy microbatches of whole
 * prompts (at most microbatch_tokens rows unless one prompt alone is longer). */
int ls_shard_build(ls_shard_t *sh, const ls_dataset_t *d, int rank, int size, int align,
                   int64_t microbatch_tokens, ls_pool_t pool) {
  memset(sh, 0, sizeof *sh);
  sh->align = align;
  sh->bounds = ls_malloc(sizeof(int64_t) * (size_t)(size + 1), "shard bounds");
  if (!sh->bounds) return LS_ERR;
  shard_prompts(d->offsets, d->n, size, sh->bounds);
  sh->p0 = sh->bounds[rank];
  sh->p1 = sh->bounds[rank + 1];
  sh->t0 = d->offsets[sh->p0];
  sh->t1 = d->offsets[sh->p1];
  sh->n_prompts = sh->p1 - sh->p0;
  sh->n_tokens = sh->t1 - sh->t0;
  const int none = pool == LS_POOL_NONE;
  sh->out_rows = none ? sh->n_tokens : sh->n_prompts;
  sh->out_row0 = none ? sh->t0 : sh->p0;
  sh->n_out_rows = none ? d->n_tokens : d->n;

  const int64_t np = sh->n_prompts, A = align;
  sh->poff = ls_malloc(sizeof(int64_t) * (size_t)(np + 1), "row layout");
  sh->mb_p = ls_malloc(sizeof(int64_t) * (size_t)(np + 2), "microbatches");
  sh->seq_start = ls_malloc(sizeof(int32_t) * (size_t)(2 * np + 2), "microbatches");
  sh->seq_len = ls_malloc(sizeof(int32_t) * (size_t)(2 * np + 2), "microbatches");
  sh->seq_start_off = ls_malloc(sizeof(int64_t) * (size_t)(np + 1), "microbatches");
  sh->mb_max_len = ls_malloc(sizeof(int) * (size_t)(np + 1), "microbatches");
  if (!sh->poff || !sh->mb_p || !sh->seq_start || !sh->seq_len || !sh->seq_start_off ||
      !sh->mb_max_len)
    return LS_ERR;
  sh->poff[0] = 0;
  for (int64_t i = 0; i < np; i++)
    sh->poff[i + 1] = sh->poff[i] + (ls_dataset_len(d, sh->p0 + i) + A - 1) / A * A;
  sh->n_rows = sh->poff[np];
  sh->pos = ls_malloc(sizeof(int32_t) * (size_t)max64(sh->n_rows, 1), "positions");
  if (!sh->pos) return LS_ERR;
  int64_t max_len = 1;
  for (int64_t i = 0; i < d->n; i++) max_len = max64(max_len, ls_dataset_len(d, i));
  sh->max_len = (int)((max_len + A - 1) / A * A); /* padding rows have positions too */
  int64_t p = 0, ss = 0;
  sh->n_mb = 0;
  sh->T_max = 1;
  while (p < np) {
    int64_t q = p + 1;
    while (q < np && sh->poff[q + 1] - sh->poff[p] <= microbatch_tokens) q++;
    sh->mb_p[sh->n_mb] = sh->p0 + p;
    sh->seq_start_off[sh->n_mb] = ss;
    sh->mb_max_len[sh->n_mb] = 1;
    for (int64_t i = p; i < q; i++)
      sh->mb_max_len[sh->n_mb] = (int)max64(sh->mb_max_len[sh->n_mb], sh->poff[i + 1] - sh->poff[i]);
    for (int64_t i = p; i <= q; i++) {
      sh->seq_len[ss] = i < q ? (int32_t)ls_dataset_len(d, sh->p0 + i) : 0;
      sh->seq_start[ss++] = (int32_t)(sh->poff[i] - sh->poff[p]);
    }
    sh->T_max = (int)max64(sh->T_max, sh->poff[q] - sh->poff[p]);
    sh->n_mb++;
    p = q;
  }
  sh->mb_p[sh->n_mb] = sh->p1;
  for (int64_t i = 0; i < np; i++)
    for (int64_t r = sh->poff[i]; r < sh->poff[i + 1]; r++) sh->pos[r] = (int32_t)(r - sh->poff[i]);
  return LS_OK;
}

void ls_shard_free(ls_shard_t *sh) {
  free(sh->bounds); free(sh->poff); free(sh->soff); free(sh->mb_p); free(sh->seq_start); free(sh->seq_len);
  free(sh->seq_start_off); free(sh->pos); free(sh->mb_max_len);
  memset(sh, 0, sizeof *sh);
}

/* The memory and disk estimates (refusing what cannot fit) and the RoPE tables. */
int ls_sw_plan(sweep_t *s) {
  const ls_dataset_t *d = &s->data;
  const ls_config_t *c = s->cfg;
  const ls_shard_t *sh = &s->sh;
  ls_bufs_t *bf = &s->buf;
  const int64_t np = sh->n_prompts;
  const int64_t max_len = sh->max_len;
  /* memory and disk estimates; refuse what cannot fit */
  const double H = c->hidden;
  const ls_backend_t *be = s->be;
  double resid = (double)(sh->n_store + (sh->compact ? sh->T_max : 0)) * H * 4;
  double scratch = (double)ls_family_scratch_floats(s->fam, c, sh->T_max) * 4;
  double wconv = (double)ls_sw_layer_weight_bytes(&s->model, s->be) * (s->o->preload_weights ? s->sel.n_run : 1);
  double staging = 2.0 * (double)s->model.max_layer_bytes;
  /* the pooled rows of each hook, and with overlapped writes a second host copy of the
   * per-layer hooks' rows (the layer the writer holds while the next one computes) */
  double outbuf = 0, outbuf_alt = 0;
  for (int h = 0; h < LS_HOOK_COUNT; h++) {
    if (!((s->sel.hooks >> h) & 1)) continue;
    const double b = (double)sh->out_rows * ls_sw_hook_width(s, h) * 4;
    outbuf += b;
    if (s->o->overlap_writes && s->sel.n_sel > 0 && ls_hook_layered(h)) outbuf_alt += b;
  }
  if (s->fam->host_scratch_bytes) outbuf += (double)s->fam->host_scratch_bytes(c, sh->T_max);
  /* the stream's bytes in host memory (spilled: the ring of microbatch slots instead) */
  const double stream = (double)sh->n_store * H * 4;
  double host_stream = be->mem_bytes > 0 ? 0 : stream;
  double rank_bytes = resid + scratch + wconv + staging + outbuf + outbuf_alt;
  int dev_rc = LS_OK;
  double dev_bytes = 0;
  /* test switch: the residual stream in a spill file whatever the memory */
  const char *force_spill = getenv("LS_TEST_SPILL");
  const int spill_forced = force_spill && strcmp(force_spill, "1") == 0;
  ls_error_defer(1); /* ranks that cannot fit: the lowest one reports */
  if (be->mem_bytes > 0) {
    /* a device backend: weights (two raw receive slots + the converted layer), scratch,
     * pooled outputs, index arrays, rope tables and GEMM-input scratch on the device;
     * the residual stream too if it fits, else on the host, staged per microbatch */
    const int max_dim = ls_sw_max_gemm_in(&s->model);
    double idx = (double)(sh->n_rows + 4 * np + 8) * 4 + 4.0 * max_len * (c->rope_dim / 2) * 4;
    double gemm_in = be->wtype == LS_DT_F32 ? 0 : (double)ls_round_rows(sh->T_max) * max_dim * 2;
    double fixed = staging + wconv + scratch + outbuf + idx + gemm_in + (double)(256 << 20);
    bf->x_on_host = fixed + resid > 0.92 * be->mem_bytes;
    /* test switch: exercise the host-staged path on a GPU that could hold everything */
    const char *force_host = getenv("LS_TEST_RESIDUAL_ON_HOST");
    if ((force_host && strcmp(force_host, "1") == 0) || spill_forced) bf->x_on_host = 1;
    dev_bytes = fixed + (bf->x_on_host ? (double)sh->T_max * H * 4 : resid);
    /* host: rank 0's read staging, the pooled rows, the residual stream if it lives
     * there, or its copy while a checkpoint is written */
    host_stream = bf->x_on_host || s->o->checkpoint_every >= 0 ? resid : 0;
    rank_bytes = (s->rank == 0 ? staging : 0) + outbuf + outbuf_alt + host_stream;
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
  double avail = available_memory();
  int local_size = 1;
  {
    MPI_Comm node;
    MPI_Comm_split_type(s->comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
    MPI_Comm_size(node, &local_size);
    MPI_Comm_free(&node);
  }
  /* host memory per rank: --memory-limit, else 95% of what is available now, shared by
   * the ranks of this node (0: unknown, nothing is refused or spilled) */
  const double limit = s->o->memory_limit > 0 ? (double)s->o->memory_limit
                                              : avail > 0 ? 0.95 * avail / local_size : 0;
  /* beyond it, the residual stream goes to a spill file (on a device backend only when it
   * already lives on the host, which a checkpoint copy alone does not) */
  const double slot = (double)sh->T_max * H * 4 + LS_SPILL_ALIGN;
  bf->spilled = (spill_forced || (limit > 0 && rank_bytes > limit)) &&
                (be->mem_bytes == 0 || bf->x_on_host) && sh->n_store > 0;
  if (bf->spilled) rank_bytes += LS_SPILL_SLOTS * slot - (be->mem_bytes > 0 ? host_stream : stream);
  int mem_rc = LS_OK;
  if (limit > 0 && rank_bytes > limit) {
    ls_error("plan: rank %d needs about %.2f GiB of host memory but may use %.2f GiB (%s%s); "
             "lower --microbatch-tokens, capture fewer --hooks/--layers, use pooling, run on "
             "more nodes%s", s->rank, rank_bytes / 1073741824.0, limit / 1073741824.0,
             s->o->memory_limit > 0 ? "--memory-limit" : "95% of the memory available",
             s->o->memory_limit > 0 || local_size == 1 ? "" : ", shared by the ranks of the node",
             s->o->memory_limit > 0 ? " or raise --memory-limit" : "");
    mem_rc = LS_ERR;
  }
  int any_on_host = 0, n_spilled = 0;
  MPI_Allreduce(&bf->x_on_host, &any_on_host, 1, MPI_INT, MPI_MAX, s->comm);
  MPI_Allreduce(&bf->spilled, &n_spilled, 1, MPI_INT, MPI_SUM, s->comm);
  double spill_max = bf->spilled ? stream : 0;
  MPI_Allreduce(MPI_IN_PLACE, &spill_max, 1, MPI_DOUBLE, MPI_MAX, s->comm);
  double file_bytes = 0;
  for (int h = 0; h < LS_HOOK_COUNT; h++) {
    if (!((s->sel.hooks >> h) & 1)) continue;
    const double es = h == LS_HOOK_ROUTER_LOGITS ? 4 : (double)ls_dtype_size(s->out.out_dt);
    file_bytes += ls_sw_hook_layers(s, h) * (double)sh->n_out_rows * ls_sw_hook_width(s, h) * es;
  }
  double max_rank_bytes = 0;
  MPI_Allreduce(&rank_bytes, &max_rank_bytes, 1, MPI_DOUBLE, MPI_MAX, s->comm);
  if (s->rank == 0) {
    ls_info("plan: %s, %d layers (computing %d, capturing %d), hidden %d, %lld prompts, "
            "%lld tokens, %d rank%s", c->arch_name, c->n_layers, s->sel.n_run, s->sel.n_sel, c->hidden,
            (long long)d->n, (long long)d->n_tokens, s->size, s->size > 1 ? "s" : "");
    for (int r = 0; r < s->size && r < 16; r++)
      ls_info("plan:   rank %d: prompts [%lld, %lld), %lld tokens", r, (long long)sh->bounds[r],
              (long long)sh->bounds[r + 1],
              (long long)(d->offsets[sh->bounds[r + 1]] - d->offsets[sh->bounds[r]]));
    if (s->size > 16) ls_info("plan:   ... (%d ranks)", s->size);
    if (be->mem_bytes > 0)
      ls_info("plan: GPU memory per rank %.2f of %.2f GiB; residual stream %s", dev_bytes / 1073741824.0,
              be->mem_bytes / 1073741824.0,
              n_spilled ? "in a spill file, staged per microbatch through page-locked host memory"
              : any_on_host ? "in page-locked host memory, staged per microbatch (it does not fit "
                              "on the GPU)"
                            : "on the GPU");
    ls_info("plan: microbatch <= %lld tokens (rank 0: %d microbatches, largest %d rows; prompts "
            "start at multiples of %d rows, %.1f%% padding); memory per rank <= %.3f GiB; output "
            "%.3f GiB; weights read once: %.3f GiB", (long long)s->o->microbatch_tokens, sh->n_mb,
            sh->T_max, sh->align, sh->n_rows ? 100.0 * (double)(sh->n_rows - sh->n_tokens) / (double)sh->n_rows : 0.0,
            max_rank_bytes / 1073741824.0,
            file_bytes / 1073741824.0, (double)s->model.total_tensor_bytes / 1073741824.0);
    if (n_spilled)
      ls_info("plan: residual stream spilled on %d of %d ranks (it does not fit in %.2f GiB of "
              "host memory per rank%s) to %s: up to %.4g GiB per rank, read and written once per "
              "layer, a microbatch read ahead and one written behind", n_spilled, s->size,
              limit / 1073741824.0,
              spill_forced ? ", LS_TEST_SPILL" : s->o->memory_limit > 0 ? ", --memory-limit" : "",
              bf->spill_dir, spill_max / 1073741824.0);
  }
  if (ls_agree_report(dev_rc != LS_OK ? dev_rc : mem_rc, s->comm)) return LS_ERR;
  int rc = LS_OK;
  ls_error_defer(1);
  /* the spill file's space, on the file system of --spill-dir (or of the directory it will
   * be made in): each rank's own, the node's ranks sharing it */
  if (bf->spilled) {
    char dir[4200];
    ls_existing_dir(bf->spill_dir, dir, sizeof dir);
    struct statvfs vfs;
    const double need = stream * 1.01 * local_size;
    if (statvfs(dir, &vfs) == 0 && (double)vfs.f_bavail * vfs.f_frsize < need) {
      ls_error("plan: the spilled residual stream needs about %.3f GiB in %s (%d rank%s of this "
               "node) but its file system has %.3f GiB free; give --spill-dir on a larger local "
               "disk, or more --memory-limit", need / 1073741824.0, bf->spill_dir, local_size,
               local_size > 1 ? "s" : "", (double)vfs.f_bavail * vfs.f_frsize / 1073741824.0);
      rc = LS_ERR;
    }
  }
  if (ls_agree_report(rc, s->comm)) return LS_ERR;
  if (rc == LS_OK && s->rank == 0 && !s->o->plan_only) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", s->o->out_path);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = '\0'; else snprintf(dir, sizeof dir, ".");
    struct statvfs vfs;
    /* --resume (or --force) over an existing file: the blocks it already holds are
     * reused (a resumed file keeps them, an overwritten one frees them) */
    struct stat held;
    double have = 0;
    if ((s->o->resume || s->o->force) && stat(s->o->out_path, &held) == 0 && S_ISREG(held.st_mode))
      have = (double)held.st_blocks * 512.0;
    const double need = file_bytes * 1.01 + (1 << 20) - have;
    if (statvfs(dir[0] ? dir : "/", &vfs) == 0 && (double)vfs.f_bavail * vfs.f_frsize < need) {
      ls_error("plan: %s needs about %.3f GiB%s but its file system has %.3f GiB free; free "
               "space, write elsewhere, or capture fewer --hooks/--layers", s->o->out_path,
               need / 1073741824.0, have > 0 ? " more than the existing file holds" : "",
               (double)vfs.f_bavail * vfs.f_frsize / 1073741824.0);
      rc = LS_ERR;
    }
  }
  if (ls_agree(rc, s->comm)) return LS_ERR;
  /* rope tables for every position a prompt can have (none without RoPE) */
  const int half = c->rope_dim / 2;
  const size_t n_tab = (size_t)max_len * (size_t)(half > 0 ? half : 1);
  float *inv = ls_malloc(sizeof(float) * (size_t)(half > 0 ? half : 1), "rope table");
  if (!inv) return LS_ERR;
  for (int k = 0; k < 2; k++) {
    bf->cos_tab[k] = ls_calloc(n_tab, sizeof(float), "rope table");
    bf->sin_tab[k] = ls_calloc(n_tab, sizeof(float), "rope table");
    if (!bf->cos_tab[k] || !bf->sin_tab[k]) {
      free(inv);
      return LS_ERR;
    }
    if (half == 0 || (k == 1 && !c->local_rope)) continue;
    const ls_rope_params_t *rp = k ? &c->rope_local : &c->rope;
    ls_config_rope_inv_freq(rp, c->rope_dim, inv);
    const float af = (float)rp->attn_factor; /* yarn: cos and sin scaled, as transformers */
    for (int64_t pp = 0; pp < max_len; pp++)
      for (int i = 0; i < half; i++) {
        float a = (float)pp * inv[i];
        bf->cos_tab[k][pp * half + i] = (float)cos((double)a);
        bf->sin_tab[k][pp * half + i] = (float)sin((double)a);
        if (rp->type == LS_ROPE_YARN) {
          bf->cos_tab[k][pp * half + i] *= af;
          bf->sin_tab[k][pp * half + i] *= af;
        }
      }
  }
  free(inv);
  return LS_OK;
}
