/* Built against a future minor: descriptor and api are larger than this host knows and end
 * with fields it has never heard of. The host must accept it and use it at its own minor. */
#include "test_plugin.h"

#include <stdint.h>

typedef struct future_api {
  moeq_plugin_api v1;
  moeq_status* (*future_slot)(void* args); /* a slot appended by a later minor */
} future_api;

typedef struct future_descriptor {
  moeq_plugin_descriptor v1;
  uint64_t future_flags;                   /* a field appended by a later minor */
  const char* future_string;
} future_descriptor;

static moeq_status* bigger_struct_probe(moeq_probe_args* args) {
  return tp_probe_reply(args, 3, "bigger struct");
}

static moeq_status* future_slot(void* args) {
  (void)args;
  return tp_host->status_create(MOEQ_STATUS_CODE_INTERNAL, "a host of this minor must never call this");
}

static void bigger_struct_shutdown(void) {}

static const future_api api = {
    .v1 =
        {
            .struct_size = sizeof(future_api),
            .initialize = tp_initialize,
            .shutdown = bigger_struct_shutdown,
            .probe = bigger_struct_probe,
            .method_create = tp_method_create,
            .method_destroy = tp_method_destroy,
            .create_weights = tp_create_weights,
            .weight_loader = tp_weight_loader,
            .process_after_loading = tp_process_after_loading,
            .apply = tp_apply,
            .describe = tp_describe,
        },
    .future_slot = future_slot,
};

static const future_descriptor descriptor = {
    .v1 =
        {
            .struct_size = sizeof(future_descriptor),
            .abi_major = MOEQ_ABI_MAJOR,
            .abi_minor = MOEQ_ABI_MINOR + 3,
            .min_host_minor = 0,
            .name = "bigger_struct",
            .version = "1.3.0",
            .capabilities = MOEQ_CAP_CPU_APPLY,
            .build_info = "moeq test plugin from the future",
            .api = &api.v1,
        },
    .future_flags = 0xffffffffffffffffull,
    .future_string = "ignored by a 1.0 host",
};

const moeq_plugin_descriptor* moeq_plugin_get_descriptor(void) { return &descriptor.v1; }
