/* A backend that measures another: each op's device time is added to the
 * op's total, from timestamps on the device before and after it where the
 * backend has them (mark), else from the clock around the op and the
 * device's sync.
 * For gpuhost-sd --profile: where a run's time goes, op by op. */
#pragma once

#include <stdio.h>

#include "backend.h"

#define GH_PROFILE_OPS 22
#define GH_PROFILE_SHAPES 512 /* distinct shapes booked; more go uncounted */
#define GH_PROFILE_SIG 96     /* a shape's description, at most */
#define GH_PROFILE_TOP 30     /* shapes printed */

typedef struct gh_profile {
        const gh_dbackend *inner;
        void *state;
        double seconds[GH_PROFILE_OPS];
        unsigned long calls[GH_PROFILE_OPS];
        /* With device timestamps: a pair per op, read in batches. */
        uint32_t n_marks;
        uint8_t mark_op[GH_DBACKEND_MARKS / 2];
        uint16_t mark_shape[GH_DBACKEND_MARKS / 2];
        /* Per shape: its description, calls and time. */
        uint16_t n_shapes;
        char shape_sig[GH_PROFILE_SHAPES][GH_PROFILE_SIG];
        unsigned long shape_calls[GH_PROFILE_SHAPES];
        double shape_seconds[GH_PROFILE_SHAPES];
        int error; /* the first failure of the timestamps */
} gh_profile;

/* The measuring table; its |be| is a gh_profile holding the measured one. */
extern const gh_dbackend gh_dbackend_profile;

/* Forgets what was measured so far. */
void gh_profile_reset(gh_profile *p);
/* The totals, largest first, with their share of the whole; then the
 * shapes that took longest. */
void gh_profile_print(gh_profile *p, FILE *f);
