// XXH3-128 through libxxhash's header (inlined: no shared library needed at run time).
#include <moeq/digest.hpp>

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace moeq {

struct Digester::State {
  XXH3_state_t xxh;
};

Digester::Digester() : state_(std::make_unique<State>()) { XXH3_128bits_reset(&state_->xxh); }
Digester::~Digester() = default;

Digester& Digester::update(std::span<const uint8_t> bytes) {
  XXH3_128bits_update(&state_->xxh, bytes.data(), bytes.size());
  return *this;
}

Digester& Digester::update(std::string_view text) {
  XXH3_128bits_update(&state_->xxh, text.data(), text.size());
  return *this;
}

Digester& Digester::field(std::string_view text) {
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(static_cast<uint64_t>(text.size()) >> (8 * i));
  update(std::span<const uint8_t>(len, 8));
  return update(text);
}

Digest Digester::finish() const {
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, XXH3_128bits_digest(&state_->xxh));
  Digest d;
  for (size_t i = 0; i < d.size(); ++i) d[i] = c.digest[i];
  return d;
}

Digest digest(std::span<const uint8_t> bytes) { return Digester().update(bytes).finish(); }
Digest digest(std::string_view text) { return Digester().update(text).finish(); }

std::string to_hex(const Digest& d) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s(2 * d.size(), '0');
  for (size_t i = 0; i < d.size(); ++i) {
    s[2 * i] = kHex[d[i] >> 4];
    s[2 * i + 1] = kHex[d[i] & 15];
  }
  return s;
}

}  // namespace moeq
