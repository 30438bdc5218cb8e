#include "expert_method.hpp"

#include "cpu_experts.hpp"
#include "gpu_experts.hpp"
#include "shard_grid.hpp"

#include <boost/json.hpp>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <sstream>
#include <thread>

namespace moeq::ct {
namespace {

const char* kPluginName = "compressed_tensors";

std::string num(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool is_scale_dtype(DType d) { return d == DType::BF16 || d == DType::F16 || d == DType::F32; }

class ExpertMethod final : public sdk::Method {
 public:
  ExpertMethod(const moeq_method_create_args& a, ExpertScheme scheme)
      : g_(*a.geometry), device_(a.device), s_(std::move(scheme)), layer_name_(a.layer_name ? a.layer_name : "") {
    if (device_.device_type != kDLCPU && device_.device_type != kDLCUDA)
      fail(MOEQ_STATUS_CODE_UNIMPLEMENTED, "compressed_tensors: apply runs on kDLCPU or kDLCUDA, not device type " +
                                               std::to_string(device_.device_type));
    if (g_.activation != MOEQ_ACTIVATION_SILU) fail("compressed_tensors: only the gated SiLU activation");
    if (g_.tp_size < 1 || g_.intermediate_size % g_.tp_size != 0 ||
        g_.intermediate_size_per_partition * g_.tp_size != g_.intermediate_size)
      fail("compressed_tensors: intermediate size " + std::to_string(g_.intermediate_size) + " does not split into " +
           std::to_string(g_.tp_size) + " shards of " + std::to_string(g_.intermediate_size_per_partition));
    if (s_.granularity == Granularity::kBlock) {
      const int64_t H = g_.hidden_size, I = g_.intermediate_size;
      g13_rows_ = shard_grid(I, s_.block_n, g_.tp_rank, g_.tp_size);
      g13_cols_ = shard_grid(H, s_.block_k, 0, 1);
      g2_rows_ = shard_grid(H, s_.block_n, 0, 1);
      g2_cols_ = shard_grid(I, s_.block_k, g_.tp_rank, g_.tp_size);
    }
    fill_layout();
    if (on_gpu()) {
      // The kernels' limits (scheme, shape, arch) fail here, at method_create, not at apply.
      if (s_.weights == WeightFormat::kFloat) ex_.weight_dtype = DType::BF16;  // cast on load
      gpu::LayerDims dims{g_.num_local_experts, g_.first_local_expert, g_.hidden_size,
                          g_.intermediate_size_per_partition, g_.top_k};
      try {
        gpu::MoePlan(gpu_scheme_of(ex_), dims, 16, device_limits(device_.device_id));
      } catch (const Error& e) {
        fail(e.code(), "compressed_tensors on cuda:" + std::to_string(device_.device_id) + ": " + e.what());
      }
      // The kernels depend on the scheme and the shape only: compile them (into the host's JIT
      // cache) while the layer's tensors are read, not after. process_after_loading joins.
      prefetch_ = std::thread(prefetch_kernels, device_.device_id, ex_, g_.top_k);
    }
  }

  ~ExpertMethod() override {
    if (prefetch_.joinable()) prefetch_.join();
  }

  bool on_gpu() const { return device_.device_type == kDLCUDA; }

  void create_weights(const sdk::Layer& layer) override {
    const int64_t E = g_.num_local_experts, H = g_.hidden_size, I = g_.intermediate_size_per_partition;
    // Unquantized F16/F32 experts are held as BF16 on the GPU (the host casts on load).
    w13_ = layer.create_param("w13_weight", {E, 2 * I, H}, ex_.weight_dtype);
    w2_ = layer.create_param("w2_weight", {E, H, I}, ex_.weight_dtype);
    switch (s_.granularity) {
      case Granularity::kNone: break;
      case Granularity::kTensor:
        s13_ = layer.create_param("w13_weight_scale", {E, 2}, DType::F32);  // [w1, w3] per expert
        s2_ = layer.create_param("w2_weight_scale", {E, 1}, DType::F32);
        break;
      case Granularity::kChannel:
        s13_ = layer.create_param("w13_weight_scale", {E, 2 * I, 1}, DType::F32);
        s2_ = layer.create_param("w2_weight_scale", {E, H, 1}, DType::F32);
        break;
      case Granularity::kBlock:
        s13_ = layer.create_param("w13_weight_scale", {E, 2 * g13_rows_.count, g13_cols_.count}, DType::F32);
        s2_ = layer.create_param("w2_weight_scale", {E, g2_rows_.count, g2_cols_.count}, DType::F32);
        break;
    }
    if (s_.static_inputs()) {
      // One parameter per projection, so that a missing input_scale is named by the ledger.
      in1_ = layer.create_param("w1_input_scale", {E}, DType::F32);
      in3_ = layer.create_param("w3_input_scale", {E}, DType::F32);
      in2_ = layer.create_param("w2_input_scale", {E}, DType::F32);
    }
  }

  bool load(const moeq_weight_loader_args& a, const sdk::Layer& layer, std::string& skip) override {
    const std::string suffix = a.suffix ? a.suffix : "";
    const std::string name = a.tensor_name ? a.tensor_name : "";
    const int32_t p = a.projection;
    if (p != MOEQ_PROJECTION_W1 && p != MOEQ_PROJECTION_W2 && p != MOEQ_PROJECTION_W3)
      fail(name + ": unknown projection " + std::to_string(p));
    if (a.local_expert < 0 || a.local_expert >= g_.num_local_experts)
      fail(name + ": local expert " + std::to_string(a.local_expert) + " out of range");
    const sdk::View src(*a.source);
    if (suffix == "weight") {
      load_weight(a, layer, src, name);
      return true;
    }
    if (suffix == "weight_scale" || suffix == "weight_scale_inv") {
      load_weight_scale(a, layer, src, name, suffix);
      return true;
    }
    if (suffix == "input_scale") {
      if (s_.static_inputs()) {
        load_input_scale(a, layer, src, name);
        return true;
      }
      skip = s_.act == ActMode::kNone ? "activations are not quantized by this scheme; input_scale is not used"
                                      : "activations are quantized dynamically (" + describe_activations(s_) +
                                            "); a static input_scale is not used";
      return false;
    }
    std::string expected = "weight";
    if (s_.granularity != Granularity::kNone) expected += ", weight_scale or weight_scale_inv";
    if (s_.static_inputs()) expected += ", input_scale";
    fail(name + ": unexpected tensor '" + suffix + "' for " + describe_weights(s_) + " experts (expected " + expected +
         ")");
  }

  void process_after_loading(const sdk::Layer&) override {
    const int64_t E = g_.num_local_experts;
    ex_.w13 = w13_->data;
    ex_.w2 = w2_->data;
    ex_.s13 = s13_ ? static_cast<const float*>(s13_->data) : nullptr;
    ex_.s2 = s2_ ? static_cast<const float*>(s2_->data) : nullptr;
    if (s_.static_inputs() && E > 0) reduce_static_input_scales();
    if (prefetch_.joinable()) prefetch_.join();
    if (on_gpu()) gpu_ = std::make_unique<GpuExperts>(device_.device_id, ex_, g_.top_k, layer_name_);
    ready_ = true;
  }

  void apply(const moeq_apply_args& a) override {
    if (!ready_) fail(MOEQ_STATUS_CODE_FAILED_PRECONDITION, "apply before process_after_loading");
    if (gpu_) return gpu_->apply(a);
    if (!a.x || !a.topk_ids || !a.topk_weights || !a.out) fail("apply: NULL tensor");
    cpu_apply(ex_, *a.x, *a.topk_ids, *a.topk_weights, *a.out);
  }

  void apply_info(moeq_apply_info_args& a) const override {
    if (!ready_) fail(MOEQ_STATUS_CODE_FAILED_PRECONDITION, "apply_info before process_after_loading");
    if (gpu_) return gpu_->apply_info(a);
    Method::apply_info(a);  // the CPU path: no workspace, any float activations, one pass
  }

  std::string describe() const override {
    namespace json = boost::json;
    json::object o;
    o["scheme"] = scheme_label();
    if (s_.config_kind == "compressed-tensors")
      o["config"] = s_.group_name.empty() ? "compressed-tensors"
                                          : "compressed-tensors group '" + s_.group_name + "'" +
                                                (s_.format.empty() ? "" : " (format " + s_.format + ")");
    else if (s_.config_kind == "fp8")
      o["config"] = "quant_method fp8 (DeepSeek/Qwen native)";
    else
      o["config"] = "none";
    if (!s_.unquantized_why.empty()) o["unquantized_because"] = s_.unquantized_why;
    o["weights"] = describe_weights(s_);
    o["granularity"] = granularity_text();
    json::array names, dtypes;
    for (const auto& n : seen_scale_names_) names.push_back(json::string(n));
    for (const auto& d : seen_scale_dtypes_) dtypes.push_back(json::string(d));
    o["scale_names"] = names;
    o["scale_dtypes"] = dtypes;
    o["activations"] = describe_activations(s_);
    if (s_.static_inputs() && ready_) o["static_input_scales"] = {{"a1", ex_.a1_static}, {"a2", ex_.a2_static}};
    if (g_.tp_size > 1) o["tp"] = tp_text();
    o["apply"] = gpu_ ? gpu_->describe() : on_gpu() ? "cuda:" + std::to_string(device_.device_id) : "cpu";
    o["params"] = params_text();
    return json::serialize(o);
  }

  void dequantize_expert(moeq_dequantize_expert_args& a) const override {
    if (!ready_) fail(MOEQ_STATUS_CODE_FAILED_PRECONDITION, "dequantize_expert before process_after_loading");
    if (a.w13 == nullptr || a.w2 == nullptr) fail("dequantize_expert: NULL output buffer");
    if (a.local_expert < 0 || a.local_expert >= g_.num_local_experts)
      fail("dequantize_expert: local expert " + std::to_string(a.local_expert) + " out of range [0, " +
           std::to_string(g_.num_local_experts) + ")");
    if (gpu_)
      gpu_->dequantize(a.local_expert, a.w13, a.w2);
    else
      cpu_dequantize(ex_, a.local_expert, a.w13, a.w2);
    int32_t kind = MOEQ_ACT_QUANT_NONE;
    switch (s_.act) {
      case ActMode::kNone: kind = MOEQ_ACT_QUANT_NONE; break;
      case ActMode::kStaticTensor: kind = MOEQ_ACT_QUANT_FP8_PER_TENSOR_STATIC; break;
      case ActMode::kDynamicTensor: kind = MOEQ_ACT_QUANT_FP8_PER_TENSOR_DYNAMIC; break;
      case ActMode::kDynamicToken: kind = MOEQ_ACT_QUANT_FP8_PER_TOKEN; break;
      case ActMode::kDynamicGroup: kind = MOEQ_ACT_QUANT_FP8_PER_GROUP; break;
    }
    a.a1_quant = kind;
    a.a2_quant = kind;
    a.group_size = s_.act == ActMode::kDynamicGroup ? s_.act_group : 0;
    a.a1_static_scale = ex_.a1_static;
    a.a2_static_scale = ex_.a2_static;
  }

 private:
  // The layer's layout in CpuExperts terms (everything but the data pointers and the static
  // input scales, which process_after_loading adds).
  void fill_layout() {
    ex_.weight_dtype = s_.weight_dtype();
    ex_.granularity = s_.granularity;
    if (s_.granularity == Granularity::kBlock) {
      ex_.r13_block = g13_rows_.refined;
      ex_.r13_count = g13_rows_.count;
      ex_.c13_block = g13_cols_.refined;
      ex_.c13_count = g13_cols_.count;
      ex_.r2_block = g2_rows_.refined;
      ex_.r2_count = g2_rows_.count;
      ex_.c2_block = g2_cols_.refined;
      ex_.c2_count = g2_cols_.count;
    }
    ex_.act = s_.act;
    ex_.act_group = s_.act_group;
    ex_.num_local = g_.num_local_experts;
    ex_.first_local = g_.first_local_expert;
    ex_.hidden = g_.hidden_size;
    ex_.intermediate = g_.intermediate_size_per_partition;
  }

  // --------------------------------------------------------------------------- loading
  void load_weight(const moeq_weight_loader_args& a, const sdk::Layer& layer, const sdk::View& src,
                   const std::string& name) {
    const int32_t p = a.projection;
    const int64_t le = a.local_expert, H = g_.hidden_size, I = g_.intermediate_size,
                  It = g_.intermediate_size_per_partition, r = g_.tp_rank;
    const bool w2 = p == MOEQ_PROJECTION_W2;
    const std::vector<int64_t> want = w2 ? std::vector<int64_t>{H, I} : std::vector<int64_t>{I, H};
    const DType dt = s_.weight_dtype();
    if (src.dtype() != dt || src.shape() != want)
      fail(name + ": expected " + dtype_name(dt) + " " + sdk::shape_string(want) + " for " +
           (w2 ? "w2" : p == MOEQ_PROJECTION_W1 ? "w1" : "w3") + ", found " + dtype_name(src.dtype()) + " " +
           sdk::shape_string(src.shape()) + " (" + sdk::projection_name(p) + " of expert " + std::to_string(a.global_expert) +
           ")");
    const sdk::View part = w2 ? src.narrow(1, r * It, It) : src.narrow(0, r * It, It);
    // NaN and infinity: the core refuses them before a plugin sees the tensor (every plugin,
    // once per tensor), naming the element.
    if (w2)
      layer.copy(w2_, {le, 0, 0}, part);
    else
      layer.copy(w13_, {le, p == MOEQ_PROJECTION_W1 ? 0 : It, 0}, part);
  }

  void load_weight_scale(const moeq_weight_loader_args& a, const sdk::Layer& layer, const sdk::View& src,
                         const std::string& name, const std::string& suffix) {
    const int32_t p = a.projection;
    const std::string who = sdk::projection_name(p) + std::string(" of expert ") + std::to_string(a.global_expert);
    if (s_.granularity == Granularity::kNone)
      fail(name + ": " + describe_weights(s_) + " experts carry no weight scale (" + s_.unquantized_why +
           "), found " + suffix);
    // The name never decides the math: both are the multiplier of the dequantization.
    auto [it, fresh] = scale_names_.emplace(std::make_pair(a.local_expert, p), std::make_pair(suffix, name));
    if (!fresh)
      fail(name + ": " + who + " carries both " + it->second.first + " (" + it->second.second + ") and " + suffix +
           "; both are the same multiplier, keep one");
    if (!is_scale_dtype(src.dtype()))
      fail(name + ": weight scale must be BF16, F16 or F32, found " + dtype_name(src.dtype()));
    seen_scale_names_.insert(suffix);
    seen_scale_dtypes_.insert(dtype_name(src.dtype()));
    switch (s_.granularity) {
      case Granularity::kTensor: return load_tensor_scale(a, layer, src, name, who, suffix);
      case Granularity::kChannel: return load_channel_scale(a, layer, src, name, who);
      case Granularity::kBlock: return load_block_scale(a, layer, src, name, who, suffix);
      case Granularity::kNone: break;
    }
  }

  void load_tensor_scale(const moeq_weight_loader_args& a, const sdk::Layer& layer, const sdk::View& src,
                         const std::string& name, const std::string& who, const std::string& suffix) {
    const int32_t p = a.projection;
    if (src.numel() != 1) {
      const int64_t n = p == MOEQ_PROJECTION_W2 ? g_.hidden_size : g_.intermediate_size;
      fail(name + ": per-tensor " + suffix + " of " + who + " must hold one value (shape [] or [1]), found shape " +
           sdk::shape_string(src.shape()) + " with " + std::to_string(src.numel()) + " elements" +
           (src.numel() == n ? " (one per output channel: the config says strategy tensor)" : ""));
    }
    const sdk::View one = src.reshaped({1});
    if (p == MOEQ_PROJECTION_W2)
      layer.copy(s2_, {a.local_expert, 0}, one, MOEQ_COPY_CHECK_SCALE);
    else
      layer.copy(s13_, {a.local_expert, p == MOEQ_PROJECTION_W1 ? 0 : 1}, one, MOEQ_COPY_CHECK_SCALE);
  }

  void load_channel_scale(const moeq_weight_loader_args& a, const sdk::Layer& layer, const sdk::View& src,
                          const std::string& name, const std::string& who) {
    const int32_t p = a.projection;
    const bool w2 = p == MOEQ_PROJECTION_W2;
    const int64_t le = a.local_expert, It = g_.intermediate_size_per_partition, r = g_.tp_rank;
    const int64_t n = w2 ? g_.hidden_size : g_.intermediate_size;
    sdk::View s = src;
    if (s.ndim() == 1 && s.size(0) == n) s = s.reshaped({n, 1});
    if (s.ndim() != 2 || s.size(0) != n || s.size(1) != 1)
      fail(name + ": expected a per-channel scale [" + std::to_string(n) + ", 1] or [" + std::to_string(n) +
           "] for " + who + ", found " + sdk::shape_string(src.shape()));
    if (w2)  // rows are H, not sharded
      layer.copy(s2_, {le, 0, 0}, s, MOEQ_COPY_CHECK_SCALE);
    else
      layer.copy(s13_, {le, a.projection == MOEQ_PROJECTION_W1 ? 0 : It, 0}, s.narrow(0, r * It, It),
                 MOEQ_COPY_CHECK_SCALE);
  }

  // The block size a grid of `rows` x `cols` would imply for weight n x k, if any (the
  // configured size along a dimension whose count it explains).
  std::string implied_block(int64_t n, int64_t k, int64_t rows, int64_t cols) const {
    if (rows <= 0 || cols <= 0) return "";
    const int64_t bn = cdiv(n, s_.block_n) == rows ? s_.block_n : cdiv(n, rows);
    const int64_t bk = cdiv(k, s_.block_k) == cols ? s_.block_k : cdiv(k, cols);
    if (cdiv(n, bn) != rows || cdiv(k, bk) != cols) return "";
    return " (that grid fits blocks of [" + std::to_string(bn) + ", " + std::to_string(bk) + "])";
  }

  void load_block_scale(const moeq_weight_loader_args& a, const sdk::Layer& layer, const sdk::View& src,
                        const std::string& name, const std::string& who, const std::string& suffix) {
    const int32_t p = a.projection;
    const bool w2 = p == MOEQ_PROJECTION_W2;
    const int64_t le = a.local_expert, H = g_.hidden_size, I = g_.intermediate_size;
    const int64_t n = w2 ? H : I, k = w2 ? I : H;
    const int64_t rows = cdiv(n, s_.block_n), cols = cdiv(k, s_.block_k);
    sdk::View s = src;
    // ModelOpt writes [rows, 1, cols, 1].
    if (s.ndim() == 4 && s.size(1) == 1 && s.size(3) == 1) s = s.reshaped({s.size(0), s.size(2)});
    if (s.ndim() != 2 || s.size(0) != rows || s.size(1) != cols)
      fail(name + ": " + suffix + " grid " + sdk::shape_string(src.shape()) + " of " + who + " does not match its [" +
           std::to_string(n) + ", " + std::to_string(k) + "] weight in blocks of [" + std::to_string(s_.block_n) +
           ", " + std::to_string(s_.block_k) + "] as the config says: expected [" + std::to_string(rows) + ", " +
           std::to_string(cols) + "] = [ceil(" + std::to_string(n) + "/" + std::to_string(s_.block_n) + "), ceil(" +
           std::to_string(k) + "/" + std::to_string(s_.block_k) + ")]" +
           (s.ndim() == 2 ? implied_block(n, k, s.size(0), s.size(1)) : ""));
    if (!w2) {
      // Rows are the sharded intermediate; columns (H) are whole.
      const ShardGrid& g = g13_rows_;
      const int64_t base = p == MOEQ_PROJECTION_W1 ? 0 : g.count;
      if (!g.is_refined()) {
        layer.copy(s13_, {le, base, 0}, s.narrow(0, g.start / g.block, g.count), MOEQ_COPY_CHECK_SCALE);
      } else {
        for (int64_t j = 0; j < g.count; ++j)
          layer.copy(s13_, {le, base + j, 0}, s.narrow(0, g.source_index(j), 1), MOEQ_COPY_CHECK_SCALE);
      }
    } else {
      // Rows (H) are whole; columns are the sharded intermediate.
      const ShardGrid& g = g2_cols_;
      if (!g.is_refined()) {
        layer.copy(s2_, {le, 0, 0}, s.narrow(1, g.start / g.block, g.count), MOEQ_COPY_CHECK_SCALE);
      } else {
        for (int64_t j = 0; j < g.count; ++j)
          layer.copy(s2_, {le, 0, j}, s.narrow(1, g.source_index(j), 1), MOEQ_COPY_CHECK_SCALE);
      }
    }
  }

  void load_input_scale(const moeq_weight_loader_args& a, const sdk::Layer& layer, const sdk::View& src,
                        const std::string& name) {
    const int32_t p = a.projection;
    if (src.numel() != 1)
      fail(name + ": static input_scale of " + sdk::projection_name(p) + " of expert " + std::to_string(a.global_expert) +
           " must hold one value (shape [] or [1]), found shape " + sdk::shape_string(src.shape()));
    if (!is_scale_dtype(src.dtype()))
      fail(name + ": input_scale must be BF16, F16 or F32, found " + dtype_name(src.dtype()));
    const DLTensor* param = p == MOEQ_PROJECTION_W1 ? in1_ : p == MOEQ_PROJECTION_W3 ? in3_ : in2_;
    layer.copy(param, {a.local_expert}, src.reshaped({1}), MOEQ_COPY_CHECK_SCALE);
  }

  // The first n floats of a parameter on the host: in place on the CPU, else read back into `buf`.
  const float* read_floats(const DLTensor* t, int64_t n, std::vector<float>& buf) const {
    if (!on_gpu()) return static_cast<const float*>(t->data);
    buf.resize(static_cast<size_t>(n));
    cu::read_device(device_.device_id, buf.data(), reinterpret_cast<uintptr_t>(t->data), buf.size() * 4,
                     "reading the static input scales back");
    return buf.data();
  }

  // x is quantized once per token before the experts, so GEMM1 needs one scale: the maximum
  // over w1/w3 and the local experts (vLLM does the same); GEMM2 likewise over the experts'
  // w2 input scales, which keeps one scale per layer for the reference too.
  void reduce_static_input_scales() {
    const int64_t E = g_.num_local_experts;
    std::vector<float> h1, h3, h2;
    const float* s1 = read_floats(in1_, E, h1);
    const float* s3 = read_floats(in3_, E, h3);
    const float* s2 = read_floats(in2_, E, h2);
    float a1 = 0.0f, a2 = 0.0f, lo1 = s1[0], lo2 = s2[0];
    int64_t differ = 0, first = -1;
    for (int64_t e = 0; e < E; ++e) {
      a1 = std::max({a1, s1[e], s3[e]});
      a2 = std::max(a2, s2[e]);
      lo1 = std::min({lo1, s1[e], s3[e]});
      lo2 = std::min(lo2, s2[e]);
      if (s1[e] != s3[e]) {
        ++differ;
        if (first < 0) first = e;
      }
    }
    ex_.a1_static = a1;
    ex_.a2_static = a2;
    const std::string layer = "layer " + layer_name_ + ": ";
    if (differ > 0) {
      sdk::host()->log(MOEQ_LOG_LEVEL_WARNING, kPluginName,
                       (layer + "static input_scale of w1 (gate_proj) and w3 (up_proj) differ for " +
                        std::to_string(differ) + " of " + std::to_string(E) + " experts (expert " +
                        std::to_string(g_.first_local_expert + first) + ": " + num(s1[first]) + " vs " +
                        num(s3[first]) + "); x is quantized once for both, with the maximum " + num(a1) +
                        " over w1/w3 and the experts; w2 uses the experts' maximum " + num(a2))
                           .c_str());
    } else if (lo1 != a1 || lo2 != a2) {
      sdk::host()->log(MOEQ_LOG_LEVEL_INFO, kPluginName,
                       (layer + "static input scales differ across experts (w1/w3 " + num(lo1) + ".." + num(a1) +
                        ", w2 " + num(lo2) + ".." + num(a2) + "); each GEMM uses the maximum")
                           .c_str());
    }
  }

  // -------------------------------------------------------------------------- describe
  std::string scheme_label() const {
    switch (s_.weights) {
      case WeightFormat::kFloat: return "unquantized";
      case WeightFormat::kInt8: return "int8 w8a16";
      case WeightFormat::kFp8: break;
    }
    return s_.act == ActMode::kNone ? "fp8 weight-only (w8a16)" : "fp8 w8a8";
  }

  std::string granularity_text() const {
    if (s_.granularity != Granularity::kBlock) return granularity_name(s_.granularity);
    return "block [" + std::to_string(s_.block_n) + ", " + std::to_string(s_.block_k) + "]";
  }

  std::string tp_text() const {
    std::string t = "tp rank " + std::to_string(g_.tp_rank) + " of " + std::to_string(g_.tp_size) + ": I " +
                    std::to_string(g_.intermediate_size) + " -> " + std::to_string(g_.intermediate_size_per_partition);
    if (s_.granularity == Granularity::kBlock && (g13_rows_.is_refined() || g2_cols_.is_refined()))
      t += "; shard not block-aligned, scale grid refined losslessly: w13 block rows " +
           std::to_string(g13_rows_.block) + " -> " + std::to_string(g13_rows_.refined) + ", w2 block columns " +
           std::to_string(g2_cols_.block) + " -> " + std::to_string(g2_cols_.refined);
    return t;
  }

  std::string params_text() const {
    const std::string dt = dtype_name(s_.weight_dtype());
    std::string t = "w13_weight [E,2I_tp,H] " + dt + ", w2_weight [E,H,I_tp] " + dt;
    switch (s_.granularity) {
      case Granularity::kNone: break;
      case Granularity::kTensor: t += ", w13_weight_scale [E,2] (w1, w3) f32, w2_weight_scale [E,1] f32"; break;
      case Granularity::kChannel: t += ", w13_weight_scale [E,2I_tp,1] f32, w2_weight_scale [E,H,1] f32"; break;
      case Granularity::kBlock:
        t += ", w13_weight_scale [E," + std::to_string(2 * g13_rows_.count) + "," + std::to_string(g13_cols_.count) +
             "] f32, w2_weight_scale [E," + std::to_string(g2_rows_.count) + "," + std::to_string(g2_cols_.count) +
             "] f32";
        break;
    }
    if (s_.static_inputs()) t += ", w1_input_scale [E], w3_input_scale [E], w2_input_scale [E] f32";
    return t;
  }

  moeq_layer_geometry g_;
  DLDevice device_;
  ExpertScheme s_;
  std::string layer_name_;
  ShardGrid g13_rows_, g13_cols_, g2_rows_, g2_cols_;
  const DLTensor* w13_ = nullptr;
  const DLTensor* w2_ = nullptr;
  const DLTensor* s13_ = nullptr;
  const DLTensor* s2_ = nullptr;
  const DLTensor* in1_ = nullptr;
  const DLTensor* in3_ = nullptr;
  const DLTensor* in2_ = nullptr;
  // (local expert, projection) -> (scale name, tensor) of the weight scale already loaded.
  std::map<std::pair<int64_t, int32_t>, std::pair<std::string, std::string>> scale_names_;
  std::set<std::string> seen_scale_names_;
  std::set<std::string> seen_scale_dtypes_;
  CpuExperts ex_;
  std::unique_ptr<GpuExperts> gpu_;
  std::thread prefetch_;  // compiles the CUDA kernels while the tensors load (joined before use)  // on kDLCUDA, after process_after_loading
  bool ready_ = false;
};

}  // namespace

std::unique_ptr<sdk::Method> make_expert_method(const moeq_method_create_args& a, ExpertScheme scheme) {
  return std::make_unique<ExpertMethod>(a, std::move(scheme));
}

}  // namespace moeq::ct
