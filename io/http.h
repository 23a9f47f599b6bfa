/* http.h: remote model files over HTTP(S) with libcurl (rank 0 only).
 *
 * A file's size and ETag come from a HEAD (or, from a server refusing HEAD with 405 / 501,
 * from a range GET of its first byte). Every read is a range request (a server answering
 * 200 instead of 206 is refused):
 * keep-alive connections, one persistent easy handle per connection, a batch of spans
 * spread over a few connections (a large span split into parts). Redirects are followed
 * here, not by curl, so that the Hugging Face token (HF_TOKEN, else the token file the
 * HF tools write) goes only to HF_ENDPOINT's own origin, never to a host a redirect
 * names (the hub's CDN). The token is never printed or stored.
 * Faults: timeouts, resets, short bodies, 5xx and 429 are retried with exponential
 * backoff (LS_HTTP_RETRIES times, default 6; one line per retry); 4xx is refused naming
 * the URL; a wrong Content-Range, or an ETag / size that changed since the file was
 * opened, is an error.
 * Cache: the byte ranges read, per file (URL), in --http-cache DIR, bounded by
 * --http-cache-max (least recently used ranges dropped first); a file whose ETag or size
 * on the server changed loses its cached ranges.
 * Test switches (environment): LS_HTTP_RETRIES, LS_HTTP_BACKOFF_MS (first backoff,
 * default 1000), LS_HTTP_TIMEOUT (seconds without a byte before a transfer is retried,
 * default 60), LS_HTTP_CONNECTIONS (default 4). */
#ifndef LS_HTTP_H
#define LS_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "source.h"

#define LS_HTTP_CACHE_MAX_DEFAULT ((int64_t)50 << 30)

typedef struct {
  const char *cache_dir; /* NULL or "": $XDG_CACHE_HOME/layersweep/http, else
                          * ~/.cache/layersweep/http; "off": no cache */
  int64_t cache_max;     /* bytes (< 0: 50 GiB; 0: nothing is cached) */
} ls_http_opts_t;

typedef struct {
  uint64_t net_bytes;   /* body bytes received from servers */
  uint64_t cache_bytes; /* bytes served from the cache */
  uint64_t requests, retries;
  double net_s;         /* wall seconds with at least one transfer running */
} ls_http_stats_t;

/* Options for the remote opens to come (no effect after the first one). libcurl, the
 * token and the cache directory are set up at the first remote open (a local model
 * never creates a cache directory). */
void ls_http_configure(const ls_http_opts_t *o);
/* Release connections (and forget the token); the next remote open sets up again. */
void ls_http_shutdown(void);
/* The cache directory the options name ("" when caching is off), not created. */
void ls_http_cache_path(char *out, size_t cap);
/* The cache directory in use ("" when none) */
const char *ls_http_cache_dir(void);
void ls_http_get_stats(ls_http_stats_t *st);

/* The URL of the hub's file: HF_ENDPOINT (default https://huggingface.co) + path */
const char *ls_http_endpoint(void);

/* See ls_src_open_url. */
int ls_http_open(ls_src_t *s, const char *url, int missing_ok);
void ls_http_close(ls_http_file_t *f);
int ls_http_read_spans(ls_http_file_t *f, const ls_src_span_t *spans, int n);

/* "--http-cache-max" values: a byte count with an optional K, M, G or T suffix (powers
 * of 1024). LS_OK or LS_ERR (no message). */
int ls_http_parse_size(const char *s, int64_t *out);

#endif
