/* SSSE3 kernels (compiled with -mssse3): x86-64 CPUs without AVX2 (Core 2 to Ivy Bridge;
 * Atom, Celeron and Pentium parts of the Goldmont and Tremont lines, sold until 2022; AMD before
 * Excavator). Only the integer dots are here, on 128-bit `pmaddubsw`, the rest of the table is
 * the scalar file's: decode is what such a machine waits for, and it reads the weights once.
 * int4: the nibble u (0..15, unsigned) times x, 8 * sum(x) taken back per group; int8: |x| times
 * (w with x's sign). Four groups' int32 lanes are summed per group by unpacks and adds, then
 * converted and scaled as one vector. Group size 32; others go to the scalar file. Tokens reuse a
 * row from L1 (no packed prefill panels).
 */
#include <tmmintrin.h>

#include "kernels.h"

/* Per group, the sums of the 4 int32 lanes of a, b, c and d: (sum a, sum b, sum c, sum d). */
static inline __m128i sum4(__m128i a, __m128i b, __m128i c, __m128i d) {
    const __m128i ab = _mm_add_epi32(_mm_unpacklo_epi32(a, b), _mm_unpackhi_epi32(a, b));  /* a02 b02 a13 b13 */
    const __m128i cd = _mm_add_epi32(_mm_unpacklo_epi32(c, d), _mm_unpackhi_epi32(c, d));
    return _mm_add_epi32(_mm_unpacklo_epi64(ab, cd), _mm_unpackhi_epi64(ab, cd));
}

/* Four f16 scales as f32, exactly (no F16C here; scales are never inf or NaN; f16_to_f32, a call
 * with branches per group, held decode to half this speed): a normal half's exponent and mantissa
 * moved to f32's place and the exponent rebiased in the integers; a subnormal one (exponent 0) is
 * its mantissa times 2^-24, converted from the integer, so no f32 denormal is ever an operand
 * (which a flush-to-zero mode set by another library would read as 0). */
static inline __m128 f16x4(const uint16_t *h) {
    const __m128i v = _mm_unpacklo_epi16(_mm_loadl_epi64((const __m128i *)h), _mm_setzero_si128());
    const __m128i mag = _mm_and_si128(v, _mm_set1_epi32(0x7FFF));
    const __m128i normal = _mm_add_epi32(_mm_slli_epi32(mag, 13), _mm_set1_epi32(112 << 23));
    const __m128 sub = _mm_mul_ps(_mm_cvtepi32_ps(mag), _mm_set1_ps(0x1p-24f));
    const __m128 is_sub = _mm_castsi128_ps(_mm_cmpeq_epi32(_mm_and_si128(v, _mm_set1_epi32(0x7C00)), _mm_setzero_si128()));
    const __m128 f = _mm_or_ps(_mm_and_ps(is_sub, sub), _mm_andnot_ps(is_sub, _mm_castsi128_ps(normal)));
    return _mm_or_ps(f, _mm_castsi128_ps(_mm_slli_epi32(_mm_and_si128(v, _mm_set1_epi32(0x8000)), 16)));
}

/* One group's 4 int32 lanes of w . x, before any offset: int4 16 packed bytes, int8 32 bytes. */
static inline __m128i group_lanes(const QMat *w, const uint8_t *row, int64_t g, const int8_t *x) {
    const __m128i ones = _mm_set1_epi16(1);
    const __m128i x0 = _mm_loadu_si128((const __m128i *)(x + 32 * g)), x1 = _mm_loadu_si128((const __m128i *)(x + 32 * g + 16));
    if (w->fmt == FMT_INT4) {
        const __m128i m0f = _mm_set1_epi8(0x0F), b = _mm_loadu_si128((const __m128i *)(row + 16 * g));
        const __m128i lo = _mm_and_si128(b, m0f), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m0f);
        /* pairs at most 2 * 15 * 127, two of them summed: int16 holds it */
        return _mm_madd_epi16(_mm_add_epi16(_mm_maddubs_epi16(lo, x0), _mm_maddubs_epi16(hi, x1)), ones);
    }
    const __m128i w0 = _mm_loadu_si128((const __m128i *)(row + 32 * g)), w1 = _mm_loadu_si128((const __m128i *)(row + 32 * g + 16));
    return _mm_add_epi32(_mm_madd_epi16(_mm_maddubs_epi16(_mm_abs_epi8(x0), _mm_sign_epi8(w0, x0)), ones),
                         _mm_madd_epi16(_mm_maddubs_epi16(_mm_abs_epi8(x1), _mm_sign_epi8(w1, x1)), ones));
}

/* One row against one token (G = 32): groups in fours, the rest one at a time. */
static float dot_row(const QMat *w, const uint8_t *row, const uint16_t *sw, const uint8_t *act, const ActLayout *L) {
    const int8_t *q = (const int8_t *)(act + L->off_q);
    const float *s = (const float *)(act + L->off_s);
    const int32_t *sum = (const int32_t *)(act + L->off_sum);
    const int int4 = w->fmt == FMT_INT4;
    __m128 f = _mm_setzero_ps();
    int64_t g = 0;
    for (; g + 4 <= w->ng; g += 4) {
        __m128i t = sum4(group_lanes(w, row, g, q), group_lanes(w, row, g + 1, q), group_lanes(w, row, g + 2, q),
                         group_lanes(w, row, g + 3, q));
        if (int4) t = _mm_sub_epi32(t, _mm_slli_epi32(_mm_loadu_si128((const __m128i *)(sum + g)), 3));  /* u = q + 8 */
        const __m128 sc = _mm_mul_ps(f16x4(sw + g), _mm_loadu_ps(s + g));
        f = _mm_add_ps(f, _mm_mul_ps(_mm_cvtepi32_ps(t), sc));
    }
    float out[4];
    _mm_storeu_ps(out, f);
    float acc = (out[0] + out[1]) + (out[2] + out[3]);
    for (; g < w->ng; g++) {
        int32_t l[4];
        _mm_storeu_si128((__m128i *)l, group_lanes(w, row, g, q));
        const int32_t isum = l[0] + l[1] + l[2] + l[3] - (int4 ? 8 * sum[g] : 0);
        acc += ((float)isum * s[g]) * f16_to_f32(sw[g]);
    }
    return acc;
}

static void qgemm_ssse3(float *y, int64_t ldy, const QMat *w, const ActLayout *L, const uint8_t *act,
                        int64_t nt, int64_t r0, int64_t r1, uint8_t *scratch) {
    if (w->group != 32) { qgemm_scalar(y, ldy, w, L, act, nt, r0, r1, scratch); return; }
    const int64_t ahead = prefetch_rows(w);
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = w->data + r * w->row_bytes;
        for (int64_t b = 0; b < w->row_bytes; b += 64) prefetch_l2(row + PREFETCH_BYTES + b);
        prefetch_scales(w, r + ahead);
        for (int64_t t = 0; t < nt; t++) y[t * ldy + r] = dot_row(w, row, w->scales + r * w->ng, act + t * L->stride, L);
    }
}

const Kernels kernels_ssse3 = {"ssse3", quantize_scalar, qgemm_ssse3, fgemm_scalar, attn_scalar, silu_mul_scalar,
                               2048, 1024};  /* L1 distance unused */
