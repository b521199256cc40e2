/* Scalar kernels: the C reference every SIMD file is tested against, and the fallback for shapes
 * the SIMD paths do not take. Follows quant.py's arithmetic exactly (integer sums per group, then
 * y = sum_g (isum * sx) * sw in f32). Plain C99, no intrinsics; compiled with the baseline flags.
 * Its quantize is common.c's (shared by every table).
 */
#include <math.h>
#include <string.h>

#include "kernels.h"

_Static_assert(sizeof(float) == 4, "f32");

/* ------------------------------------------------------------------ matmul */

/* One group's exact int32 sum of w * x: int8 as stored; int4 byte j holds element j (low nibble)
 * and j + G/2 (high), each u - 8. Plain loops over bytes, which compilers vectorize (this table
 * is what CPUs without a SIMD level run: x86 without AVX2, other architectures). */
static inline int32_t group_dot(const QMat *w, const uint8_t *row, int64_t g, const int8_t *x) {
    const int64_t G = w->group, half = G / 2;
    int32_t isum = 0;
    if (w->fmt == FMT_INT8) {
        const int8_t *wq = (const int8_t *)row + g * G;
        for (int64_t j = 0; j < G; j++) isum += wq[j] * x[j];
        return isum;
    }
    const uint8_t *b = row + g * half;
    for (int64_t j = 0; j < half; j++) isum += ((b[j] & 0x0F) - 8) * x[j] + ((b[j] >> 4) - 8) * x[half + j];
    return isum;
}

/* y (nt, N) [rows r0..r1) = W (N, K) @ x_t (K): per group exact int sums, then f32 scaling. */
void qgemm_scalar(float *y, int64_t ldy, const QMat *w, const ActLayout *L, const uint8_t *act,
                  int64_t nt, int64_t r0, int64_t r1, uint8_t *scratch) {
    (void)scratch;
    const int64_t G = w->group;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = w->data + r * w->row_bytes;
        const uint16_t *sw = w->scales + r * w->ng;
        for (int64_t t = 0; t < nt; t++) {
            const uint8_t *a = act + t * L->stride;
            const int8_t *q = (const int8_t *)(a + L->off_q);
            const float *s = (const float *)(a + L->off_s);
            float acc = 0.0f;
            for (int64_t g = 0; g < w->ng; g++)
                acc += ((float)group_dot(w, row, g, q + g * G) * s[g]) * f16_to_f32(sw[g]);
            y[t * ldy + r] = acc;
        }
    }
}

void fgemm_scalar(float *y, int64_t ldy, const QMat *w, const float *x, int64_t ldx,
                  int64_t nt, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = w->data + r * w->row_bytes;
        for (int64_t t = 0; t < nt; t++) {
            const float *xt = x + t * ldx;
            float acc = 0.0f;
            for (int64_t e = 0; e < w->k; e++) acc += fweight(w, row, e) * xt[e];
            y[t * ldy + r] = acc;
        }
    }
}

/* ------------------------------------------------------------------ attention */

static inline float kv_at(const void *base, int64_t i, int kv_f16) {
    return kv_f16 ? f16_to_f32(((const uint16_t *)base)[i]) : ((const float *)base)[i];
}

/* out (R, hd) = softmax(scale * q K^T) V over positions [0, limit[r]), one pass, online softmax. */
void attn_scalar(float *out, const float *q, int64_t R, const int64_t *limit, const void *kt,
                 const void *v, int64_t hd, float scale, int kv_f16, float *scratch) {
    (void)scratch;
    for (int64_t r = 0; r < R; r++) {
        const float *qr = q + r * hd;
        float *o = out + r * hd;
        float m = -INFINITY, l = 0.0f;
        for (int64_t d = 0; d < hd; d++) o[d] = 0.0f;
        for (int64_t s = 0; s < limit[r]; s++) {
            int64_t blk = s / ATTN_BLOCK, j = s % ATTN_BLOCK;
            float sc = 0.0f;
            for (int64_t d = 0; d < hd; d++) sc += qr[d] * kv_at(kt, (blk * hd + d) * ATTN_BLOCK + j, kv_f16);
            sc *= scale;
            if (sc > m) {
                float c = expf(m - sc);
                l *= c;
                for (int64_t d = 0; d < hd; d++) o[d] *= c;
                m = sc;
            }
            float p = expf(sc - m);
            l += p;
            for (int64_t d = 0; d < hd; d++) o[d] += p * kv_at(v, s * hd + d, kv_f16);
        }
        float inv = l > 0.0f ? 1.0f / l : 0.0f;
        for (int64_t d = 0; d < hd; d++) o[d] *= inv;
    }
}

void silu_mul_scalar(float *g, const float *u, int64_t n) {
    for (int64_t i = 0; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

const Kernels kernels_scalar = {"scalar", quantize_scalar, qgemm_scalar, fgemm_scalar, attn_scalar, silu_mul_scalar,
                                4096, 1024};  /* unused: no prefetch */
