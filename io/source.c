/* source.c: local-file and HTTP byte-range sources behind one call set (see source.h). */
#define _GNU_SOURCE /* O_DIRECT */
#include "source.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/mman.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "http.h"
#include "ls_common.h"

int ls_src_is_url(const char *loc) {
  return loc && (strncmp(loc, "http://", 7) == 0 || strncmp(loc, "https://", 8) == 0);
}

int ls_src_open_url(ls_src_t *s, const char *url, int missing_ok) {
  return ls_http_open(s, url, missing_ok);
}

void ls_src_from_fd(ls_src_t *s, int fd, uint64_t size) {
  memset(s, 0, sizeof *s);
  s->fd = fd;
  s->size = size;
}

void ls_src_close(ls_src_t *s) {
  if (!s) return;
  if (s->fd >= 0) close(s->fd);
  if (s->direct == 1) close(s->dfd);
  if (s->http) ls_http_close(s->http);
  memset(s, 0, sizeof *s);
  s->fd = -1;
}

static int pread_full(int fd, void *dst, uint64_t n, uint64_t off) {
  char *p = dst;
  while (n > 0) {
    size_t chunk = n > ((uint64_t)1 << 30) ? ((size_t)1 << 30) : (size_t)n;
    ssize_t r = pread(fd, p, chunk, (off_t)off);
    if (r < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (r == 0) return 1;
    p += r;
    n -= (uint64_t)r;
    off += (uint64_t)r;
  }
  return 0;
}

#define DIRECT_MIN ((uint64_t)4 << 20)   /* smaller reads stay buffered */
#define DIRECT_CHUNK ((uint64_t)16 << 20) /* one O_DIRECT request */
#define DIRECT_ALIGN ((uint64_t)4096)

/* 1 when most of the file's pages in [off, off + n) are in the page cache (or it cannot
 * tell): those reads stay buffered, which is faster than the disk */
static int mostly_cached(const ls_src_t *f, uint64_t off, uint64_t n) {
  const uint64_t a0 = off / DIRECT_ALIGN * DIRECT_ALIGN, len = off + n - a0;
  void *map = mmap(NULL, (size_t)len, PROT_READ, MAP_SHARED, f->fd, (off_t)a0);
  if (map == MAP_FAILED) return 1;
  const size_t pages = (size_t)((len + 4095) / 4096);
  unsigned char *vec = malloc(pages);
  size_t in = pages;
  if (vec && mincore(map, (size_t)len, vec) == 0) {
    in = 0;
    for (size_t i = 0; i < pages; i++) in += vec[i] & 1;
  }
  free(vec);
  munmap(map, (size_t)len);
  return in * 2 >= pages;
}

/* A second descriptor of the same open file (not a second open of the path) with O_DIRECT,
 * once; -1 after a file system that refuses it */
static int direct_fd(ls_src_t *f) {
  if (f->direct == 0) {
    const char *env = getenv("LS_READ_DIRECT");
    char self[64];
    snprintf(self, sizeof self, "/proc/self/fd/%d", f->fd);
    struct stat a, b;
    f->direct = -1;
    if (!(env && strcmp(env, "0") == 0)) {
      int fd = open(self, O_RDONLY | O_DIRECT | O_CLOEXEC);
      if (fd >= 0 && fstat(fd, &a) == 0 && fstat(f->fd, &b) == 0 && a.st_ino == b.st_ino &&
          a.st_dev == b.st_dev) {
        f->dfd = fd;
        f->direct = 1;
      } else if (fd >= 0) {
        close(fd);
      }
    }
  }
  return f->direct == 1 ? f->dfd : -1;
}

/* O_DIRECT reads of the aligned chunks of [start, end) by DIO_THREADS threads (chunk k by
 * thread k % DIO_THREADS into buffer k % DIO_BUFS), so the disk has requests queued while
 * the caller copies finished chunks out */
#define DIO_THREADS 2
#define DIO_BUFS 4
typedef struct {
  int fd;
  char *buf[DIO_BUFS];
  ssize_t got[DIO_BUFS];
  int err[DIO_BUFS];
  int64_t chunk[DIO_BUFS]; /* the chunk a buffer holds (read), -1 free */
  int stop;
  uint64_t start, end;
  pthread_mutex_t mu;
  pthread_cond_t cv;
} dio_t;

typedef struct {
  dio_t *d;
  int t;
} dio_arg_t;

static void *dio_thread(void *arg) {
  dio_t *d = ((dio_arg_t *)arg)->d;
  const int t = ((dio_arg_t *)arg)->t;
  for (int64_t k = t;; k += DIO_THREADS) {
    const uint64_t a = d->start + (uint64_t)k * DIRECT_CHUNK;
    if (a >= d->end) break;
    const int b = (int)(k % DIO_BUFS);
    pthread_mutex_lock(&d->mu);
    while (d->chunk[b] >= 0 && !d->stop) pthread_cond_wait(&d->cv, &d->mu);
    const int stop = d->stop;
    pthread_mutex_unlock(&d->mu);
    if (stop) break;
    const uint64_t want = d->end - a < DIRECT_CHUNK ? d->end - a : DIRECT_CHUNK;
    ssize_t r;
    do r = pread(d->fd, d->buf[b], (size_t)want, (off_t)a); while (r < 0 && errno == EINTR);
    pthread_mutex_lock(&d->mu);
    d->got[b] = r;
    d->err[b] = r < 0 ? errno : 0;
    d->chunk[b] = k;
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
    if (r < (ssize_t)want) break; /* an error or the end of the file */
  }
  return NULL;
}

/* The chunk buffers, kept from one read to the next: fresh 64 MiB each time is 16k page
 * faults (the kernel zeroing every page) per tensor read. One pool for the process (reads
 * this large come from rank 0's reader thread); a read that finds it taken allocates its
 * own. Freed at exit. */
static char *g_dio_pool;
static pthread_mutex_t g_dio_mu = PTHREAD_MUTEX_INITIALIZER;

static char *dio_take(int *pooled) {
  *pooled = pthread_mutex_trylock(&g_dio_mu) == 0;
  if (*pooled) {
    if (!g_dio_pool) g_dio_pool = aligned_alloc(DIRECT_ALIGN, DIO_BUFS * DIRECT_CHUNK);
    if (g_dio_pool) return g_dio_pool;
    pthread_mutex_unlock(&g_dio_mu);
    *pooled = 0;
  }
  return aligned_alloc(DIRECT_ALIGN, DIO_BUFS * DIRECT_CHUNK);
}

static void dio_give(char *p, int pooled) {
  if (pooled) pthread_mutex_unlock(&g_dio_mu);
  else free(p);
}

__attribute__((destructor)) static void dio_pool_free(void) {
  free(g_dio_pool);
  g_dio_pool = NULL;
}

/* n bytes at off of a local file into dst: O_DIRECT in aligned chunks, read ahead by two
 * threads, when the read is large and not cached, else buffered. 0, -1 (errno) or 1 (EOF)
 * as pread_full. Buffered reads with the default readahead reach a third of a virtio
 * disk's rate (tests/bench/bench_read.sh); LS_READ_DIRECT=0 keeps every read buffered. */
/* A buffered read, shown whole to `seen` (ls_src_seg_t) when it is complete. */
static int buffered_read(ls_src_t *f, void *dst, uint64_t n, uint64_t off, const ls_src_seg_t *g) {
  const int r = pread_full(f->fd, dst, n, off);
  if (r == 0 && g && g->seen) g->seen(g->ctx, dst, 0, n);
  return r;
}

static int local_read(ls_src_t *f, void *dst, uint64_t n, uint64_t off, const ls_src_seg_t *g) {
  int dfd = n >= DIRECT_MIN ? direct_fd(f) : -1;
  if (dfd < 0 || mostly_cached(f, off, n)) return buffered_read(f, dst, n, off, g);
  dio_t d;
  memset(&d, 0, sizeof d);
  d.fd = dfd;
  d.start = off / DIRECT_ALIGN * DIRECT_ALIGN;
  d.end = (off + n + DIRECT_ALIGN - 1) / DIRECT_ALIGN * DIRECT_ALIGN;
  int pooled = 0;
  char *pool = dio_take(&pooled);
  int ok = pool != NULL;
  for (int b = 0; b < DIO_BUFS; b++) {
    d.chunk[b] = -1;
    d.buf[b] = pool ? pool + (size_t)b * DIRECT_CHUNK : NULL;
  }
  pthread_mutex_init(&d.mu, NULL);
  pthread_cond_init(&d.cv, NULL);
  pthread_t th[DIO_THREADS];
  dio_arg_t args[DIO_THREADS];
  int started = 0, rc = 0, direct_failed = 0;
  for (int t = 0; t < DIO_THREADS && ok; t++) {
    args[t].d = &d;
    args[t].t = t;
    if (pthread_create(&th[t], NULL, dio_thread, &args[t]) != 0) ok = 0;
    else started++;
  }
  if (!ok) direct_failed = 1;
  char *out = dst;
  uint64_t left = n, skip = off - d.start;
  for (int64_t k = 0; ok && left > 0; k++) {
    const int b = (int)(k % DIO_BUFS);
    pthread_mutex_lock(&d.mu);
    while (d.chunk[b] != k) pthread_cond_wait(&d.cv, &d.mu);
    const ssize_t r = d.got[b];
    const int e = d.err[b];
    pthread_mutex_unlock(&d.mu);
    if (r < 0) {
      if (e == EINVAL) direct_failed = 1; /* alignment refused after all */
      else { errno = e; rc = -1; }
      break;
    }
    if ((uint64_t)r <= skip) { rc = 1; break; } /* the end of the file before the bytes */
    uint64_t got = (uint64_t)r - skip;
    if (got > left) got = left;
    memcpy(out, d.buf[b] + skip, (size_t)got);
    if (g && g->seen) g->seen(g->ctx, out, (uint64_t)(out - (char *)dst), got); /* in cache now */
    out += got;
    left -= got;
    skip = 0;
    pthread_mutex_lock(&d.mu);
    d.chunk[b] = -1;
    pthread_cond_broadcast(&d.cv);
    pthread_mutex_unlock(&d.mu);
    if (left > 0 && (uint64_t)r < DIRECT_CHUNK) { rc = 1; break; }
  }
  pthread_mutex_lock(&d.mu);
  d.stop = 1;
  for (int b = 0; b < DIO_BUFS; b++) d.chunk[b] = -1; /* nothing more is consumed */
  pthread_cond_broadcast(&d.cv);
  pthread_mutex_unlock(&d.mu);
  for (int t = 0; t < started; t++) pthread_join(th[t], NULL);
  if (pool) dio_give(pool, pooled);
  pthread_mutex_destroy(&d.mu);
  pthread_cond_destroy(&d.cv);
  if (direct_failed) { /* nothing was shown to `seen` yet: the first chunk failed */
    f->direct = -1;
    return buffered_read(f, dst, n, off, g);
  }
  return rc;
}

int ls_src_pread(ls_src_t *s, void *dst, uint64_t n, uint64_t off) {
  if (n == 0) return 0;
  if (!s->http) return local_read(s, dst, n, off, NULL);
  ls_src_seg_t seg = {off, n, dst, NULL, NULL};
  ls_src_span_t sp = {off, n, &seg, 1};
  return ls_http_read_spans(s->http, &sp, 1) == LS_OK ? 0 : LS_SRC_REPORTED;
}

int ls_src_read_spans(ls_src_t *s, const ls_src_span_t *spans, int n, const char *path) {
  if (s->http) return ls_http_read_spans(s->http, spans, n);
  for (int i = 0; i < n; i++)
    for (int k = 0; k < spans[i].n_segs; k++) {
      const ls_src_seg_t *g = &spans[i].segs[k];
      if (!g->dst) continue;
      int r = local_read(s, g->dst, g->len, g->off, g);
      if (r != 0) {
        ls_error("%s: reading bytes [%llu, +%llu) failed: %s; check the file and re-download "
                 "or re-convert the checkpoint", path, (unsigned long long)g->off,
                 (unsigned long long)g->len,
                 r < 0 ? strerror(errno) : "file changed or truncated while reading");
        return LS_ERR;
      }
    }
  return LS_OK;
}

char *ls_src_read_text(const char *loc, size_t max_bytes, size_t *len_out) {
  if (!ls_src_is_url(loc)) return ls_read_text_file(loc, max_bytes, len_out);
  ls_src_t s;
  if (ls_src_open_url(&s, loc, 0) != LS_OK) return NULL;
  char pb[512];
  if (s.size > max_bytes) {
    ls_error("%s: file is %llu bytes, larger than the %zu accepted; is this the right file?",
             ls_printable(pb, sizeof pb, loc), (unsigned long long)s.size, max_bytes);
    ls_src_close(&s);
    return NULL;
  }
  char *buf = ls_malloc((size_t)s.size + 1, "a remote text file");
  if (buf && ls_src_pread(&s, buf, s.size, 0) != 0) {
    free(buf);
    buf = NULL;
  }
  const uint64_t size = s.size;
  ls_src_close(&s);
  if (!buf) return NULL;
  buf[size] = '\0';
  if (len_out) *len_out = (size_t)size;
  return buf;
}

int ls_src_exists(const char *loc) {
  if (!ls_src_is_url(loc)) {
    struct stat st;
    return lstat(loc, &st) == 0;
  }
  ls_src_t s;
  int rc = ls_src_open_url(&s, loc, 1);
  if (rc == 1) return 0;
  if (rc != LS_OK) return LS_ERR;
  ls_src_close(&s);
  return 1;
}
