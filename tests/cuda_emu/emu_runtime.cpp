/* emu_runtime.cpp: the CUDA runtime, cuBLAS and NCCL functions that the CUDA backend
 * (kernels/cuda/backend_cuda.cu) calls, emulated on the CPU, so that the real backend
 * and the real engine (src/) run end to end on a machine without a GPU: the library
 * layersweep_core_emu of tests/cuda_emu/CMakeLists.txt links this file instead of
 * libcudart, libcublas and libnccl, and the kernels run under the SIMT emulator
 * (cuda_emu.h). A LOGIC test of the host code (host/device pointer confusion, missing or
 * mis-sized copies, wrong copy kinds, missing stream/event ordering, leaks), not a
 * substitute for the GPU tests: see "What it cannot show" below.
 *
 * Semantics. Everything is synchronous: an operation on a stream runs when it is
 * enqueued, events are always complete (cudaEventQuery returns cudaSuccess unless
 * LS_EMU_NOT_READY, below), and
 * ncclBroadcast is a blocking MPI_Bcast of the bytes on a duplicate of MPI_COMM_SELF
 * (1 rank) or MPI_COMM_WORLD (every rank, in world order). GEMMs are cblas_sgemm on the
 * exact float32 values (bf16 operands widened exactly): the real math up to summation
 * order.
 *   Device memory comes from one reserved address range (the "arena"): allocations
 * are 256-byte aligned, end at the end of their own pages, are separated by a free
 * page and, as far as the arena allows, never reused, filled with 0xFF bytes (NaN as
 * float) like uninitialised GPU memory, and limited to LS_EMU_GPU_MEM bytes (default
 * 8 GiB, suffixes K/M/G; cudaMemGetInfo reports it as free and total). Allocations
 * are PROT_NONE except while an emulated device operation (kernel, copy, GEMM,
 * broadcast) that takes them as arguments runs, so host code that dereferences a
 * device pointer faults, as does an operation that strays past its allocations; the
 * SIGSEGV handler names the allocation (and the operation). A system call handed such
 * memory (write, pread, MPI) fails with EFAULT, "Bad address", instead.
 * cudaGetDeviceCount returns LS_EMU_GPUS (default 1; 0: no device); every MPI rank has
 * "its own GPU" (the PCI bus id holds the world rank; LS_EMU_SHARED_GPU=1: all ranks
 * see the same GPUs).
 *   Test switches: LS_EMU_NOT_READY=1: the first cudaEventQuery after each record says
 * cudaErrorNotReady (the caller's polling loop runs, with ncclCommGetAsyncError);
 * LS_EMU_FAIL=API[:N[:RANK]]: the N-th call of API (cudaMalloc, cudaHostAlloc,
 * cudaMemcpyAsync, cudaStreamSynchronize, cudaEventQuery, cudaEventRecord,
 * cudaStreamWaitEvent, cudaStreamCreateWithFlags, cudaSetDevice, cudaGetDeviceCount,
 * cublasCreate, cublasGemmEx, ncclGetUniqueId, ncclCommInitRank, ncclBroadcast, or
 * ncclCommGetAsyncError: a peer vanished) on world rank RANK fails, to test error
 * paths (one report, agreement across ranks, no hang).
 *
 * Checks: a misuse prints what is wrong (API, pointers, allocation, stream) and a
 * backtrace, then aborts; on a GPU each would be an error code, a crash, a hang or
 * silently wrong data. Legitimate runtime failures (out of memory, no device) return
 * the real error codes instead.
 *   - pointers: cudaMemcpyAsync's kind must match the pointers (H2D: destination span
 *     inside one device allocation, source not device memory; D2H the reverse; D2D both
 *     device; no overlap); a host span that starts inside a cudaHostAlloc block must
 *     end inside it; cublasGemmEx's A, B, C (full column-major spans) and the cuBLAS
 *     workspace are device memory, alpha/beta host memory; ncclBroadcast's buffers are
 *     device memory; every pointer argument of every kernel launch is device memory
 *     or NULL (the LS_LAUNCH hook of cuda_emu.h); cudaFree / cudaFreeHost only of what
 *     cudaMalloc / cudaHostAlloc returned.
 *   - handles: streams, events, cuBLAS handles and NCCL communicators must be live
 *     (created, not destroyed); no operation on the legacy default stream (stream 0 is
 *     not ordered with the backend's non-blocking streams).
 *   - stream ordering (a vector-clock model, although nothing runs concurrently): each
 *     stream and the host carry a vector clock; cudaEventRecord / cudaStreamWaitEvent
 *     pass it on, host synchronisation (cudaStreamSynchronize, a successful
 *     cudaEventQuery, cudaFree, a D2H copy into pageable memory) merges it into the
 *     host's. An operation that touches a device allocation last written (or, when it
 *     writes, last read) by ANOTHER stream with no event chain between them is a race
 *     on a GPU: reported. Kernel arguments count as written when their pointer type is
 *     not const. Pinned host memory used by an asynchronous copy is protected (no
 *     access while a D2H copy into it, no writes while an H2D copy from it) until the
 *     host has synchronised with that copy: a host access before then faults and is
 *     reported as a missing synchronisation (a system call gets EFAULT, see above).
 *   - at exit: live device / pinned allocations, streams, events, cuBLAS handles and
 *     NCCL communicators are listed (LS_EMU_LEAKS=fail turns a leak into exit status 1).
 *
 * What it cannot show: real concurrency (kernels overlapping copies, the weight
 * broadcast overlapping compute, timing-dependent races inside kernels; the ordering
 * model above checks the event choreography, not timing), the GPU's memory model,
 * performance, cuBLAS's algorithm choices and their rounding (TF32, split-K), NCCL's
 * transports, its asynchronous kernels (a collective that one rank skips blocks the
 * others here at once, on a GPU at their next wait or at teardown) and its real
 * asynchronous errors, driver/version mismatches, asynchronous kernel faults, and real
 * out-of-memory behaviour (fragmentation, the CUDA context's own memory). Only one host
 * thread may call the runtime (as in the backend). */
#define OMPI_SKIP_MPICXX 1
#include <cblas.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <execinfo.h>
#include <mpi.h>
#include <nccl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "cuda_emu.h"

/* ---- the opaque handle types of the real headers -------------------------------------- */
struct CUstream_st {
  int id;         /* agent id in the vector clocks (the host is 0) */
  unsigned flags;
  std::vector<uint64_t> vc;
};
struct CUevent_st {
  int serial;
  bool recorded;
  bool polled; /* LS_EMU_NOT_READY: queried once since the last record */
  std::vector<uint64_t> vc;
};
struct cublasContext {
  cudaStream_t stream;
  void *workspace;
  size_t workspace_bytes;
  cublasMath_t math;
};
struct ncclComm {
  MPI_Comm comm;
  int rank, nranks;
  char last_error[256];
};

namespace {

/* ---- state ------------------------------------------------------------------------------- */
struct dev_alloc_t { /* a cudaMalloc block */
  size_t bytes;     /* asked */
  uintptr_t block;  /* the pages holding it: [block, block + span); the allocation ends
                     * at the 256-byte boundary nearest the end, so that an overrun
                     * reaches the free page after it */
  size_t span;
  uint64_t serial;
  struct epoch_t {
    int agent; /* -1: none */
    uint64_t clock;
    const char *op;
  } last_write;
  std::vector<epoch_t> reads; /* at most one per agent */
};
struct pending_t { /* an asynchronous copy touching pinned memory, not yet synced */
  uintptr_t lo, hi; /* pages */
  int agent;
  uint64_t clock;
  bool device_writes; /* D2H: no host access at all; H2D: no host writes */
  const char *op;
};
struct pinned_t { /* a cudaHostAlloc block */
  size_t bytes, span;
  uint64_t serial;
  std::vector<pending_t> pend;
};

bool g_init;
pthread_t g_thread;
int g_world_rank = -1;
size_t g_page;
size_t g_gpu_mem = (size_t)8 << 30;
int g_n_gpus = 1;
bool g_not_ready; /* LS_EMU_NOT_READY=1 */
cudaError_t g_last_error = cudaSuccess;

char *g_arena; /* device memory: [g_arena, g_arena + g_arena_bytes) */
size_t g_arena_bytes;
uintptr_t g_cursor;     /* next-fit start */
size_t g_live_bytes;
const char *g_open_op;  /* the device operation running, or NULL */
std::vector<std::pair<uintptr_t, size_t>> g_open; /* the allocations it may touch */
uint64_t g_serial;
std::map<uintptr_t, dev_alloc_t> g_dev;
std::map<uintptr_t, pinned_t> g_pinned;

std::set<cudaStream_t> g_streams;
std::set<cudaEvent_t> g_events;
std::set<cublasHandle_t> g_blas;
std::set<ncclComm_t> g_comms;
int g_n_agents = 1; /* the host is agent 0 */
std::vector<uint64_t> g_host_vc;   /* what the host knows to have completed */
std::vector<uint64_t> g_device_vc; /* every operation ever enqueued */
int g_n_events;
char g_nccl_error[256];

struct sigaction g_old_segv;

int world_rank() {
  if (g_world_rank >= 0) return g_world_rank;
  int inited = 0, fin = 0;
  MPI_Initialized(&inited);
  MPI_Finalized(&fin);
  if (inited && !fin) {
    MPI_Comm_rank(MPI_COMM_WORLD, &g_world_rank);
    return g_world_rank;
  }
  const char *e = getenv("OMPI_COMM_WORLD_RANK");
  return e ? atoi(e) : 0;
}

/* ---- reporting --------------------------------------------------------------------------- */
[[noreturn]] void misuse(const char *api, const char *fmt, ...) {
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fprintf(stderr,
          "ls_emu (rank %d): %s: %s\n"
          "ls_emu:   on a GPU this is an error, a crash, a race or wrong data; it is a bug in "
          "the caller (kernels/cuda/backend_cuda.cu or the engine in src/), unless the emulator "
          "(tests/cuda_emu/emu_runtime.cpp) is wrong. Backtrace:\n",
          world_rank(), api, msg);
  void *bt[64];
  int n = backtrace(bt, 64);
  backtrace_symbols_fd(bt, n, 2);
  fflush(stderr);
  abort();
}

cudaError_t fail_rt(cudaError_t e) {
  g_last_error = e;
  return e;
}

/* LS_EMU_FAIL=API[:N[:RANK]]: the N-th call (default the first) of the function API on
 * world rank RANK (default every rank) fails with a typical error of that API, to test
 * the callers' error paths: one report, agreement across ranks, no hang. */
bool injected(const char *api) {
  static bool parsed;
  static std::string name;
  static long nth = 1, calls = 0;
  static int rank = -1;
  if (!parsed) {
    parsed = true;
    const char *e = getenv("LS_EMU_FAIL");
    if (e && *e) {
      std::string v = e;
      const size_t c1 = v.find(':');
      name = v.substr(0, c1);
      if (c1 != std::string::npos) {
        nth = atol(v.c_str() + c1 + 1);
        const size_t c2 = v.find(':', c1 + 1);
        if (c2 != std::string::npos) rank = atoi(v.c_str() + c2 + 1);
      }
    }
  }
  if (name.empty() || name != api || (rank >= 0 && rank != world_rank())) return false;
  if (++calls != nth) return false;
  fprintf(stderr, "ls_emu (rank %d): LS_EMU_FAIL: call %ld of %s fails\n", world_rank(), calls,
          api);
  return true;
}
#define INJECT_RT(api, err) \
  do {                      \
    if (injected(api)) return fail_rt(err); \
  } while (0)
#define INJECT(api, err) \
  do {                   \
    if (injected(api)) return err; \
  } while (0)

/* ---- setup ---------------------------------------------------------------------------------- */
void segv_handler(int sig, siginfo_t *si, void *uc);
void on_exit_report();
extern ls_emu::launch_hooks_t g_hooks;

size_t env_bytes(const char *name, size_t dflt) {
  const char *e = getenv(name);
  if (!e || !*e) return dflt;
  char *end = nullptr;
  double v = strtod(e, &end);
  if (end && (*end == 'k' || *end == 'K')) v *= 1024.0;
  if (end && (*end == 'm' || *end == 'M')) v *= 1048576.0;
  if (end && (*end == 'g' || *end == 'G')) v *= 1073741824.0;
  return v > 0 ? (size_t)v : dflt;
}

void init() {
  if (g_init) {
    if (!pthread_equal(g_thread, pthread_self()))
      misuse("CUDA runtime", "called from a second host thread; the emulator supports one host "
                             "thread (as the backend uses)");
    return;
  }
  g_init = true;
  g_thread = pthread_self();
  g_page = (size_t)sysconf(_SC_PAGESIZE);
  g_gpu_mem = env_bytes("LS_EMU_GPU_MEM", g_gpu_mem);
  const char *nr = getenv("LS_EMU_NOT_READY");
  g_not_ready = nr && strcmp(nr, "1") == 0;
  const char *ng = getenv("LS_EMU_GPUS");
  if (ng && *ng) g_n_gpus = atoi(ng) < 0 ? 0 : atoi(ng);
  /* room to not reuse addresses: 4x the memory + 4 GiB of address space, reserved only */
  g_arena_bytes = (g_gpu_mem + g_page - 1) / g_page * g_page * 4 + ((size_t)4 << 30);
  void *p = mmap(nullptr, g_arena_bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  if (p == MAP_FAILED) {
    fprintf(stderr, "ls_emu: cannot reserve %.1f GiB of address space for device memory\n",
            (double)g_arena_bytes / 1073741824.0);
    abort();
  }
  g_arena = (char *)p;
  g_cursor = (uintptr_t)g_arena;
  g_host_vc.assign(1, 0);
  g_device_vc.assign(1, 0);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = segv_handler;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGSEGV, &sa, &g_old_segv);
  atexit(on_exit_report);
}

/* the runtime was used for real: kernel launches are checked from now on */
void activate() { ls_emu::g_launch_hooks = &g_hooks; }

/* ---- device memory -------------------------------------------------------------------------- */
uintptr_t arena_lo() { return (uintptr_t)g_arena; }
uintptr_t arena_hi() { return (uintptr_t)g_arena + g_arena_bytes; }
bool in_arena(const void *p) { return (uintptr_t)p >= arena_lo() && (uintptr_t)p < arena_hi(); }

/* While a device operation runs, the allocations of its pointer arguments are readable
 * and writable; the rest of the arena stays PROT_NONE, so an access outside them faults
 * and the SIGSEGV handler names the operation. */
struct dev_op_t {
  explicit dev_op_t(const char *name) { g_open_op = name; }
  ~dev_op_t() {
    for (const auto &r : g_open) mprotect((void *)r.first, r.second, PROT_NONE);
    g_open.clear();
    g_open_op = nullptr;
  }
};
void open_alloc(const std::pair<const uintptr_t, dev_alloc_t> *d) {
  for (const auto &r : g_open)
    if (r.first == d->second.block) return;
  g_open.push_back({d->second.block, d->second.span});
  mprotect((void *)d->second.block, d->second.span, PROT_READ | PROT_WRITE);
}

/* the device allocation holding p, or NULL */
std::pair<const uintptr_t, dev_alloc_t> *dev_find(const void *p) {
  if (!in_arena(p) || g_dev.empty()) return nullptr;
  auto it = g_dev.upper_bound((uintptr_t)p);
  if (it == g_dev.begin()) return nullptr;
  --it;
  return (uintptr_t)p < it->first + it->second.bytes ? &*it : nullptr;
}

std::pair<const uintptr_t, pinned_t> *pinned_find(const void *p) {
  if (g_pinned.empty()) return nullptr;
  auto it = g_pinned.upper_bound((uintptr_t)p);
  if (it == g_pinned.begin()) return nullptr;
  --it;
  return (uintptr_t)p < it->first + it->second.bytes ? &*it : nullptr;
}

std::string describe(const void *p) {
  char b[256];
  if (!p) return "NULL";
  if (auto *d = dev_find(p)) {
    snprintf(b, sizeof b, "%p (device allocation #%" PRIu64 " of %zu bytes at %p, offset %zu)", p,
             d->second.serial, d->second.bytes, (void *)d->first,
             (size_t)((uintptr_t)p - d->first));
  } else if (in_arena(p)) {
    snprintf(b, sizeof b, "%p (device address space, but in no live allocation: freed, or past "
                          "the end of one)", p);
  } else if (auto *h = pinned_find(p)) {
    snprintf(b, sizeof b, "%p (pinned host allocation #%" PRIu64 " of %zu bytes at %p, offset %zu)",
             p, h->second.serial, h->second.bytes, (void *)h->first,
             (size_t)((uintptr_t)p - h->first));
  } else {
    snprintf(b, sizeof b, "%p (host memory)", p);
  }
  return b;
}

/* [p, p + bytes) must lie inside one device allocation */
std::pair<const uintptr_t, dev_alloc_t> *dev_span(const char *api, const char *what,
                                                  const void *p, size_t bytes) {
  auto *d = dev_find(p);
  if (!d)
    misuse(api, "%s %s is not device memory (%zu bytes used from it)", what, describe(p).c_str(),
           bytes);
  const size_t off = (size_t)((uintptr_t)p - d->first);
  if (bytes > d->second.bytes - off)
    misuse(api, "%s %s: %zu bytes from there run %zu bytes past the end of its device allocation",
           what, describe(p).c_str(), bytes, bytes - (d->second.bytes - off));
  return d;
}

/* [p, p + bytes) must not touch device memory; if it starts in a pinned block it must
 * end inside it. Returns the pinned block or NULL (pageable memory). */
std::pair<const uintptr_t, pinned_t> *host_span(const char *api, const char *what, const void *p,
                                                size_t bytes) {
  const uintptr_t a = (uintptr_t)p, b = a + bytes;
  if (!p) misuse(api, "%s is NULL (%zu bytes)", what, bytes);
  if (a < arena_hi() && b > arena_lo())
    misuse(api, "%s %s is device memory, but this copy's kind says host memory", what,
           describe(p).c_str());
  auto *h = pinned_find(p);
  if (h && bytes > h->second.bytes - (a - h->first))
    misuse(api, "%s %s: %zu bytes from there run past the end of its pinned host allocation",
           what, describe(p).c_str(), bytes);
  return h;
}

/* a page-aligned block of `need` bytes at or after `from`, a free page after it */
uintptr_t find_gap(uintptr_t from, size_t need) {
  uintptr_t lo = from;
  auto it = g_dev.lower_bound(lo);
  if (it != g_dev.begin()) {
    auto pv = std::prev(it);
    lo = std::max(lo, pv->second.block + pv->second.span + g_page);
  }
  for (;; ++it) {
    const uintptr_t hi = it == g_dev.end() ? arena_hi() : it->second.block;
    if (hi >= lo && hi - lo >= need + g_page) return lo;
    if (it == g_dev.end()) return 0;
    lo = it->second.block + it->second.span + g_page;
  }
}

/* ---- vector clocks ------------------------------------------------------------------------ */
void join(std::vector<uint64_t> &a, const std::vector<uint64_t> &b) {
  if (a.size() < b.size()) a.resize(b.size(), 0);
  for (size_t i = 0; i < b.size(); i++) a[i] = std::max(a[i], b[i]);
}
bool covers(const std::vector<uint64_t> &vc, int agent, uint64_t clock) {
  return (size_t)agent < vc.size() && vc[(size_t)agent] >= clock;
}

void apply_pinned_prot(uintptr_t base, pinned_t &h) {
  mprotect((void *)base, h.span, PROT_READ | PROT_WRITE);
  for (int pass = 0; pass < 2; pass++) /* read-only first, no-access over it */
    for (const pending_t &q : h.pend)
      if (q.device_writes == (pass == 1))
        mprotect((void *)q.lo, q.hi - q.lo, q.device_writes ? PROT_NONE : PROT_READ);
}

/* the host now knows that everything in vc has completed */
void host_sync(const std::vector<uint64_t> &vc) {
  join(g_host_vc, vc);
  for (auto &kv : g_pinned) {
    auto &pend = kv.second.pend;
    const size_t n = pend.size();
    auto done = [](const pending_t &q) { return covers(g_host_vc, q.agent, q.clock); };
    pend.erase(std::remove_if(pend.begin(), pend.end(), done), pend.end());
    if (pend.size() != n) apply_pinned_prot(kv.first, kv.second);
  }
}

struct op_t {
  cudaStream_t s;
  uint64_t clock;
  const char *name;
};

void check_stream(const char *api, cudaStream_t s) {
  if (!s)
    misuse(api, "work on the legacy default stream (stream 0): it is not ordered with the "
                "backend's non-blocking streams");
  if (!g_streams.count(s))
    misuse(api, "stream %p is not a live stream (never created, or destroyed)", (void *)s);
}

/* an operation enqueued on s: after everything the host did so far, and after s's
 * earlier work */
op_t begin_op(const char *api, cudaStream_t s, const char *name) {
  check_stream(api, s);
  join(s->vc, g_host_vc);
  const uint64_t c = ++s->vc[(size_t)s->id];
  if (g_device_vc.size() <= (size_t)s->id) g_device_vc.resize((size_t)s->id + 1, 0);
  g_device_vc[(size_t)s->id] = c;
  return op_t{s, c, name};
}

/* op reads (and, if write, writes) device allocation a */
void dev_touch(const char *api, const op_t &op, const void *p, dev_alloc_t &a, bool write) {
  const std::vector<uint64_t> &vc = op.s->vc;
  const int me = op.s->id;
  const auto &w = a.last_write;
  if (w.agent >= 0 && w.agent != me && !covers(vc, w.agent, w.clock))
    misuse(api, "stream-ordering race: %s on stream #%d %s %s, last written by %s on stream #%d "
                "with no event or host synchronisation ordering the two (cudaEventRecord on the "
                "writer's stream and cudaStreamWaitEvent on this one)",
           op.name, me, write ? "writes" : "reads", describe(p).c_str(), w.op, w.agent);
  if (write)
    for (const auto &r : a.reads)
      if (r.agent != me && !covers(vc, r.agent, r.clock))
        misuse(api, "stream-ordering race: %s on stream #%d writes %s, still read by %s on stream "
                    "#%d with no event or host synchronisation ordering the two",
               op.name, me, describe(p).c_str(), r.op, r.agent);
  if (write) {
    a.last_write = {me, op.clock, op.name};
    a.reads.clear();
    return;
  }
  for (auto &r : a.reads)
    if (r.agent == me) {
      r.clock = op.clock;
      r.op = op.name;
      return;
    }
  a.reads.push_back({me, op.clock, op.name});
}

/* an asynchronous copy on op's stream reads (H2D) or writes (D2H) pinned block h */
void pinned_touch(const op_t &op, std::pair<const uintptr_t, pinned_t> *h, const void *p,
                  size_t bytes, bool device_writes) {
  const uintptr_t lo = (uintptr_t)p & ~(uintptr_t)(g_page - 1);
  const uintptr_t hi = ((uintptr_t)p + bytes + g_page - 1) & ~(uintptr_t)(g_page - 1);
  h->second.pend.push_back({lo, hi, op.s->id, op.clock, device_writes, op.name});
  apply_pinned_prot(h->first, h->second);
}

/* ---- SIGSEGV: host code touching device memory, or pinned memory in flight --------------- */
void segv_handler(int sig, siginfo_t *si, void *uc) {
  const void *a = si->si_addr;
  char msg[1024];
  int n = -1;
  if (in_arena(a) && g_open_op) {
    n = snprintf(msg, sizeof msg,
                 "ls_emu (rank %d): the device operation %s touched device memory at %s, outside "
                 "the allocations of its pointer arguments (out of bounds; on a GPU: garbage or "
                 "an illegal address). Backtrace:\n",
                 world_rank(), g_open_op, describe(a).c_str());
  } else if (in_arena(a)) {
    n = snprintf(msg, sizeof msg,
                 "ls_emu (rank %d): host code dereferenced DEVICE memory at %s outside any CUDA "
                 "call: a host/device pointer confusion (on a GPU: a crash or garbage). "
                 "Backtrace:\n",
                 world_rank(), describe(a).c_str());
  } else if (auto *h = pinned_find(a)) {
    for (const pending_t &q : h->second.pend)
      if ((uintptr_t)a >= q.lo && (uintptr_t)a < q.hi) {
        n = snprintf(msg, sizeof msg,
                     "ls_emu (rank %d): host code touched PINNED host memory at %s while %s on "
                     "stream #%d, which %s it asynchronously, is not known to have completed: a "
                     "missing synchronisation (cudaStreamSynchronize / cudaEventQuery / the "
                     "backend's sync) before the host %s it. Backtrace:\n",
                     world_rank(), describe(a).c_str(), q.op, q.agent,
                     q.device_writes ? "writes" : "reads",
                     q.device_writes ? "reads or writes" : "writes");
        break;
      }
  }
  if (n > 0) {
    if (write(2, msg, strlen(msg)) < 0) { /* nothing to do */
    }
    void *bt[64];
    int k = backtrace(bt, 64);
    backtrace_symbols_fd(bt, k, 2);
    signal(SIGABRT, SIG_DFL);
    abort();
  }
  /* not ours: the previous handler, or the default action */
  if (g_old_segv.sa_flags & SA_SIGINFO) {
    if (g_old_segv.sa_sigaction) {
      g_old_segv.sa_sigaction(sig, si, uc);
      return;
    }
  } else if (g_old_segv.sa_handler != SIG_DFL && g_old_segv.sa_handler != SIG_IGN) {
    g_old_segv.sa_handler(sig);
    return;
  }
  signal(SIGSEGV, SIG_DFL); /* the faulting instruction runs again and kills the process */
}

/* ---- kernel launches (cuda_emu.h) ------------------------------------------------------------ */
op_t g_launch_op;

void hook_begin(const char *kern, cudaStream_t st) {
  init();
  g_launch_op = begin_op(kern, st, kern);
}
void hook_arg(const char *kern, int i, const void *p, bool write) {
  if (!p) return;
  auto *d = dev_find(p);
  if (!d) {
    char what[64];
    snprintf(what, sizeof what, "kernel argument %d", i);
    misuse(kern, "%s = %s is not device memory", what, describe(p).c_str());
  }
  dev_touch(kern, g_launch_op, p, d->second, write);
  open_alloc(d);
}
void hook_open() { g_open_op = g_launch_op.name; }
void hook_close() { dev_op_t done(nullptr); } /* closes what hook_arg opened */

ls_emu::launch_hooks_t g_hooks = {hook_begin, hook_arg, hook_open, hook_close};

/* ---- at exit: leaks ------------------------------------------------------------------------ */
void on_exit_report() {
  size_t dev_bytes = 0, pin_bytes = 0;
  for (auto &kv : g_dev) dev_bytes += kv.second.bytes;
  for (auto &kv : g_pinned) pin_bytes += kv.second.bytes;
  const bool leak = !g_dev.empty() || !g_pinned.empty() || !g_streams.empty() ||
                    !g_events.empty() || !g_blas.empty() || !g_comms.empty();
  if (!leak) return;
  fprintf(stderr,
          "ls_emu (rank %d): at exit, still live: %zu device allocations (%zu bytes), %zu pinned "
          "host allocations (%zu bytes), %zu streams, %zu events, %zu cuBLAS handles, %zu NCCL "
          "communicators\n",
          world_rank(), g_dev.size(), dev_bytes, g_pinned.size(), pin_bytes, g_streams.size(),
          g_events.size(), g_blas.size(), g_comms.size());
  int shown = 0;
  for (auto &kv : g_dev)
    if (shown++ < 8)
      fprintf(stderr, "ls_emu:   device allocation #%" PRIu64 ": %zu bytes at %p\n",
              kv.second.serial, kv.second.bytes, (void *)kv.first);
  for (auto &kv : g_pinned)
    if (shown++ < 16)
      fprintf(stderr, "ls_emu:   pinned allocation #%" PRIu64 ": %zu bytes at %p\n",
              kv.second.serial, kv.second.bytes, (void *)kv.first);
  const char *f = getenv("LS_EMU_LEAKS");
  if (f && strcmp(f, "fail") == 0) {
    fflush(stderr);
    _exit(1);
  }
}

size_t dtype_bytes(ncclDataType_t t) {
  switch (t) {
  case ncclInt8: case ncclUint8: case ncclFloat8e4m3: case ncclFloat8e5m2: return 1;
  case ncclFloat16: case ncclBfloat16: return 2;
  case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
  case ncclInt64: case ncclUint64: case ncclFloat64: return 8;
  default: return 0;
  }
}

} // namespace

/* =============================== CUDA runtime ================================================ */

const char *cudaGetErrorString(cudaError_t e) {
  switch (e) {
  case cudaSuccess: return "no error";
  case cudaErrorInvalidValue: return "invalid argument";
  case cudaErrorMemoryAllocation: return "out of memory";
  case cudaErrorInvalidDevicePointer: return "invalid device pointer";
  case cudaErrorInsufficientDriver:
    return "CUDA driver version is insufficient for CUDA runtime version";
  case cudaErrorNoDevice: return "no CUDA-capable device is detected";
  case cudaErrorInvalidDevice: return "invalid device ordinal";
  case cudaErrorInvalidResourceHandle: return "invalid resource handle";
  case cudaErrorNotReady: return "device not ready";
  case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
  default: return "unrecognized error code (layersweep CPU emulator)";
  }
}

cudaError_t cudaGetLastError(void) {
  cudaError_t e = g_last_error;
  g_last_error = cudaSuccess;
  return e;
}

cudaError_t cudaGetDeviceCount(int *count) {
  init();
  INJECT_RT("cudaGetDeviceCount", cudaErrorInsufficientDriver);
  if (!count) misuse("cudaGetDeviceCount", "count is NULL");
  *count = g_n_gpus;
  return g_n_gpus > 0 ? cudaSuccess : fail_rt(cudaErrorNoDevice);
}

cudaError_t cudaSetDevice(int device) {
  init();
  INJECT_RT("cudaSetDevice", cudaErrorInvalidDevice);
  if (device < 0 || device >= g_n_gpus) return fail_rt(cudaErrorInvalidDevice);
  activate();
  return cudaSuccess;
}

cudaError_t cudaDeviceGetPCIBusId(char *pciBusId, int len, int device) {
  init();
  if (!pciBusId || len <= 0) return fail_rt(cudaErrorInvalidValue);
  if (device < 0 || device >= g_n_gpus) return fail_rt(cudaErrorInvalidDevice);
  /* every MPI rank has its own GPU(s): the world rank is the PCI domain
   * (LS_EMU_SHARED_GPU=1: the ranks of a node see the same GPUs) */
  const char *shared = getenv("LS_EMU_SHARED_GPU");
  const unsigned dom = shared && strcmp(shared, "1") == 0 ? 0u : (unsigned)world_rank() & 0xffffu;
  char b[64];
  snprintf(b, sizeof b, "%04x:%02x:00.0", dom, (unsigned)device);
  if ((int)strlen(b) >= len) return fail_rt(cudaErrorInvalidValue);
  memcpy(pciBusId, b, strlen(b) + 1);
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *prop, int device) {
  init();
  if (!prop) return fail_rt(cudaErrorInvalidValue);
  if (device < 0 || device >= g_n_gpus) return fail_rt(cudaErrorInvalidDevice);
  memset(prop, 0, sizeof *prop);
  snprintf(prop->name, sizeof prop->name, "layersweep CPU emulator");
  prop->totalGlobalMem = g_gpu_mem;
  prop->major = 9;
  prop->minor = 0;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = 1024;
  prop->sharedMemPerBlock = 48 << 10;
  prop->sharedMemPerBlockOptin = 227 << 10;
  prop->multiProcessorCount = 1;
  prop->pciBusID = device;
  prop->pciDomainID = world_rank();
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b) {
  init();
  if (!free_b || !total_b) return fail_rt(cudaErrorInvalidValue);
  *free_b = *total_b = g_gpu_mem;
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void *func, enum cudaFuncAttribute attr, int value) {
  init();
  return func ? cudaSuccess : fail_rt(cudaErrorInvalidValue);
}

/* ---- memory ---- */
cudaError_t cudaMalloc(void **ptr, size_t bytes) {
  init();
  activate();
  if (!ptr) misuse("cudaMalloc", "ptr is NULL");
  *ptr = nullptr;
  INJECT_RT("cudaMalloc", cudaErrorMemoryAllocation);
  if (bytes == 0) return cudaSuccess;
  if (bytes > g_gpu_mem - g_live_bytes) return fail_rt(cudaErrorMemoryAllocation);
  const size_t span = (bytes + g_page - 1) / g_page * g_page;
  uintptr_t block = find_gap(g_cursor, span);
  if (!block) block = find_gap(arena_lo(), span);
  if (!block) return fail_rt(cudaErrorMemoryAllocation);
  g_cursor = block + span + g_page;
  const uintptr_t p = block + span - (bytes + 255) / 256 * 256; /* 256-byte aligned */
  dev_alloc_t a;
  a.bytes = bytes;
  a.block = block;
  a.span = span;
  a.serial = ++g_serial;
  a.last_write = {-1, 0, nullptr};
  g_dev[p] = a;
  g_live_bytes += bytes;
  {
    dev_op_t fill("cudaMalloc");
    open_alloc(&*g_dev.find(p));
    memset((void *)p, 0xFF, bytes); /* uninitialised: NaN */
  }
  *ptr = (void *)p;
  return cudaSuccess;
}

cudaError_t cudaFree(void *p) {
  init();
  if (!p) return cudaSuccess; /* also cudaFree(0): creates the context */
  auto *d = dev_find(p);
  if (!d || d->first != (uintptr_t)p)
    misuse("cudaFree", "%s is not a pointer returned by cudaMalloc%s", describe(p).c_str(),
           pinned_find(p) ? " (pinned host memory goes to cudaFreeHost)" : "");
  host_sync(g_device_vc); /* cudaFree waits for the device */
  madvise((void *)d->second.block, d->second.span, MADV_DONTNEED);
  g_live_bytes -= d->second.bytes;
  g_dev.erase(d->first);
  return cudaSuccess;
}

cudaError_t cudaHostAlloc(void **ptr, size_t bytes, unsigned int flags) {
  init();
  if (!ptr) misuse("cudaHostAlloc", "ptr is NULL");
  *ptr = nullptr;
  INJECT_RT("cudaHostAlloc", cudaErrorMemoryAllocation);
  const size_t span = (std::max<size_t>(bytes, 1) + g_page - 1) / g_page * g_page;
  void *p = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return fail_rt(cudaErrorMemoryAllocation);
  memset(p, 0xFF, bytes);
  pinned_t h;
  h.bytes = std::max<size_t>(bytes, 1);
  h.span = span;
  h.serial = ++g_serial;
  g_pinned[(uintptr_t)p] = h;
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaFreeHost(void *p) {
  init();
  if (!p) return cudaSuccess;
  auto *h = pinned_find(p);
  if (!h || h->first != (uintptr_t)p)
    misuse("cudaFreeHost", "%s is not a pointer returned by cudaHostAlloc%s", describe(p).c_str(),
           dev_find(p) ? " (device memory goes to cudaFree)" : "");
  host_sync(g_device_vc); /* cudaFreeHost waits for the device */
  munmap(p, h->second.span);
  g_pinned.erase(h->first);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t count, enum cudaMemcpyKind kind,
                            cudaStream_t stream) {
  init();
  static const char *names[] = {"cudaMemcpyAsync (host to host)",
                                "cudaMemcpyAsync (host to device)",
                                "cudaMemcpyAsync (device to host)",
                                "cudaMemcpyAsync (device to device)", "cudaMemcpyAsync (default)"};
  const char *api = kind >= 0 && kind <= 4 ? names[kind] : "cudaMemcpyAsync";
  INJECT_RT("cudaMemcpyAsync", cudaErrorIllegalAddress);
  if (kind != cudaMemcpyHostToDevice && kind != cudaMemcpyDeviceToHost &&
      kind != cudaMemcpyDeviceToDevice)
    misuse(api, "copy kind %d is not one the backend uses (not emulated)", (int)kind);
  op_t op = begin_op(api, stream, api);
  if (count == 0) return cudaSuccess;
  std::pair<const uintptr_t, pinned_t> *hp = nullptr;
  dev_op_t run(api);
  if (kind == cudaMemcpyHostToDevice) {
    auto *d = dev_span(api, "destination", dst, count);
    hp = host_span(api, "source", src, count);
    dev_touch(api, op, dst, d->second, true);
    open_alloc(d);
  } else if (kind == cudaMemcpyDeviceToHost) {
    auto *s = dev_span(api, "source", src, count);
    hp = host_span(api, "destination", dst, count);
    dev_touch(api, op, src, s->second, false);
    open_alloc(s);
  } else {
    auto *s = dev_span(api, "source", src, count);
    auto *d = dev_span(api, "destination", dst, count);
    const uintptr_t a = (uintptr_t)src, b = (uintptr_t)dst;
    if (a < b + count && b < a + count)
      misuse(api, "source %s and destination %s overlap (%zu bytes)", describe(src).c_str(),
             describe(dst).c_str(), count);
    dev_touch(api, op, src, s->second, false);
    dev_touch(api, op, dst, d->second, true);
    open_alloc(s);
    open_alloc(d);
  }
  if (hp) mprotect((void *)hp->first, hp->second.span, PROT_READ | PROT_WRITE);
  memcpy(dst, src, count);
  if (hp) {
    pinned_touch(op, hp, kind == cudaMemcpyHostToDevice ? src : dst, count,
                 kind == cudaMemcpyDeviceToHost);
  } else if (kind == cudaMemcpyDeviceToHost) {
    host_sync(stream->vc); /* into pageable memory: returns once the copy is done */
  }
  return cudaSuccess;
}

/* ---- streams and events ---- */
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned int flags) {
  init();
  INJECT_RT("cudaStreamCreateWithFlags", cudaErrorMemoryAllocation);
  if (!s) misuse("cudaStreamCreateWithFlags", "pStream is NULL");
  cudaStream_t st = new CUstream_st();
  st->id = g_n_agents++;
  st->flags = flags;
  st->vc.assign((size_t)st->id + 1, 0);
  join(st->vc, g_host_vc);
  g_streams.insert(st);
  *s = st;
  return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t s) {
  init();
  check_stream("cudaStreamDestroy", s);
  g_streams.erase(s); /* not deleted: a stale handle is never mistaken for a new one */
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  init();
  INJECT_RT("cudaStreamSynchronize", cudaErrorIllegalAddress);
  check_stream("cudaStreamSynchronize", s);
  host_sync(s->vc);
  return cudaSuccess;
}

static void check_event(const char *api, cudaEvent_t e) {
  if (!e || !g_events.count(e))
    misuse(api, "event %p is not a live event (never created, or destroyed)", (void *)e);
}

cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned int flags) {
  init();
  INJECT_RT("cudaStreamWaitEvent", cudaErrorIllegalAddress);
  check_stream("cudaStreamWaitEvent", s);
  check_event("cudaStreamWaitEvent", e);
  join(s->vc, g_host_vc);
  if (e->recorded) join(s->vc, e->vc);
  return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned int flags) {
  init();
  if (!e) misuse("cudaEventCreateWithFlags", "event is NULL");
  cudaEvent_t ev = new CUevent_st();
  ev->serial = ++g_n_events;
  ev->recorded = false;
  g_events.insert(ev);
  *e = ev;
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  init();
  INJECT_RT("cudaEventRecord", cudaErrorIllegalAddress);
  check_event("cudaEventRecord", e);
  check_stream("cudaEventRecord", s);
  join(s->vc, g_host_vc);
  e->vc = s->vc;
  e->recorded = true;
  e->polled = false;
  return cudaSuccess;
}

cudaError_t cudaEventQuery(cudaEvent_t e) {
  init();
  INJECT_RT("cudaEventQuery", cudaErrorIllegalAddress);
  check_event("cudaEventQuery", e);
  if (g_not_ready && e->recorded && !e->polled) { /* "still running": the caller polls */
    e->polled = true;
    return cudaErrorNotReady;
  }
  if (e->recorded) host_sync(e->vc); /* complete: the host now knows it */
  return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t e) {
  init();
  check_event("cudaEventDestroy", e);
  g_events.erase(e); /* not deleted, as streams */
  return cudaSuccess;
}

/* =============================== cuBLAS ====================================================== */

const char *cublasGetStatusString(cublasStatus_t s) {
  switch (s) {
  case CUBLAS_STATUS_SUCCESS: return "the operation completed successfully";
  case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
  case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
  case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
  case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
  case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported "
                                           "(by the layersweep CPU emulator)";
  default: return "unknown cuBLAS status (layersweep CPU emulator)";
  }
}

static void check_blas(const char *api, cublasHandle_t h) {
  if (!h || !g_blas.count(h))
    misuse(api, "cuBLAS handle %p is not live (never created, or destroyed)", (void *)h);
}

cublasStatus_t cublasCreate(cublasHandle_t *h) {
  init();
  INJECT("cublasCreate", CUBLAS_STATUS_NOT_INITIALIZED);
  if (!h) return CUBLAS_STATUS_INVALID_VALUE;
  cublasHandle_t c = new cublasContext();
  c->stream = nullptr;
  c->workspace = nullptr;
  c->workspace_bytes = 0;
  c->math = CUBLAS_DEFAULT_MATH;
  g_blas.insert(c);
  *h = c;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t h) {
  init();
  check_blas("cublasDestroy", h);
  g_blas.erase(h); /* not deleted, as streams */
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s) {
  init();
  check_blas("cublasSetStream", h);
  if (s) check_stream("cublasSetStream", s);
  h->stream = s;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetWorkspace(cublasHandle_t h, void *ws, size_t bytes) {
  init();
  check_blas("cublasSetWorkspace", h);
  if (bytes) {
    (void)dev_span("cublasSetWorkspace", "workspace", ws, bytes);
    if ((uintptr_t)ws % 256)
      misuse("cublasSetWorkspace", "workspace %s is not 256-byte aligned", describe(ws).c_str());
  }
  h->workspace = ws;
  h->workspace_bytes = bytes;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t mode) {
  init();
  check_blas("cublasSetMathMode", h);
  h->math = mode;
  return CUBLAS_STATUS_SUCCESS;
}

/* The two GEMMs of backend_cuda.cu, column-major C (m x n) = alpha op(A) op(B) + beta C
 * with op(A) = A^T (A stored k x m), op(B) = B (k x n):
 *   float32 A, B, C with CUBLAS_COMPUTE_32F_PEDANTIC;
 *   bf16 A, B, float32 C with CUBLAS_COMPUTE_32F (float32 accumulation).
 * Anything else: CUBLAS_STATUS_NOT_SUPPORTED. */
cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t transa, cublasOperation_t transb,
                            int m, int n, int k, const void *alpha, const void *A,
                            cudaDataType Atype, int lda, const void *B, cudaDataType Btype, int ldb,
                            const void *beta, void *C, cudaDataType Ctype, int ldc,
                            cublasComputeType_t computeType, cublasGemmAlgo_t algo) {
  const char *api = "cublasGemmEx";
  init();
  INJECT("cublasGemmEx", CUBLAS_STATUS_EXECUTION_FAILED);
  check_blas(api, h);
  const bool f32 = Atype == CUDA_R_32F && Btype == CUDA_R_32F && Ctype == CUDA_R_32F &&
                   computeType == CUBLAS_COMPUTE_32F_PEDANTIC;
  const bool bf16 = Atype == CUDA_R_16BF && Btype == CUDA_R_16BF && Ctype == CUDA_R_32F &&
                    computeType == CUBLAS_COMPUTE_32F;
  if (!(f32 || bf16) || transa != CUBLAS_OP_T || transb != CUBLAS_OP_N) {
    fprintf(stderr, "ls_emu: cublasGemmEx: types %d/%d/%d, compute %d, ops %d/%d not emulated\n",
            (int)Atype, (int)Btype, (int)Ctype, (int)computeType, (int)transa, (int)transb);
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  if (m < 0 || n < 0 || k < 0 || lda < std::max(1, k) || ldb < std::max(1, k) ||
      ldc < std::max(1, m))
    return CUBLAS_STATUS_INVALID_VALUE;
  if (!alpha || !beta || in_arena(alpha) || in_arena(beta))
    misuse(api, "alpha %s / beta %s must be host memory (CUBLAS_POINTER_MODE_HOST)",
           describe(alpha).c_str(), describe(beta).c_str());
  op_t op = begin_op(api, h->stream, "cublasGemmEx");
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  const size_t es = f32 ? 4 : 2;
  const size_t a_el = (size_t)lda * (size_t)(m - 1) + (size_t)k;
  const size_t b_el = (size_t)ldb * (size_t)(n - 1) + (size_t)k;
  const size_t c_el = (size_t)ldc * (size_t)(n - 1) + (size_t)m;
  std::pair<const uintptr_t, dev_alloc_t> *da = nullptr, *db = nullptr;
  if (k > 0) {
    da = dev_span(api, "A", A, a_el * es);
    db = dev_span(api, "B", B, b_el * es);
  }
  auto *dc = dev_span(api, "C", C, c_el * 4);
  const uintptr_t c0 = (uintptr_t)C, c1 = c0 + c_el * 4;
  if (k > 0 && (((uintptr_t)A < c1 && c0 < (uintptr_t)A + a_el * es) ||
                ((uintptr_t)B < c1 && c0 < (uintptr_t)B + b_el * es)))
    misuse(api, "C %s overlaps A %s or B %s", describe(C).c_str(), describe(A).c_str(),
           describe(B).c_str());
  dev_op_t run(api);
  if (da) {
    dev_touch(api, op, A, da->second, false);
    dev_touch(api, op, B, db->second, false);
    open_alloc(da);
    open_alloc(db);
  }
  if (h->workspace) /* live, and written (as if used) */
    dev_touch(api, op, h->workspace, dev_span(api, "workspace", h->workspace, 1)->second, true);
  dev_touch(api, op, C, dc->second, true);
  open_alloc(dc);
  const float al = *(const float *)alpha, be = *(const float *)beta;
  if (k == 0) { /* C = beta C */
    for (int j = 0; j < n; j++)
      for (int i = 0; i < m; i++) {
        float *c = (float *)C + (size_t)j * ldc + i;
        *c = be == 0.0f ? 0.0f : be * *c;
      }
    return CUBLAS_STATUS_SUCCESS;
  }
  if (f32) {
    cblas_sgemm(CblasColMajor, CblasTrans, CblasNoTrans, m, n, k, al, (const float *)A, lda,
                (const float *)B, ldb, be, (float *)C, ldc);
    return CUBLAS_STATUS_SUCCESS;
  }
  /* bf16 -> float32 is exact: the bf16 bits are the float's upper half */
  std::vector<float> fa(a_el), fb(b_el);
  const uint16_t *ha = (const uint16_t *)A, *hb = (const uint16_t *)B;
  for (size_t i = 0; i < a_el; i++) {
    const uint32_t u = (uint32_t)ha[i] << 16;
    memcpy(&fa[i], &u, 4);
  }
  for (size_t i = 0; i < b_el; i++) {
    const uint32_t u = (uint32_t)hb[i] << 16;
    memcpy(&fb[i], &u, 4);
  }
  cblas_sgemm(CblasColMajor, CblasTrans, CblasNoTrans, m, n, k, al, fa.data(), lda, fb.data(), ldb,
              be, (float *)C, ldc);
  return CUBLAS_STATUS_SUCCESS;
}

/* The float64 GEMM of gram_fixed (--reduce cov): column-major C (m x n) = alpha op(A)
 * op(B) + beta C, every op combination, A / B / C checked as device spans that do not
 * overlap C. */
cublasStatus_t cublasDgemm(cublasHandle_t h, cublasOperation_t transa, cublasOperation_t transb,
                           int m, int n, int k, const double *alpha, const double *A, int lda,
                           const double *B, int ldb, const double *beta, double *C, int ldc) {
  const char *api = "cublasDgemm";
  init();
  INJECT("cublasDgemm", CUBLAS_STATUS_EXECUTION_FAILED);
  check_blas(api, h);
  const bool ta = transa != CUBLAS_OP_N, tb = transb != CUBLAS_OP_N;
  const int ar = ta ? k : m, ac = ta ? m : k, br = tb ? n : k, bc = tb ? k : n;
  if (m < 0 || n < 0 || k < 0 || lda < std::max(1, ar) || ldb < std::max(1, br) ||
      ldc < std::max(1, m))
    return CUBLAS_STATUS_INVALID_VALUE;
  if (!alpha || !beta || in_arena(alpha) || in_arena(beta))
    misuse(api, "alpha %s / beta %s must be host memory (CUBLAS_POINTER_MODE_HOST)",
           describe(alpha).c_str(), describe(beta).c_str());
  op_t op = begin_op(api, h->stream, "cublasDgemm");
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  const size_t a_el = (size_t)lda * (size_t)(ac - 1) + (size_t)ar;
  const size_t b_el = (size_t)ldb * (size_t)(bc - 1) + (size_t)br;
  const size_t c_el = (size_t)ldc * (size_t)(n - 1) + (size_t)m;
  auto *dc = dev_span(api, "C", C, c_el * 8);
  const uintptr_t c0 = (uintptr_t)C, c1 = c0 + c_el * 8;
  dev_op_t run(api);
  if (k > 0) {
    auto *da = dev_span(api, "A", A, a_el * 8);
    auto *db = dev_span(api, "B", B, b_el * 8);
    if (((uintptr_t)A < c1 && c0 < (uintptr_t)A + a_el * 8) ||
        ((uintptr_t)B < c1 && c0 < (uintptr_t)B + b_el * 8))
      misuse(api, "C %s overlaps A %s or B %s", describe(C).c_str(), describe(A).c_str(),
             describe(B).c_str());
    dev_touch(api, op, A, da->second, false);
    dev_touch(api, op, B, db->second, false);
    open_alloc(da);
    open_alloc(db);
  }
  dev_touch(api, op, C, dc->second, true);
  open_alloc(dc);
  if (k == 0) {
    for (int j = 0; j < n; j++)
      for (int i = 0; i < m; i++) {
        double *c = C + (size_t)j * ldc + i;
        *c = *beta == 0.0 ? 0.0 : *beta * *c;
      }
    return CUBLAS_STATUS_SUCCESS;
  }
  cblas_dgemm(CblasColMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n,
              k, *alpha, A, lda, B, ldb, *beta, C, ldc);
  return CUBLAS_STATUS_SUCCESS;
}

/* The symmetric product of gram_fixed: column-major C (n x n) = alpha op(A) op(A)^T + beta
 * C on the uplo triangle only (the other is left as it was) */
cublasStatus_t cublasDsyrk(cublasHandle_t h, cublasFillMode_t uplo, cublasOperation_t trans, int n,
                           int k, const double *alpha, const double *A, int lda,
                           const double *beta, double *C, int ldc) {
  const char *api = "cublasDsyrk";
  init();
  INJECT("cublasDsyrk", CUBLAS_STATUS_EXECUTION_FAILED);
  check_blas(api, h);
  const bool t = trans != CUBLAS_OP_N;
  const int ar = t ? k : n, ac = t ? n : k;
  if (n < 0 || k < 0 || lda < std::max(1, ar) || ldc < std::max(1, n))
    return CUBLAS_STATUS_INVALID_VALUE;
  if (!alpha || !beta || in_arena(alpha) || in_arena(beta))
    misuse(api, "alpha %s / beta %s must be host memory (CUBLAS_POINTER_MODE_HOST)",
           describe(alpha).c_str(), describe(beta).c_str());
  op_t op = begin_op(api, h->stream, "cublasDsyrk");
  if (n == 0) return CUBLAS_STATUS_SUCCESS;
  const size_t a_el = (size_t)lda * (size_t)(ac - 1) + (size_t)ar;
  const size_t c_el = (size_t)ldc * (size_t)(n - 1) + (size_t)n;
  auto *dc = dev_span(api, "C", C, c_el * 8);
  dev_op_t run(api);
  if (k > 0) {
    auto *da = dev_span(api, "A", A, a_el * 8);
    if ((uintptr_t)A < (uintptr_t)C + c_el * 8 && (uintptr_t)C < (uintptr_t)A + a_el * 8)
      misuse(api, "C %s overlaps A %s", describe(C).c_str(), describe(A).c_str());
    dev_touch(api, op, A, da->second, false);
    open_alloc(da);
  }
  dev_touch(api, op, C, dc->second, true);
  open_alloc(dc);
  cblas_dsyrk(CblasColMajor, uplo == CUBLAS_FILL_MODE_LOWER ? CblasLower : CblasUpper,
              t ? CblasTrans : CblasNoTrans, n, k, *alpha, A, lda, *beta, C, ldc);
  return CUBLAS_STATUS_SUCCESS;
}

/* =============================== NCCL ======================================================== */

const char *ncclGetErrorString(ncclResult_t r) {
  switch (r) {
  case ncclSuccess: return "no error";
  case ncclUnhandledCudaError: return "unhandled cuda error";
  case ncclSystemError: return "unhandled system error";
  case ncclInternalError: return "internal error";
  case ncclInvalidArgument: return "invalid argument";
  case ncclInvalidUsage: return "invalid usage";
  case ncclRemoteError: return "remote process exited or there was a network error";
  case ncclInProgress: return "NCCL operation in progress";
  default: return "unknown result code (layersweep CPU emulator)";
  }
}

const char *ncclGetLastError(ncclComm_t comm) {
  if (comm && g_comms.count(comm)) return comm->last_error;
  return g_nccl_error;
}

static void check_comm(const char *api, ncclComm_t c) {
  if (!c || !g_comms.count(c))
    misuse(api, "communicator %p is not live (never initialised, or destroyed)", (void *)c);
}

static const char k_id_magic[] = "layersweep-emu-nccl-id";

ncclResult_t ncclGetUniqueId(ncclUniqueId *id) {
  init();
  INJECT("ncclGetUniqueId", ncclSystemError);
  if (!id) return ncclInvalidArgument;
  static unsigned counter;
  memset(id, 0, sizeof *id);
  snprintf(id->internal, sizeof id->internal, "%s %d %u %d", k_id_magic, (int)getpid(), ++counter,
           world_rank());
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank) {
  const char *api = "ncclCommInitRank";
  init();
  INJECT("ncclCommInitRank", ncclSystemError);
  if (!comm) return ncclInvalidArgument;
  *comm = nullptr;
  if (strncmp(id.internal, k_id_magic, sizeof k_id_magic - 1) != 0)
    misuse(api, "the unique id was not made by ncclGetUniqueId (not broadcast from rank 0?)");
  int wsize = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &wsize);
  MPI_Comm base;
  if (nranks == 1 && rank == 0) {
    base = MPI_COMM_SELF;
  } else if (nranks == wsize && rank == world_rank()) {
    base = MPI_COMM_WORLD;
  } else {
    snprintf(g_nccl_error, sizeof g_nccl_error,
             "the emulator supports communicators of 1 rank or of every MPI rank in world order "
             "(asked: rank %d of %d, world rank %d of %d)", rank, nranks, world_rank(), wsize);
    return ncclInvalidUsage;
  }
  ncclComm_t c = new ncclComm();
  MPI_Comm_dup(base, &c->comm);
  c->rank = rank;
  c->nranks = nranks;
  c->last_error[0] = '\0';
  /* every rank must hold rank 0's id */
  ncclUniqueId root = id;
  MPI_Bcast(&root, (int)sizeof root, MPI_BYTE, 0, c->comm);
  if (memcmp(&root, &id, sizeof id) != 0)
    misuse(api, "rank %d's unique id differs from rank 0's (on a GPU: a hang)", rank);
  g_comms.insert(c);
  *comm = c;
  return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *asyncError) {
  init();
  check_comm("ncclCommGetAsyncError", comm);
  if (asyncError) *asyncError = ncclSuccess;
  if (asyncError && injected("ncclCommGetAsyncError")) { /* a peer died */
    snprintf(comm->last_error, sizeof comm->last_error, "LS_EMU_FAIL: a peer vanished");
    *asyncError = ncclRemoteError;
  }
  return ncclSuccess;
}

static ncclResult_t comm_free(const char *api, ncclComm_t comm) {
  init();
  check_comm(api, comm);
  g_comms.erase(comm); /* not deleted, as streams */
  MPI_Comm_free(&comm->comm);
  return ncclSuccess;
}
ncclResult_t ncclCommDestroy(ncclComm_t comm) { return comm_free("ncclCommDestroy", comm); }
ncclResult_t ncclCommAbort(ncclComm_t comm) { return comm_free("ncclCommAbort", comm); }

ncclResult_t ncclBroadcast(const void *sendbuff, void *recvbuff, size_t count,
                           ncclDataType_t datatype, int root, ncclComm_t comm,
                           cudaStream_t stream) {
  const char *api = "ncclBroadcast";
  init();
  INJECT("ncclBroadcast", ncclUnhandledCudaError);
  check_comm(api, comm);
  const size_t es = dtype_bytes(datatype);
  if (!es || root < 0 || root >= comm->nranks) {
    snprintf(comm->last_error, sizeof comm->last_error, "datatype %d or root %d invalid",
             (int)datatype, root);
    return ncclInvalidArgument;
  }
  op_t op = begin_op(api, stream, "ncclBroadcast");
  const size_t bytes = count * es;
  if (bytes == 0) return ncclSuccess;
  dev_op_t run(api);
  auto *r = dev_span(api, "recvbuff", recvbuff, bytes);
  if (comm->rank == root) {
    auto *s = dev_span(api, "sendbuff (root)", sendbuff, bytes);
    if (sendbuff != recvbuff) {
      const uintptr_t a = (uintptr_t)sendbuff, b = (uintptr_t)recvbuff;
      if (a < b + bytes && b < a + bytes)
        misuse(api, "sendbuff and recvbuff overlap without being equal");
      dev_touch(api, op, sendbuff, s->second, false);
      open_alloc(s);
    }
  }
  dev_touch(api, op, recvbuff, r->second, true);
  open_alloc(r);
  if (comm->rank == root && sendbuff != recvbuff) memcpy(recvbuff, sendbuff, bytes);
  const size_t chunk = (size_t)1 << 30;
  for (size_t off = 0; off < bytes; off += chunk) {
    const size_t len = std::min(chunk, bytes - off);
    MPI_Bcast((char *)recvbuff + off, (int)len, MPI_BYTE, root, comm->comm);
  }
  return ncclSuccess;
}
