/* A backend that measures another: each op's device time is added to the
 * op's total, from timestamps on the device before and after it where the
 * backend has them (mark), else from the clock around the op and the
 * device's sync.
 * For gpuhost-sd --profile: where a run's time goes, op by op. */
#pragma once

#include <stdio.h>

#include "backend.h"

#define GH_PROFILE_OPS 21

typedef struct gh_profile {
        const gh_dbackend *inner;
        void *state;
        double seconds[GH_PROFILE_OPS];
        unsigned long calls[GH_PROFILE_OPS];
        /* With device timestamps: a pair per op, read in batches. */
        uint32_t n_marks;
        uint8_t mark_op[GH_DBACKEND_MARKS / 2];
        int error; /* the first failure of the timestamps */
} gh_profile;

/* The measuring table; its |be| is a gh_profile holding the measured one. */
extern const gh_dbackend gh_dbackend_profile;

/* Forgets what was measured so far. */
void gh_profile_reset(gh_profile *p);
/* The totals, largest first, with their share of the whole. */
void gh_profile_print(gh_profile *p, FILE *f);
