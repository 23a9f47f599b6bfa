/* writer.c: the output writer thread (see writer.h). */
#include "writer.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "ls_common.h"

static int write_all(ls_writer_t *w, const ls_write_piece_t *p) {
  const char *b = p->buf;
  size_t left = p->bytes;
  uint64_t off = p->offset;
  while (left > 0) {
    ssize_t n = pwrite(w->fd, b, left, (off_t)off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ls_error("%s: writing activations failed: %s; free space (or fix the file system) and "
               "rerun with --resume", w->path, n < 0 ? strerror(errno) : "no progress");
      return LS_ERR;
    }
    b += n;
    left -= (size_t)n;
    off += (uint64_t)n;
  }
  return LS_OK;
}

static void *writer_main(void *arg) {
  ls_writer_t *w = arg;
  ls_error_defer(1); /* messages are reported by the main thread at ls_writer_wait */
  pthread_mutex_lock(&w->mu);
  for (;;) {
    while (!w->stop && !(w->pending && !w->done)) pthread_cond_wait(&w->cv, &w->mu);
    if (w->stop) break;
    ls_write_piece_t pieces[LS_WRITER_MAX_PIECES];
    const int n = w->n_pieces;
    memcpy(pieces, w->pieces, sizeof pieces);
    pthread_mutex_unlock(&w->mu);
    double t0 = ls_now();
    int rc = LS_OK;
    for (int i = 0; i < n && rc == LS_OK; i++) rc = write_all(w, &pieces[i]);
    /* on disk before the main thread sets the layer's marker */
    if (rc == LS_OK && fdatasync(w->fd) != 0 && errno != EINVAL && errno != EROFS) {
      ls_error("%s: syncing activations to disk failed: %s; rerun with --resume", w->path,
               strerror(errno));
      rc = LS_ERR;
    }
    char msg[sizeof w->msg] = "";
    if (rc && !ls_error_take(msg, sizeof msg))
      snprintf(msg, sizeof msg, "writing activations to the output failed");
    pthread_mutex_lock(&w->mu);
    w->busy_s += ls_now() - t0;
    w->rc = rc;
    memcpy(w->msg, msg, sizeof msg);
    w->done = 1;
    pthread_cond_broadcast(&w->cv);
  }
  pthread_mutex_unlock(&w->mu);
  return NULL;
}

int ls_writer_start(ls_writer_t *w, const char *path) {
  memset(w, 0, sizeof *w);
  snprintf(w->path, sizeof w->path, "%s", path);
  w->fd = open(path, O_WRONLY | O_CLOEXEC);
  if (w->fd < 0) {
    ls_error("%s: cannot open the output for writing activations: %s", path, strerror(errno));
    return LS_ERR;
  }
  pthread_mutex_init(&w->mu, NULL);
  pthread_cond_init(&w->cv, NULL);
  if (pthread_create(&w->thread, NULL, writer_main, w) != 0) {
    ls_error("cannot start the output writer thread");
    close(w->fd);
    w->fd = -1;
    return LS_ERR;
  }
  w->started = 1;
  return LS_OK;
}

void ls_writer_submit(ls_writer_t *w, int tag, const ls_write_piece_t *pieces, int n) {
  pthread_mutex_lock(&w->mu);
  w->tag = tag;
  w->n_pieces = n < LS_WRITER_MAX_PIECES ? n : LS_WRITER_MAX_PIECES;
  memcpy(w->pieces, pieces, sizeof *pieces * (size_t)w->n_pieces);
  w->rc = LS_OK;
  w->done = 0;
  w->pending = 1;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

int ls_writer_wait(ls_writer_t *w, int *tag) {
  if (tag) *tag = -1;
  if (!w->started) return LS_OK;
  pthread_mutex_lock(&w->mu);
  if (!w->pending) {
    pthread_mutex_unlock(&w->mu);
    return LS_OK;
  }
  while (!w->done) pthread_cond_wait(&w->cv, &w->mu);
  w->pending = 0;
  const int rc = w->rc;
  if (tag) *tag = w->tag;
  char msg[sizeof w->msg];
  memcpy(msg, w->msg, sizeof msg);
  pthread_mutex_unlock(&w->mu);
  if (rc) ls_error("%s", msg);
  return rc;
}

void ls_writer_stop(ls_writer_t *w) {
  if (!w->started) return;
  ls_writer_wait(w, NULL);
  pthread_mutex_lock(&w->mu);
  w->stop = 1;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
  pthread_join(w->thread, NULL);
  pthread_mutex_destroy(&w->mu);
  pthread_cond_destroy(&w->cv);
  close(w->fd);
  w->fd = -1;
  w->started = 0;
}
