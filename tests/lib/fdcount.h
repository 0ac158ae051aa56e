/* Test helper: how many fds this process has open (to catch fd leaks). */
#pragma once

#include <dirent.h>

static inline int gh_test_count_open_fds(void) {
        DIR *d = opendir("/proc/self/fd");
        int n = 0;

        if (!d)
                return -1;
        while (readdir(d))
                n++;
        closedir(d);
        return n;
}
