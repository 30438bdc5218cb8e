// Fuzz target: model.safetensors.index.json text through the strict JSON parser and the
// weight_map reader, and through the one-pass reader Checkpoint::open uses, which must give the
// same map or the same message. Every shard name that survives is a plain file name inside the
// checkpoint directory; everything else is a moeq::Error.
#include "fuzz_check.hpp"

#include <moeq/checkpoint.hpp>
#include <moeq/error.hpp>

#include <map>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text = moeq::fuzz::text_of(data, size);
  const std::string index = "model.safetensors.index.json";
  std::map<std::string, std::string> strict, fast;
  std::string strict_error = "(none)", fast_error = "(none)";
  try {
    const boost::json::value root = moeq::parse_json_strict(text, "'" + index + "'");
    strict = moeq::weight_map_of(root, index);
    for (const auto& [tensor, shard] : strict) {
      FUZZ_CHECK(!shard.empty() && shard != "." && shard != "..");
      FUZZ_CHECK(shard.find('/') == std::string::npos && shard.find('\0') == std::string::npos);
      FUZZ_CHECK(shard.find("..") == std::string::npos);
    }
  } catch (const moeq::Error& e) {
    strict_error = e.what();
  }
  try {
    fast = moeq::parse_weight_map(text, index);
  } catch (const moeq::Error& e) {
    fast_error = e.what();
  }
  FUZZ_CHECK(strict_error == fast_error);
  FUZZ_CHECK(strict == fast);
  return 0;
}
