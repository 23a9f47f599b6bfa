/* rmsnorm.cu: the row norms (and the steering edits, which share their row reduction). rmsnorm: out (T, H) = w (H) * x * rsqrt(mean(x^2) + eps),
 * as ls_cpu_rmsnorm; layernorm: out = (x - mean) * rsqrt(var + eps) * w + b, as
 * ls_cpu_layernorm (two passes: the mean, shifted by the row's first element, then the
 * squared deviations).
 * One block per row: each thread sums a strided slice of the row (float4 loads when
 * the row allows), a warp-shuffle + shared-memory reduction gives the row's sum
 * (float32, in a fixed order), then the row is scaled and written. */
#include "ops_cuda.cuh"

/* ---- kernel ------------------------------------------------------------------------ */

/* sum of v over the block (blockDim.x a multiple of 32); every thread gets the sum */
static __device__ __forceinline__ float rmsnorm_block_sum(float v, float *red /* [32] */) {
  const int lane = (int)threadIdx.x % 32, warp = (int)threadIdx.x / 32;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (lane == 0) red[warp] = v;
  __syncthreads();
  v = lane < (int)blockDim.x / 32 ? red[lane] : 0.0f;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

/* VEC: H % 4 == 0 and out, x, w 16-byte aligned */
template <bool VEC>
static __global__ void __launch_bounds__(256)
    rmsnorm_kernel(float *__restrict__ out, const float *__restrict__ x,
                   const float *__restrict__ w, int H, float eps) {
  __shared__ float red[32];
  const size_t row = blockIdx.x;
  const float *xr = x + row * (size_t)H; // (H)
  float *o = out + row * (size_t)H;      // (H)
  const int tid = (int)threadIdx.x, nt = (int)blockDim.x;
  float ss = 0.0f;
  if constexpr (VEC) {
    const float4 *x4 = (const float4 *)xr;
    for (int i = tid; i < H / 4; i += nt) {
      const float4 a = x4[i];
      ss += a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w;
    }
  } else {
    for (int i = tid; i < H; i += nt) ss += xr[i] * xr[i];
  }
  ss = rmsnorm_block_sum(ss, red);
  const float r = rsqrtf(ss / (float)H + eps);
  if constexpr (VEC) {
    const float4 *x4 = (const float4 *)xr, *w4 = (const float4 *)w;
    float4 *o4 = (float4 *)o;
    for (int i = tid; i < H / 4; i += nt) {
      const float4 a = x4[i], g = __ldg(&w4[i]);
      o4[i] = make_float4(g.x * (a.x * r), g.y * (a.y * r), g.z * (a.z * r), g.w * (a.w * r));
    }
  } else {
    for (int i = tid; i < H; i += nt) o[i] = __ldg(&w[i]) * (xr[i] * r);
  }
}

/* one block per row (scalar loads: the norm of LayerNorm families is not the hot path) */
static __global__ void __launch_bounds__(256)
    layernorm_kernel(float *__restrict__ out, const float *__restrict__ x,
                     const float *__restrict__ w, const float *__restrict__ b, int H, float eps) {
  __shared__ float red[32];
  const size_t row = blockIdx.x;
  const float *xr = x + row * (size_t)H; // (H)
  float *o = out + row * (size_t)H;      // (H)
  const int tid = (int)threadIdx.x, nt = (int)blockDim.x;
  /* the sum of x - x[0] (exact for nearby values), so a row far from zero mean keeps
   * its mean to float32 precision */
  const float x0 = xr[0];
  float s = 0.0f;
  for (int i = tid; i < H; i += nt) s += xr[i] - x0;
  const float mean = x0 + rmsnorm_block_sum(s, red) / (float)H;
  __syncthreads(); /* red is reused */
  float ss = 0.0f;
  for (int i = tid; i < H; i += nt) ss += (xr[i] - mean) * (xr[i] - mean);
  const float r = rsqrtf(rmsnorm_block_sum(ss, red) / (float)H + eps);
  for (int i = tid; i < H; i += nt)
    o[i] = __ldg(&w[i]) * ((xr[i] - mean) * r) + (b ? __ldg(&b[i]) : 0.0f);
}

/* ---- launchers ----------------------------------------------------------------------- */

cudaError_t ls_cu_rmsnorm(cudaStream_t st, float *out, const float *x, const float *w, int T,
                          int H, float eps) {
  if (T <= 0 || H <= 0) return cudaSuccess;
  const bool vec = H % 4 == 0 && ((uintptr_t)out | (uintptr_t)x | (uintptr_t)w) % 16 == 0;
  const int items = vec ? H / 4 : H;                    /* loads per row */
  const int threads = items >= 256 ? 256 : (items + 31) / 32 * 32; /* a multiple of 32 */
  if (vec)
    LS_LAUNCH(rmsnorm_kernel<true>, dim3((unsigned)T), dim3((unsigned)threads), 0, st, out, x,
              w, H, eps);
  else
    LS_LAUNCH(rmsnorm_kernel<false>, dim3((unsigned)T), dim3((unsigned)threads), 0, st, out, x,
              w, H, eps);
  return LS_CU_LAST_ERROR();
}

cudaError_t ls_cu_layernorm(cudaStream_t st, float *out, const float *x, const float *w,
                            const float *b, int T, int H, float eps) {
  if (T <= 0 || H <= 0) return cudaSuccess;
  const int threads = H >= 256 ? 256 : (H + 31) / 32 * 32;
  LS_LAUNCH(layernorm_kernel, dim3((unsigned)T), dim3((unsigned)threads), 0, st, out, x, w, b,
            H, eps);
  return LS_CU_LAST_ERROR();
}

/* ---- steering edits (ls_cpu_edit_rows): one block per edited row ---------------------------- */
static __global__ void __launch_bounds__(256)
    edit_rows_kernel(float *__restrict__ x, int H, const int32_t *__restrict__ idx, int n,
                     const float *__restrict__ v, float alpha, int ablate) {
  __shared__ float red[32];
  float *r = x + (size_t)(idx ? idx[blockIdx.x] : (int)blockIdx.x) * (size_t)H;
  const int tid = (int)threadIdx.x, nt = (int)blockDim.x;
  if (ablate) {
    float d = 0.0f;
    for (int j = tid; j < H; j += nt) d += r[j] * v[j];
    d = rmsnorm_block_sum(d, red);
    for (int j = tid; j < H; j += nt) r[j] -= d * v[j];
  } else {
    for (int j = tid; j < H; j += nt) r[j] += alpha * v[j];
  }
}

cudaError_t ls_cu_edit_rows(cudaStream_t st, float *x, int H, const int32_t *idx, int n,
                            const float *v, float alpha, int ablate) {
  if (n <= 0 || H <= 0) return cudaSuccess;
  LS_LAUNCH(edit_rows_kernel, dim3((unsigned)n), dim3(256), 0, st, x, H, idx, n, v, alpha, ablate);
  return LS_CU_LAST_ERROR();
}
