/* The daemon's devices and weights: CUDA driver (if any), the device
 * registry, one pool per device, and the model store. Built from the
 * configuration at start; the model catalogue is refreshed on reload. */
#pragma once

#include <systemd/sd-event.h>

#include "config.h"
#include "cuda.h"
#include "devices.h"
#include "models.h"
#include "pool-cuda.h"

#define GH_UPLOAD_BUFFERS 2
#define GH_UPLOAD_BUFFER_SIZE (32u << 20)

/* A GPU's pool backend and its uploader: pinned staging buffers, copied
 * asynchronously on a stream of their own, so reading the next buffer
 * overlaps the copy of the last. The CUDA objects are made by the loader
 * thread on first use. */
typedef struct gh_engine_gpu {
        gh_pool_cuda backend;
        gh_pool *pool;
        gh_store_uploader uploader;
        bool ready;
        void *pinned[GH_UPLOAD_BUFFERS];
        CUevent copied[GH_UPLOAD_BUFFERS];
        bool pending[GH_UPLOAD_BUFFERS];
        CUstream stream;
        unsigned next, last;
} gh_engine_gpu;

typedef struct gh_engine {
        gh_cuda *cu;                 /* NULL without a usable driver */
        gh_devices *devices;
        gh_pool *pools[GH_STORE_MAX_DEVICES];
        gh_engine_gpu *gpus[GH_STORE_MAX_DEVICES];
        gh_store *store;
} gh_engine;

/* Parses "0:2G GPU-...:10%" into |dc|'s per-device reserves. */
int gh_reserve_overrides_parse(const char *text, gh_devices_config *dc, const char **ret_reason);
/* Turns the [devices] keys into a device configuration; errors name the key. */
int gh_config_devices(const gh_config *c, gh_devices_config *ret, gh_config_error *ret_error);

int gh_engine_init(gh_engine *e, sd_event *event, const gh_config *c);
void gh_engine_done(gh_engine *e);
json_object *gh_engine_devices_json(const gh_engine *e);
