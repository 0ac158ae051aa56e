/* cuBLASLt loader (cublaslt.h): dlopen() once, dlsym() every entry point. */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "cublaslt.h"

static gh_cublaslt table;
static const gh_cublaslt *loaded;
static char load_error[256];
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void *open_library(void) {
        static const char *const names[] = {
#ifdef GH_CUBLASLT_SONAME
                GH_CUBLASLT_SONAME,
#endif
#ifdef GH_CUBLASLT_PATH
                GH_CUBLASLT_PATH,
#endif
                "libcublasLt.so",
        };
        void *dl = NULL;

        for (size_t i = 0; !dl && i < sizeof(names) / sizeof(names[0]); i++)
                dl = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
        if (!dl)
                snprintf(load_error, sizeof(load_error), "cannot load cuBLASLt: %s", dlerror());
        return dl;
}

static void load(void) {
        void *dl = open_library();

        if (!dl)
                return;
        table.dl = dl;
#define GH_CUBLASLT_RESOLVE(name)                                                                     \
        if (!(*(void **)&table.name = dlsym(dl, "cublasLt" #name))) {                                  \
                snprintf(load_error, sizeof(load_error), "cuBLASLt lacks cublasLt%s", #name);         \
                dlclose(dl);                                                                          \
                return;                                                                               \
        }
        GH_CUBLASLT_FUNCTIONS(GH_CUBLASLT_RESOLVE)
#undef GH_CUBLASLT_RESOLVE
        loaded = &table;
}

const gh_cublaslt *gh_cublaslt_get(char *err, size_t err_size) {
        pthread_once(&once, load);
        if (!loaded && err && err_size)
                snprintf(err, err_size, "%s", load_error);
        return loaded;
}
