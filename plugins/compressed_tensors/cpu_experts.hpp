// CPU fused MoE for every scheme of the plugin: the reference for its GPU path. It quantizes
// activations exactly as the kernel will (docs/MOE_SEMANTICS.md §5) and applies
// scales per K-tile the way the kernel does (§2.6, §7.2): partial = sum over the tile of
// activation code x weight code, acc += partial * activation scale * weight scale.
#pragma once
#include "scheme.hpp"

#include <moeq/abi.h>
#include <moeq/dtype.hpp>

#include <cstdint>

namespace moeq::ct {

// The local experts as the method's parameters hold them.
struct CpuExperts {
  DType weight_dtype = DType::F8_E4M3;  // F8_E4M3, I8, BF16, F16 or F32 codes
  const void* w13 = nullptr;            // [E, 2I, H]: gate rows, then up rows
  const void* w2 = nullptr;             // [E, H, I]
  Granularity granularity = Granularity::kNone;
  const float* s13 = nullptr;  // tensor [E, 2]; channel [E, 2I]; block [E, 2 * r13_count, c13_count]
  const float* s2 = nullptr;   // tensor [E];    channel [E, H];  block [E, r2_count, c2_count]
  int64_t r13_block = 0, r13_count = 0, c13_block = 0, c13_count = 0;  // w1/w3 grid (per half)
  int64_t r2_block = 0, r2_count = 0, c2_block = 0, c2_count = 0;      // w2 grid
  ActMode act = ActMode::kNone;
  int64_t act_group = 0;
  float a1_static = 1.0f;  // kStaticTensor
  float a2_static = 1.0f;
  int64_t num_local = 0;
  int64_t first_local = 0;
  int64_t hidden = 0;        // H
  int64_t intermediate = 0;  // I of this TP shard

  // Multiplier of weight element (n, k) of local expert le.
  float w13_scale(int64_t le, int64_t n, int64_t k) const;
  float w2_scale(int64_t le, int64_t n, int64_t k) const;
};

// out[M, H] (F32/BF16/F16) = sum_j w[m,j] * expert_{ids[m,j]}(x[m]); experts that are not
// local add nothing. x is F32/BF16/F16, ids int32, weights float32, all host memory.
void cpu_apply(const CpuExperts& e, const DLTensor& x, const DLTensor& topk_ids, const DLTensor& topk_weights,
               const DLTensor& out);

// Dequantized float weights of local expert le: w13 [2I, H], w2 [H, I].
void cpu_dequantize(const CpuExperts& e, int64_t le, float* w13, float* w2);

}  // namespace moeq::ct
