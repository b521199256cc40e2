/* Small kernels that are cheap next to the matmuls: RMSNorm, RoPE, SiLU*mul, the gated short conv,
 * MoE routing (sigmoid, top-k), KV-cache stores and embedding rows. Portable C, single-threaded,
 * each matching its numpy definition in ops.py (the reference it cites).
 */
#include <math.h>
#include <string.h>

#include "driver.h"

/* out (rows, d) = w * (x / sqrt(mean(x^2) + eps))   (Lfm2RMSNorm) */
void k_rmsnorm(float *out, const float *x, const float *w, float eps, int64_t rows, int64_t d) {
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * d;
        float *o = out + r * d;
        float acc[8] = {0};
        int64_t i = 0;
        for (; i + 8 <= d; i += 8)
            for (int u = 0; u < 8; u++) acc[u] += xr[i + u] * xr[i + u];
        float ss = 0.0f;
        for (int u = 0; u < 8; u++) ss += acc[u];
        for (; i < d; i++) ss += xr[i] * xr[i];
        const float den = sqrtf(ss / (float)d + eps);
        for (i = 0; i < d; i++) o[i] = w[i] * (xr[i] / den);
    }
}

/* x (T, H, hd) rotated in place at positions start.., rotate-half (apply_rotary_pos_emb). */
void k_rope(float *x, int64_t T, int64_t H, int64_t hd, int64_t start, float theta) {
    const int64_t half = hd / 2;
    float inv[512], cs[512], sn[512];
    for (int64_t i = 0; i < half && i < 512; i++)
        inv[i] = (float)(1.0 / pow((double)theta, (double)(float)(2 * i) / (double)hd));
    for (int64_t t = 0; t < T; t++) {
        const float pos = (float)(start + t);
        for (int64_t i = 0; i < half; i++) {
            float f = pos * inv[i];
            cs[i] = cosf(f);
            sn[i] = sinf(f);
        }
        for (int64_t h = 0; h < H; h++) {
            float *v = x + (t * H + h) * hd;
            for (int64_t i = 0; i < half; i++) {
                float a = v[i], b = v[i + half];
                v[i] = a * cs[i] - b * sn[i];
                v[i + half] = b * cs[i] + a * sn[i];
            }
        }
    }
}

void k_silu_mul(float *out, const float *a, const float *b, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = a[i] / (1.0f + expf(-a[i])) * b[i];
}

/* y (T, D) = C * conv(B * x): bcx (T, 3D) holds B, C, x; state (L-1, D) the previous L-1 inputs
 * of the conv, updated in place; w (D, L) depthwise; bias (D) or NULL. (Lfm2ShortConv.slow_forward) */
void k_conv_gate(float *y, const float *bcx, float *state, const float *w, const float *bias,
                 int64_t T, int64_t D, int64_t L) {
    for (int64_t t = 0; t < T; t++) {
        const float *B = bcx + t * 3 * D, *C = B + D, *X = B + 2 * D;
        float *yt = y + t * D;
        for (int64_t d = 0; d < D; d++) {
            float bx = B[d] * X[d];
            float acc = bias ? bias[d] : 0.0f;
            for (int64_t j = 0; j < L - 1; j++) acc = acc + state[j * D + d] * w[d * L + j];
            acc = acc + bx * w[d * L + L - 1];
            for (int64_t j = 0; j + 1 < L - 1; j++) state[j * D + d] = state[(j + 1) * D + d];
            if (L > 1) state[(L - 2) * D + d] = bx;
            yt[d] = C[d] * acc;
        }
    }
}

/* Lfm2MoeTopKRouter: sigmoid scores; bias (E or NULL) only chooses; top-k by (score + bias),
 * ties to the lower index; weights = scores, optionally / (sum + 1e-6), times scale. */
void k_route(int32_t *idx, float *wts, const float *logits, const float *bias, int64_t T, int64_t E,
             int64_t k, int norm, float scale) {
    float sc[1024];
    for (int64_t t = 0; t < T; t++) {
        const float *lg = logits + t * E;
        for (int64_t e = 0; e < E && e < 1024; e++) sc[e] = 1.0f / (1.0f + expf(-lg[e]));
        int32_t *it = idx + t * k;
        float *wt = wts + t * k, total = 0.0f;
        for (int64_t a = 0; a < k; a++) {
            int64_t best = -1;
            float bv = 0.0f;
            for (int64_t e = 0; e < E; e++) {
                int taken = 0;
                for (int64_t b = 0; b < a; b++) taken |= it[b] == e;
                if (taken) continue;
                float v = bias ? sc[e] + bias[e] : sc[e];
                if (best < 0 || v > bv) { best = e; bv = v; }
            }
            it[a] = (int32_t)best;
            wt[a] = sc[best];
        }
        if (norm) {
            for (int64_t a = 0; a < k; a++) total += wt[a];
            total += 1e-6f;
            for (int64_t a = 0; a < k; a++) wt[a] = wt[a] / total;
        }
        for (int64_t a = 0; a < k; a++) wt[a] *= scale;
    }
}

/* Store k, v (T, Hkv, hd) at positions pos.. : kt (Hkv, cap/16, hd, 16), v (Hkv, cap, hd). */
void k_kv_store(void *kt, void *v, const float *k, const float *vv, int64_t T, int64_t Hkv, int64_t hd,
                int64_t pos, int64_t cap, int kv_f16) {
    for (int64_t t = 0; t < T; t++) {
        const int64_t s = pos + t, blk = s / ATTN_BLOCK, j = s % ATTN_BLOCK;
        for (int64_t h = 0; h < Hkv; h++) {
            const float *kr = k + (t * Hkv + h) * hd, *vr = vv + (t * Hkv + h) * hd;
            const int64_t kbase = h * cap * hd + blk * hd * ATTN_BLOCK + j, vbase = h * cap * hd + s * hd;
            for (int64_t d = 0; d < hd; d++) {
                if (kv_f16) {
                    ((uint16_t *)kt)[kbase + d * ATTN_BLOCK] = f32_to_f16(kr[d]);
                    ((uint16_t *)v)[vbase + d] = f32_to_f16(vr[d]);
                } else {
                    ((float *)kt)[kbase + d * ATTN_BLOCK] = kr[d];
                    ((float *)v)[vbase + d] = vr[d];
                }
            }
        }
    }
}

/* out (T, D) = dequantized rows ids of w (vocab, D) */
void k_embed(float *out, const int64_t *ids, int64_t T, const QMat *w) {
    for (int64_t t = 0; t < T; t++) FORMATS[w->fmt].dequantize_row(out + t * w->k, w, ids[t]);
}
