/* predict.c: the plan's time model. Short probes (well under a second on small models,
 * about two on a 70B layer) measure what the sweep's phases run at on this machine: the
 * backend's GEMM rate at the model's widths and the microbatch's rows, its weight
 * conversion rate, rank 0's read rate on the checkpoint itself (bytes of layer 0, which
 * the sweep reads next anyway), the broadcast rate through the backend's own broadcast
 * (more than one rank), and the output file system's write rate. From those and the plan
 * (bytes per layer, the largest rank's tokens) it predicts each phase per layer, the
 * wall time and the bottleneck; the end-of-run summary sets the measured times beside. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sweep_internal.h"

#define PROBE_S 0.05 /* each probe repeats until it has run this long */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static float frand(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (float)((double)(rng_state >> 11) / 9007199254740992.0 - 0.5);
}

/* GEMM FLOP/s of be at T rows, n_in -> n_out, and its weight conversion rate (bytes of
 * the checkpoint's dtype per second) */
static int probe_backend(ls_backend_t *be, ls_dtype_t wdt, int T, int n_in, int n_out,
                         double *gemm_rate, double *conv_rate) {
  const ls_backend_iface_t *f = be->iface;
  const size_t nw = (size_t)n_in * (size_t)n_out, rows = (size_t)ls_round_rows(T) + LS_ROW_PAD;
  float *hw = ls_malloc(sizeof(float) * nw, "time probe");
  char *raw = ls_malloc(nw * ls_dtype_size(wdt), "time probe");
  void *W = f->alloc(be, nw * 4, "time probe");
  float *x = f->alloc(be, sizeof(float) * rows * (size_t)n_in, "time probe");
  float *y = f->alloc(be, sizeof(float) * rows * (size_t)n_out, "time probe");
  void *src = raw;
  int rc = hw && raw && W && x && y ? LS_OK : LS_ERR;
  /* the backend's GEMM scratch for these rows (grown again after the plan if need be) */
  if (rc == LS_OK && f->reserve) rc = f->reserve(be, T, n_in > n_out ? n_in : n_out);
  if (rc == LS_OK) {
    for (size_t i = 0; i < nw; i++) hw[i] = frand();
    if (wdt == LS_DT_F32) memcpy(raw, hw, nw * 4);
    else ls_convert_from_f32(raw, hw, wdt, nw);
    float *hx = ls_malloc(sizeof(float) * rows * (size_t)n_in, "time probe");
    if (!hx) rc = LS_ERR;
    for (size_t i = 0; hx && i < rows * (size_t)n_in; i++) hx[i] = frand();
    if (rc == LS_OK) rc = f->to_device(be, x, hx, sizeof(float) * rows * (size_t)n_in);
    free(hx);
  }
  /* conversion: the checkpoint's bytes into the backend's GEMM format */
  double t0 = ls_now(), dt = 0;
  int reps = 0;
  while (rc == LS_OK && (dt < PROBE_S || reps < 2)) {
    rc = f->load_weight(be, W, src, wdt, nw, 1, 0);
    if (rc == LS_OK && f->sync) rc = f->sync(be);
    dt = ls_now() - t0;
    reps++;
  }
  if (rc == LS_OK) *conv_rate = (double)reps * (double)(nw * ls_dtype_size(wdt)) / dt;
  /* GEMM: one warm-up call, then timed calls */
  if (rc == LS_OK) {
    f->matmul(be, y, x, W, NULL, T, n_in, n_out);
    if (f->sync) rc = f->sync(be);
  }
  t0 = ls_now();
  dt = 0;
  reps = 0;
  while (rc == LS_OK && (dt < PROBE_S || reps < 2)) {
    f->matmul(be, y, x, W, NULL, T, n_in, n_out);
    if (f->sync) rc = f->sync(be);
    dt = ls_now() - t0;
    reps++;
  }
  if (rc == LS_OK) *gemm_rate = (double)reps * 2.0 * T * (double)n_in * n_out / dt;
  free(hw);
  free(raw);
  if (W) f->free(be, W);
  if (x) f->free(be, x);
  if (y) f->free(be, y);
  return rc;
}

/* rank 0: read rate of the checkpoint (up to 64 MiB of its largest tensor of layer 0, not
 * counted as weight bytes read) */
static double probe_read(sweep_t *s) {
  const ls_st_model_t *st = &s->model.st;
  const ls_st_tensor_t *big = NULL;
  for (int i = 0; i < st->n_tensors; i++)
    if (strstr(st->tensors[i].name, "layers.0.") && (!big || st->tensors[i].nbytes > big->nbytes))
      big = &st->tensors[i];
  if (!big) return 0;
  const uint64_t n = big->nbytes < ((uint64_t)64 << 20) ? big->nbytes : ((uint64_t)64 << 20);
  void *buf = ls_malloc(n, "time probe");
  if (!buf) return 0;
  const uint64_t before = s->model.st.bytes_read;
  double t0 = ls_now();
  int rc = ls_st_read_range(&s->model.st, big, 0, n, buf);
  double dt = ls_now() - t0;
  s->model.st.bytes_read = before;
  free(buf);
  return rc == LS_OK && dt > 0 ? (double)n / dt : 0;
}

/* rank 0: the output file system's write rate (16 MiB beside --out, synced, removed) */
static double probe_write(const char *out) {
  if (!out) return 0;
  char path[4200];
  snprintf(path, sizeof path, "%s.probe.XXXXXX", out);
  int fd = mkstemp(path);
  if (fd < 0) return 0;
  const size_t n = (size_t)16 << 20;
  char *buf = calloc(1, n);
  double rate = 0;
  if (buf) {
    double t0 = ls_now();
    if (write(fd, buf, n) == (ssize_t)n && fdatasync(fd) == 0) rate = (double)n / (ls_now() - t0);
  }
  free(buf);
  close(fd);
  unlink(path);
  return rate;
}

/* A spilled rank's --spill-dir (or, not made yet, the directory it will be made in): the
 * rate of a 32 MiB O_DIRECT write, synced, then read back, as the spill moves its regions
 * (one stream, both directions: bytes / (write + read seconds)); 0 if it cannot tell. */
static double probe_spill(const char *spill_dir) {
  char dir[4200], path[4300];
  ls_existing_dir(spill_dir, dir, sizeof dir); /* not made yet: the same disk */
  snprintf(path, sizeof path, "%s/.layersweep-spill-probe.XXXXXX", dir);
  int fd = mkstemp(path);
  if (fd < 0) return 0;
  const size_t n = (size_t)32 << 20;
  int dfd = open(path, O_RDWR | O_DIRECT | O_CLOEXEC);
  unlink(path);
  const int use = dfd >= 0 ? dfd : fd;
  char *buf = ls_aligned_alloc_to(n, LS_SPILL_ALIGN, "time probe");
  double rate = 0;
  if (buf) {
    memset(buf, 1, n);
    double t0 = ls_now();
    if (pwrite(use, buf, n, 0) == (ssize_t)n && fdatasync(use) == 0) {
      if (dfd < 0) posix_fadvise(fd, 0, (off_t)n, POSIX_FADV_DONTNEED);
      if (pread(use, buf, n, 0) == (ssize_t)n) rate = (double)n / (ls_now() - t0);
    }
  }
  free(buf);
  if (dfd >= 0) close(dfd);
  close(fd);
  return rate;
}

/* the broadcast rate through the backend's own broadcast (32 MiB from rank 0) */
static double probe_bcast(sweep_t *s) {
  if (s->size < 2) return 0;
  ls_backend_t *be = s->be;
  const size_t n = (size_t)32 << 20;
  const int dev = (be->caps & LS_BE_DEVICE_BCAST) != 0;
  void *src = s->rank == 0 ? be->iface->host_alloc(be, n, "time probe") : NULL;
  void *dst = dev ? be->iface->alloc(be, n, "time probe") : be->iface->host_alloc(be, n, "time probe");
  int ok = dst && (s->rank != 0 || src), all = 0;
  MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, s->comm);
  double rate = 0;
  if (all) {
    if (src) memset(src, 1, n);
    MPI_Barrier(s->comm);
    double t0 = ls_now();
    int rc = LS_OK;
    for (int k = 0; k < 2 && rc == LS_OK; k++) {
      rc = be->bcast->start(be, 0, dst, src, n);
      if (rc == LS_OK) rc = be->bcast->wait(be, 0);
    }
    if (rc == LS_OK && be->iface->sync) rc = be->iface->sync(be);
    double dt = ls_now() - t0, worst = 0;
    MPI_Allreduce(&dt, &worst, 1, MPI_DOUBLE, MPI_MAX, s->comm);
    if (ls_agree(rc, s->comm) == LS_OK && worst > 0) rate = 2.0 * (double)n / worst;
  }
  if (src) be->iface->host_free(be, src);
  if (dst) {
    if (dev) be->iface->free(be, dst);
    else be->iface->host_free(be, dst);
  }
  return rate;
}

/* GEMM and attention FLOPs of the largest rank's shard per layer, at `ranks` ranks */
static double rank_flops(const sweep_t *s, int ranks) {
  const ls_dataset_t *d = &s->data;
  const double per_tok = ls_family_gemm_flops_per_token(s->cfg);
  const double H = s->cfg->n_heads * (double)s->cfg->head_dim;
  if (ranks == s->size) { /* the plan's shards */
    double worst = 0;
    for (int r = 0; r < s->size; r++) {
      double f = 0;
      for (int64_t p = s->sh.bounds[r]; p < s->sh.bounds[r + 1]; p++) {
        const double len = (double)ls_dataset_len(d, p);
        f += per_tok * len + 2.0 * len * len * H; /* QK^T and AV, causal: half of 4 L^2 H */
      }
      worst = fmax(worst, f);
    }
    return worst;
  }
  double f = 0; /* balanced shards of another rank count */
  for (int64_t p = 0; p < d->n; p++) {
    const double len = (double)ls_dataset_len(d, p);
    f += per_tok * len + 2.0 * len * len * H;
  }
  return f / ranks;
}

/* the phases' totals over the computed layers at `ranks` ranks (p->* rates measured) */
static void model_times(const sweep_t *s, ls_predict_t *p, int ranks) {
  const double fl = rank_flops(s, ranks);
  double out_layer = 0;
  for (int h = 0; h < LS_HOOK_COUNT && !s->o->no_store; h++)
    if (((s->sel.hooks >> h) & 1) && ls_hook_layered(h))
      out_layer += (double)s->sh.n_out_rows * ls_sw_store_width(s, h) *
                   (h == LS_HOOK_ROUTER_LOGITS ? 4.0 : (double)ls_dtype_size(s->out.out_dt));
  p->read_s = p->bcast_s = p->load_s = p->forward_s = p->write_s = p->wall_s = p->spill_s = 0;
  /* a spilled stream: read and written once per layer, behind the compute (spill_bytes at
   * this run's ranks; another rank count splits the same stream) */
  const double sp = p->spill_rate > 0 ? p->spill_bytes * s->size / ranks / p->spill_rate : 0;
  for (int L = s->start; L < s->sel.n_run; L++) {
    const double b = (double)s->model.layer_bytes[L];
    const double rd = p->disk_rate > 0 ? b / p->disk_rate : 0;
    const double bc = ranks > 1 && p->bcast_rate > 0 ? b / p->bcast_rate : 0;
    const double ld = p->conv_rate > 0 ? b / p->conv_rate : 0;
    const double fw = p->gemm_rate > 0 ? fl / p->gemm_rate : 0;
    const double wr = s->sel.sel_index[L] >= 0 && p->write_rate > 0 ? out_layer / ranks / p->write_rate : 0;
    p->read_s += rd;
    p->bcast_s += bc;
    p->load_s += ld;
    p->forward_s += fw;
    p->write_s += wr;
    p->spill_s += sp;
    /* read and broadcast run ahead of compute; overlapped writes and the spill behind it */
    const double compute = ld + fw + (s->out.overlap || s->o->overlap_writes ? 0 : wr);
    p->wall_s += fmax(fmax(fmax(rd, bc), fmax(compute, s->o->overlap_writes ? wr : 0)), sp);
  }
  const double terms[5] = {p->read_s, p->bcast_s, p->load_s + p->forward_s, p->write_s, p->spill_s};
  const char *names[5] = {"the checkpoint read", "the weight broadcast", "the forward",
                          "the output writes", "the spilled residual stream's disk"};
  int k = 2;
  for (int i = 0; i < 5; i++)
    if (terms[i] > terms[k]) k = i;
  p->bottleneck = names[k];
}

void ls_sw_predict_refresh(sweep_t *s) {
  if (s->pred.valid) model_times(s, &s->pred, s->size);
}

int ls_sw_predict(sweep_t *s) {
  ls_predict_t *p = &s->pred;
  double t0 = ls_now();
  const ls_config_t *c = s->cfg;
  const int n_in = c->hidden;
  int n_out = c->intermediate > c->hidden ? c->intermediate : c->hidden;
  if (n_out > 4096) n_out = 4096;
  int T = s->sh.T_max < 1024 ? s->sh.T_max : 1024;
  if (T < 1) T = 1;
  ls_dtype_t wdt = LS_DT_BF16;
  for (int i = 0; i < s->model.n_slots; i++) {
    const ls_wslot_t *w = ls_model_slot(&s->model, 0, i);
    if (w->spec.present && w->spec.kind == LS_WK_MATRIX && ls_dtype_is_float(w->dtype) &&
        !ls_dtype_is_fp8(w->dtype)) {
      wdt = w->dtype;
      break;
    }
  }
  int rc = probe_backend(s->be, wdt, T, n_in, n_out, &p->gemm_rate, &p->conv_rate);
  if (ls_agree(rc, s->comm)) return LS_ERR;
  /* the slowest rank sets the pace */
  MPI_Allreduce(MPI_IN_PLACE, &p->gemm_rate, 1, MPI_DOUBLE, MPI_MIN, s->comm);
  MPI_Allreduce(MPI_IN_PLACE, &p->conv_rate, 1, MPI_DOUBLE, MPI_MIN, s->comm);
  double io[2] = {0, 0};
  if (s->rank == 0) {
    io[0] = probe_read(s);
    io[1] = s->o->plan_only ? 0 : probe_write(s->o->out_path);
  }
  MPI_Bcast(io, 2, MPI_DOUBLE, 0, s->comm);
  p->disk_rate = io[0];
  p->write_rate = io[1];
  p->bcast_rate = probe_bcast(s);
  /* the spill's disk, probed by each spilled rank in a run (not by `plan`, which writes
   * nothing); the slowest sets the pace */
  double spill[2] = {1e300, s->buf.spilled ? 2.0 * (double)s->sh.n_store * c->hidden * 4 : 0};
  if (s->buf.spilled && !s->o->plan_only) {
    const double r = probe_spill(s->buf.spill_dir);
    if (r > 0) spill[0] = r;
  }
  double spill_min = 0;
  MPI_Allreduce(spill, &spill_min, 1, MPI_DOUBLE, MPI_MIN, s->comm);
  MPI_Allreduce(MPI_IN_PLACE, spill + 1, 1, MPI_DOUBLE, MPI_MAX, s->comm);
  p->spill_rate = spill_min < 1e300 ? spill_min : 0;
  p->spill_bytes = spill[1];
  model_times(s, p, s->size);
  p->probe_s = ls_now() - t0;
  p->valid = 1;
  if (s->rank == 0) {
    ls_info("plan: measured in %.2f s: GEMM %.1f GFLOP/s (%d x %d -> %d), weight conversion "
            "%.2f GB/s, checkpoint read %.2f GB/s", p->probe_s, p->gemm_rate / 1e9, T, n_in,
            n_out, p->conv_rate / 1e9, p->disk_rate / 1e9);
    if (s->size > 1) ls_info("plan:   broadcast %.2f GB/s", p->bcast_rate / 1e9);
    if (p->write_rate > 0) ls_info("plan:   output write %.2f GB/s", p->write_rate / 1e9);
    if (p->spill_bytes > 0 && p->spill_rate > 0)
      ls_info("plan:   --spill-dir %.2f GB/s: %.3f GiB per layer read and written",
              p->spill_rate / 1e9, p->spill_bytes / 1073741824.0);
    else if (p->spill_bytes > 0)
      ls_info("plan:   --spill-dir not measured (plan writes nothing; a run measures it): %.3f "
              "GiB per layer read and written, to hide behind the forward, not counted below",
              p->spill_bytes / 1073741824.0);
    const int n = s->sel.n_run - s->start;
    char spill_part[64] = "";
    if (p->spill_s > 0) snprintf(spill_part, sizeof spill_part, ", spill %.2f s", p->spill_s);
    ls_info("plan: predicted for %d layers: read %.2f s, broadcast %.2f s, convert %.2f s, "
            "forward %.2f s, write %.2f s%s; layer loop %.1f s; bottleneck: %s", n, p->read_s,
            p->bcast_s, p->load_s, p->forward_s, p->write_s, spill_part, p->wall_s, p->bottleneck);
    if (s->o->assume_ranks > 0 && s->o->assume_ranks != s->size) {
      ls_predict_t q = *p;
      if (q.bcast_rate <= 0 && s->o->assume_ranks > 1) q.bcast_rate = 5e9;
      model_times(s, &q, s->o->assume_ranks);
      ls_info("plan: at --assume-ranks %d: forward %.2f s, broadcast %.2f s%s; layer loop %.1f s; "
              "bottleneck: %s", s->o->assume_ranks, q.forward_s, q.bcast_s,
              p->bcast_rate <= 0 && s->o->assume_ranks > 1
                  ? " (broadcast not measured at 1 rank: 5 GB/s assumed)" : "",
              q.wall_s, q.bottleneck);
    }
  }
  return LS_OK;
}

void ls_sw_print_prediction(const sweep_t *s, double read_s, double bcast_s, double load_s,
                            double forward_s, double write_s) {
  const ls_predict_t *p = &s->pred;
  if (!p->valid || s->rank != 0) return;
  const double wall = s->prof.t_loop;
  char spill[96] = ""; /* the I/O thread's busy seconds of the slowest spilled rank */
  if (p->spill_s > 0)
    snprintf(spill, sizeof spill, "; spill I/O %.2f vs %.2f", p->spill_s, s->prof.spill[2]);
  fprintf(stderr, "  predicted vs measured: layer loop %.2f vs %.2f s (%.2fx); read %.2f vs %.2f; "
          "broadcast %.2f vs %.2f (wait); convert %.2f vs %.2f; forward %.2f vs %.2f; write "
          "%.2f vs %.2f%s\n", p->wall_s, wall, p->wall_s > 0 ? wall / p->wall_s : 0, p->read_s,
          read_s, p->bcast_s, bcast_s, p->load_s, load_s, p->forward_s, forward_s, p->write_s,
          write_s, spill);
}
