/* make_model.c: `layersweep make-model`: write a random Llama / Mistral / Qwen2 / Mixtral
 * family model as a real Hugging Face directory (config.json + safetensors, single
 * file or sharded with model.safetensors.index.json). Used by the demo, the tests
 * and the benchmarks; transformers loads these directories as they are. */
#include "make_model.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "family.h"
#include "ls_common.h"
#include "safetensors.h"

void ls_make_model_default(ls_make_model_opts_t *o) {
  memset(o, 0, sizeof *o);
  o->arch = "llama";
  o->hidden = 256;
  o->intermediate = 688;
  o->n_layers = 4;
  o->n_heads = 8;
  o->n_kv_heads = 4;
  o->head_dim = 0;
  o->vocab = 1024;
  o->max_pos = 4096;
  o->dtype = "bf16";
  o->shards = 1;
  o->seed = 1234;
  o->rope_theta = 10000.0;
  o->init_std = 0.02;
  o->n_experts = 8;
  o->top_k = 2;
}

/* ---- deterministic normal samples (splitmix64 + Box-Muller) ---------------------------- */
static uint64_t splitmix(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static void fill_normal(float *v, size_t n, float mean, float std, uint64_t *state) {
  for (size_t i = 0; i < n; i += 2) {
    double u1 = ((splitmix(state) >> 11) + 1.0) / 9007199254740993.0;
    double u2 = (splitmix(state) >> 11) / 9007199254740992.0;
    double r = sqrt(-2.0 * log(u1));
    v[i] = mean + std * (float)(r * cos(2 * M_PI * u2));
    if (i + 1 < n) v[i + 1] = mean + std * (float)(r * sin(2 * M_PI * u2));
  }
}

/* ---- config.json ---------------------------------------------------------------------- */
static int write_config(const ls_make_model_opts_t *o, const char *arch_name, const char *type,
                        const char *torch_dtype, int head_dim) {
  cJSON *c = cJSON_CreateObject();
  cJSON *archs = cJSON_AddArrayToObject(c, "architectures");
  cJSON_AddItemToArray(archs, cJSON_CreateString(arch_name));
  cJSON_AddStringToObject(c, "model_type", type);
  cJSON_AddNumberToObject(c, "hidden_size", o->hidden);
  cJSON_AddNumberToObject(c, "intermediate_size", o->intermediate);
  cJSON_AddNumberToObject(c, "num_hidden_layers", o->n_layers);
  cJSON_AddNumberToObject(c, "num_attention_heads", o->n_heads);
  cJSON_AddNumberToObject(c, "num_key_value_heads", o->n_kv_heads);
  cJSON_AddNumberToObject(c, "head_dim", head_dim);
  cJSON_AddNumberToObject(c, "vocab_size", o->vocab);
  cJSON_AddNumberToObject(c, "max_position_embeddings", o->max_pos);
  cJSON_AddNumberToObject(c, "rms_norm_eps", 1e-5);
  cJSON_AddNumberToObject(c, "rope_theta", o->rope_theta);
  cJSON_AddStringToObject(c, "hidden_act", "silu");
  cJSON_AddNumberToObject(c, "initializer_range", o->init_std);
  cJSON_AddBoolToObject(c, "tie_word_embeddings", o->tie_embeddings);
  cJSON_AddStringToObject(c, "torch_dtype", torch_dtype);
  if (strcmp(type, "llama") == 0) {
    cJSON_AddBoolToObject(c, "attention_bias", 0);
    cJSON_AddBoolToObject(c, "mlp_bias", 0);
  }
  if (strcmp(type, "mistral") == 0) {
    if (o->sliding_window > 0) cJSON_AddNumberToObject(c, "sliding_window", o->sliding_window);
    else cJSON_AddNullToObject(c, "sliding_window");
  }
  if (strcmp(type, "qwen2") == 0) cJSON_AddBoolToObject(c, "use_sliding_window", 0);
  if (strcmp(type, "mixtral") == 0) {
    cJSON_AddNumberToObject(c, "num_local_experts", o->n_experts);
    cJSON_AddNumberToObject(c, "num_experts_per_tok", o->top_k);
  }
  char *text = cJSON_Print(c);
  cJSON_Delete(c);
  char path[4200];
  snprintf(path, sizeof path, "%s/config.json", o->out_dir);
  FILE *f = fopen(path, "w");
  int rc = LS_ERR;
  if (!f) ls_error("%s: cannot create: %s", path, strerror(errno));
  else if (fputs(text, f) < 0 || fputc('\n', f) < 0 || fclose(f) != 0)
    ls_error("%s: write failed: %s", path, strerror(errno));
  else rc = LS_OK;
  free(text);
  return rc;
}

/* ---- tensors ---------------------------------------------------------------------------- */
typedef struct {
  char name[LS_ST_MAX_NAME];
  int ndim;
  int64_t shape[2];
  int is_norm; /* RMSNorm weight: around 1.0 */
  int shard;
} mm_tensor_t;

/* Every tensor of the model in the family's table order (embedding, each layer's
 * tensors, final norm), plus lm_head unless tied. */
static int list_tensors(const ls_config_t *c, int tie, mm_tensor_t **out, int *n) {
  const ls_family_t *fam = ls_family_get(c->family);
  const int n_slots = ls_family_slots(fam, c);
  int cap = 1 + LS_G_COUNT + c->n_layers * n_slots;
  mm_tensor_t *t = ls_calloc((size_t)cap, sizeof *t, "tensor list");
  ls_wspec_t *w = ls_calloc((size_t)n_slots, sizeof *w, "tensor list");
  ls_wspec_t g[LS_G_COUNT];
  if (!t || !w) { free(t); free(w); return LS_ERR; }
  memset(g, 0, sizeof g);
  fam->global_tensors(c, g);
  int k = 0;
  for (int L = -1; L <= c->n_layers; L++) {
    const ls_wspec_t *specs = w;
    int count = n_slots;
    if (L < 0 || L == c->n_layers) { /* embeddings first, final norm last */
      specs = L < 0 ? &g[LS_G_EMBED] : &g[LS_G_FINAL_NORM]; /* and the one after each */
      count = 2;
    } else {
      fam->layer_tensors(c, L, w);
    }
    for (int i = 0; i < count; i++) {
      /* the slots of one fused tensor are consecutive: it is written once */
      if (!specs[i].present || (k > 0 && strcmp(t[k - 1].name, specs[i].name) == 0)) continue;
      snprintf(t[k].name, sizeof t[k].name, "%s", specs[i].name);
      t[k].ndim = specs[i].ndim;
      t[k].shape[0] = specs[i].shape[0];
      t[k].shape[1] = specs[i].shape[1];
      t[k].is_norm = specs[i].kind == LS_WK_NORM;
      k++;
    }
  }
  if (!tie) {
    snprintf(t[k].name, sizeof t[k].name, "lm_head.weight");
    t[k].ndim = 2; t[k].shape[0] = c->vocab; t[k].shape[1] = c->hidden; k++;
  }
  free(w);
  *out = t;
  *n = k;
  return LS_OK;
}

static int64_t numel(const mm_tensor_t *t) {
  return t->ndim == 1 ? t->shape[0] : t->shape[0] * t->shape[1];
}

static int write_shard(const ls_make_model_opts_t *o, const char *fname, mm_tensor_t *t, int n,
                       int shard, ls_dtype_t dt, uint64_t *state) {
  char path[4400];
  snprintf(path, sizeof path, "%s/%s", o->out_dir, fname);
  ls_st_wtensor_t *wt = ls_calloc((size_t)n, sizeof *wt, "tensor list");
  int *idx = ls_calloc((size_t)n, sizeof *idx, "tensor list");
  if (!wt || !idx) { free(wt); free(idx); return LS_ERR; }
  int m = 0;
  for (int i = 0; i < n; i++) {
    if (t[i].shard != shard) continue;
    wt[m].name = t[i].name;
    wt[m].dtype = dt;
    wt[m].ndim = t[i].ndim;
    wt[m].shape[0] = t[i].shape[0];
    wt[m].shape[1] = t[i].shape[1];
    idx[m++] = i;
  }
  ls_st_writer_t w;
  int rc = ls_st_writer_open(&w, path, wt, m, "pt");
  const size_t chunk = (size_t)1 << 22;
  float *f32 = rc ? NULL : ls_malloc(chunk * sizeof(float), "make-model buffer");
  char *raw = rc ? NULL : ls_malloc(chunk * sizeof(float), "make-model buffer");
  if (!rc && (!f32 || !raw)) rc = LS_ERR;
  for (int j = 0; j < m && rc == LS_OK; j++) {
    const mm_tensor_t *tt = &t[idx[j]];
    int64_t ne = numel(tt);
    for (int64_t off = 0; off < ne && rc == LS_OK; off += (int64_t)chunk) {
      size_t len = (size_t)(ne - off) < chunk ? (size_t)(ne - off) : chunk;
      fill_normal(f32, len, tt->is_norm ? 1.0f : 0.0f,
                  tt->is_norm ? 0.1f : (float)o->init_std, state);
      ls_convert_from_f32(raw, f32, dt, len);
      rc = ls_st_writer_put(&w, j, (uint64_t)off * ls_dtype_size(dt), raw, len * ls_dtype_size(dt));
    }
  }
  if (ls_st_writer_close(&w) && rc == LS_OK) rc = LS_ERR;
  free(f32); free(raw); free(wt); free(idx);
  return rc;
}

int ls_make_model(const ls_make_model_opts_t *o) {
  static const struct { const char *key, *arch, *type; } archs[] = {
      {"llama", "LlamaForCausalLM", "llama"},
      {"mistral", "MistralForCausalLM", "mistral"},
      {"qwen2", "Qwen2ForCausalLM", "qwen2"},
      {"mixtral", "MixtralForCausalLM", "mixtral"}};
  int a = -1;
  for (int i = 0; i < 4; i++)
    if (strcmp(o->arch, archs[i].key) == 0) a = i;
  if (a < 0) {
    ls_error("make-model: --arch must be llama, mistral, qwen2 or mixtral (got \"%s\")", o->arch);
    return LS_ERR;
  }
  if (a == 3 && (o->top_k < 1 || o->top_k > o->n_experts)) {
    ls_error("make-model: --top-k %d must be between 1 and --experts %d", o->top_k, o->n_experts);
    return LS_ERR;
  }
  ls_dtype_t dt;
  const char *torch_dtype;
  if (strcmp(o->dtype, "bf16") == 0) { dt = LS_DT_BF16; torch_dtype = "bfloat16"; }
  else if (strcmp(o->dtype, "f16") == 0) { dt = LS_DT_F16; torch_dtype = "float16"; }
  else if (strcmp(o->dtype, "f32") == 0) { dt = LS_DT_F32; torch_dtype = "float32"; }
  else {
    ls_error("make-model: --dtype must be bf16, f16 or f32 (got \"%s\")", o->dtype);
    return LS_ERR;
  }
  if (o->hidden < 1 || o->intermediate < 1 || o->n_layers < 1 || o->n_heads < 1 ||
      o->n_kv_heads < 1 || o->vocab < 1 || o->n_heads % o->n_kv_heads || o->shards < 1 ||
      o->shards > 99999) {
    ls_error("make-model: sizes must be positive, --heads a multiple of --kv-heads, and "
             "1 <= --shards <= 99999");
    return LS_ERR;
  }
  int head_dim = o->head_dim > 0 ? o->head_dim : o->hidden / o->n_heads;
  if (head_dim < 2 || head_dim % 2) {
    ls_error("make-model: head dim %d must be even (set --head-dim)", head_dim);
    return LS_ERR;
  }
  if (!o->out_dir || !*o->out_dir) {
    ls_error("make-model: --out DIR is required");
    return LS_ERR;
  }
  struct stat st;
  if (stat(o->out_dir, &st) == 0) {
    char p[4200];
    snprintf(p, sizeof p, "%s/config.json", o->out_dir);
    if (!o->force && access(p, F_OK) == 0) {
      ls_error("make-model: %s already holds a model; pass --force to overwrite it", o->out_dir);
      return LS_ERR;
    }
  } else if (mkdir(o->out_dir, 0777) != 0) {
    ls_error("make-model: cannot create %s: %s", o->out_dir, strerror(errno));
    return LS_ERR;
  }
  /* the config first: its own reader (the family's) gives the tensors to write */
  int rc = write_config(o, archs[a].arch, archs[a].type, torch_dtype, head_dim);
  ls_config_t c;
  if (rc || ls_config_load(o->out_dir, &c)) return LS_ERR;
  mm_tensor_t *t;
  int n;
  if (list_tensors(&c, o->tie_embeddings, &t, &n)) return LS_ERR;
  /* shards: contiguous runs of tensors of about equal bytes */
  uint64_t total = 0, acc = 0;
  for (int i = 0; i < n; i++) total += (uint64_t)numel(&t[i]) * ls_dtype_size(dt);
  for (int i = 0; i < n; i++) {
    t[i].shard = (int)((double)acc / (double)total * o->shards);
    if (t[i].shard >= o->shards) t[i].shard = o->shards - 1;
    acc += (uint64_t)numel(&t[i]) * ls_dtype_size(dt);
  }
  uint64_t state = o->seed;
  char (*names)[64] = ls_calloc((size_t)o->shards, 64, "shard names");
  if (!names) rc = LS_ERR;
  for (int sh = 0; sh < o->shards && rc == LS_OK; sh++) {
    if (o->shards == 1) snprintf(names[sh], 64, "model.safetensors");
    else snprintf(names[sh], 64, "model-%05d-of-%05d.safetensors", sh + 1, o->shards);
    rc = write_shard(o, names[sh], t, n, sh, dt, &state);
  }
  if (rc == LS_OK && o->shards > 1) {
    cJSON *idx = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(idx, "metadata");
    cJSON_AddNumberToObject(meta, "total_size", (double)total);
    cJSON *map = cJSON_AddObjectToObject(idx, "weight_map");
    for (int i = 0; i < n; i++) cJSON_AddStringToObject(map, t[i].name, names[t[i].shard]);
    char *text = cJSON_Print(idx);
    cJSON_Delete(idx);
    char path[4400];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", o->out_dir);
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
      ls_error("%s: write failed: %s", path, strerror(errno));
      rc = LS_ERR;
    }
    free(text);
  }
  if (rc == LS_OK)
    ls_info("make-model: wrote %s (%s, hidden %d, %d layers, %d heads / %d kv, vocab %d, %s, "
            "%.1f MiB in %d shard%s)", o->out_dir, archs[a].arch, o->hidden, o->n_layers,
            o->n_heads, o->n_kv_heads, o->vocab, o->dtype, (double)total / 1048576.0, o->shards,
            o->shards > 1 ? "s" : "");
  free(names);
  free(t);
  return rc;
}

/* ---- random JSONL datasets --------------------------------------------------------------- */
void ls_make_data_default(ls_make_data_opts_t *o) {
  memset(o, 0, sizeof *o);
  o->n = 256;
  o->min_len = 16;
  o->max_len = 128;
  o->vocab = 1024;
  o->seed = 1;
  o->labels = 1;
}

int ls_make_data(const ls_make_data_opts_t *o) {
  if (!o->out_path || o->n < 1 || o->min_len < 1 || o->max_len < o->min_len || o->vocab < 1) {
    ls_error("make-data: need --out FILE, --n >= 1, 1 <= --min-len <= --max-len, --vocab >= 1");
    return LS_ERR;
  }
  if (!o->force && access(o->out_path, F_OK) == 0) {
    ls_error("make-data: %s exists; pass --force to overwrite it", o->out_path);
    return LS_ERR;
  }
  FILE *f = fopen(o->out_path, "w");
  if (!f) {
    ls_error("make-data: cannot create %s: %s", o->out_path, strerror(errno));
    return LS_ERR;
  }
  uint64_t s = o->seed;
  for (int64_t i = 0; i < o->n; i++) {
    int len = o->min_len + (int)(splitmix(&s) % (uint64_t)(o->max_len - o->min_len + 1));
    fputs("{\"input_ids\": [", f);
    for (int j = 0; j < len; j++)
      fprintf(f, "%s%d", j ? ", " : "", (int)(splitmix(&s) % (uint64_t)o->vocab));
    fputc(']', f);
    if (o->labels) fprintf(f, ", \"label\": %d", (int)(splitmix(&s) % 2));
    fprintf(f, ", \"id\": \"s%lld\"}\n", (long long)i);
  }
  if (ferror(f) | (fclose(f) != 0)) {
    ls_error("make-data: write to %s failed: %s", o->out_path, strerror(errno));
    return LS_ERR;
  }
  ls_info("make-data: wrote %lld prompts of %d..%d tokens to %s", (long long)o->n, o->min_len,
          o->max_len, o->out_path);
  return LS_OK;
}
