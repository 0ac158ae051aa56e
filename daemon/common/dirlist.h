/* Sorted directory listings: the entries of one directory (not hidden
 * ones), optionally only those with a given suffix, as "DIR/NAME" paths in
 * byte order of NAME. Used for config drop-ins, model folders and plugins. */
#pragma once

#include <stddef.h>

/* At most |max| entries (-E2BIG past that). -errno of opendir() when the
 * directory cannot be read. On success the caller frees with gh_strv_free(). */
int gh_dir_list(const char *dir, const char *suffix, size_t max, char ***ret_paths, size_t *ret_n);
void gh_strv_free(char **v, size_t n);
