/* Logging for the gpuhost programs. Messages go to stderr; under journald
 * (JOURNAL_STREAM names our stderr) each line carries a "<N>" syslog priority
 * prefix so the journal records the level, otherwise the level is spelled
 * out. Library code does not log; top-level code logs and returns in one
 * statement: "return gh_log_error_errno(r, "Failed to bind %s: %m", path);" */
#pragma once

#include <stdbool.h>
#include <syslog.h>

#include "util.h"

void gh_log_open(const char *ident);
void gh_log_set_max_level(int level);
int gh_log_get_max_level(void);
/* Always writes "<N>message" lines, for a reader that parses the level (the
 * daemon reading a worker's stderr). */
void gh_log_force_priority_prefix(void);
/* Maps "err", "warning", "notice", "info", "debug" (and "error", "warn") to a
 * syslog level; returns -EINVAL for anything else. */
int gh_log_level_from_string(const char *s);
const char *gh_log_level_to_string(int level);

/* Logs at the level with errno set to |error| (for %m) and returns
 * -|error|, so callers can write "return gh_log_error_errno(r, ...)". */
int gh_log_internal(int level, int error, const char *fmt, ...) _printf_(3, 4);

#define gh_log_full_errno(level, error, ...)                                  \
        ({                                                                     \
                int _lvl_ = (level), _e_ = (error);                            \
                _lvl_ <= gh_log_get_max_level() ? gh_log_internal(_lvl_, _e_, __VA_ARGS__) \
                                                : -abs(_e_);                   \
        })
#define gh_log_debug(...) gh_log_full_errno(LOG_DEBUG, 0, __VA_ARGS__)
#define gh_log_info(...) gh_log_full_errno(LOG_INFO, 0, __VA_ARGS__)
#define gh_log_notice(...) gh_log_full_errno(LOG_NOTICE, 0, __VA_ARGS__)
#define gh_log_warning(...) gh_log_full_errno(LOG_WARNING, 0, __VA_ARGS__)
#define gh_log_error(...) gh_log_full_errno(LOG_ERR, 0, __VA_ARGS__)
#define gh_log_debug_errno(e, ...) gh_log_full_errno(LOG_DEBUG, e, __VA_ARGS__)
#define gh_log_info_errno(e, ...) gh_log_full_errno(LOG_INFO, e, __VA_ARGS__)
#define gh_log_warning_errno(e, ...) gh_log_full_errno(LOG_WARNING, e, __VA_ARGS__)
#define gh_log_error_errno(e, ...) gh_log_full_errno(LOG_ERR, e, __VA_ARGS__)
