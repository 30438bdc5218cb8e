// The JIT cache key: XXH3-128 over every input that can change the CUBIN. Each field goes in
// with its length, so no two different input sets run together into the same byte stream.
#pragma once
#include <moeq/jit.hpp>
#include <moeq/jit_include_scanner.hpp>
#include <moeq/digest.hpp>

#include <string>
#include <string_view>
#include <vector>

namespace moeq::jit {

// Bump when the key's fields or the meaning of an entry change: old entries become misses.
inline constexpr uint32_t kKeySchema = 2;  // 2: the source kind (CUDA C++ or PTX)

struct KeyInputs {
  const Request& request;
  const std::vector<std::string>& options;  // the full list NVRTC gets (compile_options())
  std::string_view compiler;                // "nvrtc 13.0"; PTX: "nvjitlink 13.0; driver 13000"
  const IncludeScan& includes;
};

// Covers: the key schema, the source kind, the compiler and its version, the host ABI version, the plugin's
// name and version, the kernel set name, the arch, every option in order (the first names what
// NVRTC builds: the arch for a CUBIN, "compute_XX" for the PTX fallback of an arch newer than
// NVRTC, so the two never share a key; their cache files differ too), the source, every
// given header (name and contents, sorted by name), every toolkit header reached on disk
// (path and content digest) and the names that resolved nowhere.
Digest cache_key(const KeyInputs& inputs);

}  // namespace moeq::jit
