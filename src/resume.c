/* resume.c: checkpoints at layer boundaries, SIGTERM / SIGINT handling, and --resume
 * (fingerprints of the model, data and options; reopening the partial output). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sweep_internal.h"

/* ---- checkpoints and signals ----------------------------------------------------------------------- */
static volatile sig_atomic_t g_signal = 0;
static void on_signal(int sig) { g_signal = sig; }

void ls_sw_install_signals(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
}

/* The residual stream in host memory: s->buf.x itself, or (a device backend holding
 * it) the page-locked host copy kept for checkpoints (allocated the first time, reused),
 * filled from the device when `fill`. NULL after a message. */
static float *residual_host(sweep_t *s, int fill) {
  if (s->be->host_visible || s->buf.x_on_host) return s->buf.x;
  const size_t bytes = sizeof(float) * (size_t)max64(s->sh.n_store, 1) * (size_t)s->cfg->hidden;
  if (!s->buf.x_ckpt) s->buf.x_ckpt = s->be->iface->host_alloc(s->be, bytes, "checkpoint staging");
  float *h = s->buf.x_ckpt;
  if (h && fill &&
      (s->be->iface->to_host(s->be, h, s->buf.x, bytes) || (s->be->iface->sync && s->be->iface->sync(s->be))))
    return NULL;
  return h;
}

static int spill_get(void *ctx, int64_t row0, int64_t n, float *dst) {
  return ls_spill_get(ctx, row0, n, dst);
}
static int spill_put(void *ctx, int64_t row0, int64_t n, const float *src) {
  return ls_spill_put(ctx, row0, n, src);
}

/* The residual stream as a checkpoint moves it: through the spill file in pieces, or in
 * host memory (residual_host). LS_ERR after a message. */
static int residual_rows(sweep_t *s, int fill, ls_ckpt_rows_t *r) {
  memset(r, 0, sizeof *r);
  r->row_floats = (size_t)s->cfg->hidden;
  if (s->buf.spill) {
    r->get = spill_get;
    r->put = spill_put;
    r->ctx = s->buf.spill;
    return LS_OK;
  }
  r->x = residual_host(s, fill);
  return r->x ? LS_OK : LS_ERR;
}

static int save_checkpoint(sweep_t *s, int next) {
  double t0 = ls_now();
  /* a resumed run starts at `next`: every layer before it must be on disk and marked */
  if (ls_sw_drain_writes(s)) return LS_ERR;
  COLLECTIVE_STEP(s, ls_sw_write_router_stats(s, next));
  s->ck.meta.layer_next = next;
  ls_ckpt_rows_t rows;
  int rc = ls_agree(residual_rows(s, 1, &rows), s->comm);
  if (rc == LS_OK) rc = ls_ckpt_save(s->ck.dir, s->comm, &s->ck.meta, &rows, s->sh.n_store);
  double dt = ls_now() - t0;
  MPI_Allreduce(&dt, &s->ck.cost_s, 1, MPI_DOUBLE, MPI_MAX, s->comm);
  s->prof.n_ckpt++;
  s->prof.t_ckpt += s->ck.cost_s;
  if (rc == LS_OK) {
    s->ck.last = next;
    s->ck.since_s = 0;
  }
  return rc;
}

/* After layer next-1: checkpoint when due (every N layers, or, by default, when a
 * minute of work has passed since the last one and a checkpoint costs < 2% of that
 * work), and stop cleanly on SIGTERM / SIGINT (always with a checkpoint). The
 * decision is collective: every rank takes the same branch. Returns 0 to go on,
 * LS_STOPPED or LS_ERR to stop. */
int ls_sw_maybe_checkpoint(sweep_t *s, int next, double layer_s) {
  double in[2] = {layer_s, (double)g_signal}, out[2];
  ls_wait_others("agreeing on a checkpoint");
  MPI_Allreduce(in, out, 2, MPI_DOUBLE, MPI_MAX, s->comm);
  ls_wait_others(NULL);
  s->ck.since_s += out[0];
  const int signalled = out[1] != 0;
  int every = s->o->checkpoint_every;
  /* auto: at most one checkpoint per minute of work, and under 2% of the time */
  int due = every > 0 ? next - s->ck.last >= every
                      : every == 0 && s->ck.since_s >= 60.0 &&
                            s->ck.since_s * 0.02 >= s->ck.cost_s;
  if (next >= s->sel.n_run && !signalled) due = 0; /* the end is near: nothing to save */
  if ((due || (signalled && every >= 0)) && next != s->ck.last)
    if (save_checkpoint(s, next)) return LS_ERR;
  if (!signalled) return 0;
  if (s->rank == 0)
    ls_error("stopped by signal %d after layer %d of %d; %s is partial%s", (int)out[1], next - 1,
             s->sel.n_run, s->o->out_path,
             every >= 0 ? "; rerun the same command with --resume to continue" : "");
  return LS_STOPPED;
}

/* ---- resume ------------------------------------------------------------------------------------------ */
/* --checkpoint-dir, or OUT.ckpt beside the output */
void ls_sw_checkpoint_dir(sweep_t *s) {
  if (s->o->checkpoint_dir && s->o->checkpoint_dir[0])
    snprintf(s->ck.dir, sizeof s->ck.dir, "%s", s->o->checkpoint_dir);
  else
    snprintf(s->ck.dir, sizeof s->ck.dir, "%s.ckpt", s->o->out_path);
}

void ls_sw_fingerprints(sweep_t *s) {
  const ls_dataset_t *d = &s->data;
  ls_sw_checkpoint_dir(s);
  ls_ckpt_meta_t *m = &s->ck.meta;
  m->ranks = s->size;
  m->row_align = s->sh.align;
  m->model_fp = ls_model_fingerprint(&s->model, s->comm);
  uint64_t h = LS_FNV_INIT;
  h = ls_fnv1a(h, d->tokens, sizeof(int32_t) * (size_t)d->n_tokens);
  h = ls_fnv1a(h, d->offsets, sizeof(int64_t) * (size_t)(d->n + 1));
  if (d->has_label) h = ls_fnv1a(h, d->labels, sizeof(int64_t) * (size_t)d->n);
  if (d->has_id) h = ls_fnv1a(h, d->ids, (size_t)d->n * LS_DATASET_MAX_ID);
  m->data_fp = h;
  /* the backend and its dtype too: a residual stream computed in bf16 on a GPU is not
   * continued in float32 on the CPU (or the reverse) */
  int opts[9] = {(int)s->sel.hooks, (int)s->sel.pool, s->sel.n_sel, s->o->allow_long_prompts, s->sel.n_run,
                 (int)s->be->wtype, (int)s->be->caps, (int)s->out.out_dt, s->o->precise_gemm};
  h = ls_fnv1a(LS_FNV_INIT, opts, sizeof opts);
  h = ls_fnv1a(h, s->be->iface->name, strlen(s->be->iface->name));
  h = ls_fnv1a(h, s->sel.layers, sizeof(int) * (size_t)s->sel.n_sel);
  if (s->steer.n > 0) { /* the edits change the residual stream */
    h = ls_fnv1a(h, s->steer.canon, strlen(s->steer.canon));
    for (int k = 0; k < s->steer.n; k++)
      h = ls_fnv1a(h, s->steer.e[k].v, sizeof(float) * (size_t)s->cfg->hidden);
  }
  h = ls_fnv1a(h, s->red.spec.canon, strlen(s->red.spec.canon));
  const int store[2] = {s->o->no_store, s->proj.K};
  h = ls_fnv1a(h, store, sizeof store);
  if (s->proj.K > 0) {
    h = ls_fnv1a(h, s->proj.canon, strlen(s->proj.canon));
    h = ls_fnv1a(h, &s->proj.fp, sizeof s->proj.fp);
  }
  m->options_fp = h;
  snprintf(m->model_desc, sizeof m->model_desc, "%s", s->o->model_dir);
  /* until one has been timed, assume a checkpoint writes 0.5 GB/s */
  double bytes = (double)s->sh.n_store * s->cfg->hidden * 4, mx = 0;
  MPI_Allreduce(&bytes, &mx, 1, MPI_DOUBLE, MPI_MAX, s->comm);
  s->ck.cost_s = mx / 0.5e9;
  const char *fl = getenv("LS_FAULT_WRITE_LAYER");
  s->out.fault_layer = fl && *fl ? atoi(fl) : -1;
}


/* A checkpoint of another rank count: its files are consecutive slices of the dataset's
 * stored rows (the layout depends on the row alignment and the backend only, both checked
 * equal), so this rank reads its own slice from the saved ranks' files that hold it. */
static int load_resharded(sweep_t *s, const ls_ckpt_meta_t *saved, const ls_ckpt_rows_t *xh) {
  if (saved->ranks < 1 || saved->ranks > (1 << 20)) {
    if (s->rank == 0) ls_error("%s: the checkpoint's rank count %d is not valid", s->ck.dir, saved->ranks);
    return LS_ERR;
  }
  int64_t *old_rows = ls_malloc(sizeof(int64_t) * (size_t)(saved->ranks + 1), "checkpoint layout");
  int64_t *now = ls_malloc(sizeof(int64_t) * (size_t)(s->size + 1), "checkpoint layout");
  int rc = old_rows && now ? LS_OK : LS_ERR;
  if (rc == LS_OK) rc = ls_shard_row_starts(&s->data, saved->ranks, s->sh.align, s->sh.compact, old_rows);
  if (rc == LS_OK) rc = ls_shard_row_starts(&s->data, s->size, s->sh.align, s->sh.compact, now);
  if (ls_agree(rc, s->comm)) {
    free(old_rows);
    free(now);
    return LS_ERR;
  }
  ls_ckpt_meta_t was = s->ck.meta; /* the saved run's fingerprint: its rank count */
  was.ranks = saved->ranks;
  rc = ls_ckpt_load_rows_elastic(s->ck.dir, s->comm, saved, ls_ckpt_fp(&was), old_rows,
                                 now[s->rank], s->sh.n_store, xh);
  if (rc == LS_OK && s->rank == 0)
    ls_info("the checkpoint was taken with %d ranks: the residual stream is re-sharded over %d",
            saved->ranks, s->size);
  free(old_rows);
  free(now);
  return rc;
}

/* --resume: 1 resumed from a checkpoint (output open, residual loaded, s->start set),
 * 0 start from the beginning, 2 the file is already complete, -1 error. */
int ls_sw_try_resume(sweep_t *s) {
  int exists = s->rank == 0 ? access(s->o->out_path, F_OK) == 0 : 0;
  MPI_Bcast(&exists, 1, MPI_INT, 0, s->comm);
  ls_ckpt_meta_t saved;
  int found = ls_ckpt_load_meta(s->ck.dir, s->comm, &saved);
  if (found < 0) return -1;
  if (exists) {
    if (ls_h5out_open(&s->out.h5, s->o->out_path, s->comm)) return -1;
    s->out.open = 1;
    char status[32];
    ls_h5out_read_attr_str(&s->out.h5, "/", "status", status, sizeof status);
    if (strcmp(status, "complete") == 0) {
      ls_info("%s is already complete; nothing to resume", s->o->out_path);
      ls_h5out_close(&s->out.h5);
      s->out.open = 0;
      return 2;
    }
    if (found == 1 && ls_ckpt_check(&saved, &s->ck.meta, s->ck.dir, s->comm)) return -1;
    /* another rank count (elastic): the profile is re-made for this run's ranks */
    if (found == 1 && saved.ranks != s->size) COLLECTIVE_STEP(s, ls_sw_reshape_profile(s));
    if (found == 1 && ls_agree(ls_sw_check_output(s), s->comm)) {
      if (s->rank == 0)
        ls_error("%s does not match this run's hooks, layers, pooling or data; rerun with "
                 "--force to start over", s->o->out_path);
      return -1;
    }
  }
  if (found == 1 && exists) {
    s->ck.meta.layer_next = saved.layer_next;
    const size_t n = (size_t)s->sh.n_store * (size_t)s->cfg->hidden;
    ls_ckpt_rows_t xh;
    if (ls_agree(residual_rows(s, 0, &xh), s->comm)) return -1;
    if (saved.ranks == s->size) {
      if (ls_ckpt_load_rows(s->ck.dir, s->comm, saved.layer_next, ls_ckpt_fp(&s->ck.meta), &xh,
                            s->sh.n_store))
        return -1;
    } else if (load_resharded(s, &saved, &xh)) {
      return -1;
    }
    int rc = !xh.x || xh.x == s->buf.x ? LS_OK
                                        : s->be->iface->to_device(s->be, s->buf.x, xh.x, sizeof(float) * n);
    if (rc == LS_OK && s->be->iface->sync) rc = s->be->iface->sync(s->be);
    if (ls_agree(rc, s->comm)) return -1;
    s->start = saved.layer_next;
    for (int i = 0; i < s->sel.n_sel; i++)
      if (s->sel.layers[i] < s->start) s->out.done_marks[i] = s->sel.layers[i];
    ls_info("resuming %s from the checkpoint before layer %d (%s)", s->o->out_path, s->start,
            s->ck.dir);
    return 1;
  }
  if (s->out.open) {
    ls_h5out_close(&s->out.h5);
    s->out.open = 0;
  }
  ls_info("--resume: no usable checkpoint in %s; starting from the beginning", s->ck.dir);
  return 0;
}
