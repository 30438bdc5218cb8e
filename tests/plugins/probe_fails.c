/* Its probe returns an error status instead of a score. */
#include "test_plugin.h"

static moeq_status* probe_fails_probe(moeq_probe_args* args) {
  (void)args;
  return tp_host->status_create(MOEQ_STATUS_CODE_INVALID_ARGUMENT, "probe_fails: cannot parse the quant config");
}

static const moeq_plugin_api api = TP_API(probe_fails_probe, NULL);
static const moeq_plugin_descriptor descriptor =
    TP_DESCRIPTOR("probe_fails", MOEQ_ABI_MAJOR, MOEQ_ABI_MINOR, 0, &api);

const moeq_plugin_descriptor* moeq_plugin_get_descriptor(void) { return &descriptor; }
