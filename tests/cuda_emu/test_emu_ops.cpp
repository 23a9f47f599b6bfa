/* test_emu_ops.cpp: the CUDA kernels of kernels/cuda, run on the CPU under the SIMT
 * emulator (cuda_emu.h; the kernels are compiled by emu_kernels.cpp), against the CPU
 * backend's ops (kernels/backend.h table of ls_backend_cpu_new) as the oracle.
 *
 * Every op gets fresh random inputs over a sweep of shapes (T = 1, sizes that are not
 * multiples of 4 or 32, head_dim 2..128 and odd, multi-sequence batches with padding
 * rows of random data between the sequences, seq_len NULL), each twice: with 16-byte
 * aligned pointers (the float4 paths) and with pointers one float off (the scalar
 * fallbacks). Outputs are poisoned with NaN before each run and followed by a NaN
 * canary, so unwritten or overrun elements fail. Checks:
 *   rmsnorm, layernorm, rope (whole and partial rotary), swiglu, geglu, gelu, pool mean: |got - ref| <= atol + rtol |ref|, rtol 1e-5;
 *   add, add_bias, pool last / none: bit-identical (same float operations as the CPU);
 *   convert: to f32 bit-identical to ls_convert_to_f32; to bf16 bit-identical to
 *     round-to-nearest-even (ref_bf16 below); NaN stays NaN; every f16 and bf16 value
 *     and f32 specials, subnormals and ties;
 *   gather, scatter_add (index lists with gaps), zero, concat_heads, edit_rows (add):
 *     bit-identical to the CPU ops; edit_rows (ablate) within rtol;
 *   FP8 dequantization: every code of F8_E4M3 and F8_E5M2 in several block shapes,
 *     float32 bit-identical to ls_cpu_dequant_fp8, bf16 its round-to-nearest-even;
 *   launches of nothing (T = 0, n = 0) return cudaSuccess without launching.
 * Failures print the op's parameters, the first bad element and the NMSE;
 * LS_TEST_VERBOSE=1 prints the worst NMSE of each op.
 * The emulator itself: block reductions with __syncthreads and each shuffle kind,
 * 1D and 3D blocks, shared-memory poisoning at each block start, and (in forked
 * children) that divergent __syncthreads, bad shuffle lanes, deadlocks and empty grids
 * abort with a message. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
extern "C" { /* cmocka.h guards only part of itself */
#include <cmocka.h>
}

#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <string>
#include <vector>

extern "C" {
#include "backend.h"
#include "ls_common.h"
#include "ops_cpu.h"
#include "safetensors.h"
}

#include "ops_cuda.cuh"

#define RTOL 1e-5
#define ATOL 1e-6

static ls_backend_t *g_be; /* the CPU backend: the oracle */
static const cudaStream_t g_st = nullptr;

/* ---- random numbers, poisoned buffers ---------------------------------------------- */

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;

static uint64_t rand64() {
  g_rng ^= g_rng << 13;
  g_rng ^= g_rng >> 7;
  g_rng ^= g_rng << 17;
  return g_rng;
}
static float frand(float lo, float hi) {
  return lo + (hi - lo) * (float)((double)(rand64() >> 11) * (1.0 / 9007199254740992.0));
}
static int irand(int lo, int hi) { return lo + (int)(rand64() % (uint64_t)(hi - lo + 1)); }

static uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}
static float f32_from(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

#define POISON_BITS 0x7fc0deadu
enum { CANARY = 16 };

/* n floats `off` floats past a 16-byte boundary (off 0: the kernels' float4 paths,
 * off 1: their scalar fallbacks), then CANARY floats; everything poisoned (NaN) */
struct fbuf {
  std::vector<float> mem;
  float *p;
  size_t n;
  fbuf(size_t n_, int off) : mem(n_ + (size_t)off + CANARY + 4, f32_from(POISON_BITS)), n(n_) {
    p = (float *)(((uintptr_t)mem.data() + 15) & ~(uintptr_t)15) + off;
  }
  void fill(float lo, float hi) {
    for (size_t i = 0; i < n; i++) p[i] = frand(lo, hi);
  }
  void copy_from(const fbuf &o) { memcpy(p, o.p, n * sizeof(float)); }
};

static void check_canary(const char *ctx, const fbuf &b) {
  for (size_t i = b.n; i < b.n + CANARY; i++)
    if (f32_bits(b.p[i]) != POISON_BITS) {
      fprintf(stderr, "%s: wrote past the end of the output (element %zu of %zu)\n", ctx, i, b.n);
      fail();
    }
}

/* ---- comparison -------------------------------------------------------------------- */

static double g_worst_nmse; /* over the checks of the running test */

/* got[i] finite and |got - ref| <= atol + rtol |ref| for every i < n (rtol = atol = 0:
 * bit-identical); rows of `cols` elements for the message */
static void check_close(const char *ctx, const float *got, const float *ref, size_t n,
                        size_t cols, double rtol, double atol) {
  double num = 0.0, den = 0.0;
  size_t first = n, n_bad = 0;
  for (size_t i = 0; i < n; i++) {
    const double g = got[i], r = ref[i], d = std::fabs(g - r);
    num += std::isfinite(g) ? d * d : INFINITY;
    den += r * r;
    const bool ok = rtol == 0.0 && atol == 0.0 ? f32_bits(got[i]) == f32_bits(ref[i])
                                               : std::isfinite(g) && d <= atol + rtol * std::fabs(r);
    if (!ok && n_bad++ == 0) first = i;
  }
  const double nmse = den > 0.0 ? num / den : num;
  if (n_bad) {
    fprintf(stderr,
            "%s: %zu of %zu elements off; first (row %zu, col %zu): got %.9g want %.9g (|err| "
            "%.3g, tol %.3g); NMSE %.3g\n",
            ctx, n_bad, n, first / cols, first % cols, (double)got[first], (double)ref[first],
            std::fabs((double)got[first] - ref[first]), atol + rtol * std::fabs(ref[first]), nmse);
    fail();
  }
  if (nmse > g_worst_nmse) g_worst_nmse = nmse;
}

static void report(const char *op) {
  if (getenv("LS_TEST_VERBOSE")) fprintf(stderr, "  %s: worst NMSE %.3g\n", op, g_worst_nmse);
  g_worst_nmse = 0.0;
}

#define CHECK_CU(call) assert_int_equal((int)(call), (int)cudaSuccess)

/* ---- rmsnorm ----------------------------------------------------------------------- */

static void test_rmsnorm(void **state) {
  static const int shapes[][2] = {{1, 1},  {1, 32},  {3, 67},   {7, 33},  {5, 256},
                                  {2, 1000}, {16, 768}, {4, 4096}, {2, 4100}};
  for (const auto &sh : shapes)
    for (int off = 0; off < 2; off++) {
      const int T = sh[0], H = sh[1];
      const float eps = off ? 1e-5f : 1e-6f;
      char ctx[128];
      snprintf(ctx, sizeof ctx, "rmsnorm T=%d H=%d eps=%g off=%d", T, H, (double)eps, off);
      fbuf x((size_t)T * H, off), w((size_t)H, off), got((size_t)T * H, off),
          ref((size_t)T * H, off);
      x.fill(-2.0f, 3.0f);
      w.fill(-0.5f, 1.5f);
      CHECK_CU(ls_cu_rmsnorm(g_st, got.p, x.p, w.p, T, H, eps));
      g_be->iface->rmsnorm(g_be, ref.p, x.p, w.p, T, H, eps);
      check_close(ctx, got.p, ref.p, got.n, (size_t)H, RTOL, ATOL);
      check_canary(ctx, got);
    }
  report("rmsnorm");
}

/* ---- layernorm --------------------------------------------------------------------- */

static void test_layernorm(void **state) {
  static const int shapes[][2] = {{1, 1}, {1, 32}, {3, 67}, {7, 33}, {5, 256}, {2, 1000},
                                  {16, 768}, {2, 4100}};
  for (const auto &sh : shapes)
    for (int off = 0; off < 2; off++)
      for (int bias = 0; bias < 2; bias++) {
        const int T = sh[0], H = sh[1];
        char ctx[128];
        snprintf(ctx, sizeof ctx, "layernorm T=%d H=%d bias=%d off=%d", T, H, bias, off);
        fbuf x((size_t)T * H, off), w((size_t)H, off), b((size_t)H, off),
            got((size_t)T * H, off), ref((size_t)T * H, off);
        x.fill(5.0f, 9.0f); /* a mean far from 0: the two-pass variance */
        w.fill(-0.5f, 1.5f);
        b.fill(-1.0f, 1.0f);
        CHECK_CU(ls_cu_layernorm(g_st, got.p, x.p, w.p, bias ? b.p : nullptr, T, H, 1e-5f));
        g_be->iface->layernorm(g_be, ref.p, x.p, w.p, bias ? b.p : nullptr, T, H, 1e-5f);
        /* x - mean rounds at ulp(|x|) (~5e-7 here) in both: scaled by w r, that is the
         * absolute error of outputs near 0 */
        check_close(ctx, got.p, ref.p, got.n, (size_t)H, RTOL, 4e-6);
        check_canary(ctx, got);
      }
  report("layernorm");
}

/* ---- rope ---------------------------------------------------------------------------- */

static void test_rope(void **state) {
  static const int shapes[][5] = {/* T, n_heads, head_dim, max_pos, rotated dims */
                                  {1, 1, 2, 1, 2},    {3, 2, 6, 5, 6},     {7, 2, 8, 3, 8},
                                  {6, 3, 9, 7, 8},    {4, 5, 10, 9, 10},   {5, 3, 64, 17, 64},
                                  {2, 4, 128, 40, 128}, {1, 32, 128, 4, 128},
                                  /* partial rotary (Pythia 0.25, Phi-2 0.4) */
                                  {5, 3, 64, 17, 16}, {4, 2, 80, 9, 32},  {3, 4, 32, 6, 8},
                                  {2, 2, 10, 5, 4}};
  for (const auto &sh : shapes)
    for (int off = 0; off < 2; off++) {
      const int T = sh[0], nh = sh[1], hd = sh[2], max_pos = sh[3], rot = sh[4],
                half_dim = rot / 2;
      char ctx[128];
      snprintf(ctx, sizeof ctx, "rope T=%d n_heads=%d head_dim=%d max_pos=%d rot=%d off=%d", T,
               nh, hd, max_pos, rot, off);
      const size_t n = (size_t)T * nh * hd;
      fbuf x(n, off), got(n, off), ref(n, off), ct((size_t)max_pos * half_dim, off),
          stab((size_t)max_pos * half_dim, off);
      x.fill(-1.5f, 1.5f);
      for (int p = 0; p < max_pos; p++)
        for (int i = 0; i < half_dim; i++) {
          const double ang = p * std::pow(10000.0, -2.0 * i / rot);
          ct.p[(size_t)p * half_dim + i] = (float)std::cos(ang);
          stab.p[(size_t)p * half_dim + i] = (float)std::sin(ang);
        }
      std::vector<int32_t> pos((size_t)T);
      for (int t = 0; t < T; t++) pos[(size_t)t] = irand(0, max_pos - 1);
      got.copy_from(x);
      ref.copy_from(x);
      CHECK_CU(ls_cu_rope(g_st, got.p, pos.data(), ct.p, stab.p, T, nh, hd, rot));
      g_be->iface->rope(g_be, ref.p, pos.data(), ct.p, stab.p, T, nh, hd, rot);
      check_close(ctx, got.p, ref.p, n, (size_t)nh * hd, RTOL, ATOL);
      check_canary(ctx, got);
    }
  report("rope");
}

/* ---- swiglu, add, add_bias ------------------------------------------------------------- */

static const size_t k_ew_sizes[] = {1, 3, 4, 5, 17, 1000, 4099, 70001};

static void test_swiglu(void **state) {
  for (size_t n : k_ew_sizes)
    for (int off = 0; off < 2; off++) {
      char ctx[96];
      snprintf(ctx, sizeof ctx, "swiglu n=%zu off=%d", n, off);
      fbuf gate(n, off), up(n, off), got(n, off), ref(n, off);
      gate.fill(-12.0f, 8.0f);
      up.fill(-2.0f, 2.0f);
      got.copy_from(gate);
      ref.copy_from(gate);
      CHECK_CU(ls_cu_swiglu(g_st, got.p, up.p, n));
      g_be->iface->swiglu(g_be, ref.p, up.p, n);
      check_close(ctx, got.p, ref.p, n, n, RTOL, ATOL);
      check_canary(ctx, got);
    }
  report("swiglu");
}

static void test_geglu(void **state) {
  for (size_t n : k_ew_sizes)
    for (int off = 0; off < 2; off++) {
      char ctx[96];
      snprintf(ctx, sizeof ctx, "geglu n=%zu off=%d", n, off);
      fbuf gate(n, off), up(n, off), got(n, off), ref(n, off);
      gate.fill(-12.0f, 8.0f);
      up.fill(-2.0f, 2.0f);
      got.copy_from(gate);
      ref.copy_from(gate);
      CHECK_CU(ls_cu_geglu(g_st, got.p, up.p, n));
      g_be->iface->geglu(g_be, ref.p, up.p, n);
      check_close(ctx, got.p, ref.p, n, n, RTOL, ATOL);
      check_canary(ctx, got);
    }
  report("geglu");
}

static void test_gelu(void **state) {
  for (size_t n : k_ew_sizes)
    for (int off = 0; off < 2; off++)
      for (int approx = 0; approx < 2; approx++) {
        char ctx[96];
        snprintf(ctx, sizeof ctx, "gelu %s n=%zu off=%d", approx ? "tanh" : "erf", n, off);
        fbuf got(n, off), ref(n, off);
        got.fill(-12.0f, 8.0f);
        ref.copy_from(got);
        CHECK_CU(ls_cu_gelu(g_st, got.p, n, approx));
        g_be->iface->gelu(g_be, ref.p, n, approx);
        check_close(ctx, got.p, ref.p, n, n, RTOL, ATOL);
        check_canary(ctx, got);
      }
  report("gelu");
}

static void test_shift(void **state) {
  for (size_t n : k_ew_sizes)
    for (int off = 0; off < 2; off++) {
      char ctx[96];
      snprintf(ctx, sizeof ctx, "shift n=%zu off=%d", n, off);
      fbuf got(n, off), ref(n, off);
      got.fill(-3.0f, 3.0f);
      ref.copy_from(got);
      CHECK_CU(ls_cu_shift(g_st, got.p, 1.0f, n));
      g_be->iface->shift(g_be, ref.p, 1.0f, n);
      check_close(ctx, got.p, ref.p, n, n, 0.0, 0.0);
      check_canary(ctx, got);
    }
  report("shift");
}

static void test_add(void **state) {
  /* the last size needs more than the launchers' 4096 blocks of 256 threads, with float4
   * and without: the grid-stride loops go round more than once */
  std::vector<size_t> sizes(std::begin(k_ew_sizes), std::end(k_ew_sizes));
  sizes.push_back((size_t)4 * 4096 * 256 + 4003);
  for (size_t n : sizes)
    for (int off = 0; off < 2; off++) {
      char ctx[96];
      snprintf(ctx, sizeof ctx, "add n=%zu off=%d", n, off);
      fbuf y(n, off), x(n, off), got(n, off), ref(n, off);
      y.fill(-3.0f, 3.0f);
      x.fill(-1.0f, 1.0f);
      got.copy_from(y);
      ref.copy_from(y);
      CHECK_CU(ls_cu_add(g_st, got.p, x.p, n));
      g_be->iface->add(g_be, ref.p, x.p, n);
      check_close(ctx, got.p, ref.p, n, n, 0.0, 0.0);
      check_canary(ctx, got);
    }
  report("add");
}

static void test_add_bias(void **state) {
  static const int shapes[][2] = {{1, 1}, {3, 67}, {9, 4}, {13, 33}, {5, 256}, {2, 1001}, {40, 96}};
  for (const auto &sh : shapes)
    for (int off = 0; off < 2; off++) {
      const int T = sh[0], n = sh[1];
      char ctx[96];
      snprintf(ctx, sizeof ctx, "add_bias T=%d n=%d off=%d", T, n, off);
      fbuf y((size_t)T * n, off), b((size_t)n, off), ref((size_t)T * n, off);
      y.fill(-3.0f, 3.0f);
      b.fill(-1.0f, 1.0f);
      for (int t = 0; t < T; t++) /* the bias add of ls_cpu_matmul */
        for (int j = 0; j < n; j++) ref.p[(size_t)t * n + j] = y.p[(size_t)t * n + j] + b.p[j];
      CHECK_CU(ls_cu_add_bias(g_st, y.p, b.p, T, n));
      check_close(ctx, y.p, ref.p, y.n, (size_t)n, 0.0, 0.0);
      check_canary(ctx, y);
    }
  report("add_bias");
}

/* ---- pool ------------------------------------------------------------------------------- */

/* A batch of n_seq sequences of lengths in [1, max_len] starting at multiples of
 * `align`, with padding rows after each (seq_start has n_seq + 1 entries); no padding
 * when `packed`. The first sequence starts at row 0 to 2 * align (rows before it are
 * not part of any sequence). */
struct batch_t {
  std::vector<int32_t> start, len;
  int T;
};
static batch_t make_batch(int n_seq, int max_len, int align, bool packed) {
  batch_t b;
  int row = irand(0, 2) * align;
  for (int s = 0; s < n_seq; s++) {
    const int len = irand(1, max_len);
    b.start.push_back(row);
    b.len.push_back(len);
    row += len;
    if (!packed) row = (row + align - 1) / align * align + irand(0, 1) * align;
  }
  b.start.push_back(row);
  b.T = row;
  return b;
}

static void test_pool(void **state) {
  static const int widths[] = {1, 5, 64, 67, 260};
  static const char *names[] = {"last", "mean", "none"};
  struct {
    int n_seq, max_len, align;
    bool packed, null_len;
  } batches[] = {{1, 1, 1, true, false}, {4, 9, 4, false, false}, {37, 6, 3, false, false},
                 {5, 7, 1, true, true},  {1, 12, 1, true, true}};
  for (const auto &bc : batches)
    for (int H : widths)
      for (int mode = 0; mode < 3; mode++)
        for (int off = 0; off < 2; off++) {
          const batch_t b = make_batch(bc.n_seq, bc.max_len, bc.align, bc.packed);
          size_t out_rows = (size_t)bc.n_seq;
          if (mode == LS_POOL_NONE) {
            out_rows = 0;
            for (int l : b.len) out_rows += (size_t)l;
          }
          char ctx[160];
          snprintf(ctx, sizeof ctx, "pool mode=%s n_seq=%d T=%d H=%d seq_len=%s off=%d",
                   names[mode], bc.n_seq, b.T, H, bc.null_len ? "NULL" : "set", off);
          fbuf x((size_t)b.T * H, off), got(out_rows * H, off), ref(out_rows * H, off);
          x.fill(-2.0f, 2.0f); /* padding rows too: they must not show up */
          CHECK_CU(ls_cu_pool(g_st, got.p, x.p, b.start.data(),
                              bc.null_len ? nullptr : b.len.data(), bc.n_seq, H, mode));
          /* the CPU op needs seq_len; with NULL the lengths are the distances */
          g_be->iface->pool(g_be, ref.p, x.p, b.start.data(), b.len.data(), bc.n_seq, H,
                            (ls_pool_t)mode);
          if (mode == LS_POOL_MEAN)
            check_close(ctx, got.p, ref.p, got.n, (size_t)H, RTOL, ATOL);
          else
            check_close(ctx, got.p, ref.p, got.n, (size_t)H, 0.0, 0.0);
          check_canary(ctx, got);
        }
  report("pool");
}

/* ---- convert ------------------------------------------------------------------------------ */

/* float32 -> bf16 bits, round to nearest even; NaN -> a NaN */
static uint16_t ref_bf16(float f) {
  const uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)(u >> 16 | 0x0040u);
  const uint32_t hi = u >> 16, lo = u & 0xffffu;
  return (uint16_t)(lo > 0x8000u || (lo == 0x8000u && (hi & 1u)) ? hi + 1u : hi);
}
static bool bf16_is_nan(uint16_t h) { return (h & 0x7f80u) == 0x7f80u && (h & 0x7fu); }

/* n source values of type st (raw bytes), covering every 16-bit pattern / f32 specials */
static std::vector<unsigned char> make_src(int st, size_t n) {
  std::vector<unsigned char> v(n * (st == LS_CU_F32 ? 4 : 2));
  if (st != LS_CU_F32) {
    for (size_t i = 0; i < n; i++) {
      const uint16_t h = (uint16_t)(i * 40503u); /* odd multiplier: all patterns */
      memcpy(&v[2 * i], &h, 2);
    }
    return v;
  }
  static const uint32_t special[] = {
      0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u, 0x7f800001u,
      0xffffffffu, 0x7f7fffffu, 0xff7fffffu, 0x7f7f7fffu, 0x00000001u, 0x00008000u,
      0x00018000u, 0x007fffffu, 0x00800000u, 0x3f808000u, 0x3f818000u, 0x3f80ffffu,
      0x3f807fffu, 0xbf818000u, 0x3f800001u, 0x47efffffu, 0x33800000u, 0x00010000u};
  for (size_t i = 0; i < n; i++) {
    uint32_t u;
    if (i < sizeof special / sizeof special[0]) u = special[i];
    else if (i % 3 == 0) u = ((uint32_t)rand64() & 0xffff0000u) | (rand64() & 1u ? 0x8000u : 0u); /* ties */
    else if (i % 3 == 1) u = f32_bits(frand(-4.0f, 4.0f));
    else u = (uint32_t)rand64();
    memcpy(&v[4 * i], &u, 4);
  }
  return v;
}

static void test_convert(void **state) {
  static const int srcs[] = {LS_CU_F32, LS_CU_F16, LS_CU_BF16};
  static const ls_dtype_t st_dt[] = {LS_DT_F32, LS_DT_F16, LS_DT_BF16};
  static const char *names[] = {"f32", "f16", "bf16"};
  for (int st : srcs)
    for (int dt : {LS_CU_F32, LS_CU_BF16})
      for (int off = 0; off < 2; off++) {
        const size_t n = off ? 65533 : 65536;
        char ctx[96];
        snprintf(ctx, sizeof ctx, "convert %s -> %s n=%zu off=%d", names[st], names[dt], n, off);
        const size_t ssz = st == LS_CU_F32 ? 4 : 2, dsz = dt == LS_CU_F32 ? 4 : 2;
        std::vector<unsigned char> src = make_src(st, n + 1), dst((n + 1 + CANARY) * dsz, 0xA5);
        const unsigned char *s = src.data() + off * ssz; /* off: not 4-element aligned */
        unsigned char *d = dst.data() + off * dsz;
        CHECK_CU(ls_cu_convert(g_st, d, dt, s, st, n));
        std::vector<float> wide(n); /* exact widening: the project's reader */
        ls_convert_to_f32(wide.data(), s, st_dt[st], n);
        for (size_t i = 0; i < n; i++) {
          uint32_t got, want;
          bool nan_ok;
          if (dt == LS_CU_F32) {
            float g;
            memcpy(&g, d + 4 * i, 4);
            got = f32_bits(g);
            want = f32_bits(wide[i]);
            nan_ok = std::isnan(g) && std::isnan(wide[i]) && st != LS_CU_F32;
          } else {
            uint16_t g;
            memcpy(&g, d + 2 * i, 2);
            got = g;
            uint16_t same;
            memcpy(&same, s + 2 * i, 2);
            want = st == LS_CU_BF16 ? same : ref_bf16(wide[i]);
            nan_ok = bf16_is_nan(g) && bf16_is_nan((uint16_t)want) && st != LS_CU_BF16;
          }
          if (got != want && !nan_ok) {
            uint32_t sbits = 0;
            memcpy(&sbits, s + ssz * i, ssz);
            fprintf(stderr, "%s: element %zu: source bits 0x%x (%.9g) gave bits 0x%x, want 0x%x\n",
                    ctx, i, sbits, (double)wide[i], got, want);
            fail();
          }
        }
        for (size_t i = n * dsz; i < (n + CANARY) * dsz; i++)
          if (d[i] != 0xA5) {
            fprintf(stderr, "%s: wrote past the end of the output\n", ctx);
            fail();
          }
      }
  assert_int_equal((int)ls_cu_convert(g_st, nullptr, LS_CU_F16, nullptr, LS_CU_F32, 4),
                   (int)cudaErrorInvalidValue);
  assert_int_equal((int)ls_cu_convert(g_st, nullptr, LS_CU_F32, nullptr, 7, 4),
                   (int)cudaErrorInvalidValue);
}

/* ---- mixture-of-experts rows, FP8 dequantization ------------------------------------------ */

/* gather / scatter_add against the CPU ops bit for bit: index lists with gaps (-1), a
 * scatter whose rows are distinct, row widths that are not multiples of 4; zero */
static void test_moe_rows(void **state) {
  for (int W : {1, 7, 64, 300})
    for (int n : {1, 5, 40}) {
      char ctx[96];
      snprintf(ctx, sizeof ctx, "gather/scatter W=%d n=%d", W, n);
      const int R = n + 3; /* source rows */
      fbuf src((size_t)R * W, 0), gd((size_t)n * W, 0), gc((size_t)n * W, 0);
      src.fill(-2.0f, 2.0f);
      gd.fill(-1.0f, 1.0f);
      gc.copy_from(gd); /* gap rows keep what they held */
      std::vector<int32_t> idx(n);
      std::vector<int32_t> perm(R);
      for (int i = 0; i < R; i++) perm[i] = i;
      for (int i = R - 1; i > 0; i--) std::swap(perm[i], perm[irand(0, i)]);
      for (int i = 0; i < n; i++) idx[i] = irand(0, 3) == 0 ? -1 : perm[i];
      CHECK_CU(ls_cu_gather(g_st, gd.p, src.p, idx.data(), n, W));
      g_be->iface->gather(g_be, gc.p, src.p, idx.data(), n, W);
      check_close(ctx, gd.p, gc.p, (size_t)n * W, (size_t)W, 0.0, 0.0);
      check_canary(ctx, gd);
      fbuf wts(n, 0), dd((size_t)R * W, 0), dc((size_t)R * W, 0);
      wts.fill(0.0f, 1.0f);
      dd.fill(-1.0f, 1.0f);
      dc.copy_from(dd);
      CHECK_CU(ls_cu_scatter_add(g_st, dd.p, gd.p, idx.data(), wts.p, n, W));
      g_be->iface->scatter_add(g_be, dc.p, gd.p, idx.data(), wts.p, n, W);
      check_close(ctx, dd.p, dc.p, (size_t)R * W, (size_t)W, 0.0, 0.0);
      check_canary(ctx, dd);
      CHECK_CU(ls_cu_zero(g_st, dd.p, (size_t)R * W));
      for (size_t i = 0; i < (size_t)R * W; i++) assert_true(dd.p[i] == 0.0f);
      check_canary(ctx, dd);
    }
  report("gather/scatter_add");
}

/* concat_heads against the CPU op bit for bit: per-head and shared (one head for all)
 * parts, a missing second part (zeros), zero padding up to d_out, input head strides
 * wider than the part taken (dropping v's padding) */
static void test_concat_heads(void **state) {
  struct { int nh, da, sa, ash, db, sb, bsh, dout, has_b; } cases[] = {
      {4, 8, 8, 1, 12, 12, 0, 20, 1},   /* MLA k: shared rope part, per-head nope part */
      {3, 10, 10, 0, 0, 0, 0, 20, 0},   /* v padded with zeros */
      {5, 10, 20, 0, 0, 0, 0, 10, 0},   /* attention output, padding dropped */
      {2, 7, 9, 0, 5, 6, 1, 300, 1},    /* odd widths, more than a block of threads */
  };
  for (auto c : cases)
    for (int T : {1, 13}) {
      char ctx[128];
      snprintf(ctx, sizeof ctx, "concat_heads nh=%d da=%d db=%d dout=%d T=%d", c.nh, c.da, c.db,
               c.dout, T);
      fbuf a((size_t)T * (c.ash ? 1 : c.nh) * c.sa, 0), b((size_t)T * (c.bsh ? 1 : c.nh) * (c.sb ? c.sb : 1), 0);
      a.fill(-1.0f, 1.0f);
      b.fill(-1.0f, 1.0f);
      const size_t n = (size_t)T * c.nh * c.dout;
      fbuf got(n, 0), ref(n, 0);
      CHECK_CU(ls_cu_concat_heads(g_st, got.p, c.dout, a.p, c.da, c.sa, c.ash, c.has_b ? b.p : nullptr,
                                  c.db, c.sb, c.bsh, T, c.nh));
      g_be->iface->concat_heads(g_be, ref.p, c.dout, a.p, c.da, c.sa, c.ash, c.has_b ? b.p : nullptr,
                                c.db, c.sb, c.bsh, T, c.nh);
      check_close(ctx, got.p, ref.p, n, (size_t)c.dout, 0.0, 0.0);
      check_canary(ctx, got);
    }
  report("concat_heads");
}

/* edit_rows (steering) against the CPU op: add (bit-identical: one float multiply-add per
 * element), ablate (the dot product's order differs: rtol), every row and a row list */
static void test_edit_rows(void **state) {
  for (int H : {1, 37, 64, 1000})
    for (int ablate = 0; ablate < 2; ablate++)
      for (int listed = 0; listed < 2; listed++) {
        char ctx[96];
        snprintf(ctx, sizeof ctx, "edit_rows H=%d ablate=%d listed=%d", H, ablate, listed);
        const int T = 9;
        fbuf x((size_t)T * H, 0), ref((size_t)T * H, 0), v(H, 0);
        x.fill(-2.0f, 2.0f);
        ref.copy_from(x);
        v.fill(-1.0f, 1.0f);
        if (ablate) {
          double nn = 0;
          for (int i = 0; i < H; i++) nn += (double)v.p[i] * v.p[i];
          for (int i = 0; i < H; i++) v.p[i] = (float)(v.p[i] / std::sqrt(nn));
        }
        const int32_t rows[3] = {8, 0, 4};
        const int32_t *idx = listed ? rows : nullptr;
        const int n = listed ? 3 : T;
        CHECK_CU(ls_cu_edit_rows(g_st, x.p, H, idx, n, v.p, 1.5f, ablate));
        g_be->iface->edit_rows(g_be, ref.p, H, idx, n, v.p, 1.5f, ablate);
        check_close(ctx, x.p, ref.p, (size_t)T * H, (size_t)H, ablate ? 1e-5 : 0.0, ablate ? 1e-6 : 0.0);
        check_canary(ctx, x);
      }
  report("edit_rows");
}

/* every FP8 code, as F8_E4M3 and F8_E5M2, in weights of several block shapes (partial
 * edge blocks): float32 output bit-identical to the CPU op, bf16 the CPU result rounded
 * to nearest even */
static void test_dequant_fp8(void **state) {
  struct { int rows, cols, br, bc; } shapes[] = {{16, 16, 16, 16}, {37, 70, 16, 32},
                                                 {5, 300, 128, 128}, {64, 3, 7, 2}};
  for (auto sh : shapes)
    for (ls_dtype_t dt : {LS_DT_F8_E4M3, LS_DT_F8_E5M2}) {
      char ctx[128];
      snprintf(ctx, sizeof ctx, "dequant %s %dx%d blocks %dx%d", ls_dtype_name(dt), sh.rows,
               sh.cols, sh.br, sh.bc);
      const size_t n = (size_t)sh.rows * sh.cols;
      const size_t ns = (size_t)((sh.rows + sh.br - 1) / sh.br) * ((sh.cols + sh.bc - 1) / sh.bc);
      std::vector<uint8_t> q(n);
      for (size_t i = 0; i < n; i++) q[i] = (uint8_t)(i * 37 + 11); /* every code */
      fbuf scale(ns, 0), got(n, 0), ref(n, 0);
      scale.fill(0.001f, 4.0f);
      ls_cpu_dequant_fp8(ref.p, q.data(), scale.p, dt, sh.rows, sh.cols, sh.br, sh.bc);
      CHECK_CU(ls_cu_dequant_fp8(g_st, got.p, LS_CU_F32, q.data(), scale.p,
                                 dt == LS_DT_F8_E4M3, sh.rows, sh.cols, sh.br, sh.bc));
      for (size_t i = 0; i < n; i++)
        if (f32_bits(got.p[i]) != f32_bits(ref.p[i]) && !(std::isnan(got.p[i]) && std::isnan(ref.p[i]))) {
          fprintf(stderr, "%s: element %zu (code 0x%02x): got %.9g want %.9g\n", ctx, i, q[i],
                  (double)got.p[i], (double)ref.p[i]);
          fail();
        }
      check_canary(ctx, got);
      std::vector<uint16_t> b16(n + CANARY, 0xA5A5);
      CHECK_CU(ls_cu_dequant_fp8(g_st, b16.data(), LS_CU_BF16, q.data(), scale.p,
                                 dt == LS_DT_F8_E4M3, sh.rows, sh.cols, sh.br, sh.bc));
      for (size_t i = 0; i < n; i++)
        if (b16[i] != ref_bf16(ref.p[i]) && !(bf16_is_nan(b16[i]) && std::isnan(ref.p[i]))) {
          fprintf(stderr, "%s: bf16 element %zu: got 0x%04x want 0x%04x\n", ctx, i, b16[i],
                  ref_bf16(ref.p[i]));
          fail();
        }
      for (size_t i = n; i < n + CANARY; i++) assert_int_equal(b16[i], 0xA5A5);
    }
}

/* ---- launches of nothing ----------------------------------------------------------------- */

/* The emulator aborts on an empty grid, so these also check that nothing is launched. */
static void test_empty(void **state) {
  float f = 0.0f;
  int32_t i0[2] = {0, 0};
  CHECK_CU(ls_cu_rmsnorm(g_st, &f, &f, &f, 0, 64, 1e-6f));
  CHECK_CU(ls_cu_rope(g_st, &f, i0, &f, &f, 0, 4, 64, 64));
  CHECK_CU(ls_cu_layernorm(g_st, &f, &f, &f, &f, 0, 64, 1e-5f));
  CHECK_CU(ls_cu_gelu(g_st, &f, 0, 1));
  CHECK_CU(ls_cu_swiglu(g_st, &f, &f, 0));
  CHECK_CU(ls_cu_add(g_st, &f, &f, 0));
  CHECK_CU(ls_cu_add_bias(g_st, &f, &f, 0, 64));
  CHECK_CU(ls_cu_add_bias(g_st, &f, &f, 3, 0));
  for (int mode = 0; mode < 3; mode++) CHECK_CU(ls_cu_pool(g_st, &f, &f, i0, i0, 0, 8, mode));
  CHECK_CU(ls_cu_convert(g_st, &f, LS_CU_BF16, &f, LS_CU_F32, 0));
}

/* ---- the emulator itself ------------------------------------------------------------------- */

/* Per block: out[blockIdx.x] = sum over threads of (linear thread id + 1 + blockIdx.x),
 * by xor shuffles + shared memory + __syncthreads; every other shuffle kind is
 * checked against it inside the kernel (bad counts mismatches). */
static __global__ void emu_reduce_kernel(float *out, int *bad) {
  __shared__ float red[32];
  LS_DYN_SMEM(int, ring); /* (threads) */
  const int nt = (int)(blockDim.x * blockDim.y * blockDim.z);
  const int tid = (int)(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
  const int lane = tid % 32, warp = tid / 32;
  const float v = (float)(tid + 1 + (int)blockIdx.x);
  float x = v, d = v, up = v;
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  for (int o = 16; o > 0; o >>= 1) d += __shfl_down_sync(0xffffffffu, d, (unsigned)o);
  if (__shfl_sync(0xffffffffu, d, 0) != x) atomicAdd(bad, 1); /* lane 0 holds the sum */
  for (int o = 1; o < 32; o <<= 1) { /* inclusive prefix sum */
    const float t = __shfl_up_sync(0xffffffffu, up, (unsigned)o);
    if (lane >= o) up += t;
  }
  const float base = (float)(warp * 32 + 1 + (int)blockIdx.x);
  if (up != (lane + 1) * base + (float)(lane * (lane + 1) / 2)) atomicAdd(bad, 1);
  if (__shfl_sync(0xffffffffu, v, 0, 8) != base + (float)(lane / 8 * 8)) atomicAdd(bad, 1);
  ring[tid] = tid; /* neighbours' writes are visible after __syncthreads */
  if (lane == 0) red[warp] = x;
  __syncthreads();
  if (ring[(tid + 1) % nt] != (tid + 1) % nt) atomicAdd(bad, 1);
  if (warp == 0) {
    float s = lane < nt / 32 ? red[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) out[blockIdx.x] = s;
  }
}

static void test_emu_reduce(void **state) {
  static const unsigned shapes[][3] = {{32, 1, 1}, {96, 1, 1}, {1024, 1, 1}, {8, 4, 4}, {32, 2, 3}};
  for (const auto &sh : shapes) {
    const dim3 block(sh[0], sh[1], sh[2]);
    const int nt = (int)(sh[0] * sh[1] * sh[2]), grid = 3;
    float out[grid];
    int bad = 0;
    float *o = out;
    int *b = &bad;
    LS_LAUNCH(emu_reduce_kernel, dim3(grid), block, sizeof(int) * (size_t)nt, g_st, o, b);
    assert_int_equal(bad, 0);
    for (int g = 0; g < grid; g++) {
      const double want = (double)nt * (nt + 1) / 2 + (double)nt * g;
      if (out[g] != (float)want) {
        fprintf(stderr, "emu reduce block (%u,%u,%u) grid %d: block %d sum %.9g, want %.9g\n",
                sh[0], sh[1], sh[2], grid, g, (double)out[g], want);
        fail();
      }
    }
  }
}

/* out (grid, 64): what each thread read from dynamic shared memory before any write */
static __global__ void emu_poison_kernel(float *out) {
  LS_DYN_SMEM(float, s); /* (blockDim.x) */
  const int t = (int)threadIdx.x;
  out[blockIdx.x * blockDim.x + threadIdx.x] = s[t];
  __syncthreads();
  s[t] = 1.0f; /* must not be seen by the next block */
}

static void test_emu_smem_poison(void **state) {
  float out[3 * 64];
  float *o = out;
  LS_LAUNCH(emu_poison_kernel, dim3(3), dim3(64), 64 * sizeof(float), g_st, o);
  for (int i = 0; i < 3 * 64; i++) assert_int_equal(f32_bits(out[i]), 0xffffffffu);
}

/* Run fn in a child process: it must abort with a message containing `want`. */
static void expect_abort(const char *what, void (*fn)(), const char *want) {
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  fflush(stderr);
  const pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    const struct rlimit no_core = {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    dup2(fds[1], 2);
    close(fds[0]);
    fn();
    _exit(0);
  }
  close(fds[1]);
  std::string msg;
  char buf[512];
  ssize_t k;
  while ((k = read(fds[0], buf, sizeof buf)) > 0) msg.append(buf, (size_t)k);
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGABRT || msg.find(want) == std::string::npos) {
    fprintf(stderr, "emulator check '%s': want an abort saying '%s'; got %s, stderr:\n%s\n", what,
            want, WIFSIGNALED(status) ? "a signal" : "a normal exit", msg.c_str());
    fail();
  }
  if (getenv("LS_TEST_VERBOSE")) fprintf(stderr, "  %s (expected):\n%s", what, msg.c_str());
}

/* (the int argument: LS_LAUNCH needs one) */
static __global__ void emu_divergent_sync_kernel(int) {
  if (threadIdx.x == 5) return;
  __syncthreads();
}
static __global__ void emu_partial_warp_kernel(int) { /* 48 threads: lanes 16..31 of warp 1 missing */
  (void)__shfl_xor_sync(0xffffffffu, 1.0f, 16);
}
static __global__ void emu_deadlock_kernel(int) {
  if (threadIdx.x == 0) __syncwarp(3u); /* lane 1 never comes: it waits at __syncthreads */
  else __syncthreads();
}
static __global__ void emu_mask_kernel(int) {
  if (threadIdx.x < 16) __syncwarp(0xffffffffu);
  else __syncwarp(0xffff0000u); /* disagrees with the lanes below about the mask */
}
static void run_divergent_sync() {
  LS_LAUNCH(emu_divergent_sync_kernel, dim3(1), dim3(64), 0, g_st, 0);
}
static void run_partial_warp() { LS_LAUNCH(emu_partial_warp_kernel, dim3(1), dim3(48), 0, g_st, 0); }
static void run_deadlock() { LS_LAUNCH(emu_deadlock_kernel, dim3(1), dim3(32), 0, g_st, 0); }
static void run_mask() { LS_LAUNCH(emu_mask_kernel, dim3(1), dim3(32), 0, g_st, 0); }
static void run_empty_grid() { LS_LAUNCH(emu_deadlock_kernel, dim3(0), dim3(32), 0, g_st, 0); }

static void test_emu_errors(void **state) {
  expect_abort("thread exits, others at __syncthreads", run_divergent_sync, "__syncthreads");
  expect_abort("shuffle from a missing lane", run_partial_warp, "not taking part");
  expect_abort("deadlock", run_deadlock, "deadlock");
  expect_abort("warp op masks disagree", run_mask, "same mask");
  expect_abort("empty grid", run_empty_grid, "invalid grid");
}

/* ---- main ------------------------------------------------------------------------------------ */

static int setup(void **state) {
  g_be = ls_backend_cpu_new(1, 64);
  return g_be ? 0 : -1;
}
static int teardown(void **state) {
  ls_backend_free(g_be);
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_emu_reduce),  cmocka_unit_test(test_emu_smem_poison),
      cmocka_unit_test(test_emu_errors),  cmocka_unit_test(test_rmsnorm),
      cmocka_unit_test(test_layernorm),   cmocka_unit_test(test_gelu),
      cmocka_unit_test(test_rope),        cmocka_unit_test(test_swiglu),
      cmocka_unit_test(test_geglu),       cmocka_unit_test(test_shift),
      cmocka_unit_test(test_add),         cmocka_unit_test(test_add_bias),
      cmocka_unit_test(test_pool),        cmocka_unit_test(test_convert),
      cmocka_unit_test(test_empty),       cmocka_unit_test(test_moe_rows),
      cmocka_unit_test(test_dequant_fp8), cmocka_unit_test(test_concat_heads),
      cmocka_unit_test(test_edit_rows),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
