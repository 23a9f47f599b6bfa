/* families.c: the list of model families (one line per family file in src/models) and
 * the lookups over it (see family.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "family.h"

extern const ls_family_t ls_family_llama, ls_family_qwen3, ls_family_olmo2, ls_family_gemma,
    ls_family_gemma2, ls_family_gemma3, ls_family_phi3, ls_family_gpt2, ls_family_gpt_neox,
    ls_family_mixtral, ls_family_qwen2_moe, ls_family_qwen3_moe, ls_family_olmoe,
    ls_family_deepseek_v2, ls_family_deepseek_v3;

static const ls_family_t *const families[] = {
    &ls_family_llama,
    &ls_family_qwen3,
    &ls_family_olmo2,
    &ls_family_gemma,
    &ls_family_gemma2,
    &ls_family_gemma3,
    &ls_family_phi3,
    &ls_family_gpt2,
    &ls_family_gpt_neox,
    &ls_family_mixtral,
    &ls_family_qwen2_moe,
    &ls_family_qwen3_moe,
    &ls_family_olmoe,
    &ls_family_deepseek_v2,
    &ls_family_deepseek_v3,
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

int ls_family_slots(const ls_family_t *fam, const ls_config_t *cfg) {
  return fam->slot_count ? fam->slot_count(cfg) : fam->n_slots;
}

/* routed experts count top_k / n_experts of their GEMMs per token */
double ls_family_gemm_flops_per_token(const ls_config_t *c) {
  const ls_family_t *fam = ls_family_get(c->family);
  const int n = ls_family_slots(fam, c);
  ls_wspec_t *w = calloc((size_t)(n > 0 ? n : 1), sizeof *w);
  if (!w) return 0.0;
  double macs = 0;
  for (int L = 0; L < c->n_layers; L++) {
    fam->layer_tensors(c, L, w);
    for (int i = 0; i < n; i++) {
      if (!w[i].present || w[i].kind != LS_WK_MATRIX) continue;
      const double share = c->n_experts > 0 && strstr(w[i].name, ".experts.")
                               ? (double)c->top_k / c->n_experts : 1.0;
      macs += share * (double)ls_wspec_numel(&w[i]);
    }
  }
  free(w);
  return c->n_layers > 0 ? 2.0 * macs / c->n_layers : 0.0;
}

/* ---- helpers for recipes -------------------------------------------------------------------- */
int64_t ls_wspec_rows(const ls_wspec_t *w) {
  if (w->view_count > 0) return w->view_block * w->view_count;
  return w->ndim == 2 && w->transpose ? w->shape[1] : w->shape[0];
}

int64_t ls_wspec_cols(const ls_wspec_t *w) {
  if (w->ndim < 2) return 1;
  return w->transpose ? w->shape[0] : w->shape[1];
}

void ls_wspec_view(ls_wspec_t *w, int64_t row0, int64_t block, int64_t stride, int64_t count) {
  w->view_row0 = row0;
  w->view_block = block;
  w->view_stride = stride;
  w->view_count = (int32_t)count;
}

void ls_wspec_view_perm(ls_wspec_t *w, int perm, int64_t split) {
  w->view_perm = perm;
  w->view_split = split;
}

static void wspec(ls_wspec_t *w, ls_wkind_t kind, int present, int64_t d0, int64_t d1) {
  w->transpose = 0;
  w->view_perm = LS_VIEW_PLAIN;
  w->view_split = 0;
  w->view_count = 0;
  w->view_row0 = w->view_block = w->view_stride = 0;
  w->kind = kind;
  w->present = present;
  w->ndim = d1 ? 2 : 1;
  w->shape[0] = d0;
  w->shape[1] = d1;
}

void ls_wspec_layer(ls_wspec_t *w, int layer, const char *name, ls_wkind_t kind, int present,
                    int64_t d0, int64_t d1) {
  snprintf(w->name, sizeof w->name, "model.layers.%d.%s", layer, name);
  wspec(w, kind, present, d0, d1);
}

void ls_wspec_layer_at(ls_wspec_t *w, const char *prefix, int layer, const char *name,
                       ls_wkind_t kind, int present, int64_t d0, int64_t d1) {
  snprintf(w->name, sizeof w->name, "%s%d.%s", prefix, layer, name);
  wspec(w, kind, present, d0, d1);
}

void ls_wspec_global(ls_wspec_t *w, const char *name, ls_wkind_t kind, int64_t d0, int64_t d1) {
  snprintf(w->name, sizeof w->name, "%s", name);
  wspec(w, kind, 1, d0, d1);
}

float *ls_scratch_take(float **p, int T, size_t width) {
  float *block = *p;
  *p += ((size_t)ls_round_rows(T) * width + 15) / 16 * 16;
  return block;
}

size_t ls_scratch_floats(int T, const size_t *widths, int n) {
  size_t total = 0;
  for (int i = 0; i < n; i++) total += ((size_t)ls_round_rows(T) * widths[i] + 15) / 16 * 16;
  return total;
}

#define LS_MAX_SCRATCH 32

size_t ls_family_scratch_floats(const ls_family_t *fam, const ls_config_t *cfg, int T_max) {
  size_t w[LS_MAX_SCRATCH];
  fam->scratch_widths(cfg, w);
  return ls_scratch_floats(T_max, w, fam->n_scratch);
}

void ls_scratch_carve(const ls_block_t *blk, void (*widths)(const ls_config_t *, size_t *), int n,
                      float **s) {
  size_t w[LS_MAX_SCRATCH];
  widths(blk->cfg, w);
  float *p = blk->scratch;
  for (int i = 0; i < n && i < LS_MAX_SCRATCH; i++) s[i] = ls_scratch_take(&p, blk->T_max, w[i]);
}
