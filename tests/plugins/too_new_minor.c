/* Needs host ABI minor 99, which no host speaks yet. */
#include "test_plugin.h"

static moeq_status* too_new_minor_probe(moeq_probe_args* args) { return tp_probe_reply(args, 9, "too new"); }

static const moeq_plugin_api api = TP_API(too_new_minor_probe, NULL);
static const moeq_plugin_descriptor descriptor =
    TP_DESCRIPTOR("too_new_minor", MOEQ_ABI_MAJOR, 99, 99, &api);

const moeq_plugin_descriptor* moeq_plugin_get_descriptor(void) { return &descriptor; }
