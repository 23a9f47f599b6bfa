/* test_ops.c: cmocka tests for the CPU backend ops (kernels/cpu/ops_cpu.c) and the
 * decoder block (kernels/block.c).
 *
 * Every op runs on random inputs over a sweep of shapes (T = 1, T not a multiple of
 * LS_ROW_PAD, H not a multiple of 8, GQA groups 1/2/4, head_dim 8/32/64, sliding
 * windows shorter than the sequence) with 1 and 2 OpenMP threads, and is compared
 * with a naive double-precision version written here:
 *   |got - ref| <= atol * mag + rtol * |ref|,  rtol 1e-5, atol 1e-6,
 * where mag is the magnitude of the terms that were summed (e.g. sum |x_k w_k|), so
 * the absolute tolerance follows the data. Outputs are poisoned with NaN before each
 * call (and a NaN canary follows every buffer), so unwritten or overrun elements fail;
 * every output element must be finite. Failures print the op, shape and element.
 *
 * Determinism, which the sweep relies on for batching / rank invariance:
 *   - ls_cpu_matmul: rows computed inside a larger call are bit-identical to the same
 *     rows computed alone when they start at a multiple of ls_cpu_probe_row_align(),
 *     and the result does not depend on the thread count;
 *   - ls_cpu_attention: a sequence's rows never depend on the other sequences;
 *   - ls_block_forward: each of 3 packed sequences (starting at multiples of the
 *     backend's row_align) gives bit-identical rows when computed alone. */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <cblas.h>
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "config.h"
#include "family.h"
#include "ls_common.h"
#include "ops_cpu.h"

#define RTOL 1e-5
#define ATOL 1e-6

static const int k_threads[2] = {1, 2};

/* ---- random numbers, poison, buffers ------------------------------------------------ */

static uint64_t g_rng = 0x243f6a8885a308d3ull;

static double urand(void) { /* [0, 1) */
  g_rng ^= g_rng << 13;
  g_rng ^= g_rng >> 7;
  g_rng ^= g_rng << 17;
  return (double)(g_rng >> 11) * (1.0 / 9007199254740992.0);
}

static float frand(float lo, float hi) { return lo + (hi - lo) * (float)urand(); }

static void fill_rand(float *a, size_t n, float lo, float hi) {
  for (size_t i = 0; i < n; i++) a[i] = frand(lo, hi);
}

#define POISON_BITS 0x7fc0deadu
#define CANARY 16 /* poisoned floats after every output buffer */

static float poison(void) {
  uint32_t u = POISON_BITS;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static void fill_poison(float *a, size_t n) {
  const float p = poison();
  for (size_t i = 0; i < n; i++) a[i] = p;
}

/* n floats + CANARY, 64-byte aligned, all poisoned */
static float *palloc(size_t n) {
  float *p = ls_aligned_alloc((n + CANARY) * sizeof(float), "test buffer");
  assert_non_null(p);
  fill_poison(p, n + CANARY);
  return p;
}

static double *dalloc(size_t n) {
  assert_true(n < ((size_t)1 << 32)); /* also tells the compiler the size is sane */
  if (n >= ((size_t)1 << 32)) return NULL;
  double *p = calloc(n ? n : 1, sizeof(double));
  assert_non_null(p);
  return p;
}

static void check_canary(const char *ctx, const float *a, size_t n) {
  for (size_t i = n; i < n + CANARY; i++) {
    uint32_t u;
    memcpy(&u, &a[i], 4);
    if (u != POISON_BITS) {
      fprintf(stderr, "%s: wrote past the end of the output (element %zu of %zu)\n", ctx, i, n);
      fail();
    }
  }
}

/* ---- comparison -------------------------------------------------------------------------- */

static double g_worst; /* max over checks of err / tol (reported with LS_TEST_VERBOSE) */

/* got[i] finite and |got - ref| <= atol * mag + rtol * |ref| for i < n; rows of width
 * `cols` for the message. mag NULL: mag = |ref|. */
static void check_close(const char *ctx, const float *got, const double *ref, const double *mag,
                        size_t n, size_t cols, double rtol, double atol) {
  for (size_t i = 0; i < n; i++) {
    double m = mag ? mag[i] : fabs(ref[i]);
    double err = fabs((double)got[i] - ref[i]), tol = atol * m + rtol * fabs(ref[i]);
    if (!isfinite(got[i]) || !(err <= tol)) {
      fprintf(stderr, "%s: element (row %zu, col %zu): got %.9g want %.9g (|err| %.3g > tol %.3g, "
              "mag %.3g)\n", ctx, i / cols, i % cols, (double)got[i], ref[i], err, tol, m);
      fail();
    }
    if (tol > 0 && err / tol > g_worst) g_worst = err / tol;
  }
}

static void report(const char *op) {
  if (getenv("LS_TEST_VERBOSE")) fprintf(stderr, "  %s: worst err/tol %.3g\n", op, g_worst);
  g_worst = 0;
}

static void check_rows_identical(const char *ctx, const float *a, const float *b, int rows,
                                 int cols) {
  for (int r = 0; r < rows; r++)
    if (memcmp(a + (size_t)r * cols, b + (size_t)r * cols, sizeof(float) * (size_t)cols) != 0) {
      int c = 0;
      while (c < cols && memcmp(&a[(size_t)r * cols + c], &b[(size_t)r * cols + c], 4) == 0) c++;
      fprintf(stderr, "%s: row %d differs at col %d: %.9g vs %.9g\n", ctx, r, c,
              (double)a[(size_t)r * cols + c], (double)b[(size_t)r * cols + c]);
      fail();
    }
}

static void check_finite(const char *ctx, const float *a, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!isfinite(a[i])) {
      fprintf(stderr, "%s: element %zu is %g\n", ctx, i, (double)a[i]);
      fail();
    }
}

static void to_double(double *d, const float *f, size_t n) {
  for (size_t i = 0; i < n; i++) d[i] = f[i];
}

/* ---- naive double-precision references ---------------------------------------------- */

static void ref_rmsnorm(double *out, double *mag, const double *x, const float *w, int T, int H,
                        double eps) {
  for (int t = 0; t < T; t++) {
    double ss = 0;
    for (int i = 0; i < H; i++) ss += x[(size_t)t * H + i] * x[(size_t)t * H + i];
    double r = 1.0 / sqrt(ss / H + eps);
    for (int i = 0; i < H; i++) {
      size_t e = (size_t)t * H + i;
      out[e] = w[i] * x[e] * r;
      if (mag) mag[e] = fabs(out[e]);
    }
  }
}

/* LayerNorm in double; mag = |w| |x - mean| r + |b| (with the mean's scale: the float32
 * subtraction x - mean carries |x| ulp) */
static void ref_layernorm(double *out, double *mag, const double *x, const float *w,
                          const float *b, int T, int H, double eps) {
  for (int t = 0; t < T; t++) {
    const double *xr = x + (size_t)t * H;
    double s = 0, ss = 0;
    for (int i = 0; i < H; i++) s += xr[i];
    const double mean = s / H;
    for (int i = 0; i < H; i++) ss += (xr[i] - mean) * (xr[i] - mean);
    const double r = 1.0 / sqrt(ss / H + eps);
    for (int i = 0; i < H; i++) {
      size_t e = (size_t)t * H + i;
      out[e] = w[i] * (xr[i] - mean) * r + (b ? b[i] : 0.0);
      mag[e] = fabs(w[i]) * (fabs(xr[i] - mean) + fabs(xr[i])) * r + (b ? fabs(b[i]) : 0.0);
    }
  }
}

/* y (T, n_out) = x (T, n_in) @ W (n_out, n_in)^T + b; mag = sum |x W| + |b| */
static void ref_matmul(double *y, double *mag, const double *x, const float *W, const float *b,
                       int T, int n_in, int n_out) {
  for (int t = 0; t < T; t++)
    for (int j = 0; j < n_out; j++) {
      double s = b ? b[j] : 0.0, m = b ? fabs(b[j]) : 0.0;
      for (int k = 0; k < n_in; k++) {
        double p = x[(size_t)t * n_in + k] * W[(size_t)j * n_in + k];
        s += p;
        m += fabs(p);
      }
      y[(size_t)t * n_out + j] = s;
      if (mag) mag[(size_t)t * n_out + j] = m;
    }
}

/* rotate_half convention over the first rot dims of each head with the op's tables (the
 * rest pass through); mag = |x1 c| + |x2 s| (|x| where passed through) */
static void ref_rope(double *x, double *mag, const int32_t *pos, const float *cos_tab,
                     const float *sin_tab, int T, int n_heads, int hd, int rot) {
  const int half = rot / 2;
  for (int t = 0; t < T; t++)
    for (int h = 0; h < n_heads; h++) {
      double *v = x + ((size_t)t * n_heads + h) * hd;
      double *m = mag ? mag + ((size_t)t * n_heads + h) * hd : NULL;
      for (int i = rot; m && i < hd; i++) m[i] = fabs(v[i]);
      for (int i = 0; i < half; i++) {
        double c = cos_tab[(size_t)pos[t] * half + i], s = sin_tab[(size_t)pos[t] * half + i];
        double x1 = v[i], x2 = v[i + half];
        v[i] = x1 * c - x2 * s;
        v[i + half] = x2 * c + x1 * s;
        if (m) {
          m[i] = fabs(x1 * c) + fabs(x2 * s);
          m[i + half] = fabs(x2 * c) + fabs(x1 * s);
        }
      }
    }
}

/* causal (optionally windowed) attention inside each sequence; mag = sum p |v|. Scores
 * (q . k) * scale (0: 1 / sqrt(hd)), soft-capped to softcap * tanh(s / softcap) when
 * softcap > 0 (Gemma 2). */
static void ref_attention_opts(double *out, double *mag, const double *q, const double *k,
                               const double *v, const int32_t *seq_start, int n_seq, int n_heads,
                               int n_kv, int hd, int window, double scale, double softcap) {
  if (!(scale > 0)) scale = 1.0 / sqrt((double)hd);
  const int group = n_heads / n_kv;
  const size_t qs = (size_t)n_heads * hd, ks = (size_t)n_kv * hd;
  const int T = seq_start[n_seq];
  double *p = dalloc((size_t)T);
  for (int s = 0; s < n_seq; s++)
    for (int h = 0; h < n_heads; h++) {
      const int kh = h / group;
      for (int i = seq_start[s]; i < seq_start[s + 1]; i++) {
        int j0 = seq_start[s];
        if (window > 0 && i - window + 1 > j0) j0 = i - window + 1;
        double mx = -INFINITY, sum = 0;
        for (int j = j0; j <= i; j++) {
          double sc = 0;
          for (int d = 0; d < hd; d++) sc += q[i * qs + h * hd + d] * k[j * ks + kh * hd + d];
          p[j - j0] = sc * scale;
          if (softcap > 0) p[j - j0] = softcap * tanh(p[j - j0] / softcap);
          if (p[j - j0] > mx) mx = p[j - j0];
        }
        for (int j = j0; j <= i; j++) sum += (p[j - j0] = exp(p[j - j0] - mx));
        for (int d = 0; d < hd; d++) {
          double o = 0, m = 0;
          for (int j = j0; j <= i; j++) {
            o += p[j - j0] / sum * v[j * ks + kh * hd + d];
            m += p[j - j0] / sum * fabs(v[j * ks + kh * hd + d]);
          }
          out[i * qs + h * hd + d] = o;
          if (mag) mag[i * qs + h * hd + d] = m;
        }
      }
    }
  free(p);
}

static void ref_attention(double *out, double *mag, const double *q, const double *k,
                          const double *v, const int32_t *seq_start, int n_seq, int n_heads,
                          int n_kv, int hd, int window) {
  ref_attention_opts(out, mag, q, k, v, seq_start, n_seq, n_heads, n_kv, hd, window, 0, 0);
}

static double silu(double g) { return g / (1.0 + exp(-g)); }
/* PyTorch's gelu(approximate="tanh") */
static double gelu_tanh(double g) {
  return 0.5 * g * (1.0 + tanh(0.79788456080286535588 * (g + 0.044715 * g * g * g)));
}

/* ---- rope tables, as sweep.c builds them ----------------------------------------------- */

static void make_rope_tables(int head_dim, double theta, int max_pos, float **cos_tab,
                             float **sin_tab) {
  ls_config_t c;
  memset(&c, 0, sizeof c);
  c.head_dim = head_dim;
  c.rope.theta = theta;
  c.rope.type = LS_ROPE_DEFAULT;
  c.rope.factor = 1.0;
  const int half = head_dim / 2;
  float *inv = malloc(sizeof(float) * (size_t)half);
  *cos_tab = malloc(sizeof(float) * (size_t)max_pos * half);
  *sin_tab = malloc(sizeof(float) * (size_t)max_pos * half);
  assert_true(inv && *cos_tab && *sin_tab);
  ls_config_rope_inv_freq(&c.rope, head_dim, inv);
  for (int p = 0; p < max_pos; p++)
    for (int i = 0; i < half; i++) {
      float a = (float)p * inv[i];
      (*cos_tab)[(size_t)p * half + i] = (float)cos((double)a);
      (*sin_tab)[(size_t)p * half + i] = (float)sin((double)a);
    }
  free(inv);
}

/* ---- rmsnorm ------------------------------------------------------------------------------ */

static void test_rmsnorm(void **state) {
  const int Ts[] = {1, 3, 49}, Hs[] = {8, 13, 64, 257, 1000};
  const float scales[] = {1.0f, 100.0f, 1e-3f};
  for (int ti = 0; ti < 2; ti++) {
    omp_set_num_threads(k_threads[ti]);
    for (size_t a = 0; a < sizeof Ts / sizeof Ts[0]; a++)
      for (size_t b = 0; b < sizeof Hs / sizeof Hs[0]; b++)
        for (size_t c = 0; c < sizeof scales / sizeof scales[0]; c++) {
          const int T = Ts[a], H = Hs[b];
          const float eps = c == 2 ? 1e-5f : 1e-6f;
          const size_t n = (size_t)T * H;
          float *x = palloc(n), *w = palloc((size_t)H), *out = palloc(n);
          fill_rand(x, n, -scales[c], scales[c]);
          fill_rand(w, (size_t)H, 0.5f, 1.5f);
          double *xd = dalloc(n), *ref = dalloc(n), *mag = dalloc(n);
          to_double(xd, x, n);
          ref_rmsnorm(ref, mag, xd, w, T, H, eps);
          ls_cpu_rmsnorm(out, x, w, T, H, eps);
          char ctx[160];
          snprintf(ctx, sizeof ctx, "rmsnorm T=%d H=%d scale=%g eps=%g threads=%d", T, H,
                   (double)scales[c], (double)eps, k_threads[ti]);
          check_close(ctx, out, ref, mag, n, (size_t)H, RTOL, ATOL);
          check_canary(ctx, out, n);
          free(x); free(w); free(out); free(xd); free(ref); free(mag);
        }
  }
  omp_set_num_threads(1);
  report("rmsnorm");
}

/* ---- matmul ------------------------------------------------------------------------------- */

typedef struct { int T, n_in, n_out; } mm_shape_t;

static void test_layernorm(void **state) {
  const int Ts[] = {1, 3, 49}, Hs[] = {8, 13, 64, 257, 1000};
  const float offsets[] = {0.0f, 30.0f, -1e3f}; /* rows far from zero mean */
  for (int ti = 0; ti < 2; ti++) {
    omp_set_num_threads(k_threads[ti]);
    for (size_t a = 0; a < sizeof Ts / sizeof Ts[0]; a++)
      for (size_t bh = 0; bh < sizeof Hs / sizeof Hs[0]; bh++)
        for (size_t c = 0; c < sizeof offsets / sizeof offsets[0]; c++) {
          const int T = Ts[a], H = Hs[bh], bias = c != 1;
          const size_t n = (size_t)T * H;
          float *x = palloc(n), *w = palloc((size_t)H), *b = palloc((size_t)H), *out = palloc(n);
          fill_rand(x, n, offsets[c] - 2.0f, offsets[c] + 2.0f);
          fill_rand(w, (size_t)H, -1.5f, 1.5f);
          fill_rand(b, (size_t)H, -0.5f, 0.5f);
          double *xd = dalloc(n), *ref = dalloc(n), *mag = dalloc(n);
          to_double(xd, x, n);
          ref_layernorm(ref, mag, xd, w, bias ? b : NULL, T, H, 1e-5);
          ls_cpu_layernorm(out, x, w, bias ? b : NULL, T, H, 1e-5f);
          char ctx[160];
          snprintf(ctx, sizeof ctx, "layernorm T=%d H=%d offset=%g bias=%d threads=%d", T, H,
                   (double)offsets[c], bias, k_threads[ti]);
          check_close(ctx, out, ref, mag, n, (size_t)H, RTOL, ATOL);
          check_canary(ctx, out, n);
          free(x); free(w); free(b); free(out); free(xd); free(ref); free(mag);
        }
  }
  omp_set_num_threads(1);
  report("layernorm");
}

static void test_matmul(void **state) {
  const mm_shape_t shapes[] = {{1, 8, 8},    {1, 64, 5},    {3, 17, 33},  {47, 64, 96},
                               {48, 32, 48}, {49, 100, 7},  {97, 128, 130}, {130, 600, 40},
                               {5, 1, 3},    {200, 24, 256}};
  for (int ti = 0; ti < 2; ti++) {
    omp_set_num_threads(k_threads[ti]);
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
      for (int with_bias = 0; with_bias < 2; with_bias++) {
        const mm_shape_t s = shapes[si];
        const int Tp = ls_round_rows(s.T);
        float *x = palloc((size_t)Tp * s.n_in), *W = palloc((size_t)s.n_out * s.n_in);
        float *b = palloc((size_t)s.n_out), *y = palloc((size_t)Tp * s.n_out);
        /* real rows random; padding rows of x stay NaN: they may be computed but must
         * never reach a real row */
        fill_rand(x, (size_t)s.T * s.n_in, -1, 1);
        fill_rand(W, (size_t)s.n_out * s.n_in, -1, 1);
        fill_rand(b, (size_t)s.n_out, -1, 1);
        double *xd = dalloc((size_t)s.T * s.n_in), *ref = dalloc((size_t)s.T * s.n_out),
               *mag = dalloc((size_t)s.T * s.n_out);
        to_double(xd, x, (size_t)s.T * s.n_in);
        ref_matmul(ref, mag, xd, W, with_bias ? b : NULL, s.T, s.n_in, s.n_out);
        ls_cpu_matmul(y, x, W, with_bias ? b : NULL, s.T, s.n_in, s.n_out);
        char ctx[160];
        snprintf(ctx, sizeof ctx, "matmul T=%d n_in=%d n_out=%d bias=%d threads=%d", s.T,
                 s.n_in, s.n_out, with_bias, k_threads[ti]);
        check_close(ctx, y, ref, mag, (size_t)s.T * s.n_out, (size_t)s.n_out, RTOL, ATOL);
        check_canary(ctx, y, (size_t)Tp * s.n_out);
        free(x); free(W); free(b); free(y); free(xd); free(ref); free(mag);
      }
  }
  omp_set_num_threads(1);
  report("matmul");
}

/* Rows [r0, r0 + len) of a T_big call vs the same rows alone, r0 % align == 0. */
typedef void (*mm_fn)(float *, const float *, const float *, const float *, int, int, int);

static void matmul_rows_case_fn(mm_fn mm, int n_in, int n_out, int with_bias, int align) {
  const int T_big = 200, Tp = ls_round_rows(T_big);
  float *x = palloc((size_t)Tp * n_in), *W = palloc((size_t)n_out * n_in), *b = palloc((size_t)n_out);
  fill_rand(x, (size_t)Tp * n_in, -1, 1); /* defined padding: the big call reads it */
  fill_rand(W, (size_t)n_out * n_in, -1, 1);
  fill_rand(b, (size_t)n_out, -1, 1);
  const float *bias = with_bias ? b : NULL;
  float *y_one = palloc((size_t)Tp * n_out);
  const int offs[] = {0, 1, 3, 5, 48, 49, 96, 101, 150};
  const int lens[] = {1, 5, 47, 48, 61};
  for (int ti = 0; ti < 2; ti++) {
    omp_set_num_threads(k_threads[ti]);
    float *y = palloc((size_t)Tp * n_out);
    mm(y, x, W, bias, T_big, n_in, n_out);
    check_finite("matmul big", y, (size_t)T_big * n_out);
    char ctx[200];
    if (ti == 0) memcpy(y_one, y, sizeof(float) * (size_t)T_big * n_out);
    snprintf(ctx, sizeof ctx, "matmul T=%d n_in=%d n_out=%d bias=%d: 1 vs 2 threads", T_big,
             n_in, n_out, with_bias);
    check_rows_identical(ctx, y_one, y, T_big, n_out);
    for (size_t oi = 0; oi < sizeof offs / sizeof offs[0]; oi++)
      for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
        const int r0 = offs[oi] * align, len = lens[li];
        if (r0 + len > T_big) continue;
        const int tp = ls_round_rows(len);
        float *xs = palloc((size_t)tp * n_in), *ys = palloc((size_t)tp * n_out);
        memcpy(xs, x + (size_t)r0 * n_in, sizeof(float) * (size_t)len * n_in);
        fill_rand(xs + (size_t)len * n_in, (size_t)(tp - len) * n_in, -5, 5); /* other padding */
        mm(ys, xs, W, bias, len, n_in, n_out);
        snprintf(ctx, sizeof ctx,
                 "matmul rows [%d, %d) of T=%d alone (n_in=%d n_out=%d bias=%d align=%d "
                 "threads=%d)", r0, r0 + len, T_big, n_in, n_out, with_bias, align,
                 k_threads[ti]);
        check_rows_identical(ctx, y + (size_t)r0 * n_out, ys, len, n_out);
        free(xs); free(ys);
      }
    free(y);
  }
  omp_set_num_threads(1);
  free(x); free(W); free(b); free(y_one);
}

static void matmul_rows_case(int n_in, int n_out, int with_bias, int align) {
  matmul_rows_case_fn(ls_cpu_matmul, n_in, n_out, with_bias, align);
  matmul_rows_case_fn(ls_cpu_matmul_chunked, n_in, n_out, with_bias, align); /* --precise-gemm */
}

/* --precise-gemm: each dot product within a few float32 ulps of its magnitude (sum |x w|),
 * chunks of 128 terms summed in double, for long rows where one float sum drifts */
static void test_matmul_chunked_accuracy(void **state) {
  const int T = 50, n_in = 4096 + 77, n_out = 130, Tp = ls_round_rows(T);
  float *x = palloc((size_t)Tp * n_in), *W = palloc((size_t)n_out * n_in), *b = palloc((size_t)n_out);
  fill_rand(x, (size_t)Tp * n_in, -1, 1);
  fill_rand(W, (size_t)n_out * n_in, -1, 1);
  fill_rand(b, (size_t)n_out, -1, 1);
  float *y = palloc((size_t)Tp * n_out);
  for (int ti = 0; ti < 2; ti++) {
    omp_set_num_threads(k_threads[ti]);
    ls_cpu_matmul_chunked(y, x, W, b, T, n_in, n_out);
    double worst = 0;
    for (int t = 0; t < T; t++)
      for (int j = 0; j < n_out; j++) {
        double ref = b[j], mag = fabs(b[j]);
        for (int k = 0; k < n_in; k++) {
          ref += (double)x[(size_t)t * n_in + k] * W[(size_t)j * n_in + k];
          mag += fabs((double)x[(size_t)t * n_in + k] * W[(size_t)j * n_in + k]);
        }
        const double e = fabs(y[(size_t)t * n_out + j] - ref) / mag;
        if (e > worst) worst = e;
      }
    if (!(worst <= 4.0 * FLT_EPSILON))
      fail_msg("chunked matmul: worst |err| / sum |x w| = %.3g > 4 ulp", worst);
  }
  omp_set_num_threads(1);
  free(x); free(W); free(b); free(y);
}

static void test_matmul_row_invariance(void **state) {
  const int align = ls_cpu_probe_row_align();
  if (getenv("LS_TEST_VERBOSE")) fprintf(stderr, "  ls_cpu_probe_row_align() = %d\n", align);
  assert_true(align >= 1 && align <= LS_ROW_PAD && LS_ROW_PAD % align == 0);
  assert_int_equal(ls_cpu_probe_row_align(), align); /* stable */
  matmul_rows_case(72, 56, 0, align);
  matmul_rows_case(72, 56, 1, align);
  matmul_rows_case(600, 130, 1, align); /* K blocked inside sgemm */
  matmul_rows_case(16, 3, 0, align);
}

/* ---- rope --------------------------------------------------------------------------------- */

static void test_rope(void **state) {
  const int Ts[] = {1, 5, 53}, heads[] = {1, 3, 4}, hds[] = {8, 32, 64, 80, 64};
  const int rots[] = {8, 32, 64, 20, 16}; /* the last two: partial rotary (Phi, Pythia) */
  const int max_pos = 64;
  for (int ti = 0; ti < 2; ti++) {
    omp_set_num_threads(k_threads[ti]);
    for (size_t hi = 0; hi < sizeof hds / sizeof hds[0]; hi++) {
      const int hd = hds[hi], rot = rots[hi];
      float *ct, *st;
      make_rope_tables(rot, hi == 2 ? 500000.0 : 10000.0, max_pos, &ct, &st);
      for (size_t a = 0; a < sizeof Ts / sizeof Ts[0]; a++)
        for (size_t b = 0; b < sizeof heads / sizeof heads[0]; b++) {
          const int T = Ts[a], nh = heads[b];
          const size_t n = (size_t)T * nh * hd;
          int32_t *pos = malloc(sizeof(int32_t) * (size_t)T);
          assert_non_null(pos);
          /* packed prompts of length 1..20 (positions restart), then one far position */
          for (int t = 0, p = 0, len = 1 + (int)(urand() * 20); t < T; t++) {
            pos[t] = p++;
            if (p == len) { p = 0; len = 1 + (int)(urand() * 20); }
          }
          if (T > 2) pos[T - 1] = max_pos - 1;
          float *x = palloc(n);
          fill_rand(x, n, -2, 2);
          double *ref = dalloc(n), *mag = dalloc(n);
          to_double(ref, x, n);
          ref_rope(ref, mag, pos, ct, st, T, nh, hd, rot);
          ls_cpu_rope(x, pos, ct, st, T, nh, hd, rot);
          char ctx[160];
          snprintf(ctx, sizeof ctx, "rope T=%d n_heads=%d head_dim=%d rot_dim=%d threads=%d", T,
                   nh, hd, rot, k_threads[ti]);
          check_close(ctx, x, ref, mag, n, (size_t)hd, RTOL, ATOL);
          check_canary(ctx, x, n);
          free(pos); free(x); free(ref); free(mag);
        }
      free(ct);
      free(st);
    }
  }
  omp_set_num_threads(1);
  report("rope");
}

/* ---- attention ------------------------------------------------------------------------------ */

typedef struct {
  int n_seq, lens[6], n_heads, n_kv, hd, window;
  float scale, softcap; /* 0: 1 / sqrt(hd), none */
} att_case_t;

static const att_case_t k_att_cases[] = {
    {1, {1}, 4, 4, 8, 0, 0, 0},                 /* T = 1 */
    {1, {5}, 4, 2, 32, 0, 0, 0},                /* group 2 */
    {4, {3, 7, 1, 12}, 8, 2, 64, 0, 0, 0},      /* group 4, a 1-token prompt in the middle */
    {4, {3, 7, 1, 12}, 8, 2, 64, 4, 0, 0},      /* window shorter than the prompts */
    {2, {50, 13}, 4, 1, 32, 0, 0, 0},           /* MQA */
    {3, {20, 1, 33}, 2, 1, 8, 5, 0, 0},
    {1, {100}, 4, 2, 16, 7, 0, 0},
    {2, {9, 9}, 6, 3, 32, 1, 0, 0},             /* window 1: each row sees only itself */
    {2, {10, 6}, 3, 3, 8, 100, 0, 0},           /* window longer than the prompts */
    {5, {49, 2, 17, 48, 3}, 4, 4, 64, 0, 0, 0}, /* group 1 */
    /* Gemma 2: query_pre_attn_scalar (scale 1/sqrt(256) at head_dim 64), soft-capping at
     * 50 and at 2 (where it bites: scores of +-8 fold to +-2), with a window */
    {3, {20, 1, 33}, 4, 2, 64, 0, 0.0625f, 50.0f},
    {3, {20, 1, 33}, 4, 2, 16, 6, 1.5f, 2.0f},
};

typedef struct {
  int T, qn, kn; /* rows, q row width, kv row width */
  int32_t seq_start[7];
  float *q, *k, *v;
} att_data_t;

static void att_data_make(const att_case_t *c, att_data_t *d) {
  d->seq_start[0] = 0;
  for (int s = 0; s < c->n_seq; s++) d->seq_start[s + 1] = d->seq_start[s] + c->lens[s];
  d->T = d->seq_start[c->n_seq];
  d->qn = c->n_heads * c->hd;
  d->kn = c->n_kv * c->hd;
  d->q = palloc((size_t)d->T * d->qn);
  d->k = palloc((size_t)d->T * d->kn);
  d->v = palloc((size_t)d->T * d->kn);
  fill_rand(d->q, (size_t)d->T * d->qn, -2, 2);
  fill_rand(d->k, (size_t)d->T * d->kn, -2, 2);
  fill_rand(d->v, (size_t)d->T * d->kn, -1, 1);
}

static void att_data_free(att_data_t *d) {
  free(d->q);
  free(d->k);
  free(d->v);
}

static float *run_attention(const att_case_t *c, const float *q, const float *k, const float *v,
                            const int32_t *seq_start, int n_seq) {
  const int T = seq_start[n_seq], max_seq = T;
  float *out = palloc((size_t)T * c->n_heads * c->hd);
  float *scratch = palloc((size_t)omp_get_max_threads() * LS_ATTN_QBLOCK * max_seq);
  ls_cpu_attention(out, q, k, v, seq_start, NULL, n_seq, c->n_heads, c->n_kv, c->hd, c->window,
                   c->scale, c->softcap, scratch, max_seq);
  free(scratch);
  return out;
}

static void att_ctx(char *ctx, size_t cap, const att_case_t *c, int threads, const char *what) {
  int n = snprintf(ctx, cap, "attention%s lens={", what);
  for (int s = 0; s < c->n_seq; s++) n += snprintf(ctx + n, cap - (size_t)n, s ? ",%d" : "%d", c->lens[s]);
  snprintf(ctx + n, cap - (size_t)n, "} n_heads=%d n_kv=%d head_dim=%d window=%d threads=%d",
           c->n_heads, c->n_kv, c->hd, c->window, threads);
}

static void test_attention(void **state) {
  for (size_t ci = 0; ci < sizeof k_att_cases / sizeof k_att_cases[0]; ci++) {
    const att_case_t *c = &k_att_cases[ci];
    att_data_t d;
    att_data_make(c, &d);
    const size_t nq = (size_t)d.T * d.qn, nk = (size_t)d.T * d.kn;
    double *qd = dalloc(nq), *kd = dalloc(nk), *vd = dalloc(nk), *ref = dalloc(nq),
           *mag = dalloc(nq);
    to_double(qd, d.q, nq);
    to_double(kd, d.k, nk);
    to_double(vd, d.v, nk);
    ref_attention_opts(ref, mag, qd, kd, vd, d.seq_start, c->n_seq, c->n_heads, c->n_kv, c->hd,
                       c->window, c->scale, c->softcap);
    float *first = NULL;
    for (int ti = 0; ti < 2; ti++) {
      omp_set_num_threads(k_threads[ti]);
      char ctx[256];
      att_ctx(ctx, sizeof ctx, c, k_threads[ti], "");
      float *out = run_attention(c, d.q, d.k, d.v, d.seq_start, c->n_seq);
      check_close(ctx, out, ref, mag, nq, (size_t)c->hd, RTOL, ATOL);
      check_canary(ctx, out, nq);
      if (c->window == 1) /* softmax over one key: exactly v */
        for (int t = 0; t < d.T; t++)
          for (int h = 0; h < c->n_heads; h++)
            assert_memory_equal(out + (size_t)t * d.qn + (size_t)h * c->hd,
                                d.v + (size_t)t * d.kn + (size_t)(h / (c->n_heads / c->n_kv)) * c->hd,
                                sizeof(float) * (size_t)c->hd);
      if (!first) first = out;
      else {
        att_ctx(ctx, sizeof ctx, c, k_threads[ti], " (1 vs 2 threads)");
        check_rows_identical(ctx, first, out, d.T, d.qn);
        free(out);
      }
    }
    omp_set_num_threads(1);
    free(first);
    free(qd); free(kd); free(vd); free(ref); free(mag);
    att_data_free(&d);
  }
  report("attention");
}

/* A sequence's output rows are bit-identical whatever the other sequences hold, and
 * when it is computed alone. */
static void test_attention_isolation(void **state) {
  for (size_t ci = 0; ci < sizeof k_att_cases / sizeof k_att_cases[0]; ci++) {
    const att_case_t *c = &k_att_cases[ci];
    att_data_t d;
    att_data_make(c, &d);
    for (int ti = 0; ti < 2; ti++) {
      omp_set_num_threads(k_threads[ti]);
      float *base = run_attention(c, d.q, d.k, d.v, d.seq_start, c->n_seq);
      for (int s = 0; s < c->n_seq; s++) {
        const int s0 = d.seq_start[s], s1 = d.seq_start[s + 1], len = s1 - s0;
        char ctx[256];
        /* perturb every other sequence */
        if (c->n_seq > 1) {
          att_data_t p = d;
          p.q = palloc((size_t)d.T * d.qn);
          p.k = palloc((size_t)d.T * d.kn);
          p.v = palloc((size_t)d.T * d.kn);
          fill_rand(p.q, (size_t)d.T * d.qn, -3, 3);
          fill_rand(p.k, (size_t)d.T * d.kn, -3, 3);
          fill_rand(p.v, (size_t)d.T * d.kn, -3, 3);
          memcpy(p.q + (size_t)s0 * d.qn, d.q + (size_t)s0 * d.qn, sizeof(float) * (size_t)len * d.qn);
          memcpy(p.k + (size_t)s0 * d.kn, d.k + (size_t)s0 * d.kn, sizeof(float) * (size_t)len * d.kn);
          memcpy(p.v + (size_t)s0 * d.kn, d.v + (size_t)s0 * d.kn, sizeof(float) * (size_t)len * d.kn);
          float *out = run_attention(c, p.q, p.k, p.v, d.seq_start, c->n_seq);
          char what[64];
          snprintf(what, sizeof what, " sequence %d with the others perturbed", s);
          att_ctx(ctx, sizeof ctx, c, k_threads[ti], what);
          check_rows_identical(ctx, base + (size_t)s0 * d.qn, out + (size_t)s0 * d.qn, len, d.qn);
          /* and the other sequences did change */
          if (memcmp(base, out, sizeof(float) * (size_t)d.T * d.qn) == 0) {
            fprintf(stderr, "%s: perturbing the other sequences changed nothing\n", ctx);
            fail();
          }
          free(out);
          att_data_free(&p);
        }
        /* alone */
        const int32_t ss[2] = {0, len};
        float *out = run_attention(c, d.q + (size_t)s0 * d.qn, d.k + (size_t)s0 * d.kn,
                                   d.v + (size_t)s0 * d.kn, ss, 1);
        char what[64];
        snprintf(what, sizeof what, " sequence %d alone", s);
        att_ctx(ctx, sizeof ctx, c, k_threads[ti], what);
        check_rows_identical(ctx, base + (size_t)s0 * d.qn, out, len, d.qn);
        free(out);
      }
      free(base);
    }
    omp_set_num_threads(1);
    att_data_free(&d);
  }
}

/* ---- swiglu, add ----------------------------------------------------------------------------- */

static void test_swiglu(void **state) {
  const size_t ns[] = {1, 7, 64, 1001, 40000};
  const float extremes[] = {-1000, -100, -88.5f, -20, -1e-30f, 0, 1e-30f, 20, 88.5f, 100, 1000};
  for (int ti = 0; ti < 2; ti++) {
    omp_set_num_threads(k_threads[ti]);
    for (size_t a = 0; a < sizeof ns / sizeof ns[0]; a++) {
      const size_t n = ns[a];
      float *g = palloc(n), *u = palloc(n);
      fill_rand(g, n, -12, 12);
      fill_rand(u, n, -3, 3);
      for (size_t i = 0; i < sizeof extremes / sizeof extremes[0] && i < n; i++)
        g[(i * 7919) % n] = extremes[i];
      double *ref = dalloc(n), *mag = dalloc(n);
      for (size_t i = 0; i < n; i++) {
        ref[i] = silu(g[i]) * u[i];
        mag[i] = fabs((double)g[i] * u[i]) < fabs(ref[i]) ? fabs(ref[i]) : fabs((double)g[i] * u[i]);
      }
      float *u0 = palloc(n);
      memcpy(u0, u, sizeof(float) * n);
      ls_cpu_swiglu(g, u, n);
      char ctx[96];
      snprintf(ctx, sizeof ctx, "swiglu n=%zu threads=%d", n, k_threads[ti]);
      check_close(ctx, g, ref, mag, n, n, RTOL, ATOL);
      check_canary(ctx, g, n);
      assert_memory_equal(u, u0, sizeof(float) * (n + CANARY)); /* up untouched */
      free(g); free(u); free(u0); free(ref); free(mag);
    }
  }
  omp_set_num_threads(1);
  report("swiglu");
}

static void test_geglu(void **state) {
  const size_t ns[] = {1, 7, 64, 1001, 40000};
  const float extremes[] = {-1000, -100, -10, -3, -1e-30f, 0, 1e-30f, 3, 10, 100, 1000};
  for (int ti = 0; ti < 2; ti++) {
    omp_set_num_threads(k_threads[ti]);
    for (size_t a = 0; a < sizeof ns / sizeof ns[0]; a++) {
      const size_t n = ns[a];
      float *g = palloc(n), *u = palloc(n);
      fill_rand(g, n, -8, 8);
      fill_rand(u, n, -3, 3);
      for (size_t i = 0; i < sizeof extremes / sizeof extremes[0] && i < n; i++)
        g[(i * 7919) % n] = extremes[i];
      double *ref = dalloc(n), *mag = dalloc(n);
      for (size_t i = 0; i < n; i++) {
        ref[i] = gelu_tanh(g[i]) * u[i];
        /* the rounding of g^3 and of tanh's argument, carried by g */
        mag[i] = fabs((double)g[i] * u[i]) < fabs(ref[i]) ? fabs(ref[i]) : fabs((double)g[i] * u[i]);
      }
      float *u0 = palloc(n);
      memcpy(u0, u, sizeof(float) * n);
      ls_cpu_geglu(g, u, n);
      char ctx[96];
      snprintf(ctx, sizeof ctx, "geglu n=%zu threads=%d", n, k_threads[ti]);
      check_close(ctx, g, ref, mag, n, n, RTOL, ATOL);
      check_canary(ctx, g, n);
      assert_memory_equal(u, u0, sizeof(float) * (n + CANARY)); /* up untouched */
      free(g); free(u); free(u0); free(ref); free(mag);
    }
  }
  omp_set_num_threads(1);
  report("geglu");
}

static void test_gelu(void **state) {
  const size_t ns[] = {1, 7, 64, 1001, 40000};
  const float extremes[] = {-1000, -100, -10, -3, -1e-30f, 0, 1e-30f, 3, 10, 100, 1000};
  for (int ti = 0; ti < 2; ti++) {
    omp_set_num_threads(k_threads[ti]);
    for (size_t a = 0; a < sizeof ns / sizeof ns[0]; a++)
      for (int approx = 0; approx < 2; approx++) {
        const size_t n = ns[a];
        float *g = palloc(n);
        fill_rand(g, n, -8, 8);
        for (size_t i = 0; i < sizeof extremes / sizeof extremes[0] && i < n; i++)
          g[(i * 7919) % n] = extremes[i];
        double *ref = dalloc(n), *mag = dalloc(n);
        for (size_t i = 0; i < n; i++) {
          const double x = g[i];
          ref[i] = approx ? gelu_tanh(x) : 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
          mag[i] = fabs(x) < fabs(ref[i]) ? fabs(ref[i]) : fabs(x); /* carried by x */
        }
        ls_cpu_gelu(g, n, approx);
        char ctx[96];
        snprintf(ctx, sizeof ctx, "gelu %s n=%zu threads=%d", approx ? "tanh" : "erf", n,
                 k_threads[ti]);
        check_close(ctx, g, ref, mag, n, n, RTOL, ATOL);
        check_canary(ctx, g, n);
        free(g); free(ref); free(mag);
      }
  }
  omp_set_num_threads(1);
  report("gelu");
}

static void test_shift(void **state) {
  const size_t ns[] = {1, 5, 1000, 40001};
  for (size_t a = 0; a < sizeof ns / sizeof ns[0]; a++) {
    const size_t n = ns[a];
    float *x = palloc(n), *want = palloc(n);
    fill_rand(x, n, -2, 2);
    for (size_t i = 0; i < n; i++) want[i] = x[i] + 1.0f; /* correctly rounded: exact */
    ls_cpu_shift(x, 1.0f, n);
    char ctx[64];
    snprintf(ctx, sizeof ctx, "shift n=%zu", n);
    check_rows_identical(ctx, x, want, 1, (int)n);
    check_canary(ctx, x, n);
    free(x); free(want);
  }
}

static void test_add(void **state) {
  const size_t ns[] = {1, 5, 1000, 40001};
  for (int ti = 0; ti < 2; ti++) {
    omp_set_num_threads(k_threads[ti]);
    for (size_t a = 0; a < sizeof ns / sizeof ns[0]; a++) {
      const size_t n = ns[a];
      float *y = palloc(n), *x = palloc(n), *x0 = palloc(n), *want = palloc(n);
      fill_rand(y, n, -10, 10);
      fill_rand(x, n, -1, 1);
      memcpy(x0, x, sizeof(float) * n);
      double *ref = dalloc(n), *mag = dalloc(n);
      for (size_t i = 0; i < n; i++) {
        want[i] = y[i] + x[i]; /* IEEE float addition is correctly rounded: exact answer */
        ref[i] = (double)y[i] + x[i];
        mag[i] = fabs((double)y[i]) + fabs((double)x[i]);
      }
      ls_cpu_add(y, x, n);
      char ctx[96];
      snprintf(ctx, sizeof ctx, "add n=%zu threads=%d", n, k_threads[ti]);
      check_close(ctx, y, ref, mag, n, n, RTOL, ATOL);
      check_rows_identical(ctx, y, want, 1, (int)n);
      check_canary(ctx, y, n);
      assert_memory_equal(x, x0, sizeof(float) * (n + CANARY));
      free(y); free(x); free(x0); free(want); free(ref); free(mag);
    }
  }
  omp_set_num_threads(1);
  report("add");
}

/* ---- pool ------------------------------------------------------------------------------------ */

static void pool_case(int n_seq, const int *lens, int align, int H, int threads) {
  int32_t seq_start[8], seq_len[8];
  seq_start[0] = 0;
  int n_real = 0;
  for (int s = 0; s < n_seq; s++) {
    seq_len[s] = lens[s];
    seq_start[s + 1] = seq_start[s] + (lens[s] + align - 1) / align * align;
    n_real += lens[s];
  }
  const int T = seq_start[n_seq];
  float *x = palloc((size_t)T * H); /* padding rows stay NaN: they must not be read */
  for (int s = 0; s < n_seq; s++)
    fill_rand(x + (size_t)seq_start[s] * H, (size_t)lens[s] * H, -4, 4);
  char ctx[200];
  int n = snprintf(ctx, sizeof ctx, "lens={");
  for (int s = 0; s < n_seq; s++) n += snprintf(ctx + n, sizeof ctx - (size_t)n, s ? ",%d" : "%d", lens[s]);
  snprintf(ctx + n, sizeof ctx - (size_t)n, "} align=%d H=%d threads=%d", align, H, threads);
  char c2[256];

  /* last_token */
  float *out = palloc((size_t)n_seq * H);
  ls_cpu_pool(out, x, seq_start, seq_len, n_seq, H, LS_POOL_LAST);
  snprintf(c2, sizeof c2, "pool last_token %s", ctx);
  for (int s = 0; s < n_seq; s++)
    check_rows_identical(c2, out + (size_t)s * H, x + (size_t)(seq_start[s] + lens[s] - 1) * H, 1, H);
  check_canary(c2, out, (size_t)n_seq * H);
  free(out);

  /* mean over real rows */
  out = palloc((size_t)n_seq * H);
  double *ref = dalloc((size_t)n_seq * H), *mag = dalloc((size_t)n_seq * H);
  for (int s = 0; s < n_seq; s++)
    for (int i = 0; i < H; i++) {
      double acc = 0, m = 0;
      for (int t = seq_start[s]; t < seq_start[s] + lens[s]; t++) {
        acc += x[(size_t)t * H + i];
        m += fabs(x[(size_t)t * H + i]);
      }
      ref[(size_t)s * H + i] = acc / lens[s];
      mag[(size_t)s * H + i] = m / lens[s];
    }
  ls_cpu_pool(out, x, seq_start, seq_len, n_seq, H, LS_POOL_MEAN);
  snprintf(c2, sizeof c2, "pool mean %s", ctx);
  check_close(c2, out, ref, mag, (size_t)n_seq * H, (size_t)H, RTOL, ATOL);
  check_canary(c2, out, (size_t)n_seq * H);
  free(out); free(ref); free(mag);

  /* none: the real rows, packed */
  out = palloc((size_t)n_real * H);
  ls_cpu_pool(out, x, seq_start, seq_len, n_seq, H, LS_POOL_NONE);
  snprintf(c2, sizeof c2, "pool none %s", ctx);
  for (int s = 0, row = 0; s < n_seq; row += lens[s], s++)
    check_rows_identical(c2, out + (size_t)row * H, x + (size_t)seq_start[s] * H, lens[s], H);
  check_canary(c2, out, (size_t)n_real * H);
  free(out);
  free(x);
}

static void test_pool(void **state) {
  for (int ti = 0; ti < 2; ti++) {
    omp_set_num_threads(k_threads[ti]);
    const int Hs[] = {8, 13, 64};
    for (size_t h = 0; h < 3; h++) {
      pool_case(1, (const int[]){1}, 1, Hs[h], k_threads[ti]);
      pool_case(1, (const int[]){1}, 8, Hs[h], k_threads[ti]);
      pool_case(4, (const int[]){5, 8, 1, 13}, 8, Hs[h], k_threads[ti]);
      pool_case(4, (const int[]){5, 8, 1, 13}, 1, Hs[h], k_threads[ti]);
      pool_case(3, (const int[]){50, 2, 97}, 12, Hs[h], k_threads[ti]);
      pool_case(5, (const int[]){1, 1, 3, 1, 7}, 3, Hs[h], k_threads[ti]);
    }
  }
  omp_set_num_threads(1);
  report("pool");
}

/* ---- decoder block ------------------------------------------------------------------------------ */

#define MAX_SLOTS 64
typedef struct {
  ls_config_t cfg;
  const ls_family_t *fam;
  void *w[MAX_SLOTS]; /* the family's layer tensors (backend memory), NULL where absent */
  ls_wspec_t spec[MAX_SLOTS];
  float *cos_tab, *sin_tab;
  int max_pos;
} block_model_t;

static void block_model_make(ls_backend_t *be, int n_heads, int n_kv, int hd, int window,
                             int biases, int max_pos, block_model_t *m) {
  memset(m, 0, sizeof *m);
  ls_config_t *c = &m->cfg;
  c->family = ls_family_find("LlamaForCausalLM", NULL);
  assert_true(c->family >= 0);
  m->fam = ls_family_get(c->family);
  assert_true(m->fam->n_slots <= MAX_SLOTS);
  snprintf(c->arch_name, sizeof c->arch_name, "LlamaForCausalLM");
  snprintf(c->model_type, sizeof c->model_type, "llama");
  c->hidden = 40; /* not a multiple of 16 on purpose */
  c->intermediate = 72;
  c->n_layers = 1;
  c->n_heads = n_heads;
  c->n_kv_heads = n_kv;
  c->head_dim = hd;
  c->rope_dim = hd;
  c->vocab = 32;
  c->max_pos = max_pos;
  c->rms_eps = 1e-5;
  c->rope.theta = 10000.0;
  c->rope.type = LS_ROPE_DEFAULT;
  c->rope.factor = 1.0;
  c->sliding_window = window;
  c->qkv_bias = c->o_bias = c->mlp_bias = biases;
  ls_wspec_t *specs = m->spec;
  m->fam->layer_tensors(c, 0, specs);
  for (int id = 0; id < m->fam->n_slots; id++) {
    const ls_wspec_t *w = &specs[id];
    if (!w->present) continue;
    size_t numel = (size_t)w->shape[0] * (size_t)(w->ndim == 2 ? w->shape[1] : 1);
    float *host = malloc(sizeof(float) * numel);
    assert_non_null(host);
    if (w->kind == LS_WK_NORM) fill_rand(host, numel, 0.5f, 1.5f);
    else if (w->ndim == 1) fill_rand(host, numel, -0.2f, 0.2f);
    else {
      float a = 1.7f / sqrtf((float)w->shape[1]);
      fill_rand(host, numel, -a, a);
    }
    m->w[id] = be->iface->alloc(be, sizeof(float) * numel, w->name);
    assert_non_null(m->w[id]);
    assert_int_equal(be->iface->load_weight(be, m->w[id], host, LS_DT_F32, numel,
                                            w->kind == LS_WK_MATRIX, 0), 0);
    free(host);
  }
  m->max_pos = max_pos;
  make_rope_tables(hd, c->rope.theta, max_pos, &m->cos_tab, &m->sin_tab);
}

static void block_model_free(ls_backend_t *be, block_model_t *m) {
  for (int id = 0; id < MAX_SLOTS; id++)
    if (m->w[id]) be->iface->free(be, m->w[id]);
  free(m->cos_tab);
  free(m->sin_tab);
}

typedef struct {
  int T;
  float *x, *attn_out, *mlp_out; /* (T, H) each, copied out after the forward */
  int hooks_seen;                /* bitmask of the hook points the block called */
} block_out_t;

/* the block's hook points: copy the sub-layer outputs out as they are exposed */
static void copy_hook(void *ctx, ls_hook_t h, float *rows, int width) {
  block_out_t *o = ctx;
  o->hooks_seen |= 1 << h;
  if (h == LS_HOOK_ATTN_OUT) memcpy(o->attn_out, rows, sizeof(float) * (size_t)o->T * width);
  if (h == LS_HOOK_MLP_OUT) memcpy(o->mlp_out, rows, sizeof(float) * (size_t)o->T * width);
}

/* Forward rows x_in (T, H) of n_seq sequences at seq_start (positions restart at each
 * sequence and run on through its padding rows). Scratch and padding rows are NaN. */
static void block_run(ls_backend_t *be, const block_model_t *m, const float *x_in,
                      const int32_t *seq_start, const int32_t *seq_len, int n_seq,
                      block_out_t *o) {
  const ls_config_t *c = &m->cfg;
  const int T = seq_start[n_seq], H = c->hidden;
  int32_t *pos = malloc(sizeof(int32_t) * (size_t)T);
  assert_non_null(pos);
  for (int s = 0; s < n_seq; s++)
    for (int r = seq_start[s]; r < seq_start[s + 1]; r++) pos[r] = r - seq_start[s];
  int max_len = 1;
  for (int s = 0; s < n_seq; s++)
    if (seq_start[s + 1] - seq_start[s] > max_len) max_len = seq_start[s + 1] - seq_start[s];
  ls_batch_t b = {.T = T, .n_seq = n_seq, .seq_start = seq_start, .seq_len = seq_len, .pos = pos,
                  .max_len = max_len};
  size_t nf = ls_family_scratch_floats(m->fam, c, T);
  float *scratch = be->iface->alloc(be, sizeof(float) * nf, "block scratch");
  float *x = be->iface->alloc(be, sizeof(float) * (size_t)ls_round_rows(T) * H, "x");
  assert_true(scratch && x);
  fill_poison(scratch, nf);
  fill_poison(x, (size_t)ls_round_rows(T) * H);
  memcpy(x, x_in, sizeof(float) * (size_t)T * H);
  o->T = T;
  o->hooks_seen = 0;
  o->x = malloc(sizeof(float) * (size_t)T * H);
  o->attn_out = malloc(sizeof(float) * (size_t)T * H);
  o->mlp_out = malloc(sizeof(float) * (size_t)T * H);
  assert_true(o->x && o->attn_out && o->mlp_out);
  const ls_block_t blk = {be, c, 0, m->w, m->cos_tab, m->sin_tab, &b, scratch, T, copy_hook, o, NULL, NULL};
  m->fam->forward(&blk, x);
  /* the Llama block exposes exactly attn_out and mlp_out */
  assert_int_equal(o->hooks_seen, (1 << LS_HOOK_ATTN_OUT) | (1 << LS_HOOK_MLP_OUT));
  memcpy(o->x, x, sizeof(float) * (size_t)T * H);
  be->iface->free(be, scratch);
  be->iface->free(be, x);
  free(pos);
}

static void block_out_free(block_out_t *o) {
  free(o->x);
  free(o->attn_out);
  free(o->mlp_out);
}

/* Layer 0's tensor named model.layers.0.<name> (host memory: the CPU backend), NULL when
 * the model has none; found by its Hugging Face name, as transformers names it. */
static const float *tensor(const block_model_t *m, const char *name) {
  char full[LS_WNAME_MAX];
  snprintf(full, sizeof full, "model.layers.0.%s", name);
  for (int i = 0; i < m->fam->n_slots; i++)
    if (strcmp(m->spec[i].name, full) == 0) return m->w[i];
  fail_msg("the Llama family has no tensor %s", full);
  return NULL;
}

/* The block composed from the double references (x in/out (T, H)). */
static void ref_block(const block_model_t *m, double *x, const int32_t *seq_start, int n_seq,
                      double *attn_out, double *mlp_out) {
  const ls_config_t *c = &m->cfg;
  const int T = seq_start[n_seq], H = c->hidden, Im = c->intermediate, hd = c->head_dim;
  const int Q = c->n_heads * hd, KV = c->n_kv_heads * hd;
  int32_t *pos = malloc(sizeof(int32_t) * (size_t)T);
  assert_non_null(pos);
  for (int s = 0; s < n_seq; s++)
    for (int r = seq_start[s]; r < seq_start[s + 1]; r++) pos[r] = r - seq_start[s];
  double *xn = dalloc((size_t)T * H), *q = dalloc((size_t)T * Q), *k = dalloc((size_t)T * KV),
         *v = dalloc((size_t)T * KV), *att = dalloc((size_t)T * Q), *g = dalloc((size_t)T * Im),
         *u = dalloc((size_t)T * Im);
  ref_rmsnorm(xn, NULL, x, tensor(m, "input_layernorm.weight"), T, H, c->rms_eps);
  ref_matmul(q, NULL, xn, tensor(m, "self_attn.q_proj.weight"), tensor(m, "self_attn.q_proj.bias"), T, H, Q);
  ref_matmul(k, NULL, xn, tensor(m, "self_attn.k_proj.weight"), tensor(m, "self_attn.k_proj.bias"), T, H, KV);
  ref_matmul(v, NULL, xn, tensor(m, "self_attn.v_proj.weight"), tensor(m, "self_attn.v_proj.bias"), T, H, KV);
  ref_rope(q, NULL, pos, m->cos_tab, m->sin_tab, T, c->n_heads, hd, hd);
  ref_rope(k, NULL, pos, m->cos_tab, m->sin_tab, T, c->n_kv_heads, hd, hd);
  ref_attention(att, NULL, q, k, v, seq_start, n_seq, c->n_heads, c->n_kv_heads, hd,
                c->sliding_window);
  ref_matmul(attn_out, NULL, att, tensor(m, "self_attn.o_proj.weight"), tensor(m, "self_attn.o_proj.bias"), T, Q, H);
  for (size_t i = 0; i < (size_t)T * H; i++) x[i] += attn_out[i];
  ref_rmsnorm(xn, NULL, x, tensor(m, "post_attention_layernorm.weight"), T, H, c->rms_eps);
  ref_matmul(g, NULL, xn, tensor(m, "mlp.gate_proj.weight"), tensor(m, "mlp.gate_proj.bias"), T, H, Im);
  ref_matmul(u, NULL, xn, tensor(m, "mlp.up_proj.weight"), tensor(m, "mlp.up_proj.bias"), T, H, Im);
  for (size_t i = 0; i < (size_t)T * Im; i++) g[i] = silu(g[i]) * u[i];
  ref_matmul(mlp_out, NULL, g, tensor(m, "mlp.down_proj.weight"), tensor(m, "mlp.down_proj.bias"), T, Im, H);
  for (size_t i = 0; i < (size_t)T * H; i++) x[i] += mlp_out[i];
  free(pos); free(xn); free(q); free(k); free(v); free(att); free(g); free(u);
}

typedef struct {
  int n_heads, n_kv, hd, window, biases;
} block_case_t;

static const block_case_t k_block_cases[] = {
    {4, 2, 16, 0, 1}, /* Llama/Qwen2-like, GQA 2, every bias */
    {4, 1, 32, 6, 0}, /* Mistral-like: MQA with a sliding window */
    {2, 2, 8, 0, 0},
};

/* Block forward vs the composed double reference. Errors add up over a dozen ops, so
 * the tolerance is relative to each row's RMS. */
static void test_block_reference(void **state) {
  for (size_t ci = 0; ci < sizeof k_block_cases / sizeof k_block_cases[0]; ci++) {
    const block_case_t *bc = &k_block_cases[ci];
    ls_backend_t *be = ls_backend_cpu_new(2, 64);
    assert_non_null(be);
    block_model_t m;
    block_model_make(be, bc->n_heads, bc->n_kv, bc->hd, bc->window, bc->biases, 64, &m);
    const int32_t seq_start[3] = {0, 11, 11 + 30};
    const int T = seq_start[2], H = m.cfg.hidden;
    float *x = palloc((size_t)T * H);
    fill_rand(x, (size_t)T * H, -1, 1);
    block_out_t o;
    block_run(be, &m, x, seq_start, NULL, 2, &o);
    double *xd = dalloc((size_t)T * H), *ao = dalloc((size_t)T * H), *mo = dalloc((size_t)T * H);
    to_double(xd, x, (size_t)T * H);
    ref_block(&m, xd, seq_start, 2, ao, mo);
    const double *refs[3] = {xd, ao, mo};
    const float *gots[3] = {o.x, o.attn_out, o.mlp_out};
    const char *names[3] = {"residual_post", "attn_out", "mlp_out"};
    double *mag = dalloc((size_t)T * H);
    for (int k = 0; k < 3; k++) {
      for (int t = 0; t < T; t++) {
        double ss = 0;
        for (int i = 0; i < H; i++) ss += refs[k][(size_t)t * H + i] * refs[k][(size_t)t * H + i];
        for (int i = 0; i < H; i++) mag[(size_t)t * H + i] = sqrt(ss / H);
      }
      char ctx[200];
      snprintf(ctx, sizeof ctx, "block %s H=%d heads=%d kv=%d head_dim=%d window=%d biases=%d",
               names[k], H, bc->n_heads, bc->n_kv, bc->hd, bc->window, bc->biases);
      check_close(ctx, gots[k], refs[k], mag, (size_t)T * H, (size_t)H, 1e-4, 2e-5);
    }
    free(mag); free(xd); free(ao); free(mo); free(x);
    block_out_free(&o);
    block_model_free(be, &m);
    ls_backend_free(be);
  }
  omp_set_num_threads(1);
  report("block vs reference");
}

/* Three packed sequences (each starting at a multiple of row_align, padding rows in
 * between) vs each sequence alone: bit-identical rows; and 1 vs 2 threads. */
static void test_block_batch_invariance(void **state) {
  const int lens[3] = {7, 53, 1};
  for (size_t ci = 0; ci < sizeof k_block_cases / sizeof k_block_cases[0]; ci++) {
    const block_case_t *bc = &k_block_cases[ci];
    float *first_x = NULL;
    uint64_t seed = 0;
    for (int ti = 0; ti < 2; ti++) {
      ls_backend_t *be = ls_backend_cpu_new(k_threads[ti], 128);
      assert_non_null(be);
      const int A = be->row_align;
      assert_true(A >= 1 && A <= LS_ROW_PAD);
      if (ti == 0) seed = g_rng;
      else g_rng = seed; /* same weights and inputs for both thread counts */
      block_model_t m;
      block_model_make(be, bc->n_heads, bc->n_kv, bc->hd, bc->window, bc->biases, 128, &m);
      int32_t seq_start[4] = {0};
      for (int s = 0; s < 3; s++) seq_start[s + 1] = seq_start[s] + (lens[s] + A - 1) / A * A;
      const int T = seq_start[3], H = m.cfg.hidden;
      float *x = palloc((size_t)T * H);
      fill_rand(x, (size_t)T * H, -10, 10); /* padding rows: garbage */
      for (int s = 0; s < 3; s++) fill_rand(x + (size_t)seq_start[s] * H, (size_t)lens[s] * H, -1, 1);
      block_out_t ob;
      block_run(be, &m, x, seq_start, lens, 3, &ob);
      for (int s = 0; s < 3; s++) {
        const int s0 = seq_start[s];
        const int32_t ss[2] = {0, lens[s]};
        block_out_t oa;
        block_run(be, &m, x + (size_t)s0 * H, ss, NULL, 1, &oa);
        char ctx[256];
        const float *bs[3] = {ob.x, ob.attn_out, ob.mlp_out}, *as[3] = {oa.x, oa.attn_out, oa.mlp_out};
        const char *names[3] = {"residual_post", "attn_out", "mlp_out"};
        for (int k = 0; k < 3; k++) {
          snprintf(ctx, sizeof ctx, "block %s: sequence %d (len %d at row %d, row_align %d) alone "
                   "vs in a batch of lens {7,53,1}; heads=%d kv=%d head_dim=%d window=%d "
                   "biases=%d threads=%d", names[k], s, lens[s], s0, A, bc->n_heads, bc->n_kv,
                   bc->hd, bc->window, bc->biases, k_threads[ti]);
          check_finite(ctx, as[k], (size_t)lens[s] * H);
          check_rows_identical(ctx, bs[k] + (size_t)s0 * H, as[k], lens[s], H);
        }
        block_out_free(&oa);
      }
      if (!first_x) {
        first_x = malloc(sizeof(float) * (size_t)T * H);
        assert_non_null(first_x);
        memcpy(first_x, ob.x, sizeof(float) * (size_t)T * H);
      } else {
        /* same row_align on both backends (one process), so the same layout */
        char ctx[128];
        snprintf(ctx, sizeof ctx, "block residual_post 1 vs 2 threads (case %zu)", ci);
        for (int s = 0; s < 3; s++)
          check_rows_identical(ctx, first_x + (size_t)seq_start[s] * H,
                               ob.x + (size_t)seq_start[s] * H, lens[s], H);
      }
      block_out_free(&ob);
      free(x);
      block_model_free(be, &m);
      ls_backend_free(be);
    }
    free(first_x);
  }
  omp_set_num_threads(1);
}


/* ---- the mixture-of-experts block (src/models/moe.c) ----------------------------------------- */
/* Router hook: copies the logits it is shown (width n_experts). */
typedef struct { float *logits; int width, calls, T; } moe_hook_t;
static void moe_hook(void *ctx, ls_hook_t h, float *rows, int width) {
  moe_hook_t *m = ctx;
  if (h != LS_HOOK_ROUTER_LOGITS) return;
  m->width = width;
  m->calls++;
  memcpy(m->logits, rows, sizeof(float) * (size_t)m->T * (size_t)width);
}

typedef struct {
  ls_config_t c;
  float *router, *ex[3 * 8], *sg, *su, *sd, *sgate;
  void *w[3 * 8];
} moe_model_t;

static float *rand_mat(size_t n, float a) {
  float *m = malloc(sizeof(float) * n);
  fill_rand(m, n, -a, a);
  return m;
}

static void moe_model(moe_model_t *m) {
  memset(m, 0, sizeof *m);
  ls_config_t *c = &m->c;
  c->hidden = 40;
  c->n_experts = 5;
  c->top_k = 2;
  c->moe_intermediate = 24;
  c->norm_topk_prob = 1;
  c->shared_intermediate = 16;
  c->shared_gate = 1;
  c->n_layers = 1;
  c->layer_moe[0] = 1;
  const size_t H = 40, NI = 24, NS = 16;
  m->router = rand_mat(5 * H, 0.5f);
  for (int e = 0; e < 5; e++) {
    m->ex[3 * e] = rand_mat(NI * H, 0.2f);
    m->ex[3 * e + 1] = rand_mat(NI * H, 0.2f);
    m->ex[3 * e + 2] = rand_mat(H * NI, 0.2f);
    for (int j = 0; j < 3; j++) m->w[3 * e + j] = m->ex[3 * e + j];
  }
  m->sg = rand_mat(NS * H, 0.2f);
  m->su = rand_mat(NS * H, 0.2f);
  m->sd = rand_mat(H * NS, 0.2f);
  m->sgate = rand_mat(H, 0.5f);
}

static void moe_model_free(moe_model_t *m) {
  free(m->router); free(m->sg); free(m->su); free(m->sd); free(m->sgate);
  for (int i = 0; i < 15; i++) free(m->ex[i]);
}

/* out (T, H) <- the MoE block on x for the batch (seq_start / seq_len), on backend be with
 * row alignment `align`; router logits and per-expert row counts returned */
static void moe_run(ls_backend_t *be, const moe_model_t *m, int align, const float *x, int T,
                    const int32_t *seq_start, const int32_t *seq_len, int n_seq, float *out,
                    float *logits, int64_t *rows) {
  const ls_config_t *c = &m->c;
  const int H = c->hidden, Tp = ls_round_rows(T);
  size_t widths[LS_MOE_N_SCRATCH];
  ls_moe_scratch_widths(c, widths);
  float *scratch = calloc(ls_scratch_floats(T, widths, LS_MOE_N_SCRATCH) + 16, sizeof(float));
  float *sblk[LS_MOE_N_SCRATCH], *p = scratch;
  for (int i = 0; i < LS_MOE_N_SCRATCH; i++) sblk[i] = ls_scratch_take(&p, T, widths[i]);
  void *host = malloc(ls_moe_host_bytes(c, T));
  float *xin = calloc((size_t)Tp * H, sizeof(float)), *o = calloc((size_t)Tp * H, sizeof(float));
  memcpy(xin, x, sizeof(float) * (size_t)T * H);
  ls_batch_t b = {.T = T, .n_seq = n_seq, .seq_start = seq_start, .seq_len = seq_len,
                  .seq_start_h = seq_start, .seq_len_h = seq_len};
  moe_hook_t hk = {logits, 0, 0, T};
  const int saved = be->row_align;
  be->row_align = align;
  const ls_block_t blk = {be, c, 0, NULL, NULL, NULL, &b, scratch, T, moe_hook, &hk, host, rows};
  const ls_moe_weights_t w = {m->router, m->w, m->sg, m->su, m->sd, m->sgate, NULL};
  ls_recipe_moe(&blk, &w, sblk, xin, o);
  be->row_align = saved;
  assert_int_equal(hk.calls, 1);
  assert_int_equal(hk.width, c->n_experts);
  memcpy(out, o, sizeof(float) * (size_t)T * H);
  free(scratch); free(host); free(xin); free(o);
}

/* transformers' MoE in double: softmax over the router logits, top-k (renormalised),
 * sum of w_e down(silu(gate x) * up x), plus sigmoid(shared_gate x) * shared(x) */
static void moe_ref(const moe_model_t *m, const float *x, double *y) {
  const int H = m->c.hidden, NI = m->c.moe_intermediate, NS = m->c.shared_intermediate,
            E = m->c.n_experts;
  double lg[8], g[32], u[32];
  for (int e = 0; e < E; e++) {
    lg[e] = 0;
    for (int i = 0; i < H; i++) lg[e] += (double)m->router[e * H + i] * x[i];
  }
  int sel[2];
  for (int j = 0; j < 2; j++) {
    sel[j] = -1;
    for (int e = 0; e < E; e++)
      if ((j == 0 || e != sel[0]) && (sel[j] < 0 || lg[e] > lg[sel[j]])) sel[j] = e;
  }
  const double w1 = 1.0 / (1.0 + exp(lg[sel[1]] - lg[sel[0]])), wt[2] = {w1, 1.0 - w1};
  for (int i = 0; i < H; i++) y[i] = 0;
  for (int j = 0; j < 3; j++) {
    const int shared = j == 2, n = shared ? NS : NI;
    const float *G = shared ? m->sg : m->ex[3 * sel[j]], *U = shared ? m->su : m->ex[3 * sel[j] + 1],
                *D = shared ? m->sd : m->ex[3 * sel[j] + 2];
    double a = 0;
    for (int i = 0; i < H; i++) a += (double)m->sgate[i] * x[i];
    const double wj = shared ? 1.0 / (1.0 + exp(-a)) : wt[j];
    for (int r = 0; r < n; r++) {
      g[r] = u[r] = 0;
      for (int i = 0; i < H; i++) { g[r] += (double)G[r * H + i] * x[i]; u[r] += (double)U[r * H + i] * x[i]; }
      g[r] = g[r] / (1.0 + exp(-g[r])) * u[r];
    }
    for (int i = 0; i < H; i++) {
      double d = 0;
      for (int r = 0; r < n; r++) d += (double)D[i * n + r] * g[r];
      y[i] += wj * d;
    }
  }
}

/* The block against the double reference; padding rows never routed (and counted); the
 * same rows bit-identical whatever else shares the batch, and at a coarser row alignment
 * (the gathered batches then have gaps) as at the CPU's own. Prompts start at multiples
 * of 48, as the engine would place them at any alignment. */
static void test_moe_block(void **state) {
  (void)state;
  ls_backend_t *be = ls_backend_cpu_new(2, 128);
  assert_non_null(be);
  moe_model_t m;
  moe_model(&m);
  const int H = m.c.hidden, E = m.c.n_experts;
  const int a1 = be->row_align, a2 = 24 % a1 == 0 ? 24 : 48;
  /* two prompts: rows 0..47 (13 real), 48..95 (20 real) */
  enum { T = 96 };
  const int32_t start[3] = {0, 48, 96}, len[2] = {13, 20};
  float *x = rand_mat((size_t)T * H, 1.5f);
  float *out1 = malloc(sizeof(float) * T * 40), *out2 = malloc(sizeof(float) * T * 40);
  float *lg1 = malloc(sizeof(float) * T * 8), *lg2 = malloc(sizeof(float) * T * 8);
  int64_t rows1[8] = {0}, rows2[8] = {0};
  moe_run(be, &m, a1, x, T, start, len, 2, out1, lg1, rows1);
  moe_run(be, &m, a2, x, T, start, len, 2, out2, lg2, rows2);
  check_rows_identical("moe at a coarser row alignment", out2, out1, T, H);
  int64_t total = 0;
  for (int e = 0; e < E; e++) {
    assert_int_equal(rows1[e], rows2[e]);
    total += rows1[e];
  }
  assert_int_equal(total, 2 * (13 + 20)); /* real rows only, top_k each */
  for (int s = 0; s < 2; s++)
    for (int t = start[s]; t < start[s + 1]; t++) {
      const float *o = out1 + (size_t)t * H;
      if (t >= start[s] + len[s]) { /* padding: not routed, no expert output */
        for (int i = 0; i < H; i++) assert_true(o[i] == 0.0f);
        continue;
      }
      double y[40], err = 0, mag = 0;
      moe_ref(&m, x + (size_t)t * H, y);
      for (int i = 0; i < H; i++) { err = fmax(err, fabs(o[i] - y[i])); mag = fmax(mag, fabs(y[i])); }
      if (err > 1e-5 * mag) fail_msg("moe row %d: error %.3g vs magnitude %.3g", t, err, mag);
    }
  /* the second prompt alone (its rows first in the batch): the same bits */
  const int32_t start_b[2] = {0, 48}, len_b[1] = {20};
  moe_run(be, &m, a2, x + (size_t)48 * H, 48, start_b, len_b, 1, out2, lg2, NULL);
  check_rows_identical("moe prompt alone vs in a batch", out2, out1 + (size_t)48 * H, 20, H);
  check_rows_identical("router logits alone vs in a batch", lg2, lg1 + (size_t)48 * E, 20, E);
  free(x); free(out1); free(out2); free(lg1); free(lg2);
  moe_model_free(&m);
  ls_backend_free(be);
}

int main(void) {
  openblas_set_num_threads(1); /* threads come from OpenMP, as in the CPU backend */
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_rmsnorm),
      cmocka_unit_test(test_layernorm),
      cmocka_unit_test(test_matmul),
      cmocka_unit_test(test_matmul_row_invariance),
      cmocka_unit_test(test_matmul_chunked_accuracy),
      cmocka_unit_test(test_rope),
      cmocka_unit_test(test_attention),
      cmocka_unit_test(test_attention_isolation),
      cmocka_unit_test(test_swiglu),
      cmocka_unit_test(test_geglu),
      cmocka_unit_test(test_gelu),
      cmocka_unit_test(test_shift),
      cmocka_unit_test(test_add),
      cmocka_unit_test(test_pool),
      cmocka_unit_test(test_block_reference),
      cmocka_unit_test(test_block_batch_invariance),
      cmocka_unit_test(test_moe_block),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
