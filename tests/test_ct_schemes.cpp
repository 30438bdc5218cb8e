// compressed_tensors, scheme by scheme on writer-made checkpoints: strict load, the plugin's
// dequantized weights equal the writer's float masters exactly, it reports the activation
// quantization the scheme defines, and CPU apply is within tolerance of the core's float
// reference that quantizes activations the same way.
//
// Tolerances (elementwise |out - ref| <= atol + rtol |ref|, plus relative L2):
//   block:                         atol = rtol = 0.0175 (half of vLLM's test_block_fp8 bound)
//   channel, tensor, int8, bf16:   atol = rtol = 1e-4   (vLLM: PTPC mean relative error 5e-2,
//                                                        fused MoE atol 2e-2)
//   every scheme:                  relative L2 <= 1e-5
// The plugin and the reference differ only in summation order (fp32 K-tiles vs double).
#include "ct_support.hpp"

#include <moeq/expert_name_router.hpp>
#include <moeq_writer/producers.hpp>

#include <boost/json.hpp>

using namespace moeq;
using namespace moeq::test;

namespace {

constexpr double kBlockTol = 0.0175;
constexpr double kTightTol = 1e-4;
constexpr double kMaxRelL2 = 1e-5;

writer::MoeSpec spec(writer::Layout layout = writer::Layout::kPerExpert, int64_t experts = 4, int64_t hidden = 256,
                     int64_t intermediate = 192, uint64_t seed = 11) {
  writer::MoeSpec s;
  s.layout = layout;
  s.num_layers = 2;
  s.num_experts = experts;
  s.hidden = hidden;
  s.intermediate = intermediate;  // 192: a ragged block row in gate/up, a ragged block column in down
  s.seed = seed;
  return s;
}

using ActFn = std::function<ref::MoeOptions(const writer::LayerMasters&)>;

ref::MoeOptions per_group(const writer::LayerMasters&) { return both(act(ref::ActQuant::kFp8PerGroup, 128)); }
ref::MoeOptions per_token(const writer::LayerMasters&) { return both(act(ref::ActQuant::kFp8PerToken)); }
ref::MoeOptions none(const writer::LayerMasters&) { return both(act(ref::ActQuant::kNone)); }

// Static per-tensor: GEMM1 quantizes x once with the max over w1/w3 and experts; GEMM2 with
// the experts' max of w2.
ref::MoeOptions static_max(const writer::LayerMasters& m) {
  float a1 = 0, a2 = 0;
  for (size_t e = 0; e * 3 < m.input_scales.size(); ++e) {
    a1 = std::max({a1, m.input_scales[e * 3], m.input_scales[e * 3 + 1]});
    a2 = std::max(a2, m.input_scales[e * 3 + 2]);
  }
  return both(act(ref::ActQuant::kFp8PerTensorStatic, 0, a1), act(ref::ActQuant::kFp8PerTensorStatic, 0, a2));
}

// Loads strictly and checks every layer; returns the describe JSON of each layer.
std::vector<boost::json::object> check_scheme(const writer::WrittenCheckpoint& w, const ActFn& expected, double tol,
                                              const std::string& what) {
  BuiltPlugins p;
  LoadedModel m = load_dir(w.dir, p.registry());
  REQUIRE(m.layers.size() == w.layers.size());
  std::vector<boost::json::object> described;
  for (size_t li = 0; li < m.layers.size(); ++li) {
    const writer::LayerMasters& master = w.layers[li];
    CHECK(m.layers[li]->report.prefix == master.prefix);
    CHECK(m.layers[li]->report.plugin == "compressed_tensors");
    CHECK(m.layers[li]->report.ok());
    ref::MoeOptions got;
    const ref::ExpertWeights deq = m.dequantized(li, &got);
    CHECK(deq.w13 == master.dequantized.w13);  // bit-exact: the same codes times the same scales
    CHECK(deq.w2 == master.dequantized.w2);
    const ref::MoeOptions want = expected(master);
    CHECK(same_spec(got.a1, want.a1));
    CHECK(same_spec(got.a2, want.a2));
    const int64_t M = 24, H = w.spec.hidden;
    const auto x = bf16_tokens(M, H, 100 + li);
    const auto routing = random_routing(M, w.spec.num_experts, w.spec.top_k, 200 + li);
    const auto out = m.apply(li, x, M, routing);
    const auto reference = ref::moe_forward(master.dequantized, x, M, routing, want);
    check_close(out, reference, tol, tol, kMaxRelL2, what + " " + master.prefix);
    described.push_back(boost::json::parse(m.layers[li]->report.describe_json).as_object());
  }
  return described;
}

std::string str(const boost::json::value& v) { return std::string(v.as_string()); }

bool has_name(const boost::json::object& d, const char* name) {
  for (const auto& n : d.at("scale_names").as_array())
    if (n.as_string() == name) return true;
  return false;
}

}  // namespace

TEST_CASE("FP8 block [128,128] with weight_scale (llm-compressor FP8_BLOCK) loads and applies within 0.0175") {
  TempDir d;
  auto w = writer::write_ct_fp8_block(d / "ckpt", spec());
  auto desc = check_scheme(w, per_group, kBlockTol, "ct fp8 block weight_scale");
  CHECK(str(desc[0].at("granularity")) == "block [128, 128]");
  CHECK(has_name(desc[0], "weight_scale"));
  CHECK(str(desc[0].at("activations")) == "fp8 dynamic per token per group of 128");
}

TEST_CASE("FP8 block named weight_scale_inv under a compressed-tensors config is the same multiplier (Mixtral)") {
  TempDir d;
  auto w = writer::write_ct_fp8_block(d / "ckpt", spec(writer::Layout::kMixtral, 4, 256, 192, 12), 128, 128,
                                      "weight_scale_inv");
  auto desc = check_scheme(w, per_group, kBlockTol, "ct fp8 block weight_scale_inv");
  CHECK(has_name(desc[1], "weight_scale_inv"));
  CHECK(!has_name(desc[1], "weight_scale"));
}

TEST_CASE("FP8 block with non-square blocks [64,128] and a ragged hidden size") {
  TempDir d;
  auto w = writer::write_ct_fp8_block(d / "ckpt", spec(writer::Layout::kPerExpert, 4, 200, 96, 13), 64, 128);
  auto desc = check_scheme(w, per_group, kBlockTol, "ct fp8 block [64,128] H=200");
  CHECK(str(desc[0].at("granularity")) == "block [64, 128]");
}

TEST_CASE("FP8 block with an activation group of 64 inside 128-wide weight blocks") {
  TempDir d;
  writer::QuantSpec q;
  q.weights = writer::WeightScheme::kFp8Block;
  q.act_group = 64;
  auto w = writer::write_moe_checkpoint(d / "ckpt", spec(writer::Layout::kPerExpert, 4, 256, 192, 14), q);
  check_scheme(w, [](const writer::LayerMasters&) { return both(act(ref::ActQuant::kFp8PerGroup, 64)); }, kBlockTol,
               "ct fp8 block, act group 64");
}

TEST_CASE("DeepSeek-V3 native fp8 (quant_method fp8, F32 weight_scale_inv) loads with its grouped sigmoid router") {
  TempDir d;
  auto w = writer::write_hf_fp8_block(d / "ckpt", spec(writer::Layout::kDeepSeekV3, 8, 256, 192, 15));
  auto desc = check_scheme(w, per_group, kBlockTol, "deepseek-v3 fp8 block");
  CHECK(str(desc[0].at("config")) == "quant_method fp8 (DeepSeek/Qwen native)");
  CHECK(has_name(desc[0], "weight_scale_inv"));
  CHECK(str(desc[0].at("scale_dtypes").as_array()[0]) == "F32");
  // The router of the checkpoint runs too: sigmoid, correction bias, grouped top-k.
  BuiltPlugins p;
  LoadedModel m = load_dir(w.dir, p.registry());
  const ref::RoutingOptions r = m.routing(0);
  CHECK(r.scoring == ref::Scoring::kSigmoid);
  CHECK(r.correction_bias.size() == 8);
  CHECK(r.n_group == 2);
}

TEST_CASE("DeepSeek-V4 ffn.experts.{e}.w1/w2/w3 with `.scale`: the family table renames it to weight_scale_inv") {
  const RoutedName r = route_tensor_name("layers.7.ffn.experts.5.w3.scale");
  CHECK(r.role == TensorRole::kExpert);
  CHECK(r.family == "per_expert_w");
  CHECK(r.layer == 7);
  CHECK(r.expert == 5);
  CHECK(r.projection == Projection::kW3);
  CHECK(r.suffix == "weight_scale_inv");
  CHECK(route_tensor_name("layers.7.ffn.experts.5.w2.weight").suffix == "weight");
  TempDir d;
  auto w = writer::write_hf_fp8_block(d / "ckpt", spec(writer::Layout::kDeepSeekV4, 4, 256, 192, 16));
  auto desc = check_scheme(w, per_group, kBlockTol, "deepseek-v4 fp8 block");
  CHECK(has_name(desc[0], "weight_scale_inv"));
  CHECK(w.layers[0].prefix == "layers.0.ffn");
}

TEST_CASE("FP8 channel (FP8_DYNAMIC) still runs through the one method, per-token activations") {
  TempDir d;
  auto w = writer::write_ct_fp8_channel(d / "ckpt", spec(writer::Layout::kPerExpert, 4, 128, 96, 17));
  auto desc = check_scheme(w, per_token, kTightTol, "ct fp8 channel");
  CHECK(str(desc[0].at("granularity")) == "channel");
}

TEST_CASE("FP8 per-tensor, static input_scale: w1 and w3 keep their own weight scales") {
  TempDir d;
  LogCapture log;
  auto w = writer::write_ct_fp8_tensor(d / "ckpt", spec(writer::Layout::kPerExpert, 4, 128, 96, 18));
  auto desc = check_scheme(w, static_max, kTightTol, "ct fp8 tensor static");
  CHECK(str(desc[0].at("granularity")) == "tensor");
  CHECK(log.count("differ for") == 0);  // equal w1/w3 input scales: nothing to say
  // The scales were not requantized to one per expert: gate and up dequantize with their own.
  BuiltPlugins p;
  LoadedModel m = load_dir(w.dir, p.registry());
  const DLTensor* s13 = nullptr;
  for (const auto& prm : m.layers[0]->layer->params)
    if (prm->name == "w13_weight_scale") s13 = &prm->tensor;
  REQUIRE(s13 != nullptr);
  REQUIRE(s13->shape[1] == 2);
  const auto* s = static_cast<const float*>(s13->data);
  int distinct = 0;
  for (int64_t e = 0; e < 4; ++e) distinct += s[e * 2] != s[e * 2 + 1];
  CHECK(distinct == 4);  // random gate and up weights have different amax
}

TEST_CASE("FP8 per-tensor static: w1/w3 input scales that differ use the max, logged once per layer") {
  TempDir d;
  LogCapture log;
  auto w = writer::write_ct_fp8_tensor(d / "ckpt", spec(writer::Layout::kPerExpert, 4, 128, 96, 19), true, 1.25f);
  check_scheme(w, static_max, kTightTol, "ct fp8 tensor static, w3 input scale 1.25x");
  // check_scheme loads once: one warning for each of the two layers.
  CHECK(log.count("static input_scale of w1 (gate_proj) and w3 (up_proj) differ for 4 of 4 experts") == 2);
  CHECK(log.count("model.layers.0.mlp.experts") == 1);
  CHECK(log.count("model.layers.1.mlp.experts") == 1);
}

TEST_CASE("FP8 per-tensor with dynamic per-tensor activations") {
  TempDir d;
  auto w = writer::write_ct_fp8_tensor(d / "ckpt", spec(writer::Layout::kMixtral, 4, 128, 96, 20), false);
  check_scheme(w, [](const writer::LayerMasters&) { return both(act(ref::ActQuant::kFp8PerTensorDynamic)); },
               kTightTol, "ct fp8 tensor dynamic");
}

TEST_CASE("FP8 per-tensor static on Granite's fused experts: one scale for gate and up, [E] input scales") {
  TempDir d;
  auto w = writer::write_ct_fp8_tensor(d / "ckpt", spec(writer::Layout::kGraniteFused, 4, 128, 96, 21));
  check_scheme(w, static_max, kTightTol, "granite fp8 tensor static");
}

TEST_CASE("native fp8 per-tensor with activation_scheme static") {
  TempDir d;
  writer::QuantSpec q;
  q.weights = writer::WeightScheme::kFp8Tensor;
  q.config = writer::ConfigKind::kNativeFp8;
  auto w = writer::write_moe_checkpoint(d / "ckpt", spec(writer::Layout::kDeepSeekV3, 4, 128, 96, 22), q);
  check_scheme(w, static_max, kTightTol, "native fp8 tensor static");
}

TEST_CASE("int8 weight-only per channel (W8A16, I8 naive-quantized): activations stay float") {
  TempDir d;
  auto w = writer::write_ct_int8_channel(d / "ckpt", spec(writer::Layout::kPerExpert, 4, 128, 96, 23));
  auto desc = check_scheme(w, none, kTightTol, "ct int8 w8a16");
  CHECK(str(desc[0].at("scheme")) == "int8 w8a16");
  CHECK(str(desc[0].at("activations")) == "not quantized (weight-only)");
}

TEST_CASE("int8 W8A16 on Granite's fused [E,2I,1] scales") {
  TempDir d;
  auto w = writer::write_ct_int8_channel(d / "ckpt", spec(writer::Layout::kGraniteFused, 4, 128, 96, 24));
  check_scheme(w, none, kTightTol, "granite int8 w8a16");
}

TEST_CASE("bf16 experts without any quantization_config load through the same method, no scales") {
  TempDir d;
  auto w = writer::write_unquantized(d / "ckpt", spec(writer::Layout::kPerExpert, 4, 128, 96, 25));
  auto desc = check_scheme(w, none, kTightTol, "bf16 no config");
  CHECK(str(desc[0].at("scheme")) == "unquantized");
  CHECK(str(desc[0].at("unquantized_because")) == "no quantization_config");
}

TEST_CASE("a partly quantized checkpoint: experts of layer 1 in `ignore` load unquantized beside FP8 block layer 0") {
  TempDir d;
  writer::QuantSpec q;
  q.weights = writer::WeightScheme::kFp8Block;
  q.unquantized_layers = {1};
  auto w = writer::write_moe_checkpoint(d / "ckpt", spec(writer::Layout::kPerExpert, 4, 256, 192, 26), q);
  REQUIRE(!w.layers[1].quantized);
  auto desc = check_scheme(
      w, [](const writer::LayerMasters& m) { return m.quantized ? per_group(m) : none(m); }, kBlockTol,
      "partly quantized");
  CHECK(str(desc[0].at("granularity")) == "block [128, 128]");
  CHECK(str(desc[1].at("scheme")) == "unquantized");
  CHECK(str(desc[1].at("unquantized_because")).find("listed in quantization_config.ignore") != std::string::npos);
}

TEST_CASE("apply writes BF16 output and reads BF16 tokens like F32 ones, rounded once") {
  TempDir d;
  auto w = writer::write_ct_fp8_block(d / "ckpt", spec(writer::Layout::kPerExpert, 4, 128, 64, 27));
  BuiltPlugins p;
  LoadedModel m = load_dir(w.dir, p.registry());
  const int64_t M = 5, H = 128, K = 2;
  const auto x = bf16_tokens(M, H, 31);
  const auto routing = random_routing(M, 4, K, 32);
  const auto f32 = m.apply(0, x, M, routing);
  std::vector<uint16_t> xb(x.size()), ob(x.size());
  for (size_t i = 0; i < x.size(); ++i) xb[i] = float_to_bf16(x[i]);
  int64_t xs[2] = {M, H}, xst[2] = {H, 1}, ks[2] = {M, K}, kst[2] = {K, 1};
  DLTensor tx{xb.data(), {kDLCPU, 0}, 2, {kDLBfloat, 16, 1}, xs, xst, 0};
  DLTensor to{ob.data(), {kDLCPU, 0}, 2, {kDLBfloat, 16, 1}, xs, xst, 0};
  DLTensor ti{const_cast<int32_t*>(routing.ids.data()), {kDLCPU, 0}, 2, {kDLInt, 32, 1}, ks, kst, 0};
  DLTensor tw{const_cast<float*>(routing.weights.data()), {kDLCPU, 0}, 2, {kDLFloat, 32, 1}, ks, kst, 0};
  const LoadedLayer& l = *m.layers[0];
  moeq_apply_args a{sizeof(moeq_apply_args), l.method, &tx, &ti, &tw, &to, nullptr};
  host::throw_if_error(l.plugin->api->apply(&a), "apply");
  size_t mismatched = 0;
  for (size_t i = 0; i < x.size(); ++i) mismatched += ob[i] != float_to_bf16(f32[i]);
  CHECK(mismatched == 0);
}
