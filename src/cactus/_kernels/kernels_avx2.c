/* AVX2 kernels (compiled with -mavx2 -mfma -mf16c). Integer dots use vpmaddubsw + vpmaddwd:
 * int4 decode multiplies the nibble u (0..15, unsigned) by x and takes 8 * sum(x) back per lane,
 * int4 prefill multiplies q = u - 8 by x + 128 (unsigned) and takes 128 * sum(q) back; int8
 * uses the sign trick (|x| times w with x's sign) so the int16 pair sums cannot saturate.
 * Group size 32 runs here; other group sizes use the scalar file. Tokens reuse a row from L1.
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kernels.h"

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float hmax8(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Per 128-bit half, the sums of the 4 dwords of a, b, c and d, in that order: what
 * hadd(hadd(a, b), hadd(c, d)) gives, by unpacks and adds. vphaddd ymm issues about one per 2
 * cycles on Zen 3, and three per 8 groups and row cost int4 decode 7 % and int8 4 % of its
 * in-cache rate (benchmarks/c/kernel_rate.c, 8 alternations). */
static inline __m256i sum4x4(__m256i a, __m256i b, __m256i c, __m256i d) {
    const __m256i ab = _mm256_add_epi32(_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b));  /* a02 b02 a13 b13 */
    const __m256i cd = _mm256_add_epi32(_mm256_unpacklo_epi32(c, d), _mm256_unpackhi_epi32(c, d));
    return _mm256_add_epi32(_mm256_unpacklo_epi64(ab, cd), _mm256_unpackhi_epi64(ab, cd));
}

/* ------------------------------------------------------------------ activations */

/* x[0..min(n, 8)) as 8 lanes, zeros past n (n <= 0: all zeros). */
static inline __m256 load_upto8(const float *x, int64_t n) {
    if (n >= 8) return _mm256_loadu_ps(x);
    float buf[8] = {0};
    for (int64_t i = 0; i < n; i++) buf[i] = x[i];
    return _mm256_loadu_ps(buf);
}

/* act_extras (kernels_scalar.c) for G = 32, as extras_avx512 (kernels_avx512.c) with 256-bit halves:
 * int4 a block of 4 groups (64 packed weight bytes), int8 one group at a time; other groups and group
 * sizes go to the scalar loop. */
static void extras_avx2(const ActLayout *L, uint8_t *act, int64_t g0, int64_t g1) {
    if (extras_not_simd(L, act, g0, g1, L->fmt == FMT_INT4 ? 4 : 1)) return;
    const int8_t *q = (const int8_t *)(act + L->off_q);
    const float *s = (const float *)(act + L->off_s);
    int32_t *corr = (int32_t *)(act + L->off_corr);
    float *sl = (float *)(act + L->off_sl);
    const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
    int64_t g = g0;
    if (L->fmt == FMT_INT4) {
        const __m256i first = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
        const __m256i second = _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3);
        for (; g + 4 <= g1; g += 4) {
            /* groups g..g+3: the first 16 x's of each meet the low nibbles, the last 16 the high */
            const int64_t b = g / 4;  /* block: 16 lanes of corr and sl */
            __m256i z[4];
            for (int i = 0; i < 4; i++) z[i] = _mm256_loadu_si256((const __m256i *)(q + 32 * (g + i)));
            const __m256i lo[2] = {_mm256_permute2x128_si256(z[0], z[1], 0x20), _mm256_permute2x128_si256(z[2], z[3], 0x20)};
            const __m256i hi[2] = {_mm256_permute2x128_si256(z[0], z[1], 0x31), _mm256_permute2x128_si256(z[2], z[3], 0x31)};
            int8_t *qn = (int8_t *)(act + L->off_qn) + 128 * b;
            const __m256 sg = _mm256_castps128_ps256(_mm_loadu_ps(s + g));
            for (int h = 0; h < 2; h++) {
                _mm256_storeu_si256((__m256i *)(qn + 32 * h), lo[h]);
                _mm256_storeu_si256((__m256i *)(qn + 64 + 32 * h), hi[h]);
                const __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(ones8, lo[h]), _mm256_maddubs_epi16(ones8, hi[h]));
                const __m256i sums = _mm256_madd_epi16(pairs, ones16);  /* lane: 4 low-nibble x's + 4 high */
                const __m256i c = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(sums, 3));  /* -8 sum */
                _mm256_storeu_si256((__m256i *)(corr + 16 * b + 8 * h), c);
                _mm256_storeu_ps(sl + 16 * b + 8 * h, _mm256_permutevar8x32_ps(sg, h ? second : first));
            }
        }
    } else {
        for (; g < g1; g++) {  /* 8 lanes of 4 x's per group */
            const __m256i z = _mm256_loadu_si256((const __m256i *)(q + 32 * g));
            const __m256i sums = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, z), ones16);
            const __m256i c = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(sums, 7));  /* -128 sum */
            _mm256_storeu_si256((__m256i *)(corr + 8 * g), c);
            _mm256_storeu_ps(sl + 8 * g, _mm256_set1_ps(s[g]));
        }
    }
    if (g < g1) act_extras(L, act, g, g1);
}

static void quantize_avx2(const ActLayout *L, uint8_t *act, const float *x, int64_t g0, int64_t g1) {
    const int64_t G = L->group, groups_q = L->kpa / G;
    int8_t *q = (int8_t *)(act + L->off_q);
    float *s = (float *)(act + L->off_s);
    int32_t *sum = (int32_t *)(act + L->off_sum);
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    for (int64_t g = g0; g < g1; g++) {
        if (g >= groups_q) { s[g] = 0.0f; sum[g] = 0; continue; }
        __m256 amax = _mm256_setzero_ps();
        for (int64_t j = 0; j < G; j += 8) {
            int64_t e = g * G + j, n = L->k - e;
            const __m256 v = load_upto8(x + e, n);
            amax = _mm256_max_ps(amax, _mm256_and_ps(v, absmask));
        }
        const float d = hmax8(amax) / 127.0f;
        const __m256 dv = _mm256_set1_ps(d);
        if (G == 32 && (g + 1) * G <= L->k && d != 0.0f) {  /* a full group: packed to bytes in vectors */
            __m256i r[4];
            for (int j = 0; j < 4; j++) {
                const __m256 v = _mm256_loadu_ps(x + g * G + 8 * j);
                r[j] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_div_ps(v, dv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
                r[j] = _mm256_max_epi32(_mm256_min_epi32(r[j], _mm256_set1_epi32(127)), _mm256_set1_epi32(-127));
            }
            const __m256i t = _mm256_add_epi32(_mm256_add_epi32(r[0], r[1]), _mm256_add_epi32(r[2], r[3]));
            __m128i t4 = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
            t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0x4E));
            t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0xB1));
            /* packs work within 128-bit lanes: bytes come out as r0[0:4] r1[0:4] r2[0:4] r3[0:4] | r0[4:8] ... */
            const __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(r[0], r[1]), _mm256_packs_epi32(r[2], r[3]));
            _mm256_storeu_si256((__m256i *)(q + g * G), _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
            s[g] = d;
            sum[g] = _mm_cvtsi128_si32(t4);
            continue;
        }
        int32_t acc = 0;
        for (int64_t j = 0; j < G; j += 8) {
            int64_t e = g * G + j, n = L->k - e;
            int32_t qi[8] = {0};
            if (d != 0.0f && n > 0) {
                const __m256 v = load_upto8(x + e, n);
                __m256i r = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_div_ps(v, dv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
                r = _mm256_max_epi32(_mm256_min_epi32(r, _mm256_set1_epi32(127)), _mm256_set1_epi32(-127));
                _mm256_storeu_si256((__m256i *)qi, r);
            }
            for (int i = 0; i < 8; i++) { q[e + i] = (int8_t)qi[i]; acc += qi[i]; }
        }
        s[g] = d;
        sum[g] = acc;
    }
    act_unsigned(L, act, g0, g1 < groups_q ? g1 : groups_q);
    extras_avx2(L, act, g0, g1 < groups_q ? g1 : groups_q);
}

/* ------------------------------------------------------------------ integer rows, G = 32 */

/* int32 per 4-byte lane: the nibbles lo (unsigned) times x_lo plus hi times x_hi (signed): AVX2
 * pairs them in int16 (at most 2 * 2 * 15 * 127, no saturation) and widens; AVX-VNNI sums the
 * products into the lane with two vpdpbusd. */
static inline __m256i dot_nibbles(__m256i lo, __m256i xlo, __m256i hi, __m256i xhi) {
#ifdef CACTUS_AVXVNNI
    return _mm256_dpbusd_avx_epi32(_mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), lo, xlo), hi, xhi);
#else
    return _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(lo, xlo), _mm256_maddubs_epi16(hi, xhi)),
                             _mm256_set1_epi16(1));
#endif
}

/* int4, groups [g0, ng) of one row: 32 packed bytes (2 groups) per step; lanes as in kernels.h
 * (qn, corr, sl). g0 is even. */
static float dot_int4(const uint8_t *row, const uint16_t *sw, int64_t g0, int64_t ng, const uint8_t *act,
                      const ActLayout *L) {
    const int8_t *qn = (const int8_t *)(act + L->off_qn);
    const int32_t *corr = (const int32_t *)(act + L->off_corr);
    const float *sl = (const float *)(act + L->off_sl);
    const __m256i m0f = _mm256_set1_epi8(0x0F);
    const __m256i lo_idx = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
    __m256 f = _mm256_setzero_ps();
    uint8_t tail[32];
    for (int64_t g = g0; g < ng; g += 2) {
        const int64_t p = 16 * g, b = p / 64, h = (p % 64) / 32;  /* packed byte, 64-byte block, half */
        __m256i w;
        if (g + 2 <= ng) w = _mm256_loadu_si256((const __m256i *)(row + p));
        else { memset(tail, 0, 32); memcpy(tail, row + p, 16); w = _mm256_loadu_si256((const __m256i *)tail); }
        __m256i lo = _mm256_and_si256(w, m0f), hi = _mm256_and_si256(_mm256_srli_epi16(w, 4), m0f);
        __m256i xlo = _mm256_loadu_si256((const __m256i *)(qn + 128 * b + 32 * h));
        __m256i xhi = _mm256_loadu_si256((const __m256i *)(qn + 128 * b + 64 + 32 * h));
        __m256i acc = _mm256_add_epi32(dot_nibbles(lo, xlo, hi, xhi), _mm256_loadu_si256((const __m256i *)(corr + 16 * b + 8 * h)));
        uint32_t two;
        memcpy(&two, sw + g, g + 2 <= ng ? 4 : 2);
        if (g + 2 > ng) two &= 0xFFFF;
        __m256 s2 = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_cvtph_ps(_mm_cvtsi32_si128((int)two))), lo_idx);
        __m256 sc = _mm256_mul_ps(s2, _mm256_loadu_ps(sl + 16 * b + 8 * h));
        f = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc), sc, f);
    }
    return hsum8(f);
}

/* Two int4 rows against one token, 8 groups (4 steps of 32 packed bytes) per iteration; the
 * activation loads are shared. A step's lanes 0-3 belong to group 2j and 4-7 to 2j + 1; the four
 * steps' int32 lanes are summed per group by sum4x4 (groups come out as 0 2 4 6 | 1 3 5 7,
 * put back in order by one permute), so the 8 * sum(x) correction, the conversion and the scaling
 * run once per 8 groups instead of once per step. The last < 8 groups: dot_int4. */
static void dot_int4_x2(float y[2], const uint8_t *ra, const uint8_t *rb, const uint16_t *swa, const uint16_t *swb,
                        int64_t ng, const uint8_t *act, const ActLayout *L) {
    const int8_t *qn = (const int8_t *)(act + L->off_qn);
    const float *sx = (const float *)(act + L->off_s);
    const int32_t *sum = (const int32_t *)(act + L->off_sum);
    const __m256i m0f = _mm256_set1_epi8(0x0F);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    __m256 fa = _mm256_setzero_ps(), fb = _mm256_setzero_ps();
    int64_t g = 0;
    for (; g + 8 <= ng; g += 8) {
        __m256i ia[4], ib[4];
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            const int64_t p = 16 * g + 32 * j, b = g / 4 + j / 2, h = j % 2;
            if (h == 0) {
                prefetch_l2(ra + p + PREFETCH_BYTES);
                prefetch_l2(rb + p + PREFETCH_BYTES);
            }
            const __m256i xlo = _mm256_loadu_si256((const __m256i *)(qn + 128 * b + 32 * h));
            const __m256i xhi = _mm256_loadu_si256((const __m256i *)(qn + 128 * b + 64 + 32 * h));
            const __m256i wa = _mm256_loadu_si256((const __m256i *)(ra + p));
            const __m256i wb = _mm256_loadu_si256((const __m256i *)(rb + p));
            ia[j] = dot_nibbles(_mm256_and_si256(wa, m0f), xlo, _mm256_and_si256(_mm256_srli_epi16(wa, 4), m0f), xhi);
            ib[j] = dot_nibbles(_mm256_and_si256(wb, m0f), xlo, _mm256_and_si256(_mm256_srli_epi16(wb, 4), m0f), xhi);
        }
        const __m256i corr = _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)(sum + g)), 3);  /* u = q + 8 */
        const __m256 s8 = _mm256_loadu_ps(sx + g);
        const __m256i ta = _mm256_permutevar8x32_epi32(sum4x4(ia[0], ia[1], ia[2], ia[3]), order);
        const __m256i tb = _mm256_permutevar8x32_epi32(sum4x4(ib[0], ib[1], ib[2], ib[3]), order);
        const __m256 sa8 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(swa + g)));
        const __m256 sb8 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(swb + g)));
        fa = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(ta, corr)), _mm256_mul_ps(sa8, s8), fa);
        fb = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(tb, corr)), _mm256_mul_ps(sb8, s8), fb);
    }
    y[0] = hsum8(fa);
    y[1] = hsum8(fb);
    if (g < ng) {
        y[0] += dot_int4(ra, swa, g, ng, act, L);
        y[1] += dot_int4(rb, swb, g, ng, act, L);
    }
}

/* int8: one group (32 bytes) per vector, |x| * (w with x's sign). 8 groups per iteration: their
 * int32 lanes are reduced to 8 group sums, in order, by two sum4x4 and one fold of the 128-bit
 * halves, then converted and scaled once (was: a convert, a scalar scale and an fma per group).
 * The last < 8 groups one at a time. */
/* 8 int32 lanes, each the sum of 4 products of one int8 group (32 bytes of w and x) */
static inline __m256i dot32_int8(const uint8_t *w, const int8_t *x) {
    const __m256i wv = _mm256_loadu_si256((const __m256i *)w), xv = _mm256_loadu_si256((const __m256i *)x);
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(xv), _mm256_sign_epi8(wv, xv)), _mm256_set1_epi16(1));
}

/* dot_int8's last ng - g (< 8) groups, one at a time */
static inline float dot_int8_tail(const uint8_t *row, const uint16_t *sw, int64_t g, int64_t ng, const int8_t *q,
                                  const float *s) {
    __m256 ft = _mm256_setzero_ps();
    for (; g < ng; g++)
        ft = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot32_int8(row + 32 * g, q + 32 * g)), _mm256_set1_ps(_cvtsh_ss(sw[g]) * s[g]), ft);
    return hsum8(ft);
}

static float dot_int8(const uint8_t *row, const uint16_t *sw, int64_t ng, const uint8_t *act, const ActLayout *L) {
    const int8_t *q = (const int8_t *)(act + L->off_q);
    const float *s = (const float *)(act + L->off_s);
    __m256 f = _mm256_setzero_ps();
    int64_t g = 0;
    for (; g + 8 <= ng; g += 8) {
        __m256i v[8];
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++) v[k] = dot32_int8(row + 32 * (g + k), q + 32 * (g + k));
        /* [g0 g1 g2 g3 | g0 g1 g2 g3] from lanes 0-3 and 4-7 of each group, and the same for g4..g7 */
        const __m256i a = sum4x4(v[0], v[1], v[2], v[3]);
        const __m256i b = sum4x4(v[4], v[5], v[6], v[7]);
        const __m256i t = _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
        const __m256 sc = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sw + g))), _mm256_loadu_ps(s + g));
        f = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), sc, f);
    }
    return hsum8(f) + dot_int8_tail(row, sw, g, ng, q, s);
}

/* ------------------------------------------------------------------ prefill: packed panels */

/* Prefill (nt >= PANEL_MIN_T tokens, G = 32): 8 rows are packed into a panel where each 32-bit lane holds 4
 * weights of one row (int4 unpacked to the signed q = u - 8, one byte each; int8 as stored), group-major: vector c of
 * group g holds elements 4c..4c+3 of the group for rows 0..7. Two such panels (16 rows) run against 4 tokens
 * (int4; int8, and int4's last 1-3 tokens, 2, a last odd one alone) at a time: vpmaddubsw of each panel's vector with a
 * broadcast of the token's 4 activation bytes, so each broadcast serves two vpmaddubsw. int4 takes
 * the activations unsigned (qu = q + 128), sums a group's 8 products in int16 (|sum| <= 8 * 2 *
 * 255 * 8 = 32640, no saturation), widens once by vpmaddwd, and takes back 128 * sum(q) times the
 * weight scale (PD: per row and group, from the pack, not per token) in the same vfmsub that
 * scales; int8 uses the sign trick of dot_int8 and widens every vector. One lane per row: no
 * horizontal sums. */
/* v[i] = 8 dwords of row i -> v[c] = dword c of rows 0..7 (unpacks within 128-bit lanes, then
 * the lanes swapped across). */
static inline void transpose8_epi32(__m256i v[8]) {
    __m256i t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_epi32(v[i], v[i + 1]);      /* d0 d1 of rows i, i+1 | d4 d5 */
        t[i + 1] = _mm256_unpackhi_epi32(v[i], v[i + 1]);  /* d2 d3 | d6 d7 */
    }
    for (int h = 0; h < 8; h += 4)  /* rows h..h+3: u[h + k] = dword k | dword k + 4 */
        for (int k = 0; k < 2; k++) {
            u[h + 2 * k] = _mm256_unpacklo_epi64(t[h + k], t[h + 2 + k]);
            u[h + 2 * k + 1] = _mm256_unpackhi_epi64(t[h + k], t[h + 2 + k]);
        }
    for (int k = 0; k < 4; k++) {
        v[k] = _mm256_permute2x128_si256(u[k], u[4 + k], 0x20);
        v[k + 4] = _mm256_permute2x128_si256(u[k], u[4 + k], 0x31);
    }
}

static void pack_panel8(uint8_t *P, float *PS, float *PD, const QMat *w, int64_t r0, int64_t r1) {
    const int64_t ng = w->ng;
    const uint8_t *rows[8];
    const uint16_t *sc[8];
    for (int i = 0; i < 8; i++) {
        const int64_t r = r0 + i < r1 ? r0 + i : r1 - 1;  /* a short panel repeats its last row */
        rows[i] = w->data + r * w->row_bytes;
        sc[i] = w->scales + r * ng;
    }
    if (w->fmt == FMT_INT4) {
        /* Dword d of a row's 16 packed bytes holds elements 4d..4d+3 (low nibbles) and 4d+16..4d+19
         * (high nibbles): vectors d and d + 4 of the panel. So the packed dwords are transposed
         * (rows i and i + 4 share a register, one 4 x 4 transpose per 128-bit half puts row i in
         * lane i), then split into nibbles: half the shuffles of unpacking first. */
        const __m256i m0f = _mm256_set1_epi8(0x0F), eight = _mm256_set1_epi8(8);
        for (int64_t g = 0; g < ng; g++) {
            __m256i v[4], qs = _mm256_setzero_si256();  /* qs: the group's 8 vectors summed, |byte| <= 64 */
            for (int i = 0; i < 4; i++)
                v[i] = _mm256_loadu2_m128i((const __m128i *)(rows[i + 4] + 16 * g), (const __m128i *)(rows[i] + 16 * g));
            const __m256i t0 = _mm256_unpacklo_epi32(v[0], v[1]), t1 = _mm256_unpackhi_epi32(v[0], v[1]);
            const __m256i t2 = _mm256_unpacklo_epi32(v[2], v[3]), t3 = _mm256_unpackhi_epi32(v[2], v[3]);
            const __m256i u[4] = {_mm256_unpacklo_epi64(t0, t2), _mm256_unpackhi_epi64(t0, t2),
                                  _mm256_unpacklo_epi64(t1, t3), _mm256_unpackhi_epi64(t1, t3)};
            for (int d = 0; d < 4; d++) {
                const __m256i lo = _mm256_sub_epi8(_mm256_and_si256(u[d], m0f), eight);
                const __m256i hi = _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(u[d], 4), m0f), eight);
                _mm256_storeu_si256((__m256i *)(P + (g * 8 + d) * 32), lo);
                _mm256_storeu_si256((__m256i *)(P + (g * 8 + d + 4) * 32), hi);
                qs = _mm256_add_epi8(qs, _mm256_add_epi8(lo, hi));
            }
            /* lane i: 128 * (sum of row i's q in group g); times the scale below */
            const __m256i sq = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), qs), _mm256_set1_epi16(1));
            _mm256_storeu_ps(PD + 8 * g, _mm256_cvtepi32_ps(_mm256_slli_epi32(sq, 7)));
        }
    } else {
        for (int64_t g = 0; g < ng; g++) {
            __m256i v[8];  /* row i's 32 weights of group g */
            for (int i = 0; i < 8; i++) v[i] = _mm256_loadu_si256((const __m256i *)(rows[i] + 32 * g));
            transpose8_epi32(v);
            for (int c = 0; c < 8; c++) _mm256_storeu_si256((__m256i *)(P + (g * 8 + c) * 32), v[c]);
        }
    }
    int64_t g = 0;
    for (; g + 8 <= ng; g += 8) {  /* scales: (8 rows, 8 groups) f16 -> (8 groups, 8 rows) f32 */
        __m256i v[8];
        for (int i = 0; i < 8; i++)
            v[i] = _mm256_castps_si256(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sc[i] + g))));
        transpose8_epi32(v);
        for (int j = 0; j < 8; j++) _mm256_storeu_si256((__m256i *)(PS + (g + j) * 8), v[j]);
    }
    for (; g < ng; g++)
        for (int i = 0; i < 8; i++) PS[g * 8 + i] = _cvtsh_ss(sc[i][g]);
    if (w->fmt == FMT_INT4)  /* exact: an f16 scale (11 bits) times at most 2^15 in 9 bits */
        for (g = 0; g < ng; g++) _mm256_storeu_ps(PD + 8 * g, _mm256_mul_ps(_mm256_loadu_ps(PD + 8 * g), _mm256_loadu_ps(PS + 8 * g)));
}

/* y[0..rows) = the first rows lanes of v (rows <= 8) */
static inline void store_rows(float *y, __m256 v, int64_t rows) {
    if (rows == 8) { _mm256_storeu_ps(y, v); return; }
    float out[8];
    _mm256_storeu_ps(out, v);
    memcpy(y, out, (size_t)rows * 4);
}

/* A 16-row, 2-token tile's results: f<token><half> to rows [0, rows) of tokens 0..tb-1 of y */
static inline void store16x2(float *y, int64_t ldy, int64_t rows, int tb, __m256 f00, __m256 f01, __m256 f10, __m256 f11) {
    const int64_t r0 = rows < 8 ? rows : 8, r1 = rows - r0;
    store_rows(y, f00, r0);
    if (r1 > 0) store_rows(y + 8, f01, r1);
    if (tb == 2) {
        store_rows(y + ldy, f10, r0);
        if (r1 > 0) store_rows(y + ldy + 8, f11, r1);
    }
}

/* The panel after one ending at row re (at most rows rows, none past r1): its scales are
 * prefetched now, its weight bytes (*pf, the return value) by the tile, a slice per group. */
static int64_t next_panel(const QMat *w, int64_t re, int64_t r1, int64_t rows, const uint8_t **pf) {
    const int64_t nn = r1 - re < rows ? r1 - re : rows;
    for (int64_t n = re; n < re + nn; n++) prefetch_scales(w, n);
    *pf = w->data + re * w->row_bytes;
    return nn * w->row_bytes;
}

/* The next panel's weight rows [p, end), fetched into L2 while a tile runs, `per` lines per group
 * of its first token block. A prefill chunk's panels come cold from DRAM (MoE experts especially:
 * read once per layer, by few tokens), and the pack reads 8 rows 16 or 32 bytes at a time, which
 * the hardware prefetchers follow poorly. All at once before the tile, the prefetches queued and
 * stalled its loads (no gain); spread over half or all of its token blocks they gained less. */
typedef struct { const uint8_t *p, *end; int64_t per; } Ahead;

static inline Ahead ahead_of(const uint8_t *pf, int64_t bytes, int64_t ng) {
    return (Ahead){pf, pf + bytes, ((bytes + 63) / 64 + ng - 1) / ng};
}

static inline void ahead_step(Ahead *a) {
    for (int64_t k = 0; k < a->per && a->p < a->end; k++, a->p += 64) prefetch_l2(a->p);
}

/* The int4 tiles' products (AT&T operand order: signed weights w, unsigned activations x): h = or
 * h += the dot of x and w, 4 bytes per 32-bit lane of a row. AVX2: vpmaddubsw into int16 pair
 * sums, added up in int16 over a group (t a scratch register), widened once by vpmaddwd (WIDEN).
 * AVX-VNNI (this file compiled again as kernels_avxvnni.c): one vpdpbusd, the 4 products summed
 * straight into the row's int32 lane, so a step is half the instructions and nothing to widen. */
#ifdef CACTUS_AVXVNNI
#define DOT_SET(x, w, h) "vpxor %[" #h "], %[" #h "], %[" #h "]\n\t" DOT_ADD(x, w, h)
#define DOT_ADD(x, w, h) "%{vex%} vpdpbusd %[" #w "], %[" #x "], %[" #h "]\n\t"
#define WIDEN(h) (h)
#else
#define DOT_SET(x, w, h) "vpmaddubsw %[" #w "], %[" #x "], %[" #h "]\n\t"
#define DOT_ADD(x, w, h) "vpmaddubsw %[" #w "], %[" #x "], %[t]\n\t" "vpaddw %[t], %[" #h "], %[" #h "]\n\t"
#define WIDEN(h) _mm256_madd_epi16((h), _mm256_set1_epi16(1))
#endif

/* One step of a group in panel16_int4: vector c of both panels (a, b) and the 4 activation bytes
 * of both tokens (u, v), 32 bytes and 4 bytes further each step; the activations are the unsigned
 * operand (qu = q + 128), the weights the signed one. */
#define P16_LOAD(wo, xo) "vmovdqa " #wo "(%[w0]), %[a]\n\t" "vmovdqa " #wo "(%[w1]), %[b]\n\t" \
    "vpbroadcastd " #xo "(%[x0]), %[u]\n\t" "vpbroadcastd " #xo "(%[x1]), %[v]\n\t"
#define P16_FIRST DOT_SET(u, a, h00) DOT_SET(u, b, h01) DOT_SET(v, a, h10) DOT_SET(v, b, h11)
#define P16_STEP(wo, xo) P16_LOAD(wo, xo) DOT_ADD(u, a, h00) DOT_ADD(u, b, h01) DOT_ADD(v, a, h10) DOT_ADD(v, b, h11)

/* f + (the int4 group sums h, widened: sum q (x + 128)) * sw - d, times the activation's scale xs.
 * d = 128 sw sum(q) (the pack's PD, exact) takes the offset back inside one rounding: the result
 * is the spec's sw * sum(q x) rounded once, then scaled by xs. */
static inline __m256 fold_int4(__m256 f, __m256i h, __m256 sw, __m256 d, __m256 xs) {
    const __m256 v = _mm256_cvtepi32_ps(WIDEN(h));
    return _mm256_fmadd_ps(_mm256_fmsub_ps(v, sw, d), xs, f);
}

/* int4 on 16 rows (two 8-row panels, P and P + 8 * 32 * ng) by 2 tokens (nt even), or by the
 * one token left (nt == 1: a tile of its own, rather than the pair with that token twice): what
 * panel16x4_int4 (below) leaves. A group's 8 steps are written in asm: from intrinsics, gcc hoisted
 * the loads, ran out of registers and loaded each weight vector twice (and an earlier intrinsics
 * version had its adds reassociated into a tree and spilled, a third of the speed). */
#define P1_STEP(wo, xo) "vmovdqa " #wo "(%[w0]), %[a]\n\t" "vmovdqa " #wo "(%[w1]), %[b]\n\t" \
    "vpbroadcastd " #xo "(%[x0]), %[u]\n\t" DOT_ADD(u, a, h00) DOT_ADD(u, b, h01)
#define P1_FIRST "vmovdqa (%[w0]), %[a]\n\t" "vmovdqa (%[w1]), %[b]\n\t" "vpbroadcastd (%[x0]), %[u]\n\t" \
    DOT_SET(u, a, h00) DOT_SET(u, b, h01)

static void panel16_int4(float *y, int64_t ldy, const uint8_t *P, const float *PS, const float *PD, int64_t ng,
                         const ActLayout *L, const uint8_t *act, int64_t nt, int64_t rows, Ahead *ah) {
    const uint8_t *p1 = P + 8 * 32 * ng;
    for (int64_t t0 = 0; t0 < nt; t0 += 2) {
        const int tb = nt - t0 < 2 ? 1 : 2;
        const uint8_t *a0 = act + t0 * L->stride, *a1 = act + (t0 + tb - 1) * L->stride;
        const uint8_t *q0 = a0 + L->off_qu, *q1 = a1 + L->off_qu;
        const float *s0 = (const float *)(a0 + L->off_s), *s1 = (const float *)(a1 + L->off_s);
        __m256 f00 = _mm256_setzero_ps(), f01 = f00, f10 = f00, f11 = f00;  /* f<token><half> */
        for (int64_t g = 0; g < ng; g++) {
            ahead_step(ah);
            __m256i h00, h01, h10, h11, a, b, u, v, t;
            const __m256 sw0 = _mm256_loadu_ps(PS + 8 * g), sw1 = _mm256_loadu_ps(PS + 8 * (ng + g));
            const __m256 d0 = _mm256_loadu_ps(PD + 8 * g), d1 = _mm256_loadu_ps(PD + 8 * (ng + g));
            const __m256 x0s = _mm256_set1_ps(s0[g]);
            if (tb == 1) {
                __asm__(P1_FIRST P1_STEP(32, 4) P1_STEP(64, 8) P1_STEP(96, 12) P1_STEP(128, 16)
                        P1_STEP(160, 20) P1_STEP(192, 24) P1_STEP(224, 28)
                    : [h00] "=&x"(h00), [h01] "=&x"(h01), [a] "=&x"(a), [b] "=&x"(b), [u] "=&x"(u), [t] "=&x"(t)
                    : [w0] "r"(P + 256 * g), [w1] "r"(p1 + 256 * g), [x0] "r"(q0 + 32 * g)
                    : "memory");
                f00 = fold_int4(f00, h00, sw0, d0, x0s);
                f01 = fold_int4(f01, h01, sw1, d1, x0s);
                continue;
            }
            __asm__(P16_LOAD(0, 0) P16_FIRST P16_STEP(32, 4) P16_STEP(64, 8) P16_STEP(96, 12) P16_STEP(128, 16)
                    P16_STEP(160, 20) P16_STEP(192, 24) P16_STEP(224, 28)
                : [h00] "=&x"(h00), [h01] "=&x"(h01), [h10] "=&x"(h10), [h11] "=&x"(h11),
                  [a] "=&x"(a), [b] "=&x"(b), [u] "=&x"(u), [v] "=&x"(v), [t] "=&x"(t)
                : [w0] "r"(P + 256 * g), [w1] "r"(p1 + 256 * g), [x0] "r"(q0 + 32 * g), [x1] "r"(q1 + 32 * g)
                : "memory");
            const __m256 x1s = _mm256_set1_ps(s1[g]);
            f00 = fold_int4(f00, h00, sw0, d0, x0s);
            f01 = fold_int4(f01, h01, sw1, d1, x0s);
            f10 = fold_int4(f10, h10, sw0, d0, x1s);
            f11 = fold_int4(f11, h11, sw1, d1, x1s);
        }
        store16x2(y + t0 * ldy, ldy, rows, tb, f00, f01, f10, f11);
    }
}

/* One step of a group in panel16x4_int4: vector c of both panels (a, b), then for each of the 4
 * tokens its 4 activation bytes broadcast (u) and multiplied with both. */
#define Q16_TOK(xo, x, h0, h1) "vpbroadcastd " #xo "(%[" #x "]), %[u]\n\t" DOT_ADD(u, a, h0) DOT_ADD(u, b, h1)
#define Q16_FTOK(x, h0, h1) "vpbroadcastd (%[" #x "]), %[u]\n\t" DOT_SET(u, a, h0) DOT_SET(u, b, h1)
#define Q16_FIRST "vmovdqa (%[w0]), %[a]\n\t" "vmovdqa (%[w1]), %[b]\n\t" \
    Q16_FTOK(x0, h00, h01) Q16_FTOK(x1, h10, h11) Q16_FTOK(x2, h20, h21) Q16_FTOK(x3, h30, h31)
#define Q16_STEP(wo, xo) "vmovdqa " #wo "(%[w0]), %[a]\n\t" "vmovdqa " #wo "(%[w1]), %[b]\n\t" \
    Q16_TOK(xo, x0, h00, h01) Q16_TOK(xo, x1, h10, h11) Q16_TOK(xo, x2, h20, h21) Q16_TOK(xo, x3, h30, h31)

/* int4 on 16 rows by 4 tokens (nt a multiple of 4): each weight vector serves 4 tokens and each
 * broadcast 2 rows' vectors, 0.75 loads per vpmaddubsw against 1 for 16 x 2. The 8 float
 * accumulators do not fit beside the asm's 12 registers, so most live in memory (f): a load and a
 * store each per group, against 16 loads saved. */
static void panel16x4_int4(float *y, int64_t ldy, const uint8_t *P, const float *PS, const float *PD, int64_t ng,
                           const ActLayout *L, const uint8_t *act, int64_t nt, int64_t rows, Ahead *ah) {
    const uint8_t *p1 = P + 8 * 32 * ng;
    for (int64_t t0 = 0; t0 + 4 <= nt; t0 += 4) {
        const uint8_t *q[4];
        const float *s[4];
        for (int k = 0; k < 4; k++) {
            q[k] = act + (t0 + k) * L->stride + L->off_qu;
            s[k] = (const float *)(act + (t0 + k) * L->stride + L->off_s);
        }
        __m256 f[4][2];
        for (int k = 0; k < 4; k++) f[k][0] = f[k][1] = _mm256_setzero_ps();
        for (int64_t g = 0; g < ng; g++) {
            ahead_step(ah);
            __m256i h[4][2], wa, wb, u, t;
            __asm__(Q16_FIRST Q16_STEP(32, 4) Q16_STEP(64, 8) Q16_STEP(96, 12) Q16_STEP(128, 16)
                    Q16_STEP(160, 20) Q16_STEP(192, 24) Q16_STEP(224, 28)
                : [h00] "=&x"(h[0][0]), [h01] "=&x"(h[0][1]), [h10] "=&x"(h[1][0]), [h11] "=&x"(h[1][1]),
                  [h20] "=&x"(h[2][0]), [h21] "=&x"(h[2][1]), [h30] "=&x"(h[3][0]), [h31] "=&x"(h[3][1]),
                  [a] "=&x"(wa), [b] "=&x"(wb), [u] "=&x"(u), [t] "=&x"(t)
                : [w0] "r"(P + 256 * g), [w1] "r"(p1 + 256 * g), [x0] "r"(q[0] + 32 * g), [x1] "r"(q[1] + 32 * g),
                  [x2] "r"(q[2] + 32 * g), [x3] "r"(q[3] + 32 * g)
                : "memory");
            const __m256 sw0 = _mm256_loadu_ps(PS + 8 * g), sw1 = _mm256_loadu_ps(PS + 8 * (ng + g));
            const __m256 d0 = _mm256_loadu_ps(PD + 8 * g), d1 = _mm256_loadu_ps(PD + 8 * (ng + g));
            for (int k = 0; k < 4; k++) {
                const __m256 xs = _mm256_set1_ps(s[k][g]);
                f[k][0] = fold_int4(f[k][0], h[k][0], sw0, d0, xs);
                f[k][1] = fold_int4(f[k][1], h[k][1], sw1, d1, xs);
            }
        }
        store16x2(y + t0 * ldy, ldy, rows, 2, f[0][0], f[0][1], f[1][0], f[1][1]);
        store16x2(y + (t0 + 2) * ldy, ldy, rows, 2, f[2][0], f[2][1], f[3][0], f[3][1]);
    }
}

/* One step of a group in panel16_int8, in asm for the reason given at panel16_int4: vector c of
 * both panels (a, b); for each token, its 4 activation bytes broadcast (u), |x| (au), w with x's
 * sign (t), vpmaddubsw, widened by vpmaddwd with ones and added to (or, first, set as) h. */
#define P16_SET(t, h) "vpmaddwd %[ones], %[" #t "], %[" #h "]\n\t"
#define P16_ADD(t, h) "vpmaddwd %[ones], %[" #t "], %[" #t "]\n\t" "vpaddd %[" #t "], %[" #h "], %[" #h "]\n\t"
#define I16_DOT(w, h, FOLD) "vpsignb %[u], %[" #w "], %[t]\n\t" "vpmaddubsw %[t], %[au], %[t]\n\t" FOLD(t, h)
#define I16_STEP(wo, xo, FOLD) "vmovdqa " #wo "(%[w0]), %[a]\n\t" "vmovdqa " #wo "(%[w1]), %[b]\n\t" \
    "vpbroadcastd " #xo "(%[x0]), %[u]\n\t" "vpabsb %[u], %[au]\n\t" I16_DOT(a, h00, FOLD) I16_DOT(b, h01, FOLD) \
    "vpbroadcastd " #xo "(%[x1]), %[u]\n\t" "vpabsb %[u], %[au]\n\t" I16_DOT(a, h10, FOLD) I16_DOT(b, h11, FOLD)

/* int8: |x| times (w with x's sign); the pairs reach 2 * 127 * 127, so each vector is widened.
 * 16 rows (two 8-row panels, P and P + 8 * 32 * ng) by 2 tokens: each broadcast and |x| serves two
 * rows' vectors, one fewer instruction per vpmaddubsw than 8 rows by 4 tokens. */
static void panel16_int8(float *y, int64_t ldy, const uint8_t *P, const float *PS, int64_t ng,
                         const ActLayout *L, const uint8_t *act, int64_t nt, int64_t rows, Ahead *ah) {
    const __m256i ones = _mm256_set1_epi16(1);
    const uint8_t *p1 = P + 8 * 32 * ng;
    const float *ps1 = PS + 8 * ng;
    for (int64_t t0 = 0; t0 < nt; t0 += 2) {
        const int tb = nt - t0 < 2 ? 1 : 2;
        const uint8_t *a0 = act + t0 * L->stride, *a1 = act + (t0 + tb - 1) * L->stride;
        const int8_t *q0 = (const int8_t *)(a0 + L->off_q), *q1 = (const int8_t *)(a1 + L->off_q);
        const float *s0 = (const float *)(a0 + L->off_s), *s1 = (const float *)(a1 + L->off_s);
        __m256 f00 = _mm256_setzero_ps(), f01 = f00, f10 = f00, f11 = f00;  /* f<token><half> */
        for (int64_t g = 0; g < ng; g++) {
            ahead_step(ah);
            __m256i h00, h01, h10, h11, a, b, u, au, t;
            __asm__(I16_STEP(0, 0, P16_SET) I16_STEP(32, 4, P16_ADD) I16_STEP(64, 8, P16_ADD) I16_STEP(96, 12, P16_ADD)
                    I16_STEP(128, 16, P16_ADD) I16_STEP(160, 20, P16_ADD) I16_STEP(192, 24, P16_ADD) I16_STEP(224, 28, P16_ADD)
                : [h00] "=&x"(h00), [h01] "=&x"(h01), [h10] "=&x"(h10), [h11] "=&x"(h11),
                  [a] "=&x"(a), [b] "=&x"(b), [u] "=&x"(u), [au] "=&x"(au), [t] "=&x"(t)
                : [w0] "r"(P + 256 * g), [w1] "r"(p1 + 256 * g), [x0] "r"(q0 + 32 * g),
                  [x1] "r"(q1 + 32 * g), [ones] "x"(ones)
                : "memory");
            const __m256 sw0 = _mm256_loadu_ps(PS + 8 * g), sw1 = _mm256_loadu_ps(ps1 + 8 * g);
            const __m256 x0s = _mm256_set1_ps(s0[g]), x1s = _mm256_set1_ps(s1[g]);
            f00 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(h00), _mm256_mul_ps(sw0, x0s), f00);
            f01 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(h01), _mm256_mul_ps(sw1, x0s), f01);
            f10 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(h10), _mm256_mul_ps(sw0, x1s), f10);
            f11 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(h11), _mm256_mul_ps(sw1, x1s), f11);
        }
        store16x2(y + t0 * ldy, ldy, rows, tb, f00, f01, f10, f11);
    }
}

/* ------------------------------------------------------------------ several tokens, each as if alone */

/* qgemm of 2 or more tokens without panels (nt < PANEL_MIN_T, or ActLayout.one_token: a tape step
 * of batched decode or verification). Each token's row must be what the one-token kernel gives it,
 * bit for bit, so its float steps are dot_int8's / dot_int4_x2's: per 8 groups, the 8 integer group
 * sums converted, times weight scale * activation scale, fma'd into 8 lanes; hsum8 at the end; the
 * last < 8 groups by their tail code. Only the integer sums, which are exact, may come another way,
 * and they come cheaper: a block of 8 groups is transposed, in the row and in each token's q, so
 * that lane j of every vector belongs to group j (vector c holds dword c of the 8 groups). A token's
 * products then add up lane by lane into its 8 group sums, in order, where the one-token kernels
 * reduce each group's lanes by unpacks (sum4x4: 21 instructions per 8 int8 groups against 7 adds),
 * and each weight vector serves 4 tokens. Each token's q is transposed once per call, the row once
 * for all tokens, by the first 4, which also prefetch the row's lines as they go (all at the row's
 * start, the prefetches came in a burst: 4 tokens from DRAM cost 2.0 int4 / 1.6 int8 one-token
 * calls, against 1.7 / 1.3). In cache on a Golden Cove core, 16 tokens cost 8.8 (int4) and 10.3
 * (int8) one-token calls, where the one-token kernel per token cost 15.6 and 13.8
 * (benchmarks/c/ab_one_token.c). */
enum { XT_TOKENS = 16 };  /* tokens transposed at once: the row and 16 tokens, kp bytes each, fit the scratch */

/* dword c of 4 vectors' 128-bit halves, c < 4: v[c] = (a[c] b[c] c[c] d[c] | the same of the high halves) */
static inline void transpose4x4_epi32(__m256i v[4]) {
    const __m256i t0 = _mm256_unpacklo_epi32(v[0], v[1]), t1 = _mm256_unpackhi_epi32(v[0], v[1]);
    const __m256i t2 = _mm256_unpacklo_epi32(v[2], v[3]), t3 = _mm256_unpackhi_epi32(v[2], v[3]);
    v[0] = _mm256_unpacklo_epi64(t0, t2);
    v[1] = _mm256_unpackhi_epi64(t0, t2);
    v[2] = _mm256_unpacklo_epi64(t1, t3);
    v[3] = _mm256_unpackhi_epi64(t1, t3);
}

/* One block of 8 groups of 32 bytes, src to dst (32-byte aligned), transposed: groups i and i + 4
 * loaded into the halves of one register (the insert is a load, not a shuffle), then 4 x 4
 * transposes within the halves; 16 shuffles where transpose8_epi32 takes 24. */
static inline void transpose_block(uint8_t *dst, const uint8_t *src) {
    for (int h = 0; h < 2; h++) {  /* dwords 4h..4h+3 */
        __m256i v[4];
        for (int i = 0; i < 4; i++)
            v[i] = _mm256_loadu2_m128i((const __m128i *)(src + 32 * (i + 4) + 16 * h), (const __m128i *)(src + 32 * i + 16 * h));
        transpose4x4_epi32(v);
        for (int c = 0; c < 4; c++) _mm256_store_si256((__m256i *)(dst + 32 * (4 * h + c)), v[c]);
    }
}

/* One int4 block (8 groups of 16 packed bytes) transposed as pack_panel8 transposes rows (groups
 * i and i + 4 share a register), then split: vector c < 4 holds the low nibbles of dword c
 * (elements 4c..4c+3) of each group, vector c + 4 the high ones (elements 16 + 4c..), which meet
 * vectors c and c + 4 of the transposed q. */
static inline void transpose_int4(uint8_t *dst, const uint8_t *p) {
    const __m256i m0f = _mm256_set1_epi8(0x0F);
    __m256i v[4];
    for (int i = 0; i < 4; i++) v[i] = _mm256_loadu2_m128i((const __m128i *)(p + 16 * (i + 4)), (const __m128i *)(p + 16 * i));
    transpose4x4_epi32(v);
    for (int c = 0; c < 4; c++) {
        _mm256_store_si256((__m256i *)(dst + 32 * c), _mm256_and_si256(v[c], m0f));
        _mm256_store_si256((__m256i *)(dst + 32 * (c + 4)), _mm256_and_si256(_mm256_srli_epi16(v[c], 4), m0f));
    }
}

/* One int8 row against n <= 4 tokens (XT: transposed, xs bytes apart; act: their activations),
 * y[t * ldy] for token t. WT holds the row transposed, or gets it here (transpose: the row's first
 * tokens) a block at a time, so that the shuffles overlap the tokens' multiplies: a whole row
 * transposed first ran apart from them (2 tokens cost 1.9 one-token calls in cache, against 1.7).
 * |w| times x with w's sign gives the products dot_int8's |x| times w with x's sign gives (|w| <=
 * 127: no overflow either way). */
static inline __attribute__((always_inline)) void tokens_int8(float *y, int64_t ldy, uint8_t *WT, const uint8_t *XT,
                                                               int64_t xs, const uint8_t *row, const uint16_t *sw, int64_t ng,
                                                               const uint8_t *act, const ActLayout *L, const int transpose,
                                                               const int n) {
    const __m256i ones = _mm256_set1_epi16(1);
    const int64_t nb = ng / 8;
    __m256 f[4];
    for (int t = 0; t < n; t++) f[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        if (transpose) {
            for (int l = 0; l < 256; l += 64) prefetch_l2(row + PREFETCH_BYTES + 256 * b + l);
            transpose_block(WT + 256 * b, row + 256 * b);
        }
        __m256i acc[4];
#pragma GCC unroll 8
        for (int c = 0; c < 8; c++) {
            const __m256i wv = _mm256_load_si256((const __m256i *)(WT + 256 * b + 32 * c)), aw = _mm256_abs_epi8(wv);
            for (int t = 0; t < n; t++) {
                const __m256i xv = _mm256_load_si256((const __m256i *)(XT + t * xs + 256 * b + 32 * c));
                const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(xv, wv)), ones);
                acc[t] = c ? _mm256_add_epi32(acc[t], p) : p;
                __asm__("" : "+x"(acc[t]));  /* a chain, step by step: gcc made the adds a tree over all steps, and spilled */
            }
        }
        const __m256 sw8 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sw + 8 * b)));
        for (int t = 0; t < n; t++) {
            const float *s = (const float *)(act + t * L->stride + L->off_s);
            f[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[t]), _mm256_mul_ps(sw8, _mm256_loadu_ps(s + 8 * b)), f[t]);
        }
    }
    for (int t = 0; t < n; t++) {
        const uint8_t *a = act + t * L->stride;
        y[t * ldy] = hsum8(f[t]) + dot_int8_tail(row, sw, 8 * nb, ng, (const int8_t *)(a + L->off_q), (const float *)(a + L->off_s));
    }
}

/* The same for int4 (WT from transpose_int4): AVX2 sums a block's 8 vpmaddubsw per token in int16
 * (|pair| <= 2 * 15 * 127, both nibbles and 4 vectors: <= 30480) and widens once; AVX-VNNI sums
 * them into int32 by vpdpbusd. */
static inline __attribute__((always_inline)) void tokens_int4(float *y, int64_t ldy, uint8_t *WT, const uint8_t *XT,
                                                               int64_t xs, const uint8_t *row, const uint16_t *sw, int64_t ng,
                                                               const uint8_t *act, const ActLayout *L, const int transpose,
                                                               const int n) {
    const int64_t nb = ng / 8;
    __m256 f[4];
    for (int t = 0; t < n; t++) f[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        if (transpose) {
            prefetch_l2(row + PREFETCH_BYTES + 128 * b);
            prefetch_l2(row + PREFETCH_BYTES + 128 * b + 64);
            transpose_int4(WT + 256 * b, row + 128 * b);
        }
        __m256i acc[4];
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            const __m256i lo = _mm256_load_si256((const __m256i *)(WT + 256 * b + 32 * c));
            const __m256i hi = _mm256_load_si256((const __m256i *)(WT + 256 * b + 32 * (c + 4)));
            for (int t = 0; t < n; t++) {
                const __m256i xlo = _mm256_load_si256((const __m256i *)(XT + t * xs + 256 * b + 32 * c));
                const __m256i xhi = _mm256_load_si256((const __m256i *)(XT + t * xs + 256 * b + 32 * (c + 4)));
#ifdef CACTUS_AVXVNNI
                acc[t] = _mm256_dpbusd_avx_epi32(_mm256_dpbusd_avx_epi32(c ? acc[t] : _mm256_setzero_si256(), lo, xlo), hi, xhi);
#else
                const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, xlo), _mm256_maddubs_epi16(hi, xhi));
                acc[t] = c ? _mm256_add_epi16(acc[t], p) : p;
#endif
                __asm__("" : "+x"(acc[t]));  /* as in tokens_int8 */
            }
        }
        const __m256 sw8 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sw + 8 * b)));
        for (int t = 0; t < n; t++) {
            const uint8_t *a = act + t * L->stride;
            const __m256i corr = _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)((const int32_t *)(a + L->off_sum) + 8 * b)), 3);
#ifdef CACTUS_AVXVNNI
            const __m256i gs = acc[t];
#else
            const __m256i gs = _mm256_madd_epi16(acc[t], _mm256_set1_epi16(1));
#endif
            f[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(gs, corr)),
                                   _mm256_mul_ps(sw8, _mm256_loadu_ps((const float *)(a + L->off_s) + 8 * b)), f[t]);
        }
    }
    for (int t = 0; t < n; t++) {
        y[t * ldy] = hsum8(f[t]);
        if (8 * nb < ng) y[t * ldy] += dot_int4(row, sw, 8 * nb, ng, act + t * L->stride, L);
    }
}

/* One row against tn <= XT_TOKENS tokens, 4 at a time, the last 1-3 together (n a constant in
 * each call, so that each is unrolled for it). */
static void row_tokens(float *y, int64_t ldy, const QMat *w, uint8_t *WT, const uint8_t *XT, int64_t xs,
                       const uint8_t *row, const uint16_t *sw, const uint8_t *act, const ActLayout *L, int64_t tn) {
#define ROW_TOKENS(kernel)                                                                                        \
    for (int64_t t = 0; t < tn; t += 4) {                                                                         \
        float *yt = y + t * ldy;                                                                                  \
        const uint8_t *xt = XT + t * xs, *at = act + t * L->stride;                                               \
        switch (tn - t) {                                                                                         \
        case 1: kernel(yt, ldy, WT, xt, xs, row, sw, w->ng, at, L, t == 0, 1); break;                             \
        case 2: kernel(yt, ldy, WT, xt, xs, row, sw, w->ng, at, L, t == 0, 2); break;                             \
        case 3: kernel(yt, ldy, WT, xt, xs, row, sw, w->ng, at, L, t == 0, 3); break;                             \
        default: kernel(yt, ldy, WT, xt, xs, row, sw, w->ng, at, L, t == 0, 4);                                   \
        }                                                                                                         \
    }
    if (w->fmt == FMT_INT4) { ROW_TOKENS(tokens_int4) }
    else { ROW_TOKENS(tokens_int8) }
#undef ROW_TOKENS
}

static void qgemm_tokens(float *y, int64_t ldy, const QMat *w, const ActLayout *L, const uint8_t *act,
                         int64_t nt, int64_t r0, int64_t r1, uint8_t *scratch) {
    const int64_t nb = w->ng / 8, xs = 256 * nb, ahead = prefetch_rows(w);  /* xs: bytes of one transposed row or token */
    /* int4 takes rows r and r + h in turn, two sequential streams as in its decode (2 tokens from
     * DRAM: 1.11-1.15 times one against 1.17-1.20 row after row); int8, like its decode, one */
    const int64_t h = w->fmt == FMT_INT4 ? (r1 - r0 + 1) / 2 : r1 - r0;
    uint8_t *WT = (uint8_t *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63), *XT = WT + xs;
    for (int64_t t0 = 0; t0 < nt; t0 += XT_TOKENS) {
        const int64_t tn = nt - t0 < XT_TOKENS ? nt - t0 : XT_TOKENS;
        const uint8_t *a0 = act + t0 * L->stride;
        for (int64_t t = 0; t < tn; t++)
            for (int64_t b = 0; b < nb; b++) transpose_block(XT + t * xs + 256 * b, a0 + t * L->stride + L->off_q + 256 * b);
        for (int64_t i = 0; i < h; i++)
            for (int64_t r = r0 + i; r < r1; r += h) {
                const uint8_t *row = w->data + r * w->row_bytes;
                const uint16_t *sw = w->scales + r * w->ng;
                prefetch_scales(w, r + ahead);
                row_tokens(y + t0 * ldy + r, ldy, w, WT, XT, xs, row, sw, a0, L, tn);
            }
    }
}

_Static_assert(KERNEL_PANEL >= 16, "the int8 prefill packs 16 rows into the qgemm scratch");

static void qgemm_avx2(float *y, int64_t ldy, const QMat *w, const ActLayout *L, const uint8_t *act,
                       int64_t nt, int64_t r0, int64_t r1, uint8_t *scratch) {
    if (w->group != 32) { qgemm_scalar(y, ldy, w, L, act, nt, r0, r1, scratch); return; }
    if (nt >= PANEL_MIN_T && !L->one_token) {
        uint8_t *P = (uint8_t *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
        /* two 8-row panels back to back, then their scales, then (int4) their offset corrections;
         * scratch holds KERNEL_PANEL rows (kernels_scratch_bytes) */
        float *PS = (float *)(P + 16 * 32 * w->ng), *PD = PS + 16 * w->ng;
        for (int64_t r = r0; r < r1; r += 16) {
            const int64_t re = r + 16 < r1 ? r + 16 : r1, rm = r + 8 < re ? r + 8 : re;
            pack_panel8(P, PS, PD, w, r, rm);
            pack_panel8(P + 8 * 32 * w->ng, PS + 8 * w->ng, PD + 8 * w->ng, w, rm, re);  /* rm == re: repeats row re - 1 */
            const uint8_t *pf;
            const int64_t pfb = next_panel(w, re, r1, 16, &pf);
            Ahead ah = ahead_of(pf, pfb, w->ng);
            if (w->fmt == FMT_INT4) {
                const int64_t n4 = nt / 4 * 4;
                panel16x4_int4(y + r, ldy, P, PS, PD, w->ng, L, act, n4, re - r, &ah);
                if (n4 < nt) panel16_int4(y + r + n4 * ldy, ldy, P, PS, PD, w->ng, L, act + n4 * L->stride, nt - n4, re - r, &ah);
            } else panel16_int8(y + r, ldy, P, PS, w->ng, L, act, nt, re - r, &ah);
        }
        return;
    }
    if (nt > 1) { qgemm_tokens(y, ldy, w, L, act, nt, r0, r1, scratch); return; }
    if (w->fmt == FMT_INT4) {  /* rows r and r + h in step, each one sequential stream (kernels_avx512.c) */
        const int64_t h = (r1 - r0 + 1) / 2, ahead = prefetch_rows(w);
        for (int64_t r = r0; r < r0 + h; r++) {
            const int64_t rb = r + h < r1 ? r + h : r;
            const uint8_t *ra_ = w->data + r * w->row_bytes, *rb_ = w->data + rb * w->row_bytes;
            const uint16_t *sa_ = w->scales + r * w->ng, *sb_ = w->scales + rb * w->ng;
            prefetch_scales(w, r + ahead);
            prefetch_scales(w, rb + ahead);
            for (int64_t t = 0; t < nt; t++) {
                float out[2];
                dot_int4_x2(out, ra_, rb_, sa_, sb_, w->ng, act + t * L->stride, L);
                y[t * ldy + r] = out[0];
                y[t * ldy + rb] = out[1];
            }
        }
        return;
    }
    const int64_t ahead = prefetch_rows(w);
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = w->data + r * w->row_bytes;
        const uint16_t *sw = w->scales + r * w->ng;
        for (int64_t b = 0; b < w->row_bytes; b += 64) prefetch_l2(row + PREFETCH_BYTES + b);
        prefetch_scales(w, r + ahead);
        for (int64_t t = 0; t < nt; t++) y[t * ldy + r] = dot_int8(row, sw, w->ng, act + t * L->stride, L);
    }
}

/* ------------------------------------------------------------------ float weights */

static inline __m256 load8(const QMat *w, const uint8_t *row, int64_t e) {
    if (w->fmt == FMT_F32) return _mm256_loadu_ps((const float *)row + e);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)row + e));
    if (w->fmt == FMT_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

static void fgemm_avx2(float *y, int64_t ldy, const QMat *w, const float *x, int64_t ldx,
                       int64_t nt, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = w->data + r * w->row_bytes;
        for (int64_t t0 = 0; t0 < nt; t0 += 4) {
            const int tb = (int)(nt - t0 < 4 ? nt - t0 : 4);
            __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
            int64_t e = 0;
            for (; e + 8 <= w->k; e += 8) {
                __m256 wv = load8(w, row, e);
                for (int t = 0; t < tb; t++) acc[t] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + (t0 + t) * ldx + e), acc[t]);
            }
            for (int t = 0; t < tb; t++) {
                float s = hsum8(acc[t]);
                for (int64_t i = e; i < w->k; i++) s += fweight(w, row, i) * x[(t0 + t) * ldx + i];
                y[(t0 + t) * ldy + r] = s;
            }
        }
    }
}

/* ------------------------------------------------------------------ attention */

static inline __m256 exp256(__m256 x) {  /* as kernels_avx512.c's exp512 */
    x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f)), _mm256_set1_ps(-88.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500E-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

static inline __m256 kv8(const void *base, int64_t i, int kv_f16) {
    if (kv_f16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)base + i)));
    return _mm256_loadu_ps((const float *)base + i);
}

/* Attention takes rows in blocks of 4 (a GQA group at one query position, as in kernels_avx512.c),
 * so each key and value vector serves four rows. Positions go in spans of 64 (four key blocks of
 * 16): the scores (4 x 64) from the d-major key blocks (span_scores), then per row one
 * online-softmax step for the whole span (max, rescale, exp, and the sum kept as a vector:
 * span_softmax), then o += p V with the four rows' accumulators in registers, two 8-float slices
 * of hd at a time (span_pv: 8 independent FMA chains). Per block of 16 the softmax step (its max,
 * exp and scalar sum, a chain per row) had cost about as much as the block's multiply-adds.
 *
 * Decode (R <= 4: one query position) reads the f16 cache directly, converting each key and value
 * vector as it goes, and prefetches the span after next into L2 during the scores: long contexts
 * read the cache from DRAM. Prefill (R > 4: the driver's 16 query positions x a GQA group) runs
 * spans outer and row blocks inner: each span's keys and values are converted to f32 once (32 KB
 * at hd 64) and every row block reads them from there, where the blocks had each converted, and
 * re-read from L2 or DRAM, the whole cache (16 times per call); each row's running max, sum and
 * output stay in scratch between spans. A short block repeats its last row (same limit), whose
 * results are not stored. */
typedef struct { float *o[4], *m[4]; __m256 *l[4]; } RowState;

static inline __attribute__((always_inline)) void span_scores(float *p, const float *const qr[4], const int64_t lim[4],
                                                              const void *kt, int64_t blk0, int64_t nblk, int64_t s0,
                                                              int64_t hd, int kv_f16, __m256 sc, const void *v,
                                                              int64_t lmax, int ahead) {
    for (int64_t b = 0; b < nblk; b++) {
        const int64_t blk = blk0 + b;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        const AttnAhead ah = ahead ? attn_ahead(kt, v, s0, b, lmax, hd, kv_f16 ? 2 : 4) : (AttnAhead){NULL, NULL, 0};
        for (int64_t d = 0; d < hd; d++) {
            if (ahead) attn_ahead_step(&ah, d);
            const __m256 k0 = kv8(kt, (blk * hd + d) * 16, kv_f16), k1 = kv8(kt, (blk * hd + d) * 16 + 8, kv_f16);
            __m256 qd = _mm256_set1_ps(qr[0][d]);
            a0 = _mm256_fmadd_ps(qd, k0, a0); b0 = _mm256_fmadd_ps(qd, k1, b0);
            qd = _mm256_set1_ps(qr[1][d]);
            a1 = _mm256_fmadd_ps(qd, k0, a1); b1 = _mm256_fmadd_ps(qd, k1, b1);
            qd = _mm256_set1_ps(qr[2][d]);
            a2 = _mm256_fmadd_ps(qd, k0, a2); b2 = _mm256_fmadd_ps(qd, k1, b2);
            qd = _mm256_set1_ps(qr[3][d]);
            a3 = _mm256_fmadd_ps(qd, k0, a3); b3 = _mm256_fmadd_ps(qd, k1, b3);
        }
        const __m256 lo[4] = {a0, a1, a2, a3}, hi[4] = {b0, b1, b2, b3};
        for (int i = 0; i < 4; i++) {
            float *pi = p + ATTN_SPAN * i + 16 * b;
            _mm256_store_ps(pi, _mm256_mul_ps(lo[i], sc));
            _mm256_store_ps(pi + 8, _mm256_mul_ps(hi[i], sc));
            attn_mask_block(pi, lim[i] - s0 - 16 * b);
        }
    }
}

/* One row's online-softmax step for the span: p (its scores) becomes its weights. */
static inline void span_softmax(float *pi, int64_t nblk, int64_t lim, int64_t s0, float *m, __m256 *l, float *o,
                                int64_t nv) {
    if (lim <= s0) { memset(pi, 0, sizeof(float) * ATTN_SPAN); return; }  /* sees none of the span */
    __m256 mx = _mm256_load_ps(pi);
    for (int64_t j = 8; j < 16 * nblk; j += 8) mx = _mm256_max_ps(mx, _mm256_load_ps(pi + j));
    const float bm = hmax8(mx);
    if (bm > *m) {
        const __m256 c = _mm256_set1_ps(*m == -INFINITY ? 0.0f : expf(*m - bm));
        *l = _mm256_mul_ps(*l, c);
        for (int64_t d = 0; d < nv; d++) _mm256_storeu_ps(o + 8 * d, _mm256_mul_ps(_mm256_loadu_ps(o + 8 * d), c));
        *m = bm;
    }
    const __m256 mi = _mm256_set1_ps(*m);
    for (int64_t j = 0; j < 16 * nblk; j += 8) {  /* exp256 takes -inf (masked) to 0 */
        const __m256 e = exp256(_mm256_sub_ps(_mm256_load_ps(pi + j), mi));
        _mm256_store_ps(pi + j, e);
        *l = _mm256_add_ps(*l, e);
    }
}

/* o[i] += p[i] V for the span's `send` value rows from v + j0 * hd. */
static inline __attribute__((always_inline)) void span_pv(float *const ob[4], const float *p, const void *v, int64_t j0,
                                                          int64_t send, int64_t hd, int kv_f16) {
    const int64_t nv = hd / 8;
    int64_t d = 0;
    for (; d + 2 <= nv; d += 2) {  /* two slices: 8 independent fma chains (one slice's 4 wait on latency) */
        float *o0p = ob[0] + 8 * d, *o1p = ob[1] + 8 * d, *o2p = ob[2] + 8 * d, *o3p = ob[3] + 8 * d;
        __m256 o0 = _mm256_loadu_ps(o0p), o1 = _mm256_loadu_ps(o1p), o2 = _mm256_loadu_ps(o2p), o3 = _mm256_loadu_ps(o3p);
        __m256 u0 = _mm256_loadu_ps(o0p + 8), u1 = _mm256_loadu_ps(o1p + 8), u2 = _mm256_loadu_ps(o2p + 8), u3 = _mm256_loadu_ps(o3p + 8);
        for (int64_t j = 0; j < send; j++) {
            const __m256 v0 = kv8(v, (j0 + j) * hd + 8 * d, kv_f16), v1 = kv8(v, (j0 + j) * hd + 8 * d + 8, kv_f16);
            __m256 pj = _mm256_set1_ps(p[j]);
            o0 = _mm256_fmadd_ps(pj, v0, o0); u0 = _mm256_fmadd_ps(pj, v1, u0);
            pj = _mm256_set1_ps(p[ATTN_SPAN + j]);
            o1 = _mm256_fmadd_ps(pj, v0, o1); u1 = _mm256_fmadd_ps(pj, v1, u1);
            pj = _mm256_set1_ps(p[2 * ATTN_SPAN + j]);
            o2 = _mm256_fmadd_ps(pj, v0, o2); u2 = _mm256_fmadd_ps(pj, v1, u2);
            pj = _mm256_set1_ps(p[3 * ATTN_SPAN + j]);
            o3 = _mm256_fmadd_ps(pj, v0, o3); u3 = _mm256_fmadd_ps(pj, v1, u3);
        }
        _mm256_storeu_ps(o0p, o0); _mm256_storeu_ps(o1p, o1); _mm256_storeu_ps(o2p, o2); _mm256_storeu_ps(o3p, o3);
        _mm256_storeu_ps(o0p + 8, u0); _mm256_storeu_ps(o1p + 8, u1); _mm256_storeu_ps(o2p + 8, u2); _mm256_storeu_ps(o3p + 8, u3);
    }
    for (; d < nv; d++) {
        __m256 o0 = _mm256_loadu_ps(ob[0] + 8 * d), o1 = _mm256_loadu_ps(ob[1] + 8 * d);
        __m256 o2 = _mm256_loadu_ps(ob[2] + 8 * d), o3 = _mm256_loadu_ps(ob[3] + 8 * d);
        for (int64_t j = 0; j < send; j++) {
            const __m256 vv = kv8(v, (j0 + j) * hd + 8 * d, kv_f16);
            o0 = _mm256_fmadd_ps(_mm256_set1_ps(p[j]), vv, o0);
            o1 = _mm256_fmadd_ps(_mm256_set1_ps(p[ATTN_SPAN + j]), vv, o1);
            o2 = _mm256_fmadd_ps(_mm256_set1_ps(p[2 * ATTN_SPAN + j]), vv, o2);
            o3 = _mm256_fmadd_ps(_mm256_set1_ps(p[3 * ATTN_SPAN + j]), vv, o3);
        }
        _mm256_storeu_ps(ob[0] + 8 * d, o0);
        _mm256_storeu_ps(ob[1] + 8 * d, o1);
        _mm256_storeu_ps(ob[2] + 8 * d, o2);
        _mm256_storeu_ps(ob[3] + 8 * d, o3);
    }
}

/* out row = o / (sum of its weights) */
static inline void span_finish(float *out, const float *o, __m256 l, int64_t nv) {
    const float li = hsum8(l);
    const __m256 inv = _mm256_set1_ps(li > 0.0f ? 1.0f / li : 0.0f);
    for (int64_t d = 0; d < nv; d++) _mm256_storeu_ps(out + 8 * d, _mm256_mul_ps(_mm256_loadu_ps(o + 8 * d), inv));
}

/* Prefill: spans outer, row blocks inner, each span's keys and values converted once (above). */
static void attn_avx2_prefill(float *out, const float *q, int64_t R, const int64_t *limit, const void *kt,
                              const void *v, int64_t hd, float scale, int kv_f16, float *scratch) {
    const int64_t nv = hd / 8;
    float p[4 * ATTN_SPAN] __attribute__((aligned(32)));
    float dummy_o[4 * 256], dummy_m[4];  /* the repeated rows of a short block write here */
    __m256 dummy_l[4];
    float *kf = (float *)(((uintptr_t)scratch + 31) & ~(uintptr_t)31), *vf = kf + ATTN_SPAN * hd;
    float *ob = vf + ATTN_SPAN * hd, *mr = ob + R * hd;
    __m256 *lr = (__m256 *)(((uintptr_t)(mr + R) + 31) & ~(uintptr_t)31);
    int64_t lmax = 0;
    for (int64_t r = 0; r < R; r++) {
        lmax = limit[r] > lmax ? limit[r] : lmax;
        mr[r] = -INFINITY;
        lr[r] = _mm256_setzero_ps();
    }
    memset(ob, 0, (size_t)(R * hd) * 4);
    const __m256 sc = _mm256_set1_ps(scale);
    for (int64_t s0 = 0; s0 < lmax; s0 += ATTN_SPAN) {
        const int64_t send = lmax - s0 < ATTN_SPAN ? lmax - s0 : ATTN_SPAN, nblk = (send + 15) / 16;
        const float *ks = (const float *)kt + s0 * hd, *vs = (const float *)v + s0 * hd;  /* f32 cache: in place */
        if (kv_f16) {  /* whole key blocks (their tails are masked), the span's value rows */
            const uint16_t *k16 = (const uint16_t *)kt + s0 * hd, *v16 = (const uint16_t *)v + s0 * hd;
            for (int64_t e = 0; e < nblk * 16 * hd; e += 8)
                _mm256_store_ps(kf + e, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k16 + e))));
            for (int64_t e = 0; e < send * hd; e += 8)
                _mm256_store_ps(vf + e, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v16 + e))));
            ks = kf;
            vs = vf;
        }
        for (int64_t r0 = 0; r0 < R; r0 += 4) {
            const float *qr[4];
            int64_t lim[4], gmax;
            const int rb = attn_rows4(qr, lim, &gmax, q, limit, R, r0, hd);
            if (gmax <= s0) continue;  /* the block sees none of the span */
            RowState st;
            for (int i = 0; i < 4; i++) {
                const int real = i < rb;
                st.o[i] = real ? ob + (r0 + i) * hd : dummy_o + i * hd;
                st.m[i] = real ? mr + r0 + i : dummy_m + i;
                st.l[i] = real ? lr + r0 + i : dummy_l + i;
                if (!real) { *st.m[i] = *(mr + r0 + rb - 1); *st.l[i] = lr[r0 + rb - 1]; memcpy(st.o[i], ob + (r0 + rb - 1) * hd, (size_t)hd * 4); }
            }
            span_scores(p, qr, lim, ks, 0, nblk, s0, hd, 0, sc, NULL, 0, 0);
            for (int i = 0; i < 4; i++) span_softmax(p + ATTN_SPAN * i, nblk, lim[i], s0, st.m[i], st.l[i], st.o[i], nv);
            span_pv(st.o, p, vs, 0, send, hd, 0);
        }
    }
    for (int64_t r = 0; r < R; r++) span_finish(out + r * hd, ob + r * hd, lr[r], nv);
}

static void attn_avx2(float *out, const float *q, int64_t R, const int64_t *limit, const void *kt,
                      const void *v, int64_t hd, float scale, int kv_f16, float *scratch) {
    if (hd % 8 || hd > 256) { attn_scalar(out, q, R, limit, kt, v, hd, scale, kv_f16, scratch); return; }
    if (R > 4) { attn_avx2_prefill(out, q, R, limit, kt, v, hd, scale, kv_f16, scratch); return; }
    const int64_t nv = hd / 8;
    float p[4 * ATTN_SPAN] __attribute__((aligned(32)));  /* scores, then probabilities, of the span, per row */
    float ob[4 * 256] __attribute__((aligned(32)));       /* unnormalized outputs, per row */
    const __m256 sc = _mm256_set1_ps(scale);
    const float *qr[4];
    int64_t lim[4], lmax;
    const int rb = attn_rows4(qr, lim, &lmax, q, limit, R, 0, hd);
    float m[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
    __m256 l[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    float *const o[4] = {ob, ob + hd, ob + 2 * hd, ob + 3 * hd};
    memset(ob, 0, (size_t)(4 * hd) * 4);
    for (int64_t s0 = 0; s0 < lmax; s0 += ATTN_SPAN) {
        const int64_t send = lmax - s0 < ATTN_SPAN ? lmax - s0 : ATTN_SPAN, nblk = (send + 15) / 16;
        span_scores(p, qr, lim, kt, s0 / 16, nblk, s0, hd, kv_f16, sc, v, lmax, 1);
        for (int i = 0; i < 4; i++) span_softmax(p + ATTN_SPAN * i, nblk, lim[i], s0, &m[i], &l[i], o[i], nv);
        span_pv(o, p, v, s0, send, hd, kv_f16);
    }
    for (int i = 0; i < rb; i++) span_finish(out + i * hd, o[i], l[i], nv);
}

static void silu_mul_avx2(float *g, const float *u, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 a = _mm256_loadu_ps(g + i);
        const __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), a));
        const __m256 s = _mm256_div_ps(a, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
        _mm256_storeu_ps(g + i, _mm256_mul_ps(s, _mm256_loadu_ps(u + i)));
    }
    silu_mul_scalar(g + i, u + i, n - i);
}

/* L1 prefetch off: with it, 8B decode at CACTUS_ISA=avx2 on Zen 4 was 5% slower (KERNELS.md) */
#ifdef CACTUS_AVXVNNI
const Kernels kernels_avxvnni = {"avxvnni", quantize_avx2, qgemm_avx2, fgemm_avx2, attn_avx2, silu_mul_avx2, 2048, 0};
#else
const Kernels kernels_avx2 = {"avx2", quantize_avx2, qgemm_avx2, fgemm_avx2, attn_avx2, silu_mul_avx2, 2048, 0};
#endif
