// online_quant: bf16 experts quantized as they arrive (int8 W8A16, fp8 per tensor / per
// channel / 128x128 block), run by compressed_tensors. Checked against the float reference of
// the original bf16 weights, against an independent reimplementation of each quantizer, for TP
// invariance, and for all-zero rows and experts.
#include "support.hpp"

#include <malloc.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <fstream>
#include <limits>
#include <thread>

using namespace moeq;
using namespace moeq::test;

namespace {

const char* kSchemes[] = {"int8", "fp8-tensor", "fp8-channel", "fp8-block"};

writer::MoeSpec spec(writer::Layout layout) {
  writer::MoeSpec s;
  s.layout = layout;
  s.num_layers = 1;
  s.num_experts = 4;
  s.hidden = 256;
  s.intermediate = 192;  // 192: ragged 128-blocks, and 48 rows per rank at TP=4
  s.seed = 5150;
  return s;
}

LoadOptions online(const std::string& scheme, int tp_rank = 0, int tp = 1) {
  LoadOptions o;
  o.online_scheme = scheme;
  o.placement = {tp_rank, tp, 0, 1};
  return o;
}

// The independent reimplementation: dequantized values of one projection [rows, cols].
std::vector<float> expected_dequant(const std::string& scheme, const float* w, int64_t rows, int64_t cols) {
  std::vector<float> out(static_cast<size_t>(rows * cols));
  auto amax_of = [&](int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
    float m = 0;
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = c0; c < c1; ++c) m = std::max(m, std::fabs(w[r * cols + c]));
    return m;
  };
  // amax / qmax; 1 for zero; at least the smallest normal float; a step down where qmax s overflows.
  auto scale_of = [](float m, float qmax) {
    if (m == 0) return 1.0f;
    const float s = m / qmax;
    if (s < std::numeric_limits<float>::min()) return std::numeric_limits<float>::min();
    return std::isinf(s * qmax) ? std::nextafter(s, 0.0f) : s;
  };
  auto fp8_cell = [&](int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
    const float s = scale_of(amax_of(r0, r1, c0, c1), 448.0f);
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = c0; c < c1; ++c) {
        const float v = std::clamp(w[r * cols + c] / s, -448.0f, 448.0f);
        out[r * cols + c] = fp8_e4m3_to_float(float_to_fp8_e4m3(v)) * s;
      }
  };
  if (scheme == "int8") {
    for (int64_t r = 0; r < rows; ++r) {
      const float s = scale_of(amax_of(r, r + 1, 0, cols), 127.0f);
      for (int64_t c = 0; c < cols; ++c)
        out[r * cols + c] = std::clamp(std::nearbyint(w[r * cols + c] / s), -127.0f, 127.0f) * s;
    }
  } else if (scheme == "fp8-tensor") {
    fp8_cell(0, rows, 0, cols);
  } else if (scheme == "fp8-channel") {
    for (int64_t r = 0; r < rows; ++r) fp8_cell(r, r + 1, 0, cols);
  } else {
    for (int64_t r = 0; r < rows; r += 128)
      for (int64_t c = 0; c < cols; c += 128) fp8_cell(r, std::min(rows, r + 128), c, std::min(cols, c + 128));
  }
  return out;
}

// Expected dequantized weights of all experts: each projection (w1, w3, w2) on its own.
ref::ExpertWeights expected_all(const std::string& scheme, const ref::ExpertWeights& m) {
  ref::ExpertWeights e = m;
  const int64_t H = m.hidden, I = m.intermediate;
  for (int64_t x = 0; x < m.num_experts; ++x) {
    for (int half = 0; half < 2; ++half) {
      const float* src = m.w13.data() + x * 2 * I * H + half * I * H;
      auto d = expected_dequant(scheme, src, I, H);
      std::copy(d.begin(), d.end(), e.w13.begin() + x * 2 * I * H + half * I * H);
    }
    auto d2 = expected_dequant(scheme, m.w2.data() + x * H * I, H, I);
    std::copy(d2.begin(), d2.end(), e.w2.begin() + x * H * I);
  }
  return e;
}

// Every scheme's loaded codes and scales, dequantized, equal the reimplementation above.
void check_every_scheme_exact(const writer::WrittenCheckpoint& w, BuiltPlugins& p) {
  for (const char* scheme : kSchemes) {
    CAPTURE(scheme);
    LoadedModel m = load_dir(w.dir, p.registry(), online(scheme));
    const ref::ExpertWeights got = m.dequantized(0, nullptr);
    const ref::ExpertWeights want = expected_all(scheme, w.layers[0].dequantized);
    CHECK(got.w13 == want.w13);
    CHECK(got.w2 == want.w2);
  }
}

}  // namespace

TEST_CASE("online quantization of bf16 experts: every scheme, both layouts, strict, within its bound") {
  BuiltPlugins p;
  // Bounds on relative L2 of the whole MoE forward vs the float reference of the original bf16
  // weights (README states them; int8's is held to 1.5e-2 here, at H = 256, tighter than the 2e-2
  // it declares for any K). The forward stacks two GEMMs and a gated product, so the
  // per-projection error (checked below: int8 <= 1e-2) compounds to about 1.7x.
  const std::map<std::string, double> bound = {
      {"int8", 1.5e-2}, {"fp8-tensor", 8e-2}, {"fp8-channel", 8e-2}, {"fp8-block", 8e-2}};
  for (auto layout : {writer::Layout::kPerExpert, writer::Layout::kGraniteFused}) {
    TempDir d;
    writer::WrittenCheckpoint w = writer::write_unquantized(d / "bf16", spec(layout));
    for (const char* scheme : kSchemes) {
      CAPTURE(scheme);
      CAPTURE(writer::layout_name(layout));
      LoadedModel m = load_dir(w.dir, p.registry(), online(scheme));
      REQUIRE(m.layers.size() == 1);
      const LayerReport& rep = m.layers[0]->report;
      CHECK(rep.ok());
      CHECK(rep.plugin == "online_quant");
      CHECK(rep.count(LedgerEntry::State::kError) == 0);
      for (const auto& c : rep.params) CHECK(c.written == c.numel);
      const std::vector<float> x = seeded_tokens(37, 256, 8);
      const ref::Routing r = route_with(w.layers[0], x, 37, 2);
      const std::vector<float> out = m.apply(0, x, 37, r);
      const double err = ref::relative_l2(out, ref::moe_forward(w.layers[0].dequantized, x, 37, r, {}));
      MESSAGE(scheme << " " << writer::layout_name(layout) << ": rel L2 vs bf16 reference " << err);
      CHECK(err <= bound.at(scheme));
      CHECK(err > 0);  // it did quantize
      // And the method's own reference (same activation quantization) matches tightly.
      ref::MoeOptions act;
      const ref::ExpertWeights held = m.dequantized(0, &act);
      CHECK(ref::relative_l2(out, ref::moe_forward(held, x, 37, r, act)) <= 1e-4);
    }
  }
}

// fp16 and fp32 sources go through the same loader: every expert weight of the checkpoint is
// rewritten in that dtype (bf16 values rounded to fp16, exact in fp32), and the codes and scales
// equal the reimplementation on the rewritten values exactly; describe names the source dtype.
TEST_CASE("online quantization of fp16 and fp32 experts: exact codes and scales, both layouts") {
  BuiltPlugins p;
  for (const DType dt : {DType::F16, DType::F32}) {
    for (auto layout : {writer::Layout::kPerExpert, writer::Layout::kGraniteFused}) {
      CAPTURE(dtype_name(dt));
      CAPTURE(writer::layout_name(layout));
      TempDir d;
      writer::WrittenCheckpoint w = writer::write_unquantized(d / "src", spec(layout));
      const int converted = rewrite_expert_weights_as(w.dir, dt);
      CHECK(converted == (layout == writer::Layout::kPerExpert ? 12 : 2));
      ref::ExpertWeights src = w.layers[0].dequantized;  // the values the file now holds
      if (dt == DType::F16) {
        for (float& v : src.w13) v = f16_to_float(float_to_f16(v));
        for (float& v : src.w2) v = f16_to_float(float_to_f16(v));
        CHECK(src.w13 != w.layers[0].dequantized.w13);  // fp16 really rounded some values
      }
      for (const char* scheme : kSchemes) {
        CAPTURE(scheme);
        LoadedModel m = load_dir(w.dir, p.registry(), online(scheme));
        REQUIRE(m.layers.size() == 1);
        CHECK(m.layers[0]->report.ok());
        CHECK(m.layers[0]->report.describe_json.find(std::string("\"source_dtype\":\"") + dtype_name(dt) + "\"") !=
              std::string::npos);
        const ref::ExpertWeights got = m.dequantized(0, nullptr);
        const ref::ExpertWeights want = expected_all(scheme, src);
        CHECK(got.w13 == want.w13);
        CHECK(got.w2 == want.w2);
      }
    }
  }
}

TEST_CASE("int8 W8A16 per projection: W x within 1e-2 relative L2 of the bf16 product") {
  BuiltPlugins p;
  TempDir d;
  writer::WrittenCheckpoint w = writer::write_unquantized(d / "bf16", spec(writer::Layout::kPerExpert));
  LoadedModel m = load_dir(w.dir, p.registry(), online("int8"));
  const ref::ExpertWeights q = m.dequantized(0, nullptr);
  const ref::ExpertWeights& f = w.layers[0].dequantized;
  const std::vector<float> x = seeded_tokens(16, 256, 99);
  std::vector<float> yq, yf;
  for (int64_t t = 0; t < 16; ++t)
    for (int64_t n = 0; n < 4 * 2 * 192; ++n) {
      double a = 0, b = 0;
      for (int64_t k = 0; k < 256; ++k) {
        a += double(x[t * 256 + k]) * q.w13[n * 256 + k];
        b += double(x[t * 256 + k]) * f.w13[n * 256 + k];
      }
      yq.push_back(static_cast<float>(a));
      yf.push_back(static_cast<float>(b));
    }
  const double err = ref::relative_l2(yq, yf);
  MESSAGE("int8 per-projection rel L2 " << err);
  CHECK(err <= 1e-2);
}

// The issue asked for int8 W8A16 <= 1e-2 end to end. This shows why the README does not:
// the error is the 8-bit per-row grid's, not absmax's choice nor moeq's. Each row gets the
// scale (a fraction c of absmax/127, c searched from 0.50 to 1.00, values past +-127 clamped)
// that minimises its own squared error, and the forward on those weights still misses 1e-2.
TEST_CASE("int8 end to end: no per-row 8-bit scale reaches 1e-2 on these random normal weights") {
  TempDir d;
  writer::WrittenCheckpoint w = writer::write_unquantized(d / "bf16", spec(writer::Layout::kPerExpert));
  const ref::ExpertWeights& f = w.layers[0].dequantized;
  auto best_rows = [](const float* src, float* dst, int64_t rows, int64_t cols) {
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = src + r * cols;
      float amax = 0;
      for (int64_t c = 0; c < cols; ++c) amax = std::max(amax, std::fabs(row[c]));
      double best_err = -1;
      float best_s = 1;
      for (int step = 0; step <= 100; ++step) {
        const float s = (0.5f + 0.005f * static_cast<float>(step)) * amax / 127.0f;
        double e = 0;
        for (int64_t c = 0; c < cols; ++c) {
          const float q = std::clamp(std::nearbyint(row[c] / s), -127.0f, 127.0f) * s;
          e += double(q - row[c]) * double(q - row[c]);
        }
        if (best_err < 0 || e < best_err) best_err = e, best_s = s;
      }
      for (int64_t c = 0; c < cols; ++c) dst[r * cols + c] = std::clamp(std::nearbyint(row[c] / best_s), -127.0f, 127.0f) * best_s;
    }
  };
  ref::ExpertWeights best = f;
  const int64_t E = f.num_experts, H = f.hidden, I = f.intermediate;
  best_rows(f.w13.data(), best.w13.data(), E * 2 * I, H);
  best_rows(f.w2.data(), best.w2.data(), E * H, I);
  const ref::ExpertWeights absmax = expected_all("int8", f);
  const std::vector<float> x = seeded_tokens(37, H, 8);
  const ref::Routing r = route_with(w.layers[0], x, 37, 2);
  const std::vector<float> want = ref::moe_forward(f, x, 37, r, {});
  const double err_best = ref::relative_l2(ref::moe_forward(best, x, 37, r, {}), want);
  const double err_absmax = ref::relative_l2(ref::moe_forward(absmax, x, 37, r, {}), want);
  MESSAGE("int8 end to end: absmax/127 rows " << err_absmax << ", best per-row scale " << err_best);
  CHECK(err_best > 1e-2);
  CHECK(err_best >= 0.9 * err_absmax);  // absmax is within 10 % of the best a row scale can do
  CHECK(err_absmax <= 1.5e-2);
}

// The int8 end-to-end error is the grid's, so it grows with the reduction length K (a longer
// row has a larger absmax, so a coarser step): from a toy H = I = 64 to Qwen3-30B-A3B's
// H = 2048, I = 768 it rises and stays within 1.5e-2 (the method declares 2e-2, for any K).
TEST_CASE("int8 end to end grows with K and stays within 1.5e-2 up to Qwen3-30B-A3B's geometry") {
  BuiltPlugins p;
  double previous = 0;
  for (const auto& [H, I] : {std::pair<int64_t, int64_t>{64, 64}, {256, 192}, {2048, 768}}) {
    CAPTURE(H);
    TempDir d;
    writer::MoeSpec s = spec(writer::Layout::kPerExpert);
    s.hidden = H;
    s.intermediate = I;
    s.seed = 77;
    writer::WrittenCheckpoint w = writer::write_unquantized(d / "bf16", s);
    LoadedModel m = load_dir(w.dir, p.registry(), online("int8"));
    const std::vector<float> x = seeded_tokens(32, H, 3);
    const ref::Routing r = route_with(w.layers[0], x, 32, 2);
    const double err = ref::relative_l2(m.apply(0, x, 32, r), ref::moe_forward(w.layers[0].dequantized, x, 32, r, {}));
    MESSAGE("int8, H = " << H << ", I = " << I << ": rel L2 vs the bf16 forward " << err);
    CHECK(err > previous);
    CHECK(err <= 1.5e-2);
    previous = err;
  }
}

TEST_CASE("online quantized weights and scales equal an independent reimplementation, exactly") {
  BuiltPlugins p;
  TempDir d;
  writer::WrittenCheckpoint w = writer::write_unquantized(d / "bf16", spec(writer::Layout::kPerExpert));
  check_every_scheme_exact(w, p);
}

TEST_CASE("projections big enough to quantize on several threads give the same codes and scales exactly") {
  BuiltPlugins p;
  TempDir d;
  writer::MoeSpec big = spec(writer::Layout::kPerExpert);
  big.num_experts = 2;
  big.hidden = 1024;
  big.intermediate = 320;  // 320 x 1024 = 327,680 elements a projection: past the threading threshold
  writer::WrittenCheckpoint w = writer::write_unquantized(d / "bf16", big);
  check_every_scheme_exact(w, p);
}

TEST_CASE("online quantization is TP invariant: TP=2 and TP=4 ranks hold bit-identical slices of TP=1") {
  BuiltPlugins p;
  TempDir d;
  writer::WrittenCheckpoint w = writer::write_unquantized(d / "bf16", spec(writer::Layout::kGraniteFused));
  const int64_t E = 4, H = 256, I = 192;
  for (const char* scheme : kSchemes) {
    CAPTURE(scheme);
    LoadedModel full = load_dir(w.dir, p.registry(), online(scheme));
    const ref::ExpertWeights f = full.dequantized(0, nullptr);
    const ParamRecord* fw13 = host::find_param(*full.layers[0]->layer, "w13_weight");
    REQUIRE(fw13 != nullptr);
    for (int tp : {2, 4}) {
      const int64_t It = I / tp;
      for (int rank = 0; rank < tp; ++rank) {
        CAPTURE(tp);
        CAPTURE(rank);
        LoadedModel part = load_dir(w.dir, p.registry(), online(scheme, rank, tp));
        const ref::ExpertWeights g = part.dequantized(0, nullptr);
        const ParamRecord* pw13 = host::find_param(*part.layers[0]->layer, "w13_weight");
        REQUIRE(pw13 != nullptr);
        bool same_values = true, same_codes = true;
        for (int64_t e = 0; e < E; ++e)
          for (int half = 0; half < 2; ++half)
            for (int64_t i = 0; i < It; ++i) {
              const int64_t frow = e * 2 * I + half * I + rank * It + i, prow = e * 2 * It + half * It + i;
              same_values &= std::equal(f.w13.begin() + frow * H, f.w13.begin() + (frow + 1) * H,
                                        g.w13.begin() + prow * H);
              same_codes &= std::equal(fw13->storage.begin() + frow * H, fw13->storage.begin() + (frow + 1) * H,
                                       pw13->storage.begin() + prow * H);
            }
        for (int64_t e = 0; e < E; ++e)
          for (int64_t h = 0; h < H; ++h)
            same_values &= std::equal(f.w2.begin() + (e * H + h) * I + rank * It,
                                      f.w2.begin() + (e * H + h) * I + (rank + 1) * It,
                                      g.w2.begin() + (e * H + h) * It);
        CHECK(same_values);
        CHECK(same_codes);
      }
    }
  }
}

// Under expert parallelism each rank quantizes only its own experts, from the same full rows:
// EP=2 ranks (alone and with TP=2) hold exactly the EP=1 codes of their experts, the ledger says
// the other experts' tensors were left to the other rank, and the ranks' outputs add up to the
// EP=1 output (fp8-tensor aside, see below).
TEST_CASE("online quantization under EP: each rank holds exactly its experts' EP=1 codes, outputs add up") {
  BuiltPlugins p;
  TempDir d;
  const int64_t H = 256, I = 192, M = 29;
  for (auto layout : {writer::Layout::kPerExpert, writer::Layout::kGraniteFused}) {
    writer::WrittenCheckpoint w = writer::write_unquantized(d / writer::layout_name(layout), spec(layout));
    const std::vector<float> x = seeded_tokens(M, H, 31);
    const ref::Routing r = route_with(w.layers[0], x, M, 2);
    for (const char* scheme : kSchemes) {
      CAPTURE(scheme);
      CAPTURE(writer::layout_name(layout));
      LoadedModel full = load_dir(w.dir, p.registry(), online(scheme));
      const ref::ExpertWeights f = full.dequantized(0, nullptr);
      const std::vector<float> want = full.apply(0, x, M, r);
      std::vector<float> sum(want.size(), 0.0f);
      for (int rank = 0; rank < 2; ++rank) {
        CAPTURE(rank);
        LoadOptions o = online(scheme);
        o.placement.ep_rank = rank;
        o.placement.ep_size = 2;
        LoadedModel part = load_dir(w.dir, p.registry(), o);
        REQUIRE(part.layers[0]->report.ok());
        const ref::ExpertWeights g = part.dequantized(0, nullptr);
        CHECK(g.first_expert == 2 * rank);
        REQUIRE(g.num_experts == 2);
        CHECK(std::equal(g.w13.begin(), g.w13.end(), f.w13.begin() + rank * 2 * (2 * I * H)));
        CHECK(std::equal(g.w2.begin(), g.w2.end(), f.w2.begin() + rank * 2 * (H * I)));
        if (layout == writer::Layout::kPerExpert)
          CHECK(part.layers[0]->report.count(LedgerEntry::State::kNotLocal) == 6);  // 2 experts x 3 projections
        const std::vector<float> out = part.apply(0, x, M, r);
        for (size_t i = 0; i < out.size(); ++i) sum[i] += out[i];
        ref::MoeOptions act;
        const ref::ExpertWeights held = part.dequantized(0, &act);
        CHECK(ref::relative_l2(out, ref::moe_forward(held, x, M, r, act)) <= 1e-4);
        // With TP=2 as well, the rank's experts are the TP=1 rank's, narrowed.
        o.placement.tp_size = 2;
        o.placement.tp_rank = 1;
        LoadedModel both = load_dir(w.dir, p.registry(), o);
        const ref::ExpertWeights b = both.dequantized(0, nullptr);
        bool same = true;
        for (int64_t e = 0; e < 2; ++e)
          for (int64_t row = 0; row < 2 * I; ++row) {
            if ((row % I) < I / 2) continue;  // TP rank 1 holds the second half of gate's and up's rows
            const int64_t brow = e * I + (row / I) * (I / 2) + (row % I - I / 2);
            same &= std::equal(b.w13.begin() + brow * H, b.w13.begin() + (brow + 1) * H,
                               g.w13.begin() + (e * 2 * I + row) * H);
          }
        CHECK(same);
      }
      // Per-tensor dynamic activations take one scale over the intermediate of the experts a rank
      // holds, so fp8-tensor's ranks requantize differently from EP=1 (as in vLLM); the others add up.
      if (std::string(scheme) != "fp8-tensor") CHECK(ref::relative_l2(sum, want) <= 1e-6);
    }
  }
}

TEST_CASE("an all-zero row and an all-zero expert get scale 1, never 0/0") {
  BuiltPlugins p;
  TempDir d;
  writer::WrittenCheckpoint w = writer::write_unquantized(d / "bf16", spec(writer::Layout::kPerExpert));
  rewrite_tensors(w.dir, [](TensorMap& m) {
    EditableTensor& g = m.at("model.layers.0.mlp.experts.1.gate_proj.weight");
    for (size_t c = 0; c < 256; ++c) set_element(g, 5 * 256 + c, 0.0f);  // row 5 of expert 1's gate
    for (const char* leaf : {"gate_proj", "up_proj", "down_proj"}) {
      EditableTensor& t = m.at(std::string("model.layers.0.mlp.experts.3.") + leaf + ".weight");
      std::fill(t.bytes.begin(), t.bytes.end(), std::byte{0});
    }
  });
  for (const char* scheme : kSchemes) {
    CAPTURE(scheme);
    LoadedModel m = load_dir(w.dir, p.registry(), online(scheme));
    const ref::ExpertWeights got = m.dequantized(0, nullptr);
    CHECK(std::all_of(got.w13.begin(), got.w13.end(), [](float v) { return std::isfinite(v); }));
    CHECK(std::all_of(got.w2.begin(), got.w2.end(), [](float v) { return std::isfinite(v); }));
    const int64_t H = 256, I = 192;
    CHECK(std::all_of(got.w13.begin() + 3 * 2 * I * H, got.w13.begin() + 4 * 2 * I * H, [](float v) { return v == 0; }));
    CHECK(std::all_of(got.w13.begin() + (1 * 2 * I + 5) * H, got.w13.begin() + (1 * 2 * I + 6) * H,
                      [](float v) { return v == 0; }));
    // Tokens routed only to the zero expert give exactly zero.
    ref::Routing r;
    r.num_tokens = 3;
    r.top_k = 1;
    r.ids = {3, 3, 3};
    r.weights = {1, 1, 1};
    const std::vector<float> out = m.apply(0, seeded_tokens(3, 256, 2), 3, r);
    CHECK(std::all_of(out.begin(), out.end(), [](float v) { return v == 0.0f; }));
    // The scale parameters hold 1 where the row or the expert was all zero.
    if (std::string(scheme) == "int8" || std::string(scheme) == "fp8-channel") {
      const ParamRecord* s = host::find_param(*m.layers[0]->layer, "w13_weight_scale");
      REQUIRE(s != nullptr);
      CHECK(load_as_float(s->storage.data(), s->dtype, 1 * 2 * I + 5) == 1.0f);
      CHECK(load_as_float(s->storage.data(), s->dtype, 3 * 2 * I + 7) == 1.0f);
    }
  }
}

// F32 sources reach magnitudes BF16 cannot: a row of values under 448 x FLT_MIN would get a zero
// or subnormal scale (the load then failed on a "zero scale" the checkpoint does not have), and
// FLT_MAX / 127 rounds up so 127 s overflowed (a finite weight dequantized to infinity).
TEST_CASE("F32 weights at the ends of the float range: normal, finite scales, exact codes, every scheme") {
  BuiltPlugins p;
  TempDir d;
  writer::WrittenCheckpoint w = writer::write_unquantized(d / "f32", spec(writer::Layout::kPerExpert));
  REQUIRE(rewrite_expert_weights_as(w.dir, DType::F32) == 12);
  const int64_t H = 256, I = 192;
  const float tiny = 1e-45f, sub = 2e-43f, big = std::numeric_limits<float>::max();
  ref::ExpertWeights src = w.layers[0].dequantized;
  // The same edits in the file and in `src`: index into one projection of one expert.
  auto edit = [&](TensorMap& m, const char* leaf, int64_t expert, int64_t index, float v) {
    set_element(m.at("model.layers.0.mlp.experts." + std::to_string(expert) + "." + leaf + ".weight"),
                static_cast<size_t>(index), v);
    const std::string l = leaf;
    if (l == "down_proj")
      src.w2[static_cast<size_t>(expert * H * I + index)] = v;
    else
      src.w13[static_cast<size_t>(expert * 2 * I * H + (l == "up_proj" ? I * H : 0) + index)] = v;
  };
  rewrite_tensors(w.dir, [&](TensorMap& m) {
    for (int64_t c = 0; c < H; ++c) edit(m, "gate_proj", 0, c, c == 0 ? tiny : 0.0f);  // row 0: one 1e-45
    for (int64_t r = 1; r < 128; ++r)  // the rest of expert 0's first 128x128 gate block: subnormal
      for (int64_t c = 0; c < 128; ++c) edit(m, "gate_proj", 0, r * H + c, ((r + c) % 2 ? sub : -sub));
    for (int64_t i = 0; i < H * I; ++i) edit(m, "down_proj", 2, i, (i % 3 ? tiny : -sub));  // a whole projection
    edit(m, "up_proj", 1, 3 * H + 7, big);  // one FLT_MAX and one -FLT_MAX weight
    edit(m, "up_proj", 1, 4 * H + 1, -big);
  });
  for (const char* scheme : kSchemes) {
    CAPTURE(scheme);
    LoadedModel m = load_dir(w.dir, p.registry(), online(scheme));
    REQUIRE(m.layers.size() == 1);
    CHECK(m.layers[0]->report.strict_clean());
    for (const char* name : {"w13_weight_scale", "w2_weight_scale"}) {
      const ParamRecord* rec = host::find_param(*m.layers[0]->layer, name);
      REQUIRE(rec != nullptr);
      for (int64_t i = 0; i < rec->numel; ++i) {
        const float v = load_as_float(rec->storage.data(), rec->dtype, static_cast<size_t>(i));
        CHECK(std::isfinite(v));
        CHECK(v >= std::numeric_limits<float>::min());
      }
    }
    const ref::ExpertWeights got = m.dequantized(0, nullptr);
    CHECK(std::all_of(got.w13.begin(), got.w13.end(), [](float v) { return std::isfinite(v); }));
    CHECK(std::all_of(got.w2.begin(), got.w2.end(), [](float v) { return std::isfinite(v); }));
    const ref::ExpertWeights want = expected_all(scheme, src);
    CHECK(got.w13 == want.w13);
    CHECK(got.w2 == want.w2);
    // FLT_MAX comes back as the largest float the grid holds, within one code step of it.
    const float back = got.w13[static_cast<size_t>(1 * 2 * I * H + I * H + 3 * H + 7)];
    CHECK(back > 0.9f * big);
  }
}

// A NaN or an infinity in a source weight would make its row's (block's, projection's) scale
// meaningless: the load fails naming the tensor, the projection, the expert and the first bad
// element within it, and nothing is left allocated. Per-expert files and Granite's fused
// [E, 2I, H] tensor (where [r, c] counts within the expert's w3 piece), every scheme.
TEST_CASE("a NaN or infinite source weight is an error naming where it is, every scheme, both layouts") {
  BuiltPlugins p;
  TempDir d;
  const int64_t H = 256, I = 192;
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  struct Case {
    writer::Layout layout;
    std::string tensor;
    size_t first, second;  // flat indices in the file tensor: the reported one, and a later one
    std::string where;
  };
  const Case cases[] = {
      {writer::Layout::kPerExpert, "model.layers.0.mlp.experts.2.up_proj.weight", 7 * H + 11, 100 * H + 3,
       "w3 (up_proj) of expert 2, element [7, 11]"},
      {writer::Layout::kGraniteFused, "model.layers.0.block_sparse_moe.input_linear.weight",
       static_cast<size_t>((2 * 2 * I + I + 7) * H + 11), static_cast<size_t>((2 * 2 * I + I + 100) * H + 3),
       "w3 (up_proj) of expert 2, element [7, 11]"},
  };
  for (const Case& c : cases) {
    for (const bool is_nan : {true, false}) {
      writer::WrittenCheckpoint w = writer::write_unquantized(
          d / (std::string(writer::layout_name(c.layout)) + (is_nan ? "-nan" : "-inf")), spec(c.layout));
      rewrite_tensors(w.dir, [&](TensorMap& m) {
        EditableTensor& t = m.at(c.tensor);
        set_element(t, c.first, is_nan ? nan : -inf);
        set_element(t, c.second, inf);  // a later one: the first is named
      });
      for (const char* scheme : kSchemes) {
        CAPTURE(scheme);
        CAPTURE(c.tensor);
        const std::string e = error_of([&] { load_dir(w.dir, p.registry(), online(scheme)); });
        CHECK(e.find(c.tensor + ": " + c.where + " is " + (is_nan ? "NaN" : "-inf")) != std::string::npos);
        // The core refuses it before online_quant sees the tensor (every plugin, once per tensor).
        CHECK(e.find("weights, found a non-finite one") != std::string::npos);
        // The parameter left unwritten is put down to the failed tensor, not to a missing one.
        CHECK(e.find("elements not written") != std::string::npos);
        CHECK(e.find("(a tensor above failed to load, or a checkpoint tensor is missing)") != std::string::npos);
        CHECK(host::live_param_bytes() == 0);
      }
    }
  }
  // w2 (down_proj) of expert 0, [200, 150]: the second row block and column block of fp8-block.
  writer::WrittenCheckpoint w = writer::write_unquantized(d / "down-inf", spec(writer::Layout::kPerExpert));
  rewrite_tensors(w.dir, [&](TensorMap& m) {
    set_element(m.at("model.layers.0.mlp.experts.0.down_proj.weight"), 200 * I + 150, inf);
  });
  for (const char* scheme : kSchemes) {
    CAPTURE(scheme);
    const std::string e = error_of([&] { load_dir(w.dir, p.registry(), online(scheme)); });
    CHECK(e.find("model.layers.0.mlp.experts.0.down_proj.weight: w2 (down_proj) of expert 0, element [200, 150] is +inf") !=
          std::string::npos);
  }
}

// A projection of the wrong shape is refused by online_quant itself, before quantizing, naming
// the checkpoint's dtype and the full unsharded shape it needs (not the int8/fp8 view it would
// have handed on); per-expert and Granite-fused layouts, with nothing left allocated.
TEST_CASE("a source projection of the wrong shape is an error naming the checkpoint dtype and the full shape") {
  BuiltPlugins p;
  TempDir d;
  writer::WrittenCheckpoint w = writer::write_unquantized(d / "per-expert", spec(writer::Layout::kPerExpert));
  rewrite_tensors(w.dir, [&](TensorMap& m) {
    EditableTensor& t = m.at("model.layers.0.mlp.experts.3.up_proj.weight");  // [192, 256] -> [193, 256]
    t.shape = {193, 256};
    t.bytes.resize(193 * 256 * 2, std::byte{0});
  });
  writer::WrittenCheckpoint g = writer::write_unquantized(d / "granite", spec(writer::Layout::kGraniteFused));
  rewrite_tensors(g.dir, [&](TensorMap& m) {
    EditableTensor& t = m.at("model.layers.0.block_sparse_moe.output_linear.weight");  // [4, 256, 192] -> [4, 256, 191]
    std::vector<std::byte> out;
    for (int64_t row = 0; row < 4 * 256; ++row)
      out.insert(out.end(), t.bytes.begin() + row * 192 * 2, t.bytes.begin() + row * 192 * 2 + 191 * 2);
    t.shape = {4, 256, 191};
    t.bytes = std::move(out);
  });
  for (const char* scheme : kSchemes) {
    CAPTURE(scheme);
    const std::string e = error_of([&] { load_dir(w.dir, p.registry(), online(scheme)); });
    CHECK(e.find("model.layers.0.mlp.experts.3.up_proj.weight: w3 (up_proj) of expert 3: expected BF16 [192, 256] (I x H, "
                 "the full unsharded projection), found BF16 [193, 256]") != std::string::npos);
    CHECK(host::live_param_bytes() == 0);
    const std::string f = error_of([&] { load_dir(g.dir, p.registry(), online(scheme, 1, 2)); });
    CHECK(f.find("model.layers.0.block_sparse_moe.output_linear.weight: w2 (down_proj) of expert 0: expected BF16 [256, 192] "
                 "(H x I, the full unsharded projection), found BF16 [256, 191]") != std::string::npos);
    CHECK(host::live_param_bytes() == 0);
  }
}

namespace {

// The process's anonymous resident memory (RssAnon of /proc/self/status), in bytes.
int64_t rss_anon() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("RssAnon:", 0) == 0) return std::stoll(line.substr(8)) * 1024;  // "RssAnon:   1234 kB"
  return -1;
}

}  // namespace

// The host never holds a whole layer in high precision: the checkpoint is mapped (file pages),
// one projection at a time is read into floats, and only the final int8/fp8 parameters grow.
// A thread polls RssAnon during the load; its peak growth must stay under final parameters +
// one expert in f32 + 16 MiB, which is less than the bf16 layer alone.
TEST_CASE("online quantization on the host never holds a whole bf16 layer: peak anonymous memory stays near final size") {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  MESSAGE("skipped under a sanitizer: its shadow memory and quarantine are counted as resident");
  return;
#else
  if (rss_anon() < 0) {
    MESSAGE("skipped: no RssAnon in /proc/self/status");
    return;
  }
  BuiltPlugins p;
  TempDir d;
  writer::MoeSpec big = spec(writer::Layout::kPerExpert);
  big.num_experts = 32;
  big.hidden = 1024;
  big.intermediate = 512;
  const int64_t E = 32, H = 1024, I = 512;
  const int64_t bf16_layer = E * 3 * H * I * 2;  // 96 MiB
  for (auto layout : {writer::Layout::kPerExpert, writer::Layout::kGraniteFused}) {
    big.layout = layout;
    writer::WrittenCheckpoint w = writer::write_unquantized(d / writer::layout_name(layout), big);
    for (const char* scheme : {"int8", "fp8-block"}) {
      CAPTURE(scheme);
      CAPTURE(writer::layout_name(layout));
      const int64_t final_bytes = E * 3 * H * I;  // one byte a weight, scales aside
      const int64_t bound = final_bytes + 3 * H * I * 4 + (int64_t{16} << 20);
      REQUIRE(bound - final_bytes < bf16_layer);  // the check can tell a materialized layer
      ::malloc_trim(0);  // free heap pages go back to the kernel: the growth is not hidden by reuse
      const int64_t base = rss_anon();
      std::atomic<int64_t> peak{base};
      std::atomic<bool> stop{false};
      std::thread poll([&] {
        while (!stop) {
          peak = std::max(peak.load(), rss_anon());
          std::this_thread::sleep_for(std::chrono::microseconds(200));
        }
      });
      int64_t held = 0;
      {
        LoadOptions o = online(scheme);
        o.threads = 1;
        LoadedModel m = load_dir(w.dir, p.registry(), o);
        peak = std::max(peak.load(), rss_anon());
        for (const auto& prm : m.layers[0]->layer->params) held += static_cast<int64_t>(prm->storage.size());
      }
      stop = true;
      poll.join();
      const int64_t grew = peak - base;
      MESSAGE(std::string(scheme) << " " << std::string(writer::layout_name(layout)) << ": anonymous memory grew by at most " << (grew >> 20)
                     << " MiB during the load (parameters " << (held >> 20) << " MiB, bf16 layer "
                     << (bf16_layer >> 20) << " MiB)");
      CHECK(held >= final_bytes);
      CHECK(grew <= bound);
    }
  }
#endif
}

TEST_CASE("online_quant declines quantized checkpoints and unknown schemes, with reasons") {
  BuiltPlugins p;
  TempDir d;
  writer::MoeSpec s = spec(writer::Layout::kPerExpert);
  writer::WrittenCheckpoint fp8 = writer::write_ct_fp8_channel(d / "fp8", s);
  const std::string e = error_of([&] { load_dir(fp8.dir, p.registry(), online("int8")); });
  CHECK(e.find("online_quant: online quantization takes unquantized experts; these are F8_E4M3") != std::string::npos);
  writer::WrittenCheckpoint bf16 = writer::write_unquantized(d / "bf16", s);
  const std::string u = error_of([&] { load_dir(bf16.dir, p.registry(), online("int4")); });
  CHECK(u.find("unknown online scheme 'int4'") != std::string::npos);
  // Without --online the checkpoint's own (absent) config decides: compressed_tensors runs it unquantized.
  LoadedModel plain = load_dir(bf16.dir, p.registry());
  CHECK(plain.layers[0]->report.plugin == "compressed_tensors");
}
