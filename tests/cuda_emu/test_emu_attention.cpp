/* test_emu_attention.cpp: ls_cu_attention (kernels/cuda/attention.cu) run under the
 * SIMT emulator (tests/cuda_emu/cuda_emu.h) against the CPU backend's attention op
 * (kernels/cpu/ops_cpu.c, the reference).
 *
 * Cases: one sequence of 1, 7, 70 and 200 rows; packed sequences of mixed lengths
 * (1..150) without padding (seq_len NULL), with seq_len but no padding rows, and with
 * padding rows (starts aligned to 8, 16 or 48 rows: whole query tiles of padding);
 * GQA 4:1, 2:1, 1:1; head_dim 8, 16, 18, 40, 80, 96, 128, 256 (not multiples of 32
 * or 4 included); window 0, 1, 3, 5, 7, 32, and one longer than the sequence; q/k/v
 * 16-byte aligned (float4 loads) and misaligned by one float (scalar loads).
 * q/k/v are fresh random numbers; both outputs are poisoned with NaN first and
 * followed by a NaN canary, so unwritten and overrun elements fail. Every element
 * must be finite and within |gpu - cpu| <= ATOL + RTOL * |cpu|; a failure prints the
 * case, the first bad element, max error and NMSE. */
#include "ops_cuda.cuh"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
extern "C" { /* this cmocka.h has no C++ guards */
#include <cmocka.h>
}

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

extern "C" {
#include "backend.h"
#include "ops_cpu.h"
}

#define RTOL 1e-5
#define ATOL 1e-6
#define CANARY 16 /* poisoned floats after each output */
#define MAX_SEQS 8

/* ---- random numbers, poison ------------------------------------------------------------- */
static uint64_t g_rng = 0x9e3779b97f4a7c15ull;

static float frand(float lo, float hi) {
  g_rng ^= g_rng << 13;
  g_rng ^= g_rng >> 7;
  g_rng ^= g_rng << 17;
  return lo + (hi - lo) * (float)((double)(g_rng >> 11) * (1.0 / 9007199254740992.0));
}

static const uint32_t k_poison_bits = 0x7fc0deadu;

static float poison() {
  float f;
  std::memcpy(&f, &k_poison_bits, 4);
  return f;
}

static bool is_poison(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u == k_poison_bits;
}

/* ---- cases --------------------------------------------------------------------------- */
struct attn_case_t {
  const char *name;
  int n_seq;
  int len[MAX_SEQS]; /* real rows of each sequence */
  int align;         /* 0: seq_len NULL, no padding; else starts at multiples of align */
  int n_heads, n_kv, hd, window;
  int misalign; /* q, k, v one float past a 16-byte boundary: scalar loads */
  float scale, softcap; /* 0: 1 / sqrt(hd), none (Gemma 2 sets both) */
};

static const attn_case_t k_cases[] = {
    {"single_1", 1, {1}, 0, 4, 1, 16, 0, 0, 0, 0},
    {"single_7", 1, {7}, 0, 2, 1, 8, 0, 0, 0, 0},
    {"single_70", 1, {70}, 0, 4, 2, 80, 0, 0, 0, 0},
    {"single_200_hd128", 1, {200}, 0, 2, 2, 128, 0, 0, 0, 0},
    {"single_200_w32", 1, {200}, 0, 4, 1, 16, 32, 0, 0, 0},
    {"single_70_w5", 1, {70}, 0, 2, 1, 128, 5, 0, 0, 0},
    {"single_20_w1", 1, {20}, 0, 2, 1, 16, 1, 0, 0, 0},
    {"single_9_w50", 1, {9}, 0, 2, 1, 16, 50, 0, 0, 0},
    {"packed_nopad", 5, {1, 150, 17, 64, 33}, 0, 4, 1, 16, 0, 0, 0, 0},
    {"packed_seqlen_align1", 3, {31, 33, 16}, 1, 2, 1, 16, 0, 0, 0, 0},
    {"packed_pad8", 6, {5, 150, 1, 96, 40, 23}, 8, 2, 1, 80, 0, 0, 0, 0},
    {"packed_pad48_w32", 4, {3, 100, 49, 1}, 48, 4, 4, 8, 32, 0, 0, 0},
    {"packed_pad16_w5", 3, {150, 12, 77}, 16, 4, 2, 128, 5, 0, 0, 0},
    {"packed_pad16_w32", 4, {64, 1, 90, 30}, 16, 2, 1, 80, 32, 0, 0, 0},
    {"hd256", 2, {40, 7}, 8, 2, 1, 256, 0, 0, 0, 0},
    {"hd96_misaligned", 2, {45, 20}, 16, 2, 1, 96, 0, 1, 0, 0},
    {"hd18_scalar_w5", 2, {30, 9}, 0, 2, 1, 18, 5, 0, 0, 0},
    {"hd40", 1, {33}, 0, 2, 2, 40, 0, 0, 0, 0},
    {"gqa4_hd128", 2, {150, 37}, 16, 8, 2, 128, 0, 0, 0, 0},
    {"short_seqs_w7", 8, {1, 2, 3, 5, 8, 13, 21, 34}, 8, 4, 1, 16, 7, 0, 0, 0},
    {"packed_w3", 3, {60, 4, 25}, 0, 2, 2, 80, 3, 0, 0, 0},
    {"gemma2_scale_softcap50", 3, {60, 4, 25}, 8, 4, 2, 64, 16, 0, 0.0625f, 50.0f},
    {"gemma2_softcap2_biting", 2, {45, 20}, 0, 2, 1, 32, 0, 0, 1.5f, 2.0f},
};

static void print_case(const attn_case_t *c) {
  std::printf("case %s: n_seq %d lens", c->name, c->n_seq);
  for (int s = 0; s < c->n_seq; s++) std::printf(" %d", c->len[s]);
  std::printf(" align %d heads %d kv %d hd %d window %d misalign %d\n", c->align, c->n_heads,
              c->n_kv, c->hd, c->window, c->misalign);
}

/* ---- one case -------------------------------------------------------------------------- */
/* returns 1 if the case passes */
static int run_case(const attn_case_t *c) {
  /* layout: sequence s at seq_start[s], extent rounded up to align */
  std::vector<int32_t> seq_start(c->n_seq + 1), seq_len(c->n_seq);
  int T = 0, max_len = 0;
  for (int s = 0; s < c->n_seq; s++) {
    const int ext = c->align > 0 ? (c->len[s] + c->align - 1) / c->align * c->align : c->len[s];
    seq_start[s] = T;
    seq_len[s] = c->len[s];
    T += ext;
    max_len = ext > max_len ? ext : max_len;
  }
  seq_start[c->n_seq] = T;
  const int32_t *lens = c->align > 0 ? seq_len.data() : NULL;

  const size_t qn = (size_t)T * c->n_heads * c->hd, kn = (size_t)T * c->n_kv * c->hd;
  /* float vectors' data are 16-byte aligned (operator new); +4 leaves room to misalign */
  std::vector<float> qbuf(qn + 4), kbuf(kn + 4), vbuf(kn + 4);
  float *q = qbuf.data() + (c->misalign ? 1 : 0); /* (T, n_heads * hd) */
  float *k = kbuf.data() + (c->misalign ? 1 : 0); /* (T, n_kv * hd) */
  float *v = vbuf.data() + (c->misalign ? 1 : 0); /* (T, n_kv * hd) */
  for (size_t i = 0; i < qn; i++) q[i] = frand(-2.0f, 2.0f);
  for (size_t i = 0; i < kn; i++) k[i] = frand(-2.0f, 2.0f);
  for (size_t i = 0; i < kn; i++) v[i] = frand(-1.0f, 1.0f);
  std::vector<float> got(qn + CANARY, poison()), ref(qn + CANARY, poison());

  ls_backend_t *cpu = ls_backend_cpu_new(1, max_len);
  assert_non_null(cpu);
  cpu->iface->attention(cpu, ref.data(), q, k, v, seq_start.data(), lens, c->n_seq, max_len,
                        c->n_heads, c->n_kv, c->hd, c->window, c->scale, c->softcap);
  ls_backend_free(cpu);

  const auto t0 = std::chrono::steady_clock::now();
  const cudaError_t e = ls_cu_attention((cudaStream_t)0, got.data(), q, k, v, seq_start.data(),
                                        lens, c->n_seq, max_len, c->n_heads, c->n_kv, c->hd,
                                        c->window, c->scale, c->softcap);
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (e != cudaSuccess) {
    print_case(c);
    std::printf("  ls_cu_attention returned %d\n", (int)e);
    return 0;
  }

  /* compare every element; canaries untouched */
  const int qs = c->n_heads * c->hd;
  double max_err = 0.0, max_use = 0.0, err2 = 0.0, ref2 = 0.0; /* use: err / tolerance */
  size_t n_bad = 0, first_bad = 0;
  for (size_t i = 0; i < qn; i++) {
    const double a = got[i], b = ref[i];
    const double err = std::fabs(a - b);
    const bool ok = std::isfinite(a) && std::isfinite(b) && err <= ATOL + RTOL * std::fabs(b);
    if (!ok && n_bad++ == 0) first_bad = i;
    if (std::isfinite(err)) {
      const double use = err / (ATOL + RTOL * std::fabs(b));
      max_err = err > max_err ? err : max_err;
      max_use = use > max_use ? use : max_use;
      err2 += err * err;
    }
    ref2 += b * b;
  }
  size_t canary_bad = 0;
  for (size_t i = qn; i < qn + CANARY; i++) canary_bad += !is_poison(got[i]);
  const double nmse = ref2 > 0.0 ? err2 / ref2 : err2;
  std::printf("  %-22s T %4d max_len %3d  max|err| %.3g (%.2f of tol)  NMSE %.3g  %.2f s\n",
              c->name, T, max_len, max_err, max_use, nmse, secs);
  if (n_bad || canary_bad) {
    print_case(c);
    const int row = (int)(first_bad / qs), col = (int)(first_bad % qs);
    std::printf("  %zu bad elements (of %zu), %zu canary floats overwritten; first: row %d "
                "head %d d %d: got %.9g ref %.9g; max|err| %.3g NMSE %.3g\n",
                n_bad, qn, canary_bad, row, col / c->hd, col % c->hd, got[first_bad],
                ref[first_bad], max_err, nmse);
    return 0;
  }
  return 1;
}

static void test_attention_cases(void **state) {
  (void)state;
  int n_fail = 0;
  for (const attn_case_t &c : k_cases) n_fail += !run_case(&c);
  assert_int_equal(n_fail, 0);
}

/* argument checks: nothing to do is success (and launches nothing), bad shapes fail */
static void test_attention_args(void **state) {
  (void)state;
  float buf[64] = {0};
  const int32_t start[2] = {0, 1};
  assert_int_equal(ls_cu_attention((cudaStream_t)0, buf, buf, buf, buf, start, NULL, 0, 1, 1, 1,
                                   16, 0, 0.0f, 0.0f),
                   cudaSuccess);
  assert_int_equal(ls_cu_attention((cudaStream_t)0, buf, buf, buf, buf, start, NULL, 1, 0, 1, 1,
                                   16, 0, 0.0f, 0.0f),
                   cudaSuccess);
  assert_int_equal(ls_cu_attention((cudaStream_t)0, buf, buf, buf, buf, start, NULL, 1, 1, 1, 1,
                                   300, 0, 0.0f, 0.0f),
                   cudaErrorInvalidValue);
  assert_int_equal(ls_cu_attention((cudaStream_t)0, buf, buf, buf, buf, start, NULL, 1, 1, 3, 2,
                                   16, 0, 0.0f, 0.0f),
                   cudaErrorInvalidValue);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_attention_args),
      cmocka_unit_test(test_attention_cases),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
