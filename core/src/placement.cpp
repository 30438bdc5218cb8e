#include <moeq/error.hpp>
#include <moeq/placement.hpp>

#include <string>

namespace moeq {

ExpertRange local_experts(int64_t num_experts, int ep_rank, int ep_size) {
  const int64_t base = num_experts / ep_size;
  const int64_t rem = num_experts % ep_size;
  ExpertRange r;
  r.count = base + (ep_rank < rem ? 1 : 0);
  r.first = ep_rank * base + (ep_rank < rem ? ep_rank : rem);
  return r;
}

void validate_placement(const Placement& p, int64_t num_experts, int64_t intermediate_size) {
  if (p.tp_size < 1 || p.tp_rank < 0 || p.tp_rank >= p.tp_size)
    fail("tp rank " + std::to_string(p.tp_rank) + " of size " + std::to_string(p.tp_size) + " is out of range");
  if (p.ep_size < 1 || p.ep_rank < 0 || p.ep_rank >= p.ep_size)
    fail("ep rank " + std::to_string(p.ep_rank) + " of size " + std::to_string(p.ep_size) + " is out of range");
  if (p.ep_size > num_experts)
    fail("ep size " + std::to_string(p.ep_size) + " exceeds the " + std::to_string(num_experts) + " experts");
  if (intermediate_size % p.tp_size != 0)
    fail("intermediate size " + std::to_string(intermediate_size) + " is not divisible by tp size " +
         std::to_string(p.tp_size));
}

}  // namespace moeq
