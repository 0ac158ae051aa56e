/* gpuhost-worker: the process that hosts pipeline plugins for one device.
 *
 * gpuhostd starts it with one socketpair end as fd 3 (see
 * common/worker-proto.h). It loads the plugin directory, maps the device's
 * weight pool read-only as the daemon hands it slab fds, and creates its
 * CUDA context once at start on a GPU.
 *
 * The main thread owns the socket: it answers pings and estimates, maps
 * slabs, and hands cancels and new slices to jobs at any time. Each job
 * runs on a thread of its own, in a slice of the device the daemon gives
 * it as a mask of units: on a GPU a green context over those SMs
 * (slices.c), on the CPU a thread pool of that many threads (threads.c).
 * A job takes a new slice, or notices a cancel, at its next step boundary.
 * Job threads send their own messages, under one lock; when one ends it
 * wakes the main thread, which joins it. */
#pragma once

#include <json-c/json.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "../common/varlink.h"
#include "../gpuhostd/cuda.h"
#include "../gpuhostd/pool-cuda.h"
#include "../gpuhostd/pool.h"
#include "../common/worker-proto.h"
#include "gpuhost/plugin.h"
#include "plugin-loader.h"

typedef struct gh_threads gh_threads;

typedef struct gh_worker_args {
        int device;             /* the daemon's device index */
        bool cuda;              /* a GPU (else the CPU device) */
        int cuda_ordinal;
        const char *plugin_dir;
        uid_t plugin_owner;
        uint64_t slab_size, pool_size;
        unsigned cpu_threads;   /* the CPU device's slice units */
        unsigned unit_sms;      /* SMs per slice unit on a GPU; 0: the driver's smallest group */
} gh_worker_args;

typedef struct gh_wk {
        gh_worker_args args;
        int fd;
        gh_vl_reader reader;
        gh_vl_writer writer;
        bool eof;

        gh_loaded_plugin **plugins;
        size_t n_plugins;
        json_object *refused;   /* [{path, reason}] */

        gh_cuda *cu;
        gh_pool_cuda pc;
        bool pc_ready;
        CUstream stream;
        gh_pool_view *view;
        uint64_t *slab_serial;  /* per slab index: what is mapped (0: nothing) */
        unsigned n_slots;

        struct gh_slices *slices; /* GPU: green-context slices; NULL: whole-device context */
        unsigned units;         /* slice units offered: SM groups on a GPU, threads on the CPU */
        pthread_mutex_t send_lock;
        int reap_fd;            /* eventfd: a job thread ended */
        struct gh_job *jobs[GH_WORKER_MAX_JOBS];
        unsigned n_jobs;
} gh_wk;

int gh_wk_init(gh_wk *w, const gh_worker_args *args, int fd);
void gh_wk_done(gh_wk *w);
/* Runs until the daemon closes the socket. */
int gh_wk_run(gh_wk *w);

/* Sends a message (takes |msg| and |fds|) and waits until it is written. */
int gh_wk_send(gh_wk *w, json_object *msg, const int *fds, size_t n_fds);
/* Waits up to |timeout_ms| for messages and ended jobs, and handles them. */
int gh_wk_poll(gh_wk *w, int timeout_ms);
/* The CUDA context and stream of the slice over |units| (GPU only). */
int gh_wk_slice(gh_wk *w, uint64_t units, void **ret_context, void **ret_stream);
/* The job is done with that slice's context and stream. */
void gh_wk_slice_put(gh_wk *w, uint64_t units);
/* Handles one message from the daemon (the frame's fds are taken). */
int gh_wk_handle_frame(gh_wk *w, gh_vl_frame *f);
const gh_loaded_plugin *gh_wk_find_plugin(gh_wk *w, const char *name);
uint64_t gh_wk_rss(void);

/* ---- jobs (host.c) ---- */

typedef struct gh_job gh_job;

extern const gh_host gh_wk_host;

/* Runs the plugin's estimate for |params| (normalized), with |tables|
 * (the estimate message's "models", may be NULL) for model_tensor. */
int gh_job_estimate(gh_wk *w, const gh_loaded_plugin *lp, json_object *params, json_object *tables,
                    json_object **ret_needs, char *err, size_t err_size);
/* Creates the job from a "run" message (takes |fds|). */
int gh_job_new(gh_wk *w, json_object *msg, int *fds, size_t n_fds, gh_job **ret, char *err, size_t err_size);
/* Starts the job's thread, which runs it to its end and sends its final
 * message, then writes to the worker's reap_fd. */
int gh_job_start(gh_job *job);
/* Whether its thread is done (then gh_job_free joins it at once). */
bool gh_job_ended(const gh_job *job);
/* From the main thread: noticed at the next step boundary. */
void gh_job_cancel(gh_job *job);
void gh_job_set_units(gh_job *job, uint64_t units);
const char *gh_job_id(const gh_job *job);
const char *gh_job_pipeline(const gh_job *job);
/* Cancels the job if it still runs, joins its thread, frees it. */
void gh_job_free(gh_job *job);

/* ---- the CPU thread pool (threads.c) ---- */

int gh_threads_new(unsigned n, gh_threads **ret);
void gh_threads_free(gh_threads *t);
unsigned gh_threads_count(const gh_threads *t);
void gh_threads_run(gh_threads *t, uint32_t n, void (*fn)(void *ctx, uint32_t i, uint32_t thread), void *ctx);
