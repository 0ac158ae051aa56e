/* io.gpuhost methods for devices and models: ListDevices, ListModels,
 * LoadModel (with progress), UnloadModel, PinModel and AttachModel, which
 * hands another process a model's tensor table and the pool slabs behind it
 * as fds, and keeps the model referenced for as long as the call is open. */
#include <fcntl.h>
#include <string.h>

#include "../common/util.h"
#include "daemon.h"
#include "gpuhost/protocol.h"

#define PROGRESS_INTERVAL_USEC (250 * USEC_PER_MSEC)
#define ATTACH_FDS_PER_MESSAGE 16

static json_object *obj(const char *k1, json_object *v1, const char *k2, json_object *v2) {
        json_object *o = json_object_new_object();

        json_object_object_add(o, k1, v1);
        if (k2)
                json_object_object_add(o, k2, v2);
        return o;
}

static int list_devices(gh_request *req, json_object *params, void *userdata) {
        gh_daemon *d = userdata;

        return gh_request_reply(req, obj("devices", gh_engine_devices_json(&d->engine), NULL, NULL));
}

static int list_models(gh_request *req, json_object *params, void *userdata) {
        gh_daemon *d = userdata;

        return gh_request_reply(req, obj("models", gh_store_models_json(d->engine.store), NULL, NULL));
}

/* Whether [model] devices = ... lets |m| onto device |index|. */
static bool model_allowed_on(gh_daemon *d, const gh_model *m, unsigned index) {
        gh_device_selector sel[GH_DEVICE_SELECTORS_MAX];
        size_t n;
        const char *reason;
        const gh_device_info *info = gh_devices_get(d->engine.devices, (int) index);

        if (!gh_model_devices(m))
                return true;
        if (!info || gh_device_selectors_parse(gh_model_devices(m), sel, GH_DEVICE_SELECTORS_MAX, &n, &reason) < 0)
                return false;
        for (size_t i = 0; i < n; i++)
                if (sel[i].is_uuid ? strcasecmp(sel[i].text, info->uuid) == 0 : sel[i].index == index)
                        return true;
        return false;
}

/* The model named by "model", and the device by "device" (default: the
 * first device with a pool that the model may use, GPUs before the CPU).
 * Replies with the error and returns NULL if either is unknown. */
static gh_model *lookup(gh_daemon *d, gh_request *req, json_object *params, unsigned *ret_device) {
        const char *name = json_object_get_string(json_object_object_get(params, "model"));
        json_object *dev = json_object_object_get(params, "device");
        gh_model *m = gh_store_find(d->engine.store, name);

        if (!m) {
                gh_request_error(req, GH_ERROR_MODEL_NOT_FOUND, obj("model", json_object_new_string(name), NULL, NULL));
                return NULL;
        }
        if (dev) {
                int64_t i = json_object_get_int64(dev);
                if (i < 0 || i >= GH_STORE_MAX_DEVICES || !gh_store_pool(d->engine.store, (unsigned) i)) {
                        gh_request_error(req, GH_ERROR_DEVICE_NOT_FOUND, obj("device", json_object_new_int64(i), NULL, NULL));
                        return NULL;
                }
                if (!model_allowed_on(d, m, (unsigned) i)) {
                        char reason[512];
                        snprintf(reason, sizeof(reason), "model %s may only use devices: %s", gh_model_name(m), gh_model_devices(m));
                        gh_request_invalid_parameter(req, "device", reason);
                        return NULL;
                }
                *ret_device = (unsigned) i;
                return m;
        }
        for (unsigned i = 0; i < GH_STORE_MAX_DEVICES; i++)
                if (gh_store_pool(d->engine.store, i) && model_allowed_on(d, m, i)) {
                        *ret_device = i;
                        return m;
                }
        gh_request_error(req, GH_ERROR_DEVICE_NOT_FOUND, obj("device", json_object_new_int(-1), NULL, NULL));
        return NULL;
}

/* ---- LoadModel ---- */

typedef struct load_call {
        gh_daemon *daemon;
        gh_request *req; /* NULL once the caller has gone */
        gh_model *model;
        unsigned device;
        uint64_t start;
        sd_event_source *timer;
} load_call;

static void load_call_free(load_call *lc) {
        sd_event_source_disable_unref(lc->timer);
        free(lc);
}

static void load_cancel(gh_request *req, void *userdata) {
        load_call *lc = userdata;

        lc->req = NULL; /* the load goes on; the model will be resident */
        sd_event_source_set_enabled(lc->timer, SD_EVENT_OFF);
}

static json_object *progress_json(const load_call *lc, const gh_resident *res) {
        uint64_t done = 0, total = 0;
        double secs = (double) (gh_now_usec(CLOCK_MONOTONIC) - lc->start) / 1e6;

        if (res)
                gh_resident_progress(res, &done, &total);
        json_object *o = obj("model", json_object_new_string(gh_model_name(lc->model)), "device", json_object_new_int((int) lc->device));
        json_object_object_add(o, "bytes_loaded", json_object_new_int64((int64_t) done));
        json_object_object_add(o, "bytes_total", json_object_new_int64((int64_t) total));
        json_object_object_add(o, "seconds", json_object_new_double(secs));
        json_object_object_add(o, "mb_per_sec", json_object_new_double(secs > 0 ? (double) done / 1e6 / secs : 0));
        return o;
}

static int on_progress(sd_event_source *es, uint64_t usec, void *userdata) {
        load_call *lc = userdata;

        if (lc->req)
                gh_request_notify(lc->req, progress_json(lc, gh_model_resident(lc->model, lc->device)));
        sd_event_source_set_time_relative(es, PROGRESS_INTERVAL_USEC);
        return 0;
}

static void load_done(gh_resident *res, int r, const char *reason, void *userdata) {
        load_call *lc = userdata;

        if (lc->req) {
                gh_request_set_cancel(lc->req, NULL, NULL);
                if (r < 0) {
                        json_object *p = obj("model", json_object_new_string(gh_model_name(lc->model)),
                                             "device", json_object_new_int((int) lc->device));
                        json_object_object_add(p, "reason", json_object_new_string(reason ? reason : strerror(-r)));
                        gh_request_error(lc->req, GH_ERROR_MODEL_LOAD_FAILED, p);
                } else
                        gh_request_reply(lc->req, progress_json(lc, res));
        }
        load_call_free(lc);
}

static int load_model(gh_request *req, json_object *params, void *userdata) {
        gh_daemon *d = userdata;
        unsigned device;
        gh_model *m = lookup(d, req, params, &device);

        if (!m)
                return 0;
        load_call *lc = calloc(1, sizeof(*lc));
        if (!lc)
                return -ENOMEM;
        *lc = (load_call) {.daemon = d, .req = req, .model = m, .device = device, .start = gh_now_usec(CLOCK_MONOTONIC)};
        gh_request_set_cancel(req, load_cancel, lc);
        if (gh_request_more(req)) {
                int r = sd_event_add_time_relative(d->event, &lc->timer, CLOCK_MONOTONIC, PROGRESS_INTERVAL_USEC,
                                                   USEC_PER_MSEC, on_progress, lc);
                if (r >= 0)
                        sd_event_source_set_enabled(lc->timer, SD_EVENT_ON);
        }
        int r = gh_store_load(d->engine.store, m, device, load_done, lc);
        if (r < 0) {
                gh_request_set_cancel(req, NULL, NULL);
                load_call_free(lc);
        }
        return r;
}

/* ---- UnloadModel, PinModel ---- */

static int unload_model(gh_request *req, json_object *params, void *userdata) {
        gh_daemon *d = userdata;
        unsigned device;
        gh_model *m = lookup(d, req, params, &device);

        if (!m)
                return 0;
        gh_resident *res = gh_model_resident(m, device);
        int r = gh_store_unload(d->engine.store, m, device);
        json_object *p = obj("model", json_object_new_string(gh_model_name(m)), "device", json_object_new_int((int) device));
        if (r == -ENOENT)
                return gh_request_error(req, GH_ERROR_MODEL_NOT_LOADED, p);
        if (r == -EBUSY) {
                bool loading = !gh_resident_ready(res);
                json_object_object_add(p, "refcount", json_object_new_int(loading ? 0 : (int) gh_resident_refs(res)));
                json_object_object_add(p, "reason", json_object_new_string(
                        loading ? "it is still loading" : "it is in use (jobs or attached processes hold it)"));
                return gh_request_error(req, GH_ERROR_MODEL_IN_USE, p);
        }
        if (r < 0) {
                json_object_put(p);
                return r;
        }
        return gh_request_reply(req, p);
}

static int pin_model(gh_request *req, json_object *params, void *userdata) {
        gh_daemon *d = userdata;
        unsigned device;
        gh_model *m = lookup(d, req, params, &device);

        if (!m)
                return 0;
        bool pinned = json_object_get_boolean(json_object_object_get(params, "pinned"));
        gh_store_set_pinned(d->engine.store, m, pinned);
        return gh_request_reply(req, obj("model", json_object_new_string(gh_model_name(m)), "pinned", json_object_new_boolean(pinned)));
}

/* ---- AttachModel ---- */

static void attach_cancel(gh_request *req, void *userdata) {
        gh_resident_unref(userdata);
}

/* The daemon is stopping: end the attachment. */
static void attach_stop(gh_request *req, void *userdata) {
        gh_request_set_cancel(req, NULL, NULL);
        gh_resident_unref(userdata);
        gh_request_reply(req, json_object_new_object());
}

static json_object *tensor_table(const gh_resident *res) {
        size_t n;
        const gh_tensor_entry *t = gh_resident_tensors(res, &n);
        json_object *a = json_object_new_array_ext((int) n);

        for (size_t i = 0; i < n; i++) {
                json_object *o = json_object_new_object(), *shape = json_object_new_array();
                for (unsigned k = 0; k < t[i].n_dims; k++)
                        json_object_array_add(shape, json_object_new_int64((int64_t) t[i].shape[k]));
                json_object_object_add(o, "name", json_object_new_string(t[i].name));
                json_object_object_add(o, "dtype", json_object_new_string(gh_dtype_to_string(t[i].dtype)));
                json_object_object_add(o, "shape", shape);
                json_object_object_add(o, "offset", json_object_new_int64((int64_t) t[i].offset));
                json_object_object_add(o, "bytes", json_object_new_int64((int64_t) t[i].bytes));
                json_object_array_add(a, o);
        }
        return a;
}

/* Sends slabs [first, first + count) in batches, fds duplicated. */
static int send_slabs(gh_request *req, gh_pool *pool, unsigned first, unsigned count, json_object *head) {
        for (unsigned done = 0; done < count || head;) {
                unsigned n = count - done < ATTACH_FDS_PER_MESSAGE ? count - done : ATTACH_FDS_PER_MESSAGE;
                int fds[ATTACH_FDS_PER_MESSAGE];
                json_object *slabs = json_object_new_array();
                for (unsigned k = 0; k < n; k++) {
                        fds[k] = fcntl(gh_pool_slab_fd(pool, first + done + k), F_DUPFD_CLOEXEC, 3);
                        if (fds[k] < 0) {
                                gh_close_many(fds, k);
                                json_object_put(slabs);
                                json_object_put(head);
                                return gh_negerrno();
                        }
                        json_object_array_add(slabs, json_object_new_int64(first + done + k));
                }
                json_object *p = head ? TAKE_PTR(head) : json_object_new_object();
                json_object_object_add(p, "slabs", slabs);
                int r = gh_request_notify_fds(req, p, fds, n);
                if (r < 0)
                        return r;
                done += n;
        }
        return 0;
}

static int attach_model(gh_request *req, json_object *params, void *userdata) {
        gh_daemon *d = userdata;
        unsigned device, first, count;

        if (!gh_request_more(req))
                return gh_request_error(req, "org.varlink.service.ExpectedMore", NULL);
        gh_model *m = lookup(d, req, params, &device);
        if (!m)
                return 0;
        gh_resident *res = gh_model_resident(m, device);
        if (!res || !gh_resident_ready(res))
                return gh_request_error(req, GH_ERROR_MODEL_NOT_LOADED,
                                        obj("model", json_object_new_string(gh_model_name(m)), "device", json_object_new_int((int) device)));
        gh_pool *pool = gh_store_pool(d->engine.store, device);
        int r = gh_pool_slabs_for(pool, gh_resident_offset(res), gh_resident_bytes(res), &first, &count);
        if (r < 0)
                return r;
        gh_pool_stats st;
        gh_pool_get_stats(pool, &st);
        json_object *head = obj("model", json_object_new_string(gh_model_name(m)), "device", json_object_new_int((int) device));
        json_object_object_add(head, "slab_size", json_object_new_int64((int64_t) gh_pool_slab_size(pool)));
        json_object_object_add(head, "pool_size", json_object_new_int64((int64_t) st.capacity));
        json_object_object_add(head, "offset", json_object_new_int64((int64_t) gh_resident_offset(res)));
        json_object_object_add(head, "bytes", json_object_new_int64((int64_t) gh_resident_bytes(res)));
        json_object_object_add(head, "n_slabs", json_object_new_int64(count));
        json_object_object_add(head, "tensors", tensor_table(res));
        gh_resident_ref(res);
        gh_request_set_cancel(req, attach_cancel, res);
        gh_request_set_stop(req, attach_stop, res);
        r = send_slabs(req, pool, first, count, head);
        if (r < 0) {
                gh_request_set_cancel(req, NULL, NULL);
                gh_resident_unref(res);
        }
        return r;
}

static const gh_param_spec params_model_device[] = {
        {"model", json_type_string, true},
        {"device", json_type_int, false},
        {NULL, 0, false},
};
static const gh_param_spec params_pin[] = {
        {"model", json_type_string, true},
        {"pinned", json_type_boolean, true},
        {NULL, 0, false},
};

const gh_method gh_model_methods[] = {
        {"io.gpuhost.ListDevices", list_devices, GH_METHOD_WHILE_STOPPING, NULL},
        {"io.gpuhost.ListModels", list_models, GH_METHOD_WHILE_STOPPING, NULL},
        {"io.gpuhost.LoadModel", load_model, GH_METHOD_PRIVILEGED, params_model_device},
        {"io.gpuhost.UnloadModel", unload_model, GH_METHOD_PRIVILEGED, params_model_device},
        {"io.gpuhost.PinModel", pin_model, GH_METHOD_PRIVILEGED, params_pin},
        {"io.gpuhost.AttachModel", attach_model, GH_METHOD_PRIVILEGED, params_model_device},
};
const size_t gh_model_n_methods = ELEMENTSOF(gh_model_methods);
