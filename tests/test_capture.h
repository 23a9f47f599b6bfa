/* test_capture.h: shared test helpers: capture what a call writes on stderr (for the
 * project's "one clear line" rule) and per-test scratch directories. Include after
 * <cmocka.h>. */
#ifndef LS_TEST_CAPTURE_H
#define LS_TEST_CAPTURE_H

#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ls_common.h"

typedef struct {
  int saved;
  char file[4300];
} capture_t;

/* Redirect stderr into a file under $LS_TEST_TMP (or /tmp). */
static inline void capture_begin(capture_t *c) {
  const char *base = getenv("LS_TEST_TMP");
  if (!base || !*base) base = "/tmp";
  snprintf(c->file, sizeof c->file, "%s/ls_stderr_%d.txt", base, (int)getpid());
  fflush(stderr);
  c->saved = dup(2);
  int fd = open(c->file, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  assert_true(c->saved >= 0 && fd >= 0);
  dup2(fd, 2);
  close(fd);
}

/* Restore stderr; return what was written (malloc'd, NUL-terminated). */
static inline char *capture_end(capture_t *c, size_t *len) {
  fflush(stderr);
  dup2(c->saved, 2);
  close(c->saved);
  char *msg = ls_read_text_file(c->file, 1 << 20, len);
  assert_non_null(msg);
  unlink(c->file);
  return msg;
}

/* dir <- a fresh directory $LS_TEST_TMP/<prefix>XXXXXX (or under /tmp). */
static inline void test_mkdtemp(char *dir, size_t cap, const char *prefix) {
  const char *base = getenv("LS_TEST_TMP");
  if (!base || !*base) base = "/tmp";
  snprintf(dir, cap, "%s/%sXXXXXX", base, prefix);
  assert_non_null(mkdtemp(dir));
}

static inline int test_rm_entry(const char *p, const struct stat *sb, int flag,
                                struct FTW *ftw) {
  (void)sb, (void)flag, (void)ftw;
  return remove(p);
}

/* Remove dir and everything below it (symlinks are removed, not followed). */
static inline void test_rmtree(const char *dir) {
  nftw(dir, test_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

#endif
