/* CLIP's byte-level BPE tokenizer. See tokenizer.h.
 *
 * Loading. vocab.json is parsed with json-c (strict, UTF-8 checked, depth
 * limited); its ids must be exactly 0..N-1, so that token strings and ids
 * map one to one and BPE can run on ids: a merge "a b" becomes the pair
 * (id a, id b) -> (rank, id of "ab") in an open-addressing table, and the
 * tokens map to ids in another. The 256 byte characters (GPT-2's
 * bytes_to_unicode()) and the same with "</w>" are looked up once.
 *
 * Text cleanup, as openai's simple_tokenizer (basic_clean(),
 * whitespace_clean(), lower()) minus ftfy:
 *  - html.unescape() twice: &#NNN; &#xHH; (";" optional, Python's
 *    replacements of invalid references), and named references from a
 *    table of the HTML 4 entities, &apos; and the upper-case legacy ones:
 *    with ";", and the legacy (Latin-1) ones also without ";" or as the
 *    longest prefix of a longer name ("&ampx" is "&x"), as Python does.
 *    HTML5-only names ("&NotEqual;") stay as they are.
 *  - runs of Unicode White_Space become one space (the `regex` module's
 *    \s), then Python's whitespace (which adds U+001C..U+001F) is stripped
 *    from both ends.
 *  - lower(): the simple lower-case mappings of Python 3.11's Unicode 14
 *    (the table below was generated from str.lower()), U+0130 to "i" and
 *    U+0307, and U+03A3 to U+03C2 in Python's Final_Sigma context (with
 *    pcre2's Cased and Case_Ignorable properties).
 *  Not done: ftfy.fix_text() (mojibake repair, NFC normalization, curly
 *  quotes to straight ones, ligatures and full-width forms to ASCII), so
 *  text that ftfy would change can get other tokens than openai's.
 *
 * Pre-tokens: CLIP's pattern with pcre2 (UTF, UCP, caseless, as re.IGNORECASE
 * of the `regex` module), \s spelled out as White_Space. <|startoftext|> and
 * <|endoftext|> give BOS and EOS; any other pre-token goes through BPE, and
 * a symbol that is not in the vocabulary gives EOS (HF's unk_token).
 * pcre2's Unicode tables (Unicode 14 in pcre2 10.42) decide what is a
 * letter or a number: characters new in later versions, which a newer
 * `regex` module knows, can split differently.
 *
 * BPE: Python's loop merges, as long as any adjacent pair has a rank, every
 * occurrence (left to right, not overlapping) of the pair of lowest rank.
 * This does the same in O(n log n) with a heap of (rank, position): all
 * entries of the lowest rank are taken out together and merged left to
 * right where still valid; the pairs a merge makes are pushed for later
 * (they can never have the rank being merged). Scratch memory is per call,
 * so encoding is thread-safe and a long word costs no quadratic time. */
#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "common/utf8.h"
#include "common/util.h"
#include "common/quote.h"
#include "tokenizer.h"

#define JSON_DEPTH 4        /* vocab.json: one object of numbers */
#define SHOW_MAX 48         /* bytes of a token quoted in a message */
#define SHOW_BUF (SHOW_MAX * 4 + 4)
#define NAMED_MAX 32        /* html.unescape(): code points of a name */
#define DEAD INT32_MIN      /* a BPE symbol merged into the one before it */

static const char BOS[] = "<|startoftext|>";
static const char EOS[] = "<|endoftext|>";
static const char END_OF_WORD[] = "</w>";

/* Python's \s for str patterns of the `regex` module: White_Space. */
#define WHITE_SPACE                                   \
        "\\t\\n\\x0b\\x0c\\r \\x{85}\\x{a0}\\x{1680}" \
        "\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}\\x{205f}\\x{3000}"
/* U+0345 folds to a letter: with re.IGNORECASE, `regex` has it in no
 * class of the pattern, so it is skipped like a space. */
static const char CLIP_PATTERN[] = "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|"
                                   "[^" WHITE_SPACE "\\p{L}\\p{N}\\x{345}]+";

typedef struct merge {
        int32_t first, second, result;
} merge;

/* A slot of the pair table; first < 0: empty. */
typedef struct pair_slot {
        int32_t first, second;
        uint32_t rank;
} pair_slot;

struct gh_tokenizer {
        char *strings;          /* the tokens, each NUL-terminated, by id */
        uint32_t *offset;       /* id -> its token in strings */
        uint32_t *length;       /* id -> bytes of its token */
        size_t n_tokens;
        uint32_t *token_slots;  /* open addressing: id + 1, 0 empty */
        size_t token_mask;
        merge *merges;          /* by rank */
        size_t n_merges;
        pair_slot *pair_slots;
        size_t pair_mask;
        int32_t byte_id[256];   /* -1: not in the vocabulary */
        int32_t byte_end_id[256];
        int32_t bos, eos, comma;
        pcre2_code *pattern;    /* CLIP's pre-tokenizer */
        pcre2_code *cased, *case_ignorable; /* one code point of that property */
};

#define FAIL(r, ...) (gh_set_error(err, err_size, __VA_ARGS__), (r))

#define SHOW(s, len) gh_quote_bytes((char[SHOW_BUF]) {0}, SHOW_BUF, (s), (len), SHOW_MAX)

/* ---- UTF-8 ------------------------------------------------------------- */

/* The code point at |s| of valid UTF-8; its length into |*ret_n|. */
static uint32_t utf8_get(const char *s, size_t *ret_n) {
        const unsigned char *u = (const unsigned char *) s;

        if (u[0] < 0x80)
                return *ret_n = 1, u[0];
        if (u[0] < 0xE0)
                return *ret_n = 2, (uint32_t) (u[0] & 0x1F) << 6 | (u[1] & 0x3F);
        if (u[0] < 0xF0)
                return *ret_n = 3, (uint32_t) (u[0] & 0x0F) << 12 | (uint32_t) (u[1] & 0x3F) << 6 | (u[2] & 0x3F);
        *ret_n = 4;
        return (uint32_t) (u[0] & 0x07) << 18 | (uint32_t) (u[1] & 0x3F) << 12 | (uint32_t) (u[2] & 0x3F) << 6 |
               (u[3] & 0x3F);
}

/* The code point that ends before |s + end| (valid UTF-8, end > 0). */
static uint32_t utf8_get_before(const char *s, size_t end) {
        size_t i = end - 1, n;

        while (i > 0 && ((unsigned char) s[i] & 0xC0) == 0x80)
                i--;
        return utf8_get(s + i, &n);
}

static size_t utf8_size(uint32_t cp) {
        return cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
}

static size_t utf8_put(char *out, uint32_t cp) {
        if (cp < 0x80) {
                out[0] = (char) cp;
                return 1;
        }
        if (cp < 0x800) {
                out[0] = (char) (0xC0 | cp >> 6);
                out[1] = (char) (0x80 | (cp & 0x3F));
                return 2;
        }
        if (cp < 0x10000) {
                out[0] = (char) (0xE0 | cp >> 12);
                out[1] = (char) (0x80 | (cp >> 6 & 0x3F));
                out[2] = (char) (0x80 | (cp & 0x3F));
                return 3;
        }
        out[0] = (char) (0xF0 | cp >> 18);
        out[1] = (char) (0x80 | (cp >> 12 & 0x3F));
        out[2] = (char) (0x80 | (cp >> 6 & 0x3F));
        out[3] = (char) (0x80 | (cp & 0x3F));
        return 4;
}

/* ---- hashing ----------------------------------------------------------- */

static uint64_t hash_bytes(const char *s, size_t len) {
        uint64_t h = UINT64_C(0xcbf29ce484222325);

        for (size_t i = 0; i < len; i++)
                h = (h ^ (unsigned char) s[i]) * UINT64_C(0x100000001b3);
        return h ^ h >> 29;
}

static uint64_t hash_pair(int32_t a, int32_t b) {
        uint64_t x = (uint64_t) (uint32_t) a << 32 | (uint32_t) b;

        x = (x ^ x >> 30) * UINT64_C(0xbf58476d1ce4e5b9);
        x = (x ^ x >> 27) * UINT64_C(0x94d049bb133111eb);
        return x ^ x >> 31;
}

/* The smallest power of two that is at least 2 * n (and 16). */
static size_t table_size(size_t n) {
        size_t size = 16;

        while (size < 2 * n)
                size *= 2;
        return size;
}

/* The id of the token |s| (|len| bytes), or -1. */
static int32_t token_id(const gh_tokenizer *t, const char *s, size_t len) {
        for (size_t i = hash_bytes(s, len) & t->token_mask;; i = (i + 1) & t->token_mask) {
                uint32_t v = t->token_slots[i];
                if (v == 0)
                        return -1;
                if (t->length[v - 1] == len && memcmp(t->strings + t->offset[v - 1], s, len) == 0)
                        return (int32_t) (v - 1);
        }
}

/* Adds |id| to the token table; false if its token is there already. */
static bool token_add(gh_tokenizer *t, uint32_t id) {
        const char *s = t->strings + t->offset[id];
        size_t len = t->length[id];

        for (size_t i = hash_bytes(s, len) & t->token_mask;; i = (i + 1) & t->token_mask) {
                uint32_t v = t->token_slots[i];
                if (v == 0) {
                        t->token_slots[i] = id + 1;
                        return true;
                }
                if (t->length[v - 1] == len && memcmp(t->strings + t->offset[v - 1], s, len) == 0)
                        return false;
        }
}

/* The slot of the pair (a, b): its own or the empty one where it goes. */
static pair_slot *pair_find(const gh_tokenizer *t, int32_t a, int32_t b) {
        for (size_t i = hash_pair(a, b) & t->pair_mask;; i = (i + 1) & t->pair_mask) {
                pair_slot *p = &t->pair_slots[i];
                if (p->first < 0 || (p->first == a && p->second == b))
                        return p;
        }
}

/* ---- vocab.json -------------------------------------------------------- */

static inline void json_putp(json_object **o) {
        json_object_put(*o);
}
#define _cleanup_json_ _cleanup_(json_putp)

static bool json_space(char c) {
        return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static int parse_json(const char *text, size_t len, json_object **ret, char *err, size_t err_size) {
        json_tokener *tok = json_tokener_new_ex(JSON_DEPTH);
        json_object *o;

        if (!tok)
                return -ENOMEM;
        json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
        o = json_tokener_parse_ex(tok, text, (int) len);
        enum json_tokener_error e = json_tokener_get_error(tok);
        size_t end = json_tokener_get_parse_end(tok);
        json_tokener_free(tok);
        if (e == json_tokener_continue)
                return FAIL(-EINVAL, "vocab.json: truncated JSON");
        if (e != json_tokener_success || !o) {
                json_object_put(o);
                return FAIL(-EINVAL, "vocab.json: bad JSON at byte %zu: %s", end, json_tokener_error_desc(e));
        }
        while (end < len && json_space(text[end]))
                end++;
        if (end < len) {
                json_object_put(o);
                return FAIL(-EINVAL, "vocab.json: data after the JSON object at byte %zu", end);
        }
        *ret = o;
        return 0;
}

/* One member of vocab.json: its id into |*ret_id|, and its token as the
 * token of that id in |keys|. */
static int vocab_entry(const char *key, json_object *val, size_t n, const char **keys, uint32_t *ret_id,
                       char *err, size_t err_size) {
        size_t len = strlen(key);

        if (len == 0)
                return FAIL(-EINVAL, "vocab.json: an empty token");
        if (len > GH_TOK_TOKEN_MAX)
                return FAIL(-E2BIG, "vocab.json: token \"%s\" is longer than %d bytes", SHOW(key, len),
                            GH_TOK_TOKEN_MAX);
        if (!json_object_is_type(val, json_type_int))
                return FAIL(-EINVAL, "vocab.json: the id of \"%s\" is not an integer", SHOW(key, len));
        int64_t id = json_object_get_int64(val);
        if (id < 0 || (uint64_t) id >= n)
                return FAIL(-EINVAL, "vocab.json: id %s of \"%s\" is out of range 0..%zu",
                            json_object_to_json_string(val), SHOW(key, len), n - 1);
        if (keys[id])
                return FAIL(-EINVAL, "vocab.json: id %" PRId64 " is given to both \"%s\" and \"%s\"", id,
                            SHOW(keys[id], strlen(keys[id])), SHOW(key, len));
        keys[id] = key;
        *ret_id = (uint32_t) id;
        return 0;
}

/* The tokens of |keys| (by id, borrowed from the JSON) into t->strings. */
static int copy_tokens(gh_tokenizer *t, const char **keys, char *err, size_t err_size) {
        size_t total = 0;

        for (size_t id = 0; id < t->n_tokens; id++) {
                t->length[id] = (uint32_t) strlen(keys[id]);
                t->offset[id] = (uint32_t) total;
                total += t->length[id] + 1;
        }
        t->strings = malloc(total);
        if (!t->strings)
                return -ENOMEM;
        for (size_t id = 0; id < t->n_tokens; id++) {
                memcpy(t->strings + t->offset[id], keys[id], t->length[id] + 1);
                if (!token_add(t, (uint32_t) id))
                        return FAIL(-EINVAL, "vocab.json: token \"%s\" appears twice",
                                    SHOW(keys[id], t->length[id]));
        }
        return 0;
}

static int load_vocab(gh_tokenizer *t, const char *text, size_t len, char *err, size_t err_size) {
        _cleanup_json_ json_object *root = NULL;
        _cleanup_free_ const char **keys = NULL;
        int r;

        if (len > GH_TOK_FILE_MAX)
                return FAIL(-E2BIG, "vocab.json: %zu bytes, more than %u", len, GH_TOK_FILE_MAX);
        if (len == 0)
                return FAIL(-EINVAL, "vocab.json: empty");
        r = parse_json(text, len, &root, err, err_size);
        if (r < 0)
                return r;
        if (!json_object_is_type(root, json_type_object))
                return FAIL(-EINVAL, "vocab.json: not a JSON object");
        size_t n = (size_t) json_object_object_length(root);
        if (n == 0)
                return FAIL(-EINVAL, "vocab.json: no tokens");
        if (n > GH_TOK_VOCAB_MAX)
                return FAIL(-E2BIG, "vocab.json: %zu tokens, more than %d", n, GH_TOK_VOCAB_MAX);

        t->n_tokens = n;
        t->token_mask = table_size(n) - 1;
        keys = calloc(n, sizeof(*keys));
        t->offset = calloc(n, sizeof(*t->offset));
        t->length = calloc(n, sizeof(*t->length));
        t->token_slots = calloc(t->token_mask + 1, sizeof(*t->token_slots));
        if (!keys || !t->offset || !t->length || !t->token_slots)
                return -ENOMEM;
        json_object_object_foreach(root, key, val) {
                uint32_t id;
                r = vocab_entry(key, val, n, keys, &id, err, err_size);
                if (r < 0)
                        return r;
        }
        /* n members with distinct ids in 0..n-1: every id is there. */
        return copy_tokens(t, keys, err, err_size);
}

/* ---- merges.txt -------------------------------------------------------- */

static bool merges_space(char c) {
        return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

/* The id of a token of merges.txt line |line|. */
static int merge_token(const gh_tokenizer *t, const char *s, size_t len, size_t line, const char *what,
                       int32_t *ret, char *err, size_t err_size) {
        if (len > GH_TOK_TOKEN_MAX)
                return FAIL(-E2BIG, "merges.txt line %zu: %s \"%s\" is longer than %d bytes", line, what,
                            SHOW(s, len), GH_TOK_TOKEN_MAX);
        *ret = token_id(t, s, len);
        if (*ret < 0)
                return FAIL(-EINVAL, "merges.txt line %zu: %s \"%s\" is not in vocab.json", line, what,
                            SHOW(s, len));
        return 0;
}

/* Line |line| of merges.txt (|s|, |len| bytes, no newline): blank, or a
 * merge of the next rank. */
static int merge_line(gh_tokenizer *t, const char *s, size_t len, size_t line, char *err, size_t err_size) {
        const char *field[2] = {NULL, NULL};
        size_t field_len[2] = {0, 0}, n = 0;
        char joined[2 * GH_TOK_TOKEN_MAX];
        merge m;
        int r;

        for (size_t i = 0; i < len;) {
                if (merges_space(s[i])) {
                        i++;
                        continue;
                }
                size_t start = i;
                while (i < len && !merges_space(s[i]))
                        i++;
                if (n < 2)
                        field[n] = s + start, field_len[n] = i - start;
                n++;
        }
        if (n == 0)
                return 0;
        if (n != 2)
                return FAIL(-EINVAL, "merges.txt line %zu: expected two tokens, found %zu", line, n);
        r = merge_token(t, field[0], field_len[0], line, "token", &m.first, err, err_size);
        if (r >= 0)
                r = merge_token(t, field[1], field_len[1], line, "token", &m.second, err, err_size);
        if (r < 0)
                return r;
        memcpy(joined, field[0], field_len[0]);
        memcpy(joined + field_len[0], field[1], field_len[1]);
        r = merge_token(t, joined, field_len[0] + field_len[1], line, "merged token", &m.result, err, err_size);
        if (r < 0)
                return r;
        pair_slot *p = pair_find(t, m.first, m.second);
        if (p->first >= 0)
                return FAIL(-EINVAL, "merges.txt line %zu: \"%s %s\" is a duplicate of an earlier merge", line,
                            SHOW(field[0], field_len[0]), SHOW(field[1], field_len[1]));
        *p = (pair_slot) {m.first, m.second, (uint32_t) t->n_merges};
        t->merges[t->n_merges++] = m;
        return 0;
}

static size_t count_lines(const char *s, size_t len) {
        size_t n = 1;

        if (len == 0)
                return n;
        for (const char *p = s, *end = s + len; (p = memchr(p, '\n', (size_t) (end - p))); p++)
                n++;
        return n;
}

static int load_merges(gh_tokenizer *t, const char *text, size_t len, char *err, size_t err_size) {
        size_t lines, line = 0;
        int r;

        if (len > GH_TOK_FILE_MAX)
                return FAIL(-E2BIG, "merges.txt: %zu bytes, more than %u", len, GH_TOK_FILE_MAX);
        lines = count_lines(text, len);
        if (lines > GH_TOK_VOCAB_MAX + 1)
                return FAIL(-E2BIG, "merges.txt: %zu lines, more than %d", lines, GH_TOK_VOCAB_MAX + 1);
        t->merges = malloc(lines * sizeof(*t->merges));
        t->pair_mask = table_size(lines) - 1;
        t->pair_slots = malloc((t->pair_mask + 1) * sizeof(*t->pair_slots));
        if (!t->merges || !t->pair_slots)
                return -ENOMEM;
        for (size_t i = 0; i <= t->pair_mask; i++)
                t->pair_slots[i].first = -1;
        for (size_t pos = 0; pos < len;) {
                const char *s = text + pos, *eol = memchr(s, '\n', len - pos);
                size_t n = eol ? (size_t) (eol - s) : len - pos;

                pos += n + (eol ? 1 : 0);
                if (++line == 1 && n >= 8 && memcmp(s, "#version", 8) == 0)
                        continue;
                r = merge_line(t, s, n, line, err, err_size);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* ---- special tokens, byte characters, the pattern ----------------------- */

/* GPT-2's bytes_to_unicode(): printable Latin-1 bytes stand for
 * themselves, the other 68 for U+0100.. in byte order. */
static void byte_chars(uint32_t cp[256]) {
        uint32_t next = 256;

        for (unsigned b = 0; b < 256; b++) {
                bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
                cp[b] = printable ? b : next++;
        }
}

static void find_byte_ids(gh_tokenizer *t) {
        uint32_t cp[256];
        char s[8];

        byte_chars(cp);
        for (unsigned b = 0; b < 256; b++) {
                size_t n = utf8_put(s, cp[b]);
                t->byte_id[b] = token_id(t, s, n);
                memcpy(s + n, END_OF_WORD, strlen(END_OF_WORD));
                t->byte_end_id[b] = token_id(t, s, n + strlen(END_OF_WORD));
        }
}

static int find_specials(gh_tokenizer *t, char *err, size_t err_size) {
        t->bos = token_id(t, BOS, strlen(BOS));
        t->eos = token_id(t, EOS, strlen(EOS));
        t->comma = token_id(t, ",</w>", 5);
        if (t->bos < 0 || t->eos < 0)
                return FAIL(-EINVAL, "vocab.json: no %s", t->bos < 0 ? BOS : EOS);
        find_byte_ids(t);
        return 0;
}

static int compile(const char *pattern, uint32_t options, pcre2_code **ret, char *err, size_t err_size) {
        PCRE2_SIZE offset;
        int code;

        *ret = pcre2_compile((PCRE2_SPTR) pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP | options, &code,
                             &offset, NULL);
        if (!*ret)
                return code == PCRE2_ERROR_NOMEMORY ? -ENOMEM : FAIL(-EINVAL, "pcre2 refuses %s", pattern);
        return 0;
}

static int compile_patterns(gh_tokenizer *t, char *err, size_t err_size) {
        int r = compile(CLIP_PATTERN, PCRE2_CASELESS, &t->pattern, err, err_size);

        if (r >= 0)
                r = compile("\\p{Cased}", 0, &t->cased, err, err_size);
        if (r >= 0)
                r = compile("\\p{Case_Ignorable}", 0, &t->case_ignorable, err, err_size);
        return r;
}

int gh_tokenizer_new(const char *vocab, size_t vocab_len, const char *merges, size_t merges_len,
                     gh_tokenizer **ret, char *err, size_t err_size) {
        _cleanup_(gh_tokenizer_freep) gh_tokenizer *t = calloc(1, sizeof(*t));
        int r;

        if (!t)
                return -ENOMEM;
        r = load_vocab(t, vocab, vocab_len, err, err_size);
        if (r >= 0)
                r = load_merges(t, merges, merges_len, err, err_size);
        if (r >= 0)
                r = find_specials(t, err, err_size);
        if (r >= 0)
                r = compile_patterns(t, err, err_size);
        if (r < 0)
                return r == -ENOMEM ? FAIL(r, "out of memory") : r;
        *ret = TAKE_PTR(t);
        return 0;
}

gh_tokenizer *gh_tokenizer_free(gh_tokenizer *t) {
        if (!t)
                return NULL;
        pcre2_code_free(t->pattern);
        pcre2_code_free(t->cased);
        pcre2_code_free(t->case_ignorable);
        free(t->strings);
        free(t->offset);
        free(t->length);
        free(t->token_slots);
        free(t->merges);
        free(t->pair_slots);
        free(t);
        return NULL;
}

int32_t gh_tokenizer_bos(const gh_tokenizer *t) {
        return t->bos;
}

int32_t gh_tokenizer_eos(const gh_tokenizer *t) {
        return t->eos;
}

int32_t gh_tokenizer_comma(const gh_tokenizer *t) {
        return t->comma;
}

size_t gh_tokenizer_vocab_size(const gh_tokenizer *t) {
        return t->n_tokens;
}

const char *gh_tokenizer_token(const gh_tokenizer *t, int32_t id) {
        return id >= 0 && (size_t) id < t->n_tokens ? t->strings + t->offset[id] : NULL;
}

/* ---- html.unescape() --------------------------------------------------- */

typedef struct entity {
        const char *name;  /* without ';' */
        const char *value; /* UTF-8, never longer than "&" name */
        bool legacy;       /* also without ';', and as a prefix */
} entity;

/* Python's html.entities.html5 for the names of the HTML 4 entities,
 * "apos", and the upper-case legacy ones; sorted by strcmp(). */
static const entity entities[] = {
        {"AElig", "\xc3\x86", true}, {"AMP", "&", true}, {"Aacute", "\xc3\x81", true},
        {"Acirc", "\xc3\x82", true}, {"Agrave", "\xc3\x80", true}, {"Alpha", "\xce\x91", false},
        {"Aring", "\xc3\x85", true}, {"Atilde", "\xc3\x83", true}, {"Auml", "\xc3\x84", true},
        {"Beta", "\xce\x92", false}, {"COPY", "\xc2\xa9", true}, {"Ccedil", "\xc3\x87", true},
        {"Chi", "\xce\xa7", false}, {"Dagger", "\xe2\x80\xa1", false}, {"Delta", "\xce\x94", false},
        {"ETH", "\xc3\x90", true}, {"Eacute", "\xc3\x89", true}, {"Ecirc", "\xc3\x8a", true},
        {"Egrave", "\xc3\x88", true}, {"Epsilon", "\xce\x95", false}, {"Eta", "\xce\x97", false},
        {"Euml", "\xc3\x8b", true}, {"GT", ">", true}, {"Gamma", "\xce\x93", false},
        {"Iacute", "\xc3\x8d", true}, {"Icirc", "\xc3\x8e", true}, {"Igrave", "\xc3\x8c", true},
        {"Iota", "\xce\x99", false}, {"Iuml", "\xc3\x8f", true}, {"Kappa", "\xce\x9a", false},
        {"LT", "<", true}, {"Lambda", "\xce\x9b", false}, {"Mu", "\xce\x9c", false},
        {"Ntilde", "\xc3\x91", true}, {"Nu", "\xce\x9d", false}, {"OElig", "\xc5\x92", false},
        {"Oacute", "\xc3\x93", true}, {"Ocirc", "\xc3\x94", true}, {"Ograve", "\xc3\x92", true},
        {"Omega", "\xce\xa9", false}, {"Omicron", "\xce\x9f", false}, {"Oslash", "\xc3\x98", true},
        {"Otilde", "\xc3\x95", true}, {"Ouml", "\xc3\x96", true}, {"Phi", "\xce\xa6", false},
        {"Pi", "\xce\xa0", false}, {"Prime", "\xe2\x80\xb3", false}, {"Psi", "\xce\xa8", false},
        {"QUOT", "\x22", true}, {"REG", "\xc2\xae", true}, {"Rho", "\xce\xa1", false},
        {"Scaron", "\xc5\xa0", false}, {"Sigma", "\xce\xa3", false}, {"THORN", "\xc3\x9e", true},
        {"Tau", "\xce\xa4", false}, {"Theta", "\xce\x98", false}, {"Uacute", "\xc3\x9a", true},
        {"Ucirc", "\xc3\x9b", true}, {"Ugrave", "\xc3\x99", true}, {"Upsilon", "\xce\xa5", false},
        {"Uuml", "\xc3\x9c", true}, {"Xi", "\xce\x9e", false}, {"Yacute", "\xc3\x9d", true},
        {"Yuml", "\xc5\xb8", false}, {"Zeta", "\xce\x96", false}, {"aacute", "\xc3\xa1", true},
        {"acirc", "\xc3\xa2", true}, {"acute", "\xc2\xb4", true}, {"aelig", "\xc3\xa6", true},
        {"agrave", "\xc3\xa0", true}, {"alefsym", "\xe2\x84\xb5", false}, {"alpha", "\xce\xb1", false},
        {"amp", "&", true}, {"and", "\xe2\x88\xa7", false}, {"ang", "\xe2\x88\xa0", false},
        {"apos", "'", false}, {"aring", "\xc3\xa5", true}, {"asymp", "\xe2\x89\x88", false},
        {"atilde", "\xc3\xa3", true}, {"auml", "\xc3\xa4", true}, {"bdquo", "\xe2\x80\x9e", false},
        {"beta", "\xce\xb2", false}, {"brvbar", "\xc2\xa6", true}, {"bull", "\xe2\x80\xa2", false},
        {"cap", "\xe2\x88\xa9", false}, {"ccedil", "\xc3\xa7", true}, {"cedil", "\xc2\xb8", true},
        {"cent", "\xc2\xa2", true}, {"chi", "\xcf\x87", false}, {"circ", "\xcb\x86", false},
        {"clubs", "\xe2\x99\xa3", false}, {"cong", "\xe2\x89\x85", false}, {"copy", "\xc2\xa9", true},
        {"crarr", "\xe2\x86\xb5", false}, {"cup", "\xe2\x88\xaa", false}, {"curren", "\xc2\xa4", true},
        {"dArr", "\xe2\x87\x93", false}, {"dagger", "\xe2\x80\xa0", false}, {"darr", "\xe2\x86\x93", false},
        {"deg", "\xc2\xb0", true}, {"delta", "\xce\xb4", false}, {"diams", "\xe2\x99\xa6", false},
        {"divide", "\xc3\xb7", true}, {"eacute", "\xc3\xa9", true}, {"ecirc", "\xc3\xaa", true},
        {"egrave", "\xc3\xa8", true}, {"empty", "\xe2\x88\x85", false}, {"emsp", "\xe2\x80\x83", false},
        {"ensp", "\xe2\x80\x82", false}, {"epsilon", "\xce\xb5", false}, {"equiv", "\xe2\x89\xa1", false},
        {"eta", "\xce\xb7", false}, {"eth", "\xc3\xb0", true}, {"euml", "\xc3\xab", true},
        {"euro", "\xe2\x82\xac", false}, {"exist", "\xe2\x88\x83", false}, {"fnof", "\xc6\x92", false},
        {"forall", "\xe2\x88\x80", false}, {"frac12", "\xc2\xbd", true}, {"frac14", "\xc2\xbc", true},
        {"frac34", "\xc2\xbe", true}, {"frasl", "\xe2\x81\x84", false}, {"gamma", "\xce\xb3", false},
        {"ge", "\xe2\x89\xa5", false}, {"gt", ">", true}, {"hArr", "\xe2\x87\x94", false},
        {"harr", "\xe2\x86\x94", false}, {"hearts", "\xe2\x99\xa5", false}, {"hellip", "\xe2\x80\xa6", false},
        {"iacute", "\xc3\xad", true}, {"icirc", "\xc3\xae", true}, {"iexcl", "\xc2\xa1", true},
        {"igrave", "\xc3\xac", true}, {"image", "\xe2\x84\x91", false}, {"infin", "\xe2\x88\x9e", false},
        {"int", "\xe2\x88\xab", false}, {"iota", "\xce\xb9", false}, {"iquest", "\xc2\xbf", true},
        {"isin", "\xe2\x88\x88", false}, {"iuml", "\xc3\xaf", true}, {"kappa", "\xce\xba", false},
        {"lArr", "\xe2\x87\x90", false}, {"lambda", "\xce\xbb", false}, {"lang", "\xe2\x9f\xa8", false},
        {"laquo", "\xc2\xab", true}, {"larr", "\xe2\x86\x90", false}, {"lceil", "\xe2\x8c\x88", false},
        {"ldquo", "\xe2\x80\x9c", false}, {"le", "\xe2\x89\xa4", false}, {"lfloor", "\xe2\x8c\x8a", false},
        {"lowast", "\xe2\x88\x97", false}, {"loz", "\xe2\x97\x8a", false}, {"lrm", "\xe2\x80\x8e", false},
        {"lsaquo", "\xe2\x80\xb9", false}, {"lsquo", "\xe2\x80\x98", false}, {"lt", "<", true},
        {"macr", "\xc2\xaf", true}, {"mdash", "\xe2\x80\x94", false}, {"micro", "\xc2\xb5", true},
        {"middot", "\xc2\xb7", true}, {"minus", "\xe2\x88\x92", false}, {"mu", "\xce\xbc", false},
        {"nabla", "\xe2\x88\x87", false}, {"nbsp", "\xc2\xa0", true}, {"ndash", "\xe2\x80\x93", false},
        {"ne", "\xe2\x89\xa0", false}, {"ni", "\xe2\x88\x8b", false}, {"not", "\xc2\xac", true},
        {"notin", "\xe2\x88\x89", false}, {"nsub", "\xe2\x8a\x84", false}, {"ntilde", "\xc3\xb1", true},
        {"nu", "\xce\xbd", false}, {"oacute", "\xc3\xb3", true}, {"ocirc", "\xc3\xb4", true},
        {"oelig", "\xc5\x93", false}, {"ograve", "\xc3\xb2", true}, {"oline", "\xe2\x80\xbe", false},
        {"omega", "\xcf\x89", false}, {"omicron", "\xce\xbf", false}, {"oplus", "\xe2\x8a\x95", false},
        {"or", "\xe2\x88\xa8", false}, {"ordf", "\xc2\xaa", true}, {"ordm", "\xc2\xba", true},
        {"oslash", "\xc3\xb8", true}, {"otilde", "\xc3\xb5", true}, {"otimes", "\xe2\x8a\x97", false},
        {"ouml", "\xc3\xb6", true}, {"para", "\xc2\xb6", true}, {"part", "\xe2\x88\x82", false},
        {"permil", "\xe2\x80\xb0", false}, {"perp", "\xe2\x8a\xa5", false}, {"phi", "\xcf\x86", false},
        {"pi", "\xcf\x80", false}, {"piv", "\xcf\x96", false}, {"plusmn", "\xc2\xb1", true},
        {"pound", "\xc2\xa3", true}, {"prime", "\xe2\x80\xb2", false}, {"prod", "\xe2\x88\x8f", false},
        {"prop", "\xe2\x88\x9d", false}, {"psi", "\xcf\x88", false}, {"quot", "\x22", true},
        {"rArr", "\xe2\x87\x92", false}, {"radic", "\xe2\x88\x9a", false}, {"rang", "\xe2\x9f\xa9", false},
        {"raquo", "\xc2\xbb", true}, {"rarr", "\xe2\x86\x92", false}, {"rceil", "\xe2\x8c\x89", false},
        {"rdquo", "\xe2\x80\x9d", false}, {"real", "\xe2\x84\x9c", false}, {"reg", "\xc2\xae", true},
        {"rfloor", "\xe2\x8c\x8b", false}, {"rho", "\xcf\x81", false}, {"rlm", "\xe2\x80\x8f", false},
        {"rsaquo", "\xe2\x80\xba", false}, {"rsquo", "\xe2\x80\x99", false}, {"sbquo", "\xe2\x80\x9a", false},
        {"scaron", "\xc5\xa1", false}, {"sdot", "\xe2\x8b\x85", false}, {"sect", "\xc2\xa7", true},
        {"shy", "\xc2\xad", true}, {"sigma", "\xcf\x83", false}, {"sigmaf", "\xcf\x82", false},
        {"sim", "\xe2\x88\xbc", false}, {"spades", "\xe2\x99\xa0", false}, {"sub", "\xe2\x8a\x82", false},
        {"sube", "\xe2\x8a\x86", false}, {"sum", "\xe2\x88\x91", false}, {"sup", "\xe2\x8a\x83", false},
        {"sup1", "\xc2\xb9", true}, {"sup2", "\xc2\xb2", true}, {"sup3", "\xc2\xb3", true},
        {"supe", "\xe2\x8a\x87", false}, {"szlig", "\xc3\x9f", true}, {"tau", "\xcf\x84", false},
        {"there4", "\xe2\x88\xb4", false}, {"theta", "\xce\xb8", false}, {"thetasym", "\xcf\x91", false},
        {"thinsp", "\xe2\x80\x89", false}, {"thorn", "\xc3\xbe", true}, {"tilde", "\xcb\x9c", false},
        {"times", "\xc3\x97", true}, {"trade", "\xe2\x84\xa2", false}, {"uArr", "\xe2\x87\x91", false},
        {"uacute", "\xc3\xba", true}, {"uarr", "\xe2\x86\x91", false}, {"ucirc", "\xc3\xbb", true},
        {"ugrave", "\xc3\xb9", true}, {"uml", "\xc2\xa8", true}, {"upsih", "\xcf\x92", false},
        {"upsilon", "\xcf\x85", false}, {"uuml", "\xc3\xbc", true}, {"weierp", "\xe2\x84\x98", false},
        {"xi", "\xce\xbe", false}, {"yacute", "\xc3\xbd", true}, {"yen", "\xc2\xa5", true},
        {"yuml", "\xc3\xbf", true}, {"zeta", "\xce\xb6", false}, {"zwj", "\xe2\x80\x8d", false},
        {"zwnj", "\xe2\x80\x8c", false},
};

/* Python's html._invalid_charrefs for 0x80..0x9F (Windows-1252). */
static const uint16_t charrefs_80[32] = {
        0x20ac, 0x81,   0x201a, 0x0192, 0x201e, 0x2026, 0x2020, 0x2021, 0x02c6, 0x2030, 0x0160,
        0x2039, 0x0152, 0x8d,   0x017d, 0x8f,   0x90,   0x2018, 0x2019, 0x201c, 0x201d, 0x2022,
        0x2013, 0x2014, 0x02dc, 0x2122, 0x0161, 0x203a, 0x0153, 0x9d,   0x017e, 0x0178,
};

static int entity_cmp(const void *key, const void *e) {
        return strcmp(key, ((const entity *) e)->name);
}

static const entity *entity_find(const char *name, size_t len) {
        char key[NAMED_MAX * 4 + 1];

        if (len == 0 || len >= sizeof(key) || memchr(name, 0, len))
                return NULL;
        memcpy(key, name, len);
        key[len] = 0;
        return bsearch(key, entities, ELEMENTSOF(entities), sizeof(entities[0]), entity_cmp);
}

/* Python's html._replace_charref() for a number: the code point to write,
 * or -1 for nothing. */
static int32_t charref(uint32_t num) {
        if (num == 0)
                return 0xFFFD;
        if (num == 0x0D)
                return 0x0D;
        if (num >= 0x80 && num <= 0x9F)
                return charrefs_80[num - 0x80];
        if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF)
                return 0xFFFD;
        if ((num >= 0x01 && num <= 0x08) || num == 0x0B || (num >= 0x0E && num <= 0x1F) || num == 0x7F ||
            (num >= 0xFDD0 && num <= 0xFDEF) || (num & 0xFFFE) == 0xFFFE)
                return -1;
        return (int32_t) num;
}

static int hex_digit(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

/* A numeric reference at |s| ("&#..."): its length (0 if none), what it
 * stands for written to |out| and the bytes written into |*ret_out|. */
static size_t unescape_number(const char *s, size_t len, char *out, size_t *ret_out) {
        bool hex = len > 3 && (s[2] == 'x' || s[2] == 'X') && hex_digit(s[3]) >= 0;
        size_t i = hex ? 3 : 2;
        uint32_t num = 0;

        if (!hex && (i >= len || s[i] < '0' || s[i] > '9'))
                return 0;
        for (; i < len && (hex ? hex_digit(s[i]) >= 0 : (s[i] >= '0' && s[i] <= '9')); i++) {
                num = num * (hex ? 16 : 10) + (uint32_t) (hex ? hex_digit(s[i]) : s[i] - '0');
                if (num > 0x110000)
                        num = 0x110000; /* saturated: anything past U+10FFFF is the same */
        }
        if (i < len && s[i] == ';')
                i++;
        int32_t cp = charref(num);
        *ret_out = cp < 0 ? 0 : utf8_put(out, (uint32_t) cp);
        return i;
}

static bool name_char(char c) {
        return c != '\t' && c != '\n' && c != '\f' && c != ' ' && c != '<' && c != '&' && c != '#' && c != ';';
}

/* A named reference at |s| ("&name"), as the number one. */
static size_t unescape_named(const char *s, size_t len, char *out, size_t *ret_out) {
        size_t i = 1, chars = 0, last = 1;
        const entity *e;

        for (size_t n; i < len && chars < NAMED_MAX && name_char(s[i]); i += n, chars++) {
                last = i;
                utf8_get(s + i, &n);
        }
        if (chars == 0)
                return 0;
        bool semicolon = i < len && s[i] == ';';
        e = entity_find(s + 1, i - 1);
        if (e && (semicolon || e->legacy)) {
                *ret_out = strlen(e->value);
                memcpy(out, e->value, *ret_out);
                return i + semicolon;
        }
        /* The longest legacy name that leaves at least the last character
         * (or the ';'). Names are ASCII, at most 6 bytes. */
        size_t end = semicolon ? i : last;
        for (size_t k = end - 1 < 6 ? end - 1 : 6; k >= 2; k--) {
                e = entity_find(s + 1, k);
                if (e && e->legacy) {
                        size_t v = strlen(e->value), rest = i + semicolon - 1 - k;
                        memcpy(out, e->value, v);
                        memcpy(out + v, s + 1 + k, rest);
                        *ret_out = v + rest;
                        return i + semicolon;
                }
        }
        return 0;
}

/* One pass of Python's html.unescape() over |s| into |out| (room for
 * |len| bytes: nothing gets longer); returns the bytes written. */
static size_t unescape(const char *s, size_t len, char *out) {
        size_t n = 0;

        for (size_t i = 0; i < len;) {
                const char *amp = memchr(s + i, '&', len - i);
                size_t plain = amp ? (size_t) (amp - (s + i)) : len - i, used = 0, wrote = 0;

                memcpy(out + n, s + i, plain);
                n += plain;
                i += plain;
                if (i == len)
                        break;
                if (i + 1 < len && s[i + 1] == '#')
                        used = unescape_number(s + i, len - i, out + n, &wrote);
                else
                        used = unescape_named(s + i, len - i, out + n, &wrote);
                if (used == 0) {
                        out[n++] = '&';
                        i++;
                } else {
                        n += wrote;
                        i += used;
                }
        }
        return n;
}

/* ---- whitespace and lower-casing --------------------------------------- */

/* Unicode White_Space (the `regex` module's \s). */
static bool white_space(uint32_t cp) {
        return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
               (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
               cp == 0x3000;
}

/* Python's str.isspace(), what str.strip() removes. */
static bool py_space(uint32_t cp) {
        return white_space(cp) || (cp >= 0x1C && cp <= 0x1F);
}

/* whitespace_clean(): runs of White_Space to one space, then Python's
 * whitespace stripped from both ends; in place, returns the new length. */
static size_t clean_space(char *s, size_t len) {
        size_t n = 0, start = 0, end, k;
        bool run = false;

        for (size_t i = 0; i < len; i += k) {
                uint32_t cp = utf8_get(s + i, &k);
                if (!white_space(cp)) {
                        memmove(s + n, s + i, k);
                        n += k;
                } else if (!run) {
                        s[n++] = ' ';
                }
                run = white_space(cp);
        }
        while (start < n && py_space(utf8_get(s + start, &k)))
                start += k;
        for (end = n; end > start && py_space(utf8_get_before(s, end));)
                end -= utf8_size(utf8_get_before(s, end));
        memmove(s, s + start, end - start);
        return end - start;
}

/* Simple lower-case mappings: code points start, start + stride, ...
 * (count of them) map to themselves + delta. Generated from Python 3.11's
 * str.lower() (Unicode 14.0) for code points past ASCII. */
typedef struct case_run {
        uint32_t start;
        uint16_t count;
        uint8_t stride;
        int32_t delta;
} case_run;

static const case_run lower_runs[] = {
        {0x000c0, 23, 1, 32}, {0x000d8, 7, 1, 32}, {0x00100, 24, 2, 1}, {0x00132, 3, 2, 1},
        {0x00139, 8, 2, 1}, {0x0014a, 23, 2, 1}, {0x00178, 1, 1, -121}, {0x00179, 3, 2, 1},
        {0x00181, 1, 1, 210}, {0x00182, 2, 2, 1}, {0x00186, 1, 1, 206}, {0x00187, 1, 1, 1},
        {0x00189, 2, 1, 205}, {0x0018b, 1, 1, 1}, {0x0018e, 1, 1, 79}, {0x0018f, 1, 1, 202},
        {0x00190, 1, 1, 203}, {0x00191, 1, 1, 1}, {0x00193, 1, 1, 205}, {0x00194, 1, 1, 207},
        {0x00196, 1, 1, 211}, {0x00197, 1, 1, 209}, {0x00198, 1, 1, 1}, {0x0019c, 1, 1, 211},
        {0x0019d, 1, 1, 213}, {0x0019f, 1, 1, 214}, {0x001a0, 3, 2, 1}, {0x001a6, 1, 1, 218},
        {0x001a7, 1, 1, 1}, {0x001a9, 1, 1, 218}, {0x001ac, 1, 1, 1}, {0x001ae, 1, 1, 218},
        {0x001af, 1, 1, 1}, {0x001b1, 2, 1, 217}, {0x001b3, 2, 2, 1}, {0x001b7, 1, 1, 219},
        {0x001b8, 1, 1, 1}, {0x001bc, 1, 1, 1}, {0x001c4, 1, 1, 2}, {0x001c5, 1, 1, 1},
        {0x001c7, 1, 1, 2}, {0x001c8, 1, 1, 1}, {0x001ca, 1, 1, 2}, {0x001cb, 9, 2, 1},
        {0x001de, 9, 2, 1}, {0x001f1, 1, 1, 2}, {0x001f2, 2, 2, 1}, {0x001f6, 1, 1, -97},
        {0x001f7, 1, 1, -56}, {0x001f8, 20, 2, 1}, {0x00220, 1, 1, -130}, {0x00222, 9, 2, 1},
        {0x0023a, 1, 1, 10795}, {0x0023b, 1, 1, 1}, {0x0023d, 1, 1, -163}, {0x0023e, 1, 1, 10792},
        {0x00241, 1, 1, 1}, {0x00243, 1, 1, -195}, {0x00244, 1, 1, 69}, {0x00245, 1, 1, 71},
        {0x00246, 5, 2, 1}, {0x00370, 2, 2, 1}, {0x00376, 1, 1, 1}, {0x0037f, 1, 1, 116},
        {0x00386, 1, 1, 38}, {0x00388, 3, 1, 37}, {0x0038c, 1, 1, 64}, {0x0038e, 2, 1, 63},
        {0x00391, 17, 1, 32}, {0x003a3, 9, 1, 32}, {0x003cf, 1, 1, 8}, {0x003d8, 12, 2, 1},
        {0x003f4, 1, 1, -60}, {0x003f7, 1, 1, 1}, {0x003f9, 1, 1, -7}, {0x003fa, 1, 1, 1},
        {0x003fd, 3, 1, -130}, {0x00400, 16, 1, 80}, {0x00410, 32, 1, 32}, {0x00460, 17, 2, 1},
        {0x0048a, 27, 2, 1}, {0x004c0, 1, 1, 15}, {0x004c1, 7, 2, 1}, {0x004d0, 48, 2, 1},
        {0x00531, 38, 1, 48}, {0x010a0, 38, 1, 7264}, {0x010c7, 1, 1, 7264}, {0x010cd, 1, 1, 7264},
        {0x013a0, 80, 1, 38864}, {0x013f0, 6, 1, 8}, {0x01c90, 43, 1, -3008}, {0x01cbd, 3, 1, -3008},
        {0x01e00, 75, 2, 1}, {0x01e9e, 1, 1, -7615}, {0x01ea0, 48, 2, 1}, {0x01f08, 8, 1, -8},
        {0x01f18, 6, 1, -8}, {0x01f28, 8, 1, -8}, {0x01f38, 8, 1, -8}, {0x01f48, 6, 1, -8},
        {0x01f59, 4, 2, -8}, {0x01f68, 8, 1, -8}, {0x01f88, 8, 1, -8}, {0x01f98, 8, 1, -8},
        {0x01fa8, 8, 1, -8}, {0x01fb8, 2, 1, -8}, {0x01fba, 2, 1, -74}, {0x01fbc, 1, 1, -9},
        {0x01fc8, 4, 1, -86}, {0x01fcc, 1, 1, -9}, {0x01fd8, 2, 1, -8}, {0x01fda, 2, 1, -100},
        {0x01fe8, 2, 1, -8}, {0x01fea, 2, 1, -112}, {0x01fec, 1, 1, -7}, {0x01ff8, 2, 1, -128},
        {0x01ffa, 2, 1, -126}, {0x01ffc, 1, 1, -9}, {0x02126, 1, 1, -7517}, {0x0212a, 1, 1, -8383},
        {0x0212b, 1, 1, -8262}, {0x02132, 1, 1, 28}, {0x02160, 16, 1, 16}, {0x02183, 1, 1, 1},
        {0x024b6, 26, 1, 26}, {0x02c00, 48, 1, 48}, {0x02c60, 1, 1, 1}, {0x02c62, 1, 1, -10743},
        {0x02c63, 1, 1, -3814}, {0x02c64, 1, 1, -10727}, {0x02c67, 3, 2, 1}, {0x02c6d, 1, 1, -10780},
        {0x02c6e, 1, 1, -10749}, {0x02c6f, 1, 1, -10783}, {0x02c70, 1, 1, -10782}, {0x02c72, 1, 1, 1},
        {0x02c75, 1, 1, 1}, {0x02c7e, 2, 1, -10815}, {0x02c80, 50, 2, 1}, {0x02ceb, 2, 2, 1},
        {0x02cf2, 1, 1, 1}, {0x0a640, 23, 2, 1}, {0x0a680, 14, 2, 1}, {0x0a722, 7, 2, 1},
        {0x0a732, 31, 2, 1}, {0x0a779, 2, 2, 1}, {0x0a77d, 1, 1, -35332}, {0x0a77e, 5, 2, 1},
        {0x0a78b, 1, 1, 1}, {0x0a78d, 1, 1, -42280}, {0x0a790, 2, 2, 1}, {0x0a796, 10, 2, 1},
        {0x0a7aa, 1, 1, -42308}, {0x0a7ab, 1, 1, -42319}, {0x0a7ac, 1, 1, -42315}, {0x0a7ad, 1, 1, -42305},
        {0x0a7ae, 1, 1, -42308}, {0x0a7b0, 1, 1, -42258}, {0x0a7b1, 1, 1, -42282}, {0x0a7b2, 1, 1, -42261},
        {0x0a7b3, 1, 1, 928}, {0x0a7b4, 8, 2, 1}, {0x0a7c4, 1, 1, -48}, {0x0a7c5, 1, 1, -42307},
        {0x0a7c6, 1, 1, -35384}, {0x0a7c7, 2, 2, 1}, {0x0a7d0, 1, 1, 1}, {0x0a7d6, 2, 2, 1},
        {0x0a7f5, 1, 1, 1}, {0x0ff21, 26, 1, 32}, {0x10400, 40, 1, 40}, {0x104b0, 36, 1, 40},
        {0x10570, 11, 1, 39}, {0x1057c, 15, 1, 39}, {0x1058c, 7, 1, 39}, {0x10594, 2, 1, 39},
        {0x10c80, 51, 1, 64}, {0x118a0, 32, 1, 32}, {0x16e40, 32, 1, 32}, {0x1e900, 34, 1, 34},
};

static const case_run *lower_run(uint32_t cp) {
        size_t lo = 0, hi = ELEMENTSOF(lower_runs);

        while (hi - lo > 1) {
                size_t mid = (lo + hi) / 2;
                if (lower_runs[mid].start <= cp)
                        lo = mid;
                else
                        hi = mid;
        }
        const case_run *r = &lower_runs[lo];
        if (cp < r->start || cp > r->start + (uint32_t) (r->count - 1) * r->stride || (cp - r->start) % r->stride)
                return NULL;
        return r;
}

static uint32_t lower_cp(uint32_t cp) {
        if (cp < 0x80)
                return cp >= 'A' && cp <= 'Z' ? cp + 32 : cp;
        const case_run *r = lower_run(cp);
        return r ? (uint32_t) ((int32_t) cp + r->delta) : cp;
}

/* Whether the code point at s[i] has the Unicode property of |prop|. */
static bool has_property(const pcre2_code *prop, pcre2_match_data *md, const char *s, size_t len, size_t i) {
        return pcre2_match(prop, (PCRE2_SPTR) s, len, i, PCRE2_ANCHORED | PCRE2_NO_UTF_CHECK, md, NULL) > 0;
}

/* Whether the capital sigma at s[i..i+2) is in Python's Final_Sigma
 * context: a Cased letter before it and none after it, looking past
 * Case_Ignorable characters. */
static bool final_sigma(const gh_tokenizer *t, pcre2_match_data *md, const char *s, size_t len, size_t i) {
        size_t j = i, k;

        do {
                if (j == 0)
                        return false;
                j -= utf8_size(utf8_get_before(s, j));
        } while (has_property(t->case_ignorable, md, s, len, j));
        if (!has_property(t->cased, md, s, len, j))
                return false;
        for (j = i + 2; j < len && has_property(t->case_ignorable, md, s, len, j); j += k)
                utf8_get(s + j, &k);
        return j == len || !has_property(t->cased, md, s, len, j);
}

/* str.lower() of |s| into |out| (room for 2 * len bytes: a code point
 * grows by at most half); the bytes written into |*ret_n|. */
static int lower(const gh_tokenizer *t, const char *s, size_t len, char *out, size_t *ret_n) {
        pcre2_match_data *md = NULL;
        size_t n = 0, k;

        for (size_t i = 0; i < len; i += k) {
                uint32_t cp = utf8_get(s + i, &k);
                if (cp == 0x130) {
                        memcpy(out + n, "i\xcc\x87", 3);
                        n += 3;
                } else if (cp == 0x3A3) {
                        if (!md && !(md = pcre2_match_data_create(1, NULL)))
                                return -ENOMEM;
                        n += utf8_put(out + n, final_sigma(t, md, s, len, i) ? 0x3C2 : 0x3C3);
                } else {
                        n += utf8_put(out + n, lower_cp(cp));
                }
        }
        pcre2_match_data_free(md);
        *ret_n = n;
        return 0;
}

/* ---- BPE --------------------------------------------------------------- */

/* Per call: a word's symbols as a linked list, and a min-heap of
 * (rank << 32 | position) for its adjacent pairs. */
typedef struct bpe {
        size_t cap;             /* bytes of the longest word it has room for */
        int32_t *sym, *prev, *next;
        uint64_t *heap, *level;
        size_t heap_n;
} bpe;

static void bpe_done(bpe *b) {
        free(b->sym);
        free(b->prev);
        free(b->next);
        free(b->heap);
        free(b->level);
}

static int bpe_reserve(bpe *b, size_t n) {
        if (n <= b->cap)
                return 0;
        bpe_done(b);
        *b = (bpe) {.cap = n};
        b->sym = malloc(n * sizeof(*b->sym));
        b->prev = malloc(n * sizeof(*b->prev));
        b->next = malloc(n * sizeof(*b->next));
        b->heap = malloc(3 * n * sizeof(*b->heap)); /* n - 1 pairs, 2 more a merge */
        b->level = malloc(3 * n * sizeof(*b->level));
        if (!b->sym || !b->prev || !b->next || !b->heap || !b->level) {
                bpe_done(b);
                *b = (bpe) {0};
                return -ENOMEM;
        }
        return 0;
}

static void heap_push(bpe *b, uint64_t v) {
        size_t i = b->heap_n++;

        for (; i > 0 && b->heap[(i - 1) / 2] > v; i = (i - 1) / 2)
                b->heap[i] = b->heap[(i - 1) / 2];
        b->heap[i] = v;
}

static uint64_t heap_pop(bpe *b) {
        uint64_t top = b->heap[0], v = b->heap[--b->heap_n];
        size_t i = 0, n = b->heap_n;

        for (size_t c; (c = 2 * i + 1) < n; i = c) {
                if (c + 1 < n && b->heap[c + 1] < b->heap[c])
                        c++;
                if (b->heap[c] >= v)
                        break;
                b->heap[i] = b->heap[c];
        }
        if (n > 0)
                b->heap[i] = v;
        return top;
}

/* Pushes the pair that starts at position |i|, if it has a rank. */
static void push_pair(const gh_tokenizer *t, bpe *b, int32_t i) {
        if (i < 0 || b->next[i] < 0 || b->sym[i] < 0 || b->sym[b->next[i]] < 0)
                return;
        const pair_slot *p = pair_find(t, b->sym[i], b->sym[b->next[i]]);
        if (p->first >= 0)
                heap_push(b, (uint64_t) p->rank << 32 | (uint32_t) i);
}

/* Merges the pair of rank |rank| at position |i| if it is still there. */
static void merge_at(const gh_tokenizer *t, bpe *b, int32_t i, uint32_t rank) {
        const merge *m = &t->merges[rank];
        int32_t j = b->next[i];

        if (b->sym[i] != m->first || j < 0 || b->sym[j] != m->second)
                return;
        b->sym[i] = m->result;
        b->sym[j] = DEAD;
        b->next[i] = b->next[j];
        if (b->next[j] >= 0)
                b->prev[b->next[j]] = i;
        push_pair(t, b, b->prev[i]);
        push_pair(t, b, i);
}

/* The symbols of a pre-token of |n| bytes (n <= b->cap), merged. */
static void bpe_word(const gh_tokenizer *t, bpe *b, const unsigned char *s, size_t n) {
        for (size_t i = 0; i < n; i++) {
                b->sym[i] = i + 1 < n ? t->byte_id[s[i]] : t->byte_end_id[s[i]];
                b->prev[i] = (int32_t) i - 1;
                b->next[i] = i + 1 < n ? (int32_t) i + 1 : -1;
        }
        b->heap_n = 0;
        for (size_t i = 0; i + 1 < n; i++)
                push_pair(t, b, (int32_t) i);
        while (b->heap_n > 0) {
                uint32_t rank = (uint32_t) (b->heap[0] >> 32);
                size_t n_level = 0;

                while (b->heap_n > 0 && (uint32_t) (b->heap[0] >> 32) == rank)
                        b->level[n_level++] = heap_pop(b);
                for (size_t k = 0; k < n_level; k++)
                        merge_at(t, b, (int32_t) (uint32_t) b->level[k], rank);
        }
}

/* ---- encoding ---------------------------------------------------------- */

typedef struct out {
        int32_t *ids;
        size_t max, n;
} out;

static int emit(out *o, int32_t id) {
        if (o->n == o->max)
                return -E2BIG;
        o->ids[o->n++] = id;
        return 0;
}

/* One pre-token of |s|: BOS, EOS, or its BPE symbols. */
static int encode_word(const gh_tokenizer *t, bpe *b, const char *s, size_t n, out *o) {
        if (n == strlen(BOS) && memcmp(s, BOS, n) == 0)
                return emit(o, t->bos);
        if (n == strlen(EOS) && memcmp(s, EOS, n) == 0)
                return emit(o, t->eos);
        bpe_word(t, b, (const unsigned char *) s, n);
        for (int32_t i = 0; i >= 0; i = b->next[i]) {
                int r = emit(o, b->sym[i] >= 0 ? b->sym[i] : t->eos);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* The pre-tokens of cleaned text |s|, encoded. */
static int encode_clean(const gh_tokenizer *t, const char *s, size_t len, out *o) {
        _cleanup_(bpe_done) bpe b = {0};
        pcre2_match_data *md;
        int r = 0;

        if (len == 0)
                return 0;
        if (bpe_reserve(&b, len) < 0 || !(md = pcre2_match_data_create_from_pattern(t->pattern, NULL)))
                return -ENOMEM;
        for (size_t off = 0; off < len && r >= 0;) {
                int rc = pcre2_match(t->pattern, (PCRE2_SPTR) s, len, off, PCRE2_NO_UTF_CHECK, md, NULL);
                if (rc == PCRE2_ERROR_NOMATCH)
                        break;
                if (rc < 0) {
                        r = rc == PCRE2_ERROR_NOMEMORY ? -ENOMEM : -EIO;
                        break;
                }
                const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
                r = encode_word(t, &b, s + ov[0], ov[1] - ov[0], o);
                off = ov[1];
        }
        pcre2_match_data_free(md);
        return r;
}

int gh_tokenizer_encode(const gh_tokenizer *t, const char *text, int32_t *ids, size_t max, size_t *ret_n) {
        size_t len = strnlen(text, GH_TOK_TEXT_MAX + 1), bad, n;
        _cleanup_free_ char *a = NULL, *b = NULL;
        out o = {ids, max, 0};
        int r;

        if (len > GH_TOK_TEXT_MAX)
                return -E2BIG;
        if (!gh_utf8_valid(text, len, &bad))
                return -EINVAL;
        a = malloc(2 * len + 1);
        b = malloc(2 * len + 1);
        if (!a || !b)
                return -ENOMEM;
        n = unescape(text, len, a);
        n = unescape(a, n, b);
        n = clean_space(b, n);
        r = lower(t, b, n, a, &n);
        if (r >= 0)
                r = encode_clean(t, a, n, &o);
        if (r < 0)
                return r;
        *ret_n = o.n;
        return 0;
}
