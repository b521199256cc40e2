/* NEON kernels (AArch64, compiled with -march=armv8.2-a+dotprod). Integer dots are sdot (s8 x s8):
 * G = 32 (the default): decode runs two rows and four groups at a time (dot2_g32), prefill packs
 * 4-row panels for sdot by element (panel4_gemm; with +i8mm, kernels_i8mm.c, 8-row panels for
 * smmla); other group sizes (multiples of 32) unpack int4 nibbles to q = u - 8 and scale each
 * group's int32 sum once, in the scalar reference's order. Activation quantizing, SiLU-mul and
 * attention are NEON too. Used where the CPU reports dotprod (dispatch.c); without it, the same
 * code as kernels_neon80.c.
 */
#include <arm_neon.h>
#include <math.h>
#include <string.h>

#include "kernels.h"

/* sdot: each int32 lane of acc plus the sum of 4 byte products (a's lane bytes times b's; by
 * element: b's 4-byte lane `lane` for every lane of a). Armv8.0 lacks it (kernels_neon80.c): there
 * widening multiplies and pairwise adds give the same int32 sums, 6 instructions for 1. */
#ifdef CACTUS_NO_DOTPROD
static inline int32x4_t sdot_v80(int32x4_t acc, int8x16_t a, int8x16_t b) {
    const int16x8_t lo = vmull_s8(vget_low_s8(a), vget_low_s8(b)), hi = vmull_high_s8(a, b);  /* |p| <= 2^14 */
    return vaddq_s32(acc, vpaddq_s32(vpaddlq_s16(lo), vpaddlq_s16(hi)));
}
#define SDOT(acc, a, b) sdot_v80((acc), (a), (b))
#define SDOT_LANE(acc, a, b, lane) sdot_v80((acc), (a), vreinterpretq_s8_s32(vdupq_laneq_s32(vreinterpretq_s32_s8(b), (lane))))
#else
#define SDOT(acc, a, b) vdotq_s32((acc), (a), (b))
#define SDOT_LANE(acc, a, b, lane) vdotq_laneq_s32((acc), (a), (b), (lane))
#endif

static float dot_int4(const uint8_t *row, const uint16_t *sw, int64_t ng, int64_t G, const int8_t *q, const float *s) {
    const uint8x16_t m0f = vdupq_n_u8(0x0F);
    const int8x16_t eight = vdupq_n_s8(8);
    float acc = 0.0f;
    for (int64_t g = 0; g < ng; g++) {
        int32x4_t isum = vdupq_n_s32(0);
        const uint8_t *b = row + g * (G / 2);
        const int8_t *x = q + g * G;
        for (int64_t c = 0; c < G / 32; c++) {
            uint8x16_t w = vld1q_u8(b + 16 * c);
            int8x16_t lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(w, m0f)), eight);
            int8x16_t hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(w, 4)), eight);
            isum = SDOT(isum, lo, vld1q_s8(x + 16 * c));
            isum = SDOT(isum, hi, vld1q_s8(x + G / 2 + 16 * c));
        }
        __fp16 h;
        memcpy(&h, sw + g, 2);
        acc += ((float)vaddvq_s32(isum) * s[g]) * (float)h;
    }
    return acc;
}

static float dot_int8(const uint8_t *row, const uint16_t *sw, int64_t ng, int64_t G, const int8_t *q, const float *s) {
    float acc = 0.0f;
    for (int64_t g = 0; g < ng; g++) {
        int32x4_t isum = vdupq_n_s32(0);
        for (int64_t c = 0; c < G; c += 16)
            isum = SDOT(isum, vld1q_s8((const int8_t *)row + g * G + c), vld1q_s8(q + g * G + c));
        __fp16 h;
        memcpy(&h, sw + g, 2);
        acc += ((float)vaddvq_s32(isum) * s[g]) * (float)h;
    }
    return acc;
}

/* G = 32, two rows (a, b) against one token, 4 groups per step: the activation loads are shared,
 * the 4 groups' int32 sums are gathered into one vector by pairwise adds and scaled as a vector,
 * so no horizontal add and no serial scalar chain per group. int4 uses the stored nibble u = q + 8
 * directly and takes 8 * sum(x) of each group back (exact in int32). The last < 4 groups go
 * through dot_int4 / dot_int8. */
static inline int32x4_t four_groups(const int32x4_t i[4]) {
    return vpaddq_s32(vpaddq_s32(i[0], i[1]), vpaddq_s32(i[2], i[3]));  /* lane j = sum of i[j] */
}

static inline float32x4_t group_scales(const uint16_t *sw, const float *sx) {
    __fp16 h[4];
    memcpy(h, sw, 8);
    return vmulq_f32(vcvt_f32_f16(vld1_f16(h)), vld1q_f32(sx));
}

static void dot2_g32(float y[2], const QMat *w, const uint8_t *ra, const uint8_t *rb, const uint16_t *sa,
                     const uint16_t *sb, const uint8_t *act, const ActLayout *L) {
    const int8_t *q = (const int8_t *)(act + L->off_q);
    const float *s = (const float *)(act + L->off_s);
    const int32_t *sum = (const int32_t *)(act + L->off_sum);
    const int64_t ng = w->ng;
    const uint8x16_t m0f = vdupq_n_u8(0x0F);
    const int32x4_t zero = vdupq_n_s32(0);
    float32x4_t fa = vdupq_n_f32(0.0f), fb = fa;
    int64_t g = 0;
    for (; g + 4 <= ng; g += 4) {
        int32x4_t ia[4], ib[4];
        for (int j = 0; j < 4; j++) {
            const int8_t *x = q + 32 * (g + j);
            const int8x16_t xl = vld1q_s8(x), xh = vld1q_s8(x + 16);
            if (w->fmt == FMT_INT4) {
                const uint8x16_t wa = vld1q_u8(ra + 16 * (g + j)), wb = vld1q_u8(rb + 16 * (g + j));
                ia[j] = SDOT(SDOT(zero, vreinterpretq_s8_u8(vandq_u8(wa, m0f)), xl),
                                  vreinterpretq_s8_u8(vshrq_n_u8(wa, 4)), xh);
                ib[j] = SDOT(SDOT(zero, vreinterpretq_s8_u8(vandq_u8(wb, m0f)), xl),
                                  vreinterpretq_s8_u8(vshrq_n_u8(wb, 4)), xh);
            } else {
                const int8_t *pa = (const int8_t *)ra + 32 * (g + j), *pb = (const int8_t *)rb + 32 * (g + j);
                ia[j] = SDOT(SDOT(zero, vld1q_s8(pa), xl), vld1q_s8(pa + 16), xh);
                ib[j] = SDOT(SDOT(zero, vld1q_s8(pb), xl), vld1q_s8(pb + 16), xh);
            }
        }
        int32x4_t ga = four_groups(ia), gb = four_groups(ib);
        if (w->fmt == FMT_INT4) {
            const int32x4_t corr = vshlq_n_s32(vld1q_s32(sum + g), 3);
            ga = vsubq_s32(ga, corr);
            gb = vsubq_s32(gb, corr);
        }
        fa = vfmaq_f32(fa, vcvtq_f32_s32(ga), group_scales(sa + g, s + g));
        fb = vfmaq_f32(fb, vcvtq_f32_s32(gb), group_scales(sb + g, s + g));
    }
    y[0] = vaddvq_f32(fa);
    y[1] = vaddvq_f32(fb);
    if (g < ng) {
        const int64_t rest = ng - g, qo = 32 * g, bo = w->fmt == FMT_INT4 ? 16 * g : 32 * g;
        if (w->fmt == FMT_INT4) {
            y[0] += dot_int4(ra + bo, sa + g, rest, 32, q + qo, s + g);
            y[1] += dot_int4(rb + bo, sb + g, rest, 32, q + qo, s + g);
        } else {
            y[0] += dot_int8(ra + bo, sa + g, rest, 32, q + qo, s + g);
            y[1] += dot_int8(rb + bo, sb + g, rest, 32, q + qo, s + g);
        }
    }
}

/* G = 32, the same two rows against NT tokens (NT a constant where this is inlined, so the
 * per-token arrays are registers): qgemm of 2+ tokens without panels (ActLayout.one_token: batched
 * decode, speculative verification; and nt < PANEL_MIN_T). Called once per token, dot2_g32 loaded
 * and (int4) unpacked every weight vector again for each token; here each is loaded and unpacked
 * once per step and serves all NT tokens. Every token must get, bit for bit, what dot2_g32 gives it
 * alone, so its arithmetic is dot2_g32's: the same sdot chains (zero, lo, hi) per group, the groups'
 * int32 sums in four_groups' lanes (integer adds are exact, so adding pairs as each group arrives
 * gives the same sums), the same 8 * sum(x) correction, the same group scales, one fma per step into
 * its own accumulators, vaddvq_f32, and the tail through dot_int4 / dot_int8. Group-major with the
 * tokens inside: one group's 4 weight vectors are live at a time, and a token carries 2 int32
 * vectors per row across the step (groups 0 + 1 added, group 2) and its 2 float accumulators,
 * 6 q registers per token: 3 tokens fit AArch64's 32 with the weights, activations and constants.
 * fmt is a constant too (qgemm_neon's one test of w->fmt), so no step tests it. */
enum { TOKENS_MAX = 3 };

static inline __attribute__((always_inline)) void dot2_g32_tokens(float *y, int64_t ldy, int64_t r, int64_t rb,
                                                                  const QMat *w, const uint8_t *ra, const uint8_t *rbp,
                                                                  const uint16_t *sa, const uint16_t *sb,
                                                                  const uint8_t *act, const ActLayout *L, const int NT,
                                                                  const int fmt) {
    const int8_t *q[TOKENS_MAX], *xq[TOKENS_MAX];  /* xq: the token's next group, post-incremented: ld1 has no offset */
    const float *s[TOKENS_MAX];
    const int32_t *sum[TOKENS_MAX];
#pragma GCC unroll 4
    for (int t = 0; t < NT; t++) {
        const uint8_t *a = act + t * L->stride;
        q[t] = xq[t] = (const int8_t *)(a + L->off_q);
        s[t] = (const float *)(a + L->off_s);
        sum[t] = (const int32_t *)(a + L->off_sum);
    }
    const int64_t ng = w->ng;
    const uint8x16_t m0f = vdupq_n_u8(0x0F);
    const int32x4_t zero = vdupq_n_s32(0);
    float32x4_t fa[TOKENS_MAX], fb[TOKENS_MAX];
#pragma GCC unroll 4
    for (int t = 0; t < NT; t++) fa[t] = fb[t] = vdupq_n_f32(0.0f);
    int64_t g = 0;
    for (; g + 4 <= ng; g += 4) {
        /* per token and row: pa = groups 0 and 1 pairwise added, then (after group 3) four_groups;
         * ha = group 2's sdot sums until group 3 arrives */
        int32x4_t pa[TOKENS_MAX], pb[TOKENS_MAX], ha[TOKENS_MAX], hb[TOKENS_MAX];
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            int8x16_t wal, wah, wbl, wbh;  /* group g + j of rows a and b: elements 0..15, 16..31 */
            if (fmt == FMT_INT4) {
                const uint8x16_t wa = vld1q_u8(ra + 16 * (g + j)), wb = vld1q_u8(rbp + 16 * (g + j));
                wal = vreinterpretq_s8_u8(vandq_u8(wa, m0f));
                wah = vreinterpretq_s8_u8(vshrq_n_u8(wa, 4));
                wbl = vreinterpretq_s8_u8(vandq_u8(wb, m0f));
                wbh = vreinterpretq_s8_u8(vshrq_n_u8(wb, 4));
            } else {
                const int8_t *pwa = (const int8_t *)ra + 32 * (g + j), *pwb = (const int8_t *)rbp + 32 * (g + j);
                wal = vld1q_s8(pwa);
                wah = vld1q_s8(pwa + 16);
                wbl = vld1q_s8(pwb);
                wbh = vld1q_s8(pwb + 16);
            }
#pragma GCC unroll 4
            for (int t = 0; t < NT; t++) {
                const int8x16x2_t x = vld1q_s8_x2(xq[t]);  /* one instruction (ld1 of 2 registers) */
                xq[t] += 32;
                const int8x16_t xl = x.val[0], xh = x.val[1];
                const int32x4_t ia = SDOT(SDOT(zero, wal, xl), wah, xh), ib = SDOT(SDOT(zero, wbl, xl), wbh, xh);
                if (j == 0) { pa[t] = ia; pb[t] = ib; }
                else if (j == 1) { pa[t] = vpaddq_s32(pa[t], ia); pb[t] = vpaddq_s32(pb[t], ib); }
                else if (j == 2) { ha[t] = ia; hb[t] = ib; }
                else { pa[t] = vpaddq_s32(pa[t], vpaddq_s32(ha[t], ia)); pb[t] = vpaddq_s32(pb[t], vpaddq_s32(hb[t], ib)); }
            }
        }
        __fp16 h[4];  /* the rows' group scales, converted once for all tokens */
        memcpy(h, sa + g, 8);
        const float32x4_t wsa = vcvt_f32_f16(vld1_f16(h));
        memcpy(h, sb + g, 8);
        const float32x4_t wsb = vcvt_f32_f16(vld1_f16(h));
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) {
            if (fmt == FMT_INT4) {  /* - 8 * sum(x), as dot2_g32's shift and subtract: integers, exact */
                const int32x4_t sx8 = vld1q_s32(sum[t] + g);
                pa[t] = vmlsq_n_s32(pa[t], sx8, 8);
                pb[t] = vmlsq_n_s32(pb[t], sx8, 8);
            }
            const float32x4_t sx = vld1q_f32(s[t] + g);
            fa[t] = vfmaq_f32(fa[t], vcvtq_f32_s32(pa[t]), vmulq_f32(wsa, sx));  /* group_scales' product */
            fb[t] = vfmaq_f32(fb[t], vcvtq_f32_s32(pb[t]), vmulq_f32(wsb, sx));
        }
    }
    float ya[TOKENS_MAX], yb[TOKENS_MAX];
#pragma GCC unroll 4
    for (int t = 0; t < NT; t++) {  /* a loop of its own: fa and fb stay registers (never indexed by a variable) */
        ya[t] = vaddvq_f32(fa[t]);
        yb[t] = vaddvq_f32(fb[t]);
    }
#pragma GCC unroll 4
    for (int t = 0; t < NT; t++) {
        if (g < ng) {  /* the last < 4 groups, per token as dot2_g32 */
            const int64_t rest = ng - g, qo = 32 * g, bo = fmt == FMT_INT4 ? 16 * g : 32 * g;
            if (fmt == FMT_INT4) {
                ya[t] += dot_int4(ra + bo, sa + g, rest, 32, q[t] + qo, s[t] + g);
                yb[t] += dot_int4(rbp + bo, sb + g, rest, 32, q[t] + qo, s[t] + g);
            } else {
                ya[t] += dot_int8(ra + bo, sa + g, rest, 32, q[t] + qo, s[t] + g);
                yb[t] += dot_int8(rbp + bo, sb + g, rest, 32, q[t] + qo, s[t] + g);
            }
        }
        y[t * ldy + r] = ya[t];
        y[t * ldy + rb] = yb[t];
    }
}

/* G = 32, 2+ tokens without panels: dot2_g32's row pairs (r, r + h), the tokens in blocks of 3 and 2
 * (never 1: a lone token's block costs nearly a one-token call; 4 = 2 + 2, not 3 + 1). In the
 * compiled loops (gcc 12 -O3, per 4-group step of the two rows, per token) int4 takes 63.5 (2
 * tokens) and 62 (3) instructions where a one-token call takes 81, int8 54.5 and 55 for 73. A
 * function of its own (noinline) so that qgemm_neon's one-token loop, decode's, compiles as it did. */
static __attribute__((noinline)) void qgemm_tokens_g32(float *y, int64_t ldy, const QMat *w, const ActLayout *L,
                                                       const uint8_t *act, int64_t nt, int64_t r0, int64_t r1) {
    const int64_t h = (r1 - r0 + 1) / 2;
    for (int64_t r = r0; r < r0 + h; r++) {
        const int64_t rb = r + h < r1 ? r + h : r;
        const uint8_t *ra_ = w->data + r * w->row_bytes, *rb_ = w->data + rb * w->row_bytes;
        const uint16_t *sa_ = w->scales + r * w->ng, *sb_ = w->scales + rb * w->ng;
        for (int64_t t = 0; t < nt;) {
            const int64_t left = nt - t;  /* >= 2: 3s, then 2 or 2 + 2 */
            const int nb = left == 2 || left == 4 ? 2 : 3;
            float *yt = y + t * ldy;
            const uint8_t *at = act + t * L->stride;
            if (w->fmt == FMT_INT4) {
                if (nb == 3) dot2_g32_tokens(yt, ldy, r, rb, w, ra_, rb_, sa_, sb_, at, L, 3, FMT_INT4);
                else dot2_g32_tokens(yt, ldy, r, rb, w, ra_, rb_, sa_, sb_, at, L, 2, FMT_INT4);
            } else {
                if (nb == 3) dot2_g32_tokens(yt, ldy, r, rb, w, ra_, rb_, sa_, sb_, at, L, 3, FMT_INT8);
                else dot2_g32_tokens(yt, ldy, r, rb, w, ra_, rb_, sa_, sb_, at, L, 2, FMT_INT8);
            }
            t += nb;
        }
    }
}

/* Prefill (nt >= PANEL_MIN_T tokens, G = 32): 4 rows are packed into a panel where each 32-bit lane holds
 * 4 signed weights of one row (int4 unpacked to q = u - 8, int8 as stored), group-major: vector c
 * of group g holds elements 4c..4c+3 of the group for rows 0..3. Then per token, the group's 32
 * activation bytes are two registers and `sdot` by element multiplies each weight vector by one
 * 4-byte element of them: 8 sdot per (4 rows, token, group), one lane per row, scaled once. The
 * weight vectors are loaded once per 4 tokens. */
/* v[i] = 4 dwords of row i -> v[c] = dword c of rows 0..3 */
static inline void transpose4_s32(int32x4_t v[4]) {
    const int32x4_t t0 = vtrn1q_s32(v[0], v[1]), t1 = vtrn2q_s32(v[0], v[1]);  /* d0 d2 | d1 d3 of rows 0, 1 */
    const int32x4_t t2 = vtrn1q_s32(v[2], v[3]), t3 = vtrn2q_s32(v[2], v[3]);
    v[0] = vreinterpretq_s32_s64(vtrn1q_s64(vreinterpretq_s64_s32(t0), vreinterpretq_s64_s32(t2)));
    v[1] = vreinterpretq_s32_s64(vtrn1q_s64(vreinterpretq_s64_s32(t1), vreinterpretq_s64_s32(t3)));
    v[2] = vreinterpretq_s32_s64(vtrn2q_s64(vreinterpretq_s64_s32(t0), vreinterpretq_s64_s32(t2)));
    v[3] = vreinterpretq_s32_s64(vtrn2q_s64(vreinterpretq_s64_s32(t1), vreinterpretq_s64_s32(t3)));
}

/* The panel's scales: (4 rows, ng groups) f16 -> (ng groups, 4 rows) f32; a short panel repeats its
 * last row. */
static void pack_scales4(float *PS, const QMat *w, int64_t r0, int64_t r1) {
    const int64_t ng = w->ng;
    const uint16_t *sc[4];
    for (int i = 0; i < 4; i++) sc[i] = w->scales + (r0 + i < r1 ? r0 + i : r1 - 1) * ng;
    int64_t g = 0;
    for (; g + 4 <= ng; g += 4) {
        int32x4_t v[4];
        for (int i = 0; i < 4; i++) v[i] = vreinterpretq_s32_f32(vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(sc[i] + g))));
        transpose4_s32(v);
        for (int j = 0; j < 4; j++) vst1q_f32(PS + (g + j) * 4, vreinterpretq_f32_s32(v[j]));
    }
    for (; g < ng; g++)
        for (int i = 0; i < 4; i++) PS[g * 4 + i] = f16_to_f32(sc[i][g]);
}

/* Group g of a row as signed bytes: elements 0..15 (lo) and 16..31 (hi); int4 as q = u - 8. */
static inline void group_bytes(const QMat *w, const uint8_t *row, int64_t g, int8x16_t *lo, int8x16_t *hi) {
    if (w->fmt == FMT_INT4) {
        const uint8x16_t b = vld1q_u8(row + 16 * g);
        *lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(b, vdupq_n_u8(0x0F))), vdupq_n_s8(8));
        *hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(b, 4)), vdupq_n_s8(8));
    } else {
        *lo = vld1q_s8((const int8_t *)row + 32 * g);
        *hi = vld1q_s8((const int8_t *)row + 32 * g + 16);
    }
}

static void pack_panel4(int8_t *P, float *PS, const QMat *w, int64_t r0, int64_t r1) {
    const uint8_t *rows[4];
    for (int i = 0; i < 4; i++) rows[i] = w->data + (r0 + i < r1 ? r0 + i : r1 - 1) * w->row_bytes;  /* a short panel repeats its last row */
    for (int64_t g = 0; g < w->ng; g++) {
        int32x4_t lo[4], hi[4];  /* row i: elements 0..15 and 16..31 of group g, signed */
        for (int i = 0; i < 4; i++) {
            int8x16_t l, h;
            group_bytes(w, rows[i], g, &l, &h);
            lo[i] = vreinterpretq_s32_s8(l);
            hi[i] = vreinterpretq_s32_s8(h);
        }
        transpose4_s32(lo);
        transpose4_s32(hi);
        for (int c = 0; c < 4; c++) {
            vst1q_s32((int32_t *)(P + (g * 8 + c) * 16), lo[c]);
            vst1q_s32((int32_t *)(P + (g * 8 + 4 + c) * 16), hi[c]);
        }
    }
    pack_scales4(PS, w, r0, r1);
}

/* A token's 8 sdot as two chains of 4 (A over the group's first 16 activations, B over the last
 * 16): with one chain of 8 per token, a pass of 4 tokens had 4 chains 8 deep, so it waited on sdot
 * latency (3-4 cycles) rather than issuing 2-4 per cycle; two chains halve that wait. */
#define SDOT8(A, B, X0, X1)                                                                    \
    do {                                                                                       \
        A = SDOT_LANE(A, wv[0], X0, 0); B = SDOT_LANE(B, wv[4], X1, 0);          \
        A = SDOT_LANE(A, wv[1], X0, 1); B = SDOT_LANE(B, wv[5], X1, 1);          \
        A = SDOT_LANE(A, wv[2], X0, 2); B = SDOT_LANE(B, wv[6], X1, 2);          \
        A = SDOT_LANE(A, wv[3], X0, 3); B = SDOT_LANE(B, wv[7], X1, 3);          \
    } while (0)

/* The NT tokens of a pass from t0 (tb real: a short pass repeats its last): quantized activations
 * and group scales. */
static inline __attribute__((always_inline)) void pass_tokens(const int8_t *q[4], const float *s[4], const ActLayout *L,
                                                              const uint8_t *act, int64_t t0, int tb, int NT) {
    for (int t = 0; t < NT; t++) {
        const uint8_t *a = act + (t0 + (t < tb ? t : tb - 1)) * L->stride;
        q[t] = (const int8_t *)(a + L->off_q);
        s[t] = (const float *)(a + L->off_s);
    }
}

/* One pass of NT tokens from t0 (NT a constant where this is inlined, so the arrays are
 * registers): a pass costs the same whatever its real tokens, so the last 1-2 tokens of a panel
 * run in a pass of their own width rather than in a pass of 4 that repeats the last. */
static inline __attribute__((always_inline)) void panel4_pass(float *y, int64_t ldy, const int8_t *P, const float *PS,
                                                              int64_t ng, const ActLayout *L, const uint8_t *act,
                                                              int64_t t0, int tb, int64_t rows, const int NT) {
    const int8_t *q[4];
    const float *s[4];
    pass_tokens(q, s, L, act, t0, tb, NT);
    float32x4_t f[4];
    for (int t = 0; t < NT; t++) f[t] = vdupq_n_f32(0.0f);
    for (int64_t g = 0; g < ng; g++) {
        int8x16_t wv[8];
        for (int c = 0; c < 8; c++) wv[c] = vld1q_s8(P + (g * 8 + c) * 16);
        const float32x4_t sw = vld1q_f32(PS + 4 * g);
        for (int t = 0; t < NT; t++) {
            int32x4_t a = vdupq_n_s32(0), b = a;
            SDOT8(a, b, vld1q_s8(q[t] + 32 * g), vld1q_s8(q[t] + 32 * g + 16));
            f[t] = vfmaq_f32(f[t], vcvtq_f32_s32(vaddq_s32(a, b)), vmulq_n_f32(sw, s[t][g]));
        }
    }
    for (int t = 0; t < NT; t++) {
        if (t >= tb) break;
        float out[4];
        vst1q_f32(out, f[t]);
        memcpy(y + (t0 + t) * ldy, out, (size_t)rows * 4);
    }
}
#undef SDOT8

static void panel4_gemm(float *y, int64_t ldy, const int8_t *P, const float *PS, int64_t ng, const ActLayout *L,
                        const uint8_t *act, int64_t nt, int64_t rows) {
    for (int64_t t0 = 0; t0 < nt; t0 += 4) {
        const int tb = (int)(nt - t0 < 4 ? nt - t0 : 4);
        if (tb >= 3) panel4_pass(y, ldy, P, PS, ng, L, act, t0, tb, rows, 4);
        else if (tb == 2) panel4_pass(y, ldy, P, PS, ng, L, act, t0, tb, rows, 2);
        else panel4_pass(y, ldy, P, PS, ng, L, act, t0, tb, rows, 1);
    }
}

#ifdef CACTUS_I8MM
/* The i8mm prefill (kernels_i8mm.c: this file compiled with +i8mm; Apple M2 on, Neoverse V1/N2/V2,
 * Cortex-X2/A710 on). `smmla` multiplies a 2 x 8 block of signed bytes by the transpose of another:
 * two rows' 8 weights against two tokens' 8 activations, 32 multiply-adds into a 2 x 2 int32 block,
 * where one `sdot` by element does 16. Panels are 8 rows, as 4 row pairs: vector c (0..3) of pair p
 * in group g holds 8 weights of row 2p then the same 8 of row 2p + 1 (elements 8c..8c+7), made by
 * 64-bit zips of the rows' signed bytes; the scales are laid out to match, [s(2p) s(2p) s(2p+1)
 * s(2p+1)] per pair and group. Per group, each token pair's activations are zipped the same way in
 * registers, once for all 4 row pairs; a (row pair, token pair) block takes 4 `smmla` (8 blocks: 8
 * independent chains), one conversion and one scaling. Per 8 rows x 4 tokens x group: 32 `smmla` in
 * 111 instructions, where the `sdot` panels take 64 `sdot` in 166 (counted in the compiled loops). */
#define MM_ROWS 8

static void pack_panel8_mm(int8_t *P, float *PS, const QMat *w, int64_t r0, int64_t r1) {
    const int64_t ng = w->ng;
    const uint8_t *rows[MM_ROWS];
    const uint16_t *sc[MM_ROWS];
    for (int i = 0; i < MM_ROWS; i++) {
        const int64_t r = r0 + i < r1 ? r0 + i : r1 - 1;  /* a short panel repeats its last row */
        rows[i] = w->data + r * w->row_bytes;
        sc[i] = w->scales + r * ng;
    }
    for (int64_t g = 0; g < ng; g++) {
        int64x2_t lo[MM_ROWS], hi[MM_ROWS];  /* row i: elements 0..15 and 16..31 of group g, signed */
        for (int i = 0; i < MM_ROWS; i++) {
            int8x16_t l, h;
            group_bytes(w, rows[i], g, &l, &h);
            lo[i] = vreinterpretq_s64_s8(l);
            hi[i] = vreinterpretq_s64_s8(h);
        }
        int64_t *o = (int64_t *)(P + g * 16 * 16);
        for (int pr = 0; pr < MM_ROWS / 2; pr++, o += 8) {
            vst1q_s64(o, vzip1q_s64(lo[2 * pr], lo[2 * pr + 1]));
            vst1q_s64(o + 2, vzip2q_s64(lo[2 * pr], lo[2 * pr + 1]));
            vst1q_s64(o + 4, vzip1q_s64(hi[2 * pr], hi[2 * pr + 1]));
            vst1q_s64(o + 6, vzip2q_s64(hi[2 * pr], hi[2 * pr + 1]));
        }
    }
    int64_t g = 0;
    for (; g + 4 <= ng; g += 4)  /* 4 groups of a row pair: a = row 2p, b = row 2p + 1 */
        for (int pr = 0; pr < MM_ROWS / 2; pr++) {
            const float32x4_t a = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(sc[2 * pr] + g)));
            const float32x4_t b = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(sc[2 * pr + 1] + g)));
            const float32x4_t z1 = vzip1q_f32(a, b), z2 = vzip2q_f32(a, b);  /* a0 b0 a1 b1, a2 b2 a3 b3 */
            vst1q_f32(PS + ((g + 0) * 4 + pr) * 4, vzip1q_f32(z1, z1));    /* a0 a0 b0 b0 */
            vst1q_f32(PS + ((g + 1) * 4 + pr) * 4, vzip2q_f32(z1, z1));
            vst1q_f32(PS + ((g + 2) * 4 + pr) * 4, vzip1q_f32(z2, z2));
            vst1q_f32(PS + ((g + 3) * 4 + pr) * 4, vzip2q_f32(z2, z2));
        }
    for (; g < ng; g++)
        for (int pr = 0; pr < MM_ROWS / 2; pr++)
            for (int i = 0; i < 4; i++) PS[(g * 4 + pr) * 4 + i] = f16_to_f32(sc[2 * pr + i / 2][g]);
}

/* One pass of NT (4 or 2) tokens from t0: NT / 2 token pairs, a short pair repeating its last token
 * (whose results are not stored). */
static inline __attribute__((always_inline)) void panel8_mm_pass(float *y, int64_t ldy, const int8_t *P,
                                                                 const float *PS, int64_t ng, const ActLayout *L,
                                                                 const uint8_t *act, int64_t t0, int tb,
                                                                 int64_t rows, const int NT) {
    const int8_t *q[4];
    const float *s[4];
    pass_tokens(q, s, L, act, t0, tb, NT);
    float32x4_t f[MM_ROWS / 2][2];  /* [row pair][token pair]: (r, t), (r, t + 1), (r + 1, t), (r + 1, t + 1) */
    for (int pr = 0; pr < MM_ROWS / 2; pr++)
        for (int tp = 0; tp < NT / 2; tp++) f[pr][tp] = vdupq_n_f32(0.0f);
    for (int64_t g = 0; g < ng; g++) {
        int8x16_t x[2][4];
        float32x4_t sxp[2];  /* tokens a b a b */
        for (int tp = 0; tp < NT / 2; tp++) {
            const int64x2_t alo = vreinterpretq_s64_s8(vld1q_s8(q[2 * tp] + 32 * g));
            const int64x2_t ahi = vreinterpretq_s64_s8(vld1q_s8(q[2 * tp] + 32 * g + 16));
            const int64x2_t blo = vreinterpretq_s64_s8(vld1q_s8(q[2 * tp + 1] + 32 * g));
            const int64x2_t bhi = vreinterpretq_s64_s8(vld1q_s8(q[2 * tp + 1] + 32 * g + 16));
            x[tp][0] = vreinterpretq_s8_s64(vzip1q_s64(alo, blo));
            x[tp][1] = vreinterpretq_s8_s64(vzip2q_s64(alo, blo));
            x[tp][2] = vreinterpretq_s8_s64(vzip1q_s64(ahi, bhi));
            x[tp][3] = vreinterpretq_s8_s64(vzip2q_s64(ahi, bhi));
            const float32x2_t sx = vset_lane_f32(s[2 * tp + 1][g], vdup_n_f32(s[2 * tp][g]), 1);
            sxp[tp] = vcombine_f32(sx, sx);
        }
        const int8_t *wg = P + g * 16 * 16;
        for (int pr = 0; pr < MM_ROWS / 2; pr++) {
            const int8x16_t w0 = vld1q_s8(wg + 64 * pr), w1 = vld1q_s8(wg + 64 * pr + 16);
            const int8x16_t w2 = vld1q_s8(wg + 64 * pr + 32), w3 = vld1q_s8(wg + 64 * pr + 48);
            const float32x4_t swp = vld1q_f32(PS + (g * 4 + pr) * 4);
            for (int tp = 0; tp < NT / 2; tp++) {
                int32x4_t u = vmmlaq_s32(vdupq_n_s32(0), w0, x[tp][0]);
                u = vmmlaq_s32(u, w1, x[tp][1]);
                u = vmmlaq_s32(u, w2, x[tp][2]);
                u = vmmlaq_s32(u, w3, x[tp][3]);
                f[pr][tp] = vfmaq_f32(f[pr][tp], vcvtq_f32_s32(u), vmulq_f32(swp, sxp[tp]));
            }
        }
    }
    for (int pr = 0; pr < MM_ROWS / 2; pr++)
        for (int tp = 0; tp < NT / 2; tp++) {
            float out[4];
            vst1q_f32(out, f[pr][tp]);
            for (int i = 0; i < 2; i++)
                for (int j = 0; j < 2; j++)
                    if (2 * pr + i < rows && 2 * tp + j < tb) y[(t0 + 2 * tp + j) * ldy + 2 * pr + i] = out[2 * i + j];
        }
}

static void panel8_mm_gemm(float *y, int64_t ldy, const int8_t *P, const float *PS, int64_t ng, const ActLayout *L,
                           const uint8_t *act, int64_t nt, int64_t rows) {
    for (int64_t t0 = 0; t0 < nt; t0 += 4) {
        const int tb = (int)(nt - t0 < 4 ? nt - t0 : 4);
        if (tb >= 3) panel8_mm_pass(y, ldy, P, PS, ng, L, act, t0, tb, rows, 4);
        else panel8_mm_pass(y, ldy, P, PS, ng, L, act, t0, tb, rows, 2);
    }
}
#define PANEL_ROWS MM_ROWS
#define PACK_PANEL pack_panel8_mm
#define PANEL_GEMM panel8_mm_gemm
#else
#define PANEL_ROWS 4
#define PACK_PANEL pack_panel4
#define PANEL_GEMM panel4_gemm
#endif

static void qgemm_neon(float *y, int64_t ldy, const QMat *w, const ActLayout *L, const uint8_t *act,
                       int64_t nt, int64_t r0, int64_t r1, uint8_t *scratch) {
    if (w->group == 32 && nt >= PANEL_MIN_T && !L->one_token) {
        int8_t *P = (int8_t *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
        float *PS = (float *)(P + PANEL_ROWS * 32 * w->ng);
        for (int64_t r = r0; r < r1; r += PANEL_ROWS) {
            const int64_t re = r + PANEL_ROWS < r1 ? r + PANEL_ROWS : r1;
            PACK_PANEL(P, PS, w, r, re);
            PANEL_GEMM(y + r, ldy, P, PS, w->ng, L, act, nt, re - r);
        }
        return;
    }
    if (w->group == 32 && nt > 1) {
        qgemm_tokens_g32(y, ldy, w, L, act, nt, r0, r1);
        return;
    }
    if (w->group == 32) {  /* rows r and r + h in step, each one sequential stream (kernels_avx512.c) */
        const int64_t h = (r1 - r0 + 1) / 2;
        for (int64_t r = r0; r < r0 + h; r++) {
            const int64_t rb = r + h < r1 ? r + h : r;
            const uint8_t *ra_ = w->data + r * w->row_bytes, *rb_ = w->data + rb * w->row_bytes;
            const uint16_t *sa_ = w->scales + r * w->ng, *sb_ = w->scales + rb * w->ng;
            for (int64_t t = 0; t < nt; t++) {
                float out[2];
                dot2_g32(out, w, ra_, rb_, sa_, sb_, act + t * L->stride, L);
                y[t * ldy + r] = out[0];
                y[t * ldy + rb] = out[1];
            }
        }
        return;
    }
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = w->data + r * w->row_bytes;
        const uint16_t *sw = w->scales + r * w->ng;
        for (int64_t t = 0; t < nt; t++) {
            const uint8_t *a = act + t * L->stride;
            const int8_t *q = (const int8_t *)(a + L->off_q);
            const float *s = (const float *)(a + L->off_s);
            y[t * ldy + r] = w->fmt == FMT_INT4 ? dot_int4(row, sw, w->ng, w->group, q, s)
                                                : dot_int8(row, sw, w->ng, w->group, q, s);
        }
    }
}

static inline float32x4_t load4(const QMat *w, const uint8_t *row, int64_t e) {
    if (w->fmt == FMT_F32) return vld1q_f32((const float *)row + e);
    uint16x4_t h = vld1_u16((const uint16_t *)row + e);
    if (w->fmt == FMT_F16) return vcvt_f32_f16(vreinterpret_f16_u16(h));
    return vreinterpretq_f32_u32(vshll_n_u16(h, 16));
}

static void fgemm_neon(float *y, int64_t ldy, const QMat *w, const float *x, int64_t ldx,
                       int64_t nt, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = w->data + r * w->row_bytes;
        for (int64_t t = 0; t < nt; t++) {
            const float *xt = x + t * ldx;
            float32x4_t acc = vdupq_n_f32(0.0f);
            int64_t e = 0;
            for (; e + 4 <= w->k; e += 4) acc = vfmaq_f32(acc, load4(w, row, e), vld1q_f32(xt + e));
            float s = vaddvq_f32(acc);
            for (; e < w->k; e++) s += fweight(w, row, e) * xt[e];
            y[t * ldy + r] = s;
        }
    }
}

static inline float32x4_t kv4(const void *base, int64_t i, int kv_f16) {
    if (kv_f16) return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t *)base + i)));
    return vld1q_f32((const float *)base + i);
}

/* e^x for x <= 88.37 (the polynomial of kernels_avx2.c's exp256); x <= -88, and -inf, give 0 */
static inline float32x4_t exp4(float32x4_t x) {
    x = vmaxq_f32(vminq_f32(x, vdupq_n_f32(88.3762626647949f)), vdupq_n_f32(-88.0f));
    const float32x4_t n = vrndnq_f32(vmulq_n_f32(x, 1.44269504088896341f));
    float32x4_t r = vfmsq_n_f32(x, n, 0.693359375f);
    r = vfmsq_n_f32(r, n, -2.12194440e-4f);
    float32x4_t p = vdupq_n_f32(1.9875691500E-4f);
    p = vfmaq_f32(vdupq_n_f32(1.3981999507E-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(8.3334519073E-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(4.1665795894E-2f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.6666665459E-1f), p, r);
    p = vfmaq_f32(vdupq_n_f32(5.0000001201E-1f), p, r);
    p = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0f)), p, vmulq_f32(r, r));
    const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
    return vmulq_f32(p, vreinterpretq_f32_s32(e));
}

/* Quantize (kernels.h's layout, bit for bit the scalar file's): groups of 32 that lie inside k,
 * 8 vectors at a time (|x| max by vmaxnm, which like the scalar loop passes over a NaN; x / d by
 * vdivq and round-half-even by vrndnq, as nearbyintf); the rest of the row, other group sizes, and
 * the layout's qu and decode extras through the scalar code. */
static void quantize_neon(const ActLayout *L, uint8_t *act, const float *x, int64_t g0, int64_t g1) {
    if (L->group != 32) { quantize_scalar(L, act, x, g0, g1); return; }
    int8_t *q = (int8_t *)(act + L->off_q);
    float *s = (float *)(act + L->off_s);
    int32_t *sum = (int32_t *)(act + L->off_sum);
    const int64_t inside = L->k / 32, gv = g1 < inside ? g1 : inside;
    const float32x4_t lim = vdupq_n_f32(127.0f), nlim = vdupq_n_f32(-127.0f);
    int64_t g = g0;
    for (; g < gv; g++) {
        float32x4_t v[8];
        for (int i = 0; i < 8; i++) v[i] = vld1q_f32(x + 32 * g + 4 * i);
        float32x4_t m = vabsq_f32(v[0]);
        for (int i = 1; i < 8; i++) m = vmaxnmq_f32(m, vabsq_f32(v[i]));
        const float d = vmaxnmvq_f32(m) / 127.0f;
        int32x4_t r[8], acc = vdupq_n_s32(0);
        for (int i = 0; i < 8; i++) {
            const float32x4_t t = d != 0.0f ? vrndnq_f32(vdivq_f32(v[i], vdupq_n_f32(d))) : vdupq_n_f32(0.0f);
            r[i] = vcvtq_s32_f32(vmaxq_f32(vminq_f32(t, lim), nlim));
            acc = vaddq_s32(acc, r[i]);
        }
        for (int h = 0; h < 2; h++) {
            const int16x8_t a = vcombine_s16(vmovn_s32(r[4 * h]), vmovn_s32(r[4 * h + 1]));
            const int16x8_t b = vcombine_s16(vmovn_s32(r[4 * h + 2]), vmovn_s32(r[4 * h + 3]));
            vst1q_s8(q + 32 * g + 16 * h, vcombine_s8(vmovn_s16(a), vmovn_s16(b)));
        }
        s[g] = d;
        sum[g] = vaddvq_s32(acc);
    }
    if (g0 < gv) {
        act_unsigned(L, act, g0, gv);
        act_extras(L, act, g0, gv);
    }
    if (g < g1) quantize_scalar(L, act, x, g, g1);
}

/* g = silu(g) * u with exp4 (4 lanes; the scalar file's expf per element took most of this op). */
static void silu_mul_neon(float *g, const float *u, int64_t n) {
    const float32x4_t one = vdupq_n_f32(1.0f);
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const float32x4_t a = vld1q_f32(g + i);
        const float32x4_t sig = vdivq_f32(a, vaddq_f32(one, exp4(vnegq_f32(a))));
        vst1q_f32(g + i, vmulq_f32(sig, vld1q_f32(u + i)));
    }
    for (; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

/* Rows in blocks of 4 (a GQA group at one query position, as kernels_avx2.c does), so each key and
 * value vector serves four rows. Positions go in spans of 64 (four key blocks of 16), as in
 * kernels_avx2.c: the scores (4 x 64) from the d-major key blocks (span_scores4), then per row one
 * online-softmax step for the span (vector max, exp4, a vector running sum: span_softmax4; the step
 * per block of 16 had taken 16 scalar expf per row), then o += p V with 16 accumulators (4 rows x
 * 4 slices of 4 floats of hd: independent FMA chains enough to cover the FMA latency on cores with
 * four FMA pipes: span_pv4). Decode (R <= 4) reads the cache directly and prefetches the span
 * after next, one line of keys and values per d; prefill (R > 4) converts each span's keys and
 * values to f32 once for all the call's row blocks and keeps each row's state in scratch between
 * spans, as kernels_avx2.c does (there, x1.17-1.27). A short block repeats its last row (same
 * limit), whose results are not stored. */
static inline __attribute__((always_inline)) void span_scores4(float p[4][ATTN_SPAN], const float *const qr[4],
                                                               const int64_t lim[4], const void *kt, int64_t blk0,
                                                               int64_t nblk, int64_t s0, int64_t hd, int kv_f16,
                                                               float scale, const void *v, int64_t lmax, int ahead) {
    for (int64_t b = 0; b < nblk; b++) {
        const int64_t blk = blk0 + b;
        const AttnAhead ah = ahead ? attn_ahead(kt, v, s0, b, lmax, hd, kv_f16 ? 2 : 4) : (AttnAhead){NULL, NULL, 0};
        float32x4_t sc[4][4];  /* row, 4 positions */
        for (int i = 0; i < 4; i++)
            for (int c = 0; c < 4; c++) sc[i][c] = vdupq_n_f32(0.0f);
        for (int64_t d = 0; d < hd; d++) {
            if (ahead) attn_ahead_step(&ah, d);
            float32x4_t k[4];
            for (int c = 0; c < 4; c++) k[c] = kv4(kt, (blk * hd + d) * 16 + 4 * c, kv_f16);
            for (int i = 0; i < 4; i++) {
                const float qd = qr[i][d];
                for (int c = 0; c < 4; c++) sc[i][c] = vfmaq_n_f32(sc[i][c], k[c], qd);
            }
        }
        for (int i = 0; i < 4; i++) {
            float *pi = p[i] + 16 * b;
            for (int c = 0; c < 4; c++) vst1q_f32(pi + 4 * c, vmulq_n_f32(sc[i][c], scale));
            attn_mask_block(pi, lim[i] - s0 - 16 * b);
        }
    }
}

static inline void span_softmax4(float *pi, int64_t nblk, int64_t lim, int64_t s0, float *m, float32x4_t *l, float *o,
                                 int64_t nv) {
    if (lim <= s0) { memset(pi, 0, sizeof(float) * ATTN_SPAN); return; }  /* sees none of the span */
    float32x4_t mx = vld1q_f32(pi);
    for (int64_t j = 4; j < 16 * nblk; j += 4) mx = vmaxq_f32(mx, vld1q_f32(pi + j));
    const float bm = vmaxvq_f32(mx);
    if (bm > *m) {
        const float c = *m == -INFINITY ? 0.0f : expf(*m - bm);
        *l = vmulq_n_f32(*l, c);
        for (int64_t d = 0; d < nv; d++) vst1q_f32(o + 4 * d, vmulq_n_f32(vld1q_f32(o + 4 * d), c));
        *m = bm;
    }
    const float32x4_t mi = vdupq_n_f32(*m);
    for (int64_t j = 0; j < 16 * nblk; j += 4) {  /* exp4 takes -inf (masked) to 0 */
        const float32x4_t e = exp4(vsubq_f32(vld1q_f32(pi + j), mi));
        vst1q_f32(pi + j, e);
        *l = vaddq_f32(*l, e);
    }
}

static inline __attribute__((always_inline)) void span_pv4(float *const ob[4], const float p[4][ATTN_SPAN], const void *v,
                                                           int64_t j0, int64_t send, int64_t hd, int kv_f16) {
    const int64_t nv = hd / 4;
    int64_t d = 0;
    for (; d + 4 <= nv; d += 4) {  /* 4 slices x 4 rows: 16 independent fma chains */
        float32x4_t o[4][4];
        for (int i = 0; i < 4; i++)
            for (int c = 0; c < 4; c++) o[i][c] = vld1q_f32(ob[i] + 4 * (d + c));
        for (int64_t j = 0; j < send; j++) {
            float32x4_t vv[4];
            for (int c = 0; c < 4; c++) vv[c] = kv4(v, (j0 + j) * hd + 4 * (d + c), kv_f16);
            for (int i = 0; i < 4; i++) {
                const float pj = p[i][j];
                for (int c = 0; c < 4; c++) o[i][c] = vfmaq_n_f32(o[i][c], vv[c], pj);
            }
        }
        for (int i = 0; i < 4; i++)
            for (int c = 0; c < 4; c++) vst1q_f32(ob[i] + 4 * (d + c), o[i][c]);
    }
    for (; d < nv; d++) {
        float32x4_t o0 = vld1q_f32(ob[0] + 4 * d), o1 = vld1q_f32(ob[1] + 4 * d);
        float32x4_t o2 = vld1q_f32(ob[2] + 4 * d), o3 = vld1q_f32(ob[3] + 4 * d);
        for (int64_t j = 0; j < send; j++) {
            const float32x4_t vv = kv4(v, (j0 + j) * hd + 4 * d, kv_f16);
            o0 = vfmaq_n_f32(o0, vv, p[0][j]);
            o1 = vfmaq_n_f32(o1, vv, p[1][j]);
            o2 = vfmaq_n_f32(o2, vv, p[2][j]);
            o3 = vfmaq_n_f32(o3, vv, p[3][j]);
        }
        vst1q_f32(ob[0] + 4 * d, o0);
        vst1q_f32(ob[1] + 4 * d, o1);
        vst1q_f32(ob[2] + 4 * d, o2);
        vst1q_f32(ob[3] + 4 * d, o3);
    }
}

static inline void span_finish4(float *out, const float *o, float32x4_t l, int64_t nv) {
    const float li = vaddvq_f32(l), inv = li > 0.0f ? 1.0f / li : 0.0f;
    for (int64_t d = 0; d < nv; d++) vst1q_f32(out + 4 * d, vmulq_n_f32(vld1q_f32(o + 4 * d), inv));
}

static void attn_neon_prefill(float *out, const float *q, int64_t R, const int64_t *limit, const void *kt,
                              const void *v, int64_t hd, float scale, int kv_f16, float *scratch) {
    const int64_t nv = hd / 4;
    float p[4][ATTN_SPAN];
    float dummy_o[4 * 256], dummy_m[4];  /* the repeated rows of a short block write here */
    float32x4_t dummy_l[4];
    float *kf = (float *)(((uintptr_t)scratch + 31) & ~(uintptr_t)31), *vf = kf + ATTN_SPAN * hd;
    float *ob = vf + ATTN_SPAN * hd, *mr = ob + R * hd;
    float32x4_t *lr = (float32x4_t *)(((uintptr_t)(mr + R) + 31) & ~(uintptr_t)31);
    int64_t lmax = 0;
    for (int64_t r = 0; r < R; r++) {
        lmax = limit[r] > lmax ? limit[r] : lmax;
        mr[r] = -INFINITY;
        lr[r] = vdupq_n_f32(0.0f);
    }
    memset(ob, 0, (size_t)(R * hd) * 4);
    for (int64_t s0 = 0; s0 < lmax; s0 += ATTN_SPAN) {
        const int64_t send = lmax - s0 < ATTN_SPAN ? lmax - s0 : ATTN_SPAN, nblk = (send + 15) / 16;
        const float *ks = (const float *)kt + s0 * hd, *vs = (const float *)v + s0 * hd;  /* f32 cache: in place */
        if (kv_f16) {  /* whole key blocks (their tails are masked), the span's value rows */
            for (int64_t e = 0; e < nblk * 16 * hd; e += 4) vst1q_f32(kf + e, kv4(kt, s0 * hd + e, 1));
            for (int64_t e = 0; e < send * hd; e += 4) vst1q_f32(vf + e, kv4(v, s0 * hd + e, 1));
            ks = kf;
            vs = vf;
        }
        for (int64_t r0 = 0; r0 < R; r0 += 4) {
            const float *qr[4];
            int64_t lim[4], gmax;
            const int rb = attn_rows4(qr, lim, &gmax, q, limit, R, r0, hd);
            if (gmax <= s0) continue;  /* the block sees none of the span */
            float *o[4], *m[4];
            float32x4_t *l[4];
            for (int i = 0; i < 4; i++) {
                const int real = i < rb;
                o[i] = real ? ob + (r0 + i) * hd : dummy_o + i * hd;
                m[i] = real ? mr + r0 + i : dummy_m + i;
                l[i] = real ? lr + r0 + i : dummy_l + i;
                if (!real) { *m[i] = mr[r0 + rb - 1]; *l[i] = lr[r0 + rb - 1]; memcpy(o[i], ob + (r0 + rb - 1) * hd, (size_t)hd * 4); }
            }
            span_scores4(p, qr, lim, ks, 0, nblk, s0, hd, 0, scale, NULL, 0, 0);
            for (int i = 0; i < 4; i++) span_softmax4(p[i], nblk, lim[i], s0, m[i], l[i], o[i], nv);
            span_pv4(o, p, vs, 0, send, hd, 0);
        }
    }
    for (int64_t r = 0; r < R; r++) span_finish4(out + r * hd, ob + r * hd, lr[r], nv);
}

static void attn_neon(float *out, const float *q, int64_t R, const int64_t *limit, const void *kt,
                      const void *v, int64_t hd, float scale, int kv_f16, float *scratch) {
    if (hd % 4 || hd > 256) { attn_scalar(out, q, R, limit, kt, v, hd, scale, kv_f16, scratch); return; }
    if (R > 4) { attn_neon_prefill(out, q, R, limit, kt, v, hd, scale, kv_f16, scratch); return; }
    const int64_t nv = hd / 4;
    float p[4][ATTN_SPAN], ob[4][256];
    const float *qr[4];
    int64_t lim[4], lmax;
    const int rb = attn_rows4(qr, lim, &lmax, q, limit, R, 0, hd);
    float m[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
    float32x4_t l[4];
    for (int i = 0; i < 4; i++) l[i] = vdupq_n_f32(0.0f);
    float *const o[4] = {ob[0], ob[1], ob[2], ob[3]};
    memset(ob, 0, sizeof ob);
    for (int64_t s0 = 0; s0 < lmax; s0 += ATTN_SPAN) {
        const int64_t send = lmax - s0 < ATTN_SPAN ? lmax - s0 : ATTN_SPAN, nblk = (send + 15) / 16;
        span_scores4(p, qr, lim, kt, s0 / 16, nblk, s0, hd, kv_f16, scale, v, lmax, 1);
        for (int i = 0; i < 4; i++) span_softmax4(p[i], nblk, lim[i], s0, &m[i], &l[i], o[i], nv);
        span_pv4(o, p, v, s0, send, hd, kv_f16);
    }
    for (int i = 0; i < rb; i++) span_finish4(out + i * hd, o[i], l[i], nv);
}

#if defined(CACTUS_I8MM)
const Kernels kernels_i8mm = {"i8mm", quantize_neon, qgemm_neon, fgemm_neon, attn_neon, silu_mul_neon, 4096, 1024};
#elif defined(CACTUS_NO_DOTPROD)
const Kernels kernels_neon80 = {"neon80", quantize_neon, qgemm_neon, fgemm_neon, attn_neon, silu_mul_neon, 4096, 1024};
#else
const Kernels kernels_neon = {"neon", quantize_neon, qgemm_neon, fgemm_neon, attn_neon, silu_mul_neon, 4096, 1024};  /* unused */
#endif
