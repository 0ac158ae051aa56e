/* Loading pipeline plugins in gpuhost-worker: checking the file (owner,
 * permissions), dlopen, the entry symbol, and validating the descriptor
 * against the ABI before anything else touches it. Every refusal comes with
 * a one-line reason. */
#pragma once

#include <json-c/json.h>
#include <stdbool.h>
#include <sys/types.h>

#include "gpuhost/plugin.h"

typedef struct gh_loaded_plugin {
        char *path;
        void *handle;              /* dlopen() */
        int fd;                    /* the file loaded, open while it is */
        const gh_plugin *plugin;   /* valid while handle is open */
} gh_loaded_plugin;

/* Checks a descriptor: ABI major version, sizes, names, the parameter
 * table (types, ranges, defaults, choices), entry points. */
int gh_plugin_validate(const gh_plugin *p, char *reason, size_t reason_size);

/* Opens |path| if it is a regular file owned by root or |owner| and not
 * writable by group or others, loads it, and validates its descriptor. */
int gh_plugin_load(const char *path, uid_t owner, gh_loaded_plugin **ret, char *reason, size_t reason_size);
void gh_plugin_unload(gh_loaded_plugin *lp);

/* Loads every "*.so" of |dir| (sorted). Plugins that load go into
 * *ret_plugins; each refusal is handed to |refused| with its reason. Two
 * plugins with the same name: the second is refused. */
typedef void (*gh_plugin_refused_fn)(const char *path, int error, const char *reason, void *userdata);
int gh_plugin_load_dir(const char *dir, uid_t owner, gh_loaded_plugin ***ret_plugins, size_t *ret_n,
                       gh_plugin_refused_fn refused, void *userdata);
void gh_plugins_free(gh_loaded_plugin **plugins, size_t n);

/* The descriptor as JSON: name, version, description, flags, parameters. */
json_object *gh_plugin_to_json(const gh_plugin *p);
