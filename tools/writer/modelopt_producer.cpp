#include <moeq/error.hpp>
#include <moeq_writer/modelopt.hpp>
#include <moeq_writer/safetensors_writer.hpp>
#include <moeq_writer/writer_util.hpp>

#include <boost/json.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <random>

namespace moeq::writer {
namespace json = boost::json;

namespace {

uint8_t q8(float v, float s) { return float_to_fp8_e4m3(std::clamp(v / s, -kFp8E4M3Max, kFp8E4M3Max)); }

// One FP8 weight [rows, cols] quantized the way the algo does; scales in ModelOpt's shapes.
struct Quantized {
  std::vector<uint8_t> codes;
  std::vector<float> scales;
  std::vector<int64_t> scale_shape;
  std::vector<float> deq;
};

Quantized quantize(ModelOptAlgo algo, const std::vector<float>& w, int64_t rows, int64_t cols) {
  Quantized q;
  q.codes.resize(w.size());
  q.deq.resize(w.size());
  if (algo == ModelOptAlgo::kFp8) {
    float amax = 0;
    for (float v : w) amax = std::max(amax, std::fabs(v));
    const float s = amax / kFp8E4M3Max;
    q.scales = {s};
    q.scale_shape = {};
    for (size_t i = 0; i < w.size(); ++i) q.deq[i] = fp8_e4m3_to_float(q.codes[i] = q8(w[i], s)) * s;
  } else if (algo == ModelOptAlgo::kFp8PerChannelPerToken) {
    q.scale_shape = {rows};
    for (int64_t r = 0; r < rows; ++r) {
      float amax = 0;
      for (int64_t c = 0; c < cols; ++c) amax = std::max(amax, std::fabs(w[r * cols + c]));
      const float s = amax / kFp8E4M3Max;
      q.scales.push_back(s);
      for (int64_t c = 0; c < cols; ++c) {
        const size_t i = static_cast<size_t>(r * cols + c);
        q.deq[i] = fp8_e4m3_to_float(q.codes[i] = q8(w[i], s)) * s;
      }
    }
  } else {
    const int64_t nb = (rows + 127) / 128, kb = (cols + 127) / 128;
    q.scale_shape = {nb, 1, kb, 1};
    q.scales.assign(static_cast<size_t>(nb * kb), 0.0f);
    for (int64_t bi = 0; bi < nb; ++bi)
      for (int64_t bj = 0; bj < kb; ++bj) {
        float amax = 0;
        for (int64_t r = bi * 128; r < std::min(rows, bi * 128 + 128); ++r)
          for (int64_t c = bj * 128; c < std::min(cols, bj * 128 + 128); ++c) amax = std::max(amax, std::fabs(w[r * cols + c]));
        const float s = amax / kFp8E4M3Max;
        q.scales[bi * kb + bj] = s;
        for (int64_t r = bi * 128; r < std::min(rows, bi * 128 + 128); ++r)
          for (int64_t c = bj * 128; c < std::min(cols, bj * 128 + 128); ++c) {
            const size_t i = static_cast<size_t>(r * cols + c);
            q.deq[i] = fp8_e4m3_to_float(q.codes[i] = q8(w[i], s)) * s;
          }
      }
  }
  return q;
}

const char* algo_string(ModelOptAlgo a) {
  switch (a) {
    case ModelOptAlgo::kFp8: return "FP8";
    case ModelOptAlgo::kFp8PerChannelPerToken: return "FP8_PER_CHANNEL_PER_TOKEN";
    case ModelOptAlgo::kFp8BlockWeightOnly: return "fp8_pb_wo";  // ModelOpt writes it lower case
  }
  return "?";
}

}  // namespace

WrittenCheckpoint write_modelopt(const std::filesystem::path& dir, const ModelOptSpec& spec) {
  namespace fs = std::filesystem;
  if (fs::exists(dir) && !fs::is_empty(dir)) fail("writer: " + dir.string() + " exists and is not empty");
  const bool llama4 = spec.layout == ModelOptLayout::kLlama4Fused;
  if (llama4 && spec.algo != ModelOptAlgo::kFp8)
    fail("writer: the Llama-4 fused layout is written for per-tensor FP8 only (one 0-D scale per parameter)");
  fs::create_directories(dir);
  const int64_t E = spec.num_experts, H = spec.hidden, I = spec.intermediate;
  WrittenCheckpoint out;
  out.dir = dir;
  out.spec.num_layers = spec.num_layers;
  out.spec.num_experts = E;
  out.spec.hidden = H;
  out.spec.intermediate = I;
  out.spec.top_k = spec.top_k;
  SafetensorsWriter st;
  std::mt19937_64 rng(spec.seed);
  st.add_float("model.embed_tokens.weight", DType::BF16, {64, H}, randn_bf16(rng, 64 * H, 0.02f));
  json::array exclude{"lm_head"};

  for (int l = 0; l < spec.num_layers; ++l) {
    const std::string lp = "model.layers." + std::to_string(l);
    const std::string prefix = lp + (llama4 ? ".feed_forward" : ".mlp");
    const bool excluded = spec.exclude_last_layer && l == spec.num_layers - 1;
    if (spec.kv_scales) {
      // ModelOpt's own form, and the k_scale form other exporters use.
      st.add_float(lp + ".self_attn.k_proj.k_scale", DType::F32, {}, {0.02f + 0.001f * l});
      st.add_float(lp + ".self_attn.v_proj.v_scale", DType::F32, {}, {0.03f});
      if (l == 0) st.add_float(lp + ".self_attn.k_scale", DType::F32, {}, {0.02f});
    }
    LayerMasters m;
    m.prefix = prefix;
    m.dequantized.num_experts = E;
    m.dequantized.hidden = H;
    m.dequantized.intermediate = I;
    m.router = randn_bf16(rng, E * H, 1.0f / std::sqrt(static_cast<float>(H)));
    st.add_float(prefix + (llama4 ? ".router.weight" : ".gate.weight"), DType::BF16, {E, H}, m.router);
    exclude.push_back(json::string(prefix + (llama4 ? ".router" : ".gate")));
    if (excluded) exclude.push_back(json::string(prefix + ".experts*"));

    std::vector<uint8_t> f13, f2;  // Llama-4 fused, transposed
    f13.resize(static_cast<size_t>(E * H * 2 * I));
    f2.resize(static_cast<size_t>(E * I * H));
    std::vector<float> bf13(f13.size()), bf2(f2.size());
    float amax13 = 0, amax2 = 0;
    std::vector<std::vector<float>> w13s, w2s;
    for (int64_t e = 0; e < E; ++e) {
      w13s.push_back(randn_bf16(rng, 2 * I * H, 0.1f));
      w2s.push_back(randn_bf16(rng, H * I, 0.1f));
      for (float v : w13s.back()) amax13 = std::max(amax13, std::fabs(v));
      for (float v : w2s.back()) amax2 = std::max(amax2, std::fabs(v));
    }
    for (int64_t e = 0; e < E; ++e) {
      const std::vector<float>& w13 = w13s[e];
      const std::vector<float>& w2 = w2s[e];
      if (excluded) {
        const std::string ep = prefix + ".experts." + std::to_string(e);
        st.add_float(ep + ".gate_proj.weight", DType::BF16, {I, H}, std::vector<float>(w13.begin(), w13.begin() + I * H));
        st.add_float(ep + ".up_proj.weight", DType::BF16, {I, H}, std::vector<float>(w13.begin() + I * H, w13.end()));
        st.add_float(ep + ".down_proj.weight", DType::BF16, {H, I}, w2);
        m.dequantized.w13.insert(m.dequantized.w13.end(), w13.begin(), w13.end());
        m.dequantized.w2.insert(m.dequantized.w2.end(), w2.begin(), w2.end());
        continue;
      }
      if (llama4) {
        // One per-tensor scale for every expert of a parameter; stored transposed [E, H, 2I].
        const float s13 = amax13 / kFp8E4M3Max, s2 = amax2 / kFp8E4M3Max;
        for (int64_t n = 0; n < 2 * I; ++n)
          for (int64_t k = 0; k < H; ++k) {
            const uint8_t q = q8(w13[n * H + k], s13);
            f13[(e * H + k) * 2 * I + n] = q;
            m.dequantized.w13.push_back(fp8_e4m3_to_float(q) * s13);
          }
        for (int64_t h = 0; h < H; ++h)
          for (int64_t i = 0; i < I; ++i) {
            const uint8_t q = q8(w2[h * I + i], s2);
            f2[(e * I + i) * H + h] = q;
            m.dequantized.w2.push_back(fp8_e4m3_to_float(q) * s2);
          }
        continue;
      }
      const std::string ep = prefix + ".experts." + std::to_string(e);
      const std::vector<float> gate(w13.begin(), w13.begin() + I * H), up(w13.begin() + I * H, w13.end());
      struct P {
        const char* leaf;
        const std::vector<float>* w;
        int64_t rows, cols;
        float input_scale;
      } projs[] = {{"gate_proj", &gate, I, H, kModelOptW13InputScale},
                   {"up_proj", &up, I, H, kModelOptW13InputScale},
                   {"down_proj", &w2, H, I, kModelOptW2InputScale}};
      std::vector<float> deq13;
      for (const P& p : projs) {
        Quantized q = quantize(spec.algo, *p.w, p.rows, p.cols);
        st.add(ep + "." + p.leaf + ".weight", DType::F8_E4M3, {p.rows, p.cols}, as_bytes(q.codes));
        st.add_float(ep + "." + p.leaf + ".weight_scale", DType::F32, q.scale_shape, q.scales);
        if (spec.algo == ModelOptAlgo::kFp8)
          st.add_float(ep + "." + p.leaf + ".input_scale", DType::F32, {}, {p.input_scale});
        if (std::string(p.leaf) == "down_proj")
          m.dequantized.w2.insert(m.dequantized.w2.end(), q.deq.begin(), q.deq.end());
        else
          deq13.insert(deq13.end(), q.deq.begin(), q.deq.end());
      }
      m.dequantized.w13.insert(m.dequantized.w13.end(), deq13.begin(), deq13.end());
    }
    if (llama4 && !excluded) {
      const std::string xp = prefix + ".experts.";
      st.add(xp + "gate_up_proj", DType::F8_E4M3, {E, H, 2 * I}, as_bytes(f13));
      st.add_float(xp + "gate_up_proj_weight_scale", DType::F32, {}, {amax13 / kFp8E4M3Max});
      st.add_float(xp + "gate_up_proj_input_scale", DType::F32, {}, {kModelOptW13InputScale});
      st.add(xp + "down_proj", DType::F8_E4M3, {E, I, H}, as_bytes(f2));
      st.add_float(xp + "down_proj_weight_scale", DType::F32, {}, {amax2 / kFp8E4M3Max});
      st.add_float(xp + "down_proj_input_scale", DType::F32, {}, {kModelOptW2InputScale});
    }
    out.layers.push_back(std::move(m));
  }
  st.write(dir / "model.safetensors");
  out.tensor_names = st.names();

  json::object quant{{"quant_algo", algo_string(spec.algo)},
                     {"kv_cache_quant_algo", spec.kv_scales ? json::value("FP8") : json::value(nullptr)},
                     {"exclude_modules", exclude}};
  json::object hf{{"producer", json::object{{"name", "modelopt"}, {"version", "0.47.0"}}}, {"quantization", quant}};
  write_text_file(dir / "hf_quant_config.json", json::serialize(hf));
  json::object qc{{"quant_method", "modelopt"}, {"quant_algo", algo_string(spec.algo)}, {"ignore", exclude},
                  {"producer", json::object{{"name", "modelopt"}, {"version", "0.47.0"}}}};
  json::object cfg;
  if (llama4) {
    json::object text{{"model_type", "llama4_text"}, {"num_local_experts", E}, {"intermediate_size", I},
                      {"hidden_size", H}, {"num_experts_per_tok", spec.top_k}, {"num_hidden_layers", spec.num_layers}};
    cfg = {{"architectures", json::array{"Llama4ForConditionalGeneration"}}, {"model_type", "llama4"},
           {"text_config", text}};
  } else {
    cfg = {{"architectures", json::array{"Qwen3MoeForCausalLM"}}, {"model_type", "qwen3_moe"},
           {"num_experts", E}, {"moe_intermediate_size", I}, {"hidden_size", H},
           {"num_experts_per_tok", spec.top_k}, {"num_hidden_layers", spec.num_layers}, {"norm_topk_prob", true}};
  }
  cfg["quantization_config"] = qc;
  write_text_file(dir / "config.json", json::serialize(cfg));
  return out;
}

}  // namespace moeq::writer
