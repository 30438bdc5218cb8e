// Tensor- and expert-parallel placement of one MoE layer (docs/MOE_SEMANTICS.md §1).
#pragma once
#include <cstdint>

namespace moeq {

struct Placement {
  int tp_rank = 0;
  int tp_size = 1;
  int ep_rank = 0;
  int ep_size = 1;
};

struct ExpertRange {
  int64_t first = 0;
  int64_t count = 0;
  bool contains(int64_t e) const { return e >= first && e < first + count; }
};

// Linear EP placement: base = E / ep, the first E % ep ranks hold one more.
ExpertRange local_experts(int64_t num_experts, int ep_rank, int ep_size);

// Throws moeq::Error when ranks are out of range, I % tp != 0 or ep > E.
void validate_placement(const Placement& p, int64_t num_experts, int64_t intermediate_size);

}  // namespace moeq
