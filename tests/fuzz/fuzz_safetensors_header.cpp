// Fuzz target: a whole safetensors image through the reader's validation. Whatever the bytes,
// the reader either throws moeq::Error or returns tensors whose byte ranges lie inside the
// image, match shape x dtype and do not overlap.
#include "fuzz_check.hpp"

#include <moeq/error.hpp>
#include <moeq/safetensors.hpp>

#include <algorithm>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto bytes = moeq::fuzz::bytes_of(data, size);
  moeq::SafetensorsHeader header;
  try {
    header = moeq::parse_safetensors(bytes, "fuzz.safetensors");
  } catch (const moeq::Error&) {
    return 0;
  }
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const auto& [name, t] : header.tensors) {
    FUZZ_CHECK(name == t.name);
    FUZZ_CHECK(t.begin <= t.end);
    FUZZ_CHECK(static_cast<int>(t.shape.size()) <= moeq::kMaxTensorRank);
    const std::byte* first = t.data;
    FUZZ_CHECK(first >= bytes.data() && first + t.nbytes() <= bytes.data() + bytes.size());
    FUZZ_CHECK(static_cast<uint64_t>(t.numel()) * moeq::dtype_size(t.dtype) == t.nbytes());
    if (t.nbytes() > 0) {
      // Touch both ends: a range the reader got wrong is an ASan report here, not later.
      volatile std::byte a = first[0], b = first[t.nbytes() - 1];
      (void)a;
      (void)b;
      ranges.push_back({t.begin, t.end});
    }
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) FUZZ_CHECK(ranges[i - 1].second <= ranges[i].first);
  return 0;
}
