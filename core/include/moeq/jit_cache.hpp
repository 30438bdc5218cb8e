// The JIT's on-disk cache: one file per entry at
//   <root>/jit/v<schema>/<arch>/<key[0:2]>/<key>.cubin   (<key>.ptx for the PTX fallback)
// holding a fixed header (magic, format version, key, payload size, payload XXH3-128) and
// then the CUBIN (or PTX). Entries are published whole (temp file, fsync, rename) and checked whole on
// read, so several processes may fill one cache at once and a damaged entry is only a miss.
// A CUBIN is code that runs on the GPU with the user's rights, so the cache is held to the
// rules of a plugin directory (file_trust.hpp, docs/DESIGN.md §5): an entry under a directory
// someone else could write, or an entry someone else could write, is never read, and nothing
// is written there.
#pragma once
#include <moeq/digest.hpp>
#include <moeq/jit.hpp>

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

enum class EntryState { hit, absent, corrupt, untrusted };

struct CacheRead {
  EntryState state = EntryState::absent;
  std::vector<uint8_t> payload;  // the CUBIN, on a hit
  std::string why;               // on corrupt: what did not check out; on untrusted: who could write it
};

// The bytes of an entry file (exposed for tests that damage entries on purpose).
std::vector<uint8_t> encode_entry(const Digest& key, std::span<const uint8_t> payload);
// Checks an entry file's bytes against the key it should hold; never throws.
CacheRead decode_entry(const Digest& key, std::span<const uint8_t> bytes);

class JitCache {
 public:
  // Entries and directories must be owned by root or `owner_uid` (default: the effective uid).
  explicit JitCache(std::filesystem::path root);
  JitCache(std::filesystem::path root, uint32_t owner_uid);
  const std::filesystem::path& root() const { return root_; }

  // Empty when the root (or, while it does not exist, the directory it would be created in)
  // and every directory above it pass the ownership rules, else the one-line reason.
  std::string trust_problem() const;
  // `arch` must already be a checked arch name (it becomes a path component).
  // The image kind names the file (.cubin, .ptx): an entry of one kind is never read as the other.
  std::filesystem::path entry_path(const std::string& arch, const Digest& key, Image image = Image::cubin) const;
  // A missing, unreadable or invalid entry is a miss (absent or corrupt), never an error. An
  // entry that is a symlink, or that another user could have written (the file, a directory
  // from the root of the filesystem down to it), is untrusted and its bytes are not returned.
  CacheRead load(const std::string& arch, const Digest& key, Image image = Image::cubin) const;
  // Publishes an entry atomically, replacing any existing one. Returns "" on success or why
  // it could not (read-only dir, disk full, a directory another user could write); never
  // throws: a cache that cannot be written only costs a compile next time. Directories it
  // creates get mode 0755 less the umask, so no umask makes them writable by group or others.
  std::string store(const std::string& arch, const Digest& key, std::span<const uint8_t> payload,
                    Image image = Image::cubin) const;

 private:
  // The directories from the root down to `dir` (below the root): each must pass as an
  // existing directory; the root also as to what is above it. Empty when all pass.
  std::string chain_problem(const std::filesystem::path& dir) const;

  std::filesystem::path root_;
  uint32_t owner_uid_ = 0;
};

}  // namespace moeq::jit
