/* Streaming experiments on one 2048-wide int4 matrix of 262144 rows (256 MiB + scales, anonymous
 * huge pages), two pinned threads, one token, cactus's AVX-512 decode kernel (the dispatch table):
 *   halves          each thread one contiguous half, one call each
 *   chunks128       128-row chunks claimed from a shared counter (the pool's pattern)
 *   jobsN/pthread   jobs of N rows, each thread half of each, a pthread barrier between jobs
 *   jobsN/spin      the same with a spinning barrier
 *   read            a plain read of the panel buffer
 * and, printed once, the agreement of a prototype 16-row interleaved ("panel") layout kernel with
 * the row kernel; `panel` timings are in go(1). Results: benchmarks/RESULTS.md.
 * Build (from the repository root):
 *   S=src/cactus/_kernels; gcc -O2 -mavx512f -mavx512bw -mavx512vl -mavx512vnni -mgfni -mavx2 -mfma -mf16c -mavxvnni \
 *     -I$S benchmarks/c/stream_jobs.c $S/kernels_avx512.c $S/kernels_scalar.c $S/kernels_avx2.c $S/kernels_avxvnni.c $S/dispatch.c \
 *     -o /tmp/stream_jobs -lpthread -lm && /tmp/stream_jobs
 */
#define _GNU_SOURCE
#include <immintrin.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include "kernels.h"
#include <math.h>
#include <stdatomic.h>
static int64_t CH = 128; static int64_t JOB = 2048; static atomic_long nextc; static atomic_long spin_cnt;
static void spin_barrier(long *gen) { long g = ++*gen; atomic_fetch_add(&spin_cnt, 1); while (atomic_load(&spin_cnt) < 2 * g) _mm_pause(); }
static const int64_t K = 2048, N = 262144, NG = 64;
static QMat W; static uint8_t *P; static uint8_t *act; static ActLayout L; static float *y, *y2;
static int32_t corr[64]; static float sx[64]; static int8_t xq[2048];
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static void *big(size_t n) { void *p = mmap(NULL, n, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0); madvise(p, n, MADV_HUGEPAGE); return p; }
// panel layout: per 16-row panel, per pair of groups: 8 zmm data (g0 c0..3, g1 c0..3) + 64B scales (g0 16 f16, g1 16 f16)
#define PAIR_BYTES (8 * 64 + 64)
static void pack(void) {
    for (int64_t p = 0; p < N / 16; p++)
        for (int64_t gp = 0; gp < NG / 2; gp++) {
            uint8_t *o = P + (p * (NG / 2) + gp) * PAIR_BYTES;
            for (int h = 0; h < 2; h++) {
                int64_t g = 2 * gp + h;
                for (int c = 0; c < 4; c++)
                    for (int i = 0; i < 16; i++)
                        memcpy(o + (h * 4 + c) * 64 + 4 * i, W.data + (p * 16 + i) * W.row_bytes + g * 16 + 4 * c, 4);
                for (int i = 0; i < 16; i++) memcpy(o + 512 + h * 32 + 2 * i, W.scales + (p * 16 + i) * NG + g, 2);
            }
        }
}
static inline void panel_dot(float *out, const uint8_t *pp) {
    const __m512i m0f = _mm512_set1_epi8(0x0F);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t gp = 0; gp < NG / 2; gp++, pp += PAIR_BYTES) {
        __builtin_prefetch(pp + 8192, 0, 2); __builtin_prefetch(pp + 8192 + 64, 0, 2); __builtin_prefetch(pp + 8192 + 128, 0, 2);
        __builtin_prefetch(pp + 8192 + 192, 0, 2); __builtin_prefetch(pp + 8192 + 256, 0, 2); __builtin_prefetch(pp + 8192 + 320, 0, 2);
        __builtin_prefetch(pp + 8192 + 384, 0, 2); __builtin_prefetch(pp + 8192 + 448, 0, 2); __builtin_prefetch(pp + 8192 + 512, 0, 2);
        const __m512i sc = _mm512_loadu_si512(pp + 512);
        for (int h = 0; h < 2; h++) {
            const int64_t g = 2 * gp + h;
            __m512i ai = _mm512_set1_epi32(corr[g]);
            const int8_t *x = xq + 32 * g;
            for (int c = 0; c < 4; c++) {
                const __m512i w = _mm512_loadu_si512(pp + (h * 4 + c) * 64);
                int32_t xl, xh; memcpy(&xl, x + 4 * c, 4); memcpy(&xh, x + 16 + 4 * c, 4);
                ai = _mm512_dpbusd_epi32(ai, _mm512_and_si512(w, m0f), _mm512_set1_epi32(xl));
                ai = _mm512_dpbusd_epi32(ai, _mm512_gf2p8affine_epi64_epi8(w, _mm512_set1_epi64(0x1020408000000000LL), 0), _mm512_set1_epi32(xh));
            }
            const __m512 s = _mm512_mul_ps(_mm512_cvtph_ps(h ? _mm512_extracti64x4_epi64(sc, 1) : _mm512_castsi512_si256(sc)), _mm512_set1_ps(sx[g]));
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ai), s, acc);
        }
    }
    _mm512_storeu_ps(out, acc);
}
static int mode; static pthread_barrier_t bar, bar2;
static void *run(void *a) {
    long id = (long)a; cpu_set_t s; CPU_ZERO(&s); CPU_SET(id, &s); pthread_setaffinity_np(pthread_self(), sizeof s, &s);
    int64_t r0 = id * N / 2, r1 = r0 + N / 2;
    static __thread uint8_t scr[1 << 20];
    pthread_barrier_wait(&bar);
    if (mode == 0) kernels_avx512vnni_gfni.qgemm(y, N, &W, &L, act, 1, r0, r1, scr);
    else if (mode == 1) for (int64_t p = r0 / 16; p < r1 / 16; p++) panel_dot(y2 + 16 * p, P + p * (NG / 2) * PAIR_BYTES);
    else if (mode == 3) { for (;;) { int64_t c = atomic_fetch_add(&nextc, 1); if (c * CH >= N) break; kernels_avx512vnni_gfni.qgemm(y, N, &W, &L, act, 1, c * CH, c * CH + CH, scr); } }
    else if (mode == 5) { long gen = 0; for (int64_t j0 = 0; j0 < N; j0 += JOB) { int64_t a = j0 + id * JOB / 2; kernels_avx512vnni_gfni.qgemm(y, N, &W, &L, act, 1, a, a + JOB / 2, scr); spin_barrier(&gen); } }
    else if (mode == 4) { for (int64_t j0 = 0; j0 < N; j0 += JOB) { int64_t a = j0 + id * JOB / 2; kernels_avx512vnni_gfni.qgemm(y, N, &W, &L, act, 1, a, a + JOB / 2, scr); pthread_barrier_wait(&bar2); } }
    else { const uint64_t *q = (const uint64_t *)(P + r0 / 16 * (NG / 2) * PAIR_BYTES); uint64_t t = 0; for (int64_t i = 0; i < (r1 - r0) / 16 * (NG / 2) * PAIR_BYTES / 8; i += 8) t += q[i] ^ q[i + 3]; y[0] += (float)(t & 1); }
    pthread_barrier_wait(&bar);
    return NULL;
}
static double go(int m) {
    mode = m; atomic_store(&nextc, 0); atomic_store(&spin_cnt, 0); pthread_t t[2]; pthread_barrier_init(&bar, NULL, 3); pthread_barrier_init(&bar2, NULL, 2);
    for (long i = 0; i < 2; i++) pthread_create(&t[i], NULL, run, (void *)i);
    pthread_barrier_wait(&bar); double t0 = now(); pthread_barrier_wait(&bar); double dt = now() - t0;
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    pthread_barrier_destroy(&bar);
    return (double)N * (W.row_bytes + 2 * NG) / dt / 1e9;
}
int main(void) {
    W.n = N; W.k = K; W.kp = K; W.ng = NG; W.row_bytes = K / 2; W.fmt = FMT_INT4; W.group = 32;
    uint8_t *d = big(N * K / 2); uint16_t *sc = big(N * NG * 2);
    for (int64_t i = 0; i < N * K / 2; i++) d[i] = (uint8_t)(rand());
    for (int64_t i = 0; i < N * NG; i++) sc[i] = f32_to_f16(0.001f + 0.01f * (float)(rand() % 100) / 100.0f);
    W.data = d; W.scales = sc;
    P = big((size_t)N / 16 * (NG / 2) * PAIR_BYTES); pack();
    float x[2048]; for (int i = 0; i < K; i++) x[i] = (float)rand() / (float)RAND_MAX - 0.5f;
    act_layout(&L, K, 32, FMT_INT4); act = aligned_alloc(64, (L.stride + 63) / 64 * 64);
    kernels_avx512vnni_gfni.quantize(&L, act, x, 0, L.nga);
    memcpy(xq, act + L.off_q, K); memcpy(sx, act + L.off_s, 4 * NG);
    for (int g = 0; g < NG; g++) corr[g] = -8 * ((int32_t *)(act + L.off_sum))[g];
    y = aligned_alloc(64, N * 4); y2 = aligned_alloc(64, N * 4);
    go(0); go(1);
    double worst = 0; for (int64_t i = 0; i < N; i++) { double e = fabs(y[i] - y2[i]) / (fabs(y[i]) + 1e-3); if (e > worst) worst = e; }
    printf("max rel diff panel vs rows: %g\n", worst);
    for (int r = 0; r < 6; r++) { double a = go(0), b = go(3); JOB = 2048; double c = go(4); JOB = 8192; double d = go(4); JOB = 2048; double e = go(5); JOB = 8192; double f = go(5); printf("panel %.1f  ", go(1)); printf("halves %.1f  chunks128 %.1f  jobs2048/pthread %.1f  jobs8192/pthread %.1f  jobs2048/spin %.1f  jobs8192/spin %.1f  read %.1f GB/s\n", a, b, c, d, e, f, go(2)); }
}
