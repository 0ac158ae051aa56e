/* libFuzzer target for the varlink codec (daemon/common/varlink.c): the
 * reader's framing and the call/reply parsers, without a socket.
 *
 * Input layout: the first byte picks how the rest is cut into chunks for
 * gh_vl_reader_feed(), the rest is the byte stream a peer would send:
 *   0x00          the whole stream in one feed;
 *   0x01..0x7f    fixed chunks of that many bytes;
 *   0x80..0xff    chunks of pseudo-random size 0..(b & 0x7f) + 1, from a
 *                 generator seeded with the byte (empty feeds included).
 * After each chunk every complete frame is drained and checked against the
 * NUL-separated segments of the stream, then parsed both as a call and as a
 * reply. A call that parses gets a reply and an error reply queued in a
 * writer (each must parse back as a reply), and is re-serialized: the text
 * must parse again as the same call and serialize to the same text, and the
 * call rebuilt with gh_vl_call_new() must parse back the same. Any
 * broken invariant abort()s. */
#include <json-c/json.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "common/util.h"
#include "common/varlink.h"

#define MAX_MESSAGE_SIZE 4096
#define MAX_FDS 4
#define MAX_DEPTH 16
#define SERIALIZE_FLAGS (JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE)


static const gh_vl_limits limits = {
        .max_message_size = MAX_MESSAGE_SIZE,
        .max_fds = MAX_FDS,
        .max_depth = MAX_DEPTH,
};

/* Serializes |o| into a malloc'd copy (json-c's buffer belongs to |o|). */
static char *serialize(json_object *o, size_t *ret_len) {
        size_t len = 0;
        const char *s = json_object_to_json_string_length(o, SERIALIZE_FLAGS, &len);

        CHECK(s);
        CHECK(strlen(s) == len); /* varlink frames cannot hold a NUL */
        char *copy = strndup(s, len);
        CHECK(copy);
        *ret_len = len;
        return copy;
}

static void check_reply_text(const char *text, size_t len, const char *error, bool continues) {
        gh_vl_reply p;
        const char *reason = NULL;

        CHECK(gh_vl_reply_parse(text, len, MAX_DEPTH, &p, &reason) == 0);
        CHECK(p.parameters && json_object_is_type(p.parameters, json_type_object));
        CHECK(p.continues == continues);
        CHECK(error ? p.error && strcmp(p.error, error) == 0 : !p.error);
        gh_vl_reply_done(&p);
}

/* A parsed call: queue the replies a server could send, and round-trip it. */
static void exercise_call(gh_vl_call *c) {
        gh_vl_writer w;
        json_object *m;
        size_t expect_bytes = 0;

        CHECK(json_object_object_get_ex(c->root, "method", &m));
        /* The method name the server dispatches is the whole string sent. */
        CHECK(strlen(c->method) == (size_t) json_object_get_string_len(m));
        CHECK(gh_vl_method_name_valid(c->method));
        CHECK(c->parameters && json_object_is_type(c->parameters, json_type_object));
        CHECK(!((c->flags & GH_VL_ONEWAY) && (c->flags & GH_VL_MORE)));

        gh_vl_writer_init(&w);
        if (!(c->flags & GH_VL_ONEWAY)) {
                bool continues = c->flags & GH_VL_MORE;
                json_object *reply = gh_vl_reply_new(json_object_get(c->parameters), continues);
                json_object *ep = json_object_new_object();
                CHECK(reply && ep);
                json_object_object_add(ep, "method", json_object_new_string(c->method));
                json_object *err = gh_vl_error_new("org.varlink.service.MethodNotFound", ep);
                CHECK(err);

                size_t len;
                _cleanup_free_ char *t1 = serialize(reply, &len);
                expect_bytes += len + 1;
                CHECK(gh_vl_writer_queue_json(&w, reply, NULL, 0) == 0);
                _cleanup_free_ char *t2 = serialize(err, &len);
                expect_bytes += len + 1;
                CHECK(gh_vl_writer_queue_json(&w, err, NULL, 0) == 0);
                json_object_put(reply);
                json_object_put(err);

                CHECK(w.n - w.head == 2);
                CHECK(gh_vl_writer_pending(&w) == expect_bytes);
                for (size_t i = w.head; i < w.n; i++) {
                        const gh_vl_outmsg *o = &w.q[i];
                        CHECK(o->len >= 1 && o->data[o->len - 1] == 0 && strlen(o->data) == o->len - 1);
                        CHECK(o->sent == 0 && o->n_fds == 0);
                }
                CHECK(strcmp(w.q[w.head].data, t1) == 0);
                CHECK(strcmp(w.q[w.head + 1].data, t2) == 0);
                check_reply_text(w.q[w.head].data, w.q[w.head].len - 1, NULL, continues);
                check_reply_text(w.q[w.head + 1].data, w.q[w.head + 1].len - 1,
                                 "org.varlink.service.MethodNotFound", false);
        }
        gh_vl_writer_done(&w);

        /* Round trip: what we would send for this call parses back to it. */
        size_t len, len2;
        _cleanup_free_ char *text = serialize(c->root, &len);
        gh_vl_call c2;
        const char *reason = NULL;
        if (gh_vl_call_parse(text, len, MAX_DEPTH, &c2, &reason) != 0) {
                fprintf(stderr, "round trip failed (%s): %s\n", reason ? reason : "?", text);
                abort();
        }
        CHECK(strcmp(c2.method, c->method) == 0);
        CHECK(c2.flags == c->flags);
        _cleanup_free_ char *text2 = serialize(c2.root, &len2);
        if (len2 != len || memcmp(text, text2, len) != 0) {
                fprintf(stderr, "round trip changed the call:\n  %s\n  %s\n", text, text2);
                abort();
        }
        gh_vl_call_done(&c2);

        /* The same call built with gh_vl_call_new() (as a client would)
         * parses back with the same method, flags and parameters. */
        json_object *built = gh_vl_call_new(c->method, json_object_get(c->parameters), c->flags);
        CHECK(built);
        _cleanup_free_ char *text3 = serialize(built, &len);
        json_object_put(built);
        CHECK(gh_vl_call_parse(text3, len, MAX_DEPTH, &c2, &reason) == 0);
        CHECK(strcmp(c2.method, c->method) == 0 && c2.flags == c->flags);
        _cleanup_free_ char *p1 = serialize(c->parameters, &len);
        _cleanup_free_ char *p2 = serialize(c2.parameters, &len2);
        CHECK(strcmp(p1, p2) == 0);
        gh_vl_call_done(&c2);
}

static void exercise_reply(gh_vl_reply *p) {
        CHECK(p->parameters && json_object_is_type(p->parameters, json_type_object));
        if (p->error) {
                json_object *e;
                CHECK(json_object_object_get_ex(p->root, "error", &e));
                CHECK(strlen(p->error) == (size_t) json_object_get_string_len(e));
                CHECK(gh_vl_method_name_valid(p->error));
        }
        size_t len;
        _cleanup_free_ char *text = serialize(p->root, &len);
        check_reply_text(text, len, p->error, p->continues);
}

static void handle_frame(const gh_vl_frame *f) {
        const char *reason = NULL;
        gh_vl_call c;
        gh_vl_reply p;
        int r;

        r = gh_vl_call_parse(f->text, f->len, MAX_DEPTH, &c, &reason);
        if (r == 0) {
                exercise_call(&c);
                gh_vl_call_done(&c);
        } else
                CHECK(r == -ENOMEM || (r == -EBADMSG && reason && reason[0]));

        reason = NULL;
        r = gh_vl_reply_parse(f->text, f->len, MAX_DEPTH, &p, &reason);
        if (r == 0) {
                exercise_reply(&p);
                gh_vl_reply_done(&p);
        } else
                CHECK(r == -ENOMEM || (r == -EBADMSG && reason && reason[0]));
}

typedef struct chunker {
        uint8_t mode;
        uint32_t state;
} chunker;

static size_t next_chunk(chunker *ch, size_t left) {
        size_t n;

        if (ch->mode == 0)
                n = left;
        else if (ch->mode < 0x80)
                n = ch->mode;
        else {
                ch->state = ch->state * 1103515245u + 12345u;
                n = (ch->state >> 16) % ((size_t) (ch->mode & 0x7f) + 2);
        }
        return n < left ? n : left;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        gh_vl_reader r;
        chunker ch;
        const char *stream;
        size_t n, fed = 0, consumed = 0;
        bool dead = false;

        if (size < 1)
                return 0;
        ch = (chunker) {.mode = data[0], .state = data[0]};
        stream = (const char *) data + 1;
        n = size - 1;

        gh_vl_reader_init(&r, &limits);
        /* At least one feed, empty if the stream is (mode 0x80 and up feeds
         * empty chunks too). */
        do {
                size_t k = next_chunk(&ch, n - fed);
                if (gh_vl_reader_feed(&r, stream + fed, k, NULL, 0) < 0)
                        abort(); /* no fds, so only ENOMEM could fail */
                fed += k;
                CHECK(gh_vl_reader_buffered(&r) == fed - consumed);

                for (;;) {
                        gh_vl_frame f;
                        int ret = gh_vl_reader_next(&r, &f);
                        if (ret == 0) {
                                /* Everything complete was handed out. */
                                size_t buffered = gh_vl_reader_buffered(&r);
                                CHECK(gh_vl_reader_frames(&r) == 0);
                                CHECK(buffered == fed - consumed);
                                CHECK(buffered <= MAX_MESSAGE_SIZE);
                                CHECK(!memchr(stream + consumed, 0, buffered));
                                CHECK(gh_vl_reader_has_partial(&r) == (buffered > 0));
                                break;
                        }
                        if (ret < 0) {
                                /* The only error without fds: a message (or
                                 * an unterminated tail) over the limit. */
                                CHECK(ret == -EMSGSIZE);
                                const char *nul = memchr(stream + consumed, 0, fed - consumed);
                                size_t len = nul ? (size_t) (nul - (stream + consumed)) : fed - consumed;
                                CHECK(len > MAX_MESSAGE_SIZE);
                                dead = true;
                                break;
                        }
                        /* The frame is the next NUL-terminated segment. */
                        CHECK(f.text && f.len == strlen(f.text) && f.len <= MAX_MESSAGE_SIZE);
                        CHECK(f.n_fds == 0 && !f.fds);
                        CHECK(consumed + f.len < fed);
                        CHECK(memcmp(f.text, stream + consumed, f.len + 1) == 0);
                        consumed += f.len + 1;
                        handle_frame(&f);
                        gh_vl_frame_done(&f);
                }
        } while (!dead && fed < n);
        if (!dead)
                CHECK(fed == n);
        gh_vl_reader_done(&r);
        return 0;
}
