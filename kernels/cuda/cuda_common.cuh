/* cuda_common.cuh: what every .cu file of kernels/cuda includes. The kernels and their
 * launchers compile two ways:
 *   - nvcc (the CUDA backend): LS_LAUNCH is a <<<grid, block, smem, stream>>> launch;
 *   - g++ with -DLS_CUDA_EMU (tests/cuda_emu): the same source runs on the CPU under a
 *     small SIMT emulator (one fiber per CUDA thread, __syncthreads and warp shuffles
 *     emulated), so every kernel's indexing and arithmetic is checked against the CPU
 *     ops on machines without a GPU. The GPU tests (tests/test_cuda_ops.c) are the
 *     real check; the emulator catches logic errors, not races or performance.
 * Rules for kernel code so that both builds work: launch only through LS_LAUNCH (a
 * kernel with several template arguments needs an alias: macro arguments split at
 * commas); dynamic shared memory only through LS_DYN_SMEM; check launches with
 * LS_CU_LAST_ERROR(); no device-only intrinsics beyond those cuda_emu.h provides. */
#ifndef LS_CUDA_COMMON_CUH
#define LS_CUDA_COMMON_CUH

#include <stddef.h>
#include <stdint.h>

#ifdef LS_CUDA_EMU
#include "cuda_emu.h"
/* checked (emu_runtime.cpp, when the emulated CUDA runtime is in use), then run */
#define LS_LAUNCH(kern, grid, block, smem, stream, ...)                                         \
  ls_emu_launch_checked(#kern, (stream), (grid), (block), (smem), [&]() { kern(__VA_ARGS__); }, \
                        __VA_ARGS__)
#define LS_CU_LAST_ERROR() cudaSuccess
#define LS_DYN_SMEM(T, name) T *name = (T *)ls_emu_dyn_smem()
/* kernels that need more than 48 KiB of dynamic shared memory say so before launch */
#define LS_SET_MAX_DYN_SMEM(kern, bytes) cudaSuccess
#else
#include <cuda_runtime.h>
#define LS_LAUNCH(kern, grid, block, smem, stream, ...) \
  kern<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__)
#define LS_CU_LAST_ERROR() cudaGetLastError()
#define LS_DYN_SMEM(T, name)                                \
  extern __shared__ __align__(16) unsigned char name##_raw_[]; \
  T *name = (T *)name##_raw_
#define LS_SET_MAX_DYN_SMEM(kern, bytes) \
  cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)(bytes))
#endif

#include <cuda_bf16.h>

#endif
