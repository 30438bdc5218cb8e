// Producer emulator for NVIDIA ModelOpt's unified HF export (hf_quant_config.json plus
// config.json quantization_config with quant_method "modelopt"), FP8 algos.
#pragma once
#include <moeq_writer/producers.hpp>

#include <string>

namespace moeq::writer {

enum class ModelOptAlgo { kFp8, kFp8PerChannelPerToken, kFp8BlockWeightOnly };

enum class ModelOptLayout {
  kPerExpert,    // experts.E.{gate,up,down}_proj (v4 modules, and v5 fused models split at export)
  kLlama4Fused,  // feed_forward.experts.gate_up_proj [E, H, 2I] + gate_up_proj_weight_scale (0-D), ...
};

struct ModelOptSpec {
  ModelOptAlgo algo = ModelOptAlgo::kFp8;
  ModelOptLayout layout = ModelOptLayout::kPerExpert;
  int num_layers = 2;
  int64_t num_experts = 4;
  int64_t hidden = 256;
  int64_t intermediate = 128;
  int top_k = 2;
  uint64_t seed = 4242;
  bool exclude_last_layer = false;  // its experts stay bf16 and are listed in exclude_modules
  bool kv_scales = true;            // self_attn.k_proj.k_scale / v_proj.v_scale (+ one k_scale form)
};

// Static activation scales the FP8 algo writes (same value for every expert of a projection).
constexpr float kModelOptW13InputScale = 0.011f;
constexpr float kModelOptW2InputScale = 0.04f;

WrittenCheckpoint write_modelopt(const std::filesystem::path& dir, const ModelOptSpec& spec);

}  // namespace moeq::writer
