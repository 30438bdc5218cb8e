/* A valid plugin that calls into libmoeq_trust_dep.so: it takes any layer with score 5 when
 * the library answers, which it can only do if the loader found it through the RUNPATH or
 * RPATH the trust tests write into a copy of this file. */
#include "test_plugin.h"

int moeq_trust_dep_answer(void);

static moeq_status* dep_user_probe(moeq_probe_args* args) {
  return tp_probe_reply(args, moeq_trust_dep_answer() == 42 ? 5 : 0, "trust dep user");
}

static const moeq_plugin_api api = TP_API(dep_user_probe, NULL);
static const moeq_plugin_descriptor descriptor =
    TP_DESCRIPTOR("trust_dep_user", MOEQ_ABI_MAJOR, MOEQ_ABI_MINOR, 0, &api);

const moeq_plugin_descriptor* moeq_plugin_get_descriptor(void) { return &descriptor; }
