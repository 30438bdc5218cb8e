// modelopt plugin: registered so that discovery, ABI checks and selection see it; until its
// scheme lands it declines every probe with a reason and creates no method.
#include <moeq/sdk/sdk.hpp>

namespace {

struct Plugin {
  static int32_t probe(const moeq_probe_args&, std::string& reason) {
    reason = "ModelOpt checkpoints are not handled by this version of the modelopt plugin";
    return 0;
  }
  static std::unique_ptr<moeq::sdk::Method> create(const moeq_method_create_args&) {
    moeq::fail(MOEQ_STATUS_CODE_UNIMPLEMENTED, "ModelOpt checkpoints are not handled by this version of the modelopt plugin");
  }
};

const char* const kSchemes[] = {"modelopt fp8 (bridge to compressed_tensors)"};
const char* const kRequires[] = {"compressed_tensors"};

const moeq_plugin_descriptor* descriptor() {
  static const moeq_plugin_descriptor d = {
      sizeof(moeq_plugin_descriptor), MOEQ_ABI_MAJOR, MOEQ_ABI_MINOR, 0, 0, "modelopt", "0.1.0", kSchemes, 1,
      kRequires, 1, MOEQ_CAP_DELEGATES, "moeq built-in", moeq::sdk::PluginApi<Plugin>::table()};
  return &d;
}

}  // namespace

MOEQ_SDK_EXPORT_DESCRIPTOR(descriptor())
