#include "fp8_channel_method.hpp"

#include "cpu_moe.hpp"

#include <boost/json.hpp>

#include <set>

namespace moeq::ct {
namespace {

const char* proj_name(int32_t p) {
  return p == MOEQ_PROJECTION_W1 ? "w1" : p == MOEQ_PROJECTION_W2 ? "w2" : p == MOEQ_PROJECTION_W3 ? "w3" : "?";
}

class Fp8ChannelMethod final : public sdk::Method {
 public:
  Fp8ChannelMethod(const moeq_method_create_args& a, ExpertScheme scheme)
      : g_(*a.geometry), device_(a.device), scheme_(std::move(scheme)), layer_name_(a.layer_name) {
    if (device_.device_type != kDLCPU)
      fail(MOEQ_STATUS_CODE_UNAVAILABLE, "compressed_tensors: this version applies on the CPU only");
    if (g_.activation != MOEQ_ACTIVATION_SILU) fail("compressed_tensors: only the gated SiLU activation");
  }

  void create_weights(const sdk::Layer& layer) override {
    const int64_t E = g_.num_local_experts, H = g_.hidden_size, I = g_.intermediate_size_per_partition;
    w13_ = layer.create_param("w13_weight", {E, 2 * I, H}, DType::F8_E4M3);
    w2_ = layer.create_param("w2_weight", {E, H, I}, DType::F8_E4M3);
    s13_ = layer.create_param("w13_weight_scale", {E, 2 * I, 1}, DType::F32);
    s2_ = layer.create_param("w2_weight_scale", {E, H, 1}, DType::F32);
  }

  bool load(const moeq_weight_loader_args& a, const sdk::Layer& layer, std::string& skip) override {
    const std::string suffix = a.suffix;
    const std::string name = a.tensor_name;
    const int32_t p = a.projection;
    if (p != MOEQ_PROJECTION_W1 && p != MOEQ_PROJECTION_W2 && p != MOEQ_PROJECTION_W3)
      fail(name + ": unknown projection " + std::to_string(p));
    sdk::View src(*a.source);
    const int64_t le = a.local_expert, H = g_.hidden_size, I = g_.intermediate_size,
                  It = g_.intermediate_size_per_partition, r = g_.tp_rank;
    const bool w2 = p == MOEQ_PROJECTION_W2;
    if (suffix == "weight") {
      const std::vector<int64_t> want = w2 ? std::vector<int64_t>{H, I} : std::vector<int64_t>{I, H};
      if (src.dtype() != DType::F8_E4M3 || src.shape() != want)
        fail(name + ": expected F8_E4M3 " + sdk::shape_string(want) + " for " + proj_name(p) + ", found " +
             dtype_name(src.dtype()) + " " + sdk::shape_string(src.shape()));
      if (w2)
        layer.copy(w2_, {le, 0, 0}, src.narrow(1, r * It, It));
      else
        layer.copy(w13_, {le, p == MOEQ_PROJECTION_W1 ? 0 : It, 0}, src.narrow(0, r * It, It));
      return true;
    }
    if (suffix == "weight_scale" || suffix == "weight_scale_inv") {
      // The name never decides the math: both are the multiplier of the dequantization.
      auto key = std::make_pair(le, p);
      auto [it, fresh] = scale_names_.emplace(key, suffix);
      if (!fresh && it->second != suffix)
        fail(name + ": " + proj_name(p) + " of expert " + std::to_string(a.global_expert) + " carries both " +
             it->second + " and " + suffix + "; keep one");
      seen_scale_names_.insert(suffix);
      const int64_t n = w2 ? H : I;
      if (src.dtype() != DType::BF16 && src.dtype() != DType::F16 && src.dtype() != DType::F32)
        fail(name + ": channel scale must be BF16, F16 or F32, found " + dtype_name(src.dtype()));
      sdk::View s = src;
      if (s.ndim() == 1 && s.size(0) == n) s = s.reshaped({n, 1});
      if (s.ndim() != 2 || s.size(0) != n || s.size(1) != 1)
        fail(name + ": expected a per-channel scale [" + std::to_string(n) + ", 1] or [" + std::to_string(n) +
             "] for " + proj_name(p) + ", found " + sdk::shape_string(src.shape()));
      if (w2)
        layer.copy(s2_, {le, 0, 0}, s, MOEQ_COPY_CHECK_SCALE);
      else
        layer.copy(s13_, {le, p == MOEQ_PROJECTION_W1 ? 0 : It, 0}, s.narrow(0, r * It, It), MOEQ_COPY_CHECK_SCALE);
      return true;
    }
    if (suffix == "input_scale") {
      skip = "activations are quantized dynamically per token; a static input_scale is not used";
      return false;
    }
    fail(name + ": unexpected tensor '" + suffix + "' for a compressed-tensors FP8 channel expert (expected "
                "weight, weight_scale or weight_scale_inv)");
  }

  void process_after_loading(const sdk::Layer&) override {
    ex_.w13 = static_cast<const uint8_t*>(w13_->data);
    ex_.w2 = static_cast<const uint8_t*>(w2_->data);
    ex_.s13 = static_cast<const float*>(s13_->data);
    ex_.s2 = static_cast<const float*>(s2_->data);
    ex_.num_local = g_.num_local_experts;
    ex_.first_local = g_.first_local_expert;
    ex_.hidden = g_.hidden_size;
    ex_.intermediate = g_.intermediate_size_per_partition;
    ready_ = true;
  }

  void apply(const moeq_apply_args& a) override {
    if (!ready_) fail(MOEQ_STATUS_CODE_FAILED_PRECONDITION, "apply before process_after_loading");
    if (!a.x || !a.topk_ids || !a.topk_weights || !a.out) fail("apply: NULL tensor");
    cpu_fp8_channel_apply(ex_, *a.x, *a.topk_ids, *a.topk_weights, *a.out);
  }

  std::string describe() const override {
    boost::json::object o;
    o["scheme"] = "fp8_w8a8";
    o["config_group"] = scheme_.group_name;
    o["format"] = scheme_.format;
    o["weights"] = "fp8 e4m3fn, per output channel (strategy channel)";
    o["activations"] = "fp8 e4m3fn, dynamic per token";
    o["granularity"] = "channel";
    boost::json::array names;
    for (const auto& n : seen_scale_names_) names.push_back(boost::json::string(n));
    o["scale_names"] = names;
    o["params"] = "w13_weight [E,2I_tp,H] f8, w2_weight [E,H,I_tp] f8, w13_weight_scale [E,2I_tp,1] f32, "
                  "w2_weight_scale [E,H,1] f32";
    return boost::json::serialize(o);
  }

  void dequantize_expert(moeq_dequantize_expert_args& a) const override {
    if (!ready_) fail(MOEQ_STATUS_CODE_FAILED_PRECONDITION, "dequantize_expert before process_after_loading");
    const int64_t le = a.local_expert, H = ex_.hidden, I = ex_.intermediate;
    if (le < 0 || le >= ex_.num_local) fail("dequantize_expert: local expert out of range");
    const uint8_t* q13 = ex_.w13 + le * 2 * I * H;
    for (int64_t n = 0; n < 2 * I; ++n)
      for (int64_t k = 0; k < H; ++k)
        a.w13[n * H + k] = fp8_e4m3_to_float(q13[n * H + k]) * ex_.s13[le * 2 * I + n];
    const uint8_t* q2 = ex_.w2 + le * H * I;
    for (int64_t n = 0; n < H; ++n)
      for (int64_t i = 0; i < I; ++i) a.w2[n * I + i] = fp8_e4m3_to_float(q2[n * I + i]) * ex_.s2[le * H + n];
    a.a1_quant = MOEQ_ACT_QUANT_FP8_PER_TOKEN;
    a.a2_quant = MOEQ_ACT_QUANT_FP8_PER_TOKEN;
    a.group_size = 0;
  }

 private:
  moeq_layer_geometry g_;
  DLDevice device_;
  ExpertScheme scheme_;
  std::string layer_name_;
  const DLTensor* w13_ = nullptr;
  const DLTensor* w2_ = nullptr;
  const DLTensor* s13_ = nullptr;
  const DLTensor* s2_ = nullptr;
  std::map<std::pair<int64_t, int32_t>, std::string> scale_names_;
  std::set<std::string> seen_scale_names_;
  Fp8ChannelExperts ex_;
  bool ready_ = false;
};

}  // namespace

std::unique_ptr<sdk::Method> make_fp8_channel_method(const moeq_method_create_args& a, ExpertScheme scheme) {
  return std::make_unique<Fp8ChannelMethod>(a, std::move(scheme));
}

}  // namespace moeq::ct
