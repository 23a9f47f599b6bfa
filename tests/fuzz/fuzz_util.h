/* fuzz_util.h: helpers shared by the libFuzzer targets in tests/fuzz: a private
 * per-process scratch directory (created on first use, removed at exit), whole-file
 * writes, and a loud abort for broken invariants. Header-only, static functions. */
#ifndef LS_FUZZ_UTIL_H
#define LS_FUZZ_UTIL_H

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* An invariant the library promises was broken: print where and abort so libFuzzer
 * saves the input as a crash. */
#define FUZZ_ASSERT(cond, ...)                                                   \
  do {                                                                           \
    if (!(cond)) {                                                               \
      fprintf(stderr, "fuzz invariant failed at %s:%d: %s: ", __FILE__, __LINE__, \
              #cond);                                                            \
      fprintf(stderr, __VA_ARGS__);                                              \
      fputc('\n', stderr);                                                       \
      abort();                                                                   \
    }                                                                            \
  } while (0)

/* Setup failures (cannot create the scratch dir, disk full) are not findings: stop. */
#define FUZZ_DIE(...)                                                            \
  do {                                                                           \
    fprintf(stderr, "fuzz harness: ");                                           \
    fprintf(stderr, __VA_ARGS__);                                                \
    fputc('\n', stderr);                                                         \
    exit(2);                                                                     \
  } while (0)

/* ---- scratch directory ------------------------------------------------------- */
/* fuzz_root: <tmp>/ls-fuzz-XXXXXX; fuzz_model_dir: <root>/model. <tmp> is $TMPDIR if
 * set, else /dev/shm when writable (every input is written to disk: tmpfs is several
 * times faster than a disk-backed /tmp), else /tmp. Files written with fuzz_write_*
 * are remembered and removed (with the two directories) at exit. */
static char fuzz_root[PATH_MAX];
static char fuzz_model_dir[PATH_MAX];
#define FUZZ_MAX_FILES 8
static char fuzz_files[FUZZ_MAX_FILES][PATH_MAX];
static int fuzz_n_files;

static inline void fuzz_cleanup(void) {
  for (int i = 0; i < fuzz_n_files; i++) unlink(fuzz_files[i]);
  if (fuzz_model_dir[0]) rmdir(fuzz_model_dir);
  if (fuzz_root[0]) rmdir(fuzz_root);
}

static inline void fuzz_scratch_init(void) {
  if (fuzz_root[0]) return;
  const char *tmp = getenv("TMPDIR");
  if (!tmp || !*tmp) tmp = access("/dev/shm", W_OK | X_OK) == 0 ? "/dev/shm" : "/tmp";
  if (snprintf(fuzz_root, sizeof fuzz_root, "%s/ls-fuzz-XXXXXX", tmp) >= (int)sizeof fuzz_root)
    FUZZ_DIE("TMPDIR too long");
  if (!mkdtemp(fuzz_root)) FUZZ_DIE("mkdtemp %s: %s", fuzz_root, strerror(errno));
  snprintf(fuzz_model_dir, sizeof fuzz_model_dir, "%s/model", fuzz_root);
  if (mkdir(fuzz_model_dir, 0700) != 0) FUZZ_DIE("mkdir %s: %s", fuzz_model_dir, strerror(errno));
  atexit(fuzz_cleanup);
}

/* Full path of `name` under `dir` (static buffer per call site is the caller's job). */
static inline void fuzz_path(char *out, size_t cap, const char *dir, const char *name) {
  if (snprintf(out, cap, "%s/%s", dir, name) >= (int)cap) FUZZ_DIE("path too long");
}

static inline void fuzz_remember(const char *path) {
  for (int i = 0; i < fuzz_n_files; i++)
    if (strcmp(fuzz_files[i], path) == 0) return;
  if (fuzz_n_files == FUZZ_MAX_FILES) FUZZ_DIE("too many scratch files");
  snprintf(fuzz_files[fuzz_n_files++], PATH_MAX, "%s", path);
}

/* Create/truncate `path` and write exactly n bytes. */
static inline void fuzz_write_file(const char *path, const void *data, size_t n) {
  fuzz_remember(path);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) FUZZ_DIE("open %s: %s", path, strerror(errno));
  const char *p = data;
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) FUZZ_DIE("write %s: %s", path, strerror(errno));
    p += w;
    n -= (size_t)w;
  }
  if (close(fd) != 0) FUZZ_DIE("close %s: %s", path, strerror(errno));
}

static inline void fuzz_remove_file(const char *path) {
  if (unlink(path) != 0 && errno != ENOENT) FUZZ_DIE("unlink %s: %s", path, strerror(errno));
}

#endif
