/* convert.cu: dst (n, f32 or bf16) <- src (n, f32, f16 or bf16). Widening to f32 is
 * exact; narrowing to bf16 rounds to nearest even (__float2bfloat16_rn, as torch's
 * .to(torch.bfloat16)); same type to same type copies the bits. Grid-stride loop,
 * four elements per thread per step (one 8- or 16-byte access each) when n % 4 == 0
 * and both pointers are aligned to four elements, else one. */
#include "ops_cuda.cuh"

#include <cuda_fp16.h> /* __half, __half2float */

/* ---- element conversions ----------------------------------------------------------- */

template <class D, class S> static __device__ __forceinline__ D cvt_elem(S v);
template <> __device__ __forceinline__ float cvt_elem<float, float>(float v) { return v; }
template <> __device__ __forceinline__ float cvt_elem<float, __half>(__half v) {
  return __half2float(v);
}
template <> __device__ __forceinline__ float cvt_elem<float, __nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <> __device__ __forceinline__ __nv_bfloat16 cvt_elem<__nv_bfloat16, float>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 cvt_elem<__nv_bfloat16, __half>(__half v) {
  return __float2bfloat16_rn(__half2float(v)); /* f16 -> f32 is exact: one rounding */
}
template <>
__device__ __forceinline__ __nv_bfloat16 cvt_elem<__nv_bfloat16, __nv_bfloat16>(
    __nv_bfloat16 v) {
  return v;
}

template <class T> struct alignas(4 * sizeof(T)) cvt_vec4 {
  T v[4];
};

/* ---- kernel ------------------------------------------------------------------------ */

static constexpr int CVT_THREADS = 256;
static constexpr size_t CVT_MAX_BLOCKS = 4096; /* the grid-stride loop does the rest */

/* VEC: n % 4 == 0, dst and src aligned to four elements */
template <class D, class S, bool VEC>
static __global__ void __launch_bounds__(CVT_THREADS)
    convert_kernel(D *__restrict__ dst, const S *__restrict__ src, size_t n) {
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  const size_t i0 = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if constexpr (VEC) {
    cvt_vec4<D> *d4 = (cvt_vec4<D> *)dst;
    const cvt_vec4<S> *s4 = (const cvt_vec4<S> *)src;
    for (size_t i = i0; i < n / 4; i += stride) {
      const cvt_vec4<S> a = s4[i];
      cvt_vec4<D> b;
      for (int k = 0; k < 4; k++) b.v[k] = cvt_elem<D, S>(a.v[k]);
      d4[i] = b;
    }
  } else {
    for (size_t i = i0; i < n; i += stride) dst[i] = cvt_elem<D, S>(src[i]);
  }
}

/* ---- launcher ------------------------------------------------------------------------ */

template <class D, class S>
static cudaError_t convert_launch(cudaStream_t st, void *dst, const void *src, size_t n) {
  const bool vec = n % 4 == 0 && (uintptr_t)dst % (4 * sizeof(D)) == 0 &&
                   (uintptr_t)src % (4 * sizeof(S)) == 0;
  const size_t items = vec ? n / 4 : n;
  const size_t blocks = (items + CVT_THREADS - 1) / CVT_THREADS;
  const dim3 grid((unsigned)(blocks < CVT_MAX_BLOCKS ? blocks : CVT_MAX_BLOCKS));
  /* aliases: LS_LAUNCH is a macro, the template arguments' commas would split it */
  void (*kvec)(D *, const S *, size_t) = convert_kernel<D, S, true>;
  void (*kone)(D *, const S *, size_t) = convert_kernel<D, S, false>;
  if (vec)
    LS_LAUNCH(kvec, grid, dim3(CVT_THREADS), 0, st, (D *)dst, (const S *)src, n);
  else
    LS_LAUNCH(kone, grid, dim3(CVT_THREADS), 0, st, (D *)dst, (const S *)src, n);
  return LS_CU_LAST_ERROR();
}

cudaError_t ls_cu_convert(cudaStream_t st, void *dst, int dst_type, const void *src,
                          int src_type, size_t n) {
  if (dst_type != LS_CU_F32 && dst_type != LS_CU_BF16) return cudaErrorInvalidValue;
  if (src_type != LS_CU_F32 && src_type != LS_CU_F16 && src_type != LS_CU_BF16)
    return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  if (dst_type == LS_CU_F32) {
    if (src_type == LS_CU_F32) return convert_launch<float, float>(st, dst, src, n);
    if (src_type == LS_CU_F16) return convert_launch<float, __half>(st, dst, src, n);
    return convert_launch<float, __nv_bfloat16>(st, dst, src, n);
  }
  if (src_type == LS_CU_F32) return convert_launch<__nv_bfloat16, float>(st, dst, src, n);
  if (src_type == LS_CU_F16) return convert_launch<__nv_bfloat16, __half>(st, dst, src, n);
  return convert_launch<__nv_bfloat16, __nv_bfloat16>(st, dst, src, n);
}
