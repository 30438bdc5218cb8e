#include "moe_runner.hpp"

#include "tune_table.hpp"

#include <moeq/error.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <initializer_list>
#include <optional>
#include <utility>

namespace moeq::ct::gpu {
namespace {

static_assert(sizeof(mk::MoeArgs) == 280, "MoeArgs layout changed: the host and kernels must agree");
static_assert(offsetof(mk::MoeArgs, x) == 48 && offsetof(mk::MoeArgs, w13) == 96 &&
                  offsetof(mk::MoeArgs, sorted_pair) == 168 && offsetof(mk::MoeArgs, align_blocks) == 264,
              "MoeArgs offsets");

// NOTE: past this many (token, slot) pairs one block's align step becomes a serial tail
// (about 0.1 ms at 64K pairs), so counting and scattering spread over blocks of this size.
constexpr int64_t kPairsPerAlignBlock = 8192;

constexpr int kAmaxParts = 264;  // blocks of the amax kernels (2 per SM on an H100)
constexpr std::size_t kAlign = 256;
constexpr int kCuFuncAttrMaxDynamicSmem = 8;  // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
std::size_t align_up(std::size_t v) { return (v + kAlign - 1) / kAlign * kAlign; }
std::string s(int64_t v) { return std::to_string(v); }

const char* kind_name(int k) {
  switch (k) {
    case mk::kKindFp8: return "fp8";
    case mk::kKindBf16: return "bf16";
    case mk::kKindW8A16: return "w8a16";
  }
  return "?";
}
const char* ws_name(int w) {
  switch (w) {
    case mk::kWNone: return "none";
    case mk::kWTensor: return "tensor";
    case mk::kWChannel: return "channel";
    case mk::kWBlock: return "block";
  }
  return "?";
}
const char* am_name(int a) {
  switch (a) {
    case mk::kANone: return "none";
    case mk::kAStatic: return "static";
    case mk::kATensor: return "tensor";
    case mk::kAToken: return "token";
    case mk::kAGroup: return "group";
  }
  return "?";
}

bool power_of_two(int v) { return v > 0 && (v & (v - 1)) == 0; }

// Measuring knobs of the generated kernels (each "1" to take it):
// - MOEQ_CT_A_PREFETCH: the warp-specialized kernels' A copies prefetch 256-byte blocks into L2
//   (sm90_moe_ws.cuh, MOEQ_WS_A_PREFETCH_256);
// - MOEQ_CT_SCALE_PREFETCH (MoePlan::scale_prefetch): the mma.sync GEMMs that promote per scale
//   period (fp8 block weights, per-group activations) load each K tile's scales one tile ahead
//   (moe_gemm.cuh, MOEQ_MMA_SCALE_PREFETCH);
// - MOEQ_CT_WS_MULTICAST (MoePlan::ws_multicast): the warp-specialized fp8 and bf16 GEMMs (not
//   ping-pong) run as two-block clusters on consecutive m tiles of one n tile, each block loading
//   half of the weight tile by TMA for both (sm90_moe_ws.cuh, MOEQ_WS_MULTICAST).
// Timed on an H200 against the heuristics (bench/RESULTS.md, fourteenth session): A prefetch
// 1.00x, scale prefetch 0.98x, multicast 0.87x (slower in 23 of 24 large-M cases). Off by
// default; kept for measuring on other cards and shapes.
bool scale_prefetch_tile(const GpuScheme& sc, const GemmTile& t, bool asked) {
  return asked && !t.wgmma && sc.kind == mk::kKindFp8 && (sc.wscale == mk::kWBlock || sc.amode == mk::kAGroup);
}
// TMA-fed B tiles (the default on sm_90, MoePlan::mma_tma_b; MOEQ_CT_MMA_TMA_B=0 restores the
// cp.async copies): the mma.sync GEMMs take each stage's weight tile as one box
// (moe_gemm.cuh's MOEQ_MMA_TMA_B) where the 1 KiB it adds to the ring still fits. On an H100
// (bench/RESULTS.md, fifteenth session) 1.024x over 48 decode cases, up to 1.13x; 2-5 % slower
// at M = 1 on the two smallest shapes.
constexpr int kTmaRingAlign = 1024;  // dynamic shared memory added to align a TMA-fed ring
bool tma_b_tile(const GpuScheme& sc, int bm, const GemmTile& t, bool asked, int max_smem) {
  return asked && !t.wgmma &&
         gemm_smem_bytes(sc.kind, bm, t) + kTmaRingAlign + gemm_static_smem(bm, t) + 8 * t.stages <= max_smem;
}
bool multicast_tile(const GpuScheme& sc, const GemmTile& t, bool asked) {
  return asked && t.ws && !t.pingpong && sc.kind != mk::kKindW8A16;
}

// Dynamic shared memory of a GEMM instantiation of the plan, as GroupedGemm / WgmmaGemm /
// WsGemm::kSmemBytes compute it, and 1 KiB to align the ring of TMA-fed mma.sync tiles.
int gemm_smem(const MoePlan& p, int bm, const GemmTile& t) {
  const bool tma = tma_b_tile(p.scheme(), bm, t, p.mma_tma_b(), p.device().max_smem_per_block);
  return gemm_smem_bytes(p.scheme().kind, bm, t) + (tma ? kTmaRingAlign : 0);
}

// Whether a tile of this scheme runs WsGemm's fast accumulation when the plan asks for it: fp8
// channel or tensor scales on the warp-specialized kernel (block and group scales promote).
bool fast_acc_tile(const GpuScheme& sc, const GemmTile& t, bool asked) {
  return asked && t.ws && sc.kind == mk::kKindFp8 && sc.wscale != mk::kWBlock && sc.amode != mk::kAGroup;
}

std::string gemm_type(const GpuScheme& sc, bool gated, int bm, const GemmTile& t, bool fast_acc) {
  if (t.ws) {
    const bool fa = fast_acc_tile(sc, t, fast_acc);  // trailing defaults (false) left out
    return "WsGemm<" + s(sc.kind) + ", " + s(sc.wscale) + ", " + s(sc.amode) + ", " + (gated ? "true" : "false") +
           ", " + s(bm) + ", " + s(t.bn) + ", " + s(t.stages) + ", " + s(gated ? gemm1_quant_group(sc, t) : 0) +
           (t.pingpong ? (fa ? ", true, true" : ", false, true") : (fa ? ", true" : "")) + ">";
  }
  if (t.wgmma)
    return "WgmmaGemm<" + s(sc.kind) + ", " + s(sc.wscale) + ", " + s(sc.amode) + ", " + (gated ? "true" : "false") +
           ", " + s(bm) + ", " + s(t.bn) + ", " + s(t.stages) + ", " + (t.pipelined ? "true" : "false") + ">";
  return "GroupedGemm<" + s(sc.kind) + ", " + s(sc.wscale) + ", " + s(sc.amode) + ", " + (gated ? "true" : "false") +
         ", " + s(bm) + ", " + s(t.bn) + ", " + s(t.warps_m) + ", " + s(t.warps_n) + ", " + s(t.stages) + ", " +
         s(sc.scale_k) + ">";
}

// One launch of the sequence. `pdl`: a programmatic dependent launch (every kernel of the
// sequence waits for its predecessors first: pdl_enter in moe_device.cuh).
void launch(cu::Function f, unsigned gx, unsigned gy, unsigned threads, unsigned smem, cu::Stream stream, void* args,
            const char* what, bool pdl, const std::function<void(const char*)>& after = {}, void* second = nullptr,
            unsigned gz = 1, void* third = nullptr) {
  void* params[] = {args, second, third};
  const unsigned grid[3] = {gx, gy, gz}, block[3] = {threads, 1, 1};
  cu::launch(f, grid, block, smem, stream, params, pdl, what);
  if (after) after(what);
}

// The TMA descriptor of a GEMM's B operand, boxes of one 128-byte K tile in the 128-byte
// swizzle (W8A16: 64 codes a row, unswizzled, which the producer converts), zero fill past
// every end. GEMM1 (gated): w13 as [E][2][I][K], a box of bn/2 rows of both halves (gate rows,
// then the same columns' up rows); GEMM2: w2 as E * N rows of K, boxes of bn rows. Only the
// warp-specialized kernels and the TMA-fed mma.sync ones (`mma_tma`) read it; the others get
// zeros.
// `half`: boxes of half the rows (GEMM1: bn/2 rows of one of the two halves), the share of a
// weight tile one block of a two-block cluster loads for both (multicast_tile).
mk::TmaMap weight_map(const GemmTile& t, int kind, const void* w, bool gated, int64_t experts, int64_t n, int64_t k,
                      const char* what, bool half = false, bool mma_tma = false) {
  mk::TmaMap m{};
  if (!t.ws && !mma_tma) return m;
  constexpr int kU8 = 0, kU16 = 1, kInterleaveNone = 0, kSwizzleNone = 0, kSwizzle128 = 3, kL2Promote256 = 3,
                kFillZero = 0;
  using u64 = unsigned long long;
  // W8A16's codes (repacked in 16-byte groups, moe_repack.cuh): 64-code boxes unswizzled for the
  // warp-specialized producer, which converts them; an mma.sync tile reads 128 codes a row
  // through the swizzle like fp8.
  const bool w8 = kind == mk::kKindW8A16 && !mma_tma;
  const u64 elem = kind == mk::kKindBf16 ? 2 : 1, row = static_cast<u64>(k) * elem;
  const unsigned box_k = w8 ? 64 : static_cast<unsigned>(128 / elem);
  const u64 dims4[4] = {static_cast<u64>(k), static_cast<u64>(n), 2, static_cast<u64>(experts)};
  const u64 strides4[3] = {row, row * static_cast<u64>(n), 2 * row * static_cast<u64>(n)};
  const unsigned box4[4] = {box_k, static_cast<unsigned>(t.bn / 2), half ? 1u : 2u, 1};
  const u64 dims2[2] = {static_cast<u64>(k), static_cast<u64>(experts * n)};
  const u64 strides2[1] = {row};
  const unsigned box2[2] = {box_k, static_cast<unsigned>(half ? t.bn / 2 : t.bn)};
  const unsigned element_strides[4] = {1, 1, 1, 1};
  cu::check(cu::driver().cuTensorMapEncodeTiled(&m, elem == 1 ? kU8 : kU16, gated ? 4 : 2, const_cast<void*>(w),
                                               gated ? dims4 : dims2, gated ? strides4 : strides2,
                                               gated ? box4 : box2, element_strides, kInterleaveNone,
                                               w8 ? kSwizzleNone : kSwizzle128,
                                               kL2Promote256, kFillZero),
            what);
  return m;
}

}  // namespace

int gemm1_quant_group(const GpuScheme& sc, const GemmTile& g1) {
  const int cols = g1.bn / 2;
  return sc.kind == mk::kKindFp8 && sc.amode == mk::kAGroup && g1.ws && sc.act_group >= 8 && sc.act_group <= cols &&
                 cols % sc.act_group == 0
             ? sc.act_group
             : 0;
}

std::string GpuScheme::label() const {
  return std::string(kind_name(kind)) + " weights " + ws_name(wscale) + " / activations " + am_name(amode);
}

std::string GpuScheme::key() const {
  std::string k = std::string(kind_name(kind)) + ".w" + ws_name(wscale) + ".a" + am_name(amode);
  if (amode == mk::kAGroup) k += ".g" + s(act_group);
  if (kind == mk::kKindFp8 && (wscale == mk::kWBlock || amode == mk::kAGroup)) k += ".k" + s(scale_k);
  if (wscale == mk::kWBlock) k += ".bn" + s(block_n);
  return k;
}

std::optional<GpuScheme> GpuScheme::from_key(const std::string& key) {
  std::vector<std::string> parts;
  for (size_t from = 0;;) {
    const size_t dot = key.find('.', from);
    parts.push_back(key.substr(from, dot == std::string::npos ? std::string::npos : dot - from));
    if (dot == std::string::npos) break;
    from = dot + 1;
  }
  if (parts.size() < 3) return std::nullopt;
  GpuScheme g;
  auto pick = [](const std::string& word, std::initializer_list<int> codes, const char* (*name)(int), int& out) {
    for (int c : codes)
      if (word == name(c)) {
        out = c;
        return true;
      }
    return false;
  };
  if (!pick(parts[0], {mk::kKindFp8, mk::kKindBf16, mk::kKindW8A16}, kind_name, g.kind)) return std::nullopt;
  if (parts[1].empty() || parts[1][0] != 'w' ||
      !pick(parts[1].substr(1), {mk::kWNone, mk::kWTensor, mk::kWChannel, mk::kWBlock}, ws_name, g.wscale))
    return std::nullopt;
  if (parts[2].empty() || parts[2][0] != 'a' ||
      !pick(parts[2].substr(1), {mk::kANone, mk::kAStatic, mk::kATensor, mk::kAToken, mk::kAGroup}, am_name, g.amode))
    return std::nullopt;
  for (size_t i = 3; i < parts.size(); ++i) {
    const std::string& p = parts[i];
    const size_t digits = p.find_first_of("0123456789");
    if (digits == std::string::npos || digits == 0) return std::nullopt;
    int v = 0;
    try {
      size_t used = 0;
      v = std::stoi(p.substr(digits), &used);
      if (used != p.size() - digits) return std::nullopt;
    } catch (const std::exception&) {
      return std::nullopt;
    }
    const std::string tag = p.substr(0, digits);
    if (tag == "g") g.act_group = v;
    else if (tag == "k") g.scale_k = v;
    else if (tag == "bn") g.block_n = v;
    else return std::nullopt;
  }
  if (g.key() != key) return std::nullopt;  // one spelling per scheme
  return g;
}

MoePlan::MoePlan(GpuScheme scheme, LayerDims dims, int64_t max_tokens, DeviceLimits device)
    : MoePlan(scheme, dims, max_tokens, device, {}) {}

MoePlan::MoePlan(GpuScheme scheme, LayerDims dims, int64_t max_tokens, DeviceLimits device, std::vector<Bucket> fixed)
    : scheme_(scheme), dims_(dims), max_tokens_(max_tokens), device_(device) {
  const std::string where = "gpu moe (" + scheme_.label() + "): ";
  const auto& d = dims_;
  MOEQ_CHECK(d.num_experts >= 1 && d.num_experts <= 1024,
             where + "local experts must be in [1, 1024], found " + s(d.num_experts));
  MOEQ_CHECK(d.top_k >= 1 && d.top_k <= 32, where + "top_k must be in [1, 32], found " + s(d.top_k));
  MOEQ_CHECK(d.hidden >= 16 && d.hidden % 16 == 0,
             where + "hidden size must be a positive multiple of 16, found " + s(d.hidden));
  MOEQ_CHECK(d.inter >= 16 && d.inter % 16 == 0,
             where + "intermediate size per partition must be a positive multiple of 16, found " + s(d.inter));
  MOEQ_CHECK(max_tokens_ >= 1, where + "max tokens must be >= 1");
  MOEQ_CHECK(max_tokens_ * d.top_k * std::max(d.hidden, d.inter) < (int64_t{1} << 31) / 4 * 4 &&
                 max_tokens_ * d.top_k < (int64_t{1} << 30),
             where + "max tokens " + s(max_tokens_) + " too large for 32-bit row indexing");
  const bool fp8 = scheme_.kind == mk::kKindFp8;
  if (fp8) {
    MOEQ_CHECK(device_.sm_major * 10 + device_.sm_minor >= 89,
               where + "fp8 tensor-core kernels need sm_89 or newer, found sm_" + s(device_.sm_major) +
                   s(device_.sm_minor));
    MOEQ_CHECK(scheme_.amode != mk::kANone, where + "fp8 weights need an activation quantization mode");
  } else {
    MOEQ_CHECK(scheme_.amode == mk::kANone, where + "bf16 and W8A16 kernels keep activations in bf16");
    MOEQ_CHECK(scheme_.wscale != mk::kWBlock, where + "block scales exist only for fp8 weights");
    MOEQ_CHECK(device_.sm_major >= 8, where + "bf16 tensor-core kernels need sm_80 or newer");
  }
  if (scheme_.kind == mk::kKindBf16) MOEQ_CHECK(scheme_.wscale == mk::kWNone, where + "bf16 weights have no scale");
  if (scheme_.kind == mk::kKindW8A16)
    MOEQ_CHECK(scheme_.wscale == mk::kWChannel, where + "W8A16 runs per-channel weight scales only");
  if (scheme_.amode == mk::kAGroup)
    MOEQ_CHECK(power_of_two(scheme_.act_group) && scheme_.act_group >= 32 && scheme_.act_group <= 256,
               where + "activation group must be a power of two in [32, 256], found " + s(scheme_.act_group));
  if (fp8 && (scheme_.wscale == mk::kWBlock || scheme_.amode == mk::kAGroup))
    MOEQ_CHECK(scheme_.scale_k == 16 || scheme_.scale_k == 32 || scheme_.scale_k == 64 || scheme_.scale_k == 128,
               where + "scale period must be 16, 32, 64 or 128 elements, found " + s(scheme_.scale_k) +
                   " (K of every shard is a multiple of 16, so a refined block grid has blocks of at least 16)");

  // The warp-specialized fp8 GEMMs of channel or tensor scales accumulate over the whole K in
  // the MMA's accumulators instead of promoting per 128-wide K tile (WsGemm kFastAcc), unless
  // MOEQ_CT_FP8_FAST_ACCUM=0 (measuring, or a model that wants the promotion).
  if (const char* v = std::getenv("MOEQ_CT_FP8_FAST_ACCUM")) {
    const std::string f = v;
    MOEQ_CHECK(f == "0" || f == "1", where + "MOEQ_CT_FP8_FAST_ACCUM must be 0 or 1, found '" + f + "'");
    fp8_fast_acc_ = f == "1";
  }
  ws_multicast_ = knob_on("MOEQ_CT_WS_MULTICAST");
  scale_prefetch_ = knob_on("MOEQ_CT_SCALE_PREFETCH");
  mma_tma_b_ = device_.sm_major == 9;
  if (const char* v = std::getenv("MOEQ_CT_MMA_TMA_B")) {
    const std::string f = v;
    MOEQ_CHECK(f == "0" || f == "1", where + "MOEQ_CT_MMA_TMA_B must be 0 or 1, found '" + f + "'");
    mma_tma_b_ = mma_tma_b_ && f == "1";
  }

  HeuristicInput hin;
  hin.kind = scheme_.kind;
  hin.promote = fp8 && (scheme_.wscale == mk::kWBlock || scheme_.amode == mk::kAGroup);
  // NOTE: the wgmma kernel promotes once per 128-wide K tile, so finer scale periods (refined
  // TP block grids) stay on mma.sync; W8A16 runs wgmma only warp-specialized (below).
  hin.wgmma = device_.sm_major == 9 && (!hin.promote || scheme_.scale_k == 128) &&
              std::getenv("MOEQ_CT_NO_WGMMA") == nullptr;
  hin.scale_k = scheme_.scale_k;
  hin.wide_fp8 = fp8 && (scheme_.wscale != mk::kWBlock || (scheme_.block_n > 0 && scheme_.block_n % 128 == 0));
  if (const char* n = std::getenv("MOEQ_CT_FP8_WGMMA_N")) hin.force_fp8_bn = std::atoi(n);
  hin.wgmma_serial = knob_on("MOEQ_CT_WGMMA_SERIAL");
  if (const char* v = std::getenv("MOEQ_CT_WGMMA_STAGES_64")) hin.wgmma_stages_64 = std::clamp(std::atoi(v), 3, 8);
  if (const char* v = std::getenv("MOEQ_CT_K_SPLITS")) hin.force_k_splits = std::clamp(std::atoi(v), 1, 8);
  hin.ws_pingpong = knob_on("MOEQ_CT_WS_PINGPONG");
  hin.ws_bn224 = knob_on("MOEQ_CT_WS_BN224");
  // NOTE: the warp-specialized kernel promotes per 128-wide K tile like the one above, and
  // reads one weight scale per 64 tile columns, so block scales need blocks of a multiple of 64
  // rows; its B tiles come by TMA, which wants 16-byte aligned weight rows (K % 16, checked above).
  hin.ws = hin.wgmma &&
           (scheme_.wscale != mk::kWBlock || (scheme_.block_n > 0 && scheme_.block_n % 64 == 0)) &&
           std::getenv("MOEQ_CT_NO_WS") == nullptr;
  hin.num_experts = d.num_experts;
  hin.top_k = d.top_k;
  hin.hidden = d.hidden;
  hin.inter = d.inter;
  hin.max_tokens = max_tokens_;
  hin.multiprocessors = device_.multiprocessors;
  hin.max_smem_per_block = device_.max_smem_per_block;
  // NOTE: the measuring knobs above change what the heuristics may choose; with any of them set
  // the measured table is left out too, so that a knob measures what it names.
  const bool knobs = std::getenv("MOEQ_CT_NO_WGMMA") || std::getenv("MOEQ_CT_NO_WS") ||
                     std::getenv("MOEQ_CT_FP8_WGMMA_N") || std::getenv("MOEQ_CT_WGMMA_SERIAL") ||
                     std::getenv("MOEQ_CT_WGMMA_STAGES_64") || std::getenv("MOEQ_CT_NO_TUNE") ||
                     std::getenv("MOEQ_CT_WS_PINGPONG") || std::getenv("MOEQ_CT_WS_BN224") ||
                     std::getenv("MOEQ_CT_A_PREFETCH") || std::getenv("MOEQ_CT_WS_MULTICAST") ||
                     std::getenv("MOEQ_CT_SCALE_PREFETCH");
  hin.arch = "sm_" + s(device_.sm_major) + s(device_.sm_minor);
  hin.memory_gib = memory_gib(device_.memory_bytes);
  hin.scheme_key = scheme_.key();
  hin.tuned = knobs ? nullptr : &tune_entries();
  hin_ = hin;
  if (fixed.empty()) {
    buckets_ = choose_buckets(hin);
  } else {
    // Tiles given by the caller (`moeq bench tune`): checked as a table's would be.
    std::sort(fixed.begin(), fixed.end(), [](const Bucket& a, const Bucket& b) { return a.max_tokens < b.max_tokens; });
    for (const Bucket& b : fixed)
      for (const bool gated : {true, false}) {
        const std::string why = tile_refusal(hin, b.bm, gated ? b.gemm1 : b.gemm2, gated);
        MOEQ_CHECK(why.empty(), where + why);
      }
    fixed.back().max_tokens = std::max(fixed.back().max_tokens, max_tokens_);
    for (Bucket& b : fixed) b.k_splits = gemm2_k_splits(hin, b, b.max_tokens);
    buckets_ = std::move(fixed);
  }
  for (const auto& b : buckets_) {
    MOEQ_CHECK(b.k_splits == 1 || (b.k_splits > 1 && b.k_splits <= 8 && !b.gemm2.wgmma),
               where + "tile " + describe(b) + ": K splits are 1 to 8, of an mma.sync GEMM2");
    for (const GemmTile* t : {&b.gemm1, &b.gemm2})
      MOEQ_CHECK(smem_fits(hin, scheme_.kind, b.bm, *t),
                 where + "tile " + describe(b) + " needs more shared memory than the device has");
  }

  const Workspace w = workspace_for(max_tokens_);
  layout_ = w.layout;
  workspace_bytes_ = w.bytes;
}

MoePlan::Workspace MoePlan::workspace_for(int64_t tokens) const {
  const auto& d = dims_;
  const bool fp8 = scheme_.kind == mk::kKindFp8;
  Workspace w;
  w.tokens = std::clamp<int64_t>(tokens, 1, max_tokens_);
  Layout& L = w.layout;
  const int64_t M = w.tokens, R = M * d.top_k, H = d.hidden, I = d.inter;
  int64_t rows = 0, tiles = 0, y2_rows = 0;  // y2: K-split slabs of each bucket's largest chunk
  for (std::size_t i = 0; i < buckets_.size(); ++i) {
    const int64_t mb = std::min<int64_t>(M, buckets_[i].max_tokens);
    tiles = std::max(tiles, max_tiles(i, mb));
    rows = std::max(rows, max_tiles(i, mb) * buckets_[i].bm);
    y2_rows = std::max(y2_rows, mb * d.top_k * buckets_[i].k_splits);
  }
  const int64_t g1 = scheme_.amode == mk::kAGroup ? ceil_div(H, scheme_.act_group) : 1;
  const int64_t g2 = scheme_.amode == mk::kAGroup ? ceil_div(I, scheme_.act_group) : 1;
  const bool dynamic_a2 = fp8 && scheme_.amode != mk::kAStatic;
  const int64_t h_elem = !fp8 ? 2 : (dynamic_a2 ? 4 : 1);
  std::size_t off = 0;
  auto take = [&](int64_t bytes) {
    const std::size_t at = off;
    off = align_up(off + static_cast<std::size_t>(std::max<int64_t>(bytes, 0)));
    return at;
  };
  L.sorted_pair = take(rows * 4);
  L.tile_expert = take(tiles * 4);
  L.num_tiles = take(4);
  L.a1q = take(fp8 ? M * H : 0);
  L.a1s = take(fp8 ? std::max<int64_t>(M * g1, 1) * 4 : 0);
  L.amax_part = take(kAmaxParts * 4);
  L.h = take(R * I * h_elem);
  L.a2q = take(dynamic_a2 ? R * I : 0);
  L.a2s = take(fp8 ? std::max<int64_t>(R * g2, 1) * 4 : 0);
  L.y2 = take(std::max(R, y2_rows) * H * 4);
  L.expert_count = take(2 * d.num_experts * 4);  // counts, then cursors
  L.tile_counters = take(2 * 4);
  w.bytes = off;
  return w;
}

MoePlan::Workspace MoePlan::workspace_fitting(std::size_t bytes) const {
  // Bytes grow with the tokens: the largest token count whose layout fits (binary search).
  int64_t lo = 1, hi = max_tokens_;
  if (workspace_for(lo).bytes > bytes) return Workspace{};  // tokens 0: nothing fits
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo + 1) / 2;
    if (workspace_for(mid).bytes <= bytes) lo = mid;
    else hi = mid - 1;
  }
  return workspace_for(lo);
}

int64_t MoePlan::max_tiles(std::size_t bucket, int64_t m) const {
  const int64_t r = m * dims_.top_k;
  return ceil_div(r, buckets_[bucket].bm) + std::min(r, dims_.num_experts);
}

namespace {

// The sources and which of them each bucket takes (MoePlan::sources, bucket_sources).
struct Programs {
  std::vector<KernelSetSource> sources;
  std::vector<MoePlan::BucketSources> buckets;
};

// The index of `k` in `out`, appended if no earlier program has its text.
std::size_t add_program(std::vector<KernelSetSource>& out, KernelSetSource k) {
  for (std::size_t i = 0; i < out.size(); ++i)
    if (out[i].source == k.source) return i;
  out.push_back(std::move(k));
  return out.size() - 1;
}

Programs plan_programs(const GpuScheme& sc, const std::vector<Bucket>& buckets, bool fast_acc, bool multicast,
                       bool scale_prefetch, bool tma_b, int max_smem) {
  const bool fp8 = sc.kind == mk::kKindFp8;
  const std::string prefix = std::string("ct_moe_") + kind_name(sc.kind) + "_w" + ws_name(sc.wscale) + "_a" +
                             am_name(sc.amode) + (sc.amode == mk::kAGroup ? "_g" + s(sc.act_group) : "") +
                             (sc.wscale == mk::kWBlock || sc.amode == mk::kAGroup ? "_k" + s(sc.scale_k) : "");
  Programs p;
  // NOTE: a text names its kernels and tiles only (not a bucket's M range), so that layers and
  // buckets that pick the same tiles share one program and one cache entry.
  {
    KernelSetSource k;
    k.name = prefix + "_shared";
    std::string& src = k.source;
    const std::string am = s(sc.amode);
    src += "// " + k.name + ": " + sc.label() + "\n";
    src += "#include \"moe_prepare.cuh\"\n#include \"moe_combine.cuh\"\nusing namespace moeq_kernels;\n";
    src += "extern \"C\" __global__ void __launch_bounds__(kAlignThreads) moe_prepare(const MoeArgs a) { pdl_enter(); prepare<" +
           am + ">(a); }\n";
    src += "extern \"C\" __global__ void __launch_bounds__(kAlignThreads) moe_count(const MoeArgs a) { pdl_enter(); count_pairs(a); }\n";
    src += "extern \"C\" __global__ void __launch_bounds__(256) moe_zero_counts(const MoeArgs a) { pdl_enter(); zero_counts(a); }\n";
    src += "extern \"C\" __global__ void __launch_bounds__(256) moe_combine(const MoeArgs a) { pdl_enter(); combine(a); }\n";
    src += "extern \"C\" __global__ void __launch_bounds__(256) moe_combine_wide(const MoeArgs a) { "
           "combine_wide(a); }\n";
    if (fp8 && sc.amode == mk::kATensor) {
      src += "extern \"C\" __global__ void __launch_bounds__(256) moe_amax_x(const MoeArgs a) {\n"
             "  pdl_enter();\n  amax_partial<false>(a.x, a.x_stride, a.M, a.hidden, a.amax_part, nullptr, 0, 0, 0);\n}\n";
      src += "extern \"C\" __global__ void __launch_bounds__(256) moe_amax_h(const MoeArgs a) {\n"
             "  pdl_enter();\n  amax_partial<true>(a.h, a.inter, a.M * a.topk, a.inter, a.amax_part, a.topk_ids, a.topk, "
             "a.first_expert, a.num_experts);\n}\n";
    }
    if (fp8 && sc.amode != mk::kAStatic)
      src += "extern \"C\" __global__ void __launch_bounds__(512) moe_quant_h(const MoeArgs a) { quantize_h<" + am +
             ">(a); }\n";
    add_program(p.sources, std::move(k));
  }
  // One GEMM of a bucket: every tile parameter of its type in the name, the kernel moe_gemm1 or
  // moe_gemm2 in the text.
  auto gemm = [&](const Bucket& b, int gi) {
    const GemmTile& t = gi == 1 ? b.gemm1 : b.gemm2;
    KernelSetSource k;
    k.name = prefix + "_g" + s(gi) + "_bm" + s(b.bm) + "_n" + s(t.bn) +
             (t.wgmma ? "" : "_w" + s(t.warps_m) + "x" + s(t.warps_n)) + "_s" + s(t.stages) +
             (t.ws ? (t.pingpong ? "_wspp" : "_ws") : t.wgmma ? (t.pipelined ? "_wgmma" : "_wgmma_serial") : "") +
             (gi == 1 && gemm1_quant_group(sc, t) > 0 ? "_q1" : "") + (fast_acc_tile(sc, t, fast_acc) ? "_fa" : "") +
             (multicast_tile(sc, t, multicast) ? "_mc" : "") + (scale_prefetch_tile(sc, t, scale_prefetch) ? "_sp" : "");
    const bool mc = multicast_tile(sc, t, multicast);
    const bool tma = tma_b_tile(sc, b.bm, t, tma_b, max_smem);
    if (tma) k.name += "_tb";
    std::string& src = k.source;
    src += "// " + k.name + ": " + sc.label() + "\n";
    if (t.ws && knob_on("MOEQ_CT_A_PREFETCH")) src += "#define MOEQ_WS_A_PREFETCH_256 1\n";
    if (mc) src += "#define MOEQ_WS_MULTICAST 1\n";
    if (scale_prefetch_tile(sc, t, scale_prefetch)) src += "#define MOEQ_MMA_SCALE_PREFETCH 1\n";
    if (tma) src += "#define MOEQ_MMA_TMA_B 1\n";
    src += "#include \"moe_gemm.cuh\"\n";
    if (t.wgmma) src += "#include \"moe_wgmma.cuh\"\n";
    if (t.ws) src += "#include \"sm90_moe_ws.cuh\"\n";
    src += "using namespace moeq_kernels;\n";
    const std::string G = "G" + s(gi);
    src += "using " + G + " = " + gemm_type(sc, gi == 1, b.bm, t, fast_acc) + ";\n";
    // Every GEMM takes the B tensor map; only the warp-specialized ones read it.
    // Clusters: two blocks, and the half-box map as a third parameter.
    src += std::string("extern \"C\" __global__ void ") + (mc ? "__cluster_dims__(2, 1, 1) " : "") + "__launch_bounds__(" +
           G + "::kThreads, " + (t.ws ? G + "::kMinBlocks" : "1") + ") moe_gemm" + s(gi) +
           "(const MoeArgs a, const __grid_constant__ TmaMap tmap_b" +
           (mc ? ", const __grid_constant__ TmaMap tmap_h" : "") +
           ") {\n"
           "  extern __shared__ __align__(128) unsigned char smem[];\n  pdl_enter();\n  " + G + "::run(a, " +
           (t.ws || tma ? "tmap_b, " : "") + "smem" + (mc ? ", &tmap_h" : "") + ");\n}\n";
    return add_program(p.sources, std::move(k));
  };
  for (const Bucket& b : buckets) {
    MoePlan::BucketSources bs;
    bs.shared = 0;
    bs.gemm1 = gemm(b, 1);
    bs.gemm2 = gemm(b, 2);
    p.buckets.push_back(bs);
  }
  return p;
}

}  // namespace

std::vector<KernelSetSource> MoePlan::sources() const {
  return plan_programs(scheme_, buckets_, fp8_fast_acc_, ws_multicast_, scale_prefetch_, mma_tma_b_,
                       device_.max_smem_per_block).sources;
}

std::vector<MoePlan::BucketSources> MoePlan::bucket_sources() const {
  return plan_programs(scheme_, buckets_, fp8_fast_acc_, ws_multicast_, scale_prefetch_, mma_tma_b_,
                       device_.max_smem_per_block).buckets;
}

MoeRunner::MoeRunner(const MoePlan& plan, const std::vector<cu::Module>& modules)
    : plan_(&plan), pdl_(Pdl::kDecode) {
  if (const char* v = std::getenv("MOEQ_CT_PDL")) {
    const std::string s = v;
    MOEQ_CHECK(s == "0" || s == "1", "gpu moe: MOEQ_CT_PDL must be 0 or 1, found '" + s + "'");
    pdl_ = s == "1" ? Pdl::kOn : Pdl::kOff;
  }
  if (plan.device().sm_major < 9) pdl_ = Pdl::kOff;
  // Diagnostics: m tiles per group of the persistent GEMMs' walk (measuring the L2 reuse of long
  // K); unset, the kernels' own.
  if (const char* v = std::getenv("MOEQ_CT_GROUP_M")) {
    const std::string s = v;
    char* end = nullptr;
    const long g = std::strtol(v, &end, 10);
    MOEQ_CHECK(end != v && *end == '\0' && g >= 1 && g <= 64, "gpu moe: MOEQ_CT_GROUP_M must be 1..64, found '" + s + "'");
    group_m_ = static_cast<int>(g);
  }
  // NOTE: bucket_sources() indexes sources(), whose modules these are; the index check in
  // get() stands for building every source text again just to count them.
  const std::vector<MoePlan::BucketSources> from = plan.bucket_sources();
  const auto& api = cu::driver();
  const bool fp8 = plan.scheme().kind == mk::kKindFp8;
  for (std::size_t i = 0; i < from.size(); ++i) {
    Functions f;
    auto get = [&](cu::Function& fn, std::size_t program, const char* name) {
      MOEQ_CHECK(program < modules.size(), "gpu moe: " + s(static_cast<int64_t>(modules.size())) +
                                               " modules for a plan that takes kernel set " +
                                               s(static_cast<int64_t>(program)));
      cu::check(api.cuModuleGetFunction(&fn, modules[program], name), name);
    };
    const std::size_t sh = from[i].shared;
    get(f.count, sh, "moe_count");
    get(f.zero_counts, sh, "moe_zero_counts");
    get(f.prepare, sh, "moe_prepare");
    get(f.gemm1, from[i].gemm1, "moe_gemm1");
    get(f.gemm2, from[i].gemm2, "moe_gemm2");
    get(f.combine, sh, "moe_combine");
    get(f.combine_wide, sh, "moe_combine_wide");
    if (fp8 && plan.scheme().amode == mk::kATensor) {
      get(f.amax_x, sh, "moe_amax_x");
      get(f.amax_h, sh, "moe_amax_h");
    }
    if (fp8 && plan.scheme().amode != mk::kAStatic) get(f.quant_h, sh, "moe_quant_h");
    const Bucket& b = plan.buckets()[i];
    cu::check(api.cuFuncSetAttribute(f.gemm1, kCuFuncAttrMaxDynamicSmem, gemm_smem(plan, b.bm, b.gemm1)),
             "cuFuncSetAttribute(moe_gemm1)");
    cu::check(api.cuFuncSetAttribute(f.gemm2, kCuFuncAttrMaxDynamicSmem, gemm_smem(plan, b.bm, b.gemm2)),
             "cuFuncSetAttribute(moe_gemm2)");
    functions_.push_back(f);
  }
}

void MoeRunner::run(const RunIo& io, const LayerWeights& w, void* workspace, cu::Stream stream,
                    const std::function<void(const char*)>& after) const {
  run(io, w, plan_->workspace_for(plan_->max_tokens()), workspace, stream, after);
}

void MoeRunner::run(const RunIo& io, const LayerWeights& w, const MoePlan::Workspace& wl, void* workspace,
                    cu::Stream stream, const std::function<void(const char*)>& after) const {
  const MoePlan& p = *plan_;
  const auto& d = p.dims();
  const auto& sc = p.scheme();
  const auto& L = wl.layout;
  MOEQ_CHECK(wl.tokens >= 1, "gpu moe: a workspace layout of no tokens");
  auto* ws = static_cast<unsigned char*>(workspace);
  const bool fp8 = sc.kind == mk::kKindFp8;
  const int64_t k = d.top_k;

  mk::MoeArgs a{};
  a.topk = static_cast<int>(k);
  a.num_experts = static_cast<int>(d.num_experts);
  a.first_expert = static_cast<int>(d.first_expert);
  a.hidden = static_cast<int>(d.hidden);
  a.inter = static_cast<int>(d.inter);
  a.act_group = sc.act_group;
  a.amax_parts = kAmaxParts;
  a.out_dtype = io.out_dtype;
  a.group_m = group_m_;
  a.x_stride = io.x_stride;
  a.out_stride = io.out_stride;
  a.w13 = w.w13;
  a.w2 = w.w2;
  a.s13 = w.s13;
  a.s2 = w.s2;
  a.s13_rows = w.s13_rows;
  a.s13_cols = w.s13_cols;
  a.s13_bn = w.s13_bn;
  a.s13_bk = w.s13_bk;
  a.s2_rows = w.s2_rows;
  a.s2_cols = w.s2_cols;
  a.s2_bn = w.s2_bn;
  a.s2_bk = w.s2_bk;
  a.a1_static = w.a1_static;
  a.a2_static = w.a2_static;
  a.sorted_pair = reinterpret_cast<int*>(ws + L.sorted_pair);
  a.tile_expert = reinterpret_cast<int*>(ws + L.tile_expert);
  a.num_tiles = reinterpret_cast<int*>(ws + L.num_tiles);
  a.a1q = ws + L.a1q;
  a.a1s = reinterpret_cast<float*>(ws + L.a1s);
  a.amax_part = reinterpret_cast<float*>(ws + L.amax_part);
  a.h = ws + L.h;
  a.a2q = ws + L.a2q;
  a.a2s = reinterpret_cast<float*>(ws + L.a2s);
  a.y2 = reinterpret_cast<float*>(ws + L.y2);
  a.expert_count = reinterpret_cast<int*>(ws + L.expert_count);
  a.expert_cursor = a.expert_count + d.num_experts;
  a.tile_counters = reinterpret_cast<int*>(ws + L.tile_counters);

  MOEQ_CHECK(io.x_stride % 8 == 0 && io.out_stride % 8 == 0 && io.x_stride >= d.hidden && io.out_stride >= d.hidden,
             "gpu moe: rows of x and out must be at least H and a multiple of 8 elements apart (16-byte vectors)");
  // The first kernel follows the caller's work in plain stream order; the rest of a chunk that
  // takes them (pdl_) are programmatic dependent launches (sm_90 on: pdl_enter in every kernel;
  // without the attribute its wait returns at once).
  bool launched = false, chunk_pdl = false;
  auto pdl = [&] {
    const bool p = chunk_pdl && launched;
    launched = true;
    return p;
  };
  // io.max_launches (diagnostics): the sequence stops after that many kernels.
  int launches = 0;
  auto go = [&](auto&&... args) {
    if (io.max_launches > 0 && launches >= io.max_launches) return;
    ++launches;
    launch(std::forward<decltype(args)>(args)...);
  };
  const int64_t chunk = wl.tokens;
  const std::size_t out_elem = io.out_dtype == mk::kOutF32 ? 4 : 2;
  for (int64_t m0 = 0; m0 < io.m; m0 += chunk) {
    const int64_t m = std::min(chunk, io.m - m0);
    const std::size_t bi = bucket_for(p.buckets(), m);
    const Bucket& b = p.buckets()[bi];
    const Functions& f = functions_[bi];
    chunk_pdl = pdl_ == Pdl::kOn || (pdl_ == Pdl::kDecode && !b.gemm1.wgmma && !b.gemm2.wgmma);
    a.M = static_cast<int>(m);
    a.bm = b.bm;
    a.k_splits = b.k_splits;
    a.max_tiles = static_cast<int>(p.max_tiles(bi, m));
    a.x = static_cast<const unsigned char*>(io.x) + m0 * io.x_stride * 2;
    a.topk_ids = io.topk_ids + m0 * k;
    a.topk_weights = io.topk_weights + m0 * k;
    a.out = static_cast<unsigned char*>(io.out) + static_cast<std::size_t>(m0 * io.out_stride) * out_elem;

    a.align_blocks = static_cast<int>(std::min<int64_t>(ceil_div(m * k, kPairsPerAlignBlock), 64));
    const unsigned n1 = static_cast<unsigned>(ceil_div(d.inter, b.gemm1.bn / 2));
    const unsigned n2 = static_cast<unsigned>(ceil_div(d.hidden, b.gemm2.bn));
    if (a.align_blocks > 1) {
      go(f.zero_counts, 1, 1, 256, 0, stream, &a, "moe_zero_counts", pdl(), after);
      go(f.count, a.align_blocks, 1, 1024, 0, stream, &a, "moe_count", pdl(), after);
    }
    if (f.amax_x) go(f.amax_x, kAmaxParts, 1, 256, 0, stream, &a, "moe_amax_x", pdl(), after);
    const unsigned quant_blocks =
        fp8 ? static_cast<unsigned>(ceil_div(m, mk::quant_rows_per_block(a.hidden, 1024))) : 0;
    go(f.prepare, a.align_blocks + quant_blocks, 1, 1024, 0, stream, &a, "moe_prepare", pdl(), after);
    // B descriptors of this bucket's GEMMs (host-side encodings, no device work, see weight_map;
    // zeros for the kernels that do not read them).
    const int max_smem = p.device().max_smem_per_block;
    mk::TmaMap map1 = weight_map(b.gemm1, sc.kind, w.w13, true, d.num_experts, d.inter, d.hidden,
                                 "cuTensorMapEncodeTiled(w13)", false,
                                 tma_b_tile(sc, b.bm, b.gemm1, p.mma_tma_b(), max_smem));
    mk::TmaMap map2 = weight_map(b.gemm2, sc.kind, w.w2, false, d.num_experts, d.hidden, d.inter,
                                 "cuTensorMapEncodeTiled(w2)", false,
                                 tma_b_tile(sc, b.bm, b.gemm2, p.mma_tma_b(), max_smem));
    // The warp-specialized GEMMs take a flat grid and walk it in groups of m tiles
    // (sm90_moe_ws.cuh), persistent ones as many blocks as the SMs hold at once; the others
    // take (m tile, n tile).
    const unsigned mt = static_cast<unsigned>(a.max_tiles);
    // Clusters (multicast_tile): pairs of m tiles, two blocks a pair, an even grid.
    const bool mc1 = multicast_tile(sc, b.gemm1, p.ws_multicast()), mc2 = multicast_tile(sc, b.gemm2, p.ws_multicast());
    auto ws_grid = [&](unsigned n_tiles, const GemmTile& t, bool mc) {
      const unsigned resident = static_cast<unsigned>(p.device().multiprocessors * ws_blocks_per_sm(b.bm, t));
      if (mc) return 2 * std::min(((mt + 1) / 2) * n_tiles, std::max(1u, resident / 2));
      return std::min(mt * n_tiles, resident);
    };
    mk::TmaMap half1{}, half2{};
    if (mc1)
      half1 = weight_map(b.gemm1, sc.kind, w.w13, true, d.num_experts, d.inter, d.hidden,
                         "cuTensorMapEncodeTiled(w13, half boxes)", true);
    if (mc2)
      half2 = weight_map(b.gemm2, sc.kind, w.w2, false, d.num_experts, d.hidden, d.inter,
                         "cuTensorMapEncodeTiled(w2, half boxes)", true);
    go(f.gemm1, b.gemm1.ws ? ws_grid(n1, b.gemm1, mc1) : mt, b.gemm1.ws ? 1 : n1, b.gemm1.threads(),
       gemm_smem(p, b.bm, b.gemm1), stream, &a, "moe_gemm1", pdl(), after, &map1, 1u, &half1);
    if (f.amax_h) go(f.amax_h, kAmaxParts, 1, 256, 0, stream, &a, "moe_amax_h", pdl(), after);
    if (f.quant_h && gemm1_quant_group(sc, b.gemm1) == 0)
      go(f.quant_h, static_cast<unsigned>(ceil_div(m * k, mk::quant_rows_per_block(a.inter, 512))), 1, 512, 0,
         stream, &a, "moe_quant_h", pdl(), after);
    go(f.gemm2, b.gemm2.ws ? ws_grid(n2, b.gemm2, mc2) : mt, b.gemm2.ws ? 1 : n2, b.gemm2.threads(),
       gemm_smem(p, b.bm, b.gemm2), stream, &a, "moe_gemm2", pdl(), after, &map2,
       static_cast<unsigned>(b.k_splits), &half2);
    // Eight columns a thread (moe_combine.cuh); where that leaves SMs without a block (decode),
    // eight threads a column chunk, each summing a share of the rows.
    const int64_t work = m * d.hidden / 8;
    if (ceil_div(work, 256) < p.device().multiprocessors)
      go(f.combine_wide, static_cast<unsigned>(m * ceil_div(d.hidden / 8, 32)), 1, 256, 0, stream, &a,
         "moe_combine_wide", pdl(), after);
    else
      go(f.combine, static_cast<unsigned>(std::clamp<int64_t>(ceil_div(work, 256), 1, 1056)), 1, 256, 0, stream,
         &a, "moe_combine", pdl(), after);
  }
}

KernelSetSource utility_source() {
  KernelSetSource k;
  k.name = "ct_moe_utility";
  k.source =
      "#include \"moe_routing.cuh\"\n#include \"moe_repack.cuh\"\nusing namespace moeq_kernels;\n"
      "extern \"C\" __global__ void __launch_bounds__(kRouteWarps * 32) moe_route(const RouteArgs r) { route(r); }\n"
      "extern \"C\" __global__ void __launch_bounds__(256) moe_repack_w8a16(unsigned char* codes, long long groups) {\n"
      "  repack_w8a16(codes, groups);\n}\n";
  return k;
}

void launch_route(cu::Module utility, const RouteIo& io, cu::Stream stream) {
  MOEQ_CHECK(io.num_experts >= 1 && io.num_experts <= mk::kRouteMaxExperts,
             "route: experts must be in [1, " + s(mk::kRouteMaxExperts) + "], found " + s(io.num_experts));
  MOEQ_CHECK(io.top_k >= 1 && io.top_k <= 32 && io.top_k <= io.num_experts, "route: top_k must be in [1, min(32, E)]");
  MOEQ_CHECK(io.n_group >= 0 && io.n_group <= 32, "route: n_group must be in [0, 32]");
  if (io.n_group > 0)
    MOEQ_CHECK(io.num_experts % io.n_group == 0 && io.topk_group >= 1 && io.topk_group <= io.n_group,
               "route: n_group must divide E and topk_group be in [1, n_group]");
  if (io.m == 0) return;
  cu::Function f = nullptr;
  cu::check(cu::driver().cuModuleGetFunction(&f, utility, "moe_route"), "moe_route");
  mk::RouteArgs r{};
  r.logits = io.logits;
  r.bias = io.bias;
  r.ids = io.ids;
  r.weights = io.weights;
  r.M = static_cast<int>(io.m);
  r.E = static_cast<int>(io.num_experts);
  r.topk = io.top_k;
  r.sigmoid = io.sigmoid ? 1 : 0;
  r.renormalize = io.renormalize ? 1 : 0;
  r.n_group = io.n_group;
  r.topk_group = io.topk_group;
  r.scale = io.routed_scaling_factor;
  launch(f, static_cast<unsigned>(ceil_div(io.m, mk::kRouteWarps)), 1, mk::kRouteWarps * 32, 0, stream, &r,
         "moe_route", false);
}

void launch_repack_w8a16(cu::Module utility, void* codes, int64_t bytes, cu::Stream stream) {
  MOEQ_CHECK(bytes % 16 == 0, "repack: W8A16 codes must come in whole 16-byte groups");
  cu::Function f = nullptr;
  cu::check(cu::driver().cuModuleGetFunction(&f, utility, "moe_repack_w8a16"), "moe_repack_w8a16");
  long long groups = bytes / 16;
  void* params[] = {&codes, &groups};
  cu::check(cu::driver().cuLaunchKernel(f, static_cast<unsigned>(std::clamp<int64_t>(ceil_div(groups, 256), 1, 4096)),
                                       1, 1, 256, 1, 1, 0, stream, params, nullptr),
           "moe_repack_w8a16");
}

}  // namespace moeq::ct::gpu
