/* block.h: one Llama/Mistral/Qwen2 decoder block, composed from a backend's ops.
 *   x  = x + o_proj(attn(rope(q(norm1(x))), rope(k(..)), v(..)))     -> attn_out
 *   x  = x + down(silu(gate(norm2(x))) * up(norm2(x)))                 -> mlp_out
 * Backend-agnostic: the same code drives the CPU and CUDA op tables. */
#ifndef LS_BLOCK_H
#define LS_BLOCK_H

#include <stdint.h>

#include "backend.h"
#include "config.h"

/* The tensors of one layer, in their fixed packing order. Biases absent from a
 * family's checkpoint are NULL. */
typedef enum {
  LS_W_ATTN_NORM, LS_W_Q, LS_W_K, LS_W_V, LS_W_O,
  LS_W_BQ, LS_W_BK, LS_W_BV, LS_W_BO,
  LS_W_MLP_NORM, LS_W_GATE, LS_W_UP, LS_W_DOWN,
  LS_W_BGATE, LS_W_BUP, LS_W_BDOWN,
  LS_W_COUNT
} ls_weight_id_t;

typedef struct {
  void *w[LS_W_COUNT]; /* backend memory: GEMM weights as be->wtype, the rest float32 */
} ls_layer_weights_t;

/* 1 if tensor id is a GEMM weight (stored as the backend's wtype), 0 if a vector
 * (norm weight, bias: float32). */
static inline int ls_weight_is_matrix(ls_weight_id_t id) {
  return id == LS_W_Q || id == LS_W_K || id == LS_W_V || id == LS_W_O || id == LS_W_GATE ||
         id == LS_W_UP || id == LS_W_DOWN;
}

/* Checkpoint name and shape of tensor `id` of layer `layer`; returns 0 when the
 * config has no such tensor (e.g. biases of a Llama model), 1 otherwise. */
int ls_weight_spec(const ls_config_t *cfg, int layer, ls_weight_id_t id, char *name,
                   size_t name_cap, int64_t shape[2], int *ndim);

/* A microbatch of packed prompts (all backend memory). */
typedef struct {
  int T;                    /* rows (tokens) */
  int n_seq;                /* prompts */
  const int32_t *seq_start; /* (n_seq + 1) row offsets, seq_start[0] = 0 */
  const int32_t *seq_len;   /* (n_seq) real rows of each sequence (the rest up to the
                             * next start is alignment padding); NULL: no padding */
  const int32_t *pos;       /* (T) position of each row inside its prompt */
  int max_len;              /* >= every seq_start[s + 1] - seq_start[s] */
} ls_batch_t;

/* Scratch for up to T_max rows (backend memory), carved once per sweep. */
typedef struct {
  float *xn;       /* (T, H) normed input */
  float *q;        /* (T, n_heads * head_dim) */
  float *k, *v;    /* (T, n_kv_heads * head_dim) */
  float *att;      /* (T, n_heads * head_dim) attention output before o_proj */
  float *attn_out; /* (T, H) hook attn_out */
  float *gate;     /* (T, I) */
  float *up;       /* (T, I) */
  float *mlp_out;  /* (T, H) hook mlp_out */
} ls_block_scratch_t;

size_t ls_block_scratch_floats(const ls_config_t *cfg, int T_max);
/* Carve `base` (ls_block_scratch_floats floats) into named pointers. */
void ls_block_scratch_carve(const ls_config_t *cfg, int T_max, float *base,
                            ls_block_scratch_t *s);

/* x (T, H): residual stream in, residual_post out. After the call s->attn_out and
 * s->mlp_out hold the sub-layer outputs for the hooks. */
void ls_block_forward(ls_backend_t *be, const ls_config_t *cfg, const ls_layer_weights_t *w,
                      const float *cos_tab, const float *sin_tab, float *x,
                      const ls_batch_t *b, ls_block_scratch_t *s);

#endif
