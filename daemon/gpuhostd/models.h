/* The model store: which models exist, and which are resident on which
 * device.
 *
 * Models come from [model NAME] sections and from the models directory
 * (*.safetensors files, and folders with safetensors files in them, such as
 * the diffusers layout, whose subfolder names prefix the tensor names:
 * "unet/conv_in.weight"). A model resident on a device is one allocation in
 * that device's pool holding every tensor (256-byte aligned), described by
 * a tensor table (name, dtype, shape, pool offset, bytes).
 *
 * Besides the weights, a model holds the CLIP tokenizer's files when there
 * are any, as 1-D U8 tensors "tokenizer/vocab.json" and
 * "tokenizer/merges.txt" (at most 64 MiB each) in the same allocation: a
 * folder model's tokenizer/ subfolder, or for a single file the folder of
 * its [model] tokenizer key (default: [models] tokenizer). None is no
 * error; the plugins that need them say so.
 *
 * When the catalogue is built, each model's headers are read and its tensor
 * table planned as the pool will hold it (dtypes converted): the scheduler
 * admits jobs by its bytes and plugins' estimates see its tensors before
 * anything is loaded. While loading, the loader thread also computes the
 * SHA-256 of the weight files (in load order, concatenated), kept with the
 * model while the files' size and mtime stay the same.
 *
 * Loading never blocks the event loop: a loader thread parses the headers
 * and plans the layout, the loop allocates pool space (evicting unused,
 * unpinned models, least recently used first), then the loader thread copies
 * the data in large sequential reads, converting dtypes on the way. Results
 * come back through an eventfd. A model with references (jobs, attached
 * processes) is never evicted or unloaded; pinned ones are never evicted.
 *
 * Everything here is owned by the event-loop thread except what the
 * loader thread touches: the job it holds, and the pool memory of the
 * allocation made for it. */
#pragma once

#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "../common/safetensors.h"
#include "config.h"
#include "pool.h"

#define GH_STORE_MAX_DEVICES 64

typedef struct gh_store gh_store;
typedef struct gh_model gh_model;
typedef struct gh_resident gh_resident;

typedef struct gh_tensor_entry {
        char *name;
        gh_dtype dtype;          /* as stored in the pool (after conversion) */
        unsigned n_dims;
        uint64_t shape[GH_ST_MAX_DIMS];
        uint64_t offset, bytes;  /* from the start of the pool */
} gh_tensor_entry;

/* How the loader thread copies into a pool that is not host memory:
 * it takes a staging buffer, fills it, and submits it; submitted copies may
 * run while the next buffer is filled; flush waits for all of them. */
typedef struct gh_store_uploader {
        /* A free staging buffer of *ret_size bytes (waits for its last copy). */
        int (*acquire)(void *ctx, void **ret_buf, size_t *ret_size);
        /* Copies the first |n| bytes of the buffer last acquired to |offset|. */
        int (*submit)(void *ctx, uint64_t offset, size_t n);
        int (*flush)(void *ctx);
        void *ctx;
} gh_store_uploader;

/* A device the store can load onto: its pool and how to copy into it. */
typedef struct gh_store_device {
        unsigned index;          /* the daemon's device index */
        gh_pool *pool;
        const gh_store_uploader *uploader; /* NULL: the pool is host memory */
} gh_store_device;

/* Called on the loop when a load ends: r < 0 with a reason, or 0. */
typedef void (*gh_load_done_fn)(gh_resident *res, int r, const char *reason, void *userdata);

int gh_store_new(sd_event *event, gh_store **ret);
gh_store *gh_store_free(gh_store *s);
int gh_store_add_device(gh_store *s, const gh_store_device *dev);

/* Replaces the catalogue with the config's models and those found in its
 * models directory (blocking I/O: call at start or from a helper thread
 * through gh_store_scan + gh_store_apply_catalog). Models that disappear
 * stay while resident. */
typedef struct gh_catalog gh_catalog;
int gh_catalog_build(const gh_config *c, gh_catalog **ret, char *err, size_t err_size);
gh_catalog *gh_catalog_free(gh_catalog *cat);
/* Takes |cat|. Returns true if a model's entry changed in a way a plugin's
 * estimate may depend on (its files, dtype conversion or tensor table), or
 * a model went away. */
bool gh_store_apply_catalog(gh_store *s, gh_catalog *cat);

gh_model *gh_store_find(gh_store *s, const char *name);
const char *gh_model_name(const gh_model *m);
/* Its [model] parameters: job parameter defaults (a JSON object, borrowed),
 * or NULL. */
json_object *gh_model_parameters(const gh_model *m);
/* The [model] devices selectors, or NULL when any device will do. */
const char *gh_model_devices(const gh_model *m);
gh_resident *gh_model_resident(const gh_model *m, unsigned device);
/* The pool bytes a resident copy takes: from the headers when the
 * catalogue was built, then from the last load; 0 if unknown (the files
 * could not be read). */
uint64_t gh_model_bytes(const gh_model *m);
/* The tensor table planned from the headers when the catalogue was built
 * (offsets from the start of the allocation); NULL if the files could not
 * be read. */
const gh_tensor_entry *gh_model_tensors(const gh_model *m, size_t *ret_n);
/* The same as the worker protocol's estimate message carries it:
 * [[name, dtype, dim...], ...]. Borrowed; NULL if not known. */
json_object *gh_model_tensors_json(gh_model *m);
/* Hex SHA-256 of the model's weight files as last loaded, while they are
 * unchanged (size, mtime); NULL if not known. */
const char *gh_model_sha256(const gh_model *m);
/* Bytes of models on |device| that a load could evict now (ready, no
 * references, not pinned), leaving out those in |keep|. */
uint64_t gh_store_evictable(gh_store *s, unsigned device, const gh_model *const *keep, size_t n_keep);

/* What the store tells its observer (metrics, the scheduler's load
 * throughput): a load finished (|bytes| copied in |usec|), or a model was
 * evicted to make room. */
typedef enum gh_store_event { GH_STORE_LOADED, GH_STORE_EVICTED } gh_store_event;
typedef void (*gh_store_observer_fn)(gh_store_event ev, const gh_model *m, unsigned device, uint64_t bytes,
                                     uint64_t usec, void *userdata);
void gh_store_set_observer(gh_store *s, gh_store_observer_fn fn, void *userdata);

/* Starts loading |m| onto |device| (or joins the load under way). |done|
 * runs when it ends; right away if already resident. */
int gh_store_load(gh_store *s, gh_model *m, unsigned device, gh_load_done_fn done, void *userdata);
/* Unloads; -EBUSY while referenced or loading, -ENOENT if not resident. */
int gh_store_unload(gh_store *s, gh_model *m, unsigned device);
int gh_store_set_pinned(gh_store *s, gh_model *m, bool pinned);

bool gh_resident_ready(const gh_resident *r);
void gh_resident_ref(gh_resident *r);
void gh_resident_unref(gh_resident *r);
unsigned gh_resident_refs(const gh_resident *r);
uint64_t gh_resident_offset(const gh_resident *r);
uint64_t gh_resident_bytes(const gh_resident *r);
const gh_tensor_entry *gh_resident_tensors(const gh_resident *r, size_t *ret_n);
/* Hex SHA-256 of the files this copy was read from; "" if not known. */
const char *gh_resident_sha256(const gh_resident *r);
/* Load progress of a model being loaded: bytes copied of the total. */
void gh_resident_progress(const gh_resident *r, uint64_t *ret_done, uint64_t *ret_total);
gh_pool *gh_store_pool(gh_store *s, unsigned device);

json_object *gh_store_models_json(gh_store *s);
