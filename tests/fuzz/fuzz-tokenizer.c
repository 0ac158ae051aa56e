/* libFuzzer target for the CLIP tokenizer and A1111 prompts
 * (plugins/diffusion/tokenizer.c, prompt.c).
 *
 * Input layout: without a NUL byte the whole input is a prompt, tokenized
 * with a built-in vocabulary (the 512 byte tokens, a few merges, the
 * special tokens), which is where most of the search goes. With a NUL, the
 * text before the first one is vocab.json, the text up to a second NUL (or
 * the end) merges.txt, and what follows a second NUL a prompt for the
 * tokenizer they make (none: a fixed one).
 *
 * Loading either succeeds with a usable tokenizer or fails with a known
 * code and a one-line reason. A tokenized prompt has 1..GH_TOK_MAX_CHUNKS
 * chunks of BOS, ids in range, EOS; finite weights, 1 on BOS and EOS; the
 * same result twice. A prompt without attention syntax or BREAK, with all
 * weights 1, holds exactly gh_tokenizer_encode()'s ids. Any broken
 * invariant abort()s. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "prompt.h"
#include "tokenizer.h"

#define MAX_INPUT (64 * 1024)
#define ENCODE_MAX (GH_TOK_MAX_CHUNKS * GH_TOK_CHUNK)

static const char BUILTIN_MERGES[] = "#version: 0.2\nc a\nca t</w>\nd o\ndo g</w>\na a\naa a</w>\nĠ Ġ\n";
static const char *const BUILTIN_EXTRA[] = {"ca", "cat</w>", "do", "dog</w>", "aa", "aaa</w>", "ĠĠ"};

static void check_reason(int r, const char *err) {
        CHECK(r == -EINVAL || r == -E2BIG || r == -ENOMEM);
        CHECK(err[0] && !strchr(err, '\n'));
}

/* GPT-2's byte character of |b| as UTF-8, with |suffix|. */
static void byte_token(unsigned b, const char *suffix, char *out, size_t size) {
        unsigned next = 256, cp = 0;

        for (unsigned i = 0; i <= b; i++)
                cp = (i >= '!' && i <= '~') || (i >= 0xA1 && i <= 0xAC) || i >= 0xAE ? i : next++;
        if (cp < 0x80)
                snprintf(out, size, "%c%s", cp, suffix);
        else
                snprintf(out, size, "%c%c%s", 0xC0 | cp >> 6, 0x80 | (cp & 0x3F), suffix);
}

static gh_tokenizer *builtin(void) {
        static char vocab[32768];
        size_t n = 0;
        int id = 0;
        char tok[16], err[256];
        gh_tokenizer *t = NULL;

        n += (size_t) snprintf(vocab + n, sizeof(vocab) - n, "{");
        for (int end = 0; end < 2; end++)
                for (unsigned b = 0; b < 256; b++) {
                        byte_token(b, end ? "</w>" : "", tok, sizeof(tok));
                        n += (size_t) snprintf(vocab + n, sizeof(vocab) - n, "%s\"%s%s\": %d", id ? ", " : "",
                                               tok[0] == '"' || tok[0] == '\\' ? "\\" : "", tok, id);
                        id++;
                }
        for (size_t i = 0; i < sizeof(BUILTIN_EXTRA) / sizeof(BUILTIN_EXTRA[0]); i++)
                n += (size_t) snprintf(vocab + n, sizeof(vocab) - n, ", \"%s\": %d", BUILTIN_EXTRA[i], id++);
        n += (size_t) snprintf(vocab + n, sizeof(vocab) - n, ", \"<|startoftext|>\": %d, \"<|endoftext|>\": %d}",
                               id, id + 1);
        CHECK(n < sizeof(vocab));
        if (gh_tokenizer_new(vocab, n, BUILTIN_MERGES, strlen(BUILTIN_MERGES), &t, err, sizeof(err)) < 0) {
                fprintf(stderr, "built-in vocabulary refused: %s\n", err);
                abort();
        }
        return t;
}

/* Whether |s| has no attention syntax and no BREAK at all. */
static bool plain(const char *s) {
        return !strpbrk(s, "\\()[]:") && !strstr(s, "BREAK");
}

/* The tokens of chunk |c| before its padding, when EOS is no token. */
static size_t chunk_tokens(const gh_tokenizer *t, const gh_prompt_tokens *p, uint32_t c) {
        size_t n = 0;

        while (n < GH_TOK_CHUNK && p->ids[c][1 + n] != gh_tokenizer_eos(t))
                n++;
        return n;
}

static void check_plain(const gh_tokenizer *t, const char *prompt, const gh_prompt_tokens *p) {
        static int32_t ids[ENCODE_MAX + 1];
        size_t n, k = 0;

        CHECK(gh_tokenizer_encode(t, prompt, ids, ENCODE_MAX + 1, &n) == 0);
        CHECK(n == p->n_tokens);
        for (size_t i = 0; i < n; i++)
                if (ids[i] == gh_tokenizer_eos(t))
                        return; /* "<|endoftext|>" or an unknown symbol: padding is ambiguous */
        for (uint32_t c = 0; c < p->n_chunks; c++) {
                size_t m = chunk_tokens(t, p, c);
                CHECK(k + m <= n && memcmp(p->ids[c] + 1, ids + k, m * sizeof(*ids)) == 0);
                for (size_t i = 1; i <= m; i++)
                        CHECK(p->weights[c][i] == 1.0f);
                k += m;
        }
        CHECK(k == n);
}

static void check_prompt(const gh_tokenizer *t, const char *prompt) {
        static gh_prompt_tokens p, again;
        char err[512] = "";
        int32_t size = (int32_t) gh_tokenizer_vocab_size(t);

        int r = gh_prompt_tokenize(t, prompt, &p, err, sizeof(err));
        if (r < 0) {
                check_reason(r, err);
                return;
        }
        CHECK(r == 0 && p.n_chunks >= 1 && p.n_chunks <= GH_TOK_MAX_CHUNKS);
        CHECK(p.n_tokens <= p.n_chunks * GH_TOK_CHUNK);
        for (uint32_t c = 0; c < p.n_chunks; c++) {
                CHECK(p.ids[c][0] == gh_tokenizer_bos(t) && p.ids[c][GH_TOK_CONTEXT - 1] == gh_tokenizer_eos(t));
                CHECK(p.weights[c][0] == 1.0f && p.weights[c][GH_TOK_CONTEXT - 1] == 1.0f);
                for (int i = 0; i < GH_TOK_CONTEXT; i++) {
                        CHECK(p.ids[c][i] >= 0 && p.ids[c][i] < size);
                        CHECK(gh_tokenizer_token(t, p.ids[c][i]));
                        CHECK(isfinite(p.weights[c][i]));
                }
        }
        CHECK(gh_prompt_tokenize(t, prompt, &again, err, sizeof(err)) == 0);
        CHECK(again.n_chunks == p.n_chunks && again.n_tokens == p.n_tokens);
        CHECK(memcmp(again.ids, p.ids, p.n_chunks * sizeof(p.ids[0])) == 0);
        CHECK(memcmp(again.weights, p.weights, p.n_chunks * sizeof(p.weights[0])) == 0);
        if (plain(prompt))
                check_plain(t, prompt, &p);
}

/* A vocabulary and merges from the input; a prompt for them. */
static void check_load(const char *vocab, size_t vocab_len, const char *merges, size_t merges_len,
                       const char *prompt) {
        gh_tokenizer *t = NULL;
        char err[512] = "";

        int r = gh_tokenizer_new(vocab, vocab_len, merges, merges_len, &t, err, sizeof(err));
        if (r < 0) {
                CHECK(!t);
                check_reason(r, err);
                return;
        }
        CHECK(r == 0 && t);
        size_t n = gh_tokenizer_vocab_size(t);
        CHECK(n >= 2 && (size_t) gh_tokenizer_bos(t) < n && (size_t) gh_tokenizer_eos(t) < n);
        CHECK(strcmp(gh_tokenizer_token(t, gh_tokenizer_bos(t)), "<|startoftext|>") == 0);
        CHECK(strcmp(gh_tokenizer_token(t, gh_tokenizer_eos(t)), "<|endoftext|>") == 0);
        CHECK(!gh_tokenizer_token(t, (int32_t) n));
        check_prompt(t, prompt ? prompt : "a (photo:1.2) of [a cat], BREAK <|endoftext|> \xc3\xa9t\xc3\xa9 2024");
        gh_tokenizer_free(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        static gh_tokenizer *fixed;
        const char *text = (const char *) data;

        if (size > MAX_INPUT)
                return 0;
        if (!fixed)
                fixed = builtin();
        const char *nul = memchr(text, 0, size);
        if (!nul) {
                char *prompt = malloc(size + 1);
                CHECK(prompt);
                memcpy(prompt, text, size);
                prompt[size] = 0;
                check_prompt(fixed, prompt);
                free(prompt);
                return 0;
        }
        /* Exactly sized copies, so that ASan sees reads past the end. */
        size_t vocab_len = (size_t) (nul - text), rest = size - vocab_len - 1;
        const char *m = nul + 1, *nul2 = memchr(m, 0, rest);
        size_t merges_len = nul2 ? (size_t) (nul2 - m) : rest;
        char *vocab = malloc(vocab_len + 1), *merges = malloc(merges_len + 1), *prompt = NULL;
        CHECK(vocab && merges);
        memcpy(vocab, text, vocab_len);
        memcpy(merges, m, merges_len);
        if (nul2) {
                size_t len = rest - merges_len - 1;
                prompt = malloc(len + 1);
                CHECK(prompt);
                memcpy(prompt, nul2 + 1, len);
                prompt[len] = 0;
        }
        check_load(vocab, vocab_len, merges, merges_len, prompt);
        free(vocab);
        free(merges);
        free(prompt);
        return 0;
}
