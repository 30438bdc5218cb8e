/* Valid, but declines every layer with a reason. */
#include "test_plugin.h"

static moeq_status* declines_probe(moeq_probe_args* args) { return tp_probe_reply(args, 0, "only takes fp4"); }

static const moeq_plugin_api api = TP_API(declines_probe, NULL);
static const moeq_plugin_descriptor descriptor =
    TP_DESCRIPTOR("declines", MOEQ_ABI_MAJOR, MOEQ_ABI_MINOR, 0, &api);

const moeq_plugin_descriptor* moeq_plugin_get_descriptor(void) { return &descriptor; }
