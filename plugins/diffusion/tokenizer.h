/* CLIP's byte-level BPE tokenizer, as Stable Diffusion 1.x uses it: openai
 * CLIP's simple_tokenizer. HF's CLIPTokenizer (A1111, diffusers) gives the
 * same ids except for HTML entities, which it leaves to ftfy.
 *
 * A tokenizer is made from the two files of a CLIP tokenizer, given as
 * memory buffers (the runtime reads them from the weight pool): vocab.json,
 * a JSON object token -> id in any valid JSON formatting, with ids exactly
 * 0..N-1; and merges.txt, lines "a b" in rank order, an optional first line
 * "#version: ...", blank lines ignored. Every token of a merge and the token
 * it makes must be in the vocabulary, as must <|startoftext|> (BOS) and
 * <|endoftext|> (EOS, also the padding and the id of unknown symbols).
 *
 * Encoding: HTML entities unescaped twice (&amp; &lt; &gt; &quot; &#39;,
 * &#NNN; &#xHH; and the HTML 4 named entities, as Python's html.unescape()),
 * whitespace collapsed to single spaces and stripped, Unicode lower-casing
 * (Python's str.lower(): simple mappings, U+0130 to "i\u0307", final
 * sigma in its context), CLIP's pre-tokenizer pattern, bytes mapped to
 * GPT-2's byte characters, BPE by merge rank with "</w>" on a word's last
 * symbol. ftfy.fix_text() is not done (see tokenizer.c).
 *
 * A tokenizer is immutable once made: any number of threads may encode with
 * one at the same time. It holds no global state. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GH_TOK_CONTEXT 77                /* ids per chunk: BOS, 75 tokens, EOS */
#define GH_TOK_CHUNK 75                  /* prompt tokens per chunk */
#define GH_TOK_VOCAB_MAX 1000000         /* entries of vocab.json, lines of merges.txt */
#define GH_TOK_FILE_MAX (64u << 20)      /* bytes of vocab.json or merges.txt */
#define GH_TOK_TOKEN_MAX 1024            /* bytes of one token */
#define GH_TOK_TEXT_MAX (1u << 20)       /* bytes of a text to encode */
#define GH_TOK_MAX_CHUNKS 8              /* chunks of a prompt: 600 tokens */

typedef struct gh_tokenizer gh_tokenizer;

/* Makes a tokenizer from vocab.json (|vocab|, |vocab_len| bytes) and
 * merges.txt (|merges|, |merges_len| bytes); neither needs a NUL (NULL is
 * fine with a length of 0) and both may be freed afterwards. Returns 0, -EINVAL for malformed input, -E2BIG
 * over a limit (both with a one-line reason in |err|, e.g. "merges.txt
 * line 17: expected two tokens, found 1"), or -ENOMEM. */
int gh_tokenizer_new(const char *vocab, size_t vocab_len, const char *merges, size_t merges_len,
                     gh_tokenizer **ret, char *err, size_t err_size);
/* Frees |t| (NULL is fine); returns NULL. */
gh_tokenizer *gh_tokenizer_free(gh_tokenizer *t);

int32_t gh_tokenizer_bos(const gh_tokenizer *t);
int32_t gh_tokenizer_eos(const gh_tokenizer *t);
/* The id of ",</w>" (A1111 breaks long prompts after it); -1 if none. */
int32_t gh_tokenizer_comma(const gh_tokenizer *t);
/* Entries of vocab.json: ids are 0..size-1. */
size_t gh_tokenizer_vocab_size(const gh_tokenizer *t);
/* The token of |id| as in vocab.json (byte characters, "</w>"); NULL for an
 * id out of range. */
const char *gh_tokenizer_token(const gh_tokenizer *t, int32_t id);

/* The ids of |text| (NUL-terminated UTF-8), without BOS or EOS and without
 * any prompt syntax, into |ids| (room for |max|). Returns 0 and sets
 * |*ret_n|; -EINVAL if |text| is not valid UTF-8; -E2BIG if it makes more
 * than |max| tokens or is longer than GH_TOK_TEXT_MAX; -ENOMEM. */
int gh_tokenizer_encode(const gh_tokenizer *t, const char *text, int32_t *ids, size_t max, size_t *ret_n);

/* A prompt as gh_prompt_tokenize() (prompt.h) makes it: chunks of BOS, 75
 * tokens (padded with EOS), EOS, and a weight for each id. */
typedef struct gh_prompt_tokens {
        uint32_t n_chunks;                              /* 1..GH_TOK_MAX_CHUNKS */
        uint32_t n_tokens;                              /* prompt tokens, without BOS, EOS, padding */
        int32_t ids[GH_TOK_MAX_CHUNKS][GH_TOK_CONTEXT]; /* chunks past n_chunks: unset */
        float weights[GH_TOK_MAX_CHUNKS][GH_TOK_CONTEXT];
} gh_prompt_tokens;

static inline void gh_tokenizer_freep(gh_tokenizer **t) {
        gh_tokenizer_free(*t);
}
