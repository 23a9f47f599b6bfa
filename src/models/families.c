/* families.c: the list of model families (one line per family file in src/models) and
 * the lookups over it (see family.h). */
#include <stdio.h>
#include <string.h>

#include "family.h"

extern const ls_family_t ls_family_llama;

static const ls_family_t *const families[] = {
    &ls_family_llama,
};
#define N_FAMILIES ((int)(sizeof families / sizeof families[0]))

const ls_family_t *ls_family_get(int i) {
  return i >= 0 && i < N_FAMILIES ? families[i] : NULL;
}

int ls_family_find(const char *arch, const char *type) {
  for (int f = 0; f < N_FAMILIES; f++)
    for (int i = 0; families[f]->archs[i]; i++)
      if (arch ? strcmp(arch, families[f]->archs[i]) == 0
               : type && strcmp(type, families[f]->model_types[i]) == 0)
        return f;
  return -1;
}

const char *ls_family_supported(void) {
  static char list[1024];
  if (!list[0])
    for (int f = 0; f < N_FAMILIES; f++)
      for (int i = 0; families[f]->archs[i]; i++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", list[0] ? ", " : "",
                 families[f]->archs[i]);
  return list;
}

double ls_family_gemm_flops_per_token(const ls_config_t *c) {
  const ls_family_t *fam = ls_family_get(c->family);
  ls_wspec_t w[fam->n_slots > 0 ? fam->n_slots : 1];
  double macs = 0;
  for (int L = 0; L < c->n_layers; L++) {
    fam->layer_tensors(c, L, w);
    for (int i = 0; i < fam->n_slots; i++)
      if (w[i].present && w[i].kind == LS_WK_MATRIX) macs += (double)w[i].shape[0] * (double)w[i].shape[1];
  }
  return c->n_layers > 0 ? 2.0 * macs / c->n_layers : 0.0;
}
