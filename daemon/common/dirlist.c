/* Sorted directory listings. See dirlist.h. */
#include <dirent.h>
#include <string.h>

#include "dirlist.h"
#include "util.h"

void gh_strv_free(char **v, size_t n) {
        for (size_t i = 0; i < n; i++)
                free(v[i]);
        free(v);
}

static int cmp_paths(const void *a, const void *b) {
        return strcmp(*(char *const *) a, *(char *const *) b);
}

static bool wanted(const char *name, const char *suffix) {
        size_t len = strlen(name), slen = suffix ? strlen(suffix) : 0;

        if (name[0] == '.')
                return false;
        return !suffix || (len > slen && strcmp(name + len - slen, suffix) == 0);
}

int gh_dir_list(const char *dir, const char *suffix, size_t max, char ***ret_paths, size_t *ret_n) {
        DIR *d = opendir(dir);
        struct dirent *de;
        char **paths = NULL;
        size_t n = 0;
        int r = 0;

        if (!d)
                return gh_negerrno();
        while (r == 0 && (de = readdir(d))) {
                if (!wanted(de->d_name, suffix))
                        continue;
                if (n >= max) {
                        r = -E2BIG;
                        break;
                }
                char **p = realloc(paths, (n + 1) * sizeof(char *));
                if (!p) {
                        r = -ENOMEM;
                        break;
                }
                paths = p;
                if (asprintf(&paths[n], "%s/%s", dir, de->d_name) < 0)
                        r = -ENOMEM;
                else
                        n++;
        }
        closedir(d);
        if (r < 0) {
                gh_strv_free(paths, n);
                return r;
        }
        if (n > 0) /* qsort(NULL, 0, ...) is undefined */
                qsort(paths, n, sizeof(char *), cmp_paths);
        *ret_paths = paths;
        *ret_n = n;
        return 0;
}
