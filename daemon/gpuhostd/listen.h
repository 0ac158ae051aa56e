/* The daemon's listening socket: taken from systemd socket activation
 * (sd_listen_fds) when present, otherwise bound by the daemon itself at the
 * configured path with mode 0660 and the configured group. */
#pragma once

#include <stdbool.h>
#include <sys/types.h>

typedef struct gh_listener {
        int fd;         /* listening, non-blocking, CLOEXEC */
        bool activated; /* passed by systemd: the path is not ours to remove */
        dev_t dev;      /* the socket file we bound, to remove only that one */
        ino_t ino;
} gh_listener;

/* On failure, *ret_error says why in one line (free() it). */
int gh_listen_open(const char *path, gid_t group, gh_listener *ret, char **ret_error);
/* Removes the socket file if the daemon created it and it is still there. */
void gh_listen_cleanup(const char *path, const gh_listener *l);
