/* pool.cu: pooling of x (T, H) per packed sequence, as ls_cpu_pool. Sequence s has
 * len = seq_len[s] real rows from a = seq_start[s] (seq_len NULL: no padding, len =
 * seq_start[s + 1] - a); the rows after them up to seq_start[s + 1] are padding.
 *   mode 0 (last): pooled (n_seq, H) <- row a + len - 1
 *   mode 1 (mean): pooled (n_seq, H) <- mean of rows a .. a + len - 1, summed in double
 *                  in row order as the CPU op (so the results are bit-identical)
 *   mode 2 (none): pooled (sum of len, H) <- the real rows, sequences packed in order
 * A sequence with len 0 gives NaN in modes 0 and 1 (the CPU op's mean is 0/0 too).
 * Grid: (column slices, sequences, row slices for mode 2); a thread owns a column (four
 * with float4, when H % 4 == 0 and the pointers are 16-byte aligned). */
#include "ops_cuda.cuh"

/* ---- kernels ------------------------------------------------------------------------ */

static constexpr int POOL_THREADS = 256, POOL_MAX_SEQ_BLOCKS = 65535, POOL_ROW_SLICES = 16;

static __device__ __forceinline__ int pool_len(const int32_t *seq_start, const int32_t *seq_len,
                                               int s) {
  return seq_len ? __ldg(&seq_len[s]) : __ldg(&seq_start[s + 1]) - __ldg(&seq_start[s]);
}

/* modes 0 and 1 */
template <bool VEC>
static __global__ void __launch_bounds__(POOL_THREADS)
    pool_rows_kernel(float *__restrict__ pooled, const float *__restrict__ x,
                     const int32_t *__restrict__ seq_start, const int32_t *__restrict__ seq_len,
                     int n_seq, int H, int mean) {
  const int cols = VEC ? H / 4 : H;
  const int c = (int)(blockIdx.x * blockDim.x + threadIdx.x);
  if (c >= cols) return;
  for (int s = (int)blockIdx.y; s < n_seq; s += (int)gridDim.y) {
    const int a = __ldg(&seq_start[s]), len = pool_len(seq_start, seq_len, s);
    float *o = pooled + (size_t)s * H; // (H)
    if (len <= 0) {
      if constexpr (VEC) ((float4 *)o)[c] = make_float4(NAN, NAN, NAN, NAN);
      else o[c] = NAN;
    } else if (!mean) {
      const float *xr = x + (size_t)(a + len - 1) * H; // (H)
      if constexpr (VEC) ((float4 *)o)[c] = ((const float4 *)xr)[c];
      else o[c] = xr[c];
    } else if constexpr (VEC) {
      double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;
      for (int t = a; t < a + len; t++) {
        const float4 v = ((const float4 *)(x + (size_t)t * H))[c];
        a0 += v.x;
        a1 += v.y;
        a2 += v.z;
        a3 += v.w;
      }
      ((float4 *)o)[c] = make_float4((float)(a0 / len), (float)(a1 / len), (float)(a2 / len),
                                     (float)(a3 / len));
    } else {
      double acc = 0.0;
      for (int t = a; t < a + len; t++) acc += x[(size_t)t * H + c];
      o[c] = (float)(acc / len);
    }
  }
}

/* mode 2: blockIdx.z picks rows z, z + gridDim.z, ... of each sequence. Each warp finds
 * its sequence's first output row (the sum of the lengths before it) by itself. */
template <bool VEC>
static __global__ void __launch_bounds__(POOL_THREADS)
    pool_pack_kernel(float *__restrict__ pooled, const float *__restrict__ x,
                     const int32_t *__restrict__ seq_start, const int32_t *__restrict__ seq_len,
                     int n_seq, int H) {
  const int cols = VEC ? H / 4 : H;
  const int c = (int)(blockIdx.x * blockDim.x + threadIdx.x), lane = (int)threadIdx.x % 32;
  for (int s = (int)blockIdx.y; s < n_seq; s += (int)gridDim.y) {
    const int a = __ldg(&seq_start[s]), len = pool_len(seq_start, seq_len, s);
    long long off = 0; /* output row of the sequence's first real row */
    if (seq_len) {
      for (int i = lane; i < s; i += 32) off += __ldg(&seq_len[i]);
      for (int o = 16; o > 0; o >>= 1) off += __shfl_xor_sync(0xffffffffu, off, o);
    } else {
      off = a - __ldg(&seq_start[0]);
    }
    if (c >= cols) continue;
    for (int t = (int)blockIdx.z; t < len; t += (int)gridDim.z) {
      const float *xr = x + (size_t)(a + t) * H; // (H)
      float *o = pooled + (size_t)(off + t) * H; // (H)
      if constexpr (VEC) ((float4 *)o)[c] = ((const float4 *)xr)[c];
      else o[c] = xr[c];
    }
  }
}

/* ---- launcher ------------------------------------------------------------------------ */

cudaError_t ls_cu_pool(cudaStream_t st, float *pooled, const float *x, const int32_t *seq_start,
                       const int32_t *seq_len, int n_seq, int H, int mode) {
  if (n_seq <= 0 || H <= 0) return cudaSuccess;
  if (mode < 0 || mode > 2) return cudaErrorInvalidValue;
  const bool vec = H % 4 == 0 && ((uintptr_t)pooled | (uintptr_t)x) % 16 == 0;
  const int cols = vec ? H / 4 : H;
  const int threads = cols >= POOL_THREADS ? POOL_THREADS : (cols + 31) / 32 * 32;
  const unsigned gx = (unsigned)((cols + threads - 1) / threads);
  const unsigned gy = (unsigned)(n_seq < POOL_MAX_SEQ_BLOCKS ? n_seq : POOL_MAX_SEQ_BLOCKS);
  const dim3 block((unsigned)threads);
  if (mode == 2) {
    const dim3 grid(gx, gy, POOL_ROW_SLICES);
    if (vec)
      LS_LAUNCH(pool_pack_kernel<true>, grid, block, 0, st, pooled, x, seq_start, seq_len,
                n_seq, H);
    else
      LS_LAUNCH(pool_pack_kernel<false>, grid, block, 0, st, pooled, x, seq_start, seq_len,
                n_seq, H);
  } else {
    const dim3 grid(gx, gy);
    if (vec)
      LS_LAUNCH(pool_rows_kernel<true>, grid, block, 0, st, pooled, x, seq_start, seq_len,
                n_seq, H, mode);
    else
      LS_LAUNCH(pool_rows_kernel<false>, grid, block, 0, st, pooled, x, seq_start, seq_len,
                n_seq, H, mode);
  }
  return LS_CU_LAST_ERROR();
}
