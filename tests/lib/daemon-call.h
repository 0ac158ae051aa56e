/* CMocka helpers over gh_test_call (daemon-run.h) for the end-to-end tests
 * that talk to one gpuhostd: a call whose transport must work, a call that
 * must succeed, and the members of a reply. Include after <cmocka.h>. */
#pragma once

#include <stdint.h>

#include "common/util.h"
#include "daemon-run.h"

/* gh_test_call; no reply at all fails the test. */
static inline json_object *gh_test_call_checked(const char *sock, const char *method, const char *params,
                                                char **ret_error) {
        json_object *p = gh_test_call(sock, method, params, ret_error);

        if (gh_streq(*ret_error, "transport error"))
                fail_msg("%s: no reply from gpuhostd", method);
        return p;
}

/* gh_test_call that must succeed. */
static inline json_object *gh_test_call_ok(const char *sock, const char *method, const char *params) {
        char *err;
        json_object *p = gh_test_call_checked(sock, method, params, &err);

        if (err)
                fail_msg("%s %s: %s %s", method, params ? params : "", err, json_object_to_json_string(p));
        return p;
}

static inline const char *gh_test_str(json_object *o, const char *key) {
        return json_object_get_string(json_object_object_get(o, key));
}

static inline int64_t gh_test_num(json_object *o, const char *key) {
        return json_object_get_int64(json_object_object_get(o, key));
}
