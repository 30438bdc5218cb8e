// Router: logits [M, E] f32 -> topk_ids [M, k] int32, topk_weights [M, k] f32, in one kernel
// (docs/ROUTING.md): softmax or sigmoid scores, optional correction bias (selects
// ids, weights stay unbiased), optional grouped top-k (group score = sum of the top-2 biased
// scores with a bias, else the group max; the topk_group best groups are kept), optional
// renormalization and routed scaling factor. One warp a token; ties go to the lower index,
// as in the core's reference.
#pragma once
#include "moe_device.cuh"

namespace moeq_kernels {


// (value, index) with the larger value, the lower index on ties.
__device__ __forceinline__ void better(float& v, int& i, float v2, int i2) {
  if (v2 > v || (v2 == v && i2 < i)) {
    v = v2;
    i = i2;
  }
}
__device__ __forceinline__ void warp_argmax(float& v, int& i) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float v2 = __shfl_xor_sync(0xffffffffu, v, o);
    const int i2 = __shfl_xor_sync(0xffffffffu, i, o);
    better(v, i, v2, i2);
  }
}

__device__ void route(const RouteArgs& r) {
  __shared__ float s_p[kRouteWarps][kRouteMaxExperts];
  __shared__ float s_sel[kRouteWarps][kRouteMaxExperts];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int m = blockIdx.x * kRouteWarps + warp;
  if (m >= r.M) return;
  float* p = s_p[warp];
  float* sel = s_sel[warp];
  const float* row = r.logits + static_cast<long long>(m) * r.E;
  const float ninf = -__int_as_float(0x7f800000);
  if (!r.sigmoid) {
    float mx = ninf;
    for (int e = lane; e < r.E; e += 32) mx = fmaxf(mx, row[e]);
    mx = warp_max(mx);
    float sum = 0.0f;
    for (int e = lane; e < r.E; e += 32) {
      const float v = expf(row[e] - mx);
      p[e] = v;
      sum += v;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    for (int e = lane; e < r.E; e += 32) p[e] = p[e] / sum;
  } else {
    for (int e = lane; e < r.E; e += 32) {
      const float x = row[e];
      float v;
      if (x >= 0.0f) {
        v = 1.0f / (1.0f + expf(-x));
      } else {
        const float t = expf(x);
        v = t / (1.0f + t);
      }
      p[e] = v;
    }
  }
  for (int e = lane; e < r.E; e += 32) sel[e] = p[e] + (r.bias ? r.bias[e] : 0.0f);
  __syncwarp();

  if (r.n_group > 0) {
    const int size = r.E / r.n_group;
    float gs = ninf;
    if (lane < r.n_group) {
      const float* grp = sel + lane * size;
      if (r.bias) {
        float b1 = ninf, b2 = ninf;  // the two largest
        for (int i = 0; i < size; ++i) {
          const float v = grp[i];
          if (v > b1) {
            b2 = b1;
            b1 = v;
          } else if (v > b2) {
            b2 = v;
          }
        }
        gs = size >= 2 ? b1 + b2 : b1;
      } else {
        for (int i = 0; i < size; ++i) gs = fmaxf(gs, grp[i]);
      }
    }
    unsigned keep = 0;
    float v = lane < r.n_group ? gs : ninf;
    for (int k = 0; k < r.topk_group; ++k) {
      float bv = v;
      int bi = lane < r.n_group ? lane : 1 << 30;
      warp_argmax(bv, bi);
      keep |= 1u << bi;
      if (lane == bi) v = ninf;
    }
    __syncwarp();
    for (int e = lane; e < r.E; e += 32)
      if (!((keep >> (e / size)) & 1u)) sel[e] = ninf;
    __syncwarp();
  }

  float sum = 0.0f;
  float w_mine = 0.0f;
  int id_mine = 0;
  for (int k = 0; k < r.topk; ++k) {
    float bv = ninf;
    int bi = 1 << 30;
    for (int e = lane; e < r.E; e += 32) better(bv, bi, sel[e], e);
    warp_argmax(bv, bi);
    const float w = p[bi];
    sum += w;
    if (lane == k) {
      w_mine = w;
      id_mine = bi;
    }
    __syncwarp();
    if (lane == 0) sel[bi] = ninf;
    __syncwarp();
  }
  if (lane < r.topk) {
    float w = w_mine;
    if (r.renormalize && sum > 0.0f) w = w / sum;
    w *= r.scale;
    r.ids[static_cast<long long>(m) * r.topk + lane] = id_mine;
    r.weights[static_cast<long long>(m) * r.topk + lane] = w;
  }
}

}  // namespace moeq_kernels
