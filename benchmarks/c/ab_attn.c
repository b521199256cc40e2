/* Attention, two builds of one kernel table alternated round by round in one process (as
 * ab_qgemm.c): Q query positions (1: decode; prefill's unit of work is 16), a GQA group of 4 rows
 * per position and KV head, HKV heads one after another, one thread, an f16 cache of S positions
 * (hd 64), causal: the last query position sees all S. Checks both against the scalar table, then
 * prints each one's median and best GB/s of cache read (K and V; decode) or GFLOP/s (Q > 1: 4 hd
 * per row and visible position, the scores' and the weighted sum's multiply-adds).
 * Build and run (from the repository root; x86; REV = the commit to compare against):
 *   S=src/cactus/_kernels; git show REV:$S/kernels_avx2.c > /tmp/kernels_avx2_old.c
 *   gcc -O3 -c -mavx2 -mfma -mf16c -I$S -Dkernels_avx2=kernels_avx2_old /tmp/kernels_avx2_old.c -o /tmp/old.o
 *   gcc -O3 -c -mavx512f -mavx512bw -mavx512vl -mavx512vnni -mgfni -mavx2 -mfma -mf16c -I$S $S/kernels_avx512.c -o /tmp/k512.o
 *   gcc -O3 -c -mavx2 -mfma -mf16c -mavxvnni -I$S $S/kernels_avxvnni.c -o /tmp/vnni.o
 *   gcc -O3 -I$S benchmarks/c/ab_attn.c $S/kernels_avx2.c -mavx2 -mfma -mf16c $S/kernels_scalar.c $S/dispatch.c \
 *     /tmp/k512.o /tmp/vnni.o /tmp/old.o -o /tmp/ab_attn -lm
 *   /tmp/ab_attn S [HKV=8] [ROUNDS=15] [Q=1]
 */
#include "ab.h"

#define SCALE 0.125f  /* 1 / sqrt(hd) */

typedef struct { float *out, *q, *scr; const int64_t *lim; const uint16_t *kt, *v; int64_t hkv, cap, hd, R; } Job;

static void once(const Kernels *k, void *arg) {  /* the HKV heads of one decoded token, one after another */
    const Job *j = arg;
    for (int64_t h = 0; h < j->hkv; h++)
        k->attn(j->out + h * j->R * j->hd, j->q + h * j->R * j->hd, j->R, j->lim, j->kt + h * j->cap * j->hd,
                j->v + h * j->cap * j->hd, j->hd, SCALE, 1, j->scr);
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: ab_attn S [HKV] [ROUNDS] [Q]\n"); return 1; }
    const int64_t S = atoll(argv[1]), hkv = argc > 2 ? atoll(argv[2]) : 8, hd = 64, nq = argc > 4 ? atoll(argv[4]) : 1;
    const int64_t R = 4 * nq;
    const int rounds = ab_rounds(argc, argv, 3);
    if (S < 1 || hkv < 1 || nq < 1 || nq > S || nq > 64) { fprintf(stderr, "need S, HKV >= 1 and 1 <= Q <= min(S, 64)\n"); return 1; }
    const int64_t cap = (S + 15) / 16 * 16;
    uint16_t *kt = malloc((size_t)(hkv * cap * hd) * 2), *v = malloc((size_t)(hkv * cap * hd) * 2);
    for (int64_t i = 0; i < hkv * cap * hd; i++) {
        kt[i] = f32_to_f16(((float)rand() / (float)RAND_MAX - 0.5f) * 2.0f);
        v[i] = f32_to_f16((float)rand() / (float)RAND_MAX - 0.5f);
    }
    float *q = malloc((size_t)(hkv * R * hd) * 4), *out = malloc((size_t)(hkv * R * hd) * 4), *ref = malloc((size_t)(hkv * R * hd) * 4);
    for (int64_t i = 0; i < hkv * R * hd; i++) q[i] = (float)rand() / (float)RAND_MAX - 0.5f;
    int64_t lim[256], seen = 0;
    for (int64_t r = 0; r < R; r++) seen += lim[r] = S - nq + 1 + r / 4;
    float *scr = malloc(attn_scratch_floats(R, hd) * 4);
    const Kernels *ks[2] = {&AB_OLD, &AB_NEW};
    for (int64_t h = 0; h < hkv; h++)
        kernels_scalar.attn(ref + h * R * hd, q + h * R * hd, R, lim, kt + h * cap * hd, v + h * cap * hd, hd, SCALE, 1, scr);
    Job job = {out, q, scr, lim, kt, v, hkv, cap, hd, R};
    for (int k = 0; k < 2; k++) {
        once(ks[k], &job);
        double md = 0;
        for (int64_t i = 0; i < hkv * R * hd; i++) md = fmax(md, fabs((double)out[i] - ref[i]));
        printf("%s max|diff| %.2g\n", k ? "new" : "old", md);
    }
    const double work = nq == 1 ? 4.0 * (double)(hkv * S * hd) : 4.0 * (double)hd * (double)seen * (double)hkv;
    const int reps = (int)((nq == 1 ? 4e8 : 2e9) / work) + 1;
    double median[2];
    ab_run(once, &job, reps, rounds, work, nq == 1 ? "GB/s of cache read" : "GFLOP/s", median);
    for (int k = 0; k < 2; k++) printf("%s: %.0f us per call of %lld heads\n", k ? "new" : "old", work / median[k] / 1e3, (long long)hkv);
    return 0;
}
