// Fuzz target: a config.json (or hf_quant_config.json) text through the core's strict JSON
// parser, the MoE geometry reader, the quantization-config selection, and then every plugin's
// probe and method_create through the registry and the C ABI: the stable entry point of the
// plugins' own config parsing (compressed-tensors, ModelOpt, online quantization), whatever
// their files look like inside. The plugins are this build's, instrumented like the core.
#include "fuzz_check.hpp"
#include "fuzz_plugins.hpp"

#include <moeq/checkpoint.hpp>
#include <moeq/error.hpp>
#include <moeq/host.hpp>
#include <moeq/model_config.hpp>
#include <moeq/registry.hpp>

#include <array>
#include <cstring>
#include <optional>
#include <string>

namespace {

namespace json = boost::json;

const moeq::Registry& registry() { return moeq::fuzz::plugin_registry(); }

void drop(moeq_status* status) {
  if (status == nullptr) return;
  FUZZ_CHECK(moeq::host::api()->status_message(status) != nullptr);
  moeq::host::api()->status_destroy(status);
}

// Small, valid geometry: the config's own sizes when they are modest, else a default, so that
// the plugin's divisibility and shape checks see the fuzzed numbers without huge allocations.
moeq_layer_geometry geometry_of(const std::optional<moeq::MoeConfig>& cfg) {
  moeq_layer_geometry g{};
  g.struct_size = sizeof(g);
  g.num_experts = 4;
  g.hidden_size = 64;
  g.intermediate_size = 32;
  g.top_k = 2;
  if (cfg && cfg->num_experts <= 256 && cfg->hidden_size <= 8192 && cfg->intermediate_size <= 8192) {
    g.num_experts = cfg->num_experts;
    g.hidden_size = cfg->hidden_size;
    g.intermediate_size = cfg->intermediate_size;
    g.top_k = cfg->top_k;
  }
  g.num_local_experts = g.num_experts;
  g.first_local_expert = 0;
  g.intermediate_size_per_partition = g.intermediate_size;
  g.tp_rank = 0;
  g.tp_size = 1;
  g.ep_rank = 0;
  g.ep_size = 1;
  g.activation = MOEQ_ACTIVATION_SILU;
  return g;
}

void probe_and_create(const moeq::QuantConfigSource& q, const moeq_layer_geometry& g) {
  static const char* const kLayers[] = {"model.layers.0.mlp.experts", "model.layers.1.block_sparse_moe.input_linear"};
  static const char* const kDtypes[] = {"F8_E4M3", "BF16", "I8"};
  for (const auto& plugin : registry().plugins()) {
    const moeq_plugin_api& api = *plugin->api;
    for (const char* layer : kLayers) {
      for (const char* dtype : kDtypes) {
        std::array<char, 512> reason;
        reason.fill('\x7f');
        moeq_probe_args a{};
        a.struct_size = MOEQ_STRUCT_SIZE(moeq_probe_args, reason_capacity);
        a.quant_config_json = q.json.c_str();
        a.quant_config_source = q.source.c_str();
        a.layer_name = layer;
        a.weight_dtype = dtype;
        a.reason = reason.data();
        a.reason_capacity = reason.size();
        if (moeq_status* st = api.probe(&a)) {
          drop(st);
          continue;
        }
        FUZZ_CHECK(std::memchr(reason.data(), '\0', reason.size()) != nullptr);  // terminated
        FUZZ_CHECK(a.score >= 0);
        if (a.score == 0) continue;
        moeq_method_create_args m{};
        m.struct_size = sizeof(m);
        m.quant_config_json = q.json.c_str();
        m.layer_name = layer;
        m.weight_dtype = dtype;
        m.geometry = &g;
        m.device = {kDLCPU, 0};
        if (moeq_status* cs = api.method_create(&m)) {
          drop(cs);
          continue;
        }
        FUZZ_CHECK(m.method != nullptr);
        api.method_destroy(m.method);
      }
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  registry();
  return 0;
}

#ifdef MOEQ_FUZZ_REGEX
// fuzz_config_regex: the input is two patterns, "<target>\n<ignore>", put into a valid
// compressed-tensors config as `re:` entries, so that every input reaches the regex matching
// (the JSON target above rarely builds a well-formed config around a hostile pattern). RE2 must
// compile or refuse each one and match in linear time (libFuzzer's -timeout catches a stall).
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const int64_t statuses_before = moeq::host::live_statuses();
  const std::string text(moeq::fuzz::text_of(data, size));
  const std::size_t cut = text.find('\n');
  const std::string target = text.substr(0, cut), ignore = cut == std::string::npos ? "" : text.substr(cut + 1);
  json::object weights{{"num_bits", 8}, {"type", "float"}, {"symmetric", true}, {"strategy", "channel"},
                       {"dynamic", false}};
  json::object acts{{"num_bits", 8}, {"type", "float"}, {"symmetric", true}, {"strategy", "token"}, {"dynamic", true}};
  json::object group{{"targets", json::array{json::string("re:" + target)}}, {"weights", weights},
                     {"input_activations", acts}};
  json::object q{{"quant_method", "compressed-tensors"}, {"format", "float-quantized"},
                 {"config_groups", json::object{{"group_0", group}}},
                 {"ignore", json::array{"lm_head", json::string("re:" + ignore)}}};
  json::object cfg{{"quantization_config", q}};
  probe_and_create(moeq::select_quant_config(cfg, nullptr), geometry_of(std::nullopt));
  FUZZ_CHECK(moeq::host::live_statuses() == statuses_before);
  return 0;
}
#else
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const int64_t statuses_before = moeq::host::live_statuses();
  json::value root;
  try {
    root = moeq::parse_json_strict(moeq::fuzz::text_of(data, size), "fuzz config.json");
  } catch (const moeq::Error&) {
    return 0;
  }
  std::optional<moeq::MoeConfig> cfg;
  const json::object empty;
  const json::object* object = root.if_object();
  if (object != nullptr) {
    try {
      cfg = moeq::parse_moe_config(*object, "config.json");
      FUZZ_CHECK(cfg->num_experts > 0 && cfg->hidden_size > 0 && cfg->intermediate_size > 0);
      FUZZ_CHECK(cfg->top_k > 0 && cfg->top_k <= cfg->num_experts);
    } catch (const moeq::Error&) {
    }
  }
  const moeq_layer_geometry g = geometry_of(cfg);
  // As config.json (its quantization_config), and as hf_quant_config.json (the whole text).
  probe_and_create(moeq::select_quant_config(object ? *object : empty, nullptr), g);
  if (object != nullptr) probe_and_create(moeq::select_quant_config(empty, object), g);
  else probe_and_create({json::serialize(root), "hf_quant_config.json"}, g);
  FUZZ_CHECK(moeq::host::live_statuses() == statuses_before);
  return 0;
}
#endif
