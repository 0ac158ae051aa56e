/* Unit tests for sorted directory listings (daemon/common/dirlist.c). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/dirlist.h"

static char dir[64];

static void touch(const char *name) {
        char path[256];
        snprintf(path, sizeof(path), "%s/%s", dir, name);
        int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        assert_true(fd >= 0);
        close(fd);
}

static void test_listing(void **state) {
        char **paths = NULL, want[256];
        size_t n = 0;

        strcpy(dir, "/tmp/gh-dirlist-XXXXXX");
        assert_non_null(mkdtemp(dir));
        touch("b.conf");
        touch("a.conf");
        touch("10-z.conf");
        touch(".hidden.conf");
        touch("x.conf.bak");
        touch(".conf"); /* hidden, and nothing before the suffix */

        assert_int_equal(gh_dir_list(dir, ".conf", 100, &paths, &n), 0);
        assert_int_equal(n, 3);
        const char *order[] = {"10-z.conf", "a.conf", "b.conf"}; /* byte order */
        for (size_t i = 0; i < n; i++) {
                snprintf(want, sizeof(want), "%s/%s", dir, order[i]);
                assert_string_equal(paths[i], want);
        }
        gh_strv_free(paths, n);

        assert_int_equal(gh_dir_list(dir, NULL, 100, &paths, &n), 0);
        assert_int_equal(n, 4); /* every visible entry */
        gh_strv_free(paths, n);

        assert_int_equal(gh_dir_list(dir, NULL, 3, &paths, &n), -E2BIG);
        char sub[128];
        snprintf(sub, sizeof(sub), "%s/missing", dir);
        assert_int_equal(gh_dir_list(sub, NULL, 3, &paths, &n), -ENOENT);
        mkdir(sub, 0755);
        assert_int_equal(gh_dir_list(sub, NULL, 3, &paths, &n), 0);
        assert_int_equal(n, 0);
        gh_strv_free(paths, n);

        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        (void) !system(cmd);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_listing),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
