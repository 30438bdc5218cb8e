// The CUDA side of the plugin's one method: the layer's parameters (in device memory, written
// by the host) run through the fused-MoE kernels of gpu/. Everything is prepared in
// process_after_loading: kernel sets compiled through the host's JIT (parallel, cached on
// disk), the workspace allocated, int8 codes repacked. apply then only checks its tensors and
// queues launches on the caller's stream: no allocation, compile, sync or log, so it can be
// captured in a CUDA graph.
#pragma once
#include "cpu_experts.hpp"
#include "gpu/moe_runner.hpp"

#include <moeq/abi.h>

#include <memory>
#include <string>
#include <vector>

namespace moeq::ct {

namespace cu = ::moeq::sdk::cuda;

// The kernels' terms for a scheme (throws naming what the kernels do not run).
gpu::GpuScheme gpu_scheme_of(const CpuExperts& layout);

// Device properties the plan needs, from the host's device_info and the driver.
gpu::DeviceLimits device_limits(int ordinal);

// Compiles (compile-only, into the host JIT's memory and disk cache) the kernel sets GpuExperts
// will ask for with this layout, so that a cold-cache load compiles while the layer's tensors
// are read. Never throws: GpuExperts reports what fails.
void prefetch_kernels(int ordinal, const CpuExperts& layout, int64_t top_k);

class GpuExperts {
 public:
  // `layout` holds the device pointers of the parameters and the grids, as CpuExperts does
  // for the host. Compiles, allocates the workspace, repacks int8 codes in place (so `layout`
  // must not be used by the CPU path afterwards; dequantize() undoes the repack on its copy).
  GpuExperts(int ordinal, const CpuExperts& layout, int64_t top_k, const std::string& layer_name);
  ~GpuExperts();
  GpuExperts(const GpuExperts&) = delete;
  GpuExperts& operator=(const GpuExperts&) = delete;

  // With a 1.2 host the workspace comes with each apply (apply_info says how much); with an
  // older one the method allocated its own in the constructor.
  void apply(const moeq_apply_args& a) const;
  void apply_info(moeq_apply_info_args& a) const;
  // Dequantized float weights of local expert le, read back from the device.
  void dequantize(int64_t le, float* w13, float* w2) const;
  // "cuda:0 sm_90a, fp8 weights channel / activations token, 3 kernel sets (M buckets ...)"
  std::string describe() const;
  // Tokens one pass of the kernels takes (apply splits larger batches).
  int64_t max_tokens() const { return plan_->max_tokens(); }

 private:
  int ordinal_;
  CpuExperts layout_;
  std::string arch_;
  std::unique_ptr<gpu::MoePlan> plan_;
  std::unique_ptr<gpu::MoeRunner> runner_;
  gpu::LayerWeights weights_;
  cu::DevicePtr workspace_ = 0;  // its own (a host before ABI 1.2), else 0
  // The layout of the host's workspace, for the size last lent (applies on one method are
  // serialized by the host, so apply may update it).
  mutable std::size_t fitted_bytes_ = ~std::size_t{0};
  mutable gpu::MoePlan::Workspace fitted_{};
  int cache_hits_ = 0;
  int ptx_sets_ = 0;  // kernel sets the host gave as PTX (its NVRTC predates the device)
};

}  // namespace moeq::ct
