// compressed_tensors plugin: the kernel owner for FP8/int8 expert formats, and the runner of
// unquantized experts so that every layer of a partly quantized checkpoint loads.
#include "expert_method.hpp"
#include "scheme.hpp"

#include <moeq/sdk/sdk.hpp>

namespace moeq::ct {
namespace {

// Unquantized layers score lower, so that a plugin that asks for bf16 experts on purpose
// (online quantization) wins them.
constexpr int32_t kQuantizedScore = 10;
constexpr int32_t kUnquantizedScore = 5;

std::string or_empty(const char* s) { return s ? s : ""; }

ExpertScheme scheme_of(const char* config, const char* source, const char* layer, const char* dtype) {
  return resolve_scheme(config ? config : "null", or_empty(source), or_empty(layer), or_empty(dtype));
}

struct Plugin {
  static int32_t probe(const moeq_probe_args& a, std::string& reason) {
    ExpertScheme s;
    try {
      s = scheme_of(a.quant_config_json, a.quant_config_source, a.layer_name, a.weight_dtype);
    } catch (const Error& e) {
      reason = e.what();
      return 0;
    }
    const std::string where = s.config_kind == "compressed-tensors"
                                  ? "compressed-tensors" + (s.group_name.empty() ? "" : " group '" + s.group_name + "'")
                                  : s.config_kind == "fp8" ? "quant_method fp8" : "no quantization config";
    if (s.weights == WeightFormat::kFloat) {
      reason = where + ": unquantized " + std::string(dtype_name(s.float_dtype)) + " experts (" + s.unquantized_why + ")";
      return kUnquantizedScore;
    }
    reason = where + ": " + describe_weights(s) + "; activations " + describe_activations(s);
    return kQuantizedScore;
  }

  static std::unique_ptr<sdk::Method> create(const moeq_method_create_args& a) {
    if (a.geometry == nullptr) fail("method_create: NULL geometry");
    // method_create carries no config source; a ModelOpt translation arrives as a CT config.
    return make_expert_method(a, scheme_of(a.quant_config_json, "", a.layer_name, a.weight_dtype));
  }
};

const char* const kSchemes[] = {
    ("compressed-tensors fp8 w8a8: tensor / channel / block weight scales (weight_scale or weight_scale_inv); "
     "static or dynamic per-tensor, dynamic per-token, dynamic per-group activations; fp8 weight-only"),
    "quant_method fp8 (DeepSeek/Qwen native): block weight_scale_inv with dynamic groups, or per-tensor",
    "compressed-tensors int8 w8a16: I8 per-channel weights (int-quantized / naive-quantized)",
    "unquantized bf16/fp16/fp32 experts (ignored layers, no quantization_config)",
};

const moeq_plugin_descriptor kDescriptor = {
    sizeof(moeq_plugin_descriptor),
    MOEQ_ABI_MAJOR,
    MOEQ_ABI_MINOR,
    0,
    0,
    "compressed_tensors",
    "0.2.0",
    kSchemes,
    sizeof(kSchemes) / sizeof(kSchemes[0]),
    nullptr,
    0,
    MOEQ_CAP_CPU_APPLY | MOEQ_CAP_CUDA_APPLY | MOEQ_CAP_GRAPH_CAPTURABLE,
    "moeq built-in, CPU apply and CUDA fused-MoE kernels (NVRTC, sm_80/sm_89/sm_90a)",
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
