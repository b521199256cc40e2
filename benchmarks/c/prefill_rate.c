/* Compute rate of the prefill kernels (qgemm of T tokens: pack the panels, then the tiles), one
 * thread, a matrix small enough to stay in L2, so neither DRAM nor the thread pool is in the way.
 * Also checks the result against the scalar table (max abs difference).
 * Build and run (from the repository root; x86):
 *   S=src/cactus/_kernels; gcc -O3 -c -mavx512f -mavx512bw -mavx512vl -mavx512vnni -mgfni -mavx2 -mfma -mf16c \
 *     -I$S $S/kernels_avx512.c -o /tmp/k512.o && gcc -O3 -c -mavx2 -mfma -mf16c -mavxvnni -I$S $S/kernels_avxvnni.c -o /tmp/vnni.o && \
 *   gcc -O3 -I$S benchmarks/c/prefill_rate.c $S/kernels_avx2.c -mavx2 -mfma -mf16c $S/kernels_scalar.c \
 *     $S/dispatch.c /tmp/k512.o /tmp/vnni.o -o /tmp/prefill_rate -lm
 *   /tmp/prefill_rate [ISA=avx2] [N=256] [K=2048] [T=64] [int4|int8]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels.h"

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

int main(int argc, char **argv) {
    const char *isa = argc > 1 ? argv[1] : "avx2";
    const int64_t N = argc > 2 ? atoll(argv[2]) : 256, K = argc > 3 ? atoll(argv[3]) : 2048, T = argc > 4 ? atoll(argv[4]) : 64;
    const int fmt = argc > 5 && !strcmp(argv[5], "int8") ? FMT_INT8 : FMT_INT4;
    const Kernels *k = kernels_by_name(isa);
    if (!k || K % 32 || N < 1 || T < 1) { fprintf(stderr, "unknown or unsupported ISA %s, or bad shape\n", isa); return 1; }
    QMat w;
    memset(&w, 0, sizeof w);
    w.n = N; w.k = w.kp = K; w.group = 32; w.ng = K / 32; w.fmt = fmt;
    w.row_bytes = fmt == FMT_INT4 ? K / 2 : K;
    uint8_t *data = malloc((size_t)(N * w.row_bytes));
    uint16_t *sc = malloc((size_t)(N * w.ng) * 2);
    for (int64_t i = 0; i < N * w.row_bytes; i++) data[i] = fmt == FMT_INT4 ? (uint8_t)rand() : (uint8_t)(rand() % 255 - 127);
    for (int64_t i = 0; i < N * w.ng; i++) sc[i] = f32_to_f16(0.01f + (float)(rand() % 100) * 1e-4f);
    w.data = data;
    w.scales = sc;
    ActLayout L;
    act_layout(&L, K, 32, fmt);
    L.extras = 0;  /* as prefill runs it */
    uint8_t *act = calloc((size_t)(T * L.stride), 1);
    float *x = malloc((size_t)K * 4), *y = malloc((size_t)(T * N) * 4), *ref = malloc((size_t)(T * N) * 4);
    for (int64_t t = 0; t < T; t++) {
        for (int64_t i = 0; i < K; i++) x[i] = (float)rand() / (float)RAND_MAX - 0.5f;
        k->quantize(&L, act + t * L.stride, x, 0, L.nga);
    }
    uint8_t *scr = malloc(kernels_scratch_bytes(w.kp) + 64);
    kernels_scalar.qgemm(ref, N, &w, &L, act, T, 0, N, scr);
    k->qgemm(y, N, &w, &L, act, T, 0, N, scr);
    double md = 0;
    for (int64_t i = 0; i < T * N; i++) md = y[i] - ref[i] > md ? y[i] - ref[i] : ref[i] - y[i] > md ? ref[i] - y[i] : md;
    const int reps = (int)(2e9 / (double)(N * K * T)) + 1;
    double best = 1e9;
    for (int it = 0; it < 7; it++) {
        const double t0 = now();
        for (int r = 0; r < reps; r++) k->qgemm(y, N, &w, &L, act, T, 0, N, scr);
        const double dt = (now() - t0) / reps;
        best = dt < best ? dt : best;
    }
    printf("%s %s N=%lld K=%lld T=%lld: %.1f GMAC/s (best of 7)  max |diff| vs scalar %.2g\n", k->name,
           fmt == FMT_INT4 ? "int4" : "int8", (long long)N, (long long)K, (long long)T, (double)(N * K * T) / best / 1e9, md);
    free(data); free(sc); free(act); free(x); free(y); free(ref); free(scr);
    return 0;
}
