/* Plugin loading and descriptor validation. See plugin-loader.h. */
#include <ctype.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>

#include "../common/dirlist.h"
#include "../common/util.h"
#include "plugin-loader.h"

/* The v1.0 layouts: members up to these must be present. */
#define PLUGIN_V1_SIZE (offsetof(gh_plugin, abort) + sizeof(((gh_plugin *) 0)->abort))
#define PARAM_V1_SIZE (offsetof(gh_plugin_param, bool_default) + sizeof(bool))

static bool name_ok(const char *s, bool dash) {
        size_t n = s ? strlen(s) : 0;

        if (n == 0 || n > GH_PLUGIN_NAME_MAX || !islower((unsigned char) s[0]))
                return false;
        for (size_t i = 0; i < n; i++)
                if (!islower((unsigned char) s[i]) && !isdigit((unsigned char) s[i]) && s[i] != '_' && !(dash && s[i] == '-'))
                        return false;
        return true;
}

#define REFUSE(...) (gh_set_error(reason, reason_size, __VA_ARGS__), -EINVAL)

static int validate_choices(const gh_plugin_param *q, char *reason, size_t reason_size) {
        size_t n = 0;
        bool default_found = false;

        if (!q->choices)
                return REFUSE("parameter \"%s\": an enum needs choices", q->name);
        for (; q->choices[n]; n++) {
                if (n >= GH_PLUGIN_CHOICES_MAX)
                        return REFUSE("parameter \"%s\": more than %d choices", q->name, GH_PLUGIN_CHOICES_MAX);
                if (!name_ok(q->choices[n], true))
                        return REFUSE("parameter \"%s\": choice %zu is not a valid name", q->name, n);
                for (size_t k = 0; k < n; k++)
                        if (strcmp(q->choices[k], q->choices[n]) == 0)
                                return REFUSE("parameter \"%s\": choice \"%s\" twice", q->name, q->choices[n]);
                default_found |= q->enum_default && strcmp(q->enum_default, q->choices[n]) == 0;
        }
        if (n == 0)
                return REFUSE("parameter \"%s\": an enum needs choices", q->name);
        if (!q->required && !default_found)
                return REFUSE("parameter \"%s\": the default is not one of the choices", q->name);
        return 0;
}

static int validate_param(const gh_plugin_param *q, char *reason, size_t reason_size) {
        if (q->struct_size < PARAM_V1_SIZE)
                return REFUSE("parameter %s: struct_size %u is smaller than ABI 1.0's", q->name ? q->name : "?", q->struct_size);
        if (!name_ok(q->name, false))
                return REFUSE("a parameter name is missing or not [a-z][a-z0-9_]* (at most %d bytes)", GH_PLUGIN_NAME_MAX);
        if (!q->help)
                return REFUSE("parameter \"%s\": no help text", q->name);
        switch (q->type) {
        case GH_PARAM_INT:
                if (q->int_min > q->int_max || (!q->required && (q->int_default < q->int_min || q->int_default > q->int_max)))
                        return REFUSE("parameter \"%s\": range or default inconsistent", q->name);
                return 0;
        case GH_PARAM_FLOAT:
                if (!isfinite(q->float_min) || !isfinite(q->float_max) || !isfinite(q->float_default) ||
                    q->float_min > q->float_max ||
                    (!q->required && (q->float_default < q->float_min || q->float_default > q->float_max)))
                        return REFUSE("parameter \"%s\": range or default inconsistent", q->name);
                return 0;
        case GH_PARAM_STRING:
                if (q->string_max == 0 || q->string_max > GH_PLUGIN_STRING_MAX ||
                    (q->string_default && strlen(q->string_default) > q->string_max))
                        return REFUSE("parameter \"%s\": string_max out of 1..%d or default too long", q->name, GH_PLUGIN_STRING_MAX);
                return 0;
        case GH_PARAM_ENUM:
                return validate_choices(q, reason, reason_size);
        case GH_PARAM_BOOL:
        case GH_PARAM_IMAGE:
        case GH_PARAM_MODEL:
                return 0;
        }
        return REFUSE("parameter \"%s\": unknown type %d", q->name, (int) q->type);
}

int gh_plugin_validate(const gh_plugin *p, char *reason, size_t reason_size) {
        if (!p)
                return REFUSE("gh_plugin_entry() returned NULL");
        if (GH_PLUGIN_ABI_MAJOR_OF(p->abi_version) != GH_PLUGIN_ABI_MAJOR)
                return gh_set_error(reason, reason_size, "built for plugin ABI %u.%u; this host speaks %d.x",
                                    p->abi_version >> 16, p->abi_version & 0xffff, GH_PLUGIN_ABI_MAJOR), -EPROTO;
        if (p->struct_size < PLUGIN_V1_SIZE)
                return REFUSE("struct_size %u is smaller than ABI 1.0's (%zu)", p->struct_size, (size_t) PLUGIN_V1_SIZE);
        if (!name_ok(p->name, true))
                return REFUSE("the plugin name is missing or not [a-z][a-z0-9_-]* (at most %d bytes)", GH_PLUGIN_NAME_MAX);
        if (!p->version || !p->description)
                return REFUSE("plugin \"%s\": version and description are required", p->name);
        if (!p->estimate || !p->start || !p->step || !p->finish || !p->abort)
                return REFUSE("plugin \"%s\": an entry point is missing", p->name);
        if (p->n_params > GH_PLUGIN_PARAMS_MAX || (p->n_params > 0 && !p->params))
                return REFUSE("plugin \"%s\": parameter table missing or longer than %d", p->name, GH_PLUGIN_PARAMS_MAX);
        for (uint32_t i = 0; i < p->n_params; i++) {
                int r = validate_param(&p->params[i], reason, reason_size);
                if (r < 0)
                        return r;
                for (uint32_t k = 0; k < i; k++)
                        if (strcmp(p->params[k].name, p->params[i].name) == 0)
                                return REFUSE("parameter \"%s\" appears twice", p->params[i].name);
        }
        return 0;
}

/* The file must be ours or root's and writable by nobody else. */
static int check_file(int fd, const char *path, uid_t owner, char *reason, size_t reason_size) {
        struct stat st;

        if (fstat(fd, &st) < 0)
                return gh_negerrno();
        if (!S_ISREG(st.st_mode))
                return REFUSE("not a regular file");
        if (st.st_uid != 0 && st.st_uid != owner)
                return gh_set_error(reason, reason_size, "owned by uid %u, not root or the daemon's user (%u)",
                                    (unsigned) st.st_uid, (unsigned) owner), -EPERM;
        if (st.st_mode & (S_IWGRP | S_IWOTH))
                return gh_set_error(reason, reason_size, "writable by group or others (mode %04o)",
                                    (unsigned) (st.st_mode & 07777)), -EPERM;
        return 0;
}

int gh_plugin_load(const char *path, uid_t owner, gh_loaded_plugin **ret, char *reason, size_t reason_size) {
        char fdpath[64];
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);

        if (fd < 0)
                return gh_set_error(reason, reason_size, "%s", strerror(errno)), gh_negerrno();
        int r = check_file(fd, path, owner, reason, reason_size);
        if (r < 0)
                return r;
        /* Load the file we checked, not whatever the path names by now. The
         * fd stays open while the plugin is loaded: the dynamic loader knows
         * objects by name, and "/proc/self/fd/N" must not name two of them. */
        snprintf(fdpath, sizeof(fdpath), "/proc/self/fd/%d", fd);
        void *h = dlopen(fdpath, RTLD_NOW | RTLD_LOCAL);
        if (!h)
                return gh_set_error(reason, reason_size, "cannot load: %s", dlerror()), -ELIBBAD;
        gh_plugin_entry_fn entry = (gh_plugin_entry_fn) dlsym(h, GH_PLUGIN_ENTRY_SYMBOL);
        if (!entry) {
                dlclose(h);
                return gh_set_error(reason, reason_size, "no %s symbol: not a gpuhost plugin", GH_PLUGIN_ENTRY_SYMBOL), -ENOEXEC;
        }
        const gh_plugin *p = entry();
        r = gh_plugin_validate(p, reason, reason_size);
        gh_loaded_plugin *lp = r >= 0 ? calloc(1, sizeof(*lp)) : NULL;
        if (r >= 0 && (!lp || !(lp->path = strdup(path))))
                r = -ENOMEM;
        if (r < 0) {
                free(lp);
                dlclose(h);
                return r;
        }
        lp->handle = h;
        lp->plugin = p;
        lp->fd = TAKE_FD(fd);
        *ret = lp;
        return 0;
}

void gh_plugin_unload(gh_loaded_plugin *lp) {
        if (!lp)
                return;
        dlclose(lp->handle);
        gh_close(lp->fd);
        free(lp->path);
        free(lp);
}

void gh_plugins_free(gh_loaded_plugin **plugins, size_t n) {
        for (size_t i = 0; i < n; i++)
                gh_plugin_unload(plugins[i]);
        free(plugins);
}

int gh_plugin_load_dir(const char *dir, uid_t owner, gh_loaded_plugin ***ret_plugins, size_t *ret_n,
                       gh_plugin_refused_fn refused, void *userdata) {
        char **paths = NULL, reason[512];
        size_t n_paths = 0, n = 0;
        int r = gh_dir_list(dir, ".so", 1024, &paths, &n_paths);
        gh_loaded_plugin **out = n_paths ? calloc(n_paths, sizeof(*out)) : NULL;

        if (r >= 0 && n_paths && !out)
                r = -ENOMEM;
        for (size_t i = 0; r >= 0 && i < n_paths; i++) {
                gh_loaded_plugin *lp = NULL;
                reason[0] = 0;
                int k = gh_plugin_load(paths[i], owner, &lp, reason, sizeof(reason));
                for (size_t j = 0; k >= 0 && j < n; j++)
                        if (strcmp(out[j]->plugin->name, lp->plugin->name) == 0) {
                                snprintf(reason, sizeof(reason), "a plugin named \"%s\" was loaded from %s already",
                                         lp->plugin->name, out[j]->path);
                                gh_plugin_unload(TAKE_PTR(lp));
                                k = -EEXIST;
                        }
                if (k < 0 && refused)
                        refused(paths[i], k, reason, userdata);
                else if (k >= 0)
                        out[n++] = lp;
        }
        gh_strv_free(paths, n_paths);
        if (r < 0) {
                gh_plugins_free(out, n);
                return r;
        }
        *ret_plugins = out;
        *ret_n = n;
        return 0;
}

static const char *const type_names[] = {
        [GH_PARAM_INT] = "int", [GH_PARAM_FLOAT] = "float", [GH_PARAM_STRING] = "string", [GH_PARAM_ENUM] = "enum",
        [GH_PARAM_BOOL] = "bool", [GH_PARAM_IMAGE] = "image", [GH_PARAM_MODEL] = "model",
};

static json_object *param_json(const gh_plugin_param *q) {
        json_object *o = json_object_new_object();

        json_object_object_add(o, "name", json_object_new_string(q->name));
        json_object_object_add(o, "type", json_object_new_string(type_names[q->type]));
        json_object_object_add(o, "help", json_object_new_string(q->help));
        json_object_object_add(o, "required", json_object_new_boolean(q->required));
        if (q->type == GH_PARAM_INT) {
                json_object_object_add(o, "min", json_object_new_int64(q->int_min));
                json_object_object_add(o, "max", json_object_new_int64(q->int_max));
                if (!q->required)
                        json_object_object_add(o, "default", json_object_new_int64(q->int_default));
        } else if (q->type == GH_PARAM_FLOAT) {
                json_object_object_add(o, "min", json_object_new_double(q->float_min));
                json_object_object_add(o, "max", json_object_new_double(q->float_max));
                if (!q->required)
                        json_object_object_add(o, "default", json_object_new_double(q->float_default));
        } else if (q->type == GH_PARAM_STRING) {
                json_object_object_add(o, "max_length", json_object_new_int64(q->string_max));
                if (!q->required)
                        json_object_object_add(o, "default", json_object_new_string(q->string_default ? q->string_default : ""));
        } else if (q->type == GH_PARAM_ENUM) {
                json_object *c = json_object_new_array();
                for (size_t i = 0; q->choices[i]; i++)
                        json_object_array_add(c, json_object_new_string(q->choices[i]));
                json_object_object_add(o, "choices", c);
                if (!q->required)
                        json_object_object_add(o, "default", json_object_new_string(q->enum_default));
        } else if (q->type == GH_PARAM_BOOL && !q->required)
                json_object_object_add(o, "default", json_object_new_boolean(q->bool_default));
        return o;
}

json_object *gh_plugin_to_json(const gh_plugin *p) {
        json_object *o = json_object_new_object(), *params = json_object_new_array();

        json_object_object_add(o, "name", json_object_new_string(p->name));
        json_object_object_add(o, "version", json_object_new_string(p->version));
        json_object_object_add(o, "description", json_object_new_string(p->description));
        json_object_object_add(o, "retry_safe", json_object_new_boolean(p->flags & GH_PLUGIN_RETRY_SAFE));
        for (uint32_t i = 0; i < p->n_params; i++)
                json_object_array_add(params, param_json(&p->params[i]));
        json_object_object_add(o, "parameters", params);
        return o;
}
