/* lock.c: the output lock (see lock.h). */
#include "lock.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ls_common.h"

/* The lock on the file now at l->path: 1 taken, 0 held by another process, -1 error.
 * A lock taken on a file that was unlinked meanwhile (its holder finished) is retried
 * on the new file, so two runs never hold locks on different files of one path. */
static int try_lock(ls_lock_t *l, int *fd_out) {
  int fd = open(l->path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd < 0) {
    ls_error("%s: cannot create the output's lock file: %s; is the directory writable?",
             l->path, strerror(errno));
    return -1;
  }
  struct flock fl;
  memset(&fl, 0, sizeof fl);
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  *fd_out = fd;
  if (fcntl(fd, F_SETLK, &fl) != 0) return 0;
  struct stat a, b;
  if (fstat(fd, &a) != 0 || stat(l->path, &b) != 0 || a.st_dev != b.st_dev || a.st_ino != b.st_ino) {
    close(fd);
    *fd_out = -1;
    return 2; /* stale file: retry */
  }
  return 1;
}

int ls_lock_take(ls_lock_t *l, const char *out) {
  l->fd = -1;
  snprintf(l->path, sizeof l->path, "%s.lock", out);
  int fd = -1, got = 2;
  for (int tries = 0; got == 2 && tries < 5; tries++) got = try_lock(l, &fd);
  if (got < 0 || got == 2) {
    if (got == 2) ls_error("%s: the lock file keeps being replaced; is another layersweep "
                           "starting on %s?", l->path, out);
    return LS_ERR;
  }
  if (got == 0) {
    char holder[256] = "";
    ssize_t n = pread(fd, holder, sizeof holder - 1, 0);
    holder[n > 0 ? n : 0] = '\0';
    holder[strcspn(holder, "\n")] = '\0';
    char shown[256];
    ls_printable(shown, sizeof shown, holder);
    ls_error("%s is being written by another layersweep (%s, lock %s); wait for it to finish "
             "or write elsewhere", out, shown[0] ? shown : "holder unknown", l->path);
    close(fd);
    return LS_ERR;
  }
  /* ours now (a leftover file of a killed run holds no lock): say who holds it */
  char host[256] = "?", line[320];
  gethostname(host, sizeof host - 1);
  host[sizeof host - 1] = '\0';
  int len = snprintf(line, sizeof line, "host %s pid %ld\n", host, (long)getpid());
  if (ftruncate(fd, 0) != 0 || pwrite(fd, line, (size_t)len, 0) != len) {
    /* the lock is held; only the note about the holder is missing */
  }
  l->fd = fd;
  return LS_OK;
}

void ls_lock_release(ls_lock_t *l) {
  if (l->fd < 0) return;
  unlink(l->path); /* before the lock goes: no other run can hold a lock on this file yet */
  close(l->fd);
  l->fd = -1;
}
