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
  kMixtral,       // Mixtral hub names: model.layers.L.block_sparse_moe.experts.E.{w1,w3,w2}.*
  kDeepSeekV3,    // model.layers.L.mlp.experts.E.{gate,up,down}_proj.*, sigmoid grouped router + bias
  kDeepSeekV4,    // layers.L.ffn.experts.E.{w1,w3,w2}.{weight,scale}: the scale suffix is `.scale`
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
  bool quantized = true;            // false: the experts are stored unquantized (BF16)
  std::vector<float> input_scales;  // static per-tensor schemes: [E, 3] = w1, w3, w2 input_scale
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

// How the experts are quantized, and which config describes them.
enum class WeightScheme {
  kFp8Channel,   // [N, 1] scales (FP8_DYNAMIC)
  kFp8Block,     // [ceil(N/bn), ceil(K/bk)] scales (FP8_BLOCK, DeepSeek/Qwen fp8)
  kFp8Tensor,    // [1] scales (FP8 static, or dynamic per-tensor activations)
  kInt8Channel,  // I8 weights, [N, 1] scales, no activation quantization (W8A16)
  kUnquantized,  // BF16 experts, no scales
};
enum class ConfigKind {
  kCompressedTensors,  // quantization_config with config_groups (llm-compressor)
  kNativeFp8,          // quant_method "fp8" (DeepSeek-V3/R1, Qwen3-FP8); scales F32
  kNone,               // no quantization_config at all
};

struct QuantSpec {
  WeightScheme weights = WeightScheme::kFp8Channel;
  ConfigKind config = ConfigKind::kCompressedTensors;
  int64_t block_n = 128;  // kFp8Block
  int64_t block_k = 128;
  int64_t act_group = 0;  // kFp8Block activation group_size in the config; 0 = block_k
  // On-disk scale suffix: "weight_scale" (compressed-tensors), "weight_scale_inv" (DeepSeek,
  // Qwen fp8). kDeepSeekV4 always writes "scale".
  std::string scale_name = "weight_scale";
  bool static_input = true;          // kFp8Tensor: input_scale tensors (else dynamic per tensor)
  float w3_input_scale_ratio = 1.0f;  // static: w3's input_scale = w1's x ratio
  std::vector<int> unquantized_layers;  // compressed-tensors: BF16 experts, listed in ignore
};

// Any layout x scheme x config above; fails for combinations no producer writes (block scales
// of Granite's fused experts, compressed-tensors config with DeepSeek-V4 names).
WrittenCheckpoint write_moe_checkpoint(const std::filesystem::path& dir, const MoeSpec& spec, const QuantSpec& quant);

// config.json of a checkpoint of `spec` quantized as `quant` (model type and MoE keys of the
// layout, quantization_config when quant has one); `ignored` is its ignore list.
std::string model_config_json(const MoeSpec& spec, const QuantSpec& quant, const std::vector<std::string>& ignored);

// llm-compressor FP8_BLOCK (oneshot or model_free_ptq): block [bn, bk] weight scales named
// `scale_name`, dynamic per-token-per-group activations.
WrittenCheckpoint write_ct_fp8_block(const std::filesystem::path& dir, const MoeSpec& spec, int64_t block_n = 128,
                                     int64_t block_k = 128, const std::string& scale_name = "weight_scale");
// DeepSeek/Qwen native fp8 (quant_method "fp8", weight_block_size, activation_scheme dynamic),
// F32 `weight_scale_inv` (DeepSeek-V4 layout: `.scale`).
WrittenCheckpoint write_hf_fp8_block(const std::filesystem::path& dir, const MoeSpec& spec, int64_t block_n = 128,
                                     int64_t block_k = 128);
// llm-compressor FP8 (per-tensor weights; static input_scale, or dynamic per-tensor).
WrittenCheckpoint write_ct_fp8_tensor(const std::filesystem::path& dir, const MoeSpec& spec, bool static_input = true,
                                      float w3_input_scale_ratio = 1.0f);
// compressed-tensors int8 weight-only per channel, I8 weights (format naive-quantized).
WrittenCheckpoint write_ct_int8_channel(const std::filesystem::path& dir, const MoeSpec& spec);
// A BF16 checkpoint without quantization_config.
WrittenCheckpoint write_unquantized(const std::filesystem::path& dir, const MoeSpec& spec);

// Per-row FP8 quantization as the producer does it: s = round_to(scale_dtype, absmax / 448),
// q = fp8(clamp(w / s)); returns codes and scales, and writes q * s into `dequantized`.
void quantize_fp8_rows(const std::vector<float>& w, int64_t rows, int64_t cols, DType scale_dtype,
                       std::vector<uint8_t>& codes, std::vector<float>& scales, std::vector<float>& dequantized);

}  // namespace moeq::writer
