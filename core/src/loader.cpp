#include <moeq/device_staging.hpp>
#include <moeq/error.hpp>
#include <moeq/loader.hpp>
#include <moeq/parallel_for.hpp>
#include <moeq/staged_upload.hpp>
#include <moeq/strings.hpp>
#include <moeq/task_pool.hpp>

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <exception>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

namespace moeq {

const char* ledger_state_name(LedgerEntry::State s) {
  switch (s) {
    case LedgerEntry::State::kConsumed: return "consumed";
    case LedgerEntry::State::kSkipped: return "skipped";
    case LedgerEntry::State::kNotLocal: return "not-local";
    case LedgerEntry::State::kRouter: return "router";
    case LedgerEntry::State::kError: return "error";
    case LedgerEntry::State::kUnknown: return "unknown";
  }
  return "?";
}

const std::vector<std::string>& online_schemes() {
  static const std::vector<std::string> names = {"int8", "fp8-tensor", "fp8-channel", "fp8-block"};
  return names;
}

QuantConfigSource effective_quant_config(const Checkpoint& ck, const std::string& online_scheme) {
  if (online_scheme.empty()) return ck.quant_config();
  const boost::json::object online{{"quant_method", "moeq-online"}, {"scheme", online_scheme}};
  return {boost::json::serialize(online), "user"};
}

int64_t LayerReport::count(LedgerEntry::State s) const {
  return std::count_if(entries.begin(), entries.end(), [&](const LedgerEntry& e) { return e.state == s; });
}

namespace {

// A strided read-only view into a mapped tensor; owns its shape/stride arrays.
struct SourceView {
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;
  const std::byte* base = nullptr;
  uint64_t byte_offset = 0;
  DType dtype = DType::F32;

  static SourceView of(const TensorInfo& t) {
    SourceView v;
    v.shape = t.shape;
    v.strides.assign(t.shape.size(), 1);
    for (int d = static_cast<int>(t.shape.size()) - 2; d >= 0; --d) v.strides[d] = v.strides[d + 1] * t.shape[d + 1];
    v.base = t.data;
    v.dtype = t.dtype;
    return v;
  }
  SourceView index0(int64_t i) const {  // drop the leading dim
    SourceView v = *this;
    v.byte_offset += static_cast<uint64_t>(i * strides[0]) * dtype_size(dtype);
    v.shape.erase(v.shape.begin());
    v.strides.erase(v.strides.begin());
    return v;
  }
  SourceView rows(int64_t start, int64_t count) const {
    SourceView v = *this;
    v.byte_offset += static_cast<uint64_t>(start * strides[0]) * dtype_size(dtype);
    v.shape[0] = count;
    return v;
  }
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return n;
  }
  DLTensor dl() {
    DLTensor t{};
    t.data = const_cast<std::byte*>(base);
    t.device = {kDLCPU, 0};
    t.ndim = static_cast<int32_t>(shape.size());
    t.dtype = to_dl(dtype);
    t.shape = shape.data();
    t.strides = strides.data();
    t.byte_offset = byte_offset;
    return t;
  }
};

struct Piece {
  Projection projection;
  int64_t expert;
  SourceView view;
};

struct LayerTensors {
  std::string prefix;
  int64_t layer = -1;
  std::vector<std::pair<const TensorInfo*, RoutedName>> experts;
  std::vector<std::pair<const TensorInfo*, RoutedName>> unknown;
  const TensorInfo* router_weight = nullptr;
  const TensorInfo* router_scale = nullptr;  // an fp8 router's weight_scale / weight_scale_inv
  const TensorInfo* router_bias = nullptr;
};

// Splits one expert tensor into per-expert, per-projection views (no copies). Fused tensors
// carry experts on dim 0, except a single scalar (one per-tensor scale for every expert, as
// ModelOpt writes for BMM-style experts). BMM-style weights [E, H, 2I] / [E, I, H] (Llama-4)
// are viewed transposed; the shape decides, and the config breaks the tie when H == 2I or I.
std::vector<Piece> split_pieces(const TensorInfo& t, const RoutedName& r, const MoeConfig& cfg) {
  std::vector<std::pair<int64_t, SourceView>> per_expert;
  SourceView all = SourceView::of(t);
  const int64_t I = cfg.intermediate_size, H = cfg.hidden_size;
  if (r.expert < 0) {
    if (all.numel() == 1 && all.shape.size() <= 1) {
      for (int64_t e = 0; e < cfg.num_experts; ++e) per_expert.push_back({e, all});
    } else {
      if (all.shape.empty() || all.shape[0] != cfg.num_experts)
        fail("tensor " + t.name + ": fused over experts, expected leading dim num_experts = " +
             std::to_string(cfg.num_experts) + ", found shape " + shape_string(t.shape));
      for (int64_t e = 0; e < cfg.num_experts; ++e) per_expert.push_back({e, all.index0(e)});
    }
    if (all.shape.size() == 3) {
      const int64_t rows = r.projection == Projection::kW13 ? 2 * I : H;
      const int64_t cols = r.projection == Projection::kW13 ? H : I;
      const bool standard = all.shape[1] == rows && all.shape[2] == cols;
      const bool transposed = all.shape[1] == cols && all.shape[2] == rows;
      if (transposed && (!standard || cfg.fused_experts_transposed))
        for (auto& [e, v] : per_expert) {
          std::swap(v.shape[0], v.shape[1]);
          std::swap(v.strides[0], v.strides[1]);
        }
    }
  } else {
    if (r.expert >= cfg.num_experts)
      fail("tensor " + t.name + ": expert " + std::to_string(r.expert) + " but config.json has num_experts " +
           std::to_string(cfg.num_experts));
    per_expert.push_back({r.expert, all});
  }
  std::vector<Piece> out;
  for (auto& [e, v] : per_expert) {
    if (r.projection != Projection::kW13) {
      out.push_back({r.projection, e, v});
      continue;
    }
    if (v.numel() == 1 && v.shape.size() <= 1) {  // one per-tensor scale for the fused gate/up
      out.push_back({Projection::kW1, e, v});
      out.push_back({Projection::kW3, e, v});
    } else if (!v.shape.empty() && v.shape[0] == 2 * I) {
      out.push_back({Projection::kW1, e, v.rows(0, I)});
      out.push_back({Projection::kW3, e, v.rows(I, I)});
    } else {
      fail("tensor " + t.name + ": fused gate/up expects dim " + (r.expert < 0 ? "1" : "0") + " = 2 * I = " +
           std::to_string(2 * I) + " (gate rows then up rows), found shape " + shape_string(t.shape));
    }
  }
  return out;
}

std::string index_of(const std::vector<int64_t>& shape, int64_t flat) {
  std::vector<int64_t> idx(shape.size());
  for (int d = static_cast<int>(shape.size()) - 1; d >= 0; --d) {
    idx[d] = shape[d] ? flat % shape[d] : 0;
    flat = shape[d] ? flat / shape[d] : 0;
  }
  return shape_string(idx);
}

// The first `limit` unwritten element ranges of a parameter, as "[2, 1]" or "[0, 0]..[0, 5]",
// so that a missing tensor shows up as the indices it would have written.
std::string unwritten_regions(const ParamRecord& p, int limit) {
  IntervalSet done = p.written;
  done.insert_all(p.defaulted);
  std::string out;
  for (int n = 0;; ++n) {
    const int64_t gap = done.first_gap(p.numel);
    if (gap < 0) break;
    if (n == limit) {
      out += " and more";
      break;
    }
    int64_t lo = gap + 1, hi = p.numel;  // [gap, lo) is unwritten; find the largest such end
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo + 1) / 2;
      if (done.intersects(gap, mid)) hi = mid - 1;
      else lo = mid;
    }
    out += (n ? ", " : "") + index_of(p.shape, gap) + (lo - gap > 1 ? ".." + index_of(p.shape, lo - 1) : "");
    done.insert(gap, lo);
  }
  return out;
}

moeq_projection to_abi(Projection p) {
  switch (p) {
    case Projection::kW1: return MOEQ_PROJECTION_W1;
    case Projection::kW2: return MOEQ_PROJECTION_W2;
    default: return MOEQ_PROJECTION_W3;
  }
}

void destroy(LoadedLayer& l) {
  if (l.method != nullptr && l.plugin != nullptr) l.plugin->api->method_destroy(l.method);
  l.method = nullptr;
  if (l.layer) host::release_layer_scratch(*l.layer);  // a layer that failed while holding scratch
  l.layer.reset();
}

// Records an error as the report's problem, keeping the first one's status code.
void note_error(LayerReport& rep, const Error& e) {
  if (rep.problems.empty()) rep.code = e.code();
  rep.problems.push_back(e.what());
}

std::string join_problems(const LayerReport& r) {
  std::string s = "layer " + r.prefix + ": ";
  for (size_t i = 0; i < r.problems.size() && i < 8; ++i) s += (i ? "; " : "") + r.problems[i];
  if (r.problems.size() > 8) s += "; and " + std::to_string(r.problems.size() - 8) + " more";
  return s;
}

// What apply takes: the plugin's apply_info (ABI 1.2), else what the ABI promised before it
// (x and out F32, BF16 or F16; the plugin checks), and no workspace.
void query_apply_info(LoadedLayer& out, const LoadOptions& opt, const std::string& ctx) {
  constexpr uint32_t kAll = MOEQ_DTYPE_BIT_F32 | MOEQ_DTYPE_BIT_BF16 | MOEQ_DTYPE_BIT_F16;
  out.x_dtypes = out.out_dtypes = kAll;
  out.tokens_per_pass = 0;
  out.workspace_bytes = 0;
  const moeq_plugin_api* api = out.plugin->api;
  if (out.plugin->effective_minor < 2 || api->struct_size < MOEQ_STRUCT_SIZE(moeq_plugin_api, apply_info) ||
      api->apply_info == nullptr)
    return;
  moeq_apply_info_args ai{};
  ai.struct_size = sizeof ai;
  ai.method = out.method;
  ai.max_tokens = opt.max_tokens;
  host::throw_if_error(api->apply_info(&ai), ctx + " apply_info");
  const uint32_t masks[2] = {ai.x_dtypes, ai.out_dtypes};
  for (uint32_t m : masks)
    if (m == 0 || (m & ~kAll) != 0)
      fail(MOEQ_STATUS_CODE_INTERNAL, ctx + " apply_info: dtype mask " + std::to_string(m) +
                                          " is empty or has bits other than MOEQ_DTYPE_BIT_F32/BF16/F16");
  if (ai.tokens_per_pass < 1)
    fail(MOEQ_STATUS_CODE_INTERNAL,
         ctx + " apply_info: tokens_per_pass must be >= 1, found " + std::to_string(ai.tokens_per_pass));
  if (ai.workspace_bytes > 0 && out.layer->device.device_type != kDLCUDA)
    fail(MOEQ_STATUS_CODE_INTERNAL, ctx + " apply_info: a workspace (" + std::to_string(ai.workspace_bytes) +
                                        " bytes) is lent only on a CUDA device; a CPU method keeps its own memory");
  out.x_dtypes = ai.x_dtypes;
  out.out_dtypes = ai.out_dtypes;
  out.tokens_per_pass = ai.tokens_per_pass;
  out.workspace_bytes = ai.workspace_bytes;
}

// One bf16 expert of the model (three projections of I x H) and 64 MiB: the default bound of
// the device scratch lent while it loads.
std::size_t default_scratch_budget(const MoeConfig& cfg) {
  return static_cast<std::size_t>(6 * cfg.intermediate_size * cfg.hidden_size) + (std::size_t{64} << 20);
}

// Gives every layer that asked for one a workspace: one per device, as large as the largest
// request, shared by its layers (opt.shared_workspace), or one per layer.
void assign_workspaces(std::vector<std::unique_ptr<LoadedLayer>>& layers, const LoadOptions& opt) {
  std::map<int, std::size_t> need;
  for (const auto& l : layers)
    if (l->workspace_bytes > 0) need[l->layer->device.device_id] = std::max(need[l->layer->device.device_id], l->workspace_bytes);
  std::map<int, std::shared_ptr<DeviceWorkspace>> shared;
  for (auto& l : layers) {
    if (l->workspace_bytes == 0) continue;
    const int dev = l->layer->device.device_id;
    if (!opt.shared_workspace) {
      l->workspace = std::make_shared<DeviceWorkspace>(dev, l->workspace_bytes);
      continue;
    }
    auto& w = shared[dev];
    if (!w) w = std::make_shared<DeviceWorkspace>(dev, need[dev]);
    l->workspace = w;
  }
}

}  // namespace

DeviceWorkspace::DeviceWorkspace(int dev, std::size_t n) : ordinal(dev), bytes(n) {
  const cuda::DriverApi& d = cuda::require();
  cuda::use_primary_context(dev);
  cuda::CUdeviceptr p = 0;
  const cuda::CUresult r = d.cuMemAlloc_v2(&p, std::max<std::size_t>(n, 256));
  if (r != cuda::kSuccess)
    fail(MOEQ_STATUS_CODE_OUT_OF_MEMORY, "cuMemAlloc of the " + std::to_string(n) + "-byte apply workspace on cuda:" +
                                             std::to_string(dev) + ": " + cuda::describe(&d, r));
  data = reinterpret_cast<void*>(static_cast<uintptr_t>(p));
}

DeviceWorkspace::~DeviceWorkspace() {
  if (data == nullptr || !cuda::available()) return;
  try {
    cuda::use_primary_context(ordinal);
    cuda::require().cuMemFree_v2(static_cast<cuda::CUdeviceptr>(reinterpret_cast<uintptr_t>(data)));
  } catch (...) {
  }
}

// An fp8 router's float weights: codes times a per-tensor ([], [1]), per-row ([E], [E, 1]) or
// block ([gE, gH]) scale. A block grid's block size is the power of two that gives its entry
// count (128 x 128 for every producer seen), checked against the grid.
std::vector<float> dequantize_router(const TensorInfo& w, const TensorInfo& scale, int64_t E, int64_t H) {
  const std::string where = "router weight scale " + scale.name + " (" + scale.file.filename().string() + ")";
  if (scale.dtype != DType::F32 && scale.dtype != DType::BF16 && scale.dtype != DType::F16)
    fail(where + ": expected a float dtype (BF16, F16, F32), found " + dtype_name(scale.dtype));
  std::vector<float> out(static_cast<size_t>(E * H));
  const int64_t n = scale.numel();
  int64_t bE = 0, bH = 0;
  if (n == 1) {
    bE = E, bH = H;
  } else if (n == E && (scale.shape.size() == 1 || (scale.shape.size() == 2 && scale.shape[1] == 1))) {
    bE = 1, bH = H;
  } else if (scale.shape.size() == 2) {
    auto block = [](int64_t extent, int64_t entries) {
      int64_t b = 1;
      while (b < (extent + entries - 1) / entries) b *= 2;
      return (extent + b - 1) / b == entries ? b : int64_t{0};
    };
    bE = block(E, scale.shape[0]);
    bH = block(H, scale.shape[1]);
  }
  if (bE == 0 || bH == 0)
    fail(where + ": expected a per-tensor, per-row [" + std::to_string(E) + "] or block grid over [" + std::to_string(E) +
         ", " + std::to_string(H) + "], found " + shape_string(scale.shape));
  const int64_t cols = (H + bH - 1) / bH;
  for (int64_t r = 0; r < E; ++r)
    for (int64_t c = 0; c < H; ++c) {
      const size_t si = n == 1 ? 0 : static_cast<size_t>((r / bE) * (bH == H ? 1 : cols) + (bH == H ? 0 : c / bH));
      out[static_cast<size_t>(r * H + c)] =
          load_as_float(w.data, w.dtype, static_cast<size_t>(r * H + c)) * load_as_float(scale.data, scale.dtype, si);
    }
  return out;
}

namespace {

// A NaN or infinite expert weight would poison every output it touches, and a plugin that
// copies bytes would never notice: the core refuses it for every plugin, naming the tensor,
// projection, expert and the element in the checkpoint's [row, col] of that expert. Only what
// this TP rank uses is read (the ABI's split: w1/w3 rows and w2 columns
// [rank * I/tp, (rank + 1) * I/tp)). Scales are left to the plugin, which holds them to its own
// rules (finite and > 0); integer dtypes are never scanned. On the CPU every piece is scanned
// before the plugin sees it. Onto a device the scan rides on the copy into staging (PackScans),
// and what no copy scanned is scanned once the layer's writes are done, before
// process_after_loading: the load fails the same way, naming the same element, and reads the
// page cache once instead of twice.
// Whether only this TP rank's share of the piece is read (w1/w3 rows, w2 columns
// [rank * I/tp, (rank + 1) * I/tp)). NOTE: only a piece of the shape the geometry gives is read
// by shard; any other (which the plugin refuses later, naming the shape) is read whole, never
// past its end (a fuzzed shard with the wrong shape read rows it does not have).
bool tp_sharded(const Piece& p, const moeq_layer_geometry& g) {
  const SourceView& v = p.view;
  const int64_t I = g.intermediate_size, It = g.intermediate_size_per_partition, lo = g.tp_rank * It;
  const bool shape_as_geometry =
      v.shape.size() == 2 && (p.projection == Projection::kW2    ? v.shape[1] == I
                              : p.projection == Projection::kW13 ? v.shape[0] == 2 * I
                                                                 : v.shape[0] == I);
  return shape_as_geometry && It > 0 && It < I && lo >= 0 && lo + It <= I;
}

// Whether a tensor of this suffix and dtype is scanned: float weights (never scales, never integers).
bool scanned_tensor(const TensorInfo& t, const std::string& suffix) {
  return suffix == "weight" && (t.dtype == DType::F8_E4M3 || t.dtype == DType::BF16 || t.dtype == DType::F16 ||
                                t.dtype == DType::F32);
}

// The bytes of a piece this rank uses, in order: the whole piece, or under TP this rank's rows
// of w1/w3 (gate rows, then up rows of a fused w13) or its columns of each w2 row.
std::vector<host::PackScans::Range> scan_ranges(const Piece& p, const moeq_layer_geometry& g) {
  const SourceView& v = p.view;
  const std::byte* data = v.base + v.byte_offset;
  const std::size_t esize = dtype_size(v.dtype);
  const int64_t I = g.intermediate_size, It = g.intermediate_size_per_partition, lo = g.tp_rank * It;
  std::vector<host::PackScans::Range> out;
  auto rows = [&](int64_t row0, int64_t n, int64_t cols, int64_t col0, int64_t width) {
    for (int64_t r = row0; r < row0 + n; ++r) {
      const std::byte* a = data + static_cast<std::size_t>(r * cols + col0) * esize;
      if (!out.empty() && out.back().second == a)
        out.back().second = a + static_cast<std::size_t>(width) * esize;  // whole rows run on
      else
        out.emplace_back(a, a + static_cast<std::size_t>(width) * esize);
    }
  };
  if (!tp_sharded(p, g)) {
    out.emplace_back(data, data + static_cast<std::size_t>(v.numel()) * esize);
  } else if (p.projection == Projection::kW2) {
    rows(0, v.shape[0], v.shape[1], lo, It);  // [H, I]: this rank's columns
  } else if (p.projection == Projection::kW13) {
    rows(lo, It, v.shape[1], 0, v.shape[1]);  // [2I, H]: this rank's gate rows, then up rows
    rows(I + lo, It, v.shape[1], 0, v.shape[1]);
  } else {
    rows(lo, It, v.shape[1], 0, v.shape[1]);  // [I, H]: this rank's rows
  }
  return out;
}

// The error for the non-finite element at `at` (inside the piece): tensor, projection, expert,
// its [row, col] in the expert's tensor, the value's kind and the file.
Error non_finite_error(const TensorInfo& t, const Piece& p, const std::byte* at) {
  const SourceView& v = p.view;
  const std::byte* data = v.base + v.byte_offset;
  const auto index = static_cast<int64_t>(static_cast<std::size_t>(at - data) / dtype_size(v.dtype));
  const int64_t cols = v.shape.empty() ? 1 : v.shape.back();
  const float val = load_as_float(data, v.dtype, static_cast<std::size_t>(index));
  const char* proj = p.projection == Projection::kW1   ? "w1 (gate_proj)"
                     : p.projection == Projection::kW3 ? "w3 (up_proj)"
                     : p.projection == Projection::kW2 ? "w2 (down_proj)"
                                                       : "w13 (gate_up_proj)";
  return Error(MOEQ_STATUS_CODE_INVALID_ARGUMENT,
               printable_name(t.name) + ": " + proj + " of expert " + std::to_string(p.expert) + ", element [" +
                   std::to_string(index / cols) + ", " + std::to_string(index % cols) + "] is " +
                   (std::isnan(val) ? "NaN" : val > 0 ? "+inf" : "-inf") + " (expected finite " +
                   dtype_name(v.dtype) + " weights, found a non-finite one; file " + t.file.filename().string() + ")");
}

// The first non-finite element of `ranges`, or nullptr.
const std::byte* first_non_finite_in(const std::vector<host::PackScans::Range>& ranges, DType dtype) {
  const std::size_t esize = dtype_size(dtype);
  for (const auto& [a, b] : ranges) {
    const int64_t at = first_non_finite(a, static_cast<std::size_t>(b - a) / esize, dtype);
    if (at >= 0) return a + static_cast<std::size_t>(at) * esize;
  }
  return nullptr;
}

void check_finite(const TensorInfo& t, const std::string& suffix, const Piece& p, const moeq_layer_geometry& g) {
  if (suffix != "weight") return;
  if (const std::byte* bad = first_non_finite_in(scan_ranges(p, g), p.view.dtype)) throw non_finite_error(t, p, bad);
}

// Asks the kernel to read the bytes of a piece this rank uses from the disk now, all at once,
// where a cold load would fault them in one readahead window at a time: under TP only this
// rank's rows of w1/w3 (w2's columns of a rank share their pages with the others', so w2 is
// read whole). Ranges whose first, middle and last pages are in the page cache are taken as
// cached and left alone (the advice walks every page). Advice only: a failure changes nothing.
void read_ahead(const Piece& p, const moeq_layer_geometry& g) {
  static const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
  const SourceView& v = p.view;
  const std::size_t esize = dtype_size(v.dtype);
  const std::byte* data = v.base + v.byte_offset;
  auto advise = [&](const std::byte* from, std::size_t n) {
    if (n == 0) return;
    const auto b = reinterpret_cast<std::uintptr_t>(from);
    const std::uintptr_t lo = b & ~(page - 1), hi = b + n;
    for (std::uintptr_t at : {lo, lo + ((hi - lo) / 2 & ~(page - 1)), (hi - 1) & ~(page - 1)}) {
      unsigned char in = 0;
      if (::mincore(reinterpret_cast<void*>(at), page, &in) != 0 || !(in & 1)) {
        ::madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_WILLNEED);
        return;
      }
    }
  };
  const int64_t I = g.intermediate_size, It = g.intermediate_size_per_partition, lo = g.tp_rank * It;
  if (!tp_sharded(p, g) || p.projection == Projection::kW2) {
    advise(data, static_cast<std::size_t>(v.numel()) * esize);
    return;
  }
  const std::size_t row = static_cast<std::size_t>(v.shape[1]) * esize;
  advise(data + static_cast<std::size_t>(lo) * row, static_cast<std::size_t>(It) * row);
  if (p.projection == Projection::kW13) advise(data + static_cast<std::size_t>(I + lo) * row, static_cast<std::size_t>(It) * row);
}

// The scans of a layer's pieces (read_ahead, then check_finite) on the task pool, a window of
// bytes ahead of the piece being handed: each piece goes to the plugin as soon as its own scan
// is done, so that scanning, packing and the copies overlap within a layer. NOTE: submitting
// every scan at once queued all the layers' scans ahead of the first pack (the pool runs its
// tasks in order), so that no byte went to the device until every layer was scanned; the window
// keeps the packs a few milliseconds behind the scans, and the readahead as deep as before.
class ScanAhead {
 public:
  struct Item {
    const TensorInfo* tensor;
    const std::string* suffix;
    const Piece* piece;
  };
  // `asked` (LoadOptions::scan_ahead_bytes), else MOEQ_LOAD_SCAN_AHEAD_MIB (1..65536), else 32 MiB.
  static std::size_t window_bytes(std::size_t asked) {
    if (asked != 0) return asked;
    long mib = 32;
    if (const char* v = std::getenv("MOEQ_LOAD_SCAN_AHEAD_MIB")) {
      char* end = nullptr;
      const long k = std::strtol(v, &end, 10);
      if (end != v && *end == '\0' && k >= 1 && k <= 65536) mib = k;
    }
    return static_cast<std::size_t>(mib) << 20;
  }

  // `check`: scan each piece (else only read it ahead: the scan rides on the packing).
  ScanAhead(std::vector<Item> items, const moeq_layer_geometry& g, std::size_t window, bool check)
      : window_(window_bytes(window)), check_(check), items_(std::move(items)), g_(g) {
    starts_.reserve(items_.size() + 1);
    std::size_t at = 0;
    for (const Item& it : items_) {
      starts_.push_back(at);
      at += static_cast<std::size_t>(it.piece->view.numel()) * dtype_size(it.piece->view.dtype);
    }
    starts_.push_back(at);
    for (std::size_t i = 0; i < items_.size(); ++i) slots_.emplace_back();
  }
  ~ScanAhead() {  // no scan outlives the pieces it reads (their tasks throw nothing)
    for (std::size_t i = 0; i < submitted_; ++i) pool_.wait(slots_[i].done);
  }
  ScanAhead(const ScanAhead&) = delete;
  ScanAhead& operator=(const ScanAhead&) = delete;

  // Waits for item k's scan (queuing the scans up to the window past it, helping the pool
  // meanwhile) and returns what it threw, if anything. Items are waited for in order.
  std::exception_ptr wait(std::size_t k) {
    while (submitted_ < items_.size() && (submitted_ <= k || starts_[submitted_] < starts_[k] + window_)) {
      const std::size_t i = submitted_++;
      pool_.submit(slots_[i].done, [this, i] {
        const Item& it = items_[i];
        read_ahead(*it.piece, g_);
        if (!check_) return;
        try {
          check_finite(*it.tensor, *it.suffix, *it.piece, g_);
        } catch (...) {
          slots_[i].error = std::current_exception();
        }
      });
    }
    pool_.wait(slots_[k].done);
    return slots_[k].error;
  }

 private:
  struct Slot {
    TaskPool::Group done;
    std::exception_ptr error;
  };
  TaskPool& pool_ = TaskPool::shared();
  const std::size_t window_;
  const bool check_;
  std::vector<Item> items_;
  const moeq_layer_geometry& g_;
  std::vector<std::size_t> starts_;  // byte offset of each item in the layer's sequence, and the end
  std::deque<Slot> slots_;            // NOTE: a deque: a Group cannot move
  std::size_t submitted_ = 0;
};

// LoadOptions::weight_scan, else MOEQ_LOAD_SCAN: "pack" (the default) scans a device load's
// weights while they are copied into staging, "ahead" scans every piece on the host before the
// plugin sees it, as on the CPU.
bool scan_while_packing(LoadOptions::WeightScan asked) {
  if (asked != LoadOptions::WeightScan::kDefault) return asked == LoadOptions::WeightScan::kWhilePacking;
  const char* v = std::getenv("MOEQ_LOAD_SCAN");
  if (v == nullptr || *v == '\0' || std::string_view(v) == "pack") return true;
  if (std::string_view(v) == "ahead") return false;
  fail("MOEQ_LOAD_SCAN must be 'pack' or 'ahead', found '" + std::string(v) + "'");
}

// The weights of a device load, checked once the copies into staging are done: for each tensor
// (that split and has not failed already), the bytes this rank uses that no pack scanned are
// scanned now (on the task pool), and the first non-finite element of the tensor, found by a
// pack or by this scan, fails it as check_finite would have. A run that met one stopped
// scanning there, so the first element in address order of a piece's ranges is the first of
// those recorded or found here.
void check_after_packing(const LayerTensors& lt, const std::vector<std::vector<Piece>>& pieces_of,
                         const std::vector<std::exception_ptr>& split_error, const std::vector<std::size_t>& entry_of,
                         const ExpertRange& local, const moeq_layer_geometry& g, const host::PackScans& scans,
                         LayerReport& rep) {
  using Range = host::PackScans::Range;
  const std::vector<const std::byte*> found = scans.non_finite();
  struct Check {
    std::size_t tensor;
    const Piece* piece;
    std::vector<Range> ranges, unscanned;
    const std::byte* bad = nullptr;
  };
  std::vector<Check> checks;
  for (std::size_t ti = 0; ti < lt.experts.size(); ++ti) {
    const auto& [t, r] = lt.experts[ti];
    if (split_error[ti] || !scanned_tensor(*t, r.suffix)) continue;
    if (entry_of[ti] < rep.entries.size() && rep.entries[entry_of[ti]].state == LedgerEntry::State::kError) continue;
    for (const Piece& p : pieces_of[ti]) {
      if (!local.contains(p.expert)) continue;
      Check c{ti, &p, scan_ranges(p, g), {}, nullptr};
      for (const auto& [a, b] : c.ranges) {
        for (const Range& gap : scans.unscanned(a, b)) c.unscanned.push_back(gap);
        // A non-finite element a pack recorded inside the range (the first one wins).
        if (c.bad == nullptr) {
          auto f = std::lower_bound(found.begin(), found.end(), a);
          if (f != found.end() && *f < b) c.bad = *f;
        }
      }
      checks.push_back(std::move(c));
    }
  }
  // The unscanned bytes, on the task pool (a plugin that copies every byte it uses leaves none).
  std::size_t after = 0, total = 0;
  for (const Check& c : checks) {
    for (const auto& [a, b] : c.unscanned) after += static_cast<std::size_t>(b - a);
    for (const auto& [a, b] : c.ranges) total += static_cast<std::size_t>(b - a);
  }
  rep.bytes_scanned_after = static_cast<int64_t>(after);
  rep.bytes_scanned_packing = static_cast<int64_t>(total - after);
  std::vector<const std::byte*> late(checks.size(), nullptr);
  {
    TaskPool& pool = TaskPool::shared();
    TaskPool::Group group;
    const TaskPool::Join join(pool, group);
    for (std::size_t i = 0; i < checks.size(); ++i)
      if (!checks[i].unscanned.empty())
        pool.submit(group, [&, i] { late[i] = first_non_finite_in(checks[i].unscanned, checks[i].piece->view.dtype); });
    pool.wait(group);
  }
  // Each tensor's first failing piece (pieces in order), its first element.
  std::vector<bool> failed(lt.experts.size(), false);
  for (std::size_t i = 0; i < checks.size(); ++i) {
    const Check& c = checks[i];
    const std::byte* bad = c.bad == nullptr ? late[i] : late[i] == nullptr ? c.bad : std::min(c.bad, late[i]);
    if (bad == nullptr || failed[c.tensor]) continue;
    failed[c.tensor] = true;
    const Error e = non_finite_error(*lt.experts[c.tensor].first, *c.piece, bad);
    if (entry_of[c.tensor] < rep.entries.size()) {
      LedgerEntry& entry = rep.entries[entry_of[c.tensor]];
      entry.state = LedgerEntry::State::kError;
      entry.detail = e.what();
    }
    note_error(rep, e);
  }
}

// The router of a layer, checked at load: weight [E, H] and correction bias [E] of a float dtype
// (BF16, F16, F32), every value finite; a family that routes with a correction bias needs one.
// Each problem names the tensor and its file.
std::vector<std::string> router_problems(const MoeConfig& cfg, const LayerTensors& lt) {
  std::vector<std::string> out;
  auto in = [](const TensorInfo& t) { return t.name + " (" + t.file.filename().string() + ")"; };
  auto check = [&](const TensorInfo& t, const char* what, std::vector<int64_t> want) {
    if (t.dtype != DType::F32 && t.dtype != DType::BF16 && t.dtype != DType::F16) {
      out.push_back(std::string(what) + " " + in(t) + ": expected a float dtype (BF16, F16, F32), found " +
                    dtype_name(t.dtype));
      return;
    }
    if (t.shape != want) {
      out.push_back(std::string(what) + " " + in(t) + ": expected shape " + shape_string(want) + ", found " +
                    shape_string(t.shape));
      return;
    }
    const int64_t i = first_non_finite(t.data, static_cast<std::size_t>(t.numel()), t.dtype);
    if (i >= 0) {
      const float v = load_as_float(t.data, t.dtype, static_cast<size_t>(i));
      const std::string at = want.size() == 2 ? "[" + std::to_string(i / want[1]) + ", " + std::to_string(i % want[1]) + "]"
                                              : "[" + std::to_string(i) + "]";
      out.push_back(std::string(what) + " " + in(t) + ": value " + at + " is " + (std::isnan(v) ? "NaN" : "infinite") +
                    " (routing needs finite values)");
    }
  };
  if (lt.router_weight && lt.router_weight->dtype == DType::F8_E4M3) {
    // A quantized router (llm-compressor's model_free_ptq quantizes it unless ignored): its
    // codes times its scale are the router.
    const TensorInfo& t = *lt.router_weight;
    if (t.shape != std::vector<int64_t>{cfg.num_experts, cfg.hidden_size})
      out.push_back("router weight " + in(t) + ": expected shape " + shape_string({cfg.num_experts, cfg.hidden_size}) +
                    ", found " + shape_string(t.shape));
    else if (lt.router_scale == nullptr)
      out.push_back("router weight " + in(t) + " is F8_E4M3 but the checkpoint holds no weight_scale or weight_scale_inv for it");
    else
      try {
        const std::vector<float> w = dequantize_router(t, *lt.router_scale, cfg.num_experts, cfg.hidden_size);
        for (size_t i = 0; i < w.size(); ++i)
          if (!std::isfinite(w[i])) {
            out.push_back("router weight " + in(t) + ": value [" + std::to_string(i / cfg.hidden_size) + ", " +
                          std::to_string(i % cfg.hidden_size) + "] (codes times scale) is not finite");
            break;
          }
      } catch (const Error& e) {
        out.push_back(e.what());
      }
  } else if (lt.router_weight) {
    check(*lt.router_weight, "router weight", {cfg.num_experts, cfg.hidden_size});
  }
  if (lt.router_bias) check(*lt.router_bias, "router correction bias", {cfg.num_experts});
  const RoutingFamily* f = cfg.resolved_routing.family;
  if (f != nullptr && lt.router_weight != nullptr) {
    const std::string gate = lt.router_weight->name.substr(0, lt.router_weight->name.rfind('.'));
    if (f->bias_tensor != nullptr && lt.router_bias == nullptr)
      out.push_back("router correction bias " + gate + "." + f->bias_tensor + " is missing: " + f->model_type +
                    " selects experts with it (" + f->defined_by + ")");
    if (f->bias_tensor == nullptr && lt.router_bias != nullptr)
      out.push_back("router correction bias " + in(*lt.router_bias) + ": " + f->model_type +
                    " routes without a correction bias (" + f->defined_by + "), so moeq cannot say what it means");
  }
  return out;
}

// Wall seconds since t0.
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Progress of one load_model call, shared by its loading threads.
struct ProgressTracker {
  const LoadOptions* opt = nullptr;
  std::mutex mutex;
  LoadProgress p;
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  void add(int64_t bytes, int layers) {
    if (!opt || !opt->progress) return;
    std::lock_guard lock(mutex);
    p.bytes_done += bytes;
    p.layers_done += layers;
    p.seconds = seconds_since(start);
    opt->progress(p);
  }
};
thread_local ProgressTracker* t_progress = nullptr;

// Seconds since this load began (the layer's thread's tracker), for a layer's marks; -1 outside a load.
double load_clock() { return t_progress ? seconds_since(t_progress->start) : -1.0; }

// The lock under which the layers of a load onto `device` create their weights (one a device
// ordinal, up to 16, then shared).
std::mutex& create_mutex(DLDevice device) {
  static std::mutex m[16];
  return m[static_cast<unsigned>(device.device_id) % 16];
}

// Loads one layer; on any problem releases what it made and leaves `out.method` NULL.
void load_layer(const Checkpoint& ck, const Registry& reg, const LoadOptions& opt, const MoeConfig& cfg,
                const LayerTensors& lt, LoadedLayer& out) {
  const auto t_layer = std::chrono::steady_clock::now();
  LayerReport& rep = out.report;
  rep.at.start = load_clock();
  rep.prefix = lt.prefix;
  rep.layer = lt.layer;
  out.router_weight = lt.router_weight;
  out.router_scale = lt.router_scale;
  out.router_bias = lt.router_bias;
  for (auto& [t, r] : lt.unknown)
    rep.entries.push_back({t->name, LedgerEntry::State::kUnknown, "", "matches no expert naming family",
                           dtype_name(t->dtype), t->shape});
  if (lt.router_weight)
    rep.entries.push_back({lt.router_weight->name, LedgerEntry::State::kRouter, "router weight", "",
                           dtype_name(lt.router_weight->dtype), lt.router_weight->shape});
  if (lt.router_scale)
    rep.entries.push_back({lt.router_scale->name, LedgerEntry::State::kRouter, "router weight scale", "",
                           dtype_name(lt.router_scale->dtype), lt.router_scale->shape});
  if (lt.router_bias)
    rep.entries.push_back({lt.router_bias->name, LedgerEntry::State::kRouter, "router correction bias", "",
                           dtype_name(lt.router_bias->dtype), lt.router_bias->shape});
  for (const std::string& msg : router_problems(cfg, lt)) {
    if (opt.strict) {
      rep.problems.push_back(msg);
    } else {
      rep.waived.push_back(msg);
      host::log(MOEQ_LOG_LEVEL_WARNING, "moeq", "layer " + lt.prefix + ": " + msg);
    }
  }
  for (auto& [t, r] : lt.unknown) {
    const std::string msg = "unknown expert tensor " + t->name + " (matches no expert naming family)";
    if (opt.strict) {
      rep.problems.push_back(msg);
    } else {
      rep.waived.push_back(msg);
      host::log(MOEQ_LOG_LEVEL_WARNING, "moeq", "layer " + lt.prefix + ": " + msg);
    }
  }

  // The layer's expert weight dtype decides quantized vs not, for the probes.
  // Packed 4-bit checkpoints store their weights as weight_packed (int32 words): they are the
  // layer's weights too, so the probes see them and a refusal quotes the plugins' reasons.
  for (auto& [t, r] : lt.experts) {
    if (r.suffix != "weight" && r.suffix != "weight_packed") continue;
    if (rep.weight_dtype.empty()) {
      rep.weight_dtype = dtype_name(t->dtype);
      rep.family = r.family;
      rep.experts_module = r.experts_module;
    } else if (rep.weight_dtype != dtype_name(t->dtype)) {
      rep.problems.push_back("expert weights of mixed dtypes: " + rep.weight_dtype + " and " +
                             dtype_name(t->dtype) + " (" + t->name + ")");
      return;
    }
  }
  if (lt.experts.empty() && lt.unknown.empty()) {
    const TensorInfo* router = lt.router_weight ? lt.router_weight : lt.router_bias;
    rep.problems.push_back("router " + (router ? router->name : std::string("?")) +
                           " is in the checkpoint but no expert tensor of this layer is (expected its experts' "
                           "weights, found none: a shard or the experts' tensors are missing)");
    return;
  }
  if (rep.weight_dtype.empty()) {
    rep.problems.push_back("no expert weight tensors (only scales or auxiliary tensors)");
    return;
  }
  // The parameters are allocated from config.json's geometry before any tensor is read. When the
  // layer's expert weights hold less than a sixteenth of the elements that geometry needs, the
  // config does not describe these tensors: refused here, strict or not, before allocating (a
  // 128-byte file with H = I = 4096 in its config took 3 GB). Anything closer (a partial
  // checkpoint under --no-strict, 4-bit codes packed two a byte) gets the plugin's precise shape
  // message, or the unwritten elements listed.
  {
    int64_t held = 0;
    for (auto& [t, r] : lt.experts) {
      if (r.suffix == "weight") held += t->numel();
      // Packed 4-bit weights: two codes a byte, whatever word the packer stores them in.
      if (r.suffix == "weight_packed") held += 2 * static_cast<int64_t>(t->nbytes());
    }
    const int64_t need = cfg.num_experts * 3 * cfg.intermediate_size * cfg.hidden_size;
    if (held < need / 16) {
      rep.problems.push_back("config.json's geometry (" + std::to_string(cfg.num_experts) + " experts, hidden_size " +
                             std::to_string(cfg.hidden_size) + ", intermediate size " +
                             std::to_string(cfg.intermediate_size) + ") needs " + std::to_string(need) +
                             " expert weight elements in this layer; its checkpoint tensors hold " +
                             std::to_string(held) + " (expected the config to describe the tensors, found less than "
                             "a sixteenth of what it describes)");
      return;
    }
  }

  ProbeQuery q;
  const QuantConfigSource quant = effective_quant_config(ck, opt.online_scheme);
  q.quant_config_json = quant.json;
  q.quant_config_source = quant.source;
  q.layer_name = rep.experts_module;
  q.weight_dtype = rep.weight_dtype;
  try {
    Selection sel = reg.select(q, opt.pin_plugin);
    out.plugin = sel.chosen;
    rep.plugin = sel.chosen->name;
    rep.plugin_why = sel.why;
    rep.probes = sel.probes;
    rep.at.selected = load_clock();
  } catch (const Error& e) {
    rep.probes = reg.probe_all(q);
    note_error(rep, e);
    return;
  }

  const ExpertRange local = local_experts(cfg.num_experts, opt.placement.ep_rank, opt.placement.ep_size);
  out.geometry = layer_geometry(cfg, opt.placement);
  const moeq_layer_geometry& g = out.geometry;

  const std::string ctx = out.plugin->name;
  const bool scan_packing = opt.device.device_type == kDLCUDA && scan_while_packing(opt.weight_scan);
  try {
    moeq_method_create_args ma{};
    ma.struct_size = sizeof(ma);
    ma.quant_config_json = q.quant_config_json.c_str();
    ma.layer_name = rep.experts_module.c_str();
    ma.weight_dtype = rep.weight_dtype.c_str();
    ma.geometry = &g;
    ma.device = opt.device;
    {
      // A delegating plugin (modelopt, online_quant) creates its delegate's method through the
      // host, which finds the delegate in this load's registry.
      const host::ScopedLoadRegistry delegate_through(reg);
      host::throw_if_error(out.plugin->api->method_create(&ma), ctx + " method_create");
    }
    out.method = ma.method;
    out.layer = host::make_layer(lt.prefix, opt.device);
    for (auto& [t, r] : lt.experts) out.layer->stable_sources.push_back({t->data, t->data + t->nbytes()});
    std::sort(out.layer->stable_sources.begin(), out.layer->stable_sources.end());
    if (scan_packing) {
      std::vector<host::PackScans::Source> sources;
      for (auto& [t, r] : lt.experts)
        if (scanned_tensor(*t, r.suffix)) sources.push_back({t->data, t->data + t->nbytes(), t->dtype});
      out.layer->pack_scans = std::make_shared<host::PackScans>(std::move(sources));
    }
    moeq_create_weights_args cw{sizeof(moeq_create_weights_args), out.method, out.layer.get()};
    {
      // Onto a device the layers create their weights one at a time: the driver serializes the
      // parameters' allocations anyway (seven layers' on seven threads at once took 4.1 ms where
      // one layer's took 0.44 ms, H100, 2026-12-07), and so the first layer's bytes start to flow
      // after one layer's allocations instead of after most of the seven layers'.
      std::unique_lock<std::mutex> one_at_a_time(create_mutex(opt.device), std::defer_lock);
      if (opt.device.device_type == kDLCUDA) one_at_a_time.lock();
      host::throw_if_error(out.plugin->api->create_weights(&cw), ctx + " create_weights");
    }
    rep.at.created = load_clock();
  } catch (const Error& e) {
    note_error(rep, e);
    destroy(out);
    return;
  }

  char reason[512];
  for (auto& [t, r] : lt.experts) rep.expert_bytes += static_cast<int64_t>(t->nbytes());
  // Every tensor's pieces first; this rank's pieces are then scanned for non-finite values on
  // the task pool, a window ahead, and each is handed to the plugin once its own scan is done
  // (a failed scan fails its tensor where the piece would have gone, as before).
  using Clock = std::chrono::steady_clock;
  const auto t_hand = Clock::now();
  rep.seconds.setup = std::chrono::duration<double>(t_hand - t_layer).count();
  const size_t nt = lt.experts.size();
  std::vector<std::vector<Piece>> pieces_of(nt);
  std::vector<std::exception_ptr> split_error(nt);
  std::vector<ScanAhead::Item> items;
  for (size_t i = 0; i < nt; ++i) {
    auto& [t, r] = lt.experts[i];
    try {
      pieces_of[i] = split_pieces(*t, r, cfg);
    } catch (...) {
      split_error[i] = std::current_exception();
      continue;
    }
    for (const Piece& p : pieces_of[i])
      if (local.contains(p.expert)) items.push_back({t, &r.suffix, &p});
  }
  ScanAhead scans(std::move(items), g, opt.scan_ahead_bytes, !scan_packing);
  std::vector<std::size_t> entry_of(nt, SIZE_MAX);  // each tensor's ledger entry
  size_t next_item = 0;  // the scan of this rank's next piece, in the order they are handed
  double scan_wait = 0;
  for (size_t ti = 0; ti < nt; ++ti) {
    auto& [t, r] = lt.experts[ti];
    LedgerEntry entry{t->name, LedgerEntry::State::kConsumed, "", "", dtype_name(t->dtype), t->shape};
    // A tensor that fails part way leaves the scans of its remaining pieces unused.
    size_t item_end = next_item;
    for (const Piece& p : pieces_of[ti]) item_end += local.contains(p.expert) ? 1 : 0;
    try {
      if (split_error[ti]) std::rethrow_exception(split_error[ti]);
      std::vector<Piece>& pieces = pieces_of[ti];
      int64_t used = 0, skipped = 0, remote = 0;
      std::string skip_reason;
      for (size_t pj = 0; pj < pieces.size(); ++pj) {
        Piece& p = pieces[pj];
        if (!local.contains(p.expert)) {
          ++remote;
          continue;
        }
        const auto t_scan = Clock::now();
        const std::exception_ptr bad = scans.wait(next_item++);
        scan_wait += seconds_since(t_scan);
        if (bad) std::rethrow_exception(bad);
        DLTensor src = p.view.dl();
        int64_t handed = static_cast<int64_t>(dtype_size(p.view.dtype));
        for (int64_t d : p.view.shape) handed *= d;
        rep.expert_bytes_handed += handed;
        moeq_weight_loader_args wa{};
        wa.struct_size = sizeof(wa);
        wa.method = out.method;
        wa.layer = out.layer.get();
        wa.tensor_name = t->name.c_str();
        wa.suffix = r.suffix.c_str();
        wa.projection = to_abi(p.projection);
        wa.global_expert = p.expert;
        wa.local_expert = p.expert - local.first;
        wa.source = &src;
        reason[0] = '\0';
        wa.skip_reason = reason;
        wa.skip_reason_capacity = sizeof(reason);
        out.layer->current_tensor = t->name;
        moeq_status* st = out.plugin->api->weight_loader(&wa);
        out.layer->current_tensor.clear();
        host::throw_if_error(st, ctx);
        if (rep.at.first_piece < 0) rep.at.first_piece = load_clock();
        if (wa.skipped) {
          ++skipped;
          skip_reason = reason[0] ? reason : "skipped without a reason";
        } else {
          ++used;
        }
      }
      // Where it went, in words.
      std::string proj = r.projection == Projection::kW13 ? "w1+w3" : projection_name(r.projection);
      if (r.expert >= 0)
        entry.routed_to = proj + " e" + std::to_string(r.expert);
      else
        entry.routed_to = proj + " of experts " + std::to_string(local.first) + ".." +
                          std::to_string(local.first + local.count - 1);
      if (used == 0 && skipped == 0 && remote > 0) {
        entry.state = LedgerEntry::State::kNotLocal;
        entry.detail = "expert not on EP rank " + std::to_string(opt.placement.ep_rank);
      } else if (used == 0 && skipped > 0) {
        entry.state = LedgerEntry::State::kSkipped;
        entry.detail = skip_reason;
      } else if (skipped > 0) {
        entry.state = LedgerEntry::State::kError;
        entry.detail = "plugin used part of the tensor and skipped the rest: " + skip_reason;
        rep.problems.push_back("tensor " + t->name + ": " + entry.detail);
      } else if (remote > 0) {
        entry.detail = std::to_string(remote) + " pieces of experts not on this EP rank left out";
      }
      if (r.suffix != "weight" && entry.state == LedgerEntry::State::kConsumed)
        entry.detail = entry.detail.empty() ? r.suffix : r.suffix + "; " + entry.detail;
    } catch (const Error& e) {
      entry.state = LedgerEntry::State::kError;
      entry.detail = e.what();
      note_error(rep, e);
    }
    next_item = item_end;
    entry_of[ti] = rep.entries.size();
    rep.entries.push_back(std::move(entry));
    if (t_progress) t_progress->add(static_cast<int64_t>(t->nbytes()), 0);
  }

  rep.seconds.hand = seconds_since(t_hand) - scan_wait;
  rep.at.handed = load_clock();
  if (scan_packing) {
    // Every copy queued is done (so every pack scanned what it was to scan): then the weights
    // are checked as a whole, naming each tensor's first non-finite element.
    auto t_phase = Clock::now();
    bool copied = true;
    try {
      host::finish_device_writes(*out.layer);
    } catch (const Error& e) {
      note_error(rep, e);
      copied = false;
    }
    rep.seconds.copies = seconds_since(t_phase);
    t_phase = Clock::now();
    if (copied) check_after_packing(lt, pieces_of, split_error, entry_of, local, g, *out.layer->pack_scans, rep);
    scan_wait += seconds_since(t_phase);
  }
  rep.seconds.scan = scan_wait;
  rep.params = host::coverage(*out.layer);
  rep.bytes_copied = out.layer->bytes_copied_from_host;
  // A tensor that failed above leaves its elements unwritten: say so rather than blame a missing one.
  const bool tensor_failed = std::any_of(rep.entries.begin(), rep.entries.end(),
                                         [](const LedgerEntry& e) { return e.state == LedgerEntry::State::kError; });
  for (const ParamCoverage& c : rep.params) {
    if (c.first_gap.empty()) continue;
    const ParamRecord* rec = host::find_param(*out.layer, c.name);
    const std::string msg = "parameter '" + c.name + "' " + shape_string(c.shape) + ": " +
                            std::to_string(c.numel - c.written - c.defaulted) + " of " + std::to_string(c.numel) +
                            " elements not written, first at " + c.first_gap +
                            (rec ? " (unwritten: " + unwritten_regions(*rec, 4) + ")" : std::string()) +
                            (tensor_failed ? " (a tensor above failed to load, or a checkpoint tensor is missing)"
                                           : " (a checkpoint tensor is missing)");
    if (opt.strict) {
      rep.problems.push_back(msg);
    } else {
      rep.waived.push_back(msg);
      host::log(MOEQ_LOG_LEVEL_WARNING, "moeq", "layer " + lt.prefix + ": " + msg);
    }
  }

  if (rep.problems.empty()) {
    try {
      auto t_phase = Clock::now();
      host::finish_device_writes(*out.layer);
      rep.seconds.copies += seconds_since(t_phase);
      rep.at.copied = load_clock();
      t_phase = Clock::now();
      moeq_process_after_loading_args pa{sizeof(moeq_process_after_loading_args), out.method, out.layer.get()};
      moeq_status* st = out.plugin->api->process_after_loading(&pa);
      // Scratch the layer still holds is taken back (the plugin should have released it).
      if (const std::size_t left = host::release_layer_scratch(*out.layer); left > 0 && st == nullptr)
        host::log(MOEQ_LOG_LEVEL_WARNING, "moeq",
                  "layer " + lt.prefix + ": " + out.plugin->name + " still held " + std::to_string(left) +
                      " scratch block(s) after process_after_loading; taken back");
      host::throw_if_error(st, ctx + " process_after_loading");
      host::finish_device_writes(*out.layer);  // copies the plugin made while processing
      rep.seconds.prepare = seconds_since(t_phase);
      rep.at.prepared = load_clock();
      query_apply_info(out, opt, ctx);
      if (moeq_describe_fn d = out.plugin->describe()) {
        std::string buf(8192, '\0');
        moeq_describe_args da{sizeof(moeq_describe_args), out.method, buf.data(), buf.size()};
        host::throw_if_error(d(&da), ctx + " describe");
        rep.describe_json = buf.c_str();
      }
    } catch (const Error& e) {
      note_error(rep, e);
    }
  }
  if (!rep.problems.empty()) destroy(out);
}

}  // namespace

moeq_layer_geometry layer_geometry(const MoeConfig& cfg, const Placement& placement) {
  const ExpertRange local = local_experts(cfg.num_experts, placement.ep_rank, placement.ep_size);
  moeq_layer_geometry g{};
  g.struct_size = sizeof(g);
  g.num_experts = cfg.num_experts;
  g.num_local_experts = local.count;
  g.first_local_expert = local.first;
  g.hidden_size = cfg.hidden_size;
  g.intermediate_size = cfg.intermediate_size;
  g.intermediate_size_per_partition = cfg.intermediate_size / placement.tp_size;
  g.tp_rank = placement.tp_rank;
  g.tp_size = placement.tp_size;
  g.ep_rank = placement.ep_rank;
  g.ep_size = placement.ep_size;
  g.top_k = cfg.top_k;
  g.activation = MOEQ_ACTIVATION_SILU;
  return g;
}

LoadedLayer::~LoadedLayer() { destroy(*this); }

LoadedModel load_model(const Checkpoint& checkpoint, const Registry& reg, const LoadOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  LoadedModel model;
  model.checkpoint = std::make_shared<const Checkpoint>(checkpoint);
  const Checkpoint& ck = *model.checkpoint;
  model.config = parse_moe_config(ck.config(), ck.dir() / "config.json");
  model.placement = opt.placement;
  validate_placement(opt.placement, model.config.num_experts, model.config.intermediate_size);
  (void)scan_while_packing(opt.weight_scan);  // a bad MOEQ_LOAD_SCAN fails the load here, once

  // Every name routed first, on several threads where there are many (a checkpoint of 100,000
  // tensors spends tens of milliseconds in the router), then grouped in name order.
  std::vector<const std::pair<const std::string, TensorInfo>*> entries;
  entries.reserve(ck.tensors().size());
  for (const auto& e : ck.tensors()) entries.push_back(&e);
  std::vector<RoutedName> routed(entries.size());
  {
    std::mutex failed;
    std::exception_ptr error;
    const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    parallel_for(entries.size(), entries.size() >= 4096 ? std::min(cores, 8u) : 1u, [&](size_t i) {
      try {
        routed[i] = route_tensor_name(entries[i]->first);
      } catch (...) {  // only an allocation can fail
        const std::lock_guard<std::mutex> lock(failed);
        if (!error) error = std::current_exception();
      }
    });
    if (error) std::rethrow_exception(error);
  }
  std::map<std::pair<int64_t, std::string>, LayerTensors> by_layer;
  std::vector<std::pair<const TensorInfo*, RoutedName>> routers;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const std::string& name = entries[i]->first;
    const TensorInfo& info = entries[i]->second;
    RoutedName r = std::move(routed[i]);
    if (r.role == TensorRole::kNotMoe) {
      model.not_moe.push_back(name);
      continue;
    }
    if (r.role == TensorRole::kRouterWeight || r.role == TensorRole::kRouterBias) {
      routers.push_back({&info, r});
      continue;
    }
    LayerTensors& lt = by_layer[{r.layer, r.layer_prefix}];
    if (lt.layer < 0) {  // new
      lt.prefix = r.layer_prefix;
      lt.layer = r.layer;
    }
    (r.role == TensorRole::kExpert ? lt.experts : lt.unknown).emplace_back(&info, std::move(r));
  }
  if (by_layer.empty()) fail(ck.dir().string() + ": no MoE expert tensors found in any naming family");
  // A router whose layer has no expert tensors means the experts are missing (a dense MLP has
  // gate_proj/up_proj/down_proj, never a router): strict loading fails that layer; --no-strict
  // reports the router as not MoE, with a warning.
  for (auto& [t, r] : routers) {
    auto it = by_layer.find({r.layer, r.layer_prefix});
    if (it == by_layer.end()) {
      if (!opt.strict) {
        model.not_moe.push_back(t->name);
        host::log(MOEQ_LOG_LEVEL_WARNING, "moeq",
                  "layer " + r.layer_prefix + ": router " + t->name + " but no expert tensors (--no-strict: skipped)");
        continue;
      }
      it = by_layer.try_emplace({r.layer, r.layer_prefix}).first;
      it->second.prefix = r.layer_prefix;
      it->second.layer = r.layer;
    }
    (r.role == TensorRole::kRouterWeight ? it->second.router_weight : it->second.router_bias) = t;
    if (r.role == TensorRole::kRouterWeight && t->dtype == DType::F8_E4M3) {
      const std::string base = t->name.substr(0, t->name.size() - std::string_view(".weight").size());
      for (const char* leaf : {".weight_scale", ".weight_scale_inv"})
        if (const TensorInfo* sc = ck.find(base + leaf)) {
          it->second.router_scale = sc;
          std::erase(model.not_moe, sc->name);
          break;
        }
    }
  }

  model.at.routed = seconds_since(t0);
  // Layers load on several threads (plugins keep methods independent: ABI threading rules);
  // the outcome is then taken in layer order, so the first failing layer is the one named,
  // and every layer loaded before a failure is released with the model.
  std::vector<const LayerTensors*> order;
  for (const auto& [key, lt] : by_layer) order.push_back(&lt);
  std::vector<std::unique_ptr<LoadedLayer>> loaded(order.size());
  std::vector<std::exception_ptr> thrown(order.size());
  const unsigned threads = opt.threads != 0 ? opt.threads : std::clamp(std::thread::hardware_concurrency(), 1u, 8u);
  const host::ScopedLoadScratch scratch(
      opt.device, opt.load_scratch_bytes != 0 ? opt.load_scratch_bytes : default_scratch_budget(model.config));
  model.at.scratch = seconds_since(t0);
  ProgressTracker progress;
  progress.start = t0;
  progress.opt = &opt;
  progress.p.layers_total = static_cast<int>(order.size());
  for (const LayerTensors* lt : order)
    for (const auto& [t, r] : lt->experts) progress.p.bytes_total += static_cast<int64_t>(t->nbytes());
  parallel_for(order.size(), threads, [&](size_t i) {
    t_progress = &progress;
    try {
      auto layer = std::make_unique<LoadedLayer>();
      load_layer(ck, reg, opt, model.config, *order[i], *layer);
      loaded[i] = std::move(layer);
    } catch (...) {
      thrown[i] = std::current_exception();
    }
    progress.add(0, 1);
    t_progress = nullptr;
  });
  model.at.layers = seconds_since(t0);
  std::exception_ptr first_error;
  for (size_t i = 0; i < order.size(); ++i) {
    if (thrown[i]) {
      if (!first_error) first_error = thrown[i];
    } else if (loaded[i]->report.ok()) {
      model.layers.push_back(std::move(loaded[i]));
    } else if (opt.collect_errors) {
      // Every expert tensor of a layer that did not load still shows in the report, with why.
      LayerReport& rep = loaded[i]->report;
      std::set<std::string> listed;
      for (const LedgerEntry& e : rep.entries) listed.insert(e.tensor);
      for (const auto& [t, r] : order[i]->experts)
        if (!listed.count(t->name))
          rep.entries.push_back({t->name, LedgerEntry::State::kError,
                                 std::string(projection_name(r.projection)) +
                                     (r.expert >= 0 ? " e" + std::to_string(r.expert) : std::string(" of every expert")),
                                 "not loaded: the layer failed (" + rep.problems.front().substr(0, 120) +
                                     (rep.problems.front().size() > 120 ? "...)" : ")"),
                                 dtype_name(t->dtype), t->shape});
      model.failed.push_back(std::move(rep));
    } else if (!first_error) {
      first_error = std::make_exception_ptr(
          Error(loaded[i]->report.code, ck.dir().string() + ": " + join_problems(loaded[i]->report)));
    }
  }
  // A shard changed while it was read (truncated or rewritten by another process): what was
  // loaded may not be what was checked, so the load fails naming it. Checked before any other
  // error, which the changed bytes (zeros past a truncation) may have caused.
  for (const auto& f : ck.files()) f->check_unchanged();
  if (first_error) std::rethrow_exception(first_error);  // `model` releases every loaded layer
  assign_workspaces(model.layers, opt);
  return model;
}

std::string progress_line(const LoadProgress& p) {
  char buf[160];
  const double gb = 1e9, done = static_cast<double>(p.bytes_done) / gb, total = static_cast<double>(p.bytes_total) / gb;
  const double rate = p.seconds > 0 ? done / p.seconds : 0;
  const double eta = rate > 0 ? (total - done) / rate : 0;
  std::snprintf(buf, sizeof buf, "  loading experts: %.2f of %.2f GB, %.2f GB/s, ETA %.0f s (layer %d of %d)", done,
                total, rate, eta < 0 ? 0.0 : eta, p.layers_done, p.layers_total);
  return buf;
}

// --------------------------------------------------------------------------- running
namespace {

const LoadedLayer& layer_at(const std::vector<std::unique_ptr<LoadedLayer>>& layers, size_t li, const char* what) {
  if (li >= layers.size())
    fail(std::string(what) + ": layer index " + std::to_string(li) + " is out of range: " +
         std::to_string(layers.size()) +
         " layers loaded (the index counts LoadedModel::layers, the MoE layers that loaded, not the model's layer "
         "numbers)");
  return *layers[li];
}

// x is [m, H] and routing m x k global expert ids in [0, E) with their weights; sizes compared
// by division, so that no product can overflow.
void check_apply_inputs(const LoadedLayer& l, std::span<const float> x, int64_t m, const ref::Routing& routing) {
  const int64_t H = l.geometry.hidden_size, E = l.geometry.num_experts, k = routing.top_k;
  const std::string where = "apply on " + l.report.prefix + ": ";
  if (m < 0) fail(where + "M must be >= 0, found " + std::to_string(m));
  if (routing.num_tokens != m)
    fail(where + "routing is for " + std::to_string(routing.num_tokens) + " tokens, x for M = " + std::to_string(m));
  const int64_t xn = static_cast<int64_t>(x.size());
  if (xn % H != 0 || xn / H != m)
    fail(where + "x must be [M, H] = [" + std::to_string(m) + ", " + std::to_string(H) + "], found " +
         std::to_string(x.size()) + " values");
  if (k < 1 || k > E)
    fail(where + "routing top_k must be in [1, " + std::to_string(E) + "], found " + std::to_string(k));
  for (const auto& [name, n] : {std::pair<const char*, size_t>{"ids", routing.ids.size()}, {"weights", routing.weights.size()}})
    if (static_cast<int64_t>(n) % k != 0 || static_cast<int64_t>(n) / k != m)
      fail(where + "routing " + name + " must hold M x top_k = " + std::to_string(m) + " x " + std::to_string(k) +
           " values, found " + std::to_string(n));
  for (size_t i = 0; i < routing.ids.size(); ++i)
    if (routing.ids[i] < 0 || routing.ids[i] >= E)
      fail(where + "routing id of token " + std::to_string(static_cast<int64_t>(i) / k) + ", slot " +
           std::to_string(static_cast<int64_t>(i) % k) + " is " + std::to_string(routing.ids[i]) +
           "; expected a global expert id in [0, " + std::to_string(E) + ")");
}

}  // namespace

namespace {

const char* dl_device_name(DLDeviceType t) {
  switch (t) {
    case kDLCPU: return "cpu";
    case kDLCUDA: return "cuda";
    case kDLCUDAHost: return "cuda_host";
    case kDLCUDAManaged: return "cuda_managed";
    default: return "device";
  }
}

std::string dl_device_string(DLDevice d) {
  return d.device_type == kDLCPU ? std::string("cpu") : std::string(dl_device_name(d.device_type)) + ":" + std::to_string(d.device_id);
}

std::string dl_dtype_string(DLDataType t) {
  std::string n = t.code == kDLBfloat ? "BF" : t.code == kDLFloat ? "F" : t.code == kDLInt ? "I" : t.code == kDLUInt ? "U"
                  : "code" + std::to_string(t.code) + "_";
  n += std::to_string(t.bits);
  if (t.lanes != 1) n += "x" + std::to_string(t.lanes);
  return n;
}

uint32_t dtype_bit(DLDataType t) {
  if (t.lanes != 1) return 0;
  if (t.code == kDLFloat && t.bits == 32) return MOEQ_DTYPE_BIT_F32;
  if (t.code == kDLBfloat && t.bits == 16) return MOEQ_DTYPE_BIT_BF16;
  if (t.code == kDLFloat && t.bits == 16) return MOEQ_DTYPE_BIT_F16;
  return 0;
}

std::string mask_string(uint32_t m) {
  std::string s;
  for (auto [bit, name] : {std::pair<uint32_t, const char*>{MOEQ_DTYPE_BIT_F32, "F32"}, {MOEQ_DTYPE_BIT_BF16, "BF16"},
                           {MOEQ_DTYPE_BIT_F16, "F16"}})
    if (m & bit) s += (s.empty() ? "" : ", ") + std::string(name);
  return s;
}

// A 2-D view of a caller's tensor as the ABI hands it on: strides always set (compact when the
// caller's are NULL), checked against the expected shape, device and dtype.
struct View2 {
  DLTensor t{};
  int64_t strides[2] = {0, 0};
};

View2 view2(const DLTensor& in, const char* name, int64_t rows, int64_t cols, DLDevice device, const std::string& prefix) {
  // Messages are built only on failure: apply is the hot path.
  auto what = [&] { return "apply on " + prefix + ": " + name; };
  if (in.ndim != 2)
    fail(what() + " must be 2-D [" + std::to_string(rows) + ", " + std::to_string(cols) + "], found rank " +
         std::to_string(in.ndim));
  if (in.shape == nullptr) fail(what() + ": NULL shape");
  if (in.shape[0] != rows || in.shape[1] != cols)
    fail(what() + " must be [" + std::to_string(rows) + ", " + std::to_string(cols) + "], found [" +
         std::to_string(in.shape[0]) + ", " + std::to_string(in.shape[1]) + "]");
  const bool same_device = in.device.device_type == device.device_type &&
                           (device.device_type == kDLCPU || in.device.device_id == device.device_id);
  if (!same_device)
    fail(what() + " must be on " + dl_device_string(device) + " (the layer's device), found " + dl_device_string(in.device));
  if (in.data == nullptr && rows * cols > 0) fail(what() + ": NULL data");
  View2 v;
  v.t = in;
  v.strides[0] = in.strides ? in.strides[0] : cols;
  v.strides[1] = in.strides ? in.strides[1] : 1;
  if ((cols > 1 && v.strides[1] != 1) || (rows > 1 && v.strides[0] < cols))
    fail(what() + " needs rows of contiguous elements (strides [>= " + std::to_string(cols) + ", 1]), found [" +
         std::to_string(v.strides[0]) + ", " + std::to_string(v.strides[1]) + "]");
  v.t.strides = v.strides;
  return v;
}

// The ABI's apply arguments for layer `l`, with its workspace when it has one.
moeq_apply_args apply_args(const LoadedLayer& l, const DLTensor* x, const DLTensor* ids, const DLTensor* weights,
                           const DLTensor* out, void* stream) {
  moeq_apply_args a{};
  a.struct_size = sizeof a;
  a.method = l.method;
  a.x = x;
  a.topk_ids = ids;
  a.topk_weights = weights;
  a.out = out;
  a.stream = stream;
  if (l.workspace) {
    a.workspace = l.workspace->data;
    a.workspace_bytes = l.workspace->bytes;
  }
  return a;
}

}  // namespace

void LoadedModel::apply(size_t li, const DLTensor& x, const DLTensor& topk_ids, const DLTensor& topk_weights,
                        const DLTensor& out, void* stream) const {
  const LoadedLayer& l = layer_at(layers, li, "apply");
  const moeq_layer_geometry& g = l.geometry;
  const int64_t H = g.hidden_size, E = g.num_experts;
  const DLDevice dev = l.layer->device;
  auto where = [&] { return "apply on " + l.report.prefix + ": "; };  // built only on failure
  if (x.ndim != 2 || x.shape == nullptr)
    fail(where() + "x must be 2-D [M, " + std::to_string(H) + "], found rank " + std::to_string(x.ndim));
  const int64_t m = x.shape[0];
  if (m < 0) fail(where() + "M must be >= 0, found " + std::to_string(m));
  if (topk_ids.ndim != 2 || topk_ids.shape == nullptr)
    fail(where() + "topk_ids must be 2-D [M, top_k], found rank " + std::to_string(topk_ids.ndim));
  const int64_t k = topk_ids.shape[1];
  if (k < 1 || k > E) fail(where() + "topk_ids must have top_k in [1, " + std::to_string(E) + "] columns, found " + std::to_string(k));
  View2 vx = view2(x, "x", m, H, dev, l.report.prefix);
  View2 vo = view2(out, "out", m, H, dev, l.report.prefix);
  View2 vi = view2(topk_ids, "topk_ids", m, k, dev, l.report.prefix);
  View2 vw = view2(topk_weights, "topk_weights", m, k, dev, l.report.prefix);
  if (!(dtype_bit(x.dtype) & l.x_dtypes))
    fail(where() + "x must be " + mask_string(l.x_dtypes) + " for " + l.plugin->name + ", found " + dl_dtype_string(x.dtype));
  if (!(dtype_bit(out.dtype) & l.out_dtypes))
    fail(where() + "out must be " + mask_string(l.out_dtypes) + " for " + l.plugin->name + ", found " +
         dl_dtype_string(out.dtype));
  if (!(topk_ids.dtype.code == kDLInt && topk_ids.dtype.bits == 32 && topk_ids.dtype.lanes == 1))
    fail(where() + "topk_ids must be I32, found " + dl_dtype_string(topk_ids.dtype));
  if (!(topk_weights.dtype.code == kDLFloat && topk_weights.dtype.bits == 32 && topk_weights.dtype.lanes == 1))
    fail(where() + "topk_weights must be F32, found " + dl_dtype_string(topk_weights.dtype));
  if (dev.device_type == kDLCPU) {
    // On the host the ids are checked here; on a device the kernels skip ids outside this rank.
    const auto* ids = reinterpret_cast<const int32_t*>(static_cast<const char*>(topk_ids.data) + topk_ids.byte_offset);
    for (int64_t r = 0; r < m; ++r)
      for (int64_t j = 0; j < k; ++j) {
        const int32_t id = ids[r * vi.strides[0] + j];
        if (id < 0 || id >= E)
          fail(where() + "topk_ids[" + std::to_string(r) + ", " + std::to_string(j) + "] is " + std::to_string(id) +
               "; expected a global expert id in [0, " + std::to_string(E) + ")");
      }
  }
  moeq_apply_args a = apply_args(l, &vx.t, &vi.t, &vw.t, &vo.t, dev.device_type == kDLCUDA ? stream : nullptr);
  std::unique_lock<std::mutex> ws_lock;
  if (l.workspace) ws_lock = std::unique_lock<std::mutex>(l.workspace->mutex);
  std::lock_guard serialize(l.apply_mutex);
  if (moeq_status* st = l.plugin->api->apply(&a))
    host::throw_if_error(st, l.plugin->name + " apply on " + l.report.prefix + " (" +
                                                   dl_device_string(dev) + ")");
}

std::vector<float> LoadedModel::apply(size_t li, std::span<const float> x, int64_t m,
                                      const ref::Routing& routing) const {
  const LoadedLayer& l = layer_at(layers, li, "apply");
  check_apply_inputs(l, x, m, routing);
  const int64_t H = l.geometry.hidden_size, k = routing.top_k;
  std::vector<float> out(static_cast<size_t>(m * H), 0.0f);
  int64_t xs[2] = {m, H}, xst[2] = {H, 1}, ks[2] = {m, k}, kst[2] = {k, 1};
  if (l.layer->device.device_type == kDLCUDA) {
    // x goes up as BF16 when the layer takes it (the GPU kernels do, and a plugin without
    // apply_info got it before 1.2), else F32; ids and weights
    // as they are; the output comes back as F32 (or BF16 widened). One stream of its own,
    // synchronized before returning.
    const int dev = l.layer->device.device_id;
    const cuda::DriverApi& d = cuda::require();
    cuda::use_primary_context(dev);
    const bool x_bf16 = (l.x_dtypes & MOEQ_DTYPE_BIT_BF16) != 0;  // what GPU kernels take; F32 otherwise
    const bool out_bf16 = (l.out_dtypes & MOEQ_DTYPE_BIT_F32) == 0;
    std::vector<uint16_t> xb;
    if (x_bf16) {
      xb.resize(x.size());
      for (size_t i = 0; i < x.size(); ++i) xb[i] = float_to_bf16(x[i]);
    }
    const std::size_t x_bytes = x.size() * (x_bf16 ? 2 : 4), out_bytes = out.size() * (out_bf16 ? 2 : 4);
    cuda::DeviceMemory dx(x_bytes), di(routing.ids.size() * 4), dw(routing.weights.size() * 4), dout(out_bytes);
    cuda::CUstream s = nullptr;
    MOEQ_CU_CHECK(d.cuStreamCreate(&s, cuda::kStreamNonBlocking));
    struct StreamGuard {
      const cuda::DriverApi& d;
      cuda::CUstream s;
      ~StreamGuard() {
        d.cuStreamSynchronize(s);
        d.cuStreamDestroy_v2(s);
      }
    } guard{d, s};
    MOEQ_CU_CHECK(d.cuMemcpyHtoDAsync_v2(dx.get(), x_bf16 ? static_cast<const void*>(xb.data()) : x.data(), x_bytes, s));
    MOEQ_CU_CHECK(d.cuMemcpyHtoDAsync_v2(di.get(), routing.ids.data(), routing.ids.size() * 4, s));
    MOEQ_CU_CHECK(d.cuMemcpyHtoDAsync_v2(dw.get(), routing.weights.data(), routing.weights.size() * 4, s));
    auto ptr = [](const cuda::DeviceMemory& b) { return reinterpret_cast<void*>(static_cast<uintptr_t>(b.get())); };
    const DLDevice dd{kDLCUDA, dev};
    const DLTensor tx{ptr(dx), dd, 2, x_bf16 ? DLDataType{kDLBfloat, 16, 1} : DLDataType{kDLFloat, 32, 1}, xs, xst, 0};
    const DLTensor to{ptr(dout), dd, 2, out_bf16 ? DLDataType{kDLBfloat, 16, 1} : DLDataType{kDLFloat, 32, 1}, xs, xst, 0};
    const DLTensor ti{ptr(di), dd, 2, {kDLInt, 32, 1}, ks, kst, 0};
    const DLTensor tw{ptr(dw), dd, 2, {kDLFloat, 32, 1}, ks, kst, 0};
    // The workspace stays in use until the stream is done: held (with every other layer that
    // shares it) until then.
    std::unique_lock<std::mutex> ws_lock;
    if (l.workspace) ws_lock = std::unique_lock<std::mutex>(l.workspace->mutex);
    {
      std::lock_guard serialize(l.apply_mutex);
      moeq_apply_args a = apply_args(l, &tx, &ti, &tw, &to, s);
      host::throw_if_error(l.plugin->api->apply(&a), l.plugin->name + " apply on " + l.report.prefix + " (cuda:" +
                                                         std::to_string(dev) + ")");
      if (out_bf16) {
        std::vector<uint16_t> ob(out.size());
        MOEQ_CU_CHECK(d.cuMemcpyDtoHAsync_v2(ob.data(), dout.get(), out_bytes, s));
        MOEQ_CU_CHECK(d.cuStreamSynchronize(s));
        for (size_t i = 0; i < out.size(); ++i) out[i] = bf16_to_float(ob[i]);
      } else {
        MOEQ_CU_CHECK(d.cuMemcpyDtoHAsync_v2(out.data(), dout.get(), out_bytes, s));
        MOEQ_CU_CHECK(d.cuStreamSynchronize(s));
      }
    }
    return out;
  }
  DLTensor tx{const_cast<float*>(x.data()), {kDLCPU, 0}, 2, {kDLFloat, 32, 1}, xs, xst, 0};
  DLTensor to{out.data(), {kDLCPU, 0}, 2, {kDLFloat, 32, 1}, xs, xst, 0};
  DLTensor ti{const_cast<int32_t*>(routing.ids.data()), {kDLCPU, 0}, 2, {kDLInt, 32, 1}, ks, kst, 0};
  DLTensor tw{const_cast<float*>(routing.weights.data()), {kDLCPU, 0}, 2, {kDLFloat, 32, 1}, ks, kst, 0};
  moeq_apply_args a = apply_args(l, &tx, &ti, &tw, &to, nullptr);
  std::lock_guard serialize(l.apply_mutex);
  host::throw_if_error(l.plugin->api->apply(&a), l.plugin->name + " apply on " + l.report.prefix);
  return out;
}

void LoadedModel::dequantize_expert(size_t li, int64_t e, float* w13, float* w2, ref::MoeOptions* act) const {
  const LoadedLayer& l = layer_at(layers, li, "dequantize_expert");
  if (l.plugin->api->struct_size < MOEQ_STRUCT_SIZE(moeq_plugin_api, dequantize_expert) ||
      l.plugin->api->dequantize_expert == nullptr)
    fail(MOEQ_STATUS_CODE_UNIMPLEMENTED, "plugin " + l.plugin->name + " does not expose dequantized weights");
  moeq_dequantize_expert_args a{};
  a.struct_size = sizeof(a);
  a.method = l.method;
  a.local_expert = e;
  a.w13 = w13;
  a.w2 = w2;
  {
    std::lock_guard serialize(l.apply_mutex);  // calls on the method, as apply is
    host::throw_if_error(l.plugin->api->dequantize_expert(&a), l.plugin->name + " dequantize_expert");
  }
  if (act) {
    auto to_spec = [&](int32_t kind, float s) {
      ref::ActQuantSpec spec;
      spec.kind = static_cast<ref::ActQuant>(kind);
      spec.group_size = a.group_size;
      spec.static_scale = s;
      return spec;
    };
    act->a1 = to_spec(a.a1_quant, a.a1_static_scale);
    act->a2 = to_spec(a.a2_quant, a.a2_static_scale);
  }
}

ref::ExpertWeights LoadedModel::dequantized(size_t li, ref::MoeOptions* act) const {
  const LoadedLayer& l = layer_at(layers, li, "dequantized");
  const moeq_layer_geometry& g = l.geometry;
  ref::ExpertWeights w;
  w.num_experts = g.num_local_experts;
  w.first_expert = g.first_local_expert;
  w.hidden = g.hidden_size;
  w.intermediate = g.intermediate_size_per_partition;
  const int64_t n13 = 2 * w.intermediate * w.hidden, n2 = w.hidden * w.intermediate;
  w.w13.assign(static_cast<size_t>(w.num_experts * n13), 0.0f);
  w.w2.assign(static_cast<size_t>(w.num_experts * n2), 0.0f);
  for (int64_t e = 0; e < w.num_experts; ++e)
    dequantize_expert(li, e, w.w13.data() + e * n13, w.w2.data() + e * n2, e == 0 ? act : nullptr);
  return w;
}

std::vector<float> LoadedModel::router_weight(size_t li) const {
  const LoadedLayer& l = layer_at(layers, li, "router_weight");
  if (l.router_weight == nullptr) fail("layer " + l.report.prefix + " has no router weight in the checkpoint");
  const TensorInfo& t = *l.router_weight;
  if (t.shape.size() != 2 || t.shape[0] != config.num_experts || t.shape[1] != config.hidden_size)
    fail("router " + t.name + ": expected [" + std::to_string(config.num_experts) + ", " +
         std::to_string(config.hidden_size) + "], found " + shape_string(t.shape));
  if (t.dtype == DType::F8_E4M3) {
    if (l.router_scale == nullptr) fail("router " + t.name + " is F8_E4M3 and has no weight_scale");
    return dequantize_router(t, *l.router_scale, config.num_experts, config.hidden_size);
  }
  std::vector<float> v(static_cast<size_t>(t.numel()));
  for (size_t i = 0; i < v.size(); ++i) v[i] = load_as_float(t.data, t.dtype, i);
  return v;
}

ref::RoutingOptions LoadedModel::routing(size_t li) const {
  const LoadedLayer& l = layer_at(layers, li, "routing");
  ref::RoutingOptions r = config.routing;
  if (l.router_bias != nullptr) {
    const TensorInfo& t = *l.router_bias;
    if (t.numel() != config.num_experts)
      fail("router bias " + t.name + ": expected " + std::to_string(config.num_experts) + " elements, found " +
           shape_string(t.shape));
    r.correction_bias.resize(static_cast<size_t>(t.numel()));
    for (size_t i = 0; i < r.correction_bias.size(); ++i) r.correction_bias[i] = load_as_float(t.data, t.dtype, i);
  }
  return r;
}

}  // namespace moeq
