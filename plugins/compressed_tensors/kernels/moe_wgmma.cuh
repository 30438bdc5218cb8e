// Grouped GEMM on Hopper warpgroup MMA (wgmma, sm_90a): the kernel of the large-M buckets for
// fp8 and bf16 weights. Same tile list, loader and epilogues as moe_gemm.cuh (moe_tile.cuh);
// the difference is the math: each warpgroup (4 warps) issues m64nBNk32 (e4m3) or m64nBNk16
// (bf16) wgmma reading both operands straight from the swizzled shared tiles through matrix
// descriptors, so no fragment ever passes through registers.
//
// One block = BM/64 warpgroups; all threads feed the cp.async ring. Per K tile: wait for the
// tile, fence the async proxy (cp.async writes are generic-proxy, wgmma reads async-proxy),
// barrier, queue the next tile, then four wgmma over the tile's 128 bytes of K and wait.
// FP8: Hopper's e4m3 wgmma accumulates with fewer bits than fp32 (DeepSeek-V3 report §3.3.2;
// measured here: 4e-3 relative error at K=512 when chained), so every K tile's product goes
// to `part` (scale-d = 0 on its first step) and is added into `acc` on the CUDA cores, times
// the tile's block / group scales when the scheme has them, as DeepGEMM does.
#pragma once
#include "moe_tile.cuh"
#include "moeq/sdk/device/wgmma.cuh"

namespace moeq_kernels {

// acc[4j + q] += part[4j + q] * sa(row of q) * w(j) over NF fragments: the promotion of one
// K tile's partial sums (rows g and g + 8 of the thread's fragments take sa0 and sa1).
template <int NF, class WOf>
__device__ __forceinline__ void promote_part(float* acc, const float* part, float sa0, float sa1, WOf w_of) {
#pragma unroll
  for (int j = 0; j < NF; ++j) {
    const float w = w_of(j);
    acc[4 * j + 0] += part[4 * j + 0] * (sa0 * w);
    acc[4 * j + 1] += part[4 * j + 1] * (sa0 * w);
    acc[4 * j + 2] += part[4 * j + 2] * (sa1 * w);
    acc[4 * j + 3] += part[4 * j + 3] * (sa1 * w);
  }
}

#if __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
// The shapes the heuristics use: fp8 m64n128k32 (promoted per K tile, once per 128-column half
// of a 256-wide tile), bf16 m64n256k16.
template <int kKind, int N>
__device__ __forceinline__ void wgmma_tile_step(float* d, unsigned long long da, unsigned long long db, int accumulate) {
  static_assert((kKind == kKindFp8 && (N == 128 || N == 256)) || (kKind == kKindBf16 && N == 256),
                "no wgmma wrapper for this tile");
  if (kKind == kKindFp8)
    wgmma_e4m3_n128(d, da, db, accumulate);
  else
    wgmma_bf16_n256(d, da, db, accumulate);
}
#endif

template <int kKind, int kWS, int kAM, bool kGated, int BM, int BN, int STAGES, bool kPipe = true>
struct WgmmaGemm {
  static constexpr int kWarpgroups = BM / 64;
  static constexpr int kThreads = 128 * kWarpgroups;
  using Loader = TileLoader<kKind, kAM, kGated, BM, BN, kThreads>;
  static constexpr int kStage = Loader::kAStage + Loader::kBStage;
  static constexpr int kSmemBytes = STAGES * kStage + 1024;  // + slack to align the ring to 1024
  static constexpr bool kPromote = kKind == kKindFp8;
  static constexpr bool kTileScales = kKind == kKindFp8 && (kWS == kWBlock || kAM == kAGroup);
  static constexpr int kAcc = BN / 2;  // f32 accumulators a thread holds for m64nBN
  static constexpr int NF = BN / 8;    // n8 fragments
  // fp8 tiles 256 wide run as two 128-column halves per K tile, each into `part` and promoted
  // in turn (a second full accumulator set would not fit in registers); the other warpgroup's
  // MMAs fill the tensor core while one promotes. Block scales then cover whole halves: the
  // plan picks 256 only where scale blocks are multiples of 128 rows.
  static constexpr int kHalvesN = kPromote && BN == 256 ? 2 : 1;
  static constexpr int kPartAcc = kAcc / kHalvesN;
  static_assert(kKind != kKindFp8 || BN == 128 || BN == 256, "fp8 wgmma tiles are 128 or 256 wide");
  // One tile's MMAs in flight during the previous tile's promotion (moe_wgmma.cuh's mainloop);
  // 256-wide fp8 tiles have no registers for a second `part` and run tile by tile.
  // Block scales per fragment would need a second set of them too (spills): those tiles also
  // run tile by tile.
  static constexpr bool kPipelined = kPipe && kHalvesN == 1 && STAGES >= 3 && !(kTileScales && kWS == kWBlock);
  static_assert(kKind != kKindW8A16, "W8A16 runs on the mma.sync or the warp-specialized kernel");
  static_assert(BM % 64 == 0, "wgmma tiles are whole warpgroups of 64 rows");
  static_assert(Loader::kARow == 128 && kStage % 1024 == 0, "wgmma tiles are 128-byte rows in 1024-byte atoms");

  __device__ __forceinline__ static void run(const MoeArgs& a, u8* smem_raw) {
#if __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
    __shared__ int s_pair[BM];
    __shared__ alignas(8) float s_wcol[TileColScales<kWS, kGated, BN>::kAny ? BN : 1];  // the tile's weight scales
    const int tile = blockIdx.x;
    if (tile >= *a.num_tiles) return;
    u8* smem = reinterpret_cast<u8*>((reinterpret_cast<unsigned long long>(smem_raw) + 1023) & ~1023ull);
    const int e = a.tile_expert[tile];
    const int tid = threadIdx.x, lane = tid & 31, wg = tid >> 7, wq = (tid >> 5) & 3;
    const GemmGeom<kGated> geo(a);
    const int n0 = blockIdx.y * (kGated ? BN / 2 : BN);
    for (int r = tid; r < BM; r += kThreads) s_pair[r] = a.sorted_pair[tile * BM + r];
    TileColScales<kWS, kGated, BN>::fill(a, e, n0, geo.N, s_wcol, tid, kThreads);
    __syncthreads();
    const Loader loader(a, geo, e, n0, s_pair, tid);
    const int g = lane >> 2, t = lane & 3;
    const int prow[2] = {s_pair[wg * 64 + wq * 16 + g], s_pair[wg * 64 + wq * 16 + g + 8]};

    // Scale rows of this thread's columns and rows (block / group schemes): per fragment for
    // 128-wide tiles, per 128-column half for 256-wide ones.
    constexpr int kSW = kTileScales && kWS == kWBlock ? (kHalvesN == 2 ? 2 : NF) : 1;
    int sw_row[kSW];
    const BlockScaleRows<kGated> sws(a);
    const FastDiv kb_of(kWS == kWBlock ? sws.bk : 1);  // sws.bk is 0 without block scales
#pragma unroll
    for (int j = 0; j < kSW; ++j) sw_row[j] = -1;
    if (kTileScales && kWS == kWBlock) {
#pragma unroll
      for (int j = 0; j < kSW; ++j) {
        const int r = kHalvesN == 2 ? j * 128 : j * 8 + 2 * t;
        const int col = kGated ? n0 + (r < BN / 2 ? r : r - BN / 2) : n0 + r;
        const bool up = kGated && (kHalvesN == 2 ? j == 1 : j >= NF / 2);
        sw_row[j] = BlockScaleRows<kGated>::row_offset(a, e, col, up ? 1 : 0, geo.N);
      }
    }
    const float* as_base = kGated ? a.a1s : a.a2s;
    const int as_row0 = kAM == kAGroup ? group_scale_row(a, geo, prow[0]) : -1;
    const int as_row1 = kAM == kAGroup ? group_scale_row(a, geo, prow[1]) : -1;

    float acc[kAcc];
    float part[kPromote ? kPartAcc : 1];
#pragma unroll
    for (int i = 0; i < kAcc; ++i) acc[i] = 0.0f;
    part[0] = 0.0f;

    // Output column of fragment j's column pair (GEMM1: gate fragments, then up).
    auto out_col = [&](int j) {
      const int r = j * 8 + 2 * t;
      return kGated ? n0 + (r < BN / 2 ? r : r - BN / 2) : n0 + r;
    };

    const int KT = (geo.K + GemmTraits<kKind>::kTileK - 1) / GemmTraits<kKind>::kTileK;
    if constexpr (kPipelined) {
      // NOTE: one K tile's MMAs stay in flight while the previous tile's partial sums are
      // promoted (fp8: two `part` sets, used in turn) and while the block meets at the next
      // barrier; wait_group 1 leaves the newest group running. The ring therefore refills the
      // stage of tile kt - 2 at tile kt (both warpgroups finished with it before this tile's
      // barrier), with STAGES - 2 tiles ahead instead of STAGES - 1.
      float part1[kPromote ? kPartAcc : 1], sw1[kSW], sa1_0 = 1.0f, sa1_1 = 1.0f;
      float sw0[kSW], sa0_0 = 1.0f, sa0_1 = 1.0f;
      part1[0] = 0.0f;
#pragma unroll
      for (int j = 0; j < kSW; ++j) sw0[j] = sw1[j] = 1.0f;
#pragma unroll
      for (int st = 0; st < STAGES - 2; ++st) {
        if (st < KT) loader.load(smem + st * kStage, st);
        cp_async_commit();
      }
      // Issues tile kt into `cur` (fp8) or acc (bf16) and reads its scales into (csa0, csa1, csw).
      auto issue = [&](int kt, float (&cur)[kPromote ? kPartAcc : 1], float& csa0, float& csa1, float (&csw)[kSW]) {
        cp_async_wait<STAGES - 3>();
        fence_proxy_async();
        __syncthreads();
        const int nk = kt + STAGES - 2;
        if (nk < KT) loader.load(smem + (nk % STAGES) * kStage, nk);
        cp_async_commit();
        const u32 sA = smem_u32(smem + (kt % STAGES) * kStage);
        const unsigned long long da = smem_desc(sA + wg * 64 * 128);
        const unsigned long long db = smem_desc(sA + Loader::kAStage);
        float* d = kPromote ? cur : acc;
        fence_regs<kPromote ? kPartAcc : kAcc>(d);
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < 4; ++ks)
          wgmma_tile_step<kKind, BN>(d, da + 2 * ks, db + 2 * ks, kPromote ? (ks > 0) : 1);
        wgmma_commit();
        if (kAM == kAGroup) {
          const int kg = group_of(kt * 128, a.act_group);
          csa0 = as_row0 >= 0 ? as_base[as_row0 + kg] : 0.0f;
          csa1 = as_row1 >= 0 ? as_base[as_row1 + kg] : 0.0f;
        }
        if (kTileScales && kWS == kWBlock) {
          const int kb = kb_of(kt * 128);
#pragma unroll
          for (int j = 0; j < kSW; ++j) csw[j] = sws.at(sw_row[j], kb);
        }
      };
      auto promote = [&](float (&prev)[kPromote ? kPartAcc : 1], float psa0, float psa1, const float (&psw)[kSW]) {
        if constexpr (kPromote) {
          fence_regs<kPartAcc>(prev);
          promote_part<NF>(acc, prev, psa0, psa1, [&](int j) { return psw[kSW == 1 ? 0 : j]; });
        }
      };
      for (int kt = 0; kt < KT; kt += 2) {
        issue(kt, part, sa0_0, sa0_1, sw0);
        if (kt > 0) {
          wgmma_wait1();
          promote(part1, sa1_0, sa1_1, sw1);
        }
        if (kt + 1 < KT) {
          issue(kt + 1, part1, sa1_0, sa1_1, sw1);
          wgmma_wait1();
          promote(part, sa0_0, sa0_1, sw0);
        }
      }
      wgmma_wait0();
      if (kPromote) {
        if ((KT - 1) % 2 == 0)
          promote(part, sa0_0, sa0_1, sw0);
        else
          promote(part1, sa1_0, sa1_1, sw1);
      }
      fence_regs<kAcc>(acc);
    } else {
      loader.template prologue<STAGES>(smem, kStage, KT);
      for (int kt = 0; kt < KT; ++kt) {
        cp_async_wait<STAGES - 2>();
        fence_proxy_async();
        __syncthreads();
        loader.template refill<STAGES>(smem, kStage, kt, KT);

        const u32 sA = smem_u32(smem + (kt % STAGES) * kStage);
        const unsigned long long da = smem_desc(sA + wg * 64 * 128);
        // NOTE: the tile's scales are read before the MMAs are waited for, so their latency hides.
        float sa0 = 1.0f, sa1 = 1.0f, sw[kSW];
        sw[0] = 1.0f;
        if (kAM == kAGroup) {
          const int kg = group_of(kt * 128, a.act_group);
          sa0 = as_row0 >= 0 ? as_base[as_row0 + kg] : 0.0f;
          sa1 = as_row1 >= 0 ? as_base[as_row1 + kg] : 0.0f;
        }
#pragma unroll
        for (int hn = 0; hn < kHalvesN; ++hn) {
          // Half hn of B starts 128 rows (16 KiB, 1024 descriptor units) further on.
          const unsigned long long db = smem_desc(sA + Loader::kAStage + hn * 128 * 128);
          float* d = kPromote ? part : acc;
          fence_regs<kPromote ? kPartAcc : kAcc>(d);
          wgmma_fence();
#pragma unroll
          for (int ks = 0; ks < 4; ++ks)
            wgmma_tile_step<kKind, BN>(d, da + 2 * ks, db + 2 * ks, kPromote ? (ks > 0) : 1);
          wgmma_commit();
          if (hn == 0 && kTileScales && kWS == kWBlock) {
            const int kb = kb_of(kt * 128);
#pragma unroll
            for (int j = 0; j < kSW; ++j) sw[j] = sws.at(sw_row[j], kb);
          }
          wgmma_wait0();
          fence_regs<kPromote ? kPartAcc : kAcc>(d);
          if constexpr (kPromote)  // `part` holds NF / kHalvesN fragments: half hn's
            promote_part<NF / kHalvesN>(acc + hn * kPartAcc, part, sa0, sa1,
                                        [&](int j) { return sw[kSW == 1 ? 0 : (kHalvesN == 2 ? hn : j)]; });
        }
      }
    }
    cp_async_wait<0>();

#pragma unroll
    for (int hf = 0; hf < 2; ++hf)
      store_row<kKind, kWS, kAM, kGated, NF>(a, geo, e, prow[hf], out_col,
                                             [&](int j, int q) { return acc[4 * j + 2 * hf + q]; }, 0,
                                             TileColScales<kWS, kGated, BN>{s_wcol, n0},
                                             row_factors<kAM, kGated>(a, geo, prow[hf]));
#else
    static_assert(kKind < 0, "wgmma kernels need sm_90a");
#endif
  }
};

}  // namespace moeq_kernels
