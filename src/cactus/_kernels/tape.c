/* The tape interpreter (tape.h): a recorded forward run for T tokens, each of its own sequence at
 * its own position, op by op with the driver's kernels. For one token it makes the calls the
 * forward makes op by op from Python, in the same order, so the logits are bit-identical; it exists
 * because a decoded token issues ~10 kernel calls per layer, and from Python each call's argument
 * checks and allocations cost ~6% of the token. Plain C.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tape.h"

const char *const TAPE_OP_NAMES[TAPE_N_OPS] = {"embed", "rmsnorm", "linear", "bias", "add", "rope",
                                               "kv_store", "attention", "conv_gate", "swiglu", "moe"};

/* ------------------------------------------------------------------ checks */

static int mat(const QStack *s, int64_t e, int64_t n, int64_t k) {
    return s && s->e == e && (n < 0 || s->m.n == n) && s->m.k == k;
}

/* layer l used as kind (1 KV, 2 conv) with sizes a, b: the same everywhere it is used */
static int use_layer(Tape *t, int64_t l, int kind, int64_t a, int64_t b) {
    if (l < 0 || l >= t->n_layers) return 0;
    TapeLayer *c = &t->layers[l];
    if (c->kind == 0) { c->kind = kind; c->a = a; c->b = b; return 1; }
    return c->kind == kind && c->a == a && c->b == b;
}

int tape_check(Tape *t, char *err, size_t errlen) {
    char *written = calloc((size_t)(t->n_slots ? t->n_slots : 1), 1);  /* slots written by an earlier op */
    if (!written) { snprintf(err, errlen, "out of memory"); return -1; }
    for (int64_t l = 0; l < t->n_layers; l++) t->layers[l].kind = 0;
    t->vocab = -1;
    t->scratch = 0;
    int rc = -1;
    int64_t j = 0;
    const TapeOp *op = t->ops;
#define FAIL(...) do { int n_ = snprintf(err, errlen, "tape op %lld (%s): ", (long long)j, TAPE_OP_NAMES[op->code]); \
                       if (n_ >= 0 && (size_t)n_ < errlen) snprintf(err + n_, errlen - (size_t)n_, __VA_ARGS__); \
                       goto done; } while (0)
    for (j = 0; j < t->n_ops; j++) {
        op = &t->ops[j];
        if (op->code < 0 || op->code >= TAPE_N_OPS) { snprintf(err, errlen, "tape op %lld: unknown code", (long long)j); goto done; }
        const int nin = op->code == TAPE_EMBED ? 0 : op->code == TAPE_ADD || op->code == TAPE_KV_STORE ? 2 : 1;
        for (int k = 0; k < 2; k++) {
            if (k >= nin) { if (op->in[k] != -1) FAIL("takes %d inputs", nin); continue; }
            if (op->in[k] < 0 || op->in[k] >= t->n_slots || !written[op->in[k]]) FAIL("input %d is not a value written before", k);
        }
        const int has_out = op->code != TAPE_KV_STORE;
        if (has_out ? op->out < 0 || op->out >= t->n_slots : op->out != -1) FAIL("bad output slot");
        const int64_t wo = has_out ? t->width[op->out] : 0, wi = nin ? t->width[op->in[0]] : 0;
        const int positional = op->code == TAPE_KV_STORE || op->code == TAPE_ATTENTION || op->code == TAPE_CONV_GATE;
        if (positional ? op->layer < 0 : op->layer != -1) FAIL("bad cache layer %d", op->layer);
        const int64_t *i = op->i;
        switch (op->code) {
        case TAPE_EMBED:
            if (!mat(op->w[0], 1, -1, wo)) FAIL("embedding must be (vocab, %lld)", (long long)wo);
            t->vocab = op->w[0]->m.n;
            break;
        case TAPE_RMSNORM:
            if (i[0] < 1 || wi != wo || wi % i[0] || op->vn[0] != i[0] || !op->v[0]) FAIL("rows of %lld over %lld floats", (long long)i[0], (long long)wi);
            break;
        case TAPE_LINEAR:
            if (!mat(op->w[0], 1, wo, wi)) FAIL("weight must be (%lld, %lld)", (long long)wo, (long long)wi);
            break;
        case TAPE_BIAS:
            if (wi != wo || op->vn[0] != wo || !op->v[0]) FAIL("bias must have %lld floats", (long long)wo);
            break;
        case TAPE_ADD:
            if (wi != wo || t->width[op->in[1]] != wo) FAIL("widths differ");
            break;
        case TAPE_ROPE:
            if (i[0] < 2 || i[0] % 2 || i[0] > 1024 || wi != wo || wi % i[0]) FAIL("head dim %lld over %lld floats", (long long)i[0], (long long)wi);
            break;
        case TAPE_KV_STORE:
            if (i[0] < 1 || i[1] < 1 || wi != i[0] * i[1] || t->width[op->in[1]] != wi) FAIL("k and v must be %lld x %lld", (long long)i[0], (long long)i[1]);
            if (!use_layer(t, op->layer, 1, i[0], i[1])) FAIL("layer %d is not one KV cache of %lld x %lld", op->layer, (long long)i[0], (long long)i[1]);
            break;
        case TAPE_ATTENTION:
            if (i[0] < 1 || i[1] < 1 || i[0] % i[1] || i[2] < 1 || wi != i[0] * i[2] || wo != wi) FAIL("%lld heads over %lld KV heads of dim %lld", (long long)i[0], (long long)i[1], (long long)i[2]);
            if (!use_layer(t, op->layer, 1, i[1], i[2])) FAIL("layer %d is not one KV cache of %lld x %lld", op->layer, (long long)i[1], (long long)i[2]);
            break;
        case TAPE_CONV_GATE:
            if (wo < 1 || wi != 3 * wo || !op->v[0] || op->vn[0] % wo || op->vn[0] < wo || (op->v[1] && op->vn[1] != wo))
                FAIL("in (3D), kernel (D, L), bias (D) with D = %lld", (long long)wo);
            if (!use_layer(t, op->layer, 2, op->vn[0] / wo - 1, wo)) FAIL("layer %d is not one conv state", op->layer);
            break;
        case TAPE_SWIGLU:
        case TAPE_MOE: {
            const int moe = op->code == TAPE_MOE, a = moe;  /* w1, w3, w2 from w[a] */
            const QStack *w1 = op->w[a], *w3 = op->w[a + 1], *w2 = op->w[a + 2];
            const int64_t E = w1 ? w1->e : 0, I = w1 ? w1->m.n : 0;
            if (wi != wo || (!moe && E != 1) || !mat(w1, E, I, wo) || !mat(w3, E, I, wo) || !mat(w2, E, wo, I) ||
                w3->m.fmt != w1->m.fmt || w3->m.group != w1->m.group)
                FAIL("w1 (E, I, D), w3 (E, I, D), w2 (E, D, I) do not match D = %lld", (long long)wo);
            if (moe) {
                if (!mat(op->w[0], 1, E, wo)) FAIL("router must be (%lld, %lld)", (long long)E, (long long)wo);
                if (op->v[0] && op->vn[0] != E) FAIL("expert bias must have %lld floats", (long long)E);
                if (i[0] < 1 || i[0] > E || i[0] > TAPE_MAX_TOPK || E > 1024) FAIL("need 1 <= top_k <= E <= 1024 and top_k <= %d", TAPE_MAX_TOPK);
                if (E > t->scratch) t->scratch = E;
            }
            break;
        }
        }
        if (has_out) written[op->out] = 1;
    }
    if (t->out < 0 || t->out >= t->n_slots || !written[t->out]) { snprintf(err, errlen, "the tape's output is never written"); goto done; }
    if (t->vocab < 0) { snprintf(err, errlen, "the tape has no embedding"); goto done; }
    rc = 0;
done:
    free(written);
    return rc;
}

/* ------------------------------------------------------------------ run */

/* x (n) = a (n) + b (n) */
static void add(float *x, const float *a, const float *b, int64_t n) {
    for (int64_t k = 0; k < n; k++) x[k] = a[k] + b[k];
}

int tape_run(const Ctx *ctx, const Tape *t, int64_t T, const int64_t *ids, const int64_t *seq, const int64_t *pos,
             const TapeCache *caches, float *logits) {
    Ctx one = *ctx;
    one.one_token = 1;
    const Ctx *c = &one;
    int64_t floats = t->scratch;
    for (int64_t s = 0; s < t->n_slots; s++) floats += s == t->out ? 0 : t->width[s];
    float *mem = malloc((size_t)(T * floats) * sizeof(float) + (size_t)T * TAPE_MAX_TOPK * 8 + 64);
    float **slot = malloc((size_t)(t->n_slots ? t->n_slots : 1) * sizeof *slot);
    if (!mem || !slot) { free(mem); free(slot); return -1; }
    float *p = mem;
    for (int64_t s = 0; s < t->n_slots; s++) {
        slot[s] = s == t->out ? logits : p;
        if (s != t->out) p += T * t->width[s];
    }
    float *router = p, *wts = router + T * t->scratch;
    int32_t *idx = (int32_t *)(wts + T * TAPE_MAX_TOPK);
    int rc = 0;
    for (int64_t j = 0; j < t->n_ops && !rc; j++) {
        const TapeOp *op = &t->ops[j];
        float *y = op->out >= 0 ? slot[op->out] : NULL;
        const float *x = op->in[0] >= 0 ? slot[op->in[0]] : NULL;
        const int64_t wo = op->out >= 0 ? t->width[op->out] : 0, wi = op->in[0] >= 0 ? t->width[op->in[0]] : 0;
        const int64_t *i = op->i;
        switch (op->code) {
        case TAPE_EMBED: k_embed(y, ids, T, &op->w[0]->m); break;
        case TAPE_RMSNORM: k_rmsnorm(y, x, op->v[0], op->f[0], T * wi / i[0], i[0]); break;
        case TAPE_LINEAR: rc = drv_linear(c, y, x, T, &op->w[0]->m); break;
        case TAPE_BIAS:
            for (int64_t r = 0; r < T; r++) add(y + r * wo, x + r * wo, op->v[0], wo);
            break;
        case TAPE_ADD: add(y, x, slot[op->in[1]], T * wo); break;
        case TAPE_ROPE:
            if (y != x) memcpy(y, x, (size_t)(T * wo) * sizeof(float));
            for (int64_t r = 0; r < T; r++) k_rope(y + r * wo, 1, wo / i[0], i[0], pos[r], op->f[0]);
            break;
        case TAPE_KV_STORE:
            for (int64_t r = 0; r < T; r++) {
                const TapeCache *kv = &caches[seq[r] * t->n_layers + op->layer];
                k_kv_store(kv->kt, kv->v, x + r * wi, slot[op->in[1]] + r * wi, 1, i[0], i[1], pos[r], kv->cap, kv->f16);
            }
            break;
        case TAPE_ATTENTION:
            for (int64_t r = 0; r < T && !rc; r++) {
                const TapeCache *kv = &caches[seq[r] * t->n_layers + op->layer];
                rc = drv_attention(c, y + r * wo, x + r * wi, 1, i[0], i[1], i[2], kv->kt, kv->v, kv->cap, kv->f16, pos[r], op->f[0]);
            }
            break;
        case TAPE_CONV_GATE: {
            const int64_t L = op->vn[0] / wo;
            for (int64_t r = 0; r < T; r++) {
                const TapeCache *cc = &caches[seq[r] * t->n_layers + op->layer];
                const float *B = x + r * wi, *X = B + 2 * wo;
                if (cc->hist)
                    for (int64_t d = 0; d < wo; d++) cc->hist[r * wo + d] = B[d] * X[d];  /* as k_conv_gate's bx */
                k_conv_gate(y + r * wo, B, cc->state, op->v[0], op->v[1], 1, wo, L);
            }
            break;
        }
        case TAPE_SWIGLU: rc = drv_swiglu(c, y, x, T, &op->w[0]->m, &op->w[1]->m, &op->w[2]->m); break;
        case TAPE_MOE: {
            const QMat *gate = &op->w[0]->m;
            rc = drv_linear(c, router, x, T, gate);
            if (rc) break;
            k_route(idx, wts, router, op->v[0], T, gate->n, i[0], (int)i[1], op->f[0]);
            rc = drv_moe(c, y, x, T, idx, wts, i[0], op->w[1], op->w[2], op->w[3]);
            break;
        }
        }
    }
    free(slot);
    free(mem);
    return rc;
}
