/* safetensors.h: validated reader (and writer) for Hugging Face safetensors
 * checkpoints, single file or sharded through model.safetensors.index.json.
 *
 * Nothing from a model directory is trusted: the header length is capped, the JSON
 * header is parsed with cJSON and every entry checked (dtype BF16/F16/F32, shape x
 * dtype size == byte span with overflow checks, spans inside the data area, no
 * overlaps and no holes, file length exact). Shard names from the index must be bare
 * file names (no '/', no "..", not absolute); symlinks inside the directory are
 * allowed (the Hugging Face cache layout: snapshots/<rev>/x -> ../../blobs/<hash>).
 * Tensor bytes are read with pread on demand; only what the caller asks for is
 * resident. Large local reads of bytes not in the page cache go around it (O_DIRECT,
 * io/source.c). */
#ifndef LS_SAFETENSORS_H
#define LS_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
#include "source.h"


#define LS_ST_MAX_NDIM 8
#define LS_ST_MAX_NAME 256
/* Largest JSON header accepted (the format's own reference reader uses 100 MB). */
#define LS_ST_MAX_HEADER (100u * 1024u * 1024u)


typedef struct {
  char name[LS_ST_MAX_NAME];
  ls_dtype_t dtype;
  int ndim;
  int64_t shape[LS_ST_MAX_NDIM];
  int64_t numel;
  int file;            /* index into ls_st_model_t.files */
  uint64_t offset;     /* absolute byte offset in that file */
  uint64_t nbytes;
} ls_st_tensor_t;

typedef struct {
  char path[4096];     /* full path or URL as opened (dir + "/" + name) */
  char name[256];      /* bare file name */
  ls_src_t src;        /* a local file or a remote one (source.h) */
  uint64_t size;
  uint64_t header_len; /* 8 + JSON header bytes */
  unsigned char *header; /* (header_len) the bytes of the header, as read */
} ls_st_file_t;

typedef struct {
  char dir[4096];      /* a directory, or the base URL of a remote one */
  int remote;
  int n_files;
  ls_st_file_t *files;
  int n_tensors;
  ls_st_tensor_t *tensors; /* sorted by name */
  uint64_t bytes_read;     /* tensor bytes read through ls_st_read* so far */
} ls_st_model_t;

/* Open a model directory: model.safetensors.index.json if present (every shard it
 * names is opened and validated; every weight_map entry must exist in the shard it
 * names; a tensor name in two shards is an error), else model.safetensors. dir may be
 * an http(s) URL: the same files under it, read by range requests (http.h). On error
 * prints one line naming the file/tensor and returns -1 (m is left closed). */
int ls_st_open_dir(const char *dir, ls_st_model_t *m);
void ls_st_close(ls_st_model_t *m);

/* Lookup by exact name; NULL if absent. */
const ls_st_tensor_t *ls_st_find(const ls_st_model_t *m, const char *name);

/* pread bytes [off, off+n) of tensor t into dst; counts into m->bytes_read. */
int ls_st_read_range(ls_st_model_t *m, const ls_st_tensor_t *t, uint64_t off, uint64_t n,
                     void *dst);
static inline int ls_st_read(ls_st_model_t *m, const ls_st_tensor_t *t, void *dst) {
  return ls_st_read_range(m, t, 0, t->nbytes, dst);
}

/* Read spans of file `file` (tensor bytes scattered into the caller's buffers, see
 * source.h); counts the bytes with a destination into m->bytes_read. */
int ls_st_read_spans(ls_st_model_t *m, int file, const ls_src_span_t *spans, int n);

/* Validate one file's header. buf holds the JSON header (not NUL-terminated, len
 * bytes) of a file of file_size bytes whose data area starts at 8 + len. Appends the
 * tensors found to *tensors / *n (realloc'd), tagging them with file index `file`.
 * `path` is only used in messages. Exposed for unit tests and fuzzing. */
int ls_st_parse_header(const char *buf, size_t len, uint64_t file_size, const char *path,
                       int file, ls_st_tensor_t **tensors, int *n);


/* ---- writer (used by make-model and tests) ---------------------------------- */
typedef struct {
  const char *name;
  ls_dtype_t dtype;
  int ndim;
  int64_t shape[LS_ST_MAX_NDIM];
} ls_st_wtensor_t;

typedef struct {
  int fd;
  char path[4096];
  uint64_t data_start; /* 8 + padded header length */
  int n;
  uint64_t *offsets;   /* data-relative offset of each tensor */
  uint64_t *nbytes;
} ls_st_writer_t;

/* Create `path` (truncating) with a header describing n tensors laid out in the given
 * order; if metadata_format is non-NULL the header gets "__metadata__": {"format":
 * metadata_format}. Tensor bytes are then written with ls_st_writer_put (any order). */
int ls_st_writer_open(ls_st_writer_t *w, const char *path, const ls_st_wtensor_t *t, int n,
                      const char *metadata_format);
int ls_st_writer_put(ls_st_writer_t *w, int i, uint64_t off, const void *bytes, uint64_t n);
int ls_st_writer_close(ls_st_writer_t *w); /* fsync + close; -1 on any error */

#endif
