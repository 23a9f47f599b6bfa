/* hooks.h: which activations a sweep captures (--hooks), at which layers (--layers),
 * and how they are pooled (--pool). */
#ifndef LS_HOOKS_H
#define LS_HOOKS_H

#include "backend.h" /* ls_pool_t */

typedef enum {
  LS_HOOK_RESIDUAL_PRE = 0,
  LS_HOOK_ATTN_OUT = 1,
  LS_HOOK_MLP_OUT = 2,
  LS_HOOK_RESIDUAL_POST = 3,
  LS_HOOK_FINAL_NORM = 4,
  LS_HOOK_ROUTER_LOGITS = 5, /* MoE layers only: the router's raw logits (n_experts wide) */
  LS_HOOK_COUNT
} ls_hook_t;

/* the hidden-wide per-layer hooks are 0 .. LS_HOOK_PER_LAYER_COUNT - 1; "all" is every hook
 * up to final_norm (router_logits is asked for by name) */
#define LS_HOOK_PER_LAYER_COUNT 4
#define LS_HOOKS_ALL ((1u << (LS_HOOK_FINAL_NORM + 1)) - 1)
/* 1 for the hooks with a layer axis (every one but final_norm) */
static inline int ls_hook_layered(int h) { return h != LS_HOOK_FINAL_NORM; }

const char *ls_hook_name(ls_hook_t h);
/* "residual_pre,attn_out,..." or "all" -> bitmask (1 << ls_hook_t). */
int ls_hooks_parse(const char *spec, unsigned *mask);
int ls_pool_parse(const char *s, ls_pool_t *out);
const char *ls_pool_name(ls_pool_t p);

/* Parse a layer list such as "all", "0,4,8-11", "-1", "-4--1" for a model of
 * n_layers. Output: sorted, de-duplicated indices in *layers (malloc'd), count in *n. */
int ls_layers_parse(const char *spec, int n_layers, int **layers, int *n);

#endif
