// Fuzz target: checkpoint tensor names through the expert name router. Any name routes to a
// role without throwing; an expert or router answer carries a layer and a prefix of the name.
#include "fuzz_check.hpp"

#include <moeq/expert_name_router.hpp>

#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string name(moeq::fuzz::text_of(data, size));
  const moeq::RoutedName r = moeq::route_tensor_name(name);
  if (r.role == moeq::TensorRole::kNotMoe) return 0;
  FUZZ_CHECK(!r.layer_prefix.empty());
  FUZZ_CHECK(name.compare(0, r.layer_prefix.size(), r.layer_prefix) == 0);
  FUZZ_CHECK(!r.family.empty());
  if (r.role == moeq::TensorRole::kExpert) {
    FUZZ_CHECK(r.layer >= 0);
    FUZZ_CHECK(r.expert >= -1);
    FUZZ_CHECK(!r.suffix.empty());
    FUZZ_CHECK(!r.experts_module.empty());
  }
  return 0;
}
