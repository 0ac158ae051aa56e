/* Devices, pools and the model store of the daemon. See engine.h. */
#include <string.h>

#include "../common/log.h"
#include "../common/util.h"
#include "engine.h"

/* "0:2G GPU-...:10%": per-device reserves, space or comma separated. */
int gh_reserve_overrides_parse(const char *text, gh_devices_config *dc, const char **ret_reason) {
        _cleanup_free_ char *copy = strdup(text);
        char *save = NULL;

        if (!copy)
                return -ENOMEM;
        for (char *tok = strtok_r(copy, " ,\t", &save); tok; tok = strtok_r(NULL, " ,\t", &save)) {
                char *colon = strrchr(tok, ':');
                if (!colon) {
                        *ret_reason = "entries are SELECTOR:RESERVE, e.g. 0:2G or GPU-...:10%";
                        return -EINVAL;
                }
                if (dc->n_reserve_overrides >= GH_DEVICE_SELECTORS_MAX) {
                        *ret_reason = "too many entries";
                        return -E2BIG;
                }
                *colon = 0;
                gh_device_reserve *o = &dc->reserve_overrides[dc->n_reserve_overrides];
                int r = gh_device_selector_parse(tok, &o->device, ret_reason);
                if (r >= 0)
                        r = gh_reserve_parse(colon + 1, &o->reserve, ret_reason);
                if (r < 0)
                        return r;
                dc->n_reserve_overrides++;
        }
        return 0;
}

int gh_config_devices(const gh_config *c, gh_devices_config *ret, gh_config_error *err) {
        const char *reason = NULL, *key = NULL;
        const char *last = c->n_files ? c->files[c->n_files - 1] : "(defaults)";
        int r = 0;

        gh_devices_config_init(ret);
        ret->cpu_enabled = c->cpu_enabled;
        ret->cpu_budget_bytes = c->cpu_memory;
        ret->cpu_count = c->cpu_devices;
        if (c->devices_include && (r = gh_device_selectors_parse(c->devices_include, ret->include, GH_DEVICE_SELECTORS_MAX,
                                                                 &ret->n_include, &reason)) < 0)
                key = "include";
        else if (c->devices_exclude && (r = gh_device_selectors_parse(c->devices_exclude, ret->exclude, GH_DEVICE_SELECTORS_MAX,
                                                                      &ret->n_exclude, &reason)) < 0)
                key = "exclude";
        else if (c->devices_reserve && (r = gh_reserve_parse(c->devices_reserve, &ret->reserve, &reason)) < 0)
                key = "reserve";
        else if (c->devices_reserve_per_device &&
                 (r = gh_reserve_overrides_parse(c->devices_reserve_per_device, ret, &reason)) < 0)
                key = "reserve_per_device";
        if (r < 0) {
                snprintf(err->file, sizeof(err->file), "%s", last);
                err->line = 0;
                snprintf(err->key, sizeof(err->key), "[devices] %s", key);
                snprintf(err->message, sizeof(err->message), "%s", reason ? reason : strerror(-r));
        }
        return r;
}

/* ---- the GPU uploader (loader thread) ---- */

static int gpu_call(gh_engine_gpu *g, CUresult r) {
        return gh_cuda_errno(g->backend.cu, r, NULL);
}

static int gpu_upload_init(gh_engine_gpu *g) {
        const gh_cuda *cu = g->backend.cu;
        int r = gpu_call(g, cu->StreamCreate(&g->stream, CU_STREAM_NON_BLOCKING));

        for (unsigned i = 0; r >= 0 && i < GH_UPLOAD_BUFFERS; i++) {
                r = gpu_call(g, cu->MemHostAlloc(&g->pinned[i], GH_UPLOAD_BUFFER_SIZE, 0));
                if (r >= 0)
                        r = gpu_call(g, cu->EventCreate(&g->copied[i], CU_EVENT_DISABLE_TIMING));
        }
        g->ready = r >= 0;
        return r;
}

static void gpu_upload_done(gh_engine_gpu *g) {
        const gh_cuda *cu = g->backend.cu;

        if (!g->backend.context || gpu_call(g, cu->CtxSetCurrent(g->backend.context)) < 0)
                return;
        if (g->stream)
                cu->StreamSynchronize(g->stream);
        for (unsigned i = 0; i < GH_UPLOAD_BUFFERS; i++) {
                if (g->pinned[i])
                        cu->MemFreeHost(g->pinned[i]);
                if (g->copied[i])
                        cu->EventDestroy(g->copied[i]);
        }
        if (g->stream)
                cu->StreamDestroy(g->stream);
}

static int gpu_acquire(void *ctx, void **ret_buf, size_t *ret_size) {
        gh_engine_gpu *g = ctx;
        const gh_cuda *cu = g->backend.cu;
        int r = gpu_call(g, cu->CtxSetCurrent(g->backend.context));

        if (r >= 0 && !g->ready)
                r = gpu_upload_init(g);
        if (r < 0)
                return r;
        unsigned i = g->next;
        if (g->pending[i]) {
                r = gpu_call(g, cu->EventSynchronize(g->copied[i]));
                if (r < 0)
                        return r;
                g->pending[i] = false;
        }
        g->last = i;
        g->next = (i + 1) % GH_UPLOAD_BUFFERS;
        *ret_buf = g->pinned[i];
        *ret_size = GH_UPLOAD_BUFFER_SIZE;
        return 0;
}

static int gpu_submit(void *ctx, uint64_t offset, size_t n) {
        gh_engine_gpu *g = ctx;
        const gh_cuda *cu = g->backend.cu;
        unsigned i = g->last;
        int r = gpu_call(g, cu->MemcpyHtoDAsync((CUdeviceptr) (gh_pool_base(g->pool) + offset), g->pinned[i], n, g->stream));

        if (r >= 0)
                r = gpu_call(g, cu->EventRecord(g->copied[i], g->stream));
        g->pending[i] = r >= 0;
        return r;
}

static int gpu_flush(void *ctx) {
        gh_engine_gpu *g = ctx;
        int r = g->ready ? gpu_call(g, g->backend.cu->StreamSynchronize(g->stream)) : 0;

        for (unsigned i = 0; i < GH_UPLOAD_BUFFERS; i++)
                g->pending[i] = false;
        return r;
}

static int setup_pool(gh_engine *e, const gh_device_info *info, uint64_t slab_size, uint64_t capacity,
                      gh_store_device *dev) {
        unsigned i = (unsigned) info->index;

        if (info->kind == GH_DEVICE_CPU)
                return gh_pool_new(&gh_pool_backend_cpu, slab_size, capacity, &e->pools[i]);
        if (!info->vmm_supported || !info->posix_fd_supported)
                return -EOPNOTSUPP;
        e->gpus[i] = calloc(1, sizeof(gh_engine_gpu));
        if (!e->gpus[i])
                return -ENOMEM;
        int r = gh_pool_cuda_init(&e->gpus[i]->backend, e->cu, info->cuda_ordinal);
        if (r < 0)
                return r;
        if (slab_size % e->gpus[i]->backend.backend.granularity != 0)
                return -EINVAL;
        r = gh_pool_new(&e->gpus[i]->backend.backend, slab_size, capacity, &e->pools[i]);
        if (r < 0)
                return r;
        gh_engine_gpu *g = e->gpus[i];
        g->pool = e->pools[i];
        g->uploader = (gh_store_uploader) {.acquire = gpu_acquire, .submit = gpu_submit, .flush = gpu_flush, .ctx = g};
        dev->uploader = &g->uploader;
        return 0;
}

static int setup_device(gh_engine *e, const gh_device_info *info, uint64_t slab_size) {
        unsigned i = (unsigned) info->index;
        uint64_t capacity = info->budget_bytes / slab_size * slab_size;
        gh_store_device dev = {.index = i};

        if (i >= GH_STORE_MAX_DEVICES || capacity == 0) {
                gh_log_warning("Device %u (%s): budget below one slab; not used for weights", i, info->name);
                return 0;
        }
        int r = setup_pool(e, info, slab_size, capacity, &dev);
        if (r < 0)
                return gh_log_error_errno(r, "Device %u (%s): cannot create its weight pool: %m", i, info->name);
        dev.pool = e->pools[i];
        gh_log_info("Device %u: %s; weight pool of %" PRIu64 " MiB in %" PRIu64 " MiB slabs", i, info->name,
                    capacity >> 20, slab_size >> 20);
        return gh_store_add_device(e->store, &dev);
}

int gh_engine_init(gh_engine *e, sd_event *event, const gh_config *c) {
        gh_devices_config dc;
        gh_config_error cerr;
        gh_catalog *cat = NULL;
        char err[512];
        int r;

        *e = (gh_engine) {0};
        r = gh_config_devices(c, &dc, &cerr);
        if (r < 0)
                return gh_log_error_errno(r, "[devices] %s: %s", cerr.key, cerr.message);
        r = gh_cuda_load(NULL, &e->cu, err, sizeof(err));
        if (r < 0)
                gh_log_notice("No GPU in use (%s); serving the CPU device", err);
        r = gh_devices_discover(&dc, e->cu, &e->devices, err, sizeof(err));
        if (r < 0)
                return gh_log_error_errno(r, "Device discovery failed: %s", err);
        r = gh_store_new(event, &e->store);
        if (r < 0)
                return gh_log_error_errno(r, "Cannot start the model store: %m");
        for (size_t i = 0; i < gh_devices_count(e->devices); i++) {
                r = setup_device(e, gh_devices_at(e->devices, i), c->slab_size);
                if (r < 0)
                        return r;
        }
        r = gh_catalog_build(c, &cat, err, sizeof(err));
        if (r < 0)
                return gh_log_error_errno(r, "Cannot read the models directory: %s", err);
        gh_store_apply_catalog(e->store, cat);
        return 0;
}

void gh_engine_done(gh_engine *e) {
        e->store = gh_store_free(e->store); /* first: it releases pool space */
        for (unsigned i = 0; i < GH_STORE_MAX_DEVICES; i++) {
                e->pools[i] = gh_pool_free(e->pools[i]);
                if (e->gpus[i]) {
                        gpu_upload_done(e->gpus[i]);
                        gh_pool_cuda_done(&e->gpus[i]->backend);
                }
                free(e->gpus[i]);
                e->gpus[i] = NULL;
        }
        e->devices = gh_devices_free(e->devices);
        e->cu = gh_cuda_free(e->cu);
}

static json_object *pool_json(const gh_pool *p) {
        json_object *o = json_object_new_object();
        gh_pool_stats st;

        gh_pool_get_stats(p, &st);
        json_object_object_add(o, "capacity", json_object_new_int64((int64_t) st.capacity));
        json_object_object_add(o, "reserved", json_object_new_int64((int64_t) st.reserved));
        json_object_object_add(o, "used", json_object_new_int64((int64_t) st.used));
        json_object_object_add(o, "free", json_object_new_int64((int64_t) st.free));
        json_object_object_add(o, "largest_free", json_object_new_int64((int64_t) st.largest_free));
        json_object_object_add(o, "slabs", json_object_new_int64(st.slabs));
        json_object_object_add(o, "slab_size", json_object_new_int64((int64_t) gh_pool_slab_size(p)));
        return o;
}

json_object *gh_engine_devices_json(const gh_engine *e) {
        json_object *a = json_object_new_array();

        for (size_t i = 0; e->devices && i < gh_devices_count(e->devices); i++) {
                const gh_device_info *info = gh_devices_at(e->devices, i);
                json_object *o = gh_device_info_to_json(info);
                if ((unsigned) info->index < GH_STORE_MAX_DEVICES && e->pools[info->index])
                        json_object_object_add(o, "pool", pool_json(e->pools[info->index]));
                json_object_array_add(a, o);
        }
        return a;
}
