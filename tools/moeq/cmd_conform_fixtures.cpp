#include "cmd_conform_fixtures.hpp"

#include <moeq/error.hpp>
#include <moeq/expert_name_router.hpp>
#include <moeq/loader.hpp>
#include <moeq_writer/safetensors_writer.hpp>
#include <moeq_writer/writer_util.hpp>

#include <boost/json.hpp>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>

namespace moeq::cli::conform {
namespace fs = std::filesystem;
namespace json = boost::json;

writer::MoeSpec fixture_spec(writer::Layout layout) {
  writer::MoeSpec s;
  s.layout = layout;
  s.num_layers = 1;
  s.num_experts = 4;
  s.hidden = 48;
  s.intermediate = 32;
  s.top_k = 2;
  s.seed = 20240611;
  return s;
}

namespace {

// One scale for the whole tensor: s = bf16(amax / 448), q = fp8(w / s).
float quantize_fp8_tensor(const std::vector<float>& w, std::vector<std::byte>& codes, float* dequantized) {
  float amax = 0.0f;
  for (float x : w) amax = std::max(amax, std::fabs(x));
  float s = bf16_to_float(float_to_bf16(amax / kFp8E4M3Max));
  if (s <= 0.0f) s = 1.0f;
  codes.resize(w.size());
  for (size_t i = 0; i < w.size(); ++i) {
    const uint8_t q = float_to_fp8_e4m3(std::clamp(w[i] / s, -kFp8E4M3Max, kFp8E4M3Max));
    codes[i] = std::byte{q};
    dequantized[i] = fp8_e4m3_to_float(q) * s;
  }
  return s;
}

}  // namespace

writer::WrittenCheckpoint write_ct_fp8_tensor_weight_only(const fs::path& dir, const writer::MoeSpec& spec) {
  if (spec.layout != writer::Layout::kPerExpert) fail("conform fixture: fp8 tensor weight-only is per-expert only");
  fs::create_directories(dir);
  const int64_t E = spec.num_experts, H = spec.hidden, I = spec.intermediate, V = 64;
  writer::WrittenCheckpoint out;
  out.dir = dir;
  out.spec = spec;
  writer::SafetensorsWriter st;
  std::mt19937_64 rng(spec.seed);
  st.add_float("model.embed_tokens.weight", DType::BF16, {V, H}, writer::randn_bf16(rng, V * H, 0.02f));
  st.add_float("lm_head.weight", DType::BF16, {V, H}, writer::randn_bf16(rng, V * H, 0.02f));
  for (int l = 0; l < spec.num_layers; ++l) {
    const std::string prefix = "model.layers." + std::to_string(l) + ".mlp";
    writer::LayerMasters m;
    m.prefix = prefix;
    ref::ExpertWeights& d = m.dequantized;
    d.num_experts = E;
    d.hidden = H;
    d.intermediate = I;
    d.w13.resize(static_cast<size_t>(E * 2 * I * H));
    d.w2.resize(static_cast<size_t>(E * H * I));
    m.router = writer::randn_bf16(rng, E * H, 1.0f / std::sqrt(static_cast<float>(H)));
    st.add_float(prefix + ".gate.weight", DType::BF16, {E, H}, m.router);
    for (int64_t e = 0; e < E; ++e) {
      const std::string ep = prefix + ".experts." + std::to_string(e);
      struct Proj {
        const char* name;
        int64_t rows, cols;
        float* deq;
      };
      const Proj projs[] = {{"gate_proj", I, H, d.w13.data() + e * 2 * I * H},
                            {"up_proj", I, H, d.w13.data() + e * 2 * I * H + I * H},
                            {"down_proj", H, I, d.w2.data() + e * H * I}};
      for (const Proj& p : projs) {
        std::vector<std::byte> codes;
        const float s = quantize_fp8_tensor(writer::randn_bf16(rng, p.rows * p.cols, spec.weight_std), codes, p.deq);
        st.add(ep + "." + p.name + ".weight", DType::F8_E4M3, {p.rows, p.cols}, std::move(codes));
        st.add_float(ep + "." + p.name + ".weight_scale", DType::BF16, {1}, {s});
      }
    }
    out.layers.push_back(std::move(m));
  }
  st.set_metadata("format", "pt");
  st.write(dir / "model.safetensors");
  out.tensor_names = st.names();

  json::object weights{{"actorder", nullptr}, {"block_structure", nullptr}, {"dynamic", false},
                       {"group_size", nullptr}, {"num_bits", 8},           {"observer", "minmax"},
                       {"observer_kwargs", json::object{}}, {"strategy", "tensor"}, {"symmetric", true},
                       {"type", "float"}};
  json::object group{{"format", "float-quantized"}, {"input_activations", nullptr}, {"output_activations", nullptr},
                     {"targets", json::array{"Linear"}}, {"weights", weights}};
  json::object quant{{"config_groups", json::object{{"group_0", group}}},
                     {"format", "float-quantized"},
                     {"ignore", json::array{"lm_head", "re:.*mlp.gate$"}},
                     {"kv_cache_scheme", nullptr},
                     {"quant_method", "compressed-tensors"},
                     {"quantization_status", "compressed"},
                     {"sparsity_config", json::object{}},
                     {"version", "0.18.0"}};
  json::object cfg{{"architectures", json::array{"Qwen3MoeForCausalLM"}},
                   {"model_type", "qwen3_moe"},
                   {"num_experts", E},
                   {"moe_intermediate_size", I},
                   {"intermediate_size", 4 * I},
                   {"hidden_size", H},
                   {"num_experts_per_tok", spec.top_k},
                   {"norm_topk_prob", true},
                   {"decoder_sparse_step", 1},
                   {"num_hidden_layers", spec.num_layers},
                   {"vocab_size", V},
                   {"torch_dtype", "bfloat16"},
                   {"quantization_config", quant}};
  writer::write_text_file(dir / "config.json", json::serialize(cfg));
  return out;
}

namespace {

Fixture from_written(std::string name, writer::WrittenCheckpoint w, ref::ActQuant act) {
  Fixture f;
  f.name = std::move(name);
  f.dir = w.dir;
  f.writer_made = true;
  f.masters = std::move(w.layers);
  f.masters_act.a1.kind = act;
  f.masters_act.a2.kind = act;
  return f;
}

}  // namespace

std::vector<Fixture> generate_fixtures(const fs::path& root, const std::string& online_scheme) {
  using writer::Layout;
  std::vector<Fixture> out;
  if (!online_scheme.empty()) {
    // The float reference of the original bf16 weights: the method quantizes them itself.
    const std::string prefix = "online-" + online_scheme;
    out.push_back(from_written(prefix + "/qwen3",
                               writer::write_unquantized(root / "bf16-qwen3", fixture_spec(Layout::kPerExpert)),
                               ref::ActQuant::kNone));
    out.push_back(from_written(prefix + "/granite-fused",
                               writer::write_unquantized(root / "bf16-granite", fixture_spec(Layout::kGraniteFused)),
                               ref::ActQuant::kNone));
    for (Fixture& f : out) f.online_scheme = online_scheme;
    return out;
  }
  // llm-compressor FP8_DYNAMIC: channel weight scales, dynamic per-token activations.
  out.push_back(from_written("ct-fp8-channel/qwen3",
                             writer::write_ct_fp8_channel(root / "ct-fp8-channel-qwen3", fixture_spec(Layout::kPerExpert)),
                             ref::ActQuant::kFp8PerToken));
  out.push_back(from_written("ct-fp8-channel/granite-fused",
                             writer::write_ct_fp8_channel(root / "ct-fp8-channel-granite", fixture_spec(Layout::kGraniteFused)),
                             ref::ActQuant::kFp8PerToken));
  out.push_back(from_written("ct-fp8-tensor-weight-only/qwen3",
                             write_ct_fp8_tensor_weight_only(root / "ct-fp8-tensor-wo-qwen3", fixture_spec(Layout::kPerExpert)),
                             ref::ActQuant::kNone));
  return out;
}

Fixture checkpoint_fixture(const fs::path& dir, const std::string& online_scheme) {
  Fixture f;
  f.name = dir.string();
  f.dir = dir;
  f.online_scheme = online_scheme;
  return f;
}

std::vector<LayerQuery> layer_queries(const Checkpoint& ck, const std::string& online_scheme) {
  const QuantConfigSource quant = effective_quant_config(ck, online_scheme);
  std::map<std::string, LayerQuery> by_prefix;
  for (const auto& [name, info] : ck.tensors()) {
    const RoutedName r = route_tensor_name(name);
    if (r.role != TensorRole::kExpert || r.suffix != "weight") continue;
    LayerQuery& q = by_prefix[r.layer_prefix];
    if (!q.prefix.empty()) continue;
    q.prefix = r.layer_prefix;
    q.query.quant_config_json = quant.json;
    q.query.quant_config_source = quant.source;
    q.query.layer_name = r.experts_module;
    q.query.weight_dtype = dtype_name(info.dtype);
  }
  std::vector<LayerQuery> out;
  for (auto& [p, q] : by_prefix) out.push_back(std::move(q));
  return out;
}

}  // namespace moeq::cli::conform
