/* cuda_emu.h: a small SIMT emulator, so that the CUDA kernels of kernels/cuda compile
 * with g++ (-DLS_CUDA_EMU, included by cuda_common.cuh) and run on the CPU, where
 * tests/cuda_emu/test_emu_ops.cpp compares them with the CPU reference ops.
 *
 * How it runs a launch: blocks one after the other; inside a block, one ucontext
 * fiber per CUDA thread, run round-robin by a scheduler. A fiber runs until it exits
 * or reaches a barrier: __syncthreads (all threads of the block) or a warp op
 * (__syncwarp, __shfl*_sync: the lanes named in the mask). Static __shared__ arrays
 * become function-local statics, which every fiber of the running block sees.
 * What it reports (message on stderr, then abort), where a GPU would hang or be UB:
 * __syncthreads reached after a thread of the block exited, a thread exiting while
 * others wait at __syncthreads, a warp op whose mask names an exited lane or whose
 * lanes disagree on the mask, a shuffle reading a lane that is not taking part (e.g.
 * lanes past the end of a partial warp), deadlocks, invalid launch shapes (zero or too
 * large; a launch of nothing must be skipped by the launcher).
 * Dynamic shared memory is filled with 0xFF bytes (NaN as float) at each block start,
 * so reading shared memory before writing it shows up in the results.
 * Limits: no data races detected, no memory model (a fiber's writes are seen at once
 * by the others; fibers switch only at barriers), blocks run sequentially (so grid
 * level cooperation is not emulated), one launch at a time from one host thread,
 * no streams (launches are synchronous), fast-math intrinsics are exact (__expf is
 * expf), stacks are 64 KiB per fiber.
 * Under the emulated CUDA runtime (emu_runtime.cpp: the real backend_cuda.cu on the CPU)
 * every launch is also checked there: a live stream, every pointer argument device
 * memory or NULL, stream ordering of the allocations it reads and writes. */
#ifndef LS_CUDA_EMU_H
#define LS_CUDA_EMU_H

#include <cuda_runtime_api.h> /* cudaError_t, cudaStream_t, dim3, uint3, float4 */
#include <vector_functions.h> /* make_float4, make_uint3, ... */

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>

/* ---- CUDA keywords for host compilation -------------------------------------------- */
#undef __global__
#define __global__
#undef __device__
#define __device__
#undef __host__
#define __host__
#undef __forceinline__
#define __forceinline__ inline
#undef __shared__
#define __shared__ static /* blocks run one at a time: a block's fibers share it */
#undef __launch_bounds__
#define __launch_bounds__(...)

/* ---- the running fiber's indices ----------------------------------------------------- */
namespace ls_emu {
struct ctx_t {
  uint3 thread_idx, block_idx;
  dim3 block_dim, grid_dim;
};
extern ctx_t g_ctx; /* set by the scheduler before it switches to a fiber */

/* Result of a warp op for the calling lane: the value every lane published and the
 * lanes that took part (mask & lanes that exist in this warp). */
struct warp_view_t {
  const uint64_t *val; /* [32], valid until this lane's next warp op */
  unsigned active;
  int lane;
};
/* Publish v and wait until every live lane named in mask has arrived; `op` names the
 * intrinsic for error messages. */
warp_view_t warp_exchange(unsigned mask, uint64_t v, const char *op);
/* Abort: lane `lane` read lane `src`, which is not taking part in `op`. */
[[noreturn]] void bad_lane(const char *op, int lane, int src, unsigned active);
void sync_block();

template <class T> inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value,
                "cuda_emu: warp ops move values of at most 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <class T> inline T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}
/* the value lane `src` published (the caller's own value when src < 0) */
template <class T> inline T shfl_read(const warp_view_t &w, int src, T own, const char *op) {
  if (src < 0) return own;
  if (!(w.active >> src & 1u)) bad_lane(op, w.lane, src, w.active);
  return from_bits<T>(w.val[src]);
}
} // namespace ls_emu

#define threadIdx (::ls_emu::g_ctx.thread_idx)
#define blockIdx (::ls_emu::g_ctx.block_idx)
#define blockDim (::ls_emu::g_ctx.block_dim)
#define gridDim (::ls_emu::g_ctx.grid_dim)
static constexpr int warpSize = 32;

/* Run body() as the kernel of a (grid, block) launch with dyn_smem bytes of dynamic
 * shared memory. Returns when every block has finished. */
void ls_emu_launch(dim3 grid, dim3 block, size_t dyn_smem, std::function<void()> body);
/* the running block's dynamic shared memory (16-byte aligned) */
void *ls_emu_dyn_smem();

/* ---- launches under the emulated CUDA runtime ---------------------------------------- */
namespace ls_emu {
/* Set by the emulated CUDA runtime (tests/cuda_emu/emu_runtime.cpp) once a program has
 * used it (cudaSetDevice or cudaMalloc); NULL otherwise, as in the kernel-only tests,
 * whose kernels get plain host pointers. The checks print what is wrong and abort. */
struct launch_hooks_t {
  /* a launch of kern on stream st (a live stream of the runtime's) */
  void (*begin)(const char *kern, cudaStream_t st);
  /* pointer argument i: device memory or NULL; written unless it points to const */
  void (*arg)(const char *kern, int i, const void *p, bool write);
  void (*open)();  /* device memory accessible to the kernel's fibers ... */
  void (*close)(); /* ... until here */
};
inline launch_hooks_t *g_launch_hooks = nullptr;

template <class T> inline void check_launch_arg(const char *kern, int i, const T &v) {
  if constexpr (std::is_pointer<T>::value)
    g_launch_hooks->arg(kern, i, (const void *)v,
                        !std::is_const<typename std::remove_pointer<T>::type>::value);
}
} // namespace ls_emu

/* LS_LAUNCH (cuda_common.cuh): the launch's pointer arguments checked, then the launch. */
template <class... A>
inline void ls_emu_launch_checked(const char *kern, cudaStream_t st, dim3 grid, dim3 block,
                                  size_t dyn_smem, std::function<void()> body, const A &...args) {
  ls_emu::launch_hooks_t *h = ls_emu::g_launch_hooks;
  if (!h) {
    ls_emu_launch(grid, block, dyn_smem, std::move(body));
    return;
  }
  h->begin(kern, st);
  int i = 0;
  (ls_emu::check_launch_arg(kern, i++, args), ...);
  h->open();
  ls_emu_launch(grid, block, dyn_smem, std::move(body));
  h->close();
}

/* ---- barriers and warp intrinsics -------------------------------------------------- */
inline void __syncthreads() { ls_emu::sync_block(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { ls_emu::warp_exchange(mask, 0, "__syncwarp"); }

template <class T> inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
  ls_emu::warp_view_t w = ls_emu::warp_exchange(mask, ls_emu::to_bits(var), "__shfl_sync");
  const int src = (w.lane & ~(width - 1)) + (src_lane & (width - 1));
  return ls_emu::shfl_read(w, src, var, "__shfl_sync");
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
  ls_emu::warp_view_t w = ls_emu::warp_exchange(mask, ls_emu::to_bits(var), "__shfl_xor_sync");
  int src = w.lane ^ lane_mask;
  if (src >= (w.lane & ~(width - 1)) + width) src = -1; /* later groups: own value */
  return ls_emu::shfl_read(w, src, var, "__shfl_xor_sync");
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  ls_emu::warp_view_t w = ls_emu::warp_exchange(mask, ls_emu::to_bits(var), "__shfl_down_sync");
  int src = (w.lane & (width - 1)) + (int)delta < width ? w.lane + (int)delta : -1;
  return ls_emu::shfl_read(w, src, var, "__shfl_down_sync");
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  ls_emu::warp_view_t w = ls_emu::warp_exchange(mask, ls_emu::to_bits(var), "__shfl_up_sync");
  int src = (w.lane & (width - 1)) >= (int)delta ? w.lane - (int)delta : -1;
  return ls_emu::shfl_read(w, src, var, "__shfl_up_sync");
}

/* ---- loads, math, atomics (exact versions of the fast intrinsics) ------------------- */
template <class T> inline T __ldg(const T *p) { return *p; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline unsigned __float_as_uint(float x) { return ls_emu::from_bits<unsigned>(ls_emu::to_bits(x)); }
inline float __uint_as_float(unsigned x) { return ls_emu::from_bits<float>(ls_emu::to_bits(x)); }

/* fibers switch only at barriers, so a plain read-modify-write is atomic here */
template <class T> inline T ls_emu_atomic_add(T *p, T v) {
  T old = *p;
  *p = old + v;
  return old;
}
inline float atomicAdd(float *p, float v) { return ls_emu_atomic_add(p, v); }
inline double atomicAdd(double *p, double v) { return ls_emu_atomic_add(p, v); }
inline int atomicAdd(int *p, int v) { return ls_emu_atomic_add(p, v); }
inline unsigned atomicAdd(unsigned *p, unsigned v) { return ls_emu_atomic_add(p, v); }
inline unsigned long long atomicAdd(unsigned long long *p, unsigned long long v) {
  return ls_emu_atomic_add(p, v);
}

/* CUDA's integer min / max overloads (float ones are fminf / fmaxf in both builds) */
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }

#endif
