/* ops_cpu.c: the CPU backend, float32 reference ops (see ops_cpu.h, backend.h).
 * GEMMs go to OpenBLAS; everything else is row-local loops, parallel with OpenMP.
 * Reductions run in a fixed order per row so results do not depend on batching. */
#include "ops_cpu.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "ls_common.h"
#include "registry.h"

/* ---- elementwise / row ops ----------------------------------------------------- */
void ls_cpu_rmsnorm(float *out, const float *x, const float *w, int T, int H, float eps) {
#pragma omp parallel for schedule(static)
  for (int t = 0; t < T; t++) {
    const float *xr = x + (size_t)t * H;
    float *o = out + (size_t)t * H;
    double ss = 0.0;
    for (int i = 0; i < H; i++) ss += (double)xr[i] * xr[i];
    float var = (float)(ss / H);
    float r = 1.0f / sqrtf(var + eps);
    for (int i = 0; i < H; i++) o[i] = w[i] * (xr[i] * r);
  }
}

/* mean and variance in double, two passes (as the float64 reference does) */
void ls_cpu_layernorm(float *out, const float *x, const float *w, const float *b, int T,
                      int H, float eps) {
#pragma omp parallel for schedule(static)
  for (int t = 0; t < T; t++) {
    const float *xr = x + (size_t)t * H;
    float *o = out + (size_t)t * H;
    double s = 0.0, ss = 0.0;
    for (int i = 0; i < H; i++) s += xr[i];
    const double mean = s / H;
    for (int i = 0; i < H; i++) ss += ((double)xr[i] - mean) * ((double)xr[i] - mean);
    const float m = (float)mean, r = (float)(1.0 / sqrt(ss / H + (double)eps));
    for (int i = 0; i < H; i++) o[i] = w[i] * ((xr[i] - m) * r) + (b ? b[i] : 0.0f);
  }
}

/* Chunked GEMM accumulation (--precise-gemm). One sgemm sums each dot product in float
 * over all n_in terms; on a real checkpoint that is about as far from float64 as
 * PyTorch's float32 GEMMs (tests/real: 1.1-1.2x transformers' float32 error, median over
 * rows, up to 2x on the worst row) and it is the largest float32 error of the forward
 * (softmax, SiLU, RMSNorm or RoPE in double change nothing measurable). Here the dot
 * products run in chunks of LS_MM_KCHUNK terms, each chunk one sgemm, and the chunks and
 * the bias are summed in double and rounded once: 0.2-0.9x transformers' float32 error,
 * for 30-45% more forward time (more, smaller sgemm calls: OpenBLAS repacks operands).
 * Tiles of LS_MM_ROWS x LS_MM_COLS keep the double accumulator on the stack (192 KiB). */
#define LS_MM_KCHUNK 128
#define LS_MM_ROWS (4 * LS_ROW_PAD)
#define LS_MM_COLS 128

/* rows [r0, r1) (LS_ROW_PAD-aligned) of y = x W^T + b, on the calling thread */
static void matmul_rows_chunked(float *y, const float *x, const float *W, const float *b,
                                int r0, int r1, int T, int n_in, int n_out) {
  (void)T; /* padding rows get the bias too: their results are never used */
  double acc[LS_MM_ROWS * LS_MM_COLS]; /* (rows, cols) of the tile */
  for (int r = r0; r < r1; r += LS_MM_ROWS) {
    const int nr = r1 - r < LS_MM_ROWS ? r1 - r : LS_MM_ROWS; /* a multiple of LS_ROW_PAD */
    for (int c = 0; c < n_out; c += LS_MM_COLS) {
      const int nc = n_out - c < LS_MM_COLS ? n_out - c : LS_MM_COLS;
      float *yt = y + (size_t)r * n_out + c; /* the tile, also each chunk's sgemm output */
      for (int k = 0; k < n_in; k += LS_MM_KCHUNK) {
        const int nk = n_in - k < LS_MM_KCHUNK ? n_in - k : LS_MM_KCHUNK;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nr, nc, nk, 1.0f,
                    x + (size_t)r * n_in + k, n_in, W + (size_t)c * n_in + k, n_in, 0.0f, yt,
                    n_out);
        for (int i = 0; i < nr; i++) {
          const float *yr = yt + (size_t)i * n_out;
          double *a = acc + (size_t)i * nc;
          if (k == 0)
            for (int j = 0; j < nc; j++) a[j] = (double)yr[j] + (b ? (double)b[c + j] : 0.0);
          else
            for (int j = 0; j < nc; j++) a[j] += yr[j];
        }
      }
      for (int i = 0; i < nr; i++)
        for (int j = 0; j < nc; j++) yt[(size_t)i * n_out + j] = (float)acc[(size_t)i * nc + j];
    }
  }
}

/* Row-parallel GEMM with a fixed row blocking. OpenBLAS's result for a row depends on
 * how its kernel tiles the row dimension (remainder tiles accumulate in another order)
 * and on how its own threads split the work. So rows are padded to LS_ROW_PAD (a
 * multiple of every x86 sgemm unroll) and split into LS_ROW_PAD-aligned blocks, one
 * per OpenMP thread, each a single-threaded sgemm: a row's result is then the same
 * for any batch composition, thread count or rank count. */
/* rows [r0, r1) of y = x W^T + b in one single-threaded sgemm (bias on the real rows) */
static void matmul_rows(float *y, const float *x, const float *W, const float *b, int r0,
                        int r1, int T, int n_in, int n_out) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r1 - r0, n_out, n_in, 1.0f,
              x + (size_t)r0 * n_in, n_in, W, n_in, 0.0f, y + (size_t)r0 * n_out, n_out);
  if (!b) return;
  const int e = r1 < T ? r1 : T;
  for (int r = r0; r < e; r++) {
    float *yr = y + (size_t)r * n_out;
    for (int j = 0; j < n_out; j++) yr[j] += b[j];
  }
}

typedef void (*rows_fn)(float *, const float *, const float *, const float *, int, int, int,
                        int, int);

/* the fixed row split: LS_ROW_PAD-aligned blocks, one contiguous run per OpenMP thread */
static void matmul_split(rows_fn rows, float *y, const float *x, const float *W,
                         const float *b, int T, int n_in, int n_out) {
  if (T <= 0) return;
  const int Tp = ls_round_rows(T);
#pragma omp parallel
  {
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int blocks = Tp / LS_ROW_PAD;
    const int r0 = (int)((long)blocks * t / nt) * LS_ROW_PAD;
    const int r1 = (int)((long)blocks * (t + 1) / nt) * LS_ROW_PAD;
    if (r1 > r0) rows(y, x, W, b, r0, r1, T, n_in, n_out);
  }
}

void ls_cpu_matmul(float *y, const float *x, const float *W, const float *b, int T, int n_in,
                   int n_out) {
  matmul_split(matmul_rows, y, x, W, b, T, n_in, n_out);
}

void ls_cpu_matmul_chunked(float *y, const float *x, const float *W, const float *b, int T,
                           int n_in, int n_out) {
  matmul_split(matmul_rows_chunked, y, x, W, b, T, n_in, n_out);
}

void ls_cpu_rope(float *x, const int32_t *pos, const float *cos_tab, const float *sin_tab,
                 int T, int n_heads, int head_dim, int rot_dim) {
  const int half = rot_dim / 2;
#pragma omp parallel for schedule(static)
  for (int t = 0; t < T; t++) {
    const float *c = cos_tab + (size_t)pos[t] * half;
    const float *s = sin_tab + (size_t)pos[t] * half;
    for (int h = 0; h < n_heads; h++) {
      float *v = x + ((size_t)t * n_heads + h) * head_dim;
      for (int i = 0; i < half; i++) {
        float x1 = v[i], x2 = v[i + half];
        v[i] = x1 * c[i] - x2 * s[i];
        v[i + half] = x2 * c[i] + x1 * s[i];
      }
    }
  }
}

void ls_cpu_swiglu(float *gate, const float *up, size_t n) {
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; i++) {
    float g = gate[i];
    gate[i] = (g / (1.0f + expf(-g))) * up[i];
  }
}

void ls_cpu_geglu(float *gate, const float *up, size_t n) {
  const float beta = 0.7978845608028654f, kappa = 0.044715f; /* sqrt(2 / pi) */
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; i++) {
    const float g = gate[i];
    gate[i] = 0.5f * g * (1.0f + tanhf(beta * (g + kappa * g * g * g))) * up[i];
  }
}

void ls_cpu_gelu(float *x, size_t n, int approximate) {
  const float beta = 0.7978845608028654f, kappa = 0.044715f;
  if (approximate) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
      const float g = x[i];
      x[i] = 0.5f * g * (1.0f + tanhf(beta * (g + kappa * g * g * g)));
    }
  } else {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.7071067811865476f));
  }
}

void ls_cpu_shift(float *x, float b, size_t n) {
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; i++) x[i] += b;
}

void ls_cpu_add(float *y, const float *x, size_t n) {
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; i++) y[i] += x[i];
}

/* ---- attention ------------------------------------------------------------------ */
/* One (sequence, head), rows [s0, s1), in query blocks of LS_ATTN_QBLOCK rows:
 *   S = (Q_blk K^T) * scale        one sgemm over the keys the block can see
 *   P = softmax(S) on each row's causal (and sliding-window) range, 0 elsewhere
 *   O_blk = P V                    one sgemm
 * The calls depend only on the sequence itself (its padded length, block offsets
 * from s0), so a prompt's result does not depend on its neighbours. S never exceeds
 * LS_ATTN_QBLOCK x (sequence length) floats. */
static void attend_one(float *out, const float *q, const float *k, const float *v, int s0,
                       int s1, int s_end, int h, int kh, int n_heads, int n_kv, int hd,
                       int window, float scale, float softcap, float *S) {
  const int qs = n_heads * hd, ks = n_kv * hd;
  for (int i = s1; i < s_end; i++) /* padding rows */
    memset(out + (size_t)i * qs + (size_t)h * hd, 0, sizeof(float) * (size_t)hd);
  for (int i0 = s0; i0 < s1; i0 += LS_ATTN_QBLOCK) {
    const int i1 = i0 + LS_ATTN_QBLOCK < s1 ? i0 + LS_ATTN_QBLOCK : s1;
    const int j_lo = window > 0 && i0 - window + 1 > s0 ? i0 - window + 1 : s0;
    const int nj = i1 - j_lo, ni = i1 - i0;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, ni, nj, hd, scale,
                q + (size_t)i0 * qs + (size_t)h * hd, qs, k + (size_t)j_lo * ks + (size_t)kh * hd,
                ks, 0.0f, S, nj);
    for (int i = i0; i < i1; i++) {
      float *row = S + (size_t)(i - i0) * nj;
      const int a = (window > 0 && i - window + 1 > j_lo ? i - window + 1 : j_lo) - j_lo;
      const int b = i - j_lo; /* inclusive */
      if (softcap > 0) /* as transformers: (s / cap), tanh, * cap */
        for (int j = a; j <= b; j++) row[j] = tanhf(row[j] / softcap) * softcap;
      float m = -INFINITY;
      for (int j = a; j <= b; j++) m = row[j] > m ? row[j] : m;
      float sum = 0.0f;
      for (int j = a; j <= b; j++) {
        row[j] = expf(row[j] - m);
        sum += row[j];
      }
      const float inv = 1.0f / sum;
      for (int j = 0; j < a; j++) row[j] = 0.0f;
      for (int j = a; j <= b; j++) row[j] *= inv;
      for (int j = b + 1; j < nj; j++) row[j] = 0.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, ni, hd, nj, 1.0f, S, nj,
                v + (size_t)j_lo * ks + (size_t)kh * hd, ks, 0.0f,
                out + (size_t)i0 * qs + (size_t)h * hd, qs);
  }
}

void ls_cpu_attention(float *out, const float *q, const float *k, const float *v,
                      const int32_t *seq_start, const int32_t *seq_len, int n_seq,
                      int n_heads, int n_kv_heads, int head_dim, int window, float scale,
                      float softcap, float *scratch, int max_seq) {
  const int group = n_heads / n_kv_heads;
  if (!(scale > 0)) scale = 1.0f / sqrtf((float)head_dim);
  const long n_tasks = (long)n_seq * n_heads;
#pragma omp parallel for schedule(dynamic, 1)
  for (long task = 0; task < n_tasks; task++) {
    int s = (int)(task / n_heads), h = (int)(task % n_heads);
    float *S = scratch + (size_t)omp_get_thread_num() * LS_ATTN_QBLOCK * (size_t)max_seq;
    const int s0 = seq_start[s], s1 = seq_len ? s0 + seq_len[s] : seq_start[s + 1];
    attend_one(out, q, k, v, s0, s1, seq_start[s + 1], h, h / group, n_heads, n_kv_heads,
               head_dim, window, scale, softcap, S);
  }
}

/* ---- pooling -------------------------------------------------------------------- */
void ls_cpu_pool(float *pooled, const float *x, const int32_t *seq_start,
                 const int32_t *seq_len, int n_seq, int H, ls_pool_t mode) {
  if (mode == LS_POOL_NONE) {
    size_t row = 0;
    for (int s = 0; s < n_seq; s++) {
      memcpy(pooled + row * H, x + (size_t)seq_start[s] * H, (size_t)seq_len[s] * H * sizeof(float));
      row += (size_t)seq_len[s];
    }
    return;
  }
#pragma omp parallel for schedule(static)
  for (int s = 0; s < n_seq; s++) {
    float *o = pooled + (size_t)s * H;
    int a = seq_start[s], b = seq_start[s] + seq_len[s];
    if (mode == LS_POOL_LAST) {
      memcpy(o, x + (size_t)(b - 1) * H, (size_t)H * sizeof(float));
      continue;
    }
    for (int i = 0; i < H; i++) {
      double acc = 0.0;
      for (int t = a; t < b; t++) acc += x[(size_t)t * H + i];
      o[i] = (float)(acc / (b - a));
    }
  }
}

/* ---- steering edits ------------------------------------------------------------------------ */
/* the dot product in double, in index order */
void ls_cpu_edit_rows(float *x, int H, const int32_t *idx, int n, const float *v, float alpha,
                      int ablate) {
#pragma omp parallel for schedule(static)
  for (int i = 0; i < n; i++) {
    float *r = x + (size_t)(idx ? idx[i] : i) * H;
    if (ablate) {
      double d = 0;
      for (int j = 0; j < H; j++) d += (double)r[j] * v[j];
      const float df = (float)d;
      for (int j = 0; j < H; j++) r[j] -= df * v[j];
    } else {
      for (int j = 0; j < H; j++) r[j] += alpha * v[j];
    }
  }
}

/* ---- multi-head latent attention: heads put together ----------------------------------- */
void ls_cpu_concat_heads(float *out, int d_out, const float *a, int da, int sa, int a_shared,
                         const float *b, int db, int sb, int b_shared, int T, int n_heads) {
#pragma omp parallel for schedule(static)
  for (int t = 0; t < T; t++)
    for (int h = 0; h < n_heads; h++) {
      float *o = out + ((size_t)t * n_heads + h) * d_out;
      const float *ah = a + ((size_t)t * (a_shared ? 1 : n_heads) + (a_shared ? 0 : h)) * sa;
      memcpy(o, ah, sizeof(float) * (size_t)da);
      if (b) {
        const float *bh = b + ((size_t)t * (b_shared ? 1 : n_heads) + (b_shared ? 0 : h)) * sb;
        memcpy(o + da, bh, sizeof(float) * (size_t)db);
      } else {
        memset(o + da, 0, sizeof(float) * (size_t)db);
      }
      memset(o + da + db, 0, sizeof(float) * (size_t)(d_out - da - db));
    }
}

/* ---- mixture-of-experts rows ------------------------------------------------------------ */
void ls_cpu_gather(float *dst, const float *src, const int32_t *idx, int n, int W) {
#pragma omp parallel for schedule(static)
  for (int i = 0; i < n; i++)
    if (idx[i] >= 0) memcpy(dst + (size_t)i * W, src + (size_t)idx[i] * W, sizeof(float) * (size_t)W);
}

void ls_cpu_scatter_add(float *dst, const float *src, const int32_t *idx, const float *wts,
                        int n, int W) {
#pragma omp parallel for schedule(static)
  for (int i = 0; i < n; i++) {
    if (idx[i] < 0) continue;
    float *d = dst + (size_t)idx[i] * W;
    const float *s = src + (size_t)i * W, w = wts[i];
    for (int j = 0; j < W; j++) d[j] += w * s[j];
  }
}

void ls_cpu_dequant_fp8(float *dst, const void *src, const float *scale, ls_dtype_t dt,
                        int64_t rows, int64_t cols, int br, int bc) {
  const int64_t sc = (cols + bc - 1) / bc;
  const uint8_t *q = src;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; r++) {
    float *d = dst + (size_t)(r * cols);
    ls_convert_to_f32(d, q + (size_t)(r * cols), dt, (size_t)cols);
    const float *srow = scale + (size_t)((r / br) * sc);
    for (int64_t c = 0; c < cols; c++) d[c] *= srow[c / bc];
  }
}

/* ---- row alignment probe ------------------------------------------------------------ */
/* OpenBLAS's sgemm micro-kernels do not compute every row of a register tile in the
 * same order (on Haswell/Zen a row's result depends on its index mod 12). Find the
 * smallest alignment a such that shifting the rows by any multiple of a inside a
 * LS_ROW_PAD block leaves every row's result bit-identical. */
int ls_cpu_probe_row_align(void) {
  enum { K = 96, N = 40, M = 2 * LS_ROW_PAD, EXTRA = LS_ROW_PAD };
  static const int cand[] = {1, 2, 3, 4, 6, 8, 12, 16, 24};
  float *a = malloc(sizeof(float) * (M + EXTRA) * K), *b = malloc(sizeof(float) * N * K);
  float *c0 = malloc(sizeof(float) * (M + EXTRA) * N), *c1 = malloc(sizeof(float) * M * N);
  int align = LS_ROW_PAD;
  if (!a || !b || !c0 || !c1) goto done;
  uint32_t st = 12345;
  for (int i = 0; i < (M + EXTRA) * K; i++) a[i] = (float)((st = st * 1664525u + 1013904223u) >> 8) / 16777216.0f - 0.5f;
  for (int i = 0; i < N * K; i++) b[i] = (float)((st = st * 1664525u + 1013904223u) >> 8) / 16777216.0f - 0.5f;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M + EXTRA, N, K, 1.0f, a, K, b, K, 0.0f, c0, N);
  for (size_t ci = 0; ci < sizeof cand / sizeof cand[0]; ci++) {
    int ok = 1;
    for (int shift = cand[ci]; shift < LS_ROW_PAD && ok; shift += cand[ci]) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, a + (size_t)shift * K,
                  K, b, K, 0.0f, c1, N);
      ok = memcmp(c1, c0 + (size_t)shift * N, sizeof(float) * M * N) == 0;
    }
    if (ok) { align = cand[ci]; break; }
  }
done:
  free(a); free(b); free(c0); free(c1);
  return align;
}

/* ---- exact Gram matrix (--reduce cov) ---------------------------------------------- */
/* G (H, H) = A^T B for A, B (K, H) row-major (sym: A = B, only j <= k computed): column
 * blocks in parallel, each one dgemm (OpenBLAS runs single-threaded here, see
 * ls_backend_cpu_new). Every product and partial sum is an integer below 2^53
 * (ls_fixed.h), so any summation order gives the same G. */
static void gram_gemm(double *G, const double *A, const double *B, int K, int H, int sym) {
  const int nb = 64, blocks = (H + nb - 1) / nb;
#pragma omp parallel for schedule(dynamic)
  for (int c = 0; c < blocks; c++) {
    const int c0 = c * nb, w = H - c0 < nb ? H - c0 : nb, rows = sym ? c0 + w : H;
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, rows, w, K, 1.0, A, H, B + c0, H, 0.0,
                G + c0, H);
  }
}

void ls_cpu_gram_fixed(uint64_t *acc, const float *x, int n, int H, const int32_t *shift,
                       void *scratch) {
  const size_t CH = LS_GRAM_CHUNK, Hs = (size_t)H;
  double *Q = scratch, *G = Q + 3 * CH * Hs;
  for (int r0 = 0; r0 < n; r0 += LS_GRAM_CHUNK) {
    const int K = n - r0 < LS_GRAM_CHUNK ? n - r0 : LS_GRAM_CHUNK;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < K; i++)
      for (int j = 0; j < H; j++) {
        int64_t d[3];
        ls_fx_digits((int64_t)nearbyint(ldexp((double)x[(size_t)(r0 + i) * Hs + j], shift[j])), d);
        for (int a = 0; a < 3; a++) Q[(size_t)a * CH * Hs + (size_t)i * Hs + j] = (double)d[a];
      }
    /* q q' = sum over digit pairs (a, b) of d_a d'_b 2^(20 (a + b)); a pair a < b stands
     * for (a, b) and (b, a): G[j, k] + G[k, j] */
    for (int p = 0; p < LS_GRAM_PAIRS; p++) {
      int a, b;
      ls_gram_pair(p, &a, &b);
      const int sym = a != b, s = LS_FX_DIGIT * (a + b);
      gram_gemm(G, Q + (size_t)a * CH * Hs, Q + (size_t)b * CH * Hs, K, H, !sym);
#pragma omp parallel for schedule(dynamic, 16)
      for (int j = 0; j < H; j++)
        for (int k = j; k < H; k++) {
          int64_t v = (int64_t)G[(size_t)j * Hs + k];
          if (sym) v += (int64_t)G[(size_t)k * Hs + j];
          ls_fx_add_shifted(acc + 3 * ((size_t)j * Hs + k), v, s);
        }
    }
  }
}

/* ---- the backend table ------------------------------------------------------------ */
typedef struct {
  int threads, max_seq;
  float *scratch; /* (threads, LS_ATTN_QBLOCK, max_seq) attention scores */
  int precise_gemm; /* ls_cpu_matmul_chunked */
} cpu_ctx_t;

static void *cpu_alloc(ls_backend_t *be, size_t bytes, const char *what) {
  void *p = ls_aligned_alloc(bytes, what);
  if (p) memset(p, 0, bytes); /* padded GEMM rows are read: keep them defined */
  return p;
}
static void cpu_free(ls_backend_t *be, void *p) { free(p); }
static void *cpu_host_alloc(ls_backend_t *be, size_t bytes, const char *what) {
  return ls_aligned_alloc(bytes, what);
}
static int cpu_copy(ls_backend_t *be, void *dst, const void *src, size_t bytes) {
  if (bytes) memcpy(dst, src, bytes);
  return LS_OK;
}
static int cpu_load_weight(ls_backend_t *be, void *dst, const void *src, ls_dtype_t dt,
                           size_t n, int matrix, int src_dev) {
  ls_convert_to_f32(dst, src, dt, n);
  return LS_OK;
}
static int cpu_load_weight_fp8(ls_backend_t *be, void *dst, const void *src, const float *scale,
                               ls_dtype_t dt, int64_t rows, int64_t cols, int br, int bc,
                               int src_dev) {
  ls_cpu_dequant_fp8(dst, src, scale, dt, rows, cols, br, bc);
  return LS_OK;
}
static void cpu_rmsnorm(ls_backend_t *be, float *out, const float *x, const float *w, int T,
                        int H, float eps) {
  ls_cpu_rmsnorm(out, x, w, T, H, eps);
}
static void cpu_layernorm(ls_backend_t *be, float *out, const float *x, const float *w,
                          const float *b, int T, int H, float eps) {
  ls_cpu_layernorm(out, x, w, b, T, H, eps);
}
static void cpu_matmul(ls_backend_t *be, float *y, const float *x, const void *W,
                       const float *b, int T, int n_in, int n_out) {
  if (((cpu_ctx_t *)be->ctx)->precise_gemm) ls_cpu_matmul_chunked(y, x, W, b, T, n_in, n_out);
  else ls_cpu_matmul(y, x, W, b, T, n_in, n_out);
}
static void cpu_rope(ls_backend_t *be, float *x, const int32_t *pos, const float *c,
                     const float *s, int T, int n_heads, int head_dim, int rot_dim) {
  ls_cpu_rope(x, pos, c, s, T, n_heads, head_dim, rot_dim);
}
static void cpu_attention(ls_backend_t *be, float *out, const float *q, const float *k,
                          const float *v, const int32_t *seq_start, const int32_t *seq_len,
                          int n_seq, int max_len, int n_heads, int n_kv, int hd,
                          int window, float scale, float softcap) {
  cpu_ctx_t *c = be->ctx;
  ls_cpu_attention(out, q, k, v, seq_start, seq_len, n_seq, n_heads, n_kv, hd, window, scale,
                   softcap, c->scratch, c->max_seq);
}
static void cpu_swiglu(ls_backend_t *be, float *gate, const float *up, size_t n) {
  ls_cpu_swiglu(gate, up, n);
}
static void cpu_geglu(ls_backend_t *be, float *gate, const float *up, size_t n) {
  ls_cpu_geglu(gate, up, n);
}
static void cpu_gelu(ls_backend_t *be, float *x, size_t n, int approximate) {
  ls_cpu_gelu(x, n, approximate);
}
static void cpu_shift(ls_backend_t *be, float *x, float b, size_t n) { ls_cpu_shift(x, b, n); }
static void cpu_add(ls_backend_t *be, float *y, const float *x, size_t n) { ls_cpu_add(y, x, n); }
static void cpu_zero(ls_backend_t *be, float *x, size_t n) {
  if (n) memset(x, 0, sizeof(float) * n);
}
static void cpu_edit_rows(ls_backend_t *be, float *x, int H, const int32_t *idx, int n,
                          const float *v, float alpha, int ablate) {
  ls_cpu_edit_rows(x, H, idx, n, v, alpha, ablate);
}
static void cpu_concat_heads(ls_backend_t *be, float *out, int d_out, const float *a, int da,
                             int sa, int a_shared, const float *b, int db, int sb, int b_shared,
                             int T, int n_heads) {
  ls_cpu_concat_heads(out, d_out, a, da, sa, a_shared, b, db, sb, b_shared, T, n_heads);
}
static void cpu_gather(ls_backend_t *be, float *dst, const float *src, const int32_t *idx,
                       int n, int W) {
  ls_cpu_gather(dst, src, idx, n, W);
}
static void cpu_scatter_add(ls_backend_t *be, float *dst, const float *src, const int32_t *idx,
                            const float *wts, int n, int W) {
  ls_cpu_scatter_add(dst, src, idx, wts, n, W);
}
static void cpu_pool(ls_backend_t *be, float *pooled, const float *x, const int32_t *seq_start,
                     const int32_t *seq_len, int n_seq, int H, ls_pool_t mode) {
  ls_cpu_pool(pooled, x, seq_start, seq_len, n_seq, H, mode);
}
static void cpu_gram_fixed(ls_backend_t *be, uint64_t *acc, const float *x, int n, int H,
                           const int32_t *shift, void *scratch) {
  ls_cpu_gram_fixed(acc, x, n, H, shift, scratch);
}
static void cpu_destroy(ls_backend_t *be) {
  cpu_ctx_t *c = be->ctx;
  free(c->scratch);
  free(c);
  free(be);
}

static const ls_backend_iface_t cpu_iface = {
    .name = "cpu",
    .alloc = cpu_alloc,
    .free = cpu_free,
    .to_device = cpu_copy,
    .to_host = cpu_copy,
    .host_alloc = cpu_host_alloc,
    .host_free = cpu_free,
    .load_weight = cpu_load_weight,
    .load_weight_fp8 = cpu_load_weight_fp8,
    .rmsnorm = cpu_rmsnorm,
    .layernorm = cpu_layernorm,
    .matmul = cpu_matmul,
    .rope = cpu_rope,
    .attention = cpu_attention,
    .swiglu = cpu_swiglu,
    .geglu = cpu_geglu,
    .gelu = cpu_gelu,
    .shift = cpu_shift,
    .add = cpu_add,
    .zero = cpu_zero,
    .edit_rows = cpu_edit_rows,
    .concat_heads = cpu_concat_heads,
    .gather = cpu_gather,
    .scatter_add = cpu_scatter_add,
    .pool = cpu_pool,
    .gram_fixed = cpu_gram_fixed,
    .sync = NULL,
    .destroy = cpu_destroy,
};

ls_backend_t *ls_backend_cpu_new(int threads, int max_seq) {
  if (threads > 0) omp_set_num_threads(threads);
  openblas_set_num_threads(1); /* threads come from OpenMP, see ls_cpu_matmul */
  ls_backend_t *be = ls_calloc(1, sizeof *be, "cpu backend");
  cpu_ctx_t *c = ls_calloc(1, sizeof *c, "cpu backend");
  if (!be || !c) { free(be); free(c); return NULL; }
  c->threads = omp_get_max_threads();
  c->max_seq = max_seq > 0 ? max_seq : 1;
  c->scratch = ls_aligned_alloc((size_t)c->threads * LS_ATTN_QBLOCK * c->max_seq * sizeof(float),
                                "attention scratch");
  if (!c->scratch) { free(be); free(c); return NULL; }
  be->iface = &cpu_iface;
  be->ctx = c;
  be->row_align = ls_cpu_probe_row_align();
  be->wtype = LS_DT_F32;
  be->compute_dtype = "float32";
  be->caps = LS_BE_DETERMINISTIC | LS_BE_HOST_MEMORY;
  be->host_visible = 1;
  const char *chose = getenv("LS_BLAS_CHOSE"), *core = openblas_get_corename();
  char blas[160];
  if (chose && *chose)
    snprintf(blas, sizeof blas, "OpenBLAS %s kernels (it chose %s for this CPU; set "
             "LS_BLAS_CORE=keep to keep its choice)", core, chose);
  else
    snprintf(blas, sizeof blas, "OpenBLAS %s kernels", core);
  const char *wait = getenv("OMP_WAIT_POLICY");
  snprintf(be->desc, sizeof be->desc, "cpu (float32, %d thread%s per rank, %s, OMP_WAIT_POLICY=%s)",
           c->threads, c->threads > 1 ? "s" : "", blas, wait && *wait ? wait : "unset");
  return be;
}

/* ---- OpenBLAS's kernels ------------------------------------------------------------------------ */
/* OpenBLAS (0.3.21 in Debian 12) picks its kernels from the CPU model when it is loaded.
 * A CPU it does not know (a VM often reports a generic "Intel Xeon Processor") gets its
 * oldest x86-64 kernels: on a 2-core Sapphire Rapids VM its sgemm ran at 63 GFLOP/s with
 * the Prescott kernels it chose and at 304 GFLOP/s with its SkylakeX (AVX-512) ones
 * (tests/bench/RESULTS.md). The choice is made before main runs and read from
 * OPENBLAS_CORETYPE only then, so when OpenBLAS chose pre-AVX2 kernels on a CPU with
 * AVX2 (or AVX-512), layersweep restarts itself once, at the start of main, with
 * OPENBLAS_CORETYPE=Haswell (SkylakeX). OPENBLAS_CORETYPE set by the user, or
 * LS_BLAS_CORE=keep, leave OpenBLAS's choice alone.
 * The same restart sets OMP_WAIT_POLICY=passive unless the user set a policy (libgomp
 * also reads it before main): threads that spin while idle made 2 threads 20x slower
 * than 1 on shared or oversubscribed cores, and between a sweep's parallel regions they
 * would only burn the cores the weight reader, the writer and MPI need. */
static const char *better_core(void) {
  const char *keep = getenv("LS_BLAS_CORE");
  if (getenv("OPENBLAS_CORETYPE") || (keep && strcmp(keep, "keep") == 0)) return NULL;
  static const char *const pre_avx2[] = {"Prescott", "Core2", "Penryn", "Dunnington", "Nehalem",
                                         "Atom", "Sandybridge", "Katmai", "Coppermine",
                                         "Northwood", "Banias", "Opteron", "Barcelona", NULL};
  const char *core = openblas_get_corename();
  int old = 0;
  for (int i = 0; core && pre_avx2[i]; i++) old |= strcasecmp(core, pre_avx2[i]) == 0;
  if (!old) return NULL;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    return "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
  return NULL;
}

static void cpu_preinit(char **argv) {
  if (getenv("LS_PREINIT_DONE")) return; /* restart once */
  const char *want = better_core(), *core = openblas_get_corename();
  const int wait_policy = getenv("OMP_WAIT_POLICY") == NULL;
  if (!want && !wait_policy) return;
  if (want) {
    setenv("OPENBLAS_CORETYPE", want, 1);
    setenv("LS_BLAS_CHOSE", core, 1); /* what OpenBLAS chose itself */
  }
  if (wait_policy) setenv("OMP_WAIT_POLICY", "passive", 1);
  setenv("LS_PREINIT_DONE", "1", 1);
  execv("/proc/self/exe", argv);
  /* could not restart: go on as we are */
  if (want) unsetenv("OPENBLAS_CORETYPE");
  if (wait_policy) unsetenv("OMP_WAIT_POLICY");
}

/* ---- the registry entry ------------------------------------------------------------------ */
static int cpu_probe(int asked, char *why, size_t cap) { return 1; }

static ls_backend_t *cpu_create(const ls_backend_params_t *p) {
  ls_backend_t *be = ls_backend_cpu_new(p->threads, p->max_seq);
  if (be && p->precise_gemm) {
    ((cpu_ctx_t *)be->ctx)->precise_gemm = 1;
    const size_t n = strlen(be->desc);
    snprintf(be->desc + n - 1, sizeof be->desc - n + 1, ", GEMM sums in double over 128-term chunks)");
  }
  return be;
}

const ls_backend_entry_t ls_backend_cpu_entry = {
    .name = "cpu",
    .caps = LS_BE_DETERMINISTIC | LS_BE_HOST_MEMORY,
    .auto_priority = 0,
    .probe = cpu_probe,
    .create = cpu_create,
    .preinit = cpu_preinit,
};
