/* fuzz_index.c: libFuzzer target for the sharded path of ls_st_open_dir
 * (model.safetensors.index.json + shards).
 *
 * Input layout: [index JSON text] NUL [shard bytes]. The text before the first NUL is
 * written as <scratch>/model/model.safetensors.index.json, the bytes after it as
 * <scratch>/model/model-00001-of-00001.safetensors (no NUL: no shard file at all).
 * A valid decoy checkpoint, <scratch>/decoy.safetensors (tensor "decoy.weight"), sits
 * next to the model directory: an index naming "../decoy.safetensors" must be refused.
 *
 * Oracles: if ls_st_open_dir succeeds, every weight_map value in the index must be a
 * bare file name (non-empty, no '/', not "." or ".."), every opened file must be
 * <model dir>/<name>, no tensor may come from the decoy, and every tensor of at most
 * 1 MB must read back. */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "ls_common.h"
#include "safetensors.h"

#define MAX_READ ((uint64_t)1 << 20)
#define SHARD_NAME "model-00001-of-00001.safetensors"

static char index_path[PATH_MAX], shard_path[PATH_MAX], decoy_path[PATH_MAX];

/* Write a valid one-tensor safetensors file: "decoy.weight", F32 [1] = 1.0f. */
static void write_decoy(void) {
  static const char hdr[] =
      "{\"decoy.weight\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
  const size_t hl = sizeof hdr - 1;
  unsigned char buf[8 + sizeof hdr + 4];
  for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(((uint64_t)hl >> (8 * i)) & 0xff);
  memcpy(buf + 8, hdr, hl);
  const float one = 1.0f;
  memcpy(buf + 8 + hl, &one, 4);
  fuzz_write_file(decoy_path, buf, 8 + hl + 4);
}

static int bare_name(const char *s) {
  return s && *s && !strchr(s, '/') && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

/* The library accepted `text` as an index: check what it named. */
static void check_index_names(const char *text) {
  cJSON *root = cJSON_ParseWithOpts(text, NULL, 1);
  FUZZ_ASSERT(root != NULL, "index accepted by ls_st_open_dir does not parse here");
  const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
  FUZZ_ASSERT(cJSON_IsObject(wm), "accepted index has no weight_map object");
  for (const cJSON *e = wm->child; e; e = e->next) {
    FUZZ_ASSERT(cJSON_IsString(e), "accepted weight_map value is not a string");
    FUZZ_ASSERT(bare_name(e->valuestring),
                "ls_st_open_dir accepted an index naming shard '%s' (not a bare file name)",
                e->valuestring);
  }
  cJSON_Delete(root);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!index_path[0]) {
    ls_error_set_quiet(getenv("LS_FUZZ_VERBOSE") == NULL); /* errors on: triage */
    fuzz_scratch_init();
    fuzz_path(index_path, sizeof index_path, fuzz_model_dir, "model.safetensors.index.json");
    fuzz_path(shard_path, sizeof shard_path, fuzz_model_dir, SHARD_NAME);
    fuzz_path(decoy_path, sizeof decoy_path, fuzz_root, "decoy.safetensors");
    write_decoy();
  }
  const uint8_t *nul = memchr(data, '\0', size);
  const size_t ilen = nul ? (size_t)(nul - data) : size;
  fuzz_write_file(index_path, data, ilen);
  if (nul)
    fuzz_write_file(shard_path, nul + 1, size - ilen - 1);
  else
    fuzz_remove_file(shard_path);

  ls_st_model_t m;
  if (ls_st_open_dir(fuzz_model_dir, &m) != LS_OK) {
    FUZZ_ASSERT(m.n_files == 0 && m.files == NULL && m.tensors == NULL,
                "failed open left the model half open");
    return 0;
  }

  char *text = malloc(ilen + 1);
  if (!text) FUZZ_DIE("out of memory");
  memcpy(text, data, ilen);
  text[ilen] = '\0';
  check_index_names(text);
  free(text);

  const size_t dlen = strlen(fuzz_model_dir);
  for (int i = 0; i < m.n_files; i++) {
    const ls_st_file_t *f = &m.files[i];
    FUZZ_ASSERT(bare_name(f->name), "opened shard '%s' is not a bare name", f->name);
    FUZZ_ASSERT(strncmp(f->path, fuzz_model_dir, dlen) == 0 && f->path[dlen] == '/' &&
                    strcmp(f->path + dlen + 1, f->name) == 0,
                "opened '%s', not <model dir>/%s", f->path, f->name);
    /* Only one shard file exists in the model directory. */
    FUZZ_ASSERT(strcmp(f->name, SHARD_NAME) == 0 ||
                    strcmp(f->name, "model.safetensors.index.json") == 0,
                "opened a file the harness never wrote: %s", f->path);
  }
  for (int i = 0; i < m.n_tensors; i++) {
    const ls_st_tensor_t *t = &m.tensors[i];
    FUZZ_ASSERT(t->file >= 0 && t->file < m.n_files, "tensor %d file %d", i, t->file);
    const ls_st_file_t *f = &m.files[t->file];
    FUZZ_ASSERT(t->offset >= f->header_len && t->offset <= f->size &&
                    t->nbytes <= f->size - t->offset,
                "tensor %d outside its file", i);
    FUZZ_ASSERT(ls_st_find(&m, t->name) == t, "ls_st_find('%s') did not return it", t->name);
    if (t->nbytes > MAX_READ) continue;
    void *dst = malloc(t->nbytes ? t->nbytes : 1);
    if (!dst) continue;
    FUZZ_ASSERT(ls_st_read(&m, t, dst) == LS_OK, "reading tensor %d failed", i);
    free(dst);
  }
  ls_st_close(&m);
  return 0;
}
