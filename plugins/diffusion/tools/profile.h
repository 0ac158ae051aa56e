/* A backend that measures another: each op runs, then waits for the
 * device (the backend's sync), and its time is added to the op's total.
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
} gh_profile;

/* The measuring table; its |be| is a gh_profile holding the measured one. */
extern const gh_dbackend gh_dbackend_profile;

/* The totals, largest first, with their share of the whole. */
void gh_profile_print(const gh_profile *p, FILE *f);
