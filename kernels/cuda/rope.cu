/* rope.cu: rotary position embedding in place on x (T, n_heads * head_dim), rotate_half
 * convention over the first rot_dim dims of each head, as ls_cpu_rope: for i < m =
 * rot_dim / 2 (half_dim), with c, s the tables' row pos[t] (max_pos, m):
 *   x[i] <- x[i] c[i] - x[i + m] s[i],   x[i + m] <- x[i + m] c[i] + x[i] s[i]
 * (dims from rot_dim on are left as they are: partial rotary). One block per row; the
 * threads walk (head, i) pairs with i fastest (coalesced), four i at a time (float4)
 * when rot_dim % 8 == 0, head_dim % 4 == 0 and the pointers are 16-byte aligned. */
#include "ops_cuda.cuh"

/* ---- kernel ------------------------------------------------------------------------ */

static __device__ __forceinline__ float4 rope_rot1(float4 a, float4 b, float4 c, float4 s) {
  return make_float4(a.x * c.x - b.x * s.x, a.y * c.y - b.y * s.y, a.z * c.z - b.z * s.z,
                     a.w * c.w - b.w * s.w);
}
static __device__ __forceinline__ float4 rope_rot2(float4 a, float4 b, float4 c, float4 s) {
  return make_float4(b.x * c.x + a.x * s.x, b.y * c.y + a.y * s.y, b.z * c.z + a.z * s.z,
                     b.w * c.w + a.w * s.w);
}

/* VEC: head_dim % 8 == 0 and x, cos_tab, sin_tab 16-byte aligned */
template <bool VEC>
static __global__ void __launch_bounds__(256)
    rope_kernel(float *__restrict__ x, const int32_t *__restrict__ pos,
                const float *__restrict__ cos_tab, const float *__restrict__ sin_tab,
                int n_heads, int head_dim, int rot_dim) {
  const int half_dim = rot_dim / 2;
  const size_t t = blockIdx.x;
  const size_t p = (size_t)__ldg(&pos[t]);
  const float *c = cos_tab + p * (size_t)half_dim;          // (half_dim)
  const float *s = sin_tab + p * (size_t)half_dim;          // (half_dim)
  float *xr = x + t * (size_t)n_heads * (size_t)head_dim; // (n_heads, head_dim)
  const int tid = (int)threadIdx.x, nt = (int)blockDim.x;
  if constexpr (VEC) {
    const int q = half_dim / 4; /* float4 per half of a head */
    for (int j = tid; j < n_heads * q; j += nt) {
      const int h = j / q, i = j - h * q;
      float4 *v1 = (float4 *)(xr + (size_t)h * head_dim) + i, *v2 = v1 + q;
      const float4 cc = __ldg((const float4 *)c + i), ss = __ldg((const float4 *)s + i);
      const float4 a = *v1, b = *v2;
      *v1 = rope_rot1(a, b, cc, ss);
      *v2 = rope_rot2(a, b, cc, ss);
    }
  } else {
    for (int j = tid; j < n_heads * half_dim; j += nt) {
      const int h = j / half_dim, i = j - h * half_dim;
      float *v = xr + (size_t)h * head_dim;
      const float x1 = v[i], x2 = v[i + half_dim], cc = __ldg(&c[i]), ss = __ldg(&s[i]);
      v[i] = x1 * cc - x2 * ss;
      v[i + half_dim] = x2 * cc + x1 * ss;
    }
  }
}

/* ---- launcher ------------------------------------------------------------------------ */

cudaError_t ls_cu_rope(cudaStream_t st, float *x, const int32_t *pos, const float *cos_tab,
                       const float *sin_tab, int T, int n_heads, int head_dim, int rot_dim) {
  const int half_dim = rot_dim / 2;
  if (T <= 0 || n_heads <= 0 || half_dim <= 0) return cudaSuccess;
  const bool vec = rot_dim % 8 == 0 && head_dim % 4 == 0 && /* each half of a head's
                                                               * rotated part starts 16-byte aligned */
                   ((uintptr_t)x | (uintptr_t)cos_tab | (uintptr_t)sin_tab) % 16 == 0;
  const int items = n_heads * (vec ? half_dim / 4 : half_dim); /* rotations per row */
  const int threads = items >= 256 ? 256 : (items + 31) / 32 * 32;
  if (vec)
    LS_LAUNCH(rope_kernel<true>, dim3((unsigned)T), dim3((unsigned)threads), 0, st, x, pos,
              cos_tab, sin_tab, n_heads, head_dim, rot_dim);
  else
    LS_LAUNCH(rope_kernel<false>, dim3((unsigned)T), dim3((unsigned)threads), 0, st, x, pos,
              cos_tab, sin_tab, n_heads, head_dim, rot_dim);
  return LS_CU_LAST_ERROR();
}
