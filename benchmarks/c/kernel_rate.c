/* Compute rate of the decode kernels, memory out of the way: one thread, one token, an int4 or
 * int8 matrix small enough to stay in L2, qgemm called over and over. Decode is bound by memory
 * only while the kernel computes faster than memory delivers, with room to overlap the two; this
 * measures that room (GB/s of weights the kernel consumes from cache, per core).
 * Build and run (from the repository root; x86):
 *   S=src/cactus/_kernels; gcc -O3 -c -mavx512f -mavx512bw -mavx512vl -mavx512vnni -mgfni -mavx2 -mfma -mf16c \
 *     -I$S $S/kernels_avx512.c -o /tmp/k512.o && gcc -O3 -c -mavx2 -mfma -mf16c -mavxvnni -I$S $S/kernels_avxvnni.c -o /tmp/vnni.o && \
 *   gcc -O3 -I$S benchmarks/c/kernel_rate.c $S/kernels_avx2.c -mavx2 -mfma -mf16c $S/kernels_scalar.c $S/dispatch.c \
 *     /tmp/k512.o /tmp/vnni.o -o /tmp/kernel_rate -lm && /tmp/kernel_rate [ROWS] [K]
 * (only kernels_avx512.c and kernels_avxvnni.c get their flags, so the program runs on AVX2-only CPUs too)
 * Columns: avx2, avxvnni, avx512 (VNNI; high nibbles by shift and mask), avx512+gfni (one GF(2) affine
 * op), each where the CPU has it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels.h"

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

static double rate(const Kernels *k, const QMat *w, int64_t rows) {
    ActLayout L;
    act_layout(&L, w->k, w->group, w->fmt);
    uint8_t *act = aligned_alloc(64, (L.stride + 63) / 64 * 64);
    float *x = malloc(w->k * 4), *y = malloc(rows * 4);
    for (int64_t i = 0; i < w->k; i++) x[i] = (float)rand() / (float)RAND_MAX - 0.5f;
    k->quantize(&L, act, x, 0, L.nga);
    uint8_t *scr = aligned_alloc(64, (kernels_scratch_bytes(w->kp) + 63) / 64 * 64);
    const double bytes = (double)rows * (w->row_bytes + 2 * w->ng);
    const int reps = (int)(4e9 / bytes) + 1;
    double best = 1e9;
    for (int r = 0; r < 5; r++) {
        double t = now();
        for (int i = 0; i < reps; i++) k->qgemm(y, rows, w, &L, act, 1, 0, rows, scr);
        t = now() - t;
        if (t < best) best = t;
    }
    free(act); free(x); free(y); free(scr);
    return bytes * reps / best / 1e9;
}

int main(int argc, char **argv) {
    const int64_t rows = argc > 1 ? atoll(argv[1]) : 512, K = argc > 2 ? atoll(argv[2]) : 2048, G = 32;
    const Kernels *tabs[] = {&kernels_avx2, &kernels_avxvnni, &kernels_avx512vnni, &kernels_avx512vnni_gfni};
    const char *names[] = {"avx2", "avxvnni", "avx512", "avx512+gfni"}, *needs[] = {"avx2", "avxvnni", "avx512", "avx512"};
    for (int f = FMT_INT8; f <= FMT_INT4; f++) {
        QMat w = {0};
        w.n = rows; w.k = K; w.kp = K; w.ng = K / G; w.group = G; w.fmt = f;
        w.row_bytes = f == FMT_INT4 ? K / 2 : K;
        uint8_t *d = aligned_alloc(64, rows * w.row_bytes);
        uint16_t *s = aligned_alloc(64, rows * w.ng * 2);
        for (int64_t i = 0; i < rows * w.row_bytes; i++) d[i] = (uint8_t)rand();
        for (int64_t i = 0; i < rows * w.ng; i++) s[i] = f32_to_f16(0.001f + 0.01f * (float)(rand() % 100) / 100.0f);
        w.data = d; w.scales = s;
        printf("%s %lldx%lld (%.2f MB):", f == FMT_INT4 ? "int4" : "int8", (long long)rows, (long long)K,
               rows * (w.row_bytes + 2.0 * w.ng) / 1e6);
        for (size_t t = 0; t < sizeof tabs / sizeof *tabs; t++) {
            if (!cpu_supports(needs[t]) || (t == 3 && !cpu_supports("gfni"))) continue;
            printf("  %s %.1f", names[t], rate(tabs[t], &w, rows));
        }
        printf(" GB/s\n");
        free(d); free(s);
    }
    return 0;
}
