/* Decode attention, two builds of one kernel table alternated round by round in one process (as
 * ab_qgemm.c): one query position, a GQA group of 4 rows per KV head, HKV heads one after another,
 * one thread, an f16 cache of S positions (hd 64). Checks both against the scalar table, then
 * prints each one's median and best GB/s of cache read (K and V).
 * Build and run (from the repository root; x86; REV = the commit to compare against):
 *   S=src/cactus/_kernels; git show REV:$S/kernels_avx2.c > /tmp/kernels_avx2_old.c
 *   gcc -O3 -c -mavx2 -mfma -mf16c -I$S -Dkernels_avx2=kernels_avx2_old /tmp/kernels_avx2_old.c -o /tmp/old.o
 *   gcc -O3 -c -mavx512f -mavx512bw -mavx512vl -mavx512vnni -mgfni -mavx2 -mfma -mf16c -I$S $S/kernels_avx512.c -o /tmp/k512.o
 *   gcc -O3 -c -mavx2 -mfma -mf16c -mavxvnni -I$S $S/kernels_avxvnni.c -o /tmp/vnni.o
 *   gcc -O3 -I$S benchmarks/c/ab_attn.c $S/kernels_avx2.c -mavx2 -mfma -mf16c $S/kernels_scalar.c $S/dispatch.c \
 *     /tmp/k512.o /tmp/vnni.o /tmp/old.o -o /tmp/ab_attn -lm
 *   /tmp/ab_attn S [HKV=8] [ROUNDS=15]
 */
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
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static int cmp(const void *a, const void *b) { double x = *(double *)a, y = *(double *)b; return x < y ? -1 : x > y; }
int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: ab_attn S [HKV] [ROUNDS]\n"); return 1; }
    const int64_t S = atoll(argv[1]), hkv = argc > 2 ? atoll(argv[2]) : 8, hd = 64, R = 4;
    int rounds = argc > 3 ? atoi(argv[3]) : 15;
    rounds = rounds < 1 ? 1 : rounds > 64 ? 64 : rounds;
    if (S < 1 || hkv < 1) { fprintf(stderr, "need S, HKV >= 1\n"); return 1; }
    const int64_t cap = (S + 15) / 16 * 16;
    uint16_t *kt = malloc((size_t)(hkv * cap * hd) * 2), *v = malloc((size_t)(hkv * cap * hd) * 2);
    for (int64_t i = 0; i < hkv * cap * hd; i++) {
        kt[i] = f32_to_f16(((float)rand() / (float)RAND_MAX - 0.5f) * 2.0f);
        v[i] = f32_to_f16((float)rand() / (float)RAND_MAX - 0.5f);
    }
    float *q = malloc((size_t)(hkv * R * hd) * 4), *out = malloc((size_t)(hkv * R * hd) * 4), *ref = malloc((size_t)(hkv * R * hd) * 4);
    for (int64_t i = 0; i < hkv * R * hd; i++) q[i] = (float)rand() / (float)RAND_MAX - 0.5f;
    int64_t lim[4] = {S, S, S, S};
    float *scr = malloc(attn_scratch_floats(R, hd) * 4);
    const Kernels *ks[2] = {&AB_OLD, &AB_NEW};
    const float scale = 1.0f / 8.0f;
    for (int64_t h = 0; h < hkv; h++)
        kernels_scalar.attn(ref + h * R * hd, q + h * R * hd, R, lim, kt + h * cap * hd, v + h * cap * hd, hd, scale, 1, scr);
    for (int k = 0; k < 2; k++) {
        for (int64_t h = 0; h < hkv; h++)
            ks[k]->attn(out + h * R * hd, q + h * R * hd, R, lim, kt + h * cap * hd, v + h * cap * hd, hd, scale, 1, scr);
        double md = 0;
        for (int64_t i = 0; i < hkv * R * hd; i++) md = fmax(md, fabs((double)out[i] - ref[i]));
        printf("%s max|diff| %.2g\n", k ? "new" : "old", md);
    }
    const double bytes = 4.0 * (double)(hkv * S * hd);
    const int reps = (int)(4e8 / bytes) + 1;
    double r[2][64];
    for (int it = 0; it < rounds; it++)
        for (int k = 0; k < 2; k++) {
            const double t0 = now();
            for (int rep = 0; rep < reps; rep++)
                for (int64_t h = 0; h < hkv; h++)
                    ks[k]->attn(out + h * R * hd, q + h * R * hd, R, lim, kt + h * cap * hd, v + h * cap * hd, hd, scale, 1, scr);
            r[k][it] = bytes * reps / (now() - t0) / 1e9;
        }
    for (int k = 0; k < 2; k++) {
        qsort(r[k], rounds, sizeof(double), cmp);
        printf("%s: median %.2f best %.2f GB/s (%.0f us per call of %lld heads)\n", k ? "new" : "old", r[k][rounds / 2],
               r[k][rounds - 1], bytes / r[k][rounds / 2] / 1e3, (long long)hkv);
    }
    return 0;
}
