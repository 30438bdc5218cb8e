/* Delegates to good_a and to a plugin that does not exist. */
#include "test_plugin.h"

static moeq_status* needs_dep_probe(moeq_probe_args* args) { return tp_probe_reply(args, 0, "only a helper"); }

static const char* const requires_plugins[] = {"good_a", "absent_dep"};

static const moeq_plugin_api api = TP_API(needs_dep_probe, NULL);
static const moeq_plugin_descriptor descriptor = {
    .struct_size = MOEQ_STRUCT_SIZE(moeq_plugin_descriptor, api),
    .abi_major = MOEQ_ABI_MAJOR,
    .abi_minor = MOEQ_ABI_MINOR,
    .min_host_minor = 0,
    .name = "needs_dep",
    .version = "0.0.1",
    .requires_plugins = requires_plugins,
    .num_requires_plugins = 2,
    .capabilities = MOEQ_CAP_CPU_APPLY | MOEQ_CAP_DELEGATES,
    .build_info = "moeq test plugin",
    .api = &api,
};

const moeq_plugin_descriptor* moeq_plugin_get_descriptor(void) { return &descriptor; }
