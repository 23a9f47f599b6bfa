/* config.h: the model description layersweep runs, read from a Hugging Face
 * config.json. ls_config_parse finds the family that reads the config's architecture
 * (src/models) and lets it fill the struct; the JSON helpers every family's reader uses
 * are in src/models/family.h. The struct is plain old data so it can be broadcast as
 * bytes to every rank; a field a family does not use keeps its zero / default. */
#ifndef LS_CONFIG_H
#define LS_CONFIG_H

typedef enum { LS_ROPE_DEFAULT = 0, LS_ROPE_LINEAR = 1, LS_ROPE_LLAMA3 = 2, LS_ROPE_YARN = 3 } ls_rope_t;

/* One set of RoPE frequencies (transformers' rope_parameters of one layer kind). */
typedef struct {
  double theta;           /* rope_theta (base) */
  ls_rope_t type;
  double factor;          /* linear / llama3 */
  double low_freq_factor, high_freq_factor; /* llama3 */
  int orig_max_pos;       /* llama3 / yarn original_max_position_embeddings */
  double beta_fast, beta_slow; /* yarn: the extrapolation / interpolation ramp's ends */
  int truncate;           /* yarn: the ramp's ends rounded outwards (default 1) */
  double attn_factor;     /* yarn: cos / sin are multiplied by it (attention_factor, or from
                           * factor, mscale and mscale_all_dim); 1 otherwise */
  double mscale_all_dim;  /* yarn: DeepSeek's attention scale is multiplied by
                           * mscale(factor, mscale_all_dim)^2 when set (0: not) */
} ls_rope_params_t;

/* Most layers of a model whose layers differ in kind (sliding / full attention). */
#define LS_MAX_TYPED_LAYERS 1024

typedef struct {
  int family;             /* index of the family that read it (ls_family_get) */
  char arch_name[64];     /* e.g. "LlamaForCausalLM" */
  char model_type[64];    /* config.json model_type, e.g. "llama" ("" when absent) */
  int hidden;             /* hidden_size */
  int intermediate;       /* intermediate_size */
  int n_layers;           /* num_hidden_layers */
  int n_heads;            /* num_attention_heads */
  int n_kv_heads;         /* num_key_value_heads (GQA); = n_heads when absent */
  int head_dim;           /* explicit head_dim or hidden / n_heads */
  int vocab;              /* vocab_size */
  int max_pos;            /* max_position_embeddings (0 = unknown) */
  double rms_eps;         /* the norms' epsilon: rms_norm_eps, or layer_norm_eps /
                           * layer_norm_epsilon of the LayerNorm families */
  ls_rope_params_t rope;  /* RoPE of every layer (Gemma 3: of the full-attention layers) */
  int local_rope;         /* 1: sliding layers use rope_local (Gemma 3) */
  ls_rope_params_t rope_local;
  int rope_dim;           /* dims of each head that RoPE rotates (even; partial rotary:
                           * < head_dim); 0: no RoPE (GPT-2's learned positions) */
  int sliding_window;     /* 0 = full causal attention */
  int window_per_layer;   /* 1: sliding_window applies only to the layers marked in
                           * layer_sliding (config "layer_types"); 0: to every layer */
  unsigned char layer_sliding[LS_MAX_TYPED_LAYERS]; /* (n_layers) 1 = sliding_attention */
  int qkv_bias;           /* q/k/v projections have biases (Qwen2, Llama attention_bias) */
  int o_bias;             /* o_proj has a bias (Llama attention_bias) */
  int mlp_bias;           /* gate/up/down have biases (Llama mlp_bias) */
  int tie_embeddings;     /* tie_word_embeddings (no effect on activations) */
  double attn_scale;      /* attention score scale (0: 1 / sqrt(head_dim)); Gemma 2:
                           * query_pre_attn_scalar ** -0.5 */
  double attn_softcap;    /* attention logit soft-capping (0: none; Gemma 2) */
  int parallel_residual;  /* GPT-NeoX use_parallel_residual: x + attn(ln1(x)) + mlp(ln2(x)) */
  int gelu_tanh;          /* GPT-2 / GPT-NeoX MLP activation: 1 the tanh GELU, 0 exact (erf) */
  int attn_scale_by_layer;/* 1: layer L's scale is further divided by L + 1 (GPT-2's
                           * scale_attn_by_inverse_layer_idx) */
  /* mixture of experts (n_experts 0: a dense model) */
  int n_experts;          /* routed experts of a MoE layer */
  int top_k;              /* experts each row is routed to (num_experts_per_tok) */
  int moe_intermediate;   /* intermediate size of each routed expert */
  int norm_topk_prob;     /* the k routing weights renormalised to sum to 1 */
  int shared_intermediate;/* intermediate size of the shared expert (0: none) */
  int shared_gate;        /* the shared expert's output scaled by sigmoid(gate(x)) (Qwen2-MoE) */
  unsigned char layer_moe[LS_MAX_TYPED_LAYERS]; /* (n_layers) 1: a MoE layer */
  int router_sigmoid;     /* scores: sigmoid of the logits (DeepSeek-V3), else softmax */
  int router_bias;        /* the gate's e_score_correction_bias is added to the scores for
                           * the choice of experts only (DeepSeek-V3) */
  int n_group, topk_group;/* group-limited routing: the experts form n_group groups and a
                           * row's experts come from its topk_group best groups (0: none) */
  int group_top2;         /* a group's score: the sum of its two best scores (V3), else its
                           * best (V2's group_limited_greedy) */
  double routed_scale;    /* routed_scaling_factor: the routing weights' factor (0 or 1: none) */
  /* multi-head latent attention (DeepSeek-V2/V3; 0: ordinary attention) */
  int kv_lora_rank;       /* the compressed kv width */
  int q_lora_rank;        /* the compressed q width (0: q_proj straight from the input) */
  int qk_nope_dim, qk_rope_dim, v_head_dim; /* per head: q/k without and with RoPE, v */
  int rope_interleave;    /* RoPE on interleaved pairs (x0, x1), (x2, x3), ... */
  /* FP8 block quantization (quantization_config, quant_method "fp8") */
  int fp8;                /* 1: FP8 GEMM weights come with <name>_scale_inv block scales */
  int fp8_dtype;          /* ls_dtype_t the config's fmt names (F8_E4M3 or F8_E5M2) */
  int fp8_block[2];       /* weight_block_size: (rows, columns) of one scale's block */
} ls_config_t;

/* Parse config.json text; `path` is used in messages. Returns 0 or -1 after one
 * error line naming the file and the key. */
int ls_config_parse(const char *json, const char *path, ls_config_t *cfg);
/* Read (at most LS_CONFIG_MAX_BYTES) and parse dir/config.json. */
#define LS_CONFIG_MAX_BYTES ((size_t)1 << 20)
int ls_config_load(const char *dir, ls_config_t *cfg);

/* The attention window of layer L (0: full causal attention). */
static inline int ls_config_window(const ls_config_t *c, int layer) {
  if (!c->window_per_layer) return c->sliding_window;
  return layer >= 0 && layer < LS_MAX_TYPED_LAYERS && c->layer_sliding[layer] ? c->sliding_window : 0;
}

/* 1 when layer L is a mixture-of-experts layer. */
static inline int ls_config_is_moe(const ls_config_t *c, int layer) {
  return c->n_experts > 0 && layer >= 0 && layer < LS_MAX_TYPED_LAYERS && c->layer_moe[layer];
}

/* RoPE inverse frequencies (rope_dim / 2 floats) of one parameter set, computed in
 * float32 the way transformers does (including linear and llama3 scaling). */
void ls_config_rope_inv_freq(const ls_rope_params_t *r, int rope_dim, float *inv_freq);
/* yarn's mscale: 0.1 mscale ln(scale) + 1 (1 for scale <= 1) */
double ls_yarn_mscale(double scale, double mscale);
/* The RoPE parameters layer L uses. */
static inline const ls_rope_params_t *ls_config_rope(const ls_config_t *c, int layer) {
  const int sliding = layer >= 0 && layer < LS_MAX_TYPED_LAYERS && c->layer_sliding[layer];
  return c->local_rope && sliding ? &c->rope_local : &c->rope;
}

#endif
