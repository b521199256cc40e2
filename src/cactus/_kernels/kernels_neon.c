/* NEON kernels (AArch64, compiled with -march=armv8.2-a+dotprod). Integer dots are sdot (s8 x s8):
 * int4 nibbles are unpacked to q = u - 8 so no correction is needed; each group's int32 sum is
 * scaled once, in the same order as the scalar reference. Every group size (multiple of 32) runs
 * here. Used only where the CPU reports dotprod (dispatch.c).
 */
#include <arm_neon.h>
#include <math.h>
#include <string.h>

#include "kernels.h"

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
            isum = vdotq_s32(isum, lo, vld1q_s8(x + 16 * c));
            isum = vdotq_s32(isum, hi, vld1q_s8(x + G / 2 + 16 * c));
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
            isum = vdotq_s32(isum, vld1q_s8((const int8_t *)row + g * G + c), vld1q_s8(q + g * G + c));
        __fp16 h;
        memcpy(&h, sw + g, 2);
        acc += ((float)vaddvq_s32(isum) * s[g]) * (float)h;
    }
    return acc;
}

static void qgemm_neon(float *y, int64_t ldy, const QMat *w, const ActLayout *L, const uint8_t *act,
                       int64_t nt, int64_t r0, int64_t r1, uint8_t *scratch) {
    (void)scratch;
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

static inline float load1(const QMat *w, const uint8_t *row, int64_t e) {
    if (w->fmt == FMT_F32) return ((const float *)row)[e];
    uint16_t h = ((const uint16_t *)row)[e];
    if (w->fmt == FMT_F16) return f16_to_f32(h);
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
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
            for (; e < w->k; e++) s += load1(w, row, e) * xt[e];
            y[t * ldy + r] = s;
        }
    }
}

static inline float32x4_t kv4(const void *base, int64_t i, int kv_f16) {
    if (kv_f16) return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t *)base + i)));
    return vld1q_f32((const float *)base + i);
}

/* One row at a time: 16 positions' scores from the d-major key block, online softmax, o += p V. */
static void attn_neon(float *out, const float *q, int64_t R, const int64_t *limit, const void *kt,
                      const void *v, int64_t hd, float scale, int kv_f16, float *scratch) {
    if (hd % 4 || hd > 256) { attn_scalar(out, q, R, limit, kt, v, hd, scale, kv_f16, scratch); return; }
    const int64_t nv = hd / 4;
    for (int64_t r = 0; r < R; r++) {
        const float *qr = q + r * hd;
        float *o = out + r * hd, m = -INFINITY, l = 0.0f, p[16];
        float32x4_t ov[64];
        for (int64_t d = 0; d < nv; d++) ov[d] = vdupq_n_f32(0.0f);
        for (int64_t s0 = 0; s0 < limit[r]; s0 += 16) {
            const int64_t blk = s0 / 16, valid = limit[r] - s0 < 16 ? limit[r] - s0 : 16;
            float32x4_t sc[4] = {vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0)};
            for (int64_t d = 0; d < hd; d++) {
                float32x4_t qd = vdupq_n_f32(qr[d]);
                for (int i = 0; i < 4; i++) sc[i] = vfmaq_f32(sc[i], qd, kv4(kt, (blk * hd + d) * 16 + 4 * i, kv_f16));
            }
            for (int i = 0; i < 4; i++) vst1q_f32(p + 4 * i, vmulq_n_f32(sc[i], scale));
            float bm = -INFINITY;
            for (int64_t j = 0; j < valid; j++) bm = p[j] > bm ? p[j] : bm;
            if (bm > m) {
                float c = m == -INFINITY ? 0.0f : expf(m - bm);
                l *= c;
                for (int64_t d = 0; d < nv; d++) ov[d] = vmulq_n_f32(ov[d], c);
                m = bm;
            }
            for (int64_t j = 0; j < valid; j++) {
                float pj = expf(p[j] - m);
                l += pj;
                for (int64_t d = 0; d < nv; d++) ov[d] = vfmaq_n_f32(ov[d], kv4(v, (s0 + j) * hd + 4 * d, kv_f16), pj);
            }
        }
        float inv = l > 0.0f ? 1.0f / l : 0.0f;
        for (int64_t d = 0; d < nv; d++) vst1q_f32(o + 4 * d, vmulq_n_f32(ov[d], inv));
    }
}

const Kernels kernels_neon = {"neon", quantize_scalar, qgemm_neon, fgemm_neon, attn_neon, silu_mul_scalar};
