/* tokenizer.c: tokenizer.json reader and encoder (see tokenizer.h). The pipeline is the
 * `tokenizers` library's: split out the added tokens that match the raw text, normalize
 * the rest, split out the added tokens that match the normalized text, pre-tokenize the
 * pieces into words, run the model (BPE) on each word, add the post-processor's special
 * tokens. Unicode comes from utf8proc (normalization, case, categories) and PCRE2 (the
 * pre-tokenizers' regexes, JIT-compiled). */
#define _GNU_SOURCE /* memmem */
#include "tokenizer.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "ls_common.h"
#include "ls_json.h"

#define MAX_VOCAB (1 << 24)        /* entries of vocab / merges / added tokens accepted */
#define MAX_ID ((int64_t)1 << 30)  /* largest token id accepted */
#define MAX_TOKEN_BYTES 65536      /* longest vocab string */
#define MAX_ADDED_BYTES 1024       /* longest added token */
#define MAX_DEPTH 16               /* Sequence nesting */
#define MAX_TEMPLATE 64            /* items of a template */
#define CACHE_MAX_WORD 256         /* words cached (bytes) */
#define CACHE_SLOTS (1 << 16)
#define RE_MATCH_LIMIT 10000000u   /* PCRE2 backtracking limits per match */
#define RE_DEPTH_LIMIT 100000u

/* ---- small helpers ---------------------------------------------------------------------- */
static uint64_t hash_bytes(const void *p, size_t n) {
  /* FNV-1a 64 with a final mix: vocab strings are short */
  const unsigned char *s = p;
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 0x100000001b3ull;
  h ^= h >> 29;
  h *= 0xbf58476d1ce4e5b9ull;
  return h ^ (h >> 32);
}

static uint64_t mix64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  return x ^ (x >> 33);
}

int ls_utf8_valid(const char *str, size_t len) {
  const unsigned char *s = (const unsigned char *)str, *e = s + len;
  while (s < e) {
    const unsigned c = *s;
    int n = c < 0x80 ? 0 : (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2 : (c & 0xF8) == 0xF0 ? 3 : -1;
    if (n < 0 || (n == 1 && c < 0xC2) || (n == 3 && c > 0xF4) || e - s <= n) return 0;
    unsigned cp = n == 0 ? c : c & (0x3Fu >> n);
    for (int k = 1; k <= n; k++) {
      if ((s[k] & 0xC0) != 0x80) return 0;
      cp = (cp << 6) | (s[k] & 0x3Fu);
    }
    if ((n == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
        (n == 3 && (cp < 0x10000 || cp > 0x10FFFF)))
      return 0;
    s += n + 1;
  }
  return 1;
}

/* Decode one code point of valid UTF-8 at s; returns its byte length. */
static int utf8_dec(const unsigned char *s, int32_t *cp) {
  if (s[0] < 0x80) { *cp = s[0]; return 1; }
  if ((s[0] & 0xE0) == 0xC0) { *cp = ((s[0] & 0x1F) << 6) | (s[1] & 0x3F); return 2; }
  if ((s[0] & 0xF0) == 0xE0) {
    *cp = ((s[0] & 0x0F) << 12) | ((s[1] & 0x3F) << 6) | (s[2] & 0x3F);
    return 3;
  }
  *cp = ((s[0] & 0x07) << 18) | ((s[1] & 0x3F) << 12) | ((s[2] & 0x3F) << 6) | (s[3] & 0x3F);
  return 4;
}

static int utf8_len(unsigned char c) { return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4; }

/* Rust's char::is_whitespace: Unicode White_Space */
static int is_ws(int32_t c) {
  return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

/* Rust's char::is_alphanumeric (Alphabetic or Numeric), approximated by categories */
static int is_alnum(int32_t c) {
  if (c < 0x80) return (c >= '0' && c <= '9') || ((c | 32) >= 'a' && (c | 32) <= 'z');
  utf8proc_category_t k = utf8proc_category(c);
  return (k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO) ||
         (k >= UTF8PROC_CATEGORY_ND && k <= UTF8PROC_CATEGORY_NO);
}

static int is_numeric(int32_t c) {
  if (c < 0x80) return c >= '0' && c <= '9';
  utf8proc_category_t k = utf8proc_category(c);
  return k >= UTF8PROC_CATEGORY_ND && k <= UTF8PROC_CATEGORY_NO;
}

/* growable byte buffer */
typedef struct {
  char *p;
  size_t n, cap;
} buf_t;

static int buf_reserve(buf_t *b, size_t extra) {
  if (b->n + extra <= b->cap) return LS_OK;
  size_t c = b->cap ? b->cap : 256;
  while (c < b->n + extra) c *= 2;
  char *q = realloc(b->p, c);
  if (!q) return LS_ERR;
  b->p = q;
  b->cap = c;
  return LS_OK;
}

static int buf_put(buf_t *b, const void *s, size_t n) {
  if (buf_reserve(b, n + 1)) return LS_ERR;
  memcpy(b->p + b->n, s, n);
  b->n += n;
  return LS_OK;
}

/* ---- sha256 (FIPS 180-4), for the tokenizer's identity --------------------------------- */
static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_block(uint32_t h[8], const unsigned char *p) {
  uint32_t w[64];
  for (int i = 0; i < 16; i++)
    w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
  for (int i = 16; i < 64; i++) {
    uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
    uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
  for (int i = 0; i < 64; i++) {
    uint32_t t1 = hh + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K256[i] + w[i];
    uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
    hh = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
  }
  h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
}

static void sha256_hex(const void *data, size_t len, char out[65]) {
  uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  const unsigned char *p = data;
  size_t i = 0;
  for (; i + 64 <= len; i += 64) sha256_block(h, p + i);
  unsigned char tail[128] = {0};
  size_t r = len - i;
  memcpy(tail, p + i, r);
  tail[r] = 0x80;
  size_t tl = r + 9 <= 64 ? 64 : 128;
  uint64_t bits = (uint64_t)len * 8;
  for (int k = 0; k < 8; k++) tail[tl - 1 - k] = (unsigned char)(bits >> (8 * k));
  sha256_block(h, tail);
  if (tl == 128) sha256_block(h, tail + 64);
  for (int k = 0; k < 8; k++) snprintf(out + 8 * k, 9, "%08x", h[k]);
}

/* ---- hash maps: string -> id (vocab), pair -> (rank, id) (merges) -------------------- */
typedef struct {
  char *arena;       /* the strings back to back */
  size_t arena_n, arena_cap;
  uint64_t *off;     /* [n] string i is arena[off[i] .. off[i] + len[i]) */
  uint32_t *len;     /* [n] */
  int32_t *val;      /* [n] */
  int32_t *slot;     /* [mask + 1] entry index or -1 */
  size_t n, cap, mask;
} strmap_t;

static int strmap_init(strmap_t *m, size_t expect) {
  memset(m, 0, sizeof *m);
  size_t slots = 16;
  while (slots < 2 * expect + 16) slots *= 2;
  m->mask = slots - 1;
  m->slot = malloc(slots * sizeof *m->slot);
  m->cap = expect + 16;
  m->off = malloc(m->cap * sizeof *m->off);
  m->len = malloc(m->cap * sizeof *m->len);
  m->val = malloc(m->cap * sizeof *m->val);
  if (!m->slot || !m->off || !m->len || !m->val) return LS_ERR;
  memset(m->slot, 0xff, slots * sizeof *m->slot);
  return LS_OK;
}

static void strmap_free(strmap_t *m) {
  free(m->arena); free(m->off); free(m->len); free(m->val); free(m->slot);
  memset(m, 0, sizeof *m);
}

static int32_t strmap_get(const strmap_t *m, const char *s, size_t n) {
  if (!m->slot) return -1;
  for (size_t i = hash_bytes(s, n) & m->mask;; i = (i + 1) & m->mask) {
    int32_t e = m->slot[i];
    if (e < 0) return -1;
    if (m->len[e] == n && memcmp(m->arena + m->off[e], s, n) == 0) return m->val[e];
  }
}

/* Insert or overwrite (HF's maps keep the last value). */
static int strmap_put(strmap_t *m, const char *s, size_t n, int32_t v) {
  if (2 * (m->n + 1) > m->mask + 1) { /* grow the slot table */
    size_t slots = 2 * (m->mask + 1);
    int32_t *ns = malloc(slots * sizeof *ns);
    if (!ns) return LS_ERR;
    memset(ns, 0xff, slots * sizeof *ns);
    for (size_t e = 0; e < m->n; e++) {
      size_t i = hash_bytes(m->arena + m->off[e], m->len[e]) & (slots - 1);
      while (ns[i] >= 0) i = (i + 1) & (slots - 1);
      ns[i] = (int32_t)e;
    }
    free(m->slot);
    m->slot = ns;
    m->mask = slots - 1;
  }
  size_t i = hash_bytes(s, n) & m->mask;
  for (;; i = (i + 1) & m->mask) {
    int32_t e = m->slot[i];
    if (e < 0) break;
    if (m->len[e] == n && memcmp(m->arena + m->off[e], s, n) == 0) {
      m->val[e] = v;
      return LS_OK;
    }
  }
  if (m->n == m->cap) {
    size_t c = 2 * m->cap;
    uint64_t *o = realloc(m->off, c * sizeof *o);
    if (o) m->off = o;
    uint32_t *l = realloc(m->len, c * sizeof *l);
    if (l) m->len = l;
    int32_t *vv = realloc(m->val, c * sizeof *vv);
    if (vv) m->val = vv;
    if (!o || !l || !vv) return LS_ERR;
    m->cap = c;
  }
  if (m->arena_n + n + 1 > m->arena_cap) {
    size_t c = m->arena_cap ? m->arena_cap : 4096;
    while (c < m->arena_n + n + 1) c *= 2;
    char *a = realloc(m->arena, c);
    if (!a) return LS_ERR;
    m->arena = a;
    m->arena_cap = c;
  }
  memcpy(m->arena + m->arena_n, s, n);
  m->arena[m->arena_n + n] = '\0';
  m->off[m->n] = m->arena_n;
  m->len[m->n] = (uint32_t)n;
  m->val[m->n] = v;
  m->arena_n += n + 1;
  m->slot[i] = (int32_t)m->n++;
  return LS_OK;
}

typedef struct {
  uint64_t *key; /* [mask + 1] (a << 32 | b), or EMPTY */
  int32_t *rank, *id;
  size_t mask, n;
} pairmap_t;
#define EMPTY UINT64_MAX

static int pairmap_init(pairmap_t *m, size_t expect) {
  size_t slots = 16;
  while (slots < 2 * expect + 16) slots *= 2;
  m->mask = slots - 1;
  m->n = 0;
  m->key = malloc(slots * sizeof *m->key);
  m->rank = malloc(slots * sizeof *m->rank);
  m->id = malloc(slots * sizeof *m->id);
  if (!m->key || !m->rank || !m->id) return LS_ERR;
  memset(m->key, 0xff, slots * sizeof *m->key);
  return LS_OK;
}

static void pairmap_free(pairmap_t *m) { free(m->key); free(m->rank); free(m->id); }

static inline int pairmap_get(const pairmap_t *m, int32_t a, int32_t b, int32_t *rank, int32_t *id) {
  const uint64_t k = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
  for (size_t i = mix64(k) & m->mask;; i = (i + 1) & m->mask) {
    if (m->key[i] == EMPTY) return 0;
    if (m->key[i] == k) {
      *rank = m->rank[i];
      *id = m->id[i];
      return 1;
    }
  }
}

static void pairmap_put(pairmap_t *m, int32_t a, int32_t b, int32_t rank, int32_t id) {
  const uint64_t k = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
  size_t i = mix64(k) & m->mask;
  while (m->key[i] != EMPTY && m->key[i] != k) i = (i + 1) & m->mask;
  if (m->key[i] == EMPTY) m->n++;
  m->key[i] = k;
  m->rank[i] = rank;
  m->id[i] = id;
}

/* ---- components ------------------------------------------------------------------------- */
typedef struct {       /* a Split / Replace pattern: a literal string or a regex */
  char *lit;
  size_t lit_n;
  pcre2_code *re;
} pattern_t;

enum { N_NFC, N_NFD, N_NFKC, N_NFKD, N_LOWER, N_STRIP_ACCENTS, N_STRIP, N_REPLACE, N_PREPEND,
       N_SEQ };
typedef struct norm {
  int type;
  pattern_t pat;          /* N_REPLACE */
  char *str;              /* N_REPLACE content, N_PREPEND prepend */
  int left, right;        /* N_STRIP */
  struct norm *kids;      /* N_SEQ */
  int n_kids;
} norm_t;

enum { P_BYTELEVEL, P_SPLIT, P_METASPACE, P_DIGITS, P_WHITESPACE, P_WSSPLIT, P_SEQ };
enum { B_REMOVED, B_ISOLATED, B_MERGED_PREV, B_MERGED_NEXT, B_CONTIGUOUS };
enum { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER };
typedef struct pre {
  int type;
  int add_prefix_space, use_regex;  /* P_BYTELEVEL */
  pattern_t pat;                    /* P_SPLIT (and P_WHITESPACE's regex) */
  int behavior, invert;             /* P_SPLIT */
  char repl[8];                     /* P_METASPACE replacement (one char) */
  int scheme, split;                /* P_METASPACE */
  int individual;                   /* P_DIGITS */
  struct pre *kids;
  int n_kids;
} pre_t;

typedef struct {
  char *content;
  size_t len;
  int32_t id;
  int lstrip, rstrip, single_word, normalized;
} added_t;

typedef struct trie_node {  /* added tokens by their bytes: first child / next sibling */
  int32_t child, sibling, token; /* token: index into added[] or -1 */
  unsigned char byte;
} trie_node_t;

typedef struct {
  trie_node_t *nodes;
  int n, cap;
  unsigned char first[256]; /* bytes that start some token */
} trie_t;

struct ls_tokenizer {
  char name[512];
  char sha[65];
  char policy[512];
  strmap_t vocab;
  pairmap_t merges;
  int has_unk;
  int32_t unk_id;
  int byte_fallback, fuse_unk, ignore_merges;
  int32_t byte_ids[256];       /* <0xNN> ids, -1 when absent */
  char *cont_prefix, *eow_suffix;
  int64_t id_bound;
  norm_t *norm;                /* NULL: none */
  pre_t *pre;                  /* NULL: none */
  added_t *added;
  int n_added;
  trie_t trie_raw, trie_norm;  /* normalized = false / true tokens */
  strmap_t added_map;          /* content -> id */
  int32_t prefix_ids[MAX_TEMPLATE], suffix_ids[MAX_TEMPLATE];
  int n_prefix, n_suffix;
  uint16_t byte_char[256][2];  /* ByteLevel: byte -> UTF-8 of its stand-in (len, packed) */
  char byte_utf8[256][3];
  int byte_utf8_n[256];
};

/* ---- load: error reporting --------------------------------------------------------------- */
typedef struct {
  const char *file;
  int failed;
} ld_t;

static int fail(ld_t *L, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(ld_t *L, const char *fmt, ...) {
  char msg[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (!L->failed) ls_error("%s: %s", L->file, msg);
  L->failed = 1;
  return LS_ERR;
}

static const char *type_of(const cJSON *o) {
  const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "type");
  return cJSON_IsString(t) ? t->valuestring : NULL;
}

/* 1 when v is a JSON number that is an integer id in [0, MAX_ID) */
static int is_id(const cJSON *v) {
  return cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble < (double)MAX_ID &&
         v->valuedouble == floor(v->valuedouble);
}

/* optional bool field: dflt when absent or null */
static int get_bool(ld_t *L, const cJSON *o, const char *key, int dflt, int *out, const char *where) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!v || cJSON_IsNull(v)) { *out = dflt; return LS_OK; }
  if (!cJSON_IsBool(v)) return fail(L, "%s.%s must be true or false", where, key);
  *out = cJSON_IsTrue(v);
  return LS_OK;
}

static int get_str(ld_t *L, const cJSON *o, const char *key, const char **out, const char *where) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!v || cJSON_IsNull(v)) { *out = NULL; return LS_OK; }
  if (!cJSON_IsString(v)) return fail(L, "%s.%s must be a string", where, key);
  *out = v->valuestring;
  return LS_OK;
}

/* The regexes are written for Oniguruma (tokenizers' engine), whose Unicode \s is
 * White_Space and \w is Unicode TR18's word class; PCRE2's UCP classes differ at the
 * edges (U+180E, U+200D, Nl, circled letters). \s \S \w \W are rewritten into
 * Oniguruma's sets (inside a [...] class only \s and \w, the negations are kept). */
#define ONIG_WS "\\t\\n\\x{0B}\\f\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
#define ONIG_W "\\p{L}\\p{Nl}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}\\x{24B6}-\\x{24E9}\\x{1F130}-\\x{1F149}\\x{1F150}-\\x{1F169}\\x{1F170}-\\x{1F189}"
static char *rewrite_re(const char *src) {
  buf_t b = {0};
  int in_class = 0, ok = 1;
  for (const char *p = src; *p && ok; p++) {
    if (*p == '\\' && p[1]) {
      const char c = p[1];
      const char *set = c == 's' || c == 'S' ? ONIG_WS : c == 'w' || c == 'W' ? ONIG_W : NULL;
      if (set && in_class && (c == 's' || c == 'w')) ok = !buf_put(&b, set, strlen(set));
      else if (set && !in_class)
        ok = !buf_put(&b, c == 'S' || c == 'W' ? "[^" : "[", c == 'S' || c == 'W' ? 2 : 1) &&
             !buf_put(&b, set, strlen(set)) && !buf_put(&b, "]", 1);
      else ok = !buf_put(&b, p, 2);
      p++;
      continue;
    }
    if (*p == '[' && !in_class) {
      in_class = 1;
      ok = !buf_put(&b, p, 1);
      if (ok && p[1] == '^') ok = !buf_put(&b, ++p, 1);
      if (ok && p[1] == ']') ok = !buf_put(&b, ++p, 1); /* a leading ] is literal */
      continue;
    }
    if (*p == '[' && in_class && p[1] == ':') { /* [:alpha:] inside a class */
      const char *e = strstr(p + 2, ":]");
      if (e) {
        ok = !buf_put(&b, p, (size_t)(e + 2 - p));
        p = e + 1;
        continue;
      }
    }
    if (*p == ']' && in_class) in_class = 0;
    ok = !buf_put(&b, p, 1);
  }
  if (!ok || buf_put(&b, "", 1)) {
    free(b.p);
    return NULL;
  }
  return b.p;
}

static int compile_re(ld_t *L, const char *src, pcre2_code **out, const char *where) {
  int err;
  PCRE2_SIZE at;
  if (strlen(src) > 65536) return fail(L, "%s: the regex is longer than 64 KiB", where);
  char *rw = rewrite_re(src);
  if (!rw) return fail(L, "out of memory");
  pcre2_code *re = pcre2_compile((PCRE2_SPTR)rw, PCRE2_ZERO_TERMINATED,
                                 PCRE2_UTF | PCRE2_UCP | PCRE2_NEVER_BACKSLASH_C, &err, &at, NULL);
  free(rw);
  if (!re) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    return fail(L, "%s: the regex does not compile: %s", where, (char *)msg);
  }
  pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* no JIT (an old CPU, SELinux): interpreted */
  *out = re;
  return LS_OK;
}

/* {"String": s} or {"Regex": r} */
static int load_pattern(ld_t *L, const cJSON *p, pattern_t *pat, const char *where) {
  const cJSON *s = cJSON_GetObjectItemCaseSensitive(p, "String");
  const cJSON *r = cJSON_GetObjectItemCaseSensitive(p, "Regex");
  if (cJSON_IsString(s)) {
    pat->lit_n = strlen(s->valuestring);
    if (pat->lit_n == 0) return fail(L, "%s: the pattern string is empty", where);
    pat->lit = strdup(s->valuestring);
    return pat->lit ? LS_OK : fail(L, "out of memory");
  }
  if (cJSON_IsString(r)) return compile_re(L, r->valuestring, &pat->re, where);
  return fail(L, "%s.pattern must be {\"String\": ...} or {\"Regex\": ...}", where);
}

static void free_pattern(pattern_t *p) {
  free(p->lit);
  if (p->re) pcre2_code_free(p->re);
}

/* ---- load: normalizers --------------------------------------------------------------- */
static int load_norm(ld_t *L, const cJSON *o, norm_t *n, int depth) {
  memset(n, 0, sizeof *n);
  const char *t = type_of(o);
  if (!cJSON_IsObject(o) || !t) return fail(L, "normalizer without a \"type\"");
  if (depth > MAX_DEPTH) return fail(L, "normalizers nested deeper than %d", MAX_DEPTH);
  if (!strcmp(t, "NFC")) n->type = N_NFC;
  else if (!strcmp(t, "NFD")) n->type = N_NFD;
  else if (!strcmp(t, "NFKC")) n->type = N_NFKC;
  else if (!strcmp(t, "NFKD")) n->type = N_NFKD;
  else if (!strcmp(t, "Lowercase")) n->type = N_LOWER;
  else if (!strcmp(t, "StripAccents")) n->type = N_STRIP_ACCENTS;
  else if (!strcmp(t, "Strip")) {
    n->type = N_STRIP;
    LS_CHECK(get_bool(L, o, "strip_left", 1, &n->left, "normalizer Strip"));
    LS_CHECK(get_bool(L, o, "strip_right", 1, &n->right, "normalizer Strip"));
  } else if (!strcmp(t, "Replace")) {
    n->type = N_REPLACE;
    const char *content = NULL;
    LS_CHECK(get_str(L, o, "content", &content, "normalizer Replace"));
    if (!content) return fail(L, "normalizer Replace needs \"content\"");
    if (!(n->str = strdup(content))) return fail(L, "out of memory");
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "pattern");
    LS_CHECK(load_pattern(L, p, &n->pat, "normalizer Replace"));
  } else if (!strcmp(t, "Prepend")) {
    n->type = N_PREPEND;
    const char *s = NULL;
    LS_CHECK(get_str(L, o, "prepend", &s, "normalizer Prepend"));
    if (!s) return fail(L, "normalizer Prepend needs \"prepend\"");
    if (!(n->str = strdup(s))) return fail(L, "out of memory");
  } else if (!strcmp(t, "Sequence")) {
    n->type = N_SEQ;
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(o, "normalizers");
    if (!cJSON_IsArray(list)) return fail(L, "normalizer Sequence needs a \"normalizers\" list");
    int k = cJSON_GetArraySize(list);
    if (k > 64) return fail(L, "normalizer Sequence of %d normalizers (at most 64)", k);
    n->kids = calloc((size_t)k + 1, sizeof *n->kids);
    if (!n->kids) return fail(L, "out of memory");
    const cJSON *e;
    cJSON_ArrayForEach(e, list) {
      n->n_kids++;
      LS_CHECK(load_norm(L, e, &n->kids[n->n_kids - 1], depth + 1));
    }
  } else {
    char shown[80];
    return fail(L, "normalizer \"%s\" is not implemented (implemented: NFC, NFD, NFKC, NFKD, "
                "Lowercase, StripAccents, Strip, Replace, Prepend, Sequence)",
                ls_printable(shown, sizeof shown, t));
  }
  return LS_OK;
}

static void free_norm(norm_t *n) {
  for (int i = 0; i < n->n_kids; i++) free_norm(&n->kids[i]);
  free(n->kids);
  free(n->str);
  free_pattern(&n->pat);
}

/* ---- load: pre-tokenizers ------------------------------------------------------------ */
/* GPT-2's split (ByteLevel use_regex) */
static const char *const GPT2_RE =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
/* Whitespace: \w+|[^\w\s]+ with Oniguruma's Unicode \w */
static const char *const WS_RE = "\\w+|[^\\w\\s]+";

static int load_pre(ld_t *L, const cJSON *o, pre_t *p, int depth) {
  memset(p, 0, sizeof *p);
  const char *t = type_of(o);
  if (!cJSON_IsObject(o) || !t) return fail(L, "pre_tokenizer without a \"type\"");
  if (depth > MAX_DEPTH) return fail(L, "pre_tokenizers nested deeper than %d", MAX_DEPTH);
  if (!strcmp(t, "ByteLevel")) {
    p->type = P_BYTELEVEL;
    LS_CHECK(get_bool(L, o, "add_prefix_space", 1, &p->add_prefix_space, "pre_tokenizer ByteLevel"));
    LS_CHECK(get_bool(L, o, "use_regex", 1, &p->use_regex, "pre_tokenizer ByteLevel"));
    if (p->use_regex) LS_CHECK(compile_re(L, GPT2_RE, &p->pat.re, "ByteLevel"));
  } else if (!strcmp(t, "Split")) {
    p->type = P_SPLIT;
    LS_CHECK(load_pattern(L, cJSON_GetObjectItemCaseSensitive(o, "pattern"), &p->pat,
                          "pre_tokenizer Split"));
    const char *b = NULL;
    LS_CHECK(get_str(L, o, "behavior", &b, "pre_tokenizer Split"));
    static const char *const names[] = {"Removed", "Isolated", "MergedWithPrevious",
                                        "MergedWithNext", "Contiguous"};
    p->behavior = -1;
    for (int i = 0; b && i < 5; i++)
      if (!strcmp(b, names[i])) p->behavior = i;
    if (p->behavior < 0)
      return fail(L, "pre_tokenizer Split.behavior must be Removed, Isolated, "
                  "MergedWithPrevious, MergedWithNext or Contiguous");
    LS_CHECK(get_bool(L, o, "invert", 0, &p->invert, "pre_tokenizer Split"));
  } else if (!strcmp(t, "Metaspace")) {
    p->type = P_METASPACE;
    const char *r = NULL, *scheme = NULL;
    LS_CHECK(get_str(L, o, "replacement", &r, "pre_tokenizer Metaspace"));
    if (!r) r = "\xe2\x96\x81";
    if (!*r || strlen(r) > 4 || utf8_len((unsigned char)r[0]) != (int)strlen(r) ||
        !ls_utf8_valid(r, strlen(r)))
      return fail(L, "pre_tokenizer Metaspace.replacement must be one character");
    strcpy(p->repl, r);
    LS_CHECK(get_str(L, o, "prepend_scheme", &scheme, "pre_tokenizer Metaspace"));
    if (scheme) {
      if (!strcmp(scheme, "always")) p->scheme = PREPEND_ALWAYS;
      else if (!strcmp(scheme, "first")) p->scheme = PREPEND_FIRST;
      else if (!strcmp(scheme, "never")) p->scheme = PREPEND_NEVER;
      else return fail(L, "pre_tokenizer Metaspace.prepend_scheme must be always, first or never");
    } else { /* older files: add_prefix_space */
      int aps = 1;
      LS_CHECK(get_bool(L, o, "add_prefix_space", 1, &aps, "pre_tokenizer Metaspace"));
      p->scheme = aps ? PREPEND_ALWAYS : PREPEND_NEVER;
    }
    LS_CHECK(get_bool(L, o, "split", 1, &p->split, "pre_tokenizer Metaspace"));
  } else if (!strcmp(t, "Digits")) {
    p->type = P_DIGITS;
    LS_CHECK(get_bool(L, o, "individual_digits", 0, &p->individual, "pre_tokenizer Digits"));
  } else if (!strcmp(t, "Whitespace")) {
    p->type = P_WHITESPACE;
    LS_CHECK(compile_re(L, WS_RE, &p->pat.re, "Whitespace"));
  } else if (!strcmp(t, "WhitespaceSplit")) {
    p->type = P_WSSPLIT;
  } else if (!strcmp(t, "Sequence")) {
    p->type = P_SEQ;
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(o, "pretokenizers");
    if (!cJSON_IsArray(list)) return fail(L, "pre_tokenizer Sequence needs a \"pretokenizers\" list");
    int k = cJSON_GetArraySize(list);
    if (k > 64) return fail(L, "pre_tokenizer Sequence of %d pre-tokenizers (at most 64)", k);
    p->kids = calloc((size_t)k + 1, sizeof *p->kids);
    if (!p->kids) return fail(L, "out of memory");
    const cJSON *e;
    cJSON_ArrayForEach(e, list) {
      p->n_kids++;
      LS_CHECK(load_pre(L, e, &p->kids[p->n_kids - 1], depth + 1));
    }
  } else {
    char shown[80];
    return fail(L, "pre_tokenizer \"%s\" is not implemented (implemented: ByteLevel, Split, "
                "Metaspace, Digits, Whitespace, WhitespaceSplit, Sequence)",
                ls_printable(shown, sizeof shown, t));
  }
  return LS_OK;
}

static void free_pre(pre_t *p) {
  for (int i = 0; i < p->n_kids; i++) free_pre(&p->kids[i]);
  free(p->kids);
  free_pattern(&p->pat);
}

/* ---- load: the BPE model ----------------------------------------------------------- */
static int load_bpe(ld_t *L, ls_tokenizer_t *t, const cJSON *m) {
  const char *type = type_of(m);
  const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(m, "vocab");
  const cJSON *merges = cJSON_GetObjectItemCaseSensitive(m, "merges");
  if (!type && merges) type = "BPE"; /* very old files: untagged */
  if (!type) return fail(L, "model has no \"type\"");
  if (strcmp(type, "BPE") != 0) {
    char shown[80];
    return fail(L, "model type \"%s\" is not implemented (implemented: BPE); this tokenizer "
                "cannot be used for text input: give --data as input_ids",
                ls_printable(shown, sizeof shown, type));
  }
  const cJSON *drop = cJSON_GetObjectItemCaseSensitive(m, "dropout");
  if (drop && !cJSON_IsNull(drop) && !(cJSON_IsNumber(drop) && drop->valuedouble == 0.0))
    return fail(L, "model.dropout is set: BPE dropout makes tokenization random; set it to null");
  if (!cJSON_IsObject(vocab)) return fail(L, "model.vocab must be an object {token: id}");
  int nv = cJSON_GetArraySize(vocab);
  if (nv > MAX_VOCAB) return fail(L, "model.vocab has %d entries (at most %d)", nv, MAX_VOCAB);
  if (strmap_init(&t->vocab, (size_t)nv)) return fail(L, "out of memory");
  const cJSON *e;
  cJSON_ArrayForEach(e, vocab) {
    if (!is_id(e)) return fail(L, "model.vocab: the id of a token is not an integer in [0, 2^30)");
    size_t n = strlen(e->string);
    if (n > MAX_TOKEN_BYTES) return fail(L, "model.vocab: a token of %zu bytes (at most %d)", n, MAX_TOKEN_BYTES);
    const int32_t id = (int32_t)e->valuedouble;
    if (strmap_get(&t->vocab, e->string, n) >= 0) {
      char shown[80];
      return fail(L, "model.vocab: token \"%s\" is given twice; keep one",
                  ls_printable(shown, sizeof shown, e->string));
    }
    if (strmap_put(&t->vocab, e->string, n, id)) return fail(L, "out of memory");
    if (id + 1 > t->id_bound) t->id_bound = id + 1;
  }
  const char *unk = NULL, *pre = NULL, *suf = NULL;
  LS_CHECK(get_str(L, m, "unk_token", &unk, "model"));
  LS_CHECK(get_str(L, m, "continuing_subword_prefix", &pre, "model"));
  LS_CHECK(get_str(L, m, "end_of_word_suffix", &suf, "model"));
  LS_CHECK(get_bool(L, m, "fuse_unk", 0, &t->fuse_unk, "model"));
  LS_CHECK(get_bool(L, m, "byte_fallback", 0, &t->byte_fallback, "model"));
  LS_CHECK(get_bool(L, m, "ignore_merges", 0, &t->ignore_merges, "model"));
  if (unk) {
    t->unk_id = strmap_get(&t->vocab, unk, strlen(unk));
    if (t->unk_id < 0) {
      char shown[80];
      return fail(L, "model.unk_token \"%s\" is not in model.vocab", ls_printable(shown, sizeof shown, unk));
    }
    t->has_unk = 1;
  }
  if ((pre && !(t->cont_prefix = strdup(pre))) || (suf && !(t->eow_suffix = strdup(suf))))
    return fail(L, "out of memory");
  for (int b = 0; b < 256; b++) {
    char code[8];
    snprintf(code, sizeof code, "<0x%02X>", b);
    t->byte_ids[b] = strmap_get(&t->vocab, code, 6);
  }
  /* merges: "a b" strings or ["a", "b"] pairs; rank = position */
  if (!merges || cJSON_IsNull(merges)) merges = NULL;
  else if (!cJSON_IsArray(merges)) return fail(L, "model.merges must be a list");
  int nm = merges ? cJSON_GetArraySize(merges) : 0;
  if (nm > MAX_VOCAB) return fail(L, "model.merges has %d entries (at most %d)", nm, MAX_VOCAB);
  if (pairmap_init(&t->merges, (size_t)nm)) return fail(L, "out of memory");
  const size_t pre_n = pre ? strlen(pre) : 0;
  buf_t cat = {0};
  int rank = 0;
  if (merges) cJSON_ArrayForEach(e, merges) {
    const char *a, *b;
    size_t an, bn;
    if (cJSON_IsString(e)) {
      const char *sp = strchr(e->valuestring, ' ');
      if (!sp) { free(cat.p); return fail(L, "model.merges[%d] is not \"a b\"", rank); }
      a = e->valuestring; an = (size_t)(sp - a);
      b = sp + 1; bn = strlen(b);
    } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 &&
               cJSON_IsString(cJSON_GetArrayItem(e, 0)) && cJSON_IsString(cJSON_GetArrayItem(e, 1))) {
      a = cJSON_GetArrayItem(e, 0)->valuestring; an = strlen(a);
      b = cJSON_GetArrayItem(e, 1)->valuestring; bn = strlen(b);
    } else {
      free(cat.p);
      return fail(L, "model.merges[%d] is neither \"a b\" nor [\"a\", \"b\"]", rank);
    }
    int32_t ia = strmap_get(&t->vocab, a, an), ib = strmap_get(&t->vocab, b, bn);
    /* the merged token drops b's continuing_subword_prefix */
    size_t skip = pre_n && bn >= pre_n && memcmp(b, pre, pre_n) == 0 ? pre_n : 0;
    cat.n = 0;
    if (buf_put(&cat, a, an) || buf_put(&cat, b + skip, bn - skip)) {
      free(cat.p);
      return fail(L, "out of memory");
    }
    int32_t im = strmap_get(&t->vocab, cat.p, cat.n);
    if (ia < 0 || ib < 0 || im < 0) {
      char shown[80];
      cat.p[cat.n] = '\0';
      fail(L, "model.merges[%d]: \"%s\" %s not in model.vocab", rank,
           ls_printable(shown, sizeof shown, ia < 0 ? a : ib < 0 ? b : cat.p),
           ia < 0 || ib < 0 ? "(a part) is" : "(the merged token) is");
      free(cat.p);
      return LS_ERR;
    }
    pairmap_put(&t->merges, ia, ib, rank, im);
    rank++;
  }
  free(cat.p);
  return LS_OK;
}

/* ---- load: added tokens ------------------------------------------------------------- */
static int trie_add(trie_t *tr, const char *s, size_t n, int32_t token) {
  if (tr->n == 0) {
    tr->cap = 64;
    tr->nodes = malloc((size_t)tr->cap * sizeof *tr->nodes);
    if (!tr->nodes) return LS_ERR;
    tr->nodes[0] = (trie_node_t){-1, -1, -1, 0};
    tr->n = 1;
  }
  int32_t at = 0;
  for (size_t i = 0; i < n; i++) {
    const unsigned char c = (unsigned char)s[i];
    int32_t k = tr->nodes[at].child;
    while (k >= 0 && tr->nodes[k].byte != c) k = tr->nodes[k].sibling;
    if (k < 0) {
      if (tr->n == tr->cap) {
        trie_node_t *q = realloc(tr->nodes, (size_t)tr->cap * 2 * sizeof *q);
        if (!q) return LS_ERR;
        tr->nodes = q;
        tr->cap *= 2;
      }
      k = tr->n++;
      tr->nodes[k] = (trie_node_t){-1, tr->nodes[at].child, -1, c};
      tr->nodes[at].child = k;
    }
    at = k;
  }
  if (tr->nodes[at].token < 0) tr->nodes[at].token = token; /* a duplicate: the first wins */
  tr->first[(unsigned char)s[0]] = 1;
  return LS_OK;
}

static int norm_apply(const norm_t *n, buf_t *io, buf_t *tmp, pcre2_match_data *md,
                      pcre2_match_context *mc);

static int load_added(ld_t *L, ls_tokenizer_t *t, const cJSON *list) {
  if (!list || cJSON_IsNull(list)) return LS_OK;
  if (!cJSON_IsArray(list)) return fail(L, "added_tokens must be a list");
  int k = cJSON_GetArraySize(list);
  if (k > MAX_VOCAB) return fail(L, "added_tokens has %d entries (at most %d)", k, MAX_VOCAB);
  t->added = calloc((size_t)k + 1, sizeof *t->added);
  if (!t->added || strmap_init(&t->added_map, (size_t)k)) return fail(L, "out of memory");
  pcre2_match_data *md = pcre2_match_data_create(1, NULL);
  buf_t s = {0}, tmp = {0};
  int rc = LS_OK;
  const cJSON *e;
  cJSON_ArrayForEach(e, list) {
    const int i = t->n_added;
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(e, "content");
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
    if (!cJSON_IsObject(e) || !cJSON_IsString(c) || !is_id(id)) {
      rc = fail(L, "added_tokens[%d] needs \"content\" (a string) and \"id\" (an integer in [0, 2^30))", i);
      break;
    }
    added_t *a = &t->added[i];
    a->len = strlen(c->valuestring);
    if (a->len == 0 || a->len > MAX_ADDED_BYTES) {
      rc = fail(L, "added_tokens[%d]: content of %zu bytes (1 to %d accepted)", i, a->len, MAX_ADDED_BYTES);
      break;
    }
    if (!(a->content = strdup(c->valuestring))) { rc = fail(L, "out of memory"); break; }
    int special = 0;
    if (get_bool(L, e, "lstrip", 0, &a->lstrip, "added_tokens[]") ||
        get_bool(L, e, "rstrip", 0, &a->rstrip, "added_tokens[]") ||
        get_bool(L, e, "single_word", 0, &a->single_word, "added_tokens[]") ||
        get_bool(L, e, "special", 0, &special, "added_tokens[]") ||
        get_bool(L, e, "normalized", !special, &a->normalized, "added_tokens[]")) {
      rc = LS_ERR;
      break;
    }
    /* the id is the model's when the model has the token (as tokenizers assigns it) */
    int32_t vid = strmap_get(&t->vocab, a->content, a->len);
    a->id = vid >= 0 ? vid : (int32_t)id->valuedouble;
    if (a->id + 1 > t->id_bound) t->id_bound = a->id + 1;
    t->n_added++;
    if (strmap_get(&t->added_map, a->content, a->len) < 0 &&
        strmap_put(&t->added_map, a->content, a->len, a->id)) { rc = fail(L, "out of memory"); break; }
    /* a normalized token is matched in the normalized text by its normalized form */
    s.n = 0;
    if (buf_put(&s, a->content, a->len)) { rc = fail(L, "out of memory"); break; }
    if (a->normalized && t->norm && norm_apply(t->norm, &s, &tmp, md, NULL)) {
      rc = fail(L, "added_tokens[%d]: normalizing its content failed", i);
      break;
    }
    if (s.n == 0) continue; /* normalized to nothing: never matches */
    if (trie_add(a->normalized ? &t->trie_norm : &t->trie_raw, s.p, s.n, i)) {
      rc = fail(L, "out of memory");
      break;
    }
  }
  free(s.p);
  free(tmp.p);
  pcre2_match_data_free(md);
  return rc;
}

/* ---- load: post-processor, tokenizer_config.json ---------------------------------- */
static int push_ids(ld_t *L, int32_t *dst, int *n, const cJSON *ids, const char *where) {
  if (!cJSON_IsArray(ids)) return fail(L, "%s: \"ids\" must be a list", where);
  const cJSON *e;
  cJSON_ArrayForEach(e, ids) {
    if (!is_id(e)) return fail(L, "%s: an id is not an integer in [0, 2^30)", where);
    if (*n >= MAX_TEMPLATE) return fail(L, "%s: more than %d special tokens", where, MAX_TEMPLATE);
    dst[(*n)++] = (int32_t)e->valuedouble;
  }
  return LS_OK;
}

static int load_post(ld_t *L, ls_tokenizer_t *t, const cJSON *o, int depth) {
  if (!o || cJSON_IsNull(o)) return LS_OK;
  const char *type = type_of(o);
  if (!cJSON_IsObject(o) || !type) return fail(L, "post_processor without a \"type\"");
  if (depth > MAX_DEPTH) return fail(L, "post_processors nested deeper than %d", MAX_DEPTH);
  if (!strcmp(type, "ByteLevel")) return LS_OK; /* offsets only */
  if (!strcmp(type, "Sequence")) {
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(o, "processors"), *e;
    if (!cJSON_IsArray(list)) return fail(L, "post_processor Sequence needs a \"processors\" list");
    cJSON_ArrayForEach(e, list) LS_CHECK(load_post(L, t, e, depth + 1));
    return LS_OK;
  }
  if (!strcmp(type, "RobertaProcessing") || !strcmp(type, "BertProcessing")) {
    const cJSON *cls = cJSON_GetObjectItemCaseSensitive(o, "cls");
    const cJSON *sep = cJSON_GetObjectItemCaseSensitive(o, "sep");
    if (!cJSON_IsArray(cls) || !cJSON_IsArray(sep) || cJSON_GetArraySize(cls) != 2 ||
        cJSON_GetArraySize(sep) != 2 || !is_id(cJSON_GetArrayItem(cls, 1)) ||
        !is_id(cJSON_GetArrayItem(sep, 1)))
      return fail(L, "post_processor %s needs \"cls\" and \"sep\" as [token, id in [0, 2^30)]", type);
    double c = cJSON_GetArrayItem(cls, 1)->valuedouble, s = cJSON_GetArrayItem(sep, 1)->valuedouble;
    if (t->n_prefix >= MAX_TEMPLATE || t->n_suffix >= MAX_TEMPLATE)
      return fail(L, "post_processor: more than %d special tokens", MAX_TEMPLATE);
    /* a Sequence applies processors in turn: each wraps what the last produced */
    memmove(t->prefix_ids + 1, t->prefix_ids, (size_t)t->n_prefix * sizeof(int32_t));
    t->prefix_ids[0] = (int32_t)c;
    t->n_prefix++;
    t->suffix_ids[t->n_suffix++] = (int32_t)s;
    return LS_OK;
  }
  if (!strcmp(type, "TemplateProcessing")) {
    const cJSON *single = cJSON_GetObjectItemCaseSensitive(o, "single");
    const cJSON *specials = cJSON_GetObjectItemCaseSensitive(o, "special_tokens");
    if (!cJSON_IsArray(single) || (specials && !cJSON_IsObject(specials)))
      return fail(L, "post_processor TemplateProcessing needs a \"single\" list and a "
                  "\"special_tokens\" object");
    int32_t pre[MAX_TEMPLATE], suf[MAX_TEMPLATE];
    int np = 0, ns = 0, seen_a = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, single) {
      const cJSON *sp = cJSON_GetObjectItemCaseSensitive(e, "SpecialToken");
      const cJSON *sq = cJSON_GetObjectItemCaseSensitive(e, "Sequence");
      if (sq) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(sq, "id");
        if (!cJSON_IsString(id) || strcmp(id->valuestring, "A") != 0 || seen_a)
          return fail(L, "post_processor TemplateProcessing.single must hold the sequence $A once");
        seen_a = 1;
      } else if (sp) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(sp, "id");
        const cJSON *tok = cJSON_IsString(id) ? cJSON_GetObjectItemCaseSensitive(specials, id->valuestring) : NULL;
        if (!tok) return fail(L, "post_processor TemplateProcessing: a special token of \"single\" "
                              "is not in \"special_tokens\"");
        LS_CHECK(push_ids(L, seen_a ? suf : pre, seen_a ? &ns : &np,
                          cJSON_GetObjectItemCaseSensitive(tok, "ids"), "post_processor TemplateProcessing"));
      } else {
        return fail(L, "post_processor TemplateProcessing.single: an item is neither "
                    "SpecialToken nor Sequence");
      }
    }
    if (!seen_a) return fail(L, "post_processor TemplateProcessing.single lacks $A");
    if (t->n_prefix + np > MAX_TEMPLATE || t->n_suffix + ns > MAX_TEMPLATE)
      return fail(L, "post_processor: more than %d special tokens", MAX_TEMPLATE);
    memmove(t->prefix_ids + np, t->prefix_ids, (size_t)t->n_prefix * sizeof(int32_t));
    memcpy(t->prefix_ids, pre, (size_t)np * sizeof(int32_t));
    t->n_prefix += np;
    memcpy(t->suffix_ids + t->n_suffix, suf, (size_t)ns * sizeof(int32_t));
    t->n_suffix += ns;
    return LS_OK;
  }
  char shown[80];
  return fail(L, "post_processor \"%s\" is not implemented (implemented: TemplateProcessing, "
              "ByteLevel, RobertaProcessing, BertProcessing, Sequence)",
              ls_printable(shown, sizeof shown, type));
}

/* tokenizer_config.json's special token: "s" or {"content": "s"} */
static const char *config_str(const cJSON *cfg, const char *key) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
  if (cJSON_IsObject(v)) v = cJSON_GetObjectItemCaseSensitive(v, "content");
  return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int config_bool(const cJSON *cfg, const char *key, int dflt) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
  return cJSON_IsBool(v) ? cJSON_IsTrue(v) : dflt;
}

static void set_item(cJSON *o, const char *key, cJSON *v) {
  if (cJSON_GetObjectItemCaseSensitive(o, key)) cJSON_ReplaceItemInObjectCaseSensitive(o, key, v);
  else cJSON_AddItemToObject(o, key, v);
}

/* transformers 5 loads a tokenizer.json through the class tokenizer_config.json names:
 * the generic ones (PreTrainedTokenizerFast, TokenizersBackend, or none) use the file as
 * it is, but a model class with its own __init__ rebuilds the tokenizer from the file's
 * vocab and merges with the class's own normalizer, pre-tokenizer and BPE flags
 * (keeping the file's post-processor). Those of the families layersweep runs are
 * replayed here (transformers/models/<family>/tokenization_<family>.py); another class
 * is named in a warning. tokenizer_config.json's add_bos_token / add_eos_token are
 * dropped by transformers when tokenizer.json exists, and so here. */
static const char *const QWEN2_RE =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

static int apply_class(ld_t *L, cJSON *root, const char *cfg_json, char *note, size_t note_cap) {
  note[0] = '\0';
  if (!cfg_json) return LS_OK;
  cJSON *cfg = cJSON_Parse(cfg_json);
  if (!cJSON_IsObject(cfg)) {
    cJSON_Delete(cfg);
    return fail(L, "tokenizer_config.json beside it is not a JSON object");
  }
  const char *cls = config_str(cfg, "tokenizer_class");
  char name[96] = "";
  if (cls) snprintf(name, sizeof name, "%s", cls);
  const size_t nl = strlen(name);
  if (nl > 4 && strcmp(name + nl - 4, "Fast") == 0) name[nl - 4] = '\0'; /* LlamaTokenizerFast */
  cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
  const char *mtype = type_of(model);
  char norm[256] = "", pre[1024] = "";
  const char *unk = NULL;
  int fuse = 0, bytefb = 0, known = 1;
  const int aps0 = config_bool(cfg, "add_prefix_space", 0);
  if (!cls || !strcmp(name, "PreTrainedTokenizer") || !strcmp(name, "TokenizersBackend") ||
      !strcmp(name, "PreTrainedTokenizerBase") || (mtype && strcmp(mtype, "BPE") != 0)) {
    known = 0; /* generic: the file as it is (a non-BPE model is refused later anyway) */
  } else if (!strcmp(name, "LlamaTokenizer")) {
    const int aps = config_bool(cfg, "add_prefix_space", 1), legacy = config_bool(cfg, "legacy", 0);
    snprintf(pre, sizeof pre, "{\"type\": \"Metaspace\", \"replacement\": \"\\u2581\", "
             "\"prepend_scheme\": \"%s\", \"split\": false}", !aps ? "never" : legacy ? "always" : "first");
    fuse = bytefb = 1;
  } else if (!strcmp(name, "GemmaTokenizer")) {
    snprintf(norm, sizeof norm, "{\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, \"content\": \"\\u2581\"}");
    snprintf(pre, sizeof pre, "{\"type\": \"Split\", \"pattern\": {\"String\": \" \"}, \"behavior\": "
             "\"MergedWithPrevious\", \"invert\": false}");
    unk = config_str(cfg, "unk_token");
    if (!unk) unk = "<unk>";
    fuse = bytefb = 1;
  } else if (!strcmp(name, "GPT2Tokenizer") || !strcmp(name, "GPTNeoXTokenizer")) {
    if (!strcmp(name, "GPTNeoXTokenizer")) snprintf(norm, sizeof norm, "{\"type\": \"NFC\"}");
    snprintf(pre, sizeof pre, "{\"type\": \"ByteLevel\", \"add_prefix_space\": %s}", aps0 ? "true" : "false");
  } else if (!strcmp(name, "Qwen2Tokenizer")) {
    snprintf(norm, sizeof norm, "{\"type\": \"NFC\"}");
    cJSON *seq = cJSON_CreateObject(), *list = cJSON_AddArrayToObject(seq, "pretokenizers");
    cJSON_AddStringToObject(seq, "type", "Sequence");
    cJSON *sp = cJSON_CreateObject(), *pat = cJSON_AddObjectToObject(sp, "pattern");
    cJSON_AddStringToObject(sp, "type", "Split");
    cJSON_AddStringToObject(pat, "Regex", QWEN2_RE);
    cJSON_AddStringToObject(sp, "behavior", "Isolated");
    cJSON_AddItemToArray(list, sp);
    cJSON *bl = cJSON_CreateObject();
    cJSON_AddStringToObject(bl, "type", "ByteLevel");
    cJSON_AddBoolToObject(bl, "add_prefix_space", aps0);
    cJSON_AddBoolToObject(bl, "use_regex", 0);
    cJSON_AddItemToArray(list, bl);
    char *txt = cJSON_PrintUnformatted(seq);
    cJSON_Delete(seq);
    if (!txt) { cJSON_Delete(cfg); return fail(L, "out of memory"); }
    snprintf(pre, sizeof pre, "%s", txt);
    free(txt);
  } else {
    known = 0;
    char shown[100];
    ls_warn("%s: tokenizer_config.json names tokenizer_class %s; transformers may rebuild that "
            "class's tokenizer from the vocab: the ids here follow tokenizer.json as it is",
            L->file, ls_printable(shown, sizeof shown, cls));
  }
  if (known && cJSON_IsObject(model)) {
    set_item(root, "normalizer", norm[0] ? cJSON_Parse(norm) : cJSON_CreateNull());
    set_item(root, "pre_tokenizer", cJSON_Parse(pre));
    set_item(model, "unk_token", unk ? cJSON_CreateString(unk) : cJSON_CreateNull());
    set_item(model, "fuse_unk", cJSON_CreateBool(fuse));
    set_item(model, "byte_fallback", cJSON_CreateBool(bytefb));
    set_item(model, "ignore_merges", cJSON_CreateFalse());
    set_item(model, "continuing_subword_prefix", cJSON_CreateNull());
    set_item(model, "end_of_word_suffix", cJSON_CreateNull());
    snprintf(note, note_cap, "; as transformers' %s", name);
  }
  cJSON_Delete(cfg);
  return LS_OK;
}

static void describe_policy(ls_tokenizer_t *t, const char *note) {
  char *p = t->policy;
  size_t cap = sizeof t->policy, o = 0;
  for (int i = 0; i < t->n_prefix && o < cap; i++)
    o += (size_t)snprintf(p + o, cap - o, "%d + ", t->prefix_ids[i]);
  if (o < cap) o += (size_t)snprintf(p + o, cap - o, "text");
  for (int i = 0; i < t->n_suffix && o < cap; i++)
    o += (size_t)snprintf(p + o, cap - o, " + %d", t->suffix_ids[i]);
  if (o < cap)
    snprintf(p + o, cap - o, " (bos/eos ids around each prompt: %d before, %d after%s)",
             t->n_prefix, t->n_suffix, note);
}

static void init_bytes(ls_tokenizer_t *t) {
  /* GPT-2's bytes_to_unicode: printable bytes stand for themselves, the others map to
   * U+0100 upwards in order */
  int n = 0;
  for (int b = 0; b < 256; b++) {
    int cp = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174) ? b : 256 + n++;
    unsigned char *o = (unsigned char *)t->byte_utf8[b];
    if (cp < 0x80) { o[0] = (unsigned char)cp; t->byte_utf8_n[b] = 1; }
    else { o[0] = (unsigned char)(0xC0 | (cp >> 6)); o[1] = (unsigned char)(0x80 | (cp & 0x3F)); t->byte_utf8_n[b] = 2; }
  }
}

int ls_tokenizer_load_mem(const char *json, size_t len, const char *config_json,
                          const char *name, ls_tokenizer_t **out) {
  *out = NULL;
  ld_t L = {name, 0};
  ls_tokenizer_t *t = calloc(1, sizeof *t);
  if (!t) return fail(&L, "out of memory");
  snprintf(t->name, sizeof t->name, "%s", name);
  sha256_hex(json, len, t->sha);
  init_bytes(t);
  cJSON *root = NULL;
  if (len > LS_TOKENIZER_MAX_JSON || strlen(json) != len) {
    fail(&L, "not a tokenizer.json (%s)", strlen(json) != len ? "holds a NUL byte" : "too large");
    goto bad;
  }
  root = cJSON_ParseWithLength(json, len);
  if (!cJSON_IsObject(root)) {
    fail(&L, "not valid JSON (or not an object); is this a Hugging Face tokenizer.json?");
    goto bad;
  }
  /* duplicate keys are refused (Python's json would keep the last one); model.vocab,
   * with up to millions of keys, is checked as it is hashed (ls_json_duplicate_key is
   * quadratic in an object's keys), the rest here */
  cJSON *model_w = cJSON_GetObjectItemCaseSensitive(root, "model");
  cJSON *vocab_w = cJSON_IsObject(model_w) ? cJSON_DetachItemFromObjectCaseSensitive(model_w, "vocab") : NULL;
  const char *dup = ls_json_duplicate_key(root);
  if (vocab_w) cJSON_AddItemToObject(model_w, "vocab", vocab_w);
  if (dup) {
    char shown[80];
    fail(&L, "key \"%s\" is given twice; keep one", ls_printable(shown, sizeof shown, dup));
    goto bad;
  }
  const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
  if (!cJSON_IsObject(model)) {
    fail(&L, "no \"model\" object; is this a Hugging Face tokenizer.json?");
    goto bad;
  }
  char cls_note[128];
  if (apply_class(&L, root, config_json, cls_note, sizeof cls_note)) goto bad;
  if (load_bpe(&L, t, model)) goto bad;
  const cJSON *n = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
  if (n && !cJSON_IsNull(n)) {
    if (!(t->norm = calloc(1, sizeof *t->norm)) || load_norm(&L, n, t->norm, 0)) goto bad_oom;
  }
  const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
  if (p && !cJSON_IsNull(p)) {
    if (!(t->pre = calloc(1, sizeof *t->pre)) || load_pre(&L, p, t->pre, 0)) goto bad_oom;
  }
  if (load_added(&L, t, cJSON_GetObjectItemCaseSensitive(root, "added_tokens"))) goto bad;
  const cJSON *post = cJSON_GetObjectItemCaseSensitive(root, "post_processor");
  if (load_post(&L, t, post, 0)) goto bad;
  for (int i = 0; i < t->n_prefix; i++)
    if (t->prefix_ids[i] + 1 > t->id_bound) t->id_bound = t->prefix_ids[i] + 1;
  for (int i = 0; i < t->n_suffix; i++)
    if (t->suffix_ids[i] + 1 > t->id_bound) t->id_bound = t->suffix_ids[i] + 1;
  describe_policy(t, cls_note);
  cJSON_Delete(root);
  *out = t;
  return LS_OK;
bad_oom:
  if (!L.failed) fail(&L, "out of memory");
bad:
  cJSON_Delete(root);
  ls_tokenizer_free(t);
  return LS_ERR;
}

int ls_tokenizer_load(const char *dir, ls_tokenizer_t **out) {
  char path[4096], cpath[4096];
  snprintf(path, sizeof path, "%s/tokenizer.json", dir);
  snprintf(cpath, sizeof cpath, "%s/tokenizer_config.json", dir);
  size_t len = 0;
  FILE *probe = fopen(path, "rb");
  if (!probe) {
    ls_error("%s: cannot open: text input needs the model's tokenizer.json in --model "
             "(or give --data as input_ids)", path);
    return LS_ERR;
  }
  fclose(probe);
  char *json = ls_read_text_file(path, LS_TOKENIZER_MAX_JSON, &len);
  if (!json) return LS_ERR;
  char *cfg = NULL;
  FILE *f = fopen(cpath, "rb");
  if (f) {
    fclose(f);
    size_t clen;
    if (!(cfg = ls_read_text_file(cpath, (size_t)64 << 20, &clen))) {
      free(json);
      return LS_ERR;
    }
  }
  int rc = ls_tokenizer_load_mem(json, len, cfg, path, out);
  free(json);
  free(cfg);
  return rc;
}

void ls_tokenizer_free(ls_tokenizer_t *t) {
  if (!t) return;
  strmap_free(&t->vocab);
  pairmap_free(&t->merges);
  free(t->cont_prefix);
  free(t->eow_suffix);
  if (t->norm) free_norm(t->norm);
  free(t->norm);
  if (t->pre) free_pre(t->pre);
  free(t->pre);
  for (int i = 0; i < t->n_added; i++) free(t->added[i].content);
  free(t->added);
  free(t->trie_raw.nodes);
  free(t->trie_norm.nodes);
  strmap_free(&t->added_map);
  free(t);
}

const char *ls_tokenizer_sha256(const ls_tokenizer_t *t) { return t->sha; }
const char *ls_tokenizer_policy(const ls_tokenizer_t *t) { return t->policy; }
int64_t ls_tokenizer_id_bound(const ls_tokenizer_t *t) { return t->id_bound; }

/* ---- encode: per-thread context --------------------------------------------------------- */
typedef struct {       /* a piece of text: bytes [off, off + len) of an arena */
  size_t off, len;
  int32_t token;       /* an added token's id, or -1 for text */
  int at_start;        /* starts at the text's first byte (Metaspace "first") */
} piece_t;

typedef struct {
  piece_t *v;
  size_t n, cap;
} pieces_t;

typedef struct {       /* BPE symbols, a doubly linked list */
  int32_t id, prev, next, len;
} sym_t;

typedef struct {       /* a merge candidate in the heap */
  int32_t rank, pos, id;
} cand_t;

typedef struct {       /* word cache entry */
  uint64_t hash;
  uint32_t key_off, key_len, ids_off, ids_n;
} centry_t;

struct ls_tok_ctx {
  const ls_tokenizer_t *t;
  pcre2_match_data *md;
  pcre2_match_context *mc;
  pcre2_jit_stack *js;
  buf_t a, b, tmp, word;     /* text arenas (pieces point into a or b) */
  pieces_t pa, pb;
  int32_t *ids;
  size_t n_ids, cap_ids;
  sym_t *sym;
  size_t cap_sym;
  cand_t *heap;
  size_t cap_heap;
  centry_t *cache;           /* [CACHE_SLOTS] */
  size_t cache_n;
  buf_t cache_keys;
  int32_t *cache_ids;
  size_t cache_ids_n, cache_ids_cap;
  char err[256];
};

ls_tok_ctx_t *ls_tok_ctx_new(const ls_tokenizer_t *t) {
  ls_tok_ctx_t *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->t = t;
  c->md = pcre2_match_data_create(1, NULL);
  c->mc = pcre2_match_context_create(NULL);
  c->js = pcre2_jit_stack_create(32 << 10, 8 << 20, NULL);
  c->cache = calloc(CACHE_SLOTS, sizeof *c->cache);
  if (!c->md || !c->mc || !c->js || !c->cache) {
    ls_tok_ctx_free(c);
    return NULL;
  }
  pcre2_set_match_limit(c->mc, RE_MATCH_LIMIT);
  pcre2_set_depth_limit(c->mc, RE_DEPTH_LIMIT);
  pcre2_jit_stack_assign(c->mc, NULL, c->js);
  return c;
}

void ls_tok_ctx_free(ls_tok_ctx_t *c) {
  if (!c) return;
  if (c->md) pcre2_match_data_free(c->md);
  if (c->mc) pcre2_match_context_free(c->mc);
  if (c->js) pcre2_jit_stack_free(c->js);
  free(c->a.p); free(c->b.p); free(c->tmp.p); free(c->word.p);
  free(c->pa.v); free(c->pb.v);
  free(c->ids); free(c->sym); free(c->heap);
  free(c->cache); free(c->cache_keys.p); free(c->cache_ids);
  free(c);
}

const char *ls_tok_ctx_error(const ls_tok_ctx_t *c) { return c->err; }

static int oom(ls_tok_ctx_t *c) {
  snprintf(c->err, sizeof c->err, "out of memory while tokenizing");
  return LS_ERR;
}

static int push_piece(pieces_t *p, size_t off, size_t len, int32_t token, int at_start) {
  if (p->n == p->cap) {
    size_t cap = p->cap ? 2 * p->cap : 64;
    piece_t *v = realloc(p->v, cap * sizeof *v);
    if (!v) return LS_ERR;
    p->v = v;
    p->cap = cap;
  }
  p->v[p->n++] = (piece_t){off, len, token, at_start};
  return LS_OK;
}

static int push_id(ls_tok_ctx_t *c, int32_t id) {
  if (c->n_ids == c->cap_ids) {
    size_t cap = c->cap_ids ? 2 * c->cap_ids : 256;
    int32_t *v = realloc(c->ids, cap * sizeof *v);
    if (!v) return LS_ERR;
    c->ids = v;
    c->cap_ids = cap;
  }
  c->ids[c->n_ids++] = id;
  return LS_OK;
}

/* ---- encode: patterns ------------------------------------------------------------------ */
/* The next match of pat in s[0..n) at or after *pos: [*ms, *me). 1 found, 0 none, -1 a
 * regex error (limit). An empty match moves the search on by one character. */
static int next_match(const pattern_t *pat, const char *s, size_t n, size_t pos, size_t *ms,
                      size_t *me, pcre2_match_data *md, pcre2_match_context *mc) {
  if (pat->lit) {
    if (pos >= n || n - pos < pat->lit_n) return 0;
    const char *f = memmem(s + pos, n - pos, pat->lit, pat->lit_n);
    if (!f) return 0;
    *ms = (size_t)(f - s);
    *me = *ms + pat->lit_n;
    return 1;
  }
  if (pos > n) return 0;
  int rc = pcre2_match(pat->re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, md, mc);
  if (rc == PCRE2_ERROR_NOMATCH) return 0;
  if (rc < 0) return -1;
  PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
  *ms = ov[0];
  *me = ov[1];
  return 1;
}

/* ---- encode: normalizers ---------------------------------------------------------------- */
static int utf8proc_norm(buf_t *io, utf8proc_option_t opt) {
  utf8proc_uint8_t *out = NULL;
  utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)io->p, (utf8proc_ssize_t)io->n, &out,
                                    opt | UTF8PROC_STABLE);
  if (r < 0) return LS_ERR;
  io->n = 0;
  int rc = buf_put(io, out, (size_t)r);
  free(out);
  return rc;
}

/* Apply n to the text in io (tmp: scratch). */
static int norm_apply(const norm_t *n, buf_t *io, buf_t *tmp, pcre2_match_data *md,
                      pcre2_match_context *mc) {
  tmp->n = 0;
  switch (n->type) {
    case N_NFC: return utf8proc_norm(io, UTF8PROC_COMPOSE);
    case N_NFD: return utf8proc_norm(io, UTF8PROC_DECOMPOSE);
    case N_NFKC: return utf8proc_norm(io, UTF8PROC_COMPOSE | UTF8PROC_COMPAT);
    case N_NFKD: return utf8proc_norm(io, UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT);
    case N_SEQ:
      for (int i = 0; i < n->n_kids; i++) LS_CHECK(norm_apply(&n->kids[i], io, tmp, md, mc));
      return LS_OK;
    case N_PREPEND:
      if (io->n == 0) return LS_OK; /* tokenizers prepends to non-empty text only */
      LS_CHECK(buf_put(tmp, n->str, strlen(n->str)));
      LS_CHECK(buf_put(tmp, io->p, io->n));
      break;
    case N_LOWER:
    case N_STRIP_ACCENTS: {
      for (size_t i = 0; i < io->n;) {
        int32_t cp;
        i += (size_t)utf8_dec((const unsigned char *)io->p + i, &cp);
        if (n->type == N_STRIP_ACCENTS) {
          const utf8proc_category_t k = utf8proc_category(cp); /* any mark: Mn, Mc, Me */
          if (k == UTF8PROC_CATEGORY_MN || k == UTF8PROC_CATEGORY_MC || k == UTF8PROC_CATEGORY_ME) continue;
        } else if (cp == 0x130) { /* İ: Rust's full lowercase mapping is i + U+0307 */
          LS_CHECK(buf_put(tmp, "i\xcc\x87", 3));
          continue;
        } else {
          cp = utf8proc_tolower(cp);
        }
        utf8proc_uint8_t enc[4];
        LS_CHECK(buf_put(tmp, enc, (size_t)utf8proc_encode_char(cp, enc)));
      }
      break;
    }
    case N_STRIP: {
      size_t s = 0, e = io->n;
      while (n->left && s < e) {
        int32_t cp;
        int k = utf8_dec((const unsigned char *)io->p + s, &cp);
        if (!is_ws(cp)) break;
        s += (size_t)k;
      }
      while (n->right && e > s) {
        size_t k = e - 1;
        while (k > s && ((unsigned char)io->p[k] & 0xC0) == 0x80) k--;
        int32_t cp;
        utf8_dec((const unsigned char *)io->p + k, &cp);
        if (!is_ws(cp)) break;
        e = k;
      }
      LS_CHECK(buf_put(tmp, io->p + s, e - s));
      break;
    }
    case N_REPLACE: {
      size_t pos = 0, ms, me;
      int r;
      while ((r = next_match(&n->pat, io->p, io->n, pos, &ms, &me, md, mc)) == 1) {
        LS_CHECK(buf_put(tmp, io->p + pos, ms - pos));
        LS_CHECK(buf_put(tmp, n->str, strlen(n->str)));
        if (me == ms) { /* empty match: keep the next character, move on */
          if (ms >= io->n) { pos = io->n; break; }
          size_t k = (size_t)utf8_len((unsigned char)io->p[ms]);
          LS_CHECK(buf_put(tmp, io->p + ms, k));
          me = ms + k;
        }
        pos = me;
      }
      if (r < 0) return LS_ERR;
      LS_CHECK(buf_put(tmp, io->p + pos, io->n - pos));
      break;
    }
  }
  /* swap tmp into io */
  buf_t s = *io;
  *io = *tmp;
  *tmp = s;
  return LS_OK;
}

/* ---- encode: added tokens ---------------------------------------------------------------- */
static int last_char(const char *s, size_t n, int32_t *cp) {
  if (n == 0) return 0;
  size_t k = n - 1;
  while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
  utf8_dec((const unsigned char *)s + k, cp);
  return 1;
}

/* Split the text s[0..n) (in buffer src, at offset base) around the tokens of trie tr,
 * as tokenizers' AddedVocabulary::find_matches: leftmost-longest matches, single_word,
 * lstrip / rstrip. Appends pieces to out. */
static int split_added(ls_tok_ctx_t *c, const trie_t *tr, size_t base, const char *s, size_t n,
                       int at_start, pieces_t *out) {
  const ls_tokenizer_t *t = c->t;
  size_t start_off = 0;
  for (size_t i = 0; tr->n && i < n;) {
    if (!tr->first[(unsigned char)s[i]]) { i++; continue; }
    int32_t at = 0, best = -1;
    size_t best_end = 0;
    for (size_t j = i; j < n; j++) {
      int32_t k = tr->nodes[at].child;
      while (k >= 0 && tr->nodes[k].byte != (unsigned char)s[j]) k = tr->nodes[k].sibling;
      if (k < 0) break;
      at = k;
      if (tr->nodes[at].token >= 0) { best = tr->nodes[at].token; best_end = j + 1; }
    }
    if (best < 0) { i++; continue; }
    const added_t *a = &t->added[best];
    size_t ms = i, me = best_end;
    i = best_end; /* the next search starts after this match (aho-corasick's find_iter) */
    if (a->single_word) {
      int32_t cp;
      int before = ms > 0 && last_char(s, ms, &cp) && (is_alnum(cp) || cp == '_');
      int after = 0;
      if (me < n) { utf8_dec((const unsigned char *)s + me, &cp); after = is_alnum(cp) || cp == '_'; }
      if (before || after) continue;
    }
    if (a->lstrip) {
      size_t k = ms;
      int32_t cp;
      while (k > 0 && last_char(s, k, &cp) && is_ws(cp)) {
        size_t q = k - 1;
        while (q > 0 && ((unsigned char)s[q] & 0xC0) == 0x80) q--;
        k = q;
      }
      ms = k > start_off ? k : start_off;
    }
    if (a->rstrip) {
      size_t k = me, last = 0;
      int any = 0;
      while (k < n) {
        int32_t cp;
        int len = utf8_dec((const unsigned char *)s + k, &cp);
        if (!is_ws(cp)) break;
        last = k;
        any = 1;
        k += (size_t)len;
      }
      if (any) me = last + 1; /* tokenizers' end_space + 1 (exact for ASCII spaces) */
    }
    if (start_off < ms && push_piece(out, base + start_off, ms - start_off, -1, at_start && start_off == 0))
      return oom(c);
    if (push_piece(out, base + ms, me - ms, a->id, 0)) return oom(c);
    start_off = me;
  }
  if (start_off < n && push_piece(out, base + start_off, n - start_off, -1, at_start && start_off == 0))
    return oom(c);
  return LS_OK;
}

/* ---- encode: pre-tokenizers ---------------------------------------------------------- */
/* Split each text piece of in (in arena src) by matches (regex, literal, or the
 * character classes of P_DIGITS / P_WSSPLIT), with behavior; pieces go to out, their
 * bytes appended to dst. */
typedef struct {
  size_t s, e;
  int match;
} seg_t;

static int emit(ls_tok_ctx_t *c, buf_t *dst, pieces_t *out, const char *s, size_t len, int at_start) {
  if (len == 0) return LS_OK;
  size_t off = dst->n;
  if (buf_put(dst, s, len) || push_piece(out, off, len, -1, at_start)) return oom(c);
  return LS_OK;
}

static int char_class(int type, int32_t cp) {
  return type == P_DIGITS ? is_numeric(cp) : is_ws(cp);
}

/* Split one piece's bytes s[0..n) and emit the segments. */
static int split_piece(ls_tok_ctx_t *c, const pre_t *p, const char *s, size_t n, int at_start,
                       buf_t *dst, pieces_t *out) {
  int behavior = p->behavior, invert = p->invert;
  if (p->type == P_DIGITS) behavior = p->individual ? B_ISOLATED : B_CONTIGUOUS, invert = 0;
  if (p->type == P_WSSPLIT) behavior = B_REMOVED, invert = 0;
  if (p->type == P_WHITESPACE) behavior = B_REMOVED, invert = 1;
  if (p->type == P_BYTELEVEL) behavior = B_ISOLATED, invert = 0;
  /* the segments: alternating non-matches and matches (tokenizers' find_matches) */
  seg_t *seg = NULL;
  size_t ns = 0, cs = 0;
#define SEG(a, b, m)                                                                \
  do {                                                                              \
    if (ns == cs) {                                                                 \
      cs = cs ? 2 * cs : 32;                                                        \
      seg_t *q_ = realloc(seg, cs * sizeof *seg);                                   \
      if (!q_) { free(seg); return oom(c); }                                        \
      seg = q_;                                                                     \
    }                                                                               \
    seg[ns++] = (seg_t){(a), (b), (m)};                                             \
  } while (0)
  size_t prev = 0;
  if (p->type == P_DIGITS || p->type == P_WSSPLIT) {
    for (size_t i = 0; i < n;) {
      int32_t cp;
      int k = utf8_dec((const unsigned char *)s + i, &cp);
      if (char_class(p->type, cp)) {
        if (prev != i) SEG(prev, i, 0);
        SEG(i, i + (size_t)k, 1);
        prev = i + (size_t)k;
      }
      i += (size_t)k;
    }
  } else {
    size_t pos = 0, ms, me;
    int r;
    while ((r = next_match(&p->pat, s, n, pos, &ms, &me, c->md, c->mc)) == 1) {
      if (prev != ms) SEG(prev, ms, 0);
      SEG(ms, me, 1);
      prev = me;
      pos = me > ms ? me : ms + (ms < n ? (size_t)utf8_len((unsigned char)s[ms]) : 1);
    }
    if (r < 0) {
      free(seg);
      snprintf(c->err, sizeof c->err, "a pre-tokenizer regex hit PCRE2's match limit");
      return LS_ERR;
    }
  }
  if (prev != n) SEG(prev, n, 0);
#undef SEG
  if (invert)
    for (size_t i = 0; i < ns; i++) seg[i].match = !seg[i].match;
  /* behavior (tokenizers' SplitDelimiterBehavior); afterwards match = "removed" */
  size_t m = 0;
  int prev_match = 0;
  switch (behavior) {
    case B_REMOVED: /* the matches are dropped below */
      m = ns;
      break;
    case B_ISOLATED:
      for (size_t i = 0; i < ns; i++) seg[i].match = 0;
      m = ns;
      break;
    case B_MERGED_PREV:
      for (size_t i = 0; i < ns; i++) {
        const int mt = seg[i].match;
        if (mt && !prev_match && m > 0) seg[m - 1].e = seg[i].e;
        else seg[m++] = (seg_t){seg[i].s, seg[i].e, 0};
        prev_match = mt;
      }
      break;
    case B_MERGED_NEXT: {
      /* from the right: a match joins the segment after it */
      size_t w = ns;
      for (size_t i = ns; i-- > 0;) {
        const int mt = seg[i].match;
        if (mt && !prev_match && w < ns) seg[w].s = seg[i].s;
        else seg[--w] = (seg_t){seg[i].s, seg[i].e, 0};
        prev_match = mt;
      }
      memmove(seg, seg + w, (ns - w) * sizeof *seg);
      m = ns - w;
      break;
    }
    case B_CONTIGUOUS:
      for (size_t i = 0; i < ns; i++) {
        const int mt = seg[i].match;
        if (m > 0 && mt == prev_match) seg[m - 1].e = seg[i].e;
        else seg[m++] = (seg_t){seg[i].s, seg[i].e, 0};
        prev_match = mt;
      }
      for (size_t i = 0; i < m; i++) seg[i].match = 0;
      break;
  }
  int rc = LS_OK;
  for (size_t i = 0; i < m && rc == LS_OK; i++)
    if (!(behavior == B_REMOVED && seg[i].match))
      rc = emit(c, dst, out, s + seg[i].s, seg[i].e - seg[i].s, at_start && seg[i].s == 0);
  free(seg);
  return rc;
}

/* One pre-tokenizer over the pieces in *in (bytes in *src): the result replaces them. */
static int pre_apply(ls_tok_ctx_t *c, const pre_t *p, pieces_t **in, buf_t **src, pieces_t **out,
                     buf_t **dst) {
  if (p->type == P_SEQ) {
    for (int i = 0; i < p->n_kids; i++) LS_CHECK(pre_apply(c, &p->kids[i], in, src, out, dst));
    return LS_OK;
  }
  (*out)->n = 0;
  (*dst)->n = 0;
  buf_t *w = &c->word;
  for (size_t i = 0; i < (*in)->n; i++) {
    const piece_t pc = (*in)->v[i];
    if (pc.token >= 0) { /* an added token passes through */
      if (push_piece(*out, 0, 0, pc.token, 0)) return oom(c);
      continue;
    }
    const char *s = (*src)->p + pc.off;
    switch (p->type) {
      case P_BYTELEVEL: {
        w->n = 0;
        if (p->add_prefix_space && s[0] != ' ' && buf_put(w, " ", 1)) return oom(c);
        if (buf_put(w, s, pc.len)) return oom(c);
        const size_t base = (*dst)->n, first = (*out)->n;
        if (p->use_regex) LS_CHECK(split_piece(c, p, w->p, w->n, pc.at_start, *dst, *out));
        else LS_CHECK(emit(c, *dst, *out, w->p, w->n, pc.at_start));
        /* map the bytes to their stand-in characters: rebuild the new pieces' bytes */
        buf_t *m = &c->tmp;
        m->n = 0;
        for (size_t k = first; k < (*out)->n; k++) {
          piece_t *q = &(*out)->v[k];
          size_t off = m->n;
          for (size_t b = 0; b < q->len; b++) {
            unsigned char ch = (unsigned char)(*dst)->p[q->off + b];
            if (buf_put(m, c->t->byte_utf8[ch], (size_t)c->t->byte_utf8_n[ch])) return oom(c);
          }
          q->off = base + off;
          q->len = m->n - off;
        }
        (*dst)->n = base;
        if (buf_put(*dst, m->p, m->n)) return oom(c);
        break;
      }
      case P_METASPACE: {
        w->n = 0;
        const size_t rl = strlen(p->repl);
        int starts = 0;
        for (size_t k = 0; k < pc.len; k++) {
          if (s[k] == ' ') { if (buf_put(w, p->repl, rl)) return oom(c); }
          else if (buf_put(w, s + k, 1)) return oom(c);
        }
        starts = w->n >= rl && memcmp(w->p, p->repl, rl) == 0;
        if (!starts && (p->scheme == PREPEND_ALWAYS || (p->scheme == PREPEND_FIRST && pc.at_start))) {
          c->tmp.n = 0;
          if (buf_put(&c->tmp, p->repl, rl) || buf_put(&c->tmp, w->p, w->n)) return oom(c);
          w->n = 0;
          if (buf_put(w, c->tmp.p, c->tmp.n)) return oom(c);
        }
        if (!p->split) {
          LS_CHECK(emit(c, *dst, *out, w->p, w->n, pc.at_start));
        } else { /* split before each replacement character (MergedWithNext) */
          size_t a = 0;
          for (size_t k = 1; k + rl <= w->n; k++)
            if (memcmp(w->p + k, p->repl, rl) == 0) {
              LS_CHECK(emit(c, *dst, *out, w->p + a, k - a, pc.at_start && a == 0));
              a = k;
            }
          LS_CHECK(emit(c, *dst, *out, w->p + a, w->n - a, pc.at_start && a == 0));
        }
        break;
      }
      default:
        LS_CHECK(split_piece(c, p, s, pc.len, pc.at_start, *dst, *out));
    }
  }
  pieces_t *tp = *in;
  *in = *out;
  *out = tp;
  buf_t *tb = *src;
  *src = *dst;
  *dst = tb;
  return LS_OK;
}

/* ---- encode: BPE --------------------------------------------------------------------------- */
static inline int cand_less(const cand_t *x, const cand_t *y) {
  return x->rank != y->rank ? x->rank < y->rank : x->pos < y->pos;
}

static void heap_push(cand_t *h, size_t *n, cand_t v) {
  size_t i = (*n)++;
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (!cand_less(&v, &h[p])) break;
    h[i] = h[p];
    i = p;
  }
  h[i] = v;
}

static cand_t heap_pop(cand_t *h, size_t *n) {
  cand_t top = h[0], v = h[--*n];
  size_t i = 0;
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    const cand_t *best = &v;
    if (l < *n && cand_less(&h[l], best)) { m = l; best = &h[l]; }
    if (r < *n && cand_less(&h[r], best)) m = r;
    if (m == i) break;
    h[i] = h[m];
    i = m;
  }
  if (*n) h[i] = v;
  return top;
}

/* The ids of one word (tokenizers' BPE::merge_word + Word::merge_all). */
static int bpe_word(ls_tok_ctx_t *c, const char *w, size_t n) {
  const ls_tokenizer_t *t = c->t;
  if (t->ignore_merges) {
    int32_t id = strmap_get(&t->vocab, w, n);
    if (id >= 0) return push_id(c, id) ? oom(c) : LS_OK;
  }
  if (n + 1 > c->cap_sym) {
    size_t cap = 2 * (n + 1);
    sym_t *s = realloc(c->sym, cap * sizeof *s);
    cand_t *h = realloc(c->heap, 2 * cap * sizeof *h);
    if (s) c->sym = s;
    if (h) c->heap = h;
    if (!s || !h) return oom(c);
    c->cap_sym = cap;
  }
  sym_t *sym = c->sym;
  int32_t ns = 0;
  int32_t unk = -1, unk_len = 0;
  buf_t *tmp = &c->tmp;
  const size_t pre_n = t->cont_prefix ? strlen(t->cont_prefix) : 0;
#define ADD(id_, len_)                                                                \
  do {                                                                              \
    sym[ns] = (sym_t){(id_), ns - 1, ns + 1, (len_)};                               \
    ns++;                                                                           \
  } while (0)
  for (size_t i = 0; i < n;) {
    const size_t k = (size_t)utf8_len((unsigned char)w[i]);
    const char *s = w + i;
    size_t sl = k;
    if ((pre_n && i > 0) || (t->eow_suffix && i + k == n)) {
      tmp->n = 0;
      if ((pre_n && i > 0 && buf_put(tmp, t->cont_prefix, pre_n)) || buf_put(tmp, w + i, k) ||
          (t->eow_suffix && i + k == n && buf_put(tmp, t->eow_suffix, strlen(t->eow_suffix))))
        return oom(c);
      s = tmp->p;
      sl = tmp->n;
    }
    int32_t id = strmap_get(&t->vocab, s, sl);
    if (id >= 0) {
      if (unk >= 0) { ADD(unk, unk_len); unk = -1; }
      ADD(id, (int32_t)k);
    } else {
      int done = 0;
      if (t->byte_fallback) {
        int all = 1;
        for (size_t b = 0; b < sl; b++) all &= t->byte_ids[(unsigned char)s[b]] >= 0;
        if (all) {
          if ((size_t)ns + sl + 1 > c->cap_sym) { /* a prefix / suffix made it longer */
            size_t cap = 2 * ((size_t)ns + sl + n + 1);
            sym_t *q = realloc(c->sym, cap * sizeof *q);
            cand_t *h = realloc(c->heap, 2 * cap * sizeof *h);
            if (q) c->sym = q;
            if (h) c->heap = h;
            if (!q || !h) return oom(c);
            c->cap_sym = cap;
            sym = c->sym;
          }
          for (size_t b = 0; b < sl; b++) ADD(t->byte_ids[(unsigned char)s[b]], 1);
          done = 1; /* (a pending unk stays pending, as in tokenizers) */
        }
      }
      if (!done && t->has_unk) {
        if (unk >= 0 && t->fuse_unk) unk_len += (int32_t)k;
        else {
          if (unk >= 0) ADD(unk, unk_len);
          unk = t->unk_id;
          unk_len = (int32_t)k;
        }
      }
    }
    i += k;
    if ((size_t)ns + 2 > c->cap_sym) { /* room for a pending unk */
      size_t cap = 2 * ((size_t)ns + 2);
      sym_t *q = realloc(c->sym, cap * sizeof *q);
      cand_t *h = realloc(c->heap, 2 * cap * sizeof *h);
      if (q) c->sym = q;
      if (h) c->heap = h;
      if (!q || !h) return oom(c);
      c->cap_sym = cap;
      sym = c->sym;
    }
  }
  if (unk >= 0) ADD(unk, unk_len);
#undef ADD
  if (ns == 0) return LS_OK;
  sym[ns - 1].next = -1;
  /* merge by rank, leftmost first */
  cand_t *heap = c->heap;
  size_t nh = 0;
  int32_t rank, id;
  for (int32_t i = 0; i + 1 < ns; i++)
    if (pairmap_get(&t->merges, sym[i].id, sym[i + 1].id, &rank, &id))
      heap_push(heap, &nh, (cand_t){rank, i, id});
  while (nh) {
    cand_t top = heap_pop(heap, &nh);
    sym_t *l = &sym[top.pos];
    if (l->len == 0 || l->next < 0) continue;
    sym_t *r = &sym[l->next];
    int32_t r2, id2;
    if (!pairmap_get(&t->merges, l->id, r->id, &r2, &id2) || id2 != top.id) continue;
    l->id = top.id;
    l->len += r->len;
    r->len = 0;
    l->next = r->next;
    if (r->next >= 0) sym[r->next].prev = top.pos;
    if (l->prev >= 0 && pairmap_get(&t->merges, sym[l->prev].id, l->id, &rank, &id))
      heap_push(heap, &nh, (cand_t){rank, l->prev, id});
    if (l->next >= 0 && pairmap_get(&t->merges, l->id, sym[l->next].id, &rank, &id))
      heap_push(heap, &nh, (cand_t){rank, top.pos, id});
  }
  for (int32_t i = 0; i >= 0; i = sym[i].next)
    if (push_id(c, sym[i].id)) return oom(c);
  return LS_OK;
}

/* bpe_word through the word cache (short words only; the cache is emptied when full). */
static int bpe_cached(ls_tok_ctx_t *c, const char *w, size_t n) {
  if (n > CACHE_MAX_WORD) return bpe_word(c, w, n);
  const uint64_t h = hash_bytes(w, n) | 1;
  size_t i = h & (CACHE_SLOTS - 1);
  for (;; i = (i + 1) & (CACHE_SLOTS - 1)) {
    const centry_t *e = &c->cache[i];
    if (e->hash == 0) break;
    if (e->hash == h && e->key_len == n && memcmp(c->cache_keys.p + e->key_off, w, n) == 0) {
      for (uint32_t k = 0; k < e->ids_n; k++)
        if (push_id(c, c->cache_ids[e->ids_off + k])) return oom(c);
      return LS_OK;
    }
  }
  const size_t before = c->n_ids;
  LS_CHECK(bpe_word(c, w, n));
  const size_t got = c->n_ids - before;
  if (c->cache_n >= CACHE_SLOTS / 2 || c->cache_keys.n > ((size_t)8 << 20)) { /* full: empty it */
    memset(c->cache, 0, CACHE_SLOTS * sizeof *c->cache);
    c->cache_n = 0;
    c->cache_keys.n = 0;
    c->cache_ids_n = 0;
    for (i = h & (CACHE_SLOTS - 1); c->cache[i].hash; i = (i + 1) & (CACHE_SLOTS - 1)) {}
  }
  if (c->cache_ids_n + got > c->cache_ids_cap) {
    size_t cap = c->cache_ids_cap ? c->cache_ids_cap : 4096;
    while (cap < c->cache_ids_n + got) cap *= 2;
    int32_t *q = realloc(c->cache_ids, cap * sizeof *q);
    if (!q) return LS_OK; /* not cached; the ids are right */
    c->cache_ids = q;
    c->cache_ids_cap = cap;
  }
  const size_t key_off = c->cache_keys.n;
  if (buf_put(&c->cache_keys, w, n)) return LS_OK;
  if (got) memcpy(c->cache_ids + c->cache_ids_n, c->ids + before, got * sizeof(int32_t));
  c->cache[i] = (centry_t){h, (uint32_t)key_off, (uint32_t)n, (uint32_t)c->cache_ids_n, (uint32_t)got};
  c->cache_ids_n += got;
  c->cache_n++;
  return LS_OK;
}

/* ---- encode ------------------------------------------------------------------------------- */
int ls_tokenizer_encode(ls_tok_ctx_t *c, const char *text, size_t len, const int32_t **ids,
                        size_t *n) {
  const ls_tokenizer_t *t = c->t;
  c->err[0] = '\0';
  c->n_ids = 0;
  *ids = NULL;
  *n = 0;
  if (len > LS_TOKENIZER_MAX_TEXT) {
    snprintf(c->err, sizeof c->err, "text of %zu bytes (at most %zu MiB are tokenized at once)",
             len, LS_TOKENIZER_MAX_TEXT >> 20);
    return LS_ERR;
  }
  if (!ls_utf8_valid(text, len)) {
    snprintf(c->err, sizeof c->err, "text is not valid UTF-8");
    return LS_ERR;
  }
  for (int i = 0; i < t->n_prefix; i++)
    if (push_id(c, t->prefix_ids[i])) return oom(c);
  /* 1. added tokens in the raw text; 2. normalize the rest; 3. added tokens in the
   * normalized text. Pieces of a point into buffer a (the text), of b into b. */
  buf_t *A = &c->a, *B = &c->b;
  pieces_t *P = &c->pa, *Q = &c->pb;
  A->n = 0;
  P->n = Q->n = 0;
  if (buf_put(A, text, len)) return oom(c);
  if (len) LS_CHECK(split_added(c, &t->trie_raw, 0, A->p, len, 1, P));
  B->n = 0;
  buf_t *norm = &c->word;
  for (size_t i = 0; i < P->n; i++) {
    const piece_t pc = P->v[i];
    if (pc.token >= 0) {
      if (push_piece(Q, 0, 0, pc.token, 0)) return oom(c);
      continue;
    }
    norm->n = 0;
    if (buf_put(norm, A->p + pc.off, pc.len)) return oom(c);
    if (t->norm && norm_apply(t->norm, norm, &c->tmp, c->md, c->mc)) {
      snprintf(c->err, sizeof c->err, "normalizing the text failed (a regex limit, or no memory)");
      return LS_ERR;
    }
    if (norm->n == 0) continue;
    const size_t base = B->n;
    if (buf_put(B, norm->p, norm->n)) return oom(c);
    LS_CHECK(split_added(c, &t->trie_norm, base, B->p + base, norm->n, pc.at_start, Q));
  }
  /* 4. pre-tokenize the text pieces (Q, bytes in B) into words */
  pieces_t *in = Q, *out = P;
  buf_t *src = B, *dst = A;
  if (t->pre) LS_CHECK(pre_apply(c, t->pre, &in, &src, &out, &dst));
  /* 5. the model */
  for (size_t i = 0; i < in->n; i++) {
    const piece_t pc = in->v[i];
    if (pc.token >= 0) {
      if (push_id(c, pc.token)) return oom(c);
    } else if (pc.len) {
      LS_CHECK(bpe_cached(c, src->p + pc.off, pc.len));
    }
  }
  for (int i = 0; i < t->n_suffix; i++)
    if (push_id(c, t->suffix_ids[i])) return oom(c);
  *ids = c->ids;
  *n = c->n_ids;
  return LS_OK;
}
