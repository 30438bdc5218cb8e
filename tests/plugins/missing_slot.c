/* Leaves the required `probe` slot NULL. */
#include "test_plugin.h"

static const moeq_plugin_api api = TP_API(NULL, NULL);
static const moeq_plugin_descriptor descriptor =
    TP_DESCRIPTOR("missing_slot", MOEQ_ABI_MAJOR, MOEQ_ABI_MINOR, 0, &api);

const moeq_plugin_descriptor* moeq_plugin_get_descriptor(void) { return &descriptor; }
