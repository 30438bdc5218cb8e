// The JIT's on-disk cache: one file per entry at
//   <root>/jit/v<schema>/<arch>/<key[0:2]>/<key>.cubin
// holding a fixed header (magic, format version, key, payload size, payload XXH3-128) and
// then the CUBIN. Entries are published whole (temp file, fsync, rename) and checked whole on
// read, so several processes may fill one cache at once and a damaged entry is only a miss.
#pragma once
#include <moeq/digest.hpp>

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

namespace moeq::jit {

inline constexpr uint32_t kEntryFormat = 1;
// magic[8] "MOEQJIT\0", u32 format, u32 header bytes, key[16], u64 payload bytes, XXH3-128
// of the payload[16]; integers little-endian.
inline constexpr size_t kEntryHeaderBytes = 56;

enum class EntryState { hit, absent, corrupt };

struct CacheRead {
  EntryState state = EntryState::absent;
  std::vector<uint8_t> payload;  // the CUBIN, on a hit
  std::string why;               // on corrupt: what did not check out
};

// The bytes of an entry file (exposed for tests that damage entries on purpose).
std::vector<uint8_t> encode_entry(const Digest& key, std::span<const uint8_t> payload);
// Checks an entry file's bytes against the key it should hold; never throws.
CacheRead decode_entry(const Digest& key, std::span<const uint8_t> bytes);

class JitCache {
 public:
  explicit JitCache(std::filesystem::path root);
  const std::filesystem::path& root() const { return root_; }

  // `arch` must already be a checked arch name (it becomes a path component).
  std::filesystem::path entry_path(const std::string& arch, const Digest& key) const;
  // A missing, unreadable or invalid entry is a miss (absent or corrupt), never an error.
  CacheRead load(const std::string& arch, const Digest& key) const;
  // Publishes an entry atomically, replacing any existing one. Returns "" on success or why
  // it could not (read-only dir, disk full); never throws: a cache that cannot be written
  // only costs a compile next time.
  std::string store(const std::string& arch, const Digest& key, std::span<const uint8_t> payload) const;

 private:
  std::filesystem::path root_;
};

}  // namespace moeq::jit
