// Fuzz target: a whole safetensors image through the reader's validation. Whatever the bytes,
// the reader either throws moeq::Error or returns tensors whose byte ranges lie inside the
// image, match shape x dtype, do not overlap and cover the data section exactly.
// A custom mutator also moves the data section's layout (a tensor's range shifted, grown or
// shrunk, bytes appended or cut off at the end) while keeping the header well-formed JSON, which
// byte-level mutations rarely manage.
#include "fuzz_check.hpp"

#include <moeq/error.hpp>
#include <moeq/safetensors.hpp>

#include <boost/json.hpp>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

extern "C" size_t LLVMFuzzerMutate(uint8_t* data, size_t size, size_t max_size);

namespace {

uint64_t u64_at(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = v << 8 | p[i];
  return v;
}

// One layout change of a parseable image, chosen by `seed`; false when the image has no header
// to change (the caller then mutates bytes).
bool mutate_layout(std::vector<uint8_t>& img, unsigned seed) {
  if (img.size() < 8) return false;
  const uint64_t hlen = u64_at(img.data());
  if (hlen == 0 || hlen > img.size() - 8) return false;
  boost::json::value root;
  boost::system::error_code ec;
  root = boost::json::parse(std::string_view(reinterpret_cast<const char*>(img.data() + 8), hlen), ec);
  if (ec || !root.is_object()) return false;
  std::vector<boost::json::array*> offsets;
  for (auto& kv : root.as_object())
    if (kv.value().is_object())
      if (auto* o = kv.value().as_object().if_contains("data_offsets"); o && o->is_array() && o->as_array().size() == 2 &&
                                                                        o->as_array()[0].is_int64() &&
                                                                        o->as_array()[1].is_int64())
        offsets.push_back(&o->as_array());
  std::vector<uint8_t> data(img.begin() + 8 + static_cast<std::ptrdiff_t>(hlen), img.end());
  const unsigned what = seed % 5;
  if (what == 3) {
    data.resize(data.size() + 1 + seed % 64, 0x5a);  // bytes after the last tensor
  } else if (what == 4) {
    data.resize(data.size() - std::min<std::size_t>(data.size(), 1 + seed % 64));  // cut off the end
  } else if (!offsets.empty()) {
    boost::json::array& r = *offsets[(seed / 5) % offsets.size()];
    const int64_t delta = static_cast<int64_t>(1 + (seed / 7) % 32);
    if (what == 0) {  // shift the range: a hole before it or an overlap with the next
      r[0] = r[0].as_int64() + delta;
      r[1] = r[1].as_int64() + delta;
    } else if (what == 1) {  // grow it into its neighbour
      r[1] = r[1].as_int64() + delta;
    } else {  // shrink it: a hole after it (and a shape mismatch)
      r[1] = std::max(r[0].as_int64(), r[1].as_int64() - delta);
    }
  } else {
    return false;
  }
  const std::string header = boost::json::serialize(root);
  std::vector<uint8_t> out(8);
  for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<uint8_t>(header.size() >> (8 * i));
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), data.begin(), data.end());
  img.swap(out);
  return true;
}

}  // namespace

extern "C" size_t LLVMFuzzerCustomMutator(uint8_t* data, size_t size, size_t max_size, unsigned int seed) {
  // Half the time a layout change (when the image parses that far), else libFuzzer's own.
  if (seed % 2 == 0) {
    std::vector<uint8_t> img(data, data + size);
    if (mutate_layout(img, seed / 2) && img.size() <= max_size) {
      std::memcpy(data, img.data(), img.size());
      return img.size();
    }
  }
  return LLVMFuzzerMutate(data, size, max_size);
}

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
  // Exactly covered: the first range at 0, each next where the previous ends, the last at the end.
  const uint64_t data_size = size - 8 - u64_at(data);
  uint64_t at = 0;
  for (const auto& [begin, end] : ranges) {
    FUZZ_CHECK(begin == at);
    at = end;
  }
  FUZZ_CHECK(at == data_size);
  return 0;
}
