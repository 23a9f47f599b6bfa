/* backend.h: the ops a block forward is composed of, as a small table. A backend is an
 * opaque handle over a table of function pointers ({ iface; ctx }, as in ggml).
 * kernels/cpu is the float32 reference (OpenBLAS + OpenMP); kernels/cuda implements the
 * same table (a plugin, loaded only when used). Backends are found and created through
 * the registry (registry.h); nothing outside kernels/ includes a backend's own header.
 * Ops take plain dimensions: no model names, no config struct.
 * All pointers passed to ops are backend memory (host memory for the CPU backend).
 * Every op is row-local: a row's result never depends on which other rows (prompts)
 * share the call, which keeps outputs identical for any batching or rank count. */
#ifndef LS_BACKEND_H
#define LS_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
#include "ls_fixed.h"

typedef enum { LS_POOL_LAST = 0, LS_POOL_MEAN = 1, LS_POOL_NONE = 2 } ls_pool_t;

typedef struct ls_backend ls_backend_t;

/* Capabilities (ls_backend_t.caps and the registry entry's caps) */
#define LS_BE_DETERMINISTIC (1u << 0) /* bit-identical results for any batching / rank count */
#define LS_BE_HOST_MEMORY (1u << 1)   /* backend memory is host memory: no copies needed */
#define LS_BE_DEVICE_BCAST (1u << 2)  /* weights are broadcast into backend memory by the
                                       * backend itself (else: MPI into host memory) */
#define LS_BE_BF16 (1u << 3)          /* has a bf16 compute mode */

/* The weight broadcast between the backends of all ranks: one slot on every backend,
 * filled by the registry with an MPI broadcast into host memory when the backend has
 * no device broadcast of its own. start sends `bytes` from rank 0's host buffer src
 * into dst of every rank (on rank 0, dst may equal src), through receive slot `slot`
 * (0 or 1; a slot's previous contents may still be read by ops enqueued before the
 * call). wait makes every op enqueued after it see the bytes, and returns once rank 0's
 * src may be reused; LS_ERR (said once) if the broadcast failed. progress (may be NULL)
 * lets a broadcast in flight advance. Calls are collective, in the same order on every
 * rank. */
typedef struct {
  int (*start)(ls_backend_t *be, int slot, void *dst, const void *src, size_t bytes);
  int (*wait)(ls_backend_t *be, int slot);
  void (*progress)(ls_backend_t *be);
} ls_bcast_iface_t;

/* Activation buffers passed to matmul have room for rows rounded up to LS_ROW_PAD:
 * backends may compute padding rows so that a row's result never depends on how many
 * rows share the call. */
#define LS_ROW_PAD 48
static inline int ls_round_rows(int T) { return (T + LS_ROW_PAD - 1) / LS_ROW_PAD * LS_ROW_PAD; }

/* gram_fixed's scratch: three digit matrices of LS_GRAM_CHUNK rows and one H x H float64
 * product (ls_fixed.h) */
static inline size_t ls_gram_scratch_bytes(int H) {
  return sizeof(double) * ((size_t)3 * LS_GRAM_CHUNK * (size_t)H + (size_t)H * (size_t)H);
}

typedef struct {
  const char *name;
  /* memory (alloc returns NULL after an error message) */
  void *(*alloc)(ls_backend_t *be, size_t bytes, const char *what);
  void (*free)(ls_backend_t *be, void *p);
  /* Copies are ordered with the ops; to_host's bytes are on the host after `sync`.
   * The source of to_device may be reused as soon as the call returns. */
  int (*to_device)(ls_backend_t *be, void *dst, const void *src, size_t bytes);
  int (*to_host)(ls_backend_t *be, void *dst, const void *src, size_t bytes);
  /* host memory for staging (page-locked where the backend copies faster from it) */
  void *(*host_alloc)(ls_backend_t *be, size_t bytes, const char *what);
  void (*host_free)(ls_backend_t *be, void *p);
  /* dst (backend) <- n elements of checkpoint dtype dt at src, stored as be->wtype if
   * `matrix` (a GEMM weight), else as float32. src is host memory, or backend memory
   * when src_dev (weights that arrived by a device broadcast). */
  int (*load_weight)(ls_backend_t *be, void *dst, const void *src, ls_dtype_t dt, size_t n,
                     int matrix, int src_dev);
  /* dst (rows, cols) stored as be->wtype <- the FP8 weight src (dt F8_E4M3 / F8_E5M2)
   * times its float32 block scales: element (r, c) is scaled by scale[(r / br) *
   * ceil(cols / bc) + c / bc] (DeepSeek-V3's weight_scale_inv; edge blocks partial),
   * the product rounded once to float32. src and scale are host memory, or backend
   * memory when src_dev. */
  int (*load_weight_fp8)(ls_backend_t *be, void *dst, const void *src, const float *scale,
                         ls_dtype_t dt, int64_t rows, int64_t cols, int br, int bc,
                         int src_dev);
  /* optional: size the backend's own scratch for matmuls of up to T rows and max_dim
   * inputs (called once, after the plan, before any op) */
  int (*reserve)(ls_backend_t *be, int T, int max_dim);

  /* out (T, H) = w (H) * x * rsqrt(mean(x^2) + eps), row by row */
  void (*rmsnorm)(ls_backend_t *be, float *out, const float *x, const float *w, int T, int H,
                  float eps);
  /* out (T, H) = (x - mean(x)) / sqrt(var(x) + eps) * w + b (b may be NULL), row by row,
   * var the biased variance (torch.nn.LayerNorm) */
  void (*layernorm)(ls_backend_t *be, float *out, const float *x, const float *w,
                    const float *b, int T, int H, float eps);
  /* y (T, n_out) = x (T, n_in) @ W (n_out, n_in, be->wtype)^T + b (n_out, float32, may
   * be NULL); x and y have room for ls_round_rows(T) rows */
  void (*matmul)(ls_backend_t *be, float *y, const float *x, const void *W, const float *b,
                 int T, int n_in, int n_out);
  /* in place on x (T, n_heads * head_dim): the first rot_dim (even, <= head_dim) dims of
   * each head are rotated (rotate_half convention over those dims; the rest pass
   * through: partial rotary); cos/sin tables (max_pos, rot_dim / 2), pos (T) the
   * position of each row inside its prompt */
  void (*rope)(ls_backend_t *be, float *x, const int32_t *pos, const float *cos_tab,
               const float *sin_tab, int T, int n_heads, int head_dim, int rot_dim);
  /* causal attention inside each sequence: q (T, n_heads*hd), k, v (T, n_kv*hd);
   * sequence s has seq_len[s] real rows from seq_start[s] (seq_len NULL: all rows up
   * to seq_start[s + 1]); max_len >= every seq_start[s + 1] - seq_start[s]; window > 0
   * limits keys to the last `window` positions (query included). Scores are
   * (q . k) * scale (scale <= 0: 1 / sqrt(head_dim)), then, when softcap > 0,
   * softcap * tanh(score / softcap) (Gemma 2's logit soft-capping), then softmax. out
   * (T, n_heads*hd); padding rows get 0. A real row's result depends only on its own
   * sequence's real rows. */
  void (*attention)(ls_backend_t *be, float *out, const float *q, const float *k,
                    const float *v, const int32_t *seq_start, const int32_t *seq_len,
                    int n_seq, int max_len, int n_heads, int n_kv_heads, int head_dim,
                    int window, float scale, float softcap);
  /* gate (n) <- silu(gate) * up */
  void (*swiglu)(ls_backend_t *be, float *gate, const float *up, size_t n);
  /* gate (n) <- gelu_tanh(gate) * up, gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x +
   * 0.044715 x^3))) (PyTorch's gelu(approximate="tanh"): GeGLU of Gemma) */
  void (*geglu)(ls_backend_t *be, float *gate, const float *up, size_t n);
  /* x (n) <- gelu(x): approximate = 1 the tanh form above (GPT-2's gelu_new), 0 the exact
   * x / 2 (1 + erf(x / sqrt 2)) (GPT-NeoX's gelu) */
  void (*gelu)(ls_backend_t *be, float *x, size_t n, int approximate);
  /* x (n) += b: a constant added to every element (Gemma's 1 + w norm weights) */
  void (*shift)(ls_backend_t *be, float *x, float b, size_t n);
  /* y (n) += x (n) */
  void (*add)(ls_backend_t *be, float *y, const float *x, size_t n);
  /* x (n) <- 0 */
  void (*zero)(ls_backend_t *be, float *x, size_t n);
  /* Steering edits on rows of x (.., H): rows idx[0..n) (backend int32; NULL: rows 0..n-1)
   * get x += alpha v (ablate 0) or x -= (x . v) v (ablate 1, v a unit vector: the
   * component along v removed; the dot product summed in a fixed order per row) */
  void (*edit_rows)(ls_backend_t *be, float *x, int H, const int32_t *idx, int n,
                    const float *v, float alpha, int ablate);
  /* Per-head concatenation (multi-head latent attention): out (T, n_heads, d_out), head h
   * of row t = [a's head, b's head, zeros up to d_out]; a's head is da floats at
   * a + (t * na + h') * sa with na = n_heads, h' = h (or na = 1, h' = 0 when a_shared: one
   * head for all); b likewise (b NULL: db zeros). da + db <= d_out. */
  void (*concat_heads)(ls_backend_t *be, float *out, int d_out, const float *a, int da, int sa,
                       int a_shared, const float *b, int db, int sb, int b_shared, int T,
                       int n_heads);
  /* Mixture-of-experts rows. gather: row i of dst (n, W) <- row idx[i] of src, rows with
   * idx[i] < 0 left as they are. scatter_add: row idx[i] of dst += wts[i] * row i of src
   * for every idx[i] >= 0; the idx[i] >= 0 of one call are distinct, so a row's result
   * does not depend on the order rows are visited. idx (n) int32 and wts (n) float32
   * are backend memory. */
  void (*gather)(ls_backend_t *be, float *dst, const float *src, const int32_t *idx, int n,
                 int W);
  void (*scatter_add)(ls_backend_t *be, float *dst, const float *src, const int32_t *idx,
                      const float *wts, int n, int W);
  /* Sequence s occupies rows seq_start[s] .. seq_start[s] + seq_len[s] of x (T, H)
   * (rows up to seq_start[s + 1] are alignment padding). pooled (n_seq, H) <- the
   * last real row (LS_POOL_LAST) or the mean over real rows (LS_POOL_MEAN); for
   * LS_POOL_NONE pooled (sum of seq_len, H) <- the real rows, packed. */
  void (*pool)(ls_backend_t *be, float *pooled, const float *x, const int32_t *seq_start,
               const int32_t *seq_len, int n_seq, int H, ls_pool_t mode);
  /* --reduce cov / pca: the exact Gram matrix of rows in fixed point (src/common/ls_fixed.h).
   * Row i's value in column j is q_ij = rint(x_ij 2^shift[j]), |q| <= 2^LS_FX_BITS by the
   * caller's choice of shift; for every j <= k, acc[3 (j H + k) ..] (192-bit two's
   * complement, 3 limbs, least significant first) += sum over the n rows of q_ij q_ik.
   * Exact, so the result does not depend on how rows are split between calls. x (n, H)
   * float32, shift (H) int32, acc (H, H, 3) and scratch (ls_gram_scratch_bytes(H)) are
   * backend memory. */
  void (*gram_fixed)(ls_backend_t *be, uint64_t *acc, const float *x, int n, int H,
                     const int32_t *shift, void *scratch);
  /* optional (NULL: ops are synchronous): wait for everything enqueued; LS_ERR (said
   * once) if any op or copy failed since the last sync */
  int (*sync)(ls_backend_t *be);

  /* optional: the backend's own (device) weight broadcast, see ls_bcast_iface_t; NULL:
   * the registry installs the MPI one */
  const ls_bcast_iface_t *bcast;
  void (*destroy)(ls_backend_t *be);
} ls_backend_iface_t;

struct ls_backend {
  const ls_backend_iface_t *iface;
  void *ctx;
  /* Row alignment at which every prompt starts inside a microbatch, so that a row's
   * GEMM result does not depend on its neighbours (1 = no constraint). */
  int row_align;
  ls_dtype_t wtype;          /* storage of GEMM weights and GEMM inputs */
  const char *compute_dtype; /* "float32" or "bf16" (the output file's compute_dtype) */
  unsigned caps;             /* LS_BE_* */
  int host_visible;          /* caps & LS_BE_HOST_MEMORY */
  double mem_bytes;          /* backend memory the plan may use; 0: host memory */
  char desc[320];            /* one line for the log: device, dtype */
  /* set by the registry (ls_backend_create): the weight broadcast in use */
  const ls_bcast_iface_t *bcast;
  void *bcast_ctx;           /* its state (the MPI broadcast's) */
  void (*bcast_free)(ls_backend_t *be);
};

/* Destroy a backend made by ls_backend_create (the broadcast first). */
static inline void ls_backend_free(ls_backend_t *be) {
  if (!be) return;
  if (be->bcast_free) be->bcast_free(be);
  be->iface->destroy(be);
}

#endif
