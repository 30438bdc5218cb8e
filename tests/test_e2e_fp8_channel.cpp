// End to end: write a producer-layout checkpoint -> load through the compressed_tensors
// plugin .so -> apply on CPU -> compare with the core float reference on the writer's own
// dequantized masters. Granite fused and per-expert layouts, TP and EP placements.
#include "support.hpp"

#include <moeq_writer/producers.hpp>

#include <cmath>
#include <random>

using namespace moeq;
using namespace moeq::test;

namespace {

// The slice of the full masters that TP rank r / EP range holds.
ref::ExpertWeights shard(const ref::ExpertWeights& full, int tp_rank, int tp_size, ExpertRange experts) {
  const int64_t H = full.hidden, I = full.intermediate, It = I / tp_size;
  ref::ExpertWeights w;
  w.num_experts = experts.count;
  w.first_expert = experts.first;
  w.hidden = H;
  w.intermediate = It;
  for (int64_t e = experts.first; e < experts.first + experts.count; ++e) {
    const float* w13 = full.w13.data() + e * 2 * I * H;
    for (int half = 0; half < 2; ++half)
      for (int64_t i = 0; i < It; ++i) {
        const float* row = w13 + (half * I + tp_rank * It + i) * H;
        w.w13.insert(w.w13.end(), row, row + H);
      }
    const float* w2 = full.w2.data() + e * H * I;
    for (int64_t h = 0; h < H; ++h) w.w2.insert(w.w2.end(), w2 + h * I + tp_rank * It, w2 + h * I + (tp_rank + 1) * It);
  }
  return w;
}

ref::MoeOptions per_token() {
  ref::MoeOptions o;
  o.a1.kind = ref::ActQuant::kFp8PerToken;
  o.a2.kind = ref::ActQuant::kFp8PerToken;
  return o;
}

writer::MoeSpec small_spec(writer::Layout layout) {
  writer::MoeSpec s;
  s.layout = layout;
  s.num_layers = 2;
  s.num_experts = 8;
  s.hidden = 128;
  s.intermediate = 64;
  s.top_k = 2;
  s.seed = 20261122;
  return s;
}

void check_strict_clean(const LoadedModel& model, size_t expected_layers) {
  REQUIRE(model.layers.size() == expected_layers);
  CHECK(model.failed.empty());
  for (const auto& l : model.layers) {
    const LayerReport& r = l->report;
    CAPTURE(r.prefix);
    CHECK(r.ok());
    CHECK(r.plugin == "compressed_tensors");
    CHECK(r.count(LedgerEntry::State::kUnknown) == 0);
    CHECK(r.count(LedgerEntry::State::kError) == 0);
    CHECK(r.count(LedgerEntry::State::kSkipped) == 0);
    CHECK(r.count(LedgerEntry::State::kConsumed) > 0);
    for (const ParamCoverage& c : r.params) {
      CAPTURE(c.name);
      CHECK(c.written == c.numel);
      CHECK(c.first_gap.empty());
    }
  }
}

}  // namespace

TEST_CASE("granite fused FP8_DYNAMIC: weight_scale [E,2I,1] and [E,H,1] load strictly and apply matches") {
  BuiltPlugins plugins;
  TempDir dir;
  writer::WrittenCheckpoint w = writer::write_ct_fp8_channel(dir / "ckpt", small_spec(writer::Layout::kGraniteFused));
  LoadedModel model = load_dir(w.dir, plugins.registry());
  check_strict_clean(model, 2);
  // Four tensors per layer: both fused weights and both fused scales, each split to every expert.
  for (const auto& l : model.layers) {
    CHECK(l->report.count(LedgerEntry::State::kConsumed) == 4);
    CHECK(l->report.count(LedgerEntry::State::kRouter) == 1);
    for (const LedgerEntry& e : l->report.entries) {
      if (e.tensor.ends_with("input_linear.weight_scale")) CHECK(e.routed_to == "w1+w3 of experts 0..7");
      if (e.tensor.ends_with("output_linear.weight_scale")) CHECK(e.routed_to == "w2 of experts 0..7");
    }
  }
  for (size_t li = 0; li < model.layers.size(); ++li) {
    const auto& masters = w.layers[li];
    const std::vector<float> x = seeded_tokens(33, 128, 100 + li);
    const ref::Routing r = route_with(masters, x, 33, 2);
    const std::vector<float> out = model.apply(li, x, 33, r);
    const double err = ref::relative_l2(out, ref::moe_forward(masters.dequantized, x, 33, r, per_token()));
    const double err_float = ref::relative_l2(out, ref::moe_forward(masters.dequantized, x, 33, r, {}));
    CHECK(err <= 1e-4);
    CHECK(err_float > 1e-3);  // the scheme quantizes activations: plain float math differs
    CHECK(err_float < 0.1);
  }
}

TEST_CASE("per-expert layout with [N] scales in F32 and F16 loads the same way") {
  BuiltPlugins plugins;
  for (DType sdt : {DType::F32, DType::F16, DType::BF16}) {
    CAPTURE(dtype_name(sdt));
    TempDir dir;
    writer::MoeSpec spec = small_spec(writer::Layout::kPerExpert);
    spec.scale_dtype = sdt;
    spec.scale_1d = sdt != DType::BF16;
    writer::WrittenCheckpoint w = writer::write_ct_fp8_channel(dir / "ckpt", spec);
    LoadedModel model = load_dir(w.dir, plugins.registry());
    check_strict_clean(model, 2);
    CHECK(model.layers[0]->report.count(LedgerEntry::State::kConsumed) == 6 * 8);
    const std::vector<float> x = seeded_tokens(17, 128, 5);
    const ref::Routing r = route_with(w.layers[0], x, 17, 2);
    CHECK(ref::relative_l2(model.apply(0, x, 17, r), ref::moe_forward(w.layers[0].dequantized, x, 17, r, per_token())) <=
          1e-4);
  }
}

TEST_CASE("the plugin holds exactly the writer's dequantized weights") {
  BuiltPlugins plugins;
  for (auto layout : {writer::Layout::kGraniteFused, writer::Layout::kPerExpert}) {
    TempDir dir;
    writer::WrittenCheckpoint w = writer::write_ct_fp8_channel(dir / "ckpt", small_spec(layout));
    LoadedModel model = load_dir(w.dir, plugins.registry());
    ref::MoeOptions act;
    ref::ExpertWeights got = model.dequantized(1, &act);
    CHECK(got.w13 == w.layers[1].dequantized.w13);
    CHECK(got.w2 == w.layers[1].dequantized.w2);
    CHECK(act.a1.kind == ref::ActQuant::kFp8PerToken);
    CHECK(act.a2.kind == ref::ActQuant::kFp8PerToken);
  }
}

TEST_CASE("TP=2: each rank holds its slice and partial outputs sum to the TP=1 output") {
  BuiltPlugins plugins;
  for (auto layout : {writer::Layout::kGraniteFused, writer::Layout::kPerExpert}) {
    CAPTURE(writer::layout_name(layout));
    TempDir dir;
    writer::WrittenCheckpoint w = writer::write_ct_fp8_channel(dir / "ckpt", small_spec(layout));
    LoadedModel full = load_dir(w.dir, plugins.registry());
    const std::vector<float> x = seeded_tokens(29, 128, 77);
    const ref::Routing r = route_with(w.layers[0], x, 29, 2);
    const std::vector<float> out1 = full.apply(0, x, 29, r);
    std::vector<float> sum(out1.size(), 0.0f), ref_sum(out1.size(), 0.0f);
    for (int rank = 0; rank < 2; ++rank) {
      LoadOptions o;
      o.placement = {rank, 2, 0, 1};
      LoadedModel part = load_dir(w.dir, plugins.registry(), o);
      check_strict_clean(part, 2);
      const ref::ExpertWeights expect = shard(w.layers[0].dequantized, rank, 2, {0, 8});
      ref::ExpertWeights got = part.dequantized(0, nullptr);
      CHECK(got.intermediate == 32);
      CHECK(got.w13 == expect.w13);
      CHECK(got.w2 == expect.w2);
      const std::vector<float> p = part.apply(0, x, 29, r);
      const std::vector<float> pr = ref::moe_forward(expect, x, 29, r, per_token());
      for (size_t i = 0; i < sum.size(); ++i) sum[i] += p[i], ref_sum[i] += pr[i];
    }
    // Each rank quantizes its half of the intermediate with its own per-token scale, so the sum
    // equals the per-rank references tightly and the TP=1 output within the FP8 rounding of it.
    CHECK(ref::relative_l2(sum, ref_sum) <= 1e-4);
    CHECK(ref::relative_l2(sum, out1) <= 3e-2);
  }
}

TEST_CASE("EP=2: non-local experts are skipped and recorded, partial outputs sum to the EP=1 output") {
  BuiltPlugins plugins;
  TempDir dir;
  writer::WrittenCheckpoint w = writer::write_ct_fp8_channel(dir / "ckpt", small_spec(writer::Layout::kPerExpert));
  LoadedModel full = load_dir(w.dir, plugins.registry());
  const std::vector<float> x = seeded_tokens(41, 128, 9);
  const ref::Routing r = route_with(w.layers[1], x, 41, 2);
  const std::vector<float> out1 = full.apply(1, x, 41, r);
  std::vector<float> sum(out1.size(), 0.0f);
  for (int rank = 0; rank < 2; ++rank) {
    LoadOptions o;
    o.placement = {0, 1, rank, 2};
    LoadedModel part = load_dir(w.dir, plugins.registry(), o);
    check_strict_clean(part, 2);
    const LayerReport& rep = part.layers[1]->report;
    CHECK(rep.count(LedgerEntry::State::kNotLocal) == 6 * 4);
    CHECK(rep.count(LedgerEntry::State::kConsumed) == 6 * 4);
    ref::ExpertWeights got = part.dequantized(1, nullptr);
    const ref::ExpertWeights expect = shard(w.layers[1].dequantized, 0, 1, {rank * 4, 4});
    CHECK(got.first_expert == rank * 4);
    CHECK(got.w13 == expect.w13);
    CHECK(got.w2 == expect.w2);
    const std::vector<float> p = part.apply(1, x, 41, r);
    for (size_t i = 0; i < sum.size(); ++i) sum[i] += p[i];
  }
  CHECK(ref::relative_l2(sum, out1) <= 1e-6);
}

TEST_CASE("EP with a remainder and fused layout: 8 experts over 3 ranks") {
  BuiltPlugins plugins;
  TempDir dir;
  writer::WrittenCheckpoint w = writer::write_ct_fp8_channel(dir / "ckpt", small_spec(writer::Layout::kGraniteFused));
  LoadedModel full = load_dir(w.dir, plugins.registry());
  const std::vector<float> x = seeded_tokens(23, 128, 3);
  const ref::Routing r = route_with(w.layers[0], x, 23, 2);
  const std::vector<float> out1 = full.apply(0, x, 23, r);
  std::vector<float> sum(out1.size(), 0.0f);
  const int64_t counts[] = {3, 3, 2};
  for (int rank = 0; rank < 3; ++rank) {
    LoadOptions o;
    o.placement = {0, 1, rank, 3};
    LoadedModel part = load_dir(w.dir, plugins.registry(), o);
    check_strict_clean(part, 2);
    CHECK(part.layers[0]->geometry.num_local_experts == counts[rank]);
    const std::vector<float> p = part.apply(0, x, 23, r);
    for (size_t i = 0; i < sum.size(); ++i) sum[i] += p[i];
  }
  CHECK(ref::relative_l2(sum, out1) <= 1e-6);
}
