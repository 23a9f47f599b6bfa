/* backend_cuda_emu.cpp: the REAL CUDA backend (kernels/cuda/backend_cuda.cu) compiled as
 * C++ with -DLS_CUDA_EMU, for layersweep_core_emu (tests/cuda_emu/CMakeLists.txt). It
 * includes the real <cuda_runtime.h>, <cublas_v2.h> and <nccl.h>; the functions they
 * declare come from emu_runtime.cpp, its kernels from emu_kernels.cpp (SIMT emulator). */
#include "backend_cuda.cu"
