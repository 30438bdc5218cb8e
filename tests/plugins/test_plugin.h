/* Shared pieces of the synthetic test plugins (plain C11 against <moeq/abi.h>). Everything
 * here has hidden visibility; each plugin exports only what its case needs. */
#ifndef MOEQ_TEST_PLUGIN_H_
#define MOEQ_TEST_PLUGIN_H_

#include <moeq/abi.h>

#define MOEQ_TEST_EXPORT __attribute__((visibility("default")))

/* The host table from initialize (each plugin file has its own copy). */
extern const moeq_host_api* tp_host;

moeq_status* tp_initialize(moeq_initialize_args* args);
/* Writes `score` and `reason` into the probe args. */
moeq_status* tp_probe_reply(moeq_probe_args* args, int32_t score, const char* reason);
/* The per-layer slots: not exercised by the registry tests, they answer UNIMPLEMENTED. */
moeq_status* tp_method_create(moeq_method_create_args* args);
void tp_method_destroy(moeq_method* method);
moeq_status* tp_create_weights(moeq_create_weights_args* args);
moeq_status* tp_weight_loader(moeq_weight_loader_args* args);
moeq_status* tp_process_after_loading(moeq_process_after_loading_args* args);
moeq_status* tp_apply(moeq_apply_args* args);
moeq_status* tp_describe(moeq_describe_args* args);

/* A v1.0 table: struct_size covers up to `describe`, the last slot of ABI 1.0's first cut. */
#define TP_API(probe_fn, shutdown_fn)                                  \
  {                                                                    \
    .struct_size = MOEQ_STRUCT_SIZE(moeq_plugin_api, describe),        \
    .initialize = tp_initialize,                                       \
    .shutdown = (shutdown_fn),                                         \
    .probe = (probe_fn),                                               \
    .method_create = tp_method_create,                                 \
    .method_destroy = tp_method_destroy,                               \
    .create_weights = tp_create_weights,                               \
    .weight_loader = tp_weight_loader,                                 \
    .process_after_loading = tp_process_after_loading,                 \
    .apply = tp_apply,                                                 \
    .describe = tp_describe,                                           \
  }

#define TP_DESCRIPTOR(name_, abi_major_, abi_minor_, min_host_minor_, api_) \
  {                                                                         \
    .struct_size = MOEQ_STRUCT_SIZE(moeq_plugin_descriptor, api),           \
    .abi_major = (abi_major_),                                              \
    .abi_minor = (abi_minor_),                                              \
    .min_host_minor = (min_host_minor_),                                    \
    .name = (name_),                                                        \
    .version = "0.0.1",                                                     \
    .schemes = NULL,                                                        \
    .num_schemes = 0,                                                       \
    .requires_plugins = NULL,                                               \
    .num_requires_plugins = 0,                                              \
    .capabilities = MOEQ_CAP_CPU_APPLY,                                     \
    .build_info = "moeq test plugin",                                       \
    .api = (api_),                                                          \
  }

MOEQ_TEST_EXPORT const moeq_plugin_descriptor* moeq_plugin_get_descriptor(void);

#endif /* MOEQ_TEST_PLUGIN_H_ */
