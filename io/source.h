/* source.h: a byte-range source, the one way the model's files are read: a local file
 * (pread on an fd) or a remote file over HTTP(S) (range requests through io/http.c and
 * its on-disk cache). The safetensors reader validates both through the same code, and
 * reads tensors as spans: contiguous byte ranges of a file whose bytes are scattered into
 * the caller's buffers (bytes between wanted tensors dropped), so that a layer's tensors
 * go over the network as a few large ranges. */
#ifndef LS_SOURCE_H
#define LS_SOURCE_H

#include <stddef.h>
#include <stdint.h>

/* ls_src_pread's "already reported" result (an HTTP failure names its URL itself) */
#define LS_SRC_REPORTED (-2)

typedef struct ls_http_file ls_http_file_t;

typedef struct {
  int fd;               /* local file, else -1 */
  ls_http_file_t *http; /* remote file, else NULL */
  uint64_t size;
  char etag[256];       /* remote: the server's ETag ("" for a local file) */
  int direct;           /* local reads >= 4 MiB not in the page cache: 0 not tried yet, 1
                         * through dfd (O_DIRECT, a reopen of fd), -1 buffered */
  int dfd;
} ls_src_t;

/* Bytes [off, off + len) of a source go to dst (NULL: read and dropped). When `seen` is
 * set, a local read calls it on the bytes as they land in dst (at: their offset in the
 * segment), in order and in pieces, while the later bytes are still being read (so work
 * on them overlaps the disk); a remote read does not call it: the caller counts the bytes
 * it was shown. */
typedef struct {
  uint64_t off, len;
  void *dst;
  void (*seen)(void *ctx, const void *p, uint64_t at, uint64_t len);
  void *ctx;
} ls_src_seg_t;

/* A contiguous range of a source: segs tile [off, off + len) in order. */
typedef struct {
  uint64_t off, len;
  const ls_src_seg_t *segs;
  int n_segs;
} ls_src_span_t;

/* 1 if loc is an http:// or https:// URL. */
int ls_src_is_url(const char *loc);

/* Open a remote file (loc a URL): its size and ETag from the server. With missing_ok,
 * a file the server does not have (404) returns 1 quietly; else LS_OK, or LS_ERR after
 * one message naming the URL. */
int ls_src_open_url(ls_src_t *s, const char *url, int missing_ok);
/* A local file already open read-only (fd is owned by the source from now on). */
void ls_src_from_fd(ls_src_t *s, int fd, uint64_t size);
void ls_src_close(ls_src_t *s);

/* Exactly n bytes at off into dst: 0, -1 (errno) or 1 (end of file) for a local file,
 * LS_SRC_REPORTED for a remote failure (reported). */
int ls_src_pread(ls_src_t *s, void *dst, uint64_t n, uint64_t off);
/* Every span (LS_OK, or LS_ERR after one message naming `path`); a local file reads
 * only the segments with a destination. */
int ls_src_read_spans(ls_src_t *s, const ls_src_span_t *spans, int n, const char *path);

/* A whole small text file (config.json, the shard index), local or remote: malloc'd,
 * NUL-terminated, NULL after one message. */
char *ls_src_read_text(const char *loc, size_t max_bytes, size_t *len_out);
/* 1 if loc exists (a local path: lstat; a URL: the server has it), 0 if not, LS_ERR
 * after a message (a remote failure other than 404). */
int ls_src_exists(const char *loc);

#endif
