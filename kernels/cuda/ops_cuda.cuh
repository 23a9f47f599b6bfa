/* ops_cuda.cuh: the launchers of the CUDA backend's own kernels (one .cu per op, as in
 * ggml: a static kernel, a launcher taking a cudaStream_t). All pointers are device
 * memory; the semantics are those of the op table in kernels/backend.h, checked
 * against kernels/cpu. Each launcher returns the launch's error (cudaSuccess if none);
 * kernels run asynchronously on `st`. GEMMs are cuBLAS's (backend_cuda.cu). */
#ifndef LS_OPS_CUDA_CUH
#define LS_OPS_CUDA_CUH

#include "cuda_common.cuh"

/* element types of ls_cu_convert (values of ls_dtype_t in io/safetensors.h) */
enum { LS_CU_F32 = 0, LS_CU_F16 = 1, LS_CU_BF16 = 2 };

/* out (T, H) = w (H) * x * rsqrt(mean(x^2) + eps), row by row (float32 sums) */
cudaError_t ls_cu_rmsnorm(cudaStream_t st, float *out, const float *x, const float *w, int T,
                          int H, float eps);
/* out (T, H) = (x - mean) * rsqrt(var + eps) * w + b (b may be NULL), row by row */
cudaError_t ls_cu_layernorm(cudaStream_t st, float *out, const float *x, const float *w,
                            const float *b, int T, int H, float eps);
/* in place on x (T, n_heads * head_dim), rotate_half convention over the first rot_dim
 * dims of each head (the rest pass through); cos/sin tables (max_pos, rot_dim / 2), pos
 * (T) the position of each row inside its prompt */
cudaError_t ls_cu_rope(cudaStream_t st, float *x, const int32_t *pos, const float *cos_tab,
                       const float *sin_tab, int T, int n_heads, int head_dim, int rot_dim);
/* causal attention inside each packed sequence (GQA, sliding window if window > 0;
 * scores (q . k) * scale, scale <= 0: 1 / sqrt(head_dim); softcap > 0: softcap *
 * tanh(score / softcap) before the softmax):
 * sequence s has seq_len[s] real rows from seq_start[s] (seq_len NULL: up to
 * seq_start[s + 1]); rows from seq_start[s] + seq_len[s] to seq_start[s + 1] get 0.
 * max_len >= the longest seq_start[s + 1] - seq_start[s] of the call. Flash-style:
 * never materialises a (len x len) score matrix. head_dim <= 256. */
cudaError_t ls_cu_attention(cudaStream_t st, float *out, const float *q, const float *k,
                            const float *v, const int32_t *seq_start, const int32_t *seq_len,
                            int n_seq, int max_len, int n_heads, int n_kv_heads, int head_dim,
                            int window, float scale, float softcap);
/* gate (n) <- silu(gate) * up */
cudaError_t ls_cu_swiglu(cudaStream_t st, float *gate, const float *up, size_t n);
cudaError_t ls_cu_geglu(cudaStream_t st, float *gate, const float *up, size_t n);
/* x (n) <- gelu(x): approximate 1 the tanh form, 0 the erf form (ls_cpu_gelu) */
cudaError_t ls_cu_gelu(cudaStream_t st, float *x, size_t n, int approximate);
cudaError_t ls_cu_shift(cudaStream_t st, float *x, float b, size_t n);
/* y (n) += x (n) */
cudaError_t ls_cu_add(cudaStream_t st, float *y, const float *x, size_t n);
/* y (T, n) += b (n) on every row */
cudaError_t ls_cu_add_bias(cudaStream_t st, float *y, const float *b, int T, int n);
/* gram_fixed (gram.cu): Q (3, LS_GRAM_CHUNK, H) <- the three 20-bit digits of rint(x 2^shift)
 * for rows 0 .. K-1 of x (K <= LS_GRAM_CHUNK); acc (H, H, 3 limbs) += (G (+ G^T when
 * sym)) 2^s on j <= k (ls_fixed.h) */
cudaError_t ls_cu_gram_digits(cudaStream_t st, double *Q, const float *x, const int32_t *shift,
                              int K, int H);
cudaError_t ls_cu_gram_accumulate(cudaStream_t st, uint64_t *acc, const double *G, int H, int sym,
                                  int s);
/* pooled <- pool of x (T, H) per sequence, as kernels/backend.h `pool` (mode: 0 last
 * real row, 1 mean over real rows, 2 real rows packed) */
cudaError_t ls_cu_pool(cudaStream_t st, float *pooled, const float *x, const int32_t *seq_start,
                       const int32_t *seq_len, int n_seq, int H, int mode);
/* dst (n, dst_type LS_CU_F32 or LS_CU_BF16) <- src (n, src_type LS_CU_F32/F16/BF16);
 * rounding to bf16 is round-to-nearest-even, as torch's .to(torch.bfloat16) */
cudaError_t ls_cu_convert(cudaStream_t st, void *dst, int dst_type, const void *src,
                          int src_type, size_t n);

/* Mixture-of-experts rows (kernels/backend.h gather / scatter_add): row i of dst (n, W) <-
 * row idx[i] of src; row idx[i] of dst += wts[i] * row i of src (idx[i] < 0: skipped) */
cudaError_t ls_cu_gather(cudaStream_t st, float *dst, const float *src, const int32_t *idx,
                         int n, int W);
/* steering: rows idx[0..n) (NULL: 0..n-1) of x (.., H) += alpha v, or (ablate) -= (x.v) v */
cudaError_t ls_cu_edit_rows(cudaStream_t st, float *x, int H, const int32_t *idx, int n,
                            const float *v, float alpha, int ablate);
/* x (n) <- 0 */
cudaError_t ls_cu_zero(cudaStream_t st, float *x, size_t n);
/* out (T, n_heads, d_out) <- per head [a's head (da), b's head (db; b NULL: zeros), zeros]
 * (kernels/backend.h concat_heads) */
cudaError_t ls_cu_concat_heads(cudaStream_t st, float *out, int d_out, const float *a, int da,
                               int sa, int a_shared, const float *b, int db, int sb, int b_shared,
                               int T, int n_heads);
cudaError_t ls_cu_scatter_add(cudaStream_t st, float *dst, const float *src, const int32_t *idx,
                              const float *wts, int n, int W);
/* dst (rows, cols; LS_CU_F32 or LS_CU_BF16) <- FP8 src (e4m3 1: F8_E4M3, 0: F8_E5M2)
 * times its float32 block scales (br x bc blocks), as ls_cpu_dequant_fp8 (bf16: then
 * rounded to nearest even) */
cudaError_t ls_cu_dequant_fp8(cudaStream_t st, void *dst, int dst_type, const void *src,
                              const float *scale, int e4m3, int64_t rows, int64_t cols, int br,
                              int bc);

#endif
