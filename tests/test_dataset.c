/* test_dataset.c: cmocka tests for io/dataset.c (the JSONL prompt reader).
 *
 * Good files are written into a fresh mkdtemp directory under $LS_TEST_TMP and every
 * field of the loaded dataset is checked (tokens, offsets, labels, ids). Each bad file
 * must make ls_dataset_load return -1 with exactly one stderr line naming
 * "<path>:<line>:" (or "<path>:" when no line applies) and leave the dataset zeroed.
 * One prompt of 5 million ids (a ~20 MB line) must load intact. */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "test_capture.h"

#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dataset.h"
#include "ls_common.h"
#include "tokenizer.h"

#define VOCAB 256

/* ---- temp dir and files ------------------------------------------------------------ */

static char g_dir[4096];
static char g_path[4200]; /* the dataset file of the current test */

static int setup_dir(void **state) {
  test_mkdtemp(g_dir, sizeof g_dir, "ls_ds_");
  snprintf(g_path, sizeof g_path, "%s/prompts.jsonl", g_dir);
  return 0;
}

static int teardown_dir(void **state) {
  test_rmtree(g_dir);
  return 0;
}

static void write_file(const void *bytes, size_t n) {
  FILE *f = fopen(g_path, "wb");
  assert_non_null(f);
  if (n) assert_int_equal(fwrite(bytes, 1, n, f), n);
  assert_int_equal(fclose(f), 0);
}

static void write_text(const char *s) { write_file(s, strlen(s)); }

static void load_ok(int64_t max_len, ls_dataset_t *d) {
  capture_t c;
  capture_begin(&c);
  int rc = ls_dataset_load(g_path, VOCAB, max_len, NULL, d);
  size_t len;
  char *msg = capture_end(&c, &len);
  if (rc != 0 || len) fprintf(stderr, "dataset rejected (rc %d): %s\n", rc, msg);
  assert_int_equal(rc, 0);
  assert_int_equal(len, 0);
  free(msg);
}

/* The current file must fail with one line containing "<path>:<line>:" (line > 0) or
 * "<path>: " (line 0), and `want`. */
static void expect_bad_vocab(int vocab, int64_t max_len, int line, const char *want) {
  ls_dataset_t d;
  memset(&d, 0xab, sizeof d);
  capture_t c;
  capture_begin(&c);
  int rc = ls_dataset_load(g_path, vocab, max_len, NULL, &d);
  size_t len;
  char *msg = capture_end(&c, &len);
  char where[4300];
  if (line > 0) snprintf(where, sizeof where, "layersweep: error: %s:%d: ", g_path, line);
  else snprintf(where, sizeof where, "layersweep: error: %s: ", g_path);
  if (getenv("LS_TEST_VERBOSE")) fprintf(stderr, "  [%s] %s", want, msg);
  int one_line = len > 0 && msg[len - 1] == '\n' && strchr(msg, '\n') == msg + len - 1;
  if (rc != -1 || !one_line || !strstr(msg, where) || !strstr(msg, want))
    fprintf(stderr, "wanted rc -1 and one line with '%s' and '%s'; got rc %d: %s\n", where, want,
            rc, msg);
  assert_int_equal(rc, -1);
  assert_true(one_line);
  assert_non_null(strstr(msg, where));
  assert_non_null(strstr(msg, want));
  free(msg);
  /* a failed load leaves nothing behind */
  assert_int_equal(d.n, 0);
  assert_int_equal(d.n_tokens, 0);
  assert_null(d.tokens);
  assert_null(d.offsets);
  assert_null(d.labels);
  assert_null(d.ids);
}

static void expect_bad(int line, const char *want) { expect_bad_vocab(VOCAB, 0, line, want); }

/* ---- good files ------------------------------------------------------------------------ */

static void test_labels_and_ids(void **state) {
  write_text("{\"input_ids\": [1, 2, 3], \"label\": 0, \"id\": \"a\"}\n"
             "{\"id\": \"second one\", \"input_ids\": [4], \"label\": -7}\n"
             "{\"input_ids\":[5,6,255,0,9],\"label\":123456789012,\"id\":\"\",\"extra\":[1]}\n");
  ls_dataset_t d;
  load_ok(0, &d);
  assert_int_equal(d.n, 3);
  assert_int_equal(d.n_tokens, 9);
  const int64_t off[4] = {0, 3, 4, 9};
  for (int i = 0; i < 4; i++) assert_int_equal(d.offsets[i], off[i]);
  const int32_t tok[9] = {1, 2, 3, 4, 5, 6, 255, 0, 9};
  for (int i = 0; i < 9; i++) assert_int_equal(d.tokens[i], tok[i]);
  assert_int_equal(ls_dataset_len(&d, 0), 3);
  assert_int_equal(ls_dataset_len(&d, 1), 1);
  assert_int_equal(ls_dataset_len(&d, 2), 5);
  assert_int_equal(d.has_label, 1);
  assert_non_null(d.labels);
  assert_int_equal(d.labels[0], 0);
  assert_int_equal(d.labels[1], -7);
  assert_int_equal(d.labels[2], 123456789012LL);
  assert_int_equal(d.has_id, 1);
  assert_non_null(d.ids);
  assert_string_equal(d.ids + 0 * LS_DATASET_MAX_ID, "a");
  assert_string_equal(d.ids + 1 * LS_DATASET_MAX_ID, "second one");
  assert_string_equal(d.ids + 2 * LS_DATASET_MAX_ID, "");
  ls_dataset_free(&d);
  assert_int_equal(d.n, 0);
  assert_null(d.tokens);
  assert_null(d.offsets);
  assert_null(d.labels);
  assert_null(d.ids);
}

static void test_no_label_no_id(void **state) {
  write_text("{\"input_ids\": [7, 8]}\n{\"input_ids\": [9, 10, 11]}");
  ls_dataset_t d;
  load_ok(0, &d);
  assert_int_equal(d.n, 2);
  assert_int_equal(d.n_tokens, 5);
  assert_int_equal(d.offsets[0], 0);
  assert_int_equal(d.offsets[1], 2);
  assert_int_equal(d.offsets[2], 5);
  for (int i = 0; i < 5; i++) assert_int_equal(d.tokens[i], 7 + i);
  assert_int_equal(d.has_label, 0);
  assert_int_equal(d.has_id, 0);
  assert_null(d.labels);
  assert_null(d.ids);
  ls_dataset_free(&d);
}

static void test_only_labels(void **state) {
  write_text("{\"input_ids\": [1], \"label\": 3}\n{\"input_ids\": [2], \"label\": 4}\n");
  ls_dataset_t d;
  load_ok(0, &d);
  assert_int_equal(d.has_label, 1);
  assert_int_equal(d.has_id, 0);
  assert_null(d.ids);
  assert_int_equal(d.labels[0], 3);
  assert_int_equal(d.labels[1], 4);
  ls_dataset_free(&d);
}

static void test_blank_lines(void **state) {
  write_text("\n   \n{\"input_ids\": [1, 2]}\n\t\r\n\n{\"input_ids\": [3]}\r\n  \n");
  ls_dataset_t d;
  load_ok(0, &d);
  assert_int_equal(d.n, 2);
  assert_int_equal(d.n_tokens, 3);
  assert_int_equal(d.offsets[1], 2);
  assert_int_equal(d.offsets[2], 3);
  assert_int_equal(d.tokens[0], 1);
  assert_int_equal(d.tokens[1], 2);
  assert_int_equal(d.tokens[2], 3);
  ls_dataset_free(&d);
}

static void test_one_token(void **state) {
  write_text("{\"input_ids\": [42]}\n");
  ls_dataset_t d;
  load_ok(1, &d); /* exactly max_len tokens is fine */
  assert_int_equal(d.n, 1);
  assert_int_equal(d.n_tokens, 1);
  assert_int_equal(d.offsets[0], 0);
  assert_int_equal(d.offsets[1], 1);
  assert_int_equal(d.tokens[0], 42);
  ls_dataset_free(&d);
}

static void test_many_lines(void **state) {
  /* more prompts and tokens than the first growth step (1024) */
  enum { N = 3000 };
  size_t cap = (size_t)N * 64, n = 0;
  char *buf = malloc(cap);
  assert_non_null(buf);
  for (int i = 0; i < N; i++) {
    n += (size_t)snprintf(buf + n, cap - n, "{\"input_ids\": [%d", i % VOCAB);
    for (int j = 1; j <= i % 3; j++) n += (size_t)snprintf(buf + n, cap - n, ", %d", (i + j) % VOCAB);
    n += (size_t)snprintf(buf + n, cap - n, "], \"label\": %d, \"id\": \"p%d\"}\n", i, i);
  }
  write_file(buf, n);
  free(buf);
  ls_dataset_t d;
  load_ok(0, &d);
  assert_int_equal(d.n, N);
  int64_t t = 0;
  for (int i = 0; i < N; i++) {
    assert_int_equal(d.offsets[i], t);
    assert_int_equal(ls_dataset_len(&d, i), 1 + i % 3);
    for (int j = 0; j <= i % 3; j++) assert_int_equal(d.tokens[t + j], (i + j) % VOCAB);
    t += 1 + i % 3;
    assert_int_equal(d.labels[i], i);
    char id[32];
    snprintf(id, sizeof id, "p%d", i);
    assert_string_equal(d.ids + (size_t)i * LS_DATASET_MAX_ID, id);
  }
  assert_int_equal(d.n_tokens, t);
  ls_dataset_free(&d);
}

static void test_100mb_line_refused(void **state) {
  /* a 100 MB line (a broken export, or not JSONL at all) is refused on its line, before
   * anything tries to parse it */
  const size_t n = (size_t)100 << 20;
  char *buf = malloc(n + 64);
  assert_non_null(buf);
  size_t o = (size_t)snprintf(buf, 64, "{\"input_ids\":[1]}\n{\"input_ids\":[");
  while (o + 2 < n) { buf[o++] = '7'; buf[o++] = ','; }
  memcpy(buf + o, "7]}\n", 4);
  write_file(buf, o + 4);
  free(buf);
  expect_bad(2, "longer than the 32 MiB accepted");
}

static void test_huge_line(void **state) {
  /* one prompt of 5 million ids, ~20 MB on a single line */
  enum { N = 5000000, V = 1000 };
  size_t cap = (size_t)N * 5 + 64, n = 0;
  char *buf = malloc(cap);
  assert_non_null(buf);
  n += (size_t)snprintf(buf, cap, "{\"input_ids\":[");
  for (int i = 0; i < N; i++) {
    int v = (int)(((unsigned)i * 2654435761u) % V);
    n += (size_t)snprintf(buf + n, cap - n, i ? ",%d" : "%d", v);
  }
  n += (size_t)snprintf(buf + n, cap - n, "],\"label\":1}\n{\"input_ids\":[5],\"label\":2}\n");
  write_file(buf, n);
  free(buf);
  assert_true(n > 15u << 20);
  ls_dataset_t d;
  capture_t c;
  capture_begin(&c);
  int rc = ls_dataset_load(g_path, V, 0, NULL, &d);
  size_t len;
  char *msg = capture_end(&c, &len);
  if (rc) fprintf(stderr, "%s\n", msg);
  free(msg);
  assert_int_equal(rc, 0);
  assert_int_equal(d.n, 2);
  assert_int_equal(d.n_tokens, N + 1);
  assert_int_equal(d.offsets[1], N);
  assert_int_equal(d.offsets[2], N + 1);
  for (int i = 0; i < N; i++)
    if (d.tokens[i] != (int32_t)(((unsigned)i * 2654435761u) % V)) {
      fprintf(stderr, "token %d: got %d\n", i, d.tokens[i]);
      fail();
    }
  assert_int_equal(d.tokens[N], 5);
  assert_int_equal(d.labels[0], 1);
  assert_int_equal(d.labels[1], 2);
  ls_dataset_free(&d);
}

/* ---- bad files ------------------------------------------------------------------------------ */

static void test_bad_not_json(void **state) {
  write_text("{\"input_ids\": [1]}\n{\"input_ids\": [2]}\nhello world\n{\"input_ids\": [3]}\n");
  expect_bad(3, "not a JSON object");
  write_text("{\"input_ids\": [1, 2\n");
  expect_bad(1, "not a JSON object");
  write_text("{\"input_ids\": [1]}\n[1, 2, 3]\n");
  expect_bad(2, "not a JSON object");
  /* blank lines still count */
  write_text("\n\n{\"input_ids\": [1]}\n\n42\n");
  expect_bad(5, "not a JSON object");
}

static void test_bad_missing_ids(void **state) {
  write_text("{\"ids\": [1, 2]}\n");
  expect_bad(1, "missing \"input_ids\"");
  write_text("{\"input_ids\": [1]}\n{\"input_ids\": 5}\n");
  expect_bad(2, "\"input_ids\"");
  write_text("{\"input_ids\": \"1 2 3\"}\n");
  expect_bad(1, "\"input_ids\"");
}

static void test_bad_empty_ids(void **state) {
  write_text("{\"input_ids\": [1]}\n{\"input_ids\": []}\n");
  expect_bad(2, "empty prompt");
}

static void test_bad_float_id(void **state) {
  write_text("{\"input_ids\": [1, 2.5, 3]}\n");
  expect_bad(1, "input_ids[1] is not a non-negative integer");
  write_text("{\"input_ids\": [1, 2]}\n{\"input_ids\": [1, 2, 3, \"4\"]}\n");
  expect_bad(2, "input_ids[3]");
  write_text("{\"input_ids\": [null]}\n");
  expect_bad(1, "input_ids[0]");
}

static void test_bad_negative_id(void **state) {
  write_text("{\"input_ids\": [-1]}\n");
  expect_bad(1, "input_ids[0] is not a non-negative integer");
}

static void test_bad_id_vocab(void **state) {
  write_text("{\"input_ids\": [0, 255]}\n{\"input_ids\": [3, 256]}\n");
  expect_bad(2, "input_ids[1] = 256 is >= the model's vocab_size 256");
  write_text("{\"input_ids\": [1e12]}\n");
  expect_bad(1, "vocab_size 256");
  /* with a bigger vocab the same file is fine */
  write_text("{\"input_ids\": [0, 255]}\n{\"input_ids\": [3, 256]}\n");
  ls_dataset_t d;
  assert_int_equal(ls_dataset_load(g_path, 257, 0, NULL, &d), 0);
  assert_int_equal(d.tokens[3], 256);
  ls_dataset_free(&d);
}

static void test_bad_label_some_lines(void **state) {
  write_text("{\"input_ids\": [1], \"label\": 0}\n{\"input_ids\": [2]}\n");
  expect_bad(2, "\"label\" is absent here but present");
  write_text("{\"input_ids\": [1]}\n{\"input_ids\": [2]}\n{\"input_ids\": [2], \"label\": 1}\n");
  expect_bad(3, "\"label\" is present here but absent");
  write_text("{\"input_ids\": [1], \"id\": \"x\"}\n{\"input_ids\": [2]}\n");
  expect_bad(2, "\"id\" is absent here");
  write_text("{\"input_ids\": [1], \"label\": 1.5}\n");
  expect_bad(1, "\"label\" must be an integer");
  write_text("{\"input_ids\": [1], \"label\": \"pos\"}\n");
  expect_bad(1, "\"label\" must be an integer");
}

static void test_bad_id_string(void **state) {
  write_text("{\"input_ids\": [1], \"id\": 5}\n");
  expect_bad(1, "\"id\" must be a string");
  write_text("{\"input_ids\": [1], \"id\": \"ok\"}\n{\"input_ids\": [1], \"id\": null}\n");
  expect_bad(2, "\"id\" must be a string");
  /* LS_DATASET_MAX_ID - 1 bytes fit, LS_DATASET_MAX_ID do not */
  char line[1024], id[LS_DATASET_MAX_ID + 1];
  memset(id, 'x', LS_DATASET_MAX_ID - 1);
  id[LS_DATASET_MAX_ID - 1] = '\0';
  snprintf(line, sizeof line, "{\"input_ids\": [1], \"id\": \"%s\"}\n", id);
  write_text(line);
  ls_dataset_t d;
  load_ok(0, &d);
  assert_string_equal(d.ids, id);
  ls_dataset_free(&d);
  memset(id, 'x', LS_DATASET_MAX_ID);
  id[LS_DATASET_MAX_ID] = '\0';
  snprintf(line, sizeof line, "{\"input_ids\": [1], \"id\": \"%s\"}\n", id);
  write_text(line);
  expect_bad(1, "shorter than 256 bytes");
}

static void test_bad_empty_file(void **state) {
  write_text("");
  expect_bad(0, "dataset is empty");
  write_text("\n \n\t\n");
  expect_bad(0, "dataset is empty");
}

static void test_bad_missing_file(void **state) {
  snprintf(g_path, sizeof g_path, "%s/nope.jsonl", g_dir);
  expect_bad(0, "cannot open dataset");
}

static void test_bad_nul_byte(void **state) {
  const char s[] = "{\"input_ids\": [1]}\n{\"input_ids\": [2]}\0\n";
  write_file(s, sizeof s - 1);
  expect_bad(2, "NUL byte");
}

static void test_bad_too_long(void **state) {
  write_text("{\"input_ids\": [1, 2, 3, 4]}\n{\"input_ids\": [1, 2, 3, 4, 5]}\n");
  expect_bad_vocab(VOCAB, 4, 2, "--allow-long-prompts");
  expect_bad_vocab(VOCAB, 4, 2, "5 tokens");
  /* max_len 0: no limit */
  ls_dataset_t d;
  load_ok(0, &d);
  assert_int_equal(d.n_tokens, 9);
  ls_dataset_free(&d);
}

/* ---- attention_mask and fields that change meaning ----------------------------------- */
static void test_attention_mask(void **state) {
  /* right padding, left padding, no padding, a null mask; the padding ids are valid ids */
  write_text("{\"input_ids\": [5, 6, 7, 0, 0], \"attention_mask\": [1, 1, 1, 0, 0]}\n"
             "{\"input_ids\": [0, 0, 9, 8], \"attention_mask\": [0, 0, 1, 1]}\n"
             "{\"input_ids\": [3, 4], \"attention_mask\": [1, 1]}\n"
             "{\"input_ids\": [0, 2, 0], \"attention_mask\": [0, 1, 0]}\n"
             "{\"input_ids\": [11], \"attention_mask\": null, \"meta\": {\"source\": \"x\"}}\n");
  ls_dataset_t d;
  capture_t c;
  capture_begin(&c);
  int rc = ls_dataset_load(g_path, VOCAB, 3, NULL, &d); /* max_len 3: real tokens count, not padding */
  size_t len;
  char *msg = capture_end(&c, &len);
  assert_int_equal(rc, 0);
  /* said once, with the count */
  char want[4400];
  snprintf(want, sizeof want, "%s: attention_mask: dropped 6 padding tokens of 3 prompts\n", g_path);
  assert_string_equal(msg, want);
  free(msg);
  assert_int_equal(d.n, 5);
  const int32_t tok[] = {5, 6, 7, 9, 8, 3, 4, 2, 11};
  const int64_t off[] = {0, 3, 5, 7, 8, 9};
  assert_int_equal(d.n_tokens, 9);
  assert_memory_equal(d.tokens, tok, sizeof tok);
  assert_memory_equal(d.offsets, off, sizeof off);
  ls_dataset_free(&d);
  /* refused, naming the line */
  write_text("{\"input_ids\": [1, 2]}\n{\"input_ids\": [5, 6, 7], \"attention_mask\": [1, 0, 1]}\n");
  expect_bad_vocab(VOCAB, 0, 2, "attention_mask[1] is 0 between real tokens");
  write_text("{\"input_ids\": [5, 6, 7], \"attention_mask\": [1, 1]}\n");
  expect_bad_vocab(VOCAB, 0, 1, "list of 3 0/1 values");
  write_text("{\"input_ids\": [5, 6], \"attention_mask\": [1, 2]}\n");
  expect_bad_vocab(VOCAB, 0, 1, "attention_mask[1] must be 0 or 1");
  write_text("{\"input_ids\": [5, 6], \"attention_mask\": [0, 0]}\n");
  expect_bad_vocab(VOCAB, 0, 1, "all zeros");
  write_text("{\"input_ids\": [5, 6], \"attention_mask\": \"11\"}\n");
  expect_bad_vocab(VOCAB, 0, 1, "attention_mask");
  write_text("{\"input_ids\": [5, 6], \"token_type_ids\": [0, 0]}\n");
  expect_bad_vocab(VOCAB, 0, 1, "\"token_type_ids\" is not supported");
  write_text("{\"input_ids\": [5, 6], \"position_ids\": [3, 4]}\n");
  expect_bad_vocab(VOCAB, 0, 1, "\"position_ids\" is not supported");
  /* a key given twice (Python keeps the last, cJSON the first) is refused */
  write_text("{\"input_ids\": [5, 6], \"input_ids\": [7]}\n");
  expect_bad_vocab(VOCAB, 0, 1, "\"input_ids\" is given twice");
  write_text("{\"input_ids\": [5], \"label\": 1}\n{\"input_ids\": [5], \"label\": 0, \"label\": 1}\n");
  expect_bad_vocab(VOCAB, 0, 2, "\"label\" is given twice");
  /* the real tokens must fit max_len; padding beyond it is not counted */
  write_text("{\"input_ids\": [5, 6, 7, 8], \"attention_mask\": [1, 1, 1, 1]}\n");
  expect_bad_vocab(VOCAB, 3, 1, "more than the model's max_position_embeddings");
}

/* sample ids are stored exactly: invalid UTF-8 and NUL are refused naming the line, and
 * every valid id (multi-byte, escapes) comes back byte for byte */
static void test_id_text(void **state) {
  write_text("{\"input_ids\": [1], \"id\": \"caf\\u00e9 \\u2603 \\ud83d\\ude00 \\\\u0000 \\\"q\\\"\"}\n"
             "{\"input_ids\": [2], \"id\": \"\\u00e9\"}\n");
  ls_dataset_t d;
  load_ok(0, &d);
  assert_string_equal(d.ids, "caf\xc3\xa9 \xe2\x98\x83 \xf0\x9f\x98\x80 \\u0000 \"q\"");
  assert_string_equal(d.ids + LS_DATASET_MAX_ID, "\xc3\xa9");
  ls_dataset_free(&d);
  write_text("{\"input_ids\": [1], \"id\": \"a\"}\n{\"input_ids\": [2], \"id\": \"ab\\u0000cd\"}\n");
  expect_bad(2, "NUL");
  write_text("{\"input_ids\": [1], \"id\" : \"x\\u0000\"}\n");
  expect_bad(1, "NUL");
  const char *bad[] = {"\xff", "\xc3", "\xc0\xaf", "\xe0\x80\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80",
                       "ok\x80"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char line[128];
    snprintf(line, sizeof line, "{\"input_ids\": [1], \"id\": \"%s\"}\n", bad[i]);
    write_text(line);
    expect_bad(1, "not valid UTF-8");
  }
}

/* ---- text prompts (the model's tokenizer) ------------------------------------------------ */
static char g_tok[4096];

static const ls_dataset_text_t *text_opts(int64_t max_tokens, int threads) {
  static ls_dataset_text_t t;
  const char *fx = getenv("LS_FIXTURES");
  snprintf(g_tok, sizeof g_tok, "%s/tokenizers/llama3_split_bytelevel", fx ? fx : "tests/fixtures");
  t = (ls_dataset_text_t){g_tok, max_tokens, threads};
  return &t;
}

/* prompt i of d must be the tokenizer's ids of text, cut to max_tokens */
static void check_prompt(const ls_dataset_t *d, int64_t i, ls_tok_ctx_t *c, const char *text,
                         int64_t max_tokens) {
  const int32_t *ids;
  size_t n;
  assert_int_equal(ls_tokenizer_encode(c, text, strlen(text), &ids, &n), LS_OK);
  if (max_tokens > 0 && (int64_t)n > max_tokens) n = (size_t)max_tokens;
  assert_int_equal(ls_dataset_len(d, i), (int64_t)n);
  for (size_t k = 0; k < n; k++) assert_int_equal(d->tokens[d->offsets[i] + (int64_t)k], ids[k]);
}

static void test_text_prompts(void **state) {
  /* 20000 lines: three chunks of 8192, on 2 threads; labels and ids kept in order */
  FILE *f = fopen(g_path, "wb");
  assert_non_null(f);
  for (int i = 0; i < 20000; i++)
    fprintf(f, "{\"text\": \"line %d: it's \\u00e9t\\u00e9 \\ud83d\\ude00 %s\", \"label\": %d, \"id\": \"p%d\"}\n", i,
            i % 3 ? "words words" : "", i % 7, i);
  fclose(f);
  ls_dataset_t d;
  capture_t cap;
  capture_begin(&cap);
  int rc = ls_dataset_load(g_path, 1024, 0, text_opts(0, 2), &d);
  size_t len;
  free(capture_end(&cap, &len));
  assert_int_equal(rc, 0);
  assert_int_equal(d.n, 20000);
  assert_int_equal(d.from_text, 1);
  assert_int_equal(strlen(d.tok_sha256), 64);
  ls_tokenizer_t *t;
  assert_int_equal(ls_tokenizer_load(g_tok, &t), LS_OK);
  assert_string_equal(d.tok_sha256, ls_tokenizer_sha256(t));
  ls_tok_ctx_t *c = ls_tok_ctx_new(t);
  char text[256];
  for (int i = 0; i < 20000; i++) {
    snprintf(text, sizeof text, "line %d: it's \xc3\xa9t\xc3\xa9 \xf0\x9f\x98\x80 %s", i, i % 3 ? "words words" : "");
    check_prompt(&d, i, c, text, 0);
    assert_int_equal(d.labels[i], i % 7);
    snprintf(text, sizeof text, "p%d", i);
    assert_string_equal(d.ids + (size_t)i * LS_DATASET_MAX_ID, text);
  }
  assert_int_equal(d.offsets[d.n], d.n_tokens);
  ls_dataset_free(&d);
  /* --max-tokens 4, and a .txt file (CRLF, blank lines skipped) */
  snprintf(g_path, sizeof g_path, "%s/prompts.txt", g_dir);
  write_text("Hello world, a longer line of text\r\n\n   \nsecond\n\xe6\x95\xb0\xe6\x8d\xae a b c d e f");
  capture_begin(&cap);
  rc = ls_dataset_load(g_path, 1024, 0, text_opts(4, 1), &d);
  char *msg = capture_end(&cap, &len);
  assert_int_equal(rc, 0);
  assert_non_null(strstr(msg, "--max-tokens 4: cut "));
  free(msg);
  assert_int_equal(d.n, 3);
  assert_true(d.n_truncated >= 2); /* the first and the last at least */
  check_prompt(&d, 0, c, "Hello world, a longer line of text", 4);
  check_prompt(&d, 1, c, "second", 4);
  check_prompt(&d, 2, c, "\xe6\x95\xb0\xe6\x8d\xae a b c d e f", 4);
  ls_dataset_free(&d);
  /* input_ids lines are cut by --max-tokens too */
  snprintf(g_path, sizeof g_path, "%s/prompts.jsonl", g_dir);
  write_text("{\"input_ids\": [1, 2, 3, 4, 5, 6]}\n{\"input_ids\": [7], \"text\": \"metadata\"}\n");
  capture_begin(&cap);
  rc = ls_dataset_load(g_path, VOCAB, 0, text_opts(4, 1), &d);
  free(capture_end(&cap, &len));
  assert_int_equal(rc, 0);
  assert_int_equal(d.from_text, 0);
  assert_int_equal(ls_dataset_len(&d, 0), 4);
  assert_int_equal(ls_dataset_len(&d, 1), 1);
  assert_int_equal(d.tokens[4], 7);
  ls_dataset_free(&d);
  ls_tok_ctx_free(c);
  ls_tokenizer_free(t);
}

static void expect_bad_text(int64_t max_len, int line, const char *want) {
  ls_dataset_t d;
  capture_t c;
  capture_begin(&c);
  int rc = ls_dataset_load(g_path, 1024, max_len, text_opts(0, 2), &d);
  size_t len;
  char *msg = capture_end(&c, &len);
  char where[4300];
  snprintf(where, sizeof where, "%s:%d: ", g_path, line);
  int one_line = len > 0 && strchr(msg, '\n') == msg + len - 1;
  if (rc != -1 || !one_line || !strstr(msg, where) || !strstr(msg, want))
    fprintf(stderr, "wanted one line with '%s' and '%s'; got rc %d: %s\n", where, want, rc, msg);
  assert_int_equal(rc, -1);
  assert_true(one_line);
  assert_non_null(strstr(msg, where));
  assert_non_null(strstr(msg, want));
  free(msg);
  assert_null(d.tokens);
  assert_null(d.offsets);
}

static void test_text_bad(void **state) {
  write_text("{\"text\": \"a\"}\n{\"text\": \"b\"}\n{\"input_ids\": [1]}\n");
  expect_bad_text(0, 3, "line 1 (the first prompt) has \"text\"");
  write_text("{\"input_ids\": [1]}\n\n{\"text\": \"b\"}\n");
  expect_bad_text(0, 3, "a \"text\" prompt, but line 1");
  write_text("{\"text\": \"a\"}\n{\"text\": 5}\n");
  expect_bad_text(0, 2, "\"text\" must be a string");
  write_text("{\"text\": \"a\\u0000b\"}\n");
  expect_bad_text(0, 1, "NUL");
  write_text("{\"text\": \"ok\"}\n{\"text\": \"bad \xff utf-8\"}\n");
  expect_bad_text(0, 2, "not valid UTF-8");
  write_text("{\"text\": \"a\", \"attention_mask\": [1]}\n");
  expect_bad_text(0, 1, "attention_mask");
  write_text("{\"text\": \"one two three four five six seven eight\"}\n");
  expect_bad_text(4, 1, "--max-tokens 4");
  write_text("{\"label\": 1}\n");
  expect_bad_text(0, 1, "(or a \"text\" string)");
  /* a tokenizer id the model does not have */
  write_text("{\"text\": \"Hello world\"}\n");
  ls_dataset_t d;
  capture_t c;
  capture_begin(&c);
  int rc = ls_dataset_load(g_path, 10, 0, text_opts(0, 1), &d);
  size_t len;
  char *msg = capture_end(&c, &len);
  assert_int_equal(rc, -1);
  assert_non_null(strstr(msg, "does not belong to this model"));
  free(msg);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup_dir, teardown_dir)

int main(void) {
  const struct CMUnitTest tests[] = {
      T(test_labels_and_ids),
      T(test_no_label_no_id),
      T(test_only_labels),
      T(test_blank_lines),
      T(test_one_token),
      T(test_many_lines),
      T(test_huge_line),
      T(test_100mb_line_refused),
      T(test_bad_not_json),
      T(test_bad_missing_ids),
      T(test_bad_empty_ids),
      T(test_bad_float_id),
      T(test_bad_negative_id),
      T(test_bad_id_vocab),
      T(test_bad_label_some_lines),
      T(test_bad_id_string),
      T(test_bad_empty_file),
      T(test_bad_missing_file),
      T(test_bad_nul_byte),
      T(test_bad_too_long),
      T(test_attention_mask),
      T(test_id_text),
      T(test_text_prompts),
      T(test_text_bad),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
