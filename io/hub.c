/* hub.c: --model as a directory, a URL or a hub id (see hub.h). */
#include "hub.h"

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "http.h"
#include "ls_common.h"

static int name_ok(const char *s, size_t n) {
  if (n == 0 || n > 96) return 0;
  if (!((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z') || (s[0] >= '0' && s[0] <= '9')))
    return 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
             c == '-' || c == '_' || c == '.';
    if (!ok) return 0;
    if (i + 1 < n && ((c == '-' && s[i + 1] == '-') || (c == '.' && s[i + 1] == '.'))) return 0;
  }
  return s[n - 1] != '.' && s[n - 1] != '-';
}

static int rev_ok(const char *r) {
  size_t n = strlen(r);
  if (n == 0 || n > 200 || strstr(r, "..") || r[0] == '/' || r[n - 1] == '/') return 0;
  for (size_t i = 0; i < n; i++) {
    char c = r[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
          c == '-' || c == '_' || c == '.' || c == '/'))
      return 0;
  }
  return 1;
}

static int is_commit(const char *r) {
  if (strlen(r) != 40) return 0;
  for (int i = 0; i < 40; i++)
    if (!((r[i] >= '0' && r[i] <= '9') || (r[i] >= 'a' && r[i] <= 'f'))) return 0;
  return 1;
}

static int exists(const char *p) {
  struct stat st;
  return stat(p, &st) == 0;
}

/* Every file of the model in dir: config.json and model.safetensors, or the index and
 * every shard it names. */
static int snapshot_complete(const char *dir) {
  char p[4800];
  snprintf(p, sizeof p, "%s/config.json", dir);
  if (!exists(p)) return 0;
  snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
  if (!exists(p)) {
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    return exists(p);
  }
  FILE *f = fopen(p, "rb");
  if (!f) return 0;
  char *text = NULL;
  size_t cap = 0, len = 0;
  for (;;) {
    if (len + 65536 > cap) {
      char *nt = realloc(text, cap = 2 * cap + 65536);
      if (!nt) break;
      text = nt;
    }
    size_t r = fread(text + len, 1, cap - len - 1, f);
    if (r == 0) break;
    len += r;
    if (len > ((size_t)64 << 20)) break;
  }
  fclose(f);
  if (!text) return 0;
  text[len] = '\0';
  cJSON *root = cJSON_Parse(text);
  free(text);
  const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
  int ok = cJSON_IsObject(wm);
  for (const cJSON *e = ok ? wm->child : NULL; e && ok; e = e->next) {
    if (!cJSON_IsString(e) || strchr(e->valuestring, '/')) { ok = 0; break; }
    snprintf(p, sizeof p, "%s/%s", dir, e->valuestring);
    ok = exists(p);
  }
  cJSON_Delete(root);
  return ok;
}

static int resolve_url(const char *arg, ls_location_t *loc) {
  char pb[512];
  const char *shown = ls_printable(pb, sizeof pb, arg);
  CURLU *u = curl_url();
  char *host = NULL, *user = NULL, *query = NULL, *frag = NULL;
  int rc = LS_ERR;
  if (!u || curl_url_set(u, CURLUPART_URL, arg, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK || !host || !*host) {
    ls_error("--model %s: not a valid http(s) URL (expected e.g. "
             "https://host/path/to/model-dir)", shown);
  } else if (curl_url_get(u, CURLUPART_USER, &user, 0) == CURLUE_OK && user) {
    ls_error("--model: credentials in the URL (user:password@%s) are not accepted: they "
             "would end up in logs and in the output file; give a token with HF_TOKEN instead",
             ls_printable(pb, sizeof pb, host));
  } else if ((curl_url_get(u, CURLUPART_QUERY, &query, 0) == CURLUE_OK && query) ||
             (curl_url_get(u, CURLUPART_FRAGMENT, &frag, 0) == CURLUE_OK && frag)) {
    ls_error("--model %s: the URL of a model directory takes no ?query or #fragment", shown);
  } else if (strlen(arg) >= sizeof loc->base - 64) {
    ls_error("--model %s: URL too long", shown);
  } else {
    loc->kind = LS_LOC_URL;
    snprintf(loc->base, sizeof loc->base, "%s", arg);
    size_t n = strlen(loc->base);
    while (n > 0 && loc->base[n - 1] == '/') loc->base[--n] = '\0';
    rc = LS_OK;
  }
  curl_free(host);
  curl_free(user);
  curl_free(query);
  curl_free(frag);
  curl_url_cleanup(u);
  return rc;
}

int ls_location_resolve(const char *arg, ls_location_t *loc) {
  memset(loc, 0, sizeof *loc);
  char pb[512];
  if (!arg || !*arg) {
    ls_error("--model is empty; give a model directory, an http(s) URL or a hub id org/name");
    return LS_ERR;
  }
  if (ls_src_is_url(arg)) return resolve_url(arg, loc);
  const char *scheme = strstr(arg, "://");
  if (scheme && scheme > arg && (size_t)(scheme - arg) < 16 && !exists(arg)) {
    ls_error("--model %s: only http:// and https:// URLs are read", ls_printable(pb, sizeof pb, arg));
    return LS_ERR;
  }
  /* a local path: as it always was (it fails later, as a path, if it is not a model) */
  const char *slash = strchr(arg, '/');
  const char *at = strchr(arg, '@');
  if (exists(arg) || arg[0] == '/' || arg[0] == '.' || arg[0] == '~' || !slash ||
      (strchr(slash + 1, '/') && (!at || strchr(slash + 1, '/') < at))) {
    loc->kind = LS_LOC_LOCAL;
    snprintf(loc->base, sizeof loc->base, "%s", arg);
    return LS_OK;
  }
  /* org/name[@revision] */
  size_t on = (size_t)(slash - arg);
  const char *name = slash + 1;
  size_t nn = at ? (size_t)(at - name) : strlen(name);
  const char *rev = at ? at + 1 : "main";
  if (!name_ok(arg, on) || !name_ok(name, nn)) {
    ls_error("--model %s: not a directory, and not a hub id org/name[@revision] (names are "
             "letters, digits, '-', '_', '.'; no '--' or '..')", ls_printable(pb, sizeof pb, arg));
    return LS_ERR;
  }
  if (!rev_ok(rev)) {
    ls_error("--model %s: the revision after '@' must be a branch, tag or commit (letters, "
             "digits, '-', '_', '.', '/'; no '..')", ls_printable(pb, sizeof pb, arg));
    return LS_ERR;
  }
  loc->kind = LS_LOC_HUB;
  snprintf(loc->hub_id, sizeof loc->hub_id, "%.*s/%.*s", (int)on, arg, (int)nn, name);
  snprintf(loc->revision, sizeof loc->revision, "%s", rev);

  /* the local Hugging Face cache */
  char root[4096];
  const char *hc = getenv("HF_HUB_CACHE"), *hh = getenv("HF_HOME"), *home = getenv("HOME");
  if (hc && *hc) snprintf(root, sizeof root, "%s", hc);
  else if (hh && *hh) snprintf(root, sizeof root, "%s/hub", hh);
  else snprintf(root, sizeof root, "%s/.cache/huggingface/hub", home ? home : "");
  char repo[4400], commit[256] = "";
  snprintf(repo, sizeof repo, "%s/models--%.*s--%.*s", root, (int)on, arg, (int)nn, name);
  if (is_commit(rev)) {
    snprintf(commit, sizeof commit, "%s", rev);
  } else {
    char ref[4700];
    snprintf(ref, sizeof ref, "%s/refs/%s", repo, rev);
    FILE *f = fopen(ref, "r");
    if (f) {
      if (!fgets(commit, sizeof commit, f)) commit[0] = '\0';
      fclose(f);
      size_t n = strlen(commit);
      while (n && (commit[n - 1] == '\n' || commit[n - 1] == '\r' || commit[n - 1] == ' ')) commit[--n] = '\0';
      if (!is_commit(commit)) commit[0] = '\0';
    }
  }
  if (commit[0]) {
    char snap[4500];
    snprintf(snap, sizeof snap, "%s/snapshots/%s", repo, commit);
    if (snapshot_complete(snap) && strlen(snap) < sizeof loc->base) {
      loc->in_cache = 1;
      snprintf(loc->base, sizeof loc->base, "%s", snap);
      ls_info("--model %s: found in the local Hugging Face cache (%s)", arg, snap);
      return LS_OK;
    }
  }
  /* the endpoint: /org/name/resolve/<rev>/<file>, the revision URL-encoded */
  char enc[800];
  size_t o = 0;
  for (const char *c = rev; *c && o + 4 < sizeof enc; c++) {
    if (*c == '/') o += (size_t)snprintf(enc + o, sizeof enc - o, "%%2F");
    else enc[o++] = *c;
  }
  enc[o] = '\0';
  const char *ep = ls_http_endpoint();
  size_t el = strlen(ep);
  while (el > 0 && ep[el - 1] == '/') el--;
  if (el + strlen(loc->hub_id) + strlen(enc) + 16 >= sizeof loc->base) {
    ls_error("HF_ENDPOINT is too long");
    return LS_ERR;
  }
  snprintf(loc->base, sizeof loc->base, "%.*s/%s/resolve/%s", (int)el, ep, loc->hub_id, enc);
  ls_info("--model %s: not in the local Hugging Face cache (%s); reading it from %.*s", arg,
          root, (int)el, ep);
  return LS_OK;
}
