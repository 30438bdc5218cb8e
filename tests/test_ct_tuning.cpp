// The compressed_tensors tile tables (`moeq bench tune`): candidates, the table format, and
// how a plan takes a measured entry over the heuristics. CPU only: plans are pure arithmetic.
#include "ct_support.hpp"
#include "gpu/moe_runner.hpp"
#include "gpu/tune_table.hpp"

#include <moeq/error.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace gpu = moeq::ct::gpu;
namespace mk = ::moeq_kernels;

namespace {

gpu::GpuScheme fp8_channel() {
  gpu::GpuScheme s;
  s.kind = mk::kKindFp8;
  s.wscale = mk::kWChannel;
  s.amode = mk::kAToken;
  return s;
}

gpu::GpuScheme fp8_block() {
  gpu::GpuScheme s = fp8_channel();
  s.wscale = mk::kWBlock;
  s.amode = mk::kAGroup;
  s.act_group = 128;
  s.scale_k = 128;
  s.block_n = 128;
  return s;
}

gpu::GpuScheme bf16_scheme() {
  gpu::GpuScheme s;
  s.kind = mk::kKindBf16;
  s.wscale = mk::kWNone;
  s.amode = mk::kANone;
  return s;
}

gpu::GpuScheme w8a16() {
  gpu::GpuScheme s;
  s.kind = mk::kKindW8A16;
  s.wscale = mk::kWChannel;
  s.amode = mk::kANone;
  return s;
}

gpu::DeviceLimits h100() { return gpu::DeviceLimits{}; }  // sm_90, 132 SMs, 227 KiB

// What the heuristics see for this scheme and shape on an H100, without the shipped tables.
gpu::HeuristicInput untuned(const gpu::GpuScheme& sc, const gpu::LayerDims& d, int64_t max_tokens) {
  gpu::HeuristicInput in = gpu::MoePlan(sc, d, max_tokens, h100()).heuristic_input();
  in.tuned = nullptr;
  return in;
}

std::string entry_json(const std::string& scheme, int64_t m, int bm, const std::string& g1, const std::string& g2,
                       int64_t experts = 128) {
  return "{\"arch\": \"sm_90\", \"sms\": 132, \"scheme\": \"" + scheme + "\", \"experts\": " + std::to_string(experts) +
         ", \"top_k\": 8, \"hidden\": 2048, \"inter\": 768, \"m\": " + std::to_string(m) + ", \"bm\": " +
         std::to_string(bm) + ", \"gemm1\": \"" + g1 + "\", \"gemm2\": \"" + g2 + "\", \"us\": 10.5}";
}

std::string table(const std::string& entries) {
  return "{\"format\": \"moeq-ct-tune/1\", \"entries\": [" + entries + "]}";
}

}  // namespace

TEST_CASE("tune: scheme keys tell apart what the kernels compile differently, and read back") {
  for (const gpu::GpuScheme& sc : {fp8_channel(), fp8_block(), w8a16()}) {
    const std::optional<gpu::GpuScheme> back = gpu::GpuScheme::from_key(sc.key());
    REQUIRE(back.has_value());
    CHECK(back->key() == sc.key());
  }
  CHECK_FALSE(gpu::GpuScheme::from_key("fp8.wchannel").has_value());
  CHECK_FALSE(gpu::GpuScheme::from_key("fp8.wchannel.atoken.x3").has_value());
  CHECK_FALSE(gpu::GpuScheme::from_key("fp9.wchannel.atoken").has_value());
  CHECK(fp8_channel().key() == "fp8.wchannel.atoken");
  CHECK(fp8_block().key() == "fp8.wblock.agroup.g128.k128.bn128");
  gpu::GpuScheme refined = fp8_block();
  refined.scale_k = 16;
  refined.block_n = 16;
  CHECK(refined.key() == "fp8.wblock.agroup.g128.k16.bn16");
  CHECK(w8a16().key() == "w8a16.wchannel.anone");
}

TEST_CASE("tune: the candidates start with the heuristic's bucket, all legal, none twice") {
  gpu::GpuScheme block64 = fp8_block(), refined = fp8_block();
  block64.scale_k = 64;  // a 64x64 grid (TP shards of 64-row blocks)
  block64.block_n = 64;
  refined.scale_k = 16;  // I/tp an odd multiple of 16: 16-element blocks
  refined.block_n = 16;
  const gpu::GpuScheme bf16 = bf16_scheme();
  for (const gpu::GpuScheme& sc : {fp8_channel(), fp8_block(), w8a16(), block64, refined, bf16}) {
    for (int64_t m : {1, 16, 128, 1024, 8192}) {
      CAPTURE(sc.key());
      CAPTURE(m);
      const gpu::HeuristicInput in = untuned(sc, gpu::LayerDims{128, 0, 2048, 768, 8}, m);
      const std::vector<gpu::Bucket> c = gpu::tile_candidates(in, m);
      REQUIRE(c.size() >= 2);
      const gpu::Bucket h = gpu::heuristic_bucket(in, m);
      CHECK(c[0].bm == h.bm);
      CHECK(gpu::tile_text(c[0].gemm1) == gpu::tile_text(h.gemm1));
      CHECK(gpu::tile_text(c[0].gemm2) == gpu::tile_text(h.gemm2));
      std::set<std::string> seen;
      int pingpongs = 0;
      for (const gpu::Bucket& b : c) {
        CHECK(gpu::tile_refusal(in, b.bm, b.gemm1, true).empty());
        CHECK(gpu::tile_refusal(in, b.bm, b.gemm2, false).empty());
        CHECK(seen.insert(std::to_string(b.bm) + gpu::tile_text(b.gemm1) + gpu::tile_text(b.gemm2)).second);
        // W8A16 runs wgmma only warp-specialized (its codes converted by the producer).
        if (sc.kind == mk::kKindW8A16) CHECK(b.gemm1.wgmma == b.gemm1.ws);
        pingpongs += b.gemm1.pingpong ? 1 : 0;
        // Each one plans (MoePlan checks the tiles again) and names its tiles in its sources.
        const gpu::MoePlan p(sc, gpu::LayerDims{128, 0, 2048, 768, 8}, m, h100(), {b});
        REQUIRE(p.buckets().size() == 1);
        CHECK(p.buckets()[0].max_tokens == m);
      }
      // Ping-pong tiles are candidates wherever 64-row warp-specialized ones are, W8A16 aside;
      // asking for them (MOEQ_CT_WS_PINGPONG=1) changes the heuristics' bucket, not that.
      const bool ws64 = std::any_of(c.begin(), c.end(),
                                    [](const gpu::Bucket& b) { return b.bm == 64 && b.gemm1.ws && !b.gemm1.pingpong; });
      CHECK((pingpongs > 0) == (ws64 && sc.kind != mk::kKindW8A16));
      gpu::HeuristicInput asked = in;
      asked.ws_pingpong = true;
      const std::vector<gpu::Bucket> ca = gpu::tile_candidates(asked, m);
      for (const gpu::Bucket& b : ca) {
        CHECK(gpu::tile_refusal(asked, b.bm, b.gemm1, true).empty());
        CHECK(gpu::tile_refusal(asked, b.bm, b.gemm2, false).empty());
      }
    }
  }
}

TEST_CASE("tune: tile refusals name what cannot run") {
  const gpu::MoePlan plan(w8a16(), gpu::LayerDims{8, 0, 4096, 14336, 2}, 64, h100());
  gpu::GemmTile t{256, 1, 4, 4};
  t.wgmma = true;
  CHECK(gpu::tile_refusal(plan.heuristic_input(), 64, t, true).find("W8A16 wgmma tiles are warp-specialized") !=
        std::string::npos);
  t.ws = true;
  t.bn = 128;
  t.stages = 4;
  CHECK(gpu::tile_refusal(plan.heuristic_input(), 64, t, true).empty());
  // Without wgmma (MOEQ_CT_NO_WGMMA, or before sm_90) no wgmma tile runs.
  gpu::HeuristicInput no_wgmma = plan.heuristic_input();
  no_wgmma.wgmma = no_wgmma.ws = false;
  CHECK(gpu::tile_refusal(no_wgmma, 64, t, true).find("no wgmma kernel") != std::string::npos);
  gpu::GemmTile narrow{32, 1, 4, 4};
  CHECK(gpu::tile_refusal(plan.heuristic_input(), 16, narrow, true).find("multiples of 16") != std::string::npos);
  gpu::GemmTile deep{128, 1, 4, 12};
  CHECK(gpu::tile_refusal(plan.heuristic_input(), 128, deep, false).find("shared memory") != std::string::npos);
  // Ping-pong: 64-row tiles of fp8 or bf16, up to 256 wide (one block an SM).
  gpu::GemmTile pp{256, 1, 4, 4};
  pp.wgmma = pp.ws = pp.pingpong = true;
  CHECK(gpu::tile_refusal(plan.heuristic_input(), 64, pp, true).find("ping-pong tiles are warp-specialized, 64 rows of fp8 or bf16") !=
        std::string::npos);  // W8A16
  const gpu::MoePlan fp8(fp8_channel(), gpu::LayerDims{8, 0, 4096, 14336, 2}, 8192, h100());
  CHECK(gpu::tile_refusal(fp8.heuristic_input(), 64, pp, true).empty());
  CHECK(gpu::tile_refusal(fp8.heuristic_input(), 128, pp, true).find("ping-pong") != std::string::npos);
  gpu::GemmTile two = pp;
  two.pingpong = false;  // two blocks an SM of 64 rows: 256 wide does not fit their registers
  CHECK(gpu::tile_refusal(fp8.heuristic_input(), 64, two, true).find("64-row warp-specialized tiles are 128 wide") !=
        std::string::npos);
  // Block scales of 64-row blocks (a 128 x 64 grid): one scale per 64 tile columns, so the
  // warp-specialized tiles take them at either width, ping-pong or not.
  gpu::GpuScheme n64 = fp8_block();
  n64.block_n = 64;
  const gpu::MoePlan blocks64(n64, gpu::LayerDims{8, 0, 4096, 14336, 2}, 8192, h100());
  REQUIRE(blocks64.heuristic_input().ws);
  CHECK(gpu::tile_refusal(blocks64.heuristic_input(), 64, pp, false).empty());
  gpu::GemmTile coop{256, 2, 4, 4};
  coop.wgmma = coop.ws = true;
  CHECK(gpu::tile_refusal(blocks64.heuristic_input(), 128, coop, true).empty());
  gpu::GemmTile mma = pp;
  mma.wgmma = mma.ws = false;
  mma.bn = 128;
  CHECK(gpu::tile_refusal(fp8.heuristic_input(), 64, mma, true).find("ping-pong tiles are warp-specialized, 64 rows") !=
        std::string::npos);
}

TEST_CASE("tune: a table round-trips through its JSON text") {
  gpu::TunedEntry e;
  e.arch = "sm_90";
  e.multiprocessors = 132;
  e.scheme = "fp8.wchannel.atoken";
  e.experts = 128;
  e.top_k = 8;
  e.hidden = 2048;
  e.inter = 768;
  e.m = 16;
  e.bucket.bm = 16;
  e.bucket.gemm1 = gpu::GemmTile{64, 1, 4, 8};
  e.bucket.gemm2 = gpu::GemmTile{128, 1, 4, 3};
  e.us = 42.25;
  e.heuristic_us = 50;
  const auto back = gpu::parse_tune_table(gpu::tune_table_json({e, e}), "round trip");
  REQUIRE(back.size() == 2);
  CHECK(back[1].scheme == e.scheme);
  CHECK(back[1].m == 16);
  CHECK(gpu::tile_text(back[1].bucket.gemm1) == "mma 64 w1x4 s8");
  CHECK(gpu::tile_text(back[1].bucket.gemm2) == "mma 128 w1x4 s3");
  CHECK(back[1].us == doctest::Approx(42.2).epsilon(0.01));
  gpu::GemmTile ws{256, 2, 4, 4};
  ws.wgmma = ws.ws = true;
  CHECK(gpu::tile_text(gpu::parse_tile_text(gpu::tile_text(ws), "x")) == "ws 256 w2x4 s4");
  gpu::GemmTile pp{256, 1, 4, 5};
  pp.wgmma = pp.ws = pp.pingpong = true;
  CHECK(gpu::tile_text(pp) == "ws-pingpong 256 w1x4 s5");
  CHECK(gpu::parse_tile_text("ws-pingpong 256 w1x4 s5", "x") == pp);
  CHECK(pp.threads() == 384);  // a producer and two consumer warpgroups
}

TEST_CASE("tune: malformed tables are refused with the origin, the entry and the field") {
  auto refusal = [](const std::string& text) {
    try {
      gpu::parse_tune_table(text, "t.json");
    } catch (const moeq::Error& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  CHECK(refusal("not json").find("t.json: not JSON") != std::string::npos);
  CHECK(refusal("{\"format\": \"other/1\", \"entries\": []}").find("\"format\"") != std::string::npos);
  CHECK(refusal("{\"format\": \"moeq-ct-tune/1\"}").find("\"entries\"") != std::string::npos);
  const std::string good = entry_json("fp8.wchannel.atoken", 16, 16, "mma 64 w1x4 s8", "mma 64 w1x4 s8");
  CHECK(refusal(table(good)) == "accepted");
  std::string bad = good;
  bad.replace(bad.find("\"bm\": 16"), 8, "\"bm\": 24");
  CHECK(refusal(table(good + "," + bad)).find("entry 1: \"bm\" must be 16, 32, 64 or 128, found 24") != std::string::npos);
  bad = entry_json("fp8.wchannel.atoken", 16, 16, "mma 64 w1x4", "mma 64 w1x4 s8");
  CHECK(refusal(table(bad)).find("entry 0 gemm1: a tile is") != std::string::npos);
  bad = entry_json("fp8.wchannel.atoken", 16, 16, "tma 64 w1x4 s8", "mma 64 w1x4 s8");
  CHECK(refusal(table(bad)).find("\"tma 64 w1x4 s8\"") != std::string::npos);
  bad = good;
  bad.replace(bad.find("\"m\": 16"), 7, "\"m\": -3");
  CHECK(refusal(table(bad)).find("\"m\" must be positive") != std::string::npos);
  bad = entry_json("fp8.wchannel.atoken", 16, 16, "ws 128 w1x4 s4", "mma 64 w1x4 s8");
  CHECK(refusal(table(bad)).find("wgmma tiles need bm of 64 or 128") != std::string::npos);
}

TEST_CASE("tune: a plan takes the entry nearest its M, and the heuristics where none matches") {
  const auto entries = gpu::parse_tune_table(
      table(entry_json("fp8.wchannel.atoken", 1, 16, "mma 64 w1x4 s8", "mma 128 w1x4 s3") + "," +
            entry_json("fp8.wchannel.atoken", 1024, 64, "mma 128 w2x4 s3", "ws 128 w1x4 s6")),
      "test");
  gpu::MoePlan plain(fp8_channel(), gpu::LayerDims{128, 0, 2048, 768, 8}, 8192, h100());
  gpu::HeuristicInput in = plain.heuristic_input();
  in.tuned = &entries;
  gpu::Bucket b;
  REQUIRE(gpu::tuned_bucket(in, 1, b));
  CHECK(gpu::tile_text(b.gemm1) == "mma 64 w1x4 s8");
  REQUIRE(gpu::tuned_bucket(in, 16, b));  // 4 doublings from 1, 6 from 1024
  CHECK(b.bm == 16);
  REQUIRE(gpu::tuned_bucket(in, 32, b));  // 5 and 5: the smaller M
  CHECK(b.bm == 16);
  REQUIRE(gpu::tuned_bucket(in, 64, b));
  CHECK(b.bm == 64);
  CHECK(gpu::tile_text(b.gemm2) == "ws 128 w1x4 s6");
  REQUIRE(gpu::tuned_bucket(in, 8192, b));
  CHECK(b.bm == 64);
  // choose_buckets: the walk over M takes the entries; consecutive equal buckets merge.
  in.max_tokens = 8192;
  const std::vector<gpu::Bucket> buckets = gpu::choose_buckets(in);
  REQUIRE(buckets.size() == 2);
  CHECK(buckets[0].max_tokens == 32);
  CHECK(buckets[1].max_tokens == 8192);
  // Another shape, scheme, arch or SM count: no entry applies.
  for (int variant = 0; variant < 4; ++variant) {
    gpu::HeuristicInput other = in;
    if (variant == 0) other.hidden = 4096;
    if (variant == 1) other.scheme_key = fp8_block().key();
    if (variant == 2) other.arch = "sm_89";
    if (variant == 3) other.multiprocessors = 114;
    CHECK_FALSE(gpu::tuned_bucket(other, 16, b));
  }
  // An entry whose tiles this device cannot run is an error naming it, not skipped.
  gpu::HeuristicInput small = in;
  small.max_smem_per_block = 100 * 1024;
  CHECK_THROWS_WITH_AS(gpu::tuned_bucket(small, 1024, b),
                       doctest::Contains("tune table entry (sm_90, fp8.wchannel.atoken, E=128 top_k=8 H=2048 I=768, M=1024)"),
                       moeq::Error);
}

TEST_CASE("tune: an entry of this card's memory wins a tie in M, another card's applies where nothing nearer does") {
  // Cards of one arch and SM count: an H100 (80 GiB), an H200 (140 GiB) and a third of 94 GiB.
  auto with_memory = [](std::string e, const std::string& gib) {
    const std::string sms = "\"sms\": 132";
    return e.replace(e.find(sms), sms.size(), sms + ", \"memory_gib\": " + gib);
  };
  const std::string generic = entry_json("fp8.wchannel.atoken", 16, 16, "mma 128 w1x4 s6", "mma 128 w1x4 s6");
  const std::string h100_16 = with_memory(entry_json("fp8.wchannel.atoken", 16, 16, "mma 64 w1x4 s3", "mma 64 w1x4 s3"), "80");
  const std::string h200_16 = with_memory(entry_json("fp8.wchannel.atoken", 16, 16, "mma 32 w1x2 s5", "mma 32 w1x2 s5"), "140");
  const std::string h100_1024 =
      with_memory(entry_json("fp8.wchannel.atoken", 1024, 64, "ws 128 w1x4 s4", "ws 128 w1x4 s4"), "80");
  const auto entries = gpu::parse_tune_table(table(generic + "," + h100_16 + "," + h200_16 + "," + h100_1024), "test");
  REQUIRE(entries.size() == 4);
  CHECK(entries[0].memory_gib == 0);
  CHECK(entries[1].memory_gib == 80);
  CHECK(entries[2].memory_gib == 140);
  // The text form keeps the field where it is set, and only there.
  const std::string text = gpu::tune_table_json(entries);
  CHECK(text.find("\"memory_gib\": 140") != std::string::npos);
  const auto back = gpu::parse_tune_table(text, "round trip");
  REQUIRE(back.size() == 4);
  CHECK(back[0].memory_gib == 0);
  CHECK(back[2].memory_gib == 140);

  auto pick = [&](int64_t memory_bytes, int64_t m, const std::vector<gpu::TunedEntry>& table_entries) {
    gpu::DeviceLimits lim = h100();
    lim.memory_bytes = memory_bytes;
    gpu::HeuristicInput in = gpu::MoePlan(fp8_channel(), gpu::LayerDims{128, 0, 2048, 768, 8}, 8192, lim).heuristic_input();
    in.tuned = &table_entries;
    gpu::Bucket b;
    REQUIRE(gpu::tuned_bucket(in, m, b));
    return gpu::tile_text(b.gemm1);
  };
  // cuDeviceTotalMem of an H100 80GB HBM3 and an H200: 81,559 and 143,771 MiB.
  const int64_t h100 = 81559LL << 20, h200 = 143771LL << 20, third = 95830LL << 20;
  CHECK(gpu::memory_gib(h100) == 80);
  CHECK(gpu::memory_gib(h200) == 140);
  CHECK(gpu::memory_gib(third) == 94);
  CHECK(gpu::memory_gib(0) == 0);
  // At M = 16 the three entries are equally near: the card's own wins.
  CHECK(pick(h100, 16, entries) == "mma 64 w1x4 s3");
  CHECK(pick(h200, 16, entries) == "mma 32 w1x2 s5");
  // A card no entry records, or an unknown one: the entry that records no card first.
  CHECK(pick(third, 16, entries) == "mma 128 w1x4 s6");
  CHECK(pick(0, 16, entries) == "mma 128 w1x4 s6");
  // Nearer in M wins whatever the card: at M = 1024 the H100's entry applies on the H200 too.
  CHECK(pick(h200, 1024, entries) == "ws 128 w1x4 s4");
  // Without the entry that records no card, another card's still applies.
  const auto only_h100 = gpu::parse_tune_table(table(h100_16), "test");
  CHECK(pick(h200, 16, only_h100) == "mma 64 w1x4 s3");
  // A malformed field is refused, naming it.
  for (const char* bad : {"0", "-4", "\"80\"", "70000"}) {
    CAPTURE(bad);
    CHECK_THROWS_WITH_AS(gpu::parse_tune_table(table(with_memory(generic, bad)), "t.json"),
                         doctest::Contains("entry 0: \"memory_gib\""), moeq::Error);
  }
}

TEST_CASE("tune: every shipped table parses and its tiles plan on the device they were measured on") {
  const auto& shipped = gpu::tune_entries();  // MOEQ_CT_TUNE_TABLE unset in the suite
  for (const gpu::EmbeddedTable& t : gpu::embedded_tune_tables()) {
    CAPTURE(t.name);
    for (const gpu::TunedEntry& e : gpu::parse_tune_table(t.text, t.name)) {
      CAPTURE(e.scheme);
      CAPTURE(e.m);
      gpu::DeviceLimits lim = h100();
      lim.sm_major = std::stoi(e.arch.substr(3)) / 10;
      lim.sm_minor = std::stoi(e.arch.substr(3)) % 10;
      lim.multiprocessors = e.multiprocessors;
      // An entry that records its card's memory plans there (and wins over one that records none).
      if (e.memory_gib > 0) lim.memory_bytes = static_cast<int64_t>(e.memory_gib) << 30;
      CHECK(e.us > 0);
      CHECK(e.us <= e.heuristic_us * 1.0001);  // tune keeps the heuristic unless something beat it
      const std::optional<gpu::GpuScheme> sc = gpu::GpuScheme::from_key(e.scheme);
      REQUIRE(sc.has_value());
      // The plan consults the shipped entries and throws if one cannot run on that device.
      const gpu::MoePlan plan(*sc, gpu::LayerDims{e.experts, 0, e.hidden, e.inter, e.top_k}, 8192, lim);
      const gpu::Bucket& b = plan.buckets()[gpu::bucket_for(plan.buckets(), e.m)];
      CHECK(b.bm == e.bucket.bm);
      CHECK(gpu::tile_text(b.gemm1) == gpu::tile_text(e.bucket.gemm1));
      CHECK(gpu::tile_text(b.gemm2) == gpu::tile_text(e.bucket.gemm2));
    }
  }
  CHECK(shipped.size() >= gpu::embedded_tune_tables().size());
}

TEST_CASE("tune: GEMM2 splits K where decode leaves SMs idle, and only on mma.sync") {
  // Mixtral-8x7B at M = 1: two experts hit x 4096 / 64 columns = 128 blocks on 132 SMs.
  const gpu::MoePlan mixtral(fp8_channel(), gpu::LayerDims{8, 0, 4096, 14336, 2}, 8192, h100());
  gpu::HeuristicInput in = mixtral.heuristic_input();
  in.tuned = nullptr;
  const gpu::Bucket one = gpu::heuristic_bucket(in, 1);
  CHECK_FALSE(one.gemm2.wgmma);
  CHECK(one.k_splits == 3);  // ceil(2 x 132 / 128)
  CHECK(gpu::describe(one).find("split-K 3") != std::string::npos);
  // Eight experts hit at M = 16: 512 blocks, no split; large M runs wgmma, never split.
  CHECK(gpu::heuristic_bucket(in, 16).k_splits == 1);
  CHECK(gpu::heuristic_bucket(in, 8192).k_splits == 1);
  // The plan's buckets carry it, and the M = 1 bucket stays apart from M = 2's.
  const auto& bs = mixtral.buckets();
  REQUIRE(!bs.empty());
  CHECK(bs[gpu::bucket_for(bs, 1)].k_splits == 3);
  CHECK(bs[gpu::bucket_for(bs, 2)].k_splits < 3);
  // Short K: at most one split per 4 K tiles (I = 256 in fp8: 2 tiles, no split).
  CHECK(gpu::heuristic_bucket(untuned(fp8_channel(), gpu::LayerDims{8, 0, 4096, 256, 2}, 64), 1).k_splits == 1);
  // The measuring knob, within the same limit (I = 14336 fp8: 112 tiles, at most 8).
  in.force_k_splits = 12;
  CHECK(gpu::heuristic_bucket(in, 1).k_splits == 8);
  // Qwen3-30B-A3B at M = 1: 8 experts x 2048 / 64 = 256 blocks, no split.
  CHECK(gpu::heuristic_bucket(untuned(w8a16(), gpu::LayerDims{128, 0, 2048, 768, 8}, 64), 1).k_splits == 1);
}

TEST_CASE("tune: Hopper's heuristics take 64-row warp-specialized tiles from about 28 rows an expert (20 with block scales), 64-wide 16-row tiles") {
  // A geometry no table names (E = 160, top-k 6, H = 5120, I = 1536): M = 800 gives 30 rows an
  // expert, M = 640 24, M = 480 18.
  const gpu::LayerDims d{160, 0, 5120, 1536, 6};
  const gpu::GpuScheme bf16 = bf16_scheme();
  auto bucket = [&](const gpu::GpuScheme& sc, int64_t m, gpu::DeviceLimits lim = h100()) {
    gpu::HeuristicInput in = gpu::MoePlan(sc, d, 8192, lim).heuristic_input();
    in.tuned = nullptr;
    return gpu::heuristic_bucket(in, m);
  };
  for (const gpu::GpuScheme& sc : {bf16, fp8_channel(), fp8_block()}) {
    const gpu::Bucket b = bucket(sc, 800);
    CAPTURE(gpu::describe(b));
    CHECK(b.bm == 64);
    CHECK(b.gemm1.ws);
    CHECK(b.gemm2.ws);
    CHECK(b.gemm1.bn == 128);
    CHECK(bucket(sc, 480).bm == 32);  // 18 rows: mma.sync
  }
  // 24 rows: block scales take the 64-row tile, channel scales and bf16 not yet.
  CHECK(bucket(fp8_block(), 640).bm == 64);
  CHECK(bucket(fp8_channel(), 640).bm == 32);
  CHECK(bucket(bf16, 640).bm == 32);
  // W8A16 keeps 32-row mma.sync tiles there, three stages deep on Hopper.
  const gpu::Bucket w = bucket(w8a16(), 800);
  CAPTURE(gpu::describe(w));
  CHECK(w.bm == 32);
  CHECK_FALSE(w.gemm1.wgmma);
  CHECK(w.gemm1.stages == 3);
  CHECK(w.gemm2.stages == 3);
  // An sm_89 card (no warpgroup MMA): 32-row tiles up to 40 rows, as before.
  gpu::DeviceLimits ada;
  ada.sm_major = 8;
  ada.sm_minor = 9;
  ada.max_smem_per_block = 99 * 1024;
  const gpu::Bucket a = bucket(fp8_channel(), 800, ada);
  CHECK(a.bm == 32);
  CHECK_FALSE(a.gemm1.wgmma);
  CHECK(bucket(w8a16(), 800, ada).gemm1.stages != 3);
  // 16-row tiles (M = 32: 1.2 rows an expert) are 64 wide on Hopper whatever the grid, 128 on
  // sm_89 where 172 tiles x 24 column blocks cover the machine.
  for (const gpu::GpuScheme& sc : {bf16, fp8_channel(), fp8_block(), w8a16()}) {
    CAPTURE(sc.key());
    const gpu::Bucket small = bucket(sc, 32);
    CHECK(small.bm == 16);
    CHECK(small.gemm1.bn == 64);
    CHECK(small.gemm2.bn == 64);
    CHECK(bucket(sc, 32, ada).gemm1.bn == 128);
  }
}

TEST_CASE("tune: every tile the heuristics and the tuner pick fits shared memory with the kernels' static arrays") {
  // The warp-specialized W8A16 tile at 128 rows: its ring, two bf16 tiles and the static row
  // lists and scales within one block's 227 KiB (five stages would not be: 232,600 bytes).
  const gpu::HeuristicInput in = untuned(w8a16(), gpu::LayerDims{8, 0, 4096, 14336, 2}, 8192);
  const gpu::Bucket b = gpu::heuristic_bucket(in, 8192);
  REQUIRE(b.gemm1.ws);
  CHECK(b.bm == 128);
  CHECK(b.gemm1.bn == 256);
  CHECK(b.gemm1.stages == 4);
  gpu::GemmTile five = b.gemm1;
  five.stages = 5;
  CHECK(gpu::gemm_smem_bytes(mk::kKindW8A16, 128, five) + gpu::gemm_static_smem(128, five) > 227 * 1024);
  CHECK(gpu::tile_refusal(in, 128, five, true).find("shared memory") != std::string::npos);
  // Two 64-row blocks an SM: both with their reserve within the SM.
  for (const gpu::GpuScheme& sc : {fp8_channel(), fp8_block(), w8a16()})
    for (int64_t m : {1, 16, 128, 1024, 8192}) {
      CAPTURE(sc.key());
      CAPTURE(m);
      const gpu::HeuristicInput hin = untuned(sc, gpu::LayerDims{128, 0, 2048, 768, 8}, m);
      for (const gpu::Bucket& c : gpu::tile_candidates(hin, m))
        for (const gpu::GemmTile* t : {&c.gemm1, &c.gemm2}) {
          const int blocks = t->ws && c.bm == 64 && !t->pingpong ? 2 : 1;
          CHECK(blocks == (t->ws ? gpu::ws_blocks_per_sm(c.bm, *t) : 1));
          const int block = gpu::gemm_smem_bytes(sc.kind, c.bm, *t) + gpu::gemm_static_smem(c.bm, *t);
          CHECK(block <= 227 * 1024);
          CHECK(blocks * (block + 1024) <= 228 * 1024);
        }
    }
}

TEST_CASE("plan: GEMM1 requantizes in its epilogue only where whole groups fit its tile") {
  gpu::GemmTile ws128{256, 2, 4, 4};
  ws128.wgmma = ws128.ws = true;
  gpu::GemmTile ws64 = ws128;
  ws64.bn = 128;
  ws64.warps_m = 1;
  gpu::GemmTile mma{64, 1, 4, 4};
  gpu::GpuScheme g64 = fp8_block();
  g64.act_group = 64;
  CHECK(gpu::gemm1_quant_group(fp8_block(), ws128) == 128);  // 128 intermediate columns: one group
  CHECK(gpu::gemm1_quant_group(fp8_block(), ws64) == 0);     // 64 columns: half a group
  CHECK(gpu::gemm1_quant_group(g64, ws64) == 64);
  CHECK(gpu::gemm1_quant_group(g64, ws128) == 64);
  CHECK(gpu::gemm1_quant_group(fp8_block(), mma) == 0);      // mma.sync: f32 h and moe_quant_h
  CHECK(gpu::gemm1_quant_group(fp8_channel(), ws128) == 0);  // per token: the row spans tiles
  gpu::GemmTile not_ws = ws128;
  not_ws.ws = false;
  CHECK(gpu::gemm1_quant_group(fp8_block(), not_ws) == 0);

  // The plan's kernel text asks the fused epilogue exactly where the bucket's GEMM1 takes it.
  const gpu::MoePlan plan(fp8_block(), gpu::LayerDims{8, 0, 4096, 14336, 2}, 8192, h100());
  const auto sources = plan.sources();
  const auto from = plan.bucket_sources();
  REQUIRE(from.size() == plan.buckets().size());
  int fused = 0;
  for (std::size_t i = 0; i < from.size(); ++i) {
    const gpu::Bucket& b = plan.buckets()[i];
    const int q = gpu::gemm1_quant_group(plan.scheme(), b.gemm1);
    CAPTURE(gpu::describe(b));
    REQUIRE(from[i].gemm1 < sources.size());
    const gpu::KernelSetSource& k = sources[from[i].gemm1];
    const std::size_t g1 = k.source.find("using G1 = ");
    REQUIRE(g1 != std::string::npos);
    const std::string line = k.source.substr(g1, k.source.find('\n', g1) - g1);
    if (b.gemm1.ws) CHECK(line.find(", " + std::to_string(q) + ">;") != std::string::npos);
    CHECK((k.name.find("_q1") != std::string::npos) == (q > 0));
    fused += q > 0;
  }
  CHECK(fused >= 1);  // M = 8192 runs 128 x 256 warp-specialized tiles
}

TEST_CASE("plan: each bucket finds every kernel it launches in the program it takes it from, each text once") {
  const gpu::GpuScheme bf16 = bf16_scheme();
  gpu::GpuScheme fp8_tensor = fp8_channel();
  fp8_tensor.wscale = mk::kWTensor;
  fp8_tensor.amode = mk::kATensor;
  gpu::GpuScheme fp8_static = fp8_tensor;
  fp8_static.amode = mk::kAStatic;
  // An extern "C" kernel named `name` is defined in `text` exactly once.
  auto defines = [](const std::string& text, const std::string& name) {
    const std::string sig = ") " + name + "(const MoeArgs a";
    const std::size_t at = text.find(sig);
    return at != std::string::npos && text.find(sig, at + 1) == std::string::npos;
  };
  const std::pair<const char*, gpu::GpuScheme> schemes[] = {{"fp8 channel", fp8_channel()}, {"fp8 block", fp8_block()},
                                                            {"fp8 tensor", fp8_tensor},     {"fp8 static", fp8_static},
                                                            {"bf16", bf16},                 {"w8a16", w8a16()}};
  const gpu::LayerDims shapes[] = {{128, 0, 2048, 768, 8}, {8, 0, 4096, 14336, 2}, {256, 0, 7168, 2048, 8}};
  for (const auto& [label, sc] : schemes)
    for (const gpu::LayerDims& d : shapes) {
      CAPTURE(label);
      CAPTURE(d.hidden);
      const gpu::MoePlan plan(sc, d, 8192, h100());
      const auto sources = plan.sources();
      const auto from = plan.bucket_sources();
      REQUIRE(from.size() == plan.buckets().size());
      REQUIRE(plan.buckets().size() >= 2);
      for (std::size_t i = 0; i < sources.size(); ++i)
        for (std::size_t j = i + 1; j < sources.size(); ++j) {
          CHECK(sources[i].source != sources[j].source);
          CHECK(sources[i].name != sources[j].name);  // a name tells its text apart in the cache and in messages
        }
      std::vector<std::string> shared = {"moe_count", "moe_zero_counts", "moe_prepare", "moe_combine", "moe_combine_wide"};
      if (sc.kind == mk::kKindFp8 && sc.amode == mk::kATensor) shared.insert(shared.end(), {"moe_amax_x", "moe_amax_h"});
      if (sc.kind == mk::kKindFp8 && sc.amode != mk::kAStatic) shared.push_back("moe_quant_h");
      std::vector<bool> used(sources.size(), false);
      for (std::size_t b = 0; b < from.size(); ++b) {
        CAPTURE(gpu::describe(plan.buckets()[b]));
        REQUIRE(from[b].shared < sources.size());
        REQUIRE(from[b].gemm1 < sources.size());
        REQUIRE(from[b].gemm2 < sources.size());
        for (const std::string& k : shared) CHECK_MESSAGE(defines(sources[from[b].shared].source, k), k);
        CHECK(defines(sources[from[b].gemm1].source, "moe_gemm1"));
        CHECK(defines(sources[from[b].gemm2].source, "moe_gemm2"));
        // A GEMM program holds its GEMM only: the shared kernels compile once per plan.
        CHECK_FALSE(defines(sources[from[b].gemm1].source, "moe_prepare"));
        CHECK_FALSE(defines(sources[from[b].gemm2].source, "moe_gemm1"));
        const gpu::Bucket& bk = plan.buckets()[b];
        CHECK(sources[from[b].gemm1].name.find("_g1_bm" + std::to_string(bk.bm) + "_n" + std::to_string(bk.gemm1.bn)) !=
              std::string::npos);
        CHECK(sources[from[b].gemm2].name.find("_g2_bm" + std::to_string(bk.bm) + "_n" + std::to_string(bk.gemm2.bn)) !=
              std::string::npos);
        used[from[b].shared] = used[from[b].gemm1] = used[from[b].gemm2] = true;
      }
      CHECK(std::count(used.begin(), used.end(), false) == 0);  // no program compiled for nothing
      CHECK(sources.size() <= 1 + 2 * from.size());
    }
}

TEST_CASE("plan: fp8 fast accumulation (on by default) changes only the warp-specialized GEMMs of channel and tensor scales") {
  gpu::GpuScheme fp8_tensor = fp8_channel();
  fp8_tensor.wscale = mk::kWTensor;
  fp8_tensor.amode = mk::kATensor;
  const gpu::LayerDims d{8, 0, 4096, 14336, 2};
  for (const gpu::GpuScheme& sc : {fp8_channel(), fp8_tensor, fp8_block(), w8a16()}) {
    CAPTURE(sc.label());
    gpu::MoePlan plan(sc, d, 8192, h100());
    REQUIRE(plan.fp8_fast_acc());
    plan.set_fp8_fast_acc(false);
    const auto before = plan.sources();
    for (const auto& k : before) CHECK(k.name.find("_fa") == std::string::npos);
    plan.set_fp8_fast_acc(true);
    const auto after = plan.sources();
    REQUIRE(after.size() == before.size());
    const bool applies = sc.kind == mk::kKindFp8 && sc.wscale != mk::kWBlock && sc.amode != mk::kAGroup;
    int changed = 0;
    for (std::size_t i = 0; i < after.size(); ++i) {
      const bool fa = after[i].name.find("_fa") != std::string::npos;
      CHECK(fa == (after[i].source != before[i].source));
      if (!fa) continue;
      ++changed;
      CHECK(after[i].source.find("WsGemm<") != std::string::npos);  // only the warp-specialized kernel has it
      CHECK(after[i].source.find(", true>;") != std::string::npos);
    }
    CHECK((changed > 0) == applies);  // M = 8192 on Mixtral runs warp-specialized tiles
  }
}

TEST_CASE("plan: MOEQ_CT_FP8_FAST_ACCUM takes 0 or 1 and names itself otherwise") {
  const char* old = std::getenv("MOEQ_CT_FP8_FAST_ACCUM");
  const std::string keep = old ? old : "";
  const gpu::LayerDims d{8, 0, 4096, 14336, 2};
  ::setenv("MOEQ_CT_FP8_FAST_ACCUM", "1", 1);
  CHECK(gpu::MoePlan(fp8_channel(), d, 8192, h100()).fp8_fast_acc());
  ::setenv("MOEQ_CT_FP8_FAST_ACCUM", "0", 1);
  CHECK_FALSE(gpu::MoePlan(fp8_channel(), d, 8192, h100()).fp8_fast_acc());
  ::setenv("MOEQ_CT_FP8_FAST_ACCUM", "yes", 1);
  std::string error;
  try {
    gpu::MoePlan(fp8_channel(), d, 8192, h100());
  } catch (const moeq::Error& e) {
    error = e.what();
  }
  CHECK(error.find("MOEQ_CT_FP8_FAST_ACCUM must be 0 or 1, found 'yes'") != std::string::npos);
  if (old) ::setenv("MOEQ_CT_FP8_FAST_ACCUM", keep.c_str(), 1);
  else ::unsetenv("MOEQ_CT_FP8_FAST_ACCUM");
}

TEST_CASE("tune: 224-wide tiles run 128 rows warp-specialized, bf16 or fp8 without block or group scales, five stages") {
  const gpu::LayerDims d{8, 0, 4096, 14336, 2};
  gpu::GemmTile t{224, 2, 4, 5};
  t.wgmma = t.ws = true;
  const gpu::GpuScheme bf16 = bf16_scheme();
  for (const gpu::GpuScheme& sc : {fp8_channel(), bf16}) {
    CAPTURE(sc.key());
    const gpu::HeuristicInput in = untuned(sc, d, 8192);
    CHECK(gpu::tile_refusal(in, 128, t, true).empty());
    CHECK(gpu::tile_refusal(in, 128, t, false).empty());
    gpu::GemmTile six = t;
    six.stages = 6;  // 6 x 44 KiB does not fit 227 KiB
    CHECK(gpu::tile_refusal(in, 128, six, true).find("shared memory") != std::string::npos);
    gpu::GemmTile rows64 = t;
    rows64.warps_m = 1;
    CHECK(gpu::tile_refusal(in, 64, rows64, true).find("224-wide tiles are 128 rows") != std::string::npos);
    // The tuner offers it next to the 256-wide tile, five stages deep.
    const std::vector<gpu::Bucket> c = gpu::tile_candidates(in, 8192);
    CHECK(std::any_of(c.begin(), c.end(), [](const gpu::Bucket& b) {
      return b.bm == 128 && b.gemm1.ws && b.gemm1.bn == 224 && b.gemm1.stages == 5;
    }));
    // The heuristics take it only when asked (MOEQ_CT_WS_BN224=1), where they took 256 wide.
    CHECK(gpu::heuristic_bucket(in, 8192).gemm1.bn == 256);
    gpu::HeuristicInput asked = in;
    asked.ws_bn224 = true;
    const gpu::Bucket b = gpu::heuristic_bucket(asked, 8192);
    CHECK(b.gemm1.bn == 224);
    CHECK(b.gemm2.bn == 224);
    CHECK(b.gemm1.stages == 5);
    // A plan of it compiles a 224-wide WsGemm.
    const gpu::MoePlan plan(sc, d, 8192, h100(), {gpu::Bucket{8192, 128, t, t}});
    bool found = false;
    for (const auto& k : plan.sources()) found = found || k.source.find(", 128, 224, 5,") != std::string::npos;
    CHECK(found);
  }
  for (const gpu::GpuScheme& sc : {fp8_block(), w8a16()}) {
    CAPTURE(sc.key());
    const gpu::HeuristicInput in = untuned(sc, d, 8192);
    CHECK(gpu::tile_refusal(in, 128, t, true).find("224-wide tiles are 128 rows of bf16 or fp8 without block or group scales") !=
          std::string::npos);
    const std::vector<gpu::Bucket> c = gpu::tile_candidates(in, 8192);
    CHECK(std::none_of(c.begin(), c.end(), [](const gpu::Bucket& b) { return b.gemm1.bn == 224; }));
    gpu::HeuristicInput asked = in;
    asked.ws_bn224 = true;
    CHECK(gpu::heuristic_bucket(asked, 8192).gemm1.bn != 224);
  }
  // A table entry naming it reads back.
  CHECK(gpu::tile_text(gpu::parse_tile_text("ws 224 w2x4 s5", "entry")) == "ws 224 w2x4 s5");
}

// Turns one of a plan's measuring flags on (`set`) and returns how many of its programs changed,
// checking that exactly those are named with `suffix`, carry every one of `markers` (which the
// unchanged ones do not) and instantiate `kernel`.
static int flag_changes(gpu::MoePlan& plan, void (gpu::MoePlan::*set)(bool), const std::string& suffix,
                 const std::vector<std::string>& markers, const std::string& kernel) {
  const auto before = plan.sources();
  (plan.*set)(true);
  const auto after = plan.sources();
  REQUIRE(after.size() == before.size());
  int changed = 0;
  for (std::size_t i = 0; i < after.size(); ++i) {
    const bool named = after[i].name.find(suffix) != std::string::npos;
    CHECK(named == (after[i].source != before[i].source));
    for (const std::string& m : markers) CHECK(named == (after[i].source.find(m) != std::string::npos));
    if (!named) continue;
    ++changed;
    CHECK(after[i].source.find(kernel) != std::string::npos);
  }
  return changed;
}

TEST_CASE("plan: two-block clusters change only the warp-specialized fp8 and bf16 GEMMs, not ping-pong or W8A16") {
  const gpu::LayerDims d{8, 0, 4096, 14336, 2};
  const gpu::GpuScheme bf16 = bf16_scheme();
  for (const gpu::GpuScheme& sc : {fp8_channel(), fp8_block(), bf16, w8a16()}) {
    for (const int64_t m : {1, 8192}) {
      CAPTURE(sc.key());
      CAPTURE(m);
      gpu::MoePlan plan(sc, d, m, h100());
      CHECK_FALSE(plan.ws_multicast());  // off unless MOEQ_CT_WS_MULTICAST=1
      const bool applies = plan.buckets().back().gemm1.ws && sc.kind != mk::kKindW8A16;
      const int changed = flag_changes(plan, &gpu::MoePlan::set_ws_multicast, "_mc",
                                       {"__cluster_dims__(2, 1, 1)", "#define MOEQ_WS_MULTICAST 1", "TmaMap tmap_h"},
                                       "WsGemm<");
      CHECK((changed > 0) == applies);
    }
  }
  // Ping-pong tiles keep one block (their warpgroups already alternate tiles).
  gpu::GemmTile pp{256, 1, 4, 5};
  pp.wgmma = pp.ws = pp.pingpong = true;
  gpu::MoePlan plan(fp8_channel(), d, 8192, h100(), {gpu::Bucket{8192, 64, pp, pp}});
  plan.set_ws_multicast(true);
  for (const auto& k : plan.sources()) CHECK(k.name.find("_mc") == std::string::npos);
}

TEST_CASE("plan: scales a K tile ahead change only the mma.sync GEMMs that promote (fp8 block or group scales)") {
  const gpu::LayerDims d{8, 0, 4096, 14336, 2};
  for (const gpu::GpuScheme& sc : {fp8_channel(), fp8_block(), w8a16()}) {
    for (const int64_t m : {1, 8192}) {
      CAPTURE(sc.key());
      CAPTURE(m);
      gpu::MoePlan plan(sc, d, m, h100());
      CHECK_FALSE(plan.scale_prefetch());  // off unless MOEQ_CT_SCALE_PREFETCH=1
      // Every bucket of the plan (up to M) compiles: mma.sync in the small ones.
      const bool mma = std::any_of(plan.buckets().begin(), plan.buckets().end(),
                                   [](const gpu::Bucket& b) { return !b.gemm1.wgmma || !b.gemm2.wgmma; });
      const bool applies = sc.kind == mk::kKindFp8 && sc.wscale == mk::kWBlock && mma;
      const int changed = flag_changes(plan, &gpu::MoePlan::set_scale_prefetch, "_sp",
                                       {"#define MOEQ_MMA_SCALE_PREFETCH 1"}, "GroupedGemm<");
      CHECK((changed > 0) == applies);
    }
  }
}

TEST_CASE("plan: TMA-fed B tiles change only the mma.sync GEMMs") {
  const gpu::LayerDims d{8, 0, 4096, 14336, 2};
  for (const gpu::GpuScheme& sc : {fp8_channel(), fp8_block(), bf16_scheme(), w8a16()}) {
    for (const int64_t m : {1, 8192}) {
      CAPTURE(sc.key());
      CAPTURE(m);
      gpu::MoePlan plan(sc, d, m, h100());
      CHECK(plan.mma_tma_b());  // on sm_90 unless MOEQ_CT_MMA_TMA_B=0
      plan.set_mma_tma_b(false);
      const bool mma = std::any_of(plan.buckets().begin(), plan.buckets().end(),
                                   [](const gpu::Bucket& b) { return !b.gemm1.wgmma || !b.gemm2.wgmma; });
      const int changed =
          flag_changes(plan, &gpu::MoePlan::set_mma_tma_b, "_tb", {"#define MOEQ_MMA_TMA_B 1"}, "GroupedGemm<");
      CHECK((changed > 0) == mma);
      for (const auto& k : plan.sources())  // the changed kernels read the weight map
        if (k.name.find("_tb") != std::string::npos) CHECK(k.source.find("::run(a, tmap_b, smem)") != std::string::npos);
    }
  }
}

TEST_CASE("plan: the GPU tests find a bucket's MMA in the layer's description") {
  // The fixtures of the GPU apply tests (4 experts, top-2, H = 128, I = 96, FP8 per-tensor):
  // 32 rows an expert at M = 64, which the heuristics give 64-row warp-specialized tiles on an
  // H100; M = 1 and 7 run mma.sync.
  gpu::GpuScheme sc = fp8_channel();
  sc.wscale = mk::kWTensor;
  sc.amode = mk::kATensor;
  const gpu::MoePlan plan(sc, gpu::LayerDims{4, 0, 128, 96, 2}, 300, h100());
  std::string desc = "cuda:0 sm_90a, 2 kernel sets; tiles ";
  for (const auto& b : plan.buckets()) desc += gpu::describe(b) + ", ";
  CAPTURE(desc);
  CHECK_FALSE(moeq::test::wgmma_bucket(desc, 1));
  CHECK_FALSE(moeq::test::wgmma_bucket(desc, 7));
  CHECK(moeq::test::wgmma_bucket(desc, 64));
  CHECK(moeq::test::wgmma_bucket(desc, 300));
  CHECK(moeq::test::wgmma_bucket(desc, 5000));  // past the last bucket: the last one
  CHECK_FALSE(moeq::test::wgmma_bucket("tiles M<=8: gemm1 mma 16x64 w1x4 s5, gemm2 mma 16x64 w1x4 s5", 64));
  CHECK_FALSE(moeq::test::wgmma_bucket("no tiles", 1));
}
