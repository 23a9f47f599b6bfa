/* reduce.h: --reduce, statistics of the captured rows computed inside the sweep (README
 * "Reductions"): per hook and selected layer, over the rows the hook outputs (pooled rows;
 * token rows with --pool none):
 *   mean       /reductions/<hook>/count [layers] int64, /mean [layers, W] float64
 *   cov        /cov [layers, W, W], the unbiased covariance (numpy.cov, divisor count - 1)
 *   pca:K      /pca_components [layers, K, W] (unit rows, descending eigenvalue, the entry
 *              of largest magnitude positive), /pca_explained_variance [layers, K]
 *   diffmeans  /class_labels [C], /class_counts [C], /class_means [layers, C, W], and
 *              /diff_of_means [layers, W] (label 1 minus label 0) when the labels are {0, 1}
 * (final_norm: no layer axis). Every sum is exact (src/common/ls_fixed.h: fixed point at
 * 2^-60 of each column's largest value, 128- and 192-bit integers), so the results are
 * bit-identical for any rank count and microbatch size; the Gram matrix is float64 GEMMs
 * of 20-bit digits on the backend (exact integers), and rank 0 forms mean, covariance and the
 * eigenvectors (LAPACK dsyevr) from the merged integers. */
#ifndef LS_REDUCE_H
#define LS_REDUCE_H

#include <mpi.h>
#include <stdint.h>

#define LS_RED_MEAN (1u << 0)
#define LS_RED_COV (1u << 1)
#define LS_RED_PCA (1u << 2)
#define LS_RED_DIFFMEANS (1u << 3)
#define LS_RED_MAX_CLASSES 1024

__extension__ typedef __int128 ls_i128;

typedef struct {
  unsigned what;   /* LS_RED_* (0: no --reduce) */
  int pca_k;
  char canon[96];  /* the list as parsed, in a fixed order ("mean,cov,pca:8,diffmeans") */
} ls_reduce_spec_t;

/* "mean,cov,pca:K,diffmeans" (any order, any subset); NULL or "" is none. LS_ERR after one
 * message naming the bad item. */
int ls_reduce_parse(const char *spec, ls_reduce_spec_t *r);

/* The state of the reductions of one sweep (src/reduce.c). */
typedef struct {
  ls_reduce_spec_t spec;
  int W;                   /* widest reduced hook */
  int n_class;             /* diffmeans: distinct labels, else 1 */
  int64_t *class_label;    /* (n_class) ascending */
  int64_t *class_rows;     /* (n_class) rows of each class over all ranks */
  int32_t *row_class;      /* (out_rows) the class of each of this rank's rows */
  int binary;              /* the labels are exactly {0, 1} */
  float *colmax;           /* (W) */
  int32_t *shift, *shift_d;/* (W) fixed-point shift of each column: host, backend */
  ls_i128 *sums;           /* (n_class, W) */
  uint64_t *acc_d, *acc_h; /* (W, W, 3) Gram limbs: backend, host */
  void *scratch_d;         /* gram_fixed's scratch */
  double *mat;             /* rank 0: (W, W) covariance */
  double *vals, *vecs;     /* rank 0: (K), (K, W) */
  double *row;             /* rank 0: (n_class + 1, W) staging */
  MPI_Datatype t128, t192;
  MPI_Op add128, add192;
  int mpi_live;
} ls_reduce_t;

#endif
