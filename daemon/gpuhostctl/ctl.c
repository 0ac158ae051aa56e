/* gpuhostctl shared helpers: connecting with actionable errors, making a
 * call, printing replies and errors, and the program's main flow. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "gh-build.h"

static const char *socket_path(const ctl_opts *o) {
        const char *env = getenv(GH_SOCKET_ENV);

        return o->socket ? o->socket : env && *env ? env : GH_DEFAULT_SOCKET;
}

int ctl_connect(const ctl_opts *o, gh_client **ret) {
        const char *path = socket_path(o);
        int r = gh_client_connect(path, ret);

        if (r >= 0) {
                gh_client_set_timeout(*ret, o->timeout_usec);
                return CTL_EXIT_OK;
        }
        switch (r) {
        case -ENOENT:
        case -ENOTDIR:
                fprintf(stderr, "gpuhostctl: gpuhostd is not running: no socket at %s "
                                "(start it with 'systemctl start gpuhostd', or point --socket/$%s at its socket)\n",
                        path, GH_SOCKET_ENV);
                break;
        case -ECONNREFUSED:
                fprintf(stderr, "gpuhostctl: gpuhostd is not running: nothing listens on %s "
                                "(start it with 'systemctl start gpuhostd')\n", path);
                break;
        case -EACCES:
        case -EPERM:
                fprintf(stderr, "gpuhostctl: permission denied on %s "
                                "(join the socket's group, e.g. 'gpuhost', or run as root)\n", path);
                break;
        default:
                fprintf(stderr, "gpuhostctl: cannot connect to %s: %s\n", path, strerror(-r));
        }
        return CTL_EXIT_CONNECT;
}

int ctl_report_transport_error(const ctl_opts *o, gh_client *c, int r) {
        if (r == -ETIMEDOUT)
                fprintf(stderr, "gpuhostctl: no reply from gpuhostd within %.1f s (raise it with --timeout)\n",
                        (double) o->timeout_usec / 1e6);
        else if (r == -ECONNRESET || r == -EPIPE)
                fprintf(stderr, "gpuhostctl: gpuhostd closed the connection\n");
        else if (r == -EINVAL)
                fprintf(stderr, "gpuhostctl: the parameters must be a JSON object\n");
        else if (r == -EBADMSG)
                fprintf(stderr, "gpuhostctl: malformed reply from %s\n", gh_client_socket_path(c));
        else
                fprintf(stderr, "gpuhostctl: call failed: %s\n", strerror(-r));
        return r == -EINVAL ? CTL_EXIT_USAGE : CTL_EXIT_CONNECT;
}

void ctl_report_remote_error(const char *error, const char *parameters_json) {
        json_object *p = json_tokener_parse(parameters_json);
        json_object *v;
        const char *detail = NULL;

        /* Prefer a human sentence when the error carries one. */
        if (p && (json_object_object_get_ex(p, "message", &v) || json_object_object_get_ex(p, "reason", &v)))
                detail = json_object_get_string(v);
        if (p && json_object_object_length(p) > 0)
                fprintf(stderr, "gpuhostctl: %s%s%s %s\n", error, detail ? ": " : "", detail ? detail : "",
                        json_object_to_json_string_ext(p, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
        else
                fprintf(stderr, "gpuhostctl: %s\n", error);
        json_object_put(p);
}

int ctl_call(const ctl_opts *o, gh_client *c, const char *method, const char *params, json_object **ret) {
        gh_reply *reply = NULL;
        int r = gh_client_call(c, method, params, &reply);

        if (r < 0)
                return ctl_report_transport_error(o, c, r);
        if (gh_reply_error(reply)) {
                ctl_report_remote_error(gh_reply_error(reply), gh_reply_parameters(reply));
                gh_reply_free(reply);
                return CTL_EXIT_REMOTE;
        }
        json_object *p = json_tokener_parse(gh_reply_parameters(reply));
        gh_reply_free(reply);
        if (!p) {
                fprintf(stderr, "gpuhostctl: malformed reply\n");
                return CTL_EXIT_CONNECT;
        }
        *ret = p;
        return CTL_EXIT_OK;
}

int ctl_call_and_print(const ctl_opts *o, const char *method, const char *params, ctl_print_fn print) {
        gh_client *c = NULL;
        json_object *reply = NULL;
        int r = ctl_connect(o, &c);

        if (r == CTL_EXIT_OK)
                r = ctl_call(o, c, method, params, &reply);
        if (r == CTL_EXIT_OK) {
                if (o->json)
                        ctl_print_json(reply);
                else
                        print(o, c, reply);
        }
        json_object_put(reply);
        gh_client_free(c);
        return r;
}

void ctl_format_bytes(int64_t bytes, char *buf, size_t size) {
        static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
        double v = (double) bytes;
        size_t u = 0;

        while ((v >= 1024 || v <= -1024) && u + 1 < sizeof(units) / sizeof(units[0])) {
                v /= 1024;
                u++;
        }
        snprintf(buf, size, u ? "%.1f %s" : "%.0f %s", v, units[u]);
}

const char *ctl_json_str(json_object *o, const char *key) {
        json_object *v;

        if (!json_object_object_get_ex(o, key, &v))
                return "?";
        return v ? json_object_get_string(v) : "-";
}

int64_t ctl_json_int(json_object *o, const char *key) {
        json_object *v;

        return json_object_object_get_ex(o, key, &v) && v ? json_object_get_int64(v) : 0;
}

void ctl_print_json(json_object *o) {
        printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED |
                                                              JSON_C_TO_STRING_NOSLASHESCAPE));
}

int ctl_main(int argc, char **argv) {
        ctl_opts o;
        const char *error = NULL;
        int r = ctl_parse_args(argc, argv, &o, &error);

        if (r < 0) {
                fprintf(stderr, "gpuhostctl: %s\n", error);
                return CTL_EXIT_USAGE;
        }
        if (o.version && !o.help) {
                printf("gpuhostctl %s\n", GH_VERSION);
                return CTL_EXIT_OK;
        }
        if (r == 0) {
                ctl_print_help(stdout, o.command);
                return CTL_EXIT_OK;
        }
        return o.command->run(&o);
}
