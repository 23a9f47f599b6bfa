/* emu_kernels.cpp: every kernel of kernels/cuda compiled with g++ under the SIMT
 * emulator (cuda_emu.h, -DLS_CUDA_EMU), in one translation unit. The .cu files are
 * listed one by one (backend_cuda.cu is host code for a real GPU: not here); since
 * they share this unit, their static kernels and helpers need file-unique names. */
#include "rmsnorm.cu"
#include "rope.cu"
#include "elementwise.cu"
#include "pool.cu"
#include "convert.cu"
#include "moe.cu"
#include "gram.cu"
#include "attention.cu" /* tested by its author's test, not by test_emu_ops */
