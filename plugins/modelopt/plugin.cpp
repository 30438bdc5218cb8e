// modelopt plugin: recognizes NVIDIA ModelOpt checkpoints, translates their config into the
// equivalent compressed-tensors config, creates a compressed_tensors method through the host
// and forwards every call to it, normalizing tensors on their way in. One code path: no copy
// of the compressed-tensors logic lives here.
#include "mo_config.hpp"

#include <moeq/sdk/sdk.hpp>

#include <boost/json.hpp>

namespace moeq::mo {
namespace {

constexpr const char* kDelegate = "compressed_tensors";

class BridgeMethod final : public sdk::Method {
 public:
  BridgeMethod(const moeq_method_create_args& a, ModelOptConfig cfg)
      : cfg_(std::move(cfg)), ct_json_(to_compressed_tensors(cfg_)) {
    moeq_method_create_args ca = a;
    ca.quant_config_json = ct_json_.c_str();
    moeq_host_method_create_args h{};
    h.struct_size = sizeof(h);
    h.plugin_name = kDelegate;
    h.create_args = &ca;
    sdk::throw_if_error(sdk::host()->method_create(&h));
    api_ = h.api;
    method_ = ca.method;
  }
  ~BridgeMethod() override {
    if (api_ && method_) api_->method_destroy(method_);
  }

  void create_weights(const sdk::Layer& layer) override {
    moeq_create_weights_args a{sizeof(a), method_, layer.handle()};
    sdk::throw_if_error(api_->create_weights(&a));
  }

  bool load(const moeq_weight_loader_args& in, const sdk::Layer&, std::string& skip) override {
    const std::string suffix = in.suffix;
    sdk::View src(*in.source);
    if (suffix == "weight_scale") src = normalize_weight_scale(in.tensor_name, src);
    if (suffix == "input_scale" && cfg_.algo != Algo::kFp8) {
      skip = std::string("ModelOpt ") + algo_name(cfg_.algo) + " quantizes activations dynamically; input_scale is not used";
      return false;
    }
    moeq_weight_loader_args a = in;
    a.method = method_;
    a.source = src.dl();
    sdk::throw_if_error(api_->weight_loader(&a));
    if (a.skipped) skip = a.skip_reason ? a.skip_reason : "skipped by compressed_tensors";
    return a.skipped == 0;
  }

  void process_after_loading(const sdk::Layer& layer) override {
    moeq_process_after_loading_args a{sizeof(a), method_, layer.handle()};
    sdk::throw_if_error(api_->process_after_loading(&a));
  }

  void apply(const moeq_apply_args& in) override {
    moeq_apply_args a = in;
    a.method = method_;
    sdk::throw_if_error(api_->apply(&a));
  }

  std::string describe() const override {
    boost::json::object o;
    o["bridge"] = "modelopt → compressed_tensors";
    o["quant_algo"] = cfg_.quant_algo;
    o["config_source"] = cfg_.source;
    o["kv_cache_quant_algo"] = cfg_.kv_cache_quant_algo;
    o["translated_config"] = boost::json::parse(ct_json_);
    if (api_->struct_size >= MOEQ_STRUCT_SIZE(moeq_plugin_api, describe) && api_->describe) {
      std::string buf(8192, '\0');
      moeq_describe_args d{sizeof(d), method_, buf.data(), buf.size()};
      sdk::throw_if_error(api_->describe(&d));
      try {
        o["delegate"] = boost::json::parse(buf.c_str());
      } catch (const std::exception&) {
        o["delegate"] = buf.c_str();
      }
    }
    return boost::json::serialize(o);
  }

  void dequantize_expert(moeq_dequantize_expert_args& in) const override {
    if (api_->struct_size < MOEQ_STRUCT_SIZE(moeq_plugin_api, dequantize_expert) || !api_->dequantize_expert)
      fail(MOEQ_STATUS_CODE_UNIMPLEMENTED, "compressed_tensors exposes no dequantized weights");
    moeq_dequantize_expert_args a = in;
    a.method = method_;
    sdk::throw_if_error(api_->dequantize_expert(&a));
    in.a1_quant = a.a1_quant;
    in.a2_quant = a.a2_quant;
    in.group_size = a.group_size;
    in.a1_static_scale = a.a1_static_scale;
    in.a2_static_scale = a.a2_static_scale;
  }

 private:
  // ModelOpt scale shapes to the compressed-tensors ones: per-tensor 0-D stays; per-channel
  // [N] -> [N, 1]; block [nb_out, 1, nb_in, 1] -> [nb_out, nb_in].
  sdk::View normalize_weight_scale(const char* name, const sdk::View& s) const {
    switch (cfg_.algo) {
      case Algo::kFp8:
        return s;  // compressed_tensors checks that it is one element
      case Algo::kFp8PerChannelPerToken:
        return s.ndim() == 1 ? s.reshaped({s.size(0), 1}) : s;
      case Algo::kFp8BlockWeightOnly:
        // A one-block grid can arrive squeezed to 0-D (seen from ModelOpt 0.47 on a 128x128
        // down_proj); compressed_tensors checks it against the weight's grid.
        if (s.numel() == 1 && s.ndim() <= 1) return s.reshaped({1, 1});
        if (s.ndim() == 4) {
          if (s.size(1) != 1 || s.size(3) != 1)
            fail(std::string(name) + ": ModelOpt block scale must be [nb_out, 1, nb_in, 1], found " +
                 sdk::shape_string(s.shape()));
          return s.reshaped({s.size(0), s.size(2)});
        }
        return s;
    }
    return s;
  }

  ModelOptConfig cfg_;
  std::string ct_json_;
  const moeq_plugin_api* api_ = nullptr;
  moeq_method* method_ = nullptr;
};

struct Plugin {
  static int32_t probe(const moeq_probe_args& a, std::string& reason) {
    ModelOptConfig c;
    try {
      c = parse_modelopt(a.quant_config_json ? a.quant_config_json : "null",
                         a.quant_config_source ? a.quant_config_source : "none");
    } catch (const Error& e) {
      reason = e.what();
      return 0;
    }
    reason = std::string("ModelOpt ") + algo_name(c.algo) + " from " + c.source + " → compressed_tensors";
    return 20;
  }
  static std::unique_ptr<sdk::Method> create(const moeq_method_create_args& a) {
    ModelOptConfig c = parse_modelopt(a.quant_config_json ? a.quant_config_json : "null", source_of(a));
    return std::make_unique<BridgeMethod>(a, std::move(c));
  }
  // method_create carries no source field: a config with a top-level "quantization" object is
  // the hf_quant_config.json form.
  static std::string source_of(const moeq_method_create_args& a) {
    try {
      boost::json::value v = boost::json::parse(a.quant_config_json ? a.quant_config_json : "null");
      if (v.is_object() && v.as_object().contains("quantization")) return "hf_quant_config.json";
    } catch (const std::exception&) {
    }
    return "config.json";
  }
};

const char* const kSchemes[] = {"modelopt FP8 (per-tensor, static activations)",
                                "modelopt FP8_PER_CHANNEL_PER_TOKEN", "modelopt FP8_PB_WO (128x128 blocks)"};
const char* const kRequires[] = {kDelegate};

const moeq_plugin_descriptor* descriptor() {
  static const moeq_plugin_descriptor d = {
      sizeof(moeq_plugin_descriptor), MOEQ_ABI_MAJOR, MOEQ_ABI_MINOR, 0, 0, "modelopt", "0.2.0", kSchemes, 3,
      kRequires, 1, MOEQ_CAP_CPU_APPLY | MOEQ_CAP_DELEGATES, "moeq built-in, bridge to compressed_tensors",
      sdk::PluginApi<Plugin>::table()};
  return &d;
}

}  // namespace
}  // namespace moeq::mo

MOEQ_SDK_EXPORT_DESCRIPTOR(moeq::mo::descriptor())
