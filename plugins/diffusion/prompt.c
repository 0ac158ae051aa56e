/* A1111 prompts on the CLIP tokenizer. See prompt.h.
 *
 * parse_prompt_attention(), step by step as in Python, so that its quirks
 * come out the same: the prompt is read as a list of pieces (text, weight)
 * with stacks of the positions where "(" and "[" were open; a closing
 * bracket multiplies the weight of every piece from its opening position
 * to the end, in double precision and in the same order as Python. Text is
 * split at BREAK (Python's re \s*\bBREAK\b\s*: pcre2 for the word and its
 * Unicode \b, the spaces by hand) with a piece "BREAK" of weight -1
 * between the parts. Pieces of equal weight in a row are then joined, and
 * a joined piece that reads "BREAK" with weight exactly -1 ends the chunk:
 * a BREAK inside brackets is multiplied like any text and so becomes the
 * word "break".
 *
 * Differences from A1111: a weight is [+-]?[.0-9]+ (Python's \d also
 * takes other decimal digits); weights that are not finite as a float
 * (from a weight like 1e400 written out, or deep nesting) are refused;
 * brackets open at once are limited (GH_PROMPT_DEPTH_MAX), which also
 * bounds the work of multiplying at O(pieces * depth); and more than
 * GH_TOK_MAX_CHUNKS chunks are refused. */
#include <errno.h>
#include <float.h>
#include <locale.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "common/utf8.h"
#include "common/util.h"
#include "prompt.h"

#define ROUND_MULTIPLIER 1.1
#define SQUARE_MULTIPLIER (1 / 1.1)
#define COMMA_BACKTRACK 20 /* A1111's opts.comma_padding_backtrack */
#define SHOW_MAX 32

/* The word of A1111's re_break, \s*\bBREAK\b\s*: the spaces around it are
 * taken by hand, as a leading \s* would make pcre2 rescan a run of spaces
 * from each of its bytes. */
static const char BREAK_PATTERN[] = "\\bBREAK\\b";
static const char BREAK[] = "BREAK";

typedef struct piece {
        size_t off, len; /* text in the prompt; a marker's is BREAK */
        double weight;
        bool marker;     /* A1111's ["BREAK", -1] */
} piece;

typedef struct parser {
        const char *s;
        size_t len;
        piece *pieces;
        size_t n, cap;
        size_t round[GH_PROMPT_DEPTH_MAX], square[GH_PROMPT_DEPTH_MAX];
        size_t n_round, n_square;
        pcre2_code *brk;
        pcre2_match_data *md;
        locale_t c_locale;
        char *err;
        size_t err_size;
} parser;

typedef struct chunker {
        const gh_tokenizer *t;
        gh_prompt_tokens *ret;
        int32_t ids[GH_TOK_CHUNK];
        double weights[GH_TOK_CHUNK];
        size_t n;
        ssize_t last_comma;
        char *err;
        size_t err_size;
} chunker;

#define FAIL(r, ...) (gh_set_error(err, err_size, __VA_ARGS__), (r))
#define PFAIL(p, r, ...) (gh_set_error((p)->err, (p)->err_size, __VA_ARGS__), (r))

/* At most SHOW_MAX bytes of |s| for a message, non-printable bytes as '?'. */
static const char *show(char *buf, const char *s, size_t len) {
        size_t n = len < SHOW_MAX ? len : SHOW_MAX;

        for (size_t i = 0; i < n; i++)
                buf[i] = s[i] >= 0x20 && s[i] < 0x7f && s[i] != '"' ? s[i] : '?';
        strcpy(buf + n, len > n ? "..." : "");
        return buf;
}
#define SHOW(s, len) show((char[SHOW_MAX + 4]) {0}, (s), (len))

/* ---- parsing ----------------------------------------------------------- */

static int add_piece(parser *p, size_t off, size_t len, bool marker) {
        if (p->n == p->cap) {
                size_t cap = p->cap ? 2 * p->cap : 64;
                piece *a = realloc(p->pieces, cap * sizeof(*a));
                if (!a)
                        return -ENOMEM;
                p->pieces = a;
                p->cap = cap;
        }
        p->pieces[p->n++] = (piece) {off, len, marker ? -1.0 : 1.0, marker};
        return 0;
}

/* The bytes of Python whitespace (str.isspace()) at s[i], or 0. */
static size_t py_space(const char *s, size_t len, size_t i) {
        const unsigned char *u = (const unsigned char *) s + i;
        size_t left = len - i;

        if ((u[0] >= 0x09 && u[0] <= 0x0D) || (u[0] >= 0x1C && u[0] <= 0x20))
                return 1;
        if (left >= 2 && u[0] == 0xC2 && (u[1] == 0x85 || u[1] == 0xA0))
                return 2;
        if (left < 3)
                return 0;
        if ((u[0] == 0xE1 && u[1] == 0x9A && u[2] == 0x80) || (u[0] == 0xE3 && u[1] == 0x80 && u[2] == 0x80) ||
            (u[0] == 0xE2 && u[1] == 0x81 && u[2] == 0x9F))
                return 3;
        if (u[0] == 0xE2 && u[1] == 0x80 && (u[2] <= 0x8A || u[2] == 0xA8 || u[2] == 0xA9 || u[2] == 0xAF))
                return 3;
        return 0;
}

static size_t skip_space(const char *s, size_t len, size_t i) {
        for (size_t k; i < len && (k = py_space(s, len, i)) > 0;)
                i += k;
        return i;
}

/* The bytes of Python whitespace that ends at s[end] (end > 0), or 0. */
static size_t py_space_before(const char *s, size_t end) {
        size_t i = end - 1;

        while (i > 0 && end - i < 3 && ((unsigned char) s[i] & 0xC0) == 0x80)
                i--;
        return py_space(s, end, i) == end - i ? end - i : 0;
}

/* Text from the prompt: its parts between A1111's BREAKs, with markers
 * between. */
static int add_text(parser *p, size_t off, size_t len) {
        const char *s = p->s + off;
        size_t from = 0, k;
        int r;

        for (;;) {
                int rc = pcre2_match(p->brk, (PCRE2_SPTR) s, len, from, PCRE2_NO_UTF_CHECK, p->md, NULL);
                if (rc == PCRE2_ERROR_NOMATCH)
                        break;
                if (rc < 0)
                        return rc == PCRE2_ERROR_NOMEMORY ? -ENOMEM : -EIO;
                const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(p->md);
                size_t start = ov[0];
                while (start > from && (k = py_space_before(s, start)) > 0)
                        start -= k;
                r = add_piece(p, off + from, start - from, false);
                if (r >= 0)
                        r = add_piece(p, 0, 0, true);
                if (r < 0)
                        return r;
                from = skip_space(s, len, ov[1]);
        }
        return add_piece(p, off + from, len - from, false);
}

static void multiply(parser *p, size_t start, double m) {
        for (size_t i = start; i < p->n; i++)
                p->pieces[i].weight *= m;
}

static int open_bracket(parser *p, size_t *stack, size_t *n) {
        if (p->n_round + p->n_square >= GH_PROMPT_DEPTH_MAX)
                return PFAIL(p, -E2BIG, "prompt: more than %d brackets open at once", GH_PROMPT_DEPTH_MAX);
        stack[(*n)++] = p->n;
        return 0;
}

/* ":\s*([+-]?[.\d]+)\s*\)" at s[i] (s[i] == ':'): its end (0 if no match)
 * and the number's text into |*ret_num|, |*ret_num_len|. */
static size_t weight_syntax(const char *s, size_t len, size_t i, size_t *ret_num, size_t *ret_num_len) {
        size_t num = skip_space(s, len, i + 1), j = num;

        if (j < len && (s[j] == '+' || s[j] == '-'))
                j++;
        size_t digits = j;
        while (j < len && (s[j] == '.' || (s[j] >= '0' && s[j] <= '9')))
                j++;
        if (j == digits)
                return 0;
        *ret_num = num;
        *ret_num_len = j - num;
        j = skip_space(s, len, j);
        return j < len && s[j] == ')' ? j + 1 : 0;
}

/* float() of the weight's text: a number, finite. */
static int weight_value(parser *p, size_t num, size_t num_len, double *ret) {
        char buf[64], *end;

        if (num_len >= sizeof(buf))
                return PFAIL(p, -EINVAL, "prompt: weight \"%s\" is too long", SHOW(p->s + num, num_len));
        memcpy(buf, p->s + num, num_len);
        buf[num_len] = 0;
        double w = strtod_l(buf, &end, p->c_locale);
        if (end != buf + num_len)
                return PFAIL(p, -EINVAL, "prompt: weight \"%s\" is not a number", buf);
        if (!isfinite(w) || fabs(w) > FLT_MAX)
                return PFAIL(p, -EINVAL, "prompt: weight \"%s\" is out of range", buf);
        *ret = w;
        return 0;
}

/* One token of A1111's re_attention at s[*pos]. */
static int parse_one(parser *p, size_t *pos) {
        const char *s = p->s;
        size_t i = *pos, num = 0, num_len = 0, end;
        double w;
        int r;

        switch (s[i]) {
        case '\\':
                *pos = i + 1;
                if (i + 1 < p->len && strchr("()[]\\", s[i + 1])) {
                        *pos = i + 2;
                        return add_piece(p, i + 1, 1, false);
                }
                return add_piece(p, i + 1, 0, false);
        case '(':
                *pos = i + 1;
                return open_bracket(p, p->round, &p->n_round);
        case '[':
                *pos = i + 1;
                return open_bracket(p, p->square, &p->n_square);
        case ':':
                end = weight_syntax(s, p->len, i, &num, &num_len);
                *pos = end ? end : i + 1;
                if (end == 0 || p->n_round == 0)
                        return add_text(p, i, *pos - i);
                r = weight_value(p, num, num_len, &w);
                if (r >= 0)
                        multiply(p, p->round[--p->n_round], w);
                return r;
        case ')':
        case ']':
                *pos = i + 1;
                if (s[i] == ')' && p->n_round > 0)
                        multiply(p, p->round[--p->n_round], ROUND_MULTIPLIER);
                else if (s[i] == ']' && p->n_square > 0)
                        multiply(p, p->square[--p->n_square], SQUARE_MULTIPLIER);
                else
                        return add_text(p, i, 1);
                return 0;
        default:
                end = i + strcspn(s + i, "\\()[]:");
                *pos = end;
                return add_text(p, i, end - i);
        }
}

/* The prompt into p->pieces, brackets applied, weights checked. */
static int parse(parser *p) {
        int r;

        for (size_t pos = 0; pos < p->len;) {
                r = parse_one(p, &pos);
                if (r < 0)
                        return r;
        }
        for (size_t i = 0; i < p->n_round; i++)
                multiply(p, p->round[i], ROUND_MULTIPLIER);
        for (size_t i = 0; i < p->n_square; i++)
                multiply(p, p->square[i], SQUARE_MULTIPLIER);
        if (p->n == 0 && (r = add_piece(p, 0, 0, false)) < 0)
                return r;
        for (size_t i = 0; i < p->n; i++)
                if (!isfinite(p->pieces[i].weight) || fabs(p->pieces[i].weight) > FLT_MAX)
                        return PFAIL(p, -EINVAL, "prompt: a weight is out of range (brackets nested too deep?)");
        return 0;
}

static int parser_init(parser *p, const char *s, size_t len, char *err, size_t err_size) {
        PCRE2_SIZE offset;
        int code;

        *p = (parser) {.s = s, .len = len, .err = err, .err_size = err_size};
        p->brk = pcre2_compile((PCRE2_SPTR) BREAK_PATTERN, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &code,
                               &offset, NULL);
        if (!p->brk)
                return code == PCRE2_ERROR_NOMEMORY ? -ENOMEM : -EIO;
        p->md = pcre2_match_data_create_from_pattern(p->brk, NULL);
        p->c_locale = newlocale(LC_NUMERIC_MASK, "C", (locale_t) 0);
        return p->md && p->c_locale ? 0 : -ENOMEM;
}

static void parser_done(parser *p) {
        free(p->pieces);
        pcre2_match_data_free(p->md);
        pcre2_code_free(p->brk);
        if (p->c_locale)
                freelocale(p->c_locale);
}

/* ---- chunks ------------------------------------------------------------ */

/* The chunk so far as BOS, tokens, EOS padding, EOS; a new one begins. */
static int next_chunk(chunker *c) {
        gh_prompt_tokens *ret = c->ret;
        int32_t eos = gh_tokenizer_eos(c->t);

        if (ret->n_chunks == GH_TOK_MAX_CHUNKS)
                return gh_set_error(c->err, c->err_size, "prompt: more than %d chunks of %d tokens",
                                    GH_TOK_MAX_CHUNKS, GH_TOK_CHUNK),
                       -E2BIG;
        int32_t *ids = ret->ids[ret->n_chunks];
        float *w = ret->weights[ret->n_chunks];
        ids[0] = gh_tokenizer_bos(c->t);
        w[0] = 1.0f;
        for (size_t i = 0; i < GH_TOK_CHUNK; i++) {
                ids[i + 1] = i < c->n ? c->ids[i] : eos;
                w[i + 1] = i < c->n ? (float) c->weights[i] : 1.0f;
        }
        ids[GH_TOK_CONTEXT - 1] = eos;
        w[GH_TOK_CONTEXT - 1] = 1.0f;
        ret->n_chunks++;
        c->n = 0;
        c->last_comma = -1;
        return 0;
}

/* One token, as tokenize_line()'s loop: a full chunk ends, after its last
 * comma if that is at most COMMA_BACKTRACK tokens back. */
static int add_token(chunker *c, int32_t id, double weight) {
        int r;

        if (id == gh_tokenizer_comma(c->t)) {
                c->last_comma = (ssize_t) c->n;
        } else if (c->n == GH_TOK_CHUNK && c->last_comma != -1 &&
                   GH_TOK_CHUNK - (size_t) c->last_comma <= COMMA_BACKTRACK) {
                size_t keep = (size_t) c->last_comma + 1, moved = c->n - keep;
                int32_t ids[GH_TOK_CHUNK];
                double weights[GH_TOK_CHUNK];

                memcpy(ids, c->ids + keep, moved * sizeof(*ids));
                memcpy(weights, c->weights + keep, moved * sizeof(*weights));
                c->n = keep;
                r = next_chunk(c);
                if (r < 0)
                        return r;
                memcpy(c->ids, ids, moved * sizeof(*ids));
                memcpy(c->weights, weights, moved * sizeof(*weights));
                c->n = moved;
        }
        if (c->n == GH_TOK_CHUNK && (r = next_chunk(c)) < 0)
                return r;
        c->ids[c->n] = id;
        c->weights[c->n++] = weight;
        c->ret->n_tokens++;
        return 0;
}

/* One joined piece: a BREAK, or its text tokenized into the chunks. */
static int add_segment(chunker *c, const char *text, size_t len, double weight) {
        int32_t ids[GH_TOK_MAX_CHUNKS * GH_TOK_CHUNK + 1];
        size_t n;
        int r;

        if (len == strlen(BREAK) && memcmp(text, BREAK, len) == 0 && weight == -1.0)
                return next_chunk(c);
        r = gh_tokenizer_encode(c->t, text, ids, ELEMENTSOF(ids), &n);
        if (r == -E2BIG)
                return gh_set_error(c->err, c->err_size, "prompt: more than %d chunks of %d tokens",
                                    GH_TOK_MAX_CHUNKS, GH_TOK_CHUNK),
                       r;
        for (size_t i = 0; i < n && r >= 0; i++)
                r = add_token(c, ids[i], weight);
        return r;
}

/* Runs of pieces of equal weight, joined, into the chunks. Joined text is
 * never longer than the prompt: a marker stands for a "BREAK" in it, an
 * escape for two bytes. */
static int add_pieces(chunker *c, const parser *p) {
        _cleanup_free_ char *text = malloc(p->len + 1);
        int r;

        if (!text)
                return -ENOMEM;
        for (size_t i = 0, j; i < p->n; i = j) {
                size_t len = 0;

                for (j = i; j < p->n && p->pieces[j].weight == p->pieces[i].weight; j++) {
                        const piece *q = &p->pieces[j];
                        const char *from = q->marker ? BREAK : p->s + q->off;
                        size_t n = q->marker ? strlen(BREAK) : q->len;
                        memcpy(text + len, from, n);
                        len += n;
                }
                text[len] = 0;
                r = add_segment(c, text, len, p->pieces[i].weight);
                if (r < 0)
                        return r;
        }
        return 0;
}

int gh_prompt_tokenize(const gh_tokenizer *t, const char *prompt, gh_prompt_tokens *ret, char *err,
                       size_t err_size) {
        _cleanup_(parser_done) parser p = {0};
        size_t len = strnlen(prompt, GH_PROMPT_MAX + 1), bad;
        chunker c = {.t = t, .ret = ret, .last_comma = -1, .err = err, .err_size = err_size};
        int r;

        if (len > GH_PROMPT_MAX)
                return FAIL(-E2BIG, "prompt: longer than %d bytes", GH_PROMPT_MAX);
        if (!gh_utf8_valid(prompt, len, &bad))
                return FAIL(-EINVAL, "prompt: invalid UTF-8 at byte %zu", bad);
        ret->n_chunks = ret->n_tokens = 0;
        r = parser_init(&p, prompt, len, err, err_size);
        if (r >= 0)
                r = parse(&p);
        if (r >= 0)
                r = add_pieces(&c, &p);
        if (r >= 0 && (c.n > 0 || ret->n_chunks == 0))
                r = next_chunk(&c);
        if (r == -ENOMEM || r == -EIO)
                return FAIL(r, "prompt: %s", r == -ENOMEM ? "out of memory" : "pcre2 failed");
        return r;
}
