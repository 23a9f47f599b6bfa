/* model.h: a model as the sweep sees it: the validated config, the byte layout of
 * every layer's packed weights (identical on every rank), and on rank 0 only the open
 * safetensors files. Other ranks never open the weight files. */
#ifndef LS_MODEL_H
#define LS_MODEL_H

#include <mpi.h>
#include <stdint.h>

#include "block.h"
#include "config.h"
#include "safetensors.h"

typedef struct {
  int32_t dtype;   /* ls_dtype_t of the checkpoint tensor */
  int32_t present;
  int64_t numel;
  uint64_t offset; /* byte offset inside the packed layer */
} ls_wslot_t;

typedef struct {
  ls_config_t cfg;
  int is_root;
  ls_st_model_t st;          /* rank 0 only */
  ls_wslot_t *slots;         /* (n_layers, LS_W_COUNT) */
  uint64_t *layer_bytes;     /* (n_layers) packed raw bytes per layer */
  uint64_t max_layer_bytes;
  int32_t embed_dtype, norm_dtype;
  uint64_t total_tensor_bytes; /* bytes of every tensor a full sweep reads */
  char config_json[65536];   /* config.json text (for the output file) */
} ls_model_t;

/* Collective over comm. Rank 0 reads config.json and the safetensors headers,
 * validates every tensor against the config, and broadcasts the description. On
 * error every rank returns -1 (rank 0 printed the reason). */
int ls_model_open(ls_model_t *m, const char *dir, MPI_Comm comm);
void ls_model_close(ls_model_t *m);

/* Collective: fingerprint of config.json and every safetensors file's name, size and
 * header bytes (computed by rank 0, identical on every rank). */
uint64_t ls_model_fingerprint(ls_model_t *m, MPI_Comm comm);

/* Rank 0: read layer L's tensors (raw checkpoint bytes) into dst (layer_bytes[L]). */
int ls_model_read_layer(ls_model_t *m, int layer, void *dst);
/* Rank 0: read embedding rows ids[0..n) (sorted, distinct) raw into dst (n, H). */
int ls_model_read_embed_rows(ls_model_t *m, const int32_t *ids, int64_t n, void *dst);
/* Rank 0: read model.norm.weight raw into dst (H). */
int ls_model_read_final_norm(ls_model_t *m, void *dst);

#endif
