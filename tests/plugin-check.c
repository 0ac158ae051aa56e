/* Test helper: loads each plugin given on the command line with the
 * worker's loader and prints "NAME VERSION" or the refusal; exit 1 if any is
 * refused. */
#include <stdio.h>
#include <unistd.h>

#include "worker/plugin-loader.h"

int main(int argc, char **argv) {
        int failed = 0;

        for (int i = 1; i < argc; i++) {
                gh_loaded_plugin *lp = NULL;
                char reason[512] = "";
                if (gh_plugin_load(argv[i], geteuid(), &lp, reason, sizeof(reason)) < 0) {
                        printf("%s: refused: %s\n", argv[i], reason);
                        failed = 1;
                        continue;
                }
                printf("%s %s\n", lp->plugin->name, lp->plugin->version);
                gh_plugin_unload(lp);
        }
        return failed;
}
