/* Test "plugin" without the gh_plugin_entry symbol: a shared object that
 * is not a gpuhost plugin must be refused with that reason. */
int not_a_plugin(void);
__attribute__((visibility("default"))) int not_a_plugin(void) {
        return 42;
}
