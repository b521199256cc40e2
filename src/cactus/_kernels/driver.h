/* The ops the binding exposes: table kernels composed with the thread pool (driver.c), and the
 * small portable kernels (small.c). Plain C; no CPython. Shapes are in each function's comment.
 */
#ifndef CACTUS_DRIVER_H
#define CACTUS_DRIVER_H

#include "kernels.h"
#include "pool.h"

/* Scratch kept between calls so large prefill buffers are not page-faulted in every time; one
 * call at a time uses it (others fall back to malloc). */
typedef struct {
    uint8_t *p;
    size_t cap;
    atomic_flag busy;
} Arena;

typedef struct {
    const Kernels *k;
    Pool *pool;
    Arena *arena;  /* may be NULL */
    int one_token; /* 1: every token of a call gets exactly its one-token result (ActLayout.one_token):
                    * the tape's steps, so a token decoded in a batch or verified among drafts has the
                    * logits it has decoded alone */
} Ctx;

/* A stack of E weight matrices (E, N, K): expert e is `m` moved by e strides. */
typedef struct {
    QMat m;
    int64_t e, data_stride, scale_stride;  /* bytes; f16 elements */
} QStack;

/* All return 0, or -1 when scratch memory could not be had. */
/* y (T, N) = x (T, K) @ W^T */
int drv_linear(const Ctx *c, float *y, const float *x, int64_t T, const QMat *w);
/* y (T, D) = w2 (silu(w1 x) * (w3 x)); w1, w3 (I, D), w2 (D, I) */
int drv_swiglu(const Ctx *c, float *y, const float *x, int64_t T, const QMat *w1, const QMat *w3, const QMat *w2);
/* y (T, D) = sum_a wts[t, a] * expert idx[t, a] (x[t]); only the chosen experts run, tokens grouped. */
int drv_moe(const Ctx *c, float *y, const float *x, int64_t T, const int32_t *idx, const float *wts, int64_t A,
            const QStack *w1, const QStack *w3, const QStack *w2);
/* out (T, H, hd) = causal attention of q (T, H, hd) at positions start.. over the cache:
 * kt (Hkv, cap/16, hd, 16), v (Hkv, cap, hd), f16 or f32. */
int drv_attention(const Ctx *c, float *out, const float *q, int64_t T, int64_t H, int64_t Hkv, int64_t hd,
                  const void *kt, const void *v, int64_t cap, int kv_f16, int64_t start, float scale);
/* Read nbytes of buf with every thread (memory bandwidth probe); returns a checksum. */
uint64_t drv_read(const Ctx *c, const uint8_t *buf, int64_t nbytes, int64_t stride);

/* small.c: single-threaded portable kernels */
void k_rmsnorm(float *out, const float *x, const float *w, float eps, int64_t rows, int64_t d);
void k_rope(float *x, int64_t T, int64_t H, int64_t hd, int64_t start, float theta);
void k_silu_mul(float *out, const float *a, const float *b, int64_t n);
void k_conv_gate(float *y, const float *bcx, float *state, const float *w, const float *bias,
                 int64_t T, int64_t D, int64_t L);
void k_route(int32_t *idx, float *wts, const float *logits, const float *bias, int64_t T, int64_t E,
             int64_t k, int norm, float scale);
void k_kv_store(void *kt, void *v, const float *k, const float *vv, int64_t T, int64_t Hkv, int64_t hd,
                int64_t pos, int64_t cap, int kv_f16);
void k_embed(float *out, const int64_t *ids, int64_t T, const QMat *w);

#endif
