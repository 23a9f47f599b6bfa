/* project.h: --project FILE:DATASET, activations stored projected on K given directions
 * ([..., K] instead of [..., H]): each stored value is the dot product of the row with a
 * direction (as given, not normalized), summed in float64 and rounded once. DATASET is
 * [K, H] (the same directions at every layer) or [n, K, H] per layer: with a "layers"
 * attribute on the dataset or its group (a previous run's
 * /reductions/<hook>/pca_components) its rows are those layers, else n must be the
 * model's layer count. Reductions and router_logits see the unprojected rows. */
#ifndef LS_PROJECT_H
#define LS_PROJECT_H

#include <mpi.h>
#include <stdint.h>

typedef struct {
  int K;             /* directions; 0: no --project */
  int n_sets;        /* 1 (every layer) or the selected layers' count */
  int per_layer;
  int *set_of_layer; /* (n_layers) the set of each layer, -1 none */
  double *dirs;      /* (n_sets, K, H) as read (stored in the output's /project/directions) */
  double *Dt;        /* (n_sets, H, K) transposed, float64 */
  char canon[4400];  /* FILE:DATASET */
  char file[4200];   /* the input file (checked against every output path) */
  uint64_t fp;       /* hash of the directions */
} ls_project_t;

/* Collective: rank 0 reads and validates, every rank receives. sel (n_sel) the selected
 * layers; final: final_norm is captured (needs one set for every layer). LS_ERR after
 * one message (every rank). spec NULL: no projection. */
int ls_project_load(const char *spec, int H, int n_layers, const int *sel, int n_sel, int final,
                    MPI_Comm comm, ls_project_t *p);
void ls_project_free(ls_project_t *p);

#endif
