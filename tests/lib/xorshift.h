/* Test data from a fixed xorshift64 stream: the same values in every run
 * (state per test program). */
#pragma once

#include <stdint.h>

static uint64_t gh_test_rng = 88172645463325252ull;

/* A double in [0, 1). */
static inline double gh_test_urand(void) {
        gh_test_rng ^= gh_test_rng << 13;
        gh_test_rng ^= gh_test_rng >> 7;
        gh_test_rng ^= gh_test_rng << 17;
        return (double) (gh_test_rng >> 11) * 0x1p-53;
}
