/* ls_common.h: error reporting, small helpers and checked-call macros shared by
 * every layersweep module. Library code returns LS_OK / LS_ERR and reports the
 * failure once, at the point where it is understood, with ls_error(). */
#ifndef LS_COMMON_H
#define LS_COMMON_H

#include <stddef.h>
#include <stdint.h>

#define LS_OK 0
#define LS_ERR (-1)

#define LS_VERSION "0.1.0"

/* Print one line "layersweep: error: <msg>" on stderr (rank prefix when the job has
 * more than one rank). The message should name the file / line / tensor involved
 * and say what to do. Suppressed on ranks where ls_error_set_quiet(1) was called. */
void ls_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void ls_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Informational line on stderr, printed by rank 0 only. */
void ls_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void ls_log_set_rank(int rank, int size);
void ls_error_set_quiet(int quiet);
/* Deferred errors: while deferring, ls_error keeps the first message instead of
 * printing it; ls_error_release(print) prints it (if print) and clears it. Used around
 * collective steps so that one rank reports a failure every rank saw (see ls_agree_report).
 * The deferral state is per thread. */
void ls_error_defer(int on);
/* 1 if an error was deferred and not yet released (by this thread) */
int ls_error_pending(void);
void ls_error_release(int print);
/* Move this thread's deferred message into buf (cap bytes) and clear it, staying in
 * deferred mode; 1 if there was one. A worker thread defers for its whole life and
 * hands its messages to the thread that reports them. */
int ls_error_take(char *buf, size_t cap);

/* dst (cap bytes) <- src for a message: printable ASCII only ('?' for the rest), cut at
 * cap - 1 bytes, so that an untrusted string cannot break the one-line error format.
 * Returns dst. */
char *ls_printable(char *dst, size_t cap, const char *src);

/* Allocation that reports what it was for; returns NULL (after ls_error) on failure. */
void *ls_malloc(size_t bytes, const char *what);
void *ls_calloc(size_t n, size_t size, const char *what);
/* 64-byte aligned allocation (free with free()). */
void *ls_aligned_alloc(size_t bytes, const char *what);
/* The same at a given alignment (a power of two, at least sizeof(void *)). */
void *ls_aligned_alloc_to(size_t bytes, size_t align, const char *what);

/* Overflow-checked arithmetic: return 1 on overflow. */
static inline int ls_mul_overflow_u64(uint64_t a, uint64_t b, uint64_t *out) {
  return __builtin_mul_overflow(a, b, out);
}
static inline int ls_add_overflow_u64(uint64_t a, uint64_t b, uint64_t *out) {
  return __builtin_add_overflow(a, b, out);
}

/* FNV-1a 64 over bytes, chained through h (start with LS_FNV_INIT): fingerprints of
 * model headers, datasets and options (not a cryptographic hash). */
#define LS_FNV_INIT 0xcbf29ce484222325ull
uint64_t ls_fnv1a(uint64_t h, const void *data, size_t n);

/* Monotonic wall clock in seconds. */
double ls_now(void);

/* out <- path, or its nearest ancestor that exists ("." or "/" when none does): where a
 * directory not made yet will be made, so the file system it will be on. */
void ls_existing_dir(const char *path, char *out, size_t cap);

/* The main thread is blocked on the other ranks (a collective step) while set: `what`, a
 * static string; NULL when no longer. The stall watchdog's heartbeats report it, so that
 * a rank stuck on its own is told from the ranks waiting for it. */
void ls_wait_others(const char *what);
const char *ls_waiting_others(void);

/* Read a whole (small) text file; returns malloc'd NUL-terminated buffer or NULL after
 * ls_error naming the file. max_bytes caps the size accepted. */
char *ls_read_text_file(const char *path, size_t max_bytes, size_t *len_out);

#define LS_CHECK(call)                                                        \
  do {                                                                        \
    if ((call) != LS_OK) return LS_ERR;                                       \
  } while (0)

#endif
