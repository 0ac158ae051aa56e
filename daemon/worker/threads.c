/* The worker's CPU thread pool, lent to jobs through the host's
 * parallel_for(): n - 1 threads made at start plus the calling thread. A
 * run hands out indexes from one atomic counter, so uneven items balance
 * themselves; the caller returns once every item is done. One run at a
 * time (the worker runs one job at a time). */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "worker.h"

struct gh_threads {
        unsigned n;
        pthread_t *tids;
        pthread_mutex_t lock;
        pthread_cond_t start, finished;
        uint64_t generation;  /* bumped by each run */
        bool quit;
        /* the current run */
        void (*fn)(void *ctx, uint32_t i, uint32_t thread);
        void *ctx;
        uint32_t items;
        atomic_uint next;
        unsigned active;      /* pool threads still inside the run */
};

static void run_items(gh_threads *t, uint32_t thread) {
        for (;;) {
                uint32_t i = atomic_fetch_add(&t->next, 1);
                if (i >= t->items)
                        return;
                t->fn(t->ctx, i, thread);
        }
}

typedef struct thread_arg {
        gh_threads *t;
        uint32_t index;
} thread_arg;

static void *thread_main(void *p) {
        thread_arg a = *(thread_arg *) p;
        gh_threads *t = a.t;
        uint64_t seen = 0;

        free(p);
        pthread_mutex_lock(&t->lock);
        for (;;) {
                while (!t->quit && t->generation == seen)
                        pthread_cond_wait(&t->start, &t->lock);
                if (t->quit)
                        break;
                seen = t->generation;
                pthread_mutex_unlock(&t->lock);
                run_items(t, a.index);
                pthread_mutex_lock(&t->lock);
                if (--t->active == 0)
                        pthread_cond_signal(&t->finished);
        }
        pthread_mutex_unlock(&t->lock);
        return NULL;
}

int gh_threads_new(unsigned n, gh_threads **ret) {
        gh_threads *t = calloc(1, sizeof(*t));

        if (!t || n == 0) {
                free(t);
                return n == 0 ? -EINVAL : -ENOMEM;
        }
        t->n = n;
        pthread_mutex_init(&t->lock, NULL);
        pthread_cond_init(&t->start, NULL);
        pthread_cond_init(&t->finished, NULL);
        t->tids = calloc(n, sizeof(pthread_t));
        if (!t->tids) {
                gh_threads_free(t);
                return -ENOMEM;
        }
        for (unsigned i = 1; i < n; i++) {
                thread_arg *a = malloc(sizeof(*a));
                if (a)
                        *a = (thread_arg) {t, i};
                int r = a ? pthread_create(&t->tids[i], NULL, thread_main, a) : ENOMEM;
                if (r != 0) {
                        free(a);
                        t->n = i;
                        gh_threads_free(t);
                        return -r;
                }
        }
        *ret = t;
        return 0;
}

void gh_threads_free(gh_threads *t) {
        if (!t)
                return;
        pthread_mutex_lock(&t->lock);
        t->quit = true;
        pthread_cond_broadcast(&t->start);
        pthread_mutex_unlock(&t->lock);
        for (unsigned i = 1; i < t->n && t->tids; i++)
                pthread_join(t->tids[i], NULL);
        pthread_mutex_destroy(&t->lock);
        pthread_cond_destroy(&t->start);
        pthread_cond_destroy(&t->finished);
        free(t->tids);
        free(t);
}

unsigned gh_threads_count(const gh_threads *t) {
        return t->n;
}

void gh_threads_run(gh_threads *t, uint32_t n, void (*fn)(void *ctx, uint32_t i, uint32_t thread), void *ctx) {
        if (t->n == 1 || n == 1) {
                for (uint32_t i = 0; i < n; i++)
                        fn(ctx, i, 0);
                return;
        }
        pthread_mutex_lock(&t->lock);
        t->fn = fn;
        t->ctx = ctx;
        t->items = n;
        atomic_store(&t->next, 0);
        t->active = t->n - 1;
        t->generation++;
        pthread_cond_broadcast(&t->start);
        pthread_mutex_unlock(&t->lock);

        run_items(t, 0);

        pthread_mutex_lock(&t->lock);
        while (t->active > 0)
                pthread_cond_wait(&t->finished, &t->lock);
        pthread_mutex_unlock(&t->lock);
}
