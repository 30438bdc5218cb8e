/* Declines every layer and gives no reason: the host must say so itself. */
#include "test_plugin.h"

static moeq_status* silent_decline_probe(moeq_probe_args* args) { return tp_probe_reply(args, 0, ""); }

static const moeq_plugin_api api = TP_API(silent_decline_probe, NULL);
static const moeq_plugin_descriptor descriptor =
    TP_DESCRIPTOR("silent_decline", MOEQ_ABI_MAJOR, MOEQ_ABI_MINOR, 0, &api);

const moeq_plugin_descriptor* moeq_plugin_get_descriptor(void) { return &descriptor; }
