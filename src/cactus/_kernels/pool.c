/* Thread pool for the kernels (see pool.h). Workers spin (with pause) for SPIN_NS after a job,
 * since decode issues jobs every few tens of microseconds, then sleep on a condition variable.
 * Joining is a Dekker handshake (joined++ then check closed / closed = 1 then read joined), so
 * the caller waits only for workers that actually started the job.
 */
#define _GNU_SOURCE
#include "pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <time.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ volatile("yield")
#else
#define cpu_relax() ((void)0)
#endif

#define SPIN_NS 3000000L  /* 3 ms */
#define MAX_THREADS 256

struct Pool {
    int n, ncpus;
    int cpus[MAX_THREADS];  /* where workers are pinned (pin) */
    pthread_t threads[MAX_THREADS];
    pthread_mutex_t mu, run;
    pthread_cond_t cv;
    atomic_long gen;      /* bumped once per job */
    atomic_int joined;    /* workers inside the current job */
    atomic_int closed;    /* the caller finished: no more joining */
    atomic_int next_tid;
    atomic_int sleepers;
    atomic_int stop;
    pool_fn fn;
    void *arg;
    /* adaptive threading, per job kind: ns per byte with all threads [0] and alone [1] */
    double rate[POOL_KINDS][2];
    int mode[POOL_KINDS];          /* 0: all threads, 1: caller alone */
    int until_explore[POOL_KINDS]; /* jobs before the other mode is measured again */
    int explore_left[POOL_KINDS];  /* jobs left in the current measurement of the other mode */
    long long team_jobs, solo_jobs;
};

#define MIN_COST 65536.0    /* smaller jobs neither measure nor switch */
#define EXPLORE_EVERY 1000  /* measured jobs of a kind between re-measurements of the other mode: at
                             * ~65% speed for the 12 explored jobs, 1000 costs ~0.6% where 200 cost ~3% */
#define EXPLORE_JOBS 12
#define SOLO_MARGIN 0.85    /* the caller alone must be this much faster per byte to take over: a kind mixes
                             * shapes and 12 jobs are a noisy sample. On a Zen 3 two-core VM a trial read
                             * 0.069 against 0.069 ns/byte and ran 350M's linears alone for 1000 jobs, while
                             * two threads decode it 1.45x faster than one; a busy second core costs 2x */

typedef struct { Pool *p; int tid; } Start;

static long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

/* Pin worker i to cpus[i % ncpus] (the caller, thread 0, is not pinned): the order the caller
 * gave, one CPU per fast physical core first (cpus.py); with no list, the i-th CPU this process
 * may use. So two spinning threads never share a core while other processes load the machine. */
static void pin(const Pool *p, int i) {
#if defined(__linux__)
    cpu_set_t allowed, one;
    if (sched_getaffinity(0, sizeof allowed, &allowed)) return;
    if (CPU_COUNT(&allowed) < 2) return;
    CPU_ZERO(&one);
    if (p->ncpus > 0) {
        if (p->cpus[i % p->ncpus] >= CPU_SETSIZE) return;
        CPU_SET(p->cpus[i % p->ncpus], &one);
    } else {
        for (int c = 0, k = 0; c < CPU_SETSIZE; c++)
            if (CPU_ISSET(c, &allowed) && k++ == i % CPU_COUNT(&allowed)) { CPU_SET(c, &one); break; }
    }
    if (CPU_COUNT(&one)) pthread_setaffinity_np(pthread_self(), sizeof one, &one);  /* ignored if not allowed */
#else
    (void)p; (void)i;
#endif
}

static void *worker(void *raw) {
    Pool *p = ((Start *)raw)->p;
    pin(p, ((Start *)raw)->tid);
    free(raw);
    long seen = 0;
    for (;;) {
        long t0 = now_ns();
        unsigned spins = 0;
        while (atomic_load_explicit(&p->gen, memory_order_acquire) == seen) {
            cpu_relax();
            if (++spins % 256 == 0 && now_ns() - t0 > SPIN_NS) {
                pthread_mutex_lock(&p->mu);
                atomic_fetch_add(&p->sleepers, 1);
                while (atomic_load(&p->gen) == seen) pthread_cond_wait(&p->cv, &p->mu);
                atomic_fetch_sub(&p->sleepers, 1);
                pthread_mutex_unlock(&p->mu);
            }
        }
        seen = atomic_load_explicit(&p->gen, memory_order_acquire);
        if (atomic_load(&p->stop)) return NULL;
        atomic_fetch_add(&p->joined, 1);
        if (!atomic_load(&p->closed)) {
            int tid = atomic_fetch_add(&p->next_tid, 1);
            if (tid < p->n) p->fn(p->arg, tid);
        }
        atomic_fetch_sub_explicit(&p->joined, 1, memory_order_release);
    }
}

Pool *pool_new(int n, const int *cpus, int ncpus) {
    if (n < 1) n = 1;
    if (n > MAX_THREADS) n = MAX_THREADS;
    Pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n = 1;
    for (int i = 0; i < ncpus && i < MAX_THREADS; i++)
        if (cpus[i] >= 0) p->cpus[p->ncpus++] = cpus[i];
    pthread_mutex_init(&p->mu, NULL);
    pthread_mutex_init(&p->run, NULL);
    pthread_cond_init(&p->cv, NULL);
    atomic_store(&p->closed, 1);
    for (int k = 0; k < POOL_KINDS; k++) p->until_explore[k] = 16;  /* start with threads, measure alone soon */
    for (int i = 1; i < n; i++) {
        Start *s = malloc(sizeof *s);
        if (!s) break;
        s->p = p;
        s->tid = i;
        if (pthread_create(&p->threads[i], NULL, worker, s)) { free(s); break; }
        p->n = i + 1;
    }
    return p;
}

int pool_size(const Pool *p) { return p->n; }

void pool_free(Pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->run);
    atomic_store(&p->stop, 1);
    atomic_fetch_add(&p->gen, 1);
    pthread_mutex_lock(&p->mu);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_unlock(&p->run);
    free(p);
}

static void run_team(Pool *p, pool_fn fn, void *arg) {
    p->fn = fn;
    p->arg = arg;
    atomic_store(&p->next_tid, 1);
    atomic_store(&p->closed, 0);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_seq_cst);
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    fn(arg, 0);
    /* Both sides of the handshake are sequentially consistent, the loads included: with an acquire
     * load here, C11 (and Arm's RCpc `ldapr`, which compilers may emit for acquire on Apple
     * Silicon and Armv8.3+) lets this load of joined be satisfied before the store of closed is
     * visible, so a worker could read closed == 0 and start the job after the caller had seen
     * joined == 0 and returned. */
    atomic_store(&p->closed, 1);
    unsigned spins = 0;
    while (atomic_load(&p->joined) > 0)
        if (++spins % 1024 == 0) sched_yield(); else cpu_relax();
}

void pool_run(Pool *p, pool_fn fn, void *arg, double cost, int kind) {
    if (p->n == 1 || pthread_mutex_trylock(&p->run)) {
        fn(arg, 0);
        return;
    }
    if (kind < 0) {  /* always every thread (the bandwidth probe) */
        p->team_jobs++;
        run_team(p, fn, arg);
        pthread_mutex_unlock(&p->run);
        return;
    }
    if (kind >= POOL_KINDS) kind = POOL_KINDS - 1;
    int m = p->mode[kind];
    const int measured = cost >= MIN_COST;
    if (measured && p->explore_left[kind] > 0) m = !m;  /* measuring the other mode */
    const long t0 = now_ns();
    if (m) { p->solo_jobs++; fn(arg, 0); }
    else { p->team_jobs++; run_team(p, fn, arg); }
    if (measured) {
        const double r = (double)(now_ns() - t0) / cost;
        double *avg = &p->rate[kind][m];
        *avg = *avg == 0.0 ? r : *avg + (r - *avg) / 8.0;
        if (p->explore_left[kind] > 0) {
            if (--p->explore_left[kind] == 0) {  /* choose the faster way */
                const double *rt = p->rate[kind];
                p->mode[kind] = rt[1] > 0.0 && rt[1] < SOLO_MARGIN * rt[0] ? 1 : 0;
                p->until_explore[kind] = EXPLORE_EVERY;
            }
        } else if (--p->until_explore[kind] <= 0) {
            p->explore_left[kind] = EXPLORE_JOBS;
        }
    }
    pthread_mutex_unlock(&p->run);
}

void pool_stats(const Pool *p, long long *team, long long *solo) {
    *team = p->team_jobs;
    *solo = p->solo_jobs;
}

void phase_wait(Phase *ph, int64_t n) {
    unsigned spins = 0;
    while (atomic_load_explicit(&ph->done, memory_order_acquire) < n)
        if (++spins % 1024 == 0) sched_yield(); else cpu_relax();
}
