/* The tape's steps run qgemm with ActLayout.one_token = 1 (every token's row bit-identical to a
 * one-token call, no panels). This compares two builds of one table on such calls, alternated round
 * by round in one process (ab.h): for T = 1..16 tokens, one thread, an (N, K) int8 or int4 weight,
 * it checks that every token's row is the T = 1 result bit for bit, then prints each build's
 * median and best time of a T-token call as multiples of its own T = 1 call. With N * K small (the default
 * 512 x 2048) the weight stays in L2: what each further token costs in compute; with a weight far
 * larger than the caches, what decode of T tokens costs when it streams from DRAM.
 * Build and run (from the repository root; x86; REV = the commit to compare against):
 *   S=src/cactus/_kernels; git show REV:$S/kernels_avx2.c > /tmp/kernels_avx2_old.c
 *   gcc -O3 -c -mavx2 -mfma -mf16c -I$S -Dkernels_avx2=kernels_avx2_old /tmp/kernels_avx2_old.c -o /tmp/old.o
 *   gcc -O3 -c -mavx512f -mavx512bw -mavx512vl -mavx512vnni -mgfni -mavx2 -mfma -mf16c -I$S $S/kernels_avx512.c -o /tmp/k512.o
 *   gcc -O3 -c -mavx2 -mfma -mf16c -mavxvnni -I$S $S/kernels_avxvnni.c -o /tmp/vnni.o
 *   gcc -O3 -I$S benchmarks/c/ab_one_token.c $S/kernels_avx2.c -mavx2 -mfma -mf16c $S/kernels_scalar.c $S/common.c \
 *     $S/formats.c $S/dispatch.c /tmp/k512.o /tmp/vnni.o /tmp/old.o -o /tmp/ab_one_token -lm
 *   /tmp/ab_one_token [int4|int8] [N=512] [K=2048] [ROUNDS=101]
 * AVX-VNNI against AVX2, both from the working tree: -DAB_NEW=kernels_avxvnni -DAB_OLD=kernels_avx2.
 * AVX-512 against itself at REV: git show REV:$S/kernels_avx512.c
 *   | sed 's/^const Kernels \(kernels_avx512[a-z_]*\)/const Kernels \1_old/' > /tmp/k512_old.c; compile it and the working
 *   tree's kernels_avx512.c with the -mavx512... line above (and kernels_ssse3.c with -mssse3, which dispatch.c names), link both, -DAB_NEW=kernels_avx512vnni_gfni
 *   -DAB_OLD=kernels_avx512vnni_gfni_old.
 */
#include "ab.h"

enum { TMAX = 16, RMAX = 1001 };

int main(int argc, char **argv) {
    const int fmt = argc > 1 && !strcmp(argv[1], "int8") ? FMT_INT8 : FMT_INT4;
    const int64_t N = argc > 2 ? atoll(argv[2]) : 512, K = argc > 3 ? atoll(argv[3]) : 2048;
    const int rounds = argc > 4 && atoi(argv[4]) > 0 ? (atoi(argv[4]) < RMAX ? atoi(argv[4]) : RMAX) : 101;
    if (K % 32 || N < 1) { fprintf(stderr, "need K a multiple of 32, N >= 1\n"); return 1; }
    QMat w;
    ab_random_qmat(&w, N, K, fmt);
    ActLayout L; act_layout(&L, K, 32, fmt); L.one_token = 1;
    uint8_t *act = ab_random_acts(&AB_NEW, &L, K, TMAX), *scr = malloc(kernels_scratch_bytes(w.kp) + 64);
    float *y = malloc((size_t)(TMAX * N) * 4);
    const Kernels *ks[2] = {&AB_OLD, &AB_NEW};
    static const int64_t Ts[] = {1, 2, 3, 4, 5, 8, 16};
    const int nT = sizeof Ts / sizeof *Ts;
    const int bad = ab_check_one_token(&w, &L, act, TMAX, y, scr);
    const int reps = (int)(2e7 / (double)(N * K)) + 1;
    static double r[2][8][RMAX];
    for (int it = 0; it < rounds; it++)
        for (int i = 0; i < nT; i++)
            for (int v = 0; v < 2; v++) {
                const double t0 = ab_now();
                for (int q = 0; q < reps; q++) ks[v]->qgemm(y, N, &w, &L, act, Ts[i], 0, N, scr);
                r[v][i][it] = (ab_now() - t0) / reps;
            }
    printf("%s N=%lld K=%lld, one_token, time of T tokens / T=1 (T=1: us per call)\n", fmt == FMT_INT4 ? "int4" : "int8",
           (long long)N, (long long)K);
    for (int v = 0; v < 2; v++)
        for (int i = 0; i < nT; i++) qsort(r[v][i], (size_t)rounds, sizeof(double), ab_cmp);
    for (int best = 0; best < 2; best++)  /* the median, then the fastest round (the least disturbed) */
        for (int v = 0; v < 2; v++) {
            const int at = best ? 0 : rounds / 2;
            printf("%s %s: T=1 %.1f us", v ? "new" : "old", best ? "best  " : "median", r[v][0][at] * 1e6);
            for (int i = 1; i < nT; i++) printf("  T=%lld x%.2f", (long long)Ts[i], r[v][i][at] / r[v][0][at]);
            printf("\n");
        }
    return bad;
}
