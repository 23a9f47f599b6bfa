/* steer.h: --steer FILE.json, edits applied inside the forward at a layer's hook point
 * before anything downstream reads it (captures at that point record the edited value):
 *   [{"layer": L, "hook": "residual_pre|attn_out|mlp_out|residual_post",
 *     "op": "add" | "ablate", "alpha": a, "vector": V, "positions": "all" | "last"}, ...]
 * add: x += alpha V; ablate: x -= (x . u) u with u = V / |V|. V: a list of hidden_size
 * numbers, or {"file": "x.h5", "dataset": "/path", "index": i} (row i of a 2-D dataset,
 * or a 1-D dataset of hidden_size values; a relative file name is relative to the JSON
 * file's directory). alpha defaults to 1 (unused by ablate), positions to "all". Validated on rank 0 up front (layer range, hook,
 * op, length, finite values, a nonzero vector to ablate) and broadcast. */
#ifndef LS_STEER_H
#define LS_STEER_H

#include <mpi.h>

#include "hooks.h"

typedef struct {
  int layer;
  int hook;       /* ls_hook_t: residual_pre, attn_out, mlp_out or residual_post */
  int ablate;     /* 0: add alpha v; 1: remove the component along v (unit) */
  int last;       /* 1: only the last token of each prompt; 0: every token */
  float alpha;
  float *v;       /* (H) host: the vector (unit for ablate) */
} ls_edit_t;

typedef struct {
  int n;
  ls_edit_t *e;
  char *canon;    /* the edits as JSON (vector_row k: row k of the output's /steer/vectors),
                   * for the output's "steer" attribute */
  char **inputs;  /* the files read (the JSON, vector files): never written */
  int n_inputs;
} ls_steer_t;

/* Collective: st <- the edits of `path` (NULL or "": none) for a model of `hidden` and
 * n_layers; -1 after one message (rank 0) naming the file and the entry. */
int ls_steer_load(const char *path, int hidden, int n_layers, MPI_Comm comm, ls_steer_t *st);
void ls_steer_free(ls_steer_t *st);
/* 1 when some edit acts at layer L */
int ls_steer_at_layer(const ls_steer_t *st, int layer);

#endif
