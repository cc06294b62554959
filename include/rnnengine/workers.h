/* A small pool of worker threads for intra-op parallelism (the threads= option).
 *
 * rnn_pool_run(pool, fn, ctx) runs fn(ctx, w, n) on the n = pool->nthreads threads (the
 * caller is w = 0) and returns when all are done. Callers split work by hidden-unit block with
 * a static partition (w * blocks / n), so each thread touches the same weight slice every
 * timestep and keeps it in its own core's cache (DeepCPU's scheme).
 *
 * Workers spin briefly after finishing, because the next phase or timestep usually follows
 * within microseconds, then sleep on a condition variable. Without pthreads (MSVC) a pool
 * cannot be created and everything runs on the calling thread.
 */
#ifndef RNNENGINE_WORKERS_H
#define RNNENGINE_WORKERS_H

#include <stdlib.h>

#include "rnnengine/fpenv.h"

#if defined(_WIN32) && !defined(__MINGW32__)
#define RNN_HAVE_THREADS 0
#else
#define RNN_HAVE_THREADS 1
#include <pthread.h>
#include <sched.h>
#endif

/* A busy flag for detecting concurrent use of one stream: 1 if it was free and is now taken. */
static inline int rnn_flag_try_acquire(int *flag) {
#if defined(__GNUC__) || defined(__clang__)
    return __atomic_exchange_n(flag, 1, __ATOMIC_ACQUIRE) == 0;
#else
    if (*flag) return 0; /* callers hold the GIL, which makes this test-and-set atomic */
    *flag = 1;
    return 1;
#endif
}

static inline void rnn_flag_release(int *flag) {
#if defined(__GNUC__) || defined(__clang__)
    __atomic_store_n(flag, 0, __ATOMIC_RELEASE);
#else
    *flag = 0;
#endif
}

typedef void (*rnn_task_fn)(void *ctx, int worker, int nworkers);

typedef struct rnn_pool rnn_pool_t;

#if RNN_HAVE_THREADS

#if defined(__x86_64__) || defined(__i386__)
#define RNN_CPU_RELAX() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define RNN_CPU_RELAX() __asm__ __volatile__("yield")
#else
#define RNN_CPU_RELAX() ((void)0)
#endif

/* Waiting: a few relax iterations (the partner is usually microseconds away), then yields
 * (when the machine is oversubscribed the partner may be waiting for this very core: yielding
 * hands it over at once, where spinning burned a whole time slice, measured ~100 us per
 * barrier), then sleep on the condition variable. */
#define RNN_SPIN 200
#define RNN_YIELDS 200

static inline void rnn_wait_a_bit(int spins) {
    if (spins < RNN_SPIN)
        RNN_CPU_RELAX();
    else
        sched_yield();
}

struct rnn_pool {
    int nthreads; /* including the caller */
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    rnn_task_fn fn;
    void *ctx;
    unsigned generation; /* bumped (under mu) for every job */
    int remaining;       /* workers still running the current job */
    int stop;
    int started;         /* workers created */
};

typedef struct {
    rnn_pool_t *pool;
    int id;
} rnn_worker_arg_t;

static void *rnn_worker_main(void *arg) {
    rnn_worker_arg_t *wa = (rnn_worker_arg_t *)arg;
    rnn_pool_t *p = wa->pool;
    const int id = wa->id;
    free(wa);
    (void)rnn_fpenv_enter(); /* this thread only runs kernels: subnormals flushed for good */
    unsigned seen = 0;
    for (;;) {
        int spins = 0;
        while (__atomic_load_n(&p->generation, __ATOMIC_ACQUIRE) == seen &&
               !__atomic_load_n(&p->stop, __ATOMIC_ACQUIRE) && spins < RNN_SPIN + RNN_YIELDS)
            rnn_wait_a_bit(spins++);
        pthread_mutex_lock(&p->mu);
        while (p->generation == seen && !p->stop) pthread_cond_wait(&p->wake, &p->mu);
        if (p->stop) {
            pthread_mutex_unlock(&p->mu);
            return NULL;
        }
        seen = p->generation;
        rnn_task_fn fn = p->fn;
        void *ctx = p->ctx;
        pthread_mutex_unlock(&p->mu);
        fn(ctx, id, p->nthreads);
        if (__atomic_sub_fetch(&p->remaining, 1, __ATOMIC_ACQ_REL) == 0) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

static void rnn_pool_destroy(rnn_pool_t *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->started; i++) pthread_join(p->threads[i], NULL);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
    pthread_mutex_destroy(&p->mu);
    free(p->threads);
    free(p);
}

/* A pool of nthreads (>= 2) threads counting the caller, or NULL if threads cannot be made. */
static rnn_pool_t *rnn_pool_create(int nthreads) {
    if (nthreads < 2) return NULL;
    rnn_pool_t *p = (rnn_pool_t *)calloc(1, sizeof *p);
    if (!p) return NULL;
    p->threads = (pthread_t *)calloc((size_t)nthreads - 1, sizeof(pthread_t));
    if (!p->threads || pthread_mutex_init(&p->mu, NULL)) {
        free(p->threads);
        free(p);
        return NULL;
    }
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    p->nthreads = nthreads;
    for (int i = 1; i < nthreads; i++) {
        rnn_worker_arg_t *wa = (rnn_worker_arg_t *)malloc(sizeof *wa);
        if (!wa) break;
        wa->pool = p;
        wa->id = i;
        if (pthread_create(&p->threads[i - 1], NULL, rnn_worker_main, wa)) {
            free(wa);
            break;
        }
        p->started++;
    }
    if (p->started != nthreads - 1) {
        rnn_pool_destroy(p);
        return NULL;
    }
    return p;
}

static void rnn_pool_run(rnn_pool_t *p, rnn_task_fn fn, void *ctx) {
    if (!p) {
        fn(ctx, 0, 1);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->remaining = p->nthreads - 1;
    __atomic_add_fetch(&p->generation, 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    fn(ctx, 0, p->nthreads);
    int spins = 0;
    while (__atomic_load_n(&p->remaining, __ATOMIC_ACQUIRE) != 0 &&
           spins < RNN_SPIN + RNN_YIELDS)
        rnn_wait_a_bit(spins++);
    pthread_mutex_lock(&p->mu);
    while (__atomic_load_n(&p->remaining, __ATOMIC_ACQUIRE) != 0)
        pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

static inline int rnn_pool_threads(const rnn_pool_t *p) { return p ? p->nthreads : 1; }

#else /* no threads */

static rnn_pool_t *rnn_pool_create(int nthreads) { (void)nthreads; return NULL; }
static void rnn_pool_destroy(rnn_pool_t *p) { (void)p; }
static void rnn_pool_run(rnn_pool_t *p, rnn_task_fn fn, void *ctx) { (void)p; fn(ctx, 0, 1); }
static inline int rnn_pool_threads(const rnn_pool_t *p) { (void)p; return 1; }

#endif
#endif
