/* dtype.h: the storage dtypes of checkpoint tensors (safetensors F32 / F16 / BF16, the
 * FP8 formats F8_E4M3 / F8_E5M2 of block-quantized checkpoints), their sizes and names,
 * and exact conversions to and from float32. The other safetensors dtypes (integers,
 * F64, BOOL) are known by size only, so that a checkpoint holding tensors the forward
 * does not use (I64 position_ids) stays readable; a used one is refused (src/model.c).
 * Part of the foundation (src/common): io, kernels and the engine all use it. */
#ifndef LS_DTYPE_H
#define LS_DTYPE_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
  LS_DT_F32 = 0,
  LS_DT_F16 = 1,
  LS_DT_BF16 = 2,
  LS_DT_F8_E4M3 = 3, /* OCP FP8 E4M3 (torch.float8_e4m3fn: no inf, NaN = S.1111.111) */
  LS_DT_F8_E5M2 = 4, /* OCP FP8 E5M2 (the upper byte of an IEEE half) */
  /* storage only (never computed with) */
  LS_DT_F64 = 5, LS_DT_I64 = 6, LS_DT_I32 = 7, LS_DT_I16 = 8, LS_DT_I8 = 9, LS_DT_U8 = 10,
  LS_DT_BOOL = 11, LS_DT_U16 = 12, LS_DT_U32 = 13, LS_DT_U64 = 14
} ls_dtype_t;

/* 1 for the dtypes layersweep computes with (F32, F16, BF16, F8_*) */
int ls_dtype_is_float(ls_dtype_t dt);
static inline int ls_dtype_is_fp8(ls_dtype_t dt) {
  return dt == LS_DT_F8_E4M3 || dt == LS_DT_F8_E5M2;
}

size_t ls_dtype_size(ls_dtype_t dt);
const char *ls_dtype_name(ls_dtype_t dt);
/* Parse a safetensors dtype name ("F32", "BF16", "F8_E4M3", "I64", ...); returns 0 on
 * success, -1 if unknown. */
int ls_dtype_parse(const char *s, ls_dtype_t *out);

/* Convert n elements of float dtype dt at src to float32 at dst (exact for each). */
void ls_convert_to_f32(float *dst, const void *src, ls_dtype_t dt, size_t n);
/* One F8_E4M3 value as float32 (exact). */
float ls_f8e4m3_to_f32(uint8_t v);
/* Round float32 to the given storage dtype (round to nearest even; NaN kept NaN). */
void ls_convert_from_f32(void *dst, const float *src, ls_dtype_t dt, size_t n);
/* The same in place: buf holds n float32 and gets n elements of dt (F16 / BF16) at its
 * start. Returns how many finite values became infinite (beyond float16's 65504, or
 * bfloat16's 3.4e38), and the largest |value| in *max_abs. */
size_t ls_narrow_f32_inplace(void *buf, ls_dtype_t dt, size_t n, float *max_abs);

#endif
