/* test_tokenizer.c: cmocka tests for io/tokenizer.c.
 *
 * Every tokenizer under tests/fixtures/tokenizers (trained by gen_tokenizers.py with
 * the `tokenizers` library in each style real models use, and one real model's) encodes
 * every text of its expected.jsonl to exactly the ids transformers' AutoTokenizer gave.
 * Then broken and unsupported tokenizer.json files are refused, and encoding from
 * several threads at once gives the same ids. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ls_common.h"
#include "tokenizer.h"

static char dir[2048];

static const char *fixtures(void) {
  const char *f = getenv("LS_FIXTURES");
  return f ? f : "tests/fixtures";
}

/* Check one fixture directory; returns the number of texts checked. */
static int check_dir(const char *path) {
  ls_tokenizer_t *t = NULL;
  assert_int_equal(ls_tokenizer_load(path, &t), LS_OK);
  ls_tok_ctx_t *c = ls_tok_ctx_new(t);
  assert_non_null(c);
  char ep[8192];
  snprintf(ep, sizeof ep, "%s/expected.jsonl", path);
  size_t len;
  char *all = ls_read_text_file(ep, (size_t)64 << 20, &len);
  assert_non_null(all);
  int n = 0, bad = 0;
  for (char *line = strtok(all, "\n"); line; line = strtok(NULL, "\n")) {
    cJSON *o = cJSON_Parse(line);
    assert_non_null(o);
    const cJSON *text = cJSON_GetObjectItem(o, "text"), *want = cJSON_GetObjectItem(o, "input_ids");
    assert_true(cJSON_IsString(text) && cJSON_IsArray(want));
    const int32_t *ids;
    size_t k;
    assert_int_equal(ls_tokenizer_encode(c, text->valuestring, strlen(text->valuestring), &ids, &k), LS_OK);
    int same = (int)k == cJSON_GetArraySize(want);
    for (size_t i = 0; same && i < k; i++) same = ids[i] == cJSON_GetArrayItem(want, (int)i)->valueint;
    if (!same) {
      char shown[60];
      fprintf(stderr, "  %s: text %d \"%s\": %zu ids, expected %d:", path, n,
              ls_printable(shown, sizeof shown, text->valuestring), k, cJSON_GetArraySize(want));
      for (size_t i = 0; i < k && i < 24; i++) fprintf(stderr, " %d", ids[i]);
      fprintf(stderr, "\n    expected:");
      for (int i = 0; i < cJSON_GetArraySize(want) && i < 24; i++)
        fprintf(stderr, " %d", cJSON_GetArrayItem(want, i)->valueint);
      fprintf(stderr, "\n");
      bad++;
    }
    n++;
    cJSON_Delete(o);
  }
  free(all);
  ls_tok_ctx_free(c);
  ls_tokenizer_free(t);
  assert_int_equal(bad, 0);
  return n;
}

static void test_expected_ids(void **state) {
  (void)state;
  snprintf(dir, sizeof dir, "%s/tokenizers", fixtures());
  DIR *d = opendir(dir);
  assert_non_null(d);
  int dirs = 0, texts = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    char p[4400], q[4500];
    snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
    snprintf(q, sizeof q, "%s/expected.jsonl", p);
    FILE *f = fopen(q, "r");
    if (!f) continue;
    fclose(f);
    texts += check_dir(p);
    dirs++;
  }
  closedir(d);
  fprintf(stderr, "  %d tokenizers, %d texts: every id identical\n", dirs, texts);
  assert_true(dirs >= 10);
}

/* ---- refusals: each a one-line error, never a crash ---------------------------------- */
static void refused(const char *json, const char *want) {
  ls_tokenizer_t *t = NULL;
  ls_error_defer(1);
  int rc = ls_tokenizer_load_mem(json, strlen(json), NULL, "t.json", &t);
  char msg[1024] = "";
  ls_error_take(msg, sizeof msg);
  ls_error_defer(0);
  if (rc == LS_OK || !strstr(msg, want))
    fprintf(stderr, "  json %.60s: rc %d, message \"%s\", wanted \"%s\"\n", json, rc, msg, want);
  assert_int_equal(rc, LS_ERR);
  assert_null(t);
  assert_non_null(strstr(msg, want));
  assert_null(strchr(msg, '\n') && strchr(msg, '\n')[1] ? strchr(msg, '\n') : NULL);
}

static void test_refused(void **state) {
  (void)state;
  refused("{", "not valid JSON");
  refused("[]", "not valid JSON");
  refused("{\"model\": 3}", "no \"model\"");
  refused("{\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"a\", 0.0]]}}", "model type \"Unigram\" is not implemented");
  refused("{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}", "model type \"WordPiece\"");
  refused("{\"model\": {\"type\": \"WordLevel\", \"vocab\": {}}}", "model type \"WordLevel\"");
  refused("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -1}, \"merges\": []}}", "not an integer");
  refused("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a b\"]}}", "not in model.vocab");
  refused("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"ab\"]}}", "is not \"a b\"");
  refused("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [], \"unk_token\": \"<u>\"}}", "unk_token");
  refused("{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": [], \"dropout\": 0.1}}", "dropout");
  refused("{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []}, \"normalizer\": {\"type\": \"Precompiled\"}}",
          "normalizer \"Precompiled\" is not implemented");
  refused("{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []}, \"pre_tokenizer\": {\"type\": \"BertPreTokenizer\"}}",
          "pre_tokenizer \"BertPreTokenizer\" is not implemented");
  refused("{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []}, \"pre_tokenizer\": {\"type\": \"Split\", "
          "\"pattern\": {\"Regex\": \"(\"}, \"behavior\": \"Isolated\"}}", "does not compile");
  refused("{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []}, \"post_processor\": {\"type\": \"Foo\"}}",
          "post_processor \"Foo\" is not implemented");
  refused("{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []}, \"added_tokens\": [{\"id\": 1}]}",
          "added_tokens[0]");
  refused("{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []}, \"model\": {}}", "given twice");
  refused("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"a\": 2}, \"merges\": []}}",
          "token \"a\" is given twice");
  refused("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 1e300}, \"merges\": []}}", "not an integer");
}

/* ---- a pathological regex hits PCRE2's limits: an error, not a hang ---------------------- */
static void test_regex_limit(void **state) {
  (void)state;
  const char *json = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, "
                     "\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"(a+)+b\"}, "
                     "\"behavior\": \"Isolated\"}}";
  ls_tokenizer_t *t = NULL;
  assert_int_equal(ls_tokenizer_load_mem(json, strlen(json), NULL, "t.json", &t), LS_OK);
  ls_tok_ctx_t *c = ls_tok_ctx_new(t);
  char text[4096];
  memset(text, 'a', sizeof text - 1);
  text[sizeof text - 1] = '\0';
  const int32_t *ids;
  size_t n;
  int rc = ls_tokenizer_encode(c, text, strlen(text), &ids, &n);
  if (rc == LS_OK) assert_int_equal(n, strlen(text)); /* JIT may finish it: then all "a" */
  else assert_non_null(strstr(ls_tok_ctx_error(c), "limit"));
  assert_int_equal(ls_tokenizer_encode(c, "a\xff", 2, &ids, &n), LS_ERR); /* invalid UTF-8 */
  assert_non_null(strstr(ls_tok_ctx_error(c), "UTF-8"));
  ls_tok_ctx_free(c);
  ls_tokenizer_free(t);
}

/* ---- threads: each with its own context, the same ids ------------------------------------ */
typedef struct {
  const ls_tokenizer_t *t;
  const char *text;
  size_t want_n;
  uint64_t want_hash;
  int ok;
} job_t;

static void *worker(void *arg) {
  job_t *j = arg;
  ls_tok_ctx_t *c = ls_tok_ctx_new(j->t);
  j->ok = c != NULL;
  for (int r = 0; c && r < 50; r++) {
    const int32_t *ids;
    size_t n;
    if (ls_tokenizer_encode(c, j->text, strlen(j->text), &ids, &n) != LS_OK || n != j->want_n ||
        ls_fnv1a(LS_FNV_INIT, ids, n * sizeof *ids) != j->want_hash)
      j->ok = 0;
  }
  ls_tok_ctx_free(c);
  return NULL;
}

static void test_threads(void **state) {
  (void)state;
  char p[4200];
  snprintf(p, sizeof p, "%s/tokenizers/llama3_split_bytelevel", fixtures());
  ls_tokenizer_t *t = NULL;
  assert_int_equal(ls_tokenizer_load(p, &t), LS_OK);
  const char *text = "Threads share one tokenizer: 数据集 😀 it's 12345 words words words.";
  ls_tok_ctx_t *c = ls_tok_ctx_new(t);
  const int32_t *ids;
  size_t n;
  assert_int_equal(ls_tokenizer_encode(c, text, strlen(text), &ids, &n), LS_OK);
  job_t jobs[4];
  pthread_t th[4];
  for (int i = 0; i < 4; i++) {
    jobs[i] = (job_t){t, text, n, ls_fnv1a(LS_FNV_INIT, ids, n * sizeof *ids), 0};
    assert_int_equal(pthread_create(&th[i], NULL, worker, &jobs[i]), 0);
  }
  for (int i = 0; i < 4; i++) {
    pthread_join(th[i], NULL);
    assert_true(jobs[i].ok);
  }
  ls_tok_ctx_free(c);
  ls_tokenizer_free(t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_expected_ids),
      cmocka_unit_test(test_refused),
      cmocka_unit_test(test_regex_limit),
      cmocka_unit_test(test_threads),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
