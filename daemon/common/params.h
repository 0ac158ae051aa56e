/* Job parameters checked against a pipeline plugin's parameter table.
 *
 * The daemon never loads plugins; it gets each plugin's table as the JSON
 * that gh_plugin_to_json() writes (daemon/worker/plugin-loader.c): an array
 * of {"name", "type", "help", "required", ...} with per-type "min", "max",
 * "max_length", "choices" and "default". A client's parameters (a JSON
 * object, untrusted) are checked against it once, before a job is queued,
 * and turned into a normalized object that holds every parameter of the
 * table, so the worker's accessors (gh_host.param_*) need no defaults and no
 * checks of their own. See params.c for the rules. */
#pragma once

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>

#include "gpuhost/plugin.h"

/* Bounds of an image parameter's width and height, in pixels. */
#define GH_PARAMS_IMAGE_SIZE_MAX 16384

/* Model names, as in the [model NAME] sections of the configuration
 * (daemon/gpuhostd/config.c): 1..64 bytes of A-Z a-z 0-9 '.' '_' '-', not
 * starting with '.' or '-' (so never "..", a hidden file or an option). */
#define GH_MODEL_NAME_MAX 64
bool gh_model_name_valid(const char *name, size_t len);

/* Checks |request| (a JSON object from a client, or NULL for {}) against
 * |table| (a JSON array of parameter objects); |n_fds| is the number of fds
 * that came with the request, which image parameters refer to by index.
 *
 * On success returns 0 and *ret_normalized is a new object with a member for
 * every parameter of the table, in table order: the request's value, else the
 * default. Ints are int64, floats doubles (an integer given for a float
 * parameter becomes a double), strings, enums and models strings, bools
 * booleans, images {"fd", "width", "height", "format"}. An optional image or
 * model parameter the request does not give is null.
 *
 * On failure nothing is returned in *ret_normalized, and |ret_param| gets the
 * name of the offending parameter ("" if the error is not about one; names
 * from the request are escaped and shortened) and |ret_reason| a one-line
 * reason; either may be NULL/0. Errors: -EINVAL for a bad request, -EPROTO
 * for a malformed table, -ENOMEM. */
int gh_params_validate(json_object *table, json_object *request, size_t n_fds, json_object **ret_normalized,
                       char *ret_param, size_t param_size, char *ret_reason, size_t reason_size);

/* The normalized value of parameter |name| for an accessor of |type|
 * ("int", "float", "string", "bool", "image"; "string" also reads enum and
 * model parameters), borrowed from |normalized|. Returns -EINVAL if |table|
 * has no such parameter or its type does not fit, -ENOENT if the parameter
 * is an optional image or model the request did not give. */
int gh_params_lookup(json_object *table, json_object *normalized, const char *name, const char *type,
                     json_object **ret);
