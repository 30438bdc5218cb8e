#include <moeq/error.hpp>
#include <moeq_writer/producers.hpp>
#include <moeq_writer/safetensors_writer.hpp>

#include <boost/json.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <random>

namespace moeq::writer {
namespace json = boost::json;

const char* layout_name(Layout l) {
  return l == Layout::kPerExpert ? "qwen3_moe per-expert" : "granitemoe fused [E,2I,1] scales";
}

namespace {

float round_to(DType dt, float v) {
  switch (dt) {
    case DType::BF16: return bf16_to_float(float_to_bf16(v));
    case DType::F16: return f16_to_float(float_to_f16(v));
    default: return v;
  }
}

std::vector<float> randn(std::mt19937_64& rng, size_t n, float stddev) {
  std::normal_distribution<float> d(0.0f, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = bf16_to_float(float_to_bf16(d(rng)));  // masters are bf16 models
  return v;
}

std::vector<std::byte> as_bytes(const std::vector<uint8_t>& v) {
  std::vector<std::byte> b(v.size());
  std::transform(v.begin(), v.end(), b.begin(), [](uint8_t x) { return std::byte{x}; });
  return b;
}

json::object ct_fp8_dynamic_config(const json::array& ignore) {
  json::object weights{{"actorder", nullptr},  {"block_structure", nullptr}, {"dynamic", false},
                       {"group_size", nullptr}, {"num_bits", 8},            {"observer", "minmax"},
                       {"observer_kwargs", json::object{}}, {"strategy", "channel"}, {"symmetric", true},
                       {"type", "float"}};
  json::object acts{{"actorder", nullptr},  {"block_structure", nullptr}, {"dynamic", true},
                    {"group_size", nullptr}, {"num_bits", 8},            {"observer", nullptr},
                    {"observer_kwargs", json::object{}}, {"strategy", "token"}, {"symmetric", true},
                    {"type", "float"}};
  json::object group{{"format", "float-quantized"}, {"input_activations", acts}, {"output_activations", nullptr},
                     {"targets", json::array{"Linear"}}, {"weights", weights}};
  return json::object{{"config_groups", json::object{{"group_0", group}}},
                      {"format", "float-quantized"},
                      {"global_compression_ratio", nullptr},
                      {"ignore", ignore},
                      {"kv_cache_scheme", nullptr},
                      {"quant_method", "compressed-tensors"},
                      {"quantization_status", "compressed"},
                      {"sparsity_config", json::object{}},
                      {"transform_config", json::object{}},
                      {"version", "0.18.0"}};
}

void write_text(const std::filesystem::path& p, const std::string& s) {
  std::ofstream f(p, std::ios::binary);
  f << s;
  if (!f) fail("cannot write " + p.string());
}

}  // namespace

void quantize_fp8_rows(const std::vector<float>& w, int64_t rows, int64_t cols, DType scale_dtype,
                       std::vector<uint8_t>& codes, std::vector<float>& scales, std::vector<float>& deq) {
  codes.resize(static_cast<size_t>(rows * cols));
  scales.resize(static_cast<size_t>(rows));
  deq.resize(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    float amax = 0.0f;
    for (int64_t c = 0; c < cols; ++c) amax = std::max(amax, std::fabs(w[r * cols + c]));
    float s = round_to(scale_dtype, amax / kFp8E4M3Max);
    if (s <= 0.0f) s = 1.0f;  // an all-zero row: any positive scale represents it
    scales[r] = s;
    for (int64_t c = 0; c < cols; ++c) {
      const float v = std::clamp(w[r * cols + c] / s, -kFp8E4M3Max, kFp8E4M3Max);
      const uint8_t q = float_to_fp8_e4m3(v);
      codes[r * cols + c] = q;
      deq[r * cols + c] = fp8_e4m3_to_float(q) * s;
    }
  }
}

WrittenCheckpoint write_ct_fp8_channel(const std::filesystem::path& dir, const MoeSpec& spec) {
  namespace fs = std::filesystem;
  if (fs::exists(dir) && !fs::is_empty(dir)) fail("writer: " + dir.string() + " exists and is not empty");
  fs::create_directories(dir);
  const int64_t E = spec.num_experts, H = spec.hidden, I = spec.intermediate, V = 64;
  const bool granite = spec.layout == Layout::kGraniteFused;
  WrittenCheckpoint out;
  out.dir = dir;
  out.spec = spec;
  SafetensorsWriter st;
  std::mt19937_64 rng(spec.seed);

  st.add_float("model.embed_tokens.weight", DType::BF16, {V, H}, randn(rng, V * H, 0.02f));
  st.add_float("lm_head.weight", DType::BF16, {V, H}, randn(rng, V * H, 0.02f));
  st.add_float("model.norm.weight", DType::BF16, {H}, std::vector<float>(H, 1.0f));

  for (int l = 0; l < spec.num_layers; ++l) {
    const std::string lp = "model.layers." + std::to_string(l);
    const std::string prefix = lp + (granite ? ".block_sparse_moe" : ".mlp");
    // A quantized attention projection and a norm: not MoE, reported as such.
    {
      std::vector<uint8_t> q;
      std::vector<float> s, d;
      quantize_fp8_rows(randn(rng, H * H, spec.weight_std), H, H, spec.scale_dtype, q, s, d);
      st.add(lp + ".self_attn.q_proj.weight", DType::F8_E4M3, {H, H}, as_bytes(q));
      st.add_float(lp + ".self_attn.q_proj.weight_scale", spec.scale_dtype, {H, 1}, s);
      st.add_float(lp + ".input_layernorm.weight", DType::BF16, {H}, std::vector<float>(H, 1.0f));
    }
    LayerMasters m;
    m.prefix = prefix;
    m.dequantized.num_experts = E;
    m.dequantized.hidden = H;
    m.dequantized.intermediate = I;
    m.dequantized.w13.resize(static_cast<size_t>(E * 2 * I * H));
    m.dequantized.w2.resize(static_cast<size_t>(E * H * I));
    m.router = randn(rng, E * H, 1.0f / std::sqrt(static_cast<float>(H)));
    st.add_float(prefix + (granite ? ".router.layer.weight" : ".gate.weight"), DType::BF16, {E, H}, m.router);

    std::vector<uint8_t> fused13, fused2;
    std::vector<float> fused13_s, fused2_s;
    for (int64_t e = 0; e < E; ++e) {
      std::vector<uint8_t> q13, q2;
      std::vector<float> s13, s2, d13, d2;
      quantize_fp8_rows(randn(rng, 2 * I * H, spec.weight_std), 2 * I, H, spec.scale_dtype, q13, s13, d13);
      quantize_fp8_rows(randn(rng, H * I, spec.weight_std), H, I, spec.scale_dtype, q2, s2, d2);
      std::copy(d13.begin(), d13.end(), m.dequantized.w13.begin() + e * 2 * I * H);
      std::copy(d2.begin(), d2.end(), m.dequantized.w2.begin() + e * H * I);
      if (granite) {
        fused13.insert(fused13.end(), q13.begin(), q13.end());
        fused13_s.insert(fused13_s.end(), s13.begin(), s13.end());
        fused2.insert(fused2.end(), q2.begin(), q2.end());
        fused2_s.insert(fused2_s.end(), s2.begin(), s2.end());
        continue;
      }
      const std::string ep = prefix + ".experts." + std::to_string(e);
      auto scale_shape = [&](int64_t n) {
        return spec.scale_1d ? std::vector<int64_t>{n} : std::vector<int64_t>{n, 1};
      };
      const std::vector<uint8_t> gate(q13.begin(), q13.begin() + I * H), up(q13.begin() + I * H, q13.end());
      st.add(ep + ".gate_proj.weight", DType::F8_E4M3, {I, H}, as_bytes(gate));
      st.add(ep + ".up_proj.weight", DType::F8_E4M3, {I, H}, as_bytes(up));
      st.add(ep + ".down_proj.weight", DType::F8_E4M3, {H, I}, as_bytes(q2));
      st.add_float(ep + ".gate_proj.weight_scale", spec.scale_dtype, scale_shape(I),
                   std::vector<float>(s13.begin(), s13.begin() + I));
      st.add_float(ep + ".up_proj.weight_scale", spec.scale_dtype, scale_shape(I),
                   std::vector<float>(s13.begin() + I, s13.end()));
      st.add_float(ep + ".down_proj.weight_scale", spec.scale_dtype, scale_shape(H), s2);
    }
    if (granite) {
      st.add(prefix + ".input_linear.weight", DType::F8_E4M3, {E, 2 * I, H}, as_bytes(fused13));
      st.add_float(prefix + ".input_linear.weight_scale", spec.scale_dtype, {E, 2 * I, 1}, fused13_s);
      st.add(prefix + ".output_linear.weight", DType::F8_E4M3, {E, H, I}, as_bytes(fused2));
      st.add_float(prefix + ".output_linear.weight_scale", spec.scale_dtype, {E, H, 1}, fused2_s);
    }
    out.layers.push_back(std::move(m));
  }
  st.set_metadata("format", "pt");
  st.write(dir / "model.safetensors");
  out.tensor_names = st.names();

  json::object cfg;
  if (granite) {
    cfg = {{"architectures", json::array{"GraniteMoeForCausalLM"}},
           {"model_type", "granitemoe"},
           {"num_local_experts", E},
           {"intermediate_size", I},
           {"ignore_list_note", "router excluded by re:.*router.*"}};
    cfg.erase("ignore_list_note");
  } else {
    cfg = {{"architectures", json::array{"Qwen3MoeForCausalLM"}},
           {"model_type", "qwen3_moe"},
           {"num_experts", E},
           {"moe_intermediate_size", I},
           {"intermediate_size", 4 * I},
           {"norm_topk_prob", true},
           {"decoder_sparse_step", 1}};
  }
  cfg["hidden_size"] = H;
  cfg["num_experts_per_tok"] = spec.top_k;
  cfg["num_hidden_layers"] = spec.num_layers;
  cfg["vocab_size"] = V;
  cfg["torch_dtype"] = "bfloat16";
  cfg["tie_word_embeddings"] = false;
  json::array ignore{"lm_head", granite ? "re:.*router.*" : "re:.*mlp.gate$"};
  cfg["quantization_config"] = ct_fp8_dynamic_config(ignore);
  write_text(dir / "config.json", json::serialize(cfg));
  return out;
}

}  // namespace moeq::writer
