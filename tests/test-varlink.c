/* Unit tests for the varlink codec (daemon/common/varlink.c): framing,
 * partial reads, size and fd limits, fd passing over a real socketpair,
 * malformed messages, and non-blocking writes that do not fit at once. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <dirent.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "fdcount.h"
#include "common/util.h"
#include "common/varlink.h"

static const gh_vl_limits limits = {.max_message_size = 64, .max_fds = 4, .max_depth = 8};

static int count_open_fds(void) {
        int n = gh_test_count_open_fds();

        assert_true(n >= 0);
        return n;
}

static void test_frames_in_one_feed(void **state) {
        gh_vl_reader r;
        gh_vl_frame f;

        gh_vl_reader_init(&r, &limits);
        assert_int_equal(gh_vl_reader_feed(&r, "{\"a\":1}\0{}\0{\"b", 14, NULL, 0), 0);
        assert_int_equal(gh_vl_reader_frames(&r), 2);
        assert_int_equal(gh_vl_reader_next(&r, &f), 1);
        assert_string_equal(f.text, "{\"a\":1}");
        assert_int_equal(f.len, 7);
        gh_vl_frame_done(&f);
        assert_int_equal(gh_vl_reader_next(&r, &f), 1);
        assert_string_equal(f.text, "{}");
        gh_vl_frame_done(&f);
        assert_int_equal(gh_vl_reader_next(&r, &f), 0);
        assert_true(gh_vl_reader_has_partial(&r));
        assert_int_equal(gh_vl_reader_feed(&r, "\":2}\0", 5, NULL, 0), 0);
        assert_int_equal(gh_vl_reader_next(&r, &f), 1);
        assert_string_equal(f.text, "{\"b\":2}");
        gh_vl_frame_done(&f);
        assert_false(gh_vl_reader_has_partial(&r));
        gh_vl_reader_done(&r);
}

static void test_byte_by_byte(void **state) {
        const char msg[] = "{\"method\":\"io.gpuhost.Ping\"}";
        gh_vl_reader r;
        gh_vl_frame f;
        gh_vl_limits big = limits;

        big.max_message_size = 4096;
        gh_vl_reader_init(&r, &big);
        for (int round = 0; round < 3; round++)
                for (size_t i = 0; i < sizeof(msg); i++) { /* includes the NUL */
                        assert_int_equal(gh_vl_reader_next(&r, &f), 0);
                        assert_int_equal(gh_vl_reader_feed(&r, msg + i, 1, NULL, 0), 0);
                        if (i + 1 == sizeof(msg)) {
                                assert_int_equal(gh_vl_reader_next(&r, &f), 1);
                                assert_string_equal(f.text, msg);
                                gh_vl_frame_done(&f);
                        }
                }
        gh_vl_reader_done(&r);
}

static void test_size_limit(void **state) {
        char buf[200];
        gh_vl_reader r;
        gh_vl_frame f;

        /* Exactly the limit is fine. */
        memset(buf, 'x', sizeof(buf));
        buf[64] = 0;
        gh_vl_reader_init(&r, &limits);
        assert_int_equal(gh_vl_reader_feed(&r, buf, 65, NULL, 0), 0);
        assert_int_equal(gh_vl_reader_next(&r, &f), 1);
        assert_int_equal(f.len, 64);
        gh_vl_frame_done(&f);
        /* One more byte, complete or not, is refused. */
        buf[64] = 'x';
        assert_int_equal(gh_vl_reader_feed(&r, buf, 64, NULL, 0), 0);
        assert_int_equal(gh_vl_reader_next(&r, &f), 0); /* 64 bytes, no NUL yet */
        assert_int_equal(gh_vl_reader_feed(&r, "y", 1, NULL, 0), 0);
        assert_int_equal(gh_vl_reader_next(&r, &f), -EMSGSIZE);
        gh_vl_reader_done(&r);

        gh_vl_reader_init(&r, &limits);
        memset(buf, 'x', sizeof(buf));
        buf[100] = 0;
        assert_int_equal(gh_vl_reader_feed(&r, buf, 101, NULL, 0), 0);
        assert_int_equal(gh_vl_reader_next(&r, &f), -EMSGSIZE);
        gh_vl_reader_done(&r);
}

static int make_pipe_fd(ino_t *ret_ino) {
        int p[2];
        struct stat st;

        assert_int_equal(pipe2(p, O_CLOEXEC), 0);
        close(p[0]);
        assert_int_equal(fstat(p[1], &st), 0);
        *ret_ino = st.st_ino;
        return p[1];
}

static void recv_all(int fd, gh_vl_reader *r, size_t frames) {
        while (gh_vl_reader_frames(r) < frames) {
                ssize_t n = gh_vl_reader_recv(r, fd, 7); /* small reads: fds must still attach right */
                assert_true(n > 0 || n == -EAGAIN);
        }
}

static void assert_fd_is(int fd, ino_t ino) {
        struct stat st;

        assert_int_equal(fstat(fd, &st), 0);
        assert_int_equal(st.st_ino, ino);
        assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
}

static void test_fd_passing(void **state) {
        int sp[2];
        ino_t ino[3];
        int fds_a[2], fds_c[1];
        gh_vl_writer w;
        gh_vl_reader r;
        gh_vl_frame f;

        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sp), 0);
        fds_a[0] = make_pipe_fd(&ino[0]);
        fds_a[1] = make_pipe_fd(&ino[1]);
        fds_c[0] = make_pipe_fd(&ino[2]);
        gh_vl_writer_init(&w);
        assert_int_equal(gh_vl_writer_queue(&w, "{\"m\":\"a\"}", 9, fds_a, 2), 0);
        assert_int_equal(gh_vl_writer_queue(&w, "{\"m\":\"b\"}", 9, NULL, 0), 0);
        assert_int_equal(gh_vl_writer_queue(&w, "{\"m\":\"c\"}", 9, fds_c, 1), 0);
        assert_int_equal(gh_vl_writer_flush(&w, sp[0]), 1);
        assert_int_equal(gh_vl_writer_pending(&w), 0);

        gh_vl_reader_init(&r, &limits);
        recv_all(sp[1], &r, 3);
        assert_int_equal(gh_vl_reader_next(&r, &f), 1);
        assert_string_equal(f.text, "{\"m\":\"a\"}");
        assert_int_equal(f.n_fds, 2);
        assert_fd_is(f.fds[0], ino[0]);
        assert_fd_is(f.fds[1], ino[1]);
        gh_vl_frame_done(&f);
        assert_int_equal(gh_vl_reader_next(&r, &f), 1);
        assert_int_equal(f.n_fds, 0);
        gh_vl_frame_done(&f);
        assert_int_equal(gh_vl_reader_next(&r, &f), 1);
        assert_int_equal(f.n_fds, 1);
        assert_fd_is(f.fds[0], ino[2]);
        int *taken;
        assert_int_equal(gh_vl_frame_take_fds(&f, &taken), 1);
        assert_int_equal(f.n_fds, 0);
        gh_vl_frame_done(&f);
        assert_fd_is(taken[0], ino[2]);
        close(taken[0]);
        free(taken);
        gh_vl_reader_done(&r);
        gh_vl_writer_done(&w);
        close(sp[0]);
        close(sp[1]);
}

static void test_too_many_fds(void **state) {
        int sp[2], fds[6];
        ino_t ino;
        gh_vl_writer w;
        gh_vl_reader r;

        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sp), 0);
        int before = count_open_fds();
        for (int i = 0; i < 6; i++)
                fds[i] = make_pipe_fd(&ino);
        gh_vl_writer_init(&w);
        assert_int_equal(gh_vl_writer_queue(&w, "{}", 2, fds, 6), 0);
        assert_int_equal(gh_vl_writer_flush(&w, sp[0]), 1);
        assert_int_equal(count_open_fds(), before); /* the writer closed its copies */
        gh_vl_reader_init(&r, &limits);
        assert_int_equal(gh_vl_reader_recv(&r, sp[1], 64), -ETOOMANYREFS);
        assert_int_equal(count_open_fds(), before); /* nothing leaked on our side */
        gh_vl_reader_done(&r);
        gh_vl_writer_done(&w);
        close(sp[0]);
        close(sp[1]);
}

static void test_feed_fd_budget(void **state) {
        gh_vl_reader r;
        ino_t ino;
        int fds[5];

        gh_vl_reader_init(&r, &limits);
        int before = count_open_fds();
        for (int i = 0; i < 5; i++)
                fds[i] = make_pipe_fd(&ino);
        /* five fds with one message exceeds max_fds = 4: all closed */
        assert_int_equal(gh_vl_reader_feed(&r, "{", 1, fds, 5), -ETOOMANYREFS);
        assert_int_equal(count_open_fds(), before);
        gh_vl_reader_done(&r);
}

static void test_fds_spread_over_frame_exceed(void **state) {
        gh_vl_reader r;
        gh_vl_frame f;
        ino_t ino;
        int fds[3];

        /* 3 + 3 fds arriving with bytes of the same message: 6 > 4. */
        gh_vl_reader_init(&r, &limits);
        for (int i = 0; i < 3; i++)
                fds[i] = make_pipe_fd(&ino);
        assert_int_equal(gh_vl_reader_feed(&r, "{", 1, fds, 3), 0);
        for (int i = 0; i < 3; i++)
                fds[i] = make_pipe_fd(&ino);
        assert_int_equal(gh_vl_reader_feed(&r, "}\0", 2, fds, 3), 0);
        assert_int_equal(gh_vl_reader_next(&r, &f), -ETOOMANYREFS);
        gh_vl_reader_done(&r); /* closes the pending fds; LSan/fd count would notice */
}

static void test_recv_eof(void **state) {
        int sp[2];
        gh_vl_reader r;

        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sp), 0);
        gh_vl_reader_init(&r, &limits);
        assert_int_equal(gh_vl_reader_recv(&r, sp[1], 64), -EAGAIN);
        assert_int_equal(write(sp[0], "{\"a\"", 4), 4);
        close(sp[0]);
        assert_int_equal(gh_vl_reader_recv(&r, sp[1], 64), 4);
        assert_int_equal(gh_vl_reader_recv(&r, sp[1], 64), 0);
        assert_true(gh_vl_reader_has_partial(&r));
        gh_vl_reader_done(&r);
        close(sp[1]);
}

static void test_partial_writes(void **state) {
        int sp[2], sndbuf = 4096;
        size_t len = 1024 * 1024;
        char *big = malloc(len);
        gh_vl_writer w;
        gh_vl_reader r;
        gh_vl_frame f;
        gh_vl_limits lim = {.max_message_size = 2 * len, .max_fds = 1, .max_depth = 4};

        assert_non_null(big);
        for (size_t i = 0; i < len; i++)
                big[i] = (char) ('a' + i % 26);
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sp), 0);
        setsockopt(sp[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
        gh_vl_writer_init(&w);
        gh_vl_reader_init(&r, &lim);
        assert_int_equal(gh_vl_writer_queue(&w, big, len, NULL, 0), 0);
        assert_int_equal(gh_vl_writer_queue(&w, "tail", 4, NULL, 0), 0);
        int flushes = 0, done = 0;
        while (!done) {
                done = gh_vl_writer_flush(&w, sp[0]);
                assert_true(done >= 0);
                flushes++;
                ssize_t n;
                while ((n = gh_vl_reader_recv(&r, sp[1], 65536)) > 0)
                        ;
                assert_true(n == -EAGAIN);
        }
        assert_true(flushes > 1); /* it really did not fit at once */
        while (gh_vl_reader_frames(&r) < 2)
                assert_true(gh_vl_reader_recv(&r, sp[1], 65536) > 0);
        assert_int_equal(gh_vl_reader_next(&r, &f), 1);
        assert_int_equal(f.len, len);
        assert_memory_equal(f.text, big, len);
        gh_vl_frame_done(&f);
        assert_int_equal(gh_vl_reader_next(&r, &f), 1);
        assert_string_equal(f.text, "tail");
        gh_vl_frame_done(&f);
        gh_vl_reader_done(&r);
        gh_vl_writer_done(&w);
        free(big);
        close(sp[0]);
        close(sp[1]);
}

static void test_writer_dead_peer(void **state) {
        int sp[2];
        gh_vl_writer w;

        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sp), 0);
        close(sp[1]);
        gh_vl_writer_init(&w);
        assert_int_equal(gh_vl_writer_queue(&w, "{}", 2, NULL, 0), 0);
        assert_int_equal(gh_vl_writer_flush(&w, sp[0]), -EPIPE); /* and no SIGPIPE */
        gh_vl_writer_done(&w);
        close(sp[0]);
}

static void expect_call_error(const char *text, size_t len, const char *reason_part) {
        gh_vl_call c;
        const char *reason = NULL;

        assert_int_equal(gh_vl_call_parse(text, len, 8, &c, &reason), -EBADMSG);
        assert_non_null(reason);
        if (!strstr(reason, reason_part))
                fail_msg("for %s: reason '%s' lacks '%s'", text, reason, reason_part);
}

#define CALL_ERROR(text, part) expect_call_error(text, sizeof(text) - 1, part)

static void test_malformed_calls(void **state) {
        CALL_ERROR("", "empty");
        CALL_ERROR("garbage", "malformed");
        CALL_ERROR("{\"method\":", "truncated");
        CALL_ERROR("{\"method\":\"a.b.C\"} x", "malformed");
        CALL_ERROR("[1,2]", "not a JSON object");
        CALL_ERROR("42", "not a JSON object");
        CALL_ERROR("{\"method\":\"a.b.C\",\"parameters\":{\"s\":\"\xff\xfe\"}}", "UTF-8");
        CALL_ERROR("{\"method\":\"a.b.C\",\"parameters\":{\"a\":[[[[[[[[[[1]]]]]]]]]]}}", "deep");
        CALL_ERROR("{\"parameters\":{}}", "'method' missing");
        CALL_ERROR("{\"method\":7}", "'method' missing or not a string");
        CALL_ERROR("{\"method\":\"Ping\"}", "interface.Method");
        CALL_ERROR("{\"method\":\"io.gpuhost.ping\"}", "interface.Method");
        CALL_ERROR("{\"method\":\".gpuhost.Ping\"}", "interface.Method");
        CALL_ERROR("{\"method\":\"io.gpuhost.Ping\",\"parameters\":[]}", "'parameters' is not an object");
        CALL_ERROR("{\"method\":\"io.gpuhost.Ping\",\"more\":\"yes\"}", "'more' is not a boolean");
        CALL_ERROR("{\"method\":\"io.gpuhost.Ping\",\"oneway\":1}", "'oneway' is not a boolean");
        CALL_ERROR("{\"method\":\"io.gpuhost.Ping\",\"upgrade\":{}}", "'upgrade' is not a boolean");
        CALL_ERROR("{\"method\":\"io.gpuhost.Ping\",\"more\":true,\"oneway\":true}", "exclude");
        CALL_ERROR("{\"method\":\"io.gpuhost.Ping\",\"extra\":1}", "unknown field");
}

static void test_valid_call(void **state) {
        const char text[] = "{\"method\":\"io.gpuhost.Ping\",\"more\":true,\"parameters\":{\"ping\":\"x\"}}";
        gh_vl_call c;
        const char *reason;

        assert_int_equal(gh_vl_call_parse(text, sizeof(text) - 1, 8, &c, &reason), 0);
        assert_string_equal(c.method, "io.gpuhost.Ping");
        assert_int_equal(c.flags, GH_VL_MORE);
        assert_string_equal(json_object_get_string(json_object_object_get(c.parameters, "ping")), "x");
        gh_vl_call_done(&c);

        /* Absent or null parameters become an empty object. */
        const char t2[] = "{\"method\":\"org.varlink.service.GetInfo\",\"parameters\":null,\"oneway\":true}";
        assert_int_equal(gh_vl_call_parse(t2, sizeof(t2) - 1, 8, &c, &reason), 0);
        assert_true(json_object_is_type(c.parameters, json_type_object));
        assert_int_equal(json_object_object_length(c.parameters), 0);
        assert_int_equal(c.flags, GH_VL_ONEWAY);
        gh_vl_call_done(&c);
}

static void test_replies(void **state) {
        gh_vl_reply r;
        const char *reason;
        const char ok[] = "{\"parameters\":{\"pong\":\"x\"},\"continues\":true}";
        const char err[] = "{\"error\":\"io.gpuhost.InvalidParameter\",\"parameters\":{\"parameter\":\"p\"}}";
        const char bad[] = "{\"error\":5}";

        assert_int_equal(gh_vl_reply_parse(ok, sizeof(ok) - 1, 8, &r, &reason), 0);
        assert_true(r.continues);
        assert_null(r.error);
        assert_string_equal(json_object_get_string(json_object_object_get(r.parameters, "pong")), "x");
        gh_vl_reply_done(&r);
        assert_int_equal(gh_vl_reply_parse(err, sizeof(err) - 1, 8, &r, &reason), 0);
        assert_string_equal(r.error, "io.gpuhost.InvalidParameter");
        assert_false(r.continues);
        gh_vl_reply_done(&r);
        assert_int_equal(gh_vl_reply_parse(bad, sizeof(bad) - 1, 8, &r, &reason), -EBADMSG);
}

static void test_builders_round_trip(void **state) {
        json_object *p = json_object_new_object();
        json_object_object_add(p, "k", json_object_new_string("v\xc3\xa9"));
        json_object *call = gh_vl_call_new("io.gpuhost.Ping", p, GH_VL_MORE);
        const char *s = json_object_to_json_string(call);
        gh_vl_call c;
        const char *reason;

        assert_int_equal(gh_vl_call_parse(s, strlen(s), 8, &c, &reason), 0);
        assert_int_equal(c.flags, GH_VL_MORE);
        assert_string_equal(json_object_get_string(json_object_object_get(c.parameters, "k")), "v\xc3\xa9");
        gh_vl_call_done(&c);
        json_object_put(call);

        json_object *e = gh_vl_error_new("io.gpuhost.ShuttingDown", NULL);
        gh_vl_reply r;
        s = json_object_to_json_string(e);
        assert_int_equal(gh_vl_reply_parse(s, strlen(s), 8, &r, &reason), 0);
        assert_string_equal(r.error, "io.gpuhost.ShuttingDown");
        gh_vl_reply_done(&r);
        json_object_put(e);
}

static void test_method_names(void **state) {
        assert_true(gh_vl_method_name_valid("io.gpuhost.Ping"));
        assert_true(gh_vl_method_name_valid("org.varlink.service.GetInfo"));
        assert_true(gh_vl_method_name_valid("a-b.c1.M2"));
        assert_false(gh_vl_method_name_valid("io.gpuhost."));
        assert_false(gh_vl_method_name_valid("gpuhost"));
        assert_false(gh_vl_method_name_valid("io..gpuhost.Ping"));
        assert_false(gh_vl_method_name_valid("io.1gpuhost.Ping"));
        assert_false(gh_vl_method_name_valid("io.gpuhost.Pi ng"));
        assert_false(gh_vl_method_name_valid("io.gpuhost.Ping-x"));
        assert_false(gh_vl_method_name_valid(NULL));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_frames_in_one_feed),
                cmocka_unit_test(test_byte_by_byte),
                cmocka_unit_test(test_size_limit),
                cmocka_unit_test(test_fd_passing),
                cmocka_unit_test(test_too_many_fds),
                cmocka_unit_test(test_feed_fd_budget),
                cmocka_unit_test(test_fds_spread_over_frame_exceed),
                cmocka_unit_test(test_recv_eof),
                cmocka_unit_test(test_partial_writes),
                cmocka_unit_test(test_writer_dead_peer),
                cmocka_unit_test(test_malformed_calls),
                cmocka_unit_test(test_valid_call),
                cmocka_unit_test(test_replies),
                cmocka_unit_test(test_builders_round_trip),
                cmocka_unit_test(test_method_names),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
