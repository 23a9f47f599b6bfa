/* spill.c: the residual stream in a file (see spill.h). */
#define _GNU_SOURCE /* O_DIRECT, sync_file_range */
#include "spill.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "ls_common.h"

#define TMPFS_MAGIC_ 0x01021994

typedef enum { SLOT_FREE, SLOT_READING, SLOT_READY, SLOT_BUSY, SLOT_DIRTY, SLOT_WRITING } slot_state_t;

typedef struct {
  char *buf;            /* (slot_bytes) */
  slot_state_t state;
  int mb;               /* the microbatch it holds (not FREE) */
  uint64_t order;       /* DIRTY: when released (writes go oldest first) */
} slot_t;

struct ls_spill {
  char dir[4096], path[4200];
  int made_dir;
  int fd;               /* buffered: get / put, and the thread when not direct */
  int dfd;              /* O_DIRECT, or -1 */
  int n_mb;
  int64_t *rows;        /* (n_mb + 1) first stored row of each microbatch */
  uint64_t *off;        /* (n_mb + 1) each region's offset in the file, aligned */
  size_t row_bytes, slot_bytes;
  slot_t slot[LS_SPILL_SLOTS];
  pthread_t thread;
  int started;
  pthread_mutex_t mu;
  pthread_cond_t cv;    /* any state change */
  int stop, paused;     /* paused: get / put in progress, no read starts */
  int armed;            /* read ahead only once the layer loop takes microbatches */
  long fault_write, n_writes; /* LS_FAULT_SPILL_WRITE (the thread's counter) */
  int next;             /* the next microbatch to read ahead */
  uint64_t n_released;
  int err;              /* sticky: an I/O failure, said by the main thread once */
  int err_said;
  char msg[4800];
  ls_spill_stats_t st;
};

/* ---- layout ---------------------------------------------------------------------------- */
static uint64_t round_up(uint64_t v) { return (v + LS_SPILL_ALIGN - 1) / LS_SPILL_ALIGN * LS_SPILL_ALIGN; }

size_t ls_spill_slot_bytes(int n_mb, const int64_t *rows, size_t row_bytes) {
  uint64_t m = LS_SPILL_ALIGN;
  for (int k = 0; k < n_mb; k++) {
    const uint64_t b = round_up((uint64_t)(rows[k + 1] - rows[k]) * row_bytes);
    if (b > m) m = b;
  }
  return (size_t)m;
}

uint64_t ls_spill_file_bytes(int n_mb, const int64_t *rows, size_t row_bytes) {
  uint64_t t = 0;
  for (int k = 0; k < n_mb; k++) t += round_up((uint64_t)(rows[k + 1] - rows[k]) * row_bytes);
  return t;
}

/* ---- raw I/O --------------------------------------------------------------------------- */
/* Whole-range pread / pwrite; errno-style failure text in sp->msg (under the lock or on the
 * main thread only: the caller says which). */
static int xfer(int fd, int write, char *buf, size_t n, uint64_t off, char *msg, size_t cap,
                const char *path) {
  size_t done = 0;
  while (done < n) {
    ssize_t r = write ? pwrite(fd, buf + done, n - done, (off_t)(off + done))
                      : pread(fd, buf + done, n - done, (off_t)(off + done));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      snprintf(msg, cap, "%s: cannot %s the spilled residual stream at byte %llu: %s; give "
               "--spill-dir on a local disk with free space, or more --memory-limit",
               path, write ? "write" : "read", (unsigned long long)(off + done),
               r < 0 ? strerror(errno) : "end of file");
      return LS_ERR;
    }
    done += (size_t)r;
  }
  return LS_OK;
}

/* The buffered path: a range written out and dropped (or, read, dropped) so that the page
 * cache does not keep a second copy of the stream. */
static void drop_range(int fd, uint64_t off, uint64_t n, int written) {
  if (written) sync_file_range(fd, (off_t)off, (off_t)n,
                               SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                                   SYNC_FILE_RANGE_WAIT_AFTER);
  posix_fadvise(fd, (off_t)off, (off_t)n, POSIX_FADV_DONTNEED);
}

/* Microbatch mb's whole region between the file and buf (the thread, unlocked). */
static int region_io(ls_spill_t *sp, int mb, char *buf, int write, char *msg, size_t cap) {
  const uint64_t off = sp->off[mb], n = sp->off[mb + 1] - sp->off[mb];
  const int fd = sp->dfd >= 0 ? sp->dfd : sp->fd;
  /* test switch LS_FAULT_SPILL_WRITE=N: the Nth region write of this rank fails (EIO) */
  if (write && sp->fault_write > 0 && ++sp->n_writes == sp->fault_write) {
    snprintf(msg, cap, "%s: cannot write the spilled residual stream at byte %llu: %s "
             "(injected, LS_FAULT_SPILL_WRITE)", sp->path, (unsigned long long)off, strerror(EIO));
    return LS_ERR;
  }
  int rc = xfer(fd, write, buf, (size_t)n, off, msg, cap, sp->path);
  if (rc == LS_OK && sp->dfd < 0) drop_range(sp->fd, off, n, write);
  return rc;
}

/* ---- the thread ------------------------------------------------------------------------ */
static int held(const ls_spill_t *sp, int mb) {
  for (int i = 0; i < LS_SPILL_SLOTS; i++)
    if (sp->slot[i].state != SLOT_FREE && sp->slot[i].mb == mb) return 1;
  return 0;
}

static void *spill_main(void *arg) {
  ls_spill_t *sp = arg;
  char msg[4800];
  pthread_mutex_lock(&sp->mu);
  while (!sp->stop) {
    /* writes first (oldest first): a slot is free again only once its rows are back */
    slot_t *w = NULL, *f = NULL;
    for (int i = 0; i < LS_SPILL_SLOTS; i++) {
      slot_t *s = &sp->slot[i];
      if (s->state == SLOT_DIRTY && (!w || s->order < w->order)) w = s;
      if (s->state == SLOT_FREE && !f) f = s;
    }
    slot_t *s = w;
    int mb = w ? w->mb : -1;
    /* else read ahead: the next microbatch, unless a slot holds it (its latest rows are
     * then in that slot, or on their way back) */
    if (!s && f && !sp->err && sp->armed && !sp->paused && !held(sp, sp->next)) {
      s = f;
      mb = sp->next;
      s->mb = mb;
      sp->next = (mb + 1) % sp->n_mb;
    }
    if (!s) {
      pthread_cond_wait(&sp->cv, &sp->mu);
      continue;
    }
    const int write = s == w;
    s->state = write ? SLOT_WRITING : SLOT_READING;
    pthread_mutex_unlock(&sp->mu);
    double t0 = ls_now();
    int rc = region_io(sp, mb, s->buf, write, msg, sizeof msg);
    double dt = ls_now() - t0;
    pthread_mutex_lock(&sp->mu);
    sp->st.io_s += dt;
    const uint64_t n = sp->off[mb + 1] - sp->off[mb];
    if (write) sp->st.bytes_written += n;
    else sp->st.bytes_read += n;
    if (rc != LS_OK && !sp->err) {
      sp->err = 1;
      snprintf(sp->msg, sizeof sp->msg, "%s", msg);
    }
    s->state = write || rc != LS_OK ? SLOT_FREE : SLOT_READY;
    pthread_cond_broadcast(&sp->cv);
  }
  pthread_mutex_unlock(&sp->mu);
  return NULL;
}

/* Under the lock: the thread's failure, said once (main thread). */
static int said_error(ls_spill_t *sp) {
  if (!sp->err) return 0;
  if (!sp->err_said) ls_error("%s", sp->msg);
  sp->err_said = 1;
  return 1;
}

/* ---- open / close ---------------------------------------------------------------------- */
ls_spill_t *ls_spill_open(const char *dir, int rank, int n_mb, const int64_t *rows,
                          size_t row_bytes, void *const *slots, size_t slot_bytes) {
  ls_spill_t *sp = ls_calloc(1, sizeof *sp, "spill");
  if (!sp) return NULL;
  sp->fd = sp->dfd = -1;
  snprintf(sp->dir, sizeof sp->dir, "%s", dir);
  sp->n_mb = n_mb;
  sp->row_bytes = row_bytes;
  sp->slot_bytes = slot_bytes;
  sp->rows = ls_malloc(sizeof(int64_t) * (size_t)(n_mb + 1), "spill layout");
  sp->off = ls_malloc(sizeof(uint64_t) * (size_t)(n_mb + 1), "spill layout");
  if (!sp->rows || !sp->off) goto fail;
  memcpy(sp->rows, rows, sizeof(int64_t) * (size_t)(n_mb + 1));
  sp->off[0] = 0;
  for (int k = 0; k < n_mb; k++)
    sp->off[k + 1] = sp->off[k] + round_up((uint64_t)(rows[k + 1] - rows[k]) * row_bytes);
  if (slot_bytes < ls_spill_slot_bytes(n_mb, rows, row_bytes)) {
    ls_error("spill: slots of %zu bytes cannot hold a microbatch region", slot_bytes);
    goto fail;
  }
  int aligned = 1;
  for (int i = 0; i < LS_SPILL_SLOTS; i++) {
    sp->slot[i].buf = slots[i];
    if ((uintptr_t)slots[i] % LS_SPILL_ALIGN) aligned = 0;
  }
  if (mkdir(dir, 0700) == 0) sp->made_dir = 1;
  else if (errno != EEXIST) {
    ls_error("--spill-dir %s: cannot create it: %s; give a directory on a local disk with "
             "free space", dir, strerror(errno));
    goto fail;
  }
  snprintf(sp->path, sizeof sp->path, "%s/rank%d.%ld.spill", dir, rank, (long)getpid());
  sp->fd = open(sp->path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (sp->fd < 0) {
    ls_error("--spill-dir %s: cannot create %s: %s; give a writable directory on a local disk",
             dir, sp->path, strerror(errno));
    goto fail;
  }
  const char *fw = getenv("LS_FAULT_SPILL_WRITE");
  sp->fault_write = fw && *fw ? atol(fw) : 0;
  const char *env = getenv("LS_SPILL_DIRECT");
  if (aligned && !(env && strcmp(env, "0") == 0))
    sp->dfd = open(sp->path, O_RDWR | O_DIRECT | O_CLOEXEC);
  unlink(sp->path); /* the space lives until the descriptors close */
  const uint64_t total = sp->off[n_mb];
  sp->st.file_bytes = total;
  sp->st.direct = sp->dfd >= 0;
  int frc = total ? posix_fallocate(sp->fd, 0, (off_t)total) : 0;
  if (frc == EOPNOTSUPP || frc == EINVAL) frc = ftruncate(sp->fd, (off_t)total) ? errno : 0;
  if (frc) {
    ls_error("--spill-dir %s: cannot reserve %.2f GiB for rank %d's residual stream: %s; "
             "give --spill-dir on a disk with that much free space, or more --memory-limit",
             dir, (double)total / 1073741824.0, rank, strerror(frc));
    goto fail;
  }
  struct statfs fs;
  if (rank == 0 && statfs(dir, &fs) == 0 && fs.f_type == TMPFS_MAGIC_)
    ls_warn("--spill-dir %s is a tmpfs (memory): the spilled residual stream takes memory "
            "there; give a directory on a disk", dir);
  pthread_mutex_init(&sp->mu, NULL);
  pthread_cond_init(&sp->cv, NULL);
  if (pthread_create(&sp->thread, NULL, spill_main, sp) != 0) {
    ls_error("spill: cannot start the I/O thread");
    pthread_mutex_destroy(&sp->mu);
    pthread_cond_destroy(&sp->cv);
    goto fail;
  }
  sp->started = 1;
  return sp;
fail:
  ls_spill_close(sp);
  return NULL;
}

void ls_spill_close(ls_spill_t *sp) {
  if (!sp) return;
  if (sp->started) {
    pthread_mutex_lock(&sp->mu);
    sp->stop = 1;
    pthread_cond_broadcast(&sp->cv);
    pthread_mutex_unlock(&sp->mu);
    pthread_join(sp->thread, NULL);
    pthread_mutex_destroy(&sp->mu);
    pthread_cond_destroy(&sp->cv);
  }
  if (sp->dfd >= 0) close(sp->dfd);
  if (sp->fd >= 0) close(sp->fd);
  if (sp->made_dir) rmdir(sp->dir); /* only when empty */
  free(sp->rows);
  free(sp->off);
  free(sp);
}

/* ---- the layer loop's side ------------------------------------------------------------- */
void *ls_spill_acquire(ls_spill_t *sp, int mb) {
  double t0 = ls_now();
  void *p = NULL;
  pthread_mutex_lock(&sp->mu);
  if (!sp->armed) {
    sp->armed = 1;
    pthread_cond_broadcast(&sp->cv);
  }
  for (;;) {
    if (said_error(sp)) break;
    slot_t *ready = NULL;
    int reading = 0;
    for (int i = 0; i < LS_SPILL_SLOTS; i++) {
      slot_t *s = &sp->slot[i];
      if (s->mb != mb || s->state == SLOT_FREE) continue;
      if (s->state == SLOT_READY) ready = s;
      if (s->state == SLOT_READING) reading = 1;
    }
    if (ready) {
      ready->state = SLOT_BUSY;
      p = ready->buf;
      break;
    }
    if (!reading && sp->next != mb && !held(sp, mb)) {
      /* out of order: what was read ahead is dropped, reading goes on from mb */
      for (int i = 0; i < LS_SPILL_SLOTS; i++)
        if (sp->slot[i].state == SLOT_READY) sp->slot[i].state = SLOT_FREE;
      sp->next = mb;
      pthread_cond_broadcast(&sp->cv);
    }
    pthread_cond_wait(&sp->cv, &sp->mu);
  }
  sp->st.wait_s += ls_now() - t0;
  pthread_mutex_unlock(&sp->mu);
  return p;
}

void ls_spill_release(ls_spill_t *sp, int mb, int dirty) {
  pthread_mutex_lock(&sp->mu);
  for (int i = 0; i < LS_SPILL_SLOTS; i++) {
    slot_t *s = &sp->slot[i];
    if (s->state != SLOT_BUSY || s->mb != mb) continue;
    s->state = dirty ? SLOT_DIRTY : SLOT_FREE;
    s->order = ++sp->n_released;
  }
  pthread_cond_broadcast(&sp->cv);
  pthread_mutex_unlock(&sp->mu);
}

/* Under the lock: wait until no write is pending or running (and, when `reads`, no read
 * is running either). */
static void wait_quiet(ls_spill_t *sp, int reads) {
  for (;;) {
    int busy = 0;
    for (int i = 0; i < LS_SPILL_SLOTS; i++) {
      const slot_state_t st = sp->slot[i].state;
      if (st == SLOT_DIRTY || st == SLOT_WRITING || (reads && st == SLOT_READING)) busy = 1;
    }
    if (!busy) return;
    pthread_cond_wait(&sp->cv, &sp->mu);
  }
}

int ls_spill_flush(ls_spill_t *sp) {
  double t0 = ls_now();
  pthread_mutex_lock(&sp->mu);
  wait_quiet(sp, 0);
  const int bad = said_error(sp);
  sp->st.wait_s += ls_now() - t0;
  pthread_mutex_unlock(&sp->mu);
  return bad ? LS_ERR : LS_OK;
}

/* ---- any range, synchronously ---------------------------------------------------------- */
/* The microbatch holding stored row r (rows ascending). */
static int region_of(const ls_spill_t *sp, int64_t r) {
  int lo = 0, hi = sp->n_mb - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (sp->rows[mid] <= r) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

static int range_io(ls_spill_t *sp, int64_t row0, int64_t n, char *buf, int write) {
  if (n <= 0) return LS_OK;
  if (row0 < 0 || row0 + n > sp->rows[sp->n_mb]) {
    ls_error("spill: rows [%lld, %lld) outside the stream's %lld", (long long)row0,
             (long long)(row0 + n), (long long)sp->rows[sp->n_mb]);
    return LS_ERR;
  }
  pthread_mutex_lock(&sp->mu);
  wait_quiet(sp, 1);
  int rc = said_error(sp) ? LS_ERR : LS_OK;
  sp->paused = 1;
  if (write) /* rows read ahead may be among those written: read them again */
    for (int i = 0; i < LS_SPILL_SLOTS; i++)
      if (sp->slot[i].state == SLOT_READY) sp->slot[i].state = SLOT_FREE;
  pthread_mutex_unlock(&sp->mu);
  char msg[4800] = "";
  uint64_t moved = 0;
  for (int64_t r = row0; r < row0 + n && rc == LS_OK;) {
    const int k = region_of(sp, r);
    const int64_t end = sp->rows[k + 1] < row0 + n ? sp->rows[k + 1] : row0 + n;
    const uint64_t off = sp->off[k] + (uint64_t)(r - sp->rows[k]) * sp->row_bytes;
    const size_t bytes = (size_t)(end - r) * sp->row_bytes;
    rc = xfer(sp->fd, write, buf + (size_t)(r - row0) * sp->row_bytes, bytes, off, msg,
              sizeof msg, sp->path);
    if (rc == LS_OK) drop_range(sp->fd, off, bytes, write);
    moved += bytes;
    r = end;
  }
  if (rc != LS_OK) ls_error("%s", msg);
  pthread_mutex_lock(&sp->mu);
  if (write) sp->st.bytes_written += moved;
  else sp->st.bytes_read += moved;
  sp->paused = 0;
  pthread_cond_broadcast(&sp->cv);
  pthread_mutex_unlock(&sp->mu);
  return rc;
}

int ls_spill_put(ls_spill_t *sp, int64_t row0, int64_t n, const void *src) {
  return range_io(sp, row0, n, (char *)src, 1);
}

int ls_spill_get(ls_spill_t *sp, int64_t row0, int64_t n, void *dst) {
  return range_io(sp, row0, n, dst, 0);
}

void ls_spill_stats(ls_spill_t *sp, ls_spill_stats_t *st) {
  pthread_mutex_lock(&sp->mu);
  *st = sp->st;
  pthread_mutex_unlock(&sp->mu);
}
