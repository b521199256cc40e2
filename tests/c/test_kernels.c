/* C-level kernel test: every table this CPU runs against the scalar table, on random data and
 * awkward shapes, without Python. Built by tests/test_c.py with -fsanitize=address,undefined, and
 * cross-built for AArch64 (run under qemu-aarch64) to check the NEON file.
 * Prints "N passed, N failed" and exits non-zero on any failure.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "driver.h"

static int passed, failed;
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint32_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 11);
}
static float frand(void) { return (float)(rnd() % 20001) / 10000.0f - 1.0f; }

static void check(const char *what, const char *isa, const float *got, const float *want, int64_t n, float tol) {
    float worst = 0.0f, scale = 1e-6f;
    for (int64_t i = 0; i < n; i++) scale = fmaxf(scale, fabsf(want[i]));
    for (int64_t i = 0; i < n; i++) worst = fmaxf(worst, fabsf(got[i] - want[i]) / scale);
    if (worst <= tol && worst == worst) passed++;
    else { failed++; printf("FAIL %s [%s]: max rel diff %g\n", what, isa, worst); }
}

/* A random (N, K) weight in `fmt` (data + scales in the stored layout). With tiny_scales, every
 * group scale is an f16 subnormal or zero (a table that converts scales without F16C must get
 * them exactly, whatever the FPU's denormal mode). */
typedef struct { QMat m; uint8_t *data; uint16_t *scales; } Owned;
static int tiny_scales;

static Owned make_weight(int fmt, int64_t n, int64_t k, int group) {
    Owned o;
    memset(&o, 0, sizeof o);
    QMat *m = &o.m;
    m->fmt = fmt; m->n = n; m->k = k; m->group = fmt >= FMT_INT8 ? group : 0;
    m->kp = fmt >= FMT_INT8 ? (k + group - 1) / group * group : k;
    m->ng = fmt >= FMT_INT8 ? m->kp / group : 0;
    m->row_bytes = fmt == FMT_INT4 ? m->kp / 2 : fmt == FMT_INT8 ? m->kp : fmt == FMT_F32 ? 4 * k : 2 * k;
    o.data = malloc((size_t)(n * m->row_bytes));
    for (int64_t r = 0; r < n; r++)
        for (int64_t e = 0; e < m->row_bytes; e++) {
            uint8_t *b = o.data + r * m->row_bytes + e;
            if (fmt == FMT_INT8) { int v = (int)(rnd() % 255) - 127; *b = (uint8_t)(int8_t)(e < k ? v : 0); }
            else if (fmt == FMT_INT4) *b = (uint8_t)rnd();
            else if (fmt == FMT_F32) { if (e % 4 == 0) { float f = frand(); memcpy(b, &f, 4); } }
            else if (e % 2 == 0) {
                uint16_t h = fmt == FMT_F16 ? f32_to_f16(frand()) : (uint16_t)(0x3C00 + (rnd() % 0x400) - 0x200);
                memcpy(b, &h, 2);
            }
        }
    if (fmt >= FMT_INT8) {
        o.scales = malloc((size_t)(n * m->ng) * 2);
        for (int64_t i = 0; i < n * m->ng; i++)
            o.scales[i] = tiny_scales ? (uint16_t)(rnd() % 0x400) : f32_to_f16(0.001f + 0.01f * (float)(rnd() % 100) / 100.0f);
    }
    m->data = o.data;
    m->scales = o.scales;
    return o;
}

static void test_gemm(const Kernels *k, int fmt, int64_t T, int64_t n, int64_t kk, int group) {
    Owned w = make_weight(fmt, n, kk, group);
    float *x = malloc((size_t)(T * kk) * 4), *y = malloc((size_t)(T * n) * 4), *ref = malloc((size_t)(T * n) * 4);
    for (int64_t i = 0; i < T * kk; i++) x[i] = frand();
    char what[96];
    snprintf(what, sizeof what, "gemm fmt=%d T=%lld N=%lld K=%lld G=%d", fmt, (long long)T, (long long)n, (long long)kk, group);
    if (fmt >= FMT_INT8) {
        ActLayout L;
        act_layout(&L, kk, group, fmt);
        uint8_t *a = calloc((size_t)(T * L.stride), 1), *b = calloc((size_t)(T * L.stride), 1);
        uint8_t *scr = malloc(kernels_scratch_bytes(w.m.kp) + 64);
        for (int64_t t = 0; t < T; t++) {
            k->quantize(&L, a + t * L.stride, x + t * kk, 0, L.nga);
            kernels_scalar.quantize(&L, b + t * L.stride, x + t * kk, 0, L.nga);
        }
        if (memcmp(a, b, (size_t)(T * L.stride))) { failed++; printf("FAIL quantize [%s] %s\n", k->name, what); } else passed++;
        k->qgemm(y, n, &w.m, &L, a, T, 0, n, scr);
        kernels_scalar.qgemm(ref, n, &w.m, &L, b, T, 0, n, scr);
        free(a); free(b); free(scr);
        check(what, k->name, y, ref, T * n, 2e-5f);
    } else {
        k->fgemm(y, n, &w.m, x, kk, T, 0, n);
        kernels_scalar.fgemm(ref, n, &w.m, x, kk, T, 0, n);
        check(what, k->name, y, ref, T * n, 2e-5f);
    }
    free(x); free(y); free(ref); free(w.data); free(w.scales);
}

/* qgemm with ActLayout.one_token (the tape's steps: batched decode, verification): every token's
 * row must be, bit for bit, what a one-token call gives it, for nt = 1..17 (4-token blocks, their
 * 1-3 leftovers, and past AVX2's 16 tokens transposed at once), over rows [r0, r1) (an odd count,
 * not from 0: int4's rows r and r + h), K with a tail of < 8 groups. Rows outside are not written. */
static void test_one_token(const Kernels *k, int fmt, int64_t n, int64_t kk, int64_t r0, int64_t r1) {
    enum { T = 17 };
    Owned w = make_weight(fmt, n, kk, 32);
    ActLayout L;
    act_layout(&L, kk, 32, fmt);
    L.one_token = 1;
    uint8_t *a = calloc((size_t)(T * L.stride), 1), *scr = malloc(kernels_scratch_bytes(w.m.kp) + 64);
    float *x = malloc((size_t)kk * 4), *y = malloc((size_t)(T * n) * 4), *one = malloc((size_t)n * 4);
    for (int64_t t = 0; t < T; t++) {
        for (int64_t i = 0; i < kk; i++) x[i] = frand();
        k->quantize(&L, a + t * L.stride, x, 0, L.nga);
    }
    int bad = 0;
    for (int64_t nt = 1; nt <= T && !bad; nt++) {
        for (int64_t i = 0; i < T * n; i++) y[i] = -7.0f;
        k->qgemm(y, n, &w.m, &L, a, nt, r0, r1, scr);
        for (int64_t t = 0; t < nt; t++) {
            k->qgemm(one, n, &w.m, &L, a + t * L.stride, 1, r0, r1, scr);
            if (memcmp(one + r0, y + t * n + r0, (size_t)(r1 - r0) * 4)) bad = 1;
            for (int64_t r = 0; r < n; r++) bad |= (r < r0 || r >= r1) && y[t * n + r] != -7.0f;
        }
        if (bad) printf("FAIL one_token [%s] fmt=%d N=%lld K=%lld rows [%lld, %lld) nt=%lld\n", k->name, fmt, (long long)n,
                        (long long)kk, (long long)r0, (long long)r1, (long long)nt);
    }
    if (bad) failed++;
    else passed++;
    free(a); free(scr); free(x); free(y); free(one); free(w.data); free(w.scales);
}

/* step: rows per limit (4: a GQA group at one position; 1: every row its own limit, so a block of
 * 4 rows mixes limits and the last key block can lie past some rows' limits). */
static void test_attn(const Kernels *k, int f16, int64_t R, int64_t hd, int64_t S, int64_t step) {
    const int64_t nb = (S + 15) / 16, cap = nb * 16;
    float *q = malloc((size_t)(R * hd) * 4), *o = malloc((size_t)(R * hd) * 4), *ref = malloc((size_t)(R * hd) * 4);
    float *scr = malloc(attn_scratch_floats(R, hd) * 4);
    int64_t *lim = malloc((size_t)R * 8);
    const size_t es = f16 ? 2 : 4;
    uint8_t *kt = calloc((size_t)(cap * hd), es), *v = calloc((size_t)(cap * hd), es);
    for (int64_t i = 0; i < R * hd; i++) q[i] = 2.0f * frand();
    for (int64_t i = 0; i < cap * hd; i++) {
        float a = frand(), b = frand();
        if (f16) { ((uint16_t *)kt)[i] = f32_to_f16(a); ((uint16_t *)v)[i] = f32_to_f16(b); }
        else { ((float *)kt)[i] = a; ((float *)v)[i] = b; }
    }
    for (int64_t r = 0; r < R; r++) lim[r] = S - (R - 1 - r) / step;  /* causal: later rows see more */
    k->attn(o, q, R, lim, kt, v, hd, 1.0f / sqrtf((float)hd), f16, scr);
    kernels_scalar.attn(ref, q, R, lim, kt, v, hd, 1.0f / sqrtf((float)hd), f16, scr);
    char what[64];
    snprintf(what, sizeof what, "attention f16=%d R=%lld hd=%lld S=%lld step=%lld", f16, (long long)R, (long long)hd,
             (long long)S, (long long)step);
    check(what, k->name, o, ref, R * hd, 2e-5f);
    free(q); free(o); free(ref); free(scr); free(lim); free(kt); free(v);
}

/* quantize against the scalar table, bit for bit: a row whose group scales are exactly 1 so that
 * x / s meets every rounding tie (half to even), an all-zero group, a K past the last full group,
 * and the groups quantized in two calls split mid-row (as the driver's chunks do). */
static void test_quantize(const Kernels *k, int fmt, int64_t kk) {
    ActLayout L;
    act_layout(&L, kk, 32, fmt);
    float *x = malloc((size_t)kk * 4);
    for (int64_t i = 0; i < kk; i++) {
        const int64_t g = i / 32, j = i % 32;
        x[i] = g % 3 == 0 ? (j == 0 ? 127.0f : (float)((int)(rnd() % 253) - 126) * 0.5f)  /* ties */
             : g % 3 == 1 ? 0.0f : 3.0f * frand();
    }
    uint8_t *a = calloc((size_t)L.stride, 1), *b = calloc((size_t)L.stride, 1);
    const int64_t cut = L.nga / 3;
    k->quantize(&L, a, x, 0, cut);
    k->quantize(&L, a, x, cut, L.nga);
    kernels_scalar.quantize(&L, b, x, 0, L.nga);
    if (memcmp(a, b, (size_t)L.stride)) { failed++; printf("FAIL quantize ties [%s] fmt=%d K=%lld\n", k->name, fmt, (long long)kk); }
    else passed++;
    free(x); free(a); free(b);
}

/* silu_mul against the scalar table: vector bodies and tails, saturating inputs (exp of +-88 and
 * beyond), zero. */
static void test_silu(const Kernels *k, int64_t n) {
    float *g = malloc((size_t)n * 4), *u = malloc((size_t)n * 4), *ref = malloc((size_t)n * 4);
    for (int64_t i = 0; i < n; i++) {
        g[i] = 20.0f * frand();
        u[i] = frand();
    }
    const float edge[] = {0.0f, -100.0f, 100.0f, -88.5f, 88.5f, -1e-30f};
    for (int64_t i = 0; i < n && i < 6; i++) g[n - 1 - i] = edge[i];
    memcpy(ref, g, (size_t)n * 4);
    k->silu_mul(g, u, n);
    kernels_scalar.silu_mul(ref, u, n);
    char what[64];
    snprintf(what, sizeof what, "silu_mul n=%lld", (long long)n);
    check(what, k->name, g, ref, n, 1e-6f);
    free(g); free(u); free(ref);
}

/* The driver's composed ops on table k with two threads, against the same ops on the scalar
 * table (the pool is shared): SwiGLU and MoE at decode (1 token) and prefill shapes (tokens
 * grouped by expert, a pass of 4 and tails; an expert nobody chose), attention at decode (one
 * query position late in the cache) and prefill (query blocks of 16, GQA groups, a block that
 * starts mid-cache). The hidden activations are re-quantized inside SwiGLU and MoE, where a last-bit
 * difference could move one rounding, so those take 1e-4 (avx2 and qemu's neon/i8mm agree with
 * scalar to ~2e-7 here). */
static void test_driver(const Kernels *k, Pool *pool, Arena *arena) {
    const Ctx c = {k, pool, arena}, s = {&kernels_scalar, pool, NULL};
    const int64_t D = 96, I = 64, E = 6, A = 2;
    for (int fmt = FMT_INT8; fmt <= FMT_INT4; fmt++) {
        Owned w1 = make_weight(fmt, E * I, D, 32), w3 = make_weight(fmt, E * I, D, 32), w2 = make_weight(fmt, E * D, I, 32);
        QStack st[3];
        const Owned *ow[3] = {&w1, &w3, &w2};
        for (int i = 0; i < 3; i++) {
            st[i].m = ow[i]->m;
            st[i].m.n = i == 2 ? D : I;
            st[i].e = E;
            st[i].data_stride = st[i].m.n * st[i].m.row_bytes;
            st[i].scale_stride = st[i].m.n * st[i].m.ng;
        }
        static const int64_t tokens[] = {1, 3, 4, 37};
        for (size_t ti = 0; ti < sizeof tokens / sizeof *tokens; ti++) {
            const int64_t T = tokens[ti];
            float *x = malloc((size_t)(T * D) * 4), *y = malloc((size_t)(T * D) * 4), *ref = malloc((size_t)(T * D) * 4);
            float *wts = malloc((size_t)(T * A) * 4);
            int32_t *idx = malloc((size_t)(T * A) * 4);
            for (int64_t i = 0; i < T * D; i++) x[i] = frand();
            for (int64_t t = 0; t < T; t++) {  /* experts 0..4, two different ones per token; 5 never */
                idx[t * A] = (int32_t)(rnd() % 5);
                idx[t * A + 1] = (idx[t * A] + 1 + (int32_t)(rnd() % 4)) % 5;
                wts[t * A] = 0.25f + 0.5f * (float)(rnd() % 100) / 100.0f;
                wts[t * A + 1] = 1.0f - wts[t * A];
            }
            char what[64];
            drv_moe(&c, y, x, T, idx, wts, A, &st[0], &st[1], &st[2]);
            drv_moe(&s, ref, x, T, idx, wts, A, &st[0], &st[1], &st[2]);
            snprintf(what, sizeof what, "driver moe fmt=%d T=%lld", fmt, (long long)T);
            check(what, k->name, y, ref, T * D, 1e-4f);
            drv_swiglu(&c, y, x, T, &st[0].m, &st[1].m, &st[2].m);
            drv_swiglu(&s, ref, x, T, &st[0].m, &st[1].m, &st[2].m);
            snprintf(what, sizeof what, "driver swiglu fmt=%d T=%lld", fmt, (long long)T);
            check(what, k->name, y, ref, T * D, 1e-4f);
            free(x); free(y); free(ref); free(wts); free(idx);
        }
        free(w1.data); free(w1.scales); free(w3.data); free(w3.scales); free(w2.data); free(w2.scales);
    }
    const int64_t H = 8, Hkv = 2, hd = 64, cap = 96;
    for (int f16 = 0; f16 < 2; f16++) {
        const size_t es = f16 ? 2 : 4;
        uint8_t *kt = malloc((size_t)(Hkv * cap * hd) * es), *v = malloc((size_t)(Hkv * cap * hd) * es);
        for (int64_t i = 0; i < Hkv * cap * hd; i++) {
            const float a = frand(), b = frand();
            if (f16) { ((uint16_t *)kt)[i] = f32_to_f16(a); ((uint16_t *)v)[i] = f32_to_f16(b); }
            else { ((float *)kt)[i] = a; ((float *)v)[i] = b; }
        }
        static const int64_t runs[][2] = {{1, 80}, {1, 0}, {21, 0}, {37, 50}};  /* (T, start) */
        for (size_t ri = 0; ri < sizeof runs / sizeof *runs; ri++) {
            const int64_t T = runs[ri][0], start = runs[ri][1];
            float *q = malloc((size_t)(T * H * hd) * 4), *o = malloc((size_t)(T * H * hd) * 4), *ref = malloc((size_t)(T * H * hd) * 4);
            for (int64_t i = 0; i < T * H * hd; i++) q[i] = 2.0f * frand();
            drv_attention(&c, o, q, T, H, Hkv, hd, kt, v, cap, f16, start, 0.125f);
            drv_attention(&s, ref, q, T, H, Hkv, hd, kt, v, cap, f16, start, 0.125f);
            char what[64];
            snprintf(what, sizeof what, "driver attention f16=%d T=%lld start=%lld", f16, (long long)T, (long long)start);
            check(what, k->name, o, ref, T * H * hd, 2e-5f);
            free(q); free(o); free(ref);
        }
        free(kt); free(v);
    }
}

int main(void) {
    const char *names[] = {"ssse3", "avx2", "avxvnni", "avx512", "avx512-nogfni", "neon80", "neon", "i8mm"};
    const Kernels *tables[9];
    const char *shown[9] = {"scalar"};
    int nt = 0;
    tables[nt++] = &kernels_scalar;
    for (int i = 0; i < 8; i++)
        if (kernels_by_name(names[i])) { shown[nt] = names[i]; tables[nt++] = kernels_by_name(names[i]); }
    printf("levels:");
    for (int i = 0; i < nt; i++) printf(" %s", shown[i]);
    printf("\nbest: %s\n", kernels_best()->name);
    static const int64_t shapes[][3] = {{1, 1, 32}, {1, 37, 100}, {1, 64, 2048}, {3, 33, 96}, {5, 17, 64},
                                        {7, 24, 160}, {8, 40, 96}, {9, 50, 300}, {10, 21, 128}, {17, 40, 200},
                                        {1, 3, 1056}};
    for (int t = 1; t < nt; t++) {
        const Kernels *k = tables[t];
        for (int fmt = 0; fmt <= FMT_INT4; fmt++)
            for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
                test_gemm(k, fmt, shapes[s][0], shapes[s][1], shapes[s][2], 32);
        test_gemm(k, FMT_INT8, 6, 20, 256, 64);
        test_gemm(k, FMT_INT4, 1, 20, 384, 128);
        test_gemm(k, FMT_INT4, 10, 20, 384, 128);
        tiny_scales = 1;
        for (int fmt = FMT_INT8; fmt <= FMT_INT4; fmt++) {
            test_gemm(k, fmt, 1, 24, 256, 32);
            test_gemm(k, fmt, 6, 24, 256, 32);
        }
        tiny_scales = 0;
        for (int fmt = FMT_INT8; fmt <= FMT_INT4; fmt++) {
            test_one_token(k, fmt, 37, 2000, 3, 34);  /* 7 blocks of 8 groups and 7 groups */
            test_one_token(k, fmt, 20, 300, 1, 20);   /* 1 and 2 */
            test_one_token(k, fmt, 9, 200, 0, 9);     /* a tail only */
            test_quantize(k, fmt, 2048);
            test_quantize(k, fmt, 1000);
            test_quantize(k, fmt, 40);
        }
        for (int64_t n = 1; n <= 37; n += 9) test_silu(k, n);
        test_silu(k, 4096);
        for (int f16 = 0; f16 < 2; f16++) {
            test_attn(k, f16, 4, 64, 1, 4);
            test_attn(k, f16, 4, 64, 37, 4);
            test_attn(k, f16, 12, 64, 300, 4);
            test_attn(k, f16, 3, 16, 20, 4);
            test_attn(k, f16, 4, 12, 33, 4);
            test_attn(k, f16, 7, 64, 37, 1);
            test_attn(k, f16, 10, 32, 50, 1);
            test_attn(k, f16, 8, 24, 200, 1);  /* 64-position spans, an odd number of 8-float slices */
            test_attn(k, f16, 5, 64, 129, 1);  /* rows that end exactly at a span's start */
        }
    }
    /* the driver end to end with two threads: its composed ops at every level, then linear on
     * the best table twice (pool reuse) */
    Arena arena = {NULL, 0, ATOMIC_FLAG_INIT};
    Ctx c = {kernels_best(), pool_new(2, NULL, 0), &arena};
    for (int t = 1; t < nt; t++) test_driver(tables[t], c.pool, &arena);
    Owned w = make_weight(FMT_INT4, 70, 96, 32);
    float x[3 * 96], y[3 * 70], ref[3 * 70];
    for (int i = 0; i < 3 * 96; i++) x[i] = frand();
    for (int rep = 0; rep < 2; rep++) {
        drv_linear(&c, y, x, 3, &w.m);
        Ctx s = {&kernels_scalar, c.pool, NULL};
        drv_linear(&s, ref, x, 3, &w.m);
        check("driver linear", c.k->name, y, ref, 3 * 70, 2e-5f);
    }
    pool_free(c.pool);
    free(arena.p);
    free(w.data); free(w.scales);
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
