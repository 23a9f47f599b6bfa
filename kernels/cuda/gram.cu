/* gram.cu: the exact fixed-point Gram matrix of --reduce cov (backend.h gram_fixed,
 * src/common/ls_fixed.h), with ls_cpu_gram_fixed's arithmetic: rows quantized and split
 * into three 20-bit digits as float64 matrices, cuBLAS DGEMM / DSYRK of digit pairs (exact:
 * every partial sum an integer below 2^53, whatever order cuBLAS sums in), and each
 * product added to the 192-bit limbs. One thread per element, so no two threads touch
 * one accumulator. */
#include "ls_fixed.h"
#include "ops_cuda.cuh"

static constexpr int GRAM_THREADS = 256;

/* Q (3, LS_GRAM_CHUNK, H): digit a of q_ij = rint(x_ij 2^shift[j]) for rows 0 .. K-1 */
static __global__ void __launch_bounds__(GRAM_THREADS)
    gram_digits_kernel(double *__restrict__ Q, const float *__restrict__ x,
                       const int32_t *__restrict__ shift, int K, int H) {
  const size_t n = (size_t)K * H, plane = (size_t)LS_GRAM_CHUNK * H;
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += stride) {
    const int j = (int)(e % (size_t)H);
    int64_t d[3];
    ls_fx_digits((int64_t)rint(ldexp((double)x[e], shift[j])), d);
    for (int a = 0; a < 3; a++) Q[(size_t)a * plane + e] = (double)d[a];
  }
}

/* acc[j, k] += (G[j, k] (+ G[k, j] when sym)) 2^s for j <= k (G row-major H x H) */
static __global__ void __launch_bounds__(GRAM_THREADS)
    gram_accumulate_kernel(uint64_t *__restrict__ acc, const double *__restrict__ G, int H,
                           int sym, int s) {
  const size_t n = (size_t)H * H, stride = (size_t)gridDim.x * blockDim.x;
  for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += stride) {
    const size_t j = e / (size_t)H, k = e % (size_t)H;
    if (k < j) continue;
    int64_t v = (int64_t)G[e];
    if (sym) v += (int64_t)G[k * (size_t)H + j];
    ls_fx_add_shifted(acc + 3 * e, v, s);
  }
}

static unsigned gram_blocks(size_t n) {
  const size_t b = (n + GRAM_THREADS - 1) / GRAM_THREADS;
  return (unsigned)(b < 8192 ? (b > 0 ? b : 1) : 8192);
}

cudaError_t ls_cu_gram_digits(cudaStream_t st, double *Q, const float *x, const int32_t *shift,
                              int K, int H) {
  if (K <= 0 || H <= 0) return cudaSuccess;
  LS_LAUNCH(gram_digits_kernel, dim3(gram_blocks((size_t)K * H)), dim3(GRAM_THREADS), 0, st, Q, x,
            shift, K, H);
  return LS_CU_LAST_ERROR();
}

cudaError_t ls_cu_gram_accumulate(cudaStream_t st, uint64_t *acc, const double *G, int H, int sym,
                                  int s) {
  if (H <= 0) return cudaSuccess;
  LS_LAUNCH(gram_accumulate_kernel, dim3(gram_blocks((size_t)H * H)), dim3(GRAM_THREADS), 0, st,
            acc, G, H, sym, s);
  return LS_CU_LAST_ERROR();
}
