// Device-side generation of seeded random data for the harness: weights, scales and
// activations are filled where they live, so that multi-GB expert sets cost no host work.
#pragma once
#include "driver.hpp"
#include "gpu/moe_runner.hpp"

#include <cstdint>

namespace moeq::gpu_harness {

enum class FillType : int { kBf16 = 0, kFp8 = 1, kInt8 = 2, kF32 = 3 };

class BenchKernels {
 public:
  static ct::gpu::KernelSetSource source();
  explicit BenchKernels(Driver& d);
  // dst[i] = encode(u_i * scale + offset), u_i uniform in [-1, 1) from (seed, i); int8 rounds
  // to nearest and clamps to +-127, fp8 saturates to +-448.
  void fill(DevPtr dst, int64_t count, FillType type, uint64_t seed, float scale, float offset, Stream s);

 private:
  Driver& driver_;
  Module module_ = nullptr;
};

}  // namespace moeq::gpu_harness
