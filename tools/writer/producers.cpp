#include <moeq/error.hpp>
#include <moeq_writer/producers.hpp>
#include <moeq_writer/safetensors_writer.hpp>
#include <moeq_writer/writer_util.hpp>

#include <boost/json.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <random>

namespace moeq::writer {
namespace json = boost::json;

const char* layout_name(Layout l) {
  switch (l) {
    case Layout::kPerExpert: return "qwen3_moe per-expert";
    case Layout::kGraniteFused: return "granitemoe fused [E,2I,1] scales";
    case Layout::kMixtral: return "mixtral per-expert w1/w3/w2";
    case Layout::kDeepSeekV3: return "deepseek_v3 per-expert";
    case Layout::kDeepSeekV4: return "deepseek_v4 ffn.experts w1/w3/w2 .scale";
  }
  return "?";
}

namespace {

float round_to(DType dt, float v) {
  switch (dt) {
    case DType::BF16: return bf16_to_float(float_to_bf16(v));
    case DType::F16: return f16_to_float(float_to_f16(v));
    default: return v;
  }
}

json::object args(const char* type, const char* strategy, bool dynamic, json::value group_size = nullptr,
                  json::value block = nullptr, json::value observer = nullptr) {
  return json::object{{"actorder", nullptr},   {"block_structure", block}, {"dynamic", dynamic},
                      {"group_size", group_size}, {"num_bits", 8},         {"observer", observer},
                      {"observer_kwargs", json::object{}}, {"strategy", strategy}, {"symmetric", true},
                      {"type", type}};
}

// compressed-tensors quantization_config of one group targeting Linear (docs/PRODUCER_FORMATS.md §1.6).
json::object ct_config(const QuantSpec& q, const json::array& ignore) {
  json::value weights, acts = nullptr;
  std::string format = "float-quantized";
  switch (q.weights) {
    case WeightScheme::kFp8Channel:
      weights = args("float", "channel", false, nullptr, nullptr, "minmax");
      acts = args("float", "token", true);
      break;
    case WeightScheme::kFp8Block:
      weights = args("float", "block", false, nullptr, json::array{q.block_n, q.block_k}, "memoryless_minmax");
      acts = args("float", "group", true, q.act_group > 0 ? q.act_group : q.block_k);
      break;
    case WeightScheme::kFp8Tensor:
      weights = args("float", "tensor", false, nullptr, nullptr, "memoryless_minmax");
      acts = q.static_input ? args("float", "tensor", false, nullptr, nullptr, "static_minmax")
                            : args("float", "tensor", true);
      break;
    case WeightScheme::kInt8Channel:
      weights = args("int", "channel", false, nullptr, nullptr, "memoryless_minmax");
      format = "naive-quantized";
      break;
    case WeightScheme::kUnquantized: fail("writer: unquantized experts have no compressed-tensors group");
  }
  json::object group{{"format", format}, {"input_activations", acts}, {"output_activations", nullptr},
                     {"targets", json::array{"Linear"}}, {"weights", weights}};
  return json::object{{"config_groups", json::object{{"group_0", group}}},
                      {"format", format},
                      {"global_compression_ratio", nullptr},
                      {"ignore", ignore},
                      {"kv_cache_scheme", nullptr},
                      {"quant_method", "compressed-tensors"},
                      {"quantization_status", "compressed"},
                      {"sparsity_config", json::object{}},
                      {"transform_config", json::object{}},
                      {"version", "0.18.0"}};
}

// DeepSeek-V3 / Qwen3-FP8 style (docs/MOE_SEMANTICS.md §3.1).
json::object native_fp8_config(const QuantSpec& q) {
  json::object o{{"quant_method", "fp8"}, {"fmt", "e4m3"}};
  if (q.weights == WeightScheme::kFp8Block) {
    o["activation_scheme"] = "dynamic";
    o["weight_block_size"] = json::array{q.block_n, q.block_k};
  } else if (q.weights == WeightScheme::kFp8Tensor) {
    o["activation_scheme"] = q.static_input ? "static" : "dynamic";
  } else {
    fail("writer: quant_method fp8 configs hold block or per-tensor FP8 only");
  }
  return o;
}

// One weight matrix [rows, cols] as the producer stores it.
struct Stored {
  DType dtype = DType::F8_E4M3;
  std::vector<std::byte> codes;
  std::vector<float> scales;         // empty when unquantized
  std::vector<int64_t> scale_shape;  // as written
  std::vector<float> dequantized;    // codes x scales, float
};

Stored store(const std::vector<float>& w, int64_t rows, int64_t cols, const QuantSpec& q, bool quantized,
             DType scale_dtype, bool scale_1d) {
  Stored s;
  const auto n = static_cast<size_t>(rows * cols);
  s.dequantized.resize(n);
  if (!quantized || q.weights == WeightScheme::kUnquantized) {
    s.dtype = DType::BF16;
    s.codes.resize(n * 2);
    for (size_t i = 0; i < n; ++i) {
      store_from_float(s.codes.data(), DType::BF16, i, w[i]);
      s.dequantized[i] = bf16_to_float(float_to_bf16(w[i]));
    }
    return s;
  }
  if (q.weights == WeightScheme::kFp8Channel) {
    std::vector<uint8_t> codes;
    quantize_fp8_rows(w, rows, cols, scale_dtype, codes, s.scales, s.dequantized);
    s.codes = as_bytes(codes);
    s.scale_shape = scale_1d ? std::vector<int64_t>{rows} : std::vector<int64_t>{rows, 1};
    return s;
  }
  if (q.weights == WeightScheme::kInt8Channel) {
    s.dtype = DType::I8;
    s.codes.resize(n);
    s.scales.resize(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) {
      float amax = 0.0f;
      for (int64_t c = 0; c < cols; ++c) amax = std::max(amax, std::fabs(w[r * cols + c]));
      float sc = round_to(scale_dtype, amax / 127.5f);  // compressed-tensors: range 255 halved
      if (sc <= 0.0f) sc = 1.0f;
      s.scales[r] = sc;
      for (int64_t c = 0; c < cols; ++c) {
        const float v = std::clamp(std::nearbyint(w[r * cols + c] / sc), -128.0f, 127.0f);
        s.codes[r * cols + c] = std::byte{static_cast<uint8_t>(static_cast<int8_t>(v))};
        s.dequantized[r * cols + c] = v * sc;
      }
    }
    s.scale_shape = scale_1d ? std::vector<int64_t>{rows} : std::vector<int64_t>{rows, 1};
    return s;
  }
  // FP8 per tensor or per block: one scale per [bn, bk] block (the whole matrix for tensor).
  const bool block = q.weights == WeightScheme::kFp8Block;
  const int64_t bn = block ? q.block_n : rows, bk = block ? q.block_k : cols;
  const int64_t gr = (rows + bn - 1) / bn, gc = (cols + bk - 1) / bk;
  s.codes.resize(n);
  s.scales.resize(static_cast<size_t>(gr * gc));
  for (int64_t br = 0; br < gr; ++br)
    for (int64_t bc = 0; bc < gc; ++bc) {
      const int64_t r1 = std::min(rows, (br + 1) * bn), c1 = std::min(cols, (bc + 1) * bk);
      float amax = 0.0f;
      for (int64_t r = br * bn; r < r1; ++r)
        for (int64_t c = bc * bk; c < c1; ++c) amax = std::max(amax, std::fabs(w[r * cols + c]));
      float sc = round_to(scale_dtype, amax / kFp8E4M3Max);
      if (sc <= 0.0f) sc = 1.0f;
      s.scales[br * gc + bc] = sc;
      for (int64_t r = br * bn; r < r1; ++r)
        for (int64_t c = bc * bk; c < c1; ++c) {
          const uint8_t code = float_to_fp8_e4m3(std::clamp(w[r * cols + c] / sc, -kFp8E4M3Max, kFp8E4M3Max));
          s.codes[r * cols + c] = std::byte{code};
          s.dequantized[r * cols + c] = fp8_e4m3_to_float(code) * sc;
        }
    }
  s.scale_shape = block ? std::vector<int64_t>{gr, gc} : std::vector<int64_t>{1};
  return s;
}

void append(std::vector<std::byte>& to, const std::vector<std::byte>& from) { to.insert(to.end(), from.begin(), from.end()); }
void append(std::vector<float>& to, const std::vector<float>& from) { to.insert(to.end(), from.begin(), from.end()); }

bool is_v4(Layout l) { return l == Layout::kDeepSeekV4; }

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

std::string model_config_json(const MoeSpec& spec, const QuantSpec& q, const std::vector<std::string>& ignored) {
  const Layout layout = spec.layout;
  const bool v4 = is_v4(layout);
  const int64_t E = spec.num_experts, I = spec.intermediate, H = spec.hidden, V = 64;
  json::array ignore;
  for (const auto& n : ignored) ignore.push_back(json::string(n));
  json::object cfg;
  switch (layout) {
    case Layout::kGraniteFused:
      cfg = {{"architectures", json::array{"GraniteMoeForCausalLM"}},
             {"model_type", "granitemoe"},
             {"num_local_experts", E},
             {"intermediate_size", I}};
      break;
    case Layout::kPerExpert:
      cfg = {{"architectures", json::array{"Qwen3MoeForCausalLM"}},
             {"model_type", "qwen3_moe"},
             {"num_experts", E},
             {"moe_intermediate_size", I},
             {"intermediate_size", 4 * I},
             {"norm_topk_prob", true},
             {"decoder_sparse_step", 1}};
      break;
    case Layout::kMixtral:
      cfg = {{"architectures", json::array{"MixtralForCausalLM"}},
             {"model_type", "mixtral"},
             {"num_local_experts", E},
             {"intermediate_size", I}};
      break;
    case Layout::kDeepSeekV3:
    case Layout::kDeepSeekV4: {
      cfg = {{"architectures", json::array{v4 ? "DeepseekV4ForCausalLM" : "DeepseekV3ForCausalLM"}},
             {"model_type", v4 ? "deepseek_v4" : "deepseek_v3"},
             {"n_routed_experts", E},
             {"moe_intermediate_size", I},
             {"intermediate_size", 4 * I},
             {"norm_topk_prob", true},
             {"routed_scaling_factor", 2.5},
             {"scoring_func", "sigmoid"}};
      if (E % 2 == 0 && E > 2) {  // grouped top-k over two groups, enough kept for top_k
        cfg["n_group"] = 2;
        cfg["topk_group"] = spec.top_k <= E / 2 ? 1 : 2;
      }
      break;
    }
  }
  cfg["hidden_size"] = H;
  cfg["num_experts_per_tok"] = spec.top_k;
  cfg["num_hidden_layers"] = spec.num_layers;
  cfg["vocab_size"] = V;
  cfg["torch_dtype"] = "bfloat16";
  cfg["tie_word_embeddings"] = false;
  if (q.config == ConfigKind::kCompressedTensors) cfg["quantization_config"] = ct_config(q, ignore);
  if (q.config == ConfigKind::kNativeFp8) cfg["quantization_config"] = native_fp8_config(q);
  return json::serialize(cfg);
}

WrittenCheckpoint write_moe_checkpoint(const std::filesystem::path& dir, const MoeSpec& spec, const QuantSpec& q) {
  namespace fs = std::filesystem;
  const Layout layout = spec.layout;
  const bool granite = layout == Layout::kGraniteFused, v4 = is_v4(layout);
  if (granite && q.weights == WeightScheme::kFp8Block)
    fail("writer: no producer writes block scales for Granite's fused experts");
  if (v4 && q.config == ConfigKind::kCompressedTensors)
    fail("writer: DeepSeek-V4 names come with a quant_method fp8 config, not compressed-tensors");
  if (q.config == ConfigKind::kNone && q.weights != WeightScheme::kUnquantized)
    fail("writer: quantized experts need a quantization_config");
  if (q.weights == WeightScheme::kUnquantized && q.config != ConfigKind::kNone)
    fail("writer: write unquantized layers of a quantized checkpoint with QuantSpec::unquantized_layers");
  if (fs::exists(dir) && !fs::is_empty(dir)) fail("writer: " + dir.string() + " exists and is not empty");
  fs::create_directories(dir);
  const int64_t E = spec.num_experts, H = spec.hidden, I = spec.intermediate, V = 64;
  // DeepSeek releases store F32 scales; llm-compressor the model dtype.
  const DType scale_dtype = q.config == ConfigKind::kNativeFp8 ? DType::F32 : spec.scale_dtype;
  const std::string scale_name = v4 ? "scale" : q.scale_name;
  const bool static_in = q.weights == WeightScheme::kFp8Tensor && q.static_input;
  WrittenCheckpoint out;
  out.dir = dir;
  out.spec = spec;
  SafetensorsWriter st;
  std::mt19937_64 rng(spec.seed);
  std::mt19937_64 aux(spec.seed ^ 0x5eedull);  // input scales, router bias: off the main stream

  const std::string root = v4 ? "" : "model.";
  st.add_float(v4 ? "embed.weight" : "model.embed_tokens.weight", DType::BF16, {V, H}, randn_bf16(rng, V * H, 0.02f));
  st.add_float(v4 ? "head.weight" : "lm_head.weight", DType::BF16, {V, H}, randn_bf16(rng, V * H, 0.02f));
  st.add_float(root + "norm.weight", DType::BF16, {H}, std::vector<float>(H, 1.0f));

  json::array ignore{"lm_head", granite ? "re:.*router.*"
                                        : layout == Layout::kMixtral ? "re:.*block_sparse_moe.gate$" : "re:.*mlp.gate$"};
  for (int l = 0; l < spec.num_layers; ++l) {
    const std::string lp = root + "layers." + std::to_string(l);
    const std::string prefix =
        lp + (granite || layout == Layout::kMixtral ? ".block_sparse_moe" : v4 ? ".ffn" : ".mlp");
    const bool quantized = q.weights != WeightScheme::kUnquantized &&
                           std::find(q.unquantized_layers.begin(), q.unquantized_layers.end(), l) ==
                               q.unquantized_layers.end();
    // An attention projection and a norm: not MoE, reported as such.
    {
      const std::vector<float> wq = randn_bf16(rng, H * H, spec.weight_std);
      const std::string attn = lp + (v4 ? ".attn.wq" : ".self_attn.q_proj");
      if (q.weights == WeightScheme::kUnquantized) {
        st.add_float(attn + ".weight", DType::BF16, {H, H}, wq);
      } else {
        std::vector<uint8_t> codes;
        std::vector<float> sc, d;
        quantize_fp8_rows(wq, H, H, scale_dtype, codes, sc, d);
        st.add(attn + ".weight", DType::F8_E4M3, {H, H}, as_bytes(codes));
        st.add_float(attn + (v4 ? ".scale" : ".weight_scale"), scale_dtype, {H, 1}, sc);
      }
      st.add_float(lp + (v4 ? ".attn_norm.weight" : ".input_layernorm.weight"), DType::BF16, {H},
                   std::vector<float>(H, 1.0f));
    }
    LayerMasters m;
    m.prefix = prefix;
    m.quantized = quantized;
    m.dequantized.num_experts = E;
    m.dequantized.hidden = H;
    m.dequantized.intermediate = I;
    m.dequantized.w13.resize(static_cast<size_t>(E * 2 * I * H));
    m.dequantized.w2.resize(static_cast<size_t>(E * H * I));
    m.router = randn_bf16(rng, E * H, 1.0f / std::sqrt(static_cast<float>(H)));
    st.add_float(prefix + (granite ? ".router.layer.weight" : ".gate.weight"), DType::BF16, {E, H}, m.router);
    if (layout == Layout::kDeepSeekV3 || layout == Layout::kDeepSeekV4) {
      // DeepSeek-V4's hub files name the correction bias gate.bias.
      std::uniform_real_distribution<float> b(-0.05f, 0.05f);
      std::vector<float> bias(static_cast<size_t>(E));
      for (float& x : bias) x = b(aux);
      st.add_float(prefix + (layout == Layout::kDeepSeekV4 ? ".gate.bias" : ".gate.e_score_correction_bias"), DType::F32,
                   {E}, bias);
    }
    if (static_in && quantized) {
      std::uniform_real_distribution<float> s1(0.008f, 0.012f), s2(0.015f, 0.03f);
      m.input_scales.resize(static_cast<size_t>(E * 3));
      for (int64_t e = 0; e < E; ++e) {
        const float a = round_to(scale_dtype, s1(aux));
        m.input_scales[e * 3 + 0] = a;
        m.input_scales[e * 3 + 1] = granite ? a : round_to(scale_dtype, a * q.w3_input_scale_ratio);
        m.input_scales[e * 3 + 2] = round_to(scale_dtype, s2(aux));
      }
    }

    Stored fused13, fused2;
    std::vector<float> fused_in13, fused_in2;
    for (int64_t e = 0; e < E; ++e) {
      const std::vector<float> w13 = randn_bf16(rng, 2 * I * H, spec.weight_std);
      const std::vector<float> w2 = randn_bf16(rng, H * I, spec.weight_std);
      const bool scale_1d = spec.scale_1d && !granite;
      if (granite) {
        // One quantizer per fused tensor: a per-tensor scale is shared by gate and up.
        Stored s13 = store(w13, 2 * I, H, q, quantized, scale_dtype, false);
        Stored s2 = store(w2, H, I, q, quantized, scale_dtype, false);
        std::copy(s13.dequantized.begin(), s13.dequantized.end(), m.dequantized.w13.begin() + e * 2 * I * H);
        std::copy(s2.dequantized.begin(), s2.dequantized.end(), m.dequantized.w2.begin() + e * H * I);
        fused13.dtype = s13.dtype;
        fused2.dtype = s2.dtype;
        append(fused13.codes, s13.codes);
        append(fused13.scales, s13.scales);
        append(fused2.codes, s2.codes);
        append(fused2.scales, s2.scales);
        if (static_in && quantized) {
          fused_in13.push_back(m.input_scales[e * 3]);
          fused_in2.push_back(m.input_scales[e * 3 + 2]);
        }
        continue;
      }
      const std::vector<float> gate(w13.begin(), w13.begin() + I * H), up(w13.begin() + I * H, w13.end());
      const Stored sg = store(gate, I, H, q, quantized, scale_dtype, scale_1d);
      const Stored su = store(up, I, H, q, quantized, scale_dtype, scale_1d);
      const Stored sd = store(w2, H, I, q, quantized, scale_dtype, scale_1d);
      std::copy(sg.dequantized.begin(), sg.dequantized.end(), m.dequantized.w13.begin() + e * 2 * I * H);
      std::copy(su.dequantized.begin(), su.dequantized.end(), m.dequantized.w13.begin() + e * 2 * I * H + I * H);
      std::copy(sd.dequantized.begin(), sd.dequantized.end(), m.dequantized.w2.begin() + e * H * I);
      const std::string ep = prefix + ".experts." + std::to_string(e);
      const bool w_names = layout == Layout::kMixtral || v4;
      const std::pair<std::string, const Stored*> projs[] = {{w_names ? "w1" : "gate_proj", &sg},
                                                             {w_names ? "w3" : "up_proj", &su},
                                                             {w_names ? "w2" : "down_proj", &sd}};
      for (int pi = 0; pi < 3; ++pi) {
        const auto& [leaf, s] = projs[pi];
        const std::vector<int64_t> shape = pi == 2 ? std::vector<int64_t>{H, I} : std::vector<int64_t>{I, H};
        st.add(ep + "." + leaf + ".weight", s->dtype, shape, s->codes);
        if (!s->scales.empty()) st.add_float(ep + "." + leaf + "." + scale_name, scale_dtype, s->scale_shape, s->scales);
        if (static_in && quantized)
          st.add_float(ep + "." + leaf + ".input_scale", scale_dtype, {1}, {m.input_scales[e * 3 + pi]});
        if (!quantized) ignore.push_back(json::string(ep + "." + leaf));
      }
    }
    if (granite) {
      st.add(prefix + ".input_linear.weight", fused13.dtype, {E, 2 * I, H}, fused13.codes);
      st.add(prefix + ".output_linear.weight", fused2.dtype, {E, H, I}, fused2.codes);
      if (!fused13.scales.empty()) {
        const bool tensor = q.weights == WeightScheme::kFp8Tensor;
        st.add_float(prefix + ".input_linear." + scale_name, scale_dtype,
                     tensor ? std::vector<int64_t>{E} : std::vector<int64_t>{E, 2 * I, 1}, fused13.scales);
        st.add_float(prefix + ".output_linear." + scale_name, scale_dtype,
                     tensor ? std::vector<int64_t>{E} : std::vector<int64_t>{E, H, 1}, fused2.scales);
      }
      if (!fused_in13.empty()) {
        st.add_float(prefix + ".input_linear.input_scale", scale_dtype, {E}, fused_in13);
        st.add_float(prefix + ".output_linear.input_scale", scale_dtype, {E}, fused_in2);
      }
      if (!quantized) {
        ignore.push_back(json::string(prefix + ".input_linear"));
        ignore.push_back(json::string(prefix + ".output_linear"));
      }
    }
    out.layers.push_back(std::move(m));
  }
  st.set_metadata("format", "pt");
  st.write(dir / "model.safetensors");
  out.tensor_names = st.names();

  std::vector<std::string> ignored;
  for (const auto& v : ignore) ignored.emplace_back(v.as_string());
  write_text_file(dir / "config.json", model_config_json(spec, q, ignored));
  return out;
}

WrittenCheckpoint write_ct_fp8_channel(const std::filesystem::path& dir, const MoeSpec& spec) {
  return write_moe_checkpoint(dir, spec, QuantSpec{});
}

WrittenCheckpoint write_ct_fp8_block(const std::filesystem::path& dir, const MoeSpec& spec, int64_t block_n,
                                     int64_t block_k, const std::string& scale_name) {
  QuantSpec q;
  q.weights = WeightScheme::kFp8Block;
  q.block_n = block_n;
  q.block_k = block_k;
  q.scale_name = scale_name;
  return write_moe_checkpoint(dir, spec, q);
}

WrittenCheckpoint write_hf_fp8_block(const std::filesystem::path& dir, const MoeSpec& spec, int64_t block_n,
                                     int64_t block_k) {
  QuantSpec q;
  q.weights = WeightScheme::kFp8Block;
  q.config = ConfigKind::kNativeFp8;
  q.block_n = block_n;
  q.block_k = block_k;
  q.scale_name = "weight_scale_inv";
  return write_moe_checkpoint(dir, spec, q);
}

WrittenCheckpoint write_ct_fp8_tensor(const std::filesystem::path& dir, const MoeSpec& spec, bool static_input,
                                      float w3_input_scale_ratio) {
  QuantSpec q;
  q.weights = WeightScheme::kFp8Tensor;
  q.static_input = static_input;
  q.w3_input_scale_ratio = w3_input_scale_ratio;
  return write_moe_checkpoint(dir, spec, q);
}

WrittenCheckpoint write_ct_int8_channel(const std::filesystem::path& dir, const MoeSpec& spec) {
  QuantSpec q;
  q.weights = WeightScheme::kInt8Channel;
  return write_moe_checkpoint(dir, spec, q);
}

WrittenCheckpoint write_unquantized(const std::filesystem::path& dir, const MoeSpec& spec) {
  QuantSpec q;
  q.weights = WeightScheme::kUnquantized;
  q.config = ConfigKind::kNone;
  return write_moe_checkpoint(dir, spec, q);
}

}  // namespace moeq::writer
