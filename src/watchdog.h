/* watchdog.h: no hang on a lost rank or link. Every rank runs a thread that ends the job
 * when the sweep makes no progress (no beat from the main thread) for the stall timeout:
 * one error line naming this rank's phase and layer, then _exit(3), which mpirun turns
 * into the end of the whole job (no MPI call from the thread: MPI_THREAD_FUNNELED). Rank 0
 * reports first; the others wait a few seconds more, so that one line is printed when
 * the job is stuck as a whole. The output stays partial and resumable. */
#ifndef LS_WATCHDOG_H
#define LS_WATCHDOG_H

#include <pthread.h>

typedef struct {
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int started, stop, rank;
  double limit_s;      /* > 0: fixed; the auto limit grows with the slowest layer */
  int auto_limit;
  double slowest_s;    /* the slowest layer so far (auto limit: 20x, at least 600 s) */
  double last_beat;
  char phase[64];
  int layer;
} ls_watchdog_t;

/* timeout_s > 0: that many seconds; 0: off (nothing started); < 0: automatic. */
int ls_watchdog_start(ls_watchdog_t *w, double timeout_s, int rank);
/* Progress: the main thread enters `phase` (a static string) of `layer` (-1: none). */
void ls_watchdog_beat(ls_watchdog_t *w, const char *phase, int layer);
/* A layer took layer_s seconds (the automatic limit follows the slowest). */
void ls_watchdog_layer_time(ls_watchdog_t *w, double layer_s);
void ls_watchdog_stop(ls_watchdog_t *w);

#endif
