/* backend_cuda.h: the CUDA backend (kernels/cuda): the op table of kernels/backend.h
 * on one GPU per MPI rank, GEMMs with cuBLAS, layer weights broadcast GPU to GPU with
 * NCCL. Built when CMake finds nvcc; otherwise kernels/cuda/absent.c answers "no
 * usable GPU" with the reason, so the engine needs no #ifdef. */
#ifndef LS_BACKEND_CUDA_H
#define LS_BACKEND_CUDA_H

#include <mpi.h>
#include <stddef.h>

#include "backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Number of CUDA devices this process can use; 0 with the reason in why (no driver,
 * no device, built without CUDA). Touches no device memory. */
int ls_cuda_usable(char *why, size_t cap);

/* Collective over comm: every rank opens the GPU of its node-local rank (modulo the
 * visible devices; refused when ranks would share a GPU), one NCCL communicator for
 * the job. bf16: GEMM weights and GEMM inputs in bf16 with float32 accumulation;
 * else float32 throughout (no TF32). NULL after one message on error. */
ls_backend_t *ls_backend_cuda_new(int bf16, int max_seq, MPI_Comm comm);

#ifdef __cplusplus
}
#endif

#endif
