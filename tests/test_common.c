/* test_common.c: the foundation (src/common): deferred errors are per thread (a worker
 * thread's message is kept for the thread that reports it, and never lands in, or is
 * dropped with, another thread's deferred message), FNV-1a against its published test
 * vectors, and the dtype table and conversions. */
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "test_capture.h"

#include "dtype.h"
#include "ls_common.h"

/* ---- deferred errors are per thread --------------------------------------------------- */
typedef struct {
  char taken[256];
  int had, pending_after;
} worker_t;

static void *worker(void *arg) {
  worker_t *w = arg;
  ls_error_defer(1);
  ls_error("reader: tensor %s is bad", "model.layers.5.mlp.up_proj.weight");
  ls_error("a second message is not kept over the first");
  w->had = ls_error_take(w->taken, sizeof w->taken);
  w->pending_after = ls_error_pending();
  return NULL;
}

static void test_defer_per_thread(void **state) {
  capture_t cap;
  capture_begin(&cap);
  /* the main thread defers too, as it does around a collective write */
  ls_error_defer(1);
  ls_error("main: collective step failed");
  worker_t w = {0};
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, worker, &w), 0);
  pthread_join(t, NULL);
  /* main's own message is untouched and still pending; releasing it without printing
   * (another rank reports) does not lose the worker's message */
  assert_true(ls_error_pending());
  ls_error_release(0);
  assert_false(ls_error_pending());
  ls_error("%s", w.taken); /* the main thread reports the worker's message */
  size_t len;
  char *out = capture_end(&cap, &len);
  assert_int_equal(w.had, 1);
  assert_int_equal(w.pending_after, 0);
  assert_string_equal(w.taken, "reader: tensor model.layers.5.mlp.up_proj.weight is bad");
  assert_string_equal(out, "layersweep: error: reader: tensor model.layers.5.mlp.up_proj.weight is bad\n");
  free(out);
  /* nothing to take */
  char buf[8] = "x";
  assert_int_equal(ls_error_take(buf, sizeof buf), 0);
  assert_string_equal(buf, "");
}

/* ---- hashing ----------------------------------------------------------------------------- */
static void test_fnv1a(void **state) {
  /* the FNV-1a 64-bit test vectors (Fowler, Noll, Vo) */
  assert_true(ls_fnv1a(LS_FNV_INIT, "", 0) == 0xcbf29ce484222325ull);
  assert_true(ls_fnv1a(LS_FNV_INIT, "a", 1) == 0xaf63dc4c8601ec8cull);
  assert_true(ls_fnv1a(LS_FNV_INIT, "foobar", 6) == 0x85944171f73967e8ull);
  /* chaining equals hashing the concatenation */
  assert_true(ls_fnv1a(ls_fnv1a(LS_FNV_INIT, "foo", 3), "bar", 3) == 0x85944171f73967e8ull);
}

/* ---- dtypes ---------------------------------------------------------------------------------- */
static void test_dtypes(void **state) {
  assert_int_equal(ls_dtype_size(LS_DT_F32), 4);
  assert_int_equal(ls_dtype_size(LS_DT_F16), 2);
  assert_int_equal(ls_dtype_size(LS_DT_BF16), 2);
  ls_dtype_t dt;
  assert_int_equal(ls_dtype_parse("BF16", &dt), 0);
  assert_int_equal(dt, LS_DT_BF16);
  assert_string_equal(ls_dtype_name(LS_DT_F16), "F16");
  assert_int_equal(ls_dtype_parse("I64", &dt), 0); /* storage only */
  assert_int_equal(dt, LS_DT_I64);
  assert_int_equal(ls_dtype_size(LS_DT_I64), 8);
  assert_false(ls_dtype_is_float(LS_DT_I64));
  assert_int_equal(ls_dtype_parse("F8_E4M3", &dt), 0);
  assert_int_equal(ls_dtype_size(dt), 1);
  assert_true(ls_dtype_is_float(dt) && ls_dtype_is_fp8(dt));
  assert_int_equal(ls_dtype_parse("Q4_K", &dt), -1);
  assert_int_equal(ls_dtype_parse(NULL, &dt), -1);
  /* exact values both ways: 1.5, -2, the largest half, a half subnormal, bf16 rounding */
  const float in[5] = {1.5f, -2.0f, 65504.0f, 0x1p-24f, 1.00390625f};
  uint16_t h[5], b[5];
  float back[5];
  ls_convert_from_f32(h, in, LS_DT_F16, 5);
  ls_convert_to_f32(back, h, LS_DT_F16, 5);
  for (int i = 0; i < 5; i++) assert_true(back[i] == in[i]);
  ls_convert_from_f32(b, in, LS_DT_BF16, 5);
  ls_convert_to_f32(back, b, LS_DT_BF16, 5);
  assert_true(back[0] == 1.5f && back[1] == -2.0f && back[2] == 65536.0f);
  assert_true(back[4] == 1.0f); /* 1 + 2^-8 is a tie: rounds to even */
  const float nan = NAN;
  ls_convert_from_f32(b, &nan, LS_DT_BF16, 1);
  ls_convert_to_f32(back, b, LS_DT_BF16, 1);
  assert_true(isnan(back[0]));
}

/* every FP8 code against its definition, evaluated in double: E4M3 (bias 7, subnormals
 * m 2^-9, 0x7f / 0xff NaN, no inf: the largest is 448) and E5M2 (bias 15, inf and NaN) */
static void test_fp8(void **state) {
  (void)state;
  uint8_t codes[256];
  float v4[256], v5[256];
  for (int i = 0; i < 256; i++) codes[i] = (uint8_t)i;
  ls_convert_to_f32(v4, codes, LS_DT_F8_E4M3, 256);
  ls_convert_to_f32(v5, codes, LS_DT_F8_E5M2, 256);
  for (int i = 0; i < 256; i++) {
    const double sign = (i & 0x80) ? -1.0 : 1.0;
    int e = (i >> 3) & 15, m = i & 7;
    if (e == 15 && m == 7) assert_true(isnan(v4[i]));
    else assert_true((double)v4[i] == sign * (e ? ldexp(1.0 + m / 8.0, e - 7) : ldexp(m / 8.0, -6)));
    e = (i >> 2) & 31;
    m = i & 3;
    if (e == 31) assert_true(m ? isnan(v5[i]) : isinf(v5[i]) && (v5[i] < 0) == (i >= 128));
    else assert_true((double)v5[i] == sign * (e ? ldexp(1.0 + m / 4.0, e - 15) : ldexp(m / 4.0, -14)));
  }
  assert_true(v4[0x7e] == 448.0f && v5[0x7b] == 57344.0f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_defer_per_thread),
      cmocka_unit_test(test_fnv1a),
      cmocka_unit_test(test_dtypes),
      cmocka_unit_test(test_fp8),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
