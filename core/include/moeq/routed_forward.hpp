// A loaded MoE layer driven as its model family drives it: the router's logits, the family's
// routing, the weight on the expert's output (or input, Llama-4), and the same forward in float
// for references; plus golden files that hold a framework's own forward of a layer.
#pragma once
#include <moeq/loader.hpp>
#include <moeq/safetensors.hpp>

#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace moeq {

// logits [M, E] = x [M, H] times the layer's router weight, accumulated in double.
std::vector<float> router_logits(const LoadedModel& model, size_t layer, std::span<const float> x, int64_t m);

// The layer's routing of x under its family's semantics (resolved from config.json).
ref::Routing route_layer(const LoadedModel& model, size_t layer, std::span<const float> x, int64_t m);

// The layer's apply, with the routing weight where the family puts it: on the output (one apply),
// or on the input (one apply per top-k slot on x scaled by that slot's weight, weights 1, summed).
std::vector<float> apply_routed(const LoadedModel& model, size_t layer, std::span<const float> x, int64_t m,
                                const ref::Routing& routing);

// ref::moe_forward with the same placement of the routing weight.
std::vector<float> reference_routed(const ref::ExpertWeights& w, std::span<const float> x, int64_t m,
                                    const ref::Routing& routing, const ref::MoeOptions& act, bool weight_on_input);

// A golden file: per MoE layer L, `layers.L.input` [T, H] F32 entering the MoE block and
// `layers.L.output` [T, H] F32, the routed experts' output a framework computed from the original
// weights; optionally `layers.L.topk_ids` I32 / `topk_weights` F32 [T, k] (its routing) and
// `layers.L.experts.E.{w1,w3,w2}` (the original weights, [I, H], [I, H], [H, I]).
class GoldenFile {
 public:
  // Throws moeq::Error naming the file and what is wrong.
  static GoldenFile open(const std::filesystem::path& path);
  const std::filesystem::path& path() const { return file_->path(); }
  std::vector<int64_t> layers() const;  // model layer indices with an input and an output
  int64_t tokens(int64_t layer) const;
  // F32 values of `layers.L.<what>` (cast from any float dtype) and its shape; throws naming
  // the tensor when it is absent or its shape is not `shape` (an empty `shape` accepts any).
  std::vector<float> floats(int64_t layer, const std::string& what, const std::vector<int64_t>& shape = {}) const;
  std::vector<int32_t> ints(int64_t layer, const std::string& what, const std::vector<int64_t>& shape) const;
  bool has(int64_t layer, const std::string& what) const;
  const std::map<std::string, std::string>& metadata() const { return file_->metadata(); }

 private:
  std::shared_ptr<SafetensorsFile> file_;
  const TensorInfo& tensor(int64_t layer, const std::string& what, const std::vector<int64_t>& shape) const;
};

// The original weights of the layer's local experts from a golden file, as ref::ExpertWeights of
// this model's placement (EP experts, TP slice of I).
ref::ExpertWeights golden_original_weights(const GoldenFile& g, const LoadedModel& model, size_t layer);

// The relative L2 a scheme's quantization may add against a framework's forward of the original
// weights: FP8 8e-2, int8 2e-2, unquantized 1e-5 (the CPU path; on a device, bf16 activations
// add ~2e-3, so 5e-3). `weight_dtype` is the dtype the layer's method computes with.
double golden_tolerance(const std::string& weight_dtype, bool on_device);

}  // namespace moeq
