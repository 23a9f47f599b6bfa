/* dtype.h: the storage dtypes of checkpoint tensors (safetensors F32 / F16 / BF16), their
 * sizes and names, and exact conversions to and from float32. Part of the foundation
 * (src/common): io, kernels and the engine all use it. */
#ifndef LS_DTYPE_H
#define LS_DTYPE_H

#include <stddef.h>

typedef enum { LS_DT_F32 = 0, LS_DT_F16 = 1, LS_DT_BF16 = 2 } ls_dtype_t;

size_t ls_dtype_size(ls_dtype_t dt);
const char *ls_dtype_name(ls_dtype_t dt);
/* Parse "F32"/"F16"/"BF16"; returns 0 on success, -1 if unsupported. */
int ls_dtype_parse(const char *s, ls_dtype_t *out);

/* Convert n elements of dtype dt at src to float32 at dst (exact for all three). */
void ls_convert_to_f32(float *dst, const void *src, ls_dtype_t dt, size_t n);
/* Round float32 to the given storage dtype (round to nearest even; NaN kept NaN). */
void ls_convert_from_f32(void *dst, const float *src, ls_dtype_t dt, size_t n);
/* The same in place: buf holds n float32 and gets n elements of dt (F16 / BF16) at its
 * start. Returns how many finite values became infinite (beyond float16's 65504, or
 * bfloat16's 3.4e38), and the largest |value| in *max_abs. */
size_t ls_narrow_f32_inplace(void *buf, ls_dtype_t dt, size_t n, float *max_abs);

#endif
