// Checkpoints written by the real producer (llm-compressor, tests/fixtures/real/generate.py):
// each loads strictly, the plugin's weights equal a dequantization this test does on its own
// from the safetensors tensors, and apply is within tolerance of the float reference on those
// weights with the activation quantization the scheme defines.
#include "ct_support.hpp"

#include <moeq/checkpoint.hpp>

using namespace moeq;
using namespace moeq::test;

namespace {

enum class Kind { kBlock, kChannel, kTensorStatic, kInt8, kBf16 };

struct Fixture {
  const char* dir;
  Kind layer0, layer1;
  const char* scale_name;
};

const Fixture kFixtures[] = {
    {"qwen3_moe-fp8_dynamic-oneshot-layer1_ignored", Kind::kChannel, Kind::kBf16, "weight_scale"},
    {"qwen3_moe-fp8_block-oneshot", Kind::kBlock, Kind::kBlock, "weight_scale"},
    {"qwen3_moe-fp8_block-model_free", Kind::kBlock, Kind::kBlock, "weight_scale"},
    {"qwen3_moe-fp8_static-oneshot", Kind::kTensorStatic, Kind::kTensorStatic, "weight_scale"},
    {"mixtral-fp8_dynamic-oneshot", Kind::kChannel, Kind::kChannel, "weight_scale"},
    {"mixtral-fp8_block-oneshot", Kind::kBlock, Kind::kBlock, "weight_scale"},
    {"mixtral-fp8_block-model_free", Kind::kBlock, Kind::kBlock, "weight_scale"},
    {"mixtral-int8_w8a16-oneshot", Kind::kInt8, Kind::kInt8, "weight_scale"},
};

std::filesystem::path real_dir(const char* name) { return std::filesystem::path(MOEQ_TEST_FIXTURE_DIR) / "real" / name; }

// The producer's tensors of one expert projection, found by the leaf names it writes.
struct Proj {
  const TensorInfo* weight = nullptr;
  const TensorInfo* scale = nullptr;
  const TensorInfo* input_scale = nullptr;
};

Proj find_proj(const Checkpoint& ck, const std::string& expert_prefix, int which, const char* scale_name) {
  static const char* const kLeaves[2][3] = {{"gate_proj", "up_proj", "down_proj"}, {"w1", "w3", "w2"}};
  for (const auto& leaves : kLeaves) {
    const std::string base = expert_prefix + leaves[which] + ".";
    if (const TensorInfo* w = ck.find(base + "weight"))
      return {w, ck.find(base + scale_name), ck.find(base + "input_scale")};
  }
  FAIL("no weight for " << expert_prefix << " projection " << which);
  return {};
}

// q x scale for a weight [n, k], the scale's granularity read from its shape.
std::vector<float> dequantize(const Proj& p, Kind kind) {
  const int64_t n = p.weight->shape.at(0), k = p.weight->shape.at(1);
  std::vector<float> out(static_cast<size_t>(n * k));
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < k; ++c) {
      const size_t i = static_cast<size_t>(r * k + c);
      float scale = 1.0f;
      if (kind == Kind::kBlock) {
        const int64_t cols = p.scale->shape.at(1);
        scale = load_as_float(p.scale->data, p.scale->dtype, static_cast<size_t>((r / 128) * cols + c / 128));
      } else if (kind == Kind::kChannel || kind == Kind::kInt8) {
        scale = load_as_float(p.scale->data, p.scale->dtype, static_cast<size_t>(r));
      } else if (kind == Kind::kTensorStatic) {
        scale = load_as_float(p.scale->data, p.scale->dtype, 0);
      }
      out[i] = load_as_float(p.weight->data, p.weight->dtype, i) * scale;
    }
  return out;
}

struct Independent {
  ref::ExpertWeights weights;
  ref::MoeOptions act;
};

Independent read_layer(const Checkpoint& ck, const std::string& prefix, Kind kind, const char* scale_name, int64_t E,
                       int64_t H, int64_t I) {
  Independent r;
  r.weights.num_experts = E;
  r.weights.hidden = H;
  r.weights.intermediate = I;
  float a1 = 0, a2 = 0;
  for (int64_t e = 0; e < E; ++e) {
    const std::string ep = prefix + ".experts." + std::to_string(e) + ".";
    for (int which = 0; which < 3; ++which) {
      const Proj p = find_proj(ck, ep, which, scale_name);
      const DType want = kind == Kind::kBf16 ? DType::BF16 : kind == Kind::kInt8 ? DType::I8 : DType::F8_E4M3;
      REQUIRE(p.weight->dtype == want);
      REQUIRE((p.scale != nullptr) == (kind != Kind::kBf16));
      const std::vector<float> d = dequantize(p, kind);
      auto& dst = which == 2 ? r.weights.w2 : r.weights.w13;
      dst.insert(dst.end(), d.begin(), d.end());
      if (kind == Kind::kTensorStatic) {
        REQUIRE(p.input_scale != nullptr);
        const float s = load_as_float(p.input_scale->data, p.input_scale->dtype, 0);
        (which == 2 ? a2 : a1) = std::max(which == 2 ? a2 : a1, s);
      }
    }
  }
  switch (kind) {
    case Kind::kBlock: r.act = both(act(ref::ActQuant::kFp8PerGroup, 128)); break;
    case Kind::kChannel: r.act = both(act(ref::ActQuant::kFp8PerToken)); break;
    case Kind::kTensorStatic:
      r.act = both(act(ref::ActQuant::kFp8PerTensorStatic, 0, a1), act(ref::ActQuant::kFp8PerTensorStatic, 0, a2));
      break;
    case Kind::kInt8:
    case Kind::kBf16: r.act = both(act(ref::ActQuant::kNone)); break;
  }
  return r;
}

}  // namespace

TEST_CASE("real llm-compressor checkpoints load strictly and apply within tolerance of the float reference") {
  BuiltPlugins p;
  for (const Fixture& f : kFixtures) {
    const std::string fixture = f.dir;
    CAPTURE(fixture);
    const Checkpoint ck = Checkpoint::open(real_dir(f.dir));
    LoadedModel m = load_model(ck, p.registry(), {});  // strict
    REQUIRE(m.layers.size() == 2);
    const MoeConfig& c = m.config;
    CHECK(c.hidden_size == 128);
    CHECK(c.intermediate_size == 192);
    CHECK(c.num_experts == 4);
    for (size_t li = 0; li < 2; ++li) {
      const Kind kind = li == 0 ? f.layer0 : f.layer1;
      const LoadedLayer& layer = *m.layers[li];
      CHECK(layer.report.ok());
      CHECK(layer.report.plugin == "compressed_tensors");
      const Independent want =
          read_layer(ck, layer.report.prefix, kind, f.scale_name, c.num_experts, c.hidden_size, c.intermediate_size);
      ref::MoeOptions got_act;
      const ref::ExpertWeights got = m.dequantized(li, &got_act);
      CHECK(got.w13 == want.weights.w13);  // the plugin read exactly what the file holds
      CHECK(got.w2 == want.weights.w2);
      CHECK(same_spec(got_act.a1, want.act.a1));
      CHECK(same_spec(got_act.a2, want.act.a2));
      // Tokens routed by the checkpoint's own router.
      const int64_t M = 40;
      const auto x = bf16_tokens(M, c.hidden_size, 500 + li);
      std::vector<float> logits(static_cast<size_t>(M * c.num_experts));
      const std::vector<float> router = m.router_weight(li);
      for (int64_t t = 0; t < M; ++t)
        for (int64_t e = 0; e < c.num_experts; ++e) {
          double s = 0;
          for (int64_t k = 0; k < c.hidden_size; ++k) s += double(x[t * c.hidden_size + k]) * router[e * c.hidden_size + k];
          logits[t * c.num_experts + e] = static_cast<float>(s);
        }
      const ref::Routing routing = ref::route(logits, M, c.num_experts, m.routing(li));
      const auto out = m.apply(li, x, M, routing);
      const auto reference = ref::moe_forward(want.weights, x, M, routing, want.act);
      const double tol = kind == Kind::kBlock ? 0.0175 : 1e-4;
      check_close(out, reference, tol, tol, 1e-5, std::string(f.dir) + " " + layer.report.prefix);
      const std::string desc = layer.report.describe_json;
      CHECK(desc.find(kind == Kind::kBf16 ? "\"scale_names\":[]" : "\"scale_names\":[\"weight_scale\"]") !=
            std::string::npos);
    }
  }
}

TEST_CASE("real FP8_BLOCK checkpoints at TP 2: I/tp = 96 is not a multiple of 128, each rank holds the exact slice") {
  BuiltPlugins p;
  for (const Fixture& f : kFixtures) {
    if (f.layer0 != Kind::kBlock) continue;
    const std::string fixture = f.dir;
    CAPTURE(fixture);
    const Checkpoint ck = Checkpoint::open(real_dir(f.dir));
    LoadedModel full = load_model(ck, p.registry(), {});
    const ref::ExpertWeights whole = full.dequantized(0, nullptr);
    for (int r = 0; r < 2; ++r) {
      LoadOptions o;
      o.placement = {r, 2, 0, 1};
      LoadedModel m = load_model(ck, p.registry(), o);
      const ref::ExpertWeights mine = m.dequantized(0, nullptr);
      const ref::ExpertWeights want = slice(whole, 0, 4, r * 96, 96);
      CHECK(mine.w13 == want.w13);
      CHECK(mine.w2 == want.w2);
    }
  }
}
