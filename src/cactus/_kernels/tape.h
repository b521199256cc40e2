/* The tape: a model's forward recorded once as a flat op list (ops.record, in Python), and the
 * interpreter that runs it for T tokens per call. Each token carries its own sequence and position
 * (data, not structure); each sequence has its own caches. Plain C: a host other than Python builds
 * a Tape, checks it once (tape_check) and runs it (tape_run). No CPython here.
 */
#ifndef CACTUS_TAPE_H
#define CACTUS_TAPE_H

#include "driver.h"

/* Op codes; TAPE_OP_NAMES holds the names ops.TAPE_OPS uses. Per op, what it reads (W(s) = floats
 * per token of slot s; positional ops run token by token, the others on all T rows at once):
 *   embed      out (D) = row ids[t] of w[0] (vocab, D)
 *   rmsnorm    out = in[0] normalised in rows of i[0], weight v[0] (i[0]), eps f[0]
 *   linear     out (N) = w[0] (N, K) @ in[0] (K)
 *   bias       out = in[0] + v[0]
 *   add        out = in[0] + in[1]
 *   rope       out = in[0] rotated in heads of i[0] at the token's position, theta f[0]
 *   kv_store   k in[0], v in[1] (i[0] KV heads x i[1]) into cache `layer` at the token's position
 *   attention  out (H hd) = attention of q in[0] over cache `layer` up to the token's position;
 *              i = (H, Hkv, hd), scale f[0]
 *   conv_gate  out (D) = C * conv(B * x), in[0] (3D) = B, C, x; kernel v[0] (D, L), bias v[1] or
 *              NULL; conv state `layer` (L-1, D)
 *   swiglu     out (D) = w[2] (silu(w[0] in[0]) * w[1] in[0]); w[0], w[1] (I, D), w[2] (D, I)
 *   moe        out (D) = the i[0] experts the router w[0] (E, D) picks (expert bias v[0] or NULL,
 *              renormalised if i[1], times f[0]) of w[1], w[2] (E, I, D), w[3] (E, D, I) */
enum {
    TAPE_EMBED, TAPE_RMSNORM, TAPE_LINEAR, TAPE_BIAS, TAPE_ADD, TAPE_ROPE, TAPE_KV_STORE, TAPE_ATTENTION,
    TAPE_CONV_GATE, TAPE_SWIGLU, TAPE_MOE, TAPE_N_OPS
};
extern const char *const TAPE_OP_NAMES[TAPE_N_OPS];

#define TAPE_MAX_TOPK 64

typedef struct {
    int32_t code;
    int32_t out, in[2];   /* value slots; -1: none */
    int32_t layer;        /* the cache it reads or writes; -1: none */
    const QStack *w[4];   /* weights (a plain matrix is a stack of one) */
    const float *v[2];    /* vectors; NULL for an absent bias */
    int64_t vn[2];        /* their element counts */
    int64_t i[3];
    float f[1];
} TapeOp;

/* A layer's cache, as tape_check finds it used: a KV cache of Hkv heads x hd, or a conv state (L-1, D). */
typedef struct {
    int kind;  /* 0 unused, 1 KV, 2 conv */
    int64_t a, b;  /* KV: Hkv, hd; conv: L - 1, D */
} TapeLayer;

typedef struct {
    const TapeOp *ops;
    int64_t n_ops, n_slots;
    const int64_t *width;  /* (n_slots) floats per token */
    int32_t out;           /* the logits' slot: written to the caller's buffer, shared with no other value */
    /* filled by tape_check: */
    int64_t vocab;         /* rows of the embedding */
    int64_t n_layers;      /* caches per sequence */
    TapeLayer *layers;     /* (n_layers), the caller's buffer of max layer + 1 entries */
    int64_t scratch;       /* floats per token beyond the slots (the router's logits) */
} Tape;

/* One layer's cache of one sequence: the conv state, or kt (Hkv, cap/16, hd, 16) and v (Hkv, cap, hd).
 * hist, NULL or (T, D): row t gets the conv input B*x of the call's token t when it belongs to this
 * sequence, so a caller can put the state back to its value after any of its tokens (speculative
 * verification keeps the accepted tokens' rows: the state is the last L-1 inputs). */
typedef struct {
    float *state, *hist;
    void *kt, *v;
    int64_t cap;
    int f16;
} TapeCache;

/* Checks every op against the slots' widths and its weights, and fills vocab, n_layers, layers
 * (which must hold the largest layer index + 1 entries) and scratch. 0, or -1 with err set. */
int tape_check(Tape *t, char *err, size_t errlen);

/* logits (T, W(out)) of T tokens: ids[t] of sequence seq[t] at position pos[t]; caches[s * n_layers + l]
 * is layer l of sequence s, updated (KV: each token's position written; conv: its state moved on,
 * token by token in order). Every token's logits are bit-identical to running it alone (Ctx.one_token):
 * batching and verification change no answer. Returns 0, or -1 when scratch memory could not be had. */
int tape_run(const Ctx *c, const Tape *t, int64_t T, const int64_t *ids, const int64_t *seq, const int64_t *pos,
             const TapeCache *caches, float *logits);

#endif
