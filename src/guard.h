/* guard.h: never write to an input. Every file a sweep reads (config.json, the shard
 * index, every shard, the data file) is recorded by device and inode, with the
 * directory it is in; every path the sweep writes (--out, --summary-json, the checkpoint
 * directory) is checked against them before anything is opened for writing, following
 * symlinks and seeing hard links (same device + inode). Rank 0 only: it alone opens
 * the inputs. */
#ifndef LS_GUARD_H
#define LS_GUARD_H

#include <sys/types.h>

typedef struct {
  dev_t dev, dir_dev;
  ino_t ino, dir_ino;
  char path[4096];
} ls_input_t;

typedef struct {
  ls_input_t *v;
  int n, cap;
} ls_guard_t;

/* Record the file at path (followed through symlinks) as an input; a path that does not
 * exist is not an input (LS_OK). LS_ERR only when out of memory. */
int ls_guard_add(ls_guard_t *g, const char *path);
/* LS_ERR (one line naming `what`, the path and the input) if path exists and is an input;
 * else LS_OK. */
int ls_guard_check_file(const ls_guard_t *g, const char *path, const char *what);
/* LS_ERR if dir exists and is the directory of an input (a checkpoint directory there
 * would put our files beside the model's or the data's), or is an input itself. */
int ls_guard_check_dir(const ls_guard_t *g, const char *dir, const char *what);
void ls_guard_free(ls_guard_t *g);

#endif
