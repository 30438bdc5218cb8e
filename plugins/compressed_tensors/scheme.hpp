// The expert scheme the plugin runs, normalized from whichever config spelled it: a
// compressed-tensors config group, a DeepSeek/Qwen native `quant_method: "fp8"` config, or no
// quantization at all. One method class runs every combination of these fields.
#pragma once
#include <moeq/dtype.hpp>

#include <cstdint>
#include <string>

namespace moeq::ct {

enum class WeightFormat {
  kFp8,    // F8_E4M3 codes times a scale
  kInt8,   // I8 codes times a scale (symmetric, no zero point)
  kFloat,  // unquantized BF16/F16/F32, used as stored
};

enum class Granularity {
  kNone,     // unquantized: no weight scale
  kTensor,   // one scale per expert projection ([] or [1]); w1 and w3 keep their own
  kChannel,  // one per output row ([N, 1] or [N])
  kBlock,    // [ceil(N/bn), ceil(K/bk)] grid
};

enum class ActMode {
  kNone,           // activations stay float (weight-only schemes)
  kStaticTensor,   // input_scale from the checkpoint
  kDynamicTensor,  // amax over the whole batch
  kDynamicToken,   // amax per token row
  kDynamicGroup,   // amax per token per group of act_group along K
};

struct ExpertScheme {
  std::string config_kind;  // "compressed-tensors", "fp8" or "none"
  std::string group_name;   // compressed-tensors config group, else empty
  std::string format;       // compressed-tensors format label, else empty
  std::string unquantized_why;  // for kFloat: "listed in ignore (...)", "no quantization_config"
  WeightFormat weights = WeightFormat::kFp8;
  DType float_dtype = DType::BF16;  // kFloat: the checkpoint's expert weight dtype
  Granularity granularity = Granularity::kNone;
  int64_t block_n = 0;  // kBlock: rows of a weight block
  int64_t block_k = 0;  // kBlock: columns of a weight block
  ActMode act = ActMode::kNone;
  int64_t act_group = 0;  // kDynamicGroup: group size along K

  DType weight_dtype() const;
  bool static_inputs() const { return act == ActMode::kStaticTensor; }
};

const char* granularity_name(Granularity g);
std::string describe_weights(const ExpertScheme& s);
std::string describe_activations(const ExpertScheme& s);

// Parses the effective quantization config (JSON text, "null" when none) and returns the
// scheme of the experts module `layer_name` whose expert weights have the safetensors dtype
// `weight_dtype`. Throws moeq::Error with a human reason when this plugin does not take the
// layer (another producer's config, an unsupported scheme) or the config is malformed
// (bad block_structure, an activation group that does not divide the weight block, ...).
ExpertScheme resolve_scheme(const std::string& quant_config_json, const std::string& quant_config_source,
                            const std::string& layer_name, const std::string& weight_dtype);

}  // namespace moeq::ct
