/* One of two plugins that claim every layer with the same score 7. */
#include "test_plugin.h"

static moeq_status* tie_b_probe(moeq_probe_args* args) { return tp_probe_reply(args, 7, "tie b"); }

static const moeq_plugin_api api = TP_API(tie_b_probe, NULL);
static const moeq_plugin_descriptor descriptor =
    TP_DESCRIPTOR("tie_b", MOEQ_ABI_MAJOR, MOEQ_ABI_MINOR, 0, &api);

const moeq_plugin_descriptor* moeq_plugin_get_descriptor(void) { return &descriptor; }
