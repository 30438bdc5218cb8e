// NVIDIA ModelOpt quantization configs and their compressed-tensors equivalents.
#pragma once
#include <string>
#include <vector>

namespace moeq::mo {

enum class Algo { kFp8, kFp8PerChannelPerToken, kFp8BlockWeightOnly };

struct ModelOptConfig {
  std::string source;            // "hf_quant_config.json" or "config.json"
  std::string quant_algo;        // as written
  Algo algo = Algo::kFp8;
  std::string kv_cache_quant_algo;
  std::vector<std::string> exclude_modules;  // fnmatch globs ('*' spans dots)
  std::string producer_version;
};

// Throws moeq::Error with a human reason when the config is not ModelOpt or names an algo
// this bridge cannot map (NVFP4, W4A8_AWQ, MIXED_PRECISION, ...).
ModelOptConfig parse_modelopt(const std::string& quant_config_json, const std::string& source);

// The equivalent compressed-tensors quantization_config (JSON text): the block size is 128
// (ModelOpt records none), exclude_modules become `re:` ignore entries.
std::string to_compressed_tensors(const ModelOptConfig& c);

// fnmatch glob ('*' any run, '?' one char) as a regex for a compressed-tensors `re:` entry
// (matched by RE2 from the start of the module name).
std::string glob_to_regex(const std::string& glob);

const char* algo_name(Algo a);

}  // namespace moeq::mo
