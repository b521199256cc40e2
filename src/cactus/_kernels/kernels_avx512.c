/* AVX-512 kernels (F + BW + VL + VNNI; compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni
 * -mgfni -mfma -mf16c). The integer dot product is vpdpbusd (u8 x s8): the weight byte is the unsigned
 * operand (int4: the stored nibble u = q + 8; int8: w ^ 0x80 = w + 128) and the activation the
 * signed one, with the offset taken back by a per-lane correction computed once per token.
 * Decode (one token) reads rows in place; prefill packs 16 rows into a panel and reuses it.
 * Group sizes other than 32 take the panel path; shapes it does not cover go to the scalar file.
 * Also compiled with -mgfni: GFNI instructions run only in the table dispatch.c picks for CPUs with it.
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kernels.h"

_Static_assert(KERNEL_PANEL == 16, "a panel is one zmm of int32 lanes");
_Static_assert(ATTN_BLOCK == 16, "a key block is one zmm of f32 lanes");

static inline __mmask64 mask64(int64_t n) { return n >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << n) - 1); }
static inline __mmask16 mask16(int64_t n) { return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1); }
/* Decode prefetches each streamed row PREFETCH_BYTES ahead into L2 and PREFETCH_L1_BYTES into L1,
 * one line per 64-byte step (kernels.h):
 * with ~10 vector ops per 64 bytes the out-of-order window alone keeps too few lines in flight;
 * on Zen 4 this doubled the streamed rate. T0 (L1), T2 or NTA as the only hint were slower; a
 * short T0 prefetch beside the L2 one is what helps (kernels.h). */
static inline int32_t ld32(const int8_t *p) { int32_t v; memcpy(&v, p, 4); return v; }

/* ------------------------------------------------------------------ activations */

/* act_extras (kernels_scalar.c) for G = 32, a block of 64 packed weight bytes at a time (int4: 4 groups,
 * int8: 2 groups); other groups and group sizes go to the scalar loop. Decode quantizes ~175 vectors
 * per 8B-A1B token on the calling thread while the others wait, where the scalar loop cost ~2 us each. */
static void extras_avx512(const ActLayout *L, uint8_t *act, int64_t g0, int64_t g1) {
    const int per = L->fmt == FMT_INT4 ? 4 : 2;  /* groups per block */
    if (extras_not_simd(L, act, g0, g1, per)) return;
    const int8_t *q = (const int8_t *)(act + L->off_q);
    const float *s = (const float *)(act + L->off_s);
    int32_t *corr = (int32_t *)(act + L->off_corr);
    float *sl = (float *)(act + L->off_sl);
    const __m512i ones = _mm512_set1_epi8(1), zero = _mm512_setzero_si512();
    int64_t g = g0;
    for (; g + per <= g1; g += per) {
        const int64_t b = g / per;  /* block: 16 lanes of corr and sl */
        const __m512i z0 = _mm512_loadu_si512(q + 32 * g);
        __m512i sums;
        __m128 sg;
        if (L->fmt == FMT_INT4) {
            /* groups g..g+3: the first 16 x's of each meet the low nibbles, the last 16 the high */
            const __m512i z1 = _mm512_loadu_si512(q + 32 * g + 64);
            const __m512i lo = _mm512_shuffle_i64x2(z0, z1, 0x88), hi = _mm512_shuffle_i64x2(z0, z1, 0xDD);
            int8_t *qn = (int8_t *)(act + L->off_qn) + 128 * b;
            _mm512_storeu_si512(qn, lo);
            _mm512_storeu_si512(qn + 64, hi);
            sums = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, ones, lo), ones, hi);
            sums = _mm512_sub_epi32(zero, _mm512_slli_epi32(sums, 3));  /* -8 * sum */
            sg = _mm_loadu_ps(s + g);
        } else {
            sums = _mm512_sub_epi32(zero, _mm512_slli_epi32(_mm512_dpbusd_epi32(zero, ones, z0), 7));  /* -128 * sum */
            sg = _mm_castpd_ps(_mm_load_sd((const double *)(s + g)));
        }
        const __m512i lane_group = L->fmt == FMT_INT4 ? _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3)
                                                      : _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
        _mm512_storeu_si512(corr + 16 * b, sums);
        _mm512_storeu_ps(sl + 16 * b, _mm512_permutexvar_ps(lane_group, _mm512_castps128_ps512(sg)));
    }
    if (g < g1) act_extras(L, act, g, g1);
}

static void quantize_avx512(const ActLayout *L, uint8_t *act, const float *x, int64_t g0, int64_t g1) {
    const int64_t G = L->group, groups_q = L->kpa / G;
    if (G % 16) { quantize_scalar(L, act, x, g0, g1); return; }
    int8_t *q = (int8_t *)(act + L->off_q);
    float *s = (float *)(act + L->off_s);
    int32_t *sum = (int32_t *)(act + L->off_sum);
    for (int64_t g = g0; g < g1; g++) {
        if (g >= groups_q) { s[g] = 0.0f; sum[g] = 0; continue; }
        __m512 amax = _mm512_setzero_ps();
        for (int64_t j = 0; j < G; j += 16) {
            int64_t e = g * G + j, n = L->k - e;
            __m512 v = n > 0 ? _mm512_maskz_loadu_ps(mask16(n), x + e) : _mm512_setzero_ps();
            amax = _mm512_max_ps(amax, _mm512_abs_ps(v));
        }
        float d = _mm512_reduce_max_ps(amax) / 127.0f;
        __m512 dv = _mm512_set1_ps(d);
        __m512i acc = _mm512_setzero_si512();
        for (int64_t j = 0; j < G; j += 16) {
            int64_t e = g * G + j, n = L->k - e;
            __m512i qi = _mm512_setzero_si512();
            if (d != 0.0f && n > 0) {
                __m512 v = _mm512_maskz_loadu_ps(mask16(n), x + e);
                /* true division then round half to even, as np.rint(x / d) */
                qi = _mm512_cvtps_epi32(_mm512_roundscale_ps(_mm512_div_ps(v, dv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
                qi = _mm512_max_epi32(_mm512_min_epi32(qi, _mm512_set1_epi32(127)), _mm512_set1_epi32(-127));
            }
            acc = _mm512_add_epi32(acc, qi);
            _mm_storeu_si128((__m128i *)(q + e), _mm512_cvtepi32_epi8(qi));
        }
        s[g] = d;
        sum[g] = _mm512_reduce_add_epi32(acc);
    }
    act_unsigned(L, act, g0, g1 < groups_q ? g1 : groups_q);
    extras_avx512(L, act, g0, g1 < groups_q ? g1 : groups_q);
}

/* ------------------------------------------------------------------ decode: rows in place */

/* High nibbles: (w >> 4) & 0x0F, or one GF(2) affine byte map where the CPU has GFNI. */
static inline __m512i high_nibbles(__m512i w, __m512i m0f, const int gfni) {
#if defined(__GFNI__)
    if (gfni) return _mm512_gf2p8affine_epi64_epi8(w, _mm512_set1_epi64(0x1020408000000000LL), 0);
#else
    (void)gfni;
#endif
    return _mm512_and_si512(_mm512_srli_epi16(w, 4), m0f);
}

/* Decode: two rows (row, r1; scales sw, sw1) against n tokens (n a constant in each call, 1 to
 * DOT_TOKENS), G = 32: ya[t * ldy] = row . x_t, yb[t * ldy] = r1 . x_t. n = 1 is one-token decode;
 * n > 1 serves the tape's steps of several tokens (batched decode, speculative verification), each
 * token's result bit-identical to its own n = 1 call: a token's float steps are the same whatever n
 * is (its scales sw * sx, its int32 lane sums converted and fma'd into its own two accumulators
 * per row in the same order, the same final reduction); only the weight loads, the int8 flip or
 * int4 nibble split and the prefetches are shared, done once per step for all n tokens (in cache,
 * they were a third of one token's instructions).
 * A window is 16 groups sharing one scale load, sw * sx for the 16 groups formed once; full windows
 * run unmasked, the last one masked. */
/* Per token: 6 zmm (4 accumulators, 2 scale vectors). 4 tokens spill a few, and still beat 3 (in
 * cache, 512 x 2048: 4 tokens cost 2.42 int8 / 2.56 int4 one-token calls against 2.90 / 2.96 by 3 + 1;
 * 6 at a time lost at T = 8, 6 + 2). */
enum { DOT_TOKENS = 4 };

/* Each loaded vector in a register, read from there by all its uses: gcc otherwise folds the load
 * into each use (a row's two dpbusd, the nibble split's and + gf2p8affine), which doubled the loads
 * and made the one-token int4 call 25% slower in cache (the load ports, not the math, then bound it). */
#define IN_REGISTER(a) __asm__("" : "+v"(a))

/* Each of n tokens' quantized activations (at byte offset off_q: int8's q, int4's qn), its
 * per-lane offset corrections and its group scales. */
static inline __attribute__((always_inline)) void token_rows(const uint8_t *act, const ActLayout *L, int64_t off_q,
                                                             const int n, const int8_t **q, const int32_t **corr,
                                                             const float **sx) {
    for (int t = 0; t < n; t++) {
        const uint8_t *a = act + t * L->stride;
        q[t] = (const int8_t *)(a + off_q);
        corr[t] = (const int32_t *)(a + L->off_corr);
        sx[t] = (const float *)(a + L->off_s);
    }
}

/* One int4 step (64 packed bytes of each row: la, ua the low and high nibbles of row a, lb, ub
 * row b) against n tokens, fma'd into the accumulators fa, fb (the window's even or odd steps). */
static inline __attribute__((always_inline)) void int4_tokens(__m512 *fa, __m512 *fb, __m512i la, __m512i lb, __m512i ua,
                                                              __m512i ub, __m512i id, const __m512 *sa, const __m512 *sb,
                                                              const int8_t *const *qn, const int32_t *const *corr,
                                                              int64_t b, const int n) {
    for (int t = 0; t < n; t++) {
        __m512i c = _mm512_loadu_si512(corr[t] + 16 * b);
        __m512i xl = _mm512_loadu_si512(qn[t] + 128 * b), xh = _mm512_loadu_si512(qn[t] + 128 * b + 64);
        IN_REGISTER(c);
        IN_REGISTER(xl);
        IN_REGISTER(xh);
        const __m512i aa = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(c, la, xl), ua, xh);
        const __m512i ab = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(c, lb, xl), ub, xh);
        fa[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(aa), _mm512_permutexvar_ps(id, sa[t]), fa[t]);
        fb[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ab), _mm512_permutexvar_ps(id, sb[t]), fb[t]);
    }
}

/* int4: a step is 64 packed bytes (4 groups, lane i = packed bytes 4i..4i+3 = group i/4). */
static inline __attribute__((always_inline)) void dot_int4_g32(float *ya, float *yb, int64_t ldy, const uint8_t *row,
                                                               const uint8_t *r1, const uint16_t *sw, const uint16_t *sw1,
                                                               int64_t ng, const uint8_t *act, const ActLayout *L,
                                                               const int gfni, const int n) {
    const int8_t *qn[DOT_TOKENS];
    const int32_t *corr[DOT_TOKENS];
    const float *sx[DOT_TOKENS];
    token_rows(act, L, L->off_qn, n, qn, corr, sx);
    const __m512i m0f = _mm512_set1_epi8(0x0F);
    const __m512i idx0 = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    const __m512i four = _mm512_set1_epi32(4);
    const int64_t l2d = PREFETCH_BYTES, l1d = PREFETCH_L1_BYTES;
    __m512 fa0[DOT_TOKENS], fa1[DOT_TOKENS], fb0[DOT_TOKENS], fb1[DOT_TOKENS];
    for (int t = 0; t < n; t++) fa0[t] = fa1[t] = fb0[t] = fb1[t] = _mm512_setzero_ps();
    int64_t g = 0;
    for (; g + 16 <= ng; g += 16) {
        const __m512 ha = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(sw + g)));
        const __m512 hb = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(sw1 + g)));
        __m512 sa[DOT_TOKENS], sb[DOT_TOKENS];
        for (int t = 0; t < n; t++) {
            const __m512 sxv = _mm512_loadu_ps(sx[t] + g);
            sa[t] = _mm512_mul_ps(ha, sxv);
            sb[t] = _mm512_mul_ps(hb, sxv);
        }
        __m512i id = idx0;
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            const int64_t b = g / 4 + j, off = 64 * b;
            __m512i wa = _mm512_loadu_si512(row + off), wb = _mm512_loadu_si512(r1 + off);
            IN_REGISTER(wa);
            IN_REGISTER(wb);
            prefetch_l2(row + off + l2d);
            prefetch_l2(r1 + off + l2d);
            prefetch_l1(row + off + l1d);  /* l1d = 0: the line being read, a no-op */
            prefetch_l1(r1 + off + l1d);
            const __m512i la = _mm512_and_si512(wa, m0f), lb = _mm512_and_si512(wb, m0f);
            const __m512i ua = high_nibbles(wa, m0f, gfni), ub = high_nibbles(wb, m0f, gfni);
            int4_tokens(j & 1 ? fa1 : fa0, j & 1 ? fb1 : fb0, la, lb, ua, ub, id, sa, sb, qn, corr, b, n);
            id = _mm512_add_epi32(id, four);
        }
    }
    if (g < ng) {  /* last partial window: masked loads, zero past the row (a loop of its own: folded into the
                    * one above with masks, as int8 is, the one-token int4 call was 25% slower in cache) */
        const __mmask16 gm = mask16(ng - g);
        const __m512 ha = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(gm, sw + g));
        const __m512 hb = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(gm, sw1 + g));
        __m512 sa[DOT_TOKENS], sb[DOT_TOKENS];
        for (int t = 0; t < n; t++) {
            const __m512 sxv = _mm512_maskz_loadu_ps(gm, sx[t] + g);
            sa[t] = _mm512_mul_ps(ha, sxv);
            sb[t] = _mm512_mul_ps(hb, sxv);
        }
        __m512i id = idx0;
        for (int64_t b = g / 4; 4 * b < ng; b++) {
            const __mmask64 m = mask64(16 * (ng - 4 * b));
            __m512i wa = _mm512_maskz_loadu_epi8(m, row + 64 * b), wb = _mm512_maskz_loadu_epi8(m, r1 + 64 * b);
            IN_REGISTER(wa);
            IN_REGISTER(wb);
            prefetch_l2(row + 64 * b + l2d);
            prefetch_l2(r1 + 64 * b + l2d);
            prefetch_l1(row + 64 * b + l1d);  /* l1d = 0: the line being read, a no-op */
            prefetch_l1(r1 + 64 * b + l1d);
            const __m512i la = _mm512_and_si512(wa, m0f), lb = _mm512_and_si512(wb, m0f);
            const __m512i ua = high_nibbles(wa, m0f, gfni), ub = high_nibbles(wb, m0f, gfni);
            int4_tokens(fa0, fb0, la, lb, ua, ub, id, sa, sb, qn, corr, b, n);
            id = _mm512_add_epi32(id, four);
        }
    }
    for (int t = 0; t < n; t++) {
        ya[t * ldy] = _mm512_reduce_add_ps(_mm512_add_ps(fa0[t], fa1[t]));
        yb[t * ldy] = _mm512_reduce_add_ps(_mm512_add_ps(fb0[t], fb1[t]));
    }
}

/* int8: a step is 64 bytes (2 groups, lane i = group i/8); window of 16 groups. */
static inline __attribute__((always_inline)) void dot_int8_g32(float *ya, float *yb, int64_t ldy, const uint8_t *row,
                                                               const uint8_t *r1, const uint16_t *sw, const uint16_t *sw1,
                                                               int64_t ng, const uint8_t *act, const ActLayout *L,
                                                               const int n) {
    const int8_t *q[DOT_TOKENS];
    const int32_t *corr[DOT_TOKENS];
    const float *sx[DOT_TOKENS];
    token_rows(act, L, L->off_q, n, q, corr, sx);
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    const __m512i idx0 = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    const __m512i two = _mm512_set1_epi32(2);
    const int64_t l2d = PREFETCH_BYTES, l1d = PREFETCH_L1_BYTES;
    __m512 fa0[DOT_TOKENS], fa1[DOT_TOKENS], fb0[DOT_TOKENS], fb1[DOT_TOKENS];
    for (int t = 0; t < n; t++) fa0[t] = fa1[t] = fb0[t] = fb1[t] = _mm512_setzero_ps();
    for (int64_t g = 0; g < ng; g += 16) {
        const int full = g + 16 <= ng;
        const __mmask16 gm = mask16(ng - g);
        const __m512 ha = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(gm, sw + g));
        const __m512 hb = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(gm, sw1 + g));
        __m512 sa[DOT_TOKENS], sb[DOT_TOKENS];
        for (int t = 0; t < n; t++) {
            const __m512 sxv = _mm512_maskz_loadu_ps(gm, sx[t] + g);
            sa[t] = _mm512_mul_ps(ha, sxv);
            sb[t] = _mm512_mul_ps(hb, sxv);
        }
        __m512i id = idx0;
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) {
            const int64_t b = g / 2 + j, off = 64 * b;
            if (!full && 2 * b >= ng) break;
            const __mmask64 m = full ? ~(__mmask64)0 : mask64(32 * (ng - 2 * b));
            prefetch_l2(row + off + l2d);
            prefetch_l2(r1 + off + l2d);
            prefetch_l1(row + off + l1d);  /* l1d = 0: the line being read, a no-op */
            prefetch_l1(r1 + off + l1d);
            /* masked-off bytes become 0x80 after the flip; x is zero there, so they add nothing */
            const __m512i wa = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, row + off), flip);
            const __m512i wb = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, r1 + off), flip);
            for (int t = 0; t < n; t++) {
                __m512i c = _mm512_loadu_si512(corr[t] + 16 * b), x = _mm512_loadu_si512(q[t] + off);
                IN_REGISTER(c);
                IN_REGISTER(x);
                const __m512i aa = _mm512_dpbusd_epi32(c, wa, x), ab = _mm512_dpbusd_epi32(c, wb, x);
                if (j & 1) {
                    fa1[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(aa), _mm512_permutexvar_ps(id, sa[t]), fa1[t]);
                    fb1[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ab), _mm512_permutexvar_ps(id, sb[t]), fb1[t]);
                } else {
                    fa0[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(aa), _mm512_permutexvar_ps(id, sa[t]), fa0[t]);
                    fb0[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ab), _mm512_permutexvar_ps(id, sb[t]), fb0[t]);
                }
            }
            id = _mm512_add_epi32(id, two);
        }
    }
    for (int t = 0; t < n; t++) {
        ya[t * ldy] = _mm512_reduce_add_ps(_mm512_add_ps(fa0[t], fa1[t]));
        yb[t * ldy] = _mm512_reduce_add_ps(_mm512_add_ps(fb0[t], fb1[t]));
    }
}

/* Rows r and rb against one token: a function of its own, so that its registers are allocated for
 * its loop alone (inlined beside the 2- and 3-token loops, it kept pointers on the stack: 8% slower
 * in cache). */
static __attribute__((noinline)) void dot_rows1(float *ya, float *yb, const QMat *w, const uint8_t *ra_, const uint8_t *rb_,
                                                const uint16_t *sa_, const uint16_t *sb_, const uint8_t *act,
                                                const ActLayout *L, const int gfni) {
    if (w->fmt == FMT_INT4) dot_int4_g32(ya, yb, 0, ra_, rb_, sa_, sb_, w->ng, act, L, gfni, 1);
    else dot_int8_g32(ya, yb, 0, ra_, rb_, sa_, sb_, w->ng, act, L, 1);
}

/* Rows r and rb against all nt tokens, DOT_TOKENS at a time (n a constant in each call). */
static inline __attribute__((always_inline)) void dot_rows(float *y, int64_t ldy, const QMat *w, int64_t r, int64_t rb,
                                                           const uint8_t *act, const ActLayout *L, int64_t nt,
                                                           const int gfni) {
    const uint8_t *ra_ = w->data + r * w->row_bytes, *rb_ = w->data + rb * w->row_bytes;
    const uint16_t *sa_ = w->scales + r * w->ng, *sb_ = w->scales + rb * w->ng;
#define DOT_N(n)                                                                                                 \
    (w->fmt == FMT_INT4 ? dot_int4_g32(ya, yb, ldy, ra_, rb_, sa_, sb_, w->ng, at, L, gfni, n)                   \
                        : dot_int8_g32(ya, yb, ldy, ra_, rb_, sa_, sb_, w->ng, at, L, n))
    for (int64_t t = 0; t < nt; t += DOT_TOKENS) {
        float *ya = y + t * ldy + r, *yb = y + t * ldy + rb;
        const uint8_t *at = act + t * L->stride;
        _Static_assert(DOT_TOKENS == 4, "one case per token count");
        switch (nt - t) {
        case 1: dot_rows1(ya, yb, w, ra_, rb_, sa_, sb_, at, L, gfni); break;
        case 2: DOT_N(2); break;
        case 3: DOT_N(3); break;
        default: DOT_N(4);
        }
    }
#undef DOT_N
}

/* ------------------------------------------------------------------ prefill: packed panels */

/* 4 zmm (rows 4a..4a+3 x 4 dwords each, row-major) -> out[kk] = dword kk of rows 0..15. */
static inline void quad_transpose(__m512i out[4], const __m512i z[4]) {
    const __m512i tidx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    __m512i t[4];
    for (int a = 0; a < 4; a++) t[a] = _mm512_permutexvar_epi32(tidx, z[a]);  /* lane kk = dword kk of 4 rows */
    __m512i u0 = _mm512_shuffle_i32x4(t[0], t[1], 0x44), u1 = _mm512_shuffle_i32x4(t[0], t[1], 0xEE);
    __m512i u2 = _mm512_shuffle_i32x4(t[2], t[3], 0x44), u3 = _mm512_shuffle_i32x4(t[2], t[3], 0xEE);
    out[0] = _mm512_shuffle_i32x4(u0, u2, 0x88);
    out[1] = _mm512_shuffle_i32x4(u0, u2, 0xDD);
    out[2] = _mm512_shuffle_i32x4(u1, u3, 0x88);
    out[3] = _mm512_shuffle_i32x4(u1, u3, 0xDD);
}

/* 16 bytes at rows[i] + off for 16 rows, 4 rows per zmm */
static inline void load_quads(__m512i z[4], const uint8_t *const rows[16], int64_t off) {
    for (int a = 0; a < 4; a++) {
        __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(rows[4 * a] + off)));
        v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(rows[4 * a + 1] + off)), 1);
        v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(rows[4 * a + 2] + off)), 2);
        z[a] = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(rows[4 * a + 3] + off)), 3);
    }
}

/* 16 x 16 f32 transpose in registers (unpack, shuffle, then 128-bit lane shuffles). */
static inline void transpose16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
        r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int j = 0; j < 4; j++) {  /* r[4q + j] lane L holds column 4L + j of rows 4q..4q+3 */
        const __m512 ab0 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x44), ab1 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xEE);
        const __m512 cd0 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x44), cd1 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xEE);
        t[j] = _mm512_shuffle_f32x4(ab0, cd0, 0x88);
        t[4 + j] = _mm512_shuffle_f32x4(ab0, cd0, 0xDD);
        t[8 + j] = _mm512_shuffle_f32x4(ab1, cd1, 0x88);
        t[12 + j] = _mm512_shuffle_f32x4(ab1, cd1, 0xDD);
    }
    for (int i = 0; i < 16; i++) r[i] = t[i];
}

/* Panel of rows [r0, r0 + 16): P (kp/4 quads, 16 rows, 4 bytes) of unsigned weights, group-major;
 * PS (ng, 16) f32 scales. Rows past the matrix repeat the last row (their outputs are dropped). */
static void pack_panel(uint8_t *P, float *PS, const QMat *w, int64_t r0, int64_t r1, int64_t rend) {
    const uint8_t *rows[16];
    for (int i = 0; i < 16; i++) rows[i] = w->data + (r0 + i < r1 ? r0 + i : r1 - 1) * w->row_bytes;
    const int64_t G = w->group;
    /* the next panel is the next 16 rows, one contiguous block: fetch it into L2 while packing */
    const int64_t nrows = rend - r1 < 16 ? rend - r1 : 16, next_bytes = nrows * w->row_bytes;
    const uint8_t *next = w->data + r1 * w->row_bytes;
    const int64_t per_group = (next_bytes / w->ng + 63) / 64 * 64;
    const __m512i m0f = _mm512_set1_epi8(0x0F), flip = _mm512_set1_epi8((char)0x80);
    __m512i *out = (__m512i *)P;
    for (int64_t g = 0; g < w->ng; g++) {
        __m512i z[4], v[4], hz[4];
        for (int64_t o = g * per_group; o < (g + 1) * per_group && o < next_bytes; o += 64)
            _mm_prefetch((const char *)(next + o), _MM_HINT_T1);
        for (int64_t c = 0; c < G / 32; c++) {   /* 16 stored bytes per row at a time */
            if (w->fmt == FMT_INT4) {
                const int64_t off = g * (G / 2) + 16 * c, kq = g * (G / 4) + 4 * c;  /* low: elements 16c.. */
                load_quads(z, rows, off);
                for (int a = 0; a < 4; a++) {
                    hz[a] = _mm512_and_si512(_mm512_srli_epi16(z[a], 4), m0f);  /* high: G/2 + 16c.. */
                    z[a] = _mm512_and_si512(z[a], m0f);
                }
                quad_transpose(v, z);
                for (int i = 0; i < 4; i++) _mm512_storeu_si512(out + kq + i, v[i]);
                quad_transpose(v, hz);
                for (int i = 0; i < 4; i++) _mm512_storeu_si512(out + kq + G / 8 + i, v[i]);
            } else {
                for (int h = 0; h < 2; h++) {
                    const int64_t off = g * G + 32 * c + 16 * h;
                    load_quads(z, rows, off);
                    for (int a = 0; a < 4; a++) z[a] = _mm512_xor_si512(z[a], flip);
                    quad_transpose(v, z);
                    for (int i = 0; i < 4; i++) _mm512_storeu_si512(out + off / 4 + i, v[i]);
                }
            }
        }
    }
    for (int64_t g = 0; g < w->ng; g += 16) {  /* scales: 16 rows x 16 groups, transposed */
        const __mmask16 m = mask16(w->ng - g);
        __m512 r[16];
        for (int i = 0; i < 16; i++)
            r[i] = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, w->scales + (r0 + i < r1 ? r0 + i : r1 - 1) * w->ng + g));
        transpose16(r);
        for (int c = 0; c < 16 && g + c < w->ng; c++) _mm512_storeu_ps(PS + (g + c) * 16, r[c]);
    }
}

typedef int32_t __attribute__((may_alias, aligned(1))) i32u;

/* One pass of NT tokens (t0 and on; the last tb real, the rest repeating the last) over a packed
 * panel: the NT f32 accumulators stay in registers while each 8 weight quads are loaded once
 * (quads = 4 k-steps). NT is a constant where this is inlined, so the arrays are registers. */
static inline __attribute__((always_inline)) void panel_pass(float *y, int64_t ldy, const uint8_t *P, const float *PS,
                                                             const QMat *w, const ActLayout *L, const uint8_t *act,
                                                             int64_t t0, int tb, int64_t rows, const int NT) {
    const int64_t G = w->group, qpg = G / 4;
    const int32_t off = w->fmt == FMT_INT4 ? 8 : 128;
    const __m512i *pw = (const __m512i *)P;
    const int8_t *q[8];
    const float *s[8];
    const int32_t *sum[8];
#pragma GCC unroll 8
    for (int t = 0; t < NT; t++) {
        const uint8_t *a = act + (t0 + (t < tb ? t : tb - 1)) * L->stride;
        q[t] = (const int8_t *)(a + L->off_q);
        s[t] = (const float *)(a + L->off_s);
        sum[t] = (const int32_t *)(a + L->off_sum);
    }
    __m512 f[8];
#pragma GCC unroll 8
    for (int t = 0; t < NT; t++) f[t] = _mm512_setzero_ps();
    for (int64_t g = 0; g < w->ng; g++) {
        __m512i acc[8];
#pragma GCC unroll 8
        for (int t = 0; t < NT; t++) acc[t] = _mm512_set1_epi32(-off * sum[t][g]);
        for (int64_t c = 0; c < qpg; c += 8) {
            const __m512i *pq = pw + g * qpg + c;
            const int64_t e = g * G + 4 * c;
#pragma GCC unroll 8
            for (int i = 0; i < 8; i++) {
                const __m512i wv = _mm512_loadu_si512(pq + i);
#pragma GCC unroll 8
                for (int t = 0; t < NT; t++)
                    acc[t] = _mm512_dpbusd_epi32(acc[t], wv, _mm512_set1_epi32(*(const i32u *)(q[t] + e + 4 * i)));
            }
        }
        const __m512 sw = _mm512_loadu_ps(PS + 16 * g);
#pragma GCC unroll 8
        for (int t = 0; t < NT; t++)
            f[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[t]), _mm512_mul_ps(sw, _mm512_set1_ps(s[t][g])), f[t]);
    }
    const __mmask16 m = mask16(rows);
#pragma GCC unroll 8
    for (int t = 0; t < NT; t++)
        if (t < tb) _mm512_mask_storeu_ps(y + (t0 + t) * ldy, m, f[t]);
}

/* y[t, r0..r0+16) for tokens [0, nt) from a packed panel: passes of 8 tokens, and the last 1-4
 * alone in a pass of 4 (a pass costs the same whatever its real tokens: 8 for 1-4 tokens wasted
 * up to 7 of them, a tenth of an expert's work at ~32 tokens each). */
static void panel_gemm(float *y, int64_t ldy, const uint8_t *P, const float *PS, const QMat *w,
                       const ActLayout *L, const uint8_t *act, int64_t nt, int64_t rows) {
    for (int64_t t0 = 0; t0 < nt; t0 += 8) {
        const int tb = (int)(nt - t0 < 8 ? nt - t0 : 8);
        if (tb <= 4) panel_pass(y, ldy, P, PS, w, L, act, t0, tb, rows, 4);
        else panel_pass(y, ldy, P, PS, w, L, act, t0, tb, rows, 8);
    }
}

static inline __attribute__((always_inline)) void qgemm_avx512_t(float *y, int64_t ldy, const QMat *w, const ActLayout *L, const uint8_t *act,
                                  int64_t nt, int64_t r0, int64_t r1, uint8_t *scratch, const int gfni) {
    if (w->group % 32) { qgemm_scalar(y, ldy, w, L, act, nt, r0, r1, scratch); return; }
    if (w->group == 32 && (nt < PANEL_MIN_T || L->one_token)) {
        /* decode: rows r and r + h in step, h = half the range, so that each is one sequential
         * stream (two rows side by side read worse from DRAM: 81-84% of the read bandwidth with
         * two threads against 84-92% for rows half a range apart, same arithmetic) */
        const int64_t h = (r1 - r0 + 1) / 2, ahead = prefetch_rows(w);
        for (int64_t r = r0; r < r0 + h; r++) {
            const int64_t rb = r + h < r1 ? r + h : r;  /* an odd range's last row pairs with itself */
            prefetch_scales(w, r + ahead);
            prefetch_scales(w, rb + ahead);
            dot_rows(y, ldy, w, r, rb, act, L, nt, gfni);
        }
        return;
    }
    uint8_t *P = (uint8_t *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    float *PS = (float *)(P + 16 * w->kp);
    for (int64_t r = r0; r < r1; r += 16) {
        int64_t re = r + 16 < r1 ? r + 16 : r1;
        pack_panel(P, PS, w, r, re, r1);
        panel_gemm(y + r, ldy, P, PS, w, L, act, nt, re - r);
    }
}

static void qgemm_avx512(float *y, int64_t ldy, const QMat *w, const ActLayout *L, const uint8_t *act,
                         int64_t nt, int64_t r0, int64_t r1, uint8_t *scratch) {
    qgemm_avx512_t(y, ldy, w, L, act, nt, r0, r1, scratch, 0);
}

static void qgemm_avx512_gfni(float *y, int64_t ldy, const QMat *w, const ActLayout *L, const uint8_t *act,
                              int64_t nt, int64_t r0, int64_t r1, uint8_t *scratch) {
    qgemm_avx512_t(y, ldy, w, L, act, nt, r0, r1, scratch, 1);
}

/* ------------------------------------------------------------------ float weights */

static inline __m512 load_w(const QMat *w, const uint8_t *row, int64_t e, __mmask16 m) {
    if (w->fmt == FMT_F32) return _mm512_maskz_loadu_ps(m, (const float *)row + e);
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)row + e);
    if (w->fmt == FMT_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

static void fgemm_avx512(float *y, int64_t ldy, const QMat *w, const float *x, int64_t ldx,
                         int64_t nt, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = w->data + r * w->row_bytes;
        for (int64_t t0 = 0; t0 < nt; t0 += 4) {
            int tb = (int)(nt - t0 < 4 ? nt - t0 : 4);
            __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
            for (int64_t e = 0; e < w->k; e += 16) {
                __mmask16 m = mask16(w->k - e);
                __m512 wv = load_w(w, row, e, m);
                for (int t = 0; t < tb; t++)
                    acc[t] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, x + (t0 + t) * ldx + e), acc[t]);
            }
            for (int t = 0; t < tb; t++) y[(t0 + t) * ldy + r] = _mm512_reduce_add_ps(acc[t]);
        }
    }
}

/* ------------------------------------------------------------------ attention */

/* exp(x) for f32 lanes (Cephes-style: x = n ln2 + r, degree-6 polynomial; ~1 ulp). */
static inline __m512 exp512(__m512 x) {
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.3762626647949f)), _mm512_set1_ps(-88.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500E-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

static inline __m512 kv16(const void *base, int64_t i, int kv_f16) {
    if (kv_f16) return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)base + i)));
    return _mm512_loadu_ps((const float *)base + i);
}

/* Rows in blocks of 4 (a GQA group at one query shares its limit); per block of 16 positions:
 * scores (4 x 16) from the d-major key block, online softmax, then o += p V. */
static void attn_avx512(float *out, const float *q, int64_t R, const int64_t *limit, const void *kt,
                        const void *v, int64_t hd, float scale, int kv_f16, float *scratch) {
    if (hd % 16 || hd > 256) { attn_scalar(out, q, R, limit, kt, v, hd, scale, kv_f16, scratch); return; }
    const int64_t nv = hd / 16;
    float *p = scratch;  /* (4, 16) probabilities of the current block */
    for (int64_t r0 = 0; r0 < R; r0 += 4) {
        const int rb = (int)(R - r0 < 4 ? R - r0 : 4);
        int64_t lim = 0;
        for (int i = 0; i < rb; i++) lim = limit[r0 + i] > lim ? limit[r0 + i] : lim;
        float m[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY}, l[4] = {0, 0, 0, 0};
        __m512 o[4][16];
        for (int i = 0; i < 4; i++)
            for (int64_t d = 0; d < nv; d++) o[i][d] = _mm512_setzero_ps();
        for (int64_t s0 = 0; s0 < lim; s0 += 16) {
            const int64_t blk = s0 / 16;
            __m512 sc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
            for (int64_t d = 0; d < hd; d++) {
                __m512 kd = kv16(kt, (blk * hd + d) * 16, kv_f16);
                for (int i = 0; i < rb; i++) sc[i] = _mm512_fmadd_ps(_mm512_set1_ps(q[(r0 + i) * hd + d]), kd, sc[i]);
            }
            for (int i = 0; i < rb; i++) {
                int64_t valid = limit[r0 + i] - s0;
                __mmask16 vm = valid <= 0 ? 0 : mask16(valid);
                __m512 x = _mm512_mask_blend_ps(vm, _mm512_set1_ps(-INFINITY), _mm512_mul_ps(sc[i], _mm512_set1_ps(scale)));
                float bm = vm ? _mm512_reduce_max_ps(x) : -INFINITY;
                if (bm > m[i]) {
                    float c = m[i] == -INFINITY ? 0.0f : expf(m[i] - bm);
                    l[i] *= c;
                    for (int64_t d = 0; d < nv; d++) o[i][d] = _mm512_mul_ps(o[i][d], _mm512_set1_ps(c));
                    m[i] = bm;
                }
                __m512 e = vm ? _mm512_maskz_mov_ps(vm, exp512(_mm512_sub_ps(x, _mm512_set1_ps(m[i])))) : _mm512_setzero_ps();
                l[i] += _mm512_reduce_add_ps(e);
                _mm512_storeu_ps(p + 16 * i, e);
            }
            int64_t send = lim - s0 < 16 ? lim - s0 : 16;
            for (int64_t j = 0; j < send; j++) {
                for (int64_t d = 0; d < nv; d++) {
                    __m512 vv = kv16(v, (s0 + j) * hd + 16 * d, kv_f16);
                    for (int i = 0; i < rb; i++) o[i][d] = _mm512_fmadd_ps(_mm512_set1_ps(p[16 * i + j]), vv, o[i][d]);
                }
            }
        }
        for (int i = 0; i < rb; i++) {
            __m512 inv = _mm512_set1_ps(l[i] > 0.0f ? 1.0f / l[i] : 0.0f);
            for (int64_t d = 0; d < nv; d++) _mm512_storeu_ps(out + (r0 + i) * hd + 16 * d, _mm512_mul_ps(o[i][d], inv));
        }
    }
}

static void silu_mul_avx512(float *g, const float *u, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = mask16(n - i);
        const __m512 a = _mm512_maskz_loadu_ps(m, g + i);
        const __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), a));
        const __m512 s = _mm512_div_ps(a, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
        _mm512_mask_storeu_ps(g + i, m, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(m, u + i)));
    }
}

const Kernels kernels_avx512vnni = {"avx512", quantize_avx512, qgemm_avx512, fgemm_avx512, attn_avx512, silu_mul_avx512,
                                    4096, 1024};
/* the same with GFNI for the int4 high nibbles (dispatch picks it where the CPU has GFNI) */
const Kernels kernels_avx512vnni_gfni = {"avx512", quantize_avx512, qgemm_avx512_gfni, fgemm_avx512, attn_avx512,
                                         silu_mul_avx512, 4096, 1024};
