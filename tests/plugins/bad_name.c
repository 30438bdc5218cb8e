/* A name outside [a-z0-9_]+. */
#include "test_plugin.h"

static moeq_status* bad_name_probe(moeq_probe_args* args) { return tp_probe_reply(args, 1, "bad name"); }

static const moeq_plugin_api api = TP_API(bad_name_probe, NULL);
static const moeq_plugin_descriptor descriptor =
    TP_DESCRIPTOR("Bad-Name", MOEQ_ABI_MAJOR, MOEQ_ABI_MINOR, 0, &api);

const moeq_plugin_descriptor* moeq_plugin_get_descriptor(void) { return &descriptor; }
