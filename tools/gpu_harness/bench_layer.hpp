// Named shapes and schemes of `moeq bench`, and one MoE layer's random parameters on the
// device in the plugin's canonical layout (moe_runner.hpp), with a host-side dequantizer of
// single experts for the CPU references.
#pragma once
#include "bench_kernels.hpp"
#include "driver.hpp"
#include "gpu/moe_runner.hpp"
#include "named_shapes.hpp"
#include "reference_mirror.hpp"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace moeq::gpu_harness {

std::optional<ShapeSpec> shape_by_name(const std::string& name);

struct SchemeSpec {
  std::string name;  // bf16, fp8-channel, fp8-block, fp8-tensor, fp8-tensor-static, w8a16
  ct::gpu::GpuScheme scheme;
  int block_n = 128, block_k = 128;  // fp8-block weight blocks
};
const std::vector<SchemeSpec>& named_schemes();
std::optional<SchemeSpec> scheme_by_name(const std::string& name);
// The scheme with another weight block (e.g. a TP-refined 64x64 grid); scale period follows.
SchemeSpec with_blocks(SchemeSpec s, int block_n, int block_k);

class DeviceLayer {
 public:
  // Global experts [0, global_experts); this rank holds [first, first + dims.num_experts).
  DeviceLayer(BenchKernels& fill, Driver& d, const SchemeSpec& spec, const ct::gpu::LayerDims& dims, uint64_t seed,
              Stream s);
  const ct::gpu::LayerWeights& weights() const { return weights_; }
  const SchemeSpec& spec() const { return spec_; }
  const ct::gpu::LayerDims& dims() const { return dims_; }
  // Bytes one expert's codes and scales occupy (what a kernel must read per expert hit).
  double expert_bytes() const { return expert_bytes_; }
  // Permutes W8A16 codes as the kernels read them (after the CPU side no longer needs the
  // original order; expert() undoes it).
  void repack(sdk::cuda::Module utility, Stream s);
  // Dequantized float weights of local expert le, downloaded from the device.
  ExpertFloat expert(int64_t le) const;

 private:
  Driver& driver_;
  SchemeSpec spec_;
  ct::gpu::LayerDims dims_;
  DeviceBuffer w13_, w2_, s13_, s2_;
  ct::gpu::LayerWeights weights_;
  double expert_bytes_ = 0;
  bool repacked_ = false;
};

}  // namespace moeq::gpu_harness
