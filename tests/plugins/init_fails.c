/* Its initialize fails with a status made through the host table. */
#include "test_plugin.h"

static moeq_status* init_fails_initialize(moeq_initialize_args* args) {
  return args->host->status_create(MOEQ_STATUS_CODE_UNAVAILABLE, "init_fails: no device here");
}

static moeq_status* init_fails_probe(moeq_probe_args* args) { return tp_probe_reply(args, 9, "init fails"); }

static const moeq_plugin_api api = {
    .struct_size = MOEQ_STRUCT_SIZE(moeq_plugin_api, describe),
    .initialize = init_fails_initialize,
    .shutdown = NULL,
    .probe = init_fails_probe,
    .method_create = tp_method_create,
    .method_destroy = tp_method_destroy,
    .create_weights = tp_create_weights,
    .weight_loader = tp_weight_loader,
    .process_after_loading = tp_process_after_loading,
    .apply = tp_apply,
    .describe = NULL,
};
static const moeq_plugin_descriptor descriptor =
    TP_DESCRIPTOR("init_fails", MOEQ_ABI_MAJOR, MOEQ_ABI_MINOR, 0, &api);

const moeq_plugin_descriptor* moeq_plugin_get_descriptor(void) { return &descriptor; }
