/* dtype.c: the storage dtypes of checkpoint tensors and exact conversions to and from
 * float32 (see dtype.h). */
#include "dtype.h"

#include <stdint.h>
#include <math.h>
#include <string.h>

#include "ls_common.h"

/* ---- dtypes ------------------------------------------------------------------ */

static const struct { const char *name; size_t size; } dtypes[] = {
    [LS_DT_F32] = {"F32", 4},    [LS_DT_F16] = {"F16", 2},       [LS_DT_BF16] = {"BF16", 2},
    [LS_DT_F8_E4M3] = {"F8_E4M3", 1}, [LS_DT_F8_E5M2] = {"F8_E5M2", 1},
    [LS_DT_F64] = {"F64", 8},    [LS_DT_I64] = {"I64", 8},       [LS_DT_I32] = {"I32", 4},
    [LS_DT_I16] = {"I16", 2},    [LS_DT_I8] = {"I8", 1},         [LS_DT_U8] = {"U8", 1},
    [LS_DT_BOOL] = {"BOOL", 1},  [LS_DT_U16] = {"U16", 2},       [LS_DT_U32] = {"U32", 4},
    [LS_DT_U64] = {"U64", 8},
};
#define N_DTYPES ((int)(sizeof dtypes / sizeof dtypes[0]))

size_t ls_dtype_size(ls_dtype_t dt) {
  return (int)dt >= 0 && (int)dt < N_DTYPES ? dtypes[dt].size : 0;
}

const char *ls_dtype_name(ls_dtype_t dt) {
  return (int)dt >= 0 && (int)dt < N_DTYPES ? dtypes[dt].name : "?";
}

int ls_dtype_is_float(ls_dtype_t dt) { return (int)dt >= 0 && dt <= LS_DT_F8_E5M2; }

int ls_dtype_parse(const char *s, ls_dtype_t *out) {
  if (!s) return LS_ERR;
  for (int i = 0; i < N_DTYPES; i++)
    if (strcmp(s, dtypes[i].name) == 0) { *out = (ls_dtype_t)i; return LS_OK; }
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
    case LS_DT_F8_E5M2: { /* the upper byte of a half */
      const uint8_t *s = src;
      for (size_t i = 0; i < n; i++) dst[i] = f32_from_bits(f16_to_f32_bits((uint16_t)(s[i] << 8)));
      break;
    }
    case LS_DT_F8_E4M3: {
      const uint8_t *s = src;
      for (size_t i = 0; i < n; i++) dst[i] = ls_f8e4m3_to_f32(s[i]);
      break;
    }
    default: /* storage-only dtypes are never converted (src/model.c refuses them) */
      break;
  }
}

float ls_f8e4m3_to_f32(uint8_t v) {
  const uint32_t sign = (uint32_t)(v & 0x80u) << 24, e = (v >> 3) & 0xfu, m = v & 0x7u;
  if (e == 0xfu && m == 0x7u) return f32_from_bits(sign | 0x7fc00000u); /* NaN */
  if (e == 0) return f32_from_bits(sign | f32_bits((float)m * 0x1p-9f)); /* subnormal: m 2^-9 */
  return f32_from_bits(sign | ((e + 120u) << 23) | (m << 20)); /* bias 7 -> 127 */
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
    default: /* outputs are F32, F16 or BF16 */
      break;
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
