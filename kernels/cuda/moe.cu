/* moe.cu: the mixture-of-experts row moves (zero, gather, weighted scatter-add), the
 * per-head concatenation of multi-head latent attention, and the FP8
 * block dequantization, with the CPU ops' arithmetic (ls_cpu_gather, ls_cpu_scatter_add,
 * ls_cpu_dequant_fp8): one block of threads per row (gather / scatter) or per weight row
 * (dequant), threads striding over its columns. A scatter's rows are distinct, so no two
 * threads add to one element and the result does not depend on the schedule. */
#include "ops_cuda.cuh"

static constexpr int MOE_THREADS = 256;
static constexpr int MOE_MAX_ROWS = 65535; /* grid.y limit: rows beyond go round again */

static __global__ void __launch_bounds__(MOE_THREADS)
    gather_kernel(float *__restrict__ dst, const float *__restrict__ src,
                  const int32_t *__restrict__ idx, int n, int W) {
  for (int i = blockIdx.y; i < n; i += gridDim.y) {
    const int r = idx[i];
    if (r < 0) continue;
    for (int j = threadIdx.x; j < W; j += blockDim.x)
      dst[(size_t)i * W + j] = src[(size_t)r * W + j];
  }
}

static __global__ void __launch_bounds__(MOE_THREADS)
    scatter_add_kernel(float *__restrict__ dst, const float *__restrict__ src,
                       const int32_t *__restrict__ idx, const float *__restrict__ wts, int n,
                       int W) {
  for (int i = blockIdx.y; i < n; i += gridDim.y) {
    const int r = idx[i];
    if (r < 0) continue;
    const float w = wts[i];
    for (int j = threadIdx.x; j < W; j += blockDim.x)
      dst[(size_t)r * W + j] += w * src[(size_t)i * W + j];
  }
}

static __global__ void __launch_bounds__(MOE_THREADS) zero_kernel(float *x, size_t n) {
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) x[i] = 0.0f;
}

cudaError_t ls_cu_zero(cudaStream_t st, float *x, size_t n) {
  if (n == 0) return cudaSuccess;
  const size_t blocks = (n + MOE_THREADS - 1) / MOE_THREADS;
  LS_LAUNCH(zero_kernel, dim3((unsigned)(blocks < 4096 ? blocks : 4096)), dim3(MOE_THREADS), 0, st,
            x, n);
  return LS_CU_LAST_ERROR();
}

/* one block per (row, head) pair, threads over the head's d_out floats */
static __global__ void __launch_bounds__(MOE_THREADS)
    concat_heads_kernel(float *__restrict__ out, int d_out, const float *__restrict__ a, int da,
                        int sa, int a_shared, const float *__restrict__ b, int db, int sb,
                        int b_shared, int T, int n_heads) {
  for (int64_t th = blockIdx.y; th < (int64_t)T * n_heads; th += gridDim.y) {
    const int64_t t = th / n_heads;
    const int h = (int)(th - t * n_heads);
    float *o = out + th * d_out;
    const float *ah = a + (t * (a_shared ? 1 : n_heads) + (a_shared ? 0 : h)) * sa;
    const float *bh = b ? b + (t * (b_shared ? 1 : n_heads) + (b_shared ? 0 : h)) * sb : nullptr;
    for (int j = threadIdx.x; j < d_out; j += blockDim.x)
      o[j] = j < da ? ah[j] : j < da + db && bh ? bh[j - da] : 0.0f;
  }
}

cudaError_t ls_cu_concat_heads(cudaStream_t st, float *out, int d_out, const float *a, int da,
                               int sa, int a_shared, const float *b, int db, int sb, int b_shared,
                               int T, int n_heads) {
  if (T <= 0 || n_heads <= 0 || d_out <= 0) return cudaSuccess;
  const int64_t pairs = (int64_t)T * n_heads;
  LS_LAUNCH(concat_heads_kernel, dim3(1, (unsigned)(pairs < MOE_MAX_ROWS ? pairs : MOE_MAX_ROWS)),
            dim3(d_out < MOE_THREADS ? (d_out + 31) / 32 * 32 : MOE_THREADS), 0, st, out, d_out, a,
            da, sa, a_shared, b, db, sb, b_shared, T, n_heads);
  return LS_CU_LAST_ERROR();
}

cudaError_t ls_cu_gather(cudaStream_t st, float *dst, const float *src, const int32_t *idx,
                         int n, int W) {
  if (n <= 0 || W <= 0) return cudaSuccess;
  LS_LAUNCH(gather_kernel, dim3(1, n < MOE_MAX_ROWS ? n : MOE_MAX_ROWS), dim3(MOE_THREADS), 0,
            st, dst, src, idx, n, W);
  return LS_CU_LAST_ERROR();
}

cudaError_t ls_cu_scatter_add(cudaStream_t st, float *dst, const float *src, const int32_t *idx,
                              const float *wts, int n, int W) {
  if (n <= 0 || W <= 0) return cudaSuccess;
  LS_LAUNCH(scatter_add_kernel, dim3(1, n < MOE_MAX_ROWS ? n : MOE_MAX_ROWS), dim3(MOE_THREADS),
            0, st, dst, src, idx, wts, n, W);
  return LS_CU_LAST_ERROR();
}

/* one FP8 value as float32, exactly (ls_convert_to_f32): e4m3 bias 7 with subnormals
 * m 2^-9 and S.1111.111 NaN; e5m2 the upper byte of a half */
static __device__ __forceinline__ float fp8_value(uint8_t v, bool e4m3) {
  const uint32_t sign = (uint32_t)(v & 0x80u) << 24;
  uint32_t bits;
  if (e4m3) {
    const uint32_t e = (v >> 3) & 0xfu, m = v & 0x7u;
    if (e == 0xfu && m == 0x7u) bits = sign | 0x7fc00000u;
    else if (e == 0) return (sign ? -1.0f : 1.0f) * ((float)m * 0.001953125f); /* m 2^-9 */
    else bits = sign | ((e + 120u) << 23) | (m << 20);
  } else {
    const uint32_t e = (v >> 2) & 0x1fu, m = v & 0x3u;
    if (e == 0x1fu) bits = sign | 0x7f800000u | (m << 21);
    else if (e == 0) return (sign ? -1.0f : 1.0f) * ((float)m * 0.0000152587890625f); /* m 2^-16 */
    else bits = sign | ((e + 112u) << 23) | (m << 21);
  }
  return __uint_as_float(bits);
}

template <class D>
static __global__ void __launch_bounds__(MOE_THREADS)
    dequant_kernel(D *__restrict__ dst, const uint8_t *__restrict__ src,
                   const float *__restrict__ scale, int64_t rows, int64_t cols, int br, int bc,
                   bool e4m3) {
  const int64_t sc = (cols + bc - 1) / bc;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const float *srow = scale + (r / br) * sc;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      const float v = fp8_value(src[r * cols + c], e4m3) * srow[c / bc];
      if constexpr (sizeof(D) == 4) dst[r * cols + c] = v;
      else dst[r * cols + c] = __float2bfloat16_rn(v);
    }
  }
}

cudaError_t ls_cu_dequant_fp8(cudaStream_t st, void *dst, int dst_type, const void *src,
                              const float *scale, int e4m3, int64_t rows, int64_t cols, int br,
                              int bc) {
  if (rows <= 0 || cols <= 0) return cudaSuccess;
  const dim3 grid(1, (unsigned)(rows < MOE_MAX_ROWS ? rows : MOE_MAX_ROWS));
  if (dst_type == LS_CU_BF16)
    LS_LAUNCH(dequant_kernel<__nv_bfloat16>, grid, dim3(MOE_THREADS), 0, st,
              (__nv_bfloat16 *)dst, (const uint8_t *)src, scale, rows, cols, br, bc, e4m3 != 0);
  else
    LS_LAUNCH(dequant_kernel<float>, grid, dim3(MOE_THREADS), 0, st, (float *)dst,
              (const uint8_t *)src, scale, rows, cols, br, bc, e4m3 != 0);
  return LS_CU_LAST_ERROR();
}
