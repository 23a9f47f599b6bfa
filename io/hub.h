/* hub.h: what --model names, resolved (rank 0): a local directory (as given, or a
 * snapshot of the local Hugging Face cache), an http(s) URL of a model directory, or a
 * hub id org/name[@revision] read from HF_ENDPOINT's /org/name/resolve/<rev>/<file>.
 *
 * Order: a URL is a URL; a path that exists is a local directory (it takes precedence
 * over a hub id of the same spelling); a hub id is looked up in the local cache
 * (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub: models--org--name/
 * refs/<rev> -> snapshots/<commit>/), used from there when every file of the model is
 * in the snapshot, else read from the endpoint; anything else is a local path (and
 * fails as one). */
#ifndef LS_HUB_H
#define LS_HUB_H

enum { LS_LOC_LOCAL = 0, LS_LOC_URL = 1, LS_LOC_HUB = 2 };

typedef struct {
  int kind;            /* LS_LOC_* */
  int in_cache;        /* a hub id found whole in the local Hugging Face cache */
  char base[4096];     /* the directory, or the base URL of the model's files */
  char hub_id[256];    /* org/name (kind LS_LOC_HUB) */
  char revision[256];  /* as given, default "main" */
} ls_location_t;

/* LS_OK, or LS_ERR after one message (a malformed URL or hub id). */
int ls_location_resolve(const char *arg, ls_location_t *loc);

#endif
