/* Test and benchmark helper: one message with file descriptors over a Unix
 * socket (SCM_RIGHTS), both ways. */
#pragma once

#include <stddef.h>

#define GH_TEST_FDS_MAX 256

/* Sends |len| bytes with |n_fds| fds; returns 0 or a negative errno. */
int gh_test_send_fds(int sock, const void *data, size_t len, const int *fds, size_t n_fds);
/* Receives exactly |len| bytes and up to |max_fds| fds (CLOEXEC); returns the
 * number of fds or a negative errno. */
int gh_test_recv_fds(int sock, void *data, size_t len, int *fds, size_t max_fds);
