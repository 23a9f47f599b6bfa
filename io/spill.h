/* spill.h: a rank's residual stream in a file, for a stream larger than the host memory
 * it may use (--memory-limit, --spill-dir).
 *
 * The file holds one region per microbatch, each starting on a 4 KiB boundary and
 * rounded up to one, so that a microbatch is read and written whole with O_DIRECT (the
 * page cache does not hold the stream a second time) and no two microbatches share a
 * page. A thread reads the next microbatches ahead into a ring of LS_SPILL_SLOTS host
 * buffers and writes the computed ones behind while the block runs on the current one.
 * Where O_DIRECT is refused (tmpfs, some network file systems) the same I/O is buffered,
 * each range written out and dropped from the page cache (sync_file_range +
 * POSIX_FADV_DONTNEED) once it is done.
 *
 * The file is unlinked as soon as it is open: a crashed run leaves nothing behind, and a
 * checkpoint (not the spill file) is what --resume reads. */
#ifndef LS_SPILL_H
#define LS_SPILL_H

#include <stddef.h>
#include <stdint.h>

#define LS_SPILL_SLOTS 3
#define LS_SPILL_ALIGN 4096

typedef struct ls_spill ls_spill_t;

typedef struct {
  uint64_t bytes_read, bytes_written; /* by the thread and by get / put */
  double wait_s;      /* the main thread blocked in ls_spill_acquire / ls_spill_flush */
  double io_s;        /* the thread busy reading or writing */
  int direct;         /* O_DIRECT (1) or buffered I/O with DONTNEED (0) */
  uint64_t file_bytes;
} ls_spill_stats_t;

/* The bytes of one slot: the largest microbatch region. rows (n_mb + 1): the first stored
 * row of each microbatch, and the end. */
size_t ls_spill_slot_bytes(int n_mb, const int64_t *rows, size_t row_bytes);
/* The spill file's size. */
uint64_t ls_spill_file_bytes(int n_mb, const int64_t *rows, size_t row_bytes);

/* Open (and at once unlink) rank `rank`'s spill file in dir (made if missing) and start
 * its thread. slots: LS_SPILL_SLOTS host buffers of slot_bytes each, owned by the caller
 * (4 KiB-aligned for O_DIRECT; else the I/O is buffered). rows is copied. LS_SPILL_DIRECT=0
 * in the environment forces buffered I/O. NULL after a message naming dir. */
ls_spill_t *ls_spill_open(const char *dir, int rank, int n_mb, const int64_t *rows,
                          size_t row_bytes, void *const *slots, size_t slot_bytes);
/* Stored rows [row0, row0 + n) <- src, or -> dst: synchronous, any range (the embedding,
 * checkpoints, a resume); the writes behind are finished first, and rows read ahead are
 * read again after a put. LS_ERR after a message. */
int ls_spill_put(ls_spill_t *sp, int64_t row0, int64_t n, const void *src);
int ls_spill_get(ls_spill_t *sp, int64_t row0, int64_t n, void *dst);
/* Microbatch mb's rows in a slot (rows[mb] .. rows[mb + 1]), read ahead when microbatches
 * are taken in order (cyclically: the first follows the last). NULL after an I/O error
 * (the error is said, once). */
void *ls_spill_acquire(ls_spill_t *sp, int mb);
/* Done with microbatch mb: written back behind when dirty, else its slot is free. */
void ls_spill_release(ls_spill_t *sp, int mb, int dirty);
/* Wait until every write behind is in the file; LS_ERR (said) when one failed. */
int ls_spill_flush(ls_spill_t *sp);
void ls_spill_stats(ls_spill_t *sp, ls_spill_stats_t *st);
/* Stop the thread, close the file (its space is freed), remove dir if this rank made it
 * and it is empty. NULL is fine. */
void ls_spill_close(ls_spill_t *sp);

#endif
