/* fuzz_safetensors_file.c: libFuzzer target for the single-file path of ls_st_open_dir.
 *
 * The input is written as <scratch>/model/model.safetensors (scratch dir created once
 * per process), the directory is opened, every tensor of at most 1 MB is read with
 * ls_st_read into a heap buffer of exactly its size, every tensor is looked up by name,
 * and the model is closed. On success the tensor table must agree with the file. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "ls_common.h"
#include "safetensors.h"

#define MAX_READ ((uint64_t)1 << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static char path[PATH_MAX];
  if (!path[0]) {
    ls_error_set_quiet(getenv("LS_FUZZ_VERBOSE") == NULL); /* errors on: triage */
    fuzz_scratch_init();
    fuzz_path(path, sizeof path, fuzz_model_dir, "model.safetensors");
  }
  fuzz_write_file(path, data, size);

  ls_st_model_t m;
  if (ls_st_open_dir(fuzz_model_dir, &m) != LS_OK) {
    FUZZ_ASSERT(m.n_files == 0 && m.files == NULL && m.tensors == NULL,
                "failed open left the model half open");
    return 0;
  }
  FUZZ_ASSERT(m.n_files == 1, "single file model has %d files", m.n_files);
  FUZZ_ASSERT(m.files[0].size == size, "file size %llu != %zu",
              (unsigned long long)m.files[0].size, size);
  for (int i = 0; i < m.n_tensors; i++) {
    const ls_st_tensor_t *t = &m.tensors[i];
    FUZZ_ASSERT(t->file == 0, "tensor %d in file %d", i, t->file);
    FUZZ_ASSERT(t->offset >= m.files[0].header_len && t->offset <= size &&
                    t->nbytes <= size - t->offset,
                "tensor %d outside the file", i);
    if (i > 0) FUZZ_ASSERT(strcmp(m.tensors[i - 1].name, t->name) < 0, "tensors not sorted");
    FUZZ_ASSERT(ls_st_find(&m, t->name) == t, "ls_st_find('%s') did not return it", t->name);
    if (t->nbytes > MAX_READ) continue;
    void *dst = malloc(t->nbytes ? t->nbytes : 1);
    if (!dst) continue;
    FUZZ_ASSERT(ls_st_read(&m, t, dst) == LS_OK, "reading tensor %d failed", i);
    FUZZ_ASSERT(memcmp(dst, data + t->offset, t->nbytes) == 0, "tensor %d bytes differ", i);
    /* A range read must refuse to go past the tensor. */
    FUZZ_ASSERT(ls_st_read_range(&m, t, t->nbytes, 1, dst) != LS_OK, "read past tensor end");
    free(dst);
  }
  ls_st_close(&m);
  return 0;
}
