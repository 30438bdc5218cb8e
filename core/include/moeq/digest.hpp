// 128-bit content digests (XXH3-128) for JIT cache keys and cache entry checksums. Fast
// enough (GB/s) that hashing every source, header and CUBIN stays a small part of a warm
// start; 128 bits keep accidental collisions out of the question for any cache size.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

namespace moeq {

using Digest = std::array<uint8_t, 16>;  // canonical (big-endian) XXH128

class Digester {
 public:
  Digester();
  ~Digester();
  Digester(const Digester&) = delete;
  Digester& operator=(const Digester&) = delete;

  Digester& update(std::span<const uint8_t> bytes);
  Digester& update(std::string_view text);
  // The length as 8 bytes, then the bytes: keys built from several fields stay unambiguous
  // ("ab"+"c" and "a"+"bc" differ).
  Digester& field(std::string_view text);
  Digest finish() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

Digest digest(std::span<const uint8_t> bytes);
Digest digest(std::string_view text);
// Lower-case hexadecimal, 32 characters.
std::string to_hex(const Digest& d);

}  // namespace moeq
