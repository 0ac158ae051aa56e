/* Logging to stderr, with journald priority prefixes when stderr is the
 * journal stream. See log.h. */
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>

#include "log.h"

static const char *log_ident = "gpuhost";
static int log_max_level = LOG_INFO;
static int log_journal = -1; /* -1: not yet checked */

static const char *const level_names[] = {
        [LOG_EMERG] = "emerg", [LOG_ALERT] = "alert",   [LOG_CRIT] = "crit",
        [LOG_ERR] = "err",     [LOG_WARNING] = "warning", [LOG_NOTICE] = "notice",
        [LOG_INFO] = "info",   [LOG_DEBUG] = "debug",
};

/* JOURNAL_STREAM is "DEV:INODE" of the stream journald gave us; it is only
 * ours if stderr still is that stream (a child may inherit the variable). */
static bool stderr_is_journal(void) {
        const char *e = getenv("JOURNAL_STREAM");
        unsigned long long dev, ino;
        struct stat st;

        if (!e || sscanf(e, "%llu:%llu", &dev, &ino) != 2)
                return false;
        if (fstat(STDERR_FILENO, &st) < 0)
                return false;
        return (unsigned long long) st.st_dev == dev && (unsigned long long) st.st_ino == ino;
}

void gh_log_open(const char *ident) {
        log_ident = ident;
        log_journal = stderr_is_journal();
}

void gh_log_set_max_level(int level) {
        if (level >= LOG_EMERG && level <= LOG_DEBUG)
                log_max_level = level;
}

void gh_log_force_priority_prefix(void) {
        log_journal = 1;
}

int gh_log_get_max_level(void) {
        return log_max_level;
}

int gh_log_level_from_string(const char *s) {
        if (!s)
                return -EINVAL;
        if (strcmp(s, "error") == 0)
                return LOG_ERR;
        if (strcmp(s, "warn") == 0)
                return LOG_WARNING;
        for (size_t i = 0; i < ELEMENTSOF(level_names); i++)
                if (strcmp(s, level_names[i]) == 0)
                        return (int) i;
        return -EINVAL;
}

const char *gh_log_level_to_string(int level) {
        if (level < 0 || (size_t) level >= ELEMENTSOF(level_names))
                return "unknown";
        return level_names[level];
}

int gh_log_internal(int level, int error, const char *fmt, ...) {
        char buf[2048];
        va_list ap;
        int saved = errno;

        if (log_journal < 0)
                log_journal = stderr_is_journal();
        errno = abs(error);
        va_start(ap, fmt);
        vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);
        if (log_journal)
                fprintf(stderr, "<%d>%s\n", level, buf);
        else
                fprintf(stderr, "%s: %s: %s\n", log_ident, gh_log_level_to_string(level), buf);
        errno = saved;
        return -abs(error);
}
