/* config.c: parse and validate a Hugging Face config.json (see config.h). */
#include "config.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "ls_common.h"

#define SUPPORTED "supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM"

/* ---- small typed getters ----------------------------------------------------- */
static const cJSON *get(const cJSON *o, const char *key) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  return (v && !cJSON_IsNull(v)) ? v : NULL;
}

/* Integer key in [lo, hi]; missing -> def (or error when required). */
static int get_int(const cJSON *o, const char *key, int required, int def, int lo, int hi,
                   const char *path, int *out) {
  const cJSON *v = get(o, key);
  if (!v) {
    if (required) {
      ls_error("%s: required key \"%s\" is missing", path, key);
      return LS_ERR;
    }
    *out = def;
    return LS_OK;
  }
  if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < lo ||
      v->valuedouble > hi) {
    ls_error("%s: \"%s\" must be an integer in [%d, %d]", path, key, lo, hi);
    return LS_ERR;
  }
  *out = (int)v->valuedouble;
  return LS_OK;
}

static int get_num(const cJSON *o, const char *key, double def, double lo, double hi,
                   const char *path, double *out) {
  const cJSON *v = get(o, key);
  if (!v) { *out = def; return LS_OK; }
  if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < lo ||
      v->valuedouble > hi) {
    ls_error("%s: \"%s\" must be a number in [%g, %g]", path, key, lo, hi);
    return LS_ERR;
  }
  *out = v->valuedouble;
  return LS_OK;
}

static int get_bool(const cJSON *o, const char *key, int def, const char *path, int *out) {
  const cJSON *v = get(o, key);
  if (!v) { *out = def; return LS_OK; }
  if (!cJSON_IsBool(v)) {
    ls_error("%s: \"%s\" must be true or false", path, key);
    return LS_ERR;
  }
  *out = cJSON_IsTrue(v);
  return LS_OK;
}

/* ---- architecture ------------------------------------------------------------ */
static int parse_arch(const cJSON *root, const char *path, ls_config_t *cfg) {
  const cJSON *archs = get(root, "architectures");
  const char *name = NULL;
  if (archs && cJSON_IsArray(archs) && cJSON_GetArraySize(archs) > 0 &&
      cJSON_IsString(cJSON_GetArrayItem(archs, 0)))
    name = cJSON_GetArrayItem(archs, 0)->valuestring;
  const cJSON *mt = get(root, "model_type");
  const char *model_type = (mt && cJSON_IsString(mt)) ? mt->valuestring : NULL;
  static const struct { const char *arch, *type; ls_arch_t id; } known[] = {
      {"LlamaForCausalLM", "llama", LS_ARCH_LLAMA},
      {"MistralForCausalLM", "mistral", LS_ARCH_MISTRAL},
      {"Qwen2ForCausalLM", "qwen2", LS_ARCH_QWEN2},
  };
  for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
    int match = name ? strcmp(name, known[i].arch) == 0
                     : (model_type && strcmp(model_type, known[i].type) == 0);
    if (match) {
      cfg->arch = known[i].id;
      snprintf(cfg->arch_name, sizeof cfg->arch_name, "%s", known[i].arch);
      return LS_OK;
    }
  }
  ls_error("%s: unsupported model architecture \"%s\" (%s)", path,
           name ? name : (model_type ? model_type : "none given"), SUPPORTED);
  return LS_ERR;
}

/* ---- rope: classic (rope_theta + rope_scaling) or transformers-5 rope_parameters -- */
static int parse_rope(const cJSON *root, const char *path, ls_config_t *cfg) {
  const cJSON *params = get(root, "rope_parameters");
  const cJSON *scaling = params ? params : get(root, "rope_scaling");
  if (scaling && !cJSON_IsObject(scaling)) {
    ls_error("%s: \"%s\" must be an object or null", path,
             params ? "rope_parameters" : "rope_scaling");
    return LS_ERR;
  }
  double theta_top;
  LS_CHECK(get_num(root, "rope_theta", 10000.0, 1e-6, 1e30, path, &theta_top));
  cfg->rope_theta = theta_top;
  if (params) LS_CHECK(get_num(params, "rope_theta", theta_top, 1e-6, 1e30, path, &cfg->rope_theta));
  cfg->rope_type = LS_ROPE_DEFAULT;
  cfg->rope_factor = 1.0;
  if (!scaling) return LS_OK;
  const cJSON *t = get(scaling, "rope_type");
  if (!t) t = get(scaling, "type");
  if (t && !cJSON_IsString(t)) {
    ls_error("%s: rope scaling \"rope_type\" must be a string", path);
    return LS_ERR;
  }
  const char *type = t ? t->valuestring : "default";
  if (strcmp(type, "default") == 0) return LS_OK;
  LS_CHECK(get_num(scaling, "factor", 1.0, 1e-6, 1e6, path, &cfg->rope_factor));
  if (strcmp(type, "linear") == 0) {
    cfg->rope_type = LS_ROPE_LINEAR;
    return LS_OK;
  }
  if (strcmp(type, "llama3") == 0) {
    cfg->rope_type = LS_ROPE_LLAMA3;
    LS_CHECK(get_num(scaling, "low_freq_factor", 1.0, 1e-6, 1e6, path, &cfg->rope_low_freq_factor));
    LS_CHECK(get_num(scaling, "high_freq_factor", 4.0, 1e-6, 1e6, path, &cfg->rope_high_freq_factor));
    LS_CHECK(get_int(scaling, "original_max_position_embeddings", 1, 0, 1, INT_MAX, path,
                     &cfg->rope_orig_max_pos));
    /* compared as the float32 values the frequencies are computed with */
    if ((float)cfg->rope_high_freq_factor <= (float)cfg->rope_low_freq_factor) {
      ls_error("%s: llama3 rope scaling needs high_freq_factor > low_freq_factor", path);
      return LS_ERR;
    }
    return LS_OK;
  }
  ls_error("%s: rope scaling type \"%s\" is not supported (supported: default, linear, llama3)",
           path, type);
  return LS_ERR;
}

/* ---- sliding window: Mistral everywhere; Qwen2 only when not in use ---------- */
static int parse_window(const cJSON *root, const char *path, ls_config_t *cfg) {
  cfg->sliding_window = 0;
  if (cfg->arch == LS_ARCH_LLAMA) return LS_OK;
  int use = 1;
  if (cfg->arch == LS_ARCH_QWEN2) LS_CHECK(get_bool(root, "use_sliding_window", 0, path, &use));
  const cJSON *types = get(root, "layer_types");
  if (types && cJSON_IsArray(types)) {
    int any_sliding = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, types) {
      if (cJSON_IsString(e) && strcmp(e->valuestring, "sliding_attention") == 0) any_sliding = 1;
      else if (!cJSON_IsString(e) || strcmp(e->valuestring, "full_attention") != 0) {
        ls_error("%s: layer_types entry must be \"full_attention\" or \"sliding_attention\"", path);
        return LS_ERR;
      }
    }
    if (cfg->arch == LS_ARCH_QWEN2) use = any_sliding;
    if (any_sliding && cJSON_GetArraySize(types) > 0) {
      cJSON_ArrayForEach(e, types) {
        if (strcmp(e->valuestring, "sliding_attention") != 0) {
          ls_error("%s: models mixing sliding and full attention layers are not supported yet",
                   path);
          return LS_ERR;
        }
      }
    }
  }
  if (!use) return LS_OK;
  return get_int(root, "sliding_window", 0, 0, 0, INT_MAX, path, &cfg->sliding_window);
}

int ls_config_parse(const char *json, const char *path, ls_config_t *cfg) {
  memset(cfg, 0, sizeof *cfg);
  cJSON *root = cJSON_ParseWithOpts(json, NULL, 1); /* no trailing garbage */
  if (!root || !cJSON_IsObject(root)) {
    ls_error("%s: not a valid JSON object; expected a Hugging Face config.json", path);
    cJSON_Delete(root);
    return LS_ERR;
  }
  int rc = LS_ERR;
  const int BIG = 1 << 24;
  if (parse_arch(root, path, cfg) != LS_OK) goto done;
  if (get_int(root, "hidden_size", 1, 0, 1, BIG, path, &cfg->hidden) ||
      get_int(root, "intermediate_size", 1, 0, 1, BIG, path, &cfg->intermediate) ||
      get_int(root, "num_hidden_layers", 1, 0, 1, 100000, path, &cfg->n_layers) ||
      get_int(root, "num_attention_heads", 1, 0, 1, 65536, path, &cfg->n_heads) ||
      get_int(root, "num_key_value_heads", 0, cfg->n_heads, 1, 65536, path, &cfg->n_kv_heads) ||
      get_int(root, "vocab_size", 1, 0, 1, 1 << 30, path, &cfg->vocab) ||
      get_int(root, "max_position_embeddings", 0, 0, 0, INT_MAX, path, &cfg->max_pos) ||
      get_num(root, "rms_norm_eps", 1e-6, 0.0, 1.0, path, &cfg->rms_eps))
    goto done;
  int def_head_dim = cfg->hidden / cfg->n_heads;
  if (get_int(root, "head_dim", 0, def_head_dim, 1, 65536, path, &cfg->head_dim)) goto done;
  if (!get(root, "head_dim") && cfg->hidden % cfg->n_heads != 0) {
    ls_error("%s: hidden_size %d is not divisible by num_attention_heads %d and no head_dim is given",
             path, cfg->hidden, cfg->n_heads);
    goto done;
  }
  if (cfg->head_dim % 2 != 0) {
    ls_error("%s: head_dim %d must be even for rotary embeddings", path, cfg->head_dim);
    goto done;
  }
  if (cfg->n_heads % cfg->n_kv_heads != 0) {
    ls_error("%s: num_attention_heads %d must be a multiple of num_key_value_heads %d", path,
             cfg->n_heads, cfg->n_kv_heads);
    goto done;
  }
  const cJSON *act = get(root, "hidden_act");
  if (act && (!cJSON_IsString(act) || strcmp(act->valuestring, "silu") != 0)) {
    ls_error("%s: hidden_act must be \"silu\" for the %s family", path, cfg->arch_name);
    goto done;
  }
  if (parse_rope(root, path, cfg) || parse_window(root, path, cfg)) goto done;
  int attn_bias = 0;
  if (cfg->arch == LS_ARCH_QWEN2) {
    cfg->qkv_bias = 1;
  } else {
    if (get_bool(root, "attention_bias", 0, path, &attn_bias)) goto done;
    cfg->qkv_bias = cfg->o_bias = attn_bias;
    if (cfg->arch == LS_ARCH_LLAMA && get_bool(root, "mlp_bias", 0, path, &cfg->mlp_bias)) goto done;
  }
  if (get_bool(root, "tie_word_embeddings", 0, path, &cfg->tie_embeddings)) goto done;
  rc = LS_OK;
done:
  cJSON_Delete(root);
  return rc;
}

int ls_config_load(const char *dir, ls_config_t *cfg) {
  struct stat st;
  if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
    ls_error("%s: not a directory; --model must be a Hugging Face model directory "
             "(config.json + safetensors)", dir);
    return LS_ERR;
  }
  char path[4200];
  snprintf(path, sizeof path, "%s/config.json", dir);
  char *text = ls_read_text_file(path, 16u << 20, NULL);
  if (!text) return LS_ERR;
  int rc = ls_config_parse(text, path, cfg);
  free(text);
  return rc;
}

/* ---- rope frequencies: float32 arithmetic in transformers' order ---------------- */
void ls_config_rope_inv_freq(const ls_config_t *cfg, float *inv_freq) {
  const int half = cfg->head_dim / 2;
  const float base = (float)cfg->rope_theta;
  for (int i = 0; i < half; i++) {
    float e = (float)(2 * i) / (float)cfg->head_dim;
    inv_freq[i] = 1.0f / powf(base, e);
  }
  if (cfg->rope_type == LS_ROPE_LINEAR) {
    for (int i = 0; i < half; i++) inv_freq[i] = inv_freq[i] / (float)cfg->rope_factor;
  } else if (cfg->rope_type == LS_ROPE_LLAMA3) {
    const float factor = (float)cfg->rope_factor, lo = (float)cfg->rope_low_freq_factor,
                hi = (float)cfg->rope_high_freq_factor;
    const double old_ctx = (double)cfg->rope_orig_max_pos;
    const double low_wavelen = old_ctx / cfg->rope_low_freq_factor;
    const double high_wavelen = old_ctx / cfg->rope_high_freq_factor;
    for (int i = 0; i < half; i++) {
      float f = inv_freq[i];
      float wavelen = (float)(2.0 * M_PI) / f;
      float scaled = wavelen > (float)low_wavelen ? f / factor : f;
      float smooth = ((float)old_ctx / wavelen - lo) / (hi - lo);
      float smoothed = (1.0f - smooth) * scaled / factor + smooth * scaled;
      int medium = !(wavelen < (float)high_wavelen) && !(wavelen > (float)low_wavelen);
      inv_freq[i] = medium ? smoothed : scaled;
    }
  }
}

double ls_config_gemm_flops_per_token(const ls_config_t *c) {
  double q = (double)c->n_heads * c->head_dim, kv = (double)c->n_kv_heads * c->head_dim;
  double macs = c->hidden * (q + 2 * kv) + q * c->hidden + 3.0 * c->hidden * c->intermediate;
  return 2.0 * macs;
}
