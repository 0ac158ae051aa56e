/* Varlink codec: framing, fd passing, message parsing. See varlink.h. */
#include <ctype.h>
#include <string.h>
#include <sys/socket.h>

#include "util.h"
#include "varlink.h"

#define READ_CHUNK_MIN 4096

void gh_vl_frame_done(gh_vl_frame *f) {
        if (!f)
                return;
        free(f->text);
        gh_close_many(f->fds, f->n_fds);
        free(f->fds);
        *f = (gh_vl_frame) {0};
}

size_t gh_vl_frame_take_fds(gh_vl_frame *f, int **ret_fds) {
        size_t n = f->n_fds;

        *ret_fds = TAKE_PTR(f->fds);
        f->n_fds = 0;
        return n;
}

void gh_vl_reader_init(gh_vl_reader *r, const gh_vl_limits *limits) {
        *r = (gh_vl_reader) {.limits = *limits};
}

void gh_vl_reader_done(gh_vl_reader *r) {
        for (size_t i = 0; i < r->n_fds; i++)
                gh_close(r->fds[i].fd);
        free(r->fds);
        free(r->buf);
        *r = (gh_vl_reader) {0};
}

size_t gh_vl_reader_frames(const gh_vl_reader *r) {
        return r->n_frames;
}

size_t gh_vl_reader_buffered(const gh_vl_reader *r) {
        return r->len - r->start;
}

bool gh_vl_reader_has_partial(const gh_vl_reader *r) {
        if (r->len == r->start)
                return false; /* r->buf may still be NULL */
        const char *nul = memrchr(r->buf + r->start, 0, r->len - r->start);
        size_t after = nul ? (size_t) (r->buf + r->len - nul - 1) : r->len - r->start;
        return after > 0;
}

/* Makes room for |n| more bytes, compacting consumed space first. */
static int reader_reserve(gh_vl_reader *r, size_t n) {
        if (r->start > 0 && (r->start >= r->len / 2 || r->cap - r->len < n)) {
                memmove(r->buf, r->buf + r->start, r->len - r->start);
                r->len -= r->start;
                r->start = 0;
        }
        if (r->cap - r->len >= n)
                return 0;
        size_t want = r->len + n, cap = r->cap ? r->cap : READ_CHUNK_MIN;
        while (cap < want)
                cap *= 2;
        char *b = realloc(r->buf, cap);
        if (!b)
                return -ENOMEM;
        r->buf = b;
        r->cap = cap;
        return 0;
}

static size_t count_nuls(const char *p, size_t n) {
        size_t count = 0;
        const char *end = p + n;

        while (p < end && (p = memchr(p, 0, (size_t) (end - p)))) {
                count++;
                p++;
        }
        return count;
}

static size_t fd_budget(const gh_vl_reader *r) {
        return (size_t) r->limits.max_fds * 4; /* a few small messages in flight */
}

static int reader_add_fds(gh_vl_reader *r, const int *fds, size_t n_fds, uint64_t offset) {
        if (n_fds == 0)
                return 0;
        if (r->n_fds + n_fds > fd_budget(r) || n_fds > r->limits.max_fds) {
                gh_close_many(fds, n_fds);
                return -ETOOMANYREFS;
        }
        if (r->n_fds + n_fds > r->cap_fds) {
                size_t cap = r->cap_fds ? r->cap_fds * 2 : 8;
                while (cap < r->n_fds + n_fds)
                        cap *= 2;
                gh_vl_pending_fd *p = realloc(r->fds, cap * sizeof(*p));
                if (!p) {
                        gh_close_many(fds, n_fds);
                        return -ENOMEM;
                }
                r->fds = p;
                r->cap_fds = cap;
        }
        for (size_t i = 0; i < n_fds; i++)
                r->fds[r->n_fds++] = (gh_vl_pending_fd) {.fd = fds[i], .offset = offset};
        return 0;
}

static uint64_t reader_end_offset(const gh_vl_reader *r) {
        return r->offset + (r->len - r->start);
}

/* Where fds that came with |n| new bytes belong. A recvmsg that returns fds
 * ends inside (or at the end of) the skb that carried them: the kernel
 * stops reading right after it, but may have started in earlier data. The
 * writer sends each message with its own sendmsg, fds with the first, so
 * the last byte received belongs to the message the fds were sent with. */
static uint64_t fd_offset(const gh_vl_reader *r, size_t n) {
        return reader_end_offset(r) + (n > 0 ? n - 1 : 0);
}

int gh_vl_reader_feed(gh_vl_reader *r, const void *data, size_t n, const int *fds, size_t n_fds) {
        int ret = reader_add_fds(r, fds, n_fds, fd_offset(r, n));
        if (ret < 0)
                return ret;
        if (n == 0)
                return 0; /* r->buf may still be NULL, and NULL + 0 is UB */
        ret = reader_reserve(r, n);
        if (ret < 0)
                return ret;
        memcpy(r->buf + r->len, data, n);
        r->n_frames += count_nuls(r->buf + r->len, n);
        r->len += n;
        return 0;
}

/* Collects SCM_RIGHTS fds from a received message. */
static size_t cmsg_fds(struct msghdr *mh, int *out, size_t max) {
        size_t n = 0;

        for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR(mh, c)) {
                if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
                        continue;
                size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                const int *p = (const int *) CMSG_DATA(c);
                for (size_t i = 0; i < k; i++) {
                        if (n < max)
                                out[n++] = p[i];
                        else
                                gh_close(p[i]);
                }
        }
        return n;
}

ssize_t gh_vl_reader_recv(gh_vl_reader *r, int sockfd, size_t max_bytes) {
        size_t max_fds = r->limits.max_fds ? r->limits.max_fds : 1;
        union {
                struct cmsghdr align;
                char buf[CMSG_SPACE(sizeof(int) * GH_VL_MAX_FDS_HARD)];
        } control;
        int fds[GH_VL_MAX_FDS_HARD];

        if (max_bytes < 1)
                return -ENOBUFS;
        if (max_fds > GH_VL_MAX_FDS_HARD)
                max_fds = GH_VL_MAX_FDS_HARD;
        int ret = reader_reserve(r, max_bytes);
        if (ret < 0)
                return ret;

        struct iovec iov = {.iov_base = r->buf + r->len, .iov_len = max_bytes};
        struct msghdr mh = {
                .msg_iov = &iov,
                .msg_iovlen = 1,
                .msg_control = control.buf,
                .msg_controllen = CMSG_SPACE(sizeof(int) * max_fds),
        };
        ssize_t n = recvmsg(sockfd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n < 0)
                return errno == EWOULDBLOCK ? -EAGAIN : gh_negerrno();

        size_t n_fds = cmsg_fds(&mh, fds, max_fds);
        if (mh.msg_flags & MSG_CTRUNC) {
                gh_close_many(fds, n_fds);
                return -ETOOMANYREFS;
        }
        ret = reader_add_fds(r, fds, n_fds, fd_offset(r, (size_t) n));
        if (ret < 0)
                return ret;
        r->n_frames += count_nuls(r->buf + r->len, (size_t) n);
        r->len += (size_t) n;
        return n;
}

/* Moves the pending fds that arrived with stream bytes before |end| into
 * the frame. */
static int frame_take_fds(gh_vl_reader *r, uint64_t end, gh_vl_frame *f) {
        size_t k = 0;

        while (k < r->n_fds && r->fds[k].offset < end)
                k++;
        if (k == 0)
                return 0;
        if (k > r->limits.max_fds)
                return -ETOOMANYREFS;
        f->fds = malloc(k * sizeof(int));
        if (!f->fds)
                return -ENOMEM;
        for (size_t i = 0; i < k; i++)
                f->fds[i] = r->fds[i].fd;
        f->n_fds = k;
        memmove(r->fds, r->fds + k, (r->n_fds - k) * sizeof(*r->fds));
        r->n_fds -= k;
        return 0;
}

int gh_vl_reader_next(gh_vl_reader *r, gh_vl_frame *ret) {
        size_t avail = r->len - r->start;
        if (avail == 0)
                return 0; /* r->buf may still be NULL, and NULL + 0 is UB */
        const char *p = r->buf + r->start;
        const char *nul = r->n_frames > 0 ? memchr(p, 0, avail) : NULL;

        if (!nul) {
                if (avail > r->limits.max_message_size)
                        return -EMSGSIZE;
                return 0;
        }
        size_t len = (size_t) (nul - p);
        if (len > r->limits.max_message_size)
                return -EMSGSIZE;

        gh_vl_frame f = {0};
        int k = frame_take_fds(r, r->offset + len + 1, &f);
        if (k < 0)
                return k;
        f.text = malloc(len + 1);
        if (!f.text) {
                gh_vl_frame_done(&f);
                return -ENOMEM;
        }
        memcpy(f.text, p, len + 1);
        f.len = len;
        r->start += len + 1;
        r->offset += len + 1;
        r->n_frames--;
        if (r->start == r->len)
                r->start = r->len = 0;
        *ret = f;
        return 1;
}

void gh_vl_writer_init(gh_vl_writer *w) {
        *w = (gh_vl_writer) {0};
}

static void outmsg_done(gh_vl_outmsg *m) {
        free(m->data);
        gh_close_many(m->fds, m->n_fds);
        free(m->fds);
}

void gh_vl_writer_done(gh_vl_writer *w) {
        for (size_t i = w->head; i < w->n; i++)
                outmsg_done(&w->q[i]);
        free(w->q);
        *w = (gh_vl_writer) {0};
}

size_t gh_vl_writer_pending(const gh_vl_writer *w) {
        return w->bytes;
}

static int writer_grow(gh_vl_writer *w) {
        if (w->head > 0) {
                memmove(w->q, w->q + w->head, (w->n - w->head) * sizeof(*w->q));
                w->n -= w->head;
                w->head = 0;
        }
        if (w->n < w->cap)
                return 0;
        size_t cap = w->cap ? w->cap * 2 : 8;
        gh_vl_outmsg *q = realloc(w->q, cap * sizeof(*q));
        if (!q)
                return -ENOMEM;
        w->q = q;
        w->cap = cap;
        return 0;
}

int gh_vl_writer_queue(gh_vl_writer *w, const char *text, size_t len, const int *fds, size_t n_fds) {
        gh_vl_outmsg m = {.len = len + 1};

        if (n_fds > GH_VL_MAX_FDS_HARD || writer_grow(w) < 0)
                goto fail;
        m.data = malloc(len + 1);
        if (!m.data)
                goto fail;
        memcpy(m.data, text, len);
        m.data[len] = 0;
        if (n_fds > 0) {
                m.fds = malloc(n_fds * sizeof(int));
                if (!m.fds)
                        goto fail;
                memcpy(m.fds, fds, n_fds * sizeof(int));
                m.n_fds = n_fds;
        }
        w->q[w->n++] = m;
        w->bytes += m.len;
        return 0;
fail:
        free(m.data);
        gh_close_many(fds, n_fds);
        return n_fds > GH_VL_MAX_FDS_HARD ? -ETOOMANYREFS : -ENOMEM;
}

int gh_vl_writer_queue_json(gh_vl_writer *w, json_object *msg, const int *fds, size_t n_fds) {
        size_t len;
        const char *s = json_object_to_json_string_length(
                msg, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &len);

        if (!s) {
                gh_close_many(fds, n_fds);
                return -ENOMEM;
        }
        return gh_vl_writer_queue(w, s, len, fds, n_fds);
}

/* Sends (part of) the head message; its fds go with its first byte. */
static ssize_t send_head(gh_vl_outmsg *m, int sockfd) {
        union {
                struct cmsghdr align;
                char buf[CMSG_SPACE(sizeof(int) * GH_VL_MAX_FDS_HARD)];
        } control;
        struct iovec iov = {.iov_base = m->data + m->sent, .iov_len = m->len - m->sent};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};

        if (m->sent == 0 && m->n_fds > 0) {
                memset(&control, 0, sizeof(control));
                mh.msg_control = control.buf;
                mh.msg_controllen = CMSG_SPACE(sizeof(int) * m->n_fds);
                struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
                c->cmsg_level = SOL_SOCKET;
                c->cmsg_type = SCM_RIGHTS;
                c->cmsg_len = CMSG_LEN(sizeof(int) * m->n_fds);
                memcpy(CMSG_DATA(c), m->fds, sizeof(int) * m->n_fds);
        }
        return sendmsg(sockfd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
}

int gh_vl_writer_flush(gh_vl_writer *w, int sockfd) {
        while (w->head < w->n) {
                gh_vl_outmsg *m = &w->q[w->head];
                ssize_t n = send_head(m, sockfd);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return errno == EWOULDBLOCK ? 0 : gh_negerrno();
                }
                if (m->sent == 0 && m->n_fds > 0) {
                        gh_close_many(m->fds, m->n_fds); /* the peer has its copies */
                        m->n_fds = 0;
                }
                m->sent += (size_t) n;
                w->bytes -= (size_t) n;
                if (m->sent < m->len)
                        continue;
                outmsg_done(m);
                w->head++;
        }
        w->head = w->n = 0;
        return 1;
}

int gh_vl_json_parse(const char *text, size_t len, unsigned max_depth, json_object **ret,
                     const char **ret_reason) {
        json_tokener *tok;
        json_object *o;

        if (len == 0) {
                *ret_reason = "empty message";
                return -EBADMSG;
        }
        tok = json_tokener_new_ex((int) (max_depth ? max_depth : 1));
        if (!tok)
                return -ENOMEM;
        json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
        o = json_tokener_parse_ex(tok, text, (int) len);
        enum json_tokener_error e = json_tokener_get_error(tok);
        size_t end = json_tokener_get_parse_end(tok);
        if (e == json_tokener_continue) {
                /* The terminating NUL completes a bare number; anything
                 * still open after it was cut short. */
                o = json_tokener_parse_ex(tok, "", 1);
                e = json_tokener_get_error(tok) == json_tokener_success ? json_tokener_success : json_tokener_continue;
                end = len;
        }
        json_tokener_free(tok);

        if (e == json_tokener_success && end >= len && o) {
                *ret = o;
                return 0;
        }
        json_object_put(o);
        switch (e) {
        case json_tokener_error_depth:
                *ret_reason = "JSON nesting too deep";
                break;
        case json_tokener_error_parse_utf8_string:
                *ret_reason = "invalid UTF-8 in a string";
                break;
        case json_tokener_continue:
                *ret_reason = "truncated JSON";
                break;
        case json_tokener_success:
                *ret_reason = o ? "trailing data after the JSON value" : "empty message";
                break;
        default:
                *ret_reason = "malformed JSON";
                break;
        }
        return -EBADMSG;
}

bool gh_vl_interface_name_valid(const char *s, size_t len) {
        /* Reverse-domain name: dot-separated labels of [A-Za-z0-9-], at
         * least two labels, each starting with a letter. */
        size_t labels = 0, label_len = 0;

        if (len == 0 || len > 255)
                return false;
        for (size_t i = 0; i < len; i++) {
                char c = s[i];
                if (c == '.') {
                        if (label_len == 0)
                                return false;
                        labels++;
                        label_len = 0;
                } else if (isalpha((unsigned char) c) || (label_len > 0 && (isdigit((unsigned char) c) || c == '-'))) {
                        label_len++;
                } else
                        return false;
        }
        return label_len > 0 && labels >= 1;
}

bool gh_vl_method_name_valid(const char *s) {
        const char *dot = s ? strrchr(s, '.') : NULL;

        if (!dot || !gh_vl_interface_name_valid(s, (size_t) (dot - s)))
                return false;
        const char *m = dot + 1;
        if (!isupper((unsigned char) *m) || strlen(m) > 255)
                return false;
        for (; *m; m++)
                if (!isalnum((unsigned char) *m))
                        return false;
        return true;
}

/* A JSON string holding a method or error name. The name is used as a C
 * string, so one with an escaped NUL ("io.gpuhost.Ping\u0000x") must not
 * pass as the part before the NUL. */
static bool name_string_valid(json_object *v) {
        const char *s = json_object_get_string(v);

        return strlen(s) == (size_t) json_object_get_string_len(v) && gh_vl_method_name_valid(s);
}

static int get_bool(json_object *root, const char *key, bool *ret, const char **ret_reason,
                    const char *reason) {
        json_object *v;

        if (!json_object_object_get_ex(root, key, &v) || json_object_is_type(v, json_type_null)) {
                *ret = false;
                return 0;
        }
        if (!json_object_is_type(v, json_type_boolean)) {
                *ret_reason = reason;
                return -EBADMSG;
        }
        *ret = json_object_get_boolean(v);
        return 0;
}

/* Rejects keys of a message object that the protocol does not define. */
static int check_keys(json_object *root, const char *const *allowed, const char **ret_reason,
                      const char *reason) {
        json_object_object_foreach(root, key, val) {
                (void) val;
                bool ok = false;
                for (size_t i = 0; allowed[i]; i++)
                        ok = ok || strcmp(key, allowed[i]) == 0;
                if (!ok) {
                        *ret_reason = reason;
                        return -EBADMSG;
                }
        }
        return 0;
}

/* Returns the message's "parameters" object, adding an empty one if absent. */
static int get_parameters(json_object *root, json_object **ret, const char **ret_reason) {
        json_object *p;

        if (!json_object_object_get_ex(root, "parameters", &p) || json_object_is_type(p, json_type_null)) {
                p = json_object_new_object();
                if (!p || json_object_object_add(root, "parameters", p) < 0)
                        return -ENOMEM;
        } else if (!json_object_is_type(p, json_type_object)) {
                *ret_reason = "'parameters' is not an object";
                return -EBADMSG;
        }
        *ret = p;
        return 0;
}

static int parse_call_fields(json_object *root, gh_vl_call *c, const char **ret_reason) {
        static const char *const keys[] = {"method", "parameters", "oneway", "more", "upgrade", NULL};
        json_object *m;
        bool oneway, more, upgrade;
        int r;

        if (!json_object_is_type(root, json_type_object)) {
                *ret_reason = "message is not a JSON object";
                return -EBADMSG;
        }
        r = check_keys(root, keys, ret_reason, "unknown field in call");
        if (r < 0)
                return r;
        if (!json_object_object_get_ex(root, "method", &m) || !json_object_is_type(m, json_type_string)) {
                *ret_reason = "'method' missing or not a string";
                return -EBADMSG;
        }
        c->method = json_object_get_string(m);
        if (!name_string_valid(m)) {
                *ret_reason = "'method' is not of the form interface.Method";
                return -EBADMSG;
        }
        if (get_bool(root, "oneway", &oneway, ret_reason, "'oneway' is not a boolean") < 0 ||
            get_bool(root, "more", &more, ret_reason, "'more' is not a boolean") < 0 ||
            get_bool(root, "upgrade", &upgrade, ret_reason, "'upgrade' is not a boolean") < 0)
                return -EBADMSG;
        if (oneway && more) {
                *ret_reason = "'oneway' and 'more' exclude each other";
                return -EBADMSG;
        }
        c->flags = (oneway ? GH_VL_ONEWAY : 0) | (more ? GH_VL_MORE : 0) | (upgrade ? GH_VL_UPGRADE : 0);
        return get_parameters(root, &c->parameters, ret_reason);
}

int gh_vl_call_parse(const char *text, size_t len, unsigned max_depth, gh_vl_call *ret,
                     const char **ret_reason) {
        gh_vl_call c = {0};
        int r = gh_vl_json_parse(text, len, max_depth, &c.root, ret_reason);

        if (r < 0)
                return r;
        r = parse_call_fields(c.root, &c, ret_reason);
        if (r < 0) {
                json_object_put(c.root);
                return r;
        }
        *ret = c;
        return 0;
}

void gh_vl_call_done(gh_vl_call *c) {
        if (c)
                json_object_put(c->root);
        *c = (gh_vl_call) {0};
}

static int parse_reply_fields(json_object *root, gh_vl_reply *p, const char **ret_reason) {
        static const char *const keys[] = {"parameters", "continues", "error", NULL};
        json_object *e;
        int r;

        if (!json_object_is_type(root, json_type_object)) {
                *ret_reason = "message is not a JSON object";
                return -EBADMSG;
        }
        r = check_keys(root, keys, ret_reason, "unknown field in reply");
        if (r < 0)
                return r;
        if (json_object_object_get_ex(root, "error", &e) && !json_object_is_type(e, json_type_null)) {
                if (!json_object_is_type(e, json_type_string) || !name_string_valid(e)) {
                        *ret_reason = "'error' is not an error name";
                        return -EBADMSG;
                }
                p->error = json_object_get_string(e);
        }
        r = get_bool(root, "continues", &p->continues, ret_reason, "'continues' is not a boolean");
        if (r < 0)
                return r;
        return get_parameters(root, &p->parameters, ret_reason);
}

int gh_vl_reply_parse(const char *text, size_t len, unsigned max_depth, gh_vl_reply *ret,
                      const char **ret_reason) {
        gh_vl_reply p = {0};
        int r = gh_vl_json_parse(text, len, max_depth, &p.root, ret_reason);

        if (r < 0)
                return r;
        r = parse_reply_fields(p.root, &p, ret_reason);
        if (r < 0) {
                json_object_put(p.root);
                return r;
        }
        *ret = p;
        return 0;
}

void gh_vl_reply_done(gh_vl_reply *r) {
        if (r)
                json_object_put(r->root);
        *r = (gh_vl_reply) {0};
}

json_object *gh_vl_call_new(const char *method, json_object *parameters, unsigned flags) {
        json_object *o = json_object_new_object();

        if (!o) {
                json_object_put(parameters);
                return NULL;
        }
        json_object_object_add(o, "method", json_object_new_string(method));
        json_object_object_add(o, "parameters", parameters ? parameters : json_object_new_object());
        if (flags & GH_VL_ONEWAY)
                json_object_object_add(o, "oneway", json_object_new_boolean(1));
        if (flags & GH_VL_MORE)
                json_object_object_add(o, "more", json_object_new_boolean(1));
        if (flags & GH_VL_UPGRADE)
                json_object_object_add(o, "upgrade", json_object_new_boolean(1));
        return o;
}

json_object *gh_vl_reply_new(json_object *parameters, bool continues) {
        json_object *o = json_object_new_object();

        if (!o) {
                json_object_put(parameters);
                return NULL;
        }
        json_object_object_add(o, "parameters", parameters ? parameters : json_object_new_object());
        if (continues)
                json_object_object_add(o, "continues", json_object_new_boolean(1));
        return o;
}

json_object *gh_vl_error_new(const char *error, json_object *parameters) {
        json_object *o = gh_vl_reply_new(parameters, false);

        if (o)
                json_object_object_add(o, "error", json_object_new_string(error));
        return o;
}
