/* model.h: a model as the sweep sees it: the validated config, its family, and the
 * weight table (every layer's tensors: name, kind, shape, checkpoint dtype and byte
 * offset inside the packed raw layer), identical on every rank, built once from the
 * family's recipe (src/models) and the checkpoint headers; on rank 0 only, the open
 * safetensors files. Other ranks never open the weight files. */
#ifndef LS_MODEL_H
#define LS_MODEL_H

#include <mpi.h>
#include <stdint.h>

#include "config.h"
#include "family.h"
#include "safetensors.h"

typedef struct {
  ls_wspec_t spec;  /* from the family's table */
  int32_t dtype;    /* ls_dtype_t of the checkpoint tensor (present tensors) */
  int64_t numel;    /* the slot's elements (a view's, not the whole fused tensor's) */
  uint64_t offset;  /* byte offset inside the packed layer */
  /* FP8 weights (dtype F8_*): the float32 block scales <name>_scale_inv, (scale_rows,
   * scale_cols) = ceil of the weight's shape over cfg.fp8_block, packed after it */
  uint64_t scale_offset;
  int64_t scale_rows, scale_cols;
} ls_wslot_t;

typedef struct {
  ls_config_t cfg;
  const ls_family_t *fam;
  int is_root;
  ls_st_model_t st;          /* rank 0 only */
  int n_slots;               /* tensors per layer (fam->n_slots) */
  ls_wslot_t *slots;         /* (n_layers, n_slots) */
  ls_wslot_t glob[LS_G_COUNT]; /* the model-level tensors (LS_G_*) */
  uint64_t *layer_bytes;     /* (n_layers) packed raw bytes per layer */
  uint64_t max_layer_bytes;
  uint64_t total_tensor_bytes; /* bytes of every tensor a full sweep reads */
  char *config_json;         /* config.json text (for the output file) */
  /* where the model was read from (every rank; never a token) */
  char source[8];            /* "local", "http" (a URL) or "hub" (a hub id) */
  char location[4096];       /* the directory, or the base URL of the files */
  char hub_id[256], revision[256]; /* source "hub" (also when found in the local cache) */
  /* rank 0: one layer's reads as spans (allocated at the first read) */
  ls_src_seg_t *rd_segs;
  ls_src_span_t *rd_spans;
  void *rd_wants;            /* (2 rd_cap) the tensors wanted, in table and file order */
  int rd_cap;
} ls_model_t;

/* Collective over comm. `dir` is what --model names (hub.h: a directory, an http(s) URL
 * or a hub id). Rank 0 reads config.json (once) and the safetensors headers,
 * validates every tensor of the family's table against them, and broadcasts the
 * description. On error every rank returns -1 (rank 0 printed the reason). */
int ls_model_open(ls_model_t *m, const char *dir, MPI_Comm comm);
void ls_model_close(ls_model_t *m);

/* The slot of tensor i of layer L. */
static inline const ls_wslot_t *ls_model_slot(const ls_model_t *m, int layer, int i) {
  return &m->slots[(size_t)layer * (size_t)m->n_slots + (size_t)i];
}

/* Collective: fingerprint of config.json, the weight table and every safetensors
 * file's name, size and header bytes, and a remote file's ETag (computed by rank 0,
 * identical on every rank). */
uint64_t ls_model_fingerprint(ls_model_t *m, MPI_Comm comm);

/* Rank 0: read layer L's tensors (raw checkpoint bytes) into dst (layer_bytes[L]). */
int ls_model_read_layer(ls_model_t *m, int layer, void *dst);
/* Rank 0: read rows ids[0..n) (sorted, distinct) of the embedding-kind global tensor g
 * (LS_G_EMBED, LS_G_POS_EMBED) raw into dst (n, H). */
int ls_model_read_rows(ls_model_t *m, int g, const int32_t *ids, int64_t n, void *dst);
/* Rank 0: read the whole global tensor g (present) raw into dst. */
int ls_model_read_global(ls_model_t *m, int g, void *dst);

#endif
