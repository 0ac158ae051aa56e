/* Test helper: a real gpuhostd for end-to-end tests, and one-shot calls to
 * it over libgpuhost. */
#pragma once

#include <json-c/json.h>
#include <sys/types.h>

/* Starts $GH_GPUHOSTD -c |config| with its stderr in |log| (NULL: kept),
 * |env| ("NAME=VALUE" strings, NULL-terminated, may be NULL) added to its
 * environment, without core files, and dying with the test (SIGTERM); then
 * waits up to 10 s until |sock| answers. Returns 0, -EINVAL without
 * $GH_GPUHOSTD, -ECHILD if the daemon exited, -ETIMEDOUT. */
int gh_test_daemon_start(const char *config, const char *log, const char *sock, const char *const *env,
                         pid_t *ret_pid);

/* Calls |method| with |params| (JSON text or NULL) on a new connection and
 * returns the reply's parameters; *ret_error is the error's name, or
 * "transport error" when no reply came, or NULL on success (free it). */
json_object *gh_test_call(const char *sock, const char *method, const char *params, char **ret_error);
