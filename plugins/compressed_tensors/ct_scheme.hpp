// compressed-tensors quantization_config, reduced to what an expert layer needs.
#pragma once
#include <cstdint>
#include <string>

namespace moeq::ct {

enum class WeightStrategy { kTensor, kChannel, kBlock, kGroup, kOther };
enum class ActStrategy { kNone, kTensor, kToken, kGroup, kOther };

struct QuantArgs {
  bool present = false;
  std::string type;  // "float" / "int"
  int num_bits = 0;
  bool symmetric = true;
  bool dynamic = false;
  std::string strategy;  // as written (after inference from group_size)
};

struct ExpertScheme {
  std::string group_name;  // config_groups key that matched
  std::string format;
  QuantArgs weights;
  QuantArgs input_activations;
  bool ignored = false;    // layer matched by `ignore`
};

// Parses config JSON text and finds the scheme of the experts module `layer_name`.
// Throws moeq::Error (with a human reason) when the config is not compressed-tensors, is
// malformed, or no group targets the layer.
ExpertScheme resolve_scheme(const std::string& quant_config_json, const std::string& layer_name);

// The one scheme this version runs: FP8 W8A8, channel weights, dynamic per-token activations.
// Returns an empty string when supported, else the reason it is not.
std::string unsupported_reason(const ExpertScheme& s);

std::string describe_args(const QuantArgs& a);

}  // namespace moeq::ct
