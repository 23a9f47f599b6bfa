/* watchdog.h: no hang on a lost rank or link. Every rank runs a thread that ends the job
 * when the sweep makes no progress (no beat from the main thread) for the stall timeout:
 * one error line, then _exit(3), which mpirun turns into the end of the whole job. Rank 0
 * reports first; the others wait a few seconds more, so that one line is printed when
 * the job is stuck as a whole. The output stays partial and resumable.
 *
 * Heartbeats (when MPI gives MPI_THREAD_MULTIPLE and there is more than one rank): every
 * second each rank's thread sends rank 0's thread its phase, layer and idle time on a
 * communicator of their own, whatever the main thread is blocked in; rank 0's line then
 * names the ranks not heard from (a lost node or link) and the phase of every rank that
 * is behind rank 0 or idle (a stuck rank). Without MPI_THREAD_MULTIPLE the line names
 * this rank's phase only. */
#ifndef LS_WATCHDOG_H
#define LS_WATCHDOG_H

#include <mpi.h>
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
  /* heartbeats: hb_comm is MPI_COMM_NULL when off */
  MPI_Comm hb_comm;
  int size;
  MPI_Request hb_req;     /* a non-root's send in flight, else MPI_REQUEST_NULL */
  void *hb_out;           /* its message */
  void *peers;            /* rank 0: (size) what each rank last said, and when */
} ls_watchdog_t;

/* timeout_s > 0: that many seconds; 0: off (nothing started); < 0: automatic. Collective
 * over comm (the heartbeats' communicator is a duplicate of it). */
int ls_watchdog_start(ls_watchdog_t *w, double timeout_s, MPI_Comm comm);
/* Progress: the main thread enters `phase` (a static string) of `layer` (-1: none). */
void ls_watchdog_beat(ls_watchdog_t *w, const char *phase, int layer);
/* A layer took layer_s seconds (the automatic limit follows the slowest). */
void ls_watchdog_layer_time(ls_watchdog_t *w, double layer_s);
/* Collective like start: every rank says goodbye to rank 0, which waits (a few seconds at
 * most) for all of them before the heartbeats' communicator goes. */
void ls_watchdog_stop(ls_watchdog_t *w);

#endif
