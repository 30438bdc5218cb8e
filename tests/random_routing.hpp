// Seeded random routing for tests and fuzz targets (no doctest, no writer: the fuzz build
// includes it too).
#pragma once
#include <moeq/reference.hpp>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

namespace moeq::test {

// k distinct experts per token, positive weights summing to 1.
inline ref::Routing random_routing(int64_t m, int64_t num_experts, int64_t k, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(0.1f, 1.0f);
  ref::Routing r;
  r.num_tokens = m;
  r.top_k = k;
  std::vector<int32_t> ids(static_cast<size_t>(num_experts));
  for (int64_t t = 0; t < m; ++t) {
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    float sum = 0.0f;
    std::vector<float> w(static_cast<size_t>(k));
    for (float& v : w) sum += v = u(rng);
    for (int64_t j = 0; j < k; ++j) {
      r.ids.push_back(ids[j]);
      r.weights.push_back(w[j] / sum);
    }
  }
  return r;
}

}  // namespace moeq::test
