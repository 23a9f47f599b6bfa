/* weights.c: reader thread + broadcast pipeline for layer weights (see weights.h). */
#include "weights.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ls_common.h"

/* ---- reader thread (rank 0) --------------------------------------------------------- */
static void *reader_main(void *arg) {
  ls_wpipe_t *p = arg;
  ls_error_defer(1); /* this thread's messages are kept, and reported by the main thread */
  pthread_mutex_lock(&p->mu);
  for (;;) {
    int b = -1;
    while (!p->stop && b < 0) {
      for (int i = 0; i < 2; i++)
        if (p->want[i] >= 0 && p->have[i] != p->want[i]) b = i;
      if (b < 0) pthread_cond_wait(&p->cv, &p->mu);
    }
    if (p->stop) break;
    int layer = p->want[b];
    pthread_mutex_unlock(&p->mu);
    double t0 = ls_now();
    int rc = ls_model_read_layer(p->m, layer, p->raw[b]);
    double dt = ls_now() - t0;
    char msg[sizeof p->read_msg];
    if (rc && !ls_error_take(msg, sizeof msg))
      snprintf(msg, sizeof msg, "reading the weights of layer %d failed", layer);
    pthread_mutex_lock(&p->mu);
    p->read_s[layer] = dt;
    if (rc && !p->read_err) {
      p->read_err = 1;
      memcpy(p->read_msg, msg, sizeof msg);
    }
    p->have[b] = layer;
    pthread_cond_broadcast(&p->cv);
  }
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

static void request_read(ls_wpipe_t *p, int layer) {
  if (p->rank != 0 || layer >= p->n_run) return;
  pthread_mutex_lock(&p->mu);
  p->want[layer % 2] = layer;
  pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->mu);
}

/* Rank 0: wait until layer is read; LS_ERR (reported here) if the reader failed. */
static int wait_read(ls_wpipe_t *p, int layer) {
  double t0 = ls_now();
  pthread_mutex_lock(&p->mu);
  while (p->have[layer % 2] != layer && !p->read_err) pthread_cond_wait(&p->cv, &p->mu);
  int err = p->read_err;
  char msg[sizeof p->read_msg];
  memcpy(msg, p->read_msg, sizeof msg);
  pthread_mutex_unlock(&p->mu);
  p->read_wait_s[layer] += ls_now() - t0;
  if (err) ls_error("%s", msg);
  return err ? LS_ERR : LS_OK;
}

/* ---- broadcasts ------------------------------------------------------------------------- */
/* Start broadcasting layer. Rank 0 first tells everyone whether the read worked (a
 * bad tensor stops every rank at the same layer instead of hanging or aborting). */
static void post_bcast(ls_wpipe_t *p, int layer) {
  if (layer >= p->n_run || p->failed) return;
  int b = layer % 2;
  if (p->posted[b] == layer) return;
  int ok = p->rank == 0 ? wait_read(p, layer) == LS_OK : 1;
  ls_wait_others("the weights' broadcast");
  MPI_Bcast(&ok, 1, MPI_INT, 0, p->comm);
  ls_wait_others(NULL);
  if (!ok) {
    p->failed = 1;
    return;
  }
  /* a failure is sticky in the backend and stops every rank at the layer's sync */
  p->be->bcast->start(p->be, b, p->recv[b], p->rank == 0 ? p->raw[b] : NULL,
                      p->m->layer_bytes[layer]);
  p->posted[b] = layer;
}

int ls_wpipe_init(ls_wpipe_t *p, ls_model_t *m, ls_backend_t *be, int first, int n_run,
                  MPI_Comm comm) {
  memset(p, 0, sizeof *p);
  p->m = m;
  p->be = be;
  p->on_device = (be->caps & LS_BE_DEVICE_BCAST) != 0;
  p->first = first;
  p->n_run = n_run;
  p->comm = comm;
  MPI_Comm_rank(comm, &p->rank);
  const int nl = m->cfg.n_layers;
  p->read_s = ls_calloc((size_t)nl, sizeof(double), "profile");
  p->read_wait_s = ls_calloc((size_t)nl, sizeof(double), "profile");
  p->bcast_wait_s = ls_calloc((size_t)nl, sizeof(double), "profile");
  for (int b = 0; b < 2; b++) p->want[b] = p->have[b] = p->posted[b] = -1;
  if (!p->read_s || !p->read_wait_s || !p->bcast_wait_s) return LS_ERR;
  for (int b = 0; b < 2; b++) {
    if (!p->on_device || p->rank == 0) {
      p->raw[b] = be->iface->host_alloc(be, m->max_layer_bytes, "layer staging buffer");
      if (!p->raw[b]) return LS_ERR;
      /* touched now, not by the first reads (page faults on a fresh layer-sized buffer
       * slowed the reads of layers 0 and 1 to a third, tests/bench/bench_read.sh) */
      memset(p->raw[b], 0, m->max_layer_bytes);
    }
    p->recv[b] = p->on_device ? be->iface->alloc(be, m->max_layer_bytes, "layer receive buffer")
                              : p->raw[b];
    if (!p->recv[b]) return LS_ERR;
  }
  if (p->rank == 0) {
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    if (pthread_create(&p->thread, NULL, reader_main, p) != 0) {
      ls_error("cannot start the weight reader thread");
      return LS_ERR;
    }
    p->thread_started = 1;
    request_read(p, first);
    request_read(p, first + 1);
  }
  return LS_OK;
}

const void *ls_wpipe_acquire(ls_wpipe_t *p, int layer) {
  int b = layer % 2;
  post_bcast(p, layer);
  if (p->failed) return NULL;
  double t0 = ls_now();
  /* as in post_bcast: a device failure surfaces at the layer's sync, on every rank */
  ls_wait_others("the weights' broadcast");
  p->be->bcast->wait(p->be, b);
  ls_wait_others(NULL);
  p->bcast_wait_s[layer] += ls_now() - t0;
  return p->recv[b];
}

int ls_wpipe_release(ls_wpipe_t *p, int layer) {
  p->posted[layer % 2] = -1;
  request_read(p, layer + 2);
  post_bcast(p, layer + 1);
  return p->failed ? LS_ERR : LS_OK;
}

void ls_wpipe_progress(ls_wpipe_t *p) {
  if (p->be->bcast->progress) p->be->bcast->progress(p->be);
}

void ls_wpipe_free(ls_wpipe_t *p) {
  /* broadcasts in flight finish (every rank posted the same ones) */
  for (int b = 0; b < 2 && p->be; b++)
    if (p->posted[b] >= 0) p->be->bcast->wait(p->be, b);
  if (p->thread_started) {
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    pthread_join(p->thread, NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
  }
  /* no copy or broadcast may still read or write the buffers */
  if (p->be && p->on_device && p->be->iface->sync) p->be->iface->sync(p->be);
  for (int b = 0; b < 2; b++) {
    if (!p->be) break;
    if (p->on_device && p->recv[b]) p->be->iface->free(p->be, p->recv[b]);
    if (p->raw[b]) p->be->iface->host_free(p->be, p->raw[b]);
  }
  free(p->read_s);
  free(p->read_wait_s);
  free(p->bcast_wait_s);
  memset(p, 0, sizeof *p);
}
