// `moeq bench jit`: per scheme, the kernel sets the compressed_tensors GPU path compiles for
// one model (a MoePlan per shape, every M bucket, plus the router/repack set), compiled
// once into a fresh cache directory (cold: NVRTC, misses in parallel) and again by a new JIT
// service over the same directory (warm: read from disk; a warm pass that runs NVRTC or is
// served from memory fails). With a CUDA device the CUBINs are also loaded (cuModuleLoadData)
// and that time is reported; without one the compile targets --arch (default sm_90a).
#pragma once
#include <cstdint>
#include <iosfwd>
#include <optional>
#include <string>
#include <vector>

namespace moeq::gpu_harness {

struct JitBenchOptions {
  std::vector<std::string> schemes;       // empty = bf16, fp8-channel, fp8-block, fp8-tensor, w8a16
  std::string shape = "Qwen3-30B-A3B";
  std::string arch;                       // empty = device 0's, else sm_90a
  int64_t max_tokens = 8192;              // largest M bucket planned
  bool json = false;
  bool keep = false;                      // keep the temporary cache directories
};

// Returns 0 when at least one scheme was measured and every warm pass came from disk only; 1
// otherwise (a scheme the arch cannot run is skipped, saying so). Throws moeq::Error on a
// compile failure (with NVRTC's log), an unknown scheme or shape, or an arch arch_refusal
// refuses. The temporary cache directories are removed on every exit unless `keep`.
int run_jit_bench(const JitBenchOptions& options, std::ostream& out);

// 10 x major + minor of the compute capability `arch` names: "sm_90a" -> 90, "sm_100f" -> 100;
// nullopt unless it reads sm_, two or three digits, then at most an 'a' or an 'f'.
std::optional<int> arch_capability(const std::string& arch);
// Why `arch` cannot be the target of `bench jit --arch` (empty when it can): not of that form,
// or older than sm_80, the oldest arch the kernels support.
std::string arch_refusal(const std::string& arch);

}  // namespace moeq::gpu_harness
