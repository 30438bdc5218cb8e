// The one argument block every MoE kernel takes by value. Plain C++ with no CUDA or library
// header, so that the host launch code (gpu/moe_runner.cpp) and NVRTC see the same layout;
// the host checks sizeof and a few offsets against its own compile.
#pragma once

#if defined(__CUDACC_RTC__) || defined(__CUDACC__)
#define MOEQ_HOST_DEVICE __host__ __device__
#else
#define MOEQ_HOST_DEVICE
#endif

namespace moeq_kernels {

// Rows of `cols` values one block of `threads` quantizes at once: its warps split into
// groups that each take a row's 256-column segments in turn (kernels and launch code agree).
MOEQ_HOST_DEVICE inline int quant_rows_per_block(int cols, int threads) {
  const int warps = threads / 32, segments = (cols + 255) / 256;
  return warps / (segments < warps ? (segments > 0 ? segments : 1) : warps);
}

// Scheme codes shared by host and device. Values are part of the kernel-source contract.
enum Kind : int { kKindFp8 = 0, kKindBf16 = 1, kKindW8A16 = 2 };
enum WScale : int { kWNone = 0, kWTensor = 1, kWChannel = 2, kWBlock = 3 };
enum AMode : int { kANone = 0, kAStatic = 1, kATensor = 2, kAToken = 3, kAGroup = 4 };
enum OutDtype : int { kOutBf16 = 0, kOutF32 = 1 };

struct MoeArgs {
  // ---- problem (one chunk of at most max_tokens tokens)
  int M;             // tokens in this chunk
  int topk;
  int num_experts;   // local experts
  int first_expert;  // global id of local expert 0
  int hidden;        // H
  int inter;         // I (this TP shard)
  int act_group;     // kAGroup: columns per activation scale
  int bm;            // rows of a tile in the expert-sorted row list (the GEMMs' BM)
  int max_tiles;     // grid.x of the GEMMs: an upper bound on the tiles the align step makes
  int amax_parts;    // partial maxima written by the amax kernels (kATensor)
  int out_dtype;     // OutDtype
  int group_m;       // persistent GEMMs: m tiles per group of their walk (0 = the kernel's default)

  // ---- inputs, device pointers
  const void* x;             // [M, H] bf16, rows `x_stride` elements apart
  long long x_stride;
  const int* topk_ids;       // [M, topk] global expert ids
  const float* topk_weights; // [M, topk]
  void* out;                 // [M, H] bf16 or f32, rows `out_stride` elements apart
  long long out_stride;

  // ---- weights and scales (canonical layout, see gpu/moe_runner.hpp)
  const void* w13;   // [E, 2I, H]: gate rows then up rows
  const void* w2;    // [E, H, I]
  const float* s13;  // tensor [E, 2]; channel [E, 2I]; block [E, 2 * s13_rows, s13_cols]
  const float* s2;   // tensor [E];    channel [E, H];  block [E, s2_rows, s2_cols]
  int s13_rows, s13_cols, s13_bn, s13_bk;  // block grid of one half of w13 (rows per half)
  int s2_rows, s2_cols, s2_bn, s2_bk;
  float a1_static;   // kAStatic: scale of x
  float a2_static;   // kAStatic: scale of the intermediate

  // ---- workspace, device pointers (gpu/moe_runner.cpp lays it out)
  int* sorted_pair;    // [max_tiles * bm]: pair index (token * topk + slot) or -1 (padding)
  int* tile_expert;    // [max_tiles]: local expert of each tile
  int* num_tiles;      // [1]
  unsigned char* a1q;  // [M, H] fp8 codes of x
  float* a1s;          // token [M]; group [M, ceil(H / act_group)]; tensor [1]
  float* amax_part;    // [amax_parts]
  void* h;             // [M * topk, I]: bf16 (bf16/W8A16), fp8 codes (static) or f32 (dynamic)
  unsigned char* a2q;  // [M * topk, I] fp8 codes of the intermediate (dynamic modes)
  float* a2s;          // token [M * topk]; group [M * topk, ceil(I / act_group)]; tensor [1]
  float* y2;           // [k_splits][M * topk, H]: router-weighted down-projection of each pair
                       // (one slab per K split of GEMM2, summed by the combine); f32, or bf16
                       // when the output is bf16 and K is not split (y2_bf16)
  int* expert_count;   // [E] pairs per local expert (multi-block align; zeroed before)
  int* expert_cursor;  // [E] rows handed out per expert (multi-block align; zeroed before);
                       // follows expert_count in memory
  int align_blocks;    // blocks of prepare that align: 1 = one block counts and scatters alone
  int k_splits;        // GEMM2 (mma.sync) splits K over grid.z into this many slabs of y2 (>= 1)
  int* tile_counters;  // [2]: the next grid entry a persistent GEMM1 / GEMM2 block takes (zeroed by prepare)
};

// y2 holds bf16 rows: the output is bf16 (rounded to bf16 at the end anyway) and each pair's row
// is whole (K-split partial rows stay f32, so that no partial sum is rounded).
MOEQ_HOST_DEVICE inline bool y2_bf16(const MoeArgs& a) { return a.out_dtype == kOutBf16 && a.k_splits == 1; }

// A CUDA tensor map (CUtensorMap: 128 bytes, 64-byte aligned), encoded by the host for the
// warp-specialized GEMMs' TMA loads of B and passed as a __grid_constant__ kernel parameter.
// Every GEMM kernel takes one; the others ignore it.
struct alignas(64) TmaMap {
  unsigned long long words[16];
};

// Router arguments (moe_routing.cuh).
struct RouteArgs {
  const float* logits;  // [M, E]
  const float* bias;    // [E] or null
  int* ids;             // [M, k]
  float* weights;       // [M, k]
  int M, E, topk;
  int sigmoid;          // 0 = softmax, 1 = sigmoid
  int renormalize;
  int n_group;          // 0 = no grouping; else <= 32
  int topk_group;
  float scale;          // routed scaling factor
};

constexpr int kRouteWarps = 4;
constexpr int kRouteMaxExperts = 1024;

}  // namespace moeq_kernels
