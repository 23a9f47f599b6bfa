/* checkpoint.c: atomic residual-stream checkpoints (see checkpoint.h). */
#include "checkpoint.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "comm.h"
#include "ls_common.h"

#define MAGIC "LSCKPT01"

typedef struct {
  char magic[8];
  int32_t rank, layer_next;
  uint64_t fp;       /* combined fingerprint of the run */
  uint64_t n_floats;
} rank_header_t;

uint64_t ls_ckpt_fp(const ls_ckpt_meta_t *m) {
  uint64_t h = LS_FNV_INIT;
  h = ls_fnv1a(h, &m->model_fp, 8);
  h = ls_fnv1a(h, &m->data_fp, 8);
  h = ls_fnv1a(h, &m->options_fp, 8);
  h = ls_fnv1a(h, &m->ranks, sizeof m->ranks);
  return ls_fnv1a(h, &m->row_align, sizeof m->row_align);
}

/* ---- small file helpers ------------------------------------------------------------ */
static int write_all(int fd, const void *buf, size_t n, const char *path) {
  const char *p = buf;
  while (n > 0) {
    ssize_t w = write(fd, p, n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      ls_error("%s: write failed: %s; free space (or pick --checkpoint-dir elsewhere) and "
               "rerun with --resume", path, strerror(errno));
      return LS_ERR;
    }
    p += w;
    n -= (size_t)w;
  }
  return LS_OK;
}

static int read_all(int fd, void *buf, size_t n, const char *path) {
  char *p = buf;
  while (n > 0) {
    ssize_t r = read(fd, p, n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      ls_error("%s: checkpoint file is truncated or unreadable", path);
      return LS_ERR;
    }
    p += r;
    n -= (size_t)r;
  }
  return LS_OK;
}

static void fsync_dir(const char *dir) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    fsync(fd);
    close(fd);
  }
}

/* ---- rows in host memory or in pieces -------------------------------------------------- */
#define PIECE_BYTES ((size_t)64 << 20)

static size_t row_bytes(const ls_ckpt_rows_t *r) { return r->row_floats * sizeof(float); }

/* Rows per piece when the stream moves through get / put, and a buffer for one. */
static int64_t piece_rows(const ls_ckpt_rows_t *r, int64_t n_rows) {
  int64_t k = (int64_t)(PIECE_BYTES / row_bytes(r));
  if (k < 1) k = 1;
  return n_rows < k ? (n_rows > 0 ? n_rows : 1) : k;
}

static int write_rows(int fd, const ls_ckpt_rows_t *r, int64_t n_rows, const char *path) {
  if (r->x) return write_all(fd, r->x, (size_t)n_rows * row_bytes(r), path);
  const int64_t k = piece_rows(r, n_rows);
  float *buf = ls_malloc(row_bytes(r) * (size_t)k, "checkpoint staging");
  int rc = buf ? LS_OK : LS_ERR;
  for (int64_t r0 = 0; r0 < n_rows && rc == LS_OK; r0 += k) {
    const int64_t n = n_rows - r0 < k ? n_rows - r0 : k;
    rc = r->get(r->ctx, r0, n, buf);
    if (rc == LS_OK) rc = write_all(fd, buf, (size_t)n * row_bytes(r), path);
  }
  free(buf);
  return rc;
}

/* Rows [row0, row0 + n) of r <- the file's bytes from off. */
static int read_rows(int fd, off_t off, const ls_ckpt_rows_t *r, int64_t row0, int64_t n_rows,
                     const char *path) {
  const int64_t k = r->x ? n_rows : piece_rows(r, n_rows);
  float *buf = r->x ? NULL : ls_malloc(row_bytes(r) * (size_t)k, "checkpoint staging");
  int rc = r->x || buf ? LS_OK : LS_ERR;
  for (int64_t r0 = 0; r0 < n_rows && rc == LS_OK; r0 += k) {
    const int64_t n = n_rows - r0 < k ? n_rows - r0 : k;
    char *dst = r->x ? (char *)(r->x + (size_t)(row0 + r0) * r->row_floats) : (char *)buf;
    const size_t bytes = (size_t)n * row_bytes(r);
    const off_t at = off + (off_t)((size_t)r0 * row_bytes(r));
    for (size_t done = 0; done < bytes && rc == LS_OK;) {
      const ssize_t got = pread(fd, dst + done, bytes - done, at + (off_t)done);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) {
        ls_error("%s: cannot read the checkpoint rows: %s", path,
                 got < 0 ? strerror(errno) : "file too short");
        rc = LS_ERR;
      } else {
        done += (size_t)got;
      }
    }
    if (rc == LS_OK && !r->x) rc = r->put(r->ctx, row0 + r0, n, buf);
  }
  free(buf);
  return rc;
}

/* Write path atomically: tmp name, fsync, rename. The header a (na bytes), then n_rows of
 * rows when rows is not NULL. */
static int write_atomic(const char *path, const void *a, size_t na, const ls_ckpt_rows_t *rows,
                        int64_t n_rows) {
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    ls_error("%s: cannot create checkpoint file: %s", tmp, strerror(errno));
    return LS_ERR;
  }
  int rc = write_all(fd, a, na, tmp);
  if (rc == LS_OK && rows && n_rows > 0) rc = write_rows(fd, rows, n_rows, tmp);
  if (rc == LS_OK && fsync(fd) != 0) {
    ls_error("%s: fsync failed: %s", tmp, strerror(errno));
    rc = LS_ERR;
  }
  if (close(fd) != 0 && rc == LS_OK) {
    ls_error("%s: close failed: %s", tmp, strerror(errno));
    rc = LS_ERR;
  }
  if (rc == LS_OK && rename(tmp, path) != 0) {
    ls_error("%s: rename failed: %s", path, strerror(errno));
    rc = LS_ERR;
  }
  if (rc != LS_OK) unlink(tmp);
  return rc;
}

/* marks a checkpoint directory layersweep made (or took while it was empty) */
#define CKPT_MARKER ".layersweep-checkpoints"

static void rank_path(char *buf, size_t cap, const char *dir, int rank, int layer) {
  snprintf(buf, cap, "%s/rank%d.L%d.bin", dir, rank, layer);
}

/* ---- save ------------------------------------------------------------------------------ */
static char *meta_json(const ls_ckpt_meta_t *m) {
  cJSON *j = cJSON_CreateObject();
  char hex[3][17];
  snprintf(hex[0], 17, "%016" PRIx64, m->model_fp);
  snprintf(hex[1], 17, "%016" PRIx64, m->data_fp);
  snprintf(hex[2], 17, "%016" PRIx64, m->options_fp);
  cJSON_AddNumberToObject(j, "format_version", LS_CKPT_FORMAT_VERSION);
  cJSON_AddNumberToObject(j, "layer_next", m->layer_next);
  cJSON_AddNumberToObject(j, "ranks", m->ranks);
  cJSON_AddNumberToObject(j, "row_align", m->row_align);
  cJSON_AddStringToObject(j, "model_fingerprint", hex[0]);
  cJSON_AddStringToObject(j, "data_fingerprint", hex[1]);
  cJSON_AddStringToObject(j, "options_fingerprint", hex[2]);
  cJSON_AddStringToObject(j, "model", m->model_desc);
  char *text = cJSON_Print(j);
  cJSON_Delete(j);
  return text;
}

int ls_ckpt_save(const char *dir, MPI_Comm comm, const ls_ckpt_meta_t *meta,
                 const ls_ckpt_rows_t *rows, int64_t n_rows) {
  int rank;
  MPI_Comm_rank(comm, &rank);
  int rc = LS_OK;
  if (rank == 0 && mkdir(dir, 0755) != 0 && errno != EEXIST) {
    ls_error("%s: cannot create the checkpoint directory: %s", dir, strerror(errno));
    rc = LS_ERR;
  }
  if (rank == 0 && rc == LS_OK) { /* the directory is ours: ls_ckpt_dir_is_ours */
    char mark[4200];
    snprintf(mark, sizeof mark, "%s/" CKPT_MARKER, dir);
    int fd = open(mark, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0) close(fd);
  }
  if (ls_agree(rc, comm)) return LS_ERR;
  /* 1. every rank's rows under their final names (not yet referenced by meta.json) */
  char path[4200];
  rank_path(path, sizeof path, dir, rank, meta->layer_next);
  rank_header_t h;
  memset(&h, 0, sizeof h);
  memcpy(h.magic, MAGIC, 8);
  h.rank = rank;
  h.layer_next = meta->layer_next;
  h.fp = ls_ckpt_fp(meta);
  h.n_floats = (uint64_t)n_rows * rows->row_floats;
  ls_error_defer(1);
  rc = write_atomic(path, &h, sizeof h, rows, n_rows);
  if (ls_agree_report(rc, comm)) return LS_ERR;
  /* 2. the commit point: meta.json names the new layer */
  ls_error_defer(1);
  if (rank == 0) {
    char mpath[4200];
    snprintf(mpath, sizeof mpath, "%s/meta.json", dir);
    char *text = meta_json(meta);
    rc = text ? write_atomic(mpath, text, strlen(text), NULL, 0) : LS_ERR;
    free(text);
    if (rc == LS_OK) fsync_dir(dir);
  }
  if (ls_agree_report(rc, comm)) return LS_ERR;
  /* 3. older checkpoints of this rank are garbage now (rank 0: also those of ranks this
   * run does not have, left by a run with more ranks before a resume) */
  int size;
  MPI_Comm_size(comm, &size);
  DIR *d = opendir(dir);
  if (d) {
    struct dirent *e;
    char keep[64];
    snprintf(keep, sizeof keep, "rank%d.L%d.bin", rank, meta->layer_next);
    while ((e = readdir(d)) != NULL) {
      int r = -1, l = -1, n = 0;
      if (sscanf(e->d_name, "rank%d.L%d.bin%n", &r, &l, &n) != 2 || n == 0 ||
          (e->d_name[n] != '\0' && strcmp(e->d_name + n, ".tmp") != 0) || /* .bin, .bin.tmp */
          strcmp(e->d_name, keep) == 0 || !(r == rank || (rank == 0 && r >= size)))
        continue;
      char old_path[4400];
      snprintf(old_path, sizeof old_path, "%s/%s", dir, e->d_name);
      unlink(old_path);
    }
    closedir(d);
  }
  return LS_OK;
}

/* ---- load ------------------------------------------------------------------------------ */
static int parse_hex(const cJSON *o, const char *key, uint64_t *out) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!cJSON_IsString(v)) return LS_ERR;
  char *end;
  *out = strtoull(v->valuestring, &end, 16);
  return *end ? LS_ERR : LS_OK;
}

int ls_ckpt_load_meta(const char *dir, MPI_Comm comm, ls_ckpt_meta_t *meta) {
  int rank;
  MPI_Comm_rank(comm, &rank);
  int found = 0;
  memset(meta, 0, sizeof *meta);
  if (rank == 0) {
    char mpath[4200];
    snprintf(mpath, sizeof mpath, "%s/meta.json", dir);
    if (access(mpath, F_OK) == 0) {
      char *text = ls_read_text_file(mpath, 1 << 20, NULL);
      cJSON *j = text ? cJSON_ParseWithOpts(text, NULL, 1) : NULL;
      const cJSON *ln = cJSON_GetObjectItemCaseSensitive(j, "layer_next");
      const cJSON *rk = cJSON_GetObjectItemCaseSensitive(j, "ranks");
      const cJSON *al = cJSON_GetObjectItemCaseSensitive(j, "row_align");
      const cJSON *md = cJSON_GetObjectItemCaseSensitive(j, "model");
      const cJSON *fv = cJSON_GetObjectItemCaseSensitive(j, "format_version");
      if (j && (!cJSON_IsNumber(fv) || fv->valuedouble != LS_CKPT_FORMAT_VERSION)) {
        if (cJSON_IsNumber(fv))
          ls_error("%s: checkpoint format version %g, this layersweep reads version %d; "
                   "resume with the layersweep that wrote it, or remove %s to start over",
                   mpath, fv->valuedouble, LS_CKPT_FORMAT_VERSION, dir);
        else
          ls_error("%s: no checkpoint format_version; remove %s to start over", mpath, dir);
        found = -1;
      } else if (j && cJSON_IsNumber(ln) && cJSON_IsNumber(rk) && cJSON_IsNumber(al) &&
          parse_hex(j, "model_fingerprint", &meta->model_fp) == LS_OK &&
          parse_hex(j, "data_fingerprint", &meta->data_fp) == LS_OK &&
          parse_hex(j, "options_fingerprint", &meta->options_fp) == LS_OK) {
        meta->layer_next = ln->valueint;
        meta->ranks = rk->valueint;
        meta->row_align = al->valueint;
        if (cJSON_IsString(md)) snprintf(meta->model_desc, sizeof meta->model_desc, "%s", md->valuestring);
        found = 1;
      } else if (text) {
        ls_error("%s: damaged checkpoint metadata; remove %s to start over", mpath, dir);
        found = -1;
      } else {
        found = -1;
      }
      cJSON_Delete(j);
      free(text);
    }
  }
  MPI_Bcast(&found, 1, MPI_INT, 0, comm);
  MPI_Bcast(meta, sizeof *meta, MPI_BYTE, 0, comm);
  return found;
}

int ls_ckpt_check(const ls_ckpt_meta_t *s, const ls_ckpt_meta_t *n, const char *dir,
                  MPI_Comm comm) {
  int rank;
  MPI_Comm_rank(comm, &rank);
  const char *what = NULL;
  char buf[512];
  if (s->model_fp != n->model_fp) {
    snprintf(buf, sizeof buf, "the model files differ from the checkpoint's (%s)", s->model_desc);
    what = buf;
  } else if (s->data_fp != n->data_fp) {
    what = "the dataset's contents differ from the checkpoint's";
  } else if (s->options_fp != n->options_fp) {
    what = "--hooks, --layers, --pool or --allow-long-prompts differ from the checkpointed run's";
  } else if (s->row_align != n->row_align) {
    snprintf(buf, sizeof buf, "the checkpoint's row alignment (%d) differs from this machine's "
             "(%d): resume on the same kind of CPU", s->row_align, n->row_align);
    what = buf;
  }
  if (!what) return LS_OK;
  if (rank == 0)
    ls_error("cannot resume from %s: %s; rerun with --force to start over", dir, what);
  return LS_ERR;
}

int ls_ckpt_load_rows(const char *dir, MPI_Comm comm, int layer_next, uint64_t fp,
                      const ls_ckpt_rows_t *rows, int64_t n_rows) {
  int rank;
  MPI_Comm_rank(comm, &rank);
  char path[4200];
  rank_path(path, sizeof path, dir, rank, layer_next);
  int rc = LS_ERR;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  rank_header_t h;
  if (fd < 0) {
    ls_error("%s: missing checkpoint file: %s", path, strerror(errno));
  } else if (read_all(fd, &h, sizeof h, path) == LS_OK) {
    if (memcmp(h.magic, MAGIC, 8) != 0 || h.rank != rank || h.layer_next != layer_next ||
        h.fp != fp || h.n_floats != (uint64_t)n_rows * rows->row_floats)
      ls_error("%s: checkpoint file does not belong to this run (rank, layer or size "
               "differs); rerun with --force to start over", path);
    else
      rc = read_rows(fd, (off_t)sizeof h, rows, 0, n_rows, path);
  }
  if (fd >= 0) close(fd);
  return ls_agree(rc, comm);
}

int ls_ckpt_load_rows_elastic(const char *dir, MPI_Comm comm, const ls_ckpt_meta_t *saved,
                              uint64_t fp, const int64_t *old_rows, int64_t row0,
                              int64_t n_rows, const ls_ckpt_rows_t *rows) {
  const size_t H = rows->row_floats;
  int rc = LS_OK;
  for (int r = 0; r < saved->ranks && rc == LS_OK; r++) {
    const int64_t a = old_rows[r] > row0 ? old_rows[r] : row0;
    const int64_t b = old_rows[r + 1] < row0 + n_rows ? old_rows[r + 1] : row0 + n_rows;
    if (a >= b) continue;
    char path[4200];
    rank_path(path, sizeof path, dir, r, saved->layer_next);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    rank_header_t h;
    if (fd < 0) {
      ls_error("%s: missing checkpoint file (a resume with another rank count reads every "
               "saved rank's file: the checkpoint directory must be visible to every rank): %s",
               path, strerror(errno));
      rc = LS_ERR;
    } else if (read_all(fd, &h, sizeof h, path) != LS_OK) {
      rc = LS_ERR;
    } else if (memcmp(h.magic, MAGIC, 8) != 0 || h.rank != r || h.layer_next != saved->layer_next ||
               h.fp != fp || h.n_floats != (uint64_t)(old_rows[r + 1] - old_rows[r]) * H) {
      ls_error("%s: checkpoint file does not belong to this run (rank, layer or size "
               "differs); rerun with --force to start over", path);
      rc = LS_ERR;
    } else {
      /* rows [a, b) of the whole stream are rows [a - old_rows[r], ..) of this file */
      const off_t off = (off_t)sizeof h + (off_t)((size_t)(a - old_rows[r]) * H * sizeof(float));
      rc = read_rows(fd, off, rows, a - row0, b - a, path);
    }
    if (fd >= 0) close(fd);
  }
  return ls_agree(rc, comm);
}

void ls_ckpt_remove(const char *dir, MPI_Comm comm) {
  int rank;
  MPI_Comm_rank(comm, &rank);
  char path[4200];
  /* uncommit first, then drop the rows */
  if (rank == 0) {
    snprintf(path, sizeof path, "%s/meta.json", dir);
    unlink(path);
  }
  MPI_Barrier(comm);
  int size;
  MPI_Comm_size(comm, &size);
  DIR *d = opendir(dir);
  if (d) {
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
      int r = -1, l = -1, n = 0;
      if (sscanf(e->d_name, "rank%d.L%d.bin%n", &r, &l, &n) != 2 || n == 0 ||
          (e->d_name[n] != '\0' && strcmp(e->d_name + n, ".tmp") != 0) || /* .bin, .bin.tmp */
          !(r == rank || (rank == 0 && r >= size)))
        continue;
      snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
      unlink(path);
    }
    closedir(d);
  }
  MPI_Barrier(comm);
  if (rank == 0) {
    snprintf(path, sizeof path, "%s/" CKPT_MARKER, dir);
    unlink(path);
    rmdir(dir); /* only if nothing else is left in it */
  }
}

int ls_ckpt_dir_is_ours(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return 1; /* not there (yet): it will be ours */
  struct dirent *e;
  int empty = 1, ours = 0;
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    empty = 0;
    if (strcmp(e->d_name, CKPT_MARKER) == 0 || strcmp(e->d_name, "meta.json") == 0) ours = 1;
  }
  closedir(d);
  return empty || ours;
}
