// Tile configurations of the grouped GEMMs, chosen per scheme, layer shape and M bucket.
// Every bucket is compiled at process time; apply picks one from M alone (no device read).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace moeq::ct::gpu {

struct TunedEntry;  // tune_table.hpp

struct GemmTile {
  int bn = 128;      // B rows per block (GEMM1: half gate, half up)
  int warps_m = 1;   // mma.sync warp grid (wgmma: bm / 64 warpgroups of 4 warps, warps_m x 4)
  int warps_n = 4;
  int stages = 4;
  bool wgmma = false;  // Hopper warpgroup MMA mainloop (moe_wgmma.cuh) instead of mma.sync
  bool pipelined = true;  // wgmma: a tile's MMAs in flight during the previous tile's promotion
  // Warp-specialized wgmma (sm90_moe_ws.cuh): a producer warpgroup (TMA for B, cp.async for the
  // gathered A) and bm / 64 consumer warpgroups meeting at mbarriers.
  bool ws = false;
  // Warp-specialized ping-pong (64-row tiles only): two consumer warpgroups, each on a tile of
  // its own, taking turns in the mainloop so that one's epilogue runs under the other's MMAs.
  bool pingpong = false;
  int threads() const { return ws ? 128 * ((pingpong ? 2 : warps_m) + 1) : 32 * warps_m * warps_n; }
  bool operator==(const GemmTile&) const = default;
};

// One M bucket: tokens up to max_tokens use this row tile (shared by both GEMMs, since they
// read one expert-sorted tile list) and these GEMM tiles.
struct Bucket {
  int64_t max_tokens = 0;  // inclusive upper end of the bucket
  int bm = 16;
  GemmTile gemm1;
  GemmTile gemm2;
  // GEMM2 (mma.sync only) splits K over this many blocks a tile, each writing its own f32 slab
  // that the combine adds in order (gemm2_k_splits; 1 = no split).
  int k_splits = 1;
};

// The same row tile, GEMM tiles and K splits (max_tokens aside).
inline bool same_tiles(const Bucket& a, const Bucket& b) {
  return a.bm == b.bm && a.gemm1 == b.gemm1 && a.gemm2 == b.gemm2 && a.k_splits == b.k_splits;
}

struct HeuristicInput {
  int kind = 0;            // moeq_kernels::Kind
  bool promote = false;    // fp8 block/group scales: a second accumulator set per thread
  int scale_k = 128;       // with promote: K elements per scale period (16 runs every MMA twice)
  bool wgmma = false;      // the device runs wgmma (sm_90a) and the scheme has a wgmma kernel
  // fp8 wgmma tiles may be 256 wide: no block scales, or blocks of a multiple of 128 rows (a
  // 256-wide tile promotes per 128-column half with one weight scale per half).
  bool wide_fp8 = false;
  // 0: the heuristic decides; 128 or 256: every fp8 wgmma tile this wide (MOEQ_CT_FP8_WGMMA_N,
  // for measuring one against the other).
  int force_fp8_bn = 0;
  int wgmma_stages_64 = 4;  // ring depth of 64-row wgmma tiles (MOEQ_CT_WGMMA_STAGES_64, measuring)
  bool wgmma_serial = false;  // MOEQ_CT_WGMMA_SERIAL=1: wait for every tile's MMAs (the older mainloop)
  int force_k_splits = 0;     // MOEQ_CT_K_SPLITS: GEMM2's K splits (gemm2_k_splits), for measuring
  // MOEQ_CT_WS_PINGPONG=1 (measuring): the heuristics' warp-specialized tiles become 64-row
  // ping-pong ones. The tuner offers ping-pong tiles and a table entry naming one runs it
  // either way.
  bool ws_pingpong = false;
  // MOEQ_CT_WS_BN224=1 (measuring): the heuristics' 256-wide 128-row warp-specialized tiles
  // become 224-wide ones (five ring stages instead of four) where the scheme allows them. The
  // tuner offers them either way.
  bool ws_bn224 = false;
  // The scheme may run the warp-specialized kernel: fp8 or bf16; for block weight scales,
  // blocks of a multiple of 64 rows; scale periods of 128 (MOEQ_CT_NO_WS=1 turns it off).
  bool ws = false;
  int64_t num_experts = 0; // local
  int64_t top_k = 0;
  int64_t hidden = 0;
  int64_t inter = 0;       // I of this shard
  int64_t max_tokens = 0;  // the chunk size: largest M one launch sequence handles
  int multiprocessors = 132;
  int max_smem_per_block = 227 * 1024;
  // Measured tiles (tune_table.hpp): entries of this arch, SM count, scheme key and shape take
  // precedence over the heuristics at the M nearest theirs. Null: heuristics only.
  const std::vector<TunedEntry>* tuned = nullptr;
  std::string arch;        // "sm_90"
  int memory_gib = 0;      // the card's memory, rounded GiB (0: unknown): tells an H200 from an H100
  std::string scheme_key;  // GpuScheme::key()
};

// Buckets in increasing max_tokens; the last covers max_tokens. Deterministic in its input.
std::vector<Bucket> choose_buckets(const HeuristicInput& in);

// The bucket the heuristics alone choose for m tokens (max_tokens = m).
Bucket heuristic_bucket(const HeuristicInput& in, int64_t m);

// Why this GEMM tile cannot run under `in` with bm-row tiles (empty: it can): the kernel's
// static limits (warp tiles, wgmma widths, W8A16 on mma.sync only), what the device runs
// (wgmma, warp specialization) and its shared memory.
std::string tile_refusal(const HeuristicInput& in, int bm, const GemmTile& t, bool gated);

// The buckets `moeq bench tune` times at m tokens: the heuristic's first, then the row tiles
// around it with each tile the kernels take there (both GEMMs the same tile), none twice.
std::vector<Bucket> tile_candidates(const HeuristicInput& in, int64_t m);

// The measured bucket for m tokens, if `in.tuned` has entries of this device, scheme and shape
// (the entry at the M nearest m on a log scale; the smaller M on a tie). Throws moeq::Error
// naming the entry if its tiles cannot run here (tune_table.cpp).
bool tuned_bucket(const HeuristicInput& in, int64_t m, Bucket& out);

// K splits of GEMM2 for bucket b at m tokens: where an mma.sync GEMM2's blocks (experts hit x
// N tiles) would not fill the SMs (decode of few, wide experts), as many as bring the grid to two
// blocks an SM, each with at least 4 K tiles, at most 8; bf16 never (its GEMM2 streams at the copy
// rate unsplit). in.force_k_splits > 0 (MOEQ_CT_K_SPLITS,
// for measuring) takes that many instead, within the same limits of K tiles.
int gemm2_k_splits(const HeuristicInput& in, const Bucket& b, int64_t m);

// Index of the bucket for m tokens.
std::size_t bucket_for(const std::vector<Bucket>& buckets, int64_t m);

std::string describe(const Bucket& b);

// Shared memory a GEMM block of this tile asks for (dynamic part).
int gemm_smem_bytes(int kind, int bm, const GemmTile& t);

// Static shared memory of a GEMM block beside its dynamic ring (the row lists and the tile's
// weight scales: moe_gemm.cuh, moe_wgmma.cuh, sm90_moe_ws.cuh), rounded up.
int gemm_static_smem(int bm, const GemmTile& t);

// Whether `blocks` blocks of this tile fit one SM: a block's dynamic and static shared memory
// at most in.max_smem_per_block, and with 1 KiB the device keeps a block, all of them within
// the SM's in.max_smem_per_block + 1 KiB.
bool smem_fits(const HeuristicInput& in, int kind, int bm, const GemmTile& t, int blocks = 1);

// Whether the measuring knob `name` (an environment variable, e.g. MOEQ_CT_WS_PINGPONG) is "1".
bool knob_on(const char* name);

// Blocks of a warp-specialized tile an SM runs at once (sm90_moe_ws.cuh, kMinBlocks): two of
// 64 rows (one consumer warpgroup each), one of 128 or a ping-pong one (two consumers).
inline int ws_blocks_per_sm(int bm, const GemmTile& t) { return bm == 64 && !t.pingpong ? 2 : 1; }

}  // namespace moeq::ct::gpu
