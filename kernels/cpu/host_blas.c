/* host_blas.c: see host_blas.h. */
#include "host_blas.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ls_common.h"

int ls_host_eig_top(double *A, int W, int K, double *vals, double *vecs) {
  double *w = ls_malloc(sizeof(double) * (size_t)W, "eigenvalues");
  double *Z = ls_malloc(sizeof(double) * (size_t)W * (size_t)K, "eigenvectors");
  lapack_int *sup = ls_malloc(sizeof(lapack_int) * 2 * (size_t)W, "eigenvectors");
  if (!w || !Z || !sup) {
    free(w); free(Z); free(sup);
    return LS_ERR;
  }
  /* OpenBLAS's threaded kernels may split sums differently per thread count */
  const int threads = openblas_get_num_threads();
  openblas_set_num_threads(1);
  lapack_int m = 0;
  const lapack_int info = LAPACKE_dsyevr(LAPACK_ROW_MAJOR, 'V', 'I', 'U', W, A, W, 0.0, 0.0,
                                         W - K + 1, W, LAPACKE_dlamch('S'), &m, w, Z, K, sup);
  openblas_set_num_threads(threads);
  int rc = LS_OK;
  if (info != 0 || m != K) {
    ls_error("--reduce pca: LAPACK dsyevr failed (info %d, %d of %d eigenpairs) on a %d x %d "
             "covariance", (int)info, (int)m, K, W, W);
    rc = LS_ERR;
  }
  for (int r = 0; r < K && rc == LS_OK; r++) { /* ascending -> descending */
    const int c = K - 1 - r;
    vals[r] = w[c];
    int big = 0;
    for (int j = 1; j < W; j++)
      if (fabs(Z[(size_t)j * K + c]) > fabs(Z[(size_t)big * K + c])) big = j;
    const double sgn = Z[(size_t)big * K + c] < 0 ? -1.0 : 1.0;
    for (int j = 0; j < W; j++) vecs[(size_t)r * W + j] = sgn * Z[(size_t)j * K + c];
  }
  free(w); free(Z); free(sup);
  return rc;
}

void ls_host_project(float *out, const float *x, const double *Dt, int64_t n, int H, int K) {
  enum { KB = 256 }; /* directions per pass: the sums stay on the stack */
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) {
    const float *xr = x + (size_t)i * H;
    for (int k0 = 0; k0 < K; k0 += KB) {
      const int kn = K - k0 < KB ? K - k0 : KB;
      double acc[KB];
      for (int k = 0; k < kn; k++) acc[k] = 0.0;
      for (int j = 0; j < H; j++) { /* j in order for each direction */
        const double v = xr[j];
        const double *dr = Dt + (size_t)j * K + k0;
        for (int k = 0; k < kn; k++) acc[k] += v * dr[k];
      }
      for (int k = 0; k < kn; k++) out[(size_t)i * K + k0 + k] = (float)acc[k];
    }
  }
}
