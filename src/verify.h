/* verify.h: --verify N, the sweep checking itself in the field. N prompts spread evenly over
 * the dataset are followed through every computed layer: each rank keeps its sampled
 * prompts' rows at the layer's input and at attn_out, mlp_out and residual_post as the
 * backend computed them; rank 0 gathers them and recomputes the layer for those prompts
 * from the same input rows on a CPU oracle (the CPU backend with GEMM sums in double over
 * 128-term float32 chunks, --precise-gemm) converted from the same raw layer bytes it
 * read, and stores per layer and hook the largest row-wise relative error (max |a - b|
 * over a row / max |b|) in /verify/max_rel_error [layers computed, 3]. Above the compute
 * dtype's tolerance the run warns, or stops with --verify-strict (the file partial). Each
 * layer is checked from the backend's own input, so errors do not accumulate. */
#ifndef LS_VERIFY_H
#define LS_VERIFY_H

#include <stdint.h>

#include "backend.h"

#define LS_VERIFY_HOOKS 3 /* attn_out, mlp_out, residual_post (hooks 1..3) */

typedef struct {
  int n;                  /* sampled prompts; 0: no --verify */
  int strict;
  double tol;
  int64_t *prompts;       /* (n) global prompt indices, ascending */
  /* this rank's sampled prompts */
  int n_mine;
  int64_t *mine;          /* (n_mine) global prompt indices */
  int64_t *mine_row;      /* (n_mine + 1) their first rows in cap */
  float *cap[4];          /* (rows, H) at residual_pre, attn_out, mlp_out, residual_post */
  unsigned seen;          /* hooks captured during the layer (1 << hook) */
  /* rank 0: the oracle */
  ls_backend_t *be;
  void *wbuf;
  void **lw;
  float *x, *scratch;
  void *host;
  int64_t *erows;
  float *all[4], *ref[4]; /* (rows_all, H): gathered from the ranks, the oracle's */
  int64_t rows_all;
  int *counts, *displs;   /* (ranks) rows of each rank in the gathers */
  int32_t *seq_start, *seq_len, *pos;
  int T, max_len;
  unsigned ref_seen;
  double *err;            /* (LS_VERIFY_HOOKS) this layer's */
} ls_verify_t;

#endif
