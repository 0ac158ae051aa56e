/* Varlink codec: NUL-terminated JSON messages on a stream socket, with file
 * descriptors passed as SCM_RIGHTS ancillary data.
 *
 * Three layers, each usable on its own (the fuzz target drives the first two
 * without a socket):
 *  - the reader splits received bytes into frames and attaches to each frame
 *    the fds that arrived with its bytes; it enforces the message size and
 *    per-message fd limits;
 *  - the message parser turns a frame into a call or reply, with a JSON depth
 *    limit, UTF-8 validation and strict field typing, and says why it refused;
 *  - the writer queues outgoing messages (with fds, which it then owns) and
 *    flushes them with non-blocking sendmsg.
 * Nothing here logs or blocks. */
#pragma once

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GH_VL_MAX_FDS_HARD 253 /* SCM_MAX_FD in the kernel */

typedef struct gh_vl_limits {
        size_t max_message_size; /* bytes of JSON, not counting the NUL */
        unsigned max_fds;        /* fds attached to one message */
        unsigned max_depth;      /* JSON nesting depth */
} gh_vl_limits;

/* One complete received message. */
typedef struct gh_vl_frame {
        char *text;  /* NUL-terminated JSON text, owned */
        size_t len;  /* strlen(text) */
        int *fds;    /* received with this message, owned, CLOEXEC */
        size_t n_fds;
} gh_vl_frame;

void gh_vl_frame_done(gh_vl_frame *f);
/* Moves fds out of the frame: the caller owns them afterwards. */
size_t gh_vl_frame_take_fds(gh_vl_frame *f, int **ret_fds);

typedef struct gh_vl_pending_fd {
        int fd;
        uint64_t offset; /* stream offset of the last byte it came with */
} gh_vl_pending_fd;

typedef struct gh_vl_reader {
        gh_vl_limits limits;
        char *buf;
        size_t start, len, cap; /* valid bytes are buf[start, len) */
        uint64_t offset;        /* stream offset of buf[start] */
        size_t n_frames;        /* complete frames buffered */
        gh_vl_pending_fd *fds;
        size_t n_fds, cap_fds;
} gh_vl_reader;

void gh_vl_reader_init(gh_vl_reader *r, const gh_vl_limits *limits);
void gh_vl_reader_done(gh_vl_reader *r);
/* Appends received bytes and the fds that came with them; takes ownership of
 * the fds (closes them on failure). -ETOOMANYREFS: too many fds buffered. */
int gh_vl_reader_feed(gh_vl_reader *r, const void *data, size_t n, const int *fds, size_t n_fds);
/* One non-blocking recvmsg (MSG_CMSG_CLOEXEC) of up to |max_bytes|.
 * Returns bytes read, 0 on EOF, -EAGAIN, -ETOOMANYREFS when more fds came
 * than a message may carry (they are closed), or another -errno. */
ssize_t gh_vl_reader_recv(gh_vl_reader *r, int sockfd, size_t max_bytes);
/* Returns 1 and a frame, 0 if no complete frame is buffered, -EMSGSIZE if
 * the next message is longer than allowed, -ETOOMANYREFS if it carries more
 * fds than allowed. After an error the stream is unusable. */
int gh_vl_reader_next(gh_vl_reader *r, gh_vl_frame *ret);
/* Complete frames buffered, and whether a partial message is buffered. */
size_t gh_vl_reader_frames(const gh_vl_reader *r);
size_t gh_vl_reader_buffered(const gh_vl_reader *r);
bool gh_vl_reader_has_partial(const gh_vl_reader *r);

typedef struct gh_vl_outmsg {
        char *data; /* JSON text plus its terminating NUL */
        size_t len, sent;
        int *fds;
        size_t n_fds;
} gh_vl_outmsg;

typedef struct gh_vl_writer {
        gh_vl_outmsg *q;
        size_t head, n, cap; /* queued messages are q[head, n) */
        size_t bytes;        /* bytes not yet sent */
} gh_vl_writer;

void gh_vl_writer_init(gh_vl_writer *w);
void gh_vl_writer_done(gh_vl_writer *w);
/* Queues a message; takes ownership of the fds (closed on failure too). */
int gh_vl_writer_queue(gh_vl_writer *w, const char *text, size_t len, const int *fds, size_t n_fds);
int gh_vl_writer_queue_json(gh_vl_writer *w, json_object *msg, const int *fds, size_t n_fds);
/* Sends what it can without blocking. 1: queue empty, 0: would block,
 * -errno on a dead connection (EPIPE, ECONNRESET, ...). */
int gh_vl_writer_flush(gh_vl_writer *w, int sockfd);
size_t gh_vl_writer_pending(const gh_vl_writer *w);

/* Parses one JSON value with the depth limit and UTF-8 validation; on
 * failure returns -EBADMSG and a static reason. */
int gh_vl_json_parse(const char *text, size_t len, unsigned max_depth, json_object **ret,
                     const char **ret_reason);

enum {
        GH_VL_ONEWAY = 1 << 0,
        GH_VL_MORE = 1 << 1,
        GH_VL_UPGRADE = 1 << 2,
};

typedef struct gh_vl_call {
        json_object *root;       /* owned */
        const char *method;      /* "interface.Method", inside root */
        json_object *parameters; /* inside root; an empty object if absent */
        unsigned flags;          /* GH_VL_* */
} gh_vl_call;

typedef struct gh_vl_reply {
        json_object *root;
        json_object *parameters; /* never NULL */
        const char *error;       /* NULL unless an error reply */
        bool continues;
} gh_vl_reply;

int gh_vl_call_parse(const char *text, size_t len, unsigned max_depth, gh_vl_call *ret,
                     const char **ret_reason);
void gh_vl_call_done(gh_vl_call *c);
int gh_vl_reply_parse(const char *text, size_t len, unsigned max_depth, gh_vl_reply *ret,
                      const char **ret_reason);
void gh_vl_reply_done(gh_vl_reply *r);

/* "org.example.Method": a valid interface name, a dot, a method name. */
bool gh_vl_method_name_valid(const char *s);
bool gh_vl_interface_name_valid(const char *s, size_t len);

/* Message builders; each takes ownership of |parameters| (may be NULL). */
json_object *gh_vl_call_new(const char *method, json_object *parameters, unsigned flags);
json_object *gh_vl_reply_new(json_object *parameters, bool continues);
json_object *gh_vl_error_new(const char *error, json_object *parameters);
