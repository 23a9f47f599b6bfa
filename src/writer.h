/* writer.h: the output writer thread. A selected layer's rows are written to the HDF5
 * file's raw data by this rank's own thread (pwrite at the dataset's offset, then
 * fdatasync) while the next layer computes; the main thread keeps every HDF5 and MPI
 * call (markers, flushes, agreement between ranks). The datasets are contiguous and
 * allocated at creation (io/h5out.c), so a block's place in the file is fixed and no
 * HDF5 call is needed to write it. At most one layer is in flight. */
#ifndef LS_WRITER_H
#define LS_WRITER_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define LS_WRITER_MAX_PIECES 8

typedef struct {
  uint64_t offset;  /* file offset */
  const void *buf;
  size_t bytes;
} ls_write_piece_t;

typedef struct {
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int started, stop;
  int fd;
  char path[4096];
  /* the job in flight */
  int pending;      /* submitted, not yet waited for */
  int done;         /* the thread finished it */
  int tag;          /* the caller's label (the layer) */
  ls_write_piece_t pieces[LS_WRITER_MAX_PIECES];
  int n_pieces;
  int rc;
  char msg[600];
  double busy_s;    /* seconds the thread spent writing, all jobs */
} ls_writer_t;

/* Open path for writing (it must exist: the HDF5 file) and start the thread. */
int ls_writer_start(ls_writer_t *w, const char *path);
/* Queue one job (the previous one must have been waited for); buffers must stay
 * untouched until ls_writer_wait returns. */
void ls_writer_submit(ls_writer_t *w, int tag, const ls_write_piece_t *pieces, int n);
/* Wait for the job in flight (none: LS_OK at once); its tag in *tag (-1 when none).
 * LS_ERR after reporting the thread's error. The rows are on disk when LS_OK. */
int ls_writer_wait(ls_writer_t *w, int *tag);
/* Wait, stop the thread, close the file (safe on a writer never started). */
void ls_writer_stop(ls_writer_t *w);

#endif
