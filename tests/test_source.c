/* test_source.c: cmocka tests for io/source.c, io/hub.c and the parts of io/http.c that
 * need no server (a real nginx serves the end-to-end tests in tests/cli/http.sh):
 * spans of a local file (segments with and without destinations), --model resolution
 * (URLs, hub ids, the local Hugging Face cache, local precedence), size suffixes, and a
 * refused connection giving up after LS_HTTP_RETRIES with one message. */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "test_capture.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "http.h"
#include "hub.h"
#include "ls_common.h"
#include "source.h"

static char g_dir[4096];

static int setup_dir(void **state) {
  test_mkdtemp(g_dir, sizeof g_dir, "ls_src_");
  return 0;
}
static int teardown_dir(void **state) {
  test_rmtree(g_dir);
  return 0;
}

static void write_file(const char *path, const void *p, size_t n) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(p, 1, n, f), n);
  assert_int_equal(fclose(f), 0);
}

/* spans of a local file: every segment with a destination gets exactly its bytes, the
 * gaps are not written anywhere */
static void test_local_spans(void **state) {
  unsigned char data[4096];
  for (int i = 0; i < 4096; i++) data[i] = (unsigned char)(i * 7 + 3);
  char path[4200];
  snprintf(path, sizeof path, "%s/f.bin", g_dir);
  write_file(path, data, sizeof data);
  int fd = open(path, O_RDONLY);
  assert_true(fd >= 0);
  ls_src_t s;
  ls_src_from_fd(&s, fd, sizeof data);
  unsigned char a[100], b[50], c[1];
  memset(a, 0xee, sizeof a);
  memset(b, 0xee, sizeof b);
  ls_src_seg_t segs[4] = {{10, 100, a, NULL, NULL}, {110, 40, NULL, NULL, NULL},
                          {150, 50, b, NULL, NULL}, {4095, 1, c, NULL, NULL}};
  ls_src_span_t spans[2] = {{10, 190, segs, 3}, {4095, 1, segs + 3, 1}};
  assert_int_equal(ls_src_read_spans(&s, spans, 2, path), LS_OK);
  assert_memory_equal(a, data + 10, 100);
  assert_memory_equal(b, data + 150, 50);
  assert_int_equal(c[0], data[4095]);
  unsigned char d[8];
  assert_int_equal(ls_src_pread(&s, d, 8, 4092), 1); /* past the end: EOF */
  ls_src_close(&s);
  assert_int_equal(s.fd, -1);
}

static void test_parse_size(void **state) {
  int64_t v;
  assert_int_equal(ls_http_parse_size("0", &v), LS_OK);
  assert_int_equal(v, 0);
  assert_int_equal(ls_http_parse_size("50G", &v), LS_OK);
  assert_int_equal(v, (int64_t)50 << 30);
  assert_int_equal(ls_http_parse_size("512m", &v), LS_OK);
  assert_int_equal(v, (int64_t)512 << 20);
  assert_int_equal(ls_http_parse_size("3KiB", &v), LS_OK);
  assert_int_equal(v, 3072);
  assert_int_equal(ls_http_parse_size("1T", &v), LS_OK);
  assert_int_equal(v, (int64_t)1 << 40);
  const char *bad[] = {"", "-1", "12Q", "G", "1GG", "99999999999T", " 5", "5 "};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    assert_int_equal(ls_http_parse_size(bad[i], &v), LS_ERR);
}

static void resolve_fails(const char *arg, const char *want) {
  capture_t cap;
  ls_location_t loc;
  capture_begin(&cap);
  int rc = ls_location_resolve(arg, &loc);
  size_t n;
  char *err = capture_end(&cap, &n);
  assert_int_equal(rc, LS_ERR);
  if (!strstr(err, want)) fail_msg("%s: message \"%s\" lacks \"%s\"", arg, err, want);
  /* one line */
  assert_non_null(strchr(err, '\n'));
  assert_null(strchr(strchr(err, '\n') + 1, '\n'));
  free(err);
}

static void test_resolve(void **state) {
  ls_location_t loc;
  char old[4096];
  assert_non_null(getcwd(old, sizeof old));
  assert_int_equal(chdir(g_dir), 0);
  setenv("HF_HUB_CACHE", g_dir, 1);
  setenv("HF_ENDPOINT", "http://hub.example.invalid:8080/", 1);
  /* URLs */
  assert_int_equal(ls_location_resolve("https://example.invalid/a/b/", &loc), LS_OK);
  assert_int_equal(loc.kind, LS_LOC_URL);
  assert_string_equal(loc.base, "https://example.invalid/a/b");
  resolve_fails("http://", "not a valid http(s) URL");
  resolve_fails("https://u:pw@example.invalid/m", "credentials in the URL");
  resolve_fails("https://example.invalid/m?x=1", "no ?query");
  resolve_fails("ftp://example.invalid/m", "only http:// and https://");
  /* hub ids: not cached -> the endpoint, the revision encoded */
  capture_t cap;
  capture_begin(&cap);
  assert_int_equal(ls_location_resolve("org/name@refs/pr/1", &loc), LS_OK);
  free(capture_end(&cap, NULL));
  assert_int_equal(loc.kind, LS_LOC_HUB);
  assert_int_equal(loc.in_cache, 0);
  assert_string_equal(loc.hub_id, "org/name");
  assert_string_equal(loc.revision, "refs/pr/1");
  assert_string_equal(loc.base, "http://hub.example.invalid:8080/org/name/resolve/refs%2Fpr%2F1");
  resolve_fails("org/na--me", "not a hub id");
  resolve_fails("org/name@", "revision");
  resolve_fails("org/name@a/../b", "revision");
  /* the local Hugging Face cache: refs/main -> a complete snapshot */
  const char *rev = "0123456789abcdef0123456789abcdef01234567";
  char p[4600];
  snprintf(p, sizeof p, "%s/models--org--name", g_dir);
  assert_int_equal(mkdir(p, 0755), 0);
  snprintf(p, sizeof p, "%s/models--org--name/refs", g_dir);
  assert_int_equal(mkdir(p, 0755), 0);
  snprintf(p, sizeof p, "%s/models--org--name/refs/main", g_dir);
  write_file(p, rev, strlen(rev));
  snprintf(p, sizeof p, "%s/models--org--name/snapshots", g_dir);
  assert_int_equal(mkdir(p, 0755), 0);
  snprintf(p, sizeof p, "%s/models--org--name/snapshots/%s", g_dir, rev);
  assert_int_equal(mkdir(p, 0755), 0);
  snprintf(p, sizeof p, "%s/models--org--name/snapshots/%s/config.json", g_dir, rev);
  write_file(p, "{}", 2);
  capture_begin(&cap);
  assert_int_equal(ls_location_resolve("org/name", &loc), LS_OK); /* no weights: endpoint */
  free(capture_end(&cap, NULL));
  assert_int_equal(loc.in_cache, 0);
  snprintf(p, sizeof p, "%s/models--org--name/snapshots/%s/model.safetensors.index.json", g_dir, rev);
  const char *idx = "{\"weight_map\": {\"a\": \"s1.safetensors\", \"b\": \"s2.safetensors\"}}";
  write_file(p, idx, strlen(idx));
  snprintf(p, sizeof p, "%s/models--org--name/snapshots/%s/s1.safetensors", g_dir, rev);
  write_file(p, "x", 1);
  capture_begin(&cap);
  assert_int_equal(ls_location_resolve("org/name", &loc), LS_OK); /* a shard missing */
  free(capture_end(&cap, NULL));
  assert_int_equal(loc.in_cache, 0);
  snprintf(p, sizeof p, "%s/models--org--name/snapshots/%s/s2.safetensors", g_dir, rev);
  write_file(p, "x", 1);
  capture_begin(&cap);
  assert_int_equal(ls_location_resolve("org/name@main", &loc), LS_OK);
  free(capture_end(&cap, NULL));
  assert_int_equal(loc.kind, LS_LOC_HUB);
  assert_int_equal(loc.in_cache, 1);
  snprintf(p, sizeof p, "%s/models--org--name/snapshots/%s", g_dir, rev);
  assert_string_equal(loc.base, p);
  /* a local directory of the same spelling wins */
  assert_int_equal(mkdir("org", 0755), 0);
  assert_int_equal(mkdir("org/name", 0755), 0);
  assert_int_equal(ls_location_resolve("org/name", &loc), LS_OK);
  assert_int_equal(loc.kind, LS_LOC_LOCAL);
  assert_string_equal(loc.base, "org/name");
  /* paths are paths */
  assert_int_equal(ls_location_resolve("/no/such/dir", &loc), LS_OK);
  assert_int_equal(loc.kind, LS_LOC_LOCAL);
  assert_int_equal(ls_location_resolve("a/b/c", &loc), LS_OK);
  assert_int_equal(loc.kind, LS_LOC_LOCAL);
  assert_int_equal(chdir(old), 0);
  unsetenv("HF_HUB_CACHE");
  unsetenv("HF_ENDPOINT");
}

/* nothing listens on port 1: the retries are bounded, each said in one line, then one
 * error naming the URL */
static void test_refused_retries(void **state) {
  setenv("LS_HTTP_RETRIES", "2", 1);
  setenv("LS_HTTP_BACKOFF_MS", "1", 1);
  ls_http_opts_t o = {"off", -1};
  ls_http_configure(&o);
  capture_t cap;
  capture_begin(&cap);
  ls_src_t s;
  int rc = ls_src_open_url(&s, "http://127.0.0.1:1/m/config.json", 0);
  size_t n;
  char *err = capture_end(&cap, &n);
  assert_int_equal(rc, LS_ERR);
  int lines = 0, retries = 0, errors = 0;
  for (char *l = err; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
    lines++;
    if (strstr(l, "warning: http://127.0.0.1:1/m/config.json") == l + strlen("layersweep: ") &&
        strstr(l, "; retry ")) retries++;
    if (strncmp(l, "layersweep: error: http://127.0.0.1:1/m/config.json", 51) == 0) errors++;
  }
  if (lines != 3 || retries != 2 || errors != 1) fail_msg("unexpected messages: %s", err);
  free(err);
  ls_http_shutdown();
  unsetenv("LS_HTTP_RETRIES");
  unsetenv("LS_HTTP_BACKOFF_MS");
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup_dir, teardown_dir)

int main(void) {
  const struct CMUnitTest tests[] = {T(test_local_spans), T(test_parse_size), T(test_resolve),
                                     T(test_refused_retries)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
