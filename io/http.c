/* http.c: range reads of remote files with libcurl, retries, the token rule and the
 * on-disk range cache (see http.h). */
#include "http.h"

#include <ctype.h>
#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ls_common.h"

#define MAX_CONN 16
#define MAX_REDIRECTS 10
#define PART_MIN ((uint64_t)4 << 20) /* a span is split into parts of at least this */
#define URL_MAX 4096

/* ---- state -------------------------------------------------------------------------- */
typedef struct {
  uint64_t off, len;
} piece_t;

struct ls_http_file {
  char url[URL_MAX];   /* as opened (messages, the cache key) */
  char loc[URL_MAX];   /* where the redirects led (reused; "" until known) */
  uint64_t size;
  char etag[256];
  char cdir[4400];     /* this file's cache directory, "" when not cached */
  piece_t *pieces;     /* cached ranges (under g.mu) */
  int n_pieces, cap_pieces;
};

static struct {
  int init, configured;
  char opt_cache[4096]; /* --http-cache as given ("" default) */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  CURL *h[MAX_CONN];
  int busy[MAX_CONN];
  int nconn, retries, backoff_ms, timeout_s;
  char token[1024];
  char endpoint[URL_MAX];
  char origin[URL_MAX]; /* scheme://host:port of the endpoint */
  char cache[4096];     /* "" = off */
  int64_t cache_max;
  uint64_t cache_total;
  ls_http_stats_t st;
  int active;           /* transfers running (for net_s) */
  double active_t0;
} g = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static int env_int(const char *name, int dflt, int lo, int hi) {
  const char *v = getenv(name);
  if (!v || !*v) return dflt;
  char *end;
  long x = strtol(v, &end, 10);
  if (*end || x < lo || x > hi) return dflt;
  return (int)x;
}

int ls_http_parse_size(const char *s, int64_t *out) {
  if (!s || !*s) return LS_ERR;
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (end == s || errno || !isdigit((unsigned char)s[0])) return LS_ERR;
  int shift = 0;
  if (*end) {
    switch (toupper((unsigned char)*end)) {
      case 'K': shift = 10; break;
      case 'M': shift = 20; break;
      case 'G': shift = 30; break;
      case 'T': shift = 40; break;
      default: return LS_ERR;
    }
    end++;
    if (*end == 'i' || *end == 'I') end++;
    if (*end == 'b' || *end == 'B') end++;
    if (*end) return LS_ERR;
  }
  if (v > ((unsigned long long)INT64_MAX >> shift)) return LS_ERR;
  *out = (int64_t)(v << shift);
  return LS_OK;
}

/* scheme://host:port (lower case) of url into out; LS_ERR if it does not parse */
static int url_origin(const char *url, char *out, size_t cap) {
  CURLU *u = curl_url();
  char *scheme = NULL, *host = NULL, *port = NULL;
  int rc = LS_ERR;
  if (u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK) {
    snprintf(out, cap, "%s://%s:%s", scheme, host, port);
    for (char *c = out; *c; c++) *c = (char)tolower((unsigned char)*c);
    rc = LS_OK;
  }
  curl_free(scheme);
  curl_free(host);
  curl_free(port);
  curl_url_cleanup(u);
  return rc;
}

static void read_token(void) {
  const char *t = getenv("HF_TOKEN");
  char buf[1024] = "";
  if (t && *t) {
    snprintf(buf, sizeof buf, "%s", t);
  } else {
    char path[4200];
    const char *hf_home = getenv("HF_HOME"), *home = getenv("HOME");
    if (hf_home && *hf_home) snprintf(path, sizeof path, "%s/token", hf_home);
    else snprintf(path, sizeof path, "%s/.cache/huggingface/token", home ? home : "");
    FILE *f = fopen(path, "r");
    if (f) {
      if (!fgets(buf, sizeof buf, f)) buf[0] = '\0';
      fclose(f);
    }
  }
  size_t n = strlen(buf);
  while (n && isspace((unsigned char)buf[n - 1])) buf[--n] = '\0';
  /* a token is printable ASCII without spaces; anything else is not sent */
  for (size_t i = 0; i < n; i++)
    if (buf[i] <= 0x20 || buf[i] >= 0x7f) { buf[0] = '\0'; break; }
  memcpy(g.token, buf, sizeof g.token);
  memset(buf, 0, sizeof buf);
}

static int mkdirs(const char *path) {
  char p[4096];
  snprintf(p, sizeof p, "%s", path);
  for (char *c = p + 1; *c; c++) {
    if (*c != '/') continue;
    *c = '\0';
    if (mkdir(p, 0755) != 0 && errno != EEXIST) return -1;
    *c = '/';
  }
  if (mkdir(p, 0755) != 0 && errno != EEXIST) return -1;
  struct stat st;
  return stat(p, &st) == 0 && S_ISDIR(st.st_mode) ? 0 : -1;
}

static void cache_scan_total(void);

void ls_http_configure(const ls_http_opts_t *o) {
  if (g.init) return;
  g.configured = 1;
  snprintf(g.opt_cache, sizeof g.opt_cache, "%s", o && o->cache_dir ? o->cache_dir : "");
  g.cache_max = o && o->cache_max >= 0 ? o->cache_max : LS_HTTP_CACHE_MAX_DEFAULT;
}

void ls_http_cache_path(char *out, size_t cap) {
  if (!g.configured) ls_http_configure(NULL);
  const char *dir = g.opt_cache;
  if (strcmp(dir, "off") == 0 || g.cache_max == 0) {
    snprintf(out, cap, "%s", "");
  } else if (*dir) {
    snprintf(out, cap, "%s", dir);
  } else {
    const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    if (xdg && *xdg) snprintf(out, cap, "%s/layersweep/http", xdg);
    else snprintf(out, cap, "%s/.cache/layersweep/http", home ? home : "");
  }
}

/* The first remote open: libcurl, the environment, the cache directory. */
static int setup(void) {
  if (g.init) return LS_OK;
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    ls_error("libcurl could not be initialised");
    return LS_ERR;
  }
  g.nconn = env_int("LS_HTTP_CONNECTIONS", 4, 1, MAX_CONN);
  g.retries = env_int("LS_HTTP_RETRIES", 6, 0, 1000);
  g.backoff_ms = env_int("LS_HTTP_BACKOFF_MS", 1000, 0, 3600000);
  g.timeout_s = env_int("LS_HTTP_TIMEOUT", 60, 1, 86400);
  const char *ep = getenv("HF_ENDPOINT");
  snprintf(g.endpoint, sizeof g.endpoint, "%s", ep && *ep ? ep : "https://huggingface.co");
  size_t el = strlen(g.endpoint);
  while (el > 0 && g.endpoint[el - 1] == '/') g.endpoint[--el] = '\0';
  if (url_origin(g.endpoint, g.origin, sizeof g.origin) != LS_OK) {
    char pb[256];
    ls_error("HF_ENDPOINT=%s is not a URL; set it to e.g. https://huggingface.co",
             ls_printable(pb, sizeof pb, g.endpoint));
    return LS_ERR;
  }
  read_token();
  ls_http_cache_path(g.cache, sizeof g.cache);
  if (g.cache[0] && mkdirs(g.cache) != 0) {
    ls_error("--http-cache %s: cannot create the directory: %s; choose another with "
             "--http-cache DIR (or --http-cache off)", g.cache, strerror(errno));
    return LS_ERR;
  }
  if (g.cache[0]) cache_scan_total();
  g.init = 1;
  return LS_OK;
}

void ls_http_shutdown(void) {
  if (!g.init) return;
  for (int i = 0; i < MAX_CONN; i++)
    if (g.h[i]) curl_easy_cleanup(g.h[i]);
  memset(g.h, 0, sizeof g.h);
  memset(g.token, 0, sizeof g.token);
  curl_global_cleanup();
  g.init = g.configured = 0;
}

const char *ls_http_cache_dir(void) { return g.cache; }
const char *ls_http_endpoint(void) {
  if (!g.init) {
    const char *ep = getenv("HF_ENDPOINT");
    return ep && *ep ? ep : "https://huggingface.co";
  }
  return g.endpoint;
}

void ls_http_get_stats(ls_http_stats_t *st) {
  pthread_mutex_lock(&g.mu);
  *st = g.st;
  pthread_mutex_unlock(&g.mu);
}

/* a connection (easy handle) of the pool, waiting for one when all are busy */
static int conn_take(void) {
  pthread_mutex_lock(&g.mu);
  int k = -1;
  for (;;) {
    for (int i = 0; i < g.nconn && k < 0; i++)
      if (!g.busy[i]) k = i;
    if (k >= 0) break;
    pthread_cond_wait(&g.cv, &g.mu);
  }
  g.busy[k] = 1;
  if (!g.h[k]) g.h[k] = curl_easy_init();
  if (g.active++ == 0) g.active_t0 = ls_now();
  pthread_mutex_unlock(&g.mu);
  return k;
}
static void conn_give(int k) {
  pthread_mutex_lock(&g.mu);
  g.busy[k] = 0;
  if (--g.active == 0) g.st.net_s += ls_now() - g.active_t0;
  pthread_cond_broadcast(&g.cv);
  pthread_mutex_unlock(&g.mu);
}

/* ---- one exchange --------------------------------------------------------------------- */
typedef struct {
  /* request */
  int head;
  uint64_t off, len;      /* range (GET) */
  const ls_src_span_t *span; /* where body bytes go (GET) */
  int piece_fd;           /* cache piece being written (-1 none) */
  uint64_t piece_off;     /* the piece's first byte */
  /* response (of the last hop) */
  long status;
  char location[URL_MAX];
  char etag[256];
  int have_crange;
  uint64_t cr_first, cr_last, cr_total;
  int64_t clen;
  uint64_t got;           /* body bytes of a 206 delivered */
  uint64_t net;           /* of them, not yet counted in g.st */
  int probe;              /* a GET of byte 0 instead of a HEAD: size and ETag from it */
  int no_range, overflow, io_err;
} xfer_t;

static void deliver(const ls_src_span_t *sp, uint64_t at, const char *p, uint64_t n) {
  /* the segment holding `at`: binary search, then walk */
  int lo = 0, hi = sp->n_segs - 1;
  while (lo < hi) {
    int mid = (lo + hi + 1) / 2;
    if (sp->segs[mid].off <= at) lo = mid;
    else hi = mid - 1;
  }
  for (int i = lo; i < sp->n_segs && n > 0; i++) {
    const ls_src_seg_t *s = &sp->segs[i];
    if (at < s->off) break; /* segments tile the span: cannot happen */
    uint64_t in = at - s->off;
    if (in >= s->len) continue;
    uint64_t k = s->len - in < n ? s->len - in : n;
    if (s->dst) memcpy((char *)s->dst + in, p, k);
    p += k;
    at += k;
    n -= k;
  }
}

static size_t on_header(char *buf, size_t size, size_t nitems, void *arg) {
  xfer_t *x = arg;
  size_t n = size * nitems;
  char line[URL_MAX + 64];
  size_t k = n < sizeof line - 1 ? n : sizeof line - 1;
  memcpy(line, buf, k);
  line[k] = '\0';
  while (k && (line[k - 1] == '\r' || line[k - 1] == '\n')) line[--k] = '\0';
  if (strncmp(line, "HTTP/", 5) == 0) { /* a new response (after a 1xx, or a hop) */
    const char *sp = strchr(line, ' ');
    x->status = sp ? strtol(sp + 1, NULL, 10) : 0;
    x->location[0] = x->etag[0] = '\0';
    x->have_crange = 0;
    x->clen = -1;
    return n;
  }
  char *colon = strchr(line, ':');
  if (!colon) return n;
  *colon = '\0';
  char *v = colon + 1;
  while (*v == ' ' || *v == '\t') v++;
  if (strcasecmp(line, "location") == 0) {
    snprintf(x->location, sizeof x->location, "%s", v);
  } else if (strcasecmp(line, "etag") == 0) {
    snprintf(x->etag, sizeof x->etag, "%s", v);
  } else if (strcasecmp(line, "content-length") == 0) {
    x->clen = strtoll(v, NULL, 10);
  } else if (strcasecmp(line, "content-range") == 0) {
    unsigned long long a, b, t;
    if (sscanf(v, "bytes %llu-%llu/%llu", &a, &b, &t) == 3) {
      x->have_crange = 1;
      x->cr_first = a;
      x->cr_last = b;
      x->cr_total = t;
    }
  }
  return n;
}

static size_t on_body(char *p, size_t size, size_t nmemb, void *arg) {
  xfer_t *x = arg;
  size_t n = size * nmemb;
  if (x->head) return n;
  if (x->status == 200) { /* the whole file instead of the range: stop at once */
    x->no_range = 1;
    return 0;
  }
  if (x->status != 206) return n; /* a redirect's or an error's body: dropped */
  if (x->got + n > x->len) {
    x->overflow = 1;
    return 0;
  }
  const uint64_t at = x->off + x->got;
  deliver(x->span, at, p, n);
  if (x->piece_fd >= 0) {
    const char *q = p;
    uint64_t left = n, pos = at - x->piece_off;
    while (left > 0) {
      ssize_t w = pwrite(x->piece_fd, q, left, (off_t)pos);
      if (w <= 0) {
        if (w < 0 && errno == EINTR) continue;
        x->io_err = 1; /* the cache copy is dropped; the read goes on */
        break;
      }
      q += w;
      pos += (uint64_t)w;
      left -= (uint64_t)w;
    }
  }
  x->got += n;
  x->net += n;
  return n;
}

enum { XR_OK, XR_RETRY, XR_FATAL, XR_MISSING, XR_NOHEAD };

/* Where f's redirects led (reused by the next requests); "" forgets it, NULL keeps it. */
static void set_loc(ls_http_file_t *f, const char *url) {
  if (!url) return;
  pthread_mutex_lock(&g.mu);
  snprintf(f->loc, sizeof f->loc, "%s", url);
  pthread_mutex_unlock(&g.mu);
}

/* One request of f (following redirects here), on connection k. Returns XR_*; why (a
 * retry's reason or a fatal message, both naming the URL) in why[]. */
static int exchange(int k, ls_http_file_t *f, xfer_t *x, char *why, size_t cap) {
  CURL *h = g.h[k];
  char url[URL_MAX];
  pthread_mutex_lock(&g.mu); /* f->loc is shared by the connections of a batch */
  snprintf(url, sizeof url, "%s", f->loc[0] ? f->loc : f->url);
  int from_loc = f->loc[0] != 0;
  pthread_mutex_unlock(&g.mu);
  char pb[512];
  for (int hop = 0; hop <= MAX_REDIRECTS; hop++) {
    char origin[URL_MAX];
    if (url_origin(url, origin, sizeof origin) != LS_OK) {
      char pu[512];
      snprintf(why, cap, "%s: the server redirected to a URL that does not parse (%s)",
               ls_printable(pu, sizeof pu, f->url), ls_printable(pb, sizeof pb, url));
      return XR_FATAL;
    }
    curl_easy_reset(h);
    struct curl_slist *hdrs = NULL;
    char range[96], auth[1100];
    if (!x->head) {
      snprintf(range, sizeof range, "Range: bytes=%" PRIu64 "-%" PRIu64, x->off + x->got,
               x->off + x->len - 1);
      hdrs = curl_slist_append(hdrs, range);
    }
    /* the token goes to the endpoint's origin only (never to where it redirects) */
    if (g.token[0] && strcmp(origin, g.origin) == 0) {
      snprintf(auth, sizeof auth, "Authorization: Bearer %s", g.token);
      hdrs = curl_slist_append(hdrs, auth);
      memset(auth, 0, sizeof auth);
    }
    hdrs = curl_slist_append(hdrs, "Accept-Encoding: identity");
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_NOBODY, x->head ? 1L : 0L);
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 15L);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, (long)g.timeout_s);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "layersweep/" LS_VERSION);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h, CURLOPT_BUFFERSIZE, 512L << 10); /* fewer, larger body callbacks */
    x->status = 0;
    x->location[0] = '\0';
    CURLcode cc = curl_easy_perform(h);
    curl_slist_free_all(hdrs);
    pthread_mutex_lock(&g.mu);
    g.st.requests++;
    g.st.net_bytes += x->net;
    x->net = 0;
    pthread_mutex_unlock(&g.mu);
    const char *shown = ls_printable(pb, sizeof pb, f->url);
    if (x->no_range) {
      snprintf(why, cap, "%s: the server does not honour range requests (it answered 200 with "
               "the whole file to a Range request); serve the model from a server that "
               "supports ranges", shown);
      return XR_FATAL;
    }
    if (x->overflow) {
      snprintf(why, cap, "%s: the server sent more bytes than the range asked for (bytes %" PRIu64
               "-%" PRIu64 "); refusing the answer", shown, x->off, x->off + x->len - 1);
      return XR_FATAL;
    }
    if (cc != CURLE_OK) {
      snprintf(why, cap, "%s: %s", shown, curl_easy_strerror(cc));
      switch (cc) {
        case CURLE_COULDNT_CONNECT: case CURLE_COULDNT_RESOLVE_HOST: case CURLE_OPERATION_TIMEDOUT:
        case CURLE_RECV_ERROR: case CURLE_SEND_ERROR: case CURLE_PARTIAL_FILE: case CURLE_GOT_NOTHING:
        case CURLE_SSL_CONNECT_ERROR: case CURLE_HTTP2: case CURLE_HTTP2_STREAM:
          return XR_RETRY;
        default:
          return XR_FATAL;
      }
    }
    long st = x->status;
    if (st == 301 || st == 302 || st == 303 || st == 307 || st == 308) {
      if (!x->location[0]) {
        snprintf(why, cap, "%s: HTTP %ld without a Location header", shown, st);
        return XR_FATAL;
      }
      CURLU *u = curl_url();
      char *next = NULL;
      int ok = u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
               curl_url_set(u, CURLUPART_URL, x->location, 0) == CURLUE_OK &&
               curl_url_get(u, CURLUPART_URL, &next, 0) == CURLUE_OK;
      if (ok) snprintf(url, sizeof url, "%s", next);
      curl_free(next);
      curl_url_cleanup(u);
      if (!ok || (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0)) {
        snprintf(why, cap, "%s: redirected to a location that is not an http(s) URL", shown);
        return XR_FATAL;
      }
      continue;
    }
    if (st == 404 || st == 410) {
      if (from_loc) { /* a redirect target that expired: ask the original URL again */
        set_loc(f, "");
        snprintf(why, cap, "%s: HTTP %ld at the redirected location", shown, st);
        return XR_RETRY;
      }
      snprintf(why, cap, "%s: HTTP %ld Not Found; check the URL or hub id (and the revision)",
               shown, st);
      return XR_MISSING;
    }
    if (st == 401 || st == 403) {
      if (from_loc) {
        set_loc(f, "");
        snprintf(why, cap, "%s: HTTP %ld at the redirected location", shown, st);
        return XR_RETRY;
      }
      snprintf(why, cap, "%s: HTTP %ld %s; a gated or private model needs a token: set HF_TOKEN "
               "(or log in with the Hugging Face tools) and check that it has access", shown, st,
               st == 401 ? "Unauthorized" : "Forbidden");
      return XR_FATAL;
    }
    if (st == 429 || st >= 500) {
      snprintf(why, cap, "%s: HTTP %ld", shown, st);
      return XR_RETRY;
    }
    if (x->head) {
      if (st == 405 || st == 501) return XR_NOHEAD; /* the caller asks for byte 0 instead */
      if (st != 200) {
        snprintf(why, cap, "%s: HTTP %ld to a HEAD request; expected 200", shown, st);
        return XR_FATAL;
      }
      set_loc(f, hop > 0 ? url : NULL);
      return XR_OK;
    }
    if (st != 206) {
      snprintf(why, cap, "%s: HTTP %ld to a range request (bytes %" PRIu64 "-%" PRIu64 "); "
               "expected 206 Partial Content", shown, st, x->off, x->off + x->len - 1);
      return XR_FATAL;
    }
    /* 206: the range and the file are checked by the caller */
    set_loc(f, hop > 0 ? url : NULL);
    return XR_OK;
  }
  snprintf(why, cap, "%s: more than %d redirects", ls_printable(pb, sizeof pb, f->url),
           MAX_REDIRECTS);
  return XR_FATAL;
}

/* A GET of [off, off + len) with retries and the checks of every 206; or a HEAD. LS_OK,
 * 1 (missing, HEAD with missing_ok), or LS_ERR with the message in why. */
static int request(ls_http_file_t *f, xfer_t *x, int missing_ok, char *why, size_t cap) {
  int k = conn_take();
  int rc = LS_ERR;
  char pb[512];
  for (int attempt = 0;; attempt++) {
    const uint64_t start = x->off + x->got;
    x->no_range = x->overflow = 0;
    int r = exchange(k, f, x, why, cap);
    if (r == XR_OK && !x->head) {
      const char *shown = ls_printable(pb, sizeof pb, f->url);
      const uint64_t end = x->off + x->len - 1;
      if (!x->have_crange || x->cr_first != start || x->cr_last != end) {
        snprintf(why, cap, "%s: the server answered the range %" PRIu64 "-%" PRIu64 " with %s%"
                 PRIu64 "-%" PRIu64 "; refusing a wrong Content-Range", shown, start, end,
                 x->have_crange ? "" : "no Content-Range, or ", x->cr_first, x->cr_last);
        r = XR_FATAL;
      } else if (x->probe) { /* the file's size and ETag, from a GET of its first byte */
        f->size = x->cr_total;
        snprintf(f->etag, sizeof f->etag, "%s", x->etag);
      } else if (x->cr_total != f->size || (f->etag[0] && x->etag[0] && strcmp(f->etag, x->etag))) {
        snprintf(why, cap, "%s: the file changed on the server during the run (size %" PRIu64
                 " -> %" PRIu64 ", ETag %s -> %s); rerun when the model is stable", shown,
                 f->size, x->cr_total, f->etag, x->etag);
        r = XR_FATAL;
      } else if (x->got != x->len) {
        snprintf(why, cap, "%s: short read: %" PRIu64 " of %" PRIu64 " bytes of the range", shown,
                 x->got, x->len);
        r = XR_RETRY;
      }
    }
    if (r == XR_OK) { rc = LS_OK; break; }
    if (r == XR_MISSING) { rc = missing_ok && (x->head || x->probe) ? 1 : LS_ERR; break; }
    if (r == XR_NOHEAD) { rc = 2; break; }
    if (r == XR_FATAL) break;
    if (attempt >= g.retries) {
      size_t l = strlen(why);
      snprintf(why + l, cap - l, "; gave up after %d retries (LS_HTTP_RETRIES)", g.retries);
      break;
    }
    double wait = g.backoff_ms / 1000.0 * (double)(1u << (attempt < 16 ? attempt : 16));
    if (wait > 60) wait = 60;
    ls_warn("%s; retry %d of %d in %.1f s", why, attempt + 1, g.retries, wait);
    pthread_mutex_lock(&g.mu);
    g.st.retries++;
    pthread_mutex_unlock(&g.mu);
    struct timespec ts = {(time_t)wait, (long)((wait - (double)(time_t)wait) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
  }
  conn_give(k);
  return rc;
}

/* ---- the cache -------------------------------------------------------------------------------- */
static int cmp_piece(const void *a, const void *b) {
  const piece_t *x = a, *y = b;
  return x->off < y->off ? -1 : x->off > y->off ? 1 : (x->len < y->len ? -1 : x->len > y->len);
}

static void piece_path(const ls_http_file_t *f, uint64_t off, uint64_t len, char *out, size_t cap) {
  snprintf(out, cap, "%s/%016" PRIx64 "-%016" PRIx64, f->cdir, off, len);
}

typedef struct {
  char path[4700];
  time_t mtime;
  uint64_t size;
} entry_t;

static int cmp_entry(const void *a, const void *b) {
  const entry_t *x = a, *y = b;
  return x->mtime < y->mtime ? -1 : x->mtime > y->mtime;
}

/* Every piece of the cache (all files), oldest use first; *n entries (malloc'd). */
static entry_t *cache_list(int *n) {
  *n = 0;
  int cap = 0;
  entry_t *v = NULL;
  DIR *top = opendir(g.cache);
  if (!top) return NULL;
  struct dirent *d;
  while ((d = readdir(top))) {
    if (d->d_name[0] == '.') continue;
    char sub[4400];
    snprintf(sub, sizeof sub, "%s/%s", g.cache, d->d_name);
    DIR *dd = opendir(sub);
    if (!dd) continue;
    struct dirent *e;
    while ((e = readdir(dd))) {
      unsigned long long a, b;
      if (strlen(e->d_name) != 33 || sscanf(e->d_name, "%16llx-%16llx", &a, &b) != 2) continue;
      if (*n == cap) {
        cap = cap ? 2 * cap : 256;
        entry_t *nv = realloc(v, sizeof *v * (size_t)cap);
        if (!nv) break;
        v = nv;
      }
      entry_t *en = &v[*n];
      snprintf(en->path, sizeof en->path, "%s/%s", sub, e->d_name);
      struct stat st;
      if (stat(en->path, &st) != 0) continue;
      en->mtime = st.st_mtime;
      en->size = (uint64_t)st.st_size;
      (*n)++;
    }
    closedir(dd);
  }
  closedir(top);
  if (*n > 1) qsort(v, (size_t)*n, sizeof *v, cmp_entry);
  return v;
}

static void cache_scan_total(void) {
  int n;
  entry_t *v = cache_list(&n);
  g.cache_total = 0;
  for (int i = 0; i < n; i++) g.cache_total += v[i].size;
  free(v);
}

/* Drop the least recently used pieces until the cache is within its bound (under g.mu). */
static void cache_evict(void) {
  if (g.cache_total <= (uint64_t)g.cache_max) return;
  int n;
  entry_t *v = cache_list(&n);
  uint64_t total = 0;
  for (int i = 0; i < n; i++) total += v[i].size;
  for (int i = 0; i < n && total > (uint64_t)g.cache_max; i++)
    if (unlink(v[i].path) == 0) total -= v[i].size;
  g.cache_total = total;
  free(v);
}

static void file_add_piece(ls_http_file_t *f, uint64_t off, uint64_t len) {
  if (f->n_pieces == f->cap_pieces) {
    int cap = f->cap_pieces ? 2 * f->cap_pieces : 64;
    piece_t *nv = realloc(f->pieces, sizeof *nv * (size_t)cap);
    if (!nv) return;
    f->pieces = nv;
    f->cap_pieces = cap;
  }
  f->pieces[f->n_pieces++] = (piece_t){off, len};
  qsort(f->pieces, (size_t)f->n_pieces, sizeof *f->pieces, cmp_piece);
}

/* The cache directory of f: pieces of another ETag / size are removed first. */
static void cache_open_file(ls_http_file_t *f) {
  f->cdir[0] = '\0';
  if (!g.cache[0]) return;
  uint64_t h = ls_fnv1a(LS_FNV_INIT, f->url, strlen(f->url));
  snprintf(f->cdir, sizeof f->cdir, "%s/%016" PRIx64, g.cache, h);
  if (mkdirs(f->cdir) != 0) {
    ls_warn("%s: cannot create the cache directory (%s); reading without the cache", f->cdir,
            strerror(errno));
    f->cdir[0] = '\0';
    return;
  }
  char meta[4500], want[URL_MAX + 600], have[URL_MAX + 600] = "";
  snprintf(meta, sizeof meta, "%s/meta", f->cdir);
  snprintf(want, sizeof want, "%s\n%s\n%" PRIu64 "\n", f->url, f->etag, f->size);
  FILE *mf = fopen(meta, "r");
  if (mf) {
    size_t r = fread(have, 1, sizeof have - 1, mf);
    have[r] = '\0';
    fclose(mf);
  }
  DIR *dd = opendir(f->cdir);
  int stale = strcmp(have, want) != 0;
  if (stale && have[0]) {
    char pb[512];
    ls_info("%s changed on the server (ETag or size): its cached ranges are dropped",
            ls_printable(pb, sizeof pb, f->url));
  }
  struct dirent *e;
  pthread_mutex_lock(&g.mu);
  while (dd && (e = readdir(dd))) {
    unsigned long long a, b;
    if (strlen(e->d_name) != 33 || sscanf(e->d_name, "%16llx-%16llx", &a, &b) != 2) continue;
    char p[4500];
    snprintf(p, sizeof p, "%s/%s", f->cdir, e->d_name);
    struct stat st;
    if (stale || stat(p, &st) != 0 || (uint64_t)st.st_size != b || a + b > f->size) {
      if (stat(p, &st) == 0 && g.cache_total >= (uint64_t)st.st_size) g.cache_total -= (uint64_t)st.st_size;
      unlink(p);
      continue;
    }
    file_add_piece(f, a, b);
  }
  pthread_mutex_unlock(&g.mu);
  if (dd) closedir(dd);
  if (stale) {
    char tmp[4600];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", meta, (int)getpid());
    FILE *w = fopen(tmp, "w");
    if (!w || fputs(want, w) < 0 || fclose(w) != 0 || rename(tmp, meta) != 0) {
      if (w) unlink(tmp);
      f->cdir[0] = '\0';
    }
  }
}

/* Serve span sp from a cached piece holding all of it: 1 served, 0 not cached. */
static int cache_read(ls_http_file_t *f, const ls_src_span_t *sp) {
  if (!f->cdir[0]) return 0;
  pthread_mutex_lock(&g.mu);
  int hit = -1;
  for (int i = 0; i < f->n_pieces && hit < 0; i++)
    if (f->pieces[i].off <= sp->off && f->pieces[i].off + f->pieces[i].len >= sp->off + sp->len)
      hit = i;
  piece_t p = hit >= 0 ? f->pieces[hit] : (piece_t){0, 0};
  pthread_mutex_unlock(&g.mu);
  if (hit < 0) return 0;
  char path[4500];
  piece_path(f, p.off, p.len, path, sizeof path);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  int ok = 1;
  for (int i = 0; i < sp->n_segs && ok; i++) {
    const ls_src_seg_t *s = &sp->segs[i];
    if (!s->dst) continue;
    char *d = s->dst;
    uint64_t left = s->len, at = s->off - p.off;
    while (left > 0 && ok) {
      ssize_t r = pread(fd, d, left, (off_t)at);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) ok = 0;
      else { d += r; at += (uint64_t)r; left -= (uint64_t)r; }
    }
  }
  if (ok) futimens(fd, NULL); /* its last use, for the LRU order */
  close(fd);
  if (!ok) return 0;
  pthread_mutex_lock(&g.mu);
  g.st.cache_bytes += sp->len;
  pthread_mutex_unlock(&g.mu);
  return 1;
}

/* ---- open, batches of spans ------------------------------------------------------------------ */
int ls_http_open(ls_src_t *s, const char *url, int missing_ok) {
  memset(s, 0, sizeof *s);
  s->fd = -1;
  char pb[512];
  if (!g.init && setup()) return LS_ERR;
  if (strlen(url) >= URL_MAX) {
    ls_error("%s: URL too long", ls_printable(pb, sizeof pb, url));
    return LS_ERR;
  }
  ls_http_file_t *f = calloc(1, sizeof *f);
  if (!f) {
    ls_error("out of memory opening %s", ls_printable(pb, sizeof pb, url));
    return LS_ERR;
  }
  snprintf(f->url, sizeof f->url, "%s", url);
  xfer_t x;
  memset(&x, 0, sizeof x);
  x.head = 1;
  x.piece_fd = -1;
  char why[2048];
  int rc = request(f, &x, missing_ok, why, sizeof why);
  if (rc == 2) { /* no HEAD here (405, 501): the first byte, by a range request */
    unsigned char b0;
    ls_src_seg_t seg = {0, 1, &b0, NULL, NULL};
    ls_src_span_t sp = {0, 1, &seg, 1};
    memset(&x, 0, sizeof x);
    x.len = 1;
    x.span = &sp;
    x.piece_fd = -1;
    x.probe = 1;
    rc = request(f, &x, missing_ok, why, sizeof why);
    x.clen = rc == LS_OK ? (int64_t)f->size : -1;
  }
  if (rc != LS_OK) {
    if (rc < 0) ls_error("%s", why);
    free(f);
    return rc;
  }
  if (x.clen < 0) {
    ls_error("%s: the server gave no Content-Length; cannot read it by ranges",
             ls_printable(pb, sizeof pb, url));
    free(f);
    return LS_ERR;
  }
  f->size = (uint64_t)x.clen;
  if (!x.probe) snprintf(f->etag, sizeof f->etag, "%s", x.etag);
  cache_open_file(f);
  s->http = f;
  s->size = f->size;
  snprintf(s->etag, sizeof s->etag, "%s", f->etag);
  return LS_OK;
}

void ls_http_close(ls_http_file_t *f) {
  if (!f) return;
  free(f->pieces);
  free(f);
}

typedef struct {
  int span;           /* index into the batch */
  uint64_t off, len;  /* the part */
} part_t;

typedef struct {
  ls_http_file_t *f;
  const ls_src_span_t *spans;
  part_t *parts;
  int n_parts, next;
  int *piece_fd;      /* per span: cache piece being written, or -1 */
  int *left;          /* per span: parts not done */
  int *bad;           /* per span: the cache copy failed */
  pthread_mutex_t mu;
  int failed;
  char msg[2048];
} batch_t;

static void span_done(batch_t *b, int si) {
  ls_http_file_t *f = b->f;
  const ls_src_span_t *sp = &b->spans[si];
  int fd = b->piece_fd[si];
  if (fd < 0) return;
  char tmp[4600], path[4500];
  piece_path(f, sp->off, sp->len, path, sizeof path);
  snprintf(tmp, sizeof tmp, "%s.tmp.%d.%d", path, (int)getpid(), si);
  int ok = !b->bad[si] && close(fd) == 0;
  if (b->bad[si]) close(fd);
  b->piece_fd[si] = -1;
  if (ok && rename(tmp, path) == 0) {
    pthread_mutex_lock(&g.mu);
    file_add_piece(f, sp->off, sp->len);
    g.cache_total += sp->len;
    cache_evict();
    pthread_mutex_unlock(&g.mu);
  } else {
    unlink(tmp);
  }
}

static void *batch_worker(void *arg) {
  batch_t *b = arg;
  for (;;) {
    pthread_mutex_lock(&b->mu);
    int i = b->failed || b->next >= b->n_parts ? -1 : b->next++;
    pthread_mutex_unlock(&b->mu);
    if (i < 0) break;
    const part_t *p = &b->parts[i];
    const ls_src_span_t *sp = &b->spans[p->span];
    xfer_t x;
    memset(&x, 0, sizeof x);
    x.off = p->off;
    x.len = p->len;
    x.span = sp;
    x.piece_fd = b->piece_fd[p->span];
    x.piece_off = sp->off;
    char why[2048];
    int rc = request(b->f, &x, 0, why, sizeof why);
    pthread_mutex_lock(&b->mu);
    if (rc != LS_OK && !b->failed) {
      b->failed = 1;
      snprintf(b->msg, sizeof b->msg, "%s", why);
    }
    if (x.io_err) b->bad[p->span] = 1;
    int last = rc == LS_OK && --b->left[p->span] == 0;
    pthread_mutex_unlock(&b->mu);
    if (last) span_done(b, p->span);
  }
  return NULL;
}

int ls_http_read_spans(ls_http_file_t *f, const ls_src_span_t *spans, int n) {
  if (n <= 0) return LS_OK;
  batch_t b;
  memset(&b, 0, sizeof b);
  b.f = f;
  b.spans = spans;
  b.piece_fd = calloc((size_t)n, sizeof(int));
  b.left = calloc((size_t)n, sizeof(int));
  b.bad = calloc((size_t)n, sizeof(int));
  int cap = 0;
  int rc = b.piece_fd && b.left && b.bad ? LS_OK : LS_ERR;
  for (int i = 0; i < n && rc == LS_OK; i++) {
    b.piece_fd[i] = -1;
    const ls_src_span_t *sp = &spans[i];
    if (sp->len == 0 || cache_read(f, sp)) continue;
    if (sp->off > f->size || sp->len > f->size - sp->off) {
      char pb[512];
      ls_error("%s: read of bytes [%" PRIu64 ", +%" PRIu64 ") past its %" PRIu64 " bytes "
               "(internal error)", ls_printable(pb, sizeof pb, f->url), sp->off, sp->len, f->size);
      rc = LS_ERR;
      break;
    }
    /* parts: a large span goes over every connection */
    uint64_t part = (sp->len + (uint64_t)g.nconn - 1) / (uint64_t)g.nconn;
    if (part < PART_MIN) part = PART_MIN;
    int np = (int)((sp->len + part - 1) / part);
    if (b.n_parts + np > cap) {
      cap = 2 * (b.n_parts + np) + 16;
      part_t *nv = realloc(b.parts, sizeof *nv * (size_t)cap);
      if (!nv) { rc = LS_ERR; ls_error("out of memory for a read of %s", f->url); break; }
      b.parts = nv;
    }
    for (int k = 0; k < np; k++) {
      uint64_t o = sp->off + (uint64_t)k * part;
      uint64_t l = sp->len - (uint64_t)k * part < part ? sp->len - (uint64_t)k * part : part;
      b.parts[b.n_parts++] = (part_t){i, o, l};
    }
    b.left[i] = np;
    if (f->cdir[0] && (int64_t)sp->len <= g.cache_max) {
      char path[4500], tmp[4600];
      piece_path(f, sp->off, sp->len, path, sizeof path);
      snprintf(tmp, sizeof tmp, "%s.tmp.%d.%d", path, (int)getpid(), i);
      b.piece_fd[i] = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    }
  }
  if (rc == LS_OK && b.n_parts > 0) {
    pthread_mutex_init(&b.mu, NULL);
    int nt = b.n_parts < g.nconn ? b.n_parts : g.nconn;
    pthread_t th[MAX_CONN];
    int started = 0;
    for (int t = 1; t < nt; t++)
      if (pthread_create(&th[started], NULL, batch_worker, &b) == 0) started++;
    batch_worker(&b);
    for (int t = 0; t < started; t++) pthread_join(th[t], NULL);
    pthread_mutex_destroy(&b.mu);
    if (b.failed) {
      ls_error("%s", b.msg);
      rc = LS_ERR;
    }
  }
  for (int i = 0; b.piece_fd && i < n; i++)
    if (b.piece_fd[i] >= 0) { /* a failed span: its partial piece goes */
      char path[4500], tmp[4600];
      piece_path(f, spans[i].off, spans[i].len, path, sizeof path);
      snprintf(tmp, sizeof tmp, "%s.tmp.%d.%d", path, (int)getpid(), i);
      close(b.piece_fd[i]);
      unlink(tmp);
    }
  free(b.parts);
  free(b.piece_fd);
  free(b.left);
  free(b.bad);
  return rc;
}
