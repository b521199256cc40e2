/* Two builds of one kernel table on one qgemm shape, alternated round by round in one process (this
 * machine's speed drifts by 15% within minutes, so runs of one build then the other mislead): the
 * table AB_NEW from the working tree against AB_OLD, the same file at another commit (defaults:
 * kernels_avx2 and kernels_avx2_old). Checks both against the scalar table, then prints each one's
 * median and best GMAC/s.
 * Build and run (from the repository root; x86; REV = the commit to compare against):
 *   S=src/cactus/_kernels; git show REV:$S/kernels_avx2.c > /tmp/kernels_avx2_old.c
 *   gcc -O3 -c -mavx2 -mfma -mf16c -I$S -Dkernels_avx2=kernels_avx2_old /tmp/kernels_avx2_old.c -o /tmp/old.o
 *   gcc -O3 -c -mavx512f -mavx512bw -mavx512vl -mavx512vnni -mgfni -mavx2 -mfma -mf16c -I$S $S/kernels_avx512.c -o /tmp/k512.o
 *   gcc -O3 -c -mavx2 -mfma -mf16c -mavxvnni -I$S $S/kernels_avxvnni.c -o /tmp/vnni.o
 *   gcc -O3 -I$S benchmarks/c/ab_qgemm.c $S/kernels_avx2.c -mavx2 -mfma -mf16c $S/kernels_scalar.c $S/dispatch.c \
 *     /tmp/k512.o /tmp/vnni.o /tmp/old.o -o /tmp/ab_qgemm -lm
 *   /tmp/ab_qgemm N K T [int4|int8] [ROUNDS=15]
 * For AVX-512 (a CPU with VNNI): the old file compiled with -Dkernels_avx512vnni=kernels_avx512vnni_old
 * -Dkernels_avx512vnni_gfni=kernels_avx512vnni_gfni_old, the new one and kernels_avx2.c as they
 * are, and this file with -DAB_NEW=kernels_avx512vnni_gfni -DAB_OLD=kernels_avx512vnni_gfni_old; AVX-VNNI
 * against AVX2, both from the working tree: -DAB_NEW=kernels_avxvnni -DAB_OLD=kernels_avx2.
 */
#include "ab.h"

typedef struct { const QMat *w; const ActLayout *L; uint8_t *act[2], *scr; float *y; int64_t T; } Job;

static void once(const Kernels *k, void *arg) {
    const Job *j = arg;
    k->qgemm(j->y, j->w->n, j->w, j->L, j->act[k == &AB_NEW], j->T, 0, j->w->n, j->scr);
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: ab_qgemm N K T [int4|int8] [ROUNDS]\n"); return 1; }
    const int64_t N = atoll(argv[1]), K = atoll(argv[2]), T = atoll(argv[3]);
    const int fmt = argc > 4 && !strcmp(argv[4], "int8") ? FMT_INT8 : FMT_INT4;
    const int rounds = ab_rounds(argc, argv, 5);
    if (K % 32 || N < 1 || T < 1) { fprintf(stderr, "need K a multiple of 32, N and T >= 1\n"); return 1; }
    QMat w;
    ab_random_qmat(&w, N, K, fmt);
    const Kernels *ks[2] = {&AB_OLD, &AB_NEW};
    ActLayout L; act_layout(&L, K, 32, fmt); L.extras = 0;
    uint8_t *act[2]; float *x = malloc((size_t)K * 4), *y = malloc((size_t)(T * N) * 4), *ref = malloc((size_t)(T * N) * 4);
    for (int v = 0; v < 2; v++) act[v] = calloc((size_t)(T * L.stride), 1);
    for (int64_t t = 0; t < T; t++) {
        for (int64_t i = 0; i < K; i++) x[i] = (float)rand() / (float)RAND_MAX - 0.5f;
        for (int v = 0; v < 2; v++) ks[v]->quantize(&L, act[v] + t * L.stride, x, 0, L.nga);
    }
    uint8_t *scr = malloc(kernels_scratch_bytes(w.kp) + 64);
    kernels_scalar.qgemm(ref, N, &w, &L, act[0], T, 0, N, scr);
    for (int v = 0; v < 2; v++) {
        ks[v]->qgemm(y, N, &w, &L, act[v], T, 0, N, scr);
        double md = 0;
        for (int64_t i = 0; i < T * N; i++) { double d = y[i] - ref[i]; d = d < 0 ? -d : d; md = d > md ? d : md; }
        printf("%s max|diff| %.2g\n", v ? "new" : "old", md);
    }
    const int reps = (int)(3e8 / (double)(N * K * T)) + 1;
    Job job = {&w, &L, {act[0], act[1]}, scr, y, T};
    double median[2];
    ab_run(once, &job, reps, rounds, (double)(N * K * T), "GMAC/s", median);
    return 0;
}
