/* A shared object that exports a function, but not the entry symbol. If the host ever loads
 * it, the constructor leaves a mark in the environment. */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include <stdlib.h>

__attribute__((visibility("default"))) int moeq_plugin_get_descriptor_v0(void) { return 42; }

__attribute__((constructor)) static void no_entry_loaded(void) {
  setenv("MOEQ_TEST_NO_ENTRY_WAS_LOADED", "1", 1);
}
