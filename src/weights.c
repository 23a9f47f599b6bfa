/* weights.c: reader thread + broadcast pipeline for layer weights (see weights.h). */
#include "weights.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "ls_common.h"

#define BCAST_CHUNK ((uint64_t)1 << 30)

/* ---- reader thread (rank 0) --------------------------------------------------------- */
static void *reader_main(void *arg) {
  ls_wpipe_t *p = arg;
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
    pthread_mutex_lock(&p->mu);
    p->read_s[layer] = dt;
    if (rc) p->read_err = 1;
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

/* Rank 0: wait until layer is read; LS_ERR if the reader failed (it said why). */
static int wait_read(ls_wpipe_t *p, int layer) {
  double t0 = ls_now();
  pthread_mutex_lock(&p->mu);
  while (p->have[layer % 2] != layer && !p->read_err) pthread_cond_wait(&p->cv, &p->mu);
  int err = p->read_err;
  pthread_mutex_unlock(&p->mu);
  p->read_wait_s[layer] += ls_now() - t0;
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
  MPI_Bcast(&ok, 1, MPI_INT, 0, p->comm);
  if (!ok) {
    p->failed = 1;
    return;
  }
  uint64_t bytes = p->m->layer_bytes[layer];
  if (p->on_device) {
    /* a failure is sticky in the backend and stops every rank at the layer's sync */
    p->be->iface->bcast(p->be, b, p->draw[b], p->rank == 0 ? p->raw[b] : NULL, bytes);
    p->posted[b] = layer;
    return;
  }
  int n = 0;
  for (uint64_t off = 0; off < bytes; off += BCAST_CHUNK) {
    uint64_t len = bytes - off < BCAST_CHUNK ? bytes - off : BCAST_CHUNK;
    MPI_Ibcast((char *)p->raw[b] + off, (int)len, MPI_BYTE, 0, p->comm, &p->req[b][n++]);
  }
  p->nreq[b] = n;
  p->posted[b] = layer;
}

int ls_wpipe_init(ls_wpipe_t *p, ls_model_t *m, ls_backend_t *be, int first, int n_run,
                  MPI_Comm comm) {
  memset(p, 0, sizeof *p);
  p->m = m;
  p->be = be;
  p->on_device = be->iface->bcast != NULL;
  p->first = first;
  p->n_run = n_run;
  MPI_Comm_dup(comm, &p->comm);
  MPI_Comm_rank(comm, &p->rank);
  const int nl = m->cfg.n_layers;
  p->read_s = ls_calloc((size_t)nl, sizeof(double), "profile");
  p->read_wait_s = ls_calloc((size_t)nl, sizeof(double), "profile");
  p->bcast_wait_s = ls_calloc((size_t)nl, sizeof(double), "profile");
  p->max_req = (int)((m->max_layer_bytes + BCAST_CHUNK - 1) / BCAST_CHUNK) + 1;
  for (int b = 0; b < 2; b++) {
    p->want[b] = p->have[b] = p->posted[b] = -1;
    if (!p->on_device || p->rank == 0) {
      p->raw[b] = be->iface->host_alloc(be, m->max_layer_bytes, "layer staging buffer");
      if (!p->raw[b]) return LS_ERR;
    }
    if (p->on_device) {
      p->draw[b] = be->iface->alloc(be, m->max_layer_bytes, "layer receive buffer");
      if (!p->draw[b]) return LS_ERR;
    }
    p->req[b] = ls_calloc((size_t)p->max_req, sizeof(MPI_Request), "requests");
    if (!p->req[b]) return LS_ERR;
  }
  if (!p->read_s || !p->read_wait_s || !p->bcast_wait_s) return LS_ERR;
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
  if (p->on_device) {
    /* as in post_bcast: a failure surfaces at the layer's sync, on every rank */
    p->be->iface->bcast_wait(p->be, b);
    p->bcast_wait_s[layer] += ls_now() - t0;
    return p->draw[b];
  }
  MPI_Waitall(p->nreq[b], p->req[b], MPI_STATUSES_IGNORE);
  p->nreq[b] = 0;
  p->bcast_wait_s[layer] += ls_now() - t0;
  return p->raw[b];
}

int ls_wpipe_release(ls_wpipe_t *p, int layer) {
  p->posted[layer % 2] = -1;
  request_read(p, layer + 2);
  post_bcast(p, layer + 1);
  return p->failed ? LS_ERR : LS_OK;
}

void ls_wpipe_progress(ls_wpipe_t *p) {
  for (int b = 0; b < 2; b++) {
    if (p->nreq[b] == 0) continue;
    int done;
    MPI_Testall(p->nreq[b], p->req[b], &done, MPI_STATUSES_IGNORE);
  }
}

void ls_wpipe_free(ls_wpipe_t *p) {
  for (int b = 0; b < 2; b++)
    if (p->nreq[b]) MPI_Waitall(p->nreq[b], p->req[b], MPI_STATUSES_IGNORE);
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
    if (p->be) {
      if (p->raw[b]) p->be->iface->host_free(p->be, p->raw[b]);
      if (p->draw[b]) p->be->iface->free(p->be, p->draw[b]);
    }
    free(p->req[b]);
  }
  free(p->read_s);
  free(p->read_wait_s);
  free(p->bcast_wait_s);
  if (p->comm != MPI_COMM_NULL && p->comm) MPI_Comm_free(&p->comm);
  memset(p, 0, sizeof *p);
}
