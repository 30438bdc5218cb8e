// online_quant plugin: bf16/fp16/fp32 expert weights quantized as they arrive, one expert
// projection at a time, by one shared loader and a small per-scheme interface. The quantized
// layout is handed to a compressed_tensors method (created through the host), which runs it.
// Scales come from the full, unsharded checkpoint rows the host hands over, so the result is
// the same whatever the TP degree; compressed_tensors narrows to the shard.
#include "device_quantizer.hpp"
#include "online_scheme.hpp"

#include <moeq/sdk/sdk.hpp>

#include <boost/json.hpp>

#include <algorithm>
#include <cmath>

namespace moeq::online {
namespace {
namespace json = boost::json;

constexpr const char* kDelegate = "compressed_tensors";
constexpr const char* kQuantMethod = "moeq-online";

// The user's choice arrives as the effective quantization config {"quant_method":
// "moeq-online", "scheme": NAME} (the host puts it there for `--online NAME`).
std::string scheme_of(const char* config_json) {
  json::value v;
  try {
    v = json::parse(config_json ? config_json : "null");
  } catch (const std::exception&) {
    fail("quantization config is not valid JSON");
  }
  const json::object* o = v.if_object();
  const json::value* m = o ? o->if_contains("quant_method") : nullptr;
  if (!m || !m->is_string() || m->as_string() != kQuantMethod)
    fail("online quantization is chosen by the user (moeq --online SCHEME, or LoadOptions::online_scheme); "
         "this checkpoint's own config is used instead");
  const json::value* s = o->if_contains("scheme");
  const std::string name = (s && s->is_string()) ? std::string(s->as_string()) : "";
  if (!make_scheme(name)) fail("unknown online scheme '" + name + "' (known: " + scheme_names() + ")");
  return name;
}

bool float_dtype(const std::string& dt) { return dt == "BF16" || dt == "F16" || dt == "F32"; }

class OnlineMethod final : public sdk::DelegatingMethod {
 public:
  OnlineMethod(const moeq_method_create_args& a, std::unique_ptr<Scheme> scheme)
      : DelegatingMethod(a, kDelegate, scheme->ct_config_json(), dtype_name(scheme->quantized_dtype())),
        scheme_(std::move(scheme)),
        source_dtype_(a.weight_dtype),
        hidden_(a.geometry->hidden_size),
        intermediate_(a.geometry->intermediate_size) {
    // On a CUDA layer the projections are quantized on the device when the host takes device
    // sources in copy_to_param (ABI 1.1) and lends scratch (1.2); otherwise on the CPU.
    if (a.device.device_type == kDLCUDA && sdk::host()->abi_minor >= 2)
      device_ = std::make_unique<DeviceQuantizer>(a.device.device_id, scheme_->name());
  }

  bool load(const moeq_weight_loader_args& in, const sdk::Layer&, std::string&) override {
    const std::string suffix = in.suffix;
    const std::string name = in.tensor_name;
    if (suffix != "weight")
      fail(name + ": online quantization takes unquantized expert weights only, found '" + suffix + "'");
    sdk::View src(*in.source);
    if (src.ndim() != 2 || !is_float(src.dtype()) || src.dtype() == DType::F8_E4M3)
      fail(name + ": expected a BF16/F16/F32 2-D expert weight, found " + std::string(dtype_name(src.dtype())) + " " +
           sdk::shape_string(src.shape()));
    const int64_t rows = src.size(0), cols = src.size(1);
    // Quantized before TP narrowing, so each piece holds the full, unsharded rows of one
    // projection; checked here, where the message can still name the checkpoint's dtype.
    const bool down = in.projection == MOEQ_PROJECTION_W2;
    const int64_t want_rows = down ? hidden_ : intermediate_, want_cols = down ? intermediate_ : hidden_;
    if (rows != want_rows || cols != want_cols)
      fail(MOEQ_STATUS_CODE_INVALID_ARGUMENT,
           name + ": " + where(in) + ": expected " + dtype_name(src.dtype()) + " " +
               sdk::shape_string({want_rows, want_cols}) + " (" + (down ? "H x I" : "I x H") +
               ", the full unsharded projection), found " + dtype_name(src.dtype()) + " " + sdk::shape_string(src.shape()));
    if (device_) {
      const DeviceQuantizer::Result q = device_->quantize(*in.source, in.layer);
      if (q.non_finite_at >= 0) non_finite(in, q.non_finite_at, cols, q.non_finite_value);
      const DLDevice dev{kDLCUDA, device_->ordinal()};
      forward(in, "weight", make_view(const_cast<void*>(q.codes), scheme_->quantized_dtype(), {rows, cols}, dev));
      forward(in, "weight_scale", make_view(const_cast<float*>(q.scales), DType::F32, q.scale_shape, dev));
      return true;
    }
    // NOTE: one projection of one expert in float at a time, reused buffers: the whole layer is
    // never held in high precision.
    rows_.resize(static_cast<size_t>(rows * cols));
    // NOTE: no NaN/inf pass here: the host refused such a weight before weight_loader (the
    // device path's report comes free with its quantization kernel).
    src.read_floats(rows_.data());
    scheme_->quantize(rows_, rows, cols, q_);
    forward(in, "weight", make_view(q_.codes.data(), scheme_->quantized_dtype(), {rows, cols}));
    forward(in, "weight_scale", make_view(q_.scales.data(), DType::F32, q_.scale_shape));
    return true;
  }

  void process_after_loading(const sdk::Layer& layer) override {
    DelegatingMethod::process_after_loading(layer);
    rows_ = {};
    q_ = {};
  }

  std::string describe() const override {
    json::object o{{"online", scheme_->name()}, {"source_dtype", source_dtype_}, {"quantization", scheme_->formula()},
                   {"rel_l2_tolerance", scheme_->rel_l2_tolerance()}, {"runs_as", json::parse(scheme_->ct_config_json())},
                   {"quantized_on", device_ ? "cuda:" + std::to_string(device_->ordinal()) : std::string("cpu")}};
    if (const std::string d = delegate_describe(); !d.empty()) {
      try {
        o["delegate"] = json::parse(d);
      } catch (const std::exception&) {
        o["delegate"] = d;
      }
    }
    return json::serialize(o);
  }

 private:
  struct OwnedView {
    std::vector<int64_t> shape, strides;
    DLTensor t{};
  };
  static OwnedView make_view(void* data, DType dt, std::vector<int64_t> shape, DLDevice device = {kDLCPU, 0}) {
    OwnedView v;
    v.shape = std::move(shape);
    v.strides.assign(v.shape.size(), 1);
    for (int d = static_cast<int>(v.shape.size()) - 2; d >= 0; --d) v.strides[d] = v.strides[d + 1] * v.shape[d + 1];
    v.t.data = data;
    v.t.device = device;
    v.t.ndim = static_cast<int32_t>(v.shape.size());
    v.t.dtype = to_dl(dt);
    return v;
  }
  void forward(const moeq_weight_loader_args& in, const char* suffix, OwnedView v) {
    v.t.shape = v.shape.data();
    v.t.strides = v.strides.data();
    std::string reason;
    if (!forward_load(in, &v.t, suffix, reason))
      fail(std::string(in.tensor_name) + ": compressed_tensors skipped the quantized " + suffix + ": " + reason);
  }

  // "w3 (up_proj) of expert 2": which piece of the tensor a message is about.
  static std::string where(const moeq_weight_loader_args& in) {
    return std::string(sdk::projection_name(in.projection)) + " of expert " + std::to_string(in.global_expert);
  }

  // A NaN or infinity would make its row's (or block's, or projection's) scale meaningless and
  // its codes undefined: an error naming where, never quantized. [r, c] counts within this
  // expert's projection (a fused tensor's piece), which the message names too.
  [[noreturn]] static void non_finite(const moeq_weight_loader_args& in, int64_t index, int64_t cols, float value) {
    fail(MOEQ_STATUS_CODE_INVALID_ARGUMENT,
         std::string(in.tensor_name) + ": " + where(in) + ", element [" + std::to_string(index / cols) + ", " +
             std::to_string(index % cols) + "] is " + (std::isnan(value) ? "NaN" : value > 0 ? "+inf" : "-inf") +
             "; online quantization needs finite weights (expected a finite value, found a non-finite one)");
  }

  std::unique_ptr<Scheme> scheme_;
  std::string source_dtype_;
  int64_t hidden_, intermediate_;  // H and the full I, as in the checkpoint
  std::vector<float> rows_;
  QuantizedProjection q_;
  std::unique_ptr<DeviceQuantizer> device_;  // a CUDA layer on a 1.2 host
};

struct Plugin {
  static int32_t probe(const moeq_probe_args& a, std::string& reason) {
    std::string scheme;
    try {
      scheme = scheme_of(a.quant_config_json);
    } catch (const Error& e) {
      reason = e.what();
      return 0;
    }
    const std::string dt = a.weight_dtype ? a.weight_dtype : "";
    if (!float_dtype(dt)) {
      reason = "online quantization takes unquantized experts; these are " + dt;
      return 0;
    }
    reason = "online " + scheme + " from " + dt + " experts, run by compressed_tensors";
    return 30;
  }
  static std::unique_ptr<sdk::Method> create(const moeq_method_create_args& a) {
    if (a.geometry == nullptr) fail("method_create: NULL geometry");
    if (!float_dtype(a.weight_dtype ? a.weight_dtype : ""))
      fail(std::string("online quantization takes unquantized experts; these are ") + (a.weight_dtype ? a.weight_dtype : "?"));
    return std::make_unique<OnlineMethod>(a, make_scheme(scheme_of(a.quant_config_json)));
  }
};

const char* const kSchemes[] = {"online int8 W8A16 per channel", "online fp8 per tensor", "online fp8 per channel",
                                "online fp8 128x128 block"};
const char* const kRequires[] = {kDelegate};

const moeq_plugin_descriptor* descriptor() {
  static const moeq_plugin_descriptor d = {
      sizeof(moeq_plugin_descriptor), MOEQ_ABI_MAJOR, MOEQ_ABI_MINOR, 0, 0, "online_quant", "0.4.0", kSchemes, 4,
      kRequires, 1, MOEQ_CAP_CPU_APPLY | MOEQ_CAP_CUDA_APPLY | MOEQ_CAP_GRAPH_CAPTURABLE | MOEQ_CAP_DELEGATES, "moeq built-in, quantizes on load, runs through compressed_tensors",
      sdk::PluginApi<Plugin>::table()};
  return &d;
}

}  // namespace
}  // namespace moeq::online

MOEQ_SDK_EXPORT_DESCRIPTOR(moeq::online::descriptor())
