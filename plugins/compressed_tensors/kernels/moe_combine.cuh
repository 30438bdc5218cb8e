// The top-k combine: out[m] = sum over slots j (in slot order) of y2[m * topk + j], for the
// slots whose expert is local, each slot's K splits of GEMM2 added in split order, in f32 (y2's
// rows are bf16 where y2_bf16). A fixed order, so results are bit-identical run to run.
//
// combine_cols sums eight columns of one token: 16-byte loads of bf16 rows (two of f32 ones),
// four rows in flight before any is added (four slots, or four K splits of one slot), so that
// four memory latencies overlap instead of following each other; the additions still run in
// slot order, and a slot's splits in split order.
#pragma once
#include "moe_device.cuh"

namespace moeq_kernels {

// Eight values of y2 at element offset o (a multiple of 8): bf16 or f32 rows.
__device__ __forceinline__ void load_y8(const MoeArgs& a, long long o, float (&v)[8]) {
  auto ld = [](const void* p) { return *reinterpret_cast<const uint4*>(p); };
  if (y2_bf16(a)) {
    const uint4 q = ld(reinterpret_cast<const u16*>(a.y2) + o);
    const u32 w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      v[2 * i] = __uint_as_float(w[i] << 16);
      v[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
  } else {
    const uint4 p = ld(a.y2 + o), q = ld(a.y2 + o + 4);
    const u32 w[8] = {p.x, p.y, p.z, p.w, q.x, q.y, q.z, q.w};
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = __uint_as_float(w[i]);
  }
}

// out[m, c .. c + 8) (c a multiple of 8, c + 8 <= H).
__device__ __forceinline__ void combine_cols(const MoeArgs& a, int m, int c) {
  constexpr int kBatch = 4;  // rows in flight together
  const int H = a.hidden;
  const long long slab = static_cast<long long>(a.M) * a.topk * H;
  float s[8];
#pragma unroll
  for (int x = 0; x < 8; ++x) s[x] = 0.0f;
  // Four slots' rows (K not split), or four K splits of one slot, a batch.
  const int per_slot = (a.k_splits + kBatch - 1) / kBatch;
  const int batches = a.k_splits == 1 ? (a.topk + kBatch - 1) / kBatch : a.topk * per_slot;
  for (int b = 0; b < batches; ++b) {
    float y[kBatch][8];
    bool live[kBatch];
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      // Batch b, member u -> (slot j, split z).
      const int j = a.k_splits == 1 ? b * kBatch + u : b / per_slot;
      const int z = a.k_splits == 1 ? 0 : (b % per_slot) * kBatch + u;
      const int le = j < a.topk && z < a.k_splits ? a.topk_ids[m * a.topk + j] - a.first_expert : -1;
      live[u] = le >= 0 && le < a.num_experts;
      if (live[u]) {
        load_y8(a, z * slab + static_cast<long long>(m * a.topk + j) * H + c, y[u]);
      } else {
#pragma unroll
        for (int x = 0; x < 8; ++x) y[u][x] = 0.0f;
      }
    }
#pragma unroll
    for (int u = 0; u < kBatch; ++u)
      if (live[u])
#pragma unroll
        for (int x = 0; x < 8; ++x) s[x] += y[u][x];
  }
  const long long o = static_cast<long long>(m) * a.out_stride + c;
  if (a.out_dtype == kOutF32) {
    *reinterpret_cast<float4*>(static_cast<float*>(a.out) + o) = make_float4(s[0], s[1], s[2], s[3]);
    *reinterpret_cast<float4*>(static_cast<float*>(a.out) + o + 4) = make_float4(s[4], s[5], s[6], s[7]);
  } else {
    uint4 v;
    v.x = f32x2_to_bf16x2(s[0], s[1]);
    v.y = f32x2_to_bf16x2(s[2], s[3]);
    v.z = f32x2_to_bf16x2(s[4], s[5]);
    v.w = f32x2_to_bf16x2(s[6], s[7]);
    *reinterpret_cast<uint4*>(static_cast<u16*>(a.out) + o) = v;
  }
}

__device__ void combine(const MoeArgs& a) {
  const int q = a.hidden >> 3;  // H is a multiple of 16
  const long long total = static_cast<long long>(a.M) * q;
  for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * blockDim.x)
    combine_cols(a, static_cast<int>(i / q), static_cast<int>(i % q) * 8);
}

}  // namespace moeq_kernels
