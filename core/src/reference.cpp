// Float reference for routing and the MoE forward (docs/MOE_SEMANTICS.md §5, §6; routing in docs/ROUTING.md).
//
// Determinism choices (the spec leaves them open):
//  * top-k and group selection order by score descending; equal scores go to the lower
//    expert (or group) id first, so results do not depend on sort stability.
//  * logits and correction bias must be finite: NaN breaks the ordering that top-k needs.
//  * dynamic per-tensor quantization of an all-zero tensor uses scale 1 instead of the
//    kernel's 0/0; every q is 0 either way, so only the NaN is avoided.
#include <moeq/dtype.hpp>
#include <moeq/error.hpp>
#include <moeq/parallel_for.hpp>
#include <moeq/reference.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <thread>

namespace moeq::ref {
namespace {

std::string str(int64_t v) { return std::to_string(v); }

// Indices of the k largest entries of score, best first; ties go to the lower index.
std::vector<int32_t> top_indices(std::span<const float> score, int64_t k) {
  std::vector<int32_t> order(score.size());
  std::iota(order.begin(), order.end(), 0);
  auto better = [&](int32_t a, int32_t b) {
    if (score[a] != score[b]) return score[a] > score[b];
    return a < b;
  };
  std::partial_sort(order.begin(), order.begin() + k, order.end(), better);
  order.resize(static_cast<size_t>(k));
  return order;
}

void softmax_row(std::span<const float> logits, std::span<float> p) {
  const float max = *std::max_element(logits.begin(), logits.end());
  double sum = 0.0;
  for (size_t i = 0; i < logits.size(); ++i) {
    p[i] = std::exp(logits[i] - max);  // <= 1, so no overflow
    sum += p[i];
  }
  for (float& v : p) v = static_cast<float>(v / sum);
}

float sigmoid(float x) {
  // Two branches so exp never overflows.
  if (x >= 0.0f) return 1.0f / (1.0f + std::exp(-x));
  const float e = std::exp(x);
  return e / (1.0f + e);
}

// PhiMoE's sparse mixer at inference, top-2: pick the best remaining logit, mask every logit
// whose gap to it, relative to max(|logit|, best), exceeds 2 * eps, and take the softmax over
// the unmasked at the pick; the second round masks the first pick out of the candidates (the
// gap still measured against the unmasked logits, as the reference code does).
void sparse_mixer_row(std::span<const float> logits, float eps, std::span<int32_t> ids, std::span<float> w) {
  const int64_t E = static_cast<int64_t>(logits.size());
  std::vector<bool> taken(static_cast<size_t>(E), false);
  for (size_t j = 0; j < ids.size(); ++j) {
    int32_t best = -1;
    for (int64_t e = 0; e < E; ++e)
      if (!taken[e] && (best < 0 || logits[e] > logits[best])) best = static_cast<int32_t>(e);
    const float top = logits[best];
    double sum = 0.0;
    for (int64_t e = 0; e < E; ++e) {
      if (taken[e]) continue;
      const float factor = std::max(std::fabs(logits[e]), top);
      if ((top - logits[e]) / factor > 2.0f * eps) continue;
      sum += std::exp(static_cast<double>(logits[e]) - top);
    }
    ids[j] = best;
    w[j] = static_cast<float>(1.0 / sum);  // exp(top - top) / sum
    taken[best] = true;
  }
}

void validate_routing(std::span<const float> logits, int64_t num_tokens, int64_t num_experts,
                      const RoutingOptions& o) {
  MOEQ_CHECK(num_tokens >= 0, "route: num_tokens must be >= 0, found " + str(num_tokens));
  MOEQ_CHECK(num_experts >= 1, "route: num_experts must be >= 1, found " + str(num_experts));
  MOEQ_CHECK(static_cast<int64_t>(logits.size()) == num_tokens * num_experts,
             "route: logits must hold num_tokens * num_experts = " +
                 str(num_tokens * num_experts) + " values [M, E], found " +
                 str(static_cast<int64_t>(logits.size())));
  MOEQ_CHECK(o.top_k >= 1 && o.top_k <= num_experts,
             "route: top_k must be in [1, num_experts = " + str(num_experts) + "], found " +
                 str(o.top_k));
  MOEQ_CHECK(o.correction_bias.empty() ||
                 static_cast<int64_t>(o.correction_bias.size()) == num_experts,
             "route: correction_bias must be empty or hold num_experts = " + str(num_experts) +
                 " values, found " + str(static_cast<int64_t>(o.correction_bias.size())));
  for (size_t e = 0; e < o.correction_bias.size(); ++e)
    MOEQ_CHECK(std::isfinite(o.correction_bias[e]),
               "route: correction_bias[" + str(static_cast<int64_t>(e)) + "] is not finite");
  MOEQ_CHECK(std::isfinite(o.routed_scaling_factor),
             "route: routed_scaling_factor must be finite");
  MOEQ_CHECK(o.scoring != Scoring::kSparseMixer || o.top_k <= 2,
             "route: the sparse mixer picks at most 2 experts, top_k is " + str(o.top_k));
  MOEQ_CHECK(o.scoring != Scoring::kSparseMixer || (std::isfinite(o.sparsemixer_eps) && o.sparsemixer_eps >= 0.0f),
             "route: sparsemixer_eps must be finite and >= 0");
  MOEQ_CHECK(o.n_group >= 0, "route: n_group must be >= 0 (0 = no grouping), found " +
                                 str(o.n_group));
  if (o.n_group > 0) {
    MOEQ_CHECK(num_experts % o.n_group == 0,
               "route: n_group = " + str(o.n_group) + " must divide num_experts = " +
                   str(num_experts));
    MOEQ_CHECK(o.topk_group >= 1 && o.topk_group <= o.n_group,
               "route: topk_group must be in [1, n_group = " + str(o.n_group) + "], found " +
                   str(o.topk_group));
    const int64_t kept = static_cast<int64_t>(o.topk_group) * (num_experts / o.n_group);
    MOEQ_CHECK(o.top_k <= kept, "route: top_k = " + str(o.top_k) + " exceeds the " +
                                    str(kept) + " experts in the topk_group = " +
                                    str(o.topk_group) + " kept groups");
  }
  for (size_t i = 0; i < logits.size(); ++i)
    MOEQ_CHECK(std::isfinite(logits[i]),
               "route: logit of token " + str(static_cast<int64_t>(i) / num_experts) +
                   ", expert " + str(static_cast<int64_t>(i) % num_experts) +
                   " is not finite");
}

void check_scale(float s, const char* what) {
  MOEQ_CHECK(std::isfinite(s) && s > 0.0f,
             std::string(what) + ": scale must be finite and > 0, found " + std::to_string(s));
}

float amax_of(std::span<const float> x) {
  float amax = 0.0f;
  for (float v : x) amax = std::max(amax, std::fabs(v));  // NaN leaves amax unchanged
  return amax;
}

// Quantizes and dequantizes with one scale.
void fake_quant_span(std::span<const float> x, float scale, std::span<float> out) {
  for (size_t i = 0; i < x.size(); ++i)
    out[i] = fp8_e4m3_to_float(fp8_quantize(x[i], scale)) * scale;
}

double dot(const float* a, const float* b, int64_t n) {
  double acc = 0.0;
  for (int64_t i = 0; i < n; ++i) acc += static_cast<double>(a[i]) * static_cast<double>(b[i]);
  return acc;
}

}  // namespace

Routing route(std::span<const float> logits, int64_t num_tokens, int64_t num_experts,
              const RoutingOptions& options) {
  validate_routing(logits, num_tokens, num_experts, options);
  const int64_t E = num_experts;
  const int64_t k = options.top_k;
  const bool has_bias = !options.correction_bias.empty();

  Routing r;
  r.num_tokens = num_tokens;
  r.top_k = k;
  r.ids.resize(static_cast<size_t>(num_tokens * k));
  r.weights.resize(static_cast<size_t>(num_tokens * k));

  std::vector<float> p(static_cast<size_t>(E));
  std::vector<float> sel(static_cast<size_t>(E));  // selection score: p + bias, or p
  for (int64_t m = 0; m < num_tokens; ++m) {
    auto row = logits.subspan(static_cast<size_t>(m * E), static_cast<size_t>(E));
    if (options.scoring == Scoring::kSparseMixer) {
      sparse_mixer_row(row, options.sparsemixer_eps, std::span<int32_t>(r.ids).subspan(m * k, k),
                       std::span<float>(r.weights).subspan(m * k, k));
      for (int64_t j = 0; j < k; ++j) r.weights[m * k + j] *= options.routed_scaling_factor;
      continue;
    }
    if (options.scoring == Scoring::kSoftmax) {
      softmax_row(row, p);
    } else if (options.scoring == Scoring::kSqrtSoftplus) {
      // softplus(x) = max(x, 0) + log1p(exp(-|x|)): no overflow for large |x|.
      for (int64_t e = 0; e < E; ++e)
        p[e] = std::sqrt(std::max(row[e], 0.0f) + std::log1p(std::exp(-std::fabs(row[e]))));
    } else {
      for (int64_t e = 0; e < E; ++e) p[e] = sigmoid(row[e]);
    }
    for (int64_t e = 0; e < E; ++e) sel[e] = p[e] + (has_bias ? options.correction_bias[e] : 0.0f);

    if (options.n_group > 0) {
      // Group score: sum of the top-2 selection scores with bias (top-1 for groups of one),
      // else the group max; experts of the groups not kept are masked out of selection.
      const int64_t G = options.n_group;
      const int64_t size = E / G;
      std::vector<float> group_score(static_cast<size_t>(G));
      for (int64_t g = 0; g < G; ++g) {
        auto grp = std::span<const float>(sel).subspan(static_cast<size_t>(g * size),
                                                       static_cast<size_t>(size));
        const bool top2 = options.group_score == GroupScore::kTop2Sum ||
                          (options.group_score == GroupScore::kAuto && has_bias);
        if (top2) {
          float s = 0.0f;
          for (int32_t i : top_indices(grp, std::min<int64_t>(2, size))) s += grp[i];
          group_score[g] = s;
        } else {
          group_score[g] = *std::max_element(grp.begin(), grp.end());
        }
      }
      std::vector<bool> keep(static_cast<size_t>(G), false);
      for (int32_t g : top_indices(group_score, options.topk_group)) keep[g] = true;
      for (int64_t e = 0; e < E; ++e)
        if (!keep[e / size]) sel[e] = -std::numeric_limits<float>::infinity();
    }

    const std::vector<int32_t> ids = top_indices(sel, k);
    double sum = 0.0;
    for (int64_t j = 0; j < k; ++j) sum += p[ids[j]];
    for (int64_t j = 0; j < k; ++j) {
      // Weights are always the unbiased scores at the chosen ids.
      float w = p[ids[j]];
      if (options.renormalize && sum > 0.0) w = static_cast<float>(w / sum);
      w *= options.routed_scaling_factor;
      r.ids[m * k + j] = ids[j];
      r.weights[m * k + j] = w;
    }
  }
  return r;
}

uint8_t fp8_quantize(float x, float scale) {
  const float v = x / scale;
  // std::clamp would pass NaN through too; written out so the NaN case is explicit.
  const float c = std::isnan(v) ? v : std::min(std::max(v, -kFp8E4M3Max), kFp8E4M3Max);
  return float_to_fp8_e4m3(c);
}

float fp8_per_token_scale(std::span<const float> row) {
  return std::max(amax_of(row) / kFp8E4M3Max, 1.0f / (kFp8E4M3Max * 512.0f));
}

float fp8_group_scale(std::span<const float> group) {
  return std::max(amax_of(group), 1e-10f) / kFp8E4M3Max;
}

void fake_quant(std::span<const float> x, int64_t rows, int64_t cols, const ActQuantSpec& spec,
                std::span<float> out) {
  MOEQ_CHECK(rows >= 0 && cols >= 0, "fake_quant: rows and cols must be >= 0, found [" +
                                         str(rows) + ", " + str(cols) + "]");
  MOEQ_CHECK(static_cast<int64_t>(x.size()) == rows * cols,
             "fake_quant: x must hold rows * cols = " + str(rows * cols) + " values, found " +
                 str(static_cast<int64_t>(x.size())));
  MOEQ_CHECK(out.size() == x.size(), "fake_quant: out must hold " +
                                         str(static_cast<int64_t>(x.size())) +
                                         " values like x, found " +
                                         str(static_cast<int64_t>(out.size())));
  // NOTE: every branch computes a scale from its whole input span before writing it, so
  // out may alias x.
  switch (spec.kind) {
    case ActQuant::kNone:
      if (out.data() != x.data()) std::copy(x.begin(), x.end(), out.begin());
      return;
    case ActQuant::kFp8PerToken:
      for (int64_t r = 0; r < rows; ++r) {
        auto xr = x.subspan(static_cast<size_t>(r * cols), static_cast<size_t>(cols));
        auto orow = out.subspan(static_cast<size_t>(r * cols), static_cast<size_t>(cols));
        fake_quant_span(xr, fp8_per_token_scale(xr), orow);
      }
      return;
    case ActQuant::kFp8PerGroup: {
      MOEQ_CHECK(spec.group_size >= 1,
                 "fake_quant: group_size must be >= 1, found " + str(spec.group_size));
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c0 = 0; c0 < cols; c0 += spec.group_size) {
          // The last group of a row may be shorter than group_size.
          const int64_t n = std::min(spec.group_size, cols - c0);
          auto xg = x.subspan(static_cast<size_t>(r * cols + c0), static_cast<size_t>(n));
          auto og = out.subspan(static_cast<size_t>(r * cols + c0), static_cast<size_t>(n));
          fake_quant_span(xg, fp8_group_scale(xg), og);
        }
      }
      return;
    }
    case ActQuant::kFp8PerTensorDynamic: {
      const float amax = amax_of(x);
      fake_quant_span(x, amax > 0.0f ? amax / kFp8E4M3Max : 1.0f, out);
      return;
    }
    case ActQuant::kFp8PerTensorStatic:
      check_scale(spec.static_scale, "fake_quant (per-tensor static)");
      fake_quant_span(x, spec.static_scale, out);
      return;
  }
  fail("fake_quant: unknown ActQuant kind " + str(static_cast<int64_t>(spec.kind)));
}

float silu(float x) { return x * sigmoid(x); }

std::vector<float> moe_forward(const ExpertWeights& w, std::span<const float> x,
                               int64_t num_tokens, const Routing& routing,
                               const MoeOptions& options) {
  const int64_t E = w.num_experts, H = w.hidden, I = w.intermediate, M = num_tokens;
  MOEQ_CHECK(E >= 0 && H >= 1 && I >= 1 && w.first_expert >= 0,
             "moe_forward: expert weights need num_experts >= 0, hidden >= 1, "
             "intermediate >= 1, first_expert >= 0; found E = " + str(E) + ", H = " + str(H) +
                 ", I = " + str(I) + ", first_expert = " + str(w.first_expert));
  MOEQ_CHECK(static_cast<int64_t>(w.w13.size()) == E * 2 * I * H,
             "moe_forward: w13 must be [E, 2I, H] = " + str(E * 2 * I * H) +
                 " values, found " + str(static_cast<int64_t>(w.w13.size())));
  MOEQ_CHECK(static_cast<int64_t>(w.w2.size()) == E * H * I,
             "moe_forward: w2 must be [E, H, I] = " + str(E * H * I) + " values, found " +
                 str(static_cast<int64_t>(w.w2.size())));
  MOEQ_CHECK(M >= 0 && static_cast<int64_t>(x.size()) == M * H,
             "moe_forward: x must be [M, H] = " + str(M * H) + " values, found " +
                 str(static_cast<int64_t>(x.size())));
  MOEQ_CHECK(routing.num_tokens == M, "moe_forward: routing has " + str(routing.num_tokens) +
                                          " tokens, x has " + str(M));
  const int64_t k = routing.top_k;
  MOEQ_CHECK(k >= 0 && static_cast<int64_t>(routing.ids.size()) == M * k &&
                 static_cast<int64_t>(routing.weights.size()) == M * k,
             "moe_forward: routing ids and weights must be [M, k] = " + str(M * k) +
                 " values, found " + str(static_cast<int64_t>(routing.ids.size())) + " and " +
                 str(static_cast<int64_t>(routing.weights.size())));

  // a1: once per token, before the top-k expansion (per-tensor dynamic: over all of x).
  std::vector<float> a(x.size());
  fake_quant(x, M, H, options.a1, a);

  // (token, slot) pairs routed to local experts, in token order.
  struct Row {
    int64_t token, slot, local;
  };
  std::vector<Row> rows;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = 0; j < k; ++j) {
      const int64_t local = static_cast<int64_t>(routing.ids[m * k + j]) - w.first_expert;
      if (local >= 0 && local < E) rows.push_back({m, j, local});
    }
  const int64_t R = static_cast<int64_t>(rows.size());

  // The dot products of each routed row are independent: big problems spread rows over threads
  // (each row's arithmetic unchanged, so the result is the same whatever the thread count).
  const unsigned threads =
      R * I * H < (int64_t{1} << 22) ? 1u : std::clamp(std::thread::hardware_concurrency(), 1u, 16u);
  constexpr int64_t kRowsPerJob = 4;
  const size_t jobs = static_cast<size_t>((R + kRowsPerJob - 1) / kRowsPerJob);
  auto for_rows = [&](auto&& fn) {
    parallel_for(jobs, threads, [&](size_t job) {
      const int64_t r0 = static_cast<int64_t>(job) * kRowsPerJob;
      for (int64_t r = r0; r < std::min(R, r0 + kRowsPerJob); ++r) fn(r);
    });
  };

  // GEMM1 + silu-and-mul into h [R, I].
  std::vector<float> h(static_cast<size_t>(R * I));
  for_rows([&](int64_t r) {
    const float* xa = a.data() + rows[r].token * H;
    const float* w13 = w.w13.data() + rows[r].local * 2 * I * H;
    for (int64_t i = 0; i < I; ++i) {
      const float gate = static_cast<float>(dot(w13 + i * H, xa, H));
      const float up = static_cast<float>(dot(w13 + (I + i) * H, xa, H));
      h[r * I + i] = silu(gate) * up;
    }
  });

  // a2 over the routed local intermediates (per-tensor dynamic: one scale for all R rows).
  fake_quant(h, R, I, options.a2, h);

  // GEMM2 into o [R, H], then the weighted sum over slots in row order.
  std::vector<float> o(static_cast<size_t>(R * H));
  for_rows([&](int64_t r) {
    const float* w2 = w.w2.data() + rows[r].local * H * I;
    for (int64_t n = 0; n < H; ++n) o[r * H + n] = static_cast<float>(dot(w2 + n * I, h.data() + r * I, I));
  });
  std::vector<double> acc(static_cast<size_t>(M * H), 0.0);
  for (int64_t r = 0; r < R; ++r) {
    const double rw = routing.weights[rows[r].token * k + rows[r].slot];
    for (int64_t n = 0; n < H; ++n) acc[rows[r].token * H + n] += rw * static_cast<double>(o[r * H + n]);
  }
  return std::vector<float>(acc.begin(), acc.end());
}

double relative_l2(std::span<const float> a, std::span<const float> ref) {
  MOEQ_CHECK(a.size() == ref.size(), "relative_l2: sizes differ: " +
                                         str(static_cast<int64_t>(a.size())) + " vs " +
                                         str(static_cast<int64_t>(ref.size())));
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = static_cast<double>(a[i]) - static_cast<double>(ref[i]);
    num += d * d;
    den += static_cast<double>(ref[i]) * static_cast<double>(ref[i]);
  }
  if (den == 0.0) return num == 0.0 ? 0.0 : std::numeric_limits<double>::infinity();
  return std::sqrt(num / den);
}

}  // namespace moeq::ref
