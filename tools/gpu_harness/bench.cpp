#include "bench.hpp"

#include "gpu/tune_table.hpp"

#include "bench_kernels.hpp"
#include "bench_layer.hpp"
#include "driver.hpp"
#include "floors.hpp"
#include "jit_bench.hpp"
#include "nvrtc_build.hpp"
#include "reference_mirror.hpp"

#include <moeq/dtype.hpp>
#include <moeq/error.hpp>
#include <moeq/reference.hpp>

#include <boost/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <initializer_list>
#include <iomanip>
#include <iostream>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <ostream>
#include <random>
#include <set>
#include <sstream>
#include <thread>

namespace moeq::gpu_harness {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

std::string fmt(double v, int prec) {
  std::ostringstream o;
  o << std::fixed << std::setprecision(prec) << v;
  return o.str();
}

namespace {

namespace mk = ::moeq_kernels;
using ct::gpu::LayerDims;
using ct::gpu::MoePlan;
using ct::gpu::MoeRunner;

// Modules compiled in this process, by source text (identical sets compile once).
class ModuleCache {
 public:
  explicit ModuleCache(Driver& d) : d_(d) {}
  std::vector<Module> get(const std::vector<ct::gpu::KernelSetSource>& sets) {
    std::vector<ct::gpu::KernelSetSource> missing;
    for (const auto& s : sets)
      if (!modules_.count(s.source)) missing.push_back(s);
    if (!missing.empty()) {
      const auto cubins = nvrtc_build_all(missing, d_.arch(), std::max(1u, std::thread::hardware_concurrency()));
      for (size_t i = 0; i < missing.size(); ++i) {
        modules_[missing[i].source] = d_.load(cubins[i].image);
        compile_ms_ += cubins[i].milliseconds;
      }
    }
    std::vector<Module> out;
    for (const auto& s : sets) out.push_back(modules_.at(s.source));
    return out;
  }
  double compile_ms() const { return compile_ms_; }

 private:
  Driver& d_;
  std::map<std::string, Module> modules_;
  double compile_ms_ = 0;
};

struct Ctx {
  Driver& d;
  Stream s;
  BenchKernels fill;
  ModuleCache modules;
  Module utility;
  std::ostream& out;
};

ct::gpu::DeviceLimits limits(const Driver& d) {
  ct::gpu::DeviceLimits l;
  l.sm_major = d.info().sm_major;
  l.sm_minor = d.info().sm_minor;
  l.multiprocessors = d.info().multiprocessors;
  l.max_smem_per_block = d.info().smem_optin;
  l.memory_bytes = static_cast<int64_t>(d.info().total_memory);
  return l;
}

struct HostRouting {
  std::vector<int32_t> ids;
  std::vector<float> weights;
};

// k distinct global experts per token, uniform; weights in [0.05, 1).
HostRouting random_routing(int64_t m, int64_t k, int64_t global_experts, uint64_t seed) {
  std::mt19937_64 rng(seed);
  HostRouting r;
  r.ids.resize(static_cast<size_t>(m * k));
  r.weights.resize(static_cast<size_t>(m * k));
  std::uniform_real_distribution<float> uw(0.05f, 1.0f);
  std::vector<int32_t> all(static_cast<size_t>(global_experts));
  std::iota(all.begin(), all.end(), 0);
  for (int64_t t = 0; t < m; ++t) {
    for (int64_t j = 0; j < k; ++j) {  // partial Fisher-Yates
      std::uniform_int_distribution<int64_t> pick(j, global_experts - 1);
      std::swap(all[j], all[pick(rng)]);
      r.ids[t * k + j] = all[j];
      r.weights[t * k + j] = uw(rng);
    }
  }
  return r;
}

ref::ActQuantSpec act_spec(const ct::gpu::GpuScheme& s, float static_scale) {
  ref::ActQuantSpec q;
  switch (s.amode) {
    case mk::kAToken: q.kind = ref::ActQuant::kFp8PerToken; break;
    case mk::kAGroup: q.kind = ref::ActQuant::kFp8PerGroup; break;
    case mk::kATensor: q.kind = ref::ActQuant::kFp8PerTensorDynamic; break;
    case mk::kAStatic: q.kind = ref::ActQuant::kFp8PerTensorStatic; break;
    default: break;
  }
  q.group_size = s.act_group;
  q.static_scale = static_scale;
  return q;
}

// ------------------------------------------------------------------ correctness

struct CheckCase {
  std::string label;
  SchemeSpec spec;
  LayerDims dims;
  int64_t global_experts = 0;
  int64_t m = 0;
  int64_t chunk = 0;      // plan's max tokens (< m exercises chunking)
  bool core_ref = false;  // also compare with ref::moe_forward over every local expert
  // Tiles to run instead of the heuristics' (where this device has them; else the heuristics').
  std::vector<ct::gpu::Bucket> tiles;
};

// The synthetic checks of one scheme, in order: 6 of 8 experts local (first 1), H and I with K
// and N tails for every tile width, at each M of `ms`; many experts; few wide experts at decode,
// where GEMM2 splits K (gemm2_k_splits) and the combine adds the slabs.
std::vector<CheckCase> synthetic_checks(const SchemeSpec& s, std::initializer_list<int64_t> ms) {
  std::vector<CheckCase> out;
  for (int64_t m : ms) out.push_back({"ep-tails", s, LayerDims{6, 1, 272, 176, 3}, 8, m, m > 1000 ? 700 : m, m <= 64});
  out.push_back({"many-experts", s, LayerDims{64, 0, 512, 256, 8}, 64, 333, 333, true});
  for (int64_t m : {1, 3}) out.push_back({"k-split", s, LayerDims{8, 0, 256, 2048, 2}, 8, m, 16, true});
  // GEMM1 requantizing h in its epilogue (gemm1_quant_group): the warp-specialized 128 x 256 tile
  // (where the scheme has it); I = 176 ends in a partial group.
  const bool ws = s.scheme.scale_k == 128 && (s.scheme.wscale != mk::kWBlock || s.scheme.block_n % 64 == 0);
  if (s.scheme.kind == mk::kKindFp8 && s.scheme.amode == mk::kAGroup && ws) {
    ct::gpu::GemmTile g{256, 2, 4, 4};
    g.wgmma = g.ws = true;
    out.push_back({"fused-requant", s, LayerDims{6, 1, 272, 176, 3}, 8, 300, 300, false, {ct::gpu::Bucket{300, 128, g, g}}});
  }
  // Ping-pong tiles (two consumer warpgroups on alternate 64-row tiles): 256 wide (GEMM1 then
  // ends in a partial tile of I = 176), and 128 wide over a chunked M, so that a block's
  // warpgroups see several tiles each and the walk ends on either of them.
  // (The shipped table takes them for some cases; the tuner offers them.)
  if (s.scheme.kind != mk::kKindW8A16 && ws) {
    for (const int bn : {256, 128}) {
      ct::gpu::GemmTile t{bn, 1, 4, bn == 256 ? 5 : 8};
      t.wgmma = t.ws = t.pingpong = true;
      const int64_t m = bn == 256 ? 300 : 2000, chunk = bn == 256 ? 300 : 700;
      out.push_back({"pingpong-" + std::to_string(bn), s, LayerDims{6, 1, 272, 176, 3}, 8, m, chunk, false,
                     {ct::gpu::Bucket{chunk, 64, t, t}}});
    }
  }
  // An odd number of 128-row warp-specialized tiles, experts of three tiles each (5 of 8 local,
  // M = 1200): under two-block clusters (MOEQ_CT_WS_MULTICAST) the pairs of m tiles then share
  // an expert, straddle two, and end in a pair whose second tile is past the last one.
  if (s.scheme.kind != mk::kKindW8A16 && ws) {
    ct::gpu::GemmTile t{128, 2, 4, 6};
    t.wgmma = t.ws = true;
    out.push_back({"odd-tiles", s, LayerDims{5, 1, 272, 176, 2}, 8, 1200, 1200, false, {ct::gpu::Bucket{1200, 128, t, t}}});
  }
  // 224-wide tiles (five ring stages of 128 rows): GEMM1 ends in a partial tile of I = 176 (112
  // columns a tile) and GEMM2 in one of H = 272; one chunk, then a chunked M.
  if (s.scheme.kind != mk::kKindW8A16 && s.scheme.wscale != mk::kWBlock && s.scheme.amode != mk::kAGroup) {
    ct::gpu::GemmTile t{224, 2, 4, 5};
    t.wgmma = t.ws = true;
    for (const int64_t m : {300, 2000}) {
      const int64_t chunk = m > 1000 ? 700 : m;
      out.push_back({"wide224", s, LayerDims{6, 1, 272, 176, 3}, 8, m, chunk, false, {ct::gpu::Bucket{chunk, 128, t, t}}});
    }
  }
  return out;
}

// GEMM1 of a bucket whose epilogue requantizes h (gemm1_quant_group): h exists only as fp8 codes
// and group scales, and quantization turns GEMM1's last-bit differences from the double-
// accumulated mirror into whole-step flips of the codes near rounding midpoints (measured
// 2e-3 relative L2 on the device at 1.7e-4 of f32 difference). So the codes are held to the
// mirror's exact h instead: the GPU's dequantized intermediate may be no further from it than
// the mirror's own quantization is (excess relative L2), and each group scale within that
// distance of the mirror's. A wrong scale, group or column shows up as far more than 1e-3.
double fused_gemm1_error(const MirrorResult& mr, const std::vector<uint8_t>& a2q, const std::vector<float>& a2s,
                         int64_t I, int group) {
  const int64_t groups = (I + group - 1) / group;
  std::vector<float> exact, gpu, mirror;
  double scale_err = 0;
  for (size_t r = 0; r < mr.pairs.size(); ++r) {
    const int64_t p = mr.pairs[r];
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t c0 = g * group, c1 = std::min<int64_t>(I, c0 + group);
      const float s_ref = ref::fp8_group_scale(std::span<const float>(mr.h).subspan(r * I + c0, c1 - c0));
      const float s_gpu = a2s[static_cast<size_t>(p * groups + g)];
      scale_err = std::max(scale_err, std::fabs(static_cast<double>(s_gpu) - s_ref) / s_ref);
      for (int64_t i = c0; i < c1; ++i) {
        const float h = mr.h[r * I + i];
        exact.push_back(h);
        gpu.push_back(fp8_e4m3_to_float(a2q[static_cast<size_t>(p * I + i)]) * s_gpu);
        mirror.push_back(fp8_e4m3_to_float(ref::fp8_quantize(h, s_ref)) * s_ref);
      }
    }
  }
  const double excess = ref::relative_l2(gpu, exact) - ref::relative_l2(mirror, exact);
  return std::max({excess, scale_err, 0.0});
}

// What one check measured (-1: not measured in this case), for --json.
struct CheckResult {
  bool pass = false, deterministic = false, graph_ok = false;
  double err_g1 = -1, err_g2 = -1, err = -1, err16 = -1, err_core = -1;
  std::string error;  // what threw, if the check could not run
};

// The plan a check runs: its own tiles where it names them and `lim` runs them, else the
// heuristics' (`why` then says why, when the check named tiles).
MoePlan check_plan(const CheckCase& k, const ct::gpu::DeviceLimits& lim, std::string& why) {
  why.clear();
  if (!k.tiles.empty()) {
    try {
      return MoePlan(k.spec.scheme, k.dims, k.chunk, lim, k.tiles);
    } catch (const std::exception& e) {
      why = e.what();
    }
  }
  return MoePlan(k.spec.scheme, k.dims, k.chunk, lim);
}

bool run_check(Ctx& c, const CheckCase& k, uint64_t seed, CheckResult* detail = nullptr) {
  const auto& d = k.dims;
  const int64_t M = k.m, H = d.hidden;
  DeviceLayer layer(c.fill, c.d, k.spec, d, seed, c.s);
  layer.repack(c.utility, c.s);
  std::string why;
  const MoePlan plan = check_plan(k, limits(c.d), why);
  if (!why.empty()) c.out << "note: " << k.label << " " << k.spec.name << ": the heuristics' tiles instead (" << why << ")\n";
  MoeRunner runner(plan, c.modules.get(plan.sources()));
  DeviceBuffer ws(plan.workspace_bytes()), x(static_cast<size_t>(M * H) * 2), ids(static_cast<size_t>(M * d.top_k) * 4),
      tw(static_cast<size_t>(M * d.top_k) * 4), out(static_cast<size_t>(M * H) * 4), out16(static_cast<size_t>(M * H) * 2);
  c.fill.fill(x.get(), M * H, FillType::kBf16, seed + 7, 1.0f, 0.0f, c.s);
  const HostRouting r = random_routing(M, d.top_k, k.global_experts, seed + 8);
  c.d.upload(ids.get(), r.ids.data(), r.ids.size() * 4);
  c.d.upload(tw.get(), r.weights.data(), r.weights.size() * 4);
  std::vector<uint16_t> xb(static_cast<size_t>(M * H));
  c.d.sync(c.s);
  c.d.download(xb.data(), x.get(), xb.size() * 2);
  std::vector<float> xf(xb.size());
  for (size_t i = 0; i < xb.size(); ++i) xf[i] = bf16_to_float(xb[i]);

  ct::gpu::RunIo io;
  io.m = M;
  io.x = reinterpret_cast<const void*>(x.get());
  io.x_stride = H;
  io.topk_ids = ids.as<const int32_t>();
  io.topk_weights = tw.as<const float>();
  io.out_stride = H;
  auto run_into = [&](DeviceBuffer& o, int dtype) {
    c.d.memset_async(o.get(), 0xff, o.bytes(), c.s);  // NaN poison: unwritten elements fail
    io.out = reinterpret_cast<void*>(o.get());
    io.out_dtype = dtype;
    runner.run(io, layer.weights(), reinterpret_cast<void*>(ws.get()), c.s);
    c.d.sync(c.s);
  };
  std::vector<float> g1(static_cast<size_t>(M * H)), g2(g1.size()), g3(g1.size());
  run_into(out, mk::kOutF32);
  c.d.download(g1.data(), out.get(), g1.size() * 4);
  run_into(out, mk::kOutF32);
  c.d.download(g2.data(), out.get(), g2.size() * 4);
  const bool deterministic = std::memcmp(g1.data(), g2.data(), g1.size() * 4) == 0;
  // The same apply captured in a CUDA graph and replayed.
  c.d.memset_async(out.get(), 0xff, out.bytes(), c.s);
  io.out = reinterpret_cast<void*>(out.get());
  io.out_dtype = mk::kOutF32;
  c.d.begin_capture(c.s);
  runner.run(io, layer.weights(), reinterpret_cast<void*>(ws.get()), c.s);
  GraphExec graph = c.d.end_capture(c.s);
  c.d.graph_launch(graph, c.s);
  c.d.sync(c.s);
  c.d.graph_destroy(graph);
  c.d.download(g3.data(), out.get(), g3.size() * 4);
  const bool graph_ok = std::memcmp(g1.data(), g3.data(), g1.size() * 4) == 0;
  std::vector<uint16_t> gb(static_cast<size_t>(M * H));
  run_into(out16, mk::kOutBf16);
  c.d.download(gb.data(), out16.get(), gb.size() * 2);

  MirrorInput mi;
  mi.scheme = k.spec.scheme;
  mi.dims = d;
  mi.m = M;
  mi.x = xf;
  mi.ids = r.ids;
  mi.weights = r.weights;
  mi.a1_static = layer.weights().a1_static;
  mi.a2_static = layer.weights().a2_static;
  mi.chunk = k.chunk;
  // Each expert dequantized once for every forward of this check (chunks, and the second
  // forward on the GPU's own intermediate below): a real shape's experts are ~40 M weights each.
  std::map<int64_t, std::shared_ptr<const ExpertFloat>> dequantized;
  mi.expert = [&](int64_t le) {
    auto it = dequantized.find(le);
    if (it == dequantized.end()) it = dequantized.emplace(le, std::make_shared<const ExpertFloat>(layer.expert(le))).first;
    return it->second;
  };
  mi.bf16_rows = [&](int64_t m) { return plan.buckets()[ct::gpu::bucket_for(plan.buckets(), m)].k_splits == 1; };
  const MirrorResult mr = mirror_forward(mi);
  const std::vector<float>& ref_out = mr.out;
  const double err = ref::relative_l2(g1, ref_out);
  std::vector<float> gbf(gb.size()), ref16(ref_out.size());
  for (size_t i = 0; i < gb.size(); ++i) {
    gbf[i] = bf16_to_float(gb[i]);
    // A bf16 output has its pairs' rows rounded to bf16 before the combine (y2 in bf16).
    ref16[i] = bf16_to_float(float_to_bf16(mr.out_bf16_rows[i]));
  }
  const double err16 = ref::relative_l2(gbf, ref16);

  // Each GEMM on identical quantized inputs. The intermediate of the last chunk is still in
  // the workspace: GEMM1's output (before the a2 quantization) against the mirror's, and the
  // output against a mirror whose GEMM2 reads the GPU's own requantized intermediate. An
  // end-to-end difference also contains a few fp8 roundings of the intermediate flipped by
  // 1e-5-sized differences in GEMM1, so it is held to 1e-2 only.
  double err_g1 = -1, err_g2 = -1;
  int64_t requant_diffs = 0;  // scales and codes of the intermediate unlike the host's of the GPU's h
  const auto& sc = k.spec.scheme;
  if (k.chunk >= M) {
    const auto& L = plan.layout();
    const int64_t R = M * d.top_k, I = d.inter;
    const bool fp8 = sc.kind == mk::kKindFp8, dyn = fp8 && sc.amode != mk::kAStatic;
    const int64_t groups = sc.amode == mk::kAGroup ? (I + sc.act_group - 1) / sc.act_group : 1;
    std::vector<uint8_t> hq(static_cast<size_t>(R * I) * (fp8 ? (dyn ? 4 : 1) : 2)), a2q;
    c.d.download(hq.data(), ws.get() + L.h, hq.size());
    std::vector<float> a2s;
    if (dyn) {
      a2q.resize(static_cast<size_t>(R * I));
      a2s.resize(static_cast<size_t>(sc.amode == mk::kATensor ? 1 : R * groups));
      c.d.download(a2q.data(), ws.get() + L.a2q, a2q.size());
      c.d.download(a2s.data(), ws.get() + L.a2s, a2s.size() * 4);
    }
    const float a2_static = layer.weights().a2_static;
    mi.gemm2_input = [&](int64_t p, int64_t i) -> float {
      const size_t o = static_cast<size_t>(p * I + i);
      if (!fp8) {
        uint16_t v;
        std::memcpy(&v, hq.data() + o * 2, 2);
        return bf16_to_float(v);
      }
      if (!dyn) return fp8_e4m3_to_float(hq[o]) * a2_static;
      const float sv = sc.amode == mk::kATensor ? a2s[0]
                       : sc.amode == mk::kAToken ? a2s[static_cast<size_t>(p)]
                                                 : a2s[static_cast<size_t>(p * groups + i / sc.act_group)];
      return fp8_e4m3_to_float(a2q[o]) * sv;
    };
    err_g2 = ref::relative_l2(g1, mirror_forward(mi).out);
    const ct::gpu::Bucket& last = plan.buckets()[ct::gpu::bucket_for(plan.buckets(), M)];
    // The requantized intermediate (moe_quant_h) against the host's quantization of the GPU's own
    // f32 h: every scale and code bit for bit. The GEMM2 check above reads the GPU's codes and
    // scales, so it cannot see a wrong one by itself.
    if (dyn && (sc.amode == mk::kAToken || sc.amode == mk::kAGroup) && ct::gpu::gemm1_quant_group(sc, last.gemm1) == 0) {
      const int64_t G = sc.amode == mk::kAGroup ? sc.act_group : I;
      for (const int64_t p : mr.pairs)
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t c0 = g * G, c1 = std::min(I, c0 + G);
          std::vector<float> hv(static_cast<size_t>(c1 - c0));
          std::memcpy(hv.data(), hq.data() + static_cast<size_t>(p * I + c0) * 4, hv.size() * 4);
          const float want = sc.amode == mk::kAToken ? ref::fp8_per_token_scale(hv) : ref::fp8_group_scale(hv);
          const float got = a2s[static_cast<size_t>(p * groups + g)];
          if (std::memcmp(&want, &got, 4) != 0) ++requant_diffs;
          for (int64_t i = c0; i < c1; ++i)
            if (ref::fp8_quantize(hv[static_cast<size_t>(i - c0)], want) != a2q[static_cast<size_t>(p * I + i)]) ++requant_diffs;
        }
    }
    if (ct::gpu::gemm1_quant_group(sc, last.gemm1) > 0) {
      err_g1 = fused_gemm1_error(mr, a2q, a2s, I, sc.act_group);
    } else if (!fp8 || dyn) {  // GEMM1's output as the GPU stored it (bf16, or f32 before requantizing)
      std::vector<float> gh, rh;
      for (size_t r = 0; r < mr.pairs.size(); ++r)
        for (int64_t i = 0; i < I; ++i) {
          const size_t o = static_cast<size_t>(mr.pairs[r] * I + i);
          float g;
          if (fp8) {
            std::memcpy(&g, hq.data() + o * 4, 4);
          } else {
            uint16_t v;
            std::memcpy(&v, hq.data() + o * 2, 2);
            g = bf16_to_float(v);
          }
          gh.push_back(g);
          const float want = mr.h[r * I + i];
          rh.push_back(fp8 ? want : bf16_to_float(float_to_bf16(want)));
        }
      err_g1 = ref::relative_l2(gh, rh);
    }
  }
  double err_core = -1;
  if (k.core_ref) {
    ref::ExpertWeights ew;
    ew.num_experts = d.num_experts;
    ew.first_expert = d.first_expert;
    ew.hidden = H;
    ew.intermediate = d.inter;
    for (int64_t le = 0; le < d.num_experts; ++le) {
      ExpertFloat f = layer.expert(le);
      ew.w13.insert(ew.w13.end(), f.w13.begin(), f.w13.end());
      ew.w2.insert(ew.w2.end(), f.w2.begin(), f.w2.end());
    }
    ref::Routing rt;
    rt.num_tokens = M;
    rt.top_k = d.top_k;
    rt.ids = r.ids;
    rt.weights = r.weights;
    ref::MoeOptions opt;
    if (k.spec.scheme.kind == mk::kKindFp8) {
      opt.a1 = act_spec(k.spec.scheme, layer.weights().a1_static);
      opt.a2 = act_spec(k.spec.scheme, layer.weights().a2_static);
    }
    err_core = ref::relative_l2(g1, ref::moe_forward(ew, xf, M, rt, opt));
  }
  const bool pass = err_g1 <= 1e-3 && err_g2 <= 1e-3 && err <= 1e-2 && err16 <= 1e-2 && deterministic && graph_ok &&
                    requant_diffs == 0;
  c.out << (pass ? "PASS " : "FAIL ") << k.label << " " << k.spec.name << " E=" << d.num_experts << "/"
        << k.global_experts << " k=" << d.top_k << " H=" << H << " I=" << d.inter << " M=" << M << " chunk=" << k.chunk
        << " [" << ct::gpu::describe(plan.buckets()[ct::gpu::bucket_for(plan.buckets(), M)]) << "]: rel L2 " << std::scientific << std::setprecision(2);
  if (err_g1 >= 0) c.out << "gemm1 " << err_g1 << ", ";
  if (err_g2 >= 0) c.out << "gemm2 " << err_g2 << ", ";
  c.out << "end-to-end vs mirror " << err << " (bf16 out " << err16 << ")";
  if (err_core >= 0) c.out << ", vs core moe_forward " << err_core;
  if (requant_diffs > 0) c.out << ", " << requant_diffs << " REQUANTIZED SCALES OR CODES DIFFER from the host's";
  c.out << std::defaultfloat << (deterministic ? ", bitwise repeatable" : ", NOT REPEATABLE")
        << (graph_ok ? ", graph replay identical" : ", GRAPH REPLAY DIFFERS") << "\n";
  c.out.flush();
  if (detail) *detail = {pass, deterministic, graph_ok, err_g1, err_g2, err, err16, err_core, ""};
  return pass;
}

bool check_routing(Ctx& c, uint64_t seed) {
  bool all = true;
  struct Case {
    const char* label;
    int64_t m, e, k;
    bool sigmoid, renorm, bias;
    int n_group, topk_group;
    float scale;
  };
  const Case cases[] = {
      {"softmax top-2 renorm (Mixtral)", 257, 8, 2, false, true, false, 0, 0, 1.0f},
      {"softmax top-8 no renorm (Qwen3)", 300, 128, 8, false, false, false, 0, 0, 1.0f},
      {"sigmoid+bias grouped 8/4 top-8 x2.5 (DeepSeek-V3)", 300, 256, 8, true, true, true, 8, 4, 2.5f},
      {"softmax grouped no bias", 100, 64, 6, false, true, false, 8, 3, 1.0f},
  };
  for (const auto& cs : cases) {
    std::mt19937 rng(static_cast<uint32_t>(seed + cs.e));
    std::normal_distribution<float> nd(0.0f, 2.0f);
    std::vector<float> logits(static_cast<size_t>(cs.m * cs.e)), bias;
    for (auto& v : logits) v = nd(rng);
    if (cs.bias) {
      bias.resize(static_cast<size_t>(cs.e));
      for (auto& v : bias) v = nd(rng) * 0.1f;
    }
    ref::RoutingOptions o;
    o.top_k = static_cast<int>(cs.k);
    o.renormalize = cs.renorm;
    o.scoring = cs.sigmoid ? ref::Scoring::kSigmoid : ref::Scoring::kSoftmax;
    o.correction_bias = bias;
    o.n_group = cs.n_group;
    o.topk_group = cs.topk_group;
    o.routed_scaling_factor = cs.scale;
    const ref::Routing want = ref::route(logits, cs.m, cs.e, o);
    DeviceBuffer dl(logits.size() * 4), db(std::max<size_t>(bias.size(), 1) * 4), di(want.ids.size() * 4),
        dw(want.ids.size() * 4);
    c.d.upload(dl.get(), logits.data(), logits.size() * 4);
    if (!bias.empty()) c.d.upload(db.get(), bias.data(), bias.size() * 4);
    ct::gpu::RouteIo io;
    io.m = cs.m;
    io.num_experts = cs.e;
    io.logits = dl.as<const float>();
    io.bias = bias.empty() ? nullptr : db.as<const float>();
    io.ids = di.as<int32_t>();
    io.weights = dw.as<float>();
    io.top_k = static_cast<int>(cs.k);
    io.sigmoid = cs.sigmoid;
    io.renormalize = cs.renorm;
    io.n_group = cs.n_group;
    io.topk_group = cs.topk_group;
    io.routed_scaling_factor = cs.scale;
    ct::gpu::launch_route(c.utility, io, c.s);
    c.d.sync(c.s);
    std::vector<int32_t> ids(want.ids.size());
    std::vector<float> w(want.ids.size());
    c.d.download(ids.data(), di.get(), ids.size() * 4);
    c.d.download(w.data(), dw.get(), w.size() * 4);
    int64_t id_mismatch = 0;
    double max_rel = 0;
    for (size_t i = 0; i < ids.size(); ++i) {
      if (ids[i] != want.ids[i]) ++id_mismatch;
      max_rel = std::max(max_rel, std::fabs(static_cast<double>(w[i]) - want.weights[i]) /
                                      std::max(1e-30, std::fabs(static_cast<double>(want.weights[i]))));
    }
    const bool pass = id_mismatch == 0 && max_rel <= 1e-5;
    all = all && pass;
    c.out << (pass ? "PASS " : "FAIL ") << "route " << cs.label << " M=" << cs.m << ": " << id_mismatch
          << " id mismatches, max weight rel err " << std::scientific << std::setprecision(2) << max_rel
          << std::defaultfloat << "\n";
  }
  return all;
}

// ------------------------------------------------------------------ timing

struct Row {
  std::string shape, scheme;
  int64_t experts = 0, top_k = 0, hidden = 0, inter = 0;
  int64_t m = 0;
  std::vector<std::pair<std::string, double>> stages;  // us from the run with an event after each kernel
  // --stage-graphs: each kernel's us in place, from CUDA graphs of the sequence's first 1, 2, ...
  // kernels (L2 flushed before each replay; differences of medians). Empty otherwise.
  std::vector<std::pair<std::string, double>> stages_graph;
  double us_graph = 0, us_stream = 0, bytes = 0, flops = 0, floor_us = 0;
  int64_t experts_hit = 0;
  std::string tiles;  // the bucket that ran (describe(): row tile, both GEMM tiles)
  double ratio() const { return us_graph / floor_us; }
};

std::vector<Row> time_shape_scheme(Ctx& c, const ShapeSpec& shape, const SchemeSpec& spec,
                                   const std::vector<int64_t>& ms, const Floors& fl, const BenchOptions& opt) {
  LayerDims d{shape.experts, 0, shape.hidden, shape.inter, shape.top_k};
  const int64_t max_m = *std::max_element(ms.begin(), ms.end());
  DeviceLayer layer(c.fill, c.d, spec, d, opt.seed, c.s);
  layer.repack(c.utility, c.s);
  MoePlan plan(spec.scheme, d, max_m, limits(c.d));
  MoeRunner runner(plan, c.modules.get(plan.sources()));
  DeviceBuffer ws(plan.workspace_bytes()), x(static_cast<size_t>(max_m * d.hidden) * 2),
      ids(static_cast<size_t>(max_m * d.top_k) * 4), tw(static_cast<size_t>(max_m * d.top_k) * 4),
      out(static_cast<size_t>(max_m * d.hidden) * 2);
  // NOTE: L2 is flushed before every timed run by writing twice its size, so weights hit in
  // one run are not served from the cache in the next.
  const size_t flush_bytes = std::max<size_t>(static_cast<size_t>(c.d.info().l2_bytes) * 2, size_t{128} << 20);
  DeviceBuffer flush(flush_bytes);
  c.fill.fill(x.get(), max_m * d.hidden, FillType::kBf16, opt.seed + 7, 1.0f, 0.0f, c.s);
  const HostRouting r = random_routing(max_m, d.top_k, shape.experts, opt.seed + 8);
  c.d.upload(ids.get(), r.ids.data(), r.ids.size() * 4);
  c.d.upload(tw.get(), r.weights.data(), r.weights.size() * 4);
  Event e0 = c.d.event(), e1 = c.d.event();
  const double rate = (spec.scheme.kind == mk::kKindFp8 ? fl.fp8_tflops : fl.bf16_tflops) * 1e12;
  std::vector<Row> rows;
  for (int64_t m : ms) {
    ct::gpu::RunIo io;
    io.m = m;
    io.x = reinterpret_cast<const void*>(x.get());
    io.x_stride = d.hidden;
    io.topk_ids = ids.as<const int32_t>();
    io.topk_weights = tw.as<const float>();
    io.out = reinterpret_cast<void*>(out.get());
    io.out_stride = d.hidden;
    io.out_dtype = mk::kOutBf16;
    auto apply = [&] { runner.run(io, layer.weights(), reinterpret_cast<void*>(ws.get()), c.s); };
    auto timed = [&](auto&& body) {
      c.d.memset_async(flush.get(), 0, flush_bytes, c.s);
      c.d.record(e0, c.s);
      body();
      c.d.record(e1, c.s);
      return static_cast<double>(c.d.elapsed_ms(e0, e1)) * 1e3;
    };
    for (int i = 0; i < 2; ++i) timed(apply);
    const double first = timed(apply);
    const int iters = static_cast<int>(std::clamp(opt.seconds_per_case * 1e6 / std::max(first, 1.0), 5.0, 200.0));
    std::vector<double> t_stream, t_graph;
    for (int i = 0; i < iters; ++i) t_stream.push_back(timed(apply));
    c.d.begin_capture(c.s);
    apply();
    GraphExec g = c.d.end_capture(c.s);
    auto replay = [&] { c.d.graph_launch(g, c.s); };
    for (int i = 0; i < 2; ++i) timed(replay);
    for (int i = 0; i < iters; ++i) t_graph.push_back(timed(replay));
    c.d.graph_destroy(g);

    // One more run with an event after every kernel: where the time goes.
    std::vector<std::pair<std::string, Event>> marks;
    static std::vector<Event> pool;
    size_t used = 0;
    c.d.memset_async(flush.get(), 0, flush_bytes, c.s);
    c.d.record(e0, c.s);
    runner.run(io, layer.weights(), reinterpret_cast<void*>(ws.get()), c.s, [&](const char* name) {
      if (used == pool.size()) pool.push_back(c.d.event());
      c.d.record(pool[used], c.s);
      marks.emplace_back(name + 4, pool[used++]);  // drop the "moe_" prefix
    });
    std::string stages;
    Row row;
    Event prev = e0;
    for (const auto& [name, ev] : marks) {
      const double us = static_cast<double>(c.d.elapsed_ms(prev, ev)) * 1e3;
      stages += " " + name + " " + fmt(us, 1);
      row.stages.emplace_back(name, us);
      prev = ev;
    }

    // Each kernel in place: a graph of the first k kernels for k = 1, 2, ..., timed as the whole
    // layer is; a kernel's cost is what it adds to the median of the prefix before it. Unlike
    // the events above, this keeps the launch overlap (PDL) the layer runs with.
    std::string graph_stages;
    if (opt.stage_graphs) {
      double before = 0;
      for (std::size_t k = 1; k <= marks.size(); ++k) {
        io.max_launches = static_cast<int>(k);
        c.d.begin_capture(c.s);
        apply();
        GraphExec pg = c.d.end_capture(c.s);
        std::vector<double> t;
        timed([&] { c.d.graph_launch(pg, c.s); });
        for (int i = 0; i < iters; ++i) t.push_back(timed([&] { c.d.graph_launch(pg, c.s); }));
        c.d.graph_destroy(pg);
        const double now = median(t);
        row.stages_graph.emplace_back(marks[k - 1].first, now - before);
        graph_stages += " " + marks[k - 1].first + " " + fmt(now - before, 1);
        before = now;
      }
      io.max_launches = 0;
    }

    row.tiles = ct::gpu::describe(plan.buckets()[ct::gpu::bucket_for(plan.buckets(), m)]);
    row.shape = shape.name;
    row.experts = shape.experts;
    row.top_k = shape.top_k;
    row.hidden = shape.hidden;
    row.inter = shape.inter;
    row.scheme = spec.name;
    row.m = m;
    row.us_stream = median(t_stream);
    row.us_graph = median(t_graph);
    std::set<int32_t> hit(r.ids.begin(), r.ids.begin() + m * d.top_k);
    row.experts_hit = static_cast<int64_t>(hit.size());
    row.bytes = static_cast<double>(row.experts_hit) * layer.expert_bytes() + static_cast<double>(m * d.hidden) * 4 +
                static_cast<double>(m * d.top_k) * 8;
    row.flops = 6.0 * static_cast<double>(m * d.top_k) * static_cast<double>(d.hidden) * static_cast<double>(d.inter);
    row.floor_us = std::max(row.bytes / (fl.copy_gbps * 1e9), row.flops / rate) * 1e6;
    rows.push_back(row);
    c.out << "  " << shape.name << " " << spec.name << " M=" << m << ": " << fmt(row.us_graph, 1) << " us (stream "
          << fmt(row.us_stream, 1) << "), floor " << fmt(row.floor_us, 1) << " us, ratio " << fmt(row.ratio(), 2)
          << " |" << stages << (graph_stages.empty() ? "" : " | in graphs:" + graph_stages) << "\n";
    c.out << "ROW," << row.shape << "," << row.scheme << "," << row.m << "," << row.us_graph << "," << row.us_stream
          << "," << row.bytes << "," << row.flops << "," << row.floor_us << "," << row.experts_hit << "\n";
    c.out.flush();
  }
  return rows;
}

void print_table(std::ostream& o, const std::vector<Row>& rows, const Floors& fl, const Driver& d,
                 const std::vector<int64_t>& ms) {
  o << "\n| shape | scheme | M | us | us (no graph) | GB/s | TFLOP/s | floor us | time/floor |\n";
  o << "|---|---|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const auto& r : rows)
    o << "| " << r.shape << " | " << r.scheme << " | " << r.m << " | " << fmt(r.us_graph, 1) << " | "
      << fmt(r.us_stream, 1) << " | " << fmt(r.bytes / (r.us_graph * 1e-6) / 1e9, 0) << " | "
      << fmt(r.flops / (r.us_graph * 1e-6) / 1e12, 1) << " | " << fmt(r.floor_us, 1) << " | " << fmt(r.ratio(), 2)
      << " |\n";
  // Geomean of time/floor per M over the schemes the competition figures cover.
  const std::set<std::string> competition = {"bf16", "fp8-channel", "fp8-block", "w8a16"};
  o << "\n| M | geomean time/floor (bf16, fp8-channel, fp8-block, w8a16) | cases | all schemes |\n|---:|---:|---:|---:|\n";
  for (int64_t m : ms) {
    double lc = 0, la = 0;
    int nc = 0, na = 0;
    for (const auto& r : rows) {
      if (r.m != m) continue;
      la += std::log(r.ratio());
      ++na;
      if (competition.count(r.scheme)) {
        lc += std::log(r.ratio());
        ++nc;
      }
    }
    if (na == 0) continue;
    o << "| " << m << " | " << (nc ? fmt(std::exp(lc / nc), 2) : "-") << " | " << nc << " | "
      << fmt(std::exp(la / na), 2) << " |\n";
  }
  o << "\nDevice: " << d.info().name << " (" << d.info().multiprocessors << " SMs, L2 " << d.info().l2_bytes / (1 << 20)
    << " MiB, driver " << d.info().driver_version << "). Floors measured in this run: copy " << fmt(fl.copy_gbps, 0)
    << " GB/s (cuMemcpyDtoD 1 GiB, read + write); fp8 " << fmt(fl.fp8_tflops, 0) << " TFLOP/s (" << fl.fp8_note
    << "); bf16 " << fmt(fl.bf16_tflops, 0) << " TFLOP/s (" << fl.bf16_note << ", used for bf16 and w8a16).\n";
}

struct Selection {
  std::vector<SchemeSpec> schemes;
  std::vector<ShapeSpec> shapes;
  std::vector<CheckCase> checks;
};

Selection select(const BenchOptions& opt) {
  Selection sel;
  const std::vector<std::string> default_schemes = {"bf16", "fp8-channel", "fp8-block", "fp8-tensor", "w8a16"};
  for (const auto& n : opt.schemes.empty() ? default_schemes : opt.schemes) {
    auto s = scheme_by_name(n);
    if (!s) fail("bench: unknown scheme '" + n + "' (bf16, fp8-channel, fp8-block, fp8-tensor, fp8-tensor-static, w8a16)");
    sel.schemes.push_back(*s);
  }
  if (opt.shapes.empty() && opt.extra_shapes.empty()) sel.shapes = named_shapes();
  for (const auto& n : opt.shapes) {
    auto s = shape_by_name(n);
    if (!s) fail("bench: unknown shape '" + n + "' (Mixtral-8x7B, Qwen3-30B-A3B, DeepSeek-V3, Granite-3B-A800M)");
    sel.shapes.push_back(*s);
  }
  sel.shapes.insert(sel.shapes.end(), opt.extra_shapes.begin(), opt.extra_shapes.end());
  if (!opt.check) return sel;
  std::vector<SchemeSpec> check_schemes = sel.schemes;
  for (const auto& s : sel.schemes)
    if (s.scheme.wscale == mk::kWBlock) {
      check_schemes.push_back(with_blocks(s, 64, 64));
      // A TP shard whose I/tp is an odd multiple of 16 refines the grid to 16-element blocks.
      check_schemes.push_back(with_blocks(s, 48, 16));
    }
  for (const auto& s : check_schemes) {
    for (CheckCase& k : synthetic_checks(s, {1, 7, 64, 300, 2000})) sel.checks.push_back(std::move(k));
    for (const auto& sh : sel.shapes)
      sel.checks.push_back({sh.name, s, LayerDims{sh.experts, 0, sh.hidden, sh.inter, sh.top_k}, sh.experts, 4, 4, false});
  }
  return sel;
}

}  // namespace

namespace {

// An H100 SXM's limits (132 SMs, 227 KiB of shared memory a block) with the arch's capability.
ct::gpu::DeviceLimits limits_for_arch(const std::string& arch) {
  ct::gpu::DeviceLimits lim;
  if (const std::string why = arch_refusal(arch); !why.empty()) fail("--compile-only " + why);
  const int cc = *arch_capability(arch);  // sm_100a: 100, compute capability 10.0
  lim.sm_major = cc / 10;
  lim.sm_minor = cc % 10;
  return lim;
}

// ptxas's resource lines of one set's log ("Compiling entry function 'k' for 'sm_90a'", then
// "N bytes stack frame, S bytes spill stores, L bytes spill loads" and "Used R registers, ..."),
// one row a kernel: set, kernel, registers, frame, spill stores, spill loads.
struct PtxasRow {
  std::string set, kernel;
  int regs = -1, frame = 0, spill_st = 0, spill_ld = 0;
};
std::vector<PtxasRow> ptxas_rows(const std::string& set, const std::string& log) {
  std::vector<PtxasRow> rows;
  std::string props;  // the function of the last "Function properties for F" line (a device
                      // function's block may come between an entry's lines)
  std::istringstream in(log);
  for (std::string line; std::getline(in, line);) {
    auto number_before = [&](const std::string& what) {
      const auto at = line.find(what);
      if (at == std::string::npos) return -1;
      auto b = line.rfind(' ', at - 1);
      return std::atoi(line.c_str() + (b == std::string::npos ? 0 : b + 1));
    };
    if (const auto at = line.find("Compiling entry function '"); at != std::string::npos) {
      const auto from = at + 26, to = line.find('\'', from);
      rows.push_back({set, line.substr(from, to == std::string::npos ? std::string::npos : to - from)});
    } else if (const auto p = line.find("Function properties for "); p != std::string::npos) {
      props = line.substr(p + 24);
      while (!props.empty() && (props.back() == ' ' || props.back() == '\r')) props.pop_back();
    } else if (!rows.empty() && props == rows.back().kernel && line.find("bytes stack frame") != std::string::npos) {
      rows.back().frame = number_before(" bytes stack frame");
      rows.back().spill_st = number_before(" bytes spill stores");
      rows.back().spill_ld = number_before(" bytes spill loads");
    } else if (!rows.empty() && line.find("Used ") != std::string::npos) {
      const auto at = line.find("Used ");
      rows.back().regs = std::atoi(line.c_str() + at + 5);
    }
  }
  return rows;
}

// Compiles the sets, the router/repack set and the harness's own kernels into the JIT cache;
// `ptxas_report`: with ptxas's resource report, each kernel's line printed (ptxas_rows).
int compile_sets(const std::map<std::string, ct::gpu::KernelSetSource>& sets, const std::string& arch,
                 std::ostream& out, bool ptxas_report = false) {
  std::vector<ct::gpu::KernelSetSource> list{ct::gpu::utility_source(), BenchKernels::source()};
  for (const auto& [_, k] : sets) list.push_back(k);
  const auto cubins = nvrtc_build_all(list, arch, std::max(1u, std::thread::hardware_concurrency()),
                                      ptxas_report ? std::vector<std::string>{"--ptxas-options=-v"}
                                                   : std::vector<std::string>{});
  double ms = 0;
  for (const auto& c : cubins) ms += c.milliseconds;
  out << "compiled " << list.size() << " kernel sets for " << arch << " (" << fmt(ms / 1e3, 1) << " s of NVRTC)\n";
  if (!ptxas_report) return 0;
  int kernels = 0, spilling = 0, no_log = 0;
  for (std::size_t i = 0; i < list.size(); ++i) {
    const auto rows = ptxas_rows(list[i].name, cubins[i].log);
    if (rows.empty()) ++no_log;  // read from the JIT cache, which keeps no log
    for (const auto& r : rows) {
      ++kernels;
      spilling += r.spill_st + r.spill_ld > 0 ? 1 : 0;
      out << r.set << " " << r.kernel << ": " << r.regs << " registers, " << r.frame << " bytes stack frame, "
          << r.spill_st << " / " << r.spill_ld << " bytes spill stores / loads"
          << (r.spill_st + r.spill_ld > 0 ? "  SPILLS" : "") << "\n";
    }
  }
  out << "ptxas: " << kernels << " kernels, " << spilling << " spill";
  if (no_log > 0) out << "; " << no_log << " sets came from the JIT cache without a log (use an empty MOEQ_CACHE_DIR)";
  out << "\n";
  return 0;
}

}  // namespace

int compile_only(const BenchOptions& opt, const std::string& arch, std::ostream& out) {
  const Selection sel = select(opt);
  const ct::gpu::DeviceLimits lim = limits_for_arch(arch);
  std::map<std::string, ct::gpu::KernelSetSource> sets;
  auto add_plan = [&](const MoePlan& plan) {
    for (auto& k : plan.sources()) sets.emplace(k.source, k);
  };
  auto add = [&](const ct::gpu::GpuScheme& sc, const LayerDims& d, int64_t max_m) { add_plan(MoePlan(sc, d, max_m, lim)); };
  // Each check's plan as it runs it (its own tiles, ping-pong, 224 wide, ..., where this arch
  // takes them).
  std::string why;
  for (const auto& k : sel.checks) add_plan(check_plan(k, lim, why));
  const int64_t max_m = *std::max_element(opt.ms.begin(), opt.ms.end());
  if (opt.time)
    for (const auto& sh : sel.shapes)
      for (const auto& s : sel.schemes) add(s.scheme, LayerDims{sh.experts, 0, sh.hidden, sh.inter, sh.top_k}, max_m);
  return compile_sets(sets, arch, out, opt.ptxas_report);
}

std::vector<ct::gpu::DeviceLimits> arch_cards(const std::string& arch) {
  const int cc = arch_capability(arch).value_or(0);  // sm_100a: 100, compute capability 10.0
  // The shared memory a block may opt in to: 227 KiB on sm_90, 99 KiB on sm_89 (and sm_86,
  // whose cards run the sm_80 kernels' tiles), 163 KiB on sm_80.
  const std::vector<int> smem = cc >= 90 ? std::vector<int>{227 * 1024}
                                : cc == 89 ? std::vector<int>{99 * 1024}
                                           : std::vector<int>{163 * 1024, 99 * 1024};
  std::vector<ct::gpu::DeviceLimits> out;
  for (const int bytes : smem)
    for (int sms = 8; sms <= 160; ++sms) {  // every SM count of a card up to 160
      ct::gpu::DeviceLimits lim;
      lim.sm_major = cc / 10;
      lim.sm_minor = cc % 10;
      lim.multiprocessors = sms;
      lim.max_smem_per_block = bytes;
      out.push_back(lim);
    }
  return out;
}

std::vector<ct::gpu::KernelSetSource> kernel_variants(const std::string& arch, const std::vector<ShapeSpec>& geometries) {
  const std::vector<ct::gpu::DeviceLimits> cards = arch_cards(arch);
  ct::gpu::DeviceLimits lim = cards.front();  // an H100's SM count where one card stands for all
  lim.multiprocessors = 132;
  const int cc = lim.sm_major * 10 + lim.sm_minor;
  const bool fp8 = cc >= 89;
  std::vector<SchemeSpec> schemes;
  for (const auto& s : named_schemes())
    if (fp8 || s.scheme.kind != mk::kKindFp8) schemes.push_back(s);
  if (fp8)  // refined block grids: the periods a TP shard's I can leave (gcd(I, 128))
    for (const auto& [n, k] : {std::pair{64, 64}, {32, 32}, {48, 16}})
      schemes.push_back(with_blocks(*scheme_by_name("fp8-block"), n, k));
  std::vector<LayerDims> shapes;
  for (const ShapeSpec& g : named_shapes()) shapes.push_back({g.experts, 0, g.hidden, g.inter, g.top_k});
  for (const ShapeSpec& g : geometries) shapes.push_back({g.experts, 0, g.hidden, g.inter, g.top_k});
  std::map<std::string, ct::gpu::KernelSetSource> sets;
  // A plan's programs with fp8 accumulated both ways (MOEQ_CT_FP8_FAST_ACCUM=0 selects the other).
  auto add_both = [&](MoePlan& plan) {
    for (auto& k : plan.sources()) sets.emplace(k.source, k);
    plan.set_fp8_fast_acc(false);
    for (auto& k : plan.sources()) sets.emplace(k.source, k);
  };
  for (const ct::gpu::DeviceLimits& card : cards)
    for (const auto& s : schemes)
      for (const auto& d : shapes) {
        MoePlan plan(s.scheme, d, 8192, card);
        add_both(plan);
      }
  // Tiles the heuristics do not take but the tuner may (sm_90a), on Mixtral's geometry where the
  // scheme runs them: ping-pong 128 and 256 wide (or MOEQ_CT_WS_PINGPONG), 224 wide (or
  // MOEQ_CT_WS_BN224).
  const LayerDims& mixtral = shapes.front();
  auto add_tile = [&](const SchemeSpec& s, int bm, const ct::gpu::GemmTile& t) {
    const ct::gpu::HeuristicInput in = MoePlan(s.scheme, mixtral, 8192, lim).heuristic_input();
    if (!ct::gpu::tile_refusal(in, bm, t, true).empty() || !ct::gpu::tile_refusal(in, bm, t, false).empty()) return;
    MoePlan plan(s.scheme, mixtral, 8192, lim, {ct::gpu::Bucket{8192, bm, t, t}});
    add_both(plan);
  };
  if (lim.sm_major == 9)
    for (const auto& s : schemes) {
      for (const int bn : {128, 256}) {
        ct::gpu::GemmTile pp{bn, 1, 4, bn == 256 ? 5 : 8};
        pp.wgmma = pp.ws = pp.pingpong = true;
        add_tile(s, 64, pp);
      }
      ct::gpu::GemmTile wide{224, 2, 4, 5};
      wide.wgmma = wide.ws = true;
      add_tile(s, 128, wide);
    }
  // The measuring variants of a plan's kernels: two-block clusters sharing the weight tile
  // (sm_90a, MOEQ_CT_WS_MULTICAST) on the warp-specialized tiles the heuristics take at M = 1024
  // and 8192, scales loaded one K tile ahead (MOEQ_CT_SCALE_PREFETCH) on the promoted mma.sync
  // GEMMs of the decode and small-M plans (the other schemes' programs do not change), and those
  // plans' mma.sync GEMMs with cp.async B tiles (sm_90a, MOEQ_CT_MMA_TMA_B=0).
  for (const auto& s : schemes) {
    if (lim.sm_major == 9)
      for (const int64_t m : {1024, 8192}) {
        MoePlan plan(s.scheme, mixtral, m, lim);
        plan.set_ws_multicast(true);
        for (auto& k : plan.sources()) sets.emplace(k.source, k);
      }
    if (fp8)
      for (const int64_t m : {1, 16, 128}) {
        MoePlan plan(s.scheme, mixtral, m, lim);
        plan.set_scale_prefetch(true);
        for (auto& k : plan.sources()) sets.emplace(k.source, k);
      }
    if (lim.sm_major == 9)
      for (const int64_t m : {1, 16, 128}) {
        MoePlan plan(s.scheme, mixtral, m, lim);
        plan.set_mma_tma_b(false);
        for (auto& k : plan.sources()) sets.emplace(k.source, k);
      }
  }
  // The tiles the shipped tune tables choose for this arch, on their shapes.
  for (const ct::gpu::TunedEntry& e : ct::gpu::tune_entries()) {
    const std::optional<ct::gpu::GpuScheme> sc = ct::gpu::GpuScheme::from_key(e.scheme);
    if (e.arch != "sm_" + std::to_string(cc) || !sc || (sc->kind == mk::kKindFp8 && !fp8)) continue;
    ct::gpu::DeviceLimits l = lim;
    l.multiprocessors = e.multiprocessors;
    for (auto& k : MoePlan(*sc, LayerDims{e.experts, 0, e.hidden, e.inter, e.top_k}, 8192, l).sources())
      sets.emplace(k.source, k);
  }
  std::vector<ct::gpu::KernelSetSource> out{ct::gpu::utility_source()};
  for (auto& [_, k] : sets) out.push_back(k);
  return out;
}

bool check_scheme(const std::string& scheme, std::ostream& out, uint64_t seed) {
  auto spec = scheme_by_name(scheme);
  if (!spec) fail("check_scheme: unknown scheme '" + scheme + "'");
  Driver& d = Driver::open();
  Ctx c{d, d.stream(), BenchKernels(d), ModuleCache(d), nullptr, out};
  c.utility = d.load(nvrtc_build(ct::gpu::utility_source(), d.arch()).image);
  std::vector<SchemeSpec> specs = {*spec};
  if (spec->scheme.wscale == mk::kWBlock) {
    specs.push_back(with_blocks(*spec, 64, 64));
    specs.push_back(with_blocks(*spec, 48, 16));
  }
  bool ok = true;
  for (const auto& s : specs) {
    for (const CheckCase& k : synthetic_checks(s, {1, 64, 300, 2000})) ok = run_check(c, k, ++seed) && ok;
  }
  return ok;
}

namespace {

// ------------------------------------------------------------------ tuning

// Median µs of each GEMM and of the whole sequence over `iters` runs, each after an L2 flush,
// with an event after every kernel (not a graph: the GEMMs are timed apart).
struct StageTimes {
  double gemm1 = 0, gemm2 = 0, total = 0;
};

struct TuneRig {
  Ctx& c;
  DeviceLayer& layer;
  DeviceBuffer& ws;
  DeviceBuffer& flush;
  ct::gpu::RunIo io;
  Event e0, e1;
  std::vector<Event> pool;

  StageTimes stages(const MoeRunner& runner, int iters) {
    std::vector<double> g1, g2, all;
    for (int i = 0; i < iters + 1; ++i) {
      c.d.memset_async(flush.get(), 0, flush.bytes(), c.s);
      c.d.record(e0, c.s);
      std::vector<std::pair<std::string, Event>> marks;
      size_t used = 0;
      runner.run(io, layer.weights(), reinterpret_cast<void*>(ws.get()), c.s, [&](const char* name) {
        if (used == pool.size()) pool.push_back(c.d.event());
        c.d.record(pool[used], c.s);
        marks.emplace_back(name, pool[used++]);
      });
      if (i == 0) continue;  // warm-up
      Event prev = e0;
      double a = 0, b = 0;
      for (const auto& [name, ev] : marks) {
        const double us = static_cast<double>(c.d.elapsed_ms(prev, ev)) * 1e3;
        if (name == "moe_gemm1") a += us;
        if (name == "moe_gemm2") b += us;
        prev = ev;
      }
      g1.push_back(a);
      g2.push_back(b);
      all.push_back(static_cast<double>(c.d.elapsed_ms(e0, prev)) * 1e3);
    }
    return {median(g1), median(g2), median(all)};
  }

  // Median µs of CUDA-graph replays of the whole sequence, each after an L2 flush.
  double graph(const MoeRunner& runner, int iters) {
    c.d.begin_capture(c.s);
    runner.run(io, layer.weights(), reinterpret_cast<void*>(ws.get()), c.s);
    GraphExec g = c.d.end_capture(c.s);
    std::vector<double> t;
    for (int i = 0; i < iters + 2; ++i) {
      c.d.memset_async(flush.get(), 0, flush.bytes(), c.s);
      c.d.record(e0, c.s);
      c.d.graph_launch(g, c.s);
      c.d.record(e1, c.s);
      const double us = static_cast<double>(c.d.elapsed_ms(e0, e1)) * 1e3;
      if (i >= 2) t.push_back(us);
    }
    c.d.graph_destroy(g);
    return median(t);
  }

  std::vector<float> output(const MoeRunner& runner, DeviceBuffer& out32) {
    ct::gpu::RunIo o = io;
    o.out = reinterpret_cast<void*>(out32.get());
    o.out_dtype = mk::kOutF32;
    runner.run(o, layer.weights(), reinterpret_cast<void*>(ws.get()), c.s);
    std::vector<float> v(static_cast<size_t>(io.m * io.out_stride));
    c.d.sync(c.s);
    c.d.download(v.data(), out32.get(), v.size() * 4);
    return v;
  }
};

std::string bucket_text(const ct::gpu::Bucket& b) {
  return "bm " + std::to_string(b.bm) + ", gemm1 " + ct::gpu::tile_text(b.gemm1) + ", gemm2 " + ct::gpu::tile_text(b.gemm2);
}

// Tunes one (shape, scheme) at every M of the options: round one times every candidate
// bucket's GEMMs apart; round two joins, per row tile, the fastest GEMM1 with the fastest
// GEMM2 and times those, the heuristic's and round one's three fastest as CUDA graphs. The
// fastest graph wins if its output stays within 2e-2 (relative L2) of the heuristic's.
void tune_shape_scheme(Ctx& c, const ShapeSpec& shape, const SchemeSpec& spec, const BenchOptions& opt,
                       std::vector<ct::gpu::TunedEntry>& entries) {
  using ct::gpu::Bucket;
  LayerDims d{shape.experts, 0, shape.hidden, shape.inter, shape.top_k};
  const int64_t max_m = *std::max_element(opt.ms.begin(), opt.ms.end());
  DeviceLayer layer(c.fill, c.d, spec, d, opt.seed, c.s);
  layer.repack(c.utility, c.s);
  const ct::gpu::DeviceLimits lim = limits(c.d);
  ct::gpu::HeuristicInput hin = MoePlan(spec.scheme, d, max_m, lim).heuristic_input();
  hin.tuned = nullptr;  // candidates around the heuristics' choice, not a table's
  // One workspace for every candidate: the largest any of them lays out.
  std::map<int64_t, std::vector<Bucket>> cands;
  size_t ws_bytes = 0;
  for (int64_t m : opt.ms) {
    hin.max_tokens = m;
    cands[m] = ct::gpu::tile_candidates(hin, m);
    for (const Bucket& b : cands[m]) ws_bytes = std::max(ws_bytes, MoePlan(spec.scheme, d, m, lim, {b}).workspace_bytes());
  }
  DeviceBuffer ws(ws_bytes), x(static_cast<size_t>(max_m * d.hidden) * 2), ids(static_cast<size_t>(max_m * d.top_k) * 4),
      tw(static_cast<size_t>(max_m * d.top_k) * 4), out(static_cast<size_t>(max_m * d.hidden) * 2),
      out32(static_cast<size_t>(max_m * d.hidden) * 4);
  DeviceBuffer flush(std::max<size_t>(static_cast<size_t>(c.d.info().l2_bytes) * 2, size_t{128} << 20));
  c.fill.fill(x.get(), max_m * d.hidden, FillType::kBf16, opt.seed + 7, 1.0f, 0.0f, c.s);
  const HostRouting r = random_routing(max_m, d.top_k, shape.experts, opt.seed + 8);
  c.d.upload(ids.get(), r.ids.data(), r.ids.size() * 4);
  c.d.upload(tw.get(), r.weights.data(), r.weights.size() * 4);
  TuneRig rig{c, layer, ws, flush, {}, c.d.event(), c.d.event(), {}};
  rig.io.x = reinterpret_cast<const void*>(x.get());
  rig.io.x_stride = d.hidden;
  rig.io.topk_ids = ids.as<const int32_t>();
  rig.io.topk_weights = tw.as<const float>();
  rig.io.out = reinterpret_cast<void*>(out.get());
  rig.io.out_stride = d.hidden;
  rig.io.out_dtype = mk::kOutBf16;

  for (int64_t m : opt.ms) {
    rig.io.m = m;
    std::vector<Bucket> cs;
    auto plan_of = [&](const Bucket& b) { return MoePlan(spec.scheme, d, m, lim, {b}); };
    std::vector<MoePlan> plans;
    std::vector<ct::gpu::KernelSetSource> sources;
    for (const Bucket& b : cands[m])
      for (auto& k : plan_of(b).sources()) sources.push_back(k);
    // One batch (the JIT compiles the missing sets in parallel); if one fails, each alone, and
    // a candidate whose kernels do not compile is left out with the reason.
    bool batch_ok = true;
    try {
      c.modules.get(sources);
    } catch (const std::exception&) {
      batch_ok = false;
    }
    for (const Bucket& b : cands[m]) {
      MoePlan p = plan_of(b);
      if (!batch_ok) {
        try {
          c.modules.get(p.sources());
        } catch (const std::exception& e) {
          c.out << "  " << shape.name << " " << spec.name << " M=" << m << ": candidate " << bucket_text(b)
                << " left out: " << std::string(e.what()).substr(0, 300) << "\n";
          if (cs.empty()) throw;  // the heuristic's own kernels must compile
          continue;
        }
      }
      cs.push_back(b);
      plans.push_back(std::move(p));
    }
    // Round one.
    std::vector<StageTimes> st(cs.size());
    int iters = 3;
    for (size_t i = 0; i < cs.size(); ++i) {
      MoeRunner runner(plans[i], c.modules.get(plans[i].sources()));
      if (i == 0) {
        const double first = rig.stages(runner, 1).total;
        iters = static_cast<int>(std::clamp(opt.seconds_per_case * 1e6 / std::max(first, 1.0) /
                                                static_cast<double>(cs.size() + 4), 3.0, 15.0));
      }
      st[i] = rig.stages(runner, iters);
    }
    // Round two.
    std::vector<Bucket> finalists = {cs[0]};
    auto add = [&](const Bucket& b) {
      for (const Bucket& f : finalists)
        if (ct::gpu::same_tiles(f, b)) return;
      finalists.push_back(b);
    };
    std::map<int, std::pair<size_t, size_t>> best;  // bm -> (fastest gemm1, fastest gemm2) candidate
    for (size_t i = 0; i < cs.size(); ++i) {
      auto it = best.find(cs[i].bm);
      if (it == best.end()) {
        best[cs[i].bm] = {i, i};
        continue;
      }
      if (st[i].gemm1 < st[it->second.first].gemm1) it->second.first = i;
      if (st[i].gemm2 < st[it->second.second].gemm2) it->second.second = i;
    }
    for (const auto& [bm, p] : best) add(Bucket{m, bm, cs[p.first].gemm1, cs[p.second].gemm2});
    std::vector<size_t> order(cs.size());
    std::iota(order.begin(), order.end(), size_t{0});
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return st[a].total < st[b].total; });
    for (size_t i = 0; i < std::min<size_t>(3, order.size()); ++i) add(cs[order[i]]);
    std::vector<MoePlan> fplans;
    sources.clear();
    for (const Bucket& b : finalists) {
      fplans.push_back(plan_of(b));
      for (auto& k : fplans.back().sources()) sources.push_back(k);
    }
    c.modules.get(sources);
    std::vector<double> gt(finalists.size());
    for (size_t i = 0; i < finalists.size(); ++i)
      gt[i] = rig.graph(MoeRunner(fplans[i], c.modules.get(fplans[i].sources())), iters);
    size_t win = static_cast<size_t>(std::min_element(gt.begin(), gt.end()) - gt.begin());
    // A finalist replaces the heuristic's tiles only when it is at least 1 % faster: one timing
    // run a finalist moves single decode cases by a few per cent, and a tie decided by that noise
    // shipped slower tiles once (Granite fp8-block M = 1, bench/RESULTS.md, sixteenth session).
    constexpr double kMinGain = 0.01;
    if (win != 0 && !(gt[win] < gt[0] * (1.0 - kMinGain))) {
      c.out << "  " << shape.name << " " << spec.name << " M=" << m << ": " << bucket_text(finalists[win]) << " "
            << fmt(gt[win], 1) << " us is within 1 % of the heuristic's " << fmt(gt[0], 1) << " us; keeping the heuristic\n";
      win = 0;
    }
    double diff = 0;
    if (win != 0) {
      MoeRunner h(fplans[0], c.modules.get(fplans[0].sources()));
      MoeRunner w(fplans[win], c.modules.get(fplans[win].sources()));
      diff = ref::relative_l2(rig.output(w, out32), rig.output(h, out32));
      if (!(diff <= 2e-2)) {
        c.out << "  " << shape.name << " " << spec.name << " M=" << m << ": " << bucket_text(finalists[win])
              << " differs from the heuristic's output by " << diff << " (relative L2); keeping the heuristic\n";
        win = 0;
      }
    }
    ct::gpu::TunedEntry e;
    e.arch = hin.arch;
    e.multiprocessors = lim.multiprocessors;
    e.memory_gib = hin.memory_gib;
    e.scheme = hin.scheme_key;
    e.experts = d.num_experts;
    e.top_k = d.top_k;
    e.hidden = d.hidden;
    e.inter = d.inter;
    e.m = m;
    e.bucket = finalists[win];
    e.us = gt[win];
    e.heuristic_us = gt[0];
    entries.push_back(e);
    c.out << "  " << shape.name << " " << spec.name << " M=" << m << ": " << cs.size() << " candidates, "
          << finalists.size() << " finalists; heuristic " << fmt(gt[0], 1) << " us (" << bucket_text(cs[0]) << "), tuned "
          << fmt(gt[win], 1) << " us (" << bucket_text(finalists[win]) << "), " << fmt(gt[0] / gt[win], 2) << "x"
          << (win != 0 ? ", rel L2 to the heuristic's output " + fmt(diff * 1e3, 2) + "e-3" : "")
          << "; heuristic's stages (events, us): gemm1 " << fmt(st[0].gemm1, 1) << " gemm2 " << fmt(st[0].gemm2, 1)
          << " rest " << fmt(st[0].total - st[0].gemm1 - st[0].gemm2, 1) << "\n";
    c.out.flush();
  }
}

}  // namespace

int run_tune(const BenchOptions& opt, const std::string& table_path, std::ostream& out) {
  std::ostream& log = std::cerr;
  Driver& d = Driver::open();
  Ctx c{d, d.stream(), BenchKernels(d), ModuleCache(d), nullptr, log};
  log << "device: " << d.info().name << ", " << d.arch() << ", " << d.info().multiprocessors << " SMs\n";
  c.utility = d.load(nvrtc_build(ct::gpu::utility_source(), d.arch()).image);
  BenchOptions o = opt;
  o.check = false;
  const Selection sel = select(o);
  std::vector<ct::gpu::TunedEntry> entries;
  int failed = 0;
  // NOTE: the file is rewritten after every (shape, scheme), so a run stopped by a time limit
  // still leaves the cases it finished.
  // NOTE: an existing table at --out is kept: its entries of other cases (device, scheme, shape,
  // M) stay and those this run tunes are replaced, so that a table can be built over several
  // runs (a device call is limited in time). A file that is not a table is an error, not
  // overwritten.
  std::vector<ct::gpu::TunedEntry> kept;
  if (!table_path.empty() && std::ifstream(table_path).good()) {
    std::ostringstream text;
    text << std::ifstream(table_path, std::ios::binary).rdbuf();
    kept = ct::gpu::parse_tune_table(text.str(), "bench tune --out '" + table_path + "'");
    log << "keeping the " << kept.size() << " entries of " << table_path << " that this run does not tune\n";
  }
  auto same_case = [](const ct::gpu::TunedEntry& a, const ct::gpu::TunedEntry& b) {
    return a.arch == b.arch && a.multiprocessors == b.multiprocessors && a.memory_gib == b.memory_gib &&
           a.scheme == b.scheme &&
           a.experts == b.experts && a.top_k == b.top_k && a.hidden == b.hidden && a.inter == b.inter && a.m == b.m;
  };
  auto write = [&] {
    if (table_path.empty()) return;
    std::vector<ct::gpu::TunedEntry> all;
    for (const auto& k : kept)
      if (std::none_of(entries.begin(), entries.end(), [&](const ct::gpu::TunedEntry& e) { return same_case(e, k); }))
        all.push_back(k);
    all.insert(all.end(), entries.begin(), entries.end());
    const std::string tmp = table_path + ".tmp";
    {
      std::ofstream f(tmp, std::ios::binary);
      f << ct::gpu::tune_table_json(all);
      f.close();
      if (!f) fail("bench tune: cannot write '" + tmp + "'");
    }
    if (std::rename(tmp.c_str(), table_path.c_str()) != 0) fail("bench tune: cannot write '" + table_path + "'");
  };
  write();
  for (const auto& sh : sel.shapes)
    for (const auto& s : sel.schemes) {
      try {
        tune_shape_scheme(c, sh, s, opt, entries);
      } catch (const std::exception& e) {
        ++failed;
        log << "  " << sh.name << " " << s.name << ": NOT TUNED: " << e.what() << "\n";
      }
      write();
    }
  if (table_path.empty()) out << ct::gpu::tune_table_json(entries);
  else log << "wrote " << entries.size() << " entries to " << table_path << "\n";
  double lg = 0;
  for (const auto& e : entries) lg += std::log(e.heuristic_us / e.us);
  if (!entries.empty())
    log << "geomean heuristic / tuned over " << entries.size() << " cases: " << fmt(std::exp(lg / entries.size()), 3)
        << "x; JIT " << fmt(c.modules.compile_ms() / 1e3, 1) << " s of NVRTC\n";
  if (failed) log << failed << " (shape, scheme) NOT TUNED (errors above)\n";
  return failed == 0 ? 0 : 1;
}

// Every candidate kernel set `run_tune` would compile for these options on `arch` (an H100's
// SMs and shared memory assumed), into the JIT cache; needs no GPU.
int compile_tune_candidates(const BenchOptions& opt, const std::string& arch, std::ostream& out) {
  BenchOptions o = opt;
  o.check = false;
  const Selection sel = select(o);
  const ct::gpu::DeviceLimits lim = limits_for_arch(arch);
  std::map<std::string, ct::gpu::KernelSetSource> sets;
  for (const auto& sh : sel.shapes)
    for (const auto& s : sel.schemes) {
      const LayerDims d{sh.experts, 0, sh.hidden, sh.inter, sh.top_k};
      for (int64_t m : opt.ms) {
        ct::gpu::HeuristicInput hin = MoePlan(s.scheme, d, m, lim).heuristic_input();
        hin.tuned = nullptr;
        for (const auto& b : ct::gpu::tile_candidates(hin, m))
          for (auto& k : MoePlan(s.scheme, d, m, lim, {b}).sources()) sets.emplace(k.source, k);
      }
    }
  return compile_sets(sets, arch, out, opt.ptxas_report);
}

int run_bench(const BenchOptions& opt, std::ostream& out) {
  // NOTE: with json, stdout carries the one JSON document and nothing else, so a script can
  // parse it; the progress and the tables a person reads go to stderr.
  std::ostream& log = opt.json ? std::cerr : out;
  Driver& d = Driver::open();
  Ctx c{d, d.stream(), BenchKernels(d), ModuleCache(d), nullptr, log};
  log << "device: " << d.info().name << ", " << d.arch() << ", " << d.info().multiprocessors << " SMs, "
      << d.info().total_memory / (1 << 20) << " MiB\n";
  c.utility = d.load(nvrtc_build(ct::gpu::utility_source(), d.arch()).image);
  const Selection sel = select(opt);

  if (opt.floors_only) {
    const Floors fl = measure_floors(d, c.s, c.fill);
    out << "FLOORS " << fl.copy_gbps << "," << fl.fp8_tflops << "," << fl.bf16_tflops << "\n"
        << "copy: cuMemcpyDtoD 1 GiB, read + write; fp8: " << fl.fp8_note << "; bf16: " << fl.bf16_note
        << "; cuBLASLt: " << fl.cublaslt << "\n";
    return fl.fp8_tflops > 0 && fl.bf16_tflops > 0 ? 0 : 1;
  }
  bool routing_ok = true, checks_ok = true;
  if (opt.routing) routing_ok = check_routing(c, opt.seed);
  std::vector<CheckResult> checks(sel.checks.size());
  if (opt.check) {
    log << "-- correctness (synthetic shapes: tails, EP with non-local experts, chunking; real shapes at M=4)\n";
    uint64_t seed = opt.seed;
    for (size_t i = 0; i < sel.checks.size(); ++i) {
      // NOTE: a geometry the kernels refuse or the card cannot hold fails its own check and the
      // run goes on, so that the other cases' results still come out.
      try {
        checks_ok = run_check(c, sel.checks[i], ++seed, &checks[i]) && checks_ok;
      } catch (const std::exception& e) {
        checks[i].error = e.what();
        checks_ok = false;
        log << "FAIL " << sel.checks[i].label << " " << sel.checks[i].spec.name << ": " << e.what() << "\n";
      }
    }
  }
  const bool ok = routing_ok && checks_ok;
  struct Failed {
    std::string shape, scheme, error;
  };
  std::vector<Failed> failed;
  Floors fl;
  std::vector<Row> rows;
  if (opt.time) {
    log << "-- floors\n";
    if (opt.given_copy_gbps > 0) {
      fl.copy_gbps = opt.given_copy_gbps;
      fl.fp8_tflops = opt.given_fp8_tflops;
      fl.bf16_tflops = opt.given_bf16_tflops;
      fl.fp8_note = "cuBLASLt e4m3 TN 8192^3, measured by an earlier process of this run";
      fl.bf16_note = "cuBLASLt bf16 TN 8192^3, measured by an earlier process of this run";
    } else {
      fl = measure_floors(d, c.s, c.fill);
    }
    log << "copy " << fmt(fl.copy_gbps, 0) << " GB/s; fp8 " << fmt(fl.fp8_tflops, 0) << " TFLOP/s (" << fl.fp8_note
        << "); bf16 " << fmt(fl.bf16_tflops, 0) << " TFLOP/s (" << fl.bf16_note << ")\n-- timing\n";
    for (const auto& sh : sel.shapes)
      for (const auto& s : sel.schemes) {
        try {
          auto r = time_shape_scheme(c, sh, s, opt.ms, fl, opt);
          rows.insert(rows.end(), r.begin(), r.end());
        } catch (const std::exception& e) {
          failed.push_back({sh.name, s.name, e.what()});
          log << "  " << sh.name << " " << s.name << ": NOT TIMED: " << e.what() << "\n";
        }
      }
    std::ostringstream table;
    print_table(table, rows, fl, d, opt.ms);
    log << table.str();
    if (!opt.markdown.empty()) std::ofstream(opt.markdown) << table.str();
  }
  log << "JIT: " << fmt(c.modules.compile_ms() / 1e3, 1) << " s of NVRTC compile time in this run\n";
  log << (ok ? "ALL CHECKS PASSED\n" : "SOME CHECKS FAILED\n");
  if (!failed.empty()) log << failed.size() << " (shape, scheme) NOT TIMED (errors above)\n";
  if (opt.json) {
    namespace bj = boost::json;
    const auto measured = [](double v) -> bj::value { return v >= 0 ? bj::value(v) : bj::value(nullptr); };
    bj::array json_checks;
    for (size_t i = 0; i < sel.checks.size() && opt.check; ++i) {
      const CheckCase& k = sel.checks[i];
      const CheckResult& r = checks[i];
      bj::object o{{"label", k.label},
                   {"scheme", k.spec.name},
                   {"E", k.global_experts},
                   {"local_experts", k.dims.num_experts},
                   {"first_expert", k.dims.first_expert},
                   {"top_k", k.dims.top_k},
                   {"H", k.dims.hidden},
                   {"I", k.dims.inter},
                   {"m", k.m},
                   {"chunk", k.chunk},
                   {"passed", r.pass},
                   {"rel_l2", bj::object{{"gemm1", measured(r.err_g1)},
                                         {"gemm2", measured(r.err_g2)},
                                         {"end_to_end", measured(r.err)},
                                         {"bf16_out", measured(r.err16)},
                                         {"core", measured(r.err_core)}}},
                   {"repeatable", r.deterministic},
                   {"graph_identical", r.graph_ok}};
      if (!r.error.empty()) o["error"] = r.error;
      json_checks.push_back(std::move(o));
    }
    // The check of a timed case's own geometry and scheme (M=4, every expert local); null
    // without checks.
    const auto row_check = [&](const Row& row) -> bj::value {
      if (!opt.check) return nullptr;
      bool any = false, pass = true;
      double err = -1;
      for (size_t i = 0; i < sel.checks.size(); ++i) {
        const CheckCase& k = sel.checks[i];
        if (k.label != row.shape || k.spec.name != row.scheme || k.global_experts != row.experts ||
            k.dims.num_experts != row.experts || k.dims.top_k != row.top_k || k.dims.hidden != row.hidden ||
            k.dims.inter != row.inter)
          continue;
        any = true;
        pass = pass && checks[i].pass;
        err = std::max(err, checks[i].err);
      }
      if (!any) return nullptr;
      return bj::object{{"m", 4}, {"passed", pass}, {"rel_l2", measured(err)}};
    };
    bj::array json_rows;
    for (const Row& r : rows) {
      bj::object stages, graph_stages;
      for (const auto& [name, us] : r.stages) stages[name] = us;
      for (const auto& [name, us] : r.stages_graph) graph_stages[name] = us;
      json_rows.push_back(bj::object{{"shape", r.shape},
                                     {"E", r.experts},
                                     {"top_k", r.top_k},
                                     {"H", r.hidden},
                                     {"I", r.inter},
                                     {"scheme", r.scheme},
                                     {"m", r.m},
                                     {"us", r.us_graph},
                                     {"us_no_graph", r.us_stream},
                                     {"stages_us", std::move(stages)},
                                     // --stage-graphs only (else null): each kernel in place
                                     {"stages_graph_us", r.stages_graph.empty() ? bj::value(nullptr)
                                                                                : bj::value(std::move(graph_stages))},
                                     {"bytes", r.bytes},
                                     {"flops", r.flops},
                                     {"floor_us", r.floor_us},
                                     {"time_over_floor", r.ratio()},
                                     {"experts_hit", r.experts_hit},
                                     {"tiles", r.tiles},
                                     {"check", row_check(r)}});
    }
    bj::array json_shapes, json_failed, json_ms, json_schemes;
    for (const ShapeSpec& sh : sel.shapes) {
      const bool given = std::any_of(opt.extra_shapes.begin(), opt.extra_shapes.end(),
                                     [&](const ShapeSpec& x) { return x.name == sh.name; });
      json_shapes.push_back(bj::object{{"name", sh.name},
                                       {"E", sh.experts},
                                       {"top_k", sh.top_k},
                                       {"H", sh.hidden},
                                       {"I", sh.inter},
                                       {"from", given ? "dims" : "shape"}});
    }
    for (const Failed& f : failed)
      json_failed.push_back(bj::object{{"shape", f.shape}, {"scheme", f.scheme}, {"error", f.error}});
    for (int64_t m : opt.ms) json_ms.push_back(m);
    for (const SchemeSpec& sc : sel.schemes) json_schemes.push_back(bj::value(sc.name));
    out << bj::serialize(bj::object{
               {"device", d.info().name},
               {"arch", d.arch()},
               {"floors", bj::object{{"copy_gbps", fl.copy_gbps},
                                     {"fp8_tflops", fl.fp8_tflops},
                                     {"bf16_tflops", fl.bf16_tflops}}},
               {"shapes", std::move(json_shapes)},
               {"schemes", std::move(json_schemes)},
               {"ms", std::move(json_ms)},
               {"seconds_per_case", opt.seconds_per_case},
               {"rows", std::move(json_rows)},
               {"not_timed", std::move(json_failed)},
               {"checks", std::move(json_checks)},
               {"routing_checks_passed", opt.routing ? bj::value(routing_ok) : bj::value(nullptr)},
               // the numerical checks; null under --no-check, where none ran (routing has its own).
               {"checks_passed", opt.check ? bj::value(checks_ok) : bj::value(nullptr)},
               {"ok", ok && failed.empty()}})
        << "\n";
  }
  return ok && failed.empty() ? 0 : 1;
}

}  // namespace moeq::gpu_harness
