/* bench_sgemm.c: the reference rate for the CPU benchmark. Prints, as JSON, the
 * OpenBLAS sgemm rate (OpenBLAS's own threading, all threads) on the GEMM shapes of
 * one decoder layer at the given size, best of several repetitions, and the rate of
 * layersweep's deterministic row-blocked ls_cpu_matmul on the same shapes.
 *   usage: bench_sgemm ROWS HIDDEN INTERMEDIATE KV_DIM THREADS */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#include "ls_common.h"
#include "ops_cpu.h"

static double run(int use_ls, float *x, float *y, const float *W, int M, int H, int inter, int KV,
                  double *flops) {
  const int n_out[7] = {H, KV, KV, H, inter, inter, H}, n_in[7] = {H, H, H, H, H, H, inter};
  double t0 = ls_now();
  *flops = 0;
  for (int g = 0; g < 7; g++) {
    if (use_ls)
      ls_cpu_matmul(y, x, W, NULL, M, n_in[g], n_out[g]);
    else
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, n_out[g], n_in[g], 1.0f, x,
                  n_in[g], W, n_in[g], 0.0f, y, n_out[g]);
    *flops += 2.0 * M * n_out[g] * n_in[g];
  }
  return ls_now() - t0;
}

int main(int argc, char **argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: bench_sgemm ROWS HIDDEN INTERMEDIATE KV_DIM THREADS\n");
    return 2;
  }
  const int M = atoi(argv[1]), H = atoi(argv[2]), inter = atoi(argv[3]), KV = atoi(argv[4]),
            T = atoi(argv[5]);
  const int big = inter > H ? inter : H, Mp = ls_round_rows(M);
  float *x = ls_aligned_alloc(sizeof(float) * (size_t)Mp * big, "x");
  float *y = ls_aligned_alloc(sizeof(float) * (size_t)Mp * big, "y");
  float *W = ls_aligned_alloc(sizeof(float) * (size_t)big * big, "W");
  if (!x || !y || !W) return 1;
  for (size_t i = 0; i < (size_t)Mp * big; i++) x[i] = (float)((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
  for (size_t i = 0; i < (size_t)big * big; i++) W[i] = (float)((i * 40503u) % 1000) * 1e-3f - 0.5f;
  double best[2] = {0, 0}, fl;
  for (int mode = 0; mode < 2; mode++) {
    if (mode == 0) openblas_set_num_threads(T);
    else { openblas_set_num_threads(1); omp_set_num_threads(T); }
    for (int rep = 0; rep < 5; rep++) {
      double t = run(mode, x, y, W, M, H, inter, KV, &fl);
      if (rep > 0 && fl / t > best[mode]) best[mode] = fl / t;
    }
  }
  printf("{\"rows\": %d, \"threads\": %d, \"openblas_sgemm_gflops\": %.2f, "
         "\"ls_matmul_gflops\": %.2f}\n", M, T, best[0] / 1e9, best[1] / 1e9);
  free(x); free(y); free(W);
  return 0;
}
