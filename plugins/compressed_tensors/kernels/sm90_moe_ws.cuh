// Grouped GEMM on Hopper, warp-specialized (sm_90a): the kernel of the large-M buckets for fp8
// and bf16 weights. One producer warpgroup fills a ring of shared-memory stages while one or two
// consumer warpgroups (64 rows each) run warpgroup MMAs on it; the two sides meet only at
// per-stage mbarriers, never at a block barrier.
//
// - B (the expert's weights) arrives by TMA: one thread issues one box per stage (GEMM1: w13
//   seen as [E][2][I][H], so that one box holds BN/2 gate rows and the same columns' up rows),
//   the 128-byte swizzle written by the copy engine itself, K and row tails zero-filled by it.
// - A (activations) is gathered through the tile's expert-sorted pairs, so it cannot be one TMA
//   box: the producer's 128 threads issue cp.async for it and hand their completion to the same
//   "full" barrier (cp.async.mbarrier.arrive.noinc), so a stage is full when its TMA bytes and
//   every thread's copies have landed.
// - Consumers wait on "full", run the stage's MMAs and, once those have read the stage, arrive
//   on "empty", which the producer waits on before refilling it.
// - fp8 products are promoted per 128-wide K tile into the fp32 accumulators (times the tile's
//   block / group scales), as moe_wgmma.cuh explains; 256-wide fp8 tiles run as two 128-column
//   halves, each promoted in turn, while the other consumer warpgroup keeps the tensor core busy.
// - The (m tile, n tile) grid is walked in groups of kGroupM m tiles: m fastest inside a group
//   (consecutive entries share a weight tile), then n, so that the tiles in flight together
//   keep their activations and weights in L2.
// - Persistent: as many blocks as the SMs hold, each taking the next entry of that walk from a
//   counter of the launch. The ring and its phases (and W8A16's two bf16 tiles and its codes'
//   barriers, indexed by the running K-tile count) run on from tile to tile, so the producer
//   fills the next tile's first stages while the consumers still store this one; the tile's
//   pair list and column scales come in two sets, handed over by two more mbarrier pairs
//   (written by the producer, released by the consumers after their epilogue). One block a
//   tile paid its start, its list loads and the ring's fill with the tensor cores idle.
// - GEMM1 with per-group activation scales whose groups fit the tile's BN/2 intermediate
//   columns (kQuantGroup) requantizes h in its epilogue: each group's maximum is reduced over
//   the four lanes that hold a row, and the fp8 codes and scales go straight to a2q / a2s
//   (store_quantized), so the f32 h and the separate quantization pass disappear.
// - Registers: the producer gives its registers back (setmaxnreg) to the consumers, whose
//   accumulators (up to 128 + 64 floats a thread) need them.
// - W8A16 (int8 weight codes, bf16 activations): the K tile is 64 elements; TMA brings the
//   tile's codes (64 bytes a row, unswizzled) into the ring. The consumers convert them exactly
//   to bf16 (moe_repack.cuh's order undone) into one of two swizzled bf16 tiles outside the
//   ring, each warpgroup its share of the rows, while their MMAs of the tile before run: tile
//   kt + 1 is converted after tile kt's MMAs are issued and tile kt - 1's have finished (which
//   frees its bf16 tile), and the consumers meet at a named barrier before and after.
#pragma once
#include "moe_wgmma.cuh"
#include "moeq/sdk/device/tma.cuh"

namespace moeq_kernels {

// The A rows a producer thread gathers in one tile, kept in registers for the tile's K loop.
// k32: 32-bit byte offsets from the buffer's start, for buffers known to be under 4 GiB (fewer
// registers than addresses); else 64-bit addresses, null for a padding row.
template <bool k32, int N>
struct GatherRows {
  unsigned off[N];
  __device__ __forceinline__ void set(int i, const u8*, int row, long long pitch, int col_bytes) {
    off[i] = row >= 0 ? static_cast<unsigned>(row) * static_cast<unsigned>(pitch) + col_bytes : ~0u;
  }
  __device__ __forceinline__ bool has(int i) const { return off[i] != ~0u; }
  __device__ __forceinline__ const u8* at(int i, const u8* base, int k_bytes) const { return base + (off[i] + k_bytes); }
};
template <int N>
struct GatherRows<false, N> {
  const u8* ptr[N];
  __device__ __forceinline__ void set(int i, const u8* base, int row, long long pitch, int col_bytes) {
    ptr[i] = row >= 0 ? base + static_cast<long long>(row) * pitch + col_bytes : nullptr;
  }
  __device__ __forceinline__ bool has(int i) const { return ptr[i] != nullptr; }
  __device__ __forceinline__ const u8* at(int i, const u8*, int k_bytes) const { return ptr[i] + k_bytes; }
};

// kFastAcc (fp8 with channel or tensor scales only): the products accumulate in the MMA's own
// f32 accumulators over the whole K, as for bf16, with no per-tile promotion (see above); the
// scales are applied in the epilogue either way. The plan selects it unless MOEQ_CT_FP8_FAST_ACCUM=0.
//
// MOEQ_WS_MULTICAST (defined by the generated source under MOEQ_CT_WS_MULTICAST=1, for measuring;
// launched as two-block clusters; 0.87x of the heuristics on an H200): the walk is over pairs of m
// tiles (2q, 2q + 1) of one n tile, the block of cluster rank r taking tile 2q + r. Where both
// tiles have the same expert, each block's producer loads half of the weight tile (GEMM1: the gate
// or the up rows) by one TMA multicast into both blocks, so that the pair reads the weight tile
// from L2 once (a 128-row tile's weights are two thirds of its bytes); otherwise each loads the
// whole tile for itself. Either block's producer writes into the other's ring, so a slot's "empty"
// barrier counts the consumers of both blocks (each consumer warp arrives on its own block's and on
// the other's). Rank 0 takes the pair's entry from the counter and hands it to rank 1 through its
// shared memory and a pair of cluster-scope mbarriers; a second block past the last tile runs the
// pair with padding rows only. Both blocks meet at a cluster barrier after initializing their
// barriers and before leaving.
//
// MOEQ_WS_A_PREFETCH_256 (defined by the generated source under MOEQ_CT_A_PREFETCH=1, for
// measuring; 1.00x on an H200): the producer's A copies ask L2 for 256-byte blocks, so that a row's
// next K tile is already in L2 when it is gathered.
//
// kPingPong (64-row tiles): two consumer warpgroups, each on a tile of its own: tile j of the
// block's walk goes to warpgroup j % 2. The ring is one FIFO, so a warpgroup's stages follow
// the other's; the warpgroups take turns in the mainloop (named barriers 3 and 4: a warpgroup
// starts tile j's MMAs once the other has issued all of tile j - 1's), which keeps each
// full-barrier wait within one phase of the ring, and each runs its epilogue while the other's
// MMAs keep the tensor core busy. Four sets of per-tile lists, so that the producer fills the
// next tiles' while both warpgroups still read theirs.
template <int kKind, int kWS, int kAM, bool kGated, int BM, int BN, int STAGES, int kQuantGroup = 0,
          bool kFastAcc = false, bool kPingPong = false>
struct WsGemm {
#ifdef MOEQ_WS_MULTICAST
  static constexpr bool kMcAsked = true;
#else
  static constexpr bool kMcAsked = false;
#endif
  // Two-block clusters that share the weight tile (see the header): fp8 and bf16, not ping-pong.
  static constexpr bool kMc = kMcAsked && !kPingPong && kKind != kKindW8A16;
  static constexpr int kConsumers = kPingPong ? 2 : BM / 64;
  static constexpr int kTileWGs = kPingPong ? 1 : kConsumers;  // consumer warpgroups on one tile
  static constexpr int kSets = kPingPong ? 4 : 2;               // sets of per-tile lists
  static constexpr int kThreads = 128 * (kConsumers + 1);
  // 64-row tiles run two blocks an SM (one consumer warpgroup each), 128-row and ping-pong
  // tiles one.
  static constexpr int kMinBlocks = kConsumers == 1 ? 2 : 1;
  static constexpr int kProducerRegs = 40;
  static constexpr int kConsumerRegs = kConsumers == 1 ? 216 : 232;
  static constexpr bool kW8 = kKind == kKindW8A16;
  // Ring slot: the A tile (128-byte rows) and the B tile as loaded (W8A16: 64 codes a row).
  static constexpr int kAStage = BM * 128, kBStage = kW8 ? BN * 64 : BN * 128, kStage = kAStage + kBStage;
  static constexpr int kB16 = kW8 ? BN * 128 : 0;  // W8A16: one converted bf16 B tile (two of them)
  // mbarriers: full and empty a slot (W8A16: also the codes' TMA a slot), and two for
  // each set of per-tile lists. gemm_smem_bytes (tile_heuristics.cpp) computes the same.
  static constexpr int kBarriers = (kW8 ? 3 * STAGES : 2 * STAGES) + 2 * kSets;
  static constexpr int kSmemBytes = STAGES * kStage + 2 * kB16 + 1024 + 8 * kBarriers;
  static constexpr int kTileK = kW8 ? 64 : GemmTraits<kKind>::kTileK;  // elements: 128 fp8, 64 bf16 / W8A16
  static constexpr bool kTileScales = kKind == kKindFp8 && (kWS == kWBlock || kAM == kAGroup);
  static constexpr bool kPromote = kKind == kKindFp8 && !kFastAcc;
  static constexpr int kAcc = BN / 2;  // f32 accumulators a thread holds for m64nBN
  static constexpr int NF = BN / 8;
  // Promoted fp8 runs 256- and 224-wide tiles as two halves (m64n128, m64n112), so that the
  // partial sums of one half and the accumulators fit the registers.
  static constexpr int kHalvesN = kPromote && BN >= 224 ? 2 : 1;
  static constexpr int kHalfN = BN / kHalvesN;
  static constexpr int kPartAcc = kAcc / kHalvesN;
  // Weight block scales: one per 64 tile columns (the plan takes this kernel for block scales
  // only where scale blocks are whole multiples of 64 rows, so no 64-column slot straddles two).
  static constexpr int kSlots = BN / 64;
  static constexpr int kGroupM = 8;
  static_assert(!kW8 || STAGES >= 2, "W8A16 converts the tile after the one in the MMAs");
  static_assert(!kFastAcc || (kKind == kKindFp8 && !kTileScales),
                "fast accumulation: fp8 with channel or tensor scales (block and group scales promote per tile)");
  static_assert(BM == 64 || BM == 128, "one or two consumer warpgroups");
  static_assert(!kPingPong || (BM == 64 && !kW8),
                "ping-pong tiles are 64 rows a warpgroup (W8A16 converts B with both warpgroups on one tile)");
  static_assert(BN == 128 || BN == 224 || BN == 256, "no wgmma wrapper for this tile");
  // 224 wide: 28 KiB of B a stage, so that a 128-row fp8 or bf16 ring holds five stages in
  // 227 KiB where 256-wide ones hold four. Weight and activation scales a tensor, channel or
  // token only: block scales take 64-column slots, group scales a whole group a GEMM1 tile.
  static_assert(BN != 224 || (!kW8 && !kTileScales && kQuantGroup == 0), "224-wide tiles: no block or group scales");
  static_assert(!kGated || BN / 2 <= 256, "a TMA box holds at most 256 rows");
  static_assert(kQuantGroup == 0 || (kKind == kKindFp8 && kGated && kAM == kAGroup && kQuantGroup >= 8 &&
                                     (BN / 2) % kQuantGroup == 0),
                "the fused requantization takes whole activation groups of a GEMM1 tile");

  // Entry b of the walk -> (m tile, n tile): groups of `group_m` m tiles (MoeArgs::group_m, else
  // kGroupM), m fastest inside a group, then n.
  __device__ __forceinline__ static void tile_of(int b, int m_tiles, int n_tiles, int group_m, int& mt, int& nt) {
    const int per_group = group_m * n_tiles;
    const int group = b / per_group, in = b - group * per_group;
    const int first = group * group_m;
    const int rows = min(group_m, m_tiles - first);
    mt = first + in % rows;
    nt = in / rows;
  }

  // What entry b of the walk gives this block: its m tile, n tile and expert; `valid` false for
  // a cluster's second block past the last tile (its rows are all padding), `shared` when both
  // blocks of the cluster have the same expert, so that the weight tile is multicast. Without
  // clusters the walk is over m tiles; with them over pairs of m tiles (2q, 2q + 1), the block
  // of rank r taking 2q + r.
  struct TileRef {
    int tile, nt, e;
    bool valid, shared;
  };
  // The m extent of the walk: m tiles, or (clusters) pairs of them.
  __device__ __forceinline__ static int walk_m(const MoeArgs& a) { return kMc ? (a.max_tiles + 1) / 2 : a.max_tiles; }
  __device__ __forceinline__ static TileRef decode(const MoeArgs& a, int b, int n_tiles, int group_m, int used, u32 rank) {
    TileRef t;
    if (!kMc) {
      tile_of(b, a.max_tiles, n_tiles, group_m, t.tile, t.nt);
      t.e = a.tile_expert[t.tile];
      t.valid = true;
      t.shared = false;
      return t;
    }
    int q;
    tile_of(b, walk_m(a), n_tiles, group_m, q, t.nt);
    const int t0 = 2 * q;
    const bool second = t0 + 1 < used;
    const int e0 = a.tile_expert[t0], e1 = second ? a.tile_expert[t0 + 1] : e0;
    t.tile = t0 + static_cast<int>(rank);
    t.valid = rank == 0 || second;
    t.e = rank == 0 ? e0 : e1;
    t.shared = e0 == e1;
    return t;
  }

  // W8A16, by consumer warpgroup cw: its share of tile kc's codes (slot kc % STAGES, once their
  // TMA has landed) to bf16 tile kc & 1, whose earlier MMAs the caller has waited for. A 16-byte
  // group of codes is permuted (moe_repack.cuh: word t holds codes 2t, 2t+1, 2t+8, 2t+9), so its
  // words' low halves are codes 0..7 (chunk 2c of the bf16 row) and their high halves 8..15.
  __device__ __forceinline__ static void convert_codes(u8* smem, int kc, int cw, int ctid, u32 bfull0) {
#if __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
    constexpr int kRows = BN / kConsumers;  // rows of B a warpgroup converts
    const int s = kc % STAGES;
    mbar_wait(bfull0 + 8 * s, (kc / STAGES) & 1);
    const u8* codes = smem + s * kStage + kAStage;
    u8* out = smem + STAGES * kStage + (kc & 1) * kB16;
#pragma unroll
    for (int i = cw * kRows * 4 + (ctid & 127); i < (cw + 1) * kRows * 4; i += 128) {
      const int r = i >> 2, c = i & 3;
      const uint4 w = *reinterpret_cast<const uint4*>(codes + i * 16);
      uint4 lo, hi;
      i8x4_to_bf16x2x2(w.x, lo.x, hi.x);
      i8x4_to_bf16x2x2(w.y, lo.y, hi.y);
      i8x4_to_bf16x2x2(w.z, lo.z, hi.z);
      i8x4_to_bf16x2x2(w.w, lo.w, hi.w);
      *reinterpret_cast<uint4*>(out + swz(r, 2 * c, 128)) = lo;
      *reinterpret_cast<uint4*>(out + swz(r, 2 * c + 1, 128)) = hi;
    }
    fence_proxy_async();  // generic-proxy writes, read by wgmma (async proxy)
#endif
  }

  // The producer warpgroup's threads meet (named barrier 2).
  __device__ __forceinline__ static void producers_meet() { asm volatile("bar.sync 2, 128;\n" ::: "memory"); }

  // The consumer warpgroups meet (named barrier 1; the producer never joins it).
  __device__ __forceinline__ static void consumers_meet() {
    asm volatile("bar.sync 1, %0;\n" ::"n"(kConsumers * 128) : "memory");
  }

  // GEMM1 with per-group activations whose groups lie inside the tile's BN/2 columns
  // (kQuantGroup > 0): silu(gate) * up of the thread's two rows, each group's max |h| over the
  // quad that holds the row, then the fp8 codes and the group scales straight into a2q and a2s.
  // It computes what store_gated's f32 h followed by moe_quant_h (quantize_row, kAGroup) does, to
  // the bit: the same products, the same maximum (order-free), scale and quotients (ScaleDivider).
  // h itself is never written and the quantization pass is not launched (gemm1_quant_group).
  template <class Scales>
  __device__ __forceinline__ static void store_quantized(const MoeArgs& a, const GemmGeom<kGated>& geo, int n0,
                                                         const int (&prow)[2], int t, float (&acc)[kAcc],
                                                         Scales scales) {
#if __CUDA_ARCH__ >= 890
    constexpr int NC = NF / 2;                  // gate fragments; up fragment j + NC: same columns
    constexpr int kGroups = (BN / 2) / kQuantGroup;  // groups of one tile row
    constexpr int kFragsPerGroup = kQuantGroup / 8;
    const int groups_row = (geo.N + kQuantGroup - 1) / kQuantGroup;
    constexpr float sa = 1.0f;  // per-group activation scales were applied in the promotion
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int p = prow[hf];
      float mx[kGroups];
#pragma unroll
      for (int g = 0; g < kGroups; ++g) mx[g] = 0.0f;
#pragma unroll
      for (int j = 0; j < NC; ++j) {
        const int col = n0 + j * 8 + 2 * t;
        float w[4] = {1.0f, 1.0f, 1.0f, 1.0f};
        if (col < geo.N) scales(col, w);
        float& g0 = acc[4 * j + 2 * hf];
        float& g1 = acc[4 * j + 2 * hf + 1];
        const float u0 = acc[4 * (j + NC) + 2 * hf], u1 = acc[4 * (j + NC) + 2 * hf + 1];
        const bool in = col < geo.N;  // N is a multiple of 16, so col + 1 is in too
        const float h0 = in ? silu(g0 * sa * w[0]) * (u0 * sa * w[2]) : 0.0f;
        const float h1 = in ? silu(g1 * sa * w[1]) * (u1 * sa * w[3]) : 0.0f;
        g0 = h0;  // the gate accumulators hold h from here on
        g1 = h1;
        mx[j / kFragsPerGroup] = fmaxf(mx[j / kFragsPerGroup], fmaxf(fabsf(h0), fabsf(h1)));
      }
      float sc[kGroups];
#pragma unroll
      for (int g = 0; g < kGroups; ++g) {
        // The row's other columns of the group are in the quad's other three lanes.
        float m = fmaxf(mx[g], __shfl_xor_sync(0xffffffffu, mx[g], 1));
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
        sc[g] = group_scale(m);
      }
      u8* codes = a.a2q + static_cast<long long>(p < 0 ? 0 : p) * a.inter;
#pragma unroll
      for (int g = 0; g < kGroups; ++g) {
        // quant2's x / s without a division per value (ScaleDivider: the same quotients).
        const ScaleDivider div(sc[g]);
        if constexpr (kFragsPerGroup % 8 == 0) {
          // Sixteen bytes a lane (moe_tile.cuh's wide stores): fragments j0 .. j0 + 7's code
          // pairs, packed two fragments a word, transposed across the quad, so that lane t holds
          // fragments j0 + 2t and j0 + 2t + 1 whole; every lane runs the shuffles, padding rows
          // included.
#pragma unroll
          for (int j0 = g * kFragsPerGroup; j0 < (g + 1) * kFragsPerGroup; j0 += 8) {
            u32 w[4];
#pragma unroll
            for (int k = 0; k < 4; ++k) {
              const int j = j0 + 2 * k;
              const u32 lo = f32x2_to_e4m3x2(div(acc[4 * j + 2 * hf]), div(acc[4 * j + 2 * hf + 1]));
              const u32 hi = f32x2_to_e4m3x2(div(acc[4 * (j + 1) + 2 * hf]), div(acc[4 * (j + 1) + 2 * hf + 1]));
              w[k] = (lo & 0xffffu) | (hi << 16);
            }
            quad_transpose(w);  // w[s]: lane s's columns of fragments j0 + 2t (low) and + 1 (high)
            const int col = n0 + (j0 + 2 * t) * 8;
            if (p >= 0 && col < geo.N)
              *reinterpret_cast<uint4*>(codes + col) =
                  make_uint4(__byte_perm(w[0], w[1], 0x5410), __byte_perm(w[2], w[3], 0x5410),
                             __byte_perm(w[0], w[1], 0x7632), __byte_perm(w[2], w[3], 0x7632));
          }
        } else {
#pragma unroll
          for (int j = g * kFragsPerGroup; j < (g + 1) * kFragsPerGroup; ++j) {
            const int col = n0 + j * 8 + 2 * t;
            if (p >= 0 && col < geo.N)
              *reinterpret_cast<u16*>(codes + col) =
                  f32x2_to_e4m3x2(div(acc[4 * j + 2 * hf]), div(acc[4 * j + 2 * hf + 1]));
          }
        }
        const int gcol = n0 + g * kQuantGroup;
        if (p >= 0 && t == 0 && gcol < geo.N) a.a2s[static_cast<long long>(p) * groups_row + gcol / kQuantGroup] = sc[g];
      }
    }
#endif
  }

  // tmap_half (clusters only): boxes of half the tile's B rows (GEMM1: the gate or the up half),
  // the share of the weight tile one block of the cluster loads for both.
  __device__ __forceinline__ static void run(const MoeArgs& a, const TmaMap& tmap_b, u8* smem_raw,
                                             const TmaMap* tmap_half = nullptr) {
#if __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
    // Per-tile lists the consumers read, kSets sets: the producer fills the next tiles' while
    // the consumers still read theirs (tile j: set j % kSets). s_arow is the producer's own.
    __shared__ int s_pair[kSets][BM];
    // The entry of the flattened grid the set describes; -1: no more (ping-pong: -2 for the
    // warpgroup whose partner saw -1 first, see the consumers' loop).
    __shared__ int s_tile[kSets];
    __shared__ int s_next;      // the producer's thread 0 hands the entry it took to the others
    __shared__ int s_arow[BM];  // A row of each tile row (GEMM1: the pair's token), -1 for padding
    __shared__ alignas(8) float s_wcol[kSets][TileColScales<kWS, kGated, BN>::kAny ? BN : 1];  // the tile's weight scales
    // Clusters: the entry rank 0 took, written into rank 1's s_peer_next; s_hand[0] (in rank 1):
    // written, s_hand[1] (in rank 0): read, one phase a tile.
    __shared__ int s_peer_next;
    __shared__ alignas(8) unsigned long long s_hand[kMc ? 2 : 1];
    const GemmGeom<kGated> geo(a);
    const int n_tiles = kGated ? (geo.N + BN / 2 - 1) / (BN / 2) : (geo.N + BN - 1) / BN;
    // The flattened (m tile, n tile) grid. A persistent block takes entries from a counter of
    // the launch (zeroed by prepare) in the order blocks ask for them, as the hardware hands out
    // blocks, so that the tiles in flight stay a compact window of the walk (a fixed stride
    // lets fast and slow blocks drift apart, and L2 with them: measured 12-18 % slower GEMM2s).
    const int grid_tiles = walk_m(a) * n_tiles;
    const int group_m = a.group_m > 0 ? a.group_m : kGroupM;
    const int used_tiles = *a.num_tiles;
    int* const counter = a.tile_counters + (kGated ? 0 : 1);
    // The next entry of a tile in use, -1 when none is left (the producer's thread 0 asks).
    auto take = [&]() {
      for (;;) {
        const int b = atomicAdd(counter, 1);
        if (b >= grid_tiles) return -1;
        int tile, nt;
        tile_of(b, walk_m(a), n_tiles, group_m, tile, nt);
        if ((kMc ? 2 * tile : tile) < used_tiles) return b;
      }
    };
    const u32 rank = kMc ? cluster_ctarank() : 0;
    const u32 hand0 = smem_u32(&s_hand[0]);
    // Clusters: rank 0 takes the entry of the block pair's tile j and hands it to rank 1.
    auto take_shared = [&](int j) {
      if (!kMc) return take();
      if (rank == 0) {
        const int b = take();
        if (j > 0) mbar_wait_cluster(hand0 + 8, (j - 1) & 1);  // rank 1 has read entry j - 1
        cluster_store_u32(cluster_map(smem_u32(&s_peer_next), 1), static_cast<u32>(b));
        mbar_arrive_cluster(cluster_map(hand0, 1));
        return b;
      }
      mbar_wait_cluster(hand0, j & 1);
      const int b = *static_cast<volatile int*>(&s_peer_next);
      mbar_arrive_cluster(cluster_map(hand0 + 8, 0));
      return b;
    };
    u8* smem = reinterpret_cast<u8*>((reinterpret_cast<unsigned long long>(smem_raw) + 1023) & ~1023ull);
    const u32 s_base = smem_u32(smem);
    const u32 b16_0 = s_base + STAGES * kStage;  // W8A16's two bf16 B tiles (1024-aligned)
    const u32 full0 = b16_0 + 2 * kB16, empty0 = full0 + 8 * STAGES;
    const u32 bfull0 = empty0 + 8 * STAGES;  // W8A16 only: the codes' TMA a slot
    // A tile's lists written (producer) and read to the end of its epilogue (consumers), per set.
    const u32 meta_full0 = bfull0 + (kW8 ? 8 * STAGES : 0), meta_empty0 = meta_full0 + 8 * kSets;
    const int tid = threadIdx.x, wg = tid >> 7;
    if (tid == 0) {
#pragma unroll
      for (int s = 0; s < STAGES; ++s) {
        // The producer's threads (+ the TMA issuer, whose bytes W8A16 counts on its own barrier).
        mbar_init(full0 + 8 * s, kW8 ? 128 : 128 + 1);
        // Every warp of the tile's consumers (clusters: of both blocks, since either block's
        // producer writes its half of B into both).
        mbar_init(empty0 + 8 * s, kTileWGs * 4 * (kMc ? 2 : 1));
        if (kW8) mbar_init(bfull0 + 8 * s, 1);
      }
      for (int s = 0; s < kSets; ++s) {
        mbar_init(meta_full0 + 8 * s, 128);              // every producer thread
        mbar_init(meta_empty0 + 8 * s, kTileWGs * 128);  // every thread of the tile's consumers
      }
      if (kMc) {
        mbar_init(hand0, 1);
        mbar_init(hand0 + 8, 1);
      }
      asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
      fence_proxy_async();
    }
    // Clusters: no block touches the other's barriers before both have initialized theirs.
    if (kMc)
      cluster_sync();
    else
      __syncthreads();
    const int KT = (geo.K + kTileK - 1) / kTileK;

    if (wg == 0) {
      // ---------------------------------------------------------------- producer
      setmaxnreg_dec<kProducerRegs>();
      const int I = a.inter, H = a.hidden;
      const u8* a_base;
      long long lda;
      if (kGated) {
        a_base = kKind == kKindFp8 ? a.a1q : static_cast<const u8*>(a.x);
        lda = kKind == kKindFp8 ? static_cast<long long>(H) : a.x_stride * 2;
      } else {
        a_base = (kKind == kKindFp8 && kAM != kAStatic) ? a.a2q : static_cast<const u8*>(a.h);
        lda = static_cast<long long>(I) * GemmTraits<kKind>::kAElem;
      }
      const int a_row_bytes = geo.K * GemmTraits<kKind>::kAElem;
      // A is the plan's workspace (fp8 GEMM1's quantized x, every GEMM2's h) or the caller's x
      // (bf16 and W8A16 GEMM1). MoePlan keeps the workspace's rows below 2^31 elements of at most
      // 2 bytes, so 32-bit offsets reach them; the caller's x has the caller's row pitch.
      constexpr bool kA32 = !kGated || kKind == kKindFp8;
      // Each thread copies chunk c (16 bytes) of rows r0, r0 + 16, ... of every A tile.
      const int c = tid & 7, r0 = tid >> 3;
      for (int it = 0, j = 0;; ++j) {  // it: K tiles queued, j: tiles taken
        const int set = j % kSets;
        if (j >= kSets) mbar_wait(meta_empty0 + 8 * set, ((j - kSets) / kSets) & 1);  // tile j - kSets's epilogue is done
        producers_meet();  // every thread has read the previous tile's rows from s_arow
        if (tid == 0) s_next = take_shared(j);
        producers_meet();
        const int b = s_next;
        if (tid == 0) s_tile[set] = b;
        if (b < 0) {  // the consumers stop at this set
          mbar_arrive(meta_full0 + 8 * set);
          if (kPingPong) {  // and the other warpgroup at the next one
            const int j2 = j + 1, set2 = j2 % kSets;
            if (j2 >= kSets) mbar_wait(meta_empty0 + 8 * set2, ((j2 - kSets) / kSets) & 1);
            if (tid == 0) s_tile[set2] = -2;
            mbar_arrive(meta_full0 + 8 * set2);
          }
          break;
        }
        const TileRef tr = decode(a, b, n_tiles, group_m, used_tiles, rank);
        const int tile = tr.tile, e = tr.e;
        const int n0 = tr.nt * (kGated ? BN / 2 : BN);
        for (int r = tid; r < BM; r += 128) {
          const int p = tr.valid ? a.sorted_pair[tile * BM + r] : -1;
          s_pair[set][r] = p;
          s_arow[r] = p >= 0 ? p / geo.a_div : -1;  // one division a row and tile, not a stage
        }
        TileColScales<kWS, kGated, BN>::fill(a, e, n0, geo.N, s_wcol[set], tid, 128);
        producers_meet();  // every row of s_arow written before any thread gathers through it
        mbar_arrive(meta_full0 + 8 * set);
        // This thread's rows of the tile as byte offsets of chunk c at K tile 0, held in
        // registers for the tile's K loop: a stage then costs no shared load and no 64-bit
        // multiply a row (the address arithmetic was the producer's busiest code under ncu).
        GatherRows<kA32, BM / 16> rows;
#pragma unroll
        for (int i = 0; i < BM / 16; ++i) rows.set(i, a_base, s_arow[r0 + 16 * i], lda, c * 16);
        const int b_row = e * H + n0;  // GEMM2: w2 as E * H rows
        for (int kt = 0; kt < KT; ++kt, ++it) {
          const int s = it % STAGES;
          if (it >= STAGES) mbar_wait(empty0 + 8 * s, ((it / STAGES) - 1) & 1);
          const u32 sA = s_base + s * kStage, full = full0 + 8 * s, bbar = kW8 ? bfull0 + 8 * s : full;
          if (tid == 0) {
            mbar_arrive_expect_tx(bbar, kBStage);
            if (kMc && tr.shared) {
              // This block's half of the weight tile, into both blocks at the same offset.
              const u32 dst = sA + kAStage + rank * (BN / 2) * 128;
              if (kGated)
                tma_load_4d_multicast(dst, tmap_half, kt * kTileK, n0, static_cast<int>(rank), e, bbar, 0x3);
              else
                tma_load_2d_multicast(dst, tmap_half, kt * kTileK, b_row + static_cast<int>(rank) * (BN / 2), bbar, 0x3);
            } else if (kGated) {
              // w13 as [E][2][I][H]: one box of BN/2 gate rows and the same columns' up rows.
              tma_load_4d(sA + kAStage, &tmap_b, kt * kTileK, n0, 0, e, bbar);
            } else {
              tma_load_2d(sA + kAStage, &tmap_b, kt * kTileK, b_row, bbar);
            }
          }
          const bool k_ok = kt * 128 + c * 16 < a_row_bytes;
#pragma unroll
          for (int i = 0; i < BM / 16; ++i) {
            const int r = r0 + 16 * i;
            const bool ok = rows.has(i) && k_ok;
            const u8* src = ok ? rows.at(i, a_base, kt * 128) : a_base;
#ifdef MOEQ_WS_A_PREFETCH_256
            cp_async16_l2_256(sA + swz(r, c, 128), src, ok);
#else
            cp_async16(sA + swz(r, c, 128), src, ok);
#endif
          }
          cp_async_mbar_arrive(full);
        }
      }
      if (kMc) cluster_sync();  // neither block leaves while the other may still write into it
      return;
    }

    // ------------------------------------------------------------------ consumers
    setmaxnreg_inc<kConsumerRegs>();
    const int cw = wg - 1, ctid = tid - 128, lane = tid & 31, wq = (ctid >> 5) & 3;
    const int g = lane >> 2, t = lane & 3;
    const BlockScaleRows<kGated> sws(a);
    const FastDiv kb_of(kWS == kWBlock ? sws.bk : 1);  // sws.bk is 0 without block scales
    const float* as_base = kGated ? a.a1s : a.a2s;
    // Ping-pong turns: after issuing tile j's MMAs a warpgroup arrives on barrier 3 + j % 2;
    // before tile j's (j > 0) it waits on 3 + (j - 1) % 2, where the other one arrived.
    auto turn_wait = [&](int j) {
      if (kPingPong && j > 0) asm volatile("bar.sync %0, 256;\n" ::"r"(3 + ((j - 1) & 1)) : "memory");
    };
    auto turn_done = [&](int j) {
      if (kPingPong) asm volatile("bar.arrive %0, 256;\n" ::"r"(3 + (j & 1)) : "memory");
    };
    // Slot s read by this warp's MMAs: free for this block's producer and (clusters) the other
    // block's, which writes its half of B into this block's slot too.
    auto release = [&](int s) {
      mbar_arrive(empty0 + 8 * s);
      if (kMc) mbar_arrive_cluster(cluster_map(empty0 + 8 * s, rank ^ 1));
    };
    for (int j = kPingPong ? cw : 0;; j += kPingPong ? 2 : 1) {  // j: the block's tiles, in the order taken
      const int set = j % kSets;
      mbar_wait(meta_full0 + 8 * set, (j / kSets) & 1);
      const int b = s_tile[set];
      if (b < 0) {
        // -1: the first index past the last tile, whose warpgroup takes the turn the other
        // one's last tile gave; -2: the index after it (no turn was given).
        if (b == -1) turn_wait(j);
        break;
      }
      int it = j * KT;  // K tiles of the ring consumed before this tile (every tile has KT)
      const TileRef tr = decode(a, b, n_tiles, group_m, used_tiles, rank);
      const int e = tr.e;
      const int n0 = tr.nt * (kGated ? BN / 2 : BN);
      const int r0 = (kPingPong ? 0 : cw * 64) + wq * 16 + g;
      const int prow[2] = {s_pair[set][r0], s_pair[set][r0 + 8]};

      int sw_row[kSlots];
#pragma unroll
      for (int q = 0; q < kSlots; ++q) {
        sw_row[q] = -1;
        if (kTileScales && kWS == kWBlock) {
          const int r = q * 64;
          const int col = kGated ? n0 + (r < BN / 2 ? r : r - BN / 2) : n0 + r;
          sw_row[q] = BlockScaleRows<kGated>::row_offset(a, e, col, kGated && r >= BN / 2 ? 1 : 0, geo.N);
        }
      }
      // The epilogue's per-row factors (activation scale, router weight), loaded now so that
      // their latency passes behind the K loop instead of starting the epilogue.
      const RowFactors rf[2] = {row_factors<kAM, kGated>(a, geo, prow[0]), row_factors<kAM, kGated>(a, geo, prow[1])};
      const int as_row0 = kAM == kAGroup ? group_scale_row(a, geo, prow[0]) : -1;
      const int as_row1 = kAM == kAGroup ? group_scale_row(a, geo, prow[1]) : -1;

      float acc[kAcc];
#pragma unroll
      for (int i = 0; i < kAcc; ++i) acc[i] = 0.0f;
      const int a_off = (kPingPong ? 0 : cw) * 64 * 128;  // the warpgroup's rows of the A tile
      turn_wait(j);

      if constexpr (kPromote) {
        float part[kPartAcc];
        for (int kt = 0; kt < KT; ++kt, ++it) {
          const int s = it % STAGES;
          // The tile's scales, read before the wait so their latency hides behind it.
          float sa0 = 1.0f, sa1 = 1.0f, sw[kSlots];
#pragma unroll
          for (int q = 0; q < kSlots; ++q) sw[q] = 1.0f;
          if (kAM == kAGroup) {
            const int kg = group_of(kt * 128, a.act_group);
            sa0 = as_row0 >= 0 ? as_base[as_row0 + kg] : 0.0f;
            sa1 = as_row1 >= 0 ? as_base[as_row1 + kg] : 0.0f;
          }
          if (kTileScales && kWS == kWBlock) {
            const int kb = kb_of(kt * 128);
#pragma unroll
            for (int q = 0; q < kSlots; ++q) sw[q] = sws.at(sw_row[q], kb);
          }
          mbar_wait(full0 + 8 * s, (it / STAGES) & 1);
          fence_proxy_async();  // the cp.async (generic proxy) A tile, read by wgmma (async proxy)
          const u32 sA = s_base + s * kStage;
          const unsigned long long da = smem_desc(sA + a_off);
#pragma unroll
          for (int hn = 0; hn < kHalvesN; ++hn) {
            const unsigned long long db = smem_desc(sA + kAStage + hn * kHalfN * 128);
            fence_regs<kPartAcc>(part);
            wgmma_fence();
#pragma unroll
            for (int ks = 0; ks < 4; ++ks) {
              if constexpr (kHalfN == 112)
                wgmma_e4m3_n112(part, da + 2 * ks, db + 2 * ks, ks > 0);
              else
                wgmma_e4m3_n128(part, da + 2 * ks, db + 2 * ks, ks > 0);
            }
            wgmma_commit();
            wgmma_wait0();
            fence_regs<kPartAcc>(part);
            if (hn == kHalvesN - 1 && lane == 0) release(s);
            // Half hn holds fragments [hn * NF / 2, (hn + 1) * NF / 2) of the tile; slot of
            // fragment f: (column f * 8) / 64.
            promote_part<NF / kHalvesN>(acc + hn * kPartAcc, part, sa0, sa1,
                                        [&](int f) { return sw[(hn * (NF / kHalvesN) + f) / 8]; });
          }
        }
        turn_done(j);
      } else {
        if (kW8) convert_codes(smem, it, cw, ctid, bfull0);
        for (int kt = 0; kt < KT; ++kt, ++it) {
          const int s = it % STAGES;
          if (kW8) consumers_meet();  // both warpgroups' shares of tile kt are converted
          mbar_wait(full0 + 8 * s, (it / STAGES) & 1);
          fence_proxy_async();
          const u32 sA = s_base + s * kStage;
          const unsigned long long da = smem_desc(sA + a_off);
          const unsigned long long db = smem_desc(kW8 ? b16_0 + (it & 1) * kB16 : sA + kAStage);
          fence_regs<kAcc>(acc);
          wgmma_fence();
#pragma unroll
          for (int ks = 0; ks < 4; ++ks) {
            if constexpr (kKind == kKindFp8 && BN == 256)
              wgmma_e4m3_n256(acc, da + 2 * ks, db + 2 * ks, 1);
            else if constexpr (kKind == kKindFp8 && BN == 224)
              wgmma_e4m3_n224(acc, da + 2 * ks, db + 2 * ks, 1);
            else if constexpr (kKind == kKindFp8)
              wgmma_e4m3_n128(acc, da + 2 * ks, db + 2 * ks, 1);
            else if constexpr (BN == 256)
              wgmma_bf16_n256(acc, da + 2 * ks, db + 2 * ks, 1);
            else if constexpr (BN == 224)
              wgmma_bf16_n224(acc, da + 2 * ks, db + 2 * ks, 1);
            else
              wgmma_bf16_n128(acc, da + 2 * ks, db + 2 * ks, 1);
          }
          wgmma_commit();
          // The previous K tile's MMAs are done once at most this one is pending: its stage is free.
          wgmma_wait1();
          fence_regs<kAcc>(acc);
          if (kt > 0 && lane == 0) release((it - 1) % STAGES);
          if (kW8 && kt + 1 < KT) {
            // K tile kt - 1's MMAs are done in both warpgroups: its bf16 tile takes tile kt + 1,
            // converted while tile kt's MMAs run.
            consumers_meet();
            convert_codes(smem, it + 1, cw, ctid, bfull0);
          }
        }
        turn_done(j);  // every MMA of the tile issued
        wgmma_wait0();
        fence_regs<kAcc>(acc);
        // The tile's last stage is free too (the producer may be filling the next tile).
        if (KT > 0 && lane == 0) release((it - 1) % STAGES);
      }

      auto out_col = [&](int f) {
        const int r = f * 8 + 2 * t;
        return kGated ? n0 + (r < BN / 2 ? r : r - BN / 2) : n0 + r;
      };
      // Wide stores (moe_tile.cuh) where the output is bf16: y2, and h of bf16 and int8 weights.
      constexpr bool kWideGated = kGated && kKind != kKindFp8 && (NF / 2) % 4 == 0;
      constexpr bool kWideDown = !kGated && NF % 4 == 0;
      if constexpr (kQuantGroup > 0) {
        store_quantized(a, geo, n0, prow, t, acc, TileColScales<kWS, kGated, BN>{s_wcol[set], n0});
      } else if (kWideGated || (kWideDown && y2_bf16(a))) {
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const auto acc_of = [&](int f, int q) { return acc[4 * f + 2 * hf + q]; };
          const TileColScales<kWS, kGated, BN> scales{s_wcol[set], n0};
          if constexpr (kWideGated) store_gated_wide<NF>(a, geo.N, prow[hf], n0, acc_of, scales, rf[hf].sa);
          if constexpr (kWideDown) store_down_wide<NF>(a, geo.N, prow[hf], n0, acc_of, scales, rf[hf]);
        }
      } else {
#pragma unroll
        for (int hf = 0; hf < 2; ++hf)
          store_row<kKind, kWS, kAM, kGated, NF>(a, geo, e, prow[hf], out_col,
                                                 [&](int f, int q) { return acc[4 * f + 2 * hf + q]; }, 0,
                                                 TileColScales<kWS, kGated, BN>{s_wcol[set], n0},
                                                 rf[hf]);
      }
      mbar_arrive(meta_empty0 + 8 * set);  // this thread is done with the tile's lists
    }
    if (kMc) cluster_sync();  // the producers' exit meets this (see there)
#else
    static_assert(kKind < 0, "warp-specialized kernels need sm_90a");
#endif
  }
};

}  // namespace moeq_kernels
