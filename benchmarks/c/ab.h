/* The round-by-round A/B of two builds of one kernel table in one process, shared by ab_qgemm.c and
 * ab_attn.c (this machine's speed drifts by 15 % within minutes, so runs of one build and then the
 * other mislead): AB_NEW, the table from the working tree, against AB_OLD, the same file compiled at
 * another commit under another name (build lines in each file's header). */
#ifndef AB_NEW
#define AB_NEW kernels_avx2
#define AB_OLD kernels_avx2_old
#endif
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "kernels.h"
extern const Kernels AB_OLD;

static double ab_now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static int ab_cmp(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return x < y ? -1 : x > y; }

/* w <- a random (N, K) int8 or int4 matrix, group 32 (K a multiple of 32): stored values and f16
 * scales as the quantizer leaves them, from rand() (seed it for the same matrix every run). */
static void ab_random_qmat(QMat *w, int64_t N, int64_t K, int fmt) {
    memset(w, 0, sizeof *w);
    w->n = N; w->k = w->kp = K; w->group = 32; w->ng = K / 32; w->fmt = fmt; w->row_bytes = fmt == FMT_INT4 ? K / 2 : K;
    uint8_t *data = malloc((size_t)(N * w->row_bytes)); uint16_t *sc = malloc((size_t)(N * w->ng) * 2);
    for (int64_t i = 0; i < N * w->row_bytes; i++) data[i] = fmt == FMT_INT4 ? (uint8_t)rand() : (uint8_t)(rand() % 255 - 127);
    for (int64_t i = 0; i < N * w->ng; i++) sc[i] = f32_to_f16(0.01f + (float)(rand() % 100) * 1e-4f);
    w->data = data; w->scales = sc;
}

/* n tokens of random activations (K values each, uniform in [-0.5, 0.5)) quantized by k into layout L. */
static inline uint8_t *ab_random_acts(const Kernels *k, const ActLayout *L, int64_t K, int64_t n) {
    uint8_t *act = calloc((size_t)(n * L->stride), 1);
    float *x = malloc((size_t)K * 4);
    for (int64_t t = 0; t < n; t++) {
        for (int64_t i = 0; i < K; i++) x[i] = (float)rand() / (float)RAND_MAX - 0.5f;
        k->quantize(L, act + t * L->stride, x, 0, L->nga);
    }
    free(x);
    return act;
}

/* qgemm with L->one_token over T = 2..tmax tokens, by both tables: is every token's row the one its
 * T = 1 call gives, bit for bit? Prints each that is not and returns 1 if any. y holds tmax * N floats. */
static inline int ab_check_one_token(const QMat *w, const ActLayout *L, const uint8_t *act, int64_t tmax, float *y,
                                     uint8_t *scr) {
    const Kernels *ks[2] = {&AB_OLD, &AB_NEW};
    const int64_t N = w->n;
    float *one = malloc((size_t)N * 4);
    int bad = 0;
    for (int v = 0; v < 2; v++)
        for (int64_t nt = 2; nt <= tmax; nt++) {
            ks[v]->qgemm(y, N, w, L, act, nt, 0, N, scr);
            for (int64_t t = 0; t < nt; t++) {
                ks[v]->qgemm(one, N, w, L, act + t * L->stride, 1, 0, N, scr);
                if (memcmp(one, y + t * N, (size_t)N * 4)) {
                    bad = 1;
                    printf("%s T=%lld token %lld differs from T=1\n", v ? "new" : "old", (long long)nt, (long long)t);
                }
            }
        }
    free(one);
    return bad;
}

/* The rounds argument (default 15), kept to 1..64. */
static int ab_rounds(int argc, char **argv, int at) {
    const int r = argc > at ? atoi(argv[at]) : 15;
    return r < 1 ? 1 : r > 64 ? 64 : r;
}

/* once(k, arg) `reps` times per round, the two tables alternated, `rounds` rounds; prints each table's
 * median and best rate (work units of one call, in 1e9 per second) and returns the medians. */
static void ab_run(void (*once)(const Kernels *, void *), void *arg, int reps, int rounds, double work,
                   const char *unit, double median[2]) {
    const Kernels *ks[2] = {&AB_OLD, &AB_NEW};
    double r[2][64];
    for (int it = 0; it < rounds; it++)
        for (int v = 0; v < 2; v++) {
            const double t0 = ab_now();
            for (int q = 0; q < reps; q++) once(ks[v], arg);
            r[v][it] = work * reps / (ab_now() - t0) / 1e9;
        }
    for (int v = 0; v < 2; v++) {
        qsort(r[v], (size_t)rounds, sizeof(double), ab_cmp);
        median[v] = r[v][rounds / 2];
        printf("%s: median %.2f best %.2f %s\n", v ? "new" : "old", median[v], r[v][rounds - 1], unit);
    }
}
