// CPU fused-MoE for FP8 W8A8 channel weights with dynamic per-token activations: the
// reference for the GPU path. Quantizes activations exactly as the kernel will.
#pragma once
#include <moeq/abi.h>

#include <cstdint>

namespace moeq::ct {

struct Fp8ChannelExperts {
  const uint8_t* w13 = nullptr;  // [E, 2I, H] e4m3fn codes
  const float* s13 = nullptr;    // [E, 2I]
  const uint8_t* w2 = nullptr;   // [E, H, I]
  const float* s2 = nullptr;     // [E, H]
  int64_t num_local = 0;
  int64_t first_local = 0;
  int64_t hidden = 0;
  int64_t intermediate = 0;      // I of this TP shard
};

// Per-token dynamic scale of vllm-moe-semantics §7.3: max(amax / 448, 1 / (448 * 512)).
float per_token_scale(const float* row, int64_t n);

// out[M, H] (F32/BF16/F16) = sum_j w[m,j] * expert(x[m]). Experts not local add nothing.
void cpu_fp8_channel_apply(const Fp8ChannelExperts& e, const DLTensor& x, const DLTensor& topk_ids,
                           const DLTensor& topk_weights, const DLTensor& out);

}  // namespace moeq::ct
