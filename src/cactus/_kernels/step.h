/* The plan of step.c's one-token decode: pointers into the weights (mmap) and the layer shapes,
 * built and checked by the binding, and the per-call cache pointers. Plain C; no CPython.
 */
#ifndef CACTUS_STEP_H
#define CACTUS_STEP_H

#include "driver.h"

#define STEP_MAX_TOPK 64

typedef struct {
    int attention, moe;
    const float *op_norm, *ffn_norm;  /* (D) */
    /* short conv: in_proj (3D, D), out_proj (D, D), conv_w (D, L), biases or NULL */
    const QMat *in_proj, *out_proj;
    const float *conv_w, *conv_b, *in_b, *out_b;  /* (D, L), (D), (3D), (D) */
    int64_t L;
    /* attention: q (H hd, D), k and v (Hkv hd, D), o (D, H hd); q_norm, k_norm (hd) */
    const QMat *q, *k, *v, *o;
    const float *q_norm, *k_norm;
    int64_t H, Hkv, hd;
    float theta, attn_scale;
    /* SwiGLU: w1, w3 (I, D), w2 (D, I) */
    const QMat *w1, *w3, *w2;
    /* MoE: gate (E, D), expert_bias (E) or NULL, experts e1, e3 (E, I, D), e2 (E, D, I) */
    const QMat *gate;
    const float *expert_bias;
    const QStack *e1, *e3, *e2;
    int64_t top_k;
    int norm_topk;
    float route_scale;
} StepLayer;

typedef struct {
    int64_t n, D, scratch;  /* layers, hidden, floats per scratch buffer: max(3D, H hd, E) */
    float eps;
    const StepLayer *layers;
    const QMat *embed, *head;  /* (vocab, D) */
    const float *norm;         /* (D) final RMSNorm */
} StepModel;

/* One layer's cache: the conv state (L-1, D), or kt (Hkv, cap/16, hd, 16) and v (Hkv, cap, hd) */
typedef struct {
    float *state;
    void *kt, *v;
    int64_t cap;
    int f16;
} StepCache;

/* logits (vocab) of `token` at position pos; caches[i] updated (attention: position pos written).
 * Returns 0, or -1 when scratch memory could not be had. */
int step_decode(const Ctx *c, const StepModel *m, const StepCache *caches, int64_t token, int64_t pos, float *logits);

#endif
