/* The methods gpuhostd serves: the varlink service interface
 * (org.varlink.service) and io.gpuhost. Parameters are declared next to
 * each method and checked by the server before a handler runs. */
#include <string.h>
#include <unistd.h>

#include "../common/util.h"
#include "daemon.h"
#include "gh-build.h"
#include "gpuhost/protocol.h"
#include "tasks.h"

/* io.gpuhost.varlink, embedded at build time and returned verbatim. */
extern const char gh_interface_io_gpuhost[];
extern const size_t gh_interface_io_gpuhost_size;

static const char varlink_service_description[] =
        "# The Varlink Service Interface is provided by every varlink service. It\n"
        "# describes the service and the interfaces it implements.\n"
        "interface org.varlink.service\n"
        "\n"
        "# Get a list of all the interfaces a service provides and information\n"
        "# about the implementation.\n"
        "method GetInfo() -> (\n"
        "  vendor: string,\n"
        "  product: string,\n"
        "  version: string,\n"
        "  url: string,\n"
        "  interfaces: []string\n"
        ")\n"
        "\n"
        "# Get the description of an interface that is implemented by this service.\n"
        "method GetInterfaceDescription(interface: string) -> (description: string)\n"
        "\n"
        "# The requested interface was not found.\n"
        "error InterfaceNotFound (interface: string)\n"
        "\n"
        "# The requested method was not found\n"
        "error MethodNotFound (method: string)\n"
        "\n"
        "# The interface defines the requested method, but the service does not\n"
        "# implement it.\n"
        "error MethodNotImplemented (method: string)\n"
        "\n"
        "# One of the passed parameters is invalid.\n"
        "error InvalidParameter (parameter: string)\n"
        "\n"
        "# Client is denied access\n"
        "error PermissionDenied ()\n"
        "\n"
        "# Method is expected to be called with 'more' set to true, but wasn't\n"
        "error ExpectedMore ()\n";

static json_object *obj_new(void) {
        return json_object_new_object();
}

static int get_info(gh_request *req, json_object *params, void *userdata) {
        gh_daemon *d = userdata;
        json_object *o = obj_new();

        json_object_object_add(o, "vendor", json_object_new_string("gpuhost"));
        json_object_object_add(o, "product", json_object_new_string("gpuhostd"));
        json_object_object_add(o, "version", json_object_new_string(GH_VERSION));
        json_object_object_add(o, "url", json_object_new_string(GH_URL));
        json_object_object_add(o, "interfaces", gh_server_interfaces(d->server));
        return gh_request_reply(req, o);
}

static int get_interface_description(gh_request *req, json_object *params, void *userdata) {
        const char *name = json_object_get_string(json_object_object_get(params, "interface"));
        const char *text = NULL;
        size_t len = 0;

        if (strcmp(name, GH_INTERFACE) == 0) {
                text = gh_interface_io_gpuhost;
                len = gh_interface_io_gpuhost_size;
        } else if (strcmp(name, GH_VARLINK_SERVICE) == 0) {
                text = varlink_service_description;
                len = sizeof(varlink_service_description) - 1;
        }
        if (!text) {
                json_object *p = obj_new();
                json_object_object_add(p, "interface", json_object_new_string(name));
                return gh_request_error(req, GH_VARLINK_INTERFACE_NOT_FOUND, p);
        }
        json_object *o = obj_new();
        json_object_object_add(o, "description", json_object_new_string_len(text, (int) len));
        return gh_request_reply(req, o);
}

static int ping(gh_request *req, json_object *params, void *userdata) {
        json_object *v = json_object_object_get(params, "ping");
        json_object *o = obj_new();

        json_object_object_add(o, "pong", json_object_new_string(v ? json_object_get_string(v) : ""));
        return gh_request_reply(req, o);
}

static int get_status(gh_request *req, json_object *params, void *userdata) {
        gh_daemon *d = userdata;
        json_object *o = obj_new(), *devices = gh_engine_devices_json(&d->engine);

        json_object_object_add(o, "version", json_object_new_string(GH_VERSION));
        json_object_object_add(o, "state", json_object_new_string(gh_daemon_state_to_string(d->state)));
        json_object_object_add(o, "uptime_usec", json_object_new_int64((int64_t) (gh_now_usec(CLOCK_MONOTONIC) - d->start_usec)));
        json_object_object_add(o, "pid", json_object_new_int(getpid()));
        json_object_object_add(o, "connections", json_object_new_int64(gh_server_connections(d->server)));
        json_object *sched = gh_sched_devices_json(d->workers);
        for (size_t i = 0; i < json_object_array_length(devices); i++) { /* the scheduler's view, merged */
                json_object *dev = json_object_array_get_idx(devices, i);
                int64_t index = json_object_get_int64(json_object_object_get(dev, "index"));
                for (size_t k = 0; k < json_object_array_length(sched); k++) {
                        json_object *s = json_object_array_get_idx(sched, k);
                        if (json_object_get_int64(json_object_object_get(s, "index")) != index)
                                continue;
                        json_object_object_foreach(s, key, val)
                                if (!json_object_object_get_ex(dev, key, NULL))
                                        json_object_object_add(dev, key, json_object_get(val));
                }
        }
        json_object_put(sched);
        json_object_object_add(o, "devices", devices);
        json_object_object_add(o, "config", gh_config_summary(d->config));
        json_object_object_add(o, "workers", gh_workers_summary(d->workers));
        return gh_request_reply(req, o);
}

static int reload_config(gh_request *req, json_object *params, void *userdata) {
        gh_daemon_reload(userdata, req);
        return 0;
}

static const gh_param_spec params_get_interface_description[] = {
        {"interface", json_type_string, true},
        {NULL, 0, false},
};
static const gh_param_spec params_ping[] = {
        {"ping", json_type_string, false},
        {NULL, 0, false},
};

const gh_method gh_daemon_methods[] = {
        {"org.varlink.service.GetInfo", get_info, GH_METHOD_WHILE_STOPPING, NULL},
        {"org.varlink.service.GetInterfaceDescription", get_interface_description,
         GH_METHOD_WHILE_STOPPING, params_get_interface_description},
        {"io.gpuhost.Ping", ping, GH_METHOD_WHILE_STOPPING, params_ping},
        {"io.gpuhost.GetStatus", get_status, GH_METHOD_WHILE_STOPPING, NULL},
        {"io.gpuhost.ReloadConfig", reload_config, GH_METHOD_PRIVILEGED, NULL},
};
const size_t gh_daemon_n_methods = ELEMENTSOF(gh_daemon_methods);
