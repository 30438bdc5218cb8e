// compressed_tensors plugin: the kernel owner for FP8/int8 expert formats.
#include "ct_scheme.hpp"
#include "fp8_channel_method.hpp"

#include <moeq/sdk/sdk.hpp>

namespace moeq::ct {
namespace {

struct Plugin {
  static int32_t probe(const moeq_probe_args& a, std::string& reason) {
    ExpertScheme s;
    try {
      s = resolve_scheme(a.quant_config_json ? a.quant_config_json : "null", a.layer_name ? a.layer_name : "");
    } catch (const Error& e) {
      reason = e.what();
      return 0;
    }
    if (s.ignored) {
      reason = std::string("layer ") + a.layer_name + " is listed in quantization_config.ignore (unquantized "
               "experts are not supported by this version)";
      return 0;
    }
    if (std::string why = unsupported_reason(s); !why.empty()) {
      reason = why;
      return 0;
    }
    const std::string dt = a.weight_dtype ? a.weight_dtype : "";
    if (dt != "F8_E4M3") {
      reason = "config says FP8 but the expert weights are " + dt;
      return 0;
    }
    reason = "compressed-tensors group '" + s.group_name + "': fp8 channel weights, dynamic per-token fp8 activations";
    return 10;
  }

  static std::unique_ptr<sdk::Method> create(const moeq_method_create_args& a) {
    if (a.geometry == nullptr) fail("method_create: NULL geometry");
    ExpertScheme s = resolve_scheme(a.quant_config_json ? a.quant_config_json : "null", a.layer_name ? a.layer_name : "");
    if (std::string why = unsupported_reason(s); !why.empty()) fail(why);
    return make_fp8_channel_method(a, std::move(s));
  }
};

const char* const kSchemes[] = {"compressed-tensors fp8 w8a8 channel / dynamic per-token"};

const moeq_plugin_descriptor kDescriptor = {
    sizeof(moeq_plugin_descriptor),
    MOEQ_ABI_MAJOR,
    MOEQ_ABI_MINOR,
    0,
    0,
    "compressed_tensors",
    "0.1.0",
    kSchemes,
    1,
    nullptr,
    0,
    MOEQ_CAP_CPU_APPLY,
    "moeq built-in, CPU apply",
    nullptr,
};

const moeq_plugin_descriptor* descriptor() {
  static const moeq_plugin_descriptor d = [] {
    moeq_plugin_descriptor x = kDescriptor;
    x.api = sdk::PluginApi<Plugin>::table();
    return x;
  }();
  return &d;
}

}  // namespace
}  // namespace moeq::ct

MOEQ_SDK_EXPORT_DESCRIPTOR(moeq::ct::descriptor())
