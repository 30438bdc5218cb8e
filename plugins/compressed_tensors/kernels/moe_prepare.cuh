// Before the GEMMs: the align step (pairs sorted by local expert, padded to tiles of bm rows)
// and the quantization of x to fp8 (per token, per group, per tensor or with a static scale),
// in one launch: block 0 aligns, the other blocks quantize rows. Also the partial maxima that
// the dynamic per-tensor mode reduces.
#pragma once
#include "moe_device.cuh"

namespace moeq_kernels {

constexpr int kAlignThreads = 1024;
constexpr int kMaxLocalExperts = 1024;
constexpr int kQuantRowsPerBlock = 8;  // one warp a row, 256 threads

// Block-wide exclusive scan of one value per thread (blockDim.x == kAlignThreads).
__device__ __forceinline__ int block_exclusive_scan(int v, int* warp_sums, int& total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int incl = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int n = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += n;
  }
  if (lane == 31) warp_sums[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    int w = warp_sums[lane];
    int wi = w;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int n = __shfl_up_sync(0xffffffffu, wi, o);
      if (lane >= o) wi += n;
    }
    warp_sums[lane] = wi - w;  // exclusive prefix of the warp totals
    if (lane == 31) warp_sums[32] = wi;
  }
  __syncthreads();
  total = warp_sums[32];
  return warp_sums[warp] + incl - v;
}

// Sorts the (token, slot) pairs routed to local experts by expert: every expert's rows start
// at a multiple of bm, padding slots hold -1, tile t belongs to tile_expert[t]. The order of
// rows inside one expert is not fixed (atomics), which changes no result: GEMM rows are
// independent and the combine sums in slot order.
//
// One block (align_blocks == 1) counts and scatters alone. Large batches split it: count_pairs
// (its own launch) fills expert_count, then each of the align_blocks blocks scans the counts
// itself and scatters its slice of pairs through the global expert_cursor.
__device__ void align_pairs(const MoeArgs& a) {
  __shared__ int count[kMaxLocalExperts];
  __shared__ int cursor[kMaxLocalExperts];
  __shared__ int warp_sums[33];
  const int E = a.num_experts, pairs = a.M * a.topk, bm = a.bm;
  const bool split = a.align_blocks > 1;
  if (!split) {
    for (int e = threadIdx.x; e < E; e += blockDim.x) count[e] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < pairs; i += blockDim.x) {
      const int le = a.topk_ids[i] - a.first_expert;
      if (le >= 0 && le < E) atomicAdd(&count[le], 1);
    }
  } else {
    for (int e = threadIdx.x; e < E; e += blockDim.x) count[e] = a.expert_count[e];
  }
  __syncthreads();
  int total_tiles = 0;
  // kMaxLocalExperts == kAlignThreads: thread e owns expert e.
  const int e = threadIdx.x;
  const int c = e < E ? count[e] : 0;
  const int tiles = (c + bm - 1) / bm;
  const int first_tile = block_exclusive_scan(tiles, warp_sums, total_tiles);
  if (e < E) {
    cursor[e] = first_tile * bm;
    if (blockIdx.x == 0) {
      for (int t = 0; t < tiles; ++t) a.tile_expert[first_tile + t] = e;
      for (int r = first_tile * bm + c; r < (first_tile + tiles) * bm; ++r) a.sorted_pair[r] = -1;
    }
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) *a.num_tiles = total_tiles;
  __syncthreads();
  const int per = (pairs + a.align_blocks - 1) / a.align_blocks;
  const int begin = blockIdx.x * per, end = min(pairs, begin + per);
  for (int i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const int le = a.topk_ids[i] - a.first_expert;
    if (le < 0 || le >= E) continue;
    a.sorted_pair[split ? cursor[le] + atomicAdd(&a.expert_cursor[le], 1) : atomicAdd(&cursor[le], 1)] = i;
  }
}

// Zeroes the counters of the multi-block align (one block; runs first).
__device__ void zero_counts(const MoeArgs& a) {
  for (int e = threadIdx.x; e < 2 * a.num_experts; e += blockDim.x) a.expert_count[e] = 0;
}

// Per-expert pair counts of a large batch: a block histogram of its slice, added globally.
__device__ void count_pairs(const MoeArgs& a) {
  __shared__ int hist[kMaxLocalExperts];
  const int E = a.num_experts, pairs = a.M * a.topk;
  for (int e = threadIdx.x; e < E; e += blockDim.x) hist[e] = 0;
  __syncthreads();
  const int per = (pairs + a.align_blocks - 1) / a.align_blocks;
  const int begin = blockIdx.x * per, end = min(pairs, begin + per);
  for (int i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const int le = a.topk_ids[i] - a.first_expert;
    if (le >= 0 && le < E) atomicAdd(&hist[le], 1);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x)
    if (hist[e] > 0) atomicAdd(&a.expert_count[e], hist[e]);
}

// Max |v| over `rows` rows of `cols` bf16 (or f32) values, strided; block b writes part[b].
template <bool kF32>
__device__ void amax_partial(const void* base, long long stride, int rows, int cols, float* part,
                             const int* row_valid_ids, int topk, int first_expert, int num_experts) {
  __shared__ float red[32];
  float m = 0.0f;
  const long long total = static_cast<long long>(rows) * cols;
  for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const int r = static_cast<int>(i / cols), c = static_cast<int>(i % cols);
    if (row_valid_ids != nullptr) {
      const int le = row_valid_ids[r] - first_expert;  // rows are pairs: skip non-local ones
      if (le < 0 || le >= num_experts) continue;
    }
    float v;
    if (kF32)
      v = static_cast<const float*>(base)[r * stride + c];
    else
      v = bf16_to_f32(static_cast<const u16*>(base)[r * stride + c]);
    m = fmaxf(m, fabsf(v));
  }
  m = warp_max(m);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = m;
  __syncthreads();
  if (threadIdx.x < 32) {
    m = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.0f;
    m = warp_max(m);
    if (threadIdx.x == 0) part[blockIdx.x] = m;
  }
}

__device__ __forceinline__ float reduce_parts(const float* part, int n) {
  float m = 0.0f;
  for (int i = threadIdx.x & 31; i < n; i += 32) m = fmaxf(m, part[i]);
  return warp_max(m);
}

#if __CUDA_ARCH__ >= 890
// Quantizes one row of `cols` values (bf16 when !kF32) into fp8 codes with the mode's scales,
// with the `wpr` warps [w0, w0 + wpr) of the block, each taking 256-column segments in turn.
// cols is a multiple of 8; kAGroup needs act_group a power of two in [8, 256] (a group never
// straddles a segment). Every thread of the block calls it (kAToken reduces through `red`).
template <int kMode, bool kF32>
__device__ void quantize_row(const void* src_row, int cols, u8* dst_row, float* scale_row, int act_group,
                             float fixed_scale, int w0, int wpr, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, wr = warp - w0;
  auto load8 = [&](int c, float* v) {
    if (kF32) {
      const float4 p = *reinterpret_cast<const float4*>(static_cast<const float*>(src_row) + c);
      const float4 q = *reinterpret_cast<const float4*>(static_cast<const float*>(src_row) + c + 4);
      v[0] = p.x; v[1] = p.y; v[2] = p.z; v[3] = p.w; v[4] = q.x; v[5] = q.y; v[6] = q.z; v[7] = q.w;
    } else {
      const uint4 p = *reinterpret_cast<const uint4*>(static_cast<const u16*>(src_row) + c);
      const u32 w[4] = {p.x, p.y, p.z, p.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        v[2 * i] = __uint_as_float(w[i] << 16);
        v[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
      }
    }
  };
  auto store8 = [&](int c, const float* v, float s) {
    uint2 q;
    q.x = static_cast<u32>(quant2(v[0], v[1], s)) | (static_cast<u32>(quant2(v[2], v[3], s)) << 16);
    q.y = static_cast<u32>(quant2(v[4], v[5], s)) | (static_cast<u32>(quant2(v[6], v[7], s)) << 16);
    *reinterpret_cast<uint2*>(dst_row + c) = q;
  };
  float v[8];
  const int first = (wr * 32 + lane) * 8, step = wpr * 256;
  if (kMode == kAToken) {
    float m = 0.0f;
    for (int c = first; c < cols; c += step) {
      load8(c, v);
#pragma unroll
      for (int i = 0; i < 8; ++i) m = fmaxf(m, fabsf(v[i]));
    }
    m = warp_max(m);
    if (lane == 0) red[warp] = m;
    __syncthreads();
    m = (lane < wpr && w0 + lane < 32) ? red[w0 + lane] : 0.0f;
    const float s = token_scale(warp_max(m));
    for (int c = first; c < cols; c += step) {
      load8(c, v);
      store8(c, v, s);
    }
    if (wr == 0 && lane == 0 && cols > 0) scale_row[0] = s;
  } else if (kMode == kAGroup) {
    const int lanes = act_group >> 3;  // lanes per group
    const int groups = (cols + act_group - 1) / act_group;
    for (int c0 = wr * 256; c0 < cols; c0 += step) {
      const int c = c0 + lane * 8;
      float m = 0.0f;
      if (c < cols) {
        load8(c, v);
#pragma unroll
        for (int i = 0; i < 8; ++i) m = fmaxf(m, fabsf(v[i]));
      }
      const float s = group_scale(group_max(m, lanes));
      if (c < cols) {
        store8(c, v, s);
        const int g = c / act_group;
        if ((lane & (lanes - 1)) == 0 && g < groups) scale_row[g] = s;
      }
    }
  } else {  // kAStatic, kATensor: one given scale
    for (int c = first; c < cols; c += step) {
      load8(c, v);
      store8(c, v, fixed_scale);
    }
  }
}
#endif

// Blocks [0, align_blocks) align; the others quantize x (kMode != kANone), 32 rows a block
// (one warp a row). blockDim.x == kAlignThreads.
template <int kMode>
__device__ void prepare(const MoeArgs& a) {
  // The persistent GEMMs' tile counters start from zero for this pass (sm90_moe_ws.cuh).
  if (blockIdx.x == 0 && threadIdx.x < 2) a.tile_counters[threadIdx.x] = 0;
  if (blockIdx.x < a.align_blocks) {
    align_pairs(a);
    return;
  }
#if __CUDA_ARCH__ >= 890
  if (kMode != kANone) {
    __shared__ float red[32];
    const int rpb = quant_rows_per_block(a.hidden, kAlignThreads), wpr = (kAlignThreads / 32) / rpb;
    const int sub = (threadIdx.x >> 5) / wpr;
    const int row = (blockIdx.x - a.align_blocks) * rpb + sub;
    float fixed = a.a1_static;
    if (kMode == kATensor) {
      fixed = tensor_scale(reduce_parts(a.amax_part, a.amax_parts));
      if (row == 0 && threadIdx.x == 0) a.a1s[0] = fixed;
    }
    // NOTE: rows past M still take part (kAToken's barrier), writing nothing.
    const bool live = sub < rpb && row < a.M;
    const int groups = kMode == kAGroup ? (a.hidden + a.act_group - 1) / a.act_group : 1;
    quantize_row<kMode, false>(static_cast<const u16*>(a.x) + (live ? row : 0) * a.x_stride, live ? a.hidden : 0,
                               a.a1q + static_cast<long long>(row) * a.hidden,
                               a.a1s + static_cast<long long>(row) * groups, a.act_group, fixed, sub * wpr, wpr, red);
  }
#endif
}

// Intermediate (f32 [M * topk, I]) -> a2q/a2s, quant_rows_per_block rows a block; rows of
// non-local pairs were never written and are skipped. The entry runs this without pdl_enter:
// the pair's expert id is a layer input (written before the sequence's first kernel started,
// which every kernel of the sequence follows), so it is read before the wait for GEMM1 and its
// latency passes while GEMM1 still runs.
#if __CUDA_ARCH__ >= 890
template <int kMode>
__device__ void quantize_h(const MoeArgs& a) {
  __shared__ float red[32];
  const int rpb = quant_rows_per_block(a.inter, blockDim.x), wpr = (blockDim.x >> 5) / rpb;
  const int sub = (threadIdx.x >> 5) / wpr;
  const int row = blockIdx.x * rpb + sub;
  griddep_launch_dependents();
  bool live = sub < rpb && row < a.M * a.topk;
  if (live) {
    const int le = a.topk_ids[row] - a.first_expert;
    live = le >= 0 && le < a.num_experts;
  }
  griddep_wait();
  float fixed = a.a2_static;
  if (kMode == kATensor) {
    fixed = tensor_scale(reduce_parts(a.amax_part, a.amax_parts));
    if (row == 0 && threadIdx.x == 0) a.a2s[0] = fixed;
  }
  const int groups = kMode == kAGroup ? (a.inter + a.act_group - 1) / a.act_group : 1;
  quantize_row<kMode, true>(static_cast<const float*>(a.h) + static_cast<long long>(live ? row : 0) * a.inter,
                            live ? a.inter : 0, a.a2q + static_cast<long long>(row) * a.inter,
                            a.a2s + static_cast<long long>(row) * groups, a.act_group, fixed, sub * wpr, wpr, red);
}
#endif

}  // namespace moeq_kernels
