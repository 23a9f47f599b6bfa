/* bench_cublas.cu: the device's bf16 GEMM rate through cuBLAS, the reference for
 * layersweep's model FLOP utilisation on the GPU (tests/bench/bench_gpu.sh).
 *
 * Times cublasGemmEx exactly as the CUDA backend calls it (kernels/cuda/backend_cuda.cu:
 * row-major y (M, N) = x (M, K) W^T with W (N, K), i.e. column-major op(W)=T, x=N; A and B
 * bf16, compute CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT, a 32 MiB workspace) on the 7
 * projections of one decoder layer (default: Llama-3.1-8B, hidden 4096, intermediate 14336,
 * 32 heads / 8 kv heads of 128) with M = 4096 token rows, and on a square 8192^3 GEMM; each
 * with C in float32 (what layersweep writes) and in bf16 (what PyTorch writes).
 *
 * Per shape: inputs uniform in [-1, 1) from a counter hash (never zeros: a GEMM on zeros
 * runs faster than on real data), output poisoned with NaN first; 5 warm-up calls, then 20
 * calls each timed with its own pair of CUDA events; the median is reported. When one set
 * of A, B, C fits twice in L2, several sets are rotated so that the cache is not measured.
 * 16 sampled outputs are checked against a float64 host dot product of the same bf16
 * inputs (error / max(|ref|, sqrt(K)/3) <= 1e-2); a failure counts as an error.
 *
 *   TFLOP/s = 2 M N K / median time
 *   layer TFLOP/s = sum over the 7 projections of 2 M N K / sum of their median times
 *
 * usage: bench_cublas [--tokens 4096] [--hidden 4096] [--intermediate 14336] [--heads 32]
 *                     [--kv-heads 8] [--head-dim 128] [--square 8192] [--iters 20]
 *                     [--warmup 5] [--json FILE]
 * Prints a table (header with units, fixed columns, error count, OK/FAILED footer) and, with
 * --json, writes the same numbers as JSON. Exit status: 0 OK, 1 check errors, 2 CUDA error. */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

/* ---- error handling --------------------------------------------------------------------- */
#define CUDA_CHECK(call)                                                                        \
  do {                                                                                          \
    cudaError_t e_ = (call);                                                                    \
    if (e_ != cudaSuccess) {                                                                    \
      fprintf(stderr, "bench_cublas: %s failed at %s:%d: %s\n"                                  \
                      "hint: is a GPU visible (nvidia-smi) and the driver as new as CUDA %d?\n", \
              #call, __FILE__, __LINE__, cudaGetErrorString(e_), CUDART_VERSION);               \
      exit(2);                                                                                  \
    }                                                                                           \
  } while (0)
#define CUBLAS_CHECK(call)                                                                      \
  do {                                                                                          \
    cublasStatus_t s_ = (call);                                                                 \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                                          \
      fprintf(stderr, "bench_cublas: %s failed at %s:%d: %s\n"                                  \
                      "hint: check the GEMM shape and free GPU memory (nvidia-smi)\n",          \
              #call, __FILE__, __LINE__, cublasGetStatusString(s_));                            \
      exit(2);                                                                                  \
    }                                                                                           \
  } while (0)

#define WORKSPACE_BYTES ((size_t)32 << 20) /* as the CUDA backend */

/* ---- inputs: uniform in [-1, 1) from a counter hash, the same on host and device ---------- */
__host__ __device__ static inline float hash_uniform(uint64_t seed, uint64_t i) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + i + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return (float)(z >> 40) * (2.0f / 16777216.0f) - 1.0f; /* 24 bits -> [-1, 1) */
}

static __global__ void fill_bf16_kernel(__nv_bfloat16 *p, size_t n, uint64_t seed) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x)
    p[i] = __float2bfloat16_rn(hash_uniform(seed, i));
}

static void fill_bf16(__nv_bfloat16 *p, size_t n, uint64_t seed) {
  fill_bf16_kernel<<<1024, 256>>>(p, n, seed);
  CUDA_CHECK(cudaGetLastError());
}

static float host_input(uint64_t seed, uint64_t i) {
  return __bfloat162float(__float2bfloat16_rn(hash_uniform(seed, i)));
}

/* ---- one shape -------------------------------------------------------------------------- */
struct Shape {
  std::string name;
  int M, N, K;
  bool in_layer; /* one of the 7 projections */
};

struct Result {
  Shape s;
  bool c_bf16;
  double time_us;
  double tflops;
  int sets;
  int bad; /* sampled outputs off */
};

static double median(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static Result run_shape(cublasHandle_t h, const Shape &s, bool c_bf16, int iters, int warmup,
                        size_t l2_bytes, uint64_t seed) {
  const size_t nA = (size_t)s.N * s.K; /* W (N, K) row-major */
  const size_t nB = (size_t)s.M * s.K; /* x (M, K) row-major */
  const size_t nC = (size_t)s.M * s.N; /* y (M, N) row-major */
  const size_t csz = c_bf16 ? 2 : 4;
  const size_t set_bytes = 2 * nA + 2 * nB + csz * nC;
  int sets = 1;
  if (set_bytes < 2 * l2_bytes)
    sets = (int)std::min<size_t>(8, (2 * l2_bytes + set_bytes - 1) / set_bytes);
  std::vector<__nv_bfloat16 *> A(sets), B(sets);
  std::vector<void *> C(sets);
  for (int i = 0; i < sets; i++) {
    CUDA_CHECK(cudaMalloc(&A[i], 2 * nA));
    CUDA_CHECK(cudaMalloc(&B[i], 2 * nB));
    CUDA_CHECK(cudaMalloc(&C[i], csz * nC));
    fill_bf16(A[i], nA, seed + 2 * i);
    fill_bf16(B[i], nB, seed + 2 * i + 1);
    CUDA_CHECK(cudaMemset(C[i], 0xFF, csz * nC)); /* NaN in both float32 and bf16 */
  }
  const float one = 1.0f, zero = 0.0f;
  const cudaDataType_t ct = c_bf16 ? CUDA_R_16BF : CUDA_R_32F;
  auto gemm = [&](int i) {
    /* column-major: y^T (N x M) = op_T(W stored K x N) * x^T (K x M) */
    CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, s.N, s.M, s.K, &one, A[i],
                              CUDA_R_16BF, s.K, B[i], CUDA_R_16BF, s.K, &zero, C[i], ct, s.N,
                              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  };
  for (int it = 0; it < warmup; it++) gemm(it % sets);
  CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<cudaEvent_t> ev(2 * (size_t)iters);
  for (auto &e : ev) CUDA_CHECK(cudaEventCreate(&e));
  for (int it = 0; it < iters; it++) {
    CUDA_CHECK(cudaEventRecord(ev[2 * it], 0));
    gemm(it % sets);
    CUDA_CHECK(cudaEventRecord(ev[2 * it + 1], 0));
  }
  CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<float> ms(iters);
  for (int it = 0; it < iters; it++) CUDA_CHECK(cudaEventElapsedTime(&ms[it], ev[2 * it], ev[2 * it + 1]));
  for (auto &e : ev) CUDA_CHECK(cudaEventDestroy(e));

  /* check 16 sampled outputs of every set against a float64 host dot product */
  int bad = 0;
  for (int i = 0; i < sets; i++) {
    for (int q = 0; q < 16; q++) {
      int m = (int)(((uint64_t)q * 2654435761u + 7u * i) % (uint64_t)s.M);
      int n = (int)(((uint64_t)q * 40503u + 13u * i + 1u) % (uint64_t)s.N);
      if (q == 0) m = 0, n = 0;
      if (q == 15) m = s.M - 1, n = s.N - 1;
      double ref = 0;
      for (int k = 0; k < s.K; k++)
        ref += (double)host_input(seed + 2 * i, (uint64_t)n * s.K + k) *
               (double)host_input(seed + 2 * i + 1, (uint64_t)m * s.K + k);
      double got;
      size_t off = (size_t)m * s.N + n; /* row-major y (M, N) */
      if (c_bf16) {
        __nv_bfloat16 v;
        CUDA_CHECK(cudaMemcpy(&v, (char *)C[i] + 2 * off, 2, cudaMemcpyDeviceToHost));
        got = __bfloat162float(v);
      } else {
        float v;
        CUDA_CHECK(cudaMemcpy(&v, (char *)C[i] + 4 * off, 4, cudaMemcpyDeviceToHost));
        got = v;
      }
      double err = fabs(got - ref) / std::max(fabs(ref), sqrt((double)s.K) / 3.0);
      if (!(err <= 1e-2)) {
        if (bad < 3)
          fprintf(stderr, "bench_cublas: %s C=%s set %d: y[%d][%d] = %g, expected %g\n",
                  s.name.c_str(), c_bf16 ? "bf16" : "f32", i, m, n, got, ref);
        bad++;
      }
    }
  }
  for (int i = 0; i < sets; i++) {
    CUDA_CHECK(cudaFree(A[i]));
    CUDA_CHECK(cudaFree(B[i]));
    CUDA_CHECK(cudaFree(C[i]));
  }
  Result r;
  r.s = s;
  r.c_bf16 = c_bf16;
  r.time_us = median(ms) * 1e3;
  r.tflops = 2.0 * s.M * (double)s.N * s.K / (r.time_us * 1e-6) / 1e12;
  r.sets = sets;
  r.bad = bad;
  return r;
}

/* ---- main ------------------------------------------------------------------------------ */
static int arg_int(int argc, char **argv, int *i, const char *name) {
  if (*i + 1 >= argc) {
    fprintf(stderr, "bench_cublas: %s needs a value\n", name);
    exit(2);
  }
  int v = atoi(argv[++*i]);
  if (v <= 0) {
    fprintf(stderr, "bench_cublas: %s must be a positive integer\n", name);
    exit(2);
  }
  return v;
}

int main(int argc, char **argv) {
  int M = 4096, H = 4096, I = 14336, heads = 32, kv = 8, hd = 128, sq = 8192, iters = 20, warmup = 5;
  const char *json = nullptr;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--tokens")) M = arg_int(argc, argv, &i, a);
    else if (!strcmp(a, "--hidden")) H = arg_int(argc, argv, &i, a);
    else if (!strcmp(a, "--intermediate")) I = arg_int(argc, argv, &i, a);
    else if (!strcmp(a, "--heads")) heads = arg_int(argc, argv, &i, a);
    else if (!strcmp(a, "--kv-heads")) kv = arg_int(argc, argv, &i, a);
    else if (!strcmp(a, "--head-dim")) hd = arg_int(argc, argv, &i, a);
    else if (!strcmp(a, "--square")) sq = arg_int(argc, argv, &i, a);
    else if (!strcmp(a, "--iters")) iters = arg_int(argc, argv, &i, a);
    else if (!strcmp(a, "--warmup")) warmup = arg_int(argc, argv, &i, a);
    else if (!strcmp(a, "--json") && i + 1 < argc) json = argv[++i];
    else {
      fprintf(stderr, "usage: bench_cublas [--tokens M] [--hidden H] [--intermediate I] [--heads N] "
                      "[--kv-heads N] [--head-dim D] [--square S] [--iters N] [--warmup N] [--json FILE]\n");
      return 2;
    }
  }
  int dev = 0;
  cudaDeviceProp prop;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  int rt = 0;
  CUDA_CHECK(cudaRuntimeGetVersion(&rt));
  cublasHandle_t h;
  CUBLAS_CHECK(cublasCreate(&h));
  int blas_ver = 0;
  CUBLAS_CHECK(cublasGetVersion(h, &blas_ver));
  void *ws = nullptr;
  CUDA_CHECK(cudaMalloc(&ws, WORKSPACE_BYTES));
  CUBLAS_CHECK(cublasSetWorkspace(h, ws, WORKSPACE_BYTES));
  CUBLAS_CHECK(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH));

  const std::vector<Shape> shapes = {
      {"q_proj", M, heads * hd, H, true},   {"k_proj", M, kv * hd, H, true},
      {"v_proj", M, kv * hd, H, true},      {"o_proj", M, H, heads * hd, true},
      {"gate_proj", M, I, H, true},         {"up_proj", M, I, H, true},
      {"down_proj", M, H, I, true},         {"square", sq, sq, sq, false},
  };
  std::vector<Result> res;
  uint64_t seed = 1;
  for (int cb = 0; cb < 2; cb++)
    for (const Shape &s : shapes) {
      res.push_back(run_shape(h, s, cb == 1, iters, warmup, (size_t)prop.l2CacheSize, seed));
      seed += 16;
    }

  double layer_flop[2] = {0, 0}, layer_us[2] = {0, 0}, square[2] = {0, 0};
  int errors = 0;
  for (const Result &r : res) {
    errors += r.bad;
    if (r.s.in_layer) {
      layer_flop[r.c_bf16] += 2.0 * r.s.M * (double)r.s.N * r.s.K;
      layer_us[r.c_bf16] += r.time_us;
    } else {
      square[r.c_bf16] = r.tflops;
    }
  }
  double layer_tf[2];
  for (int c = 0; c < 2; c++) layer_tf[c] = layer_flop[c] / (layer_us[c] * 1e-6) / 1e12;

  printf("# bench_cublas: cublasGemmEx, A and B bf16, compute CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT, "
         "%zu MiB workspace\n", WORKSPACE_BYTES >> 20);
  printf("# device: %s (sm_%d%d, %d SMs, %d MiB L2), CUDA runtime %d, cuBLAS %d\n", prop.name,
         prop.major, prop.minor, prop.multiProcessorCount, prop.l2CacheSize >> 20, rt, blas_ver);
  printf("# time: median of %d calls after %d warm-up calls, CUDA events around each; inputs "
         "uniform in [-1, 1)\n", iters, warmup);
  printf("# TFLOP/s = 2*M*N*K / time; layer = the 7 projections (hidden %d, intermediate %d, %d heads / "
         "%d kv of %d): sum of FLOP / sum of median times\n", H, I, heads, kv, hd);
  printf("# %-10s %7s %7s %7s %5s %11s %10s %5s %6s\n", "name", "M", "N", "K", "C", "time_us",
         "TFLOP/s", "sets", "check");
  for (const Result &r : res)
    printf("  %-10s %7d %7d %7d %5s %11.1f %10.1f %5d %6s\n", r.s.name.c_str(), r.s.M, r.s.N, r.s.K,
           r.c_bf16 ? "bf16" : "f32", r.time_us, r.tflops, r.sets, r.bad ? "BAD" : "ok");
  for (int c = 0; c < 2; c++)
    printf("  %-10s %7d %23s %11.1f %10.1f\n", c ? "layer_bf16" : "layer_f32", M, "(7 GEMMs)",
           layer_us[c], layer_tf[c]);
  printf("# errors: %d\n", errors);
  printf(errors ? "# FAILED\n" : "# OK\n");

  if (json) {
    FILE *f = fopen(json, "w");
    if (!f) {
      fprintf(stderr, "bench_cublas: cannot write %s\n", json);
      return 2;
    }
    fprintf(f, "{\n  \"device\": \"%s\", \"sm\": %d, \"sms\": %d, \"cuda_runtime\": %d, \"cublas\": %d,\n",
            prop.name, prop.major * 10 + prop.minor, prop.multiProcessorCount, rt, blas_ver);
    fprintf(f, "  \"iters\": %d, \"warmup\": %d, \"tokens\": %d,\n", iters, warmup, M);
    fprintf(f, "  \"layer_tflops_f32\": %.3f, \"layer_tflops_bf16\": %.3f,\n", layer_tf[0], layer_tf[1]);
    fprintf(f, "  \"square\": %d, \"square_tflops_f32\": %.3f, \"square_tflops_bf16\": %.3f,\n", sq,
            square[0], square[1]);
    fprintf(f, "  \"errors\": %d,\n  \"shapes\": [\n", errors);
    for (size_t i = 0; i < res.size(); i++) {
      const Result &r = res[i];
      fprintf(f, "    {\"name\": \"%s\", \"M\": %d, \"N\": %d, \"K\": %d, \"c\": \"%s\", \"time_us\": %.3f, "
                 "\"tflops\": %.3f, \"sets\": %d, \"bad\": %d}%s\n",
              r.s.name.c_str(), r.s.M, r.s.N, r.s.K, r.c_bf16 ? "bf16" : "f32", r.time_us, r.tflops,
              r.sets, r.bad, i + 1 < res.size() ? "," : "");
    }
    fprintf(f, "  ]\n}\n");
    if (fclose(f) != 0) {
      fprintf(stderr, "bench_cublas: writing %s failed\n", json);
      return 2;
    }
  }
  CUDA_CHECK(cudaFree(ws));
  CUBLAS_CHECK(cublasDestroy(h));
  return errors ? 1 : 0;
}
