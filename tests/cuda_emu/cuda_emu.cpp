/* cuda_emu.cpp: the fiber scheduler behind cuda_emu.h (what is emulated, what is
 * reported and the limits are described there).
 * One launch: blocks in order (x fastest); per block, one ucontext fiber per thread,
 * run round-robin until each exits or waits at a barrier. The last thread to arrive
 * at a barrier releases the others and goes on; when a pass finds nothing runnable
 * while threads are still waiting, the block is deadlocked. Fiber stacks (64 KiB and a
 * PROT_NONE guard page each) are mapped at the first launch that needs them and kept. */
#include "cuda_emu.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace ls_emu {

ctx_t g_ctx;

namespace {

enum state_t { RUNNABLE, AT_SYNCTHREADS, AT_WARP, DONE };

struct fiber_t {
  ucontext_t uc;
  uint3 tid;
  int lane, warp;
  state_t state;
  unsigned mask;   /* AT_WARP: the op's mask */
  const char *op;  /* AT_WARP: the intrinsic */
  uint64_t val;    /* AT_WARP: the value published */
  uint64_t got[32]; /* after a warp op: what every lane published */
  unsigned active; /* after a warp op: the lanes that took part */
};

constexpr size_t k_stack = 64 * 1024;
constexpr int k_max_threads = 1024;
constexpr size_t k_max_dyn_smem = 227 * 1024; /* sm_90 opt-in limit per block */

struct launch_t {
  bool running;
  dim3 grid, block;
  size_t dyn_smem;
  std::function<void()> *body;
  std::vector<fiber_t> f; /* (threads of a block) */
  int n, n_done, n_sync, cur;
  bool exited; /* a thread of the running block has exited */
  ucontext_t sched;
} L;

unsigned char *g_stacks; /* g_n_stacks x (guard page + k_stack) */
size_t g_n_stacks, g_page;
std::vector<unsigned char> g_smem; /* dynamic shared memory (+15 for alignment) */

[[noreturn]] void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "cuda_emu: ");
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  if (L.running)
    fprintf(stderr, "\ncuda_emu:   in block (%u,%u,%u) of grid (%u,%u,%u), block shape (%u,%u,%u)",
            g_ctx.block_idx.x, g_ctx.block_idx.y, g_ctx.block_idx.z, L.grid.x, L.grid.y,
            L.grid.z, L.block.x, L.block.y, L.block.z);
  fprintf(stderr, "\ncuda_emu:   hint: on a GPU this would hang, fail to launch or be undefined; fix the "
                  "kernel or its launcher\n");
  abort();
}

fiber_t &cur() {
  if (!L.running) die("a barrier or warp intrinsic was called outside a kernel launch");
  return L.f[(size_t)L.cur];
}

void yield(fiber_t &f) { swapcontext(&f.uc, &L.sched); }

void map_stacks(size_t n) {
  if (n <= g_n_stacks) return;
  if (g_stacks) munmap(g_stacks, g_n_stacks * (g_page + k_stack));
  g_page = (size_t)sysconf(_SC_PAGESIZE);
  void *p = mmap(nullptr, n * (g_page + k_stack), PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) die("cannot map %zu fiber stacks", n);
  g_stacks = (unsigned char *)p;
  g_n_stacks = n;
  for (size_t i = 0; i < n; i++) mprotect(g_stacks + i * (g_page + k_stack), g_page, PROT_NONE);
}

void thread_exit(fiber_t &f) {
  if (L.n_sync > 0)
    die("thread (%u,%u,%u) exited while %d other threads wait at __syncthreads", f.tid.x,
        f.tid.y, f.tid.z, L.n_sync);
  const int w0 = f.warp * 32;
  for (int i = w0; i < w0 + 32 && i < L.n; i++) {
    const fiber_t &g = L.f[(size_t)i];
    if (g.state == AT_WARP && (g.mask >> f.lane & 1u))
      die("lane %d of warp %d exited while lane %d waits for it in %s (mask 0x%08x)", f.lane,
          f.warp, g.lane, g.op, g.mask);
  }
  L.exited = true;
  f.state = DONE;
  L.n_done++;
}

void fiber_main() {
  (*L.body)();
  thread_exit(L.f[(size_t)L.cur]);
  /* returning resumes uc_link, the scheduler */
}

void deadlock() {
  int n_warp = 0;
  const fiber_t *first = nullptr;
  for (const fiber_t &g : L.f)
    if (g.state == AT_WARP && !n_warp++) first = &g;
  if (first)
    die("deadlock: %d threads wait at __syncthreads, %d in warp ops (e.g. lane %d of warp %d in "
        "%s with mask 0x%08x), %d exited",
        L.n_sync, n_warp, first->lane, first->warp, first->op, first->mask, L.n_done);
  die("deadlock: %d threads wait at __syncthreads, %d exited", L.n_sync, L.n_done);
}

void run_block() {
  for (int i = 0; i < L.n; i++) {
    fiber_t &f = L.f[(size_t)i];
    const unsigned bx = L.block.x, by = L.block.y;
    f.tid = make_uint3((unsigned)i % bx, (unsigned)i / bx % by, (unsigned)i / (bx * by));
    f.lane = i % 32;
    f.warp = i / 32;
    f.state = RUNNABLE;
    f.mask = 0;
    f.op = "";
    getcontext(&f.uc);
    f.uc.uc_stack.ss_sp = g_stacks + (size_t)i * (g_page + k_stack) + g_page;
    f.uc.uc_stack.ss_size = k_stack;
    f.uc.uc_link = &L.sched;
    makecontext(&f.uc, fiber_main, 0);
  }
  L.n_done = L.n_sync = 0;
  L.exited = false;
  memset(ls_emu_dyn_smem(), 0xFF, L.dyn_smem); /* NaN: unwritten shared memory shows up */
  while (L.n_done < L.n) {
    bool ran = false;
    for (int i = 0; i < L.n; i++) {
      fiber_t &f = L.f[(size_t)i];
      if (f.state != RUNNABLE) continue;
      L.cur = i;
      g_ctx.thread_idx = f.tid;
      swapcontext(&L.sched, &f.uc);
      ran = true;
    }
    if (!ran && L.n_done < L.n) deadlock();
  }
}

} // namespace

/* ---- barriers -------------------------------------------------------------------------- */

void sync_block() {
  fiber_t &f = cur();
  if (L.exited)
    die("thread (%u,%u,%u) reached __syncthreads after another thread of the block exited "
        "(every thread must reach each __syncthreads)",
        f.tid.x, f.tid.y, f.tid.z);
  if (++L.n_sync == L.n) { /* last to arrive: release the others */
    for (fiber_t &g : L.f)
      if (g.state == AT_SYNCTHREADS) g.state = RUNNABLE;
    L.n_sync = 0;
    return;
  }
  f.state = AT_SYNCTHREADS;
  yield(f);
}

warp_view_t warp_exchange(unsigned mask, uint64_t v, const char *op) {
  fiber_t &f = cur();
  if (!(mask >> f.lane & 1u))
    die("%s: mask 0x%08x does not name the calling lane %d of warp %d", op, mask, f.lane, f.warp);
  const int w0 = f.warp * 32, n_lanes = L.n - w0 < 32 ? L.n - w0 : 32;
  const unsigned part = mask & (n_lanes == 32 ? ~0u : (1u << n_lanes) - 1u);
  f.state = AT_WARP;
  f.mask = mask;
  f.op = op;
  f.val = v;
  bool all = true;
  for (int l = 0; l < n_lanes; l++) {
    const fiber_t &g = L.f[(size_t)(w0 + l)];
    const bool named = part >> l & 1u; /* by the caller's mask */
    if (g.state == AT_WARP && (named || (g.mask >> f.lane & 1u)) &&
        (g.mask != mask || strcmp(g.op, op) != 0))
      die("warp %d: lane %d is in %s with mask 0x%08x while lane %d is in %s with mask 0x%08x "
          "(every lane named in the mask must execute the same intrinsic with the same mask)",
          f.warp, f.lane, op, mask, l, g.op, g.mask);
    if (!named) continue;
    if (g.state == DONE)
      die("%s: lane %d of warp %d names lane %d in its mask 0x%08x, but that lane has exited",
          op, f.lane, f.warp, l, mask);
    if (g.state != AT_WARP) all = false;
  }
  if (all) { /* last to arrive: hand every participant the values, release them */
    uint64_t vals[32] = {0};
    for (int l = 0; l < n_lanes; l++)
      if (part >> l & 1u) vals[l] = L.f[(size_t)(w0 + l)].val;
    for (int l = 0; l < n_lanes; l++)
      if (part >> l & 1u) {
        fiber_t &g = L.f[(size_t)(w0 + l)];
        memcpy(g.got, vals, sizeof vals);
        g.active = part;
        g.state = RUNNABLE;
      }
  } else {
    yield(f);
  }
  return warp_view_t{f.got, f.active, f.lane};
}

void bad_lane(const char *op, int lane, int src, unsigned active) {
  die("%s: lane %d of warp %d reads lane %d, which is not taking part (lanes taking part: "
      "0x%08x; a partial warp or a lane missing from the mask)",
      op, lane, L.running ? L.f[(size_t)L.cur].warp : -1, src, active);
}

} // namespace ls_emu

/* ---- launch ------------------------------------------------------------------------------ */

using ls_emu::L;

void *ls_emu_dyn_smem() {
  if (!L.running) ls_emu::die("ls_emu_dyn_smem called outside a kernel launch");
  uintptr_t p = (uintptr_t)ls_emu::g_smem.data();
  return (void *)((p + 15) & ~(uintptr_t)15);
}

void ls_emu_launch(dim3 grid, dim3 block, size_t dyn_smem, std::function<void()> body) {
  if (L.running) ls_emu::die("kernel launched from inside a kernel (not emulated)");
  const unsigned long long nt = (unsigned long long)block.x * block.y * block.z;
  if (nt == 0 || nt > (unsigned long long)ls_emu::k_max_threads || block.z > 64)
    ls_emu::die("invalid block shape (%u,%u,%u): 1 to 1024 threads, z <= 64", block.x, block.y,
                block.z);
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 ||
      grid.z > 65535)
    ls_emu::die("invalid grid shape (%u,%u,%u): x 1 to 2^31-1, y and z 1 to 65535 (a launch "
                "with nothing to do must be skipped)",
                grid.x, grid.y, grid.z);
  if (dyn_smem > ls_emu::k_max_dyn_smem)
    ls_emu::die("%zu bytes of dynamic shared memory requested, more than %zu", dyn_smem,
                ls_emu::k_max_dyn_smem);
  ls_emu::map_stacks((size_t)nt);
  if (ls_emu::g_smem.size() < dyn_smem + 15) ls_emu::g_smem.resize(dyn_smem + 15);
  L.grid = grid;
  L.block = block;
  L.dyn_smem = dyn_smem;
  L.body = &body;
  L.n = (int)nt;
  L.f.resize((size_t)nt);
  L.running = true;
  ls_emu::g_ctx.grid_dim = grid;
  ls_emu::g_ctx.block_dim = block;
  for (unsigned z = 0; z < grid.z; z++)
    for (unsigned y = 0; y < grid.y; y++)
      for (unsigned x = 0; x < grid.x; x++) {
        ls_emu::g_ctx.block_idx = make_uint3(x, y, z);
        ls_emu::run_block();
      }
  L.running = false;
  L.body = nullptr;
}
