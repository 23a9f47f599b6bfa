/* backend_cuda.cu: the CUDA backend: the op table of kernels/backend.h on one GPU per
 * MPI rank, GEMMs with cuBLAS, layer weights broadcast GPU to GPU with NCCL. Built as
 * the plugin liblayersweep-cuda.so (kernels/cuda/CMakeLists.txt), loaded through the
 * registry (kernels/plugin.c) only when used; its one export is ls_plugin_entry.
 *
 * One GPU per MPI rank. Two streams: `stream` runs every op and copy in order;
 * `wstream` carries layer weights (rank 0's host-to-device copy of the raw layer, then
 * ncclBroadcast to every rank's GPU), so the broadcast of layer L+1 overlaps the
 * compute of layer L; events order the two. GEMMs are cublasGemmEx: in bf16 mode the
 * weights and the GEMM inputs are bf16 and cuBLAS accumulates in float32 (as
 * transformers does in bf16); activations between GEMMs, the residual stream and
 * everything written to the output stay float32. In float32 mode every GEMM is
 * float32 with CUBLAS_COMPUTE_32F_PEDANTIC (no TF32).
 *
 * Errors: every CUDA / cuBLAS / NCCL call is checked; the first failure is reported in
 * one line naming the call, file:line, rank and GPU, and is sticky: later ops do
 * nothing and `sync` returns LS_ERR, which the engine agrees on across ranks. Waits
 * poll the NCCL communicator for asynchronous errors and abort it on one, so a dead
 * peer ends the job instead of hanging it. */
#define OMPI_SKIP_MPICXX 1
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

extern "C" { /* the project's C headers (mpi.h, included above, stays C++-aware) */
#include "backend.h"
#include "ls_common.h"
#include "registry.h"
}
#include "ops_cuda.cuh"

#define CUBLAS_WORKSPACE_BYTES ((size_t)32 << 20)

typedef struct {
  int rank, nranks, device;
  int bf16;
  cudaStream_t stream;  /* ops and copies */
  cudaStream_t wstream; /* weight copies and broadcasts */
  cublasHandle_t blas;
  int blas_live;
  ncclComm_t nccl;
  int nccl_live;
  cudaEvent_t h2d_done[2], bcast_done[2], slot_free[2], sync_ev, wsync_ev;
  int events_live;
  void *workspace;      /* cuBLAS workspace, allocated once */
  __nv_bfloat16 *xin;   /* (xin_elems) bf16 GEMM inputs */
  size_t xin_elems;
  const float *xin_src; /* the float32 input xin holds (skip re-converting it) */
  size_t xin_n;
  void *stage;          /* device staging for load_weight from host memory */
  size_t stage_bytes;
  int err;              /* sticky: a failure was reported */
} cu_ctx_t;

static cu_ctx_t *ctx_of(ls_backend_t *be) { return (cu_ctx_t *)be->ctx; }

/* ---- error checks ------------------------------------------------------------------- */
static int cu_fail(cu_ctx_t *c, const char *lib, const char *call, const char *msg,
                   const char *file, int line) {
  if (!c->err)
    ls_error("%s: %s failed on rank %d (GPU %d) at %s:%d: %s; check the GPU with nvidia-smi, "
             "lower --microbatch-tokens if memory ran out, or run with --backend cpu",
             lib, call, c->rank, c->device, file, line, msg);
  c->err = 1;
  return LS_ERR;
}

static int check_rt(cu_ctx_t *c, cudaError_t e, const char *call, const char *file, int line) {
  return e == cudaSuccess ? LS_OK : cu_fail(c, "CUDA", call, cudaGetErrorString(e), file, line);
}

static int check_blas(cu_ctx_t *c, cublasStatus_t e, const char *call, const char *file,
                      int line) {
  return e == CUBLAS_STATUS_SUCCESS ? LS_OK
                                    : cu_fail(c, "cuBLAS", call, cublasGetStatusString(e), file, line);
}

static int check_nccl(cu_ctx_t *c, ncclResult_t e, const char *call, const char *file,
                      int line) {
  if (e == ncclSuccess || e == ncclInProgress) return LS_OK;
  char msg[512];
  const char *last = c->nccl_live ? ncclGetLastError(c->nccl) : NULL;
  snprintf(msg, sizeof msg, "%s%s%s", ncclGetErrorString(e), last && *last ? " - " : "",
           last ? last : "");
  return cu_fail(c, "NCCL", call, msg, file, line);
}

#define CU(c, call) check_rt((c), (call), #call, __FILE__, __LINE__)
#define BLAS(c, call) check_blas((c), (call), #call, __FILE__, __LINE__)
#define NCCL(c, call) check_nccl((c), (call), #call, __FILE__, __LINE__)

/* Wait until ev has happened, polling NCCL for asynchronous errors (a failed or
 * vanished peer): on one the communicator is aborted and LS_ERR returned, never a
 * hang. */
static int wait_event(cu_ctx_t *c, cudaEvent_t ev, const char *what) {
  const struct timespec nap = {0, 20000};
  for (;;) {
    cudaError_t e = cudaEventQuery(ev);
    if (e == cudaSuccess) return LS_OK;
    if (e != cudaErrorNotReady) return check_rt(c, e, what, __FILE__, __LINE__);
    if (c->nccl_live) {
      ncclResult_t async = ncclSuccess;
      ncclResult_t r = ncclCommGetAsyncError(c->nccl, &async);
      if (r != ncclSuccess || (async != ncclSuccess && async != ncclInProgress)) {
        char call[200];
        snprintf(call, sizeof call, "ncclCommGetAsyncError (while waiting for %s)", what);
        check_nccl(c, r != ncclSuccess ? r : async, call, __FILE__, __LINE__);
        ncclCommAbort(c->nccl);
        c->nccl_live = 0;
        return LS_ERR;
      }
    }
    nanosleep(&nap, NULL);
  }
}

/* ---- memory ------------------------------------------------------------------------------ */
static void *cu_alloc(ls_backend_t *be, size_t bytes, const char *what) {
  cu_ctx_t *c = ctx_of(be);
  void *p = NULL;
  cudaError_t e = cudaMalloc(&p, bytes ? bytes : 16);
  if (e != cudaSuccess) {
    char call[160];
    snprintf(call, sizeof call, "cudaMalloc of %.1f MiB for the %s", (double)bytes / 1048576.0,
             what);
    check_rt(c, e, call, __FILE__, __LINE__);
    return NULL;
  }
  return p;
}

static void cu_free(ls_backend_t *be, void *p) {
  if (p) cudaFree(p);
}

static void *cu_host_alloc(ls_backend_t *be, size_t bytes, const char *what) {
  cu_ctx_t *c = ctx_of(be);
  void *p = NULL;
  cudaError_t e = cudaHostAlloc(&p, bytes ? bytes : 16, cudaHostAllocDefault);
  if (e != cudaSuccess) {
    char call[160];
    snprintf(call, sizeof call, "cudaHostAlloc of %.1f MiB of page-locked memory for the %s",
             (double)bytes / 1048576.0, what);
    check_rt(c, e, call, __FILE__, __LINE__);
    return NULL;
  }
  return p;
}

static void cu_host_free(ls_backend_t *be, void *p) {
  if (p) cudaFreeHost(p);
}

/* Everything that writes device memory other than a GEMM output forgets the converted
 * GEMM input (it may have changed). */
static void forget_xin(cu_ctx_t *c) { c->xin_src = NULL; }

static int cu_to_device(ls_backend_t *be, void *dst, const void *src, size_t bytes) {
  cu_ctx_t *c = ctx_of(be);
  forget_xin(c);
  if (c->err) return LS_ERR;
  if (!bytes) return LS_OK;
  return CU(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->stream));
}

static int cu_to_host(ls_backend_t *be, void *dst, const void *src, size_t bytes) {
  cu_ctx_t *c = ctx_of(be);
  if (c->err) return LS_ERR;
  if (!bytes) return LS_OK;
  return CU(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->stream));
}

static int cu_load_weight(ls_backend_t *be, void *dst, const void *src, ls_dtype_t dt, size_t n,
                          int matrix, int src_dev) {
  cu_ctx_t *c = ctx_of(be);
  forget_xin(c);
  if (c->err) return LS_ERR;
  const int out = matrix && c->bf16 ? LS_CU_BF16 : LS_CU_F32;
  const size_t bytes = n * ls_dtype_size(dt);
  if (!src_dev) {
    /* small tensors from host memory (the final norm): stage the raw bytes */
    if (bytes > c->stage_bytes) {
      if (c->stage && (CU(c, cudaStreamSynchronize(c->stream)) || CU(c, cudaFree(c->stage))))
        return LS_ERR;
      c->stage = NULL;
      c->stage_bytes = 0;
      if (CU(c, cudaMalloc(&c->stage, bytes))) return LS_ERR;
      c->stage_bytes = bytes;
    }
    if (CU(c, cudaMemcpyAsync(c->stage, src, bytes, cudaMemcpyHostToDevice, c->stream)))
      return LS_ERR;
    src = c->stage;
  }
  return CU(c, ls_cu_convert(c->stream, dst, out, src, (int)dt, n));
}

/* host sources (a test's small tensors) are staged: the weight, then its scales */
static int cu_load_weight_fp8(ls_backend_t *be, void *dst, const void *src, const float *scale,
                              ls_dtype_t dt, int64_t rows, int64_t cols, int br, int bc,
                              int src_dev) {
  cu_ctx_t *c = ctx_of(be);
  forget_xin(c);
  if (c->err) return LS_ERR;
  const int out = c->bf16 ? LS_CU_BF16 : LS_CU_F32;
  if (!src_dev) {
    const size_t wb = (size_t)(rows * cols + 15) / 16 * 16;
    const size_t sb = sizeof(float) * (size_t)(((rows + br - 1) / br) * ((cols + bc - 1) / bc));
    if (wb + sb > c->stage_bytes) {
      if (c->stage && (CU(c, cudaStreamSynchronize(c->stream)) || CU(c, cudaFree(c->stage))))
        return LS_ERR;
      c->stage = NULL;
      c->stage_bytes = 0;
      if (CU(c, cudaMalloc(&c->stage, wb + sb))) return LS_ERR;
      c->stage_bytes = wb + sb;
    }
    char *st = (char *)c->stage;
    if (CU(c, cudaMemcpyAsync(st, src, (size_t)(rows * cols), cudaMemcpyHostToDevice, c->stream)) ||
        CU(c, cudaMemcpyAsync(st + wb, scale, sb, cudaMemcpyHostToDevice, c->stream)))
      return LS_ERR;
    src = st;
    scale = (const float *)(st + wb);
  }
  return CU(c, ls_cu_dequant_fp8(c->stream, dst, out, src, scale, dt == LS_DT_F8_E4M3, rows,
                                 cols, br, bc));
}

static int cu_reserve(ls_backend_t *be, int T, int max_dim) {
  cu_ctx_t *c = ctx_of(be);
  if (!c->bf16) return LS_OK;
  const size_t need = (size_t)ls_round_rows(T) * (size_t)max_dim;
  if (need <= c->xin_elems) return LS_OK;
  if (c->xin && (CU(c, cudaStreamSynchronize(c->stream)) || CU(c, cudaFree(c->xin))))
    return LS_ERR;
  c->xin = NULL;
  c->xin_elems = 0;
  if (!(c->xin = (__nv_bfloat16 *)cu_alloc(be, need * sizeof(__nv_bfloat16), "bf16 GEMM inputs")))
    return LS_ERR;
  c->xin_elems = need;
  forget_xin(c);
  return LS_OK;
}

/* ---- ops ---------------------------------------------------------------------------------- */
static void cu_rmsnorm(ls_backend_t *be, float *out, const float *x, const float *w, int T, int H,
                       float eps) {
  cu_ctx_t *c = ctx_of(be);
  forget_xin(c);
  if (!c->err) CU(c, ls_cu_rmsnorm(c->stream, out, x, w, T, H, eps));
}

static void cu_layernorm(ls_backend_t *be, float *out, const float *x, const float *w,
                         const float *b, int T, int H, float eps) {
  cu_ctx_t *c = ctx_of(be);
  forget_xin(c);
  if (!c->err) CU(c, ls_cu_layernorm(c->stream, out, x, w, b, T, H, eps));
}

static void cu_matmul(ls_backend_t *be, float *y, const float *x, const void *W, const float *b,
                      int T, int n_in, int n_out) {
  cu_ctx_t *c = ctx_of(be);
  if (c->err || T <= 0) return;
  const float one = 1.0f, zero = 0.0f;
  const void *B = x;
  cudaDataType_t ab = CUDA_R_32F;
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F_PEDANTIC;
  if (c->bf16) {
    const size_t n = (size_t)T * (size_t)n_in;
    if (n > c->xin_elems) {
      cu_fail(c, "layersweep", "cu_matmul", "GEMM input larger than reserved", __FILE__, __LINE__);
      return;
    }
    /* q, k, v (and gate, up) share one normed input: convert it once */
    if (c->xin_src != x || c->xin_n != n) {
      if (CU(c, ls_cu_convert(c->stream, c->xin, LS_CU_BF16, x, LS_CU_F32, n))) return;
      c->xin_src = x;
      c->xin_n = n;
    }
    B = c->xin;
    ab = CUDA_R_16BF;
    compute = CUBLAS_COMPUTE_32F;
  }
  if (y == c->xin_src) forget_xin(c);
  /* row-major y (T, n_out) = x (T, n_in) W^T is column-major y^T = W^T' x^T' with W
   * (n_in x n_out col-major, transposed) and x (n_in x T col-major) */
  if (BLAS(c, cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, n_out, T, n_in, &one, W, ab, n_in,
                           B, ab, n_in, &zero, y, CUDA_R_32F, n_out, compute,
                           CUBLAS_GEMM_DEFAULT)))
    return;
  if (b) CU(c, ls_cu_add_bias(c->stream, y, b, T, n_out));
}

static void cu_rope(ls_backend_t *be, float *x, const int32_t *pos, const float *cos_tab,
                    const float *sin_tab, int T, int n_heads, int head_dim, int rot_dim) {
  cu_ctx_t *c = ctx_of(be);
  forget_xin(c);
  if (!c->err)
    CU(c, ls_cu_rope(c->stream, x, pos, cos_tab, sin_tab, T, n_heads, head_dim, rot_dim));
}

static void cu_attention(ls_backend_t *be, float *out, const float *q, const float *k,
                         const float *v, const int32_t *seq_start, const int32_t *seq_len,
                         int n_seq, int max_len, int n_heads, int n_kv, int hd, int window,
                         float scale, float softcap) {
  cu_ctx_t *c = ctx_of(be);
  forget_xin(c);
  if (!c->err)
    CU(c, ls_cu_attention(c->stream, out, q, k, v, seq_start, seq_len, n_seq, max_len, n_heads,
                          n_kv, hd, window, scale, softcap));
}

static void cu_swiglu(ls_backend_t *be, float *gate, const float *up, size_t n) {
  cu_ctx_t *c = ctx_of(be);
  forget_xin(c);
  if (!c->err) CU(c, ls_cu_swiglu(c->stream, gate, up, n));
}

static void cu_geglu(ls_backend_t *be, float *gate, const float *up, size_t n) {
  cu_ctx_t *c = ctx_of(be);
  forget_xin(c);
  if (!c->err) CU(c, ls_cu_geglu(c->stream, gate, up, n));
}

static void cu_gelu(ls_backend_t *be, float *x, size_t n, int approximate) {
  cu_ctx_t *c = ctx_of(be);
  forget_xin(c);
  if (!c->err) CU(c, ls_cu_gelu(c->stream, x, n, approximate));
}

static void cu_shift(ls_backend_t *be, float *x, float b, size_t n) {
  cu_ctx_t *c = ctx_of(be);
  forget_xin(c);
  if (!c->err) CU(c, ls_cu_shift(c->stream, x, b, n));
}

static void cu_add(ls_backend_t *be, float *y, const float *x, size_t n) {
  cu_ctx_t *c = ctx_of(be);
  forget_xin(c);
  if (!c->err) CU(c, ls_cu_add(c->stream, y, x, n));
}

static void cu_zero(ls_backend_t *be, float *x, size_t n) {
  cu_ctx_t *c = ctx_of(be);
  forget_xin(c);
  if (!c->err) CU(c, ls_cu_zero(c->stream, x, n));
}

static void cu_edit_rows(ls_backend_t *be, float *x, int H, const int32_t *idx, int n,
                         const float *v, float alpha, int ablate) {
  cu_ctx_t *c = ctx_of(be);
  forget_xin(c);
  if (!c->err) CU(c, ls_cu_edit_rows(c->stream, x, H, idx, n, v, alpha, ablate));
}

static void cu_concat_heads(ls_backend_t *be, float *out, int d_out, const float *a, int da,
                            int sa, int a_shared, const float *b, int db, int sb, int b_shared,
                            int T, int n_heads) {
  cu_ctx_t *c = ctx_of(be);
  forget_xin(c);
  if (!c->err)
    CU(c, ls_cu_concat_heads(c->stream, out, d_out, a, da, sa, a_shared, b, db, sb, b_shared, T,
                             n_heads));
}

static void cu_gather(ls_backend_t *be, float *dst, const float *src, const int32_t *idx, int n,
                      int W) {
  cu_ctx_t *c = ctx_of(be);
  forget_xin(c);
  if (!c->err) CU(c, ls_cu_gather(c->stream, dst, src, idx, n, W));
}

static void cu_scatter_add(ls_backend_t *be, float *dst, const float *src, const int32_t *idx,
                           const float *wts, int n, int W) {
  cu_ctx_t *c = ctx_of(be);
  forget_xin(c);
  if (!c->err) CU(c, ls_cu_scatter_add(c->stream, dst, src, idx, wts, n, W));
}

static void cu_pool(ls_backend_t *be, float *pooled, const float *x, const int32_t *seq_start,
                    const int32_t *seq_len, int n_seq, int H, ls_pool_t mode) {
  cu_ctx_t *c = ctx_of(be);
  forget_xin(c);
  if (!c->err) CU(c, ls_cu_pool(c->stream, pooled, x, seq_start, seq_len, n_seq, H, (int)mode));
}

/* Everything enqueued on both streams: the ops and copies, and the weight broadcasts
 * (normally finished long before the layer's compute; waited for so that buffers are
 * never freed under a broadcast in flight). */
static int cu_sync(ls_backend_t *be) {
  cu_ctx_t *c = ctx_of(be);
  if (c->err) return LS_ERR;
  if (CU(c, cudaEventRecord(c->sync_ev, c->stream)) ||
      CU(c, cudaEventRecord(c->wsync_ev, c->wstream)))
    return LS_ERR;
  if (wait_event(c, c->sync_ev, "the GPU's queued work (a kernel or copy failed)")) return LS_ERR;
  return wait_event(c, c->wsync_ev, "a layer broadcast");
}

/* ---- weight broadcast (NCCL) ----------------------------------------------------------------- */
/* Collective: every rank enqueues the broadcast even after a local failure (which
 * stays sticky and stops every rank at the layer's sync), so no peer is left waiting
 * in a broadcast this rank skipped. */
static int cu_bcast(ls_backend_t *be, int slot, void *dst, const void *src, size_t bytes) {
  cu_ctx_t *c = ctx_of(be);
  if (c->nccl_live) {
    /* the slot's last contents may still be read by ops already enqueued */
    CU(c, cudaEventRecord(c->slot_free[slot], c->stream));
    CU(c, cudaStreamWaitEvent(c->wstream, c->slot_free[slot], 0));
    if (c->rank == 0) CU(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->wstream));
    CU(c, cudaEventRecord(c->h2d_done[slot], c->wstream));
    NCCL(c, ncclBroadcast(dst, dst, bytes, ncclUint8, 0, c->nccl, c->wstream));
    CU(c, cudaEventRecord(c->bcast_done[slot], c->wstream));
  }
  return c->err ? LS_ERR : LS_OK;
}

static int cu_bcast_wait(ls_backend_t *be, int slot) {
  cu_ctx_t *c = ctx_of(be);
  if (c->err) return LS_ERR;
  forget_xin(c);
  if (CU(c, cudaStreamWaitEvent(c->stream, c->bcast_done[slot], 0))) return LS_ERR;
  /* rank 0's reader reuses the host buffer once the copy to its GPU is done */
  return c->rank == 0 ? wait_event(c, c->h2d_done[slot], "the copy of a layer to the GPU")
                      : LS_OK;
}

static const ls_bcast_iface_t cuda_bcast = {cu_bcast, cu_bcast_wait, NULL};

/* ---- lifetime ---------------------------------------------------------------------------------- */
/* ls_cpu_gram_fixed's steps: digits, the digit-pair DGEMMs / DSYRKs (exact), accumulate. Row-major
 * digits Q_a (K, H) are column-major H x K; cuBLAS's G = Q_a Q_b^T (H x H column-major) is
 * the transpose of the row-major Q_a^T Q_b, and the accumulation only uses G + G^T or a
 * symmetric G, so either reading is the same. */
static void cu_gram_fixed(ls_backend_t *be, uint64_t *acc, const float *x, int n, int H,
                          const int32_t *shift, void *scratch) {
  cu_ctx_t *c = ctx_of(be);
  forget_xin(c);
  const size_t plane = (size_t)LS_GRAM_CHUNK * (size_t)H;
  double *Q = (double *)scratch, *G = Q + 3 * plane;
  const double one = 1.0, zero = 0.0;
  for (int r0 = 0; r0 < n && !c->err; r0 += LS_GRAM_CHUNK) {
    const int K = n - r0 < LS_GRAM_CHUNK ? n - r0 : LS_GRAM_CHUNK;
    if (CU(c, ls_cu_gram_digits(c->stream, Q, x + (size_t)r0 * H, shift, K, H))) return;
    for (int p = 0; p < LS_GRAM_PAIRS; p++) {
      int a, b;
      ls_gram_pair(p, &a, &b);
      /* a == b: the symmetric product, its lower column-major triangle (the row-major j <= k) */
      if (a == b ? BLAS(c, cublasDsyrk(c->blas, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, H, K, &one,
                                       Q + a * plane, H, &zero, G, H))
                 : BLAS(c, cublasDgemm(c->blas, CUBLAS_OP_N, CUBLAS_OP_T, H, H, K, &one,
                                       Q + a * plane, H, Q + b * plane, H, &zero, G, H)))
        return;
      if (CU(c, ls_cu_gram_accumulate(c->stream, acc, G, H, a != b, LS_FX_DIGIT * (a + b))))
        return;
    }
  }
}

static void cu_destroy(ls_backend_t *be) {
  cu_ctx_t *c = ctx_of(be);
  if (!c->err && c->stream) cudaStreamSynchronize(c->stream);
  if (!c->err && c->wstream) cudaStreamSynchronize(c->wstream);
  if (c->nccl_live) {
    if (c->err) ncclCommAbort(c->nccl);
    else ncclCommDestroy(c->nccl);
  }
  if (c->blas_live) cublasDestroy(c->blas);
  if (c->events_live)
    for (int i = 0; i < 2; i++) {
      cudaEventDestroy(c->h2d_done[i]);
      cudaEventDestroy(c->bcast_done[i]);
      cudaEventDestroy(c->slot_free[i]);
    }
  if (c->events_live) {
    cudaEventDestroy(c->sync_ev);
    cudaEventDestroy(c->wsync_ev);
  }
  if (c->workspace) cudaFree(c->workspace);
  if (c->xin) cudaFree(c->xin);
  if (c->stage) cudaFree(c->stage);
  if (c->stream) cudaStreamDestroy(c->stream);
  if (c->wstream) cudaStreamDestroy(c->wstream);
  free(c);
  free(be);
}

static const ls_backend_iface_t cuda_iface = {
    /* .name = */ "cuda",
    /* .alloc = */ cu_alloc,
    /* .free = */ cu_free,
    /* .to_device = */ cu_to_device,
    /* .to_host = */ cu_to_host,
    /* .host_alloc = */ cu_host_alloc,
    /* .host_free = */ cu_host_free,
    /* .load_weight = */ cu_load_weight,
    /* .load_weight_fp8 = */ cu_load_weight_fp8,
    /* .reserve = */ cu_reserve,
    /* .rmsnorm = */ cu_rmsnorm,
    /* .layernorm = */ cu_layernorm,
    /* .matmul = */ cu_matmul,
    /* .rope = */ cu_rope,
    /* .attention = */ cu_attention,
    /* .swiglu = */ cu_swiglu,
    /* .geglu = */ cu_geglu,
    /* .gelu = */ cu_gelu,
    /* .shift = */ cu_shift,
    /* .add = */ cu_add,
    /* .zero = */ cu_zero,
    /* .edit_rows = */ cu_edit_rows,
    /* .concat_heads = */ cu_concat_heads,
    /* .gather = */ cu_gather,
    /* .scatter_add = */ cu_scatter_add,
    /* .pool = */ cu_pool,
    /* .gram_fixed = */ cu_gram_fixed,
    /* .sync = */ cu_sync,
    /* .bcast = */ &cuda_bcast,
    /* .destroy = */ cu_destroy,
};

/* Number of CUDA devices this process can use; 0 with the reason in why (no driver, an
 * old driver, no device). Touches no device memory. */
static int cuda_probe(int asked, char *why, size_t cap) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    if (e == cudaErrorInsufficientDriver && access("/proc/driver/nvidia/version", F_OK) != 0)
      snprintf(why, cap, "no NVIDIA driver is loaded on this machine");
    else if (e == cudaErrorInsufficientDriver)
      snprintf(why, cap, "the NVIDIA driver is older than this build's CUDA runtime %d.%d; "
               "update the driver", CUDART_VERSION / 1000, CUDART_VERSION % 1000 / 10);
    else
      snprintf(why, cap, "%s", cudaGetErrorString(e));
    cudaGetLastError(); /* clear it */
    return 0;
  }
  if (n == 0) snprintf(why, cap, "no CUDA device is visible (check CUDA_VISIBLE_DEVICES)");
  return n;
}

/* Pick this rank's GPU: its rank among the ranks of its node, modulo the devices it
 * sees. Refused (on every rank) when two ranks of a node would share one GPU: NCCL
 * needs a GPU per rank. */
static int pick_device(cu_ctx_t *c, MPI_Comm comm) {
  MPI_Comm node;
  int local = 0, local_size = 1, n = 0, rc = LS_OK;
  MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &node);
  MPI_Comm_rank(node, &local);
  MPI_Comm_size(node, &local_size);
  char bus[32] = "";
  if (CU(c, cudaGetDeviceCount(&n)) == LS_OK && n > 0) {
    c->device = local % n;
    if (CU(c, cudaSetDevice(c->device)) || CU(c, cudaFree(0)) ||
        CU(c, cudaDeviceGetPCIBusId(bus, sizeof bus, c->device)))
      rc = LS_ERR;
  } else {
    rc = LS_ERR;
  }
  /* the gather is collective: a rank that cannot allocate still takes part */
  char *all = (char *)calloc((size_t)local_size, sizeof bus);
  char *recv = all ? all : (char *)calloc(1, sizeof bus * (size_t)local_size + 1);
  if (!all) {
    ls_error("out of memory on rank %d comparing the ranks' GPUs", c->rank);
    c->err = 1;
    rc = LS_ERR;
  }
  if (recv) MPI_Allgather(bus, sizeof bus, MPI_CHAR, recv, sizeof bus, MPI_CHAR, node);
  if (!all) free(recv);
  for (int r = 0; r < local_size && rc == LS_OK && all; r++)
    if (r != local && bus[0] && strcmp(all + (size_t)r * sizeof bus, bus) == 0) {
      ls_error("rank %d and rank %d of this node would share GPU %s: NCCL needs one GPU per "
               "rank; start as many ranks per node as GPUs (mpirun -npernode N, or srun "
               "--gpus-per-task=1), or run with --backend cpu", c->rank, c->rank - local + r, bus);
      c->err = 1;
      rc = LS_ERR;
    }
  free(all);
  MPI_Comm_free(&node);
  return rc;
}

/* Collective over p->comm: every rank opens the GPU of its node-local rank (modulo the
 * visible devices; refused when ranks would share a GPU), one NCCL communicator for
 * the job. bf16: GEMM weights and GEMM inputs in bf16 with float32 accumulation; else
 * float32 throughout (no TF32). NULL after one message on error. */
static ls_backend_t *cuda_create(const ls_backend_params_t *p) {
  const int bf16 = p->bf16, max_seq = p->max_seq;
  MPI_Comm comm = p->comm;
  ls_backend_t *be = (ls_backend_t *)ls_calloc(1, sizeof *be, "cuda backend");
  cu_ctx_t *c = (cu_ctx_t *)ls_calloc(1, sizeof *c, "cuda backend");
  /* creation is collective: a rank that cannot allocate still agrees (and fails) */
  int have = be && c, all_have = 0;
  MPI_Allreduce(&have, &all_have, 1, MPI_INT, MPI_MIN, comm);
  if (!all_have) {
    free(be);
    free(c);
    return NULL;
  }
  be->iface = &cuda_iface;
  be->ctx = c;
  c->bf16 = bf16;
  MPI_Comm_rank(comm, &c->rank);
  MPI_Comm_size(comm, &c->nranks);
  c->device = -1;

  /* 1. device and context on every rank; stop together if any failed */
  int rc = pick_device(c, comm);
  size_t free_b = 0, total_b = 0;
  if (rc == LS_OK)
    rc = CU(c, cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)) ||
                 CU(c, cudaStreamCreateWithFlags(&c->wstream, cudaStreamNonBlocking)) ||
                 CU(c, cudaMemGetInfo(&free_b, &total_b))
             ? LS_ERR
             : LS_OK;
  if (rc == LS_OK) {
    int ok = 1;
    for (int i = 0; i < 2 && ok; i++)
      ok = !CU(c, cudaEventCreateWithFlags(&c->h2d_done[i], cudaEventDisableTiming)) &&
           !CU(c, cudaEventCreateWithFlags(&c->bcast_done[i], cudaEventDisableTiming)) &&
           !CU(c, cudaEventCreateWithFlags(&c->slot_free[i], cudaEventDisableTiming));
    ok = ok && !CU(c, cudaEventCreateWithFlags(&c->sync_ev, cudaEventDisableTiming)) &&
         !CU(c, cudaEventCreateWithFlags(&c->wsync_ev, cudaEventDisableTiming));
    c->events_live = ok;
    rc = ok ? LS_OK : LS_ERR;
  }
  /* 2. cuBLAS on the compute stream, with a workspace of its own (no allocations later) */
  if (rc == LS_OK && BLAS(c, cublasCreate(&c->blas)) == LS_OK) {
    c->blas_live = 1;
    c->workspace = cu_alloc(be, CUBLAS_WORKSPACE_BYTES, "cuBLAS workspace");
    rc = !c->workspace || BLAS(c, cublasSetStream(c->blas, c->stream)) ||
                 BLAS(c, cublasSetWorkspace(c->blas, c->workspace, CUBLAS_WORKSPACE_BYTES)) ||
                 BLAS(c, cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH))
             ? LS_ERR
             : LS_OK;
  } else {
    rc = LS_ERR;
  }
  int all_ok = 0, ok = rc == LS_OK;
  MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, comm);
  if (!all_ok) goto fail;

  /* 3. one NCCL communicator for the job: rank 0 makes the id, MPI carries it */
  {
    struct { ncclUniqueId id; int ok; } msg;
    memset(&msg, 0, sizeof msg);
    if (c->rank == 0) msg.ok = NCCL(c, ncclGetUniqueId(&msg.id)) == LS_OK;
    MPI_Bcast(&msg, sizeof msg, MPI_BYTE, 0, comm);
    if (!msg.ok) {
      if (c->rank != 0) c->err = 1; /* rank 0 said why */
      goto fail;
    }
    ok = NCCL(c, ncclCommInitRank(&c->nccl, c->nranks, msg.id, c->rank)) == LS_OK;
    c->nccl_live = ok;
    MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, comm);
    if (!all_ok) goto fail;
  }

  be->row_align = 1; /* packed prompts, no padding */
  be->wtype = bf16 ? LS_DT_BF16 : LS_DT_F32;
  be->compute_dtype = bf16 ? "bf16" : "float32";
  be->caps = LS_BE_DEVICE_BCAST | LS_BE_BF16;
  be->host_visible = 0;
  be->mem_bytes = (double)free_b;
  {
    cudaDeviceProp prop;
    memset(&prop, 0, sizeof prop);
    cudaGetDeviceProperties(&prop, c->device);
    snprintf(be->desc, sizeof be->desc, "cuda (%.80s, %.0f GiB, GPU %d of rank 0; %s; %d rank%s, "
             "NCCL weight broadcast)", prop.name, (double)total_b / 1073741824.0, c->device,
             bf16 ? "bf16 GEMMs, float32 accumulation and activations" : "float32, no TF32",
             c->nranks, c->nranks > 1 ? "s" : "");
  }
  (void)max_seq; /* attention needs no scratch: it never materialises scores */
  return be;

fail:
  if (!c->err) c->err = 1; /* another rank failed and said why */
  cu_destroy(be);
  return NULL;
}

static const ls_backend_entry_t cuda_entry = {
    /* .name = */ "cuda",
    /* .caps = */ LS_BE_DEVICE_BCAST | LS_BE_BF16,
    /* .auto_priority = */ 10,
    /* .probe = */ cuda_probe,
    /* .create = */ cuda_create,
    /* .preinit = */ NULL,
};

extern "C" __attribute__((visibility("default"))) const ls_backend_entry_t *ls_plugin_entry(int abi) {
  return abi == LS_PLUGIN_ABI ? &cuda_entry : NULL;
}
