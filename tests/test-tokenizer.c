/* Unit tests for the CLIP tokenizer and A1111 prompts
 * (plugins/diffusion/tokenizer.c, prompt.c).
 *
 * With GH_CLIP_VOCAB_DIR naming a directory with CLIP's vocab.json and
 * merges.txt (shared/data/clip-vit-large-patch14): every line of its
 * tokenizer_test_vectors.jsonl, cases whose ids come from openai's
 * simple_tokenizer (run without ftfy) and A1111's parse_prompt_attention()
 * and tokenize_line(), padding, weights, BREAK, chunks and the comma rule,
 * the same vocabulary pretty-printed and with CRLF merges, several threads
 * at once, and timings. Without it those tests skip.
 *
 * Always: small vocabularies built here (the 512 byte tokens, a few
 * merges, the special tokens) for BPE's merge order, the quirks of the
 * attention syntax, limits, and malformed vocab.json / merges.txt, each
 * refused with its code and a reason that names the problem; and the
 * process's shared tokenizers (tokcache.c). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <json-c/json.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "prompt.h"
#include "tokcache.h"
#include "tokenizer.h"

#define BOS_ID 49406
#define EOS_ID 49407
#define RENDER_MAX 8192

typedef struct file {
        char *data;
        size_t len;
} file;

static gh_tokenizer *clip;       /* NULL: no CLIP data */
static file clip_vocab, clip_merges;
static char *clip_dir;
static char err[512];

/* ---- helpers ----------------------------------------------------------- */

static bool read_file(const char *dir, const char *name, file *ret) {
        char path[4096];
        FILE *f;

        snprintf(path, sizeof(path), "%s/%s", dir, name);
        f = fopen(path, "rb");
        if (!f)
                return false;
        fseek(f, 0, SEEK_END);
        ret->len = (size_t) ftell(f);
        fseek(f, 0, SEEK_SET);
        ret->data = malloc(ret->len + 1);
        assert_non_null(ret->data);
        assert_int_equal(fread(ret->data, 1, ret->len, f), ret->len);
        ret->data[ret->len] = 0;
        fclose(f);
        return true;
}

static double now_ms(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec * 1e3 + (double) ts.tv_nsec / 1e6;
}

static void need_clip(void) {
        if (!clip)
                skip();
}

static void assert_err(const char *substr) {
        if (!strstr(err, substr))
                fail_msg("reason \"%s\" does not mention \"%s\"", err, substr);
        assert_null(strchr(err, '\n'));
}

/* A prompt's chunks as text: tokens by their strings, " @w" after a token
 * whose weight is not 1, chunks separated by " | ", each without its BOS
 * and its EOS and padding (trailing EOS of weight 1). */
static const char *render(const gh_tokenizer *t, const gh_prompt_tokens *p) {
        static char buf[RENDER_MAX];
        size_t n = 0;

        buf[0] = 0;
        for (uint32_t c = 0; c < p->n_chunks; c++) {
                int end = GH_TOK_CONTEXT - 1;
                assert_int_equal(p->ids[c][0], gh_tokenizer_bos(t));
                assert_int_equal(p->ids[c][end], gh_tokenizer_eos(t));
                assert_true(p->weights[c][0] == 1.0f && p->weights[c][end] == 1.0f);
                while (end > 1 && p->ids[c][end - 1] == gh_tokenizer_eos(t) && p->weights[c][end - 1] == 1.0f)
                        end--;
                n += (size_t) snprintf(buf + n, sizeof(buf) - n, "%s", c ? " |" : "");
                for (int i = 1; i < end; i++) {
                        n += (size_t) snprintf(buf + n, sizeof(buf) - n, "%s%s", n ? " " : "",
                                               gh_tokenizer_token(t, p->ids[c][i]));
                        if (p->weights[c][i] != 1.0f)
                                n += (size_t) snprintf(buf + n, sizeof(buf) - n, "@%.6g", (double) p->weights[c][i]);
                }
        }
        return buf;
}

static void expect_prompt(const gh_tokenizer *t, const char *prompt, const char *expected) {
        gh_prompt_tokens *p = calloc(1, sizeof(*p));

        assert_non_null(p);
        if (gh_prompt_tokenize(t, prompt, p, err, sizeof(err)) < 0)
                fail_msg("\"%s\": %s", prompt, err);
        const char *got = render(t, p);
        if (strcmp(got, expected) != 0)
                fail_msg("\"%s\":\n got      \"%s\"\n expected \"%s\"", prompt, got, expected);
        free(p);
}

static void expect_prompt_error(const gh_tokenizer *t, const char *prompt, int r, const char *substr) {
        gh_prompt_tokens *p = calloc(1, sizeof(*p));

        assert_non_null(p);
        err[0] = 0;
        assert_int_equal(gh_prompt_tokenize(t, prompt, p, err, sizeof(err)), r);
        assert_err(substr);
        free(p);
}

/* GPT-2's bytes_to_unicode() for byte |b|, as UTF-8 into |out|. */
static void byte_char(unsigned b, char out[8]) {
        unsigned next = 256, cp = 0;

        for (unsigned i = 0; i <= b; i++) {
                bool printable = (i >= '!' && i <= '~') || (i >= 0xA1 && i <= 0xAC) || i >= 0xAE;
                cp = printable ? i : next++;
        }
        if (cp < 0x80)
                snprintf(out, 8, "%c", cp);
        else
                snprintf(out, 8, "%c%c", 0xC0 | cp >> 6, 0x80 | (cp & 0x3F));
}

/* vocab.json of a small vocabulary: the 256 byte tokens, the same with
 * "</w>", |extra| (NULL-terminated), then <|startoftext|>, <|endoftext|>. */
static char *tiny_vocab(const char *const *extra) {
        json_object *o = json_object_new_object();
        int id = 0;
        char s[16];

        for (int end = 0; end < 2; end++)
                for (unsigned b = 0; b < 256; b++) {
                        byte_char(b, s);
                        strcat(s, end ? "</w>" : "");
                        json_object_object_add(o, s, json_object_new_int(id++));
                }
        for (size_t i = 0; extra && extra[i]; i++)
                json_object_object_add(o, extra[i], json_object_new_int(id++));
        json_object_object_add(o, "<|startoftext|>", json_object_new_int(id++));
        json_object_object_add(o, "<|endoftext|>", json_object_new_int(id++));
        char *text = strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
        json_object_put(o);
        assert_non_null(text);
        return text;
}

static gh_tokenizer *tiny(const char *const *extra, const char *merges) {
        char *vocab = tiny_vocab(extra);
        gh_tokenizer *t = NULL;

        if (gh_tokenizer_new(vocab, strlen(vocab), merges, strlen(merges), &t, err, sizeof(err)) < 0)
                fail_msg("tiny vocabulary refused: %s", err);
        free(vocab);
        return t;
}

static void expect_bad(const char *vocab, size_t vocab_len, const char *merges, size_t merges_len, int r,
                       const char *substr) {
        gh_tokenizer *t = NULL;

        err[0] = 0;
        assert_int_equal(gh_tokenizer_new(vocab, vocab_len, merges, merges_len, &t, err, sizeof(err)), r);
        assert_null(t);
        assert_err(substr);
}

static void expect_bad_vocab(const char *vocab, int r, const char *substr) {
        expect_bad(vocab, strlen(vocab), "", 0, r, substr);
}

static void expect_bad_merges(const char *const *extra, const char *merges, int r, const char *substr) {
        char *vocab = tiny_vocab(extra);

        expect_bad(vocab, strlen(vocab), merges, strlen(merges), r, substr);
        free(vocab);
}

static void expect_ids(const gh_tokenizer *t, const char *text, const int32_t *expected, size_t n) {
        int32_t ids[1024];
        size_t got;

        assert_int_equal(gh_tokenizer_encode(t, text, ids, 1024, &got), 0);
        if (got != n || memcmp(ids, expected, n * sizeof(*ids)) != 0) {
                char buf[4096];
                size_t k = 0;
                for (size_t i = 0; i < got && k < sizeof(buf) - 16; i++)
                        k += (size_t) snprintf(buf + k, sizeof(buf) - k, " %d", ids[i]);
                fail_msg("\"%s\": got%s (%zu ids, expected %zu)", text, buf, got, n);
        }
}

/* ---- CLIP's vocabulary ------------------------------------------------- */

static void test_vectors(void **state) {
        file f;

        need_clip();
        assert_true(read_file(clip_dir, "tokenizer_test_vectors.jsonl", &f));
        gh_prompt_tokens *p = calloc(1, sizeof(*p));
        size_t lines = 0;
        for (char *line = strtok(f.data, "\n"); line; line = strtok(NULL, "\n"), lines++) {
                json_object *o = json_tokener_parse(line), *ids;
                assert_non_null(o);
                assert_true(json_object_object_get_ex(o, "ids", &ids));
                const char *text = json_object_get_string(json_object_object_get(o, "text"));
                size_t n = json_object_array_length(ids);
                int32_t expected[GH_TOK_CONTEXT];
                assert_true(n >= 2 && n <= GH_TOK_CONTEXT);
                for (size_t i = 0; i < n; i++)
                        expected[i] = json_object_get_int(json_object_array_get_idx(ids, i));
                assert_int_equal(expected[0], BOS_ID);
                assert_int_equal(expected[n - 1], EOS_ID);
                expect_ids(clip, text, expected + 1, n - 2);
                /* As a prompt: the same, padded with EOS. */
                assert_int_equal(gh_prompt_tokenize(clip, text, p, err, sizeof(err)), 0);
                assert_int_equal(p->n_chunks, 1);
                assert_int_equal(p->n_tokens, n - 2);
                for (size_t i = 0; i < GH_TOK_CONTEXT; i++) {
                        assert_int_equal(p->ids[0][i], i < n ? expected[i] : EOS_ID);
                        assert_true(p->weights[0][i] == 1.0f);
                }
                json_object_put(o);
        }
        assert_true(lines >= 6);
        free(p);
        free(f.data);
}

/* Ids from openai's simple_tokenizer.encode() (without ftfy). */
static const struct {
        const char *text;
        int32_t ids[64];
} reference[] = {
        {"1234 5678 90",
         {272, 273, 274, 275, 276, 277, 278, 279, 280, 271}},
        {"3.14159, 1024x768 8k 1girl",
         {274, 269, 272, 275, 272, 276, 280, 267, 272, 271, 273, 275, 343, 278, 277, 279, 279, 330, 272, 1611}},
        {"don't it's we're I'll you've I'm he'd",
         {847, 713, 585, 568, 649, 982, 328, 1342, 592, 1200, 328, 880, 797, 1896}},
        {"DON'T IT'S 'sup 'Tis",
         {847, 713, 585, 568, 568, 705, 713, 533}},
        {"&amp; &lt;b&gt; &quot;x&quot; &#39;s &#65;&#x42; &copy; &amp;amp; &ampx &frac12 &nbsp;a",
         {261, 283, 321, 285, 257, 343, 257, 568, 3937, 5811, 261, 261, 343, 33613, 320}},
        {"  a\t\n b  \xe3\x80\x80 c  ",
         {320, 321, 322}},
        {"Café naïve ΟΔΟΣ ΣΟΦΟΣ İstanbul 東京タワー Привет",
         {15304, 1097, 35689, 563, 138, 123, 138, 112, 138, 123, 139, 480, 139, 225, 138, 123, 139, 228, 138, 123,
          139, 480, 328, 16384, 11231, 48338, 21078, 105, 34941, 2429, 107, 30391, 26302, 16370, 29503, 110, 22176,
          141, 480}},
        {"Hello, World!!! ... ?! (parens) [brackets]",
         {3306, 267, 1002, 995, 678, 2835, 263, 3106, 338, 264, 314, 36183, 316}},
        {"a photo of a cat<|endoftext|>on mars <|startoftext|>",
         {320, 1125, 539, 320, 2368, 49407, 525, 7496, 49406}},
        {"pneumonoultramicroscopicsilicovolcanoconiosis",
         {28714, 749, 20253, 9800, 535, 532, 1065, 901, 1556, 13697, 9916, 78, 39031, 13903}},
        {"👍🏽 🐱 ™ ½ ①",
         {43722, 22979, 11675, 33613, 158, 239, 510}},
};

static void test_reference(void **state) {
        need_clip();
        for (size_t i = 0; i < sizeof(reference) / sizeof(reference[0]); i++) {
                size_t n = 0;
                while (n < 64 && reference[i].ids[n])
                        n++;
                expect_ids(clip, reference[i].text, reference[i].ids, n);
        }
        /* Digits one by one, contractions apart, entities, spaces. */
        expect_prompt(clip, "2024", "2</w> 0</w> 2</w> 4</w>");
        expect_prompt(clip, "it's", "it</w> 's</w>");
        expect_prompt(clip, "&lt;3 &amp;&amp;", "<</w> 3</w> &&</w>");
        expect_prompt(clip, " \t a \n\n  cat  ", "a</w> cat</w>");
        expect_prompt(clip, "CAT Cat cAt", "cat</w> cat</w> cat</w>");
}

static void test_padding(void **state) {
        need_clip();
        gh_prompt_tokens *p = calloc(1, sizeof(*p));
        assert_int_equal(gh_tokenizer_bos(clip), BOS_ID);
        assert_int_equal(gh_tokenizer_eos(clip), EOS_ID);
        assert_int_equal(gh_tokenizer_vocab_size(clip), 49408);
        assert_string_equal(gh_tokenizer_token(clip, gh_tokenizer_comma(clip)), ",</w>");
        assert_null(gh_tokenizer_token(clip, 49408));
        assert_null(gh_tokenizer_token(clip, -1));
        /* Empty and blank prompts: one chunk, BOS and 76 EOS. */
        const char *empty[] = {"", "   ", "()", "[ ]", "\\"};
        for (size_t k = 0; k < sizeof(empty) / sizeof(empty[0]); k++) {
                assert_int_equal(gh_prompt_tokenize(clip, empty[k], p, err, sizeof(err)), 0);
                assert_int_equal(p->n_chunks, 1);
                assert_int_equal(p->n_tokens, 0);
                assert_int_equal(p->ids[0][0], BOS_ID);
                for (int i = 1; i < GH_TOK_CONTEXT; i++)
                        assert_int_equal(p->ids[0][i], EOS_ID);
                for (int i = 0; i < GH_TOK_CONTEXT; i++)
                        assert_true(p->weights[0][i] == 1.0f);
        }
        /* Weights of BOS, EOS and padding stay 1 inside brackets. */
        assert_int_equal(gh_prompt_tokenize(clip, "((a photo of a cat", p, err, sizeof(err)), 0);
        assert_int_equal(p->n_tokens, 5);
        assert_int_equal(p->ids[0][5], 2368);
        assert_true(p->weights[0][5] == 1.21f);
        assert_true(p->weights[0][0] == 1.0f && p->weights[0][6] == 1.0f && p->weights[0][76] == 1.0f);
        free(p);
}

static void test_weights(void **state) {
        need_clip();
        expect_prompt(clip, "(cat:1.3)", "cat</w>@1.3");
        expect_prompt(clip, "( cat : 0.5 )", "cat</w>@0.5");
        expect_prompt(clip, "(cat:-1)", "cat</w>@-1");
        expect_prompt(clip, "((cat))", "cat</w>@1.21");
        expect_prompt(clip, "[cat]", "cat</w>@0.909091");
        expect_prompt(clip, "[[cat]]", "cat</w>@0.826446");
        expect_prompt(clip, "a (red (cat:1.5) [dog]) b", "a</w> red</w>@1.1 cat</w>@1.65 dog</w> b</w>");
        expect_prompt(clip, "a photo of a (cat:1.3), [dog]",
                      "a</w> photo</w> of</w> a</w> cat</w>@1.3 ,</w> dog</w>@0.909091");
        /* Unbalanced: an open bracket weighs the rest; a stray closing
         * one is text. */
        expect_prompt(clip, "a (cat dog", "a</w> cat</w>@1.1 dog</w>@1.1");
        expect_prompt(clip, "a [cat (dog", "a</w> cat</w>@0.909091 dog</w>");
        expect_prompt(clip, "cat) dog]", "cat</w> )</w> dog</w> ]</w>");
        expect_prompt(clip, "cat:1.2) dog", "cat</w> :</w> 1</w> .</w> 2</w> )</w> dog</w>");
        /* Escapes are the characters, a lone backslash goes. */
        expect_prompt(clip, "\\(cat\\) \\[dog\\]", "(</w> cat</w> )</w> [</w> dog</w> ]</w>");
        expect_prompt(clip, "a\\\\b", "a</w> \\</w> b</w>");
        expect_prompt(clip, "c\\at", "cat</w>");
        /* Text of equal weight is joined before tokenizing. */
        expect_prompt(clip, "(cat)(fish)", "catfish</w>@1.1");
        expect_prompt(clip, "cat[(fish)]", "catfish</w>"); /* 1.1 * (1 / 1.1) == 1 */
        /* A weight that is not a number fails, as in A1111. */
        expect_prompt_error(clip, "(cat:1.2.3)", -EINVAL, "\"1.2.3\" is not a number");
        expect_prompt_error(clip, "(cat:.)", -EINVAL, "is not a number");
        expect_prompt(clip, "cat:1.2.3)", "cat</w> :</w> 1</w> .</w> 2</w> .</w> 3</w> )</w>");
}

static void test_break(void **state) {
        need_clip();
        expect_prompt(clip, "a cat BREAK a dog", "a</w> cat</w> | a</w> dog</w>");
        expect_prompt(clip, "a cat\nBREAK\ta dog", "a</w> cat</w> | a</w> dog</w>");
        expect_prompt(clip, "BREAK a dog", " | a</w> dog</w>");
        expect_prompt(clip, "a dog BREAK", "a</w> dog</w>");
        expect_prompt(clip, "a BREAK BREAK b", "a</w> | | b</w>");
        /* Only a word of its own, in capitals. */
        expect_prompt(clip, "BREAKfast break xBREAK", "breakfast</w> break</w> x break</w>");
        /* Inside brackets it is weighted like text, and so is text. */
        expect_prompt(clip, "(a BREAK b)", "a</w>@1.1 break</w>@-1.1 b</w>@1.1");
}

static void test_chunks(void **state) {
        char prompt[4096];

        need_clip();
        gh_prompt_tokens *p = calloc(1, sizeof(*p));
        /* 75 tokens: one chunk; 76: two. */
        prompt[0] = 0;
        for (int i = 0; i < 75; i++)
                strcat(prompt, "a ");
        assert_int_equal(gh_prompt_tokenize(clip, prompt, p, err, sizeof(err)), 0);
        assert_int_equal(p->n_chunks, 1);
        assert_int_equal(p->n_tokens, 75);
        assert_int_equal(p->ids[0][75], 320);
        strcat(prompt, "cat");
        assert_int_equal(gh_prompt_tokenize(clip, prompt, p, err, sizeof(err)), 0);
        assert_int_equal(p->n_chunks, 2);
        assert_int_equal(p->ids[1][1], 2368);
        assert_int_equal(p->ids[1][2], EOS_ID);

        /* 70 a, a comma, 10 b: when the 5th b would overflow, the 4 after
         * the comma move on. */
        prompt[0] = 0;
        for (int i = 0; i < 70; i++)
                strcat(prompt, "a ");
        strcat(prompt, ", b b b b b b b b b b");
        assert_int_equal(gh_prompt_tokenize(clip, prompt, p, err, sizeof(err)), 0);
        assert_int_equal(p->n_chunks, 2);
        assert_int_equal(p->n_tokens, 81);
        assert_int_equal(p->ids[0][71], 267);
        for (int i = 72; i < GH_TOK_CONTEXT; i++)
                assert_int_equal(p->ids[0][i], EOS_ID);
        for (int i = 1; i <= 10; i++)
                assert_int_equal(p->ids[1][i], 321);
        assert_int_equal(p->ids[1][11], EOS_ID);

        /* The comma 25 tokens back: too far, a plain cut at 75. */
        prompt[0] = 0;
        for (int i = 0; i < 50; i++)
                strcat(prompt, "a ");
        strcat(prompt, ", ");
        for (int i = 0; i < 30; i++)
                strcat(prompt, "b ");
        assert_int_equal(gh_prompt_tokenize(clip, prompt, p, err, sizeof(err)), 0);
        assert_int_equal(p->n_chunks, 2);
        assert_int_equal(p->ids[0][51], 267);
        assert_int_equal(p->ids[0][75], 321);
        assert_int_equal(p->ids[1][6], 321);
        assert_int_equal(p->ids[1][7], EOS_ID);

        /* 8 chunks is the most; a 9th fails. */
        prompt[0] = 0;
        for (int i = 0; i < 600; i++)
                strcat(prompt, "1");
        assert_int_equal(gh_prompt_tokenize(clip, prompt, p, err, sizeof(err)), 0);
        assert_int_equal(p->n_chunks, 8);
        assert_int_equal(p->n_tokens, 600);
        strcat(prompt, "1");
        expect_prompt_error(clip, prompt, -E2BIG, "more than 8 chunks");
        free(p);
}

/* A long prompt as A1111 chunks it (tokenize_line() with
 * comma_padding_backtrack 20): 73 tokens, as 75 would cut "8k". */
static void test_long_prompt(void **state) {
        char prompt[4096] = "";
        const char *words[] = {"masterpiece, ", "best quality, ", "(highly detailed:1.2), ",
                               "a photo of an astronaut riding a horse on mars, ", "[blurry], ", "8k uhd, "};

        need_clip();
        for (int i = 0; i < 30; i++)
                strcat(prompt, words[i % 6]);
        expect_prompt(clip, prompt,
                      "masterpiece</w> ,</w> best</w> quality</w> ,</w> highly</w>@1.2 detailed</w>@1.2 ,</w> a</w> "
                      "photo</w> of</w> an</w> astronaut</w> riding</w> a</w> horse</w> on</w> mars</w> ,</w> "
                      "blurry</w>@0.909091 ,</w> 8</w> k</w> u hd</w> ,</w> masterpiece</w> ,</w> best</w> quality</w> "
                      ",</w> highly</w>@1.2 detailed</w>@1.2 ,</w> a</w> photo</w> of</w> an</w> astronaut</w> "
                      "riding</w> "
                      "a</w> horse</w> on</w> mars</w> ,</w> blurry</w>@0.909091 ,</w> 8</w> k</w> u hd</w> ,</w> "
                      "masterpiece</w> ,</w> best</w> quality</w> ,</w> highly</w>@1.2 detailed</w>@1.2 ,</w> a</w> "
                      "photo</w> of</w> an</w> astronaut</w> riding</w> a</w> horse</w> on</w> mars</w> ,</w> "
                      "blurry</w>@0.909091 ,</w> | 8</w> k</w> u hd</w> ,</w> masterpiece</w> ,</w> best</w> "
                      "quality</w> "
                      ",</w> highly</w>@1.2 detailed</w>@1.2 ,</w> a</w> photo</w> of</w> an</w> astronaut</w> "
                      "riding</w> "
                      "a</w> horse</w> on</w> mars</w> ,</w> blurry</w>@0.909091 ,</w> 8</w> k</w> u hd</w> ,</w> "
                      "masterpiece</w> ,</w> best</w> quality</w> ,</w> highly</w>@1.2 detailed</w>@1.2 ,</w> a</w> "
                      "photo</w> of</w> an</w> astronaut</w> riding</w> a</w> horse</w> on</w> mars</w> ,</w> "
                      "blurry</w>@0.909091 ,</w> 8</w> k</w> u hd</w> ,</w>");
}

/* The same vocabulary pretty-printed (as in a diffusers tokenizer/
 * folder), and merges.txt with CRLF, load to the same tokenizer. */
static void test_formats(void **state) {
        gh_tokenizer *t = NULL;
        json_object *o;

        need_clip();
        o = json_tokener_parse(clip_vocab.data);
        assert_non_null(o);
        const char *pretty = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED);
        assert_non_null(strstr(pretty, "\n  \""));
        char *crlf = malloc(2 * clip_merges.len + 1);
        size_t n = 0;
        for (size_t i = 0; i < clip_merges.len; i++) {
                if (clip_merges.data[i] == '\n')
                        crlf[n++] = '\r';
                crlf[n++] = clip_merges.data[i];
        }
        assert_int_equal(gh_tokenizer_new(pretty, strlen(pretty), crlf, n, &t, err, sizeof(err)), 0);
        assert_int_equal(gh_tokenizer_vocab_size(t), 49408);
        for (size_t i = 0; i < sizeof(reference) / sizeof(reference[0]); i++) {
                int32_t a[256], b[256];
                size_t na, nb;
                assert_int_equal(gh_tokenizer_encode(clip, reference[i].text, a, 256, &na), 0);
                assert_int_equal(gh_tokenizer_encode(t, reference[i].text, b, 256, &nb), 0);
                assert_int_equal(na, nb);
                assert_memory_equal(a, b, na * sizeof(*a));
        }
        for (int32_t id = 0; id < 49408; id += 97)
                assert_string_equal(gh_tokenizer_token(t, id), gh_tokenizer_token(clip, id));
        gh_tokenizer_free(t);
        json_object_put(o);
        free(crlf);
}

#define THREADS 4

static void *encode_many(void *arg) {
        int32_t *out = arg, ids[GH_TOK_CONTEXT];
        size_t n;

        for (int round = 0; round < 50; round++)
                for (size_t i = 0; i < sizeof(reference) / sizeof(reference[0]); i++) {
                        if (gh_tokenizer_encode(clip, reference[i].text, ids, GH_TOK_CONTEXT, &n) < 0 ||
                            memcmp(ids, reference[i].ids, n * sizeof(*ids)) != 0)
                                (*out)++;
                }
        return NULL;
}

static void test_threads(void **state) {
        pthread_t th[THREADS];
        int32_t errors[THREADS] = {0};

        need_clip();
        for (int i = 0; i < THREADS; i++)
                assert_int_equal(pthread_create(&th[i], NULL, encode_many, &errors[i]), 0);
        for (int i = 0; i < THREADS; i++) {
                assert_int_equal(pthread_join(th[i], NULL), 0);
                assert_int_equal(errors[i], 0);
        }
}

/* Loading and a 300-token prompt: printed; the bounds only catch a
 * blow-up, even under valgrind. */
static void test_timing(void **state) {
        gh_tokenizer *t = NULL;
        char prompt[4096] = "";

        need_clip();
        gh_prompt_tokens *p = calloc(1, sizeof(*p));
        double a = now_ms();
        assert_int_equal(gh_tokenizer_new(clip_vocab.data, clip_vocab.len, clip_merges.data, clip_merges.len, &t, err,
                                          sizeof(err)),
                         0);
        double load = now_ms() - a;
        for (int i = 0; strlen(prompt) < 1500; i++)
                strcat(prompt, i % 3 ? "a photo of an astronaut riding a horse, "
                                     : "(highly detailed:1.2), [blurry], ");
        a = now_ms();
        assert_int_equal(gh_prompt_tokenize(t, prompt, p, err, sizeof(err)), 0);
        double tokenize = now_ms() - a;
        print_message("load %.1f ms, %u tokens in %.3f ms\n", load, p->n_tokens, tokenize);
        assert_true(p->n_tokens >= 300);
        assert_true(load < 20000);
        assert_true(tokenize < 200);
        gh_tokenizer_free(t);
        free(p);
}

/* ---- small vocabularies ------------------------------------------------ */

/* Python merges, while any pair has a rank, every occurrence of the pair
 * of lowest rank, left to right; pairs a merge makes wait for that. */
static void test_bpe_order(void **state) {
        const char *extra[] = {"aa", "aa</w>", "aaaa</w>", "ab", "aba", NULL};
        gh_tokenizer *t = tiny(extra, "#version: 0.2\na a\na a</w>\naa aa</w>\n\nab a\na b\n");

        /* (a a a a</w>): a a at 0 (not 1, overlapping), then a a</w>. */
        expect_prompt(t, "aaaa", "aaaa</w>");
        expect_prompt(t, "aaa", "aa a</w>");
        expect_prompt(t, "a", "a</w>");
        /* "a b" merges at 0 and 2 before "ab a" (a lower rank) may. */
        expect_prompt(t, "ababab", "ab aba b</w>");
        expect_prompt(t, "abab", "aba b</w>");
        /* Symbols without a token: EOS (HF's unk). */
        gh_tokenizer_free(t);
        t = tiny((const char *[]) {NULL}, "");
        expect_prompt(t, "ok", "o k</w>");
        gh_tokenizer_free(t);
        const char *vocab = "{\"<|startoftext|>\": 0, \"<|endoftext|>\": 1, \"a</w>\": 2}";
        assert_int_equal(gh_tokenizer_new(vocab, strlen(vocab), NULL, 0, &t, err, sizeof(err)), 0);
        assert_int_equal(gh_tokenizer_comma(t), -1);
        int32_t ids[8];
        size_t n;
        assert_int_equal(gh_tokenizer_encode(t, "a b a", ids, 8, &n), 0);
        assert_int_equal(n, 3);
        assert_true(ids[0] == 2 && ids[1] == 1 && ids[2] == 2);
        gh_tokenizer_free(t);
}

/* The process's shared tokenizers: the same bytes give the same one, a
 * copy of them at another address too; one byte more gives another; the
 * least recently used free entry goes when the cache is full; with every
 * entry held, a new one is the caller's alone; malformed files are
 * refused as gh_tokenizer_new() refuses them, and nothing is kept. */
static void test_cache(void **state) {
        const char *merges = "#version: 0.2\na a\na a</w>\n"; /* less its last line: no "aa</w>" */
        char *vocab = tiny_vocab((const char *[]) {"aa", "aa</w>", NULL}), *again = strdup(vocab);
        const gh_tokenizer *t[GH_TOKCACHE_MAX + 2], *u, *v;
        size_t len = strlen(vocab);
        unsigned before = gh_tokcache_size();

        assert_int_equal(gh_tokcache_get(vocab, len, merges, strlen(merges), &t[0], err, sizeof(err)), 0);
        assert_int_equal(gh_tokcache_get(again, len, merges, strlen(merges), &u, err, sizeof(err)), 0);
        assert_ptr_equal(t[0], u);
        expect_prompt(u, "aa", "aa</w>");
        gh_tokcache_put(u);
        /* another merges file: another tokenizer, which does not merge */
        assert_int_equal(gh_tokcache_get(vocab, len, merges, strlen(merges) - 8, &v, err, sizeof(err)), 0);
        assert_ptr_not_equal(v, t[0]);
        expect_prompt(v, "aa", "a a</w>");
        gh_tokcache_put(v);
        assert_int_equal(gh_tokcache_get("{}", 2, "", 0, &u, err, sizeof(err)), -EINVAL);
        assert_err("no tokens");

        /* t[0] and five more, held (vocabularies with one more token each): the
         * free entry of v goes to t[3], and t[4] and t[5] are not kept */
        char *vs[GH_TOKCACHE_MAX + 2];
        for (int i = 1; i < GH_TOKCACHE_MAX + 2; i++) {
                char tok[16];
                snprintf(tok, sizeof(tok), "b%d</w>", i);
                vs[i] = tiny_vocab((const char *[]) {"aa", "aa</w>", tok, NULL});
                assert_int_equal(gh_tokcache_get(vs[i], strlen(vs[i]), merges, strlen(merges), &t[i], err, sizeof(err)),
                                 0);
        }
        assert_int_equal(gh_tokcache_size(), GH_TOKCACHE_MAX);
        /* every entry held: the last one is not kept, and a get of it again makes another */
        assert_int_equal(gh_tokcache_get(vs[GH_TOKCACHE_MAX + 1], strlen(vs[GH_TOKCACHE_MAX + 1]), merges,
                                         strlen(merges), &u, err, sizeof(err)),
                         0);
        assert_ptr_not_equal(u, t[GH_TOKCACHE_MAX + 1]);
        gh_tokcache_put(u);
        gh_tokcache_put(t[GH_TOKCACHE_MAX + 1]);
        /* the kept ones are still the same */
        assert_int_equal(gh_tokcache_get(vs[1], strlen(vs[1]), merges, strlen(merges), &u, err, sizeof(err)), 0);
        assert_ptr_equal(u, t[1]);
        gh_tokcache_put(u);
        for (int i = 0; i <= GH_TOKCACHE_MAX; i++)
                gh_tokcache_put(t[i]);
        /* all free now: a new one evicts the least recently used (t[0]'s);
         * t[1], asked for again just now, stays */
        assert_int_equal(gh_tokcache_get(vs[GH_TOKCACHE_MAX + 1], strlen(vs[GH_TOKCACHE_MAX + 1]), merges,
                                         strlen(merges), &u, err, sizeof(err)),
                         0);
        assert_int_equal(gh_tokcache_size(), GH_TOKCACHE_MAX);
        assert_int_equal(gh_tokcache_get(vs[1], strlen(vs[1]), merges, strlen(merges), &v, err, sizeof(err)), 0);
        assert_ptr_equal(v, t[1]);
        gh_tokcache_put(v);
        gh_tokcache_put(u);
        assert_true(before <= GH_TOKCACHE_MAX);
        for (int i = 1; i < GH_TOKCACHE_MAX + 2; i++)
                free(vs[i]);
        free(vocab);
        free(again);
}

static void test_bad_vocab(void **state) {
        expect_bad_vocab("", -EINVAL, "vocab.json: empty");
        expect_bad(NULL, 0, NULL, 0, -EINVAL, "vocab.json: empty");
        expect_bad_vocab("{\"<|startoftext|>\": 0,", -EINVAL, "truncated");
        expect_bad_vocab("{\"a\" 0}", -EINVAL, "vocab.json: bad JSON at byte");
        expect_bad_vocab("{\"a\": 0 \"b\": 1}", -EINVAL, "bad JSON");
        expect_bad_vocab("{\"a\": 0,}", -EINVAL, "bad JSON");
        expect_bad_vocab("{\"a\": 0} x", -EINVAL, "bad JSON at byte 9");
        expect_bad("{\"a\": 0}\0x", 10, "", 0, -EINVAL, "data after the JSON object at byte 8");
        expect_bad_vocab("[\"a\"]", -EINVAL, "not a JSON object");
        expect_bad_vocab("{}", -EINVAL, "no tokens");
        expect_bad_vocab("{\"a\": {\"b\": {\"c\": {\"d\": {}}}}}", -EINVAL, "bad JSON");
        expect_bad_vocab("{\"a\": 0, \"b\": 1.5}", -EINVAL, "the id of \"b\" is not an integer");
        expect_bad_vocab("{\"a\": 0, \"b\": \"1\"}", -EINVAL, "not an integer");
        expect_bad_vocab("{\"a\": 0, \"b\": true}", -EINVAL, "not an integer");
        expect_bad_vocab("{\"a\": 0, \"b\": -1}", -EINVAL, "id -1 of \"b\" is out of range 0..1");
        expect_bad_vocab("{\"a\": 0, \"b\": 2}", -EINVAL, "out of range 0..1");
        expect_bad_vocab("{\"a\": 0, \"b\": 18446744073709551615}", -EINVAL, "out of range");
        expect_bad_vocab("{\"a\": 0, \"b\": 0}", -EINVAL, "id 0 is given to both \"a\" and \"b\"");
        expect_bad_vocab("{\"a\": 0, \"a\": 1}", -EINVAL, "out of range"); /* json-c: the last one wins */
        expect_bad_vocab("{\"\": 0}", -EINVAL, "an empty token");
        expect_bad_vocab("{\"a\xff\": 0}", -EINVAL, "bad JSON");
        expect_bad_vocab("{\"<|startoftext|>\": 0, \"a\": 1}", -EINVAL, "vocab.json: no <|endoftext|>");
        expect_bad_vocab("{\"<|endoftext|>\": 0}", -EINVAL, "vocab.json: no <|startoftext|>");

        /* Limits: a token of 1025 bytes, 64 MiB + 1, 1000001 tokens. */
        char *big = malloc(GH_TOK_FILE_MAX + 2);
        assert_non_null(big);
        snprintf(big, 16, "{\"");
        memset(big + 2, 'x', GH_TOK_TOKEN_MAX + 1);
        strcpy(big + 2 + GH_TOK_TOKEN_MAX + 1, "\": 0}");
        expect_bad_vocab(big, -E2BIG, "longer than 1024 bytes");
        big[2 + GH_TOK_TOKEN_MAX] = '"';
        strcpy(big + 2 + GH_TOK_TOKEN_MAX + 1, ": 0, \"<|startoftext|>\": 1, \"<|endoftext|>\": 2}");
        gh_tokenizer *t = NULL;
        assert_int_equal(gh_tokenizer_new(big, strlen(big), "", 0, &t, err, sizeof(err)), 0);
        gh_tokenizer_free(t);
        memset(big, ' ', GH_TOK_FILE_MAX + 1);
        big[0] = '{';
        big[GH_TOK_FILE_MAX] = '}';
        expect_bad(big, GH_TOK_FILE_MAX + 1, "", 0, -E2BIG, "vocab.json: 67108865 bytes, more than 67108864");
        size_t n = 0;
        n += (size_t) sprintf(big + n, "{");
        for (int i = 0; i <= GH_TOK_VOCAB_MAX; i++)
                n += (size_t) sprintf(big + n, "%s\"%x\":%d", i ? "," : "", i, i);
        n += (size_t) sprintf(big + n, "}");
        expect_bad(big, n, "", 0, -E2BIG, "1000001 tokens, more than 1000000");
        free(big);
}

static void test_bad_merges(void **state) {
        const char *extra[] = {"ab", "abc</w>", NULL};
        char *lines = malloc(GH_TOK_FILE_MAX + 2);

        expect_bad_merges(extra, "#version: 0.2\na b\nab\n", -EINVAL,
                          "merges.txt line 3: expected two tokens, found 1");
        expect_bad_merges(extra, "a b c\n", -EINVAL, "merges.txt line 1: expected two tokens, found 3");
        expect_bad_merges(extra, "a b\n\nq zz\n", -EINVAL, "merges.txt line 3: token \"zz\" is not in vocab.json");
        expect_bad_merges(extra, "a c\n", -EINVAL, "line 1: merged token \"ac\" is not in vocab.json");
        expect_bad_merges(extra, "a b\nab c</w>\na  b\n", -EINVAL, "line 3: \"a b\" is a duplicate");
        expect_bad_merges(extra, "a\xff b\n", -EINVAL, "token \"a\\xff\" is not in vocab.json");
        /* "#version" only as the first line. */
        expect_bad_merges(extra, "a b\n#version: 0.2\n", -EINVAL, "line 2: token \"#version:\" is not in vocab.json");

        /* Limits: a token of 1025 bytes, 64 MiB + 1, 1000002 lines. */
        assert_non_null(lines);
        memset(lines, 'x', GH_TOK_TOKEN_MAX + 1);
        strcpy(lines + GH_TOK_TOKEN_MAX + 1, " b\n");
        expect_bad_merges(extra, lines, -E2BIG, "merges.txt line 1: token \"xxx");
        assert_err("longer than 1024 bytes");
        memset(lines, '\n', GH_TOK_FILE_MAX + 1);
        char *vocab = tiny_vocab(extra);
        expect_bad(vocab, strlen(vocab), "a b\0c\n", 6, -EINVAL, "token \"b\\x00c\" is not in vocab.json");
        expect_bad(vocab, strlen(vocab), lines, GH_TOK_FILE_MAX + 1, -E2BIG, "merges.txt: 67108865 bytes");
        expect_bad(vocab, strlen(vocab), lines, GH_TOK_VOCAB_MAX + 1, -E2BIG, "1000002 lines, more than 1000001");
        /* Blank lines are fine. */
        gh_tokenizer *t = NULL;
        assert_int_equal(gh_tokenizer_new(vocab, strlen(vocab), lines, GH_TOK_VOCAB_MAX, &t, err, sizeof(err)), 0);
        gh_tokenizer_free(t);
        free(vocab);
        free(lines);
}

static void test_bad_prompt(void **state) {
        gh_tokenizer *t = tiny((const char *[]) {NULL}, "");
        int32_t ids[16];
        size_t n;

        expect_prompt_error(t, "a\xff", -EINVAL, "prompt: invalid UTF-8 at byte 1");
        expect_prompt_error(t, "ab\xc3", -EINVAL, "at byte 2");
        expect_prompt_error(t, "\xc0\xaf", -EINVAL, "at byte 0");         /* overlong */
        expect_prompt_error(t, "x\xed\xa0\x80", -EINVAL, "at byte 1");    /* surrogate */
        expect_prompt_error(t, "\xf4\x90\x80\x80", -EINVAL, "at byte 0"); /* past U+10FFFF */
        assert_int_equal(gh_tokenizer_encode(t, "a\xff", ids, 16, &n), -EINVAL);
        assert_int_equal(gh_tokenizer_encode(t, "abcdefghijklmnopq", ids, 16, &n), -E2BIG);
        assert_int_equal(gh_tokenizer_encode(t, "abcdefghijklmnop", ids, 16, &n), 0);
        assert_int_equal(n, 16);

        /* 600 tokens fit, 601 do not; neither do 9 chunks of BREAK. */
        char *prompt = malloc(GH_PROMPT_MAX + 2);
        assert_non_null(prompt);
        memset(prompt, 'x', 600);
        prompt[600] = 0;
        expect_prompt(t, "BREAK BREAK BREAK BREAK BREAK BREAK BREAK BREAK", " | | | | | | |");
        expect_prompt_error(t, "BREAK BREAK BREAK BREAK BREAK BREAK BREAK BREAK BREAK", -E2BIG, "more than 8 chunks");
        gh_prompt_tokens *p = calloc(1, sizeof(*p));
        assert_int_equal(gh_prompt_tokenize(t, prompt, p, err, sizeof(err)), 0);
        assert_int_equal(p->n_chunks, 8);
        strcpy(prompt + 600, "x");
        expect_prompt_error(t, prompt, -E2BIG, "more than 8 chunks of 75 tokens");
        /* The prompt's length, brackets, weights. */
        memset(prompt, ' ', GH_PROMPT_MAX + 1);
        prompt[GH_PROMPT_MAX + 1] = 0;
        expect_prompt_error(t, prompt, -E2BIG, "longer than 65536 bytes");
        prompt[GH_PROMPT_MAX] = 0;
        assert_int_equal(gh_prompt_tokenize(t, prompt, p, err, sizeof(err)), 0);
        memset(prompt, '(', 256);
        strcpy(prompt + 256, "a");
        assert_int_equal(gh_prompt_tokenize(t, prompt, p, err, sizeof(err)), 0);
        assert_true(p->weights[0][1] > 3.9e10f && p->weights[0][1] < 4.0e10f); /* 1.1^256 */
        memset(prompt, '[', 128);
        memset(prompt + 128, '(', 128);
        strcpy(prompt + 256, "a");
        expect_prompt(t, prompt, "a</w>");
        strcpy(prompt + 256, "(a");
        expect_prompt_error(t, prompt, -E2BIG, "more than 256 brackets open at once");
        expect_prompt_error(t, "(a:1000000000000000000000000000000000000000)", -EINVAL,
                            "weight \"1000000000000000000000000000000000000000\" is out of range");
        expect_prompt_error(t, "((a:100000000000000000000):100000000000000000000)", -EINVAL,
                            "a weight is out of range");
        free(prompt);
        free(p);
        gh_tokenizer_free(t);
}

/* A1111's quirks, on byte tokens. */
static void test_syntax_quirks(void **state) {
        gh_tokenizer *t = tiny((const char *[]) {NULL}, "");

        expect_prompt(t, "(a)(b)", "a@1.1 b</w>@1.1");
        expect_prompt(t, "(a) (b)", "a</w>@1.1 b</w>@1.1");
        expect_prompt(t, "(a:1.21)((b))", "a</w>@1.21 b</w>@1.21");   /* 1.21 != 1.1 * 1.1 */
        expect_prompt(t, "[a](b:0.9090909090909091)", "a@0.909091 b</w>@0.909091"); /* repr(1 / 1.1) */
        expect_prompt(t, "(a:0)(b:0)", "a@0 b</w>@0");
        expect_prompt(t, "(a:+.5)", "a</w>@0.5");
        expect_prompt(t, "(BREAK:-1)", "b r e a k</w>");          /* split first, then -1 * -1 */
        expect_prompt(t, "x(BRE\\AK:-1)y", "x</w> | y</w>"); /* joined "BREAK" of weight -1 */
        expect_prompt(t, "a \\BREAK b", "a</w> | b</w>");
        expect_prompt(t, "a_BREAK b", "a</w> _</w> b r e a k</w> b</w>");
        expect_prompt(t, "a\xe3\x80\x80" "BREAK\xc2\xa0" "b", "a</w> | b</w>");
        expect_prompt(t, "x:1.5) y", "x</w> :</w> 1</w> .</w> 5</w> )</w> y</w>");
        gh_tokenizer_free(t);
}

static int setup(void **state) {
        const char *dir = getenv("GH_CLIP_VOCAB_DIR");

        if (!dir || !*dir || !read_file(dir, "vocab.json", &clip_vocab) ||
            !read_file(dir, "merges.txt", &clip_merges)) {
                print_message("GH_CLIP_VOCAB_DIR unset or without vocab.json and merges.txt: skipping its tests\n");
                return 0;
        }
        clip_dir = strdup(dir);
        if (gh_tokenizer_new(clip_vocab.data, clip_vocab.len, clip_merges.data, clip_merges.len, &clip, err,
                             sizeof(err)) < 0) {
                print_error("%s: %s\n", dir, err);
                return -1;
        }
        return 0;
}

static int teardown(void **state) {
        gh_tokenizer_free(clip);
        free(clip_vocab.data);
        free(clip_merges.data);
        free(clip_dir);
        return 0;
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_vectors),     cmocka_unit_test(test_reference),
                cmocka_unit_test(test_padding),     cmocka_unit_test(test_weights),
                cmocka_unit_test(test_break),       cmocka_unit_test(test_chunks),
                cmocka_unit_test(test_long_prompt), cmocka_unit_test(test_formats),
                cmocka_unit_test(test_threads),     cmocka_unit_test(test_timing),
                cmocka_unit_test(test_bpe_order),   cmocka_unit_test(test_bad_vocab),
                cmocka_unit_test(test_bad_merges),  cmocka_unit_test(test_bad_prompt),
                cmocka_unit_test(test_syntax_quirks), cmocka_unit_test(test_cache),
        };

        return cmocka_run_group_tests(tests, setup, teardown);
}
