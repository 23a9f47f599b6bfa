/* hooks.c: hook names, --hooks / --layers / --pool parsing (see hooks.h). */
#include "hooks.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ls_common.h"

static const char *hook_names[LS_HOOK_COUNT] = {"residual_pre", "attn_out", "mlp_out",
                                                "residual_post", "final_norm", "router_logits"};

const char *ls_hook_name(ls_hook_t h) { return hook_names[h]; }

int ls_hooks_parse(const char *spec, unsigned *mask) {
  *mask = 0;
  char buf[1024];
  if (!spec || !*spec || strlen(spec) >= sizeof buf) {
    ls_error("--hooks: give a comma-separated list of residual_pre, attn_out, mlp_out, "
             "residual_post, final_norm (or all), router_logits");
    return LS_ERR;
  }
  strcpy(buf, spec);
  for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    if (strcmp(tok, "all") == 0) { *mask |= LS_HOOKS_ALL; continue; }
    int found = 0;
    for (int h = 0; h < LS_HOOK_COUNT; h++)
      if (strcmp(tok, hook_names[h]) == 0) { *mask |= 1u << h; found = 1; }
    if (!found) {
      ls_error("--hooks: unknown hook \"%s\"; choose from residual_pre, attn_out, mlp_out, "
               "residual_post, final_norm, all, router_logits", tok);
      return LS_ERR;
    }
  }
  if (!*mask) {
    ls_error("--hooks: no hook given");
    return LS_ERR;
  }
  return LS_OK;
}

int ls_pool_parse(const char *s, ls_pool_t *out) {
  if (strcmp(s, "last_token") == 0) *out = LS_POOL_LAST;
  else if (strcmp(s, "mean") == 0) *out = LS_POOL_MEAN;
  else if (strcmp(s, "none") == 0) *out = LS_POOL_NONE;
  else {
    ls_error("--pool: unknown pooling \"%s\"; choose last_token, mean or none", s);
    return LS_ERR;
  }
  return LS_OK;
}

const char *ls_pool_name(ls_pool_t p) {
  return p == LS_POOL_LAST ? "last_token" : p == LS_POOL_MEAN ? "mean" : "none";
}

/* Parse a signed integer at *s, advancing it; resolves negatives against n. */
static int parse_index(const char **s, int n, int *out, const char *spec) {
  char *end;
  errno = 0;
  long v = strtol(*s, &end, 10);
  if (end == *s || errno) {
    ls_error("--layers \"%s\": expected a layer number at \"%s\"", spec, *s);
    return LS_ERR;
  }
  if (v < 0) v += n;
  if (v < 0 || v >= n) {
    ls_error("--layers \"%s\": layer %.*s is out of range for a model with %d layers "
             "(valid: 0..%d or -%d..-1)", spec, (int)(end - *s), *s, n, n - 1, n);
    return LS_ERR;
  }
  *s = end;
  *out = (int)v;
  return LS_OK;
}

int ls_layers_parse(const char *spec, int n_layers, int **layers, int *n) {
  *layers = NULL;
  *n = 0;
  unsigned char *sel = calloc((size_t)n_layers, 1);
  if (!sel) return LS_ERR;
  int rc = LS_ERR;
  const char *s = spec;
  if (!spec || !*spec) {
    ls_error("--layers: empty layer list; use all, or e.g. 0,4,8-11 or -1");
    goto done;
  }
  while (*s) {
    if (strncmp(s, "all", 3) == 0 && (s[3] == ',' || s[3] == '\0')) {
      memset(sel, 1, (size_t)n_layers);
      s += 3;
    } else {
      int a, b;
      if (parse_index(&s, n_layers, &a, spec)) goto done;
      b = a;
      if (*s == '-') {
        s++;
        if (parse_index(&s, n_layers, &b, spec)) goto done;
        if (b < a) {
          ls_error("--layers \"%s\": range %d-%d is empty (end before start)", spec, a, b);
          goto done;
        }
      }
      for (int i = a; i <= b; i++) sel[i] = 1;
    }
    if (*s == ',') {
      s++;
      if (!*s) { ls_error("--layers \"%s\": trailing comma", spec); goto done; }
    } else if (*s) {
      ls_error("--layers \"%s\": unexpected \"%s\"; use e.g. 0,4,8-11 or -1", spec, s);
      goto done;
    }
  }
  *layers = malloc(sizeof(int) * (size_t)n_layers);
  if (!*layers) goto done;
  for (int i = 0; i < n_layers; i++)
    if (sel[i]) (*layers)[(*n)++] = i;
  rc = LS_OK;
done:
  free(sel);
  return rc;
}
