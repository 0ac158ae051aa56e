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
#include <stdint.h>

#include "gpuhost/plugin.h"

/* Bounds of an image parameter's width and height, in pixels. */
#define GH_PARAMS_IMAGE_SIZE_MAX 16384
/* The most bytes an image sent inline ("data", base64) may decode to: the
 * largest message [limits] max_message_size allows, which bounds it too. */
#define GH_PARAMS_IMAGE_DATA_MAX (64u << 20)
/* The largest PNG file an image's fd may hold: the pixels of the largest
 * image, RGBA. */
#define GH_PARAMS_IMAGE_FILE_MAX ((uint64_t) GH_PARAMS_IMAGE_SIZE_MAX * GH_PARAMS_IMAGE_SIZE_MAX * 4)

/* Model names, as in the [model NAME] sections of the configuration
 * (daemon/gpuhostd/config.c): 1..64 bytes of A-Z a-z 0-9 '.' '_' '-', not
 * starting with '.' or '-' (so never "..", a hidden file or an option). */
#define GH_MODEL_NAME_MAX 64
bool gh_model_name_valid(const char *name, size_t len);

/* The fds of a request's images. In: the fds that came with the request
 * (|fds| may be NULL where only their number is known, as in tests: a PNG
 * in one of them then cannot be read). Out: the sealed memfds that
 * gh_params_validate() made of the images sent inline, which the
 * normalized values call fd n_fds + i; the caller owns them (and closes
 * them with gh_params_images_close()). */
typedef struct gh_params_images {
        const int *fds;
        size_t n_fds;
        int made[GH_PLUGIN_PARAMS_MAX];
        size_t n_made;
} gh_params_images;

void gh_params_images_close(gh_params_images *images);

/* Checks |request| (a JSON object from a client, or NULL for {}) against
 * |table| (a JSON array of parameter objects); |images| (NULL: no fds, and
 * the memfds of inline images are not kept) holds the fds that came with
 * the request, which image parameters refer to by index, and gets the
 * memfds made for images sent inline.
 *
 * On success returns 0 and *ret_normalized is a new object with a member for
 * every parameter of the table, in table order: the request's value, else the
 * default. Ints are int64, floats doubles (an integer given for a float
 * parameter becomes a double), strings, enums and models strings, bools
 * booleans. Images are {"fd", "width", "height", "format"} with fd an index
 * into the request's fds followed by the memfds made, and format "rgb8" or
 * "rgba8": raw pixels, rows packed; or, for a PNG file, that plus
 * "encoding": "png" and "bytes" (the file's size), format then being what
 * its pixels decode to (rgba8 for a colour type with alpha). An optional
 * image or model parameter the request does not give is null.
 *
 * A request's image is one of (see params.c):
 *   {"fd": N, "width", "height", "format": "rgb8"|"rgba8"}   raw, in fd N
 *   {"data": BASE64, "width", "height", "format": "rgb8"|"rgba8"}
 *   {"data": BASE64, "format": "png"}      width, height optional (must match)
 *   {"fd": N, "format": "png"}             width, height optional (must match)
 * For a PNG only its first 33 bytes are read here (gh_png_head_parse()).
 *
 * On failure nothing is returned in *ret_normalized, no memfd is left in
 * |images|, and |ret_param| gets the name of the offending parameter ("" if
 * the error is not about one; names from the request are escaped and
 * shortened) and |ret_reason| a one-line reason; either may be NULL/0.
 * Errors: -EINVAL for a bad request, -EPROTO for a malformed table,
 * -ENOMEM, or another negative errno when a memfd cannot be made. */
int gh_params_validate(json_object *table, json_object *request, gh_params_images *images,
                       json_object **ret_normalized, char *ret_param, size_t param_size, char *ret_reason,
                       size_t reason_size);

/* The normalized value of parameter |name| for an accessor of |type|
 * ("int", "float", "string", "bool", "image"; "string" also reads enum and
 * model parameters), borrowed from |normalized|. Returns -EINVAL if |table|
 * has no such parameter or its type does not fit, -ENOENT if the parameter
 * is an optional image or model the request did not give. */
int gh_params_lookup(json_object *table, json_object *normalized, const char *name, const char *type,
                     json_object **ret);
