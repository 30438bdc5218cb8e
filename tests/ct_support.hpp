// Helpers of the compressed_tensors tests: seeded tokens and routing, the float reference on
// chosen weights, tolerance checks that report what they measured, and TP/EP slices.
#pragma once
#include "random_routing.hpp"
#include "support.hpp"

#include <moeq/reference.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace moeq::test {

// Whether the bucket of M in a GPU layer's description (its report's "... tiles M<=16: gemm1 mma
// 16x64 w1x4 s5, gemm2 ..., M<=64: gemm1 wgmma-ws 64x128 w1x4 s4, ..."; M past the last bucket
// runs the last one) has a wgmma GEMM.
inline bool wgmma_bucket(const std::string& desc, int64_t m) {
  std::size_t at = desc.find("M<=");
  while (at != std::string::npos) {
    const std::size_t next = desc.find("M<=", at + 3);
    if (next == std::string::npos || std::stoll(desc.substr(at + 3)) >= m)
      return desc.substr(at, next == std::string::npos ? std::string::npos : next - at).find("wgmma") !=
             std::string::npos;
    at = next;
  }
  return false;
}

// Tokens ~ N(0, stddev^2), rounded to bf16 as a model's activations are.
inline std::vector<float> bf16_tokens(int64_t m, int64_t h, uint64_t seed, float stddev = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, stddev);
  std::vector<float> x(static_cast<size_t>(m * h));
  for (float& v : x) v = bf16_to_float(float_to_bf16(d(rng)));
  return x;
}

struct Closeness {
  double max_abs = 0;     // max |out - ref|
  double max_excess = 0;  // max |out - ref| - (atol + rtol |ref|); <= 0 when within tolerance
  double rel_l2 = 0;
};

inline Closeness closeness(const std::vector<float>& out, const std::vector<float>& ref, double atol, double rtol) {
  REQUIRE(out.size() == ref.size());
  Closeness c;
  c.max_excess = -1e300;
  for (size_t i = 0; i < out.size(); ++i) {
    const double d = std::fabs(double(out[i]) - double(ref[i]));
    c.max_abs = std::max(c.max_abs, d);
    c.max_excess = std::max(c.max_excess, d - (atol + rtol * std::fabs(double(ref[i]))));
  }
  c.rel_l2 = ref::relative_l2(out, ref);
  return c;
}

// Elementwise |out - ref| <= atol + rtol |ref| and relative L2 <= max_rel_l2; prints what it measured.
inline void check_close(const std::vector<float>& out, const std::vector<float>& ref, double atol, double rtol,
                        double max_rel_l2, const std::string& what) {
  const Closeness c = closeness(out, ref, atol, rtol);
  MESSAGE(what << ": max |out - ref| = " << c.max_abs << ", relative L2 = " << c.rel_l2);
  CHECK(c.max_excess <= 0.0);
  CHECK(c.rel_l2 <= max_rel_l2);
  // A vacuous comparison (all zeros) would pass anything.
  double norm = 0;
  for (float v : ref) norm += double(v) * v;
  CHECK(norm > 0.0);
}

// Experts [first, first + count) and intermediate columns [i0, i0 + n) of unsharded weights.
inline ref::ExpertWeights slice(const ref::ExpertWeights& w, int64_t first, int64_t count, int64_t i0, int64_t n) {
  const int64_t H = w.hidden, I = w.intermediate;
  ref::ExpertWeights s;
  s.num_experts = count;
  s.first_expert = w.first_expert + first;
  s.hidden = H;
  s.intermediate = n;
  for (int64_t e = first; e < first + count; ++e) {
    const float* base = w.w13.data() + e * 2 * I * H;
    s.w13.insert(s.w13.end(), base + i0 * H, base + (i0 + n) * H);            // gate rows
    s.w13.insert(s.w13.end(), base + (I + i0) * H, base + (I + i0 + n) * H);  // up rows
    for (int64_t h = 0; h < H; ++h) {
      const float* row = w.w2.data() + (e * H + h) * I;
      s.w2.insert(s.w2.end(), row + i0, row + i0 + n);
    }
  }
  return s;
}

inline ref::ActQuantSpec act(ref::ActQuant kind, int64_t group = 128, float scale = 1.0f) {
  ref::ActQuantSpec s;
  s.kind = kind;
  s.group_size = group;
  s.static_scale = scale;
  return s;
}

inline ref::MoeOptions both(const ref::ActQuantSpec& a1, const ref::ActQuantSpec& a2) { return {a1, a2}; }
inline ref::MoeOptions both(const ref::ActQuantSpec& a) { return {a, a}; }

inline bool same_spec(const ref::ActQuantSpec& a, const ref::ActQuantSpec& b) {
  if (a.kind != b.kind) return false;
  if (a.kind == ref::ActQuant::kFp8PerGroup && a.group_size != b.group_size) return false;
  if (a.kind == ref::ActQuant::kFp8PerTensorStatic && a.static_scale != b.static_scale) return false;
  return true;
}

// Log lines captured while alive.
class LogCapture {
 public:
  LogCapture()
      : previous_(host::set_log_sink([this](moeq_log_level level, const std::string& source, const std::string& m) {
          lines_.push_back({level, source + ": " + m});
        })) {}
  ~LogCapture() { host::set_log_sink(previous_); }
  int count(const std::string& needle) const {
    int n = 0;
    for (const auto& [level, line] : lines_) n += line.find(needle) != std::string::npos;
    return n;
  }
  const std::vector<std::pair<moeq_log_level, std::string>>& lines() const { return lines_; }

 private:
  std::vector<std::pair<moeq_log_level, std::string>> lines_;
  host::LogSink previous_;
};

}  // namespace moeq::test
