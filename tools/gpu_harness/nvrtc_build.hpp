// Compiles a kernel set of the compressed_tensors plugin with NVRTC to a CUBIN, handing the
// plugin's embedded headers by name and content, as the host's jit_compile does. The harness
// compiles directly so that it needs neither the plugin loader nor a disk cache.
#pragma once
#include "gpu/moe_runner.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace moeq::gpu_harness {

struct Cubin {
  std::vector<uint8_t> image;
  std::string log;
  double milliseconds = 0;
};

// Throws moeq::Error carrying NVRTC's log when the source does not compile. `arch` like "sm_90a".
Cubin nvrtc_build(const ct::gpu::KernelSetSource& set, const std::string& arch,
                  const std::vector<std::string>& extra_options = {});

// Several sets on `threads` threads; results in order.
std::vector<Cubin> nvrtc_build_all(const std::vector<ct::gpu::KernelSetSource>& sets, const std::string& arch,
                                   unsigned threads);

}  // namespace moeq::gpu_harness
