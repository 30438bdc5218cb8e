// Real models' MoE geometries (bench/geo_dims.txt, which the device round's `geo` step runs with
// the bench's checks) must plan on every arch the compressed_tensors kernels target, for every
// scheme that arch runs, at decode and at large M, whole and split across ranks. A plan
// that throws here is a checkpoint the GPU path would refuse. CPU only: plans are arithmetic.
#include "geo_dims.hpp"
#include "gpu/moe_runner.hpp"

#include <moeq/error.hpp>

#include <doctest/doctest.h>

#include <numeric>
#include <set>
#include <string>
#include <vector>

#if MOEQ_HAVE_GPU_BENCH
#include "bench.hpp"
#endif

namespace gpu = moeq::ct::gpu;
namespace mk = ::moeq_kernels;

using moeq::test::Geometry;
using moeq::test::read_geometries;

namespace {

struct Arch {
  const char* name;
  gpu::DeviceLimits limits;
  bool fp8;
};

std::vector<Arch> arches() {
  // H100 SXM, L40S, A100 SXM: SMs and the opt-in shared memory of a block.
  return {{"sm_90", gpu::DeviceLimits{9, 0, 132, 227 * 1024, "sm_90a"}, true},
          {"sm_89", gpu::DeviceLimits{8, 9, 142, 99 * 1024, "sm_89"}, true},
          {"sm_80", gpu::DeviceLimits{8, 0, 108, 163 * 1024, "sm_80"}, false}};
}

// The schemes of a layer whose shard has `inter` columns: fp8 block scales of 128 x 128, or,
// where a rank's I is not a multiple of 128, the grid refined to gcd(I, 128) as the loader does.
std::vector<std::pair<std::string, gpu::GpuScheme>> schemes(int64_t inter) {
  using G = gpu::GpuScheme;
  std::vector<std::pair<std::string, G>> s = {
      {"bf16", G{mk::kKindBf16, mk::kWNone, mk::kANone, 128, 128, 0}},
      {"fp8-channel", G{mk::kKindFp8, mk::kWChannel, mk::kAToken, 128, 128, 0}},
      {"fp8-tensor", G{mk::kKindFp8, mk::kWTensor, mk::kATensor, 128, 128, 0}},
      {"fp8-tensor-static", G{mk::kKindFp8, mk::kWTensor, mk::kAStatic, 128, 128, 0}},
      {"w8a16", G{mk::kKindW8A16, mk::kWChannel, mk::kANone, 128, 128, 0}},
  };
  const int period = static_cast<int>(std::gcd<int64_t>(inter, 128));
  s.push_back({"fp8-block-" + std::to_string(period), G{mk::kKindFp8, mk::kWBlock, mk::kAGroup, 128, period, period}});
  return s;
}

}  // namespace

TEST_CASE("plan: real models' geometries plan on sm_90, sm_89 and sm_80, whole, under TP and under EP") {
  const std::vector<Geometry> geos = read_geometries();
  CHECK(geos.size() >= 8);
  int plans = 0;
  for (const Geometry& g : geos) {
    // The layer whole, its I split over two ranks (where each half stays a multiple of 16) and
    // its experts over two ranks (rank 1: the upper half).
    std::vector<std::pair<std::string, gpu::LayerDims>> shards = {
        {"whole", gpu::LayerDims{g.experts, 0, g.hidden, g.inter, g.top_k}}};
    if (g.inter % 32 == 0) shards.push_back({"tp2", gpu::LayerDims{g.experts, 0, g.hidden, g.inter / 2, g.top_k}});
    if (g.experts >= 2)
      shards.push_back({"ep2", gpu::LayerDims{g.experts - g.experts / 2, g.experts / 2, g.hidden, g.inter, g.top_k}});
    for (const auto& [shard, dims] : shards)
      for (const Arch& a : arches())
        for (const auto& [scheme_name, sc] : schemes(dims.inter)) {
          if (sc.kind == mk::kKindFp8 && !a.fp8) continue;
          for (const int64_t max_m : {int64_t{1}, int64_t{8192}}) {
            CAPTURE(g.name);
            CAPTURE(shard);
            CAPTURE(a.name);
            CAPTURE(scheme_name);
            CAPTURE(max_m);
            std::string why;
            try {
              const gpu::MoePlan plan(sc, dims, max_m, a.limits);
              CHECK_FALSE(plan.sources().empty());
              ++plans;
            } catch (const moeq::Error& e) {
              why = e.what();
            }
            CHECK_MESSAGE(why.empty(), "the plan refused: " << why);
          }
        }
  }
  MESSAGE(plans << " plans");
}

#if MOEQ_HAVE_GPU_BENCH
// CI compiles kernel_variants(arch) for each arch ("every compressed_tensors kernel variant
// compiles"); so every kernel set these geometries' plans take, on every card arch_cards lists
// (each SM count to 160, the arch's shared memory), at either fp8 accumulation, must be among
// them, or a real card could meet a set that CI never compiled.
TEST_CASE("plan: every kernel set real models' geometries take on sm_90a, sm_89 and sm_80 cards is one CI compiles") {
  namespace gh = moeq::gpu_harness;
  const std::vector<gh::ShapeSpec> extra = moeq::test::geometry_shards();
  for (const char* arch : {"sm_90a", "sm_89", "sm_80"}) {
    std::set<std::string> compiled;
    for (const auto& k : gh::kernel_variants(arch, extra)) compiled.insert(k.source);
    int64_t sets = 0;
    std::set<std::string> missing;  // "name (SMs, KiB)" of each set not compiled, once
    for (const gpu::DeviceLimits& card : gh::arch_cards(arch)) {
      const bool fp8 = card.sm_major * 10 + card.sm_minor >= 89;
      for (const gh::ShapeSpec& g : extra)
        for (const auto& [scheme_name, sc] : schemes(g.inter)) {
          if (sc.kind == mk::kKindFp8 && !fp8) continue;
          gpu::MoePlan plan(sc, gpu::LayerDims{g.experts, 0, g.hidden, g.inter, g.top_k}, 8192, card);
          for (const bool fast : {true, false}) {
            plan.set_fp8_fast_acc(fast);
            for (const auto& k : plan.sources()) {
              ++sets;
              if (!compiled.count(k.source))
                missing.insert(k.name + " (" + g.name + ", " + std::to_string(card.multiprocessors) + " SMs, " +
                               std::to_string(card.max_smem_per_block / 1024) + " KiB)");
            }
          }
        }
    }
    CAPTURE(arch);
    CHECK_MESSAGE(missing.empty(), missing.size() << " plans took kernel sets that are not among kernel_variants, e.g. "
                                                  << (missing.empty() ? std::string() : *missing.begin()));
    MESSAGE(std::string(arch) << ": " << sets << " kernel sets of the plans, " << compiled.size() << " variants compiled in CI");
  }
}
#endif
