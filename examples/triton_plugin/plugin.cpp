// example_triton: a moeq plugin whose expert GEMMs on the GPU are Triton kernels
// (kernels/moe_triton.py), compiled ahead of time to PTX by generate.py and shipped as PTX +
// Triton's metadata; the host's JIT compiles the PTX for the device's exact arch at load.
//
// Scheme: compressed-tensors FP8 weight-only with one scale per projection (W8A16), as
// examples/third_party_plugin; it scores 2, below the built-in compressed_tensors (10), so it runs
// only when pinned (`--plugin example_triton`). On the CPU apply is a float loop (what
// `moeq conform` holds to the core's reference); on a CUDA device two Triton kernels run on the
// caller's stream with the host's workspace:
//   moe_gate_up  h [M*k, I_tp] = silu(gate) * up for every (token, slot)   grid (M*k, I_tp/32)
//   moe_down     out [M, H]    = sum over slots of weight * down(h)        grid (M, H/32)
// What it shows: moeq_add_plugin(PTX ...), jit_compile with MOEQ_JIT_SOURCE_PTX and arch NULL,
// moeq::sdk::triton::Kernel (Triton's calling convention), apply_info and the lent workspace.
#include <moeq/sdk/cuda.hpp>
#include <moeq/sdk/kernels.hpp>
#include <moeq/sdk/sdk.hpp>
#include <moeq/sdk/triton.hpp>

#include <boost/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace example_triton {
namespace json = boost::json;
namespace cu = moeq::sdk::cuda;
namespace tr = moeq::sdk::triton;
using moeq::DType;
using moeq::fail;

constexpr int32_t kScore = 2;
constexpr int kBlockN = 32;             // the BLOCK_N the kernels were compiled with (generate.py)
constexpr int64_t kTokensPerPass = 4096;  // apply runs larger batches in passes

// Empty when `config` is compressed-tensors FP8 per-tensor weight-only over F8_E4M3 experts.
std::string decline_reason(const char* config, const char* weight_dtype) {
  json::value root;
  try {
    root = json::parse(config ? config : "");
  } catch (const std::exception&) {
    return "the quantization config is not JSON";
  }
  const json::object* o = root.if_object();
  if (o == nullptr || !o->contains("quant_method") || o->at("quant_method") != "compressed-tensors")
    return "not a compressed-tensors config";
  if (std::string(weight_dtype ? weight_dtype : "") != "F8_E4M3")
    return std::string("expert weights are ") + (weight_dtype ? weight_dtype : "?") + ", not F8_E4M3";
  const json::object* groups = o->contains("config_groups") ? o->at("config_groups").if_object() : nullptr;
  if (groups == nullptr) return "compressed-tensors config without config_groups";
  for (const auto& [key, value] : *groups) {
    const json::object* g = value.if_object();
    const json::object* w = g && g->contains("weights") ? g->at("weights").if_object() : nullptr;
    if (w == nullptr) continue;
    const bool fp8_tensor = w->contains("type") && w->at("type") == "float" && w->contains("strategy") &&
                            w->at("strategy") == "tensor" && w->contains("num_bits") && w->at("num_bits") == 8;
    if (!fp8_tensor) continue;
    const json::value* a = g->if_contains("input_activations");
    if (a == nullptr || a->is_null()) return {};
    return "group '" + std::string(key) + "' quantizes activations (this plugin is weight-only)";
  }
  return "no config group with FP8 per-tensor weights";
}

class Method final : public moeq::sdk::Method {
 public:
  Method(const moeq_layer_geometry& g, DLDevice device) : g_(g), device_(device) {
    if (g_.activation != MOEQ_ACTIVATION_SILU) fail("example_triton: only the gated SiLU activation");
    if (g_.intermediate_size_per_partition * g_.tp_size != g_.intermediate_size)
      fail("example_triton: TP size " + std::to_string(g_.tp_size) + " does not split intermediate size " +
           std::to_string(g_.intermediate_size) + " evenly");
    if (device_.device_type != kDLCPU && device_.device_type != kDLCUDA)
      fail(MOEQ_STATUS_CODE_UNIMPLEMENTED, "example_triton: apply runs on kDLCPU or kDLCUDA, not device type " +
                                               std::to_string(device_.device_type));
    if (device_.device_type == kDLCUDA && moeq::sdk::host()->abi_minor < 2)
      fail(MOEQ_STATUS_CODE_UNIMPLEMENTED,
           "example_triton: the CUDA path needs a host of ABI 1.2 (PTX in jit_compile, lent workspaces)");
  }

  void create_weights(const moeq::sdk::Layer& layer) override {
    const int64_t E = g_.num_local_experts, H = g_.hidden_size, It = g_.intermediate_size_per_partition;
    w13_ = layer.create_param("w13_weight", {E, 2 * It, H}, DType::F8_E4M3);
    w2_ = layer.create_param("w2_weight", {E, H, It}, DType::F8_E4M3);
    s13_ = layer.create_param("w13_weight_scale", {E, 2}, DType::F32);  // gate, up
    s2_ = layer.create_param("w2_weight_scale", {E}, DType::F32);
  }

  bool load(const moeq_weight_loader_args& a, const moeq::sdk::Layer& layer, std::string& skip) override {
    const std::string name = a.tensor_name ? a.tensor_name : "?", suffix = a.suffix ? a.suffix : "";
    const bool down = a.projection == MOEQ_PROJECTION_W2, gate = a.projection == MOEQ_PROJECTION_W1;
    if (!down && !gate && a.projection != MOEQ_PROJECTION_W3) fail(name + ": unknown projection " + std::to_string(a.projection));
    const int64_t e = a.local_expert;
    if (e < 0 || e >= g_.num_local_experts) fail(name + ": local expert " + std::to_string(e) + " is not on this rank");
    if (a.source == nullptr) fail(name + ": no source tensor");
    const moeq::sdk::View src(*a.source);
    const int64_t H = g_.hidden_size, I = g_.intermediate_size, It = g_.intermediate_size_per_partition;
    if (suffix == "weight") {
      const std::vector<int64_t> want = down ? std::vector<int64_t>{H, I} : std::vector<int64_t>{I, H};
      if (src.dtype() != DType::F8_E4M3 || src.shape() != want)
        fail(name + ": expected F8_E4M3 " + moeq::sdk::shape_string(want) + ", found " + moeq::dtype_name(src.dtype()) +
             " " + moeq::sdk::shape_string(src.shape()));
      const int64_t first = g_.tp_rank * It;  // this rank's rows of w1/w3, columns of w2
      if (down) layer.copy(w2_, {e, 0, 0}, src.narrow(1, first, It));
      else layer.copy(w13_, {e, gate ? 0 : It, 0}, src.narrow(0, first, It));
      return true;
    }
    if (suffix == "weight_scale") {
      if (src.numel() != 1 || src.ndim() > 1)
        fail(name + ": expected a per-tensor weight_scale of shape [] or [1], found " + moeq::sdk::shape_string(src.shape()));
      if (down) layer.copy(s2_, {e}, src.reshaped({1}), MOEQ_COPY_CHECK_SCALE);
      else layer.copy(s13_, {e, gate ? 0 : 1}, src.reshaped({1}), MOEQ_COPY_CHECK_SCALE);
      return true;
    }
    if (suffix == "input_scale") {
      skip = "weight-only: activations stay in float";
      return false;
    }
    fail(name + ": unexpected tensor '" + suffix + "' (expected weight or weight_scale)");
  }

  void process_after_loading(const moeq::sdk::Layer&) override {
    if (device_.device_type == kDLCUDA) {
      gate_up_ = compile("moe_gate_up.ptx");
      down_ = compile("moe_down.ptx");
    }
    ready_ = true;
  }

  void apply_info(moeq_apply_info_args& a) const override {
    a.x_dtypes = a.out_dtypes = MOEQ_DTYPE_BIT_F32;
    if (device_.device_type != kDLCUDA) {
      a.workspace_bytes = 0;
      a.tokens_per_pass = a.max_tokens > 0 ? a.max_tokens : INT64_MAX;
      return;
    }
    a.tokens_per_pass = a.max_tokens > 0 ? std::min(a.max_tokens, kTokensPerPass) : kTokensPerPass;
    a.workspace_bytes = h_bytes(a.tokens_per_pass);
  }

  void apply(const moeq_apply_args& a) override {
    if (!ready_) fail(MOEQ_STATUS_CODE_FAILED_PRECONDITION, "apply before process_after_loading");
    const int64_t H = g_.hidden_size;
    const int64_t x_stride = rows(a.x, "x", -1, H, kDLFloat);
    const int64_t M = a.x->shape[0];
    const int64_t out_stride = rows(a.out, "out", M, H, kDLFloat);
    rows(a.topk_ids, "topk_ids", M, -1, kDLInt);
    const int64_t k = a.topk_ids->shape[1];
    rows(a.topk_weights, "topk_weights", M, k, kDLFloat);
    if (k < 1 || k > g_.num_experts) fail("apply: top_k must be in [1, " + std::to_string(g_.num_experts) + "], found " + std::to_string(k));
    if (a.topk_ids->strides[0] != k || a.topk_weights->strides[0] != k)
      fail("apply: topk_ids and topk_weights must be contiguous [M, top_k]");
    if (device_.device_type == kDLCUDA) return apply_cuda(a, M, k, x_stride, out_stride);
    apply_cpu(a, M, k, x_stride, out_stride);
  }

  std::string describe() const override {
    json::array kernels;
    for (const char* f : {"moe_gate_up.ptx", "moe_down.ptx"}) {
      const tr::Metadata m = tr::embedded_metadata(f);
      kernels.push_back(json::object{{"file", f}, {"entry", m.name}, {"num_warps", m.num_warps}, {"shared", m.shared},
                                     {"triton", m.triton_version}, {"target", m.target}});
    }
    return json::serialize(json::object{{"scheme", "fp8 per-tensor weight-only (w8a16)"},
                                        {"apply", device_.device_type == kDLCUDA ? "cuda, Triton kernels from PTX" : "cpu"},
                                        {"rel_l2_tolerance", 1e-3},
                                        {"triton_kernels", kernels}});
  }

  void dequantize_expert(moeq_dequantize_expert_args& a) const override {
    if (!ready_) fail(MOEQ_STATUS_CODE_FAILED_PRECONDITION, "dequantize_expert before process_after_loading");
    const int64_t e = a.local_expert, H = g_.hidden_size, It = g_.intermediate_size_per_partition;
    if (e < 0 || e >= g_.num_local_experts) fail("dequantize_expert: no local expert " + std::to_string(e));
    std::vector<uint8_t> c13(static_cast<size_t>(2 * It * H)), c2(static_cast<size_t>(H * It));
    float s13[2], s2 = 0;
    fetch(c13.data(), w13_, e * 2 * It * H, c13.size());
    fetch(c2.data(), w2_, e * H * It, c2.size());
    fetch(s13, s13_, e * 2 * 4, sizeof s13);
    fetch(&s2, s2_, e * 4, sizeof s2);
    for (int64_t i = 0; i < 2 * It * H; ++i) a.w13[i] = moeq::fp8_e4m3_to_float(c13[i]) * s13[i < It * H ? 0 : 1];
    for (int64_t i = 0; i < H * It; ++i) a.w2[i] = moeq::fp8_e4m3_to_float(c2[i]) * s2;
    a.a1_quant = a.a2_quant = MOEQ_ACT_QUANT_NONE;
  }

 private:
  std::size_t h_bytes(int64_t tokens) const {
    return static_cast<std::size_t>(tokens * g_.top_k * g_.intermediate_size_per_partition) * sizeof(float);
  }

  tr::Kernel compile(const char* file) const {
    moeq_jit_compile_args j{};
    j.struct_size = sizeof j;
    j.name = file;
    j.source = tr::embedded_ptx(file);
    j.arch = nullptr;  // the device's exact arch: the host decides
    j.plugin_name = "example_triton";
    j.plugin_version = "1.0.0";
    j.device = device_;
    j.flags = MOEQ_JIT_SOURCE_PTX;
    moeq::sdk::throw_if_error(moeq::sdk::host()->jit_compile(&j));
    return tr::Kernel(j.module, tr::embedded_metadata(file));
  }

  // A [rows, cols] tensor of `code` (32 bits) on the method's device with unit inner stride;
  // returns its row stride. rows or cols -1: any.
  int64_t rows(const DLTensor* t, const char* what, int64_t r, int64_t c, uint8_t code) const {
    const bool ok = t != nullptr && t->ndim == 2 && t->shape != nullptr && t->strides != nullptr &&
                    t->dtype.code == code && t->dtype.bits == 32 && t->dtype.lanes == 1 && (r < 0 || t->shape[0] == r) &&
                    (c < 0 || t->shape[1] == c) && (t->shape[1] <= 1 || t->strides[1] == 1) &&
                    t->device.device_type == device_.device_type &&
                    (device_.device_type == kDLCPU || t->device.device_id == device_.device_id);
    if (!ok)
      fail(std::string("apply: ") + what + " must be a 2-D " + (code == kDLFloat ? "F32" : "I32") + " tensor [" +
           (r < 0 ? "M" : std::to_string(r)) + ", " + (c < 0 ? "top_k" : std::to_string(c)) +
           "] with contiguous rows on the method's device");
    if (t->shape[0] > 0 && t->data == nullptr) fail(std::string("apply: ") + what + " has NULL data");
    return t->shape[0] > 1 ? t->strides[0] : t->shape[1];
  }

  template <class T>
  static T* base(const DLTensor* t) {
    return reinterpret_cast<T*>(static_cast<char*>(t->data) + t->byte_offset);
  }

  // Parameter bytes to the host (device parameters are read back).
  void fetch(void* dst, const DLTensor* param, int64_t offset, std::size_t bytes) const {
    if (device_.device_type == kDLCUDA) {
      cu::read_device(device_.device_id, dst, reinterpret_cast<uintptr_t>(param->data) + static_cast<uintptr_t>(offset),
                      bytes, "reading an expert back");
      return;
    }
    std::copy_n(static_cast<const uint8_t*>(param->data) + offset, bytes, static_cast<uint8_t*>(dst));
  }

  void apply_cuda(const moeq_apply_args& a, int64_t M, int64_t k, int64_t x_stride, int64_t out_stride) {
    const moeq::sdk::Workspace ws = moeq::sdk::workspace_of(a);
    const int64_t pass = ws.data ? static_cast<int64_t>(ws.bytes / h_bytes(1)) : 0;
    if (M == 0) return;
    if (pass < 1)
      fail(MOEQ_STATUS_CODE_FAILED_PRECONDITION, "apply: the host lent " + std::to_string(ws.bytes) +
                                                     " bytes of workspace; one token needs " + std::to_string(h_bytes(1)));
    int H = static_cast<int>(g_.hidden_size), It = static_cast<int>(g_.intermediate_size_per_partition);
    int top_k = static_cast<int>(k), first = static_cast<int>(g_.first_local_expert);
    int local = static_cast<int>(g_.num_local_experts);
    unsigned long long h = reinterpret_cast<uintptr_t>(ws.data);
    unsigned long long w13 = reinterpret_cast<uintptr_t>(w13_->data), w2 = reinterpret_cast<uintptr_t>(w2_->data);
    unsigned long long s13 = reinterpret_cast<uintptr_t>(s13_->data), s2 = reinterpret_cast<uintptr_t>(s2_->data);
    for (int64_t m0 = 0; m0 < M; m0 += pass) {
      const int64_t m = std::min(pass, M - m0);
      unsigned long long x = reinterpret_cast<uintptr_t>(base<float>(a.x) + m0 * x_stride);
      unsigned long long out = reinterpret_cast<uintptr_t>(base<float>(a.out) + m0 * out_stride);
      unsigned long long ids = reinterpret_cast<uintptr_t>(base<int32_t>(a.topk_ids) + m0 * k);
      unsigned long long wts = reinterpret_cast<uintptr_t>(base<float>(a.topk_weights) + m0 * k);
      long long xs = x_stride, os = out_stride;
      gate_up_.launch({static_cast<unsigned>(m * k), static_cast<unsigned>((It + kBlockN - 1) / kBlockN), 1},
                      {&x, &ids, &w13, &s13, &h, &H, &It, &top_k, &first, &local, &xs}, a.stream);
      down_.launch({static_cast<unsigned>(m), static_cast<unsigned>((H + kBlockN - 1) / kBlockN), 1},
                   {&h, &ids, &wts, &w2, &s2, &out, &H, &It, &top_k, &first, &local, &os}, a.stream);
    }
  }

  void apply_cpu(const moeq_apply_args& a, int64_t M, int64_t k, int64_t x_stride, int64_t out_stride) const {
    const int64_t H = g_.hidden_size, It = g_.intermediate_size_per_partition;
    const auto* c13 = static_cast<const uint8_t*>(w13_->data);
    const auto* c2 = static_cast<const uint8_t*>(w2_->data);
    const auto* s13 = static_cast<const float*>(s13_->data);
    const auto* s2 = static_cast<const float*>(s2_->data);
    const float* x = base<const float>(a.x);
    const int32_t* ids = base<const int32_t>(a.topk_ids);
    const float* wts = base<const float>(a.topk_weights);
    float* out = base<float>(a.out);
    std::vector<double> h(static_cast<size_t>(It)), y(static_cast<size_t>(H));
    auto row_dot = [](const uint8_t* codes, const auto* v, int64_t n) {
      double s = 0;
      for (int64_t i = 0; i < n; ++i) s += static_cast<double>(moeq::fp8_e4m3_to_float(codes[i])) * v[i];
      return s;
    };
    for (int64_t t = 0; t < M; ++t) {
      std::fill(y.begin(), y.end(), 0.0);
      const float* xt = x + t * x_stride;
      for (int64_t j = 0; j < k; ++j) {  // slot order, as the down kernel sums
        const int64_t e = ids[t * k + j] - g_.first_local_expert;
        if (e < 0 || e >= g_.num_local_experts) continue;
        const uint8_t* w1 = c13 + e * 2 * It * H;
        for (int64_t n = 0; n < It; ++n) {
          const double g = row_dot(w1 + n * H, xt, H) * s13[2 * e], u = row_dot(w1 + (It + n) * H, xt, H) * s13[2 * e + 1];
          h[n] = g / (1.0 + std::exp(-g)) * u;
        }
        for (int64_t n = 0; n < H; ++n) y[n] += wts[t * k + j] * s2[e] * row_dot(c2 + e * H * It + n * It, h.data(), It);
      }
      for (int64_t n = 0; n < H; ++n) out[t * out_stride + n] = static_cast<float>(y[n]);
    }
  }

  moeq_layer_geometry g_;
  DLDevice device_;
  const DLTensor* w13_ = nullptr;
  const DLTensor* w2_ = nullptr;
  const DLTensor* s13_ = nullptr;
  const DLTensor* s2_ = nullptr;
  tr::Kernel gate_up_, down_;
  bool ready_ = false;
};

struct Plugin {
  static int32_t probe(const moeq_probe_args& a, std::string& reason) {
    reason = decline_reason(a.quant_config_json, a.weight_dtype);
    if (!reason.empty()) return 0;
    reason = "compressed-tensors fp8 per-tensor weight-only, Triton kernels (example plugin, scores below the built-in)";
    return kScore;
  }
  static std::unique_ptr<moeq::sdk::Method> create(const moeq_method_create_args& a) {
    if (a.geometry == nullptr) fail("method_create: no geometry");
    if (std::string why = decline_reason(a.quant_config_json, a.weight_dtype); !why.empty())
      fail("example_triton cannot run this layer: " + why);
    return std::make_unique<Method>(*a.geometry, a.device);
  }
};

const char* const kSchemes[] = {"compressed-tensors fp8 per-tensor weight-only (w8a16): CPU loop, CUDA Triton kernels"};

const moeq_plugin_descriptor* descriptor() {
  static const moeq_plugin_descriptor d = {
      sizeof(moeq_plugin_descriptor),
      MOEQ_ABI_MAJOR,
      MOEQ_ABI_MINOR,
      0,  // min_host_minor: the CPU path needs nothing newer than 1.0; CUDA asks for 1.2 at method_create
      0,
      "example_triton",
      "1.0.0",
      kSchemes,
      sizeof(kSchemes) / sizeof(kSchemes[0]),
      nullptr,
      0,
      MOEQ_CAP_CPU_APPLY | MOEQ_CAP_CUDA_APPLY | MOEQ_CAP_GRAPH_CAPTURABLE,
      "moeq examples/triton_plugin: Triton kernels as PTX, built with moeq_add_plugin(PTX ...)",
      moeq::sdk::PluginApi<Plugin>::table(),
  };
  return &d;
}

}  // namespace example_triton

MOEQ_SDK_EXPORT_DESCRIPTOR(example_triton::descriptor())
