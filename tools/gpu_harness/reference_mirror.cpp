#include "reference_mirror.hpp"

#include <moeq/dtype.hpp>
#include <moeq/reference.hpp>

#include <algorithm>
#include <atomic>
#include <map>
#include <thread>

namespace moeq::gpu_harness {
namespace {

namespace mk = ::moeq_kernels;

ref::ActQuantSpec spec_of(const ct::gpu::GpuScheme& s, float static_scale) {
  ref::ActQuantSpec q;
  switch (s.amode) {
    case mk::kAToken: q.kind = ref::ActQuant::kFp8PerToken; break;
    case mk::kAGroup: q.kind = ref::ActQuant::kFp8PerGroup; break;
    case mk::kATensor: q.kind = ref::ActQuant::kFp8PerTensorDynamic; break;
    case mk::kAStatic: q.kind = ref::ActQuant::kFp8PerTensorStatic; break;
    default: q.kind = ref::ActQuant::kNone; break;
  }
  q.group_size = s.act_group;
  q.static_scale = static_scale;
  return q;
}

template <class F>
void parallel(int64_t n, F&& f) {
  const int64_t threads = std::clamp<int64_t>(std::thread::hardware_concurrency(), 1, 32);
  std::atomic<int64_t> next{0};
  std::vector<std::thread> pool;
  for (int64_t t = 0; t < std::min(threads, n); ++t)
    pool.emplace_back([&] {
      for (int64_t i = next++; i < n; i = next++) f(i);
    });
  for (auto& th : pool) th.join();
}

double dot(const float* a, const float* b, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

}  // namespace

MirrorResult mirror_forward(const MirrorInput& in) {
  if (in.chunk > 0 && in.m > in.chunk) {
    const int64_t H = in.dims.hidden, k = in.dims.top_k, I = in.dims.inter;
    MirrorResult all;
    for (int64_t m0 = 0; m0 < in.m; m0 += in.chunk) {
      MirrorInput part = in;
      part.m = std::min(in.chunk, in.m - m0);
      part.chunk = 0;
      part.x = in.x.subspan(static_cast<size_t>(m0 * H), static_cast<size_t>(part.m * H));
      part.ids = in.ids.subspan(static_cast<size_t>(m0 * k), static_cast<size_t>(part.m * k));
      part.weights = in.weights.subspan(static_cast<size_t>(m0 * k), static_cast<size_t>(part.m * k));
      if (in.gemm2_input) part.gemm2_input = [&, m0](int64_t p, int64_t i) { return in.gemm2_input(p + m0 * k, i); };
      const MirrorResult r = mirror_forward(part);
      all.out.insert(all.out.end(), r.out.begin(), r.out.end());
      all.out_bf16_rows.insert(all.out_bf16_rows.end(), r.out_bf16_rows.begin(), r.out_bf16_rows.end());
      for (int64_t p : r.pairs) all.pairs.push_back(p + m0 * k);
      all.h.insert(all.h.end(), r.h.begin(), r.h.end());
    }
    (void)I;
    return all;
  }
  const auto& d = in.dims;
  const int64_t M = in.m, H = d.hidden, I = d.inter, k = d.top_k;
  const bool fp8 = in.scheme.kind == mk::kKindFp8;

  std::vector<float> a1(in.x.begin(), in.x.end());
  if (fp8) ref::fake_quant(in.x, M, H, spec_of(in.scheme, in.a1_static), a1);

  struct Pair {
    int64_t token, slot, local;
  };
  std::vector<Pair> pairs;
  std::map<int64_t, std::shared_ptr<const ExpertFloat>> experts;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = 0; j < k; ++j) {
      const int64_t le = in.ids[m * k + j] - d.first_expert;
      if (le < 0 || le >= d.num_experts) continue;
      pairs.push_back({m, j, le});
      experts.try_emplace(le);
    }
  {
    std::vector<int64_t> ids;
    for (auto& [le, _] : experts) ids.push_back(le);
    // Loading may download from the device: one expert at a time, from this thread.
    for (int64_t le : ids) experts[le] = in.expert(le);
  }
  const int64_t R = static_cast<int64_t>(pairs.size());
  MirrorResult result;
  for (const auto& p : pairs) result.pairs.push_back(p.token * k + p.slot);
  std::vector<float> h(static_cast<size_t>(R * I));
  result.h.resize(h.size());
  parallel(R, [&](int64_t r) {
    const ExpertFloat& w = *experts.at(pairs[r].local);
    const float* xa = a1.data() + pairs[r].token * H;
    for (int64_t i = 0; i < I; ++i) {
      const float g = static_cast<float>(dot(xa, w.w13.data() + i * H, H));
      const float u = static_cast<float>(dot(xa, w.w13.data() + (I + i) * H, H));
      float v = ref::silu(g) * u;
      result.h[r * I + i] = v;
      if (!fp8) v = bf16_to_float(float_to_bf16(v));
      h[r * I + i] = v;
    }
  });
  if (fp8) ref::fake_quant(h, R, I, spec_of(in.scheme, in.a2_static), h);
  if (in.gemm2_input)
    for (int64_t r = 0; r < R; ++r)
      for (int64_t i = 0; i < I; ++i) h[r * I + i] = in.gemm2_input(result.pairs[r], i);
  std::vector<float> y(static_cast<size_t>(R * H));
  parallel(R, [&](int64_t r) {
    const ExpertFloat& w = *experts.at(pairs[r].local);
    const float tw = in.weights[pairs[r].token * k + pairs[r].slot];
    for (int64_t n = 0; n < H; ++n) y[r * H + n] = static_cast<float>(dot(h.data() + r * I, w.w2.data() + n * I, I)) * tw;
  });
  // Combine in slot order, as the kernel does.
  std::vector<float>& out = result.out;
  std::vector<float>& out16 = result.out_bf16_rows;
  const bool round_rows = !in.bf16_rows || in.bf16_rows(M);
  out.assign(static_cast<size_t>(M * H), 0.0f);
  out16.assign(static_cast<size_t>(M * H), 0.0f);
  for (int64_t r = 0; r < R; ++r) {
    float* o = out.data() + pairs[r].token * H;
    float* o16 = out16.data() + pairs[r].token * H;
    const float* yr = y.data() + r * H;
    for (int64_t n = 0; n < H; ++n) {
      o[n] += yr[n];
      o16[n] += round_rows ? bf16_to_float(float_to_bf16(yr[n])) : yr[n];
    }
  }
  return result;
}

}  // namespace moeq::gpu_harness
