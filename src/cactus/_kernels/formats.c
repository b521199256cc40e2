/* The weight formats, one row each (kernels.h: Format): how a row is stored and how it reads back
 * as floats. quant.py is their specification (docs/FORMAT.md the bytes); the per-ISA matmul
 * kernels stay in the ISA files' tables. A new format is one row here plus its kernels.
 */
#include <string.h>

#include "kernels.h"

static int64_t bytes_f32(int64_t kp) { return 4 * kp; }
static int64_t bytes_half(int64_t kp) { return 2 * kp; }
static int64_t bytes_int8(int64_t kp) { return kp; }
static int64_t bytes_int4(int64_t kp) { return kp / 2; }

/* out (K) = row r of w as f32 */
static void row_f32(float *out, const QMat *w, int64_t r) {
    memcpy(out, w->data + r * w->row_bytes, (size_t)w->k * sizeof(float));
}

static void row_f16(float *out, const QMat *w, int64_t r) {
    const uint16_t *row = (const uint16_t *)(w->data + r * w->row_bytes);
    for (int64_t e = 0; e < w->k; e++) out[e] = f16_to_f32(row[e]);
}

static void row_bf16(float *out, const QMat *w, int64_t r) {
    const uint16_t *row = (const uint16_t *)(w->data + r * w->row_bytes);
    for (int64_t e = 0; e < w->k; e++) out[e] = bf16_to_f32(row[e]);
}

/* w = s * q per group */
static void row_int8(float *out, const QMat *w, int64_t r) {
    const int8_t *row = (const int8_t *)(w->data + r * w->row_bytes);
    const uint16_t *sw = w->scales + r * w->ng;
    for (int64_t e = 0; e < w->k; e++) out[e] = (float)row[e] * f16_to_f32(sw[e / w->group]);
}

/* w = s * (u - 8); byte j of a group holds element j (low nibble) and j + G/2 (high) */
static void row_int4(float *out, const QMat *w, int64_t r) {
    const uint8_t *row = w->data + r * w->row_bytes;
    const uint16_t *sw = w->scales + r * w->ng;
    const int64_t G = w->group, half = G / 2;
    for (int64_t e = 0; e < w->k; e++) {
        const int64_t g = e / G, jj = e % G;
        const uint8_t b = row[g * half + jj % half];
        out[e] = (float)((int)(jj < half ? (b & 15) : (b >> 4)) - 8) * f16_to_f32(sw[g]);
    }
}

const Format FORMATS[FMT_COUNT] = {
    [FMT_F32] = {"f32", 'f', 4, 0, bytes_f32, row_f32},
    [FMT_F16] = {"f16", 'f', 2, 0, bytes_half, row_f16},
    [FMT_BF16] = {"bf16", 'u', 2, 0, bytes_half, row_bf16},
    [FMT_INT8] = {"int8", 'i', 1, 1, bytes_int8, row_int8},
    [FMT_INT4] = {"int4", 'u', 1, 1, bytes_int4, row_int4},
};

const Format *format_by_name(const char *name) {
    for (int f = 0; f < FMT_COUNT; f++)
        if (!strcmp(FORMATS[f].name, name)) return &FORMATS[f];
    return NULL;
}
