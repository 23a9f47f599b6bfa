/* absent.c: the CUDA backend's entry points in a build without nvcc (see
 * backend_cuda.h): no GPU is usable, and asking for one says how to get it. */
#include <stdio.h>

#include "backend_cuda.h"
#include "ls_common.h"

int ls_cuda_usable(char *why, size_t cap) {
  snprintf(why, cap, "this layersweep was built without CUDA: install the CUDA toolkit "
                     "(nvcc, cuBLAS, NCCL) and rebuild");
  return 0;
}

ls_backend_t *ls_backend_cuda_new(int bf16, int max_seq, MPI_Comm comm) {
  ls_error("--backend cuda: this layersweep was built without CUDA; install the CUDA toolkit "
           "and rebuild, or run with --backend cpu");
  return NULL;
}
