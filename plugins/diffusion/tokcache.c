/* Tokenizers shared by the jobs of a process. See tokcache.h.
 *
 * A small array of entries under one mutex: each keeps copies of the two
 * files it was made from, its tokenizer, the holds on it and when it was
 * last handed out. The tokenizer is made with the lock held, so two jobs
 * that ask for a new model's tokenizer at once make it once. */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tokcache.h"

typedef struct entry {
        gh_tokenizer *tok; /* NULL: the entry is empty */
        char *vocab, *merges;
        size_t vocab_len, merges_len;
        unsigned holds;
        uint64_t last_used;
} entry;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static entry cache[GH_TOKCACHE_MAX]; /* lock */
static uint64_t clock_;              /* lock: counts gets */

static void entry_clear(entry *e) {
        gh_tokenizer_free(e->tok);
        free(e->vocab);
        free(e->merges);
        memset(e, 0, sizeof(*e));
}

static bool same(const entry *e, const char *vocab, size_t vocab_len, const char *merges, size_t merges_len) {
        return e->tok && e->vocab_len == vocab_len && e->merges_len == merges_len &&
               (vocab_len == 0 || memcmp(e->vocab, vocab, vocab_len) == 0) &&
               (merges_len == 0 || memcmp(e->merges, merges, merges_len) == 0);
}

/* An empty entry, else the least recently used one that nobody holds. */
static entry *victim(void) {
        entry *v = NULL;

        for (size_t i = 0; i < GH_TOKCACHE_MAX; i++) {
                entry *e = &cache[i];
                if (!e->tok)
                        return e;
                if (!e->holds && (!v || e->last_used < v->last_used))
                        v = e;
        }
        return v;
}

static char *copy(const char *p, size_t n) {
        char *c = malloc(n ? n : 1);

        if (c && n)
                memcpy(c, p, n);
        return c;
}

/* Keeps |t| in a free entry if there is one; false: the caller's alone. */
static bool keep(gh_tokenizer *t, const char *vocab, size_t vocab_len, const char *merges, size_t merges_len) {
        entry *e = victim();
        char *v, *m;

        if (!e)
                return false;
        v = copy(vocab, vocab_len);
        m = copy(merges, merges_len);
        if (!v || !m) {
                free(v);
                free(m);
                return false;
        }
        entry_clear(e);
        *e = (entry){.tok = t, .vocab = v, .merges = m, .vocab_len = vocab_len, .merges_len = merges_len,
                     .holds = 1, .last_used = ++clock_};
        return true;
}

int gh_tokcache_get(const char *vocab, size_t vocab_len, const char *merges, size_t merges_len,
                    const gh_tokenizer **ret, char *err, size_t err_size) {
        gh_tokenizer *t = NULL;
        int r = 0;

        pthread_mutex_lock(&lock);
        for (size_t i = 0; i < GH_TOKCACHE_MAX; i++)
                if (same(&cache[i], vocab, vocab_len, merges, merges_len)) {
                        cache[i].holds++;
                        cache[i].last_used = ++clock_;
                        *ret = cache[i].tok;
                        goto out;
                }
        r = gh_tokenizer_new(vocab, vocab_len, merges, merges_len, &t, err, err_size);
        if (r >= 0) {
                (void) keep(t, vocab, vocab_len, merges, merges_len);
                *ret = t;
        }
out:
        pthread_mutex_unlock(&lock);
        return r;
}

void gh_tokcache_put(const gh_tokenizer *t) {
        if (!t)
                return;
        pthread_mutex_lock(&lock);
        for (size_t i = 0; i < GH_TOKCACHE_MAX; i++)
                if (cache[i].tok == t && cache[i].holds > 0) {
                        cache[i].holds--;
                        pthread_mutex_unlock(&lock);
                        return;
                }
        pthread_mutex_unlock(&lock);
        gh_tokenizer_free((gh_tokenizer *) t); /* one that was not kept */
}

unsigned gh_tokcache_size(void) {
        unsigned n = 0;

        pthread_mutex_lock(&lock);
        for (size_t i = 0; i < GH_TOKCACHE_MAX; i++)
                n += cache[i].tok != NULL;
        pthread_mutex_unlock(&lock);
        return n;
}

__attribute__((destructor)) static void tokcache_unload(void) {
        for (size_t i = 0; i < GH_TOKCACHE_MAX; i++)
                entry_clear(&cache[i]);
}
