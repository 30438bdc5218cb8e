// CPU reference for the GPU fused MoE that performs the same roundings the kernels do:
// activations quantized with the core's primitives (moeq::ref::fake_quant, §7.3), float
// intermediate, rounded to bf16 where the bf16/W8A16 kernels store it in bf16, router weight
// and slot-order combine in float. Accumulation in double. Only the experts a batch routes to
// are needed, so real shapes can be checked without dequantizing every expert.
#pragma once
#include "gpu/moe_runner.hpp"

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

namespace moeq::gpu_harness {

struct ExpertFloat {
  std::vector<float> w13;  // [2I, H]
  std::vector<float> w2;   // [H, I]
};

struct MirrorInput {
  ct::gpu::GpuScheme scheme;
  ct::gpu::LayerDims dims;
  int64_t m = 0;
  std::span<const float> x;            // [M, H] (the bf16 values)
  std::span<const int32_t> ids;        // [M, k] global ids
  std::span<const float> weights;      // [M, k]
  float a1_static = 1.0f, a2_static = 1.0f;
  // The kernels run M in chunks of this many tokens; dynamic per-tensor scales are per chunk
  // (as vLLM's chunked path). 0 = one chunk.
  int64_t chunk = 0;
  // Dequantized weights of local expert `le` (called once per expert a chunk uses; shared, so
  // that a caller may keep them for its next forward instead of dequantizing them again).
  std::function<std::shared_ptr<const ExpertFloat>(int64_t le)> expert;
  // When set, GEMM2 reads these values (the GPU's own requantized intermediate of pair
  // token * k + slot, column i) instead of the mirror's: GEMM2 checked on identical inputs.
  std::function<float(int64_t pair, int64_t i)> gemm2_input;
  // Whether a chunk of m tokens keeps its pairs' rows in bf16 before the combine when the output
  // is bf16 (the kernels do unless GEMM2 splits K: y2_bf16); unset: always.
  std::function<bool(int64_t m)> bf16_rows;
};

struct MirrorResult {
  std::vector<float> out;      // [M, H]
  // [M, H]: the combine as the kernels run it for a bf16 output: the pairs' rows each rounded to
  // bf16 first where bf16_rows says so (y2 in bf16)
  std::vector<float> out_bf16_rows;
  std::vector<int64_t> pairs;  // pair index (token * k + slot) of each local row, in order
  std::vector<float> h;        // [pairs, I]: silu(gate) * up before the a2 quantization
};

MirrorResult mirror_forward(const MirrorInput& in);

}  // namespace moeq::gpu_harness
