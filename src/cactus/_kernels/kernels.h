/* cactus kernels: the types every ISA file shares, and the dispatch table.
 *
 * Shared helpers in common.c, the weight formats in formats.c. One ISA per translation unit (kernels_scalar.c, kernels_ssse3.c, kernels_avx2.c, kernels_avxvnni.c,
 * kernels_avx512.c, kernels_neon80.c, kernels_neon.c, kernels_i8mm.c),
 * each compiled with its own flags and exporting one `Kernels` table. This header knows nothing of
 * CPython; driver.c composes table kernels with the thread pool; binding.c is the only CPython file.
 * Weight layouts are quant.py's (docs/FORMAT.md); activation layouts are defined here (ActLayout).
 */
#ifndef CACTUS_KERNELS_H
#define CACTUS_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum { FMT_F32 = 0, FMT_F16 = 1, FMT_BF16 = 2, FMT_INT8 = 3, FMT_INT4 = 4, FMT_COUNT };

/* One (N, K) weight matrix viewed in place (the mmap); never copied.
 * int8: data (N, kp) int8; int4: data (N, kp/2) uint8, byte j of a group = element j (low nibble) |
 * element j + G/2 (high nibble), stored u = q + 8; scales (N, ng) f16. Float formats: (N, K). */
typedef struct {
    const uint8_t *data;
    const uint16_t *scales;  /* f16 bits, row r at scales + r * ng (NULL for float formats) */
    int64_t n, k, kp, ng;    /* rows, logical K, K padded to the group, groups per row */
    int64_t row_bytes;       /* bytes from one row of data to the next */
    int32_t fmt, group;
} QMat;

/* One weight format (formats.c, FORMATS[fmt]; quant.FORMATS is its Python side): the stored
 * element (numpy kind 'f'/'u'/'i' and bytes), whether it has f16 group scales (N, Kp/G), the bytes
 * of one row of data for K padded to kp, and the row dequantized. */
typedef struct {
    const char *name;
    char kind;
    int8_t itemsize;
    int8_t quantized;
    int64_t (*row_bytes)(int64_t kp);
    void (*dequantize_row)(float *out, const QMat *w, int64_t r);  /* out (K) = row r of w */
} Format;
extern const Format FORMATS[FMT_COUNT];
const Format *format_by_name(const char *name);  /* NULL if unknown */

/* One token's activations quantized for the integer kernels (quant.quantize_activations):
 * q int8 per group of G, s = amax/127 (f32), q = rint(x / s). The layout of one token's buffer:
 *   q    (kpa)      int8, natural order, zero past kp
 *   s    (nga)      f32 per-group scale, zero past ng
 *   sum  (nga)      int32 sum of q per group
 *   int4 weights also get qu (kpa) uint8: q + 128 (= q ^ 0x80), the unsigned operand of the AVX2
 *   prefill tiles (whose panels hold the weights signed), and, per 64 packed weight bytes
 *   (128 elements) = 16 lanes of 4 bytes:
 *   qn   (kpa)      int8: the 64 x's met by the low nibbles, then the 64 met by the high nibbles
 *   corr (kpa/8)    int32 per lane: -8 * (sum of the lane's 8 x's)   (u = q + 8 offset)
 *   sl   (kpa/8)    f32 per lane: s of the lane's group
 *   int8 weights get, per 64 weight bytes = 16 lanes of 4 elements:
 *   corr (kpa/4)    int32 per lane: -128 * (sum of the lane's 4 x)   (u = w ^ 0x80 offset)
 *   sl   (kpa/4)    f32 per lane: s of the lane's group
 * kpa = kp rounded up to 256 and nga = kpa / G rounded up to 16, so SIMD never reads past the end. */
typedef struct {
    int64_t k, kp, kpa, ng, nga;
    int32_t group, fmt;
    int32_t extras;  /* 1 (act_layout's default): quantize fills qn/corr/sl. Only the decode kernels
                      * read them (qgemm with nt < PANEL_MIN_T); ops that never make such a call clear it */
    int32_t one_token;  /* 1: qgemm never packs panels, each token's row is the one-token kernel's result
                         * (bit-identical to an nt = 1 call), whatever nt; needs extras. The tape's
                         * steps (decode, batched, verification) run so. */
    int64_t off_q, off_s, off_sum, off_qu, off_qn, off_corr, off_sl, stride; /* bytes; stride = one token */
} ActLayout;

/* The bytes at the start of one token's buffer that the kernels read: all of it when the decode
 * extras are in use, else q, s and sum (and int4's qu), which come first. */
static inline int64_t act_used_bytes(const ActLayout *L) {
    if (L->extras || (L->fmt != FMT_INT4 && L->fmt != FMT_INT8)) return L->stride;
    return L->fmt == FMT_INT4 ? L->off_qn : L->off_corr;
}

typedef struct Kernels {
    const char *name;
    /* act (one token) <- x (K): groups [g0, g1) of it (all extras for L->fmt included). */
    void (*quantize)(const ActLayout *L, uint8_t *act, const float *x, int64_t g0, int64_t g1);
    /* y[t * ldy + r] = W[r] . x_t for tokens t < nt, rows r in [r0, r1); int8/int4 weights, x as
     * quantized activations (nt tokens, L->stride apart). scratch: kernels_scratch_bytes(kp). */
    void (*qgemm)(float *y, int64_t ldy, const QMat *w, const ActLayout *L, const uint8_t *act,
                  int64_t nt, int64_t r0, int64_t r1, uint8_t *scratch);
    /* Same for f32/f16/bf16 weights: x (nt, K) f32 rows ldx apart. */
    void (*fgemm)(float *y, int64_t ldy, const QMat *w, const float *x, int64_t ldx,
                  int64_t nt, int64_t r0, int64_t r1);
    /* Attention of R query rows that share one KV head, online softmax over positions.
     * q (R, hd) f32 rows; limit[r] = number of positions row r sees (causal); out (R, hd).
     * kt: keys blocked by 16 positions, d-major inside a block: (nblk, hd, 16); v: (S, hd).
     * kv_f16: 1 if the cache holds f16, 0 for f32. scratch: 16 * R + hd floats... see attn_scratch. */
    void (*attn)(float *out, const float *q, int64_t R, const int64_t *limit, const void *kt,
                 const void *v, int64_t hd, float scale, int kv_f16, float *scratch);
    /* g[i] = silu(g[i]) * u[i] = g / (1 + exp(-g)) * u, i < n */
    void (*silu_mul)(float *g, const float *u, int64_t n);
    /* decode's software prefetch distances (bytes, into L2 and L1) while this table is selected */
    int64_t prefetch_l2, prefetch_l1;
} Kernels;

/* Decode streams weight rows from DRAM faster than the hardware prefetcher alone fetches them
 * (measured on Zen 4: about half the read bandwidth without software prefetch). Rows are
 * fetched PREFETCH_BYTES ahead into L2 and, on AVX-512, PREFETCH_L1_BYTES ahead into L1; the f16
 * scales are a second stream, fetched for the rows PREFETCH_BYTES ahead too (without that, a
 * demand miss on the scales stalls every few rows: 70% -> 80% of the read bandwidth with two
 * threads). The distances are settings (dispatch.c, ops.set_prefetch) so that
 * benchmarks/ab_prefetch.py can compare them on real decode, round by round, at both of this
 * machine's bandwidth levels: 4 KiB + 1 KiB beat the former 8 KiB + none by 5-6% at ~50 GB/s and
 * 3% at ~33 GB/s (8B-A1B and 24B-A2B int4); 16 KiB was 5% slower, 1-2 KiB no better. Each table
 * carries its own defaults (Kernels.prefetch_*), set when it is selected: on a Zen 3 machine with
 * AVX2 only, 1-2 KiB beat 4 KiB by 3-4% (8B-A1B) and 2-3% (24B-A2B) at 15-40 GB/s, so AVX2 takes
 * 2 KiB. */
extern int64_t kernels_prefetch_l2, kernels_prefetch_l1;
void kernels_select(const Kernels *k);  /* the prefetch distances of k (dispatch.c) */
#define PREFETCH_BYTES kernels_prefetch_l2
#define PREFETCH_L1_BYTES kernels_prefetch_l1
static inline void prefetch_l2(const void *p) { __builtin_prefetch(p, 0, 2); }
static inline void prefetch_l1(const void *p) { __builtin_prefetch(p, 0, 3); }
/* Rows of w that PREFETCH_BYTES of row data span: compute once per call, not per row. */
static inline int64_t prefetch_rows(const QMat *w) { return PREFETCH_BYTES / (w->row_bytes > 0 ? w->row_bytes : 1) + 1; }
/* The f16 scales of row r, into L2. */
static inline void prefetch_scales(const QMat *w, int64_t r) {
    const uint8_t *s = (const uint8_t *)(w->scales + r * w->ng);
    for (int64_t b = 0; b < 2 * w->ng; b += 64) prefetch_l2(s + b);
}

#define KERNEL_PANEL 16                      /* rows per packed panel (prefill) */
#define PANEL_MIN_T 4                        /* qgemm of this many tokens or more runs on packed panels */
#define ATTN_BLOCK 16                        /* positions per key block */
size_t kernels_scratch_bytes(int64_t kp);    /* per-thread qgemm scratch */
size_t attn_scratch_floats(int64_t R, int64_t hd);

void act_layout(ActLayout *L, int64_t k, int32_t group, int32_t fmt);

extern const Kernels kernels_scalar;
#if defined(__x86_64__) || defined(_M_X64)
extern const Kernels kernels_avx2;
extern const Kernels kernels_ssse3;
extern const Kernels kernels_avxvnni;
extern const Kernels kernels_avx512vnni;
extern const Kernels kernels_avx512vnni_gfni;
#endif
#if defined(__aarch64__)
extern const Kernels kernels_neon;
extern const Kernels kernels_neon80;
extern const Kernels kernels_i8mm;
#endif

/* Attention spans (AVX2, NEON): positions go ATTN_SPAN at a time through one online-softmax step,
 * and the span ATTN_AHEAD positions further is fetched into L2 while the scores run: for key block
 * b of the span, its keys and value rows, 16 * esz bytes of each per d (a line every 64 bytes).
 * No prefetch (k == NULL) where that span starts at or past lmax. */
#define ATTN_SPAN 64
#define ATTN_AHEAD (2 * ATTN_SPAN)
typedef struct { const char *k, *v; int64_t esz; } AttnAhead;

static inline AttnAhead attn_ahead(const void *kt, const void *v, int64_t s0, int64_t b, int64_t lmax, int64_t hd,
                                   int64_t esz) {
    if (s0 + ATTN_AHEAD >= lmax) return (AttnAhead){NULL, NULL, esz};
    const int64_t off = (s0 + ATTN_AHEAD + ATTN_BLOCK * b) * hd * esz;
    return (AttnAhead){(const char *)kt + off, (const char *)v + off, esz};
}

static inline void attn_ahead_step(const AttnAhead *a, int64_t d) {
    const int64_t o = d * ATTN_BLOCK * a->esz;
    if (a->k && o % 64 == 0) { prefetch_l2(a->k + o); prefetch_l2(a->v + o); }
}

/* Causal: scores of a key block from position `visible` on (relative to the block) get no weight. */
static inline void attn_mask_block(float *p, int64_t visible) {
    for (int64_t j = visible < 0 ? 0 : visible; j < ATTN_BLOCK; j++) p[j] = -__builtin_inff();
}

/* Attention takes query rows 4 at a time (a GQA group at one position): the rows r0.. of R, their
 * query vectors and limits, a short block repeating its last row (its results are not stored).
 * Returns how many rows are real; *lmax = the largest limit. */
static inline int attn_rows4(const float *qr[4], int64_t lim[4], int64_t *lmax, const float *q, const int64_t *limit,
                             int64_t R, int64_t r0, int64_t hd) {
    const int rb = (int)(R - r0 < 4 ? R - r0 : 4);
    *lmax = 0;
    for (int i = 0; i < 4; i++) {
        const int64_t r = r0 + (i < rb ? i : rb - 1);
        qr[i] = q + r * hd;
        lim[i] = limit[r];
        *lmax = lim[i] > *lmax ? lim[i] : *lmax;
    }
    return rb;
}

/* Shared helpers (common.c): f16 conversion; the reference activation quantization (the scalar
 * table's quantize, which SIMD files fall back to) and its per-lane extras. */
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
void quantize_scalar(const ActLayout *L, uint8_t *act, const float *x, int64_t g0, int64_t g1);
void act_extras(const ActLayout *L, uint8_t *act, int64_t g0, int64_t g1);
/* qu of groups [g0, g1) from q (int4 layouts; quantize's last step in every ISA file, which each
 * compiler vectorizes with its own flags) */
static inline void act_unsigned(const ActLayout *L, uint8_t *act, int64_t g0, int64_t g1) {
    if (L->fmt != FMT_INT4) return;
    const uint8_t *q = act + L->off_q + g0 * L->group;
    uint8_t *qu = act + L->off_qu + g0 * L->group;
    for (int64_t i = 0, n = (g1 - g0) * L->group; i < n; i++) qu[i] = q[i] ^ 0x80;
}
/* The opening of a SIMD act_extras (G = 32, int4 or int8, blocks of `per` groups from g0): 1 when
 * there is nothing for it to do, because the layout has no extras or act_extras ran instead. */
static inline int extras_not_simd(const ActLayout *L, uint8_t *act, int64_t g0, int64_t g1, int per) {
    if (!L->extras) return 1;
    if (L->group == 32 && (L->fmt == FMT_INT4 || L->fmt == FMT_INT8) && g0 % per == 0) return 0;
    act_extras(L, act, g0, g1);
    return 1;
}
static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
/* Element e of a float-format (f32/f16/bf16) weight row: the SIMD files' tails. */
static inline float fweight(const QMat *w, const uint8_t *row, int64_t e) {
    if (w->fmt == FMT_F32) return ((const float *)row)[e];
    if (w->fmt == FMT_F16) return f16_to_f32(((const uint16_t *)row)[e]);
    return bf16_to_f32(((const uint16_t *)row)[e]);
}
/* The scalar table's kernels (kernels_scalar.c), the fallback of the SIMD files for shapes they do not take. */
void qgemm_scalar(float *y, int64_t ldy, const QMat *w, const ActLayout *L, const uint8_t *act,
                  int64_t nt, int64_t r0, int64_t r1, uint8_t *scratch);
void fgemm_scalar(float *y, int64_t ldy, const QMat *w, const float *x, int64_t ldx,
                  int64_t nt, int64_t r0, int64_t r1);
void silu_mul_scalar(float *g, const float *u, int64_t n);
void attn_scalar(float *out, const float *q, int64_t R, const int64_t *limit, const void *kt,
                 const void *v, int64_t hd, float scale, int kv_f16, float *scratch);

/* Dispatch (dispatch.c): best table this CPU runs, or the one `name` forces (NULL if unknown or
 * unsupported here). cpu_supports("avx512") etc. tells which levels this machine has. */
const Kernels *kernels_best(void);
const Kernels *kernels_by_name(const char *name);
const char *kernels_level_name(size_t i);  /* the levels built in, worst (scalar) first; NULL past the last */
int cpu_supports(const char *name);

#endif
