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

class BridgeMethod final : public sdk::DelegatingMethod {
 public:
  BridgeMethod(const moeq_method_create_args& a, ModelOptConfig cfg, std::string ct_json)
      : DelegatingMethod(a, kDelegate, ct_json, nullptr), cfg_(std::move(cfg)), ct_json_(std::move(ct_json)) {}

  bool load(const moeq_weight_loader_args& in, const sdk::Layer&, std::string& skip) override {
    const std::string suffix = in.suffix;
    sdk::View src(*in.source);
    if (suffix == "weight_scale") src = normalize_weight_scale(in.tensor_name, src);
    if (suffix == "input_scale" && cfg_.algo != Algo::kFp8) {
      skip = std::string("ModelOpt ") + algo_name(cfg_.algo) + " quantizes activations dynamically; input_scale is not used";
      return false;
    }
    return forward_load(in, src.dl(), in.suffix, skip);
  }

  std::string describe() const override {
    boost::json::object o;
    o["bridge"] = "modelopt → compressed_tensors";
    o["quant_algo"] = cfg_.quant_algo;
    o["config_source"] = cfg_.source;
    o["kv_cache_quant_algo"] = cfg_.kv_cache_quant_algo;
    o["translated_config"] = boost::json::parse(ct_json_);
    if (const std::string d = delegate_describe(); !d.empty()) {
      try {
        o["delegate"] = boost::json::parse(d);
      } catch (const std::exception&) {
        o["delegate"] = d;
      }
    }
    return boost::json::serialize(o);
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
    std::string ct = to_compressed_tensors(c);
    return std::make_unique<BridgeMethod>(a, std::move(c), std::move(ct));
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
      kRequires, 1, MOEQ_CAP_CPU_APPLY | MOEQ_CAP_CUDA_APPLY | MOEQ_CAP_GRAPH_CAPTURABLE | MOEQ_CAP_DELEGATES, "moeq built-in, bridge to compressed_tensors",
      sdk::PluginApi<Plugin>::table()};
  return &d;
}

}  // namespace
}  // namespace moeq::mo

MOEQ_SDK_EXPORT_DESCRIPTOR(moeq::mo::descriptor())
