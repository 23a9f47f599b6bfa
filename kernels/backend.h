/* backend.h: the block forward as a small op table. A backend is an opaque handle
 * over a table of function pointers ({ iface; ctx }, as in ggml). kernels/cpu is the
 * float32 reference (OpenBLAS + OpenMP); a CUDA backend implements the same table.
 * All pointers passed to ops are backend memory (host memory for the CPU backend).
 * Every op is row-local: a row's result never depends on which other rows (prompts)
 * share the call, which keeps outputs identical for any batching or rank count. */
#ifndef LS_BACKEND_H
#define LS_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "safetensors.h" /* ls_dtype_t */

typedef enum { LS_POOL_LAST = 0, LS_POOL_MEAN = 1, LS_POOL_NONE = 2 } ls_pool_t;

typedef struct ls_backend ls_backend_t;

/* Activation buffers passed to matmul have room for rows rounded up to LS_ROW_PAD:
 * backends may compute padding rows so that a row's result never depends on how many
 * rows share the call. */
#define LS_ROW_PAD 48
static inline int ls_round_rows(int T) { return (T + LS_ROW_PAD - 1) / LS_ROW_PAD * LS_ROW_PAD; }

typedef struct {
  const char *name;
  /* memory (alloc returns NULL after an error message) */
  void *(*alloc)(ls_backend_t *be, size_t bytes, const char *what);
  void (*free)(ls_backend_t *be, void *p);
  int (*to_device)(ls_backend_t *be, void *dst, const void *src, size_t bytes);
  int (*to_host)(ls_backend_t *be, void *dst, const void *src, size_t bytes);
  /* dst (backend, float32) <- n elements of checkpoint dtype dt at host src */
  int (*load_weight)(ls_backend_t *be, float *dst, const void *src, ls_dtype_t dt, size_t n);

  /* out (T, H) = w (H) * x * rsqrt(mean(x^2) + eps), row by row */
  void (*rmsnorm)(ls_backend_t *be, float *out, const float *x, const float *w, int T, int H,
                  float eps);
  /* y (T, n_out) = x (T, n_in) @ W (n_out, n_in)^T + b (n_out, may be NULL); x and y
   * have room for ls_round_rows(T) rows */
  void (*matmul)(ls_backend_t *be, float *y, const float *x, const float *W, const float *b,
                 int T, int n_in, int n_out);
  /* in place on x (T, n_heads * head_dim); cos/sin tables (max_pos, head_dim / 2),
   * pos (T) the position of each row inside its prompt (rotate_half convention) */
  void (*rope)(ls_backend_t *be, float *x, const int32_t *pos, const float *cos_tab,
               const float *sin_tab, int T, int n_heads, int head_dim);
  /* causal attention inside each sequence: q (T, n_heads*hd), k, v (T, n_kv*hd);
   * sequence s has seq_len[s] real rows from seq_start[s] (seq_len NULL: all rows up
   * to seq_start[s + 1]); window > 0 limits keys to the last `window` positions (query
   * included). out (T, n_heads*hd); padding rows get 0. A real row's result depends
   * only on its own sequence's real rows. */
  void (*attention)(ls_backend_t *be, float *out, const float *q, const float *k,
                    const float *v, const int32_t *seq_start, const int32_t *seq_len,
                    int n_seq, int n_heads, int n_kv_heads, int head_dim, int window);
  /* gate (n) <- silu(gate) * up */
  void (*swiglu)(ls_backend_t *be, float *gate, const float *up, size_t n);
  /* y (n) += x (n) */
  void (*add)(ls_backend_t *be, float *y, const float *x, size_t n);
  /* Sequence s occupies rows seq_start[s] .. seq_start[s] + seq_len[s] of x (T, H)
   * (rows up to seq_start[s + 1] are alignment padding). pooled (n_seq, H) <- the
   * last real row (LS_POOL_LAST) or the mean over real rows (LS_POOL_MEAN); for
   * LS_POOL_NONE pooled (sum of seq_len, H) <- the real rows, packed. */
  void (*pool)(ls_backend_t *be, float *pooled, const float *x, const int32_t *seq_start,
               const int32_t *seq_len, int n_seq, int H, ls_pool_t mode);
  int (*sync)(ls_backend_t *be); /* optional (NULL: ops are synchronous) */
  void (*destroy)(ls_backend_t *be);
} ls_backend_iface_t;

struct ls_backend {
  const ls_backend_iface_t *iface;
  void *ctx;
  /* Row alignment at which every prompt starts inside a microbatch, so that a row's
   * GEMM result does not depend on its neighbours (1 = no constraint). */
  int row_align;
};

/* CPU backend: threads <= 0 means "all cores". Scratch for attention is sized for
 * prompts up to max_seq tokens. */
ls_backend_t *ls_backend_cpu_new(int threads, int max_seq);

static inline void ls_backend_free(ls_backend_t *be) {
  if (be) be->iface->destroy(be);
}

#endif
