/* One decoded token through the whole model in C: the same ops, in the same order, as
 * models/lfm2.py runs them for one token, so the logits are bit-identical to that path. It exists
 * because decode issues ~10 kernel calls per layer, and at one token each call's Python work
 * (argument checks, numpy allocations, the interpreter) cost ~6% of a decoded token. Prefill stays
 * in Python, where the calls are few next to their work. Plain C; the binding builds the plan.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "step.h"

/* x (n) += y (n) */
static void add_into(float *x, const float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = x[i] + y[i];
}

/* out (D) = out_proj(C * conv(B * x)), with bcx (3D) = in_proj(h) */
static int conv_block(const Ctx *c, const StepLayer *l, float *state, float *out, const float *h, float *bcx,
                      float *y, int64_t D) {
    if (drv_linear(c, bcx, h, 1, l->in_proj)) return -1;
    if (l->in_b) add_into(bcx, l->in_b, 3 * D);
    k_conv_gate(y, bcx, state, l->conv_w, l->conv_b, 1, D, l->L);
    if (drv_linear(c, out, y, 1, l->out_proj)) return -1;
    if (l->out_b) add_into(out, l->out_b, D);
    return 0;
}

/* out (D) = out_proj(attention(rope(q_norm(q h)), cache + rope(k_norm(k h)), v h)) at position pos */
static int attn_block(const Ctx *c, const StepLayer *l, const StepCache *kv, int64_t pos, float *out, const float *h,
                      float *q, float *k, float *v, float *o, float eps) {
    const int64_t H = l->H, Hkv = l->Hkv, hd = l->hd;
    if (drv_linear(c, q, h, 1, l->q) || drv_linear(c, k, h, 1, l->k) || drv_linear(c, v, h, 1, l->v)) return -1;
    k_rmsnorm(q, q, l->q_norm, eps, H, hd);
    k_rmsnorm(k, k, l->k_norm, eps, Hkv, hd);
    k_rope(k, 1, Hkv, hd, pos, l->theta);
    k_kv_store(kv->kt, kv->v, k, v, 1, Hkv, hd, pos, kv->cap, kv->f16);
    k_rope(q, 1, H, hd, pos, l->theta);
    if (drv_attention(c, o, q, 1, H, Hkv, hd, kv->kt, kv->v, kv->cap, kv->f16, pos, l->attn_scale)) return -1;
    return drv_linear(c, out, o, 1, l->o);
}

/* out (D) = the chosen experts of h, weighted (router: gate, sigmoid, top-k) */
static int moe_block(const Ctx *c, const StepLayer *l, float *out, const float *h, float *logits) {
    int32_t idx[STEP_MAX_TOPK];
    float wts[STEP_MAX_TOPK];
    if (drv_linear(c, logits, h, 1, l->gate)) return -1;
    k_route(idx, wts, logits, l->expert_bias, 1, l->gate->n, l->top_k, l->norm_topk, l->route_scale);
    return drv_moe(c, out, h, 1, idx, wts, l->top_k, l->e1, l->e3, l->e2);
}

int step_decode(const Ctx *c, const StepModel *m, const StepCache *caches, int64_t token, int64_t pos, float *logits) {
    const int64_t D = m->D, S = m->scratch;
    float *mem = malloc((size_t)(3 * D + 5 * S) * sizeof(float));
    if (!mem) return -1;
    float *x = mem, *h = x + D, *o = h + D, *t0 = o + D, *t1 = t0 + S, *t2 = t1 + S, *t3 = t2 + S, *t4 = t3 + S;
    int rc = 0;
    k_embed(x, &token, 1, m->embed);
    for (int64_t i = 0; i < m->n && !rc; i++) {
        const StepLayer *l = &m->layers[i];
        /* h = x + op(operator_norm(x)) */
        k_rmsnorm(h, x, l->op_norm, m->eps, 1, D);
        rc = l->attention ? attn_block(c, l, &caches[i], pos, o, h, t0, t1, t2, t3, m->eps)
                          : conv_block(c, l, caches[i].state, o, h, t0, t1, D);
        if (rc) break;
        add_into(x, o, D);
        /* out = h + ffn(ffn_norm(h)) */
        k_rmsnorm(h, x, l->ffn_norm, m->eps, 1, D);
        rc = l->moe ? moe_block(c, l, o, h, t4) : drv_swiglu(c, o, h, 1, l->w1, l->w3, l->w2);
        if (!rc) add_into(x, o, D);
    }
    if (!rc) {
        k_rmsnorm(h, x, m->norm, m->eps, 1, D);
        rc = drv_linear(c, logits, h, 1, m->head);
    }
    free(mem);
    return rc;
}
