// The GPU fused-MoE of the compressed_tensors plugin: kernel sets to compile (one per M bucket),
// the workspace they need, and the launch sequence of one apply. Launch-only at run time:
// nothing is allocated, compiled or synchronized, so a run can be captured in a CUDA graph.
//
// Per chunk of at most max_tokens tokens:
//   [amax_x]   partial maxima of x                       (fp8 dynamic per-tensor only)
//   prepare    align pairs by expert + quantize x        (block 0 aligns)
//   gemm1      x @ w13^T, scales, silu(gate) * up -> h    (bf16, fp8 static codes, or f32)
//   [amax_h]   partial maxima of h                       (fp8 dynamic per-tensor only)
//   [quant_h]  h -> fp8 codes and scales                 (fp8 dynamic modes, unless GEMM1's
//              epilogue quantizes: gemm1_quant_group)
//   gemm2      h @ w2^T, scales, x router weight -> y2   (one row per (token, slot): bf16 for a
//              bf16 output, else f32; K may be split into f32 slabs at decode)
//   combine    out[m] = sum of the local slots of y2 (and of their slabs), in order, in f32
#pragma once
#include "../kernels/moe_args.cuh"
#include "tile_heuristics.hpp"

#include <moeq/sdk/cuda.hpp>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace moeq::ct::gpu {

namespace mk = ::moeq_kernels;
namespace cu = ::moeq::sdk::cuda;

// What the kernels compute, in the terms of moe_args.cuh.
struct GpuScheme {
  int kind = mk::kKindFp8;  // Kind
  int wscale = mk::kWChannel;
  int amode = mk::kAToken;
  int act_group = 128;  // kAGroup: columns per activation scale (a power of two in [8, 256])
  int scale_k = 128;    // fp8 block/group scales: K elements per scale period (16, 32, 64 or 128)
  int block_n = 0;      // fp8 block scales: rows of a weight block (gcd over w13 and w2); 0 = none
  std::string label() const;  // "fp8 channel / per-token"
  // What tune tables match on: "fp8.wblock.agroup.g128.k128.bn128", "bf16.wnone.anone".
  std::string key() const;
  // The scheme of a key (nullopt for anything key() would not write).
  static std::optional<GpuScheme> from_key(const std::string& key);
};

// The activation group GEMM1's epilogue quantizes h in (fp8 per-group activations, a
// warp-specialized GEMM1 whose BN/2 columns hold whole groups: sm90_moe_ws.cuh); 0 = h is
// stored in f32 and quantized by moe_quant_h.
int gemm1_quant_group(const GpuScheme& scheme, const GemmTile& gemm1);

struct LayerDims {
  int64_t num_experts = 0;  // local
  int64_t first_expert = 0;
  int64_t hidden = 0;
  int64_t inter = 0;        // I of this shard
  int64_t top_k = 0;
};

// Device pointers of the layer's parameters in the canonical layout:
// w13 [E, 2I, H] (gate rows, then up rows), w2 [E, H, I]; scales f32: tensor s13 [E, 2],
// s2 [E]; channel s13 [E, 2I], s2 [E, H]; block s13 [E, 2 * s13_rows, s13_cols] (the gate
// grid, then the up grid), s2 [E, s2_rows, s2_cols], one entry per (bn x bk) block.
struct LayerWeights {
  const void* w13 = nullptr;
  const void* w2 = nullptr;
  const float* s13 = nullptr;
  const float* s2 = nullptr;
  int s13_rows = 0, s13_cols = 0, s13_bn = 1, s13_bk = 1;
  int s2_rows = 0, s2_cols = 0, s2_bn = 1, s2_bk = 1;
  float a1_static = 1.0f;
  float a2_static = 1.0f;
};

// One apply's tensors (device memory). x bf16 [M, H]; ids int32 [M, k]; weights f32 [M, k];
// out bf16 or f32 [M, H]. Rows of x and out may be padded (stride in elements).
struct RunIo {
  int64_t m = 0;
  const void* x = nullptr;
  int64_t x_stride = 0;
  const int32_t* topk_ids = nullptr;
  const float* topk_weights = nullptr;
  void* out = nullptr;
  int64_t out_stride = 0;
  int out_dtype = mk::kOutBf16;
  // Diagnostics (`moeq bench apply --stage-graphs`): launch only the first this many kernels of
  // the sequence, so that graphs of growing prefixes time each kernel in place; 0: all of them.
  int max_launches = 0;
};

struct KernelSetSource {
  std::string name;    // for the JIT cache and messages
  std::string source;  // includes the embedded headers by name
};

struct DeviceLimits {
  int sm_major = 9;
  int sm_minor = 0;
  int multiprocessors = 132;
  int max_smem_per_block = 227 * 1024;
  std::string arch;  // "sm_90a" as the host compiles for it (ABI 1.2 device_info); may be empty
  int64_t memory_bytes = 0;  // the card's memory (device_info); 0: unknown
};

// The configuration of one layer: validated scheme and shape, buckets, workspace layout.
class MoePlan {
 public:
  // Throws moeq::Error naming what the kernels cannot run (shape, scheme, arch).
  MoePlan(GpuScheme scheme, LayerDims dims, int64_t max_tokens, DeviceLimits device);
  // The same with the buckets given (tile_candidates, `moeq bench tune`); the last one covers
  // max_tokens. Throws moeq::Error if a tile cannot run here (tile_refusal).
  MoePlan(GpuScheme scheme, LayerDims dims, int64_t max_tokens, DeviceLimits device, std::vector<Bucket> fixed);
  // What the heuristics and the tune table were asked (tile_candidates takes it).
  const HeuristicInput& heuristic_input() const { return hin_; }

  const GpuScheme& scheme() const { return scheme_; }
  const LayerDims& dims() const { return dims_; }
  int64_t max_tokens() const { return max_tokens_; }
  const DeviceLimits& device() const { return device_; }
  const std::vector<Bucket>& buckets() const { return buckets_; }
  // The kernel sets (NVRTC programs) of the plan, each text once: first the one of the kernels
  // every bucket shares (routing, quantization, combine), then per bucket its GEMM1 and its
  // GEMM2, those equal to an earlier one's left out. Small programs compile in parallel with
  // less work than one program per bucket, and the longest of them bounds a cold JIT.
  std::vector<KernelSetSource> sources() const;
  // Which of sources() each bucket takes its kernels from, in bucket order.
  struct BucketSources {
    std::size_t shared = 0, gemm1 = 0, gemm2 = 0;
  };
  std::vector<BucketSources> bucket_sources() const;
  // On unless MOEQ_CT_FP8_FAST_ACCUM=0 at construction: the warp-specialized GEMMs of fp8
  // channel or tensor scales accumulate over the whole K without promotion (WsGemm kFastAcc), as
  // fp8 GEMMs on sm_90 commonly do. Changes sources() only; block and group scales, and other
  // kernels, are unaffected.
  void set_fp8_fast_acc(bool on) { fp8_fast_acc_ = on; }
  bool fp8_fast_acc() const { return fp8_fast_acc_; }
  // Two-block clusters sharing the weight tile on the warp-specialized fp8 and bf16 GEMMs (not
  // ping-pong): MOEQ_CT_WS_MULTICAST=1, for measuring.
  void set_ws_multicast(bool on) { ws_multicast_ = on; }
  bool ws_multicast() const { return ws_multicast_; }
  // The mma.sync GEMMs that promote per scale period load each K tile's scales one tile ahead:
  // MOEQ_CT_SCALE_PREFETCH=1, for measuring.
  void set_scale_prefetch(bool on) { scale_prefetch_ = on; }
  bool scale_prefetch() const { return scale_prefetch_; }
  // On sm_90 (by default; MOEQ_CT_MMA_TMA_B=0 turns it off at construction) the mma.sync GEMMs
  // take their B tiles by TMA. Changes sources() and the launches' shared memory only.
  void set_mma_tma_b(bool on) { mma_tma_b_ = on; }
  bool mma_tma_b() const { return mma_tma_b_; }
  std::size_t workspace_bytes() const { return workspace_bytes_; }

  struct Layout {  // byte offsets into the workspace
    std::size_t sorted_pair, tile_expert, num_tiles, a1q, a1s, amax_part, h, a2q, a2s, y2, expert_count,
        tile_counters;
  };
  const Layout& layout() const { return layout_; }
  // The workspace of passes of `tokens` tokens (clamped to [1, max_tokens]).
  struct Workspace {
    Layout layout{};
    std::size_t bytes = 0;
    int64_t tokens = 0;  // tokens a pass
  };
  Workspace workspace_for(int64_t tokens) const;
  // The layout of the most tokens a pass whose workspace fits in `bytes` (tokens 0: none fits).
  // Pure arithmetic, no allocation: apply calls it with the workspace the host lent.
  Workspace workspace_fitting(std::size_t bytes) const;
  int64_t max_tiles(std::size_t bucket, int64_t m) const;

 private:
  GpuScheme scheme_;
  LayerDims dims_;
  int64_t max_tokens_;
  DeviceLimits device_;
  std::vector<Bucket> buckets_;
  HeuristicInput hin_;
  bool ws_multicast_ = false;
  bool scale_prefetch_ = false;
  bool mma_tma_b_ = false;
  bool fp8_fast_acc_ = true;  // MOEQ_CT_FP8_FAST_ACCUM=0 turns it off: WsGemm kFastAcc where it applies
  Layout layout_{};
  std::size_t workspace_bytes_ = 0;
};

// Kernel functions of a plan, looked up in the modules compiled from plan.sources().
class MoeRunner {
 public:
  // `modules[i]` is the module of plan.sources()[i].
  MoeRunner(const MoePlan& plan, const std::vector<cu::Module>& modules);
  // Launches the sequence for every chunk of io.m tokens on `stream`. `workspace` holds
  // plan.workspace_bytes(), 256-byte aligned.
  // `after_launch`, when set, is called on the host after each kernel is queued, with the
  // kernel's name (a profiling hook: the harness records an event there).
  void run(const RunIo& io, const LayerWeights& w, void* workspace, cu::Stream stream,
           const std::function<void(const char*)>& after_launch = {}) const;
  // The same in passes of `layout.tokens` tokens with that workspace layout.
  void run(const RunIo& io, const LayerWeights& w, const MoePlan::Workspace& layout, void* workspace, cu::Stream stream,
           const std::function<void(const char*)>& after_launch = {}) const;

 private:
  struct Functions {
    cu::Function zero_counts = nullptr, count = nullptr, prepare = nullptr, amax_x = nullptr, gemm1 = nullptr, amax_h = nullptr, quant_h = nullptr,
               gemm2 = nullptr, combine = nullptr, combine_wide = nullptr;
  };
  const MoePlan* plan_;
  // Programmatic dependent launches (sm_90 on): by default for the chunks whose GEMMs are both
  // mma.sync (decode, where the gaps between short kernels are a visible share: 1-6 % faster at
  // M = 1 on an H100, 0-3 % slower at M = 8192, bench/RESULTS.md); MOEQ_CT_PDL=1 for every
  // chunk, 0 for none.
  enum class Pdl { kOff, kDecode, kOn };
  Pdl pdl_;
  int group_m_ = 0;  // MoeArgs::group_m (MOEQ_CT_GROUP_M), 0 = the kernels' default
  std::vector<Functions> functions_;  // per bucket
};

// Router and weight-repack kernels (no per-layer configuration).
KernelSetSource utility_source();

struct RouteIo {
  int64_t m = 0;
  int64_t num_experts = 0;
  const float* logits = nullptr;  // [M, E]
  const float* bias = nullptr;    // [E] or null
  int32_t* ids = nullptr;         // [M, k]
  float* weights = nullptr;       // [M, k]
  int top_k = 1;
  bool sigmoid = false;
  bool renormalize = true;
  int n_group = 0;
  int topk_group = 0;
  float routed_scaling_factor = 1.0f;
};
void launch_route(cu::Module utility, const RouteIo& io, cu::Stream stream);
// Repacks int8 W8A16 codes in place: `bytes` = rows x K with K a multiple of 16.
void launch_repack_w8a16(cu::Module utility, void* codes, int64_t bytes, cu::Stream stream);

}  // namespace moeq::ct::gpu
