#include "tile_heuristics.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>

namespace moeq::ct::gpu {
namespace {

constexpr int kKindFp8 = 0;
constexpr int kKindBf16 = 1;
constexpr int kKindW8A16 = 2;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// 224-wide warp-specialized tiles: fp8 or bf16 without block or group scales (sm90_moe_ws.cuh).
bool bn224_allowed(const HeuristicInput& in) { return in.ws && in.kind != kKindW8A16 && !in.promote; }

// The ring as deep as shared memory holds, from t.stages down to two stages, `blocks` blocks an SM.
void fit_ring(const HeuristicInput& in, int kind, int bm, GemmTile& t, int blocks = 1) {
  while (t.stages > 2 && !smem_fits(in, kind, bm, t, blocks)) --t.stages;
}

// Row tile from the expected rows per expert: small M streams weights (16-row tiles waste
// nothing that matters), large M wants big tiles for reuse.
// NOTE (the tuner on an H100, sm90_132.json; confirmed on an H200, 2026-12-07): where the
// warp-specialized kernels run bf16 or fp8, a 64-row one beats the 32-row mma.sync tile from
// about 28 rows per expert (block scales: 20), although half its rows are padding: Mixtral at
// M = 128 and DeepSeek-V3 at M = 1024 (32 rows) 1.15-1.62x, Granite fp8-block at M = 128
// (25.6 rows) 1.27x, while Granite bf16 and fp8-channel at 25.6 rows kept 32-row tiles.
// W8A16 kept 32-row mma.sync tiles at 25.6 and 32 rows.
int row_tile(double rows_per_expert, const HeuristicInput& in) {
  if (rows_per_expert <= 16) return 16;
  const bool ws64 = in.ws && in.kind != kKindW8A16;
  if (rows_per_expert <= (ws64 ? (in.promote ? 20 : 28) : 40)) return 32;
  if (rows_per_expert <= 96) return 64;
  return 128;
}

GemmTile gemm_tile(int kind, int bm, int64_t n_out, int64_t expected_tiles, double rows_per_expert,
                   const HeuristicInput& in) {
  GemmTile t;
  if (in.ws && bm >= 64) {
    // NOTE: one producer warpgroup and bm / 64 consumers. 128-row tiles: one block an SM with
    // 232 registers a consumer thread, so fp8 runs 256 wide as two promoted 128-column halves
    // (128 + 64 accumulators) and bf16 256 wide in one go. 64-row tiles run two blocks an SM
    // (one block's promotion overlaps the other's MMAs), 128 wide, in half the shared memory.
    t.wgmma = true;
    t.ws = true;
    t.warps_m = bm / 64;
    t.warps_n = 4;
    t.bn = bm == 128 ? 256 : 128;
    if (kind == kKindFp8 && (in.force_fp8_bn == 128 || in.force_fp8_bn == 256)) t.bn = in.force_fp8_bn;
    // Narrow tiles where 256-wide ones would leave SMs idle (few tiles, small N).
    if (kind == kKindFp8 && bm == 128 && in.force_fp8_bn == 0 &&
        (n_out < 256 || expected_tiles * ceil_div(n_out, 256) < in.multiprocessors))
      t.bn = 128;
    // Measuring (MOEQ_CT_WS_BN224=1): 224 wide instead of 256 where it may run, a fifth ring
    // stage in the 28 KiB it frees.
    if (in.ws_bn224 && t.bn == 256 && bm == 128 && bn224_allowed(in)) t.bn = 224;
    t.stages = 8;
    fit_ring(in, kind, bm, t, ws_blocks_per_sm(bm, t));
    return t;
  }
  if (in.wgmma && bm >= 64 && kind != kKindW8A16) {
    // Warpgroup MMA: bm / 64 warpgroups, 64 x bn each; as many stages as shared memory holds.
    t.wgmma = true;
    t.warps_m = bm / 64;
    t.warps_n = 4;
    // bf16 chains in the tensor core and takes 256 columns. fp8 promotes every K tile into a
    // second accumulator set: 128 columns in one go, or 256 as two promoted halves
    // (moe_wgmma.cuh). NOTE: at 128 x 128 an fp8 K tile moves 32 KiB through L2 for 2 M MACs,
    // more than L2 sustains at the tensor rate; 128 x 256 moves 48 KiB for 4 M. Wide tiles
    // where the grid still covers the machine.
    t.bn = 256;
    if (kind == kKindFp8) {
      // NOTE (H100, 2026-12-05, tools/gpu_harness/device_ab.sh): 256 wins at M = 8192 on every
      // shape (fp8 block 1.4x, channel 1.1x) and for block scales at M = 1024 (their 128-wide
      // tiles run tile by tile), but loses 5-8 % on Granite-3B channel/tensor at M = 1024 (205
      // rows per expert: fewer, longer waves); 256 rows per expert is where it starts to pay.
      const bool wide = in.wide_fp8 && bm == 128 && n_out >= 256 &&
                        expected_tiles * ceil_div(n_out, 256) >= in.multiprocessors &&
                        (in.promote || rows_per_expert >= 256);
      t.bn = in.force_fp8_bn == 128 || in.force_fp8_bn == 256 ? (in.wide_fp8 ? in.force_fp8_bn : 128)
                                                                : (wide ? 256 : 128);
    }
    // NOTE: a 64-row tile is one warpgroup (128 threads); with the ring filling shared memory a
    // single block (4 warps) held an SM. Four stages let two such blocks share one (registers
    // allow two: 2 x 128 x 255), so one block's barrier and promotion overlap the other's MMAs.
    t.stages = bm == 64 ? in.wgmma_stages_64 : 6;
    fit_ring(in, kind, bm, t);
    t.pipelined = !in.wgmma_serial;
    return t;
  }
  switch (bm) {
    case 16: t = {128, 1, 4, 6}; break;
    // NOTE (the tuner on an H100): W8A16 at 32 rows took three stages over five on all three
    // shapes measured there (1.28-1.50x). Hopper only (in.ws: the device runs the
    // warp-specialized kernels); the other arches keep five, unmeasured.
    case 32: t = {128, 1, 4, kind == kKindW8A16 && in.ws ? 3 : 5}; break;
    case 64: t = {128, 2, 4, 4}; break;
    default: t = {128, 2, 4, 4}; break;
  }
  // NOTE: 128x128 over 8 warps holds 64 accumulators a thread; block scales double that and
  // spill, so those tiles narrow to 64 columns.
  if (bm == 128 && in.promote) t.bn = 64;
  // NOTE: a 16-element scale period holds eight periods of scales a K tile; 64 columns keep
  // those in registers at 64 rows too.
  if (bm >= 64 && in.promote && in.scale_k < 32) t.bn = 64;
  // NOTE: weight streaming at small M needs many blocks in flight; halve the tile width when
  // the grid would not cover the machine twice.
  if (bm <= 32 && expected_tiles * ceil_div(n_out, t.bn) < 2 * in.multiprocessors) t.bn = 64;
  // NOTE (the tuner on an H100, sm90_132.json): of the 16-row GEMMs where the rule above left
  // 128 columns (M = 1 to 128 on four shapes), 28 of 32 ran fastest at 64 or 32 columns.
  // Hopper only (in.ws); the other arches keep the rule above, unmeasured.
  if (bm == 16 && in.ws) t.bn = 64;
  fit_ring(in, kind, bm, t);
  return t;
}

}  // namespace

Bucket heuristic_bucket(const HeuristicInput& in, int64_t m) {
  const int64_t E = std::max<int64_t>(in.num_experts, 1), k = std::max<int64_t>(in.top_k, 1);
  const double rows = static_cast<double>(m * k) / static_cast<double>(E);
  Bucket b;
  b.max_tokens = m;
  b.bm = row_tile(rows, in);
  // Measuring (MOEQ_CT_WS_PINGPONG=1): ping-pong tiles of 64 rows where the heuristics would take
  // warp-specialized ones. Not the default: on the H100 they were slower in 20 of 24 cases, and
  // again after the wide epilogue stores (H100, 2026-12-07, M = 1024 and 8192): 3-33 % slower in
  // 18 of 24, within 2 % in the other 6.
  const bool pingpong = in.ws_pingpong && in.ws && b.bm >= 64 && in.kind != kKindW8A16;
  if (pingpong) b.bm = 64;
  const int64_t tiles = std::min(m * k, E) + ceil_div(m * k, b.bm);
  b.gemm1 = gemm_tile(in.kind, b.bm, 2 * in.inter, tiles, rows, in);
  b.gemm2 = gemm_tile(in.kind, b.bm, in.hidden, tiles, rows, in);
  if (pingpong)
    for (GemmTile* t : {&b.gemm1, &b.gemm2}) {
      const int64_t n_out = t == &b.gemm1 ? 2 * in.inter : in.hidden;
      t->pingpong = true;
      t->bn = n_out >= 256 && tiles * ceil_div(n_out, 256) >= 2 * in.multiprocessors ? 256 : 128;
      t->stages = 8;
      fit_ring(in, in.kind, b.bm, *t);
    }
  b.k_splits = gemm2_k_splits(in, b, m);
  return b;
}

int gemm2_k_splits(const HeuristicInput& in, const Bucket& b, int64_t m) {
  if (b.gemm2.wgmma) return 1;
  const int64_t tile_k = in.kind == kKindFp8 || in.kind == kKindW8A16 ? 128 : 64;
  const int64_t kt = ceil_div(std::max<int64_t>(in.inter, 1), tile_k);
  const int64_t most = std::min<int64_t>(8, std::max<int64_t>(kt / 4, 1));
  if (in.force_k_splits > 0) return static_cast<int>(std::min<int64_t>(in.force_k_splits, most));
  // NOTE (H100, 2026-12-06, bench/device_kernels_round.sh): Mixtral-8x7B at M = 1, GEMM2 alone,
  // splits 1 / 2 / 3: fp8 block 88 / 62 / 52 us, W8A16 74 / 57 / 50, fp8 channel 57 / 52 / 63
  // (noisy), bf16 86 / 86 / 100. bf16's GEMM2 already streams at 90 % of the copy rate unsplit
  // (twice the bytes a block), so it stays whole.
  if (in.kind == kKindBf16) return 1;
  // Row tiles at m tokens: one an expert hit while experts get fewer rows than a tile.
  const int64_t pairs = std::max<int64_t>(m, 1) * std::max<int64_t>(in.top_k, 1);
  const int64_t tiles = std::max(std::min(pairs, std::max<int64_t>(in.num_experts, 1)), ceil_div(pairs, b.bm));
  const int64_t blocks = tiles * ceil_div(std::max<int64_t>(in.hidden, 1), b.gemm2.bn);
  if (blocks >= in.multiprocessors) return 1;
  return static_cast<int>(std::clamp<int64_t>(ceil_div(2 * in.multiprocessors, blocks), 1, most));
}

std::string tile_refusal(const HeuristicInput& in, int bm, const GemmTile& t, bool gated) {
  const std::string tile = (gated ? "gemm1 " : "gemm2 ") + std::to_string(bm) + "x" + std::to_string(t.bn);
  if (bm != 16 && bm != 32 && bm != 64 && bm != 128) return "row tile " + std::to_string(bm) + " is not 16, 32, 64 or 128";
  if (t.ws && !t.wgmma) return tile + ": warp-specialized tiles are wgmma tiles";
  if (t.wgmma) {
    if (!in.wgmma) return tile + ": this device or scheme has no wgmma kernel";
    if (t.ws && !in.ws) return tile + ": this scheme has no warp-specialized kernel";
    if (t.pingpong && (!t.ws || bm != 64 || in.kind == kKindW8A16))
      return tile + ": ping-pong tiles are warp-specialized, 64 rows of fp8 or bf16";
    if (bm < 64 || t.warps_m != bm / 64 || t.warps_n != 4) return tile + ": wgmma tiles are bm / 64 warpgroups of 4 warps";
    if (in.kind == kKindW8A16 && !t.ws) return tile + ": W8A16 wgmma tiles are warp-specialized";
    if (t.ws) {
      if (t.bn != 128 && t.bn != 224 && t.bn != 256) return tile + ": warp-specialized tiles are 128, 224 or 256 wide";
      if (t.bn == 224 && (bm != 128 || t.pingpong || !bn224_allowed(in)))
        return tile + ": 224-wide tiles are 128 rows of bf16 or fp8 without block or group scales";
      // NOTE: a 64-row tile runs two blocks an SM, 128 registers a thread before setmaxnreg:
      // too few for a 256-wide warpgroup MMA (ptxas C7602). A ping-pong block runs alone.
      if (bm == 64 && !t.pingpong && t.bn != 128) return tile + ": 64-row warp-specialized tiles are 128 wide";
      // (Block scales: one per 64 tile columns, so any width takes blocks of a multiple of 64 rows.)
    } else if (in.kind == kKindFp8) {
      if (t.bn != 128 && t.bn != 256) return tile + ": fp8 wgmma tiles are 128 or 256 wide";
      if (t.bn == 256 && !in.wide_fp8) return tile + ": 256-wide fp8 tiles need weight blocks of a multiple of 128 rows";
    } else if (t.bn != 256) {
      return tile + ": bf16 wgmma tiles are 256 wide";
    }
  } else {
    if (t.pingpong) return tile + ": ping-pong tiles are warp-specialized, 64 rows of fp8 or bf16";
    if (t.warps_m < 1 || t.warps_n < 1 || bm % (16 * t.warps_m) != 0 || t.bn % (16 * t.warps_n) != 0)
      return tile + ": warp tiles must be multiples of 16 x 16";
    if (t.bn > 128) return tile + ": mma.sync tiles are at most 128 wide";
  }
  if (!smem_fits(in, in.kind, bm, t))
    return tile + " with " + std::to_string(t.stages) + " stages needs " +
           std::to_string(gemm_smem_bytes(in.kind, bm, t) + gemm_static_smem(bm, t)) +
           " bytes of shared memory, the device has " + std::to_string(in.max_smem_per_block);
  return "";
}

std::vector<Bucket> tile_candidates(const HeuristicInput& in, int64_t m) {
  std::vector<Bucket> out;
  auto add = [&](const Bucket& b) {
    if (!tile_refusal(in, b.bm, b.gemm1, true).empty() || !tile_refusal(in, b.bm, b.gemm2, false).empty()) return;
    for (const Bucket& o : out)
      if (same_tiles(o, b)) return;
    out.push_back(b);
  };
  const Bucket h = heuristic_bucket(in, m);
  add(h);
  const int tiles[] = {16, 32, 64, 128};
  for (int bm : tiles) {
    if (bm < h.bm / 2 || bm > h.bm * 2) continue;  // the row tiles next to the heuristic's
    std::vector<GemmTile> options;
    // mma.sync: two widths, three ring depths, and besides the heuristics' warp grid (1 x 4 up
    // to 32 rows, 2 x 4 from 64) a squarer one (fewer warps a block: more blocks an SM).
    const int grids[][2] = {{bm >= 64 ? 2 : 1, 4}, {bm >= 32 ? 2 : 1, 2}};
    for (const auto& g : grids)
      for (int bn : {64, 128})
        for (int stages : {3, 5, 8}) options.push_back(GemmTile{bn, g[0], g[1], stages});
    // Decode: 32-column tiles (two warps) double the blocks streaming weights where few
    // experts are hit.
    if (bm <= 32)
      for (int stages : {3, 5, 8}) options.push_back(GemmTile{32, 1, 2, stages});
    if (in.wgmma && bm >= 64) {
      for (int bn : {128, 256}) {
        GemmTile t{bn, bm / 64, 4, bm == 64 ? 4 : 6};
        t.wgmma = true;
        fit_ring(in, in.kind, bm, t);
        if (in.kind != kKindW8A16) options.push_back(t);  // W8A16 runs wgmma warp-specialized only
        if (in.ws) {
          t.ws = true;
          t.stages = 8;
          fit_ring(in, in.kind, bm, t, ws_blocks_per_sm(bm, t));
          options.push_back(t);
          // 224 wide: five stages of a 128-row ring where 256 wide holds four.
          if (bn == 256 && bm == 128 && bn224_allowed(in)) {
            GemmTile w = t;
            w.bn = 224;
            w.stages = 8;
            fit_ring(in, in.kind, bm, w);
            options.push_back(w);
          }
          // Ping-pong: one block an SM, a deeper ring (measured on the H100 in the thirteenth
          // session: 4-5 % faster than the shipped tiles on two fp8-block cases at M = 1024,
          // 2-37 % slower on most others, so the tuner weighs them case by case).
          if (bm == 64 && in.kind != kKindW8A16) {
            t.pingpong = true;
            t.stages = 8;
            fit_ring(in, in.kind, bm, t);
            options.push_back(t);
          }
        }
      }
    }
    for (const GemmTile& t : options) add(Bucket{m, bm, t, t});
  }
  return out;
}

std::vector<Bucket> choose_buckets(const HeuristicInput& in) {
  const int64_t max_tokens = std::max<int64_t>(in.max_tokens, 1);
  std::vector<Bucket> out;
  // Walk M over powers of two; a new bucket starts where the row tile or a GEMM's tile
  // changes (the tiles are chosen at the first M of their bucket).
  for (int64_t m = 1;; m = std::min(m * 2, max_tokens)) {
    Bucket b;
    if (tuned_bucket(in, m, b))
      b.k_splits = gemm2_k_splits(in, b, m);
    else
      b = heuristic_bucket(in, m);
    if (out.empty() || !same_tiles(b, out.back())) out.push_back(b);
    out.back().max_tokens = m;
    if (m == max_tokens) break;
  }
  return out;
}

bool knob_on(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && std::string(v) == "1";
}

std::size_t bucket_for(const std::vector<Bucket>& buckets, int64_t m) {
  for (std::size_t i = 0; i < buckets.size(); ++i)
    if (m <= buckets[i].max_tokens) return i;
  return buckets.size() - 1;
}

int gemm_static_smem(int bm, const GemmTile& t) {
  // Row lists (pair, A row) and column scales; the warp-specialized kernel keeps two sets of
  // the pairs and scales (sm90_moe_ws.cuh).
  // Ping-pong keeps four sets.
  if (t.ws && t.pingpong) return 20 * bm + 16 * t.bn + 128;
  return t.ws ? 12 * bm + 8 * t.bn + 128 : 8 * bm + 4 * t.bn + 128;
}

bool smem_fits(const HeuristicInput& in, int kind, int bm, const GemmTile& t, int blocks) {
  const int64_t block = static_cast<int64_t>(gemm_smem_bytes(kind, bm, t)) + gemm_static_smem(bm, t);
  if (block > in.max_smem_per_block) return false;
  return blocks <= 1 || blocks * (block + 1024) <= static_cast<int64_t>(in.max_smem_per_block) + 1024;
}

int gemm_smem_bytes(int kind, int bm, const GemmTile& t) {
  // Warp-specialized W8A16 (sm90_moe_ws.cuh): 64-element K tiles, a ring slot of A (128-byte
  // rows) and the codes (64 bytes a row), two converted bf16 B tiles, 3 mbarriers a slot.
  // Every warp-specialized kernel adds four mbarriers for its two sets of per-tile lists.
  if (t.ws && kind == kKindW8A16)
    return t.stages * (bm * 128 + t.bn * 64) + 2 * t.bn * 128 + 1024 + 8 * 3 * t.stages + 32;
  // Stages x (A tile + B tile): B rows are 128 bytes, A rows 128 (256 for W8A16, whose A is
  // bf16 over a 128-wide K tile); wgmma adds 1 KiB to align the ring to its 1024-byte atoms.
  const int a_row = kind == kKindW8A16 ? 256 : 128;
  // The warp-specialized kernel adds two 8-byte mbarriers a stage and two a set of its lists
  // (two sets, ping-pong four).
  return t.stages * (bm * a_row + t.bn * 128) + (t.wgmma ? 1024 : 0) +
         (t.ws ? 16 * t.stages + (t.pingpong ? 64 : 32) : 0);
}

std::string describe(const Bucket& b) {
  auto tile = [&](const GemmTile& t) {
    return std::string(t.ws ? (t.pingpong ? "wgmma-ws-pingpong " : "wgmma-ws ") : t.wgmma ? (t.pipelined ? "wgmma " : "wgmma-serial ") : "mma ") + std::to_string(b.bm) + "x" + std::to_string(t.bn) + " w" +
           std::to_string(t.warps_m) + "x" + std::to_string(t.warps_n) + " s" + std::to_string(t.stages);
  };
  return "M<=" + std::to_string(b.max_tokens) + ": gemm1 " + tile(b.gemm1) + ", gemm2 " + tile(b.gemm2) +
         (b.k_splits > 1 ? " split-K " + std::to_string(b.k_splits) : "");
}

}  // namespace moeq::ct::gpu
