/* elementwise.cu: swiglu (gate <- silu(gate) * up), geglu (gate <- gelu_tanh(gate) * up),
 * gelu (x <- gelu(x), tanh or erf form), add (y += x), shift (x += b), add_bias (y (T, n) += b (n) on every row), with the CPU
 * ops' arithmetic (ls_cpu_swiglu, ls_cpu_geglu, ls_cpu_gelu, ls_cpu_add, ls_cpu_shift, the bias add of
 * ls_cpu_matmul). Grid-stride loops over size_t indices (T * H can pass
 * 2^31), float4 when the pointers are 16-byte aligned, the last n % 4 elements scalar. */
#include "ops_cuda.cuh"

/* ---- kernels ------------------------------------------------------------------------ */

static constexpr int EW_THREADS = 256;
static constexpr size_t EW_MAX_BLOCKS = 4096; /* the grid-stride loops do the rest */

struct ew_silu {
  static __device__ __forceinline__ float gated(float g, float u) {
    return (g / (1.0f + expf(-g))) * u;
  }
};
struct ew_gelu_tanh {
  static __device__ __forceinline__ float gated(float g, float u) {
    const float beta = 0.7978845608028654f, kappa = 0.044715f; /* sqrt(2 / pi) */
    return 0.5f * g * (1.0f + tanhf(beta * (g + kappa * g * g * g))) * u;
  }
};

struct ew_gelu_erf {
  static __device__ __forceinline__ float gated(float g, float u) {
    return 0.5f * g * (1.0f + erff(g * 0.7071067811865476f)) * u;
  }
};

/* x <- ACT(x) (ACT::gated(x, 1): the activation alone, exact since * 1.0f is). VEC: x
 * 16-byte aligned */
template <bool VEC, class ACT>
static __global__ void __launch_bounds__(EW_THREADS) unary_kernel(float *__restrict__ x, size_t n) {
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  const size_t i0 = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  size_t done = 0;
  if constexpr (VEC) {
    float4 *x4 = (float4 *)x;
    for (size_t i = i0; i < n / 4; i += stride) {
      const float4 g = x4[i];
      x4[i] = make_float4(ACT::gated(g.x, 1.0f), ACT::gated(g.y, 1.0f), ACT::gated(g.z, 1.0f),
                          ACT::gated(g.w, 1.0f));
    }
    done = n / 4 * 4;
  }
  for (size_t i = done + i0; i < n; i += stride) x[i] = ACT::gated(x[i], 1.0f);
}

/* gate <- ACT(gate) * up. VEC: gate, up 16-byte aligned */
template <bool VEC, class ACT>
static __global__ void __launch_bounds__(EW_THREADS)
    gated_kernel(float *__restrict__ gate, const float *__restrict__ up, size_t n) {
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  const size_t i0 = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  size_t done = 0;
  if constexpr (VEC) {
    float4 *g4 = (float4 *)gate;
    const float4 *u4 = (const float4 *)up;
    for (size_t i = i0; i < n / 4; i += stride) {
      const float4 g = g4[i], u = u4[i];
      g4[i] = make_float4(ACT::gated(g.x, u.x), ACT::gated(g.y, u.y), ACT::gated(g.z, u.z),
                          ACT::gated(g.w, u.w));
    }
    done = n / 4 * 4;
  }
  for (size_t i = done + i0; i < n; i += stride) gate[i] = ACT::gated(gate[i], up[i]);
}

/* VEC: x 16-byte aligned */
template <bool VEC>
static __global__ void __launch_bounds__(EW_THREADS) shift_kernel(float *x, float b, size_t n) {
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  const size_t i0 = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  size_t done = 0;
  if constexpr (VEC) {
    float4 *x4 = (float4 *)x;
    for (size_t i = i0; i < n / 4; i += stride) {
      const float4 a = x4[i];
      x4[i] = make_float4(a.x + b, a.y + b, a.z + b, a.w + b);
    }
    done = n / 4 * 4;
  }
  for (size_t i = done + i0; i < n; i += stride) x[i] += b;
}

/* VEC: y, x 16-byte aligned */
template <bool VEC>
static __global__ void __launch_bounds__(EW_THREADS)
    add_kernel(float *__restrict__ y, const float *__restrict__ x, size_t n) {
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  const size_t i0 = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  size_t done = 0;
  if constexpr (VEC) {
    float4 *y4 = (float4 *)y;
    const float4 *x4 = (const float4 *)x;
    for (size_t i = i0; i < n / 4; i += stride) {
      const float4 a = y4[i], b = x4[i];
      y4[i] = make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
    }
    done = n / 4 * 4;
  }
  for (size_t i = done + i0; i < n; i += stride) y[i] += x[i];
}

/* blockIdx.x: a slice of columns (float4 when VEC: n % 4 == 0, y and b 16-byte
 * aligned), rows blockIdx.y, blockIdx.y + gridDim.y, ... */
template <bool VEC>
static __global__ void __launch_bounds__(EW_THREADS)
    add_bias_kernel(float *__restrict__ y, const float *__restrict__ b, int T, int n) {
  const int cols = VEC ? n / 4 : n;
  const int c = (int)(blockIdx.x * blockDim.x + threadIdx.x);
  if (c >= cols) return;
  if constexpr (VEC) {
    const float4 bb = __ldg((const float4 *)b + c);
    for (int t = (int)blockIdx.y; t < T; t += (int)gridDim.y) {
      float4 *yr = (float4 *)(y + (size_t)t * n) + c;
      const float4 a = *yr;
      *yr = make_float4(a.x + bb.x, a.y + bb.y, a.z + bb.z, a.w + bb.w);
    }
  } else {
    const float bb = __ldg(&b[c]);
    for (int t = (int)blockIdx.y; t < T; t += (int)gridDim.y) y[(size_t)t * n + c] += bb;
  }
}

/* ---- launchers ------------------------------------------------------------------------ */

static dim3 ew_grid(size_t items) {
  const size_t b = (items + EW_THREADS - 1) / EW_THREADS;
  return dim3((unsigned)(b < EW_MAX_BLOCKS ? b : EW_MAX_BLOCKS));
}

template <class ACT>
static cudaError_t gated(cudaStream_t st, float *gate, const float *up, size_t n) {
  if (n == 0) return cudaSuccess;
  /* through pointers: the template arguments' comma would split LS_LAUNCH's arguments */
  void (*const vec)(float *, const float *, size_t) = gated_kernel<true, ACT>;
  void (*const one)(float *, const float *, size_t) = gated_kernel<false, ACT>;
  if (((uintptr_t)gate | (uintptr_t)up) % 16 == 0)
    LS_LAUNCH(vec, ew_grid((n + 3) / 4), dim3(EW_THREADS), 0, st, gate, up, n);
  else
    LS_LAUNCH(one, ew_grid(n), dim3(EW_THREADS), 0, st, gate, up, n);
  return LS_CU_LAST_ERROR();
}

cudaError_t ls_cu_swiglu(cudaStream_t st, float *gate, const float *up, size_t n) {
  return gated<ew_silu>(st, gate, up, n);
}

cudaError_t ls_cu_geglu(cudaStream_t st, float *gate, const float *up, size_t n) {
  return gated<ew_gelu_tanh>(st, gate, up, n);
}

template <class ACT>
static cudaError_t unary(cudaStream_t st, float *x, size_t n) {
  if (n == 0) return cudaSuccess;
  void (*const vec)(float *, size_t) = unary_kernel<true, ACT>;
  void (*const one)(float *, size_t) = unary_kernel<false, ACT>;
  if ((uintptr_t)x % 16 == 0)
    LS_LAUNCH(vec, ew_grid((n + 3) / 4), dim3(EW_THREADS), 0, st, x, n);
  else
    LS_LAUNCH(one, ew_grid(n), dim3(EW_THREADS), 0, st, x, n);
  return LS_CU_LAST_ERROR();
}

cudaError_t ls_cu_gelu(cudaStream_t st, float *x, size_t n, int approximate) {
  return approximate ? unary<ew_gelu_tanh>(st, x, n) : unary<ew_gelu_erf>(st, x, n);
}

cudaError_t ls_cu_shift(cudaStream_t st, float *x, float b, size_t n) {
  if (n == 0) return cudaSuccess;
  if ((uintptr_t)x % 16 == 0)
    LS_LAUNCH(shift_kernel<true>, ew_grid((n + 3) / 4), dim3(EW_THREADS), 0, st, x, b, n);
  else
    LS_LAUNCH(shift_kernel<false>, ew_grid(n), dim3(EW_THREADS), 0, st, x, b, n);
  return LS_CU_LAST_ERROR();
}

cudaError_t ls_cu_add(cudaStream_t st, float *y, const float *x, size_t n) {
  if (n == 0) return cudaSuccess;
  if (((uintptr_t)y | (uintptr_t)x) % 16 == 0)
    LS_LAUNCH(add_kernel<true>, ew_grid((n + 3) / 4), dim3(EW_THREADS), 0, st, y, x, n);
  else
    LS_LAUNCH(add_kernel<false>, ew_grid(n), dim3(EW_THREADS), 0, st, y, x, n);
  return LS_CU_LAST_ERROR();
}

cudaError_t ls_cu_add_bias(cudaStream_t st, float *y, const float *b, int T, int n) {
  if (T <= 0 || n <= 0) return cudaSuccess;
  const bool vec = n % 4 == 0 && ((uintptr_t)y | (uintptr_t)b) % 16 == 0;
  const int cols = vec ? n / 4 : n;
  const int threads = cols >= EW_THREADS ? EW_THREADS : (cols + 31) / 32 * 32;
  const unsigned gx = (unsigned)((cols + threads - 1) / threads);
  /* about 4 rows per block (the bias stays in registers), at most 65535 row slices */
  const int gy = (T + 3) / 4 < 65535 ? (T + 3) / 4 : 65535;
  if (vec)
    LS_LAUNCH(add_bias_kernel<true>, dim3(gx, (unsigned)gy), dim3((unsigned)threads), 0, st, y,
              b, T, n);
  else
    LS_LAUNCH(add_bias_kernel<false>, dim3(gx, (unsigned)gy), dim3((unsigned)threads), 0, st, y,
              b, T, n);
  return LS_CU_LAST_ERROR();
}
