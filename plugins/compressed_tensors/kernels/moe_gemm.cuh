// Grouped GEMM over the expert-sorted row tiles made by the align step, on mma.sync tensor
// cores (e4m3 m16n8k32 for fp8, bf16 m16n8k16 for bf16 and int8 weight-only): the kernel of
// the small-M buckets, and of every bucket before sm_90a. moe_wgmma.cuh and sm90_moe_ws.cuh are
// the Hopper ones for large M.
//
// One block computes a BM x BN tile of one expert; cp.async feeds a STAGES-deep ring of
// swizzled tiles (moe_tile.cuh) and ldmatrix reads them conflict-free. GEMM2 may split K over
// grid.z (a.k_splits: decode, where the experts hit x N tiles leave SMs idle): block z sums its
// share of the K tiles into y2's slab z, and the combine adds the slabs in order. GEMM1 (kGated) holds
// gate and up accumulators of the same intermediate column in one thread, so the epilogue
// applies silu(gate) * up directly; GEMM2 multiplies by the router weight.
//
// FP8 block scales (and per-group activation scales) are applied per scale period inside the
// K loop (docs/MOE_SEMANTICS.md §2.2): partial sums of one period accumulate in `part`, then
// acc += part * a_scale(row, period) * w_scale(col block, period).
//
// MOEQ_MMA_TMA_B (sm_90a; defined by the generated source where the plan takes it): the B tile
// of a stage comes as one TMA box (the plan's weight map, 128-byte swizzle, which is the layout
// ldmatrix reads) completing on the stage's mbarrier, issued by thread 0, instead of 16-byte
// cp.async copies by every thread; A stays gathered by cp.async. The ring is 1024-byte aligned
// (the swizzle's atom), which costs 1 KiB more shared memory.
#pragma once
#include "moe_tile.cuh"
#ifdef MOEQ_MMA_TMA_B
#include "moe_wgmma.cuh"
#include "moeq/sdk/device/tma.cuh"
#endif

namespace moeq_kernels {

template <int kKind, int kWS, int kAM, bool kGated, int BM, int BN, int WARPS_M, int WARPS_N, int STAGES,
          int SCALE_K>
struct GroupedGemm {
  using T = GemmTraits<kKind>;
  static constexpr int kThreads = 32 * WARPS_M * WARPS_N;
  using Loader = TileLoader<kKind, kAM, kGated, BM, BN, kThreads>;
  static constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;
  static constexpr int MI = WM / 16, NI = WN / 8;
  static constexpr int kARow = Loader::kARow, kBRow = Loader::kBRow;
  static constexpr int kStage = Loader::kAStage + Loader::kBStage;
  static constexpr bool kPromote = kKind == kKindFp8 && (kWS == kWBlock || kAM == kAGroup);
  // MOEQ_MMA_SCALE_PREFETCH (defined by the generated source under MOEQ_CT_SCALE_PREFETCH=1,
  // for measuring): the promoted kernels load a K tile's scales one tile ahead.
#ifdef MOEQ_MMA_SCALE_PREFETCH
  static constexpr bool kScalePrefetch = kPromote;
#else
  static constexpr bool kScalePrefetch = false;
#endif
  // B-steps (32 bytes of B) per scale period; a period of 16 (a TP shard whose I/tp is an odd
  // multiple of 16 refines the block grid to 16) splits every step in two halves instead.
  static constexpr int kStepsPerPeriod = SCALE_K >= 32 ? SCALE_K / 32 : 1;
  static constexpr int kHalves = kPromote && SCALE_K == 16 ? 2 : 1;
  static constexpr int kSmemBytes = STAGES * kStage;
  static_assert(WM % 16 == 0 && WN % 16 == 0, "warp tile must be a multiple of 16x16");
  static_assert(!kGated || (BN / 2) % 8 == 0, "gated tiles need whole n8 fragments per half");
  static_assert(!kPromote || ((SCALE_K == 16 || SCALE_K % 32 == 0) && 128 % SCALE_K == 0),
                "scale period of 16, 32, 64 or 128");
  static_assert(kHalves == 1 || kKind == kKindFp8, "half steps exist for fp8 (e4m3 m16n8k32) only");

  // Shared row of B that fragment j (n8) of warp column wn starts at.
  __device__ __forceinline__ static int brow_of(int wn, int j) {
    if (!kGated) return wn * WN + j * 8;
    constexpr int half = NI / 2;  // gate fragments, then the up fragments of the same columns
    return j < half ? wn * (WN / 2) + j * 8 : BN / 2 + wn * (WN / 2) + (j - half) * 8;
  }

#ifdef MOEQ_MMA_TMA_B
  static constexpr bool kTmaB = true;
  // smem_raw: the dynamic shared memory, 1 KiB more than kSmemBytes.
  __device__ __forceinline__ static void run(const MoeArgs& a, const TmaMap& tmap_b, u8* smem_raw) {
    body(a, &tmap_b, reinterpret_cast<u8*>((reinterpret_cast<unsigned long long>(smem_raw) + 1023) & ~1023ull));
  }
#else
  static constexpr bool kTmaB = false;
  __device__ __forceinline__ static void run(const MoeArgs& a, u8* smem) { body(a, nullptr, smem); }
#endif

  __device__ __forceinline__ static void body(const MoeArgs& a, const TmaMap* tmap_b, u8* smem) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 890
    static_assert(kKind != kKindFp8, "fp8 (e4m3) tensor-core kernels need sm_89 or newer");
#endif
    __shared__ int s_pair[BM];
    __shared__ alignas(8) float s_wcol[TileColScales<kWS, kGated, BN>::kAny ? BN : 1];  // the tile's weight scales
    const int tile = blockIdx.x;
    if (tile >= *a.num_tiles) return;
    const int e = a.tile_expert[tile];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp / WARPS_N, wn = warp % WARPS_N;
    const GemmGeom<kGated> geo(a);
    const int n0 = blockIdx.y * (kGated ? BN / 2 : BN);
    for (int r = tid; r < BM; r += kThreads) s_pair[r] = a.sorted_pair[tile * BM + r];
    TileColScales<kWS, kGated, BN>::fill(a, e, n0, geo.N, s_wcol, tid, kThreads);
#ifdef MOEQ_MMA_TMA_B
    // One mbarrier a stage (thread 0's expected bytes, completed by the box).
    __shared__ alignas(8) unsigned long long s_bfull[STAGES];
    const u32 bfull0 = smem_u32(s_bfull);
    if (tid == 0) {
#pragma unroll
      for (int st = 0; st < STAGES; ++st) mbar_init(bfull0 + 8 * st, 1);
      asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
      fence_proxy_async();
    }
#endif
    __syncthreads();
    const Loader loader(a, geo, e, n0, s_pair, tid);

    const int g = lane >> 2, t = lane & 3;
    int prow[MI][2];
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) prow[mi][hf] = s_pair[wm * WM + mi * 16 + g + 8 * hf];
    // The epilogue's per-row factors, loaded now so that their latency hides behind the K loop.
    RowFactors rf[MI][2];
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) rf[mi][hf] = row_factors<kAM, kGated>(a, geo, prow[mi][hf]);

    float acc[MI][NI][4];
    float part[kPromote ? MI : 1][kPromote ? NI : 1][4];
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
      for (int j = 0; j < NI; ++j)
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[mi][j][q] = 0.0f;
#pragma unroll
    for (int mi = 0; mi < (kPromote ? MI : 1); ++mi)
#pragma unroll
      for (int j = 0; j < (kPromote ? NI : 1); ++j)
#pragma unroll
        for (int q = 0; q < 4; ++q) part[mi][j][q] = 0.0f;

    // Output column of this thread's column pair in fragment j.
    auto out_col = [&](int j) {
      const int r = brow_of(wn, j) + 2 * t;  // shared row = tile column
      return kGated ? n0 + (r < BN / 2 ? r : r - BN / 2) : n0 + r;
    };

    // Scales of the tile's scale periods, read before its MMAs so that their latency hides
    // behind the math; row offsets are computed once. kPeriods = 128 / SCALE_K per K tile.
    constexpr int kPeriods = kPromote ? 128 / SCALE_K : 1;
    constexpr int kSW = kPromote && kWS == kWBlock ? NI : 1;
    constexpr int kSA = kPromote && kAM == kAGroup ? MI : 1;
    const BlockScaleRows<kGated> sws(a);
    int sw_row[kSW], as_row[kSA][2];
#pragma unroll
    for (int j = 0; j < kSW; ++j)
      sw_row[j] = (kPromote && kWS == kWBlock)
                      ? BlockScaleRows<kGated>::row_offset(a, e, out_col(j), kGated && j >= NI / 2 ? 1 : 0, geo.N)
                      : -1;
#pragma unroll
    for (int mi = 0; mi < kSA; ++mi)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf)
        as_row[mi][hf] = (kPromote && kAM == kAGroup) ? group_scale_row(a, geo, prow[mi][hf]) : -1;
    const float* as_base = kGated ? a.a1s : a.a2s;
    const int ag_shift = __ffs(a.act_group) - 1;  // group_of, hoisted out of the K loop
    const FastDiv kb_of(kWS == kWBlock ? sws.bk : 1);  // sws.bk is 0 without block scales
    // kScalePrefetch: the next K tile's scales are loaded into (nsap, nswp) before this tile's
    // MMAs, so that their latency hides behind them, and moved into (sap, swp) after.
    float sap[kPeriods][kSA][2], swp[kPeriods][kSW];
    float nsap[kPeriods][kSA][2], nswp[kPeriods][kSW];  // unused (and dropped) without prefetch
    auto fetch_scales_into = [&](int kt, auto& dsa, auto& dsw) {
      if (!kPromote) return;
#pragma unroll
      for (int pi = 0; pi < kPeriods; ++pi) {
        const int k_start = kt * T::kTileK + pi * SCALE_K;
        const bool in = k_start < geo.K;
        const int kg = k_start >> ag_shift, kb = kb_of(k_start);
#pragma unroll
        for (int mi = 0; mi < kSA; ++mi)
#pragma unroll
          for (int hf = 0; hf < 2; ++hf)
            dsa[pi][mi][hf] = (kAM == kAGroup && in) ? (as_row[mi][hf] >= 0 ? as_base[as_row[mi][hf] + kg] : 0.0f) : 1.0f;
#pragma unroll
        for (int j = 0; j < kSW; ++j) dsw[pi][j] = (kWS == kWBlock && in) ? sws.at(sw_row[j], kb) : 1.0f;
      }
    };

    auto promote = [&](int pi) {
      if (!kPromote) return;
#pragma unroll
      for (int j = 0; j < NI; ++j)
#pragma unroll
        for (int mi = 0; mi < MI; ++mi)
#pragma unroll
          for (int q = 0; q < 4; ++q) {
            float& pv = part[kPromote ? mi : 0][kPromote ? j : 0][q];
            acc[mi][j][q] += pv * (sap[pi][kSA > 1 ? mi : 0][q >> 1] * swp[pi][kSW > 1 ? j : 0]);
            pv = 0.0f;
          }
    };

    auto compute = [&](int stage, int kt) {
      const u32 sA = smem_u32(smem + stage * kStage);
      const u32 sB = sA + Loader::kAStage;
      if (!kScalePrefetch) fetch_scales_into(kt, sap, swp);
#pragma unroll
      for (int s = 0; s < 4; ++s) {  // 32 bytes of each B row per step
        u32 b[NI][4];
#pragma unroll
        for (int j = 0; j < NI; j += 2) {
          const int r = brow_of(wn, j + (lane >> 4)) + (lane & 7);
          const int c = 2 * s + ((lane >> 3) & 1);
          u32 r0, r1, r2, r3;
          ldmatrix_x4(sB + swz(r, c, kBRow), r0, r1, r2, r3);
          if (kKind == kKindW8A16) {
            i8x4_to_bf16x2x2(r0, b[j][0], b[j][1]);
            i8x4_to_bf16x2x2(r1, b[j][2], b[j][3]);
            i8x4_to_bf16x2x2(r2, b[j + 1][0], b[j + 1][1]);
            i8x4_to_bf16x2x2(r3, b[j + 1][2], b[j + 1][3]);
          } else {
            b[j][0] = r0;
            b[j][1] = r1;
            b[j + 1][0] = r2;
            b[j + 1][1] = r3;
          }
        }
        constexpr int kSub = kKind == kKindW8A16 ? 2 : 1;
        // NOTE: with a 16-element scale period each step runs twice, the B fragment's other K
        // half zeroed (b0 holds k 0..15 of the step, b1 k 16..31), and promotes after each half.
#pragma unroll
        for (int hv = 0; hv < kHalves; ++hv) {
#pragma unroll
          for (int sub = 0; sub < kSub; ++sub) {
#pragma unroll
            for (int mi = 0; mi < MI; ++mi) {
              const int r = wm * WM + mi * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
              const int c = (kKind == kKindW8A16 ? 4 * s + 2 * sub : 2 * s) + (lane >> 4);
              u32 af[4];
              ldmatrix_x4(sA + swz(r, c, kARow), af[0], af[1], af[2], af[3]);
#pragma unroll
              for (int j = 0; j < NI; ++j) {
                if (kKind == kKindFp8) {
#if __CUDA_ARCH__ >= 890
                  float* d = kPromote ? part[kPromote ? mi : 0][kPromote ? j : 0] : acc[mi][j];
                  if (kHalves == 2)
                    mma_e4m3_16832(d, af, hv == 0 ? b[j][0] : 0u, hv == 0 ? 0u : b[j][1]);
                  else
                    mma_e4m3_16832(d, af, b[j][0], b[j][1]);
#endif
                } else {
                  mma_bf16_16816(acc[mi][j], af, b[j][2 * sub], b[j][2 * sub + 1]);
                }
              }
            }
          }
          if (kHalves == 2) promote(2 * s + hv);
        }
        if (kPromote && kHalves == 1 && (s + 1) % kStepsPerPeriod == 0) promote(s / kStepsPerPeriod);
      }
    };

    // ---- main loop over this block's K tiles [kt0, kt0 + n)
    const int KT = (geo.K + T::kTileK - 1) / T::kTileK;
    int kt0 = 0, n = KT;
    if (!kGated && a.k_splits > 1) {
      const int per = (KT + a.k_splits - 1) / a.k_splits;
      kt0 = min(KT, static_cast<int>(blockIdx.z) * per);
      n = min(KT, kt0 + per) - kt0;
    }
    // K tile kt into stage st: A by cp.async (the caller commits), B by cp.async or one TMA box.
    auto load_stage = [&](int st, int kt) {
      u8* sA = smem + st * kStage;
      if constexpr (!kTmaB) {
        loader.load(sA, kt);
      } else {
        loader.load_a(sA, kt);
#ifdef MOEQ_MMA_TMA_B
        if (tid == 0) {
          const u32 bar = bfull0 + 8 * st, sB = smem_u32(sA + Loader::kAStage);
          mbar_arrive_expect_tx(bar, Loader::kBStage);
          if (kGated)  // w13 as [E][2][I][K]: BN/2 gate rows, then the same columns' up rows
            tma_load_4d(sB, tmap_b, kt * T::kTileK, n0, 0, e, bar);
          else  // w2 as E * N rows (rows past N belong to columns the epilogue drops)
            tma_load_2d(sB, tmap_b, kt * T::kTileK, e * geo.N + n0, bar);
        }
#endif
      }
    };
#pragma unroll
    for (int st = 0; st < STAGES - 1; ++st) {
      if (st < n) load_stage(st, kt0 + st);
      cp_async_commit();
    }
    if constexpr (kScalePrefetch)
      if (n > 0) fetch_scales_into(kt0, sap, swp);
    for (int i = 0; i < n; ++i) {
      cp_async_wait<STAGES - 2>();
#ifdef MOEQ_MMA_TMA_B
      mbar_wait(bfull0 + 8 * (i % STAGES), (i / STAGES) & 1);
#endif
      __syncthreads();
      const int ni = i + STAGES - 1;  // into the stage tile i - 1 used (every warp is past it)
      if (ni < n) load_stage(ni % STAGES, kt0 + ni);
      cp_async_commit();
      if constexpr (kScalePrefetch)
        if (i + 1 < n) fetch_scales_into(kt0 + i + 1, nsap, nswp);
      compute(i % STAGES, kt0 + i);
      if constexpr (kScalePrefetch)
        if (i + 1 < n) {
#pragma unroll
          for (int pi = 0; pi < kPeriods; ++pi) {
#pragma unroll
            for (int mi = 0; mi < kSA; ++mi) {
              sap[pi][mi][0] = nsap[pi][mi][0];
              sap[pi][mi][1] = nsap[pi][mi][1];
            }
#pragma unroll
            for (int j = 0; j < kSW; ++j) swp[pi][j] = nswp[pi][j];
          }
        }
    }
    cp_async_wait<0>();

    // ---- epilogue
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf)
        store_row<kKind, kWS, kAM, kGated, NI>(a, geo, e, prow[mi][hf], out_col,
                                               [&](int j, int q) { return acc[mi][j][2 * hf + q]; },
                                               kGated ? 0 : static_cast<int>(blockIdx.z),
                                               TileColScales<kWS, kGated, BN>{s_wcol, n0}, rf[mi][hf]);
  }
};

}  // namespace moeq_kernels
