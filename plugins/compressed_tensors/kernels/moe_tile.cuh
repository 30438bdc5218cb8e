// Pieces shared by the grouped-GEMM mainloops (moe_gemm.cuh: mma.sync, moe_wgmma.cuh: Hopper
// wgmma): the gathering tile loader, the scale lookups and the epilogues.
//
// Shared-memory tiles: every row holds one K tile of one operand row, 128 bytes of B (256 of
// A for W8A16, whose A is bf16 over a 128-wide K tile), and 16-byte chunk c of row r sits at
// chunk (c ^ r) mod 8 of its 128-byte half. That is ldmatrix's conflict-free layout and, with
// 1024-byte aligned tiles, exactly the 128-byte swizzle that wgmma descriptors describe.
#pragma once
#include "moe_device.cuh"

namespace moeq_kernels {

template <int kKind>
struct GemmTraits;
template <>
struct GemmTraits<kKindFp8> {
  static constexpr int kAElem = 1, kBElem = 1, kTileK = 128, kARow = 128;
};
template <>
struct GemmTraits<kKindBf16> {
  static constexpr int kAElem = 2, kBElem = 2, kTileK = 64, kARow = 128;
};
template <>
struct GemmTraits<kKindW8A16> {  // B codes are repacked in 16-byte groups (moe_repack.cuh)
  static constexpr int kAElem = 2, kBElem = 1, kTileK = 128, kARow = 256;
};

// x / d for 0 <= x < 2^31 and d >= 1 without the integer division's instruction sequence (a
// few dozen instructions on the K loop's critical path, once a K tile): q = (x * m) >> (32 + l)
// with l = ceil(log2 d) and m = ceil(2^(32 + l) / d), exact for these x (m * d exceeds 2^(32 + l)
// by e < d, and x * e < 2^31 * 2^l). Built once a block; the scale blocks along K take it.
struct FastDiv {
  unsigned long long m;
  int l;
  __device__ __forceinline__ explicit FastDiv(int d) {
    l = d <= 1 ? 0 : 32 - __clz(d - 1);
    m = ((1ull << (32 + l)) + static_cast<unsigned long long>(d) - 1) / static_cast<unsigned long long>(d);
  }
  __device__ __forceinline__ int operator()(int x) const {
    return static_cast<int>((static_cast<unsigned long long>(x) * m) >> (32 + l));
  }
};

// The activation group of element k of a row: groups are powers of two (MoePlan checks), so a
// shift, not a division, on the K loop's path.
__device__ __forceinline__ int group_of(int k, int act_group) { return k >> (__ffs(act_group) - 1); }

// Byte offset of 16-byte chunk c of shared row r (rows of 128 or 256 bytes).
__device__ __forceinline__ int swz(int r, int c, int row_bytes) {
  return r * row_bytes + (((c & ~7) | ((c ^ r) & 7)) << 4);
}

// Problem geometry of one GEMM as a block sees it.
template <bool kGated>
struct GemmGeom {
  int K, N;   // reduction length; output columns (intermediate columns for GEMM1)
  int a_div;  // A row of a pair: pair / a_div (GEMM1 reads tokens, GEMM2 the pair's own row)
  __device__ __forceinline__ explicit GemmGeom(const MoeArgs& a)
      : K(kGated ? a.hidden : a.inter), N(kGated ? a.inter : a.hidden), a_div(kGated ? a.topk : 1) {}
};

// cp.async loads of one (A, B) K tile into a stage: A rows gathered through the tile's pairs
// (padding rows read nothing and become zeros), B rows from the expert's weights (GEMM1: BN/2
// gate rows, then the BN/2 up rows of the same columns). K and N tails are zero-filled.
template <int kKind, int kAM, bool kGated, int BM, int BN, int kThreads>
struct TileLoader {
  using T = GemmTraits<kKind>;
  static constexpr int kARow = T::kARow, kBRow = 128;
  static constexpr int kAStage = BM * kARow, kBStage = BN * kBRow;
  static constexpr int kChA = kARow / 16, kChB = kBRow / 16;
  static constexpr int kNA = (BM * kChA + kThreads - 1) / kThreads;
  static constexpr int kNB = (BN * kChB + kThreads - 1) / kThreads;

  // NOTE: registers hold only the gathered A rows (32-bit offsets; the plan keeps every
  // activation buffer under 2^31 bytes) and the B base; shared offsets, B rows and bounds
  // follow from the thread index in load(), which leaves room for the wide wgmma tiles'
  // accumulators.
  const u8* a_base;
  const u8* b_base;
  unsigned a_off[kNA];
  bool a_ok[kNA];
  long long ldb;
  int a_row_bytes, b_row_bytes, tid_, n0_, n_, inter_;

  __device__ __forceinline__ TileLoader(const MoeArgs& a, const GemmGeom<kGated>& g, int e, int n0, const int* s_pair,
                                        int tid)
      : tid_(tid), n0_(n0), n_(g.N), inter_(a.inter) {
    const int I = a.inter, H = a.hidden;
    long long lda;  // bytes
    if (kGated) {
      a_base = kKind == kKindFp8 ? a.a1q : static_cast<const u8*>(a.x);
      lda = kKind == kKindFp8 ? static_cast<long long>(H) : a.x_stride * 2;
    } else {
      a_base = (kKind == kKindFp8 && kAM != kAStatic) ? a.a2q : static_cast<const u8*>(a.h);
      lda = static_cast<long long>(I) * T::kAElem;
    }
    ldb = static_cast<long long>(g.K) * T::kBElem;
    b_base = static_cast<const u8*>(kGated ? a.w13 : a.w2) + static_cast<long long>(e) * (kGated ? 2 * I : H) * ldb;
    a_row_bytes = g.K * T::kAElem;
    b_row_bytes = g.K * T::kBElem;
#pragma unroll
    for (int i = 0; i < kNA; ++i) {
      const int idx = tid + i * kThreads;
      const int r = idx / kChA, c = idx % kChA;
      const int p = idx < BM * kChA ? s_pair[r] : -1;
      a_ok[i] = p >= 0;
      a_off[i] = static_cast<unsigned>((p >= 0 ? static_cast<long long>(p / g.a_div) * lda : 0) + c * 16);
    }
  }

  // Queues K tiles [0, STAGES - 1) into stages 0.., one commit group each (empty past KT).
  template <int STAGES>
  __device__ __forceinline__ void prologue(u8* smem, int stage_bytes, int KT) const {
#pragma unroll
    for (int st = 0; st < STAGES - 1; ++st) {
      if (st < KT) load(smem + st * stage_bytes, st);
      cp_async_commit();
    }
  }
  // At K tile kt (once its stage is ready and the previous one is free): queues tile
  // kt + STAGES - 1 into the stage it frees up, as one commit group (empty past KT).
  template <int STAGES>
  __device__ __forceinline__ void refill(u8* smem, int stage_bytes, int kt, int KT) const {
    const int nk = kt + STAGES - 1;
    if (nk < KT) load(smem + (nk % STAGES) * stage_bytes, nk);
    cp_async_commit();
  }

  // sA: the stage's A tile; its B tile follows at sA + kAStage.
  __device__ __forceinline__ void load(u8* sA, int kt) const {
    load_a(sA, kt);
    load_b(sA + kAStage, kt);
  }
  __device__ __forceinline__ void load_a(u8* sA, int kt) const {
#pragma unroll
    for (int i = 0; i < kNA; ++i) {
      const int idx = tid_ + i * kThreads;
      if (idx >= BM * kChA) continue;
      const int r = idx / kChA, c = idx % kChA;
      const bool ok = a_ok[i] && kt * kARow + c * 16 < a_row_bytes;
      cp_async16(smem_u32(sA + swz(r, c, kARow)), a_base + a_off[i] + (ok ? kt * kARow : 0), ok);
    }
  }
  __device__ __forceinline__ void load_b(u8* sB, int kt) const {
#pragma unroll
    for (int i = 0; i < kNB; ++i) {
      const int idx = tid_ + i * kThreads;
      if (idx >= BN * kChB) continue;
      const int r = idx / kChB, c = idx % kChB;
      // GEMM1: BN/2 gate rows, then the up rows of the same columns.
      const int ncol = kGated ? n0_ + (r < BN / 2 ? r : r - BN / 2) : n0_ + r;
      const int grow = kGated && r >= BN / 2 ? inter_ + ncol : ncol;
      const bool ok = ncol < n_ && kt * kBRow + c * 16 < b_row_bytes;
      cp_async16(smem_u32(sB + swz(r, c, kBRow)),
                 b_base + (ok ? static_cast<long long>(grow) * ldb + c * 16 + kt * kBRow : 0), ok);
    }
  }
};

// ------------------------------------------------------------------ scales

// Per-thread scale addressing hoisted out of the K loop: row offsets are fixed per block, so a
// K tile costs one division (the K block index) and plain loads.
template <bool kGated>
struct BlockScaleRows {
  const float* base;
  int cols, bk;
  __device__ __forceinline__ explicit BlockScaleRows(const MoeArgs& a)
      : base(kGated ? a.s13 : a.s2), cols(kGated ? a.s13_cols : a.s2_cols), bk(kGated ? a.s13_bk : a.s2_bk) {}
  // Offset of the scale row of output column col (gate or up half for GEMM1); -1 past N.
  __device__ __forceinline__ static int row_offset(const MoeArgs& a, int e, int col, int up, int n) {
    if (col >= n) return -1;
    if (kGated) return (e * 2 * a.s13_rows + up * a.s13_rows + col / a.s13_bn) * a.s13_cols;
    return (e * a.s2_rows + col / a.s2_bn) * a.s2_cols;
  }
  __device__ __forceinline__ float at(int row_off, int kb) const { return row_off >= 0 ? base[row_off + kb] : 1.0f; }
};

// Offset of pair p's row of per-group activation scales (kAGroup); -1 for padding rows.
template <bool kGated>
__device__ __forceinline__ int group_scale_row(const MoeArgs& a, const GemmGeom<kGated>& g, int p) {
  if (p < 0) return -1;
  return (p / g.a_div) * ((g.K + a.act_group - 1) / a.act_group);
}

// Per-row activation scale applied in the epilogue (per token, per tensor, static).
template <int kAM, bool kGated>
__device__ __forceinline__ float epilogue_act_scale(const MoeArgs& a, int arow) {
  const float* As = kGated ? a.a1s : a.a2s;
  if (kAM == kAToken) return __ldg(As + arow);
  if (kAM == kATensor) return __ldg(As);
  if (kAM == kAStatic) return kGated ? a.a1_static : a.a2_static;
  return 1.0f;
}

// ------------------------------------------------------------------ epilogues
//
// NOTE: the outputs (h, y2) are plain pointers the compiler must assume may alias the scales,
// so a scale load placed after a store waits for it, and an epilogue that loads a column's
// scales next to each store runs one memory latency per store. The weight scales of a tile's
// columns are therefore read into shared memory when the block starts (TileColScales), and the
// epilogue reads each chunk's from there before its stores; only the row's activation scale and
// router weight come from global memory, once a row.

// The weight scales of a tile's columns, read once a block into shared memory (s[BN]: GEMM1's
// gate columns, then the same columns' up ones; GEMM2's columns), so that the epilogue reads
// them without a memory latency per chunk of stores. fill() runs before a block barrier.
template <int kWS, bool kGated, int BN>
struct TileColScales {
  static constexpr bool kAny = kWS == kWTensor || kWS == kWChannel;
  const float* s;
  int n0;
  __device__ __forceinline__ static void fill(const MoeArgs& a, int e, int n0, int n, float* s, int tid, int threads) {
    if (!kAny) return;
    for (int r = tid; r < BN; r += threads) {
      const int half = kGated && r >= BN / 2 ? 1 : 0;
      const int col = n0 + r - half * (BN / 2);
      float v = 1.0f;
      if (col < n) {
        if (kGated)
          v = kWS == kWTensor ? __ldg(a.s13 + 2 * e + half)
                              : __ldg(a.s13 + static_cast<long long>(e) * 2 * a.inter + half * a.inter + col);
        else
          v = kWS == kWTensor ? __ldg(a.s2 + e) : __ldg(a.s2 + static_cast<long long>(e) * a.hidden + col);
      }
      s[r] = v;
    }
  }
  // Weight scales of column pair (col, col + 1) of this tile: GEMM1 gate then up, GEMM2 the
  // two columns (unused entries stay 1).
  __device__ __forceinline__ void operator()(int col, float (&w)[4]) const {
    w[0] = w[1] = w[2] = w[3] = 1.0f;
    if (!kAny) return;
    // col - n0 is even and the arrays are 8-byte aligned (alignas(8)): one 8-byte load a pair.
    const int i = col - n0;
    const float2 g = *reinterpret_cast<const float2*>(s + i);
    w[0] = g.x;
    w[1] = g.y;
    if (kGated) {
      const float2 u = *reinterpret_cast<const float2*>(s + BN / 2 + i);
      w[2] = u.x;
      w[3] = u.y;
    }
  }
};

// GEMM1: gate and up accumulators of intermediate columns (col, col + 1) of pair p ->
// silu(gate) * up, written as the GEMM2 operand (bf16, fp8 codes with the static scale, or
// f32 for the dynamic requantization). col is even and < I; w from load_col_scales. hrow: the
// pair's row of h (GatedOut::row), set once a row; `in`: col inside the row (the values are
// computed either way, so that only the store is predicated and consecutive column pairs'
// arithmetic can interleave instead of each waiting behind a branch).
template <int kKind, int kAM>
struct GatedOut {
  // Bytes an element of h: bf16, an fp8 code, or f32.
  static constexpr int kElem = kKind != kKindFp8 ? 2 : kAM == kAStatic ? 1 : 4;
  __device__ __forceinline__ static u8* row(const MoeArgs& a, int p) {
    return static_cast<u8*>(a.h) + static_cast<long long>(p) * a.inter * kElem;
  }
};
template <int kKind, int kAM>
__device__ __forceinline__ void store_gated(const MoeArgs& a, u8* hrow, bool in, float sa, int col, const float (&w)[4],
                                            float g0, float g1, float u0, float u1) {
  const float h0 = silu(g0 * sa * w[0]) * (u0 * sa * w[2]);
  const float h1 = silu(g1 * sa * w[1]) * (u1 * sa * w[3]);
  u8* const dst = hrow + col * GatedOut<kKind, kAM>::kElem;  // col even: 2, 4 or 8 bytes aligned
  if (kKind != kKindFp8) {
    const u32 v = f32x2_to_bf16x2(h0, h1);
    if (in) *reinterpret_cast<u32*>(dst) = v;
  } else if (kAM == kAStatic) {
#if __CUDA_ARCH__ >= 890
    const u16 v = quant2(h0, h1, a.a2_static);
    if (in) *reinterpret_cast<u16*>(dst) = v;
#endif
  } else {
    if (in) *reinterpret_cast<float2*>(dst) = make_float2(h0, h1);
  }
}

// GEMM2: columns (col, col + 1) of pair p, scaled and multiplied by the router weight tw, into
// y2's slab `slab` (the K split: a.M * topk * H elements apart): f32, or bf16 where y2_bf16
// (half the bytes through GEMM2's stores and the combine's reads; the combine still adds in f32).
// yrow: the pair's row of its slab, as bytes (set once a row by the caller); `in` as store_gated's.
__device__ __forceinline__ void store_down(const MoeArgs& a, u8* yrow, bool in, float sa, float tw, int col,
                                           const float (&w)[4], float v0, float v1) {
  const float y0 = v0 * sa * w[0] * tw, y1 = v1 * sa * w[1] * tw;
  if (y2_bf16(a)) {
    const u32 v = f32x2_to_bf16x2(y0, y1);
    if (in) *reinterpret_cast<u32*>(yrow + col * 2) = v;
  } else {
    if (in) *reinterpret_cast<float2*>(yrow + col * 4) = make_float2(y0, y1);
  }
}

// The per-row factors of the epilogue: the row's activation scale (token or tensor scales) and,
// for GEMM2, the pair's router weight. A kernel that knows its rows before the K loop loads them
// there (the mma.sync GEMMs), so that their latency hides behind the loop instead of adding to
// the block's tail, which at decode is the layer's critical path.
struct RowFactors {
  float sa, tw;
};
template <int kAM, bool kGated>
__device__ __forceinline__ RowFactors row_factors(const MoeArgs& a, const GemmGeom<kGated>& geo, int p) {
  if (p < 0) return {1.0f, 1.0f};
  return {epilogue_act_scale<kAM, kGated>(a, p / geo.a_div), kGated ? 1.0f : __ldg(a.topk_weights + p)};
}

// ------------------------------------------------------------------ wide epilogue stores
//
// An MMA's accumulators give each lane of a quad (the four lanes of one accumulator row) two
// adjacent columns of every n8 fragment. Stored as they lie, a bf16 output gets 4 bytes a lane,
// and one warp store covers 8 rows with 16 bytes each: 8 cache lines in the SM's L1 for 128
// bytes, and a 128 x 256 tile's epilogue is a long run of such stores. The wide epilogues below
// first transpose four fragments' words across the quad (four shuffles a group), so that each
// lane holds one fragment's eight columns: one 16-byte store a lane, a warp store writing 64
// adjacent bytes of each of its rows, a quarter of the store instructions. The values are
// computed as in store_gated / store_down, with the same operations in the same order: the same
// bits land. GEMM2 at M = 8192 took 28-41 % less time on Qwen3-30B-A3B and Granite-3B-A800M
// (H100, 2026-12-07).
//
// Every lane of the warp must run them (shuffles); a padding row (p < 0) only skips its stores.

template <class W>
__device__ __forceinline__ W quad_pick(const W (&v)[4], int k) {
  return k == 0 ? v[0] : k == 1 ? v[1] : k == 2 ? v[2] : v[3];
}
// The word of lane (this lane ^ m).
__device__ __forceinline__ u32 quad_shfl(u32 w, int m) { return __shfl_xor_sync(0xffffffffu, w, m); }
// v[i]: this lane's word of fragment f0 + i. Afterwards v[s] = lane s's word of fragment f0 + t
// (t: this lane's place in its quad), i.e. columns 2s and 2s + 1 of that fragment: a 4 x 4
// transpose in two butterfly stages (quad lanes t and t ^ m swap the two words whose index
// differs from the lane's in bit m), in place.
template <class W>
__device__ __forceinline__ void quad_transpose(W (&v)[4]) {
  const int t = static_cast<int>(threadIdx.x & 3);
#pragma unroll
  for (int m = 1; m <= 2; m <<= 1) {
#pragma unroll
    for (int s = 0; s < 2; ++s) {
      // The s-th of the two indices whose bit m differs from t's.
      const int j = m == 1 ? 2 * s + ((t & 1) ^ 1) : s + 2 * (((t >> 1) & 1) ^ 1);
      const W got = quad_shfl(quad_pick(v, j), m);
#pragma unroll
      for (int k = 0; k < 4; ++k)
        if (j == k) v[k] = got;
    }
  }
}

// One bf16 row, 16 bytes a lane: NC n8 fragments (a multiple of 4) of columns n0 + 8f + 2t and
// + 1, whose values pair_of(f, col, w) gives (w: the column pair's weight scales, 1 past N);
// stored to row[col] when `live` (not a padding row) and the fragment is inside N.
template <int NC, class PairOf, class ScalesOf>
__device__ __forceinline__ void store_bf16_wide(u16* row, bool live, int N, int n0, ScalesOf scales_of, PairOf pair_of) {
  static_assert(NC % 4 == 0, "whole groups of four fragments");
  const int t = static_cast<int>(threadIdx.x & 3);
#pragma unroll
  for (int f0 = 0; f0 < NC; f0 += 4) {
    u32 v[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int col = n0 + (f0 + i) * 8 + 2 * t;
      float w[4] = {1.0f, 1.0f, 1.0f, 1.0f};
      if (col < N) scales_of(col, w);
      const float2 y = pair_of(f0 + i, w);
      v[i] = f32x2_to_bf16x2(y.x, y.y);
    }
    quad_transpose(v);
    const int c = n0 + (f0 + t) * 8;
    if (live && c < N) *reinterpret_cast<uint4*>(row + c) = make_uint4(v[0], v[1], v[2], v[3]);
  }
}

// GEMM2 into bf16 y2 rows (y2_bf16, one slab): store_down's values. NF n8 fragments, fragment f
// holding columns n0 + 8f + 2t and + 1 as acc_of(f, 0) and acc_of(f, 1).
template <int NF, class AccOf, class ScalesOf>
__device__ __forceinline__ void store_down_wide(const MoeArgs& a, int N, int p, int n0, AccOf acc_of, ScalesOf scales_of,
                                                RowFactors f) {
  const float sa = f.sa, tw = f.tw;
  store_bf16_wide<NF>(reinterpret_cast<u16*>(a.y2) + static_cast<long long>(p < 0 ? 0 : p) * a.hidden, p >= 0, N, n0,
                      scales_of, [&](int j, const float (&w)[4]) {
                        return make_float2(acc_of(j, 0) * sa * w[0] * tw, acc_of(j, 1) * sa * w[1] * tw);
                      });
}

// GEMM1 into bf16 h (bf16 and int8 weights): store_gated's values. NF fragments: the gate ones
// [0, NF/2), then the up ones of the same columns [NF/2, NF); gate fragment f holds intermediate
// columns n0 + 8f + 2t and + 1.
// NOTE: not for the f32 h of fp8 with dynamic activation scales: a version that traded two
// fragments' float2 words so that each lane stored four adjacent floats made GEMM1 5-14 % slower
// (Qwen3-30B-A3B and Granite-3B-A800M at M = 8192, Mixtral-8x7B at 1024; H100, 2026-12-07), where
// the plain 8-byte stores already fill whole 32-byte sectors.
template <int NF, class AccOf, class ScalesOf>
__device__ __forceinline__ void store_gated_wide(const MoeArgs& a, int N, int p, int n0, AccOf acc_of, ScalesOf scales_of,
                                                 float sa) {
  constexpr int NC = NF / 2;
  store_bf16_wide<NC>(static_cast<u16*>(a.h) + static_cast<long long>(p < 0 ? 0 : p) * a.inter, p >= 0, N, n0,
                      scales_of, [&](int j, const float (&w)[4]) {
                        return make_float2(silu(acc_of(j, 0) * sa * w[0]) * (acc_of(j + NC, 0) * sa * w[2]),
                                           silu(acc_of(j, 1) * sa * w[1]) * (acc_of(j + NC, 1) * sa * w[3]));
                      });
}

// The epilogue of one accumulator row of pair p (-1 = padding, skipped): NF n8 fragments,
// fragment j holding columns col_of(j), col_of(j) + 1 as acc_of(j, 0), acc_of(j, 1). GEMM1's
// fragments are gate ones, then the up ones of the same columns. GEMM2 writes y2's slab `slab`.
// scales_of(col, w) gives the weight scales of column pair col (TileColScales); f the row's
// factors (row_factors).
template <int kKind, int kWS, int kAM, bool kGated, int NF, class ColOf, class AccOf, class ScalesOf>
__device__ __forceinline__ void store_row(const MoeArgs& a, const GemmGeom<kGated>& geo, int e, int p, ColOf col_of,
                                          AccOf acc_of, int slab, ScalesOf scales_of, RowFactors f) {
  if (p < 0) return;
  constexpr int NC = kGated ? NF / 2 : NF;  // column pairs of the row
  const float sa = f.sa, tw = f.tw;
  // The pair's output row, once: each column pair then costs one 32-bit offset from it.
  u8* const orow =
      kGated ? GatedOut<kKind, kAM>::row(a, p)
             : reinterpret_cast<u8*>(a.y2) + (static_cast<long long>(slab) * a.M * a.topk * a.hidden +
                                              static_cast<long long>(p) * a.hidden) * (y2_bf16(a) ? 2 : 4);
  // NOTE: in chunks of eight column pairs: one shared-memory latency per chunk, and at most 32 scale
  // registers next to the accumulators (a whole 256-wide row's would spill).
  // (A 224-wide tile has 14 or 28 pairs: its last chunk is partial.)
  constexpr int kChunk = NC < 8 ? NC : 8;
#pragma unroll
  for (int j0 = 0; j0 < NC; j0 += kChunk) {
    float w[kChunk][4];
#pragma unroll
    for (int jj = 0; jj < kChunk; ++jj) {
      // Past N the tile's scale array holds 1 (TileColScales::fill), so the load needs no check.
      if (j0 + jj < NC)
        scales_of(col_of(j0 + jj), w[jj]);
      else
        w[jj][0] = w[jj][1] = w[jj][2] = w[jj][3] = 1.0f;
    }
#pragma unroll
    for (int jj = 0; jj < kChunk; ++jj) {
      const int j = j0 + jj;
      if (j >= NC) continue;
      const int col = col_of(j);
      const bool in = col < geo.N;
      if (kGated)
        store_gated<kKind, kAM>(a, orow, in, sa, col, w[jj], acc_of(j, 0), acc_of(j, 1), acc_of(j + NF / 2, 0),
                                acc_of(j + NF / 2, 1));
      else
        store_down(a, orow, in, sa, tw, col, w[jj], acc_of(j, 0), acc_of(j, 1));
    }
  }
}

}  // namespace moeq_kernels
