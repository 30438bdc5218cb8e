// Compiles a kernel set of the compressed_tensors plugin to a CUBIN through the core JIT
// service (NVRTC, the MOEQ_CACHE_DIR disk cache, parallel misses), handing the plugin's
// embedded headers by name and content as the plugin's jit_compile call does.
#pragma once
#include "gpu/moe_runner.hpp"

#include <moeq/jit.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace moeq::gpu_harness {

struct Cubin {
  std::vector<uint8_t> image;
  std::string log;
  double milliseconds = 0;
};

// The plugin's kernel set as a request to the core JIT service (the same inputs the plugin's
// jit_compile call carries): embedded headers by name and content, the exact arch.
jit::Request jit_request(const ct::gpu::KernelSetSource& set, const std::string& arch,
                         const std::vector<std::string>& extra_options = {});

// Throws moeq::Error carrying NVRTC's log when the source does not compile. `arch` like "sm_90a".
// milliseconds is 0 when the CUBIN came from a cache.
Cubin nvrtc_build(const ct::gpu::KernelSetSource& set, const std::string& arch,
                  const std::vector<std::string>& extra_options = {});

// Several sets, the misses compiled in parallel (MOEQ_JIT_THREADS); results in order. The
// thread count argument is kept for callers; the service decides.
std::vector<Cubin> nvrtc_build_all(const std::vector<ct::gpu::KernelSetSource>& sets, const std::string& arch,
                                   unsigned threads, const std::vector<std::string>& extra_options = {});

}  // namespace moeq::gpu_harness
