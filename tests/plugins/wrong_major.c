/* Claims ABI major 2: the host must refuse it before calling anything. */
#include "test_plugin.h"

static moeq_status* wrong_major_probe(moeq_probe_args* args) { return tp_probe_reply(args, 9, "wrong major"); }

static const moeq_plugin_api api = TP_API(wrong_major_probe, NULL);
static const moeq_plugin_descriptor descriptor = TP_DESCRIPTOR("wrong_major", 2, 0, 0, &api);

const moeq_plugin_descriptor* moeq_plugin_get_descriptor(void) { return &descriptor; }
