/* ls_fixed.h: exact fixed-point sums for --reduce (src/reduce.c) and the backends' Gram
 * op (gram_fixed in kernels/backend.h). A float32 value x of column j becomes the integer
 * q = rint(x * 2^shift[j]), where the shift makes every |q| <= 2^LS_FX_BITS for the
 * column's largest |x| over all ranks (ls_fx_shift). Sums of q (128-bit) and of products
 * q q' (192-bit two's complement, 3 limbs, least significant first) are then exact, so
 * they do not depend on the order rows are added in: any rank count and microbatch size
 * gives the same bits. The only rounding is q's: 2^-61 of the column's largest value.
 *
 * For the Gram matrix q is split into three signed 20-bit digits (ls_fx_digits), so that
 * a float64 GEMM over up to LS_GRAM_CHUNK rows of digits is exact (|digit products| <=
 * 2^40.0001, times 1024 rows < 2^53), and each digit pair's GEMM is added to the limbs
 * shifted by 20 (a + b) bits. The pairs with a + b < 2 (d0 d0', d0 d1', d1 d0') are left
 * out: together below 2^59 against products up to 2^120, i.e. 2^-61 of the columns'
 * largest product, the size of q's own rounding; each row's contribution stays a fixed
 * function of the row, so sums remain exact integers and order-independent, and four
 * GEMMs (two of them symmetric) do the work of nine. Header-only, for host and device. */
#ifndef LS_FIXED_H
#define LS_FIXED_H

#include <stdint.h>

#ifdef __CUDACC__
#define LS_FX_FN static inline __host__ __device__
#else
#define LS_FX_FN static inline
#endif

#define LS_FX_BITS 60     /* |q| <= 2^60 */
#define LS_FX_DIGIT 20    /* bits per digit; three digits */
#define LS_GRAM_CHUNK 1024 /* rows per exact float64 GEMM */

/* The shift of a column whose largest |x| (over every row of every rank) is m: the
 * q of that value is below 2^LS_FX_BITS. 0 for an all-zero column. */
LS_FX_FN int ls_fx_shift_of(float m) {
  if (!(m > 0.0f)) return 0;
  int e = 0; /* m = f 2^e, 0.5 <= f < 1: m < 2^e */
  union { float f; uint32_t u; } v;
  v.f = m;
  const int be = (int)((v.u >> 23) & 0xff);
  if (be == 0) { /* subnormal: m = frac 2^-149 */
    uint32_t fr = v.u & 0x7fffff;
    int top = 31;
    while (!((fr >> top) & 1)) top--;
    e = top + 1 - 149;
  } else {
    e = be - 126;
  }
  return LS_FX_BITS - e;
}

/* Three signed digits d0 + d1 2^20 + d2 2^40 = q, |d0|, |d1| <= 2^19, |d2| <= 2^20 + 1 */
LS_FX_FN void ls_fx_digits(int64_t q, int64_t d[3]) {
  for (int i = 0; i < 2; i++) {
    int64_t r = (int64_t)((uint64_t)q & ((1u << LS_FX_DIGIT) - 1));
    if (r >= (1 << (LS_FX_DIGIT - 1))) r -= (int64_t)1 << LS_FX_DIGIT;
    d[i] = r;
    q = (q - r) / ((int64_t)1 << LS_FX_DIGIT); /* exact */
  }
  d[2] = q;
}

/* The digit pairs (a <= b) of the Gram matrix, in the order they are computed */
#define LS_GRAM_PAIRS 4
LS_FX_FN void ls_gram_pair(int p, int *a, int *b) {
  *a = p == 0 ? 0 : p == 3 ? 2 : 1;
  *b = p == 1 ? 1 : 2;
}

/* a += b (192-bit) */
LS_FX_FN void ls_fx_add3(uint64_t *a, const uint64_t *b) {
  uint64_t carry = 0;
  for (int i = 0; i < 3; i++) {
    const uint64_t x = a[i] + b[i];
    const uint64_t c1 = x < a[i];
    const uint64_t y = x + carry;
    carry = c1 | (y < x);
    a[i] = y;
  }
}

/* a (192-bit two's complement, 3 limbs) += v 2^s, 0 <= s < 128 */
LS_FX_FN void ls_fx_add_shifted(uint64_t *a, int64_t v, int s) {
  const uint64_t sign = v < 0 ? ~(uint64_t)0 : 0;
  uint64_t w[3] = {(uint64_t)v, sign, sign}; /* v sign-extended to 192 bits */
  while (s >= 64) { /* shift by whole limbs */
    w[2] = w[1];
    w[1] = w[0];
    w[0] = 0;
    s -= 64;
  }
  if (s > 0) {
    w[2] = (w[2] << s) | (w[1] >> (64 - s));
    w[1] = (w[1] << s) | (w[0] >> (64 - s));
    w[0] <<= s;
  }
  ls_fx_add3(a, w);
}

#endif
