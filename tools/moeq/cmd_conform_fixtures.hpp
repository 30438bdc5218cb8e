// `moeq conform`: the checkpoints a plugin is tested on. Either the user's (--checkpoint DIR),
// or one per scheme the project's writer knows, written from seeded random float masters so
// that `apply` can also be compared with the masters themselves. With `--online SCHEME` the
// generated ones are unquantized BF16, and every probe and load uses the online config.
#pragma once
#include <moeq/checkpoint.hpp>
#include <moeq/model_config.hpp>
#include <moeq/reference.hpp>
#include <moeq/registry.hpp>
#include <moeq_writer/producers.hpp>

#include <filesystem>
#include <string>
#include <vector>

namespace moeq::cli::conform {

struct Fixture {
  std::string name;  // "ct-fp8-channel/qwen3", or the directory of --checkpoint
  std::filesystem::path dir;
  std::string online_scheme;  // --online: quantized at load with this scheme (LoadOptions::online_scheme)
  bool writer_made = false;
  std::vector<writer::LayerMasters> masters;  // writer-made: all experts, unsharded, as float
  ref::MoeOptions masters_act;                // writer-made: the scheme's activation quantization (--online: none)
};

// Geometry of the generated fixtures: H, I and 2I differ, so that `moeq conform` can tell
// which dimension of a parameter is which when it checks TP and EP shapes.
writer::MoeSpec fixture_spec(writer::Layout layout);

// Writes every fixture the writer knows under `root` (which must exist and be empty); with an
// online scheme, unquantized BF16 ones in the Qwen3-MoE per-expert and Granite fused layouts.
std::vector<Fixture> generate_fixtures(const std::filesystem::path& root, const std::string& online_scheme = "");
Fixture checkpoint_fixture(const std::filesystem::path& dir, const std::string& online_scheme = "");

// compressed-tensors FP8 per-tensor weight-only (W8A16; `input_activations: null`), in the
// Qwen3-MoE per-expert layout with BF16 scales of shape [1], as llm-compressor writes it.
writer::WrittenCheckpoint write_ct_fp8_tensor_weight_only(const std::filesystem::path& dir,
                                                         const writer::MoeSpec& spec);

// What the registry asks a plugin about each MoE layer of a checkpoint, as the loader builds it
// (with `online_scheme`, about the effective online config).
struct LayerQuery {
  std::string prefix;  // "model.layers.0.mlp"
  ProbeQuery query;
};
std::vector<LayerQuery> layer_queries(const Checkpoint& checkpoint, const std::string& online_scheme = "");

}  // namespace moeq::cli::conform
