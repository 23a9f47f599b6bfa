/* report.c: what a sweep tells its user: progress per layer (a bar on a terminal,
 * plain lines otherwise) and the end-of-run profile summary (and its JSON form). */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "http.h"
#include "sweep_internal.h"

/* ---- progress ------------------------------------------------------------------------------------- */
void ls_sw_progress(sweep_t *s, int layer, double elapsed) {
  if (s->rank != 0 || s->o->progress == 0) return;
  int tty = isatty(STDERR_FILENO) && s->o->progress < 0;
  double frac = (double)(layer + 1 - s->start) / (s->sel.n_run - s->start);
  double eta = elapsed / frac - elapsed;
  /* prompt tokens through the whole model per second, at this pace */
  double tps = (double)s->data.n_tokens * (layer + 1 - s->start) / s->sel.n_run /
               (elapsed > 0 ? elapsed : 1e-9);
  if (tty) {
    char bar[41];
    int fill = (int)(frac * 40);
    for (int i = 0; i < 40; i++) bar[i] = i < fill ? '#' : '.';
    bar[40] = '\0';
    fprintf(stderr, "\r[%s] layer %d/%d  %.0f tok/s  elapsed %.1fs  eta %.1fs ", bar, layer + 1,
            s->sel.n_run, tps, elapsed, eta);
    if (layer + 1 == s->sel.n_run) fputc('\n', stderr);
  } else {
    fprintf(stderr, "layer %d/%d done: load %.3fs forward %.3fs hooks %.3fs write %.3fs; "
            "%.0f tok/s; elapsed %.1fs, eta %.1fs\n", layer + 1, s->sel.n_run, s->prof.t_load[layer],
            s->prof.t_forward[layer], s->prof.t_hooks[layer], s->prof.t_write[layer], tps, elapsed, eta);
  }
  fflush(stderr);
}

static const char *phase_names[8] = {"read", "read_wait", "bcast_wait", "load", "forward",
                                     "hooks", "write", "embed"};

static int write_summary_json(const sweep_t *s, const double *mn, const double *mx,
                              double flops) {
  cJSON *j = cJSON_CreateObject();
  cJSON_AddStringToObject(j, "layersweep_version", LS_VERSION);
  cJSON_AddStringToObject(j, "backend", s->be->iface->name);
  cJSON_AddStringToObject(j, "device", s->be->desc);
  cJSON_AddStringToObject(j, "compute_dtype", s->be->compute_dtype);
  cJSON_AddNumberToObject(j, "weights_preload_s", s->prof.t_preload);
  cJSON_AddNumberToObject(j, "ranks", s->size);
  cJSON_AddNumberToObject(j, "threads_per_rank", s->threads);
  cJSON_AddNumberToObject(j, "prompts", (double)s->data.n);
  cJSON_AddNumberToObject(j, "tokens", (double)s->data.n_tokens);
  cJSON_AddNumberToObject(j, "layers_computed", s->sel.n_run);
  cJSON_AddNumberToObject(j, "row_align", s->sh.align);
  cJSON_AddNumberToObject(j, "total_s", s->prof.t_total);
  cJSON_AddNumberToObject(j, "tokens_per_s", (double)s->data.n_tokens / s->prof.t_total);
  cJSON_AddNumberToObject(j, "gemm_gflop", flops / 1e9);
  cJSON_AddNumberToObject(j, "gemm_gflops_overall", flops / s->prof.t_total / 1e9);
  cJSON_AddNumberToObject(j, "weight_bytes_read", (double)(s->model.st.bytes_read - s->prof.embed_bytes));
  cJSON_AddNumberToObject(j, "embedding_bytes_read", (double)s->prof.embed_bytes);
  ls_http_stats_t hs;
  ls_http_get_stats(&hs);
  cJSON_AddStringToObject(j, "model_source", s->model.source);
  cJSON_AddNumberToObject(j, "network_bytes", (double)hs.net_bytes);
  cJSON_AddNumberToObject(j, "network_s", hs.net_s);
  cJSON_AddNumberToObject(j, "network_bytes_per_s", hs.net_s > 0 ? (double)hs.net_bytes / hs.net_s : 0);
  cJSON_AddNumberToObject(j, "http_requests", (double)hs.requests);
  cJSON_AddNumberToObject(j, "http_retries", (double)hs.retries);
  cJSON_AddNumberToObject(j, "http_cache_bytes", (double)hs.cache_bytes);
  cJSON_AddNumberToObject(j, "spill_ranks", s->prof.spill[4]);
  cJSON_AddNumberToObject(j, "spill_bytes_read", s->prof.spill[0]);
  cJSON_AddNumberToObject(j, "spill_bytes_written", s->prof.spill[1]);
  cJSON_AddNumberToObject(j, "spill_io_s", s->prof.spill[2]);
  cJSON_AddNumberToObject(j, "spill_wait_s", s->prof.spill[3]);
  cJSON_AddNumberToObject(j, "checkpoints", s->prof.n_ckpt);
  cJSON_AddNumberToObject(j, "checkpoint_s", s->prof.t_ckpt);
  if (s->pred.valid) {
    cJSON *pr = cJSON_AddObjectToObject(j, "predicted_s");
    cJSON_AddNumberToObject(pr, "layer_loop", s->pred.wall_s);
    cJSON_AddNumberToObject(j, "layer_loop_s", s->prof.t_loop);
    cJSON_AddNumberToObject(pr, "read", s->pred.read_s);
    cJSON_AddNumberToObject(pr, "bcast", s->pred.bcast_s);
    cJSON_AddNumberToObject(pr, "convert", s->pred.load_s);
    cJSON_AddNumberToObject(pr, "forward", s->pred.forward_s);
    cJSON_AddNumberToObject(pr, "write", s->pred.write_s);
    cJSON_AddStringToObject(j, "predicted_bottleneck", s->pred.bottleneck);
  }
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

int ls_sw_print_summary(sweep_t *s, const ls_wpipe_t *wp) {
  const int n = s->sel.n_run;
  double sums[8] = {0}, mx[8], mn[8];
  for (int L = 0; L < n; L++) {
    sums[0] += wp->read_s[L];
    sums[1] += wp->read_wait_s[L];
    sums[2] += wp->bcast_wait_s[L];
    sums[3] += s->prof.t_load[L];
    sums[4] += s->prof.t_forward[L];
    sums[5] += s->prof.t_hooks[L];
    sums[6] += s->prof.t_write[L];
  }
  sums[7] = s->prof.t_embed;
  double sp[5] = {0}; /* bytes read, written, I/O s, wait s (max); ranks spilled (sum) */
  if (s->buf.spill) {
    ls_spill_stats_t st;
    ls_spill_stats(s->buf.spill, &st);
    sp[0] = (double)st.bytes_read;
    sp[1] = (double)st.bytes_written;
    sp[2] = st.io_s;
    sp[3] = st.wait_s;
    sp[4] = 1;
  }
  MPI_Reduce(sp, s->prof.spill, 4, MPI_DOUBLE, MPI_MAX, 0, s->comm);
  MPI_Reduce(sp + 4, s->prof.spill + 4, 1, MPI_DOUBLE, MPI_SUM, 0, s->comm);
  MPI_Reduce(sums, mx, 8, MPI_DOUBLE, MPI_MAX, 0, s->comm);
  MPI_Reduce(sums, mn, 8, MPI_DOUBLE, MPI_MIN, 0, s->comm);
  if (s->rank != 0) return ls_agree(LS_OK, s->comm);
  /* model GEMM flops on real tokens (alignment padding not counted) */
  double flops = ls_family_gemm_flops_per_token(s->cfg) * (double)s->data.n_tokens * n;
  fprintf(stderr, "profile (seconds summed over %d layers; min..max across %d rank%s):\n", n,
          s->size, s->size > 1 ? "s" : "");
  const char *names[8] = {"read (rank 0 reader)", "read wait", "bcast wait", "load (bcast+convert)",
                          "forward", "hooks/pooling", "write", "embed"};
  for (int i = 0; i < 8; i++)
    fprintf(stderr, "  %-22s %10.3f .. %-10.3f\n", names[i], mn[i], mx[i]);
  fprintf(stderr, "  checkpoints: %d taken, %.3f s\n", s->prof.n_ckpt, s->prof.t_ckpt);
  const double *sp_ = s->prof.spill;
  if (sp_[4] > 0) /* the disk rate the spill met, and what the layer loop lost waiting */
    fprintf(stderr, "  spilled residual stream (%d rank%s): %.3f GiB read, %.3f GiB written (most "
            "of a rank); I/O %.3f s busy (%.2f GB/s); the layer loop waited %.3f s for it\n",
            (int)sp_[4], sp_[4] > 1 ? "s" : "", sp_[0] / 1073741824.0, sp_[1] / 1073741824.0,
            sp_[2], sp_[2] > 0 ? (sp_[0] + sp_[1]) / sp_[2] / 1e9 : 0.0, sp_[3]);
  fprintf(stderr, "  weight bytes read: %.3f GiB (+ %.3f MiB embedding rows) by rank 0\n",
          (double)(s->model.st.bytes_read - s->prof.embed_bytes) / 1073741824.0,
          (double)s->prof.embed_bytes / 1048576.0);
  if (strcmp(s->model.source, "local") != 0) {
    ls_http_stats_t hs;
    ls_http_get_stats(&hs);
    /* rate = body bytes / seconds with at least one transfer running */
    fprintf(stderr, "  network: %.3f MiB in %llu requests (%llu retries), %.3f s transferring: "
            "%.1f MiB/s; %.3f MiB from the range cache\n", (double)hs.net_bytes / 1048576.0,
            (unsigned long long)hs.requests, (unsigned long long)hs.retries, hs.net_s,
            hs.net_s > 0 ? (double)hs.net_bytes / 1048576.0 / hs.net_s : 0.0,
            (double)hs.cache_bytes / 1048576.0);
  }
  fprintf(stderr, "  %lld prompts, %lld tokens through %d layers in %.2f s: %.0f tokens/s; model "
          "GEMM %.1f GFLOP/s overall, %.1f GFLOP/s in forward\n", (long long)s->data.n,
          (long long)s->data.n_tokens, n, s->prof.t_total, (double)s->data.n_tokens / s->prof.t_total,
          flops / s->prof.t_total / 1e9, flops / (mx[4] > 0 ? mx[4] : 1e-9) / 1e9);
  /* this run's layers: read (rank 0), broadcast wait, conversion (load less the waits),
   * forward, write (the slowest rank's) */
  ls_sw_print_prediction(s, mx[0], mx[2], fmax(mx[3] - mx[1] - mx[2], 0), mx[4], mx[6]);
  int rc = s->o->summary_json ? write_summary_json(s, mn, mx, flops) : LS_OK;
  return ls_agree(rc, s->comm);
}
