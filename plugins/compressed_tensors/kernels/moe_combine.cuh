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

// Writes out[m, c .. c + 8) from f32 sums (bf16 or f32 out).
__device__ __forceinline__ void store_out8(const MoeArgs& a, int m, int c, const float (&s)[8]) {
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
  store_out8(a, m, c, s);
}

__device__ void combine(const MoeArgs& a) {
  const int q = a.hidden >> 3;  // H is a multiple of 16
  const long long total = static_cast<long long>(a.M) * q;
  for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * blockDim.x)
    combine_cols(a, static_cast<int>(i / q), static_cast<int>(i % q) * 8);
}

// Few tokens (decode): combine() would give each thread one token's eight columns and all of its
// topk x k_splits rows, a few in flight at a time, on a handful of blocks, so that the rows'
// latencies follow one another. Here eight threads share a column chunk: a block takes 32 chunks
// (256 columns) of one token, thread group g sums its own contiguous share of the (slot, split)
// rows, in order, all of them in flight when there are at most kWideRows, and the groups'
// partials are added in group order. The order is fixed (slot-major, split-minor, as in
// combine(), split into eight runs), so results stay bit-identical run to run.
//
// The entry runs this without pdl_enter: it lets the next kernel be scheduled, reads the token's
// expert ids (a layer input, written before the sequence's first kernel started, which every
// kernel of the sequence follows) into shared memory, and only then waits for GEMM2, so that the
// ids' memory latency passes while GEMM2 still runs instead of after it.
constexpr int kWideGroups = 8, kWideChunks = 32, kWideRows = 4;
__device__ void combine_wide(const MoeArgs& a) {
  __shared__ float part[kWideGroups][kWideChunks][9];  // 9: no bank conflicts between chunks
  __shared__ int s_le[32];                             // the token's slots' local experts (top_k <= 32)
  const int q = a.hidden >> 3;
  const int blocks_per_token = (q + kWideChunks - 1) / kWideChunks;
  const int m = blockIdx.x / blocks_per_token;
  griddep_launch_dependents();
  if (m < a.M && static_cast<int>(threadIdx.x) < a.topk)
    s_le[threadIdx.x] = a.topk_ids[m * a.topk + threadIdx.x] - a.first_expert;
  griddep_wait();
  __syncthreads();
  const int cc = threadIdx.x % kWideChunks, g = threadIdx.x / kWideChunks;
  const int chunk = (blockIdx.x % blocks_per_token) * kWideChunks + cc;
  const int c = chunk * 8;
  const int H = a.hidden;
  const long long slab = static_cast<long long>(a.M) * a.topk * H;
  const int rows = a.topk * a.k_splits;
  const int r0 = g * rows / kWideGroups, r1 = (g + 1) * rows / kWideGroups;
  float s[8];
#pragma unroll
  for (int x = 0; x < 8; ++x) s[x] = 0.0f;
  if (m < a.M && chunk < q) {
    for (int r = r0; r < r1; r += kWideRows) {
      float y[kWideRows][8];
      bool live[kWideRows];
#pragma unroll
      for (int u = 0; u < kWideRows; ++u) {
        const int row = r + u, j = row / a.k_splits, z = row % a.k_splits;
        const int le = row < r1 ? s_le[j] : -1;
        live[u] = le >= 0 && le < a.num_experts;
        if (live[u]) {
          load_y8(a, z * slab + static_cast<long long>(m * a.topk + j) * H + c, y[u]);
        } else {
#pragma unroll
          for (int x = 0; x < 8; ++x) y[u][x] = 0.0f;
        }
      }
#pragma unroll
      for (int u = 0; u < kWideRows; ++u)
        if (live[u])
#pragma unroll
          for (int x = 0; x < 8; ++x) s[x] += y[u][x];
    }
  }
#pragma unroll
  for (int x = 0; x < 8; ++x) part[g][cc][x] = s[x];
  __syncthreads();
  if (g != 0 || m >= a.M || chunk >= q) return;
#pragma unroll
  for (int x = 0; x < 8; ++x) s[x] = part[0][cc][x];
  for (int h = 1; h < kWideGroups; ++h)
#pragma unroll
    for (int x = 0; x < 8; ++x) s[x] += part[h][cc][x];
  store_out8(a, m, c, s);
}

}  // namespace moeq_kernels
