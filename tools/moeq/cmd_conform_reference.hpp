// `moeq conform`: what check 7 holds `apply` to on a --checkpoint besides the plugin's own
// dequantize_expert (which only compares the plugin with itself, so a loader that puts a scale
// in the wrong place agrees with it): the float weights of `--reference DIR`, and the
// dequantization of the built-in plugin that takes the checkpoint.
#pragma once
#include "cmd_conform_fixtures.hpp"

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace moeq::cli::conform {

struct ReferenceLayer {
  std::string prefix;  // "model.layers.0.mlp"
  ref::ExpertWeights weights;  // every expert, unsharded
};

struct Reference {
  std::string what;  // "--reference DIR", "the built-in compressed_tensors plugin's dequantize_expert"
  std::vector<ReferenceLayer> layers;
  // The activation quantization that goes with the weights, when the reference knows it (a
  // built-in plugin says it; float weights on disk do not).
  std::optional<ref::MoeOptions> act;
  const ref::ExpertWeights* find(const std::string& prefix) const;
};

// Every MoE layer's expert weights in checkpoint directory `dir`: F32, BF16 or F16, in any
// naming family the loader knows (per expert, or fused over the experts). Throws moeq::Error
// naming the file, the tensor, what was expected and what was found.
Reference read_reference(const std::filesystem::path& dir);

// Loads `fixture` through the built-in plugins, the ones beside the moeq executable
// (<exe>/../plugins, <exe>/../lib/moeq/plugins), leaving out the file under test, and takes
// the dequantize_expert of the plugin that wins each layer. nullopt, with `why_not`, when none
// takes the checkpoint or the winner has no dequantize_expert. Call before the subject is loaded:
// it swaps the registry the host services see while it runs.
std::optional<Reference> builtin_reference(const Fixture& fixture, const std::filesystem::path& subject_file,
                                           std::string& why_not);

}  // namespace moeq::cli::conform
