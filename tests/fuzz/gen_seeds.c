/* gen_seeds.c: writes the safetensors-based seed files of the fuzz corpora with the
 * project's own writer (ls_st_writer_*), so the seeds are small valid checkpoints:
 *
 *   corpus/fuzz_safetensors_file/   whole .safetensors files
 *   corpus/fuzz_safetensors_header/ [u64 LE data-area length][JSON header] (the input
 *                                   layout of fuzz_safetensors_header.c)
 *   corpus/fuzz_index/              index JSON, NUL, shard bytes (fuzz_index.c)
 *
 * Usage: fuzz_gen_seeds <tests/fuzz/corpus> [NAME=FILE.safetensors ...]
 * (the three folders must exist); each NAME=FILE adds a header seed NAME.hdr taken
 * from an existing checkpoint (only its header is copied, not its data). */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ls_common.h"
#include "safetensors.h"

static const char *g_out;

static unsigned char *slurp(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f) { perror(path); exit(1); }
  fseek(f, 0, SEEK_END);
  long sz = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *buf = malloc((size_t)sz + 1);
  if (!buf || fread(buf, 1, (size_t)sz, f) != (size_t)sz) { perror(path); exit(1); }
  fclose(f);
  *n = (size_t)sz;
  return buf;
}

static void spill(const char *dir, const char *name, const void *a, size_t na, const void *b,
                  size_t nb) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s/%s", g_out, dir, name);
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(a, 1, na, f) != na || (nb && fwrite(b, 1, nb, f) != nb) || fclose(f) != 0) {
    perror(path);
    exit(1);
  }
}

/* Header seed for a whole file: [u64 LE data-area length][JSON header]. */
static void header_seed(const char *name, const unsigned char *file, size_t sz) {
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | file[i];
  if (sz < 8 || hlen > sz - 8) {
    fprintf(stderr, "%s: not a safetensors file\n", name);
    exit(1);
  }
  uint64_t data_len = sz - 8 - hlen;
  unsigned char sel[8];
  for (int i = 0; i < 8; i++) sel[i] = (unsigned char)(data_len >> (8 * i));
  char fname[300];
  snprintf(fname, sizeof fname, "%s.hdr", name);
  spill("fuzz_safetensors_header", fname, sel, 8, file + 8, hlen);
}

/* Write tensors t[0..n) (bytes: a ramp) to a temp file, then emit the three seeds. */
static void make(const char *name, const ls_st_wtensor_t *t, int n, const char *fmt,
                 const char *index_json, int file_seeds) {
  char tmp[] = "/tmp/ls-fuzz-seed-XXXXXX";
  int fd = mkstemp(tmp);
  if (fd < 0) { perror("mkstemp"); exit(1); }
  close(fd);
  ls_st_writer_t w;
  if (ls_st_writer_open(&w, tmp, t, n, fmt) != LS_OK) exit(1);
  for (int i = 0; i < n; i++) {
    unsigned char *b = malloc(w.nbytes[i] ? w.nbytes[i] : 1);
    for (uint64_t k = 0; k < w.nbytes[i]; k++) b[k] = (unsigned char)(k * 7 + 1);
    if (ls_st_writer_put(&w, i, 0, b, w.nbytes[i]) != LS_OK) exit(1);
    free(b);
  }
  if (ls_st_writer_close(&w) != LS_OK) exit(1);
  size_t sz;
  unsigned char *file = slurp(tmp, &sz);
  unlink(tmp);
  char fname[256];
  if (file_seeds) {
    snprintf(fname, sizeof fname, "%s.safetensors", name);
    spill("fuzz_safetensors_file", fname, file, sz, NULL, 0);
    header_seed(name, file, sz);
  }
  if (index_json) {
    snprintf(fname, sizeof fname, "%s.idx", name);
    spill("fuzz_index", fname, index_json, strlen(index_json) + 1, file, sz);
  }
  free(file);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s <tests/fuzz/corpus> [NAME=FILE.safetensors ...]\n", argv[0]);
    return 2;
  }
  g_out = argv[1];
  const char *shard = "model-00001-of-00001.safetensors";
  char idx[1024];

  ls_st_wtensor_t two[] = {
      {"model.embed_tokens.weight", LS_DT_F32, 2, {4, 3}},
      {"model.norm.weight", LS_DT_F32, 1, {3}},
  };
  snprintf(idx, sizeof idx,
           "{\"metadata\": {\"total_size\": 60}, \"weight_map\": {\"model.embed_tokens.weight\": "
           "\"%s\", \"model.norm.weight\": \"%s\"}}", shard, shard);
  make("f32_two", two, 2, "pt", idx, 1);

  ls_st_wtensor_t mixed[] = {
      {"a.bf16", LS_DT_BF16, 1, {5}},
      {"b.f16", LS_DT_F16, 3, {2, 1, 2}},
      {"c.scalar", LS_DT_F32, 0, {0}},
      {"d.empty", LS_DT_F16, 2, {0, 7}},
  };
  snprintf(idx, sizeof idx,
           "{\"weight_map\": {\"a.bf16\": \"%s\", \"b.f16\": \"%s\", \"c.scalar\": \"%s\", "
           "\"d.empty\": \"%s\"}}", shard, shard, shard, shard);
  make("mixed_dtypes", mixed, 4, NULL, idx, 1);

  make("no_tensors", NULL, 0, "pt", NULL, 1);

  /* Index naming the decoy outside the directory (must be refused) next to a valid
   * shard, and one naming a shard that does not exist. */
  ls_st_wtensor_t one[] = {{"decoy.weight", LS_DT_F32, 1, {1}}};
  make("escape_parent", one, 1, NULL,
       "{\"weight_map\": {\"decoy.weight\": \"../decoy.safetensors\"}}", 0);
  make("escape_dot", one, 1, NULL,
       "{\"weight_map\": {\"decoy.weight\": \"./model-00001-of-00001.safetensors\"}}", 0);
  make("escape_abs", one, 1, NULL, "{\"weight_map\": {\"decoy.weight\": \"/etc/passwd\"}}", 0);
  make("missing_shard", one, 1, NULL,
       "{\"weight_map\": {\"decoy.weight\": \"model-00002-of-00002.safetensors\"}}", 0);
  for (int a = 2; a < argc; a++) {
    char name[256];
    const char *eq = strchr(argv[a], '=');
    if (!eq || (size_t)(eq - argv[a]) >= sizeof name) {
      fprintf(stderr, "bad argument %s (want NAME=FILE)\n", argv[a]);
      return 2;
    }
    memcpy(name, argv[a], (size_t)(eq - argv[a]));
    name[eq - argv[a]] = '\0';
    size_t sz;
    unsigned char *file = slurp(eq + 1, &sz);
    header_seed(name, file, sz);
    free(file);
  }
  return 0;
}
