/* host_blas.h: host linear algebra the engine needs outside the backends' op tables
 * (src/reduce.c, src/project.c): the leading eigenpairs of a covariance (LAPACK dsyevr)
 * and the projection of rows on a few directions. Both give the same bits for any thread
 * count: the eigensolver runs with OpenBLAS single-threaded for the call, and a
 * projected row is summed in a fixed order, whatever rows share the call. */
#ifndef LS_HOST_BLAS_H
#define LS_HOST_BLAS_H

#include <stdint.h>

/* The K largest eigenvalues of the symmetric A (W x W, row-major; only the upper triangle
 * is read; A is overwritten) in vals (K, descending) and their unit eigenvectors as the
 * rows of vecs (K x W), each signed so that its entry of largest magnitude (the first
 * such) is positive. LS_ERR (said) if LAPACK fails. */
int ls_host_eig_top(double *A, int W, int K, double *vals, double *vecs);

/* out (n, K) float32 <- x (n, H) float32 . Dt, Dt (H, K) float64 (the directions as
 * columns), each sum in float64 over j = 0 .. H-1 in order, rounded once; rows in
 * parallel. out may not alias x. */
void ls_host_project(float *out, const float *x, const double *Dt, int64_t n, int H, int K);

#endif
