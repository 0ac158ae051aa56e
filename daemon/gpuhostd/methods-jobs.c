/* io.gpuhost methods for pipelines and workers: ListPipelines, ListWorkers,
 * RestartWorker and EnablePlugin (the job methods are in jobs.c). */
#include <string.h>

#include "../common/log.h"
#include "../common/util.h"
#include "daemon.h"
#include "gpuhost/protocol.h"
#include "tasks.h"

static int list_pipelines(gh_request *req, json_object *params, void *userdata) {
        gh_daemon *d = userdata;

        return gh_request_reply(req, gh_pipelines_json(d->workers));
}

static int list_workers(gh_request *req, json_object *params, void *userdata) {
        gh_daemon *d = userdata;
        json_object *o = json_object_new_object();

        json_object_object_add(o, "workers", gh_workers_json(d->workers));
        return gh_request_reply(req, o);
}

static int restart_worker(gh_request *req, json_object *params, void *userdata) {
        gh_daemon *d = userdata;
        int64_t id = json_object_get_int64(json_object_object_get(params, "id"));
        gh_worker *w = id >= 0 && id <= UINT32_MAX ? gh_workers_get(d->workers, (unsigned) id) : NULL;
        json_object *o = json_object_new_object();

        json_object_object_add(o, "id", json_object_new_int64(id));
        if (!w)
                return gh_request_error(req, "io.gpuhost.WorkerNotFound", o);
        int r = gh_worker_restart(w);
        if (r < 0) {
                json_object_put(o);
                return r;
        }
        return gh_request_reply(req, o);
}

static int enable_plugin(gh_request *req, json_object *params, void *userdata) {
        gh_daemon *d = userdata;
        const char *name = json_object_get_string(json_object_object_get(params, "pipeline"));
        gh_pipeline *p = gh_workers_pipeline(d->workers, name);
        json_object *o = json_object_new_object();

        json_object_object_add(o, "pipeline", json_object_new_string(name));
        if (!p)
                return gh_request_error(req, "io.gpuhost.PipelineNotFound", o);
        if (p->quarantined)
                gh_log_notice("Pipeline %s taken out of quarantine", p->name);
        p->quarantined = false;
        p->n_crash = 0;
        json_object_object_add(o, "quarantined", json_object_new_boolean(false));
        return gh_request_reply(req, o);
}

static const gh_param_spec params_restart[] = {
        {"id", json_type_int, true},
        {NULL, 0, false},
};
static const gh_param_spec params_enable[] = {
        {"pipeline", json_type_string, true},
        {NULL, 0, false},
};
const gh_method gh_job_methods[] = {
        {"io.gpuhost.ListPipelines", list_pipelines, GH_METHOD_WHILE_STOPPING, NULL},
        {"io.gpuhost.ListWorkers", list_workers, GH_METHOD_WHILE_STOPPING, NULL},
        {"io.gpuhost.RestartWorker", restart_worker, GH_METHOD_PRIVILEGED, params_restart},
        {"io.gpuhost.EnablePlugin", enable_plugin, GH_METHOD_PRIVILEGED, params_enable},
};
const size_t gh_job_n_methods = ELEMENTSOF(gh_job_methods);
