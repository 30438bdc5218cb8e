// The JIT service: plugin kernel sources compiled by NVRTC to CUBIN for one exact GPU
// architecture, through an on-disk cache shared by processes (docs/DESIGN.md §5). Compiling needs no
// GPU; loading a CUBIN does (cuda_driver.hpp).
#pragma once
#include <moeq/abi.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace moeq::jit {

// A header the source includes by `name`, passed by content so that the key covers it exactly.
struct Header {
  std::string name;
  std::string contents;
};

// What a request's source is: CUDA C++ (NVRTC) or a PTX module (nvJitLink).
enum class SourceKind { cuda, ptx };

// One kernel source (a "kernel set": every kernel in the source lands in one CUBIN).
struct Request {
  std::string name;                  // for the cache and messages, e.g. "fp8_channel_m16"
  SourceKind kind = SourceKind::cuda;
  std::string source;
  std::vector<Header> headers;
  std::vector<std::string> options;  // the caller's NVRTC (or nvJitLink) options, after the service's own
  std::string arch;                  // exact target, "sm_90a", "sm_89", "sm_80"
  std::string plugin_name;
  std::string plugin_version;
};

enum class Origin { compiled, disk_cache, memory };

// What a kernel's image is. A CUBIN for the exact arch is the rule; PTX is the forward-compatible
// fallback for an arch newer than the newest this NVRTC can emit a CUBIN for: the driver compiles
// it for the device when cuModuleLoadData loads it (the PTX is NUL-terminated text).
enum class Image { cubin, ptx };
// "cubin" or "ptx".
const char* image_name(Image image);

struct Kernel {
  std::string name;
  std::string arch;
  std::string key;                                  // 32 hex digits (XXH3-128)
  std::shared_ptr<const std::vector<uint8_t>> cubin;  // the image (see `image`), shared and immutable
  Image image = Image::cubin;  // cubin: an ELF image for `arch`; ptx: the fallback, PTX for `target`
  std::string target;          // what was compiled for: `arch`, or for PTX "compute_121"
  Origin origin = Origin::compiled;
  double milliseconds = 0;  // compile (or cache read) time of this kernel
  std::string log;          // NVRTC's log when compiled (warnings), else empty
};

struct Stats {
  uint64_t compiled = 0;         // NVRTC runs that succeeded
  uint64_t disk_hits = 0;
  uint64_t memory_hits = 0;      // served from this process (or joined a compile in flight)
  uint64_t failed = 0;           // NVRTC runs that failed
  uint64_t corrupt_entries = 0;  // invalid cache files, treated as misses and replaced
  uint64_t untrusted_entries = 0;  // cache files another user could have written: never read
  uint64_t store_failures = 0;   // entries that could not be written (the kernel still works)
  double compile_ms = 0;         // sum over NVRTC runs
  double cache_read_ms = 0;      // sum over disk hits (read and checked)
  double keys_ms = 0;            // options and keys of every request (the include scan), summed over compile() calls
};

struct Config {
  std::filesystem::path cache_dir;            // root of the cache; empty = no disk cache
  unsigned threads = 0;                       // parallel compiles; 0 = one per core, at most 16
  // Threads NVRTC may use inside one compile (--split-compile: a program's kernels are optimized
  // and assembled in parallel); 0 = one per core, at most 16; 1 = one. Not part of a kernel's
  // cache key: the split changes how long a compile takes, not what the kernels compute.
  unsigned split_threads = 0;
  std::vector<std::string> cuda_include_dirs; // -I for the toolkit headers (cuda_fp8.h, ...)

  // MOEQ_CACHE_DIR (default $XDG_CACHE_HOME/moeq, else ~/.cache/moeq; "off" disables the
  // disk cache), MOEQ_JIT_THREADS, MOEQ_JIT_SPLIT, and cuda_include_dirs() below. A cache
  // directory another user could write (jit_cache.hpp) is not used: the service logs why and
  // compiles without it.
  static Config from_env();
};

// True when this build has NVRTC (a CUDA toolkit was found at build time).
bool compiler_available();
// "13.0"; empty without NVRTC.
std::string compiler_version();
// Asks the kernel to read NVRTC's library files (the one this process uses, and the builtins
// library beside it) ahead, once per process, so that a first compile on a host whose page
// cache lacks them does not fault them in page by page. Advice only: returns at once, and
// failures change nothing. The JIT service calls it before its first NVRTC compile.
void prefetch_compiler();
// Toolkit include directories, in order: MOEQ_CUDA_INCLUDE (':'-separated), the toolkit found
// at build time, $CUDA_HOME/include, /usr/local/cuda/include; each with its cccl/ subfolder
// when present. Only directories that exist.
std::vector<std::string> cuda_include_dirs();
// The exact architecture name for a compute capability: 9.0 -> "sm_90a" (the arch-specific
// 'a' variant from Hopper on, so wgmma and TMA are allowed), 8.9 -> "sm_89".
std::string arch_for(int sm_major, int sm_minor);

class JitService {
 public:
  explicit JitService(Config config);
  ~JitService();
  JitService(const JitService&) = delete;
  JitService& operator=(const JitService&) = delete;

  // Compiles (or finds in the cache) every request, misses in parallel; results in request
  // order. Throws Error naming every request that failed, with NVRTC's log.
  std::vector<Kernel> compile(std::span<const Request> requests);
  Kernel compile(const Request& request);

  // The cache key of a request: every input that changes the CUBIN (see jit_key.hpp).
  std::string key(const Request& request);
  // The exact NVRTC options a request compiles with (the service's, then the caller's).
  std::vector<std::string> options(const Request& request) const;
  Stats stats() const;
  const Config& config() const;

  // The service behind the host table's jit_compile slot, configured from the environment
  // on first use and alive for the whole process.
  static JitService& process();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// The jit_compile slot of the host table (abi.h): compile through JitService::process(),
// then load the CUBIN into the device's primary context unless MOEQ_JIT_COMPILE_ONLY.
// Throws moeq::Error; the caller turns it into a status.
void serve_abi_request(moeq_jit_compile_args& args);

}  // namespace moeq::jit
