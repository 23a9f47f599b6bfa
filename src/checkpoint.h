/* checkpoint.h: crash-safe checkpoints of the residual stream at layer boundaries.
 *
 * A checkpoint directory holds meta.json (written by rank 0, the commit point) and one
 * rank<r>.L<layer>.bin per rank (the rank's residual stream before `layer`). Every file
 * is written under a temporary name, fsync'ed and renamed; meta.json is renamed only
 * after every rank's file is in place, and the previous checkpoint's files are removed
 * only after that. A kill at any moment leaves the last committed checkpoint intact.
 * meta.json records fingerprints of the model files, the dataset, the options and the
 * rank layout; --resume refuses a checkpoint whose fingerprints differ and says which. */
#ifndef LS_CHECKPOINT_H
#define LS_CHECKPOINT_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

/* meta.json's format_version; a checkpoint of another version is refused on load */
#define LS_CKPT_FORMAT_VERSION 1

typedef struct {
  int layer_next;          /* first layer still to compute */
  int ranks;               /* communicator size */
  int row_align;           /* residual row layout (backend alignment) */
  uint64_t model_fp;       /* config.json + safetensors names, sizes and headers */
  uint64_t data_fp;        /* tokens, lengths, labels, ids */
  uint64_t options_fp;     /* hooks, layers, pool, prompt-length policy */
  char model_desc[256];    /* human-readable, for messages */
} ls_ckpt_meta_t;


/* The combined fingerprint stored in every rank file. */
uint64_t ls_ckpt_fp(const ls_ckpt_meta_t *m);

/* A rank's residual stream as a checkpoint sees it: in host memory (x), or (x NULL) moved
 * in pieces of whole rows through get / put (a spilled stream: rows [row0, row0 + n),
 * row_floats floats each). */
typedef struct {
  float *x;
  size_t row_floats;
  int (*get)(void *ctx, int64_t row0, int64_t n, float *dst);
  int (*put)(void *ctx, int64_t row0, int64_t n, const float *src);
  void *ctx;
} ls_ckpt_rows_t;

/* Collective: every rank saves its n_rows rows for layer_next. */
int ls_ckpt_save(const char *dir, MPI_Comm comm, const ls_ckpt_meta_t *meta,
                 const ls_ckpt_rows_t *rows, int64_t n_rows);
/* Collective: 1 if a committed checkpoint exists (meta filled on every rank), 0 if none,
 * -1 on error (one message). */
int ls_ckpt_load_meta(const char *dir, MPI_Comm comm, ls_ckpt_meta_t *meta);
/* Collective: compare a checkpoint's meta with this run's; -1 with a message saying
 * what differs. */
int ls_ckpt_check(const ls_ckpt_meta_t *saved, const ls_ckpt_meta_t *now, const char *dir,
                  MPI_Comm comm);
/* Collective: read this rank's n_rows rows of the checkpoint at layer_next into rows. */
int ls_ckpt_load_rows(const char *dir, MPI_Comm comm, int layer_next, uint64_t fp,
                      const ls_ckpt_rows_t *rows, int64_t n_rows);
/* Collective, for a resume with another rank count (elastic): rows [row0, row0 + n_rows)
 * of the checkpoint's whole residual stream into rows (its row 0 is row0), read from the
 * saved ranks' files that hold them; old_rows (saved->ranks + 1) are the first rows of each
 * saved rank's file (the files are consecutive slices of one row order). fp: the
 * fingerprint of the saved run (ls_ckpt_fp of its meta). */
int ls_ckpt_load_rows_elastic(const char *dir, MPI_Comm comm, const ls_ckpt_meta_t *saved,
                              uint64_t fp, const int64_t *old_rows, int64_t row0,
                              int64_t n_rows, const ls_ckpt_rows_t *rows);
/* 1 if dir does not exist, is empty, or is a checkpoint directory of layersweep's (its
 * marker or a meta.json in it); 0 for a directory with other files, which the
 * checkpoints must not share (they are removed at the end). */
int ls_ckpt_dir_is_ours(const char *dir);
/* Remove a finished sweep's checkpoint directory (rank 0 after a barrier): only the files
 * layersweep wrote, then the directory if it is empty. */
void ls_ckpt_remove(const char *dir, MPI_Comm comm);

#endif
