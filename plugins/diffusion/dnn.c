/* cuDNN loader (dnn.h): dlopen() once, dlsym() every entry point, and
 * check that the library's major version is the headers'. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

#include "dnn.h"

static gh_cudnn table;
static const gh_cudnn *loaded;
static char load_error[256];
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void *open_library(void) {
        static const char *const names[] = {
#ifdef GH_CUDNN_SONAME
                GH_CUDNN_SONAME,
#endif
#ifdef GH_CUDNN_PATH
                GH_CUDNN_PATH,
#endif
                "libcudnn.so",
        };
        void *dl = NULL;

        for (size_t i = 0; !dl && i < sizeof(names) / sizeof(names[0]); i++)
                dl = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
        if (!dl)
                snprintf(load_error, sizeof(load_error), "cannot load cuDNN: %s", dlerror());
        return dl;
}

static void load(void) {
        void *dl = open_library();
        size_t version;

        if (!dl)
                return;
        table.dl = dl;
#define GH_CUDNN_RESOLVE(name)                                                                       \
        if (!(*(void **)&table.name = dlsym(dl, "cudnn" #name))) {                                    \
                snprintf(load_error, sizeof(load_error), "cuDNN lacks cudnn%s", #name);               \
                dlclose(dl);                                                                          \
                return;                                                                               \
        }
        GH_CUDNN_FUNCTIONS(GH_CUDNN_RESOLVE)
#undef GH_CUDNN_RESOLVE
        version = table.GetVersion();
        if (version / 10000 != CUDNN_MAJOR) {
                snprintf(load_error, sizeof(load_error), "cuDNN %zu.%zu found, built for %d.x", version / 10000,
                         version / 100 % 100, CUDNN_MAJOR);
                dlclose(dl);
                return;
        }
        loaded = &table;
}

const gh_cudnn *gh_cudnn_get(char *err, size_t err_size) {
        pthread_once(&once, load);
        if (!loaded && err && err_size)
                snprintf(err, err_size, "%s", load_error);
        return loaded;
}
