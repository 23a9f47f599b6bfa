/* test_cuda_ops.c: every op of the CUDA backend against the CPU backend (the oracle),
 * through the op table of kernels/backend.h, as ggml's backend-ops test does: fresh
 * random inputs per case, outputs poisoned with NaN before each run (an unwritten
 * element fails), the case's parameters in every failure, max row-wise error and
 * NMSE printed. float32 mode: within 1e-5 of the CPU op (row-wise relative). bf16
 * mode: GEMMs compared (a) against the CPU GEMM on bf16-rounded inputs within 1e-5
 * (only the accumulation order differs) and (b) against the float32 GEMM within 1e-2.
 * Also: weight conversion from f32/f16/bf16 and FP8 block dequantization, the MoE row
 * ops, the device broadcast path, a whole decoder block.
 * Needs a GPU: without a usable one it prints SKIPPED (with the reason) and exits 77,
 * which CTest reports as skipped, never as passed. */
#include <math.h>
#include <mpi.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "backend.h"
#include "config.h"
#include "family.h"
#include "ls_common.h"
#include "ops_cpu.h"
#include "registry.h"

static ls_backend_t *cpu, *gpu32, *gpu16;

/* ---- helpers ------------------------------------------------------------------------------ */
static uint64_t rng = 88172645463325252ull;
static float frand(void) { /* uniform in [-1, 1) */
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (float)((double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static float *rand_buf(size_t n, float scale) {
  float *p = malloc(sizeof(float) * (n ? n : 1));
  assert_non_null(p);
  for (size_t i = 0; i < n; i++) p[i] = scale * frand();
  return p;
}

/* bf16 round-to-nearest-even of x, as a float */
static float round_bf16(float x) {
  uint32_t u;
  memcpy(&u, &x, 4);
  u = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
  memcpy(&x, &u, 4);
  return x;
}

/* device copy of host floats */
static void *dev_from(ls_backend_t *be, const void *h, size_t bytes) {
  void *d = be->iface->alloc(be, bytes ? bytes : 4, "test");
  assert_non_null(d);
  if (bytes) assert_int_equal(be->iface->to_device(be, d, h, bytes), 0);
  return d;
}

/* device buffer of n floats, all NaN */
static float *dev_poisoned(ls_backend_t *be, size_t n) {
  float *h = malloc(sizeof(float) * (n ? n : 1));
  assert_non_null(h);
  for (size_t i = 0; i < n; i++) h[i] = NAN;
  float *d = dev_from(be, h, sizeof(float) * n);
  assert_int_equal(be->iface->sync(be), 0);
  free(h);
  return d;
}

static float *to_host(ls_backend_t *be, const void *d, size_t n) {
  float *h = malloc(sizeof(float) * (n ? n : 1));
  assert_non_null(h);
  if (n) assert_int_equal(be->iface->to_host(be, h, d, sizeof(float) * n), 0);
  assert_int_equal(be->iface->sync(be), 0);
  return h;
}

/* Row-wise: max |a - ref| over a row <= rtol * max |ref| over the row (+ tiny atol);
 * NaN anywhere fails. */
static void check_rows(const char *what, const float *a, const float *ref, size_t rows,
                       size_t cols, double rtol) {
  double worst = 0, se = 0, sr = 0;
  for (size_t r = 0; r < rows; r++) {
    double err = 0, mag = 0;
    for (size_t i = 0; i < cols; i++) {
      double x = a[r * cols + i], y = ref[r * cols + i];
      if (!isfinite(x)) fail_msg("%s: row %zu col %zu is %g (unwritten or overflow)", what, r, i, x);
      err = fmax(err, fabs(x - y));
      mag = fmax(mag, fabs(y));
      se += (x - y) * (x - y);
      sr += y * y;
    }
    double rel = err / (mag + 1e-30);
    if (rel > worst) worst = rel;
    if (err > rtol * mag + 1e-30)
      fail_msg("%s: row %zu: max error %.3g vs row max %.3g (relative %.3g > %.0e)", what, r,
               err, mag, rel, rtol);
  }
  printf("  %-60s max row rel %.2e  NMSE %.2e\n", what, worst, sr > 0 ? se / sr : se);
}

/* ---- ops ------------------------------------------------------------------------------------- */
static void test_rmsnorm(void **state) {
  const int shapes[][2] = {{1, 64}, {7, 100}, {130, 1024}, {3, 4097}};
  for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
    const int T = shapes[c][0], H = shapes[c][1];
    float *x = rand_buf((size_t)T * H, 3.0f), *w = rand_buf((size_t)H, 1.0f);
    float *ref = malloc(sizeof(float) * (size_t)T * H);
    cpu->iface->rmsnorm(cpu, ref, x, w, T, H, 1e-6f);
    float *dx = dev_from(gpu32, x, sizeof(float) * (size_t)T * H),
          *dw = dev_from(gpu32, w, sizeof(float) * (size_t)H), *dout = dev_poisoned(gpu32, (size_t)T * H);
    gpu32->iface->rmsnorm(gpu32, dout, dx, dw, T, H, 1e-6f);
    float *got = to_host(gpu32, dout, (size_t)T * H);
    char what[128];
    snprintf(what, sizeof what, "rmsnorm T=%d H=%d", T, H);
    check_rows(what, got, ref, (size_t)T, (size_t)H, 1e-5);
    gpu32->iface->free(gpu32, dx); gpu32->iface->free(gpu32, dw); gpu32->iface->free(gpu32, dout);
    free(x); free(w); free(ref); free(got);
  }
}

/* LayerNorm with and without bias; rows offset by a large mean (the two-pass variance) */
static void test_layernorm(void **state) {
  const int shapes[][2] = {{1, 64}, {7, 100}, {130, 1024}, {3, 4097}};
  for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++)
    for (int bias = 0; bias < 2; bias++) {
      const int T = shapes[c][0], H = shapes[c][1];
      float *x = rand_buf((size_t)T * H, 3.0f), *w = rand_buf((size_t)H, 1.0f);
      float *b = rand_buf((size_t)H, 0.5f);
      for (size_t i = 0; i < (size_t)T * H; i++) x[i] += 40.0f;
      float *ref = malloc(sizeof(float) * (size_t)T * H);
      cpu->iface->layernorm(cpu, ref, x, w, bias ? b : NULL, T, H, 1e-5f);
      float *dx = dev_from(gpu32, x, sizeof(float) * (size_t)T * H),
            *dw = dev_from(gpu32, w, sizeof(float) * (size_t)H),
            *db = dev_from(gpu32, b, sizeof(float) * (size_t)H),
            *dout = dev_poisoned(gpu32, (size_t)T * H);
      gpu32->iface->layernorm(gpu32, dout, dx, dw, bias ? db : NULL, T, H, 1e-5f);
      float *got = to_host(gpu32, dout, (size_t)T * H);
      char what[128];
      snprintf(what, sizeof what, "layernorm T=%d H=%d%s", T, H, bias ? " +bias" : "");
      check_rows(what, got, ref, (size_t)T, (size_t)H, 1e-5);
      gpu32->iface->free(gpu32, dx); gpu32->iface->free(gpu32, dw);
      gpu32->iface->free(gpu32, db); gpu32->iface->free(gpu32, dout);
      free(x); free(w); free(b); free(ref); free(got);
    }
}

/* One GEMM case on backend be (dtype wt of its weights) against the CPU. */
static void matmul_case(ls_backend_t *be, int T, int n_in, int n_out, int bias) {
  const int bf16 = be->wtype == LS_DT_BF16;
  float *x = rand_buf((size_t)ls_round_rows(T) * n_in, 1.0f), *W = rand_buf((size_t)n_out * n_in, 0.1f);
  float *b = bias ? rand_buf((size_t)n_out, 0.5f) : NULL;
  float *y32 = calloc((size_t)ls_round_rows(T) * n_out, sizeof(float));
  cpu->iface->matmul(cpu, y32, x, W, b, T, n_in, n_out);
  /* the GPU's weights go through load_weight from float32 host bytes */
  void *dW = be->iface->alloc(be, (size_t)n_out * n_in * ls_dtype_size(be->wtype), "W");
  assert_non_null(dW);
  assert_int_equal(be->iface->load_weight(be, dW, W, LS_DT_F32, (size_t)n_out * n_in, 1, 0), 0);
  float *db = b ? dev_from(be, b, sizeof(float) * (size_t)n_out) : NULL;
  float *dx = dev_from(be, x, sizeof(float) * (size_t)ls_round_rows(T) * n_in);
  float *dy = dev_poisoned(be, (size_t)ls_round_rows(T) * n_out);
  assert_int_equal(be->iface->reserve ? be->iface->reserve(be, T, n_in) : 0, 0);
  be->iface->matmul(be, dy, dx, dW, db, T, n_in, n_out);
  float *got = to_host(be, dy, (size_t)T * n_out);
  char what[160];
  snprintf(what, sizeof what, "matmul %s T=%d n_in=%d n_out=%d%s", bf16 ? "bf16" : "f32", T, n_in,
           n_out, bias ? " +bias" : "");
  if (!bf16) {
    check_rows(what, got, y32, (size_t)T, (size_t)n_out, 1e-5);
  } else {
    /* the same GEMM on bf16-rounded operands: only the summation order differs */
    float *xr = malloc(sizeof(float) * (size_t)ls_round_rows(T) * n_in), *Wr = malloc(sizeof(float) * (size_t)n_out * n_in);
    float *yr = calloc((size_t)ls_round_rows(T) * n_out, sizeof(float));
    for (size_t i = 0; i < (size_t)ls_round_rows(T) * n_in; i++) xr[i] = round_bf16(x[i]);
    for (size_t i = 0; i < (size_t)n_out * n_in; i++) Wr[i] = round_bf16(W[i]);
    cpu->iface->matmul(cpu, yr, xr, Wr, b, T, n_in, n_out);
    check_rows(what, got, yr, (size_t)T, (size_t)n_out, 1e-5);
    snprintf(what + strlen(what), sizeof what - strlen(what), " vs float32");
    check_rows(what, got, y32, (size_t)T, (size_t)n_out, 1e-2);
    free(xr); free(Wr); free(yr);
  }
  be->iface->free(be, dW); be->iface->free(be, db); be->iface->free(be, dx); be->iface->free(be, dy);
  free(x); free(W); free(b); free(y32); free(got);
}

static void test_matmul(void **state) {
  const int shapes[][3] = {{1, 64, 96}, {7, 200, 33}, {130, 256, 512}, {300, 1024, 688}};
  for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++)
    for (int bias = 0; bias < 2; bias++) {
      matmul_case(gpu32, shapes[c][0], shapes[c][1], shapes[c][2], bias);
      matmul_case(gpu16, shapes[c][0], shapes[c][1], shapes[c][2], bias);
    }
}

static void test_rope(void **state) {
  /* T, heads, head_dim, rotated dims (partial rotary: Phi, Pythia) */
  const int cases[][4] = {{5, 4, 8, 8}, {70, 8, 64, 64}, {33, 2, 128, 128}, {9, 4, 64, 16},
                          {17, 3, 80, 20}, {6, 2, 96, 48}};
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    const int T = cases[c][0], nh = cases[c][1], hd = cases[c][2], rot = cases[c][3],
              half = rot / 2, maxp = 200;
    float *x = rand_buf((size_t)T * nh * hd, 2.0f), *ct = rand_buf((size_t)maxp * half, 1.0f),
          *st = rand_buf((size_t)maxp * half, 1.0f);
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)T);
    for (int t = 0; t < T; t++) pos[t] = (t * 7 + 3) % maxp;
    float *dx = dev_from(gpu32, x, sizeof(float) * (size_t)T * nh * hd);
    float *dct = dev_from(gpu32, ct, sizeof(float) * (size_t)maxp * half),
          *dst = dev_from(gpu32, st, sizeof(float) * (size_t)maxp * half);
    int32_t *dpos = dev_from(gpu32, pos, sizeof(int32_t) * (size_t)T);
    cpu->iface->rope(cpu, x, pos, ct, st, T, nh, hd, rot);
    gpu32->iface->rope(gpu32, dx, dpos, dct, dst, T, nh, hd, rot);
    float *got = to_host(gpu32, dx, (size_t)T * nh * hd);
    char what[128];
    snprintf(what, sizeof what, "rope T=%d heads=%d hd=%d rot=%d", T, nh, hd, rot);
    check_rows(what, got, x, (size_t)T, (size_t)nh * hd, 1e-6);
    gpu32->iface->free(gpu32, dx); gpu32->iface->free(gpu32, dct); gpu32->iface->free(gpu32, dst);
    gpu32->iface->free(gpu32, dpos);
    free(x); free(ct); free(st); free(pos); free(got);
  }
}

typedef struct {
  int n_seq, nh, nkv, hd, window, padded;
  const int *lens;
  float scale, softcap; /* 0: 1 / sqrt(hd), none */
} att_case_t;

static void test_attention(void **state) {
  static const int l1[] = {1}, l2[] = {200}, l3[] = {17, 1, 64, 130, 5, 33}, l4[] = {300, 2, 77},
                   l5[] = {9, 128, 40};
  const att_case_t cases[] = {
      {1, 4, 4, 64, 0, 0, l1, 0, 0},   {1, 8, 2, 128, 0, 0, l2, 0, 0}, {6, 4, 1, 80, 0, 0, l3, 0, 0},
      {6, 8, 4, 128, 32, 0, l3, 0, 0}, {3, 4, 2, 16, 5, 1, l4, 0, 0},  {3, 2, 2, 256, 0, 1, l5, 0, 0},
      /* Gemma 2: query_pre_attn_scalar 256 with head_dim 128, soft-capping at 50 and 5 */
      {3, 8, 4, 128, 32, 1, l4, 0.0625f, 50.0f}, {6, 4, 2, 64, 0, 0, l3, 0.5f, 5.0f},
  };
  for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
    const att_case_t *c = &cases[ci];
    int32_t *start = malloc(sizeof(int32_t) * (size_t)(c->n_seq + 1)), *len = malloc(sizeof(int32_t) * (size_t)c->n_seq);
    int max_len = 1;
    start[0] = 0;
    for (int s = 0; s < c->n_seq; s++) {
      len[s] = c->lens[s];
      int extent = c->padded ? c->lens[s] + (s % 3) + 1 : c->lens[s]; /* padding rows */
      start[s + 1] = start[s] + extent;
      if (extent > max_len) max_len = extent;
    }
    const int T = start[c->n_seq];
    const size_t qn = (size_t)T * c->nh * c->hd, kn = (size_t)T * c->nkv * c->hd;
    float *q = rand_buf(qn, 1.0f), *k = rand_buf(kn, 1.0f), *v = rand_buf(kn, 1.0f);
    float *ref = malloc(sizeof(float) * qn);
    for (size_t i = 0; i < qn; i++) ref[i] = NAN;
    ls_backend_t *cpu_a = ls_backend_cpu_new(1, max_len + LS_ROW_PAD);
    cpu_a->iface->attention(cpu_a, ref, q, k, v, start, c->padded ? len : NULL, c->n_seq, max_len,
                            c->nh, c->nkv, c->hd, c->window, c->scale, c->softcap);
    ls_backend_free(cpu_a);
    float *dq = dev_from(gpu32, q, sizeof(float) * qn), *dk = dev_from(gpu32, k, sizeof(float) * kn),
          *dv = dev_from(gpu32, v, sizeof(float) * kn), *dout = dev_poisoned(gpu32, qn);
    int32_t *dstart = dev_from(gpu32, start, sizeof(int32_t) * (size_t)(c->n_seq + 1));
    int32_t *dlen = dev_from(gpu32, len, sizeof(int32_t) * (size_t)c->n_seq);
    gpu32->iface->attention(gpu32, dout, dq, dk, dv, dstart, c->padded ? dlen : NULL, c->n_seq,
                            max_len, c->nh, c->nkv, c->hd, c->window, c->scale, c->softcap);
    float *got = to_host(gpu32, dout, qn);
    char what[160];
    snprintf(what, sizeof what, "attention seqs=%d T=%d heads=%d/%d hd=%d window=%d scale=%g "
             "softcap=%g%s", c->n_seq, T, c->nh, c->nkv, c->hd, c->window, c->scale, c->softcap,
             c->padded ? " padded" : "");
    check_rows(what, got, ref, (size_t)T, (size_t)c->nh * c->hd, 1e-5);
    gpu32->iface->free(gpu32, dq); gpu32->iface->free(gpu32, dk); gpu32->iface->free(gpu32, dv);
    gpu32->iface->free(gpu32, dout); gpu32->iface->free(gpu32, dstart); gpu32->iface->free(gpu32, dlen);
    free(q); free(k); free(v); free(ref); free(got); free(start); free(len);
  }
}

static void test_elementwise(void **state) {
  const size_t sizes[] = {1, 5, 1000, 65537, 3000001};
  for (size_t c = 0; c < sizeof sizes / sizeof sizes[0]; c++) {
    const size_t n = sizes[c];
    float *g = rand_buf(n, 6.0f), *u = rand_buf(n, 2.0f);
    float *dg = dev_from(gpu32, g, sizeof(float) * n), *du = dev_from(gpu32, u, sizeof(float) * n);
    cpu->iface->swiglu(cpu, g, u, n);
    gpu32->iface->swiglu(gpu32, dg, du, n);
    float *got = to_host(gpu32, dg, n);
    char what[96];
    snprintf(what, sizeof what, "swiglu n=%zu", n);
    check_rows(what, got, g, 1, n, 1e-6);
    free(got);
    cpu->iface->geglu(cpu, g, u, n);
    gpu32->iface->geglu(gpu32, dg, du, n);
    got = to_host(gpu32, dg, n);
    snprintf(what, sizeof what, "geglu n=%zu", n);
    check_rows(what, got, g, 1, n, 1e-6);
    free(got);
    for (int approx = 0; approx < 2; approx++) {
      cpu->iface->gelu(cpu, g, n, approx);
      gpu32->iface->gelu(gpu32, dg, n, approx);
      got = to_host(gpu32, dg, n);
      snprintf(what, sizeof what, "gelu (%s) n=%zu", approx ? "tanh" : "erf", n);
      check_rows(what, got, g, 1, n, 1e-6);
      free(got);
    }
    cpu->iface->shift(cpu, g, 1.0f, n);
    gpu32->iface->shift(gpu32, dg, 1.0f, n);
    got = to_host(gpu32, dg, n);
    snprintf(what, sizeof what, "shift n=%zu", n);
    check_rows(what, got, g, 1, n, 0.0);
    free(got);
    cpu->iface->add(cpu, g, u, n);
    gpu32->iface->add(gpu32, dg, du, n);
    got = to_host(gpu32, dg, n);
    snprintf(what, sizeof what, "add n=%zu", n);
    check_rows(what, got, g, 1, n, 1e-7);
    gpu32->iface->free(gpu32, dg); gpu32->iface->free(gpu32, du);
    free(g); free(u); free(got);
  }
}

static void test_pool(void **state) {
  static const int lens[] = {1, 17, 64, 3, 129};
  const int n_seq = 5, H = 300;
  for (int padded = 0; padded < 2; padded++) {
    int32_t start[6], len[5];
    start[0] = 0;
    for (int s = 0; s < n_seq; s++) {
      len[s] = lens[s];
      start[s + 1] = start[s] + lens[s] + (padded ? 2 * s + 1 : 0);
    }
    const int T = start[n_seq], total = 1 + 17 + 64 + 3 + 129;
    float *x = rand_buf((size_t)T * H, 4.0f);
    float *dx = dev_from(gpu32, x, sizeof(float) * (size_t)T * H);
    int32_t *dstart = dev_from(gpu32, start, sizeof start), *dlen = dev_from(gpu32, len, sizeof len);
    for (int mode = 0; mode < 3; mode++) {
      const size_t rows = mode == LS_POOL_NONE ? (size_t)total : (size_t)n_seq;
      float *ref = malloc(sizeof(float) * rows * H);
      cpu->iface->pool(cpu, ref, x, start, len, n_seq, H, (ls_pool_t)mode); /* CPU needs lengths */
      float *dout = dev_poisoned(gpu32, rows * H);
      gpu32->iface->pool(gpu32, dout, dx, dstart, padded ? dlen : NULL, n_seq, H, (ls_pool_t)mode);
      float *got = to_host(gpu32, dout, rows * H);
      char what[96];
      snprintf(what, sizeof what, "pool mode=%d%s", mode, padded ? " padded" : "");
      check_rows(what, got, ref, rows, (size_t)H, 1e-6);
      gpu32->iface->free(gpu32, dout);
      free(ref); free(got);
    }
    gpu32->iface->free(gpu32, dx); gpu32->iface->free(gpu32, dstart); gpu32->iface->free(gpu32, dlen);
    free(x);
  }
}

/* load_weight: f32 / f16 / bf16 checkpoint bytes, from the host and from the device, to
 * float32 vectors and (in bf16 mode) bf16 matrices read back through a GEMM with an
 * identity input. */
static void test_load_weight(void **state) {
  const size_t n = 4099;
  float *src = rand_buf(n, 3.0f);
  uint16_t *h16 = malloc(2 * n), *b16 = malloc(2 * n);
  float *want = malloc(sizeof(float) * n);
  ls_convert_from_f32(h16, src, LS_DT_F16, n);
  ls_convert_from_f32(b16, src, LS_DT_BF16, n);
  const void *raw[3] = {src, h16, b16};
  const ls_dtype_t dts[3] = {LS_DT_F32, LS_DT_F16, LS_DT_BF16};
  for (int i = 0; i < 3; i++)
    for (int src_dev = 0; src_dev < 2; src_dev++) {
      ls_convert_to_f32(want, raw[i], dts[i], n);
      void *dsrc = src_dev ? dev_from(gpu32, raw[i], n * ls_dtype_size(dts[i])) : NULL;
      float *dst = dev_poisoned(gpu32, n);
      assert_int_equal(gpu32->iface->load_weight(gpu32, dst, src_dev ? dsrc : raw[i], dts[i], n, 0,
                                                 src_dev), 0);
      float *got = to_host(gpu32, dst, n);
      char what[96];
      snprintf(what, sizeof what, "load_weight dtype=%d from %s", (int)dts[i], src_dev ? "device" : "host");
      check_rows(what, got, want, 1, n, 0);
      gpu32->iface->free(gpu32, dst);
      gpu32->iface->free(gpu32, dsrc);
      free(got);
    }
  free(src); free(h16); free(b16); free(want);
}

/* MoE rows (gather with gaps, weighted scatter_add, zero) bit-identical to the CPU ops, and
 * FP8 block dequantization (E4M3 / E5M2, partial edge blocks) from host and device
 * memory: float32 weights bit-identical; bf16 weights read back through a GEMM with an
 * identity input, within bf16 rounding */
/* gram_fixed (--reduce cov): the 192-bit limbs of every j <= k equal the exact sum over
 * rows of q_ij q_ik less its digit pairs below 2^40 (ls_fixed.h), computed here with
 * 128-bit products, on both backends, over two GEMM chunks and a wide dynamic range
 * (outliers of 1e4 beside values of 1e-3); the dropped part is below 2^59 for every row
 * (2^-61 of the largest product, 2^120) */
static void add_i128(uint64_t *acc, __int128 p) {
  const uint64_t w[3] = {(uint64_t)p, (uint64_t)((unsigned __int128)p >> 64),
                         p < 0 ? ~(uint64_t)0 : 0};
  ls_fx_add3(acc, w);
}

static void test_gram(void **state) {
  const int n = LS_GRAM_CHUNK + 283, H = 70;
  float *x = rand_buf((size_t)n * H, 1.0f);
  for (int i = 0; i < n; i++) {
    x[(size_t)i * H + 5] *= 1e-3f;
    if (i % 97 == 0) x[(size_t)i * H + 11] = 1.0e4f * (i % 2 ? -1.0f : 1.0f);
  }
  for (int j = 0; j < H; j++) x[(size_t)3 * H + j] = 0.0f; /* a zero row */
  int32_t shift[70];
  for (int j = 0; j < H; j++) {
    float m = 0;
    for (int i = 0; i < n; i++) m = fmaxf(m, fabsf(x[(size_t)i * H + j]));
    shift[j] = ls_fx_shift_of(m);
  }
  const size_t WW = (size_t)H * H;
  uint64_t *ref = calloc(3 * WW, sizeof(uint64_t));
  int64_t *q = malloc(sizeof(int64_t) * (size_t)n * H);
  assert_non_null(ref);
  assert_non_null(q);
  for (size_t e = 0; e < (size_t)n * H; e++) {
    q[e] = (int64_t)nearbyint(ldexp((double)x[e], shift[e % H]));
    assert_true(q[e] <= ((int64_t)1 << LS_FX_BITS) && q[e] >= -((int64_t)1 << LS_FX_BITS));
  }
  for (int j = 0; j < H; j++)
    for (int k = j; k < H; k++)
      for (int i = 0; i < n; i++) {
        const int64_t a = q[(size_t)i * H + j], b = q[(size_t)i * H + k];
        int64_t da[3], db[3];
        ls_fx_digits(a, da);
        ls_fx_digits(b, db);
        /* the dropped pairs: d0 d0', d0 d1' and d1 d0' */
        const __int128 low = (__int128)da[0] * db[0] +
                             (((__int128)da[0] * db[1] + (__int128)da[1] * db[0]) << LS_FX_DIGIT);
        const __int128 full = (__int128)a * b;
        assert_true(low < ((__int128)1 << 59) && low > -((__int128)1 << 59));
        add_i128(ref + 3 * ((size_t)j * H + k), full - low);
      }
  ls_backend_t *bes[2] = {cpu, gpu32};
  for (int b = 0; b < 2; b++) {
    ls_backend_t *be = bes[b];
    const ls_backend_iface_t *f = be->iface;
    uint64_t *acc = f->alloc(be, sizeof(uint64_t) * 3 * WW, "test");
    float *dx = dev_from(be, x, sizeof(float) * (size_t)n * H);
    int32_t *ds = dev_from(be, shift, sizeof shift);
    void *scr = f->alloc(be, ls_gram_scratch_bytes(H), "test");
    assert_non_null(acc);
    assert_non_null(scr);
    f->zero(be, (float *)acc, 6 * WW);
    /* two calls (a split the result must not see) */
    f->gram_fixed(be, acc, dx, 700, H, ds, scr);
    f->gram_fixed(be, acc, dx + (size_t)700 * H, n - 700, H, ds, scr);
    uint64_t *got = malloc(sizeof(uint64_t) * 3 * WW);
    assert_non_null(got);
    assert_int_equal(f->to_host(be, got, acc, sizeof(uint64_t) * 3 * WW), 0);
    if (f->sync) assert_int_equal(f->sync(be), 0);
    for (int j = 0; j < H; j++)
      for (int k = j; k < H; k++)
        if (memcmp(got + 3 * ((size_t)j * H + k), ref + 3 * ((size_t)j * H + k), 24) != 0)
          fail_msg("gram_fixed (%s): entry (%d, %d) differs from the exact sum", f->name, j, k);
    printf("  %-60s exact (%d x %d, %d rows)\n", b ? "gram_fixed (cuda)" : "gram_fixed (cpu)", H, H, n);
    free(got);
    f->free(be, acc); f->free(be, dx); f->free(be, ds); f->free(be, scr);
  }
  free(ref); free(q); free(x);
}

static void test_moe_ops(void **state) {
  const int R = 50, n = 37, W = 300;
  float *src = rand_buf((size_t)R * W, 2.0f), *wts = rand_buf((size_t)n, 1.0f);
  int32_t idx[37];
  for (int i = 0; i < n; i++) idx[i] = i % 5 == 3 ? -1 : (i * 7) % R; /* distinct rows */
  float *g_ref = calloc((size_t)n * W, sizeof(float)), *d_ref = rand_buf((size_t)R * W, 1.0f);
  float *ds = dev_from(gpu32, src, sizeof(float) * (size_t)R * W);
  float *dw = dev_from(gpu32, wts, sizeof(float) * (size_t)n);
  int32_t *di = dev_from(gpu32, idx, sizeof idx);
  float *dg = dev_from(gpu32, g_ref, sizeof(float) * (size_t)n * W);
  float *dd = dev_from(gpu32, d_ref, sizeof(float) * (size_t)R * W);
  cpu->iface->gather(cpu, g_ref, src, idx, n, W);
  gpu32->iface->gather(gpu32, dg, ds, di, n, W);
  float *got = to_host(gpu32, dg, (size_t)n * W);
  check_rows("gather", got, g_ref, (size_t)n, (size_t)W, 0);
  free(got);
  cpu->iface->scatter_add(cpu, d_ref, g_ref, idx, wts, n, W);
  gpu32->iface->scatter_add(gpu32, dd, dg, di, dw, n, W);
  got = to_host(gpu32, dd, (size_t)R * W);
  check_rows("scatter_add", got, d_ref, (size_t)R, (size_t)W, 0);
  free(got);
  gpu32->iface->zero(gpu32, dd, (size_t)R * W);
  got = to_host(gpu32, dd, (size_t)R * W);
  for (size_t i = 0; i < (size_t)R * W; i++) assert_true(got[i] == 0.0f);
  free(got);
  gpu32->iface->free(gpu32, ds); gpu32->iface->free(gpu32, dw); gpu32->iface->free(gpu32, di);
  gpu32->iface->free(gpu32, dg); gpu32->iface->free(gpu32, dd);
  free(src); free(wts); free(g_ref); free(d_ref);

  /* edit_rows (steering): add bit-identical, ablate within float32 rounding */
  for (int ablate = 0; ablate < 2; ablate++) {
    const int T = 17, H = 300;
    float *x = rand_buf((size_t)T * H, 2.0f), *v = rand_buf((size_t)H, 1.0f);
    double nn = 0;
    for (int i = 0; i < H; i++) nn += (double)v[i] * v[i];
    if (ablate)
      for (int i = 0; i < H; i++) v[i] = (float)(v[i] / sqrt(nn));
    int32_t rows[3] = {16, 3, 0};
    float *dx = dev_from(gpu32, x, sizeof(float) * (size_t)T * H), *dv = dev_from(gpu32, v, sizeof(float) * (size_t)H);
    int32_t *dr = dev_from(gpu32, rows, sizeof rows);
    cpu->iface->edit_rows(cpu, x, H, rows, 3, v, 0.75f, ablate);
    gpu32->iface->edit_rows(gpu32, dx, H, dr, 3, dv, 0.75f, ablate);
    float *gx = to_host(gpu32, dx, (size_t)T * H);
    check_rows(ablate ? "edit_rows ablate" : "edit_rows add", gx, x, (size_t)T, (size_t)H, ablate ? 1e-6 : 0);
    free(gx); free(x); free(v);
    gpu32->iface->free(gpu32, dx); gpu32->iface->free(gpu32, dv); gpu32->iface->free(gpu32, dr);
  }

  /* concat_heads (MLA k: a shared rope part and per-head nope parts, zero padding) */
  {
    const int T = 33, nh = 16, da = 64, db = 128, dout = 200;
    float *a = rand_buf((size_t)T * da, 1.0f), *b = rand_buf((size_t)T * nh * db, 1.0f);
    float *ref = malloc(sizeof(float) * (size_t)T * nh * dout);
    cpu->iface->concat_heads(cpu, ref, dout, a, da, da, 1, b, db, db, 0, T, nh);
    float *da_ = dev_from(gpu32, a, sizeof(float) * (size_t)T * da);
    float *db_ = dev_from(gpu32, b, sizeof(float) * (size_t)T * nh * db);
    float *dout_ = dev_poisoned(gpu32, (size_t)T * nh * dout);
    gpu32->iface->concat_heads(gpu32, dout_, dout, da_, da, da, 1, db_, db, db, 0, T, nh);
    got = to_host(gpu32, dout_, (size_t)T * nh * dout);
    check_rows("concat_heads", got, ref, (size_t)T * nh, (size_t)dout, 0);
    free(got); free(a); free(b); free(ref);
    gpu32->iface->free(gpu32, da_); gpu32->iface->free(gpu32, db_); gpu32->iface->free(gpu32, dout_);
  }

  const int rows = 70, cols = 45, br = 16, bc = 32, ns = 5 * 2;
  uint8_t *q = malloc((size_t)rows * cols);
  for (int i = 0; i < rows * cols; i++) q[i] = (uint8_t)((i * 37 + 11) & 0xff);
  for (int i = 0; i < rows * cols; i++)
    if ((q[i] & 0x7f) >= 0x78) q[i] = 0x10; /* no NaN / Inf / huge codes in a GEMM weight */
  float scale[10], *want = malloc(sizeof(float) * (size_t)rows * cols);
  for (int i = 0; i < ns; i++) scale[i] = 0.01f * (float)(i + 1);
  for (int e5 = 0; e5 < 2; e5++) {
    const ls_dtype_t dt = e5 ? LS_DT_F8_E5M2 : LS_DT_F8_E4M3;
    ls_cpu_dequant_fp8(want, q, scale, dt, rows, cols, br, bc);
    for (int src_dev = 0; src_dev < 2; src_dev++) {
      void *dq = src_dev ? dev_from(gpu32, q, (size_t)rows * cols) : NULL;
      float *dsc = src_dev ? dev_from(gpu32, scale, sizeof scale) : NULL;
      float *w32 = dev_poisoned(gpu32, (size_t)rows * cols);
      assert_int_equal(gpu32->iface->load_weight_fp8(gpu32, w32, src_dev ? dq : q,
                                                     src_dev ? dsc : scale, dt, rows, cols, br, bc,
                                                     src_dev), 0);
      got = to_host(gpu32, w32, (size_t)rows * cols);
      char what[96];
      snprintf(what, sizeof what, "load_weight_fp8 %s from %s", ls_dtype_name(dt),
               src_dev ? "device" : "host");
      check_rows(what, got, want, (size_t)rows, (size_t)cols, 0);
      free(got);
      gpu32->iface->free(gpu32, w32);
      gpu32->iface->free(gpu32, dq);
      gpu32->iface->free(gpu32, dsc);
    }
  }
  free(q); free(want);
}

/* The device broadcast path on this rank's communicator: bytes from host memory land
 * in a device slot, ordered before later ops. */
static void test_bcast(void **state) {
  const size_t n = (1 << 20) + 3;
  float *src = rand_buf(n, 1.0f);
  void *pinned = gpu32->iface->host_alloc(gpu32, sizeof(float) * n, "test");
  memcpy(pinned, src, sizeof(float) * n);
  for (int slot = 0; slot < 2; slot++) {
    float *dst = dev_poisoned(gpu32, n);
    assert_true(gpu32->caps & LS_BE_DEVICE_BCAST);
    assert_int_equal(gpu32->bcast->start(gpu32, slot, dst, pinned, sizeof(float) * n), 0);
    assert_int_equal(gpu32->bcast->wait(gpu32, slot), 0);
    float *got = to_host(gpu32, dst, n);
    assert_memory_equal(got, src, sizeof(float) * n);
    gpu32->iface->free(gpu32, dst);
    free(got);
  }
  gpu32->iface->host_free(gpu32, pinned);
  free(src);
}

typedef struct {
  ls_backend_t *be;
  float *dst; /* (T, H), the backend's memory */
  int T;
} hook_copy_t;

static void copy_attn_out(void *ctx, ls_hook_t h, float *rows, int width) {
  hook_copy_t *k = ctx;
  if (h != LS_HOOK_ATTN_OUT) return;
  /* a device-to-device copy in stream order: add onto zeros */
  size_t n = (size_t)k->T * (size_t)width;
  float *zero = calloc(n, sizeof(float));
  assert_non_null(zero);
  assert_int_equal(k->be->iface->to_device(k->be, k->dst, zero, sizeof(float) * n), 0);
  k->be->iface->add(k->be, k->dst, rows, n);
  if (k->be->iface->sync) assert_int_equal(k->be->iface->sync(k->be), 0);
  free(zero);
}

/* A whole decoder block (GQA, biases, padding-free packed prompts) on both backends. */
static void block_case(ls_backend_t *be, double rtol) {
  ls_config_t c;
  memset(&c, 0, sizeof c);
  c.family = ls_family_find("Qwen2ForCausalLM", NULL);
  snprintf(c.model_type, sizeof c.model_type, "qwen2");
  c.hidden = 256; c.intermediate = 688; c.n_heads = 8; c.n_kv_heads = 2; c.head_dim = 32;
  c.rms_eps = 1e-5; c.qkv_bias = 1; c.n_layers = 1;
  const ls_family_t *fam = ls_family_get(c.family);
  assert_non_null(fam);
  static const int lens[] = {5, 60, 1, 130};
  const int n_seq = 4, H = c.hidden, half = c.head_dim / 2, maxp = 256;
  int32_t start[5] = {0}, pos[196];
  for (int s = 0; s < n_seq; s++) start[s + 1] = start[s] + lens[s];
  const int T = start[n_seq];
  for (int s = 0; s < n_seq; s++)
    for (int r = start[s]; r < start[s + 1]; r++) pos[r] = r - start[s];
  float *ct = malloc(sizeof(float) * maxp * half), *st = malloc(sizeof(float) * maxp * half);
  for (int p = 0; p < maxp; p++)
    for (int i = 0; i < half; i++) {
      double a = p * pow(10000.0, -2.0 * i / c.head_dim);
      ct[p * half + i] = (float)cos(a);
      st[p * half + i] = (float)sin(a);
    }
  enum { MAXS = 64 };
  assert_true(fam->n_slots <= MAXS);
  ls_wspec_t spec[MAXS];
  void *wc[MAXS] = {0}, *wg[MAXS] = {0};
  fam->layer_tensors(&c, 0, spec);
  for (int id = 0; id < fam->n_slots; id++) {
    if (!spec[id].present) continue;
    size_t numel = (size_t)spec[id].shape[0] * (size_t)(spec[id].ndim == 2 ? spec[id].shape[1] : 1);
    int matrix = spec[id].kind == LS_WK_MATRIX;
    float *h = rand_buf(numel, matrix ? 0.06f : 0.2f);
    if (spec[id].kind == LS_WK_NORM)
      for (size_t i = 0; i < numel; i++) h[i] += 1.0f;
    wc[id] = malloc(sizeof(float) * numel);
    memcpy(wc[id], h, sizeof(float) * numel);
    wg[id] = be->iface->alloc(be, numel * (matrix ? ls_dtype_size(be->wtype) : 4), spec[id].name);
    assert_int_equal(be->iface->load_weight(be, wg[id], h, LS_DT_F32, numel, matrix, 0), 0);
    free(h);
  }
  const size_t nx = (size_t)ls_round_rows(T) * H;
  float *x = rand_buf(nx, 1.0f);
  float *dx = dev_from(be, x, sizeof(float) * nx), *dct = dev_from(be, ct, sizeof(float) * maxp * half),
        *dst = dev_from(be, st, sizeof(float) * maxp * half);
  int32_t *dstart = dev_from(be, start, sizeof start), *dpos = dev_from(be, pos, sizeof(int32_t) * (size_t)T);
  size_t nsc = ls_family_scratch_floats(fam, &c, T);
  float *sc = calloc(nsc, sizeof(float)), *dsc = dev_poisoned(be, nsc);
  assert_int_equal(be->iface->reserve ? be->iface->reserve(be, T, c.intermediate) : 0, 0);
  ls_batch_t bc = {.T = T, .n_seq = n_seq, .seq_start = start, .seq_len = NULL, .pos = pos, .max_len = 130};
  ls_batch_t bg = {.T = T, .n_seq = n_seq, .seq_start = dstart, .seq_len = NULL, .pos = dpos, .max_len = 130};
  /* attn_out as the block exposes it at its hook point (host copy on the CPU, device
   * copy on the GPU, made in stream order) */
  float *ca = malloc(sizeof(float) * (size_t)T * H), *da = be->iface->alloc(be, sizeof(float) * (size_t)T * H, "test");
  hook_copy_t hc = {cpu, ca, T}, hg = {be, da, T};
  const ls_block_t blk_c = {cpu, &c, 0, wc, ct, st, &bc, sc, T, copy_attn_out, &hc, NULL, NULL};
  const ls_block_t blk_g = {be, &c, 0, wg, dct, dst, &bg, dsc, T, copy_attn_out, &hg, NULL, NULL};
  fam->forward(&blk_c, x);
  fam->forward(&blk_g, dx);
  float *got = to_host(be, dx, (size_t)T * H), *ga = to_host(be, da, (size_t)T * H);
  char what[96];
  snprintf(what, sizeof what, "block residual_post (%s)", be->compute_dtype);
  check_rows(what, got, x, (size_t)T, (size_t)H, rtol);
  snprintf(what, sizeof what, "block attn_out (%s)", be->compute_dtype);
  check_rows(what, ga, ca, (size_t)T, (size_t)H, rtol);
  for (int id = 0; id < fam->n_slots; id++) {
    free(wc[id]);
    if (wg[id]) be->iface->free(be, wg[id]);
  }
  be->iface->free(be, dx); be->iface->free(be, dct); be->iface->free(be, dst);
  be->iface->free(be, dstart); be->iface->free(be, dpos); be->iface->free(be, dsc);
  be->iface->free(be, da);
  free(x); free(ct); free(st); free(sc); free(got); free(ga); free(ca);
}

static void test_block(void **state) {
  block_case(gpu32, 1e-5);
  block_case(gpu16, 2e-2);
}

int main(int argc, char **argv) {
  int provided;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  char why[1024] = "";
  const ls_backend_entry_t *cuda = ls_backend_lookup("cuda");
  if (!cuda || cuda->probe(1, why, sizeof why) <= 0) {
    printf("SKIPPED: test_cuda_ops needs a usable GPU (%s)\n", cuda ? why : "no cuda backend");
    MPI_Finalize();
    return 77;
  }
  cpu = ls_backend_cpu_new(1, 1024);
  const ls_backend_params_t p32 = {1, 1024, 0, MPI_COMM_SELF, 0}, p16 = {1, 1024, 1, MPI_COMM_SELF, 0};
  gpu32 = ls_backend_create(cuda, &p32);
  gpu16 = ls_backend_create(cuda, &p16);
  if (!cpu || !gpu32 || !gpu16) {
    fprintf(stderr, "test_cuda_ops: cannot create the backends\n");
    MPI_Finalize();
    return 1;
  }
  printf("test_cuda_ops on %s\n", gpu32->desc);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_rmsnorm),     cmocka_unit_test(test_matmul),
      cmocka_unit_test(test_layernorm),   cmocka_unit_test(test_rope),        cmocka_unit_test(test_attention),
      cmocka_unit_test(test_elementwise), cmocka_unit_test(test_pool),
      cmocka_unit_test(test_load_weight), cmocka_unit_test(test_bcast),
      cmocka_unit_test(test_block),       cmocka_unit_test(test_moe_ops),
      cmocka_unit_test(test_gram),
  };
  int failed = cmocka_run_group_tests(tests, NULL, NULL);
  ls_backend_free(gpu16);
  ls_backend_free(gpu32);
  ls_backend_free(cpu);
  MPI_Finalize();
  return failed ? 1 : 0;
}
