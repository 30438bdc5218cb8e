#include "kernel_sources.hpp"

#include <moeq/sdk/kernels.hpp>

namespace moeq::ct::gpu {

std::vector<EmbeddedHeader> jit_headers() {
  std::vector<EmbeddedHeader> out(kernel_headers().begin(), kernel_headers().end());
  for (const moeq::sdk::EmbeddedKernel& k : moeq::sdk::device_headers()) out.push_back({k.name, k.source});
  return out;
}

}  // namespace moeq::ct::gpu
