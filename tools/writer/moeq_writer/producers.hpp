// Producer emulator: from seeded random float masters, writes real checkpoints in a
// producer's exact layout (names, shapes, dtypes, scale naming) and returns the dequantized
// float weights for the reference. Lives with the tools, not in the library.
#pragma once
#include <moeq/dtype.hpp>
#include <moeq/reference.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace moeq::writer {

enum class Layout {
  kPerExpert,     // Qwen3-MoE: model.layers.L.mlp.experts.E.{gate,up,down}_proj.*
  kGraniteFused,  // GraniteMoe: model.layers.L.block_sparse_moe.{input,output}_linear.* [E, ...]
};
const char* layout_name(Layout layout);

struct MoeSpec {
  Layout layout = Layout::kPerExpert;
  int num_layers = 2;
  int64_t num_experts = 8;
  int64_t hidden = 256;
  int64_t intermediate = 128;
  int top_k = 2;
  uint64_t seed = 1234;
  float weight_std = 0.1f;
  DType scale_dtype = DType::BF16;  // llm-compressor writes scales in the model dtype
  bool scale_1d = false;            // [N] instead of [N, 1] (per-expert layout only)
};

struct LayerMasters {
  std::string prefix;               // "model.layers.0.mlp"
  ref::ExpertWeights dequantized;   // all experts, unsharded: what the file holds, as float
  std::vector<float> router;        // [E, H]
};

struct WrittenCheckpoint {
  std::filesystem::path dir;
  MoeSpec spec;
  std::vector<LayerMasters> layers;
  std::vector<std::string> tensor_names;
};

// llm-compressor `oneshot` scheme FP8_DYNAMIC (compressed-tensors float-quantized, FP8 channel
// weights, dynamic per-token FP8 activations). Creates `dir` (must not exist or be empty).
WrittenCheckpoint write_ct_fp8_channel(const std::filesystem::path& dir, const MoeSpec& spec);

// Per-row FP8 quantization as the producer does it: s = round_to(scale_dtype, absmax / 448),
// q = fp8(clamp(w / s)); returns codes and scales, and writes q * s into `dequantized`.
void quantize_fp8_rows(const std::vector<float>& w, int64_t rows, int64_t cols, DType scale_dtype,
                       std::vector<uint8_t>& codes, std::vector<float>& scales, std::vector<float>& dequantized);

}  // namespace moeq::writer
