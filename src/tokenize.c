/* tokenize.c: `layersweep tokenize` (see tokenize.h). The input is read in chunks of
 * lines; each thread parses, tokenizes and formats a contiguous share of a chunk into its
 * own buffer, and the buffers are written in order, so the output lines are in input
 * order whatever the thread count. */
#include "tokenize.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dataset.h"
#include "guard.h"
#include "ls_common.h"
#include "ls_json.h"
#include "tokenizer.h"

#define CHUNK_LINES 16384
#define CHUNK_BYTES ((size_t)32 << 20)
#define MAX_THREADS 256
#define READ_BLOCK ((size_t)1 << 20)

typedef struct {
  char *p;
  size_t n, cap;
} obuf_t;

static int ob_put(obuf_t *b, const char *s, size_t n) {
  if (b->n + n > b->cap) {
    size_t c = b->cap ? b->cap : 1 << 16;
    while (c < b->n + n) c *= 2;
    char *q = realloc(b->p, c);
    if (!q) return LS_ERR;
    b->p = q;
    b->cap = c;
  }
  memcpy(b->p + b->n, s, n);
  b->n += n;
  return LS_OK;
}

/* ---- one chunk of lines ------------------------------------------------------------------ */
typedef struct {
  char *text;          /* the lines back to back, NUL after each */
  size_t n_text, cap_text;
  size_t *off;         /* [cap] line k is text[off[k] ..], len[k] bytes */
  size_t *len;
  int64_t *lineno;
  size_t n, cap;
} chunk_t;

typedef struct {
  const ls_tokenize_opts_t *o;
  const char *path;
  int is_txt;
  chunk_t *ch;
  ls_tok_ctx_t *ctx;
  int worker, n_workers;
  obuf_t out;
  size_t fail;         /* first failing line of the share (ch->n: none) */
  int64_t tokens;      /* ids written */
  char err[512];
} job_t;

static int put_ids(job_t *j, const int32_t *ids, size_t n) {
  obuf_t *b = &j->out;
  char num[16];
  j->tokens += (int64_t)n;
  if (ob_put(b, "\"input_ids\": [", 14)) return LS_ERR;
  for (size_t i = 0; i < n; i++) {
    int k = snprintf(num, sizeof num, i ? ", %d" : "%d", ids[i]);
    if (ob_put(b, num, (size_t)k)) return LS_ERR;
  }
  return ob_put(b, "]}\n", 3);
}

/* 1 when the raw line has a \u0000 escape (cJSON would cut the string there). */
static int has_nul_escape(const char *s) {
  for (const char *p = strchr(s, '\\'); p; p = strchr(p + 2, '\\')) {
    if (strncasecmp(p, "\\u0000", 6) == 0) return 1;
    if (!p[1]) break;
  }
  return 0;
}

/* One line to its output line; LS_ERR with j->err set. */
static int do_line(job_t *j, const char *line, size_t n) {
  const int32_t *ids;
  size_t k;
  if (j->is_txt) {
    if (n > 0 && line[n - 1] == '\r') n--;
    if (ls_tokenizer_encode(j->ctx, line, n, &ids, &k) != LS_OK) {
      snprintf(j->err, sizeof j->err, "cannot tokenize the line: %s", ls_tok_ctx_error(j->ctx));
      return LS_ERR;
    }
    if (ob_put(&j->out, "{", 1)) goto oom;
    if (j->o->keep_text) {
      cJSON *s = cJSON_CreateString("");
      char *q = NULL;
      if (s) {
        free(s->valuestring);
        s->valuestring = malloc(n + 1);
        if (s->valuestring) {
          memcpy(s->valuestring, line, n);
          s->valuestring[n] = '\0';
          q = cJSON_PrintUnformatted(s);
        }
      }
      int bad = !q || ob_put(&j->out, "\"text\": ", 8) || ob_put(&j->out, q, strlen(q)) ||
                ob_put(&j->out, ", ", 2);
      free(q);
      cJSON_Delete(s);
      if (bad) goto oom;
    }
    return put_ids(j, ids, k) ? LS_ERR : LS_OK;
  }
  cJSON *o = cJSON_ParseWithOpts(line, NULL, 1);
  int rc = LS_ERR;
  if (!cJSON_IsObject(o)) {
    snprintf(j->err, sizeof j->err, "not a JSON object; each line must be {\"text\": \"...\"}");
    goto done;
  }
  const char *dup = ls_json_duplicate_key(o);
  if (dup) {
    char shown[80];
    snprintf(j->err, sizeof j->err, "key \"%s\" is given twice; keep one",
             ls_printable(shown, sizeof shown, dup));
    goto done;
  }
  const cJSON *text = cJSON_GetObjectItemCaseSensitive(o, "text");
  if (!cJSON_IsString(text)) {
    snprintf(j->err, sizeof j->err, "%s", text ? "\"text\" must be a string"
                                               : "missing \"text\" string");
    goto done;
  }
  if (cJSON_GetObjectItemCaseSensitive(o, "input_ids")) {
    snprintf(j->err, sizeof j->err, "the line already has \"input_ids\"; remove them or the line");
    goto done;
  }
  if (has_nul_escape(line)) {
    snprintf(j->err, sizeof j->err, "the line holds a NUL character (\\u0000); remove it");
    goto done;
  }
  if (ls_tokenizer_encode(j->ctx, text->valuestring, strlen(text->valuestring), &ids, &k) != LS_OK) {
    snprintf(j->err, sizeof j->err, "cannot tokenize the text: %s", ls_tok_ctx_error(j->ctx));
    goto done;
  }
  /* the line's own bytes are kept (with --keep-text), else the object without "text" as
   * cJSON prints it; "input_ids" goes last */
  const char *body;
  size_t bn;
  char *printed = NULL;
  if (j->o->keep_text) {
    body = line;
    bn = n;
  } else {
    cJSON_DeleteItemFromObjectCaseSensitive(o, "text");
    printed = cJSON_PrintUnformatted(o);
    if (!printed) goto oom_o;
    body = printed;
    bn = strlen(printed);
  }
  while (bn > 0 && (body[bn - 1] == ' ' || body[bn - 1] == '\t' || body[bn - 1] == '\r')) bn--;
  /* body ends with '}': open it, add a comma unless the object is now empty */
  size_t close = bn - 1, q = close;
  while (q > 0 && (body[q - 1] == ' ' || body[q - 1] == '\t' || body[q - 1] == '\r' || body[q - 1] == '\n')) q--;
  const int empty = q > 0 && body[q - 1] == '{';
  int bad = ob_put(&j->out, body, close) || (!empty && ob_put(&j->out, ", ", 2)) ||
            put_ids(j, ids, k);
  free(printed);
  if (bad) goto oom_o;
  rc = LS_OK;
done:
  cJSON_Delete(o);
  return rc;
oom_o:
  cJSON_Delete(o);
oom:
  snprintf(j->err, sizeof j->err, "out of memory");
  return LS_ERR;
}

static void *worker(void *arg) {
  job_t *j = arg;
  chunk_t *ch = j->ch;
  const size_t k0 = ch->n * (size_t)j->worker / (size_t)j->n_workers;
  const size_t k1 = ch->n * (size_t)(j->worker + 1) / (size_t)j->n_workers;
  j->out.n = 0;
  j->fail = ch->n;
  for (size_t k = k0; k < k1; k++)
    if (do_line(j, ch->text + ch->off[k], ch->len[k]) != LS_OK) {
      j->fail = k;
      break;
    }
  return NULL;
}

static int chunk_add(chunk_t *c, const char *s, size_t n, int64_t lineno) {
  if (c->n == c->cap) {
    size_t cap = c->cap ? 2 * c->cap : 1024;
    size_t *o = realloc(c->off, cap * sizeof *o);
    if (o) c->off = o;
    size_t *l = realloc(c->len, cap * sizeof *l);
    if (l) c->len = l;
    int64_t *ln = realloc(c->lineno, cap * sizeof *ln);
    if (ln) c->lineno = ln;
    if (!o || !l || !ln) return LS_ERR;
    c->cap = cap;
  }
  if (c->n_text + n + 1 > c->cap_text) {
    size_t cap = c->cap_text ? c->cap_text : (size_t)1 << 20;
    while (cap < c->n_text + n + 1) cap *= 2;
    char *q = realloc(c->text, cap);
    if (!q) return LS_ERR;
    c->text = q;
    c->cap_text = cap;
  }
  memcpy(c->text + c->n_text, s, n);
  c->text[c->n_text + n] = '\0';
  c->off[c->n] = c->n_text;
  c->len[c->n] = n;
  c->lineno[c->n] = lineno;
  c->n_text += n + 1;
  c->n++;
  return LS_OK;
}

/* Tokenize the chunk on the threads and write it. */
static int run_chunk(job_t *jobs, int nw, chunk_t *ch, FILE *out, const char *out_path) {
  pthread_t th[MAX_THREADS];
  int spawned[MAX_THREADS] = {0};
  for (int w = 1; w < nw; w++)
    if (!(spawned[w] = pthread_create(&th[w], NULL, worker, &jobs[w]) == 0)) worker(&jobs[w]);
  worker(&jobs[0]);
  for (int w = 1; w < nw; w++)
    if (spawned[w]) pthread_join(th[w], NULL);
  for (int w = 0; w < nw; w++)
    if (jobs[w].fail < ch->n) {
      ls_error("%s:%lld: %s", jobs[w].path, (long long)ch->lineno[jobs[w].fail], jobs[w].err);
      return LS_ERR;
    }
  for (int w = 0; w < nw; w++)
    if (jobs[w].out.n && fwrite(jobs[w].out.p, 1, jobs[w].out.n, out) != jobs[w].out.n) {
      ls_error("%s: write failed: %s; check the disk", out_path, strerror(errno));
      return LS_ERR;
    }
  ch->n = 0;
  ch->n_text = 0;
  return LS_OK;
}

/* ---- the command ------------------------------------------------------------------------ */
static int check_paths(const ls_tokenize_opts_t *o) {
  ls_guard_t g = {0};
  char path[4400];
  int rc = ls_guard_add(&g, o->data_path);
  snprintf(path, sizeof path, "%s/tokenizer.json", o->model_dir);
  rc |= ls_guard_add(&g, path);
  snprintf(path, sizeof path, "%s/tokenizer_config.json", o->model_dir);
  rc |= ls_guard_add(&g, path);
  if (rc == LS_OK) rc = ls_guard_check_file(&g, o->out_path, "--out");
  ls_guard_free(&g);
  struct stat st;
  if (rc == LS_OK && !o->force && stat(o->out_path, &st) == 0) {
    ls_error("--out %s exists; pass --force to overwrite it or choose another path", o->out_path);
    rc = LS_ERR;
  }
  return rc;
}

int ls_tokenize_main(const ls_tokenize_opts_t *o) {
  struct stat st;
  if (stat(o->data_path, &st) != 0) {
    ls_error("%s: cannot open: %s; check --data", o->data_path, strerror(errno));
    return LS_ERR;
  }
  if (S_ISDIR(st.st_mode)) {
    ls_error("%s: is a directory; --data must be a JSONL or .txt file", o->data_path);
    return LS_ERR;
  }
  if (check_paths(o)) return LS_ERR;
  ls_tokenizer_t *tok = NULL;
  if (ls_tokenizer_load(o->model_dir, &tok)) return LS_ERR;
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  int nw = o->threads > 0 ? o->threads : cpus > 0 ? (int)cpus : 1;
  if (nw > MAX_THREADS) nw = MAX_THREADS;
  const size_t plen = strlen(o->data_path);
  const int is_txt = plen > 4 && strcasecmp(o->data_path + plen - 4, ".txt") == 0;
  static job_t jobs[MAX_THREADS];
  chunk_t ch = {0};
  int rc = LS_OK;
  for (int w = 0; w < nw; w++) {
    jobs[w] = (job_t){o, o->data_path, is_txt, &ch, ls_tok_ctx_new(tok), w, nw, {0}, 0, 0, ""};
    if (!jobs[w].ctx) rc = LS_ERR;
  }
  FILE *in = rc == LS_OK ? fopen(o->data_path, "rb") : NULL;
  char tmp[4400];
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld", o->out_path, (long)getpid());
  FILE *out = in ? fopen(tmp, "wb") : NULL;
  if (rc != LS_OK) ls_error("out of memory creating the tokenizer's buffers");
  else if (!in) ls_error("%s: cannot open: %s; check --data", o->data_path, strerror(errno)), rc = LS_ERR;
  else if (!out) ls_error("%s: cannot create: %s; check --out", o->out_path, strerror(errno)), rc = LS_ERR;
  /* lines of at most LS_DATASET_MAX_LINE bytes, read through a block buffer */
  char *blk = rc == LS_OK ? malloc(READ_BLOCK) : NULL;
  obuf_t line = {0};
  int64_t lineno = 0, n_lines = 0;
  double t0 = ls_now();
  size_t bytes_in = 0;
  if (rc == LS_OK && !blk) rc = LS_ERR, ls_error("out of memory");
  size_t got = 0, pos = 0;
  int eof = 0;
  while (rc == LS_OK) {
    if (pos == got) {
      if (eof) break;
      got = fread(blk, 1, READ_BLOCK, in);
      pos = 0;
      bytes_in += got;
      if (got == 0) {
        if (ferror(in)) { ls_error("%s: read error: %s", o->data_path, strerror(errno)); rc = LS_ERR; }
        eof = 1;
        if (line.n == 0) break;
      }
    }
    const char *nl = got > pos ? memchr(blk + pos, '\n', got - pos) : NULL;
    const size_t take = nl ? (size_t)(nl - (blk + pos)) : got - pos;
    if (line.n + take > LS_DATASET_MAX_LINE) {
      ls_error("%s:%lld: line is longer than %zu MiB; is this a JSONL text file?", o->data_path,
               (long long)lineno + 1, LS_DATASET_MAX_LINE >> 20);
      rc = LS_ERR;
      break;
    }
    if (ob_put(&line, blk + pos, take)) { ls_error("out of memory"); rc = LS_ERR; break; }
    pos += take + (nl ? 1 : 0);
    if (!nl && !eof) continue;
    /* a whole line */
    lineno++;
    if (memchr(line.p ? line.p : "", '\0', line.n)) {
      ls_error("%s:%lld: line contains a NUL byte; is this a JSONL text file?", o->data_path,
               (long long)lineno);
      rc = LS_ERR;
      break;
    }
    int blank = 1;
    for (size_t i = 0; i < line.n && blank; i++)
      blank = line.p[i] == ' ' || line.p[i] == '\t' || line.p[i] == '\r';
    if (!blank) {
      if (chunk_add(&ch, line.p, line.n, lineno)) { ls_error("out of memory"); rc = LS_ERR; break; }
      n_lines++;
    }
    line.n = 0;
    if ((ch.n >= CHUNK_LINES || ch.n_text >= CHUNK_BYTES) && run_chunk(jobs, nw, &ch, out, o->out_path))
      rc = LS_ERR;
    if (eof) break;
  }
  if (rc == LS_OK && ch.n && run_chunk(jobs, nw, &ch, out, o->out_path)) rc = LS_ERR;
  if (rc == LS_OK && n_lines == 0) {
    ls_error("%s: no prompts (every line is blank); expected one {\"text\": \"...\"} per line",
             o->data_path);
    rc = LS_ERR;
  }
  if (out && fclose(out) != 0 && rc == LS_OK) {
    ls_error("%s: write failed: %s; check the disk", o->out_path, strerror(errno));
    rc = LS_ERR;
  }
  if (rc == LS_OK && rename(tmp, o->out_path) != 0) {
    ls_error("%s: cannot rename %s into place: %s", o->out_path, tmp, strerror(errno));
    rc = LS_ERR;
  }
  if (rc != LS_OK && out) unlink(tmp);
  if (in) fclose(in);
  int64_t tokens = 0;
  for (int w = 0; w < nw; w++) tokens += jobs[w].tokens;
  const double secs = ls_now() - t0;
  if (rc == LS_OK)
    ls_info("tokenize: %lld prompts, %lld tokens, %.1f MiB in %.3f s on %d threads: %.0f tokens/s "
            "-> %s (tokenizer sha256 %.12s)", (long long)n_lines, (long long)tokens,
            (double)bytes_in / (1 << 20), secs, nw, secs > 0 ? (double)tokens / secs : 0.0,
            o->out_path, ls_tokenizer_sha256(tok));
  for (int w = 0; w < nw; w++) {
    ls_tok_ctx_free(jobs[w].ctx);
    free(jobs[w].out.p);
  }
  free(blk);
  free(line.p);
  free(ch.text); free(ch.off); free(ch.len); free(ch.lineno);
  ls_tokenizer_free(tok);
  return rc;
}
