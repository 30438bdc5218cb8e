/* No-op slots shared by the synthetic test plugins. */
#include "test_plugin.h"

#include <stdio.h>

const moeq_host_api* tp_host = NULL;

static moeq_status* unimplemented(const char* what) {
  if (tp_host == NULL) return NULL; /* not initialized: nothing to build a status with */
  return tp_host->status_create(MOEQ_STATUS_CODE_UNIMPLEMENTED, what);
}

moeq_status* tp_initialize(moeq_initialize_args* args) {
  if (args == NULL || args->struct_size < MOEQ_STRUCT_SIZE(moeq_initialize_args, host) ||
      args->host == NULL) {
    return NULL; /* no host to report through; the registry test would notice tp_host NULL */
  }
  tp_host = args->host;
  return NULL;
}

moeq_status* tp_probe_reply(moeq_probe_args* args, int32_t score, const char* reason) {
  if (args->struct_size < MOEQ_STRUCT_SIZE(moeq_probe_args, reason_capacity)) {
    return tp_host->status_create(MOEQ_STATUS_CODE_INVALID_ARGUMENT, "probe args too small");
  }
  args->score = score;
  if (args->reason != NULL && args->reason_capacity > 0) {
    snprintf(args->reason, args->reason_capacity, "%s", reason);
  }
  return NULL;
}

moeq_status* tp_method_create(moeq_method_create_args* args) {
  (void)args;
  return unimplemented("test plugin: method_create is not implemented");
}

void tp_method_destroy(moeq_method* method) { (void)method; }

moeq_status* tp_create_weights(moeq_create_weights_args* args) {
  (void)args;
  return unimplemented("test plugin: create_weights is not implemented");
}

moeq_status* tp_weight_loader(moeq_weight_loader_args* args) {
  (void)args;
  return unimplemented("test plugin: weight_loader is not implemented");
}

moeq_status* tp_process_after_loading(moeq_process_after_loading_args* args) {
  (void)args;
  return unimplemented("test plugin: process_after_loading is not implemented");
}

moeq_status* tp_apply(moeq_apply_args* args) {
  (void)args;
  return unimplemented("test plugin: apply is not implemented");
}

moeq_status* tp_describe(moeq_describe_args* args) {
  if (args->json != NULL && args->json_capacity > 0) {
    snprintf(args->json, args->json_capacity, "%s", "{\"test\":true}");
  }
  return NULL;
}
