/* dtype.c: the storage dtypes of checkpoint tensors and exact conversions to and from
 * float32 (see dtype.h). */
#include "dtype.h"

#include <stdint.h>
#include <math.h>
#include <string.h>

#include "ls_common.h"

/* ---- dtypes ------------------------------------------------------------------ */

size_t ls_dtype_size(ls_dtype_t dt) {
  switch (dt) {
    case LS_DT_F32: return 4;
    case LS_DT_F16: return 2;
    case LS_DT_BF16: return 2;
  }
  return 0;
}

const char *ls_dtype_name(ls_dtype_t dt) {
  switch (dt) {
    case LS_DT_F32: return "F32";
    case LS_DT_F16: return "F16";
    case LS_DT_BF16: return "BF16";
  }
  return "?";
}

int ls_dtype_parse(const char *s, ls_dtype_t *out) {
  if (!s) return LS_ERR;
  if (strcmp(s, "F32") == 0) { *out = LS_DT_F32; return LS_OK; }
  if (strcmp(s, "F16") == 0) { *out = LS_DT_F16; return LS_OK; }
  if (strcmp(s, "BF16") == 0) { *out = LS_DT_BF16; return LS_OK; }
  return LS_ERR;
}

/* ---- conversion -------------------------------------------------------------- */

static inline float f32_from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

/* Half -> float, branch-free so the loop vectorises: subnormals via an exact int->float
 * multiply, normals and inf/NaN by re-biasing the exponent. */
static inline uint32_t f16_to_f32_bits(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t em = h & 0x7fffu;
  uint32_t infnan = 0u - (uint32_t)(em >= 0x7c00u); /* all-ones masks, no branches */
  uint32_t small = 0u - (uint32_t)(em < 0x400u);
  uint32_t norm = (em << 13) + (112u << 23) + (infnan & (112u << 23)); /* inf/NaN: exp 255 */
  uint32_t sub = f32_bits((float)(int32_t)em * 0x1p-24f);              /* exact, em < 1024 */
  return sign | (small & sub) | (~small & norm);
}

void ls_convert_to_f32(float *restrict dst, const void *restrict src, ls_dtype_t dt, size_t n) {
  switch (dt) {
    case LS_DT_F32:
      if (n) memcpy(dst, src, n * 4);
      break;
    case LS_DT_BF16: {
      const uint16_t *s = src;
      for (size_t i = 0; i < n; i++) dst[i] = f32_from_bits((uint32_t)s[i] << 16);
      break;
    }
    case LS_DT_F16: {
      const uint16_t *s = src;
      for (size_t i = 0; i < n; i++) dst[i] = f32_from_bits(f16_to_f32_bits(s[i]));
      break;
    }
  }
}

static inline uint16_t f32_to_bf16(float f) {
  uint32_t x = f32_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x0040u); /* quiet NaN */
  x += 0x7fffu + ((x >> 16) & 1u);
  return (uint16_t)(x >> 16);
}

static inline uint16_t f32_to_f16(float f) {
  uint32_t x = f32_bits(f);
  uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
  uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return sign | 0x7e00u | (uint16_t)((ax >> 13) & 0x3ffu); /* NaN */
  if (ax >= 0x477ff000u) return sign | 0x7c00u;   /* >= 65520 rounds to inf */
  if (ax >= 0x38800000u) {                        /* normal half: >= 2^-14 */
    uint32_t r = ax - (112u << 23);
    r += 0x0fffu + ((r >> 13) & 1u);
    return sign | (uint16_t)(r >> 13);
  }
  if (ax <= 0x33000000u) return sign;             /* <= 2^-25 rounds to (even) zero */
  /* Subnormal half: h = round(ax_value * 2^24) = round(mant >> (126 - exp)). */
  uint32_t e = ax >> 23, mant = (ax & 0x7fffffu) | 0x800000u;
  uint32_t shift = 126u - e; /* 14..24 */
  uint32_t q = mant >> shift, rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (q & 1u))) q++;
  return sign | (uint16_t)q;
}

void ls_convert_from_f32(void *restrict dst, const float *restrict src, ls_dtype_t dt,
                         size_t n) {
  switch (dt) {
    case LS_DT_F32:
      if (n) memcpy(dst, src, n * 4);
      break;
    case LS_DT_BF16: {
      uint16_t *d = dst;
      for (size_t i = 0; i < n; i++) d[i] = f32_to_bf16(src[i]);
      break;
    }
    case LS_DT_F16: {
      uint16_t *d = dst;
      for (size_t i = 0; i < n; i++) d[i] = f32_to_f16(src[i]);
      break;
    }
  }
}

size_t ls_narrow_f32_inplace(void *buf, ls_dtype_t dt, size_t n, float *max_abs) {
  /* element i's 2 bytes land in float i / 2, read (and kept) before: byte copies only,
   * so no aliasing assumption can reorder the loads past the stores */
  char *b = buf;
  size_t over = 0;
  float mx = 0.0f;
  for (size_t i = 0; i < n; i++) {
    float v;
    memcpy(&v, b + 4 * i, 4);
    const uint16_t h = dt == LS_DT_F16 ? f32_to_f16(v) : f32_to_bf16(v);
    const float av = fabsf(v);
    if (av > mx) mx = av;
    if (isfinite(v) && (h & 0x7fffu) == (dt == LS_DT_F16 ? 0x7c00u : 0x7f80u)) over++;
    memcpy(b + 2 * i, &h, 2);
  }
  if (max_abs) *max_abs = mx;
  return over;
}
