/* io.gpuhost.GetMetrics: the daemon's metrics registry rendered in the
 * Prometheus text format, for clients that read it over varlink (gpuhostctl
 * metrics, an agent without HTTP). */
#include <limits.h>

#include "../common/util.h"
#include "daemon.h"

static int get_metrics(gh_request *req, json_object *params, void *userdata) {
        gh_daemon *d = userdata;
        _cleanup_free_ char *text = NULL;
        size_t len;
        int r = gh_metrics_render(d->metrics, &text, &len);

        if (r < 0)
                return r;
        if (len > INT_MAX)
                return -E2BIG;
        json_object *o = json_object_new_object();
        json_object_object_add(o, "text", json_object_new_string_len(text, (int) len));
        return gh_request_reply(req, o);
}

const gh_method gh_metrics_methods[] = {
        {"io.gpuhost.GetMetrics", get_metrics, GH_METHOD_WHILE_STOPPING, NULL},
};
const size_t gh_metrics_n_methods = ELEMENTSOF(gh_metrics_methods);
