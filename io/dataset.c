/* dataset.c: JSONL prompt reader (see dataset.h). */
#include "dataset.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ls_common.h"
#include "ls_json.h"
#include "tokenizer.h"

/* Texts waiting to be tokenized: a chunk is tokenized on threads when it holds
 * CHUNK_TEXTS texts or CHUNK_BYTES bytes, and at the end. */
#define CHUNK_TEXTS 8192
#define CHUNK_BYTES ((size_t)32 << 20)
#define MAX_THREADS 256

typedef struct {
  char *text;          /* the texts back to back (NUL after each) */
  size_t n_text, cap_text;
  size_t *off;         /* [cap] text k is text[off[k] .. off[k] + len[k]) */
  size_t *len;
  int64_t *lineno;     /* [cap] its line */
  int32_t **ids;       /* [cap] its ids once tokenized (malloc'd) */
  size_t *n_ids;
  size_t n, cap;
  int64_t first;       /* prompt index of text 0 */
} pending_t;

typedef struct {
  int64_t n, cap_n, n_tok, cap_tok, cap_label, cap_id; /* capacities grow geometrically */
  int64_t mask_dropped, mask_prompts; /* padding tokens dropped by attention_mask, prompts */
  int64_t first_line; /* line of the first prompt (label / id presence is taken from it) */
  int kind;           /* 0 none yet, 1 input_ids prompts, 2 text prompts */
  const ls_dataset_text_t *topt; /* NULL: no text input */
  ls_tokenizer_t *tok;           /* loaded at the first text */
  ls_tok_ctx_t *ctx[MAX_THREADS];
  int threads;
  pending_t pend;
} grow_t;

static int grow(void **p, int64_t *cap, int64_t need, size_t elem, const char *what) {
  if (need <= *cap) return LS_OK;
  int64_t c = *cap ? *cap : 1024;
  while (c < need) c *= 2;
  void *q = realloc(*p, (size_t)c * elem);
  if (!q) {
    ls_error("out of memory growing %s to %lld entries", what, (long long)c);
    return LS_ERR;
  }
  *p = q;
  *cap = c;
  return LS_OK;
}

/* ---- bounded line reading -------------------------------------------------------------- */
/* Lines are read through a block buffer and never grow past LS_DATASET_MAX_LINE + 1 bytes:
 * a stream without newlines (/dev/zero, a binary file) is refused at the cap, not after
 * it has been read whole. */
typedef struct {
  int fd;
  char *blk;          /* (BLK) read buffer */
  size_t blk_len, blk_pos;
  int eof;
} reader_t;
#define BLK ((size_t)1 << 20)

/* The next line (without its '\n') in *line (NUL-terminated; *n bytes, which may hold NUL
 * bytes). Returns 1 for a line, 0 at the end, -1 on a read error (errno), -2 when the line
 * is longer than LS_DATASET_MAX_LINE. */
static int read_line(reader_t *r, char **line, size_t *cap, size_t *n) {
  size_t len = 0;
  int got = 0;
  for (;;) {
    if (r->blk_pos == r->blk_len) {
      if (r->eof) break;
      ssize_t k = read(r->fd, r->blk, BLK);
      if (k < 0 && errno == EINTR) continue;
      if (k < 0) return -1;
      if (k == 0) { r->eof = 1; break; }
      r->blk_len = (size_t)k;
      r->blk_pos = 0;
    }
    got = 1;
    const char *start = r->blk + r->blk_pos;
    const size_t avail = r->blk_len - r->blk_pos;
    const char *nl = memchr(start, '\n', avail);
    const size_t take = nl ? (size_t)(nl - start) : avail;
    if (len + take > LS_DATASET_MAX_LINE) {
      *n = len + take;
      return -2;
    }
    if (len + take + 1 > *cap) {
      size_t c = *cap ? *cap : 4096;
      while (c < len + take + 1) c *= 2;
      char *q = realloc(*line, c);
      if (!q) { errno = ENOMEM; return -1; }
      *line = q;
      *cap = c;
    }
    memcpy(*line + len, start, take);
    len += take;
    r->blk_pos += take + (nl ? 1 : 0);
    if (nl) break;
  }
  if (!got) return 0;
  (*line)[len] = '\0';
  *n = len;
  return 1;
}

static int blank(const char *s) {
  for (; *s; s++)
    if (*s != ' ' && *s != '\t' && *s != '\r' && *s != '\n') return 0;
  return 1;
}

/* 1 when s is valid UTF-8 (no overlong forms, no surrogates, at most U+10FFFF). */
static int utf8_valid(const unsigned char *s) {
  while (*s) {
    const unsigned c = *s;
    int n = c < 0x80 ? 0 : (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2 : (c & 0xF8) == 0xF0 ? 3 : -1;
    if (n < 0 || (n == 1 && c < 0xC2) || (n == 3 && c > 0xF4)) return 0;
    unsigned cp = n == 0 ? c : c & (0x3Fu >> n);
    for (int k = 1; k <= n; k++) {
      if ((s[k] & 0xC0) != 0x80) return 0;
      cp = (cp << 6) | (s[k] & 0x3Fu);
    }
    if ((n == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (n == 3 && (cp < 0x10000 || cp > 0x10FFFF)))
      return 0;
    s += n + 1;
  }
  return 1;
}

/* 1 when the raw text of the line's string field key ("\"id\"", "\"text\"") holds a
 * \u0000 escape: cJSON would decode it to a NUL and silently cut the string there. */
static int has_nul_escape(const char *line, const char *key) {
  const size_t kn = strlen(key);
  for (const char *p = strstr(line, key); p; p = strstr(p + 1, key)) {
    const char *q = p + kn;
    while (*q == ' ' || *q == '\t') q++;
    if (*q != ':') continue;
    q++;
    while (*q == ' ' || *q == '\t') q++;
    if (*q != '"') continue;
    for (q++; *q && *q != '"'; q++) {
      if (*q != '\\') continue;
      if (strncasecmp(q, "\\u0000", 6) == 0) return 1;
      if (q[1]) q++; /* skip the escaped character */
    }
  }
  return 0;
}

/* ---- text prompts: tokenized in chunks, on threads ------------------------------------- */
static int pend_add(const char *path, grow_t *g, const char *t, size_t n, int64_t lineno,
                    int64_t prompt) {
  pending_t *p = &g->pend;
  if (p->n == 0) p->first = prompt;
  if (p->n == p->cap) {
    size_t cap = p->cap ? 2 * p->cap : 1024;
    size_t *o = realloc(p->off, cap * sizeof *o);
    if (o) p->off = o;
    size_t *l = realloc(p->len, cap * sizeof *l);
    if (l) p->len = l;
    int64_t *ln = realloc(p->lineno, cap * sizeof *ln);
    if (ln) p->lineno = ln;
    int32_t **ids = realloc(p->ids, cap * sizeof *ids);
    if (ids) p->ids = ids;
    size_t *ni = realloc(p->n_ids, cap * sizeof *ni);
    if (ni) p->n_ids = ni;
    if (!o || !l || !ln || !ids || !ni) {
      ls_error("%s: out of memory holding texts to tokenize", path);
      return LS_ERR;
    }
    p->cap = cap;
  }
  if (p->n_text + n + 1 > p->cap_text) {
    size_t cap = p->cap_text ? p->cap_text : (size_t)1 << 20;
    while (cap < p->n_text + n + 1) cap *= 2;
    char *q = realloc(p->text, cap);
    if (!q) {
      ls_error("%s: out of memory holding texts to tokenize", path);
      return LS_ERR;
    }
    p->text = q;
    p->cap_text = cap;
  }
  memcpy(p->text + p->n_text, t, n);
  p->text[p->n_text + n] = '\0';
  p->off[p->n] = p->n_text;
  p->len[p->n] = n;
  p->lineno[p->n] = lineno;
  p->ids[p->n] = NULL;
  p->n_ids[p->n] = 0;
  p->n_text += n + 1;
  p->n++;
  return LS_OK;
}

typedef struct {
  grow_t *g;
  int worker;
  size_t next_fail; /* first text that failed (p->n: none) */
  char err[256];
} tok_job_t;

static void *tok_worker(void *arg) {
  tok_job_t *j = arg;
  pending_t *p = &j->g->pend;
  const size_t nw = (size_t)j->g->threads, k0 = p->n * (size_t)j->worker / nw,
               k1 = p->n * (size_t)(j->worker + 1) / nw;
  ls_tok_ctx_t *c = j->g->ctx[j->worker];
  j->next_fail = p->n;
  for (size_t k = k0; k < k1; k++) {
    const int32_t *ids;
    size_t n;
    if (ls_tokenizer_encode(c, p->text + p->off[k], p->len[k], &ids, &n) != LS_OK) {
      j->next_fail = k;
      snprintf(j->err, sizeof j->err, "%s", ls_tok_ctx_error(c));
      break;
    }
    if (!(p->ids[k] = malloc((n ? n : 1) * sizeof(int32_t)))) {
      j->next_fail = k;
      snprintf(j->err, sizeof j->err, "out of memory");
      break;
    }
    memcpy(p->ids[k], ids, n * sizeof(int32_t));
    p->n_ids[k] = n;
  }
  return NULL;
}

static int load_tokenizer(grow_t *g) {
  if (g->tok) return LS_OK;
  if (ls_tokenizer_load(g->topt->model_dir, &g->tok)) return LS_ERR;
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  g->threads = g->topt->threads > 0 ? g->topt->threads : cpus > 0 ? (int)cpus : 1;
  if (g->threads > MAX_THREADS) g->threads = MAX_THREADS;
  for (int i = 0; i < g->threads; i++)
    if (!(g->ctx[i] = ls_tok_ctx_new(g->tok))) {
      ls_error("out of memory creating the tokenizer's buffers");
      return LS_ERR;
    }
  return LS_OK;
}

/* Tokenize the pending texts and append them as prompts. */
static int flush_texts(const char *path, int vocab, int64_t max_len, ls_dataset_t *d, grow_t *g) {
  pending_t *p = &g->pend;
  if (p->n == 0) return LS_OK;
  if (load_tokenizer(g)) return LS_ERR;
  tok_job_t jobs[MAX_THREADS];
  pthread_t th[MAX_THREADS];
  int spawned[MAX_THREADS] = {0};
  for (int w = 0; w < g->threads; w++) jobs[w] = (tok_job_t){g, w, p->n, ""};
  for (int w = 1; w < g->threads; w++) /* a thread that cannot start: its share runs here */
    if (!(spawned[w] = pthread_create(&th[w], NULL, tok_worker, &jobs[w]) == 0)) tok_worker(&jobs[w]);
  tok_worker(&jobs[0]);
  for (int w = 1; w < g->threads; w++)
    if (spawned[w]) pthread_join(th[w], NULL);
  size_t bad = p->n;
  const char *why = "";
  for (int w = 0; w < g->threads; w++)
    if (jobs[w].next_fail < bad) { bad = jobs[w].next_fail; why = jobs[w].err; }
  int rc = LS_OK;
  if (bad < p->n) {
    ls_error("%s:%lld: cannot tokenize the text: %s", path, (long long)p->lineno[bad], why);
    rc = LS_ERR;
  }
  for (size_t k = 0; k < p->n && rc == LS_OK; k++) {
    const int64_t lineno = p->lineno[k], i = p->first + (int64_t)k;
    int64_t len = (int64_t)p->n_ids[k];
    if (len == 0) {
      ls_error("%s:%lld: the text tokenizes to no tokens (an empty text, and the tokenizer adds "
               "no BOS); remove the line", path, (long long)lineno);
      rc = LS_ERR;
      break;
    }
    if (g->topt->max_tokens > 0 && len > g->topt->max_tokens) {
      len = g->topt->max_tokens;
      d->n_truncated++;
    }
    if (max_len > 0 && len > max_len) {
      ls_error("%s:%lld: the text is %lld tokens, more than the model's max_position_embeddings "
               "%lld; pass --max-tokens %lld to cut it, or --allow-long-prompts (RoPE models only)",
               path, (long long)lineno, (long long)len, (long long)max_len, (long long)max_len);
      rc = LS_ERR;
      break;
    }
    for (int64_t j = 0; j < len; j++)
      if (p->ids[k][j] >= vocab) {
        ls_error("%s:%lld: the tokenizer gave id %d, >= the model's vocab_size %d: tokenizer.json "
                 "does not belong to this model", path, (long long)lineno, p->ids[k][j], vocab);
        rc = LS_ERR;
        break;
      }
    if (rc) break;
    if (grow((void **)&d->tokens, &g->cap_tok, g->n_tok + len, sizeof(int32_t), "tokens")) {
      rc = LS_ERR;
      break;
    }
    memcpy(d->tokens + g->n_tok, p->ids[k], (size_t)len * sizeof(int32_t));
    g->n_tok += len;
    d->offsets[i + 1] = g->n_tok;
    d->n_tokens = g->n_tok;
  }
  for (size_t k = 0; k < p->n; k++) free(p->ids[k]);
  p->n = 0;
  p->n_text = 0;
  return rc;
}

static void grow_free(grow_t *g) {
  for (int i = 0; i < g->threads; i++) ls_tok_ctx_free(g->ctx[i]);
  ls_tokenizer_free(g->tok);
  pending_t *p = &g->pend;
  for (size_t k = 0; k < p->n; k++) free(p->ids[k]);
  free(p->text); free(p->off); free(p->len); free(p->lineno); free(p->ids); free(p->n_ids);
}

/* One line of a .txt file: the whole line is a text prompt. */
static int txt_line(const char *path, int64_t lineno, const char *line, size_t n, ls_dataset_t *d,
                    grow_t *g) {
  if (!g->topt) {
    ls_error("%s: a .txt file holds text prompts, which need the model's tokenizer", path);
    return LS_ERR;
  }
  const int64_t i = d->n;
  if (grow((void **)&d->offsets, &g->cap_n, i + 2, sizeof(int64_t), "offsets")) return LS_ERR;
  if (i == 0) {
    d->offsets[0] = 0;
    g->first_line = lineno;
    g->kind = 2;
  }
  if (n > 0 && line[n - 1] == '\r') n--; /* a CRLF file */
  d->n = i + 1;
  return pend_add(path, g, line, n, lineno, i);
}

/* Parse one line into d (appending). Returns LS_OK or LS_ERR after a message. */
static int parse_line(const char *path, int64_t lineno, const char *line, int vocab,
                      int64_t max_len, ls_dataset_t *d, grow_t *g) {
  cJSON *o = cJSON_ParseWithOpts(line, NULL, 1); /* nothing but whitespace may follow */
  int rc = LS_ERR;
  if (!o || !cJSON_IsObject(o)) {
    ls_error("%s:%lld: not a JSON object; each line must be {\"input_ids\": [...]}", path,
             (long long)lineno);
    goto done;
  }
  const char *dup = ls_json_duplicate_key(o);
  if (dup) {
    char shown[80];
    ls_printable(shown, sizeof shown, dup);
    ls_error("%s:%lld: key \"%s\" is given twice; Python's json would take the last value, "
             "layersweep refuses to guess: keep one", path, (long long)lineno, shown);
    goto done;
  }
  const cJSON *ids = cJSON_GetObjectItemCaseSensitive(o, "input_ids");
  const cJSON *text = cJSON_GetObjectItemCaseSensitive(o, "text");
  if (!ids && text && g->topt) {
    ids = NULL; /* a text prompt (a line with input_ids uses them; its text is metadata) */
  } else if (!ids || !cJSON_IsArray(ids)) {
    ls_error("%s:%lld: missing \"input_ids\" array of token ids%s", path, (long long)lineno,
             g->topt && !ids ? " (or a \"text\" string)" : "");
    goto done;
  }
  const int kind = ids ? 1 : 2;
  if (g->kind && kind != g->kind) {
    ls_error("%s:%lld: a %s prompt, but line %lld (the first prompt) has %s; give \"input_ids\" "
             "on every line or \"text\" on every line", path, (long long)lineno,
             kind == 1 ? "\"input_ids\"" : "\"text\"", (long long)g->first_line,
             g->kind == 1 ? "\"input_ids\"" : "\"text\"");
    goto done;
  }
  if (kind == 2 && !cJSON_IsString(text)) {
    ls_error("%s:%lld: \"text\" must be a string", path, (long long)lineno);
    goto done;
  }
  if (kind == 2 && has_nul_escape(line, "\"text\"")) {
    ls_error("%s:%lld: \"text\" contains a NUL character (\\u0000); remove it", path,
             (long long)lineno);
    goto done;
  }
  if (kind == 2 && cJSON_GetObjectItemCaseSensitive(o, "attention_mask")) {
    ls_error("%s:%lld: \"attention_mask\" goes with \"input_ids\", not with \"text\"; remove it",
             path, (long long)lineno);
    goto done;
  }
  /* fields that would change what the tokens mean are refused, not ignored */
  static const char *const refused[] = {"token_type_ids", "position_ids", "inputs_embeds"};
  for (size_t r = 0; r < sizeof refused / sizeof refused[0]; r++)
    if (cJSON_GetObjectItemCaseSensitive(o, refused[r])) {
      ls_error("%s:%lld: \"%s\" is not supported (each prompt gets positions 0..n-1 and no "
               "token types); remove the field", path, (long long)lineno, refused[r]);
      goto done;
    }
  int64_t len = 0;
  if (kind == 1) { /* ---- input_ids: checked and appended now */
  int64_t n_ids = cJSON_GetArraySize(ids);
  if (n_ids == 0) {
    ls_error("%s:%lld: empty prompt (input_ids is []); remove the line or give it tokens", path,
             (long long)lineno);
    goto done;
  }
  /* attention_mask: leading or trailing zeros are padding, dropped; a hole is refused */
  int64_t first = 0, last = n_ids; /* the real tokens: input_ids[first, last) */
  const cJSON *mask = cJSON_GetObjectItemCaseSensitive(o, "attention_mask");
  if (mask && !cJSON_IsNull(mask)) {
    if (!cJSON_IsArray(mask) || cJSON_GetArraySize(mask) != n_ids) {
      ls_error("%s:%lld: \"attention_mask\" must be a list of %lld 0/1 values, one per input_id",
               path, (long long)lineno, (long long)n_ids);
      goto done;
    }
    int64_t k = 0, lo = -1, hi = -1, holes = -1;
    const cJSON *e;
    cJSON_ArrayForEach(e, mask) {
      if (!cJSON_IsNumber(e) || (e->valuedouble != 0.0 && e->valuedouble != 1.0)) {
        ls_error("%s:%lld: attention_mask[%lld] must be 0 or 1", path, (long long)lineno,
                 (long long)k);
        goto done;
      }
      if (e->valuedouble == 1.0) {
        if (lo < 0) lo = k;
        else if (hi < k - 1 && holes < 0) holes = hi + 1;
        hi = k;
      }
      k++;
    }
    if (lo < 0) {
      ls_error("%s:%lld: attention_mask is all zeros: the prompt has no real token; remove the "
               "line", path, (long long)lineno);
      goto done;
    }
    if (holes >= 0) {
      ls_error("%s:%lld: attention_mask[%lld] is 0 between real tokens; only leading or "
               "trailing padding can be dropped", path, (long long)lineno, (long long)holes);
      goto done;
    }
    first = lo;
    last = hi + 1;
    if (last - first < n_ids) {
      g->mask_dropped += n_ids - (last - first);
      g->mask_prompts++;
    }
  }
  if (g->topt && g->topt->max_tokens > 0 && last - first > g->topt->max_tokens) {
    last = first + g->topt->max_tokens; /* --max-tokens: the first tokens are kept */
    d->n_truncated++;
  }
  len = last - first;
  if (max_len > 0 && len > max_len) {
    ls_error("%s:%lld: prompt has %lld tokens, more than the model's max_position_embeddings "
             "%lld; shorten it or pass --allow-long-prompts (RoPE models only)", path, (long long)lineno,
             (long long)len, (long long)max_len);
    goto done;
  }
  if (grow((void **)&d->tokens, &g->cap_tok, g->n_tok + len, sizeof(int32_t), "tokens")) goto done;
  int64_t j = 0, at = 0;
  const cJSON *e;
  cJSON_ArrayForEach(e, ids) {
    double v = cJSON_IsNumber(e) ? e->valuedouble : NAN;
    if (!cJSON_IsNumber(e) || v != floor(v) || v < 0) {
      ls_error("%s:%lld: input_ids[%lld] is not a non-negative integer", path,
               (long long)lineno, (long long)at);
      goto done;
    }
    if (v >= vocab) {
      ls_error("%s:%lld: input_ids[%lld] = %.0f is >= the model's vocab_size %d; was the data "
               "tokenized for another model?", path, (long long)lineno, (long long)at, v, vocab);
      goto done;
    }
    if (at >= first && at < last) d->tokens[g->n_tok + j++] = (int32_t)v; /* padding: not kept */
    at++;
  }
  } /* kind == 1 */
  const cJSON *label = cJSON_GetObjectItemCaseSensitive(o, "label");
  const cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "id");
  int64_t i = d->n;
  if (i == 0) {
    d->has_label = label != NULL;
    d->has_id = id != NULL;
    g->first_line = lineno;
    g->kind = kind;
  } else if ((label != NULL) != d->has_label || (id != NULL) != d->has_id) {
    int lab = (label != NULL) != d->has_label;
    int here = lab ? label != NULL : id != NULL;
    ls_error("%s:%lld: \"%s\" is %s here but %s on line %lld (the first prompt); give it on "
             "every line or on none", path, (long long)lineno, lab ? "label" : "id",
             here ? "present" : "absent", here ? "absent" : "present", (long long)g->first_line);
    goto done;
  }
  if (grow((void **)&d->offsets, &g->cap_n, i + 2, sizeof(int64_t), "offsets")) goto done;
  if (d->has_label) {
    if (label == NULL || !cJSON_IsNumber(label) || label->valuedouble != floor(label->valuedouble) ||
        fabs(label->valuedouble) > 9e15) {
      ls_error("%s:%lld: \"label\" must be an integer", path, (long long)lineno);
      goto done;
    }
    if (grow((void **)&d->labels, &g->cap_label, i + 1, sizeof(int64_t), "labels")) goto done;
    d->labels[i] = (int64_t)label->valuedouble;
  }
  if (d->has_id) {
    if (!cJSON_IsString(id) || strlen(id->valuestring) >= LS_DATASET_MAX_ID) {
      ls_error("%s:%lld: \"id\" must be a string shorter than %d bytes", path, (long long)lineno,
               LS_DATASET_MAX_ID);
      goto done;
    }
    /* stored exactly as given: h5py's .asstr() must read every id back */
    if (has_nul_escape(line, "\"id\"")) {
      ls_error("%s:%lld: \"id\" contains a NUL character (\\u0000); ids are stored as "
               "strings and must not", path, (long long)lineno);
      goto done;
    }
    if (!utf8_valid((const unsigned char *)id->valuestring)) {
      ls_error("%s:%lld: \"id\" is not valid UTF-8; ids are stored as UTF-8 strings", path,
               (long long)lineno);
      goto done;
    }
    if (grow((void **)&d->ids, &g->cap_id, i + 1, LS_DATASET_MAX_ID, "ids")) goto done;
    memset(d->ids + (size_t)i * LS_DATASET_MAX_ID, 0, LS_DATASET_MAX_ID);
    strcpy(d->ids + (size_t)i * LS_DATASET_MAX_ID, id->valuestring);
  }
  if (i == 0) d->offsets[0] = 0;
  if (kind == 2) { /* tokenized with the chunk (flush_texts) */
    d->n = i + 1;
    rc = pend_add(path, g, text->valuestring, strlen(text->valuestring), lineno, i);
    goto done;
  }
  g->n_tok += len;
  d->offsets[i + 1] = g->n_tok;
  d->n = i + 1;
  d->n_tokens = g->n_tok;
  rc = LS_OK;
done:
  cJSON_Delete(o);
  return rc;
}

int ls_dataset_load(const char *path, int vocab, int64_t max_len, const ls_dataset_text_t *text,
                    ls_dataset_t *d) {
  memset(d, 0, sizeof *d);
  const size_t plen = strlen(path);
  const int is_txt = plen > 4 && strcasecmp(path + plen - 4, ".txt") == 0;
  /* O_NONBLOCK: a FIFO with no writer yet must not block the open forever; a pipe (e.g.
   * --data <(zcat data.gz)) is then read normally, one without a writer is empty */
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) {
    ls_error("%s: cannot open dataset: %s; check --data", path, strerror(errno));
    if (fd >= 0) close(fd);
    return LS_ERR;
  }
  if (S_ISDIR(st.st_mode)) {
    ls_error("%s: is a directory; --data must be a JSONL file", path);
    close(fd);
    return LS_ERR;
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  reader_t rd = {fd, ls_malloc(BLK, "dataset read buffer"), 0, 0, 0};
  if (!rd.blk) {
    close(fd);
    return LS_ERR;
  }
  static grow_t g0;
  grow_t g = g0;
  g.topt = text;
  char *line = NULL;
  size_t cap = 0, n = 0;
  int64_t lineno = 0;
  int rc = LS_OK, r;
  while ((r = read_line(&rd, &line, &cap, &n)) != 0) {
    lineno++;
    if (r == -1) break;
    if (r == -2) {
      ls_error("%s:%lld: line is longer than the %zu MiB accepted for one prompt; is this a "
               "JSONL file of tokenized prompts?", path, (long long)lineno,
               LS_DATASET_MAX_LINE >> 20);
      rc = LS_ERR;
      break;
    }
    if (n != strlen(line)) {
      ls_error("%s:%lld: line contains a NUL byte; is this a JSONL text file?", path,
               (long long)lineno);
      rc = LS_ERR;
      break;
    }
    if (blank(line)) continue;
    if ((is_txt ? txt_line(path, lineno, line, n, d, &g)
                : parse_line(path, lineno, line, vocab, max_len, d, &g)) != LS_OK) {
      rc = LS_ERR;
      break;
    }
    if ((g.pend.n >= CHUNK_TEXTS || g.pend.n_text >= CHUNK_BYTES) &&
        flush_texts(path, vocab, max_len, d, &g) != LS_OK) {
      rc = LS_ERR;
      break;
    }
  }
  if (rc == LS_OK && r != -1 && flush_texts(path, vocab, max_len, d, &g) != LS_OK) rc = LS_ERR;
  if (rc == LS_OK && g.tok) {
    d->from_text = 1;
    snprintf(d->tok_sha256, sizeof d->tok_sha256, "%s", ls_tokenizer_sha256(g.tok));
    snprintf(d->tok_policy, sizeof d->tok_policy, "%s", ls_tokenizer_policy(g.tok));
  }
  grow_free(&g);
  if (rc == LS_OK && r == -1) {
    ls_error("%s: read error: %s", path, strerror(errno));
    rc = LS_ERR;
  }
  free(line);
  free(rd.blk);
  close(fd);
  if (rc == LS_OK && g.mask_dropped)
    ls_info("%s: attention_mask: dropped %lld padding tokens of %lld prompts", path,
            (long long)g.mask_dropped, (long long)g.mask_prompts);
  if (rc == LS_OK && d->n_truncated)
    ls_info("%s: --max-tokens %lld: cut %lld prompts", path, (long long)text->max_tokens,
            (long long)d->n_truncated);
  if (rc == LS_OK && d->n == 0) {
    ls_error("%s: dataset is empty; expected one {\"input_ids\": [...]} %sobject per line", path,
             text ? "or {\"text\": \"...\"} " : "");
    rc = LS_ERR;
  }
  if (rc != LS_OK) ls_dataset_free(d);
  return rc;
}

void ls_dataset_free(ls_dataset_t *d) {
  free(d->tokens);
  free(d->offsets);
  free(d->labels);
  free(d->ids);
  memset(d, 0, sizeof *d);
}
