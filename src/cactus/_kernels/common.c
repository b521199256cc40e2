/* Helpers every kernel file shares: f16 conversion, the activation layout and its reference
 * quantization (quant.quantize_activations), scratch sizes. Plain C99, baseline flags; the scalar
 * table and the SIMD files call these, none of them is an ISA's own.
 */
#include <math.h>
#include <string.h>

#include "kernels.h"

/* ------------------------------------------------------------------ f16 / bf16 */

float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF, u;
    if (exp == 0x1F) {
        u = sign | 0x7F800000u | (man << 13);
    } else if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else {  /* subnormal: renormalise */
            int e = -1;
            do { man <<= 1; e++; } while (!(man & 0x400));
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3FF) << 13);
        }
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t f32_to_f16(float f) {  /* round to nearest even, as numpy's astype(float16) */
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000;
    int32_t exp = (int32_t)((u >> 23) & 0xFF) - 127 + 15;
    uint32_t man = u & 0x7FFFFF;
    if (((u >> 23) & 0xFF) == 0xFF) return (uint16_t)(sign | 0x7C00 | (man ? 0x200 : 0));
    if (exp >= 0x1F) return (uint16_t)(sign | 0x7C00);
    if (exp <= 0) {
        if (exp < -10) return (uint16_t)sign;
        man |= 0x800000;
        uint32_t shift = (uint32_t)(14 - exp), half = 1u << (shift - 1);
        uint32_t r = man >> shift, rem = man & ((1u << shift) - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = ((uint32_t)exp << 10) | (man >> 13), rem = man & 0x1FFF;
    if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) r++;  /* may carry into the exponent: fine */
    return (uint16_t)(sign | r);
}

/* ------------------------------------------------------------------ activation layout */

void act_layout(ActLayout *L, int64_t k, int32_t group, int32_t fmt) {
    memset(L, 0, sizeof *L);
    L->k = k;
    L->group = group;
    L->fmt = fmt;
    L->extras = 1;
    L->kp = (k + group - 1) / group * group;
    L->ng = L->kp / group;
    L->kpa = (L->kp + 255) / 256 * 256;
    L->nga = (L->kpa / group + 15) / 16 * 16;
    int64_t off = 0;
    L->off_q = off;    off += L->kpa;
    L->off_s = off;    off += 4 * L->nga;
    L->off_sum = off;  off += 4 * L->nga;
    if (fmt == FMT_INT4) {
        L->off_qu = off;   off += L->kpa;
        L->off_qn = off;   off += L->kpa;
        L->off_corr = off; off += 4 * (L->kpa / 8);
        L->off_sl = off;   off += 4 * (L->kpa / 8);
    } else if (fmt == FMT_INT8) {
        L->off_corr = off; off += 4 * (L->kpa / 4);
        L->off_sl = off;   off += 4 * (L->kpa / 4);
    }
    L->stride = (off + 63) / 64 * 64;
}

size_t kernels_scratch_bytes(int64_t kp) {
    /* one packed panel: KERNEL_PANEL rows x kpa bytes + two f32 per row and group (scales, and
     * AVX2's int4 offset corrections); generous */
    int64_t kpa = (kp + 255) / 256 * 256;
    return (size_t)(KERNEL_PANEL * kpa + 8 * KERNEL_PANEL * (kpa / 32 + 16) + 4096);
}

size_t attn_scratch_floats(int64_t R, int64_t hd) {
    /* the scalar kernel's rows, scores and sums; AVX2's prefill adds a span of keys and values in
     * f32 (2 * ATTN_SPAN * hd), each row's output, max and vector sum (R * (hd + 1 + 8)), alignment */
    return (size_t)(R * hd + 2 * R + 16 * R + 64 + 2 * ATTN_SPAN * hd + R * (hd + 9) + 32);
}

/* ------------------------------------------------------------------ activations */

void quantize_scalar(const ActLayout *L, uint8_t *act, const float *x, int64_t g0, int64_t g1) {
    const int64_t G = L->group, groups_q = L->kpa / G;
    int8_t *q = (int8_t *)(act + L->off_q);
    float *s = (float *)(act + L->off_s);
    int32_t *sum = (int32_t *)(act + L->off_sum);
    for (int64_t g = g0; g < g1; g++) {
        if (g >= groups_q) { s[g] = 0.0f; sum[g] = 0; continue; }
        float amax = 0.0f;
        for (int64_t j = 0; j < G; j++) {
            int64_t e = g * G + j;
            float v = e < L->k ? fabsf(x[e]) : 0.0f;
            amax = v > amax ? v : amax;
        }
        float d = amax / 127.0f;
        int32_t acc = 0;
        for (int64_t j = 0; j < G; j++) {
            int64_t e = g * G + j;
            float v = e < L->k ? x[e] : 0.0f;
            float r = d != 0.0f ? nearbyintf(v / d) : 0.0f;  /* round half to even, as np.rint */
            r = r > 127.0f ? 127.0f : (r < -127.0f ? -127.0f : r);
            q[e] = (int8_t)r;
            acc += (int32_t)r;
        }
        s[g] = d;
        sum[g] = acc;
    }
    act_unsigned(L, act, g0, g1 < groups_q ? g1 : groups_q);
    act_extras(L, act, g0, g1 < groups_q ? g1 : groups_q);
}

/* The per-lane arrays of the layout (qn, corr, sl) for groups [g0, g1), from q and s. */
void act_extras(const ActLayout *L, uint8_t *act, int64_t g0, int64_t g1) {
    const int64_t G = L->group, half = G / 2;
    const int8_t *q = (const int8_t *)(act + L->off_q);
    const float *s = (const float *)(act + L->off_s);
    int32_t *corr = (int32_t *)(act + L->off_corr);
    float *sl = (float *)(act + L->off_sl);
    if (!L->extras) return;
    for (int64_t g = g0; g < g1; g++) {
        if (L->fmt == FMT_INT4) {
            int8_t *qn = (int8_t *)(act + L->off_qn);
            for (int64_t j = 0; j < half; j++) {
                int64_t p = g * half + j;  /* packed byte index within the row */
                qn[(p / 64) * 128 + p % 64] = q[g * G + j];
                qn[(p / 64) * 128 + 64 + p % 64] = q[g * G + half + j];
            }
            for (int64_t l = g * half / 4; l < (g + 1) * half / 4; l++) {
                int64_t b = (l * 4) / 64, o = (l * 4) % 64;
                int32_t t = 0;
                for (int i = 0; i < 4; i++) t += qn[b * 128 + o + i] + qn[b * 128 + 64 + o + i];
                corr[l] = -8 * t;
                sl[l] = s[g];
            }
        } else if (L->fmt == FMT_INT8) {
            for (int64_t l = g * G / 4; l < (g + 1) * G / 4; l++) {
                corr[l] = -128 * (q[4 * l] + q[4 * l + 1] + q[4 * l + 2] + q[4 * l + 3]);
                sl[l] = s[g];
            }
        }
    }
}
