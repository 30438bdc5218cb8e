// The named MoE geometries of `moeq bench` (no GPU dependency, so the CLI can name them in any
// build).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace moeq::gpu_harness {

struct ShapeSpec {
  std::string name;
  int64_t experts = 0, top_k = 0, hidden = 0, inter = 0;
};

// Mixtral-8x7B, Qwen3-30B-A3B, DeepSeek-V3, Granite-3B-A800M.
inline const std::vector<ShapeSpec>& named_shapes() {
  static const std::vector<ShapeSpec> s = {
      {"Mixtral-8x7B", 8, 2, 4096, 14336},
      {"Qwen3-30B-A3B", 128, 8, 2048, 768},
      {"DeepSeek-V3", 256, 8, 7168, 2048},
      {"Granite-3B-A800M", 40, 8, 1536, 512},
  };
  return s;
}

}  // namespace moeq::gpu_harness
