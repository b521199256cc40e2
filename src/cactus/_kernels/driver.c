/* Ops composed from the dispatch table and the thread pool: linear, fused SwiGLU, MoE, attention.
 * Each op is one pool job made of phases; a phase is a list of chunks (output rows in multiples of
 * the 16-row panel, or tokens) that threads claim, and the next phase starts when all are done.
 * A decode step of a block so costs two or three waits, and a preempted thread delays only the
 * chunk it holds. Scratch is malloc'ed once per call, never inside the loops.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "driver.h"

/* Rows per chunk: a multiple of the panel, about 8 chunks per thread in prefill and 2 in decode.
 * Decode's chunks are row streams from DRAM, and each new stream starts cold: with 2 per thread
 * instead of 8, decode ran 5-8% faster at ~50 GB/s (8B-A1B, 24B-A2B int4) and the same or 2% faster
 * at ~33, measured as benchmarks/ab_prefetch.py does, settings alternated round by round. */
static int64_t chunk_rows(int64_t n, int nth, int64_t T) {
    const int64_t per = T == 1 ? 2 : 8;
    int64_t c = (n + per * nth - 1) / (per * nth);
    c = (c + KERNEL_PANEL - 1) / KERNEL_PANEL * KERNEL_PANEL;
    return c < KERNEL_PANEL ? KERNEL_PANEL : c;
}

#define EACH(ph, n, c) for (int64_t c; (c = phase_claim(ph)) < (n); phase_done(ph))

/* The pool's job kind (pool.h). Decode jobs take microseconds, and a wake-up can cost more than a
 * thread brings, so the pool times them both ways. Prefill jobs always run on every thread: their
 * many chunks are claimed as threads arrive, so a late thread only misses chunks, while each trial
 * of the caller alone cost a whole prefill job (12 per kind: 6 of the 22 MoE layers of an 8B-A1B
 * 512-token prefill ran on one thread). */
static int job_kind(int op, int64_t T) { return T > 1 ? -1 : 2 * op; }

static int is_int(const QMat *w) { return w->fmt == FMT_INT8 || w->fmt == FMT_INT4; }

/* bytes of one weight matrix (data and scales): the pool's measure of a job's size */
static double wbytes(const QMat *w) { return (double)w->n * (double)(w->row_bytes + 2 * w->ng); }

#define ARENA_MAX ((size_t)256 << 20)  /* larger requests are not kept */

static void *scratch_alloc(const Ctx *c, size_t n) {
    void *p = NULL;
    n = n ? n : 64;
    Arena *a = c->arena;
    if (a && n <= ARENA_MAX && !atomic_flag_test_and_set(&a->busy)) {
        if (a->cap < n) {
            free(a->p);
            a->p = NULL;
            a->cap = 0;
            if (posix_memalign(&p, 64, n)) { atomic_flag_clear(&a->busy); return NULL; }
            a->p = p;
            a->cap = n;
        }
        return a->p;
    }
    return posix_memalign(&p, 64, n) ? NULL : p;
}

static void scratch_free(const Ctx *c, void *p) {
    if (c->arena && p && p == c->arena->p) atomic_flag_clear(&c->arena->busy);
    else free(p);
}

/* rows [r0, r1) of y (nt, ldy) = W @ x_t, for either weight kind */
static void gemm_rows(const Ctx *c, float *y, int64_t ldy, const QMat *w, const ActLayout *L, const uint8_t *act,
                      const float *x, int64_t ldx, int64_t nt, int64_t r0, int64_t r1, uint8_t *scr) {
    if (r0 >= r1 || nt == 0) return;
    if (is_int(w)) c->k->qgemm(y, ldy, w, L, act, nt, r0, r1, scr);
    else c->k->fgemm(y, ldy, w, x, ldx, nt, r0, r1);
}

static void quantize_tokens(const Ctx *c, const ActLayout *L, uint8_t *act, const float *x, int64_t ldx,
                            int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; t++) c->k->quantize(L, act + t * L->stride, x + t * ldx, 0, L->nga);
}

/* ------------------------------------------------------------------ linear */

typedef struct {
    const Ctx *c;
    float *y;
    const float *x;
    int64_t T, cr;
    const QMat *w;
    ActLayout L;
    uint8_t *act, *scr;
    size_t per;
    Phase ph[2];
} LinJob;

static void lin_job(void *arg, int tid) {
    LinJob *j = arg;
    if (is_int(j->w) && j->T > 1) {
        EACH(&j->ph[0], j->T, t) quantize_tokens(j->c, &j->L, j->act, j->x, j->w->k, t, t + 1);
        phase_wait(&j->ph[0], j->T);
    }
    const int64_t n = j->w->n, nch = (n + j->cr - 1) / j->cr;
    EACH(&j->ph[1], nch, ch) {
        int64_t a = ch * j->cr, b = a + j->cr < n ? a + j->cr : n;
        gemm_rows(j->c, j->y, n, j->w, &j->L, j->act, j->x, j->w->k, j->T, a, b, j->scr + tid * j->per);
    }
}

int drv_linear(const Ctx *c, float *y, const float *x, int64_t T, const QMat *w) {
    LinJob j;
    memset(&j, 0, sizeof j);
    j.c = c; j.y = y; j.x = x; j.T = T; j.w = w;
    int nth = pool_size(c->pool);
    j.cr = chunk_rows(w->n, nth, T);
    if (is_int(w)) {
        act_layout(&j.L, w->k, w->group, w->fmt);
        j.L.extras = T < PANEL_MIN_T || c->one_token;
        j.L.one_token = c->one_token;
        j.per = (kernels_scratch_bytes(w->kp) + 63) / 64 * 64;
        j.act = scratch_alloc(c, (size_t)(T * j.L.stride) + j.per * nth);
        if (!j.act) return -1;
        j.scr = j.act + T * j.L.stride;
        if (T == 1) quantize_tokens(c, &j.L, j.act, x, w->k, 0, 1);
    }
    pool_run(c->pool, lin_job, &j, wbytes(w) * (double)T, job_kind(0, T));
    scratch_free(c, j.act);
    return 0;
}

/* ------------------------------------------------------------------ SwiGLU */

typedef struct {
    const Ctx *c;
    float *y, *g, *u;
    const float *x;
    int64_t T;
    const QMat *w1, *w3, *w2;
    ActLayout L1, L2;
    uint8_t *xact, *hact, *scr;
    size_t per;
    int64_t cr1, cr2;
    Phase ph[4];
} FfnJob;

static void ffn_job(void *arg, int tid) {
    FfnJob *j = arg;
    const int64_t I = j->w1->n, D = j->w2->n, T = j->T;
    uint8_t *scr = j->scr + tid * j->per;
    if (is_int(j->w1) && T > 1) {
        EACH(&j->ph[0], T, t) quantize_tokens(j->c, &j->L1, j->xact, j->x, D, t, t + 1);
        phase_wait(&j->ph[0], T);
    }
    const int64_t n1 = (I + j->cr1 - 1) / j->cr1;
    EACH(&j->ph[1], n1, ch) {
        int64_t a = ch * j->cr1, b = a + j->cr1 < I ? a + j->cr1 : I;
        gemm_rows(j->c, j->g, I, j->w1, &j->L1, j->xact, j->x, D, T, a, b, scr);
        gemm_rows(j->c, j->u, I, j->w3, &j->L1, j->xact, j->x, D, T, a, b, scr);
        for (int64_t t = 0; t < T; t++) j->c->k->silu_mul(j->g + t * I + a, j->u + t * I + a, b - a);
    }
    phase_wait(&j->ph[1], n1);
    if (is_int(j->w2)) {
        EACH(&j->ph[2], T, t) quantize_tokens(j->c, &j->L2, j->hact, j->g, I, t, t + 1);
        phase_wait(&j->ph[2], T);
    }
    const int64_t n2 = (D + j->cr2 - 1) / j->cr2;
    EACH(&j->ph[3], n2, ch) {
        int64_t a = ch * j->cr2, b = a + j->cr2 < D ? a + j->cr2 : D;
        gemm_rows(j->c, j->y, D, j->w2, &j->L2, j->hact, j->g, I, T, a, b, scr);
    }
}

int drv_swiglu(const Ctx *c, float *y, const float *x, int64_t T, const QMat *w1, const QMat *w3, const QMat *w2) {
    FfnJob j;
    memset(&j, 0, sizeof j);
    j.c = c; j.y = y; j.x = x; j.T = T; j.w1 = w1; j.w3 = w3; j.w2 = w2;
    const int64_t I = w1->n, D = w2->n;
    int nth = pool_size(c->pool);
    j.cr1 = chunk_rows(I, nth, T);
    j.cr2 = chunk_rows(D, nth, T);
    size_t need = (size_t)(2 * T * I) * 4;
    if (is_int(w1)) { act_layout(&j.L1, D, w1->group, w1->fmt); need += (size_t)(T * j.L1.stride); }
    if (is_int(w2)) { act_layout(&j.L2, I, w2->group, w2->fmt); need += (size_t)(T * j.L2.stride); }
    j.L1.extras = j.L2.extras = T < PANEL_MIN_T || c->one_token;
    j.L1.one_token = j.L2.one_token = c->one_token;
    size_t s1 = is_int(w1) ? kernels_scratch_bytes(w1->kp) : 0, s2 = is_int(w2) ? kernels_scratch_bytes(w2->kp) : 0;
    j.per = ((s1 > s2 ? s1 : s2) + 63) / 64 * 64;
    need += j.per * nth + 256;
    uint8_t *mem = scratch_alloc(c, need), *p = mem;
    if (!mem) return -1;
    j.g = (float *)p; p += (T * I * 4 + 63) / 64 * 64;
    j.u = (float *)p; p += (T * I * 4 + 63) / 64 * 64;
    if (is_int(w1)) { j.xact = p; p += T * j.L1.stride; }
    if (is_int(w2)) { j.hact = p; p += T * j.L2.stride; }
    j.scr = p;
    if (is_int(w1) && T == 1) quantize_tokens(c, &j.L1, j.xact, x, D, 0, 1);
    pool_run(c->pool, ffn_job, &j, (wbytes(w1) + wbytes(w3) + wbytes(w2)) * (double)T, job_kind(1, T));
    scratch_free(c, mem);
    return 0;
}

/* ------------------------------------------------------------------ MoE */

typedef struct {
    const Ctx *c;
    float *y;
    const float *x;
    int64_t T, A, P, nact;
    const float *wts;
    const QStack *w1, *w3, *w2;
    int32_t *order;     /* (P) token of each (expert-sorted) pair */
    float *pw;          /* (P) weight of each pair */
    int32_t *experts;   /* (nact) active expert ids, ascending */
    int64_t *start;     /* (nact + 1) pair offsets */
    int64_t *cnt;       /* (E) counts, then write cursors */
    ActLayout L1, L2;
    uint8_t *xact, *gact, *hact, *scr;
    float *gx, *g, *u, *yt;
    size_t per;
    int64_t cr1, cr2;
    Phase ph[5];
} MoeJob;

static QMat expert(const QStack *s, int64_t e) {
    QMat m = s->m;
    m.data += e * s->data_stride;
    if (m.scales) m.scales += e * s->scale_stride;
    return m;
}

static void moe_job(void *arg, int tid) {
    MoeJob *j = arg;
    const Ctx *c = j->c;
    const int64_t D = j->w2->m.n, I = j->w1->m.n, T = j->T, P = j->P;
    uint8_t *scr = j->scr + tid * j->per;
    /* gather each pair's activations, expert-sorted (quantized once per token) */
    if (T > 1) {
        if (is_int(&j->w1->m)) {
            EACH(&j->ph[0], T, t) quantize_tokens(c, &j->L1, j->xact, j->x, D, t, t + 1);
            phase_wait(&j->ph[0], T);
            const size_t used = (size_t)act_used_bytes(&j->L1);  /* prefill: 4.6 of 8.7 KB at K = 2048 */
            EACH(&j->ph[1], P, p) memcpy(j->gact + p * j->L1.stride, j->xact + j->order[p] * j->L1.stride, used);
        } else {
            EACH(&j->ph[1], P, p) memcpy(j->gx + p * D, j->x + j->order[p] * D, (size_t)D * 4);
        }
        phase_wait(&j->ph[1], P);
    }
    /* h = silu(w1 x) * (w3 x): chunks of (active expert, rows of I) */
    const int64_t nb1 = (I + j->cr1 - 1) / j->cr1, n2 = j->nact * nb1;
    EACH(&j->ph[2], n2, ch) {
        const int64_t i = ch / nb1, a = (ch % nb1) * j->cr1, b = a + j->cr1 < I ? a + j->cr1 : I;
        const int64_t p0 = j->start[i], n = j->start[i + 1] - p0;
        QMat m1 = expert(j->w1, j->experts[i]), m3 = expert(j->w3, j->experts[i]);
        const int64_t src = T > 1 ? p0 : 0;  /* one token: every pair reads it */
        const uint8_t *xa = j->gact + src * j->L1.stride;
        const float *xf = j->gx + src * D;
        gemm_rows(c, j->g + p0 * I, I, &m1, &j->L1, xa, xf, D, n, a, b, scr);
        gemm_rows(c, j->u + p0 * I, I, &m3, &j->L1, xa, xf, D, n, a, b, scr);
        for (int64_t p = p0; p < p0 + n; p++) c->k->silu_mul(j->g + p * I + a, j->u + p * I + a, b - a);
    }
    phase_wait(&j->ph[2], n2);
    if (is_int(&j->w2->m)) {
        EACH(&j->ph[3], P, p) quantize_tokens(c, &j->L2, j->hact, j->g, I, p, p + 1);
        phase_wait(&j->ph[3], P);
    }
    /* output rows: each chunk adds every expert's weighted share, in ascending expert order */
    const int64_t n4 = (D + j->cr2 - 1) / j->cr2;
    EACH(&j->ph[4], n4, ch) {
        const int64_t a = ch * j->cr2, b = a + j->cr2 < D ? a + j->cr2 : D;
        for (int64_t i = 0; i < j->nact; i++) {
            const int64_t p0 = j->start[i], n = j->start[i + 1] - p0;
            QMat m2 = expert(j->w2, j->experts[i]);
            gemm_rows(c, j->yt + p0 * D, D, &m2, &j->L2, j->hact + p0 * j->L2.stride, j->g + p0 * I, I, n, a, b, scr);
            for (int64_t p = p0; p < p0 + n; p++) {
                float *yr = j->y + (int64_t)j->order[p] * D;
                const float *tr = j->yt + p * D, wp = j->pw[p];
                for (int64_t r = a; r < b; r++) yr[r] += tr[r] * wp;
            }
        }
    }
}

int drv_moe(const Ctx *c, float *y, const float *x, int64_t T, const int32_t *idx, const float *wts, int64_t A,
            const QStack *w1, const QStack *w3, const QStack *w2) {
    MoeJob j;
    memset(&j, 0, sizeof j);
    const int64_t E = w1->e, D = w2->m.n, I = w1->m.n, P = T * A;
    const int nth = pool_size(c->pool);
    j.c = c; j.y = y; j.x = x; j.T = T; j.A = A; j.P = P; j.wts = wts; j.w1 = w1; j.w3 = w3; j.w2 = w2;
    j.cr1 = chunk_rows(I, nth, T);
    j.cr2 = chunk_rows(D, nth, T);
    if (is_int(&w1->m)) act_layout(&j.L1, D, w1->m.group, w1->m.fmt);
    if (is_int(&w2->m)) act_layout(&j.L2, I, w2->m.group, w2->m.fmt);
    size_t s1 = is_int(&w1->m) ? kernels_scratch_bytes(w1->m.kp) : 0, s2 = is_int(&w2->m) ? kernels_scratch_bytes(w2->m.kp) : 0;
    j.per = ((s1 > s2 ? s1 : s2) + 63) / 64 * 64;
#define R64(n) (((size_t)(n) + 63) / 64 * 64)
    const int gather_f32 = T > 1 && !is_int(&w1->m);  /* float experts read gathered f32 rows */
    /* with int8/int4 w2, h lives on in hact once quantized: the down outputs reuse g and u */
    const int reuse = is_int(&w2->m) && 2 * I >= D && R64(P * I * 4) == (size_t)(P * I * 4);
    size_t need = R64(P * 4) * 2 + R64(E * 4) + R64((E + 1) * 8) * 2 + R64(T * j.L1.stride) * 2 + R64(P * j.L1.stride)
                + R64(P * j.L2.stride) + R64(P * D * 4) * (size_t)(gather_f32 + !reuse) + R64(P * I * 4) * 2
                + j.per * nth + 256;
    uint8_t *mem = scratch_alloc(c, need), *p = mem;
    if (!mem) return -1;
    j.order = (int32_t *)p; p += R64(P * 4);
    j.pw = (float *)p; p += R64(P * 4);
    j.experts = (int32_t *)p; p += R64(E * 4);
    j.start = (int64_t *)p; p += R64((E + 1) * 8);
    j.cnt = (int64_t *)p; p += R64((E + 1) * 8);
    j.xact = p; p += R64(T * j.L1.stride);
    j.gact = T > 1 ? p : j.xact; p += R64(P * j.L1.stride);
    j.hact = p; p += R64(P * j.L2.stride);
    j.gx = gather_f32 ? (float *)p : (float *)x;
    if (gather_f32) p += R64(P * D * 4);
    j.g = (float *)p; p += R64(P * I * 4);
    j.u = (float *)p; p += R64(P * I * 4);
    j.yt = reuse ? j.g : (float *)p;
    if (!reuse) p += R64(P * D * 4);
    j.scr = p;
#undef R64
    /* counting sort of the (token, slot) pairs by expert: ascending experts, tokens in order */
    int64_t *cnt = j.cnt, nact = 0, off = 0, fewest = P;
    memset(cnt, 0, (size_t)E * 8);
    for (int64_t q = 0; q < P; q++) cnt[idx[q]]++;
    for (int64_t e = 0; e < E; e++) {
        int64_t n = cnt[e];
        cnt[e] = off;  /* now the write cursor of expert e */
        if (n) { j.experts[nact] = (int32_t)e; j.start[nact] = off; nact++; }
        if (n && n < fewest) fewest = n;
        off += n;
    }
    j.L1.extras = j.L2.extras = fewest < PANEL_MIN_T || c->one_token;  /* an expert with few pairs runs the decode kernels */
    j.L1.one_token = j.L2.one_token = c->one_token;
    j.start[nact] = P;
    j.nact = nact;
    for (int64_t q = 0; q < P; q++) {
        int64_t at = cnt[idx[q]]++;
        j.order[at] = (int32_t)(q / A);
        j.pw[at] = wts[q];
    }
    memset(y, 0, (size_t)(T * D) * 4);
    if (T == 1 && is_int(&w1->m)) quantize_tokens(c, &j.L1, j.xact, x, D, 0, 1);
    pool_run(c->pool, moe_job, &j, (wbytes(&w1->m) + wbytes(&w3->m) + wbytes(&w2->m)) * (double)P, job_kind(2, T));
    scratch_free(c, mem);
    return 0;
}

/* ------------------------------------------------------------------ attention */

#define QB 16  /* queries per unit of work in prefill */

typedef struct {
    const Ctx *c;
    float *out;
    const float *q;
    int64_t T, H, Hkv, hd, cap, start;
    const uint8_t *kt, *v;
    int kv_f16;
    float scale;
    float *scr;
    size_t per;  /* floats per thread */
    Phase ph;
} AttnJob;

static void attn_job(void *arg, int tid) {
    AttnJob *j = arg;
    const int64_t rep = j->H / j->Hkv, nqb = (j->T + QB - 1) / QB, hd = j->hd, esz = j->kv_f16 ? 2 : 4;
    float *Q = j->scr + tid * j->per, *O = Q + QB * rep * hd, *S = O + QB * rep * hd;
    int64_t *lim = (int64_t *)(S + attn_scratch_floats(QB * rep, hd));
    EACH(&j->ph, j->Hkv * nqb, u) {
        const int64_t g = u / nqb, t0 = (u % nqb) * QB, t1 = t0 + QB < j->T ? t0 + QB : j->T;
        int64_t R = 0;
        for (int64_t t = t0; t < t1; t++)
            for (int64_t h = 0; h < rep; h++, R++) {
                memcpy(Q + R * hd, j->q + (t * j->H + g * rep + h) * hd, (size_t)hd * 4);
                lim[R] = j->start + t + 1;
            }
        j->c->k->attn(O, Q, R, lim, j->kt + g * j->cap * hd * esz, j->v + g * j->cap * hd * esz, hd, j->scale,
                      j->kv_f16, S);
        R = 0;
        for (int64_t t = t0; t < t1; t++)
            for (int64_t h = 0; h < rep; h++, R++)
                memcpy(j->out + (t * j->H + g * rep + h) * hd, O + R * hd, (size_t)hd * 4);
    }
}

int drv_attention(const Ctx *c, float *out, const float *q, int64_t T, int64_t H, int64_t Hkv, int64_t hd,
                  const void *kt, const void *v, int64_t cap, int kv_f16, int64_t start, float scale) {
    const int64_t rep = H / Hkv;
    const int nth = pool_size(c->pool);
    AttnJob j;
    memset(&j, 0, sizeof j);
    j.c = c; j.out = out; j.q = q; j.T = T; j.H = H; j.Hkv = Hkv; j.hd = hd; j.cap = cap; j.start = start;
    j.kt = kt; j.v = v; j.kv_f16 = kv_f16; j.scale = scale;
    j.per = (size_t)(2 * QB * rep * hd) + attn_scratch_floats(QB * rep, hd) + 2 * QB * rep + 16;
    j.per = (j.per + 15) / 16 * 16;
    j.scr = scratch_alloc(c, j.per * 4 * (size_t)nth);
    if (!j.scr) return -1;
    pool_run(c->pool, attn_job, &j, 4.0 * (double)(Hkv * (start + T) * hd) * (kv_f16 ? 2 : 4) * (double)T, job_kind(3, T));
    scratch_free(c, j.scr);
    return 0;
}

/* ------------------------------------------------------------------ bandwidth probe */

typedef struct { const Ctx *c; const uint8_t *buf; int64_t n, stride; atomic_ullong sum; Phase ph; } ReadJob;

#define READ_CHUNK (1 << 20)

static void read_job(void *arg, int tid) {
    ReadJob *j = arg;
    (void)tid;
    const int64_t nch = j->n / READ_CHUNK;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    EACH(&j->ph, nch, ch) {
        const uint64_t *p = (const uint64_t *)(j->buf + ch * READ_CHUNK);
        for (int64_t i = 0; i < READ_CHUNK / 8; i += 8 * j->stride) {
            s0 += p[i] ^ p[i + 4];
            s1 += p[i + 1] ^ p[i + 5];
            s2 += p[i + 2] ^ p[i + 6];
            s3 += p[i + 3] ^ p[i + 7];
        }
    }
    atomic_fetch_add(&j->sum, s0 + s1 + s2 + s3);
}

uint64_t drv_read(const Ctx *c, const uint8_t *buf, int64_t nbytes, int64_t stride) {
    ReadJob j;
    memset(&j, 0, sizeof j);
    j.c = c; j.buf = buf; j.n = nbytes; j.stride = stride < 1 ? 1 : stride;
    pool_run(c->pool, read_job, &j, (double)nbytes, -1);
    return atomic_load(&j.sum);
}
