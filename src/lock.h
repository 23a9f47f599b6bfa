/* lock.h: one writer per output. Rank 0 holds an exclusive fcntl lock on OUT.lock (its
 * host and pid written in it) for the whole run; a second run on the same output, with
 * --force or --resume, is refused naming the holder. The lock dies with its process, so
 * the file a killed run leaves behind is taken over by the next run, and a finished run
 * removes it. */
#ifndef LS_LOCK_H
#define LS_LOCK_H

typedef struct {
  int fd;          /* -1: not held */
  char path[4200];
} ls_lock_t;

/* Take the lock of output `out` (lock file path in l->path); LS_ERR after one line naming
 * the holder when another process holds it. */
int ls_lock_take(ls_lock_t *l, const char *out);
/* Remove the lock file and release the lock (no-op when not held). */
void ls_lock_release(ls_lock_t *l);

#endif
