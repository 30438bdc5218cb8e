// The device headers of plugins/compressed_tensors/kernels/, embedded in the plugin at build
// time (embed_kernels.cmake), handed to the JIT by name and content.
#pragma once
#include <span>
#include <string_view>
#include <vector>

namespace moeq::ct::gpu {

struct EmbeddedHeader {
  const char* name;  // as the sources include it, e.g. "moe_gemm.cuh"
  const char* text;
};

std::span<const EmbeddedHeader> kernel_headers();

// What the JIT is handed: kernel_headers(), then the SDK's device headers the kernels include
// ("moeq/sdk/device/mma.cuh", ...).
std::vector<EmbeddedHeader> jit_headers();

}  // namespace moeq::ct::gpu
