/* weights.h: the per-layer weight pipeline. Rank 0 has a reader thread that preads
 * layer L+2 while the world computes L; layer L+1 is broadcast while L is computed,
 * through the backend's broadcast slot (be->bcast: the backend's own device broadcast,
 * e.g. CUDA: rank 0 copies the raw layer to its GPU and NCCL sends it GPU to GPU; or
 * the registry's MPI_Ibcast of the packed raw layer into every rank's host memory).
 * Two raw staging buffers rotate: read -> broadcast -> converted by the backend ->
 * free. Only rank 0 ever touches the weight files. The reader thread keeps its own
 * error message; the main thread reports it when the layer is due. */
#ifndef LS_WEIGHTS_H
#define LS_WEIGHTS_H

#include <mpi.h>
#include <pthread.h>

#include "backend.h"
#include "model.h"

typedef struct {
  ls_model_t *m;
  ls_backend_t *be;
  MPI_Comm comm;        /* the job communicator (read-status broadcasts) */
  int rank;
  int first, n_run;     /* layers first .. n_run-1 go through the pipeline */
  int on_device;        /* LS_BE_DEVICE_BCAST: acquired layers are backend memory */
  void *raw[2];         /* (max_layer_bytes) host staging, buffer b holds layers with
                         * L % 2 == b (on_device: rank 0 only) */
  void *recv[2];        /* where the broadcast lands: raw[b], or backend memory */
  /* reader thread (rank 0) */
  pthread_t thread;
  int thread_started;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int want[2], have[2]; /* layer requested into / read into buffer b; -1 none */
  int read_err, stop;
  char read_msg[2048];  /* the reader's error (rank 0), reported by the main thread */
  int failed;           /* a read failed: every rank stops */
  double *read_s;       /* (n_layers) seconds the reader spent on each layer */
  /* broadcasts */
  int posted[2];        /* layer whose broadcast is in flight in buffer b; -1 none */
  double *read_wait_s;  /* (n_layers) exposed wait for the reader */
  double *bcast_wait_s; /* (n_layers) exposed wait for the broadcast */
} ls_wpipe_t;

int ls_wpipe_init(ls_wpipe_t *p, ls_model_t *m, ls_backend_t *be, int first, int n_run,
                  MPI_Comm comm);
/* Raw packed bytes of layer L, complete on this rank for everything the backend runs
 * next (host memory, or backend memory if p->on_device); NULL on every rank if rank 0
 * could not read it (rank 0 said why). */
const void *ls_wpipe_acquire(ls_wpipe_t *p, int layer);
/* The caller has converted layer L: reuse its buffer for L+2, start broadcasting L+1.
 * LS_ERR on every rank if rank 0 could not read L+1. */
int ls_wpipe_release(ls_wpipe_t *p, int layer);
/* Let in-flight broadcasts progress (call between microbatches). */
void ls_wpipe_progress(ls_wpipe_t *p);
void ls_wpipe_free(ls_wpipe_t *p);

#endif
