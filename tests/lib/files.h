/* Test and benchmark helper: small files. Library code (no assertions):
 * each returns 0 or a negative errno, and callers assert. */
#pragma once

#include <sys/types.h>

/* Writes |text| to |path| (created or truncated, mode 0644). */
int gh_test_write_text(const char *path, const char *text);
/* The whole of |path| as a NUL-terminated string (to free); an empty
 * string if it cannot be read; NULL only out of memory. */
char *gh_test_read_text(const char *path);
/* Copies |from| to |to|, which must not exist yet, with |mode| (plugins:
 * 0644, since the worker refuses files others may write). */
int gh_test_copy_file(const char *from, const char *to, mode_t mode);
