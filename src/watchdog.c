/* watchdog.c: the stall watchdog (see watchdog.h). */
#include "watchdog.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ls_common.h"

static double limit_of(const ls_watchdog_t *w) {
  if (!w->auto_limit) return w->limit_s;
  const double l = 20.0 * w->slowest_s;
  return l > 600.0 ? l : 600.0;
}

static void *watch_main(void *arg) {
  ls_watchdog_t *w = arg;
  /* rank 0 speaks first; another rank only if rank 0 could not (its node is gone) */
  const double grace = w->rank == 0 ? 0.0 : 5.0;
  pthread_mutex_lock(&w->mu);
  while (!w->stop) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 1;
    pthread_cond_timedwait(&w->cv, &w->mu, &ts);
    if (w->stop) break;
    const double idle = ls_now() - w->last_beat, limit = limit_of(w);
    if (idle < limit + grace) continue;
    char where[96];
    if (w->layer >= 0) snprintf(where, sizeof where, "%s of layer %d", w->phase, w->layer);
    else snprintf(where, sizeof where, "%s", w->phase);
    /* straight to stderr: the error machinery may be held by the stuck thread */
    char who[32] = "";
    if (w->rank) snprintf(who, sizeof who, "[rank %d]", w->rank);
    fprintf(stderr, "layersweep%s: error: no progress for %.0f s (rank %d was in %s; stall "
            "timeout %.0f s, --stall-timeout): a rank or the network between them is lost or "
            "stuck; ending the job, the output stays partial: rerun with --resume\n",
            who, idle, w->rank, where, limit);
    fflush(stderr);
    _exit(3);
  }
  pthread_mutex_unlock(&w->mu);
  return NULL;
}

int ls_watchdog_start(ls_watchdog_t *w, double timeout_s, int rank) {
  memset(w, 0, sizeof *w);
  if (timeout_s == 0) return LS_OK;
  w->rank = rank;
  w->auto_limit = timeout_s < 0;
  w->limit_s = timeout_s;
  w->last_beat = ls_now();
  w->layer = -1;
  snprintf(w->phase, sizeof w->phase, "setup");
  pthread_mutex_init(&w->mu, NULL);
  pthread_cond_init(&w->cv, NULL);
  if (pthread_create(&w->thread, NULL, watch_main, w) != 0) {
    ls_error("cannot start the stall watchdog thread");
    return LS_ERR;
  }
  w->started = 1;
  return LS_OK;
}

void ls_watchdog_beat(ls_watchdog_t *w, const char *phase, int layer) {
  if (!w->started) return;
  pthread_mutex_lock(&w->mu);
  w->last_beat = ls_now();
  snprintf(w->phase, sizeof w->phase, "%s", phase);
  w->layer = layer;
  pthread_mutex_unlock(&w->mu);
}

void ls_watchdog_layer_time(ls_watchdog_t *w, double layer_s) {
  if (!w->started) return;
  pthread_mutex_lock(&w->mu);
  if (layer_s > w->slowest_s) w->slowest_s = layer_s;
  pthread_mutex_unlock(&w->mu);
}

void ls_watchdog_stop(ls_watchdog_t *w) {
  if (!w->started) return;
  pthread_mutex_lock(&w->mu);
  w->stop = 1;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
  pthread_join(w->thread, NULL);
  pthread_mutex_destroy(&w->mu);
  pthread_cond_destroy(&w->cv);
  w->started = 0;
}
