/* ops_cpu.h: float32 reference ops of the CPU backend (OpenBLAS GEMMs, OpenMP for
 * the rest). Exposed so tests can call each op directly against naive versions. */
#ifndef LS_OPS_CPU_H
#define LS_OPS_CPU_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"

void ls_cpu_rmsnorm(float *out, const float *x, const float *w, int T, int H, float eps);
/* y (T, n_out) = x (T, n_in) @ W^T + b. x and y must have room for ls_round_rows(T) rows:
 * padding rows are computed and ignored (see ops_cpu.c). */
void ls_cpu_matmul(float *y, const float *x, const float *W, const float *b, int T, int n_in,
                   int n_out);
/* The same with each dot product summed in double over 128-term float32 chunks (closer to
 * float64; --precise-gemm) */
void ls_cpu_matmul_chunked(float *y, const float *x, const float *W, const float *b, int T,
                           int n_in, int n_out);
void ls_cpu_layernorm(float *out, const float *x, const float *w, const float *b, int T,
                      int H, float eps);
void ls_cpu_rope(float *x, const int32_t *pos, const float *cos_tab, const float *sin_tab,
                 int T, int n_heads, int head_dim, int rot_dim);
/* Query rows per attention block (scores are computed LS_ATTN_QBLOCK rows at a time). */
#define LS_ATTN_QBLOCK 128
/* scratch: (threads, LS_ATTN_QBLOCK, max_seq) floats; max_seq >= the longest sequence
 * (padded) */
void ls_cpu_attention(float *out, const float *q, const float *k, const float *v,
                      const int32_t *seq_start, const int32_t *seq_len, int n_seq,
                      int n_heads, int n_kv_heads, int head_dim, int window, float scale,
                      float softcap, float *scratch,
                      int max_seq);
void ls_cpu_swiglu(float *gate, const float *up, size_t n);
void ls_cpu_geglu(float *gate, const float *up, size_t n);
void ls_cpu_gelu(float *x, size_t n, int approximate);
void ls_cpu_shift(float *x, float b, size_t n);
void ls_cpu_add(float *y, const float *x, size_t n);
void ls_cpu_edit_rows(float *x, int H, const int32_t *idx, int n, const float *v, float alpha,
                      int ablate);
void ls_cpu_concat_heads(float *out, int d_out, const float *a, int da, int sa, int a_shared,
                         const float *b, int db, int sb, int b_shared, int T, int n_heads);
void ls_cpu_gather(float *dst, const float *src, const int32_t *idx, int n, int W);
void ls_cpu_scatter_add(float *dst, const float *src, const int32_t *idx, const float *wts,
                        int n, int W);
/* dst (rows, cols) float32 <- FP8 src times its block scales (backend.h load_weight_fp8) */
void ls_cpu_dequant_fp8(float *dst, const void *src, const float *scale, ls_dtype_t dt,
                        int64_t rows, int64_t cols, int br, int bc);
/* backend.h gram_fixed: exact fixed-point Gram matrix (float64 GEMMs of 20-bit digits) */
void ls_cpu_gram_fixed(uint64_t *acc, const float *x, int n, int H, const int32_t *shift,
                       void *scratch);
void ls_cpu_pool(float *pooled, const float *x, const int32_t *seq_start,
                 const int32_t *seq_len, int n_seq, int H, ls_pool_t mode);
/* Smallest row alignment at which OpenBLAS sgemm gives a row the same result wherever
 * it sits in the call (measured once; see ops_cpu.c). */
int ls_cpu_probe_row_align(void);

/* The CPU backend itself (the registry's "cpu" entry creates it; tests may call it
 * directly): threads <= 0 means "all cores"; attention scratch is sized for prompts up
 * to max_seq tokens. Its weight broadcast is installed by ls_backend_create only. */
ls_backend_t *ls_backend_cpu_new(int threads, int max_seq);

#endif
