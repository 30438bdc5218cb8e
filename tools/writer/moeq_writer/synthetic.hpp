// Large checkpoints with a real model's geometry for load benchmarks: the Qwen3-MoE
// per-expert layout and config of write_moe_checkpoint, one safetensors shard per layer plus
// an index, filled with seeded random codes by several threads straight into the files (no
// float masters are kept, so tens of GB cost no memory). The values are valid (no NaN or
// Inf) but not a trained model.
#pragma once
#include <moeq_writer/producers.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

namespace moeq::writer {

struct SyntheticSpec {
  int64_t num_experts = 128;
  int64_t hidden = 2048;
  int64_t intermediate = 768;
  int top_k = 8;
  int num_layers = 4;
  // kFp8Channel, kFp8Block (128x128) or kInt8Channel with a compressed-tensors config, or
  // kUnquantized (BF16 experts, no quantization_config: the input of --online).
  WeightScheme weights = WeightScheme::kFp8Channel;
  uint64_t seed = 2026;
  unsigned threads = 0;  // 0 = one per core
};

// Named geometries: Qwen3-30B-A3B (128 x 2048 x 768, top 8), Mixtral-8x7B (8 x 4096 x
// 14336, top 2), DeepSeek-V3 (256 x 7168 x 2048, top 8), Granite-3B-A800M (40 x 1536 x 512,
// top 8). Sets experts, hidden, intermediate and top_k; nullopt for another name.
std::optional<SyntheticSpec> synthetic_shape(const std::string& name);
// "fp8-channel", "fp8-block", "int8" (W8A16), "bf16"; nullopt for another name.
std::optional<WeightScheme> synthetic_scheme(const std::string& name);

struct SyntheticResult {
  int files = 0;           // safetensors shards
  int64_t tensors = 0;
  uint64_t bytes = 0;      // tensor bytes over all shards
  double seconds = 0;
};

// Writes the checkpoint into a temporary sibling of `dir` and renames it into place, so an
// interrupted run leaves no half checkpoint at `dir`. Fails if `dir` exists.
SyntheticResult write_synthetic_checkpoint(const std::filesystem::path& dir, const SyntheticSpec& spec);

}  // namespace moeq::writer
