/* test_hooks.c: cmocka tests for src/hooks.c: --layers, --hooks and --pool parsing.
 * Good specs are checked element by element (sorted, de-duplicated); every bad spec
 * must return -1 with exactly one stderr line naming the flag. */
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
#include <unistd.h>

#include "hooks.h"
#include "ls_common.h"

static void check_one_line(int rc, const char *msg, size_t len, const char *what,
                           const char *want1, const char *want2) {
  if (getenv("LS_TEST_VERBOSE")) fprintf(stderr, "  [%s] %s", what, msg);
  int ok = rc == -1 && len > 0 && msg[len - 1] == '\n' && strchr(msg, '\n') == msg + len - 1 &&
           strstr(msg, want1) && (!want2 || strstr(msg, want2));
  if (!ok)
    fprintf(stderr, "%s: wanted rc -1 and one line with '%s'%s%s%s; got rc %d: %s\n", what,
            want1, want2 ? " and '" : "", want2 ? want2 : "", want2 ? "'" : "", rc, msg);
  assert_true(ok);
}

/* ---- --layers ------------------------------------------------------------------------- */

static void layers_ok(const char *spec, int n_layers, const int *want, int n_want) {
  int *got = NULL, n = -1;
  int rc = ls_layers_parse(spec, n_layers, &got, &n);
  if (rc != 0) fprintf(stderr, "--layers \"%s\" (n_layers %d) rejected\n", spec, n_layers);
  assert_int_equal(rc, 0);
  assert_non_null(got);
  if (n != n_want) fprintf(stderr, "--layers \"%s\": %d layers, want %d\n", spec, n, n_want);
  assert_int_equal(n, n_want);
  for (int i = 0; i < n; i++) {
    if (got[i] != want[i]) fprintf(stderr, "--layers \"%s\"[%d] = %d, want %d\n", spec, i, got[i], want[i]);
    assert_int_equal(got[i], want[i]);
  }
  free(got);
}

static void layers_bad(const char *spec, int n_layers, const char *want) {
  int *got = (int *)&n_layers, n = 99;
  capture_t c;
  capture_begin(&c);
  int rc = ls_layers_parse(spec, n_layers, &got, &n);
  size_t len;
  char *msg = capture_end(&c, &len);
  check_one_line(rc, msg, len, spec ? spec : "(null)", "--layers", want);
  free(msg);
  assert_null(got);
  assert_int_equal(n, 0);
}

static void test_layers_all(void **state) {
  int want[32];
  for (int i = 0; i < 32; i++) want[i] = i;
  layers_ok("all", 12, want, 12);
  layers_ok("all", 1, want, 1);
  layers_ok("all", 32, want, 32);
  layers_ok("0,all", 5, want, 5);
  layers_ok("all,-1,3-4", 6, want, 6);
}

static void test_layers_lists(void **state) {
  layers_ok("0,4,8-11", 12, (const int[]){0, 4, 8, 9, 10, 11}, 6);
  layers_ok("0,4,8-11", 32, (const int[]){0, 4, 8, 9, 10, 11}, 6);
  layers_ok("-1", 12, (const int[]){11}, 1);
  layers_ok("-1", 1, (const int[]){0}, 1);
  layers_ok("-4--1", 12, (const int[]){8, 9, 10, 11}, 4);
  layers_ok("-12", 12, (const int[]){0}, 1);
  layers_ok("11", 12, (const int[]){11}, 1);
  layers_ok("3,1,3", 12, (const int[]){1, 3}, 2);
  layers_ok("5-5", 12, (const int[]){5}, 1);
  layers_ok("2-4,3-6,0", 12, (const int[]){0, 2, 3, 4, 5, 6}, 6);
  layers_ok("10--1", 12, (const int[]){10, 11}, 2);
  layers_ok("-2,0,-2,1", 4, (const int[]){0, 1, 2}, 3);
}

static void test_layers_bad(void **state) {
  layers_bad("12", 12, "out of range for a model with 12 layers");
  layers_bad("0,12", 12, "layer 12 is out of range");
  layers_bad("-13", 12, "layer -13 is out of range");
  layers_bad("3-12", 12, "out of range");
  layers_bad("99999999999999999999999", 12, "--layers");
  layers_bad("5-2", 12, "range 5-2 is empty");
  layers_bad("-1-0", 12, "is empty");
  layers_bad("1,", 12, "trailing comma");
  layers_bad("x", 12, "expected a layer number");
  layers_bad("", 12, "empty layer list");
  layers_bad(NULL, 12, "empty layer list");
  layers_bad(",1", 12, "expected a layer number");
  layers_bad("1,,2", 12, "expected a layer number");
  layers_bad("1-", 12, "expected a layer number");
  layers_bad("1-2-3", 12, "unexpected");
  layers_bad("1;2", 12, "unexpected \";2\"");
  layers_bad("allx", 12, "expected a layer number");
  layers_bad("1.5", 12, "unexpected");
}

/* ---- --hooks ------------------------------------------------------------------------------ */

static void hooks_ok(const char *spec, unsigned want) {
  unsigned mask = 12345;
  int rc = ls_hooks_parse(spec, &mask);
  if (rc != 0 || mask != want)
    fprintf(stderr, "--hooks \"%s\": rc %d mask 0x%x, want 0x%x\n", spec, rc, mask, want);
  assert_int_equal(rc, 0);
  assert_int_equal(mask, want);
}

static void hooks_bad(const char *spec, const char *want) {
  unsigned mask = 12345;
  capture_t c;
  capture_begin(&c);
  int rc = ls_hooks_parse(spec, &mask);
  size_t len;
  char *msg = capture_end(&c, &len);
  check_one_line(rc, msg, len, spec ? spec : "(null)", "--hooks", want);
  free(msg);
}

static void test_hooks(void **state) {
  assert_int_equal(LS_HOOK_COUNT, 6);
  const char *names[LS_HOOK_COUNT] = {"residual_pre", "attn_out", "mlp_out", "residual_post",
                                      "final_norm", "router_logits"};
  for (int h = 0; h < LS_HOOK_COUNT; h++) {
    assert_string_equal(ls_hook_name((ls_hook_t)h), names[h]);
    hooks_ok(names[h], 1u << h);
  }
  hooks_ok("all", 0x1f);
  hooks_ok("attn_out,mlp_out", (1u << LS_HOOK_ATTN_OUT) | (1u << LS_HOOK_MLP_OUT));
  hooks_ok("residual_post,residual_pre",
           (1u << LS_HOOK_RESIDUAL_POST) | (1u << LS_HOOK_RESIDUAL_PRE));
  hooks_ok("mlp_out,mlp_out", 1u << LS_HOOK_MLP_OUT);
  hooks_ok("final_norm,all", 0x1f);
  hooks_ok("all,final_norm", 0x1f);
  /* router_logits (MoE) is asked for by name, never by all */
  hooks_ok("all,router_logits", 0x3f);
  hooks_ok("router_logits,all", 0x3f);
  hooks_bad("foo", "unknown hook \"foo\"");
  hooks_bad("attn_out,resid", "unknown hook \"resid\"");
  hooks_bad("ATTN_OUT", "unknown hook");
  hooks_bad("attn_out ", "unknown hook \"attn_out \"");
  hooks_bad("", "residual_pre");
  hooks_bad(NULL, "residual_pre");
  hooks_bad(",", "no hook given");
  /* a spec longer than the parser's buffer is refused, not truncated */
  char big[2048];
  memset(big, 'a', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  hooks_bad(big, "--hooks");
}

/* ---- --pool ----------------------------------------------------------------------------------- */

static void test_pool(void **state) {
  ls_pool_t p = (ls_pool_t)99;
  assert_int_equal(ls_pool_parse("last_token", &p), 0);
  assert_int_equal(p, LS_POOL_LAST);
  assert_int_equal(ls_pool_parse("mean", &p), 0);
  assert_int_equal(p, LS_POOL_MEAN);
  assert_int_equal(ls_pool_parse("none", &p), 0);
  assert_int_equal(p, LS_POOL_NONE);
  assert_string_equal(ls_pool_name(LS_POOL_LAST), "last_token");
  assert_string_equal(ls_pool_name(LS_POOL_MEAN), "mean");
  assert_string_equal(ls_pool_name(LS_POOL_NONE), "none");
  /* name -> parse round trip */
  for (int m = 0; m < 3; m++) {
    assert_int_equal(ls_pool_parse(ls_pool_name((ls_pool_t)m), &p), 0);
    assert_int_equal(p, m);
  }
  const char *bad[] = {"max", "", "Mean", "last", "mean ", "last_token,mean"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    p = LS_POOL_MEAN;
    capture_t c;
    capture_begin(&c);
    int rc = ls_pool_parse(bad[i], &p);
    size_t len;
    char *msg = capture_end(&c, &len);
    char want[64];
    snprintf(want, sizeof want, "unknown pooling \"%s\"", bad[i]);
    check_one_line(rc, msg, len, bad[i], "--pool", want);
    assert_non_null(strstr(msg, "last_token, mean or none"));
    free(msg);
    assert_int_equal(p, LS_POOL_MEAN); /* untouched on error */
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_layers_all),
      cmocka_unit_test(test_layers_lists),
      cmocka_unit_test(test_layers_bad),
      cmocka_unit_test(test_hooks),
      cmocka_unit_test(test_pool),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
