/* ls_common.c: error reporting and small helpers (see ls_common.h). */
#include "ls_common.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <time.h>

static int g_rank = 0, g_size = 1, g_quiet = 0;
/* Deferral is per thread: rank 0's weight reader thread keeps its own first error
 * (ls_error_take) while the main thread defers around a collective step. */
static _Thread_local int g_defer = 0;
static _Thread_local char g_deferred[2048];

void ls_log_set_rank(int rank, int size) { g_rank = rank; g_size = size; }
void ls_error_set_quiet(int quiet) { g_quiet = quiet; }

static void vlog(const char *kind, const char *fmt, va_list ap) {
  char msg[2048];
  vsnprintf(msg, sizeof msg, fmt, ap);
  if (g_size > 1)
    fprintf(stderr, "layersweep[rank %d]: %s%s\n", g_rank, kind, msg);
  else
    fprintf(stderr, "layersweep: %s%s\n", kind, msg);
  fflush(stderr);
}

void ls_error(const char *fmt, ...) {
  if (g_quiet) return;
  va_list ap;
  va_start(ap, fmt);
  if (g_defer) {
    if (!g_deferred[0]) vsnprintf(g_deferred, sizeof g_deferred, fmt, ap);
  } else {
    vlog("error: ", fmt, ap);
  }
  va_end(ap);
}

void ls_error_defer(int on) {
  g_defer = on;
  if (on) g_deferred[0] = '\0';
}

int ls_error_pending(void) { return g_deferred[0] != '\0'; }

void ls_error_release(int print) {
  char msg[2048];
  snprintf(msg, sizeof msg, "%s", g_deferred);
  g_deferred[0] = '\0';
  g_defer = 0;
  if (print && msg[0]) ls_error("%s", msg);
}

int ls_error_take(char *buf, size_t cap) {
  int had = g_deferred[0] != '\0';
  if (cap) snprintf(buf, cap, "%s", g_deferred);
  g_deferred[0] = '\0';
  return had;
}

void ls_warn(const char *fmt, ...) {
  if (g_rank != 0) return;
  va_list ap;
  va_start(ap, fmt);
  vlog("warning: ", fmt, ap);
  va_end(ap);
}

void ls_info(const char *fmt, ...) {
  if (g_rank != 0) return;
  va_list ap;
  va_start(ap, fmt);
  char msg[2048];
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fprintf(stderr, "%s\n", msg);
  fflush(stderr);
}

char *ls_printable(char *dst, size_t cap, const char *src) {
  if (!cap) return dst;
  snprintf(dst, cap, "%s", src ? src : "(null)");
  for (char *c = dst; *c; c++)
    if (*c < 0x20 || *c >= 0x7f) *c = '?';
  return dst;
}

void *ls_malloc(size_t bytes, const char *what) {
  void *p = malloc(bytes ? bytes : 1);
  if (!p) ls_error("out of memory allocating %zu bytes for %s", bytes, what);
  return p;
}

void *ls_calloc(size_t n, size_t size, const char *what) {
  void *p = calloc(n ? n : 1, size ? size : 1);
  if (!p) ls_error("out of memory allocating %zu x %zu bytes for %s", n, size, what);
  return p;
}

void *ls_aligned_alloc_to(size_t bytes, size_t align, const char *what) {
  void *p = NULL;
  if (posix_memalign(&p, align, bytes ? bytes : align) != 0) {
    ls_error("out of memory allocating %zu bytes for %s", bytes, what);
    return NULL;
  }
  return p;
}

void *ls_aligned_alloc(size_t bytes, const char *what) { return ls_aligned_alloc_to(bytes, 64, what); }

uint64_t ls_fnv1a(uint64_t h, const void *data, size_t n) {
  const unsigned char *p = data;
  for (size_t i = 0; i < n; i++) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

double ls_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

char *ls_read_text_file(const char *path, size_t max_bytes, size_t *len_out) {
  /* O_NONBLOCK so that a FIFO where a file should be fails the S_ISREG check below
   * instead of blocking the open forever */
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  FILE *f = fd >= 0 ? fdopen(fd, "rb") : NULL;
  if (!f) {
    ls_error("%s: cannot open: %s; check the path", path, strerror(errno));
    if (fd >= 0) close(fd);
    return NULL;
  }
  struct stat st;
  if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
    ls_error("%s: not a regular file", path);
    fclose(f);
    return NULL;
  }
  if ((uint64_t)st.st_size > max_bytes) {
    ls_error("%s: file is %lld bytes, larger than the %zu accepted; is this the right file?",
             path, (long long)st.st_size, max_bytes);
    fclose(f);
    return NULL;
  }
  size_t n = (size_t)st.st_size;
  char *buf = ls_malloc(n + 1, path);
  if (!buf) { fclose(f); return NULL; }
  if (n && fread(buf, 1, n, f) != n) {
    ls_error("%s: read failed: %s", path, strerror(errno));
    free(buf);
    fclose(f);
    return NULL;
  }
  fclose(f);
  buf[n] = '\0';
  if (len_out) *len_out = n;
  return buf;
}

static const char *g_wait_others; /* read by the watchdog's thread: atomic loads / stores */
void ls_wait_others(const char *what) { __atomic_store_n(&g_wait_others, what, __ATOMIC_RELEASE); }
const char *ls_waiting_others(void) { return __atomic_load_n(&g_wait_others, __ATOMIC_ACQUIRE); }

void ls_existing_dir(const char *path, char *out, size_t cap) {
  struct stat st;
  snprintf(out, cap, "%s", path);
  while (stat(out, &st) != 0) {
    char *slash = strrchr(out, '/');
    if (!slash) { snprintf(out, cap, "."); return; }
    if (slash == out) { snprintf(out, cap, "/"); return; }
    *slash = '\0';
  }
}
