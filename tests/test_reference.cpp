// The float reference: routing (§7.1), the fp8 activation primitives (§7.3) and the MoE
// forward (§7.4) checked against brute force and independently written loops.
#include <doctest/doctest.h>
#include <moeq/dtype.hpp>
#include <moeq/error.hpp>
#include <moeq/reference.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <set>
#include <vector>

namespace {

using namespace moeq::ref;

std::vector<float> randn(std::mt19937& rng, size_t n, float stddev) {
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

ExpertWeights random_experts(std::mt19937& rng, int64_t E, int64_t H, int64_t I) {
  ExpertWeights w;
  w.num_experts = E;
  w.hidden = H;
  w.intermediate = I;
  w.w13 = randn(rng, static_cast<size_t>(E * 2 * I * H), 0.1f);
  w.w2 = randn(rng, static_cast<size_t>(E * H * I), 0.1f);
  return w;
}

std::vector<double> softmax_d(const float* logits, int64_t E) {
  std::vector<double> p(static_cast<size_t>(E));
  double sum = 0.0;
  for (int64_t e = 0; e < E; ++e) sum += p[e] = std::exp(static_cast<double>(logits[e]));
  for (double& v : p) v /= sum;
  return p;
}

double sigmoid_d(float x) { return 1.0 / (1.0 + std::exp(-static_cast<double>(x))); }

// Any finite fp8 e4m3 magnitude code except 0 (0x01..0x7e), with a random sign.
uint8_t random_fp8_code(std::mt19937& rng) {
  std::uniform_int_distribution<int> code(1, 0x7e), sign(0, 1);
  return static_cast<uint8_t>(code(rng) | (sign(rng) << 7));
}

// Experts [begin, end) of w as their own ExpertWeights placed at global id begin.
ExpertWeights slice_experts(const ExpertWeights& w, int64_t begin, int64_t end) {
  const int64_t H = w.hidden, I = w.intermediate;
  ExpertWeights s = w;
  s.num_experts = end - begin;
  s.first_expert = w.first_expert + begin;
  s.w13.assign(w.w13.begin() + begin * 2 * I * H, w.w13.begin() + end * 2 * I * H);
  s.w2.assign(w.w2.begin() + begin * H * I, w.w2.begin() + end * H * I);
  return s;
}

// Columns [i0, i1) of the intermediate dimension: gate rows, up rows and w2 columns.
ExpertWeights slice_intermediate(const ExpertWeights& w, int64_t i0, int64_t i1) {
  const int64_t E = w.num_experts, H = w.hidden, I = w.intermediate, n = i1 - i0;
  ExpertWeights s = w;
  s.intermediate = n;
  s.w13.clear();
  s.w2.clear();
  for (int64_t e = 0; e < E; ++e) {
    const float* base = w.w13.data() + e * 2 * I * H;
    s.w13.insert(s.w13.end(), base + i0 * H, base + i1 * H);            // gate
    s.w13.insert(s.w13.end(), base + (I + i0) * H, base + (I + i1) * H);  // up
    for (int64_t h = 0; h < H; ++h) {
      const float* row = w.w2.data() + (e * H + h) * I;
      s.w2.insert(s.w2.end(), row + i0, row + i1);
    }
  }
  return s;
}

}  // namespace

TEST_CASE("softmax top-k picks the k largest probabilities, renormalize makes them sum to 1") {
  std::mt19937 rng(1234);
  const int64_t M = 32, E = 8, k = 3;
  const auto logits = randn(rng, M * E, 1.5f);
  RoutingOptions opt;
  opt.top_k = k;
  opt.renormalize = true;
  const Routing renorm = route(logits, M, E, opt);
  opt.renormalize = false;
  const Routing raw = route(logits, M, E, opt);
  REQUIRE(renorm.ids.size() == static_cast<size_t>(M * k));
  REQUIRE(raw.weights.size() == static_cast<size_t>(M * k));
  CHECK(renorm.top_k == k);
  CHECK(renorm.num_tokens == M);

  for (int64_t m = 0; m < M; ++m) {
    const auto p = softmax_d(&logits[m * E], E);
    std::set<int32_t> chosen;
    double raw_sum = 0.0, renorm_sum = 0.0, chosen_p = 0.0;
    for (int64_t j = 0; j < k; ++j) {
      const int32_t id = raw.ids[m * k + j];
      REQUIRE(id >= 0);
      REQUIRE(id < E);
      CHECK(renorm.ids[m * k + j] == id);
      chosen.insert(id);
      chosen_p += p[id];
      CHECK(raw.weights[m * k + j] == doctest::Approx(p[id]).epsilon(1e-5));
      if (j > 0) CHECK(raw.weights[m * k + j - 1] >= raw.weights[m * k + j]);
      raw_sum += raw.weights[m * k + j];
      renorm_sum += renorm.weights[m * k + j];
    }
    CHECK(chosen.size() == static_cast<size_t>(k));
    // Brute force: no unchosen expert has a larger probability than a chosen one.
    for (int64_t e = 0; e < E; ++e)
      if (!chosen.count(static_cast<int32_t>(e)))
        for (int32_t c : chosen) CHECK(p[e] <= p[c]);
    for (int64_t j = 0; j < k; ++j)
      CHECK(renorm.weights[m * k + j] ==
            doctest::Approx(p[raw.ids[m * k + j]] / chosen_p).epsilon(1e-5));
    CHECK(renorm_sum == doctest::Approx(1.0).epsilon(1e-6));
    CHECK(raw_sum < 1.0 - 1e-3);  // the other E - k experts hold some probability
  }
}

TEST_CASE("top-k ties go to the lower expert id") {
  const std::vector<float> logits = {0.5f, 2.0f, 0.5f, 2.0f, 2.0f, -1.0f};
  RoutingOptions opt;
  opt.top_k = 2;
  const Routing r = route(logits, 1, 6, opt);
  CHECK(r.ids == std::vector<int32_t>{1, 3});
  opt.top_k = 4;
  CHECK(route(logits, 1, 6, opt).ids == std::vector<int32_t>{1, 3, 4, 0});
}

TEST_CASE("sigmoid with correction bias: bias changes the selection, weights stay unbiased") {
  std::mt19937 rng(77);
  const int64_t M = 16, E = 8, k = 2;
  const auto logits = randn(rng, M * E, 1.0f);
  RoutingOptions opt;
  opt.top_k = k;
  opt.scoring = Scoring::kSigmoid;
  opt.renormalize = false;
  const Routing plain = route(logits, M, E, opt);

  // A large bias on experts 5 and 6 forces them into every token's selection.
  opt.correction_bias = randn(rng, E, 0.01f);
  opt.correction_bias[5] += 10.0f;
  opt.correction_bias[6] += 9.0f;
  const Routing biased = route(logits, M, E, opt);
  opt.renormalize = true;
  const Routing biased_renorm = route(logits, M, E, opt);

  int changed = 0;
  for (int64_t m = 0; m < M; ++m) {
    CHECK(biased.ids[m * k + 0] == 5);
    CHECK(biased.ids[m * k + 1] == 6);
    const double s5 = sigmoid_d(logits[m * E + 5]), s6 = sigmoid_d(logits[m * E + 6]);
    CHECK(biased.weights[m * k + 0] == doctest::Approx(s5).epsilon(1e-6));
    CHECK(biased.weights[m * k + 1] == doctest::Approx(s6).epsilon(1e-6));
    CHECK(biased_renorm.weights[m * k + 0] == doctest::Approx(s5 / (s5 + s6)).epsilon(1e-6));
    // Without bias the weights are the sigmoid of the plain top-k.
    for (int64_t j = 0; j < k; ++j)
      CHECK(plain.weights[m * k + j] ==
            doctest::Approx(sigmoid_d(logits[m * E + plain.ids[m * k + j]])).epsilon(1e-6));
    if (plain.ids[m * k] != 5 || plain.ids[m * k + 1] != 6) ++changed;
  }
  CHECK(changed > M / 2);
}

TEST_CASE("grouped top-k without bias ranks groups by their max and keeps topk_group") {
  // Groups of 2: g0 = {5.0, 4.9}, g1 = {4.95, -5}, g2 = {0, 0.1}, g3 = {4.8, -5}.
  // Plain top-2 is {0, 2}; keeping only the best group gives {0, 1}.
  const std::vector<float> logits = {5.0f, 4.9f, 4.95f, -5.0f, 0.0f, 0.1f, 4.8f, -5.0f};
  RoutingOptions opt;
  opt.top_k = 2;
  opt.renormalize = false;
  CHECK(route(logits, 1, 8, opt).ids == std::vector<int32_t>{0, 2});
  opt.n_group = 4;
  opt.topk_group = 1;
  const Routing g = route(logits, 1, 8, opt);
  CHECK(g.ids == std::vector<int32_t>{0, 1});
  const auto p = softmax_d(logits.data(), 8);
  CHECK(g.weights[0] == doctest::Approx(p[0]).epsilon(1e-6));  // softmax over all experts
  CHECK(g.weights[1] == doctest::Approx(p[1]).epsilon(1e-6));
}

TEST_CASE("grouped top-k with bias ranks groups by the sum of their top-2 biased scores") {
  // sigmoid: g0 = {sig 3, sig -3} sums to 1.0; g1 = {sig 2, sig 2} = 1.76;
  // g2 ~ 0.04; g3 = {sig 1.9, sig 1.9} = 1.74. Max rule would keep g0 and g1 -> {0, 2};
  // the top-2 sum keeps g1 and g3 -> {2, 3} (a tie, lower id first).
  const std::vector<float> logits = {3.0f, -3.0f, 2.0f, 2.0f, -4.0f, -4.0f, 1.9f, 1.9f};
  RoutingOptions opt;
  opt.top_k = 2;
  opt.renormalize = false;
  opt.scoring = Scoring::kSigmoid;
  opt.correction_bias.assign(8, 0.0f);
  opt.n_group = 4;
  opt.topk_group = 2;
  const Routing g = route(logits, 1, 8, opt);
  CHECK(g.ids == std::vector<int32_t>{2, 3});
  CHECK(g.weights[0] == doctest::Approx(sigmoid_d(2.0f)).epsilon(1e-6));
  opt.correction_bias.clear();  // no bias: group max decides
  CHECK(route(logits, 1, 8, opt).ids == std::vector<int32_t>{0, 2});
}

TEST_CASE("grouped top-k on random scores only picks experts of the topk_group best groups") {
  std::mt19937 rng(4242);
  const int64_t M = 64, E = 16, G = 4, size = E / G, k = 4, keep = 2;
  const auto logits = randn(rng, M * E, 1.0f);
  RoutingOptions opt;
  opt.top_k = k;
  opt.scoring = Scoring::kSigmoid;
  opt.correction_bias = randn(rng, E, 0.3f);
  opt.n_group = G;
  opt.topk_group = keep;
  opt.renormalize = true;
  const Routing g = route(logits, M, E, opt);
  opt.n_group = 0;
  const Routing flat = route(logits, M, E, opt);

  int differs = 0;
  for (int64_t m = 0; m < M; ++m) {
    std::vector<double> s(E), score(G);
    for (int64_t e = 0; e < E; ++e) s[e] = sigmoid_d(logits[m * E + e]) + opt.correction_bias[e];
    for (int64_t gi = 0; gi < G; ++gi) {
      std::vector<double> grp(s.begin() + gi * size, s.begin() + (gi + 1) * size);
      std::sort(grp.rbegin(), grp.rend());
      score[gi] = grp[0] + grp[1];
    }
    std::vector<int64_t> order(G);
    for (int64_t gi = 0; gi < G; ++gi) order[gi] = gi;
    std::sort(order.begin(), order.end(),
              [&](int64_t a, int64_t b) { return score[a] > score[b]; });
    std::set<int64_t> kept(order.begin(), order.begin() + keep);
    std::set<int32_t> chosen;
    double wsum = 0.0;
    for (int64_t j = 0; j < k; ++j) {
      const int32_t id = g.ids[m * k + j];
      chosen.insert(id);
      CHECK(kept.count(id / size) == 1);
      wsum += g.weights[m * k + j];
    }
    CHECK(chosen.size() == static_cast<size_t>(k));
    CHECK(wsum == doctest::Approx(1.0).epsilon(1e-6));
    // Within the kept groups, the chosen are the best by biased score.
    for (int64_t e = 0; e < E; ++e)
      if (kept.count(e / size) && !chosen.count(static_cast<int32_t>(e)))
        for (int32_t c : chosen) CHECK(s[e] <= s[c] + 1e-6);
    std::set<int32_t> flat_ids(flat.ids.begin() + m * k, flat.ids.begin() + (m + 1) * k);
    if (flat_ids != chosen) ++differs;
  }
  CHECK(differs > 0);  // the grouping mattered for some tokens
}

TEST_CASE("routed_scaling_factor multiplies the weights after renormalization") {
  std::mt19937 rng(9);
  const int64_t M = 8, E = 6, k = 2;
  const auto logits = randn(rng, M * E, 1.0f);
  RoutingOptions opt;
  opt.top_k = k;
  opt.renormalize = true;
  const Routing base = route(logits, M, E, opt);
  opt.routed_scaling_factor = 2.5f;
  const Routing scaled = route(logits, M, E, opt);
  CHECK(scaled.ids == base.ids);
  for (int64_t m = 0; m < M; ++m) {
    double sum = 0.0;
    for (int64_t j = 0; j < k; ++j) {
      CHECK(scaled.weights[m * k + j] ==
            doctest::Approx(2.5 * base.weights[m * k + j]).epsilon(1e-6));
      sum += scaled.weights[m * k + j];
    }
    CHECK(sum == doctest::Approx(2.5).epsilon(1e-6));
  }
}

TEST_CASE("route rejects inconsistent options with moeq::Error") {
  std::mt19937 rng(5);
  const auto logits = randn(rng, 2 * 8, 1.0f);
  RoutingOptions opt;
  opt.top_k = 9;
  CHECK_THROWS_AS(route(logits, 2, 8, opt), moeq::Error);
  opt.top_k = 0;
  CHECK_THROWS_AS(route(logits, 2, 8, opt), moeq::Error);
  opt.top_k = 2;
  CHECK_NOTHROW(route(logits, 2, 8, opt));
  CHECK_THROWS_AS(route(logits, 3, 8, opt), moeq::Error);  // logits size
  opt.correction_bias.assign(7, 0.0f);
  CHECK_THROWS_WITH_AS(route(logits, 2, 8, opt), doctest::Contains("correction_bias"),
                       moeq::Error);
  opt.correction_bias.clear();
  opt.n_group = 3;
  opt.topk_group = 1;
  CHECK_THROWS_WITH_AS(route(logits, 2, 8, opt), doctest::Contains("n_group"), moeq::Error);
  opt.n_group = 4;
  opt.topk_group = 5;
  CHECK_THROWS_WITH_AS(route(logits, 2, 8, opt), doctest::Contains("topk_group"), moeq::Error);
  opt.topk_group = 1;
  opt.top_k = 3;  // one kept group of 2 experts cannot supply 3
  CHECK_THROWS_AS(route(logits, 2, 8, opt), moeq::Error);
  opt.top_k = 2;
  CHECK_NOTHROW(route(logits, 2, 8, opt));
  auto bad = logits;
  bad[3] = NAN;
  CHECK_THROWS_AS(route(bad, 2, 8, opt), moeq::Error);
}

TEST_CASE("per-token fake-quant is exact when the row amax maps to 448 and grid values") {
  std::mt19937 rng(31);
  const int64_t cols = 64;
  const float s = 1.0f / 16.0f;  // amax = 448 / 16 = 28
  std::vector<float> row(cols);
  for (float& v : row) v = moeq::fp8_e4m3_to_float(random_fp8_code(rng)) * s;
  row[17] = -448.0f * s;
  CHECK(fp8_per_token_scale(row) == s);
  CHECK(fp8_quantize(row[17], s) == 0xfe);  // -448
  std::vector<float> out(cols);
  fake_quant(row, 1, cols, {ActQuant::kFp8PerToken}, out);
  CHECK(out == row);
  // Halving the row keeps it exact: the scale follows the amax.
  for (float& v : row) v *= 0.5f;
  fake_quant(row, 1, cols, {ActQuant::kFp8PerToken}, out);
  CHECK(out == row);
}

TEST_CASE("per-token scale has the floor 1/(448*512) and quantize clamps to ±448") {
  const std::vector<float> tiny = {1e-7f, -3e-7f, 2e-7f};
  CHECK(fp8_per_token_scale(tiny) == 1.0f / (448.0f * 512.0f));
  CHECK(moeq::fp8_e4m3_to_float(fp8_quantize(1000.0f, 1.0f)) == 448.0f);
  CHECK(moeq::fp8_e4m3_to_float(fp8_quantize(-1000.0f, 1.0f)) == -448.0f);
  CHECK(moeq::fp8_e4m3_to_float(fp8_quantize(3.0f, 0.5f)) == 6.0f);  // x / s, not x * s
}

TEST_CASE("group scale is taken per group along a multi-group row") {
  std::mt19937 rng(8);
  const int64_t gs = 8, groups = 4, cols = gs * groups;
  const float scales[groups] = {0.25f, 1.0f / 32.0f, 8.0f, 1.0f / 1024.0f};
  std::vector<float> row(cols);
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t i = 0; i < gs; ++i)
      row[g * gs + i] = moeq::fp8_e4m3_to_float(random_fp8_code(rng)) * scales[g];
    row[g * gs + (g * 3) % gs] = 448.0f * scales[g];
  }
  for (int64_t g = 0; g < groups; ++g)
    CHECK(fp8_group_scale(std::span<const float>(row).subspan(g * gs, gs)) == scales[g]);
  ActQuantSpec spec{ActQuant::kFp8PerGroup, gs};
  std::vector<float> out(cols);
  fake_quant(row, 1, cols, spec, out);
  CHECK(out == row);
  // One scale for the whole row loses the small groups.
  fake_quant(row, 1, cols, {ActQuant::kFp8PerToken}, out);
  CHECK(out != row);
  // A short last group (cols not a multiple of group_size) gets its own scale too.
  spec.group_size = 12;  // groups [0,12) [12,24) [24,32)
  fake_quant(row, 1, cols, spec, out);
  const float last = fp8_group_scale(std::span<const float>(row).subspan(24, 8));
  CHECK(last == scales[3]);
  for (int64_t i = 24; i < cols; ++i) CHECK(out[i] == row[i]);
  CHECK(fp8_group_scale(std::vector<float>(4, 0.0f)) == 1e-10f / 448.0f);
}

TEST_CASE("dequantized error is within e4m3 rounding: half an ulp of 3 mantissa bits") {
  std::mt19937 rng(2024);
  const int64_t rows = 16, cols = 256;
  auto x = randn(rng, rows * cols, 1.0f);
  x[5] *= 1e-4f;  // some values deep in the subnormal range of their scale
  x[300] *= 1e-3f;
  for (ActQuant kind : {ActQuant::kFp8PerToken, ActQuant::kFp8PerGroup,
                        ActQuant::kFp8PerTensorDynamic, ActQuant::kFp8PerTensorStatic}) {
    CAPTURE(static_cast<int>(kind));
    ActQuantSpec spec{kind, 64, 0.01f};
    std::vector<float> out(x.size());
    fake_quant(x, rows, cols, spec, out);
    CHECK(out != x);
    float amax_all = 0.0f;
    for (float v : x) amax_all = std::max(amax_all, std::fabs(v));
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        const auto row = std::span<const float>(x).subspan(r * cols, cols);
        float s = 0.0f;
        switch (kind) {
          case ActQuant::kFp8PerToken: s = fp8_per_token_scale(row); break;
          case ActQuant::kFp8PerGroup: s = fp8_group_scale(row.subspan(c / 64 * 64, 64)); break;
          case ActQuant::kFp8PerTensorDynamic: s = amax_all / 448.0f; break;
          default: s = 0.01f; break;
        }
        const double xv = x[r * cols + c], v = std::min(std::fabs(xv / s), 448.0);
        const double err = std::fabs(std::clamp(xv, -448.0 * s, 448.0 * s) - out[r * cols + c]);
        // Normals: 2^-4 relative (3 mantissa bits, round to nearest); subnormals: 2^-10.
        const double bound = s * std::max(v * 0x1p-4, 0x1p-10) * (1.0 + 1e-5);
        CHECK(err <= bound);
      }
    }
  }
}

TEST_CASE("per-tensor dynamic fake-quant of an all-zero tensor uses scale 1 and gives zeros") {
  std::vector<float> x(12, 0.0f), out(12, 5.0f);
  fake_quant(x, 3, 4, {ActQuant::kFp8PerTensorDynamic}, out);
  CHECK(out == x);
}

TEST_CASE("fake_quant may write in place") {
  std::mt19937 rng(3);
  auto x = randn(rng, 4 * 32, 1.0f);
  std::vector<float> expect(x.size());
  fake_quant(x, 4, 32, {ActQuant::kFp8PerGroup, 16}, expect);
  fake_quant(x, 4, 32, {ActQuant::kFp8PerGroup, 16}, x);
  CHECK(x == expect);
  CHECK_THROWS_AS(fake_quant(x, 4, 31, {ActQuant::kNone}, expect), moeq::Error);
  CHECK_THROWS_AS(fake_quant(x, 4, 32, {ActQuant::kFp8PerTensorStatic, 128, 0.0f}, expect),
                  moeq::Error);
}

TEST_CASE("moe_forward without act quant equals a per-expert naive loop") {
  std::mt19937 rng(555);
  const int64_t M = 12, E = 6, H = 16, I = 8, k = 2;
  const ExpertWeights w = random_experts(rng, E, H, I);
  const auto x = randn(rng, M * H, 0.5f);
  RoutingOptions ropt;
  ropt.top_k = k;
  const Routing r = route(randn(rng, M * E, 1.0f), M, E, ropt);
  const auto out = moe_forward(w, x, M, r, {});
  REQUIRE(out.size() == static_cast<size_t>(M * H));

  // Per expert: gather its (token, slot) rows, run both GEMMs, scatter to [M, k, H].
  std::vector<double> cache3(M * k * H, 0.0);
  for (int64_t e = 0; e < E; ++e) {
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t j = 0; j < k; ++j) {
        if (r.ids[m * k + j] != e) continue;
        std::vector<double> act(I);
        for (int64_t i = 0; i < I; ++i) {
          double gate = 0.0, up = 0.0;
          for (int64_t c = 0; c < H; ++c) {
            gate += double(w.w13[(e * 2 * I + i) * H + c]) * x[m * H + c];
            up += double(w.w13[(e * 2 * I + I + i) * H + c]) * x[m * H + c];
          }
          act[i] = gate / (1.0 + std::exp(-gate)) * up;
        }
        for (int64_t n = 0; n < H; ++n) {
          double y = 0.0;
          for (int64_t i = 0; i < I; ++i) y += double(w.w2[(e * H + n) * I + i]) * act[i];
          cache3[(m * k + j) * H + n] = y;
        }
      }
    }
  }
  std::vector<float> expect(M * H, 0.0f);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < H; ++n) {
      double s = 0.0;
      for (int64_t j = 0; j < k; ++j) s += r.weights[m * k + j] * cache3[(m * k + j) * H + n];
      expect[m * H + n] = static_cast<float>(s);
    }
  CHECK(relative_l2(std::vector<float>(M * H, 0.0f), expect) == doctest::Approx(1.0));  // nonzero
  CHECK(relative_l2(out, expect) < 1e-5);
}

// Past 4M multiply-adds moe_forward spreads its rows over threads; each token's result must be
// bit-identical to that token run alone (small: one thread), with per-token activation quant too.
TEST_CASE("moe_forward on several threads equals each token run alone, bit for bit") {
  std::mt19937 rng(707);
  const int64_t M = 64, E = 8, H = 256, I = 160, k = 2;  // R * I * H = 128 * 160 * 256 > 2^22
  const ExpertWeights w = random_experts(rng, E, H, I);
  const auto x = randn(rng, M * H, 0.5f);
  RoutingOptions ropt;
  ropt.top_k = k;
  const Routing r = route(randn(rng, M * E, 1.0f), M, E, ropt);
  for (const ActQuant kind : {ActQuant::kNone, ActQuant::kFp8PerToken}) {
    MoeOptions opt;
    opt.a1.kind = kind;
    opt.a2.kind = kind;
    const auto out = moe_forward(w, x, M, r, opt);
    bool same = true;
    for (int64_t m = 0; m < M; ++m) {
      Routing one;
      one.num_tokens = 1;
      one.top_k = r.top_k;
      one.ids.assign(r.ids.begin() + m * k, r.ids.begin() + (m + 1) * k);
      one.weights.assign(r.weights.begin() + m * k, r.weights.begin() + (m + 1) * k);
      const auto alone = moe_forward(w, std::span<const float>(x).subspan(m * H, H), 1, one, opt);
      same &= std::equal(alone.begin(), alone.end(), out.begin() + m * H);
    }
    CHECK(same);
    CHECK(relative_l2(std::vector<float>(out.size(), 0.0f), out) == doctest::Approx(1.0));  // nonzero
  }
}

TEST_CASE("EP split: two halves of the experts sum to the full layer") {
  std::mt19937 rng(606);
  const int64_t M = 10, E = 8, H = 12, I = 6, k = 2;
  const ExpertWeights full = random_experts(rng, E, H, I);
  const auto x = randn(rng, M * H, 0.5f);
  RoutingOptions ropt;
  ropt.top_k = k;
  const Routing r = route(randn(rng, M * E, 1.0f), M, E, ropt);
  const ExpertWeights lo = slice_experts(full, 0, E / 2), hi = slice_experts(full, E / 2, E);
  CHECK(hi.first_expert == E / 2);
  for (ActQuant kind : {ActQuant::kNone, ActQuant::kFp8PerToken}) {
    CAPTURE(static_cast<int>(kind));
    MoeOptions opt{{kind}, {kind}};
    const auto ref = moe_forward(full, x, M, r, opt);
    const auto a = moe_forward(lo, x, M, r, opt), b = moe_forward(hi, x, M, r, opt);
    std::vector<float> sum(M * H);
    for (size_t i = 0; i < sum.size(); ++i) sum[i] = a[i] + b[i];
    CHECK(relative_l2(a, ref) > 0.1);  // each half alone is far off
    CHECK(relative_l2(b, ref) > 0.1);
    CHECK(relative_l2(sum, ref) < 1e-6);
  }
}

TEST_CASE("TP split: halves of the intermediate dimension sum to the unsplit output") {
  std::mt19937 rng(707);
  const int64_t M = 9, E = 4, H = 16, I = 10, k = 2;
  const ExpertWeights full = random_experts(rng, E, H, I);
  const auto x = randn(rng, M * H, 0.5f);
  RoutingOptions ropt;
  ropt.top_k = k;
  const Routing r = route(randn(rng, M * E, 1.0f), M, E, ropt);
  const auto ref = moe_forward(full, x, M, r, {});
  const auto a = moe_forward(slice_intermediate(full, 0, I / 2), x, M, r, {});
  const auto b = moe_forward(slice_intermediate(full, I / 2, I), x, M, r, {});
  std::vector<float> sum(M * H);
  for (size_t i = 0; i < sum.size(); ++i) sum[i] = a[i] + b[i];
  CHECK(relative_l2(a, ref) > 0.1);
  CHECK(relative_l2(sum, ref) < 1e-5);
}

TEST_CASE("fp8 activation quant stays within 5e-2 relative L2 of the float forward") {
  std::mt19937 rng(808);
  const int64_t M = 24, E = 8, H = 64, I = 32, k = 2;
  ExpertWeights w = random_experts(rng, E, H, I);
  const auto x = randn(rng, M * H, 0.1f);
  RoutingOptions ropt;
  ropt.top_k = k;
  const Routing r = route(randn(rng, M * E, 1.0f), M, E, ropt);
  const auto ref = moe_forward(w, x, M, r, {});
  for (ActQuant kind : {ActQuant::kFp8PerToken, ActQuant::kFp8PerGroup,
                        ActQuant::kFp8PerTensorDynamic}) {
    CAPTURE(static_cast<int>(kind));
    MoeOptions opt{{kind, 16}, {kind, 16}};
    const auto q = moe_forward(w, x, M, r, opt);
    const double err = relative_l2(q, ref);
    CHECK(err < 5e-2);
    CHECK(err > 1e-4);  // quantization did happen
  }
  // a1 only and a2 only each move the result.
  CHECK(relative_l2(moe_forward(w, x, M, r, {{ActQuant::kFp8PerToken}, {}}), ref) > 1e-4);
  CHECK(relative_l2(moe_forward(w, x, M, r, {{}, {ActQuant::kFp8PerToken}}), ref) > 1e-4);
}

TEST_CASE("moe_forward rejects weights whose sizes disagree with their shape") {
  std::mt19937 rng(1);
  ExpertWeights w = random_experts(rng, 2, 4, 3);
  const auto x = randn(rng, 2 * 4, 1.0f);
  RoutingOptions ropt;
  ropt.top_k = 1;
  const Routing r = route(randn(rng, 2 * 2, 1.0f), 2, 2, ropt);
  CHECK_NOTHROW(moe_forward(w, x, 2, r, {}));
  CHECK_THROWS_AS(moe_forward(w, x, 3, r, {}), moeq::Error);
  w.w2.pop_back();
  CHECK_THROWS_WITH_AS(moe_forward(w, x, 2, r, {}), doctest::Contains("w2"), moeq::Error);
}
