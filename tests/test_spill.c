/* test_spill.c: cmocka tests for io/spill.c, the residual stream in a file: many passes
 * over ragged microbatches (each row's value follows from its row and pass, so a stale,
 * lost or misplaced region shows), with one, two and many microbatches (fewer than the
 * ring's slots: a microbatch's next read must wait for its write behind), out-of-order
 * acquires, clean releases, get / put of ranges crossing regions between passes, O_DIRECT
 * and buffered I/O; an injected write failure said once and sticky; nothing left in the
 * directory. */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "test_capture.h"

#include <dirent.h>
#include <stdlib.h>
#include <string.h>

#include "spill.h"

enum { H = 37 }; /* floats per row: rows straddle 4 KiB pages */

static char g_dir[4096];

static int setup_dir(void **state) {
  (void)state;
  test_mkdtemp(g_dir, sizeof g_dir, "ls_spill_");
  return 0;
}
static int teardown_dir(void **state) {
  (void)state;
  test_rmtree(g_dir);
  return 0;
}

static float value(int64_t row, int j, int pass) { return (float)(row * 1000 + j) + 0.25f * (float)pass; }

typedef struct {
  int n_mb;
  int64_t rows[40];
  void *slot[LS_SPILL_SLOTS];
  ls_spill_t *sp;
} rig_t;

/* microbatches of ragged sizes (1..29 rows) */
static void rig_open(rig_t *r, int n_mb, const char *dir) {
  memset(r, 0, sizeof *r);
  r->n_mb = n_mb;
  r->rows[0] = 0;
  for (int k = 0; k < n_mb; k++) r->rows[k + 1] = r->rows[k] + 1 + (k * 7 + 3) % 29;
  const size_t slot = ls_spill_slot_bytes(n_mb, r->rows, sizeof(float) * H);
  assert_true(slot % LS_SPILL_ALIGN == 0);
  assert_true(ls_spill_file_bytes(n_mb, r->rows, sizeof(float) * H) >= (uint64_t)r->rows[n_mb] * H * 4);
  for (int i = 0; i < LS_SPILL_SLOTS; i++) {
    r->slot[i] = ls_aligned_alloc_to(slot, LS_SPILL_ALIGN, "test");
    memset(r->slot[i], 0, slot);
  }
  r->sp = ls_spill_open(dir, 0, n_mb, r->rows, sizeof(float) * H, r->slot, slot);
  assert_non_null(r->sp);
}

static void rig_close(rig_t *r) {
  ls_spill_close(r->sp);
  for (int i = 0; i < LS_SPILL_SLOTS; i++) free(r->slot[i]);
}

/* the whole stream <- pass 0's values, by put in pieces that cross regions */
static void fill(rig_t *r) {
  const int64_t n = r->rows[r->n_mb];
  float *x = malloc(sizeof(float) * H * (size_t)n);
  for (int64_t i = 0; i < n; i++)
    for (int j = 0; j < H; j++) x[i * H + j] = value(i, j, 0);
  for (int64_t r0 = 0; r0 < n; r0 += 11)
    assert_int_equal(ls_spill_put(r->sp, r0, n - r0 < 11 ? n - r0 : 11, x + r0 * H), LS_OK);
  free(x);
}

/* one pass: each microbatch acquired in `order`, checked to hold pass p - 1's values, and
 * (when dirty) advanced to pass p */
static void pass(rig_t *r, const int *order, int p, int dirty) {
  for (int q = 0; q < r->n_mb; q++) {
    const int mb = order ? order[q] : q;
    float *x = ls_spill_acquire(r->sp, mb);
    assert_non_null(x);
    for (int64_t i = r->rows[mb]; i < r->rows[mb + 1]; i++)
      for (int j = 0; j < H; j++) {
        float *v = &x[(i - r->rows[mb]) * H + j];
        assert_true(*v == value(i, j, p - 1));
        if (dirty) *v = value(i, j, p);
      }
    ls_spill_release(r->sp, mb, dirty);
  }
}

static void check_all(rig_t *r, int p) {
  const int64_t n = r->rows[r->n_mb];
  float *x = malloc(sizeof(float) * H * (size_t)n);
  /* a range across every region, then one inside a region */
  assert_int_equal(ls_spill_get(r->sp, 0, n, x), LS_OK);
  for (int64_t i = 0; i < n; i++)
    for (int j = 0; j < H; j++) assert_true(x[i * H + j] == value(i, j, p));
  if (n > 3) {
    assert_int_equal(ls_spill_get(r->sp, 1, 2, x), LS_OK);
    assert_true(x[0] == value(1, 0, p) && x[2 * H - 1] == value(2, H - 1, p));
  }
  free(x);
}

static int dir_empty(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return 1;
  struct dirent *e;
  int n = 0;
  while ((e = readdir(d)))
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
  closedir(d);
  return n == 0;
}

static void passes_for(int n_mb, int direct) {
  setenv("LS_SPILL_DIRECT", direct ? "1" : "0", 1);
  char dir[4200];
  snprintf(dir, sizeof dir, "%s/d%d_%d", g_dir, n_mb, direct);
  rig_t r;
  rig_open(&r, n_mb, dir);
  ls_spill_stats_t st;
  ls_spill_stats(r.sp, &st);
  assert_int_equal(st.direct, direct); /* the scratch disk (ext4) takes O_DIRECT */
  fill(&r);
  int p = 1;
  for (; p <= 4; p++) pass(&r, NULL, p, 1);
  pass(&r, NULL, p, 0); /* read-only (the final norm) */
  check_all(&r, p - 1);
  /* out of order: reversed, then a put between passes changes rows read ahead */
  int order[40];
  for (int q = 0; q < n_mb; q++) order[q] = n_mb - 1 - q;
  pass(&r, order, p, 1);
  check_all(&r, p);
  fill(&r); /* back to pass 0 everywhere, though the thread may have read ahead */
  pass(&r, NULL, 1, 1);
  assert_int_equal(ls_spill_flush(r.sp), LS_OK);
  check_all(&r, 1);
  ls_spill_stats(r.sp, &st);
  assert_true(st.bytes_written >= (uint64_t)r.rows[n_mb] * H * 4 * 6);
  assert_true(dir_empty(dir)); /* unlinked at once */
  rig_close(&r);
  assert_int_equal(access(dir, F_OK), -1); /* made by the spill, removed by it */
  unsetenv("LS_SPILL_DIRECT");
}

static void test_one_microbatch(void **state) { (void)state; passes_for(1, 1); passes_for(1, 0); }
static void test_two_microbatches(void **state) { (void)state; passes_for(2, 1); passes_for(2, 0); }
static void test_many_microbatches(void **state) { (void)state; passes_for(37, 1); passes_for(37, 0); }

static void test_write_failure(void **state) {
  (void)state;
  char dir[4200];
  snprintf(dir, sizeof dir, "%s/fail", g_dir);
  setenv("LS_FAULT_SPILL_WRITE", "3", 1);
  rig_t r;
  rig_open(&r, 5, dir);
  unsetenv("LS_FAULT_SPILL_WRITE");
  fill(&r);
  capture_t c;
  capture_begin(&c);
  int got_null = 0;
  for (int q = 0; q < 5 * 3 && !got_null; q++) {
    const int mb = q % 5;
    float *x = ls_spill_acquire(r.sp, mb);
    if (!x) { got_null = 1; break; }
    ls_spill_release(r.sp, mb, 1);
  }
  const int flush = ls_spill_flush(r.sp);
  const int again = ls_spill_acquire(r.sp, 0) == NULL;
  size_t len;
  char *msg = capture_end(&c, &len);
  assert_true(got_null);
  assert_int_equal(flush, LS_ERR);
  assert_true(again); /* sticky */
  assert_non_null(strstr(msg, "cannot write the spilled residual stream"));
  int lines = 0;
  for (char *p = msg; *p; p++) lines += *p == '\n';
  assert_int_equal(lines, 1); /* said once */
  free(msg);
  rig_close(&r);
}

static void test_bad_dir(void **state) {
  (void)state;
  rig_t r;
  memset(&r, 0, sizeof r);
  int64_t rows[2] = {0, 4};
  void *slot[LS_SPILL_SLOTS];
  for (int i = 0; i < LS_SPILL_SLOTS; i++) slot[i] = ls_aligned_alloc_to(4096, 4096, "t");
  capture_t c;
  capture_begin(&c);
  ls_spill_t *sp = ls_spill_open("/proc/no-such/dir", 0, 1, rows, sizeof(float) * H, slot, 4096);
  size_t len;
  char *msg = capture_end(&c, &len);
  assert_null(sp);
  assert_non_null(strstr(msg, "--spill-dir /proc/no-such/dir"));
  free(msg);
  for (int i = 0; i < LS_SPILL_SLOTS; i++) free(slot[i]);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_one_microbatch, setup_dir, teardown_dir),
      cmocka_unit_test_setup_teardown(test_two_microbatches, setup_dir, teardown_dir),
      cmocka_unit_test_setup_teardown(test_many_microbatches, setup_dir, teardown_dir),
      cmocka_unit_test_setup_teardown(test_write_failure, setup_dir, teardown_dir),
      cmocka_unit_test(test_bad_dir),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
