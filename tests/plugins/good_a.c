/* A valid plugin: takes any layer with score 5; logs its shutdown so tests can count it. */
#include "test_plugin.h"

static void good_a_shutdown(void) {
  if (tp_host != NULL) tp_host->log(MOEQ_LOG_LEVEL_INFO, "good_a", "shutdown");
}

static moeq_status* good_a_probe(moeq_probe_args* args) { return tp_probe_reply(args, 5, "test a"); }

static const moeq_plugin_api api = TP_API(good_a_probe, good_a_shutdown);
static const moeq_plugin_descriptor descriptor =
    TP_DESCRIPTOR("good_a", MOEQ_ABI_MAJOR, MOEQ_ABI_MINOR, 0, &api);

const moeq_plugin_descriptor* moeq_plugin_get_descriptor(void) { return &descriptor; }
