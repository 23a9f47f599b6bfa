/* fuzz_safetensors_header.c: libFuzzer target for ls_st_parse_header, the validator of
 * one safetensors JSON header.
 *
 * Input layout: [u64 LE selector][header bytes]. The header bytes are copied into an
 * exact-size heap buffer (no NUL terminator, so over-reads hit ASan's redzone) and
 * parsed against several file sizes derived from the selector: 8 + len + selector
 * (selector = data-area length: what a valid seed uses), the selector itself as the
 * raw file size, 8 + len (empty data area) and 8 + len - 1 (one byte too short). The
 * first parse appends to an empty array, the second to the result of the first (the
 * multi-shard append path, file index 1). On success the tensors are checked against
 * the invariants safetensors.h promises. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "ls_common.h"
#include "safetensors.h"

/* Every tensor appended by a successful parse of a file_size-byte file whose header is
 * len bytes must lie in the data area, have a consistent size and a terminated name. */
static void check_tensors(const ls_st_tensor_t *t, int n0, int n, size_t len,
                          uint64_t file_size, int file) {
  const uint64_t data_start = 8 + (uint64_t)len;
  uint64_t covered = 0;
  for (int i = n0; i < n; i++) {
    const ls_st_tensor_t *x = &t[i];
    FUZZ_ASSERT(memchr(x->name, '\0', sizeof x->name) != NULL, "tensor %d name unterminated", i);
    FUZZ_ASSERT(x->file == file, "tensor %d file %d != %d", i, x->file, file);
    FUZZ_ASSERT(x->ndim >= 0 && x->ndim <= LS_ST_MAX_NDIM, "tensor %d ndim %d", i, x->ndim);
    FUZZ_ASSERT(ls_dtype_size(x->dtype) != 0, "tensor %d dtype %d", i, (int)x->dtype);
    int64_t numel = 1;
    for (int d = 0; d < x->ndim; d++) {
      FUZZ_ASSERT(x->shape[d] >= 0, "tensor %d shape[%d] < 0", i, d);
      numel *= x->shape[d]; /* cannot overflow: the parser checked the product */
    }
    FUZZ_ASSERT(numel == x->numel, "tensor %d numel %lld != product %lld", i,
                (long long)x->numel, (long long)numel);
    FUZZ_ASSERT((uint64_t)x->numel * ls_dtype_size(x->dtype) == x->nbytes,
                "tensor %d nbytes %llu", i, (unsigned long long)x->nbytes);
    FUZZ_ASSERT(x->offset >= data_start && x->offset <= file_size &&
                    x->nbytes <= file_size - x->offset,
                "tensor %d span [%llu, +%llu) outside data area [%llu, %llu)", i,
                (unsigned long long)x->offset, (unsigned long long)x->nbytes,
                (unsigned long long)data_start, (unsigned long long)file_size);
    covered += x->nbytes;
  }
  /* The spans tile the data area exactly. */
  FUZZ_ASSERT(covered == file_size - data_start, "tensors cover %llu of %llu data bytes",
              (unsigned long long)covered, (unsigned long long)(file_size - data_start));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int init;
  if (!init) {
    ls_error_set_quiet(getenv("LS_FUZZ_VERBOSE") == NULL); /* errors on: triage */
    init = 1;
  }
  if (size < 8) return 0;
  uint64_t sel = 0;
  for (int i = 7; i >= 0; i--) sel = (sel << 8) | data[i];
  const size_t len = size - 8;
  char *buf = malloc(len ? len : 1);
  if (!buf) return 0;
  if (len) memcpy(buf, data + 8, len);

  const uint64_t base = 8 + (uint64_t)len;
  uint64_t sizes[4];
  int n_sizes = 0;
  sizes[n_sizes++] = sel <= UINT64_MAX - base ? base + sel : UINT64_MAX;
  sizes[n_sizes++] = sel;
  sizes[n_sizes++] = base;
  sizes[n_sizes++] = base - 1;

  for (int s = 0; s < n_sizes; s++) {
    ls_st_tensor_t *tensors = NULL;
    int n = 0;
    if (ls_st_parse_header(buf, len, sizes[s], "fuzz.safetensors", 0, &tensors, &n) == LS_OK) {
      check_tensors(tensors, 0, n, len, sizes[s], 0);
      /* Append a second "shard" with the same header to the same array. */
      const int n0 = n;
      if (ls_st_parse_header(buf, len, sizes[s], "fuzz2.safetensors", 1, &tensors, &n) ==
          LS_OK) {
        FUZZ_ASSERT(n == 2 * n0, "second parse gave %d tensors, first %d", n - n0, n0);
        check_tensors(tensors, n0, n, len, sizes[s], 1);
      } else {
        FUZZ_ASSERT(0, "same header parsed once and failed the second time");
      }
    } else {
      FUZZ_ASSERT(n == 0, "failed parse changed the count to %d", n);
    }
    free(tensors);
  }
  free(buf);
  return 0;
}
