/* gpuhost-worker: the process that hosts pipeline plugins for one device.
 *
 * gpuhostd starts it with one socketpair end as fd 3 (see
 * common/worker-proto.h). It loads the plugin directory, maps the device's
 * weight pool read-only as the daemon hands it slab fds, creates its CUDA
 * context once at start on a GPU, and then runs jobs one at a time, one
 * step between two looks at the socket, so that pings, cancels and
 * estimates are answered at every step boundary. Single-threaded, except
 * for the CPU thread pool that jobs borrow (threads.c). */
#pragma once

#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>

#include "../common/varlink.h"
#include "../gpuhostd/cuda.h"
#include "../gpuhostd/pool-cuda.h"
#include "../gpuhostd/pool.h"
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
        unsigned cpu_threads;
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

        gh_threads *threads;
        struct gh_job *job;     /* the job running, if any */
} gh_wk;

int gh_wk_init(gh_wk *w, const gh_worker_args *args, int fd);
void gh_wk_done(gh_wk *w);
/* Runs until the daemon closes the socket. */
int gh_wk_run(gh_wk *w);

/* Sends a message (takes |msg| and |fds|) and waits until it is written. */
int gh_wk_send(gh_wk *w, json_object *msg, const int *fds, size_t n_fds);
/* Reads and handles whatever messages are waiting, without blocking (a
 * plugin's cancelled() call lands here). */
int gh_wk_poll(gh_wk *w, int timeout_ms);
/* Handles one message from the daemon (the frame's fds are taken). */
int gh_wk_handle_frame(gh_wk *w, gh_vl_frame *f);
const gh_loaded_plugin *gh_wk_find_plugin(gh_wk *w, const char *name);
uint64_t gh_wk_rss(void);

/* ---- jobs (host.c) ---- */

typedef struct gh_job gh_job;

extern const gh_host gh_wk_host;

/* Runs the plugin's estimate for |params| (normalized, with |table|). */
int gh_job_estimate(gh_wk *w, const gh_loaded_plugin *lp, json_object *params, json_object **ret_needs,
                    char *err, size_t err_size);
/* Creates the job from a "run" message (takes |fds|). */
int gh_job_new(gh_wk *w, json_object *msg, int *fds, size_t n_fds, gh_job **ret, char *err, size_t err_size);
/* Advances the job by one quantum (start, a step, or finish). Returns 1
 * while there is more to do, 0 when it has ended (its final message sent). */
int gh_job_advance(gh_job *job);
void gh_job_cancel(gh_job *job);
const char *gh_job_id(const gh_job *job);
const char *gh_job_pipeline(const gh_job *job);
/* Ends the job (abort if needed) and frees it. */
void gh_job_free(gh_job *job);

/* ---- the CPU thread pool (threads.c) ---- */

int gh_threads_new(unsigned n, gh_threads **ret);
void gh_threads_free(gh_threads *t);
unsigned gh_threads_count(const gh_threads *t);
void gh_threads_run(gh_threads *t, uint32_t n, void (*fn)(void *ctx, uint32_t i, uint32_t thread), void *ctx);
