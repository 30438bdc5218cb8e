// Fuzz target: model.safetensors.index.json text through the strict JSON parser and the
// weight_map reader. Every shard name that survives is a plain file name inside the checkpoint
// directory; everything else is a moeq::Error.
#include "fuzz_check.hpp"

#include <moeq/checkpoint.hpp>
#include <moeq/error.hpp>

#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text = moeq::fuzz::text_of(data, size);
  try {
    const boost::json::value root = moeq::parse_json_strict(text, "fuzz index");
    const auto map = moeq::weight_map_of(root, "model.safetensors.index.json");
    for (const auto& [tensor, shard] : map) {
      FUZZ_CHECK(!shard.empty() && shard != "." && shard != "..");
      FUZZ_CHECK(shard.find('/') == std::string::npos && shard.find('\0') == std::string::npos);
      FUZZ_CHECK(shard.find("..") == std::string::npos);
    }
  } catch (const moeq::Error&) {
  }
  return 0;
}
