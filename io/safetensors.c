/* safetensors.c: validated safetensors reader and writer (see safetensors.h).
 *
 * File layout: [u64 little-endian N][N bytes of JSON header][data area]. The header
 * maps tensor name -> {"dtype", "shape", "data_offsets": [begin, end)} with offsets
 * relative to the data area, plus an optional "__metadata__" object of strings.
 * Everything read from disk is treated as hostile: every number is range-checked,
 * every product overflow-checked, and the tensor spans must tile the data area
 * exactly. Error messages are one line naming the file and tensor, plus a hint. */
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ls_common.h"

#define HINT_REDOWNLOAD "re-download or re-convert the checkpoint"
#define INDEX_NAME "model.safetensors.index.json"
#define SINGLE_NAME "model.safetensors"
#define INDEX_MAX_BYTES ((size_t)64 << 20)
/* Largest integer a JSON number (parsed as a double by cJSON) carries exactly. */
#define JSON_INT_MAX 9007199254740992.0 /* 2^53 */

/* ---- small helpers ----------------------------------------------------------- */

/* Copy an untrusted string for a message: printable ASCII only, at most ~80 chars,
 * so a hostile name cannot break the one-line error format. */
static const char *clean(const char *s, char *buf, size_t cap) {
  size_t i = 0, j = 0;
  if (!s) s = "(null)";
  for (; s[i] && j + 4 < cap && i < 80; i++)
    buf[j++] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
  if (s[i] && j + 4 <= cap) { memcpy(buf + j, "...", 3); j += 3; }
  buf[j] = '\0';
  return buf;
}

static int pwrite_full(int fd, const void *src, uint64_t n, uint64_t off) {
  const char *p = src;
  while (n > 0) {
    size_t chunk = n > ((uint64_t)1 << 30) ? ((size_t)1 << 30) : (size_t)n;
    ssize_t r = pwrite(fd, p, chunk, (off_t)off);
    if (r < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (r == 0) { errno = EIO; return -1; }
    p += r;
    n -= (uint64_t)r;
    off += (uint64_t)r;
  }
  return 0;
}

/* JSON number -> exact non-negative integer (at most 2^53, the exact range of the
 * double cJSON stores). Returns 0 or -1. */
static int json_uint(const cJSON *v, uint64_t *out) {
  if (!cJSON_IsNumber(v)) return -1;
  double d = v->valuedouble;
  if (!(d >= 0.0 && d <= JSON_INT_MAX)) return -1;
  uint64_t u = (uint64_t)d;
  if ((double)u != d) return -1;
  *out = u;
  return 0;
}

/* ---- header parsing ---------------------------------------------------------- */

static int cmp_tensor_ptr_name(const void *a, const void *b) {
  const ls_st_tensor_t *x = *(ls_st_tensor_t *const *)a, *y = *(ls_st_tensor_t *const *)b;
  return strcmp(x->name, y->name);
}

/* While parsing, t->offset holds the data-relative begin offset. */
static int cmp_tensor_ptr_begin(const void *a, const void *b) {
  const ls_st_tensor_t *x = *(ls_st_tensor_t *const *)a, *y = *(ls_st_tensor_t *const *)b;
  if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
  if (x->nbytes != y->nbytes) return x->nbytes < y->nbytes ? -1 : 1;
  return strcmp(x->name, y->name);
}

static int parse_metadata(const cJSON *md, const char *path) {
  if (!cJSON_IsObject(md)) {
    ls_error("%s: \"__metadata__\" in the safetensors header is not a JSON object; " HINT_REDOWNLOAD,
             path);
    return LS_ERR;
  }
  for (const cJSON *e = md->child; e; e = e->next) {
    if (!cJSON_IsString(e)) {
      char kb[96];
      ls_error("%s: \"__metadata__\" entry '%s' is not a string; " HINT_REDOWNLOAD, path,
               clean(e->string, kb, sizeof kb));
      return LS_ERR;
    }
  }
  return LS_OK;
}

/* Validate one header entry into t (offset = data-relative begin). */
static int parse_entry(const cJSON *e, uint64_t data_len, const char *path, int file,
                       ls_st_tensor_t *t) {
  char nb[96];
  const char *key = e->string ? e->string : "";
  const char *name = clean(key, nb, sizeof nb);
  if (strlen(key) >= LS_ST_MAX_NAME) {
    ls_error("%s: tensor name '%s' is %zu bytes long, more than the %d supported; " HINT_REDOWNLOAD,
             path, name, strlen(key), LS_ST_MAX_NAME - 1);
    return LS_ERR;
  }
  if (!cJSON_IsObject(e)) {
    ls_error("%s: tensor '%s': header entry is not a JSON object; " HINT_REDOWNLOAD, path, name);
    return LS_ERR;
  }
  memset(t, 0, sizeof *t);
  memcpy(t->name, key, strlen(key) + 1);
  t->file = file;

  /* dtype */
  const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
  if (!cJSON_IsString(dt)) {
    ls_error("%s: tensor '%s': missing or non-string \"dtype\"; " HINT_REDOWNLOAD, path, name);
    return LS_ERR;
  }
  if (ls_dtype_parse(dt->valuestring, &t->dtype) != LS_OK) {
    char db[96];
    ls_error("%s: tensor '%s' has dtype %s, which is not a safetensors dtype (F32, F16, BF16, "
             "F8_E4M3, F8_E5M2, F64, I64, ...); " HINT_REDOWNLOAD,
             path, name, clean(dt->valuestring, db, sizeof db));
    return LS_ERR;
  }

  /* shape */
  const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
  if (!cJSON_IsArray(sh)) {
    ls_error("%s: tensor '%s': missing or non-array \"shape\"; " HINT_REDOWNLOAD, path, name);
    return LS_ERR;
  }
  int ndim = cJSON_GetArraySize(sh);
  if (ndim > LS_ST_MAX_NDIM) {
    ls_error("%s: tensor '%s' has %d dimensions, more than the %d supported; " HINT_REDOWNLOAD,
             path, name, ndim, LS_ST_MAX_NDIM);
    return LS_ERR;
  }
  uint64_t numel = 1;
  int d = 0;
  for (const cJSON *v = sh->child; v; v = v->next, d++) {
    uint64_t dim;
    if (json_uint(v, &dim) != 0) {
      ls_error("%s: tensor '%s': shape[%d] is not a non-negative integer (at most 2^53); "
               HINT_REDOWNLOAD, path, name, d);
      return LS_ERR;
    }
    if (ls_mul_overflow_u64(numel, dim, &numel) || numel > (uint64_t)INT64_MAX) {
      ls_error("%s: tensor '%s': element count (product of the shape) overflows 64 bits; "
               HINT_REDOWNLOAD, path, name);
      return LS_ERR;
    }
    t->shape[d] = (int64_t)dim;
  }
  t->ndim = ndim;
  t->numel = (int64_t)numel;

  /* data_offsets */
  const cJSON *of = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
  uint64_t begin, end;
  if (!cJSON_IsArray(of) || cJSON_GetArraySize(of) != 2 || json_uint(of->child, &begin) != 0 ||
      json_uint(of->child->next, &end) != 0) {
    ls_error("%s: tensor '%s': \"data_offsets\" must be [begin, end] non-negative integers; "
             HINT_REDOWNLOAD, path, name);
    return LS_ERR;
  }
  if (begin > end) {
    ls_error("%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] end before they begin; "
             HINT_REDOWNLOAD, path, name, begin, end);
    return LS_ERR;
  }
  if (end > data_len) {
    ls_error("%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] run past the data area "
             "(%" PRIu64 " bytes); the file is truncated or corrupt: " HINT_REDOWNLOAD,
             path, name, begin, end, data_len);
    return LS_ERR;
  }
  uint64_t nbytes;
  if (ls_mul_overflow_u64(numel, ls_dtype_size(t->dtype), &nbytes) || nbytes != end - begin) {
    ls_error("%s: tensor '%s': shape x %s size does not match its %" PRIu64 "-byte span "
             "[%" PRIu64 ", %" PRIu64 "); " HINT_REDOWNLOAD,
             path, name, ls_dtype_name(t->dtype), end - begin, begin, end);
    return LS_ERR;
  }
  t->nbytes = nbytes;
  t->offset = begin;
  return LS_OK;
}

/* The spans of tensors[0..n) (offset = data-relative begin) must tile [0, data_len). */
static int check_tiling(ls_st_tensor_t **by_begin, int n, uint64_t data_len, const char *path) {
  uint64_t cursor = 0;
  const ls_st_tensor_t *prev = NULL;
  char b1[96], b2[96];
  for (int i = 0; i < n; i++) {
    const ls_st_tensor_t *t = by_begin[i];
    if (t->offset < cursor) {
      ls_error("%s: tensors '%s' and '%s' overlap (bytes %" PRIu64 "..%" PRIu64 " of the data "
               "area); " HINT_REDOWNLOAD,
               path, clean(prev->name, b1, sizeof b1), clean(t->name, b2, sizeof b2), t->offset,
               cursor);
      return LS_ERR;
    }
    if (t->offset > cursor) {
      ls_error("%s: %" PRIu64 " bytes of the data area before tensor '%s' (from %" PRIu64
               ") belong to no tensor; " HINT_REDOWNLOAD,
               path, t->offset - cursor, clean(t->name, b1, sizeof b1), cursor);
      return LS_ERR;
    }
    cursor = t->offset + t->nbytes;
    prev = t;
  }
  if (cursor != data_len) {
    ls_error("%s: %" PRIu64 " trailing bytes after the last tensor (data area %" PRIu64
             " bytes, tensors cover %" PRIu64 "); the file length is not exact: " HINT_REDOWNLOAD,
             path, data_len - cursor, data_len, cursor);
    return LS_ERR;
  }
  return LS_OK;
}

int ls_st_parse_header(const char *buf, size_t len, uint64_t file_size, const char *path,
                       int file, ls_st_tensor_t **tensors, int *n) {
  const int n0 = *n;
  if (len > LS_ST_MAX_HEADER || file_size < 8 || (uint64_t)len > file_size - 8) {
    ls_error("%s: header length %zu does not fit in a %" PRIu64 "-byte file; " HINT_REDOWNLOAD,
             path, len, file_size);
    return LS_ERR;
  }
  const uint64_t data_len = file_size - 8 - len;
  const uint64_t data_start = 8 + (uint64_t)len;
  if (len == 0 || memchr(buf, '\0', len)) {
    ls_error("%s: safetensors header is empty or contains a NUL byte; " HINT_REDOWNLOAD, path);
    return LS_ERR;
  }
  const char *parse_end = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts(buf, len, &parse_end, 0);
  if (!root) {
    long at = (parse_end >= buf && parse_end <= buf + len) ? (long)(parse_end - buf) : -1;
    ls_error("%s: safetensors header is not valid JSON (near byte %ld of %zu); is this a "
             "safetensors file? " HINT_REDOWNLOAD, path, at, len);
    return LS_ERR;
  }
  ls_st_tensor_t **order = NULL;
  int rc = LS_ERR;
  for (const char *p = parse_end; p < buf + len; p++) {
    if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
      ls_error("%s: safetensors header has non-blank bytes after the JSON object (byte %ld); "
               HINT_REDOWNLOAD, path, (long)(p - buf));
      goto done;
    }
  }
  if (!cJSON_IsObject(root)) {
    ls_error("%s: safetensors header is not a JSON object; " HINT_REDOWNLOAD, path);
    goto done;
  }

  /* Grow *tensors once for every entry of this header. */
  int count = cJSON_GetArraySize(root);
  if (count > INT32_MAX - n0 - 1) {
    ls_error("%s: too many tensors in the header", path);
    goto done;
  }
  if (count > 0) {
    ls_st_tensor_t *grown = realloc(*tensors, (size_t)(n0 + count) * sizeof **tensors);
    if (!grown) {
      ls_error("%s: out of memory for %d tensor entries", path, count);
      goto done;
    }
    *tensors = grown;
  }
  int k = n0;
  for (const cJSON *e = root->child; e; e = e->next) {
    if (e->string && strcmp(e->string, "__metadata__") == 0) {
      if (parse_metadata(e, path) != LS_OK) goto done;
      continue;
    }
    if (parse_entry(e, data_len, path, file, &(*tensors)[k]) != LS_OK) goto done;
    k++;
  }
  const int nt = k - n0;

  /* Duplicate names (cJSON keeps both), then the tiling of the data area. */
  order = malloc((size_t)(nt ? nt : 1) * sizeof *order);
  if (!order) {
    ls_error("%s: out of memory checking %d tensors", path, nt);
    goto done;
  }
  for (int i = 0; i < nt; i++) order[i] = &(*tensors)[n0 + i];
  if (nt > 0) qsort(order, (size_t)nt, sizeof *order, cmp_tensor_ptr_name);
  for (int i = 1; i < nt; i++) {
    if (strcmp(order[i - 1]->name, order[i]->name) == 0) {
      char nb[96];
      ls_error("%s: tensor '%s' appears twice in the header; " HINT_REDOWNLOAD, path,
               clean(order[i]->name, nb, sizeof nb));
      goto done;
    }
  }
  if (nt > 0) qsort(order, (size_t)nt, sizeof *order, cmp_tensor_ptr_begin);
  if (check_tiling(order, nt, data_len, path) != LS_OK) goto done;
  for (int i = n0; i < k; i++) (*tensors)[i].offset += data_start;
  *n = k;
  rc = LS_OK;
done:
  free(order);
  cJSON_Delete(root);
  return rc;
}

/* ---- opening files and directories ------------------------------------------ */

static int cmp_tensor_name(const void *a, const void *b) {
  return strcmp(((const ls_st_tensor_t *)a)->name, ((const ls_st_tensor_t *)b)->name);
}

/* Open m->files[fi] (name already set), check it, parse its header into m->tensors. */
static int open_shard(ls_st_model_t *m, int fi, const char *index_path) {
  ls_st_file_t *f = &m->files[fi];
  int len = snprintf(f->path, sizeof f->path, "%s/%s", m->dir, f->name);
  if (len < 0 || (size_t)len >= sizeof f->path) {
    ls_error("%s/%s: path too long", m->dir, f->name);
    return LS_ERR;
  }
  if (m->remote) {
    if (ls_src_open_url(&f->src, f->path, 0) != LS_OK) return LS_ERR;
  } else {
    /* O_NONBLOCK: a FIFO or device planted in the directory must not block the open; it
     * is refused by the S_ISREG check below (no effect on regular-file reads) */
    int fd = open(f->path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
      if (index_path)
        ls_error("%s: cannot open shard listed in %s: %s; re-download the missing shard",
                 f->path, index_path, strerror(errno));
      else
        ls_error("%s: cannot open: %s", f->path, strerror(errno));
      return LS_ERR;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
      ls_error("%s: fstat failed: %s", f->path, strerror(errno));
      close(fd);
      return LS_ERR;
    }
    ls_src_from_fd(&f->src, fd, (uint64_t)st.st_size);
    if (!S_ISREG(st.st_mode)) {
      ls_error("%s: not a regular file; point --model at a Hugging Face model directory", f->path);
      return LS_ERR;
    }
  }
  f->size = f->src.size;
  unsigned char lenbuf[8];
  int r8 = f->size < 8 ? 1 : ls_src_pread(&f->src, lenbuf, 8, 0);
  if (r8 == LS_SRC_REPORTED) return LS_ERR;
  if (r8 != 0) {
    ls_error("%s: file is %" PRIu64 " bytes, too short for a safetensors header; " HINT_REDOWNLOAD,
             f->path, f->size);
    return LS_ERR;
  }
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | lenbuf[i];
  if (hlen < 2 || hlen > LS_ST_MAX_HEADER) {
    ls_error("%s: header length %" PRIu64 " is outside [2, %u]; not a safetensors file? "
             HINT_REDOWNLOAD, f->path, hlen, LS_ST_MAX_HEADER);
    return LS_ERR;
  }
  if (hlen > f->size - 8) {
    ls_error("%s: header length %" PRIu64 " past end of file (size %" PRIu64 "); " HINT_REDOWNLOAD,
             f->path, hlen, f->size);
    return LS_ERR;
  }
  f->header_len = 8 + hlen;
  f->header = malloc((size_t)f->header_len);
  if (!f->header) {
    ls_error("%s: out of memory for a %" PRIu64 "-byte header", f->path, hlen);
    return LS_ERR;
  }
  memcpy(f->header, lenbuf, 8);
  char *hdr = (char *)f->header + 8;
  int r = ls_src_pread(&f->src, hdr, hlen, 8);
  if (r == LS_SRC_REPORTED) return LS_ERR;
  if (r != 0) {
    ls_error("%s: reading the header failed: %s", f->path,
             r < 0 ? strerror(errno) : "file changed or truncated while reading");
    return LS_ERR;
  }
  return ls_st_parse_header(hdr, (size_t)hlen, f->size, f->path, fi, &m->tensors,
                            &m->n_tensors);
}

/* A shard name from the index must be a bare file name inside the directory. */
static int check_shard_name(const char *s, const char *index_path, const char *tensor) {
  char nb[96], sb[96];
  const char *why = NULL;
  if (!s || !*s) why = "is empty";
  else if (strlen(s) >= 256) why = "is too long";
  else if (strchr(s, '/')) why = "contains '/'";
  else if (strcmp(s, ".") == 0 || strcmp(s, "..") == 0) why = "is not a file name";
  if (!why) return LS_OK;
  ls_error("%s: weight_map entry '%s' -> '%s': shard name %s; shards must be plain file names "
           "in the model directory: fix or re-download the index",
           index_path, clean(tensor, nb, sizeof nb), clean(s, sb, sizeof sb), why);
  return LS_ERR;
}

typedef struct {
  const char *tensor; /* weight_map key */
  const char *shard;  /* weight_map value */
  int file;           /* index into m->files */
} wm_entry_t;

static int cmp_str_ptr(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}
static int cmp_wm_tensor(const void *a, const void *b) {
  return strcmp(((const wm_entry_t *)a)->tensor, ((const wm_entry_t *)b)->tensor);
}

static int open_index(ls_st_model_t *m, const char *ipath) {
  size_t tlen = 0;
  char *text = ls_src_read_text(ipath, INDEX_MAX_BYTES, &tlen);
  if (!text) return LS_ERR;
  cJSON *root = NULL;
  wm_entry_t *ents = NULL;
  const char **names = NULL;
  int rc = LS_ERR;
  char b1[96], b2[96], b3[96];

  if (memchr(text, '\0', tlen)) {
    ls_error("%s: contains a NUL byte; re-download the index", ipath);
    goto done;
  }
  root = cJSON_ParseWithLengthOpts(text, tlen + 1, NULL, 1);
  if (!cJSON_IsObject(root)) {
    ls_error("%s: not a JSON object; re-download the index", ipath);
    goto done;
  }
  const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
  if (!cJSON_IsObject(wm) || !wm->child) {
    ls_error("%s: missing or empty \"weight_map\" object; re-download the index", ipath);
    goto done;
  }
  int ne = cJSON_GetArraySize(wm);
  ents = calloc((size_t)ne, sizeof *ents);
  names = calloc((size_t)ne, sizeof *names);
  if (!ents || !names) {
    ls_error("%s: out of memory for %d weight_map entries", ipath, ne);
    goto done;
  }
  int i = 0;
  for (const cJSON *e = wm->child; e; e = e->next, i++) {
    if (!cJSON_IsString(e)) {
      ls_error("%s: weight_map entry '%s' is not a string; re-download the index", ipath,
               clean(e->string, b1, sizeof b1));
      goto done;
    }
    if (check_shard_name(e->valuestring, ipath, e->string) != LS_OK) goto done;
    ents[i].tensor = e->string ? e->string : "";
    ents[i].shard = e->valuestring;
    names[i] = e->valuestring;
  }

  /* Distinct shard names, sorted: one ls_st_file_t each. */
  if (ne > 0) qsort(names, (size_t)ne, sizeof *names, cmp_str_ptr);
  int ns = 0;
  for (i = 0; i < ne; i++)
    if (ns == 0 || strcmp(names[ns - 1], names[i]) != 0) names[ns++] = names[i];
  m->files = calloc((size_t)ns, sizeof *m->files);
  if (!m->files) {
    ls_error("%s: out of memory for %d shards", ipath, ns);
    goto done;
  }
  for (i = 0; i < ns; i++) {
    m->files[i].src.fd = -1;
    memcpy(m->files[i].name, names[i], strlen(names[i]) + 1);
  }
  m->n_files = ns;
  for (i = 0; i < ne; i++) {
    const char **hit = bsearch(&ents[i].shard, names, (size_t)ns, sizeof *names, cmp_str_ptr);
    ents[i].file = (int)(hit - names);
  }
  if (ne > 0) qsort(ents, (size_t)ne, sizeof *ents, cmp_wm_tensor);
  for (i = 1; i < ne; i++) {
    if (strcmp(ents[i - 1].tensor, ents[i].tensor) == 0) {
      ls_error("%s: tensor '%s' is listed twice in weight_map; re-download the index", ipath,
               clean(ents[i].tensor, b1, sizeof b1));
      goto done;
    }
  }

  for (i = 0; i < ns; i++)
    if (open_shard(m, i, ipath) != LS_OK) goto done;

  /* Cross-shard duplicates, then index <-> shard contents, both walks by name. */
  if (m->n_tensors > 0) qsort(m->tensors, (size_t)m->n_tensors, sizeof *m->tensors, cmp_tensor_name);
  for (i = 1; i < m->n_tensors; i++) {
    const ls_st_tensor_t *a = &m->tensors[i - 1], *b = &m->tensors[i];
    if (strcmp(a->name, b->name) == 0) {
      ls_error("%s: tensor '%s' is stored in two shards, %s and %s; the checkpoint is ambiguous: "
               HINT_REDOWNLOAD, m->dir, clean(a->name, b1, sizeof b1),
               clean(m->files[a->file].name, b2, sizeof b2),
               clean(m->files[b->file].name, b3, sizeof b3));
      goto done;
    }
  }
  int j = 0;
  for (i = 0; i < ne || j < m->n_tensors;) {
    int c = i >= ne ? 1 : j >= m->n_tensors ? -1 : strcmp(ents[i].tensor, m->tensors[j].name);
    if (c < 0 || (c == 0 && m->tensors[j].file != ents[i].file)) {
      const char *shard = clean(m->files[ents[i].file].name, b2, sizeof b2);
      ls_error("%s: tensor '%s' is listed in the index for shard %s but %s does not contain it; "
               "fix or re-download the index and shards",
               ipath, clean(ents[i].tensor, b1, sizeof b1), shard, shard);
      goto done;
    }
    if (c > 0) {
      ls_error("%s: shard %s contains tensor '%s' which %s does not list; the checkpoint is "
               "ambiguous: fix or re-download the index and shards",
               m->dir, clean(m->files[m->tensors[j].file].name, b2, sizeof b2),
               clean(m->tensors[j].name, b1, sizeof b1), ipath);
      goto done;
    }
    i++;
    j++;
  }
  rc = LS_OK;
done:
  free(names);
  free(ents);
  cJSON_Delete(root);
  free(text);
  return rc;
}

static int open_single(ls_st_model_t *m) {
  m->files = calloc(1, sizeof *m->files);
  if (!m->files) {
    ls_error("%s: out of memory", m->dir);
    return LS_ERR;
  }
  m->files[0].src.fd = -1;
  memcpy(m->files[0].name, SINGLE_NAME, sizeof SINGLE_NAME);
  m->n_files = 1;
  LS_CHECK(open_shard(m, 0, NULL));
  if (m->n_tensors > 0) qsort(m->tensors, (size_t)m->n_tensors, sizeof *m->tensors, cmp_tensor_name);
  return LS_OK;
}

int ls_st_open_dir(const char *dir, ls_st_model_t *m) {
  memset(m, 0, sizeof *m);
  if (!dir || !*dir || strlen(dir) >= sizeof m->dir) {
    ls_error("model directory path is empty or too long; point --model at a Hugging Face model "
             "directory");
    return LS_ERR;
  }
  memcpy(m->dir, dir, strlen(dir) + 1);
  m->remote = ls_src_is_url(dir);
  char path[4096 + 64];
  int rc, ex;
  snprintf(path, sizeof path, "%s/%s", dir, INDEX_NAME);
  if ((ex = ls_src_exists(path)) != 0) {
    rc = ex < 0 ? LS_ERR : open_index(m, path);
  } else {
    snprintf(path, sizeof path, "%s/%s", dir, SINGLE_NAME);
    if ((ex = ls_src_exists(path)) != 0) {
      rc = ex < 0 ? LS_ERR : open_single(m);
    } else {
      ls_error("%s: no " SINGLE_NAME " or " INDEX_NAME "; point --model at a Hugging Face model "
               "directory", dir);
      rc = LS_ERR;
    }
  }
  if (rc != LS_OK) {
    ls_st_close(m);
    return LS_ERR;
  }
  return LS_OK;
}

void ls_st_close(ls_st_model_t *m) {
  if (!m) return;
  for (int i = 0; i < m->n_files; i++) {
    ls_src_close(&m->files[i].src);
    free(m->files[i].header);
  }
  free(m->files);
  free(m->tensors);
  memset(m, 0, sizeof *m);
}

static int cmp_find(const void *key, const void *t) {
  return strcmp((const char *)key, ((const ls_st_tensor_t *)t)->name);
}

const ls_st_tensor_t *ls_st_find(const ls_st_model_t *m, const char *name) {
  if (!m || !name || m->n_tensors <= 0) return NULL;
  if (m->n_tensors <= 0) return NULL;
  return bsearch(name, m->tensors, (size_t)m->n_tensors, sizeof *m->tensors, cmp_find);
}

/* ---- reading ----------------------------------------------------------------- */

int ls_st_read_range(ls_st_model_t *m, const ls_st_tensor_t *t, uint64_t off, uint64_t n,
                     void *dst) {
  char nb[96];
  if (!t || t->file < 0 || t->file >= m->n_files) {
    ls_error("%s: read of a tensor that does not belong to this model", m->dir);
    return LS_ERR;
  }
  const ls_st_file_t *f = &m->files[t->file];
  if (off > t->nbytes || n > t->nbytes - off) {
    ls_error("%s: tensor '%s': read of bytes [%" PRIu64 ", +%" PRIu64 ") is outside its %" PRIu64
             " bytes (internal error)", f->path, clean(t->name, nb, sizeof nb), off, n, t->nbytes);
    return LS_ERR;
  }
  if (n == 0) return LS_OK;
  ls_st_file_t *fw = &m->files[t->file];
  int r = ls_src_pread(&fw->src, dst, n, t->offset + off);
  if (r == LS_SRC_REPORTED) return LS_ERR;
  if (r != 0) {
    ls_error("%s: tensor '%s': %s; check the file and " HINT_REDOWNLOAD, f->path,
             clean(t->name, nb, sizeof nb),
             r < 0 ? strerror(errno) : "file changed or truncated while reading");
    return LS_ERR;
  }
  m->bytes_read += n;
  return LS_OK;
}

int ls_st_read_spans(ls_st_model_t *m, int file, const ls_src_span_t *spans, int n) {
  if (file < 0 || file >= m->n_files) {
    ls_error("%s: read of a file that does not belong to this model", m->dir);
    return LS_ERR;
  }
  ls_st_file_t *f = &m->files[file];
  for (int i = 0; i < n; i++)
    if (spans[i].off > f->size || spans[i].len > f->size - spans[i].off) {
      ls_error("%s: read of bytes [%" PRIu64 ", +%" PRIu64 ") past the end of the file "
               "(internal error)", f->path, spans[i].off, spans[i].len);
      return LS_ERR;
    }
  if (ls_src_read_spans(&f->src, spans, n, f->path) != LS_OK) return LS_ERR;
  for (int i = 0; i < n; i++)
    for (int k = 0; k < spans[i].n_segs; k++)
      if (spans[i].segs[k].dst) m->bytes_read += spans[i].segs[k].len;
  return LS_OK;
}

/* ---- writer ------------------------------------------------------------------ */

static cJSON *json_u64_raw(uint64_t v) {
  char s[32];
  snprintf(s, sizeof s, "%" PRIu64, v);
  return cJSON_CreateRaw(s);
}

/* Build the header JSON for t[0..n) laid out contiguously; fills offsets/nbytes. */
static char *writer_header(const char *path, const ls_st_wtensor_t *t, int n,
                           const char *metadata_format, uint64_t *offsets, uint64_t *nbytes) {
  char nb[96];
  cJSON *root = cJSON_CreateObject();
  char *text = NULL;
  if (!root) goto oom;
  if (metadata_format) {
    cJSON *md = cJSON_AddObjectToObject(root, "__metadata__");
    if (!md || !cJSON_AddStringToObject(md, "format", metadata_format)) goto oom;
  }
  uint64_t cursor = 0;
  for (int i = 0; i < n; i++) {
    const char *name = t[i].name;
    if (!name || strlen(name) >= LS_ST_MAX_NAME || strcmp(name, "__metadata__") == 0 ||
        ls_dtype_size(t[i].dtype) == 0 || t[i].ndim < 0 || t[i].ndim > LS_ST_MAX_NDIM) {
      ls_error("%s: cannot write tensor %d '%s': bad name, dtype or ndim", path, i,
               clean(name, nb, sizeof nb));
      goto fail;
    }
    if (cJSON_GetObjectItemCaseSensitive(root, name)) {
      ls_error("%s: cannot write tensor '%s' twice", path, clean(name, nb, sizeof nb));
      goto fail;
    }
    uint64_t numel = 1, bytes;
    for (int d = 0; d < t[i].ndim; d++) {
      if (t[i].shape[d] < 0 || ls_mul_overflow_u64(numel, (uint64_t)t[i].shape[d], &numel)) {
        ls_error("%s: tensor '%s': negative or overflowing shape", path, clean(name, nb, sizeof nb));
        goto fail;
      }
    }
    if (ls_mul_overflow_u64(numel, ls_dtype_size(t[i].dtype), &bytes) ||
        ls_add_overflow_u64(cursor, bytes, &cursor) || cursor > (uint64_t)INT64_MAX / 2) {
      ls_error("%s: tensor '%s': size overflows", path, clean(name, nb, sizeof nb));
      goto fail;
    }
    offsets[i] = cursor - bytes;
    nbytes[i] = bytes;
    cJSON *e = cJSON_AddObjectToObject(root, name);
    cJSON *shape = e ? cJSON_AddArrayToObject(e, "shape") : NULL;
    cJSON *offs = shape ? cJSON_AddArrayToObject(e, "data_offsets") : NULL;
    if (!offs || !cJSON_AddStringToObject(e, "dtype", ls_dtype_name(t[i].dtype))) goto oom;
    for (int d = 0; d < t[i].ndim; d++) {
      cJSON *v = json_u64_raw((uint64_t)t[i].shape[d]);
      if (!v) goto oom;
      cJSON_AddItemToArray(shape, v);
    }
    cJSON *b = json_u64_raw(offsets[i]), *en = json_u64_raw(cursor);
    if (!b || !en) { cJSON_Delete(b); cJSON_Delete(en); goto oom; }
    cJSON_AddItemToArray(offs, b);
    cJSON_AddItemToArray(offs, en);
  }
  text = cJSON_PrintUnformatted(root);
  if (!text) goto oom;
  cJSON_Delete(root);
  return text;
oom:
  ls_error("%s: out of memory building the safetensors header", path);
fail:
  cJSON_Delete(root);
  return NULL;
}

int ls_st_writer_open(ls_st_writer_t *w, const char *path, const ls_st_wtensor_t *t, int n,
                      const char *metadata_format) {
  memset(w, 0, sizeof *w);
  w->fd = -1;
  if (!path || strlen(path) >= sizeof w->path || n < 0) {
    ls_error("safetensors writer: bad path or tensor count");
    return LS_ERR;
  }
  memcpy(w->path, path, strlen(path) + 1);
  w->offsets = calloc((size_t)(n ? n : 1), sizeof *w->offsets);
  w->nbytes = calloc((size_t)(n ? n : 1), sizeof *w->nbytes);
  if (!w->offsets || !w->nbytes) {
    ls_error("%s: out of memory for %d tensors", path, n);
    goto fail;
  }
  char *json = writer_header(path, t, n, metadata_format, w->offsets, w->nbytes);
  if (!json) goto fail;
  w->n = n;
  size_t jlen = strlen(json), padded = (jlen + 7) / 8 * 8;
  uint64_t data_len = n ? w->offsets[n - 1] + w->nbytes[n - 1] : 0;
  char *hdr = malloc(8 + padded);
  if (!hdr) {
    ls_error("%s: out of memory for the header", path);
    free(json);
    goto fail;
  }
  for (int i = 0; i < 8; i++) hdr[i] = (char)(((uint64_t)padded >> (8 * i)) & 0xff);
  memcpy(hdr + 8, json, jlen);
  memset(hdr + 8 + jlen, ' ', padded - jlen);
  free(json);
  w->data_start = 8 + padded;

  w->fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (w->fd < 0) {
    ls_error("%s: cannot create: %s", path, strerror(errno));
    free(hdr);
    goto fail;
  }
  int bad = pwrite_full(w->fd, hdr, 8 + padded, 0) != 0 ||
            ftruncate(w->fd, (off_t)(w->data_start + data_len)) != 0;
  free(hdr);
  if (bad) {
    ls_error("%s: writing the header failed: %s", path, strerror(errno));
    close(w->fd);
    unlink(path);
    w->fd = -1;
    goto fail;
  }
  return LS_OK;
fail:
  free(w->offsets);
  free(w->nbytes);
  w->offsets = w->nbytes = NULL;
  w->n = 0;
  return LS_ERR;
}

int ls_st_writer_put(ls_st_writer_t *w, int i, uint64_t off, const void *bytes, uint64_t n) {
  if (w->fd < 0 || i < 0 || i >= w->n || off > w->nbytes[i] || n > w->nbytes[i] - off) {
    ls_error("%s: write of bytes [%" PRIu64 ", +%" PRIu64 ") to tensor %d is out of range "
             "(internal error)", w->path, off, n, i);
    return LS_ERR;
  }
  if (pwrite_full(w->fd, bytes, n, w->data_start + w->offsets[i] + off) != 0) {
    ls_error("%s: write failed: %s", w->path, strerror(errno));
    return LS_ERR;
  }
  return LS_OK;
}

int ls_st_writer_close(ls_st_writer_t *w) {
  int rc = LS_OK;
  if (w->fd >= 0) {
    if (fsync(w->fd) != 0) {
      ls_error("%s: fsync failed: %s", w->path, strerror(errno));
      rc = LS_ERR;
    }
    if (close(w->fd) != 0 && rc == LS_OK) {
      ls_error("%s: close failed: %s", w->path, strerror(errno));
      rc = LS_ERR;
    }
  }
  free(w->offsets);
  free(w->nbytes);
  w->offsets = w->nbytes = NULL;
  w->fd = -1;
  w->n = 0;
  return rc;
}
