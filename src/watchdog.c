/* watchdog.c: the stall watchdog and its heartbeats (see watchdog.h). */
#include "watchdog.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ls_common.h"

#define HB_TAG 1
#define HB_PERIOD_S 1.0
#define HB_LOST_S 5.0   /* a rank silent this long is "not heard from" */
#define HB_BYE_WAIT_S 10.0

typedef struct {        /* one heartbeat, as bytes */
  int32_t layer, bye;
  double idle_s;        /* seconds since the sender's main thread last made progress */
  char phase[64];
  char waiting[48];     /* the collective step its main thread is blocked in, or "" */
} hb_msg_t;

typedef struct {        /* rank 0: what a rank last said */
  double heard;         /* when (ls_now), 0: never */
  hb_msg_t m;
  int bye;
} hb_peer_t;

static double limit_of(const ls_watchdog_t *w) {
  if (!w->auto_limit) return w->limit_s;
  const double l = 20.0 * w->slowest_s;
  return l > 600.0 ? l : 600.0;
}

static void where_of(char *buf, size_t cap, const char *phase, int layer) {
  if (layer >= 0) snprintf(buf, cap, "%s of layer %d", phase, layer);
  else snprintf(buf, cap, "%s", phase);
}

/* ---- heartbeats (the watchdog's thread; MPI_THREAD_MULTIPLE) ------------------------------- */
/* A non-root: its phase to rank 0, unless the last one is still on its way. Under w->mu. */
static void hb_send(ls_watchdog_t *w, int bye) {
  int done = 1;
  if (w->hb_req != MPI_REQUEST_NULL) MPI_Test(&w->hb_req, &done, MPI_STATUS_IGNORE);
  if (!done) return;
  hb_msg_t *m = w->hb_out;
  memset(m, 0, sizeof *m);
  m->layer = w->layer;
  m->bye = bye;
  m->idle_s = ls_now() - w->last_beat;
  snprintf(m->phase, sizeof m->phase, "%s", w->phase);
  const char *wait = ls_waiting_others();
  snprintf(m->waiting, sizeof m->waiting, "%s", wait ? wait : "");
  MPI_Isend(m, (int)sizeof *m, MPI_BYTE, 0, HB_TAG, w->hb_comm, &w->hb_req);
}

/* Rank 0: every heartbeat that has arrived. */
static void hb_drain(ls_watchdog_t *w) {
  hb_peer_t *p = w->peers;
  for (;;) {
    int flag = 0;
    MPI_Status st;
    MPI_Iprobe(MPI_ANY_SOURCE, HB_TAG, w->hb_comm, &flag, &st);
    if (!flag) return;
    hb_msg_t m;
    MPI_Recv(&m, (int)sizeof m, MPI_BYTE, st.MPI_SOURCE, HB_TAG, w->hb_comm, MPI_STATUS_IGNORE);
    if (st.MPI_SOURCE <= 0 || st.MPI_SOURCE >= w->size) continue;
    m.phase[sizeof m.phase - 1] = m.waiting[sizeof m.waiting - 1] = '\0';
    p[st.MPI_SOURCE].heard = ls_now();
    p[st.MPI_SOURCE].m = m;
    if (m.bye) p[st.MPI_SOURCE].bye = 1;
  }
}

/* Rank 0's account of the others for the stall line: the ranks not heard from (a lost
 * node or link), those heard from that are not waiting for the others (stuck on their
 * own), and those waiting elsewhere than rank 0; a few of each named. */
static void hb_report(const ls_watchdog_t *w, char *buf, size_t cap) {
  const hb_peer_t *p = w->peers;
  const double now = ls_now();
  char lost[256] = "", stuck[1024] = "", other[1024] = "";
  int n_lost = 0, n_stuck = 0, n_other = 0;
  double silent = 0;
  for (int r = 1; r < w->size; r++) {
    const double since = p[r].heard > 0 ? now - p[r].heard : -1;
    if (since < 0 || since > HB_LOST_S) {
      if (n_lost < 16)
        snprintf(lost + strlen(lost), sizeof lost - strlen(lost), "%s%d", n_lost ? ", " : "", r);
      if (since > silent) silent = since;
      n_lost++;
      continue;
    }
    const hb_msg_t *m = &p[r].m;
    char where[96];
    where_of(where, sizeof where, m->phase, m->layer);
    if (!m->waiting[0]) {
      if (n_stuck++ < 4)
        snprintf(stuck + strlen(stuck), sizeof stuck - strlen(stuck),
                 "; rank %d was in %s, not waiting for other ranks, for %.0f s", r, where, m->idle_s);
    } else if (strcmp(m->phase, w->phase) != 0 || m->layer != w->layer) {
      if (n_other++ < 4)
        snprintf(other + strlen(other), sizeof other - strlen(other), "; rank %d was waiting in %s (%s)",
                 r, where, m->waiting);
    }
  }
  buf[0] = '\0';
  if (n_lost && silent > 0)
    snprintf(buf, cap, "; not heard from for %.0f s: rank%s %s%s", silent, n_lost > 1 ? "s" : "",
             lost, n_lost > 16 ? ", ..." : "");
  else if (n_lost)
    snprintf(buf, cap, "; never heard from: rank%s %s%s", n_lost > 1 ? "s" : "", lost,
             n_lost > 16 ? ", ..." : "");
  snprintf(buf + strlen(buf), cap - strlen(buf), "%s%s%s%s", stuck, n_stuck > 4 ? "; ..." : "",
           other, n_other > 4 ? "; ..." : "");
  if (!n_lost && !n_stuck && !n_other)
    snprintf(buf, cap, "; the other ranks heard from, all waiting in the same step");
}

static void *watch_main(void *arg) {
  ls_watchdog_t *w = arg;
  /* rank 0 speaks first; another rank only if rank 0 could not (its node is gone) */
  const double grace = w->rank == 0 ? 0.0 : 5.0;
  const int hb = w->hb_comm != MPI_COMM_NULL;
  pthread_mutex_lock(&w->mu);
  while (!w->stop) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += (time_t)HB_PERIOD_S;
    pthread_cond_timedwait(&w->cv, &w->mu, &ts);
    if (w->stop) break;
    if (hb && w->rank != 0) hb_send(w, 0);
    if (hb && w->rank == 0) hb_drain(w);
    const double idle = ls_now() - w->last_beat, limit = limit_of(w);
    if (idle < limit + grace) continue;
    char where[160], others[2600] = "";
    where_of(where, sizeof where, w->phase, w->layer);
    const char *wait = ls_waiting_others();
    if (hb) /* this rank's own: blocked on the others, or stuck itself */
      snprintf(where + strlen(where), sizeof where - strlen(where), wait ? ", waiting for the others (%s)"
               : ", not waiting for other ranks%s", wait ? wait : "");
    if (hb && w->rank == 0) hb_report(w, others, sizeof others);
    /* straight to stderr: the error machinery may be held by the stuck thread */
    char who[32] = "";
    if (w->rank) snprintf(who, sizeof who, "[rank %d]", w->rank);
    fprintf(stderr, "layersweep%s: error: no progress for %.0f s (rank %d was in %s%s; stall "
            "timeout %.0f s, --stall-timeout): a rank or the network between them is lost or "
            "stuck; ending the job, the output stays partial: rerun with --resume\n",
            who, idle, w->rank, where, others, limit);
    fflush(stderr);
    _exit(3);
  }
  pthread_mutex_unlock(&w->mu);
  return NULL;
}

/* ---- start / beat / stop ------------------------------------------------------------------- */
int ls_watchdog_start(ls_watchdog_t *w, double timeout_s, MPI_Comm comm) {
  memset(w, 0, sizeof *w);
  w->hb_comm = MPI_COMM_NULL;
  w->hb_req = MPI_REQUEST_NULL;
  if (timeout_s == 0) return LS_OK;
  MPI_Comm_rank(comm, &w->rank);
  MPI_Comm_size(comm, &w->size);
  w->auto_limit = timeout_s < 0;
  w->limit_s = timeout_s;
  w->last_beat = ls_now();
  w->layer = -1;
  snprintf(w->phase, sizeof w->phase, "setup");
  int level = MPI_THREAD_SINGLE;
  MPI_Query_thread(&level);
  /* the same on every rank: one MPI library, one MPI_Init_thread */
  if (w->size > 1 && level == MPI_THREAD_MULTIPLE) {
    w->hb_out = ls_calloc(1, sizeof(hb_msg_t), "heartbeat");
    if (w->rank == 0) w->peers = ls_calloc((size_t)w->size, sizeof(hb_peer_t), "heartbeats");
    MPI_Comm_dup(comm, &w->hb_comm);
    MPI_Comm_set_errhandler(w->hb_comm, MPI_ERRORS_RETURN); /* a lost peer is the point */
  }
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

/* The heartbeats' end: a non-root's last message (bye) is on its way, rank 0 has every
 * rank's bye; the communicator is freed only then (else, after HB_BYE_WAIT_S, left). */
static void hb_finish(ls_watchdog_t *w) {
  const double t0 = ls_now();
  int clean = 1;
  if (w->rank != 0) {
    int done = 0;
    while (w->hb_req != MPI_REQUEST_NULL && !done && ls_now() - t0 < HB_BYE_WAIT_S) {
      MPI_Test(&w->hb_req, &done, MPI_STATUS_IGNORE);
      if (!done) usleep(1000);
    }
    if (w->hb_req == MPI_REQUEST_NULL || done) {
      hb_send(w, 1);
      done = 0;
      while (!done && ls_now() - t0 < HB_BYE_WAIT_S) {
        MPI_Test(&w->hb_req, &done, MPI_STATUS_IGNORE);
        if (!done) usleep(1000);
      }
    }
    clean = done;
  } else {
    hb_peer_t *p = w->peers;
    for (;;) {
      hb_drain(w);
      int all = 1;
      for (int r = 1; r < w->size; r++) all &= p[r].bye;
      if (all) break;
      if (ls_now() - t0 > HB_BYE_WAIT_S) { clean = 0; break; }
      usleep(1000);
    }
  }
  if (clean) MPI_Comm_free(&w->hb_comm);
  w->hb_comm = MPI_COMM_NULL;
}

void ls_watchdog_stop(ls_watchdog_t *w) {
  if (!w->started) return;
  pthread_mutex_lock(&w->mu);
  w->stop = 1;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
  pthread_join(w->thread, NULL);
  if (w->hb_comm != MPI_COMM_NULL) hb_finish(w);
  pthread_mutex_destroy(&w->mu);
  pthread_cond_destroy(&w->cv);
  free(w->hb_out);
  free(w->peers);
  w->hb_out = w->peers = NULL;
  w->started = 0;
}
