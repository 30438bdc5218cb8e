// SHA-256 (FIPS 180-4), where a standard, externally checkable digest is needed (e.g. a
// manifest that `sha256sum -c` can verify). The JIT cache uses the faster digest.hpp.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace moeq {

using Digest256 = std::array<uint8_t, 32>;

class Sha256 {
 public:
  Sha256();
  Sha256& update(std::span<const uint8_t> bytes);
  Sha256& update(std::string_view text);
  // Appends the length as 8 bytes, then the bytes: digests built from several fields stay
  // unambiguous ("ab"+"c" and "a"+"bc" hash differently).
  Sha256& field(std::string_view text);
  // Ends the computation; the object must not be updated afterwards.
  Digest256 finish();

 private:
  void block(const uint8_t* p);
  std::array<uint32_t, 8> h_;
  std::array<uint8_t, 64> buf_{};
  size_t used_ = 0;
  uint64_t total_ = 0;
};

Digest256 sha256(std::span<const uint8_t> bytes);
Digest256 sha256(std::string_view text);
// Lower-case hexadecimal, 64 characters.
std::string to_hex(const Digest256& digest);

}  // namespace moeq
