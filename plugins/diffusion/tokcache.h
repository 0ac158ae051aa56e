/* Tokenizers shared by the jobs of a process.
 *
 * Making CLIP's tokenizer from its files takes tens of milliseconds (about
 * 30 ms for SD 1.x's 49408 merges); every job of a model needs the same
 * one. gh_tokcache_get() hands out the tokenizer of a pair of files,
 * made on the first request and kept: a later request with the same bytes
 * (compared whole, never by address or hash, so a model loaded anew at the
 * same place cannot alias an old one) gets the same tokenizer. Encoding is
 * thread-safe (tokenizer.h), so jobs use one tokenizer at once.
 *
 * At most GH_TOKCACHE_MAX tokenizers are kept; a new one evicts the least
 * recently used one that no job holds. When every entry is held, the new
 * tokenizer is the caller's alone, freed by its gh_tokcache_put(). Kept
 * ones are freed when the library is unloaded (a destructor).
 * Thread-safe. */
#pragma once

#include <stddef.h>

#include "tokenizer.h"

#define GH_TOKCACHE_MAX 4

/* The tokenizer of vocab.json |vocab| and merges.txt |merges|, as
 * gh_tokenizer_new() makes it (its errors and limits), held until
 * gh_tokcache_put(). */
int gh_tokcache_get(const char *vocab, size_t vocab_len, const char *merges, size_t merges_len,
                    const gh_tokenizer **ret, char *err, size_t err_size);
/* Lets go of a tokenizer from gh_tokcache_get(); NULL is fine. */
void gh_tokcache_put(const gh_tokenizer *t);
/* Tokenizers kept (tests). */
unsigned gh_tokcache_size(void);
