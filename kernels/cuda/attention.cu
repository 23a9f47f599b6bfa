/* attention.cu: flash-style causal attention over packed sequences (ls_cu_attention,
 * see ops_cuda.cuh; semantics of the `attention` op in kernels/backend.h, checked
 * against kernels/cpu/ops_cpu.c). float32 in, out and throughout.
 *
 * One block = ATTN_BQ query rows of one sequence and one head (blockIdx.x = sequence *
 * n_tiles + query tile, blockIdx.y = head); ATTN_WARPS warps, each owning ATTN_ROWS
 * consecutive query rows. The block walks the key tiles (ATTN_BK keys) that its rows
 * can see, [max(seq start, first row - window + 1), last row], staging K and V of the
 * head's kv head (GQA: h / (n_heads / n_kv_heads)) in shared memory, shared by all
 * warps. Per key tile and warp:
 *   scores: lane j computes the dot product of key j with each of the warp's rows
 *           (q rows in shared memory, read as broadcasts);
 *   softmax: online, per row: running max m (warp-uniform, by xor shuffles) and
 *           per-lane partial sums l, the accumulator rescaled by exp(m_old - m_new);
 *   P V:    lane owns output dims lane + 32 i (i < DPL = ceil(head_dim / 32)); the
 *           row's weights p go through the warp's slice of shared memory, where one
 *           broadcast float4 read gives 4 keys' weights (a __shfl_sync per key and
 *           row would cost as many instructions as the FMAs they feed).
 * At the end out = acc / (sum of l over the warp). Scores live in registers only: no
 * (len x len) matrix anywhere. Padding rows (seq_start[s] + seq_len[s] up to
 * seq_start[s + 1]) get 0.
 *
 * Shared memory rows are ceil(hd / 4) float4 rounded up to an odd count, so the
 * 128-bit reads of 8 lanes (one phase) of different K rows hit distinct banks; the
 * columns from hd up to the stride are zero, so dot products can run over whole
 * float4. Global loads are float4 when hd % 4 == 0 and q, k, v are 16-byte aligned,
 * scalar otherwise; consecutive threads read consecutive elements of a row. */
#include "ops_cuda.cuh"

#include <math.h>

/* ---- tile shape ------------------------------------------------------------------- */
enum {
  ATTN_WARPS = 4,                       /* warps per block */
  ATTN_ROWS = 4,                        /* query rows per warp */
  ATTN_BQ = ATTN_WARPS * ATTN_ROWS,     /* query rows per block */
  ATTN_BK = 32,                         /* keys per tile: one per lane */
  ATTN_THREADS = ATTN_WARPS * 32,
  ATTN_MAX_HD = 256
};

#define ATTN_FULL_MASK 0xffffffffu

#ifdef __CUDACC__
#define ATTN_UNROLL _Pragma("unroll")
#else
#define ATTN_UNROLL
#endif

/* float4 per shared-memory row: ceil(hd / 4), made odd (conflict-free float4 reads) */
static inline __host__ __device__ int attn_row_f4(int hd) { return ((hd + 3) / 4) | 1; }

static __device__ __forceinline__ int attn_min(int a, int b) { return a < b ? a : b; }
static __device__ __forceinline__ int attn_max(int a, int b) { return a > b ? a : b; }

static size_t attn_smem_bytes(int hd) {
  return (size_t)(ATTN_BQ + 2 * ATTN_BK) * attn_row_f4(hd) * sizeof(float4) +
         (size_t)ATTN_BQ * ATTN_BK * sizeof(float);
}

/* ---- helpers ---------------------------------------------------------------------- */
static __device__ __forceinline__ float attn_warp_max(float x) {
  ATTN_UNROLL
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(ATTN_FULL_MASK, x, o));
  return x;
}

static __device__ __forceinline__ float attn_warp_sum(float x) {
  ATTN_UNROLL
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(ATTN_FULL_MASK, x, o);
  return x;
}

/* dst (n_rows, row_f4) <- rows r0 .. r0 + n_rows - 1 of src (row stride `stride`
 * floats, hd floats per row); rows past r_last and columns past hd are zero. */
static __device__ __forceinline__ void attn_stage(float4 *dst, const float *__restrict__ src,
                                                  int stride, int r0, int n_rows, int r_last,
                                                  int hd, int row_f4, int vec) {
  const int hd4 = (hd + 3) / 4;
  for (int idx = threadIdx.x; idx < n_rows * row_f4; idx += ATTN_THREADS) {
    const int r = idx / row_f4, c = idx - r * row_f4, row = r0 + r;
    float4 val = {0.0f, 0.0f, 0.0f, 0.0f};
    if (row <= r_last && c < hd4) {
      const float *p = src + (size_t)row * stride + 4 * c;
      if (vec) {
        val = *reinterpret_cast<const float4 *>(p);
      } else {
        const int n = hd - 4 * c; /* >= 1 */
        val.x = p[0];
        if (n > 1) val.y = p[1];
        if (n > 2) val.z = p[2];
        if (n > 3) val.w = p[3];
      }
    }
    dst[idx] = val;
  }
}

/* acc[r][i] += pj[r] * vr[lane + 32 i] (one key, every row of the warp) */
template <int DPL>
static __device__ __forceinline__ void attn_pv(float (&acc)[ATTN_ROWS][DPL],
                                               const float (&pj)[ATTN_ROWS],
                                               const float *vr, int lane, int hd) {
  ATTN_UNROLL
  for (int i = 0; i < DPL; i++) {
    const int d = lane + 32 * i;
    if (d < hd) {
      const float vv = vr[d];
      ATTN_UNROLL
      for (int r = 0; r < ATTN_ROWS; r++) acc[r][i] = fmaf(pj[r], vv, acc[r][i]);
    }
  }
}

/* ---- kernel ----------------------------------------------------------------------- */
/* DPL: output dims per lane, ceil(hd / 32) rounded up to an instantiated value. */
template <int DPL>
static __global__ void __launch_bounds__(ATTN_THREADS) attention_kernel(float *__restrict__ out, const float *__restrict__ q,
                                        const float *__restrict__ k,
                                        const float *__restrict__ v,
                                        const int32_t *__restrict__ seq_start,
                                        const int32_t *__restrict__ seq_len, int n_tiles,
                                        int n_heads, int n_kv_heads, int hd, int window,
                                        float scale, float softcap, int vec) {
  const int s = blockIdx.x / n_tiles, tile = blockIdx.x - s * n_tiles;
  const int h = blockIdx.y, kh = h / (n_heads / n_kv_heads);
  const int s0 = seq_start[s], s_end = seq_start[s + 1];
  const int s1 = seq_len ? s0 + seq_len[s] : s_end; /* real rows [s0, s1) */
  const int q0 = s0 + tile * ATTN_BQ;
  if (q0 >= s_end) return; /* the whole block: tile past this sequence */
  const int q_last = attn_min(q0 + ATTN_BQ, s1) - 1; /* last real query row (< q0: none) */
  const int qs = n_heads * hd, ks = n_kv_heads * hd;
  const int hd4 = (hd + 3) / 4, row_f4 = attn_row_f4(hd);

  LS_DYN_SMEM(float4, smem);
  float4 *sQ = smem;                   /* (ATTN_BQ, row_f4) */
  float4 *sK = sQ + ATTN_BQ * row_f4;  /* (ATTN_BK, row_f4) */
  float4 *sV = sK + ATTN_BK * row_f4;  /* (ATTN_BK, row_f4) */
  float *sP = reinterpret_cast<float *>(sV + ATTN_BK * row_f4); /* (ATTN_BQ, ATTN_BK) */

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int w0 = q0 + warp * ATTN_ROWS;                  /* this warp's first row */
  const int w_last = attn_min(w0 + ATTN_ROWS, q_last + 1) - 1; /* its last real row */

  float m[ATTN_ROWS], l[ATTN_ROWS], acc[ATTN_ROWS][DPL];
  ATTN_UNROLL
  for (int r = 0; r < ATTN_ROWS; r++) {
    m[r] = -INFINITY;
    l[r] = 0.0f; /* this lane's share of the softmax denominator */
    ATTN_UNROLL
    for (int i = 0; i < DPL; i++) acc[r][i] = 0.0f;
  }

  if (q_last >= q0) { /* block-uniform: some real rows */
    attn_stage(sQ, q + (size_t)h * hd, qs, q0, ATTN_BQ, q_last, hd, row_f4, vec);
    const int j_lo = window > 0 ? attn_max(s0, q0 - window + 1) : s0;
    for (int kt = j_lo; kt <= q_last; kt += ATTN_BK) {
      __syncthreads(); /* previous tile consumed (first pass: nothing to wait for) */
      attn_stage(sK, k + (size_t)kh * hd, ks, kt, ATTN_BK, q_last, hd, row_f4, vec);
      attn_stage(sV, v + (size_t)kh * hd, ks, kt, ATTN_BK, q_last, hd, row_f4, vec);
      __syncthreads();

      /* warp-uniform: do the warp's rows see any key of this tile? */
      const bool busy = w_last >= w0 && w_last >= kt &&
                        (window <= 0 || w0 - window + 1 <= kt + ATTN_BK - 1);
      if (!busy) continue;

      /* scores: lane j <-> key kt + j, against each of the warp's rows */
      float sc[ATTN_ROWS];
      ATTN_UNROLL
      for (int r = 0; r < ATTN_ROWS; r++) sc[r] = 0.0f;
      const float4 *kr = sK + lane * row_f4;
      const float4 *qr = sQ + warp * ATTN_ROWS * row_f4;
#ifdef __CUDACC__
#pragma unroll 4
#endif
      for (int c = 0; c < hd4; c++) {
        const float4 kk = kr[c];
        ATTN_UNROLL
        for (int r = 0; r < ATTN_ROWS; r++) {
          const float4 qq = qr[r * row_f4 + c];
          sc[r] = fmaf(kk.x, qq.x, sc[r]);
          sc[r] = fmaf(kk.y, qq.y, sc[r]);
          sc[r] = fmaf(kk.z, qq.z, sc[r]);
          sc[r] = fmaf(kk.w, qq.w, sc[r]);
        }
      }

      /* online softmax, row by row; p[r] = this lane's weight for its key */
      const int kj = kt + lane;
      float p[ATTN_ROWS];
      ATTN_UNROLL
      for (int r = 0; r < ATTN_ROWS; r++) {
        const int qi = w0 + r;
        const bool ok = qi <= w_last && kj <= qi && (window <= 0 || kj > qi - window);
        float x = ok ? sc[r] * scale : -INFINITY;
        if (softcap > 0 && ok) x = tanhf(x / softcap) * softcap; /* as transformers */
        const float m_new = fmaxf(m[r], attn_warp_max(x));
        /* m_new == -inf: no key seen yet by this row (also m[r] == -inf) */
        const float alpha = m_new == -INFINITY ? 1.0f : expf(m[r] - m_new);
        p[r] = ok ? expf(x - m_new) : 0.0f;
        l[r] = fmaf(l[r], alpha, p[r]);
        m[r] = m_new;
        ATTN_UNROLL
        for (int i = 0; i < DPL; i++) acc[r][i] *= alpha;
      }

      /* acc += P V over the keys the warp's rows can see ([j_a, j_b) rounded to 4; the
       * others have p = 0, and V rows past the block's last query are zeros). */
      float *pw = sP + warp * ATTN_ROWS * ATTN_BK; /* (ATTN_ROWS, ATTN_BK) */
      ATTN_UNROLL
      for (int r = 0; r < ATTN_ROWS; r++) pw[r * ATTN_BK + lane] = p[r];
      __syncwarp();
      const int j_a = window > 0 ? attn_max(0, w0 - window + 1 - kt) : 0;
      const int j_b = attn_min(ATTN_BK, w_last - kt + 1);
      const float4 *pw4 = reinterpret_cast<const float4 *>(pw);
#ifdef __CUDACC__
#pragma unroll 2
#endif
      for (int j4 = j_a / 4; j4 < (j_b + 3) / 4; j4++) {
        float4 p4[ATTN_ROWS];
        ATTN_UNROLL
        for (int r = 0; r < ATTN_ROWS; r++) p4[r] = pw4[r * (ATTN_BK / 4) + j4];
        const float4 *vr = sV + 4 * j4 * row_f4;
        float pj[ATTN_ROWS];
        ATTN_UNROLL
        for (int r = 0; r < ATTN_ROWS; r++) pj[r] = p4[r].x;
        attn_pv<DPL>(acc, pj, reinterpret_cast<const float *>(vr), lane, hd);
        ATTN_UNROLL
        for (int r = 0; r < ATTN_ROWS; r++) pj[r] = p4[r].y;
        attn_pv<DPL>(acc, pj, reinterpret_cast<const float *>(vr + row_f4), lane, hd);
        ATTN_UNROLL
        for (int r = 0; r < ATTN_ROWS; r++) pj[r] = p4[r].z;
        attn_pv<DPL>(acc, pj, reinterpret_cast<const float *>(vr + 2 * row_f4), lane, hd);
        ATTN_UNROLL
        for (int r = 0; r < ATTN_ROWS; r++) pj[r] = p4[r].w;
        attn_pv<DPL>(acc, pj, reinterpret_cast<const float *>(vr + 3 * row_f4), lane, hd);
      }
    }
  }

  /* out = acc / l for real rows, 0 for padding rows; nothing past the sequence */
  ATTN_UNROLL
  for (int r = 0; r < ATTN_ROWS; r++) {
    const int qi = w0 + r;
    if (qi >= s_end) break; /* warp-uniform */
    const float sum = attn_warp_sum(l[r]);
    const bool real = qi <= w_last;
    const float inv = real ? 1.0f / sum : 0.0f;
    float *o = out + (size_t)qi * qs + (size_t)h * hd;
    ATTN_UNROLL
    for (int i = 0; i < DPL; i++) {
      const int d = lane + 32 * i;
      if (d < hd) o[d] = real ? acc[r][i] * inv : 0.0f;
    }
  }
}

/* ---- launcher --------------------------------------------------------------------- */
template <int DPL>
static cudaError_t attention_launch(cudaStream_t st, float *out, const float *q, const float *k,
                                    const float *v, const int32_t *seq_start,
                                    const int32_t *seq_len, int n_seq, int n_tiles,
                                    int n_heads, int n_kv_heads, int hd, int window,
                                    float scale, float softcap, int vec) {
  const size_t smem = attn_smem_bytes(hd);
  if (smem > 48 * 1024) {
    cudaError_t e = LS_SET_MAX_DYN_SMEM(attention_kernel<DPL>, smem);
    if (e != cudaSuccess) return e;
  }
  const dim3 grid((unsigned)(n_seq * n_tiles), (unsigned)n_heads);
  if (!(scale > 0)) scale = 1.0f / sqrtf((float)hd);
  LS_LAUNCH(attention_kernel<DPL>, grid, ATTN_THREADS, smem, st, out, q, k, v, seq_start,
            seq_len, n_tiles, n_heads, n_kv_heads, hd, window, scale, softcap, vec);
  return LS_CU_LAST_ERROR();
}

cudaError_t ls_cu_attention(cudaStream_t st, float *out, const float *q, const float *k,
                            const float *v, const int32_t *seq_start, const int32_t *seq_len,
                            int n_seq, int max_len, int n_heads, int n_kv_heads, int head_dim,
                            int window, float scale, float softcap) {
  if (n_seq <= 0 || max_len <= 0 || n_heads <= 0) return cudaSuccess;
  if (head_dim <= 0 || head_dim > ATTN_MAX_HD || n_kv_heads <= 0 ||
      n_heads % n_kv_heads != 0 || n_heads > 65535)
    return cudaErrorInvalidValue;
  const int n_tiles = (max_len + ATTN_BQ - 1) / ATTN_BQ;
  if ((long long)n_seq * n_tiles > 0x7fffffffLL) return cudaErrorInvalidValue;
  const int vec = head_dim % 4 == 0 && ((uintptr_t)q | (uintptr_t)k | (uintptr_t)v) % 16 == 0;
  const int dpl = (head_dim + 31) / 32;
#define ATTN_CASE(D)                                                                     \
  return attention_launch<D>(st, out, q, k, v, seq_start, seq_len, n_seq, n_tiles, n_heads, \
                             n_kv_heads, head_dim, window, scale, softcap, vec)
  if (dpl <= 1) ATTN_CASE(1);
  if (dpl <= 2) ATTN_CASE(2);
  if (dpl <= 3) ATTN_CASE(3);
  if (dpl <= 4) ATTN_CASE(4);
  if (dpl <= 6) ATTN_CASE(6);
  ATTN_CASE(8);
#undef ATTN_CASE
}
