/* A small thread pool built for shared, noisy machines: the caller is thread 0, workers spin
 * briefly between jobs then sleep, and a worker that does not wake in time simply does not take
 * part. Jobs split their work into chunks that threads claim (Phase), so nobody waits for a
 * thread that has not started; a job only waits for chunks already claimed.
 */
#ifndef CACTUS_POOL_H
#define CACTUS_POOL_H

#include <stdatomic.h>
#include <stdint.h>

typedef void (*pool_fn)(void *arg, int tid);
typedef struct Pool Pool;

/* NULL on failure. Worker i is pinned to cpus[i % ncpus] (Linux; ncpus = 0: the i-th CPU allowed). */
Pool *pool_new(int nthreads, const int *cpus, int ncpus);
void pool_free(Pool *p);
int pool_size(const Pool *p);              /* upper bound on tid + 1 */
#define POOL_KINDS 16

/* Run fn(arg, tid) on the caller (tid 0) and on every worker that joins before the caller is
 * done; returns when all that joined have returned. If another caller holds the pool, fn runs on
 * the calling thread alone.
 * Adaptive: `cost` is the job's size (bytes of weights it reads, times tokens) and `kind` its
 * class (< POOL_KINDS; the driver uses 2 * op for decode; -1: always every thread, as the driver
 * runs prefill). For each kind the pool keeps the measured time per byte with all threads and
 * with the caller alone, re-measures the other way for a few jobs every so often, and runs each
 * job the faster way. On a shared machine whose other cores
 * or memory bus are busy, more threads can be slower; this finds out instead of assuming. */
void pool_run(Pool *p, pool_fn fn, void *arg, double cost, int kind);

/* Jobs run by several threads and by the caller alone since the pool started. */
void pool_stats(const Pool *p, long long *team, long long *solo);

/* One phase of a job: n chunks claimed in order; phase_wait returns when all are done. */
typedef struct { atomic_llong next, done; } Phase;
static inline int64_t phase_claim(Phase *ph) { return (int64_t)atomic_fetch_add_explicit(&ph->next, 1, memory_order_relaxed); }
static inline void phase_done(Phase *ph) { atomic_fetch_add_explicit(&ph->done, 1, memory_order_release); }
void phase_wait(Phase *ph, int64_t n);

#endif
