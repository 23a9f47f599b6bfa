/* source.c: local-file and HTTP byte-range sources behind one call set (see source.h). */
#include "source.h"

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

int ls_src_pread(ls_src_t *s, void *dst, uint64_t n, uint64_t off) {
  if (n == 0) return 0;
  if (!s->http) return pread_full(s->fd, dst, n, off);
  ls_src_seg_t seg = {off, n, dst};
  ls_src_span_t sp = {off, n, &seg, 1};
  return ls_http_read_spans(s->http, &sp, 1) == LS_OK ? 0 : LS_SRC_REPORTED;
}

int ls_src_read_spans(ls_src_t *s, const ls_src_span_t *spans, int n, const char *path) {
  if (s->http) return ls_http_read_spans(s->http, spans, n);
  for (int i = 0; i < n; i++)
    for (int k = 0; k < spans[i].n_segs; k++) {
      const ls_src_seg_t *g = &spans[i].segs[k];
      if (!g->dst) continue;
      int r = pread_full(s->fd, g->dst, g->len, g->off);
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
