/* guard.c: inputs by device + inode, and the checks of output paths (see guard.h). */
#include "guard.h"

#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ls_common.h"

int ls_guard_add(ls_guard_t *g, const char *path) {
  struct stat st, dst;
  if (stat(path, &st) != 0) return LS_OK;
  if (g->n == g->cap) {
    int cap = g->cap ? 2 * g->cap : 16;
    ls_input_t *v = realloc(g->v, sizeof *v * (size_t)cap);
    if (!v) {
      ls_error("out of memory recording the inputs");
      return LS_ERR;
    }
    g->v = v;
    g->cap = cap;
  }
  ls_input_t *in = &g->v[g->n++];
  memset(in, 0, sizeof *in);
  in->dev = st.st_dev;
  in->ino = st.st_ino;
  snprintf(in->path, sizeof in->path, "%s", path);
  /* the directory the file is really in (a symlink's target's) */
  char *real = realpath(path, NULL);
  if (real) {
    char *dir = dirname(real);
    if (stat(dir, &dst) == 0) {
      in->dir_dev = dst.st_dev;
      in->dir_ino = dst.st_ino;
    }
    free(real);
  }
  return LS_OK;
}

int ls_guard_check_file(const ls_guard_t *g, const char *path, const char *what) {
  struct stat st;
  if (!path || stat(path, &st) != 0) return LS_OK; /* a new file is no input */
  for (int i = 0; i < g->n; i++)
    if (g->v[i].dev == st.st_dev && g->v[i].ino == st.st_ino) {
      ls_error("%s %s is the input %s (the same file%s); refusing to write over an input: "
               "choose another path", what, path, g->v[i].path,
               strcmp(path, g->v[i].path) ? ", through a link" : "");
      return LS_ERR;
    }
  return LS_OK;
}

int ls_guard_check_dir(const ls_guard_t *g, const char *dir, const char *what) {
  struct stat st;
  if (!dir || stat(dir, &st) != 0) return LS_OK;
  if (ls_guard_check_file(g, dir, what)) return LS_ERR;
  for (int i = 0; i < g->n; i++)
    if (g->v[i].dir_dev == st.st_dev && g->v[i].dir_ino == st.st_ino) {
      ls_error("%s %s holds the input %s; checkpoints and caches are not written beside the "
               "model or the data: give a directory of its own", what, dir, g->v[i].path);
      return LS_ERR;
    }
  return LS_OK;
}

void ls_guard_free(ls_guard_t *g) {
  free(g->v);
  memset(g, 0, sizeof *g);
}
