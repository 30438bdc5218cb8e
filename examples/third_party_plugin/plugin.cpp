// example_fp8_tensor: a third-party moeq plugin, built out of tree against the installed SDK.
//
// Scheme: compressed-tensors FP8 weight-only with one scale per tensor (W8A16): every expert
// projection (gate, up, down) holds F8_E4M3 codes and one `weight_scale` of shape [] or [1];
// activations stay in float. It scores 3, below the built-in compressed_tensors plugin (10),
// so the built-in wins unless the user pins this one (`moeq ... --plugin example_fp8_tensor`).
//
// What it shows, in the order a plugin author meets it (docs/PLUGIN_GUIDE.md):
//   probe             pure: parses the config, answers a score or a reason, touches nothing
//   method_create     copies what it keeps (the geometry); strings are valid for the call only
//   create_weights    declares parameters; the host allocates and owns them
//   weight_loader     narrows to its TP shard and asks the host to copy (the ledger records it)
//   process_after_loading, apply, dequantize_expert (the core's float reference compares)
//   describe          JSON for `moeq inspect`, with the tolerance `moeq conform` holds it to
// Errors are moeq::Error exceptions; the SDK's trampolines turn them into statuses at the ABI.
#include <moeq/sdk/kernels.hpp>
#include <moeq/sdk/sdk.hpp>

#include <boost/json.hpp>

#include <array>
#include <cmath>
#include <string>
#include <vector>

namespace example_fp8_tensor {
namespace json = boost::json;
using moeq::DType;
using moeq::fail;

constexpr int32_t kScore = 3;

// Empty when `config` is compressed-tensors FP8 per-tensor weight-only, else why not.
std::string decline_reason(const char* config, const char* weight_dtype) {
  json::value root;
  try {
    root = json::parse(config ? config : "");
  } catch (const std::exception&) {
    return "the quantization config is not JSON";
  }
  const json::object* o = root.if_object();
  if (o == nullptr) return "no quantization config";
  const json::value* method = o->if_contains("quant_method");
  if (method == nullptr || !method->is_string() || method->as_string() != "compressed-tensors")
    return "not a compressed-tensors config";
  if (std::string(weight_dtype ? weight_dtype : "") != "F8_E4M3")
    return std::string("expert weights are ") + (weight_dtype ? weight_dtype : "?") + ", not F8_E4M3";
  const json::value* groups = o->if_contains("config_groups");
  if (groups == nullptr || !groups->is_object()) return "compressed-tensors config without config_groups";
  for (const auto& entry : groups->as_object()) {
    const json::object* g = entry.value().if_object();
    if (g == nullptr) continue;
    const json::value* w = g->if_contains("weights");
    const json::value* a = g->if_contains("input_activations");
    if (w == nullptr || !w->is_object()) continue;
    const json::object& wo = w->as_object();
    auto text = [&](const char* key) {
      const json::value* v = wo.if_contains(key);
      return v && v->is_string() ? std::string(v->as_string()) : std::string();
    };
    const json::value* bits = wo.if_contains("num_bits");
    const bool fp8_tensor = text("type") == "float" && text("strategy") == "tensor" && bits && bits->is_int64() &&
                            bits->as_int64() == 8;
    if (fp8_tensor && (a == nullptr || a->is_null())) return {};
    if (fp8_tensor) return "group '" + std::string(entry.key()) + "' quantizes activations too (this plugin is weight-only)";
  }
  return "no config group with FP8 per-tensor weights";
}

class Fp8TensorMethod final : public moeq::sdk::Method {
 public:
  explicit Fp8TensorMethod(const moeq_layer_geometry& g) : g_(g) {
    if (g_.activation != MOEQ_ACTIVATION_SILU) fail("example_fp8_tensor: only the gated SiLU activation");
    if (g_.tp_size < 1 || g_.tp_rank < 0 || g_.tp_rank >= g_.tp_size ||
        g_.intermediate_size_per_partition * g_.tp_size != g_.intermediate_size)
      fail("example_fp8_tensor: TP rank " + std::to_string(g_.tp_rank) + " of " + std::to_string(g_.tp_size) +
           " does not split intermediate size " + std::to_string(g_.intermediate_size) + " into shards of " +
           std::to_string(g_.intermediate_size_per_partition));
    for (int i = 0; i < 256; ++i) lut_[i] = moeq::fp8_e4m3_to_float(static_cast<uint8_t>(i));
  }

  void create_weights(const moeq::sdk::Layer& layer) override {
    const int64_t E = g_.num_local_experts, H = g_.hidden_size, It = g_.intermediate_size_per_partition;
    w13_ = layer.create_param("w13_weight", {E, 2 * It, H}, DType::F8_E4M3);
    w2_ = layer.create_param("w2_weight", {E, H, It}, DType::F8_E4M3);
    // One scale per projection: gate and up keep their own, as the checkpoint has them.
    s13_ = layer.create_param("w13_weight_scale", {E, 2}, DType::F32);
    s2_ = layer.create_param("w2_weight_scale", {E, 1}, DType::F32);
  }

  bool load(const moeq_weight_loader_args& a, const moeq::sdk::Layer& layer, std::string& skip) override {
    const std::string name = a.tensor_name ? a.tensor_name : "?", suffix = a.suffix ? a.suffix : "";
    const int32_t p = a.projection;
    if (p != MOEQ_PROJECTION_W1 && p != MOEQ_PROJECTION_W2 && p != MOEQ_PROJECTION_W3)
      fail(name + ": unknown projection " + std::to_string(p));
    const int64_t e = a.local_expert;
    if (e < 0 || e >= g_.num_local_experts) fail(name + ": local expert " + std::to_string(e) + " is not on this rank");
    if (a.source == nullptr) fail(name + ": no source tensor");
    const moeq::sdk::View src(*a.source);
    const int64_t H = g_.hidden_size, I = g_.intermediate_size, It = g_.intermediate_size_per_partition;
    const int64_t shard = g_.tp_rank * It;
    const bool down = p == MOEQ_PROJECTION_W2;
    if (suffix == "weight") {
      const std::vector<int64_t> want = down ? std::vector<int64_t>{H, I} : std::vector<int64_t>{I, H};
      if (src.dtype() != DType::F8_E4M3 || src.shape() != want)
        fail(name + ": expected F8_E4M3 " + moeq::sdk::shape_string(want) + ", found " + moeq::dtype_name(src.dtype()) +
             " " + moeq::sdk::shape_string(src.shape()));
      if (down)  // w2 [H, I]: this rank's columns
        layer.copy(w2_, {e, 0, 0}, src.narrow(1, shard, It));
      else  // w1 / w3 [I, H]: this rank's rows, gate rows first, then up rows
        layer.copy(w13_, {e, p == MOEQ_PROJECTION_W1 ? 0 : It, 0}, src.narrow(0, shard, It));
      return true;
    }
    if (suffix == "weight_scale") {
      if (src.numel() != 1 || src.ndim() > 1)
        fail(name + ": a per-tensor weight_scale has shape [] or [1], found " + moeq::sdk::shape_string(src.shape()));
      if (src.dtype() != DType::BF16 && src.dtype() != DType::F16 && src.dtype() != DType::F32)
        fail(name + ": weight_scale must be BF16, F16 or F32, found " + moeq::dtype_name(src.dtype()));
      const moeq::sdk::View one = src.reshaped({1});
      // MOEQ_COPY_CHECK_SCALE: the host refuses a scale that is not finite and > 0, naming it.
      if (down)
        layer.copy(s2_, {e, 0}, one, MOEQ_COPY_CHECK_SCALE);
      else
        layer.copy(s13_, {e, p == MOEQ_PROJECTION_W1 ? 0 : 1}, one, MOEQ_COPY_CHECK_SCALE);
      return true;
    }
    if (suffix == "input_scale") {
      skip = "weight-only scheme: activations stay in float, input_scale is not used";
      return false;
    }
    fail(name + ": unexpected tensor '" + suffix + "' (expected weight or weight_scale)");
  }

  void process_after_loading(const moeq::sdk::Layer&) override { ready_ = true; }

  void apply(const moeq_apply_args& a) override {
    if (!ready_) fail(MOEQ_STATUS_CODE_FAILED_PRECONDITION, "apply before process_after_loading");
    const int64_t H = g_.hidden_size, It = g_.intermediate_size_per_partition;
    require(a.x, "x", kDLFloat, 32, -1, H);
    const int64_t M = a.x->shape[0];
    require(a.out, "out", kDLFloat, 32, M, H);
    require(a.topk_ids, "topk_ids", kDLInt, 32, M, -1);
    const int64_t k = a.topk_ids->shape[1];
    require(a.topk_weights, "topk_weights", kDLFloat, 32, M, k);
    const auto* codes13 = static_cast<const uint8_t*>(w13_->data);
    const auto* codes2 = static_cast<const uint8_t*>(w2_->data);
    const auto* s13 = static_cast<const float*>(s13_->data);
    const auto* s2 = static_cast<const float*>(s2_->data);
    std::vector<float> x(static_cast<size_t>(H)), act(static_cast<size_t>(It));
    std::vector<double> y(static_cast<size_t>(H));
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t c = 0; c < H; ++c) x[c] = element(a.x, m, c);
      std::fill(y.begin(), y.end(), 0.0);
      for (int64_t j = 0; j < k; ++j) {
        const int64_t e = element_i32(a.topk_ids, m, j) - g_.first_local_expert;
        if (e < 0 || e >= g_.num_local_experts) continue;  // another EP rank's expert
        const float weight = element(a.topk_weights, m, j);
        // GEMM1 on codes, then one multiply by the tensor scale: exact for a per-tensor scale.
        const uint8_t* gate = codes13 + e * 2 * It * H;
        const uint8_t* up = gate + It * H;
        for (int64_t i = 0; i < It; ++i) {
          const float g = static_cast<float>(dot(gate + i * H, x.data(), H)) * s13[2 * e];
          const float u = static_cast<float>(dot(up + i * H, x.data(), H)) * s13[2 * e + 1];
          act[i] = g / (1.0f + std::exp(-g)) * u;
        }
        const uint8_t* down = codes2 + e * H * It;
        for (int64_t r = 0; r < H; ++r) y[r] += weight * (dot(down + r * It, act.data(), It) * s2[e]);
      }
      for (int64_t c = 0; c < H; ++c) element_out(a.out, m, c) = static_cast<float>(y[c]);
    }
  }

  std::string describe() const override {
    json::array kernels;
    for (const moeq::sdk::EmbeddedKernel& k : moeq::sdk::embedded_kernels())
      kernels.push_back(json::string(std::string(k.name) + " (" + std::to_string(k.size) + " bytes)"));
    return json::serialize(json::object{{"scheme", "fp8 per-tensor weight-only (w8a16)"},
                                        {"weights", "F8_E4M3, one scale per gate/up/down tensor"},
                                        {"activations", "float, not quantized"},
                                        {"rel_l2_tolerance", 1e-3},
                                        {"embedded_kernels", kernels}});
  }

  void dequantize_expert(moeq_dequantize_expert_args& a) const override {
    if (!ready_) fail(MOEQ_STATUS_CODE_FAILED_PRECONDITION, "dequantize_expert before process_after_loading");
    const int64_t e = a.local_expert, H = g_.hidden_size, It = g_.intermediate_size_per_partition;
    if (e < 0 || e >= g_.num_local_experts) fail("dequantize_expert: no local expert " + std::to_string(e));
    const auto* codes13 = static_cast<const uint8_t*>(w13_->data) + e * 2 * It * H;
    const auto* codes2 = static_cast<const uint8_t*>(w2_->data) + e * H * It;
    const auto* s13 = static_cast<const float*>(s13_->data);
    const auto* s2 = static_cast<const float*>(s2_->data);
    for (int64_t i = 0; i < 2 * It * H; ++i) a.w13[i] = lut_[codes13[i]] * s13[2 * e + (i < It * H ? 0 : 1)];
    for (int64_t i = 0; i < H * It; ++i) a.w2[i] = lut_[codes2[i]] * s2[e];
    a.a1_quant = MOEQ_ACT_QUANT_NONE;
    a.a2_quant = MOEQ_ACT_QUANT_NONE;
  }

 private:
  // rows == -1 or cols == -1: any extent.
  static void require(const DLTensor* t, const char* what, uint8_t code, uint8_t bits, int64_t rows, int64_t cols) {
    const bool ok = t != nullptr && t->ndim == 2 && t->dtype.code == code && t->dtype.bits == bits &&
                    t->dtype.lanes == 1 && (rows < 0 || t->shape[0] == rows) && (cols < 0 || t->shape[1] == cols);
    if (!ok)
      fail(std::string("apply: ") + what + " must be a 2-D " + (code == kDLFloat ? "float" : "int") +
           std::to_string(bits) + " tensor [" + (rows < 0 ? "M" : std::to_string(rows)) + ", " +
           (cols < 0 ? "k" : std::to_string(cols)) + "]");
  }
  template <class T>
  static T* at(const DLTensor* t, int64_t r, int64_t c) {
    auto* base = static_cast<char*>(t->data) + t->byte_offset;
    return reinterpret_cast<T*>(base) + r * t->strides[0] + c * t->strides[1];
  }
  static float element(const DLTensor* t, int64_t r, int64_t c) { return *at<const float>(t, r, c); }
  static int64_t element_i32(const DLTensor* t, int64_t r, int64_t c) { return *at<const int32_t>(t, r, c); }
  static float& element_out(const DLTensor* t, int64_t r, int64_t c) { return *at<float>(t, r, c); }
  double dot(const uint8_t* codes, const float* v, int64_t n) const {
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i) s += static_cast<double>(lut_[codes[i]]) * v[i];
    return s;
  }

  moeq_layer_geometry g_;
  std::array<float, 256> lut_{};  // F8_E4M3 code -> value
  const DLTensor* w13_ = nullptr;
  const DLTensor* w2_ = nullptr;
  const DLTensor* s13_ = nullptr;
  const DLTensor* s2_ = nullptr;
  bool ready_ = false;
};

struct Plugin {
  static int32_t probe(const moeq_probe_args& a, std::string& reason) {
    reason = decline_reason(a.quant_config_json, a.weight_dtype);
    if (!reason.empty()) return 0;
    reason = "compressed-tensors fp8 per-tensor weight-only (example plugin, scores below the built-in)";
    return kScore;
  }
  static std::unique_ptr<moeq::sdk::Method> create(const moeq_method_create_args& a) {
    if (a.geometry == nullptr) fail("method_create: no geometry");
    if (std::string why = decline_reason(a.quant_config_json, a.weight_dtype); !why.empty())
      fail("example_fp8_tensor cannot run this layer: " + why);
    return std::make_unique<Fp8TensorMethod>(*a.geometry);
  }
};

const char* const kSchemes[] = {"compressed-tensors fp8 per-tensor weight-only (w8a16), CPU apply"};

// Static and pure: the entry symbol returns it without allocating, logging or touching CUDA.
const moeq_plugin_descriptor* descriptor() {
  static const moeq_plugin_descriptor d = {
      sizeof(moeq_plugin_descriptor),
      MOEQ_ABI_MAJOR,
      MOEQ_ABI_MINOR,
      0,  // min_host_minor: uses nothing newer than ABI 1.0
      0,
      "example_fp8_tensor",
      "1.0.0",
      kSchemes,
      sizeof(kSchemes) / sizeof(kSchemes[0]),
      nullptr,
      0,
      MOEQ_CAP_CPU_APPLY,
      "moeq examples/third_party_plugin, built out of tree with moeq_add_plugin",
      moeq::sdk::PluginApi<Plugin>::table(),
  };
  return &d;
}

}  // namespace example_fp8_tensor

MOEQ_SDK_EXPORT_DESCRIPTOR(example_fp8_tensor::descriptor())
