/* config.c: config.json reading (see config.h): the family lookup, and the helpers
 * every family's reader uses (typed getters, the common sizes, RoPE; models/family.h). */
#include "config.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "family.h"
#include "ls_common.h"
#include "ls_json.h"

/* ---- small typed getters ----------------------------------------------------- */
const cJSON *ls_cfg_get(const cJSON *o, const char *key) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  return (v && !cJSON_IsNull(v)) ? v : NULL;
}

/* Integer key in [lo, hi]; missing -> def (or error when required). */
int ls_cfg_int(const cJSON *o, const char *key, int required, int def, int lo, int hi,
                   const char *path, int *out) {
  const cJSON *v = ls_cfg_get(o, key);
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

int ls_cfg_num(const cJSON *o, const char *key, double def, double lo, double hi,
                   const char *path, double *out) {
  const cJSON *v = ls_cfg_get(o, key);
  if (!v) { *out = def; return LS_OK; }
  if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < lo ||
      v->valuedouble > hi) {
    ls_error("%s: \"%s\" must be a number in [%g, %g]", path, key, lo, hi);
    return LS_ERR;
  }
  *out = v->valuedouble;
  return LS_OK;
}

int ls_cfg_bool(const cJSON *o, const char *key, int def, const char *path, int *out) {
  const cJSON *v = ls_cfg_get(o, key);
  if (!v) { *out = def; return LS_OK; }
  if (!cJSON_IsBool(v)) {
    ls_error("%s: \"%s\" must be true or false", path, key);
    return LS_ERR;
  }
  *out = cJSON_IsTrue(v);
  return LS_OK;
}

/* ---- rope: classic (rope_theta + rope_scaling) or transformers-5 rope_parameters -- */
int ls_cfg_rope_params(const cJSON *scaling, double theta, const char *path, const char *what,
                       ls_rope_params_t *r) {
  memset(r, 0, sizeof *r);
  r->theta = theta;
  r->type = LS_ROPE_DEFAULT;
  r->factor = 1.0;
  r->attn_factor = 1.0;
  if (!scaling) return LS_OK;
  if (!cJSON_IsObject(scaling)) {
    ls_error("%s: \"%s\" must be an object or null", path, what);
    return LS_ERR;
  }
  LS_CHECK(ls_cfg_num(scaling, "rope_theta", theta, 1e-6, 1e30, path, &r->theta));
  const cJSON *t = ls_cfg_get(scaling, "rope_type");
  if (!t) t = ls_cfg_get(scaling, "type");
  if (t && !cJSON_IsString(t)) {
    ls_error("%s: %s \"rope_type\" must be a string", path, what);
    return LS_ERR;
  }
  const char *type = t ? t->valuestring : "default";
  if (strcmp(type, "default") == 0) return LS_OK;
  LS_CHECK(ls_cfg_num(scaling, "factor", 1.0, 1e-6, 1e6, path, &r->factor));
  if (strcmp(type, "linear") == 0) {
    r->type = LS_ROPE_LINEAR;
    return LS_OK;
  }
  if (strcmp(type, "llama3") == 0) {
    r->type = LS_ROPE_LLAMA3;
    LS_CHECK(ls_cfg_num(scaling, "low_freq_factor", 1.0, 1e-6, 1e6, path, &r->low_freq_factor));
    LS_CHECK(ls_cfg_num(scaling, "high_freq_factor", 4.0, 1e-6, 1e6, path, &r->high_freq_factor));
    LS_CHECK(ls_cfg_int(scaling, "original_max_position_embeddings", 1, 0, 1, INT_MAX, path,
                     &r->orig_max_pos));
    /* compared as the float32 values the frequencies are computed with */
    if ((float)r->high_freq_factor <= (float)r->low_freq_factor) {
      ls_error("%s: llama3 rope scaling needs high_freq_factor > low_freq_factor", path);
      return LS_ERR;
    }
    return LS_OK;
  }
  if (strcmp(type, "yarn") == 0) { /* transformers' _compute_yarn_parameters */
    r->type = LS_ROPE_YARN;
    LS_CHECK(ls_cfg_int(scaling, "original_max_position_embeddings", 1, 0, 1, INT_MAX, path,
                        &r->orig_max_pos));
    LS_CHECK(ls_cfg_num(scaling, "beta_fast", 32.0, 1e-9, 1e9, path, &r->beta_fast));
    LS_CHECK(ls_cfg_num(scaling, "beta_slow", 1.0, 1e-9, 1e9, path, &r->beta_slow));
    LS_CHECK(ls_cfg_bool(scaling, "truncate", 1, path, &r->truncate));
    double mscale = 0, all = 0, af = 0;
    LS_CHECK(ls_cfg_num(scaling, "mscale", 0, 0, 1e9, path, &mscale));
    LS_CHECK(ls_cfg_num(scaling, "mscale_all_dim", 0, 0, 1e9, path, &all));
    LS_CHECK(ls_cfg_num(scaling, "attention_factor", 0, 0, 1e9, path, &af));
    r->mscale_all_dim = all;
    if (af > 0) r->attn_factor = af;
    else if (mscale > 0 && all > 0)
      r->attn_factor = ls_yarn_mscale(r->factor, mscale) / ls_yarn_mscale(r->factor, all);
    else r->attn_factor = ls_yarn_mscale(r->factor, 1.0);
    return LS_OK;
  }
  char shown[64];
  ls_printable(shown, sizeof shown, type);
  ls_error("%s: %s type \"%s\" is not supported (supported: default, linear, llama3, yarn)", path,
           what, shown);
  return LS_ERR;
}

double ls_yarn_mscale(double scale, double mscale) {
  return scale <= 1 ? 1.0 : 0.1 * mscale * log(scale) + 1.0;
}

int ls_cfg_rope_dim(const cJSON *root, const char *path, double def_factor, int allow_partial,
                    ls_config_t *cfg) {
  const cJSON *params = ls_cfg_get(root, "rope_parameters");
  const cJSON *holder = params && ls_cfg_get(params, "partial_rotary_factor") ? params : root;
  double f = def_factor;
  LS_CHECK(ls_cfg_num(holder, "partial_rotary_factor", def_factor, 1e-9, 1.0, path, &f));
  cfg->rope_dim = (int)(cfg->head_dim * f); /* int(), as transformers */
  if (cfg->rope_dim != cfg->head_dim && !allow_partial) {
    ls_error("%s: partial_rotary_factor %g is not used by %s in transformers (its attention "
             "rotates whole heads); remove it", path, f, cfg->arch_name);
    return LS_ERR;
  }
  if (cfg->rope_dim < 2 || cfg->rope_dim % 2 != 0) {
    ls_error("%s: partial_rotary_factor %g gives %d rotary dims of head_dim %d; it must give an "
             "even number >= 2", path, f, cfg->rope_dim, cfg->head_dim);
    return LS_ERR;
  }
  return LS_OK;
}

static int rope_common(const cJSON *root, const char *path, double theta_def, int partial,
                       double def_factor, ls_config_t *cfg) {
  const cJSON *params = ls_cfg_get(root, "rope_parameters");
  double theta;
  LS_CHECK(ls_cfg_num(root, "rope_theta", theta_def, 1e-6, 1e30, path, &theta));
  cfg->local_rope = 0;
  LS_CHECK(ls_cfg_rope_params(params ? params : ls_cfg_get(root, "rope_scaling"), theta, path,
                              params ? "rope_parameters" : "rope_scaling", &cfg->rope));
  return ls_cfg_rope_dim(root, path, def_factor, partial, cfg);
}

int ls_cfg_rope(const cJSON *root, const char *path, ls_config_t *cfg) {
  return rope_common(root, path, 10000.0, 0, 1.0, cfg);
}

int ls_cfg_rope_partial(const cJSON *root, const char *path, double theta, double def_factor,
                        ls_config_t *cfg) {
  return rope_common(root, path, theta, 1, def_factor, cfg);
}

/* ---- sizes every decoder has ---------------------------------------------- */
int ls_cfg_common_sizes(const cJSON *root, const char *path, ls_config_t *cfg) {
  return ls_cfg_sizes(root, path, 0, cfg);
}

int ls_cfg_sizes(const cJSON *root, const char *path, int default_head_dim, ls_config_t *cfg) {
  const int BIG = 1 << 24;
  if (ls_cfg_int(root, "hidden_size", 1, 0, 1, BIG, path, &cfg->hidden) ||
      ls_cfg_int(root, "intermediate_size", 1, 0, 1, BIG, path, &cfg->intermediate) ||
      ls_cfg_int(root, "num_hidden_layers", 1, 0, 1, 100000, path, &cfg->n_layers) ||
      ls_cfg_int(root, "num_attention_heads", 1, 0, 1, 65536, path, &cfg->n_heads) ||
      ls_cfg_int(root, "num_key_value_heads", 0, cfg->n_heads, 1, 65536, path, &cfg->n_kv_heads) ||
      ls_cfg_int(root, "vocab_size", 1, 0, 1, 1 << 30, path, &cfg->vocab) ||
      ls_cfg_int(root, "max_position_embeddings", 0, 0, 0, INT_MAX, path, &cfg->max_pos) ||
      ls_cfg_num(root, "rms_norm_eps", 1e-6, 0.0, 1.0, path, &cfg->rms_eps))
    return LS_ERR;
  int def_head_dim = default_head_dim > 0 ? default_head_dim : cfg->hidden / cfg->n_heads;
  LS_CHECK(ls_cfg_int(root, "head_dim", 0, def_head_dim, 1, 65536, path, &cfg->head_dim));
  if (!ls_cfg_get(root, "head_dim") && default_head_dim <= 0 && cfg->hidden % cfg->n_heads != 0) {
    ls_error("%s: hidden_size %d is not divisible by num_attention_heads %d and no head_dim is given",
             path, cfg->hidden, cfg->n_heads);
    return LS_ERR;
  }
  if (cfg->head_dim % 2 != 0) {
    ls_error("%s: head_dim %d must be even for rotary embeddings", path, cfg->head_dim);
    return LS_ERR;
  }
  if (cfg->n_heads % cfg->n_kv_heads != 0) {
    ls_error("%s: num_attention_heads %d must be a multiple of num_key_value_heads %d", path,
             cfg->n_heads, cfg->n_kv_heads);
    return LS_ERR;
  }
  return LS_OK;
}

int ls_cfg_layer_types(const cJSON *root, const char *path, int first_sliding, int period,
                       ls_config_t *cfg) {
  const cJSON *types = ls_cfg_get(root, "layer_types");
  cfg->window_per_layer = 1;
  memset(cfg->layer_sliding, 0, sizeof cfg->layer_sliding);
  if (types && (!cJSON_IsArray(types) || cJSON_GetArraySize(types) != cfg->n_layers)) {
    ls_error("%s: \"layer_types\" must be a list of %d entries (one per layer)", path, cfg->n_layers);
    return LS_ERR;
  }
  int any = 0;
  if (cfg->n_layers > LS_MAX_TYPED_LAYERS && (types || cfg->sliding_window > 0)) {
    ls_error("%s: %d layers of differing attention kinds; layersweep handles at most %d", path,
             cfg->n_layers, LS_MAX_TYPED_LAYERS);
    return LS_ERR;
  }
  for (int L = 0; L < cfg->n_layers && L < LS_MAX_TYPED_LAYERS; L++) {
    /* Qwen's rule asks for a window; Gemma's pattern stands without one (and transformers
     * then refuses the config, as below) */
    int sliding = L >= first_sliding &&
                  (period > 0 ? (L + 1) % period != 0 : cfg->sliding_window > 0);
    if (types) {
      const cJSON *e = cJSON_GetArrayItem(types, L);
      if (cJSON_IsString(e) && strcmp(e->valuestring, "sliding_attention") == 0) sliding = 1;
      else if (cJSON_IsString(e) && strcmp(e->valuestring, "full_attention") == 0) sliding = 0;
      else {
        ls_error("%s: layer_types[%d] must be \"full_attention\" or \"sliding_attention\"", path, L);
        return LS_ERR;
      }
    }
    cfg->layer_sliding[L] = (unsigned char)sliding;
    any |= sliding;
  }
  if (any && cfg->sliding_window <= 0) { /* transformers raises on this too */
    ls_error("%s: layer_types has sliding_attention layers but no sliding_window is in effect "
             "(sliding_window null, or use_sliding_window false)", path);
    return LS_ERR;
  }
  return LS_OK;
}

int ls_cfg_activation(const cJSON *root, const char *path, const char *key,
                      const char *const *allowed, const ls_config_t *cfg) {
  const cJSON *act = ls_cfg_get(root, key);
  if (!act) return LS_OK; /* the family's default */
  for (int i = 0; cJSON_IsString(act) && allowed[i]; i++)
    if (strcmp(act->valuestring, allowed[i]) == 0) return LS_OK;
  char list[256] = "";
  for (int i = 0; allowed[i]; i++)
    snprintf(list + strlen(list), sizeof list - strlen(list), "%s\"%s\"", i ? " or " : "",
             allowed[i]);
  ls_error("%s: %s must be %s for the %s family", path, key, list, cfg->arch_name);
  return LS_ERR;
}

int ls_cfg_gelu(const cJSON *root, const char *path, const char *key, const char *def,
                ls_config_t *cfg) {
  static const char *const names[] = {"gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", NULL};
  const cJSON *a = ls_cfg_get(root, key);
  const char *v = a && cJSON_IsString(a) ? a->valuestring : (a ? "" : def);
  for (int i = 0; names[i]; i++)
    if (strcmp(v, names[i]) == 0) {
      cfg->gelu_tanh = i > 0;
      return LS_OK;
    }
  char shown[40];
  ls_printable(shown, sizeof shown, v);
  ls_error("%s: %s \"%s\" is not supported by %s (supported: gelu, gelu_new, "
           "gelu_pytorch_tanh, gelu_fast)", path, key, shown, cfg->arch_name);
  return LS_ERR;
}

/* ---- the family: "architectures"[0], else "model_type" ----------------------- */
static int find_family(const cJSON *root, const char *path, ls_config_t *cfg) {
  const cJSON *archs = ls_cfg_get(root, "architectures");
  const char *name = NULL;
  if (archs && cJSON_IsArray(archs) && cJSON_GetArraySize(archs) > 0 &&
      cJSON_IsString(cJSON_GetArrayItem(archs, 0)))
    name = cJSON_GetArrayItem(archs, 0)->valuestring;
  const cJSON *mt = ls_cfg_get(root, "model_type");
  const char *model_type = (mt && cJSON_IsString(mt)) ? mt->valuestring : NULL;
  int f = ls_family_find(name, model_type);
  if (f < 0) {
    char shown[80];
    ls_printable(shown, sizeof shown, name ? name : (model_type ? model_type : "none given"));
    ls_error("%s: unsupported model architecture \"%s\" (supported: %s)", path, shown,
             ls_family_supported());
    return LS_ERR;
  }
  const ls_family_t *fam = ls_family_get(f);
  cfg->family = f;
  /* transformers' AutoModel builds the class of model_type, not of architectures: a
   * config whose two disagree is read differently by different tools */
  if (name && model_type) {
    int t = ls_family_find(NULL, model_type), ok = 1;
    for (int i = 0; fam->archs[i]; i++)
      if (strcmp(name, fam->archs[i]) == 0) ok = strcmp(model_type, fam->model_types[i]) == 0;
    if (t >= 0 && !ok) {
      char shown[80];
      ls_printable(shown, sizeof shown, model_type);
      ls_error("%s: architectures says %s but model_type is \"%s\"; transformers builds the "
               "model_type's class: make the two agree", path, name, shown);
      return LS_ERR;
    }
  }
  /* the canonical names of the family's entry that matched */
  for (int i = 0; fam->archs[i]; i++)
    if (name ? strcmp(name, fam->archs[i]) == 0 : strcmp(model_type, fam->model_types[i]) == 0) {
      snprintf(cfg->arch_name, sizeof cfg->arch_name, "%s", fam->archs[i]);
      snprintf(cfg->model_type, sizeof cfg->model_type, "%s", fam->model_types[i]);
    }
  return LS_OK;
}

/* quantization_config: block-quantized FP8 (DeepSeek-V3 / Qwen3-FP8 layout) is read;
 * every other method is refused by name: computing on packed integer weights as if they
 * were floats would write garbage that looks like activations. */
static int parse_quantization(const cJSON *root, const char *path, ls_config_t *cfg) {
  const cJSON *q = ls_cfg_get(root, "quantization_config");
  if (!q) return LS_OK;
  const cJSON *m = cJSON_IsObject(q) ? ls_cfg_get(q, "quant_method") : NULL;
  if (!cJSON_IsString(m)) {
    ls_error("%s: quantization_config must be an object with a string \"quant_method\"", path);
    return LS_ERR;
  }
  char shown[64];
  ls_printable(shown, sizeof shown, m->valuestring);
  if (strcmp(m->valuestring, "fp8") != 0) {
    ls_error("%s: quantization_config quant_method \"%s\" is not supported (layersweep reads "
             "float checkpoints and block-quantized \"fp8\"); use the unquantized checkpoint",
             path, shown);
    return LS_ERR;
  }
  const cJSON *fmt = ls_cfg_get(q, "fmt");
  cfg->fp8 = 1;
  cfg->fp8_dtype = LS_DT_F8_E4M3;
  if (fmt && (!cJSON_IsString(fmt) || (strcmp(fmt->valuestring, "e4m3") != 0 &&
                                       strcmp(fmt->valuestring, "e5m2") != 0))) {
    ls_error("%s: quantization_config fmt must be \"e4m3\" or \"e5m2\"", path);
    return LS_ERR;
  }
  if (fmt && strcmp(fmt->valuestring, "e5m2") == 0) cfg->fp8_dtype = LS_DT_F8_E5M2;
  const cJSON *bs = ls_cfg_get(q, "weight_block_size");
  if (!bs || !cJSON_IsArray(bs) || cJSON_GetArraySize(bs) != 2) {
    ls_error("%s: quantization_config weight_block_size must be [rows, columns] (per-tensor "
             "FP8 scales are not supported)", path);
    return LS_ERR;
  }
  for (int i = 0; i < 2; i++) {
    const cJSON *v = cJSON_GetArrayItem(bs, i);
    if (!cJSON_IsNumber(v) || v->valuedouble < 1 || v->valuedouble > 1 << 20 ||
        v->valuedouble != (double)(int)v->valuedouble) {
      ls_error("%s: quantization_config weight_block_size[%d] must be an integer in 1..2^20",
               path, i);
      return LS_ERR;
    }
    cfg->fp8_block[i] = v->valueint;
  }
  return LS_OK;
}

int ls_config_parse(const char *json, const char *path, ls_config_t *cfg) {
  memset(cfg, 0, sizeof *cfg);
  cJSON *root = cJSON_ParseWithOpts(json, NULL, 1); /* no trailing garbage */
  if (!root || !cJSON_IsObject(root)) {
    ls_error("%s: not a valid JSON object; expected a Hugging Face config.json", path);
    cJSON_Delete(root);
    return LS_ERR;
  }
  const char *dup = ls_json_duplicate_key(root);
  if (dup) {
    char shown[80];
    ls_printable(shown, sizeof shown, dup);
    ls_error("%s: key \"%s\" is given twice in one object; transformers would take the last "
             "value, layersweep refuses to guess: keep one", path, shown);
    cJSON_Delete(root);
    return LS_ERR;
  }
  int rc = find_family(root, path, cfg);
  if (rc == LS_OK) rc = ls_family_get(cfg->family)->parse_config(root, path, cfg);
  if (rc == LS_OK) rc = parse_quantization(root, path, cfg);
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
  char *text = ls_read_text_file(path, LS_CONFIG_MAX_BYTES, NULL);
  if (!text) return LS_ERR;
  int rc = ls_config_parse(text, path, cfg);
  free(text);
  return rc;
}

/* ---- rope frequencies: float32 arithmetic in transformers' order ---------------- */
void ls_config_rope_inv_freq(const ls_rope_params_t *r, int rope_dim, float *inv_freq) {
  const int half = rope_dim / 2;
  const float base = (float)r->theta;
  for (int i = 0; i < half; i++) {
    float e = (float)(2 * i) / (float)rope_dim;
    inv_freq[i] = 1.0f / powf(base, e);
  }
  if (r->type == LS_ROPE_LINEAR) {
    for (int i = 0; i < half; i++) inv_freq[i] = inv_freq[i] / (float)r->factor;
  } else if (r->type == LS_ROPE_LLAMA3) {
    const float factor = (float)r->factor, lo = (float)r->low_freq_factor,
                hi = (float)r->high_freq_factor;
    const double old_ctx = (double)r->orig_max_pos;
    const double low_wavelen = old_ctx / r->low_freq_factor;
    const double high_wavelen = old_ctx / r->high_freq_factor;
    for (int i = 0; i < half; i++) {
      float f = inv_freq[i];
      float wavelen = (float)(2.0 * M_PI) / f;
      float scaled = wavelen > (float)low_wavelen ? f / factor : f;
      float smooth = ((float)old_ctx / wavelen - lo) / (hi - lo);
      float smoothed = (1.0f - smooth) * scaled / factor + smooth * scaled;
      int medium = !(wavelen < (float)high_wavelen) && !(wavelen > (float)low_wavelen);
      inv_freq[i] = medium ? smoothed : scaled;
    }
  } else if (r->type == LS_ROPE_YARN) {
    /* the ramp between the interpolated (f / factor) and the extrapolated (f) frequencies */
    const double b = r->theta, ctx = (double)r->orig_max_pos;
    double lo = rope_dim * log(ctx / (r->beta_fast * 2 * M_PI)) / (2 * log(b));
    double hi = rope_dim * log(ctx / (r->beta_slow * 2 * M_PI)) / (2 * log(b));
    if (r->truncate) { lo = floor(lo); hi = ceil(hi); }
    lo = lo > 0 ? lo : 0;
    hi = hi < rope_dim - 1 ? hi : rope_dim - 1;
    if (lo == hi) hi += 0.001;
    const float factor = (float)r->factor, flo = (float)lo, span = (float)(hi - lo);
    for (int i = 0; i < half; i++) {
      const float pos = powf(base, (float)(2 * i) / (float)rope_dim);
      const float extra = 1.0f / pos, inter = 1.0f / (factor * pos);
      float ramp = ((float)i - flo) / span;
      ramp = ramp < 0.0f ? 0.0f : ramp > 1.0f ? 1.0f : ramp;
      const float ef = 1.0f - ramp;
      inv_freq[i] = inter * (1.0f - ef) + extra * ef;
    }
  }
}
