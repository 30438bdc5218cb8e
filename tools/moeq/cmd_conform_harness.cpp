#include "cmd_conform_harness.hpp"

#include "cmd_conform_guard.hpp"

#include <moeq/error.hpp>
#include <moeq/expert_name_router.hpp>
#include <moeq_writer/writer_util.hpp>

#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <new>
#include <random>
#include <set>
#include <sstream>
#include <tuple>

namespace moeq::cli::conform {
namespace fs = std::filesystem;

namespace {

constexpr size_t kHostSlots = static_cast<size_t>(HostSlot::kCount);
constexpr size_t kPluginSlots = static_cast<size_t>(PluginSlot::kCount);

std::array<std::atomic<int64_t>, kHostSlots> g_host_calls{};
std::array<std::atomic<int64_t>, kPluginSlots> g_status_in{};
std::array<std::atomic<int64_t>, kPluginSlots> g_status_out{};
std::atomic<int64_t> g_live_methods{0};
thread_local PluginSlot t_slot = PluginSlot::kNone;

std::mutex g_mutex;  // guards the vectors below
std::vector<Escape> g_escapes;
bool g_recording = false;
std::vector<RecordedPiece> g_recorded;
bool g_snapshots = false;
std::vector<std::pair<std::string, LayerSnapshot>> g_snapshot_list;

void count(HostSlot s) { g_host_calls[static_cast<size_t>(s)].fetch_add(1); }
// A status a host service hands to the plugin slot this thread is in.
moeq_status* entering(moeq_status* st) {
  if (st != nullptr && t_slot != PluginSlot::kNone) g_status_in[static_cast<size_t>(t_slot)].fetch_add(1);
  return st;
}

// ------------------------------------------------------------- instrumented host slots
const moeq_host_api& real_host() { return *host::api(); }

moeq_status* h_status_create(moeq_status_code code, const char* message) {
  count(HostSlot::kStatusCreate);
  return entering(real_host().status_create(code, message));
}
moeq_status_code h_status_code(const moeq_status* s) {
  count(HostSlot::kStatusCode);
  return real_host().status_code(s);
}
const char* h_status_message(const moeq_status* s) {
  count(HostSlot::kStatusMessage);
  return real_host().status_message(s);
}
void h_status_destroy(moeq_status* s) {
  count(HostSlot::kStatusDestroy);
  if (s != nullptr && t_slot != PluginSlot::kNone) g_status_out[static_cast<size_t>(t_slot)].fetch_add(1);
  real_host().status_destroy(s);
}
void h_log(moeq_log_level level, const char* source, const char* message) {
  count(HostSlot::kLog);
  real_host().log(level, source, message);
}
moeq_status* h_device_info(moeq_device_info_args* a) {
  count(HostSlot::kDeviceInfo);
  return entering(real_host().device_info(a));
}
moeq_status* h_param_create(moeq_param_create_args* a) {
  count(HostSlot::kParamCreate);
  return entering(real_host().param_create(a));
}
moeq_status* h_copy_to_param(moeq_copy_to_param_args* a) {
  count(HostSlot::kCopyToParam);
  return entering(real_host().copy_to_param(a));
}
moeq_status* h_param_fill(moeq_param_fill_args* a) {
  count(HostSlot::kParamFill);
  return entering(real_host().param_fill(a));
}
moeq_status* h_jit_compile(moeq_jit_compile_args* a) {
  count(HostSlot::kJitCompile);
  return entering(real_host().jit_compile(a));
}
moeq_status* h_method_create(moeq_host_method_create_args* a) {
  count(HostSlot::kMethodCreate);
  return entering(real_host().method_create(a));
}
moeq_status* h_scratch_acquire(moeq_scratch_args* a) {
  count(HostSlot::kScratchAcquire);
  return entering(real_host().scratch_acquire(a));
}
void h_scratch_release(moeq_layer* layer, void* data) {
  count(HostSlot::kScratchRelease);
  real_host().scratch_release(layer, data);
}

// A host newer than this one: eight more slots the plugin must not need (and must not mind).
struct PaddedHost {
  moeq_host_api api;
  void* future_slots[8];
};
const PaddedHost g_padded_host = {
    {sizeof(PaddedHost), MOEQ_ABI_MAJOR, MOEQ_ABI_MINOR, &h_status_create, &h_status_code, &h_status_message,
     &h_status_destroy, &h_log, &h_device_info, &h_param_create, &h_copy_to_param, &h_param_fill, &h_jit_compile,
     &h_method_create, &h_scratch_acquire, &h_scratch_release},
    {}};

// ------------------------------------------------------------------ the plugin proxy
const moeq_plugin_api* g_real = nullptr;
moeq_plugin_api g_proxy_api{};
moeq_plugin_descriptor g_proxy_descriptor{};

// Runs a plugin slot: marks the slot, turns an escaping exception into a status (and a
// recorded failure), counts the statuses that leave.
template <class F>
moeq_status* in_slot(PluginSlot slot, F&& f) {
  const PluginSlot outer = t_slot;
  t_slot = slot;
  moeq_status* st = nullptr;
  std::string escaped;
  bool threw = false;
  try {
    st = f();
  } catch (const std::exception& e) {
    threw = true;
    escaped = std::string("a C++ exception escaped: ") + e.what();
  } catch (...) {
    threw = true;
    escaped = "a C++ exception of a non-standard type escaped";
  }
  if (st != nullptr) g_status_out[static_cast<size_t>(slot)].fetch_add(1);
  t_slot = outer;
  if (threw) {
    {
      std::lock_guard lock(g_mutex);
      g_escapes.push_back({slot, escaped});
    }
    st = real_host().status_create(MOEQ_STATUS_CODE_INTERNAL,
                                   (std::string(plugin_slot_name(slot)) + ": " + escaped).c_str());
  }
  return st;
}

size_t element_bytes(DLDataType t) { return std::max<size_t>(1, (t.bits * t.lanes + 7) / 8); }

RecordedPiece record(const moeq_weight_loader_args& a) {
  RecordedPiece p;
  p.layer = a.layer ? a.layer->name : "";
  p.tensor = a.tensor_name ? a.tensor_name : "";
  p.suffix = a.suffix ? a.suffix : "";
  p.projection = a.projection;
  p.global_expert = a.global_expert;
  p.local_expert = a.local_expert;
  if (a.source == nullptr) return p;
  const DLTensor& s = *a.source;
  p.dtype = s.dtype;
  p.shape.assign(s.shape, s.shape + s.ndim);
  if (s.strides) {
    p.strides.assign(s.strides, s.strides + s.ndim);
  } else {
    p.strides.assign(p.shape.size(), 1);
    for (int d = s.ndim - 2; d >= 0; --d) p.strides[d] = p.strides[d + 1] * p.shape[d + 1];
  }
  int64_t last = 0;  // largest element offset the view reaches
  bool empty = false;
  for (size_t d = 0; d < p.shape.size(); ++d) {
    if (p.shape[d] == 0) empty = true;
    if (p.strides[d] < 0) fail("conform recorder: negative strides are not recorded");
    last += (p.shape[d] - 1) * p.strides[d];
  }
  if (!empty) {
    const size_t n = static_cast<size_t>(last + 1) * element_bytes(s.dtype);
    const auto* base = static_cast<const std::byte*>(s.data) + s.byte_offset;
    p.bytes.assign(base, base + n);
  }
  return p;
}

moeq_status* p_initialize(moeq_initialize_args* a) {
  return in_slot(PluginSlot::kInitialize, [&] { return g_real->initialize(a); });
}
void p_shutdown() {
  in_slot(PluginSlot::kShutdown, [&]() -> moeq_status* {
    g_real->shutdown();
    return nullptr;
  });
}
moeq_status* p_probe(moeq_probe_args* a) {
  return in_slot(PluginSlot::kProbe, [&] { return g_real->probe(a); });
}
moeq_status* p_method_create(moeq_method_create_args* a) {
  moeq_status* st = in_slot(PluginSlot::kMethodCreate, [&] { return g_real->method_create(a); });
  if (st == nullptr && a != nullptr && a->method != nullptr) g_live_methods.fetch_add(1);
  return st;
}
void p_method_destroy(moeq_method* m) {
  in_slot(PluginSlot::kMethodDestroy, [&]() -> moeq_status* {
    g_real->method_destroy(m);
    return nullptr;
  });
  if (m != nullptr) g_live_methods.fetch_sub(1);
}
moeq_status* p_create_weights(moeq_create_weights_args* a) {
  return in_slot(PluginSlot::kCreateWeights, [&] { return g_real->create_weights(a); });
}
moeq_status* p_weight_loader(moeq_weight_loader_args* a) {
  bool recording;
  {
    std::lock_guard lock(g_mutex);
    recording = g_recording;
  }
  std::optional<RecordedPiece> piece;
  if (recording && a != nullptr) piece = record(*a);
  moeq_status* st = in_slot(PluginSlot::kWeightLoader, [&] { return g_real->weight_loader(a); });
  if (piece) {
    piece->failed = st != nullptr;
    piece->skipped = st == nullptr && a->skipped != 0;
    if (piece->skipped && a->skip_reason != nullptr && a->skip_reason_capacity > 0)
      piece->skip_reason.assign(a->skip_reason, strnlen(a->skip_reason, a->skip_reason_capacity));
    std::lock_guard lock(g_mutex);
    g_recorded.push_back(std::move(*piece));
  }
  return st;
}
moeq_status* p_process_after_loading(moeq_process_after_loading_args* a) {
  bool snap;
  {
    std::lock_guard lock(g_mutex);
    snap = g_snapshots;
  }
  if (snap && a != nullptr && a->layer != nullptr) {
    LayerSnapshot s = snapshot(*a->layer);
    std::lock_guard lock(g_mutex);
    g_snapshot_list.push_back({a->layer->name, std::move(s)});
  }
  return in_slot(PluginSlot::kProcessAfterLoading, [&] { return g_real->process_after_loading(a); });
}
moeq_status* p_apply(moeq_apply_args* a) {
  return in_slot(PluginSlot::kApply, [&] { return g_real->apply(a); });
}
moeq_status* p_describe(moeq_describe_args* a) {
  return in_slot(PluginSlot::kDescribe, [&] { return g_real->describe(a); });
}
moeq_status* p_dequantize_expert(moeq_dequantize_expert_args* a) {
  return in_slot(PluginSlot::kDequantizeExpert, [&] { return g_real->dequantize_expert(a); });
}
moeq_status* p_apply_info(moeq_apply_info_args* a) {
  return in_slot(PluginSlot::kApplyInfo, [&] { return g_real->apply_info(a); });
}

// Slot `field` of the real table if the table is long enough to hold it.
#define MOEQ_REAL_SLOT(api, field) \
  ((api)->struct_size >= MOEQ_STRUCT_SIZE(moeq_plugin_api, field) ? (api)->field : nullptr)

const moeq_plugin_descriptor* make_proxy(const moeq_plugin_descriptor* real, ProxyOptions opt) {
  g_real = real->api;
  const moeq_plugin_api* r = real->api;
  moeq_plugin_api& p = g_proxy_api;
  p = {};
  p.struct_size = sizeof(moeq_plugin_api);
  // Required slots are proxied even when NULL would be refused: the registry sees the real table's gaps.
  p.initialize = r->initialize ? &p_initialize : nullptr;
  p.probe = r->probe ? &p_probe : nullptr;
  p.method_create = r->method_create ? &p_method_create : nullptr;
  p.method_destroy = r->method_destroy ? &p_method_destroy : nullptr;
  p.create_weights = r->create_weights ? &p_create_weights : nullptr;
  p.weight_loader = r->weight_loader ? &p_weight_loader : nullptr;
  p.process_after_loading = r->process_after_loading ? &p_process_after_loading : nullptr;
  p.apply = r->apply ? &p_apply : nullptr;
  if (!opt.null_optional_slots) {
    p.shutdown = MOEQ_REAL_SLOT(r, shutdown) ? &p_shutdown : nullptr;
    p.describe = MOEQ_REAL_SLOT(r, describe) ? &p_describe : nullptr;
    p.dequantize_expert = MOEQ_REAL_SLOT(r, dequantize_expert) ? &p_dequantize_expert : nullptr;
    p.apply_info = MOEQ_REAL_SLOT(r, apply_info) ? &p_apply_info : nullptr;
  }
  g_proxy_descriptor = *real;
  g_proxy_descriptor.struct_size = sizeof(moeq_plugin_descriptor);
  g_proxy_descriptor.api = &g_proxy_api;
  return &g_proxy_descriptor;
}

}  // namespace

// ------------------------------------------------------------------------ public bits
const char* host_slot_name(HostSlot s) {
  static const char* const names[] = {"status_create", "status_code", "status_message", "status_destroy",
                                      "log",           "device_info", "param_create",   "copy_to_param",
                                      "param_fill",    "jit_compile", "method_create",  "scratch_acquire",
                                      "scratch_release"};
  return names[static_cast<size_t>(s)];
}
const char* plugin_slot_name(PluginSlot s) {
  static const char* const names[] = {"(host)",        "initialize",     "shutdown",      "probe",
                                      "method_create", "method_destroy", "create_weights", "weight_loader",
                                      "process_after_loading", "apply", "describe",     "dequantize_expert",
                                      "apply_info"};
  return names[static_cast<size_t>(s)];
}

PluginSlot current_slot() { return t_slot; }

const moeq_host_api* instrumented_host() { return &g_padded_host.api; }

HostCalls host_calls() {
  HostCalls c;
  for (size_t i = 0; i < kHostSlots; ++i) c.n[i] = g_host_calls[i].load();
  return c;
}
HostCalls HostCalls::operator-(const HostCalls& o) const {
  HostCalls c;
  for (size_t i = 0; i < kHostSlots; ++i) c.n[i] = n[i] - o.n[i];
  return c;
}
int64_t HostCalls::total() const {
  int64_t t = 0;
  for (int64_t v : n) t += v;
  return t;
}
std::string HostCalls::list() const {
  std::string out;
  for (size_t i = 0; i < kHostSlots; ++i)
    if (n[i] != 0)
      out += (out.empty() ? "" : ", ") + std::string(host_slot_name(static_cast<HostSlot>(i))) + " x" +
             std::to_string(n[i]);
  return out;
}

std::vector<Escape> escapes() {
  std::lock_guard lock(g_mutex);
  return g_escapes;
}
void clear_escapes() {
  std::lock_guard lock(g_mutex);
  g_escapes.clear();
}
int64_t live_methods() { return g_live_methods.load(); }
std::vector<std::pair<PluginSlot, int64_t>> status_imbalance() {
  std::vector<std::pair<PluginSlot, int64_t>> out;
  for (size_t i = 1; i < kPluginSlots; ++i) {
    const int64_t b = g_status_in[i].load() - g_status_out[i].load();
    if (b != 0) out.push_back({static_cast<PluginSlot>(i), b});
  }
  return out;
}

DLTensor RecordedPiece::dl() const {
  DLTensor t{};
  t.data = const_cast<std::byte*>(bytes.data());
  t.device = {kDLCPU, 0};
  t.ndim = static_cast<int32_t>(shape.size());
  t.dtype = dtype;
  t.shape = const_cast<int64_t*>(shape.data());
  t.strides = const_cast<int64_t*>(strides.data());
  return t;
}
void set_recording(bool on) {
  std::lock_guard lock(g_mutex);
  g_recording = on;
}
std::vector<RecordedPiece> take_recorded() {
  std::lock_guard lock(g_mutex);
  return std::exchange(g_recorded, {});
}

LayerSnapshot snapshot(const moeq_layer& layer) {
  LayerSnapshot s;
  for (const auto& p : layer.params) s.push_back({p->name, dtype_name(p->dtype), p->shape, p->storage});
  return s;
}
std::string compare(const LayerSnapshot& a, const LayerSnapshot& b) {
  if (a.size() != b.size())
    return std::to_string(a.size()) + " parameters against " + std::to_string(b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    const ParamSnapshot &x = a[i], &y = b[i];
    if (x.name != y.name || x.dtype != y.dtype || x.shape != y.shape)
      return "parameter " + x.name + " against " + y.name + " (name, dtype or shape)";
    if (x.bytes != y.bytes) {
      size_t k = 0;
      while (k < x.bytes.size() && x.bytes[k] == y.bytes[k]) ++k;
      return "parameter '" + x.name + "' differs first at byte " + std::to_string(k) + " of " +
             std::to_string(x.bytes.size());
    }
  }
  return {};
}
void set_snapshots(bool on) {
  std::lock_guard lock(g_mutex);
  g_snapshots = on;
}
std::vector<std::pair<std::string, LayerSnapshot>> take_snapshots() {
  std::lock_guard lock(g_mutex);
  return std::exchange(g_snapshot_list, {});
}

// ---------------------------------------------------------------------------- subject
const moeq_plugin_descriptor* load_descriptor(const fs::path& file) {
  dlerror();
  // NOTE: never dlclose'd, as the registry never unloads (docs/DESIGN.md §4); the handle leaks on purpose.
  void* handle = ::dlopen(fs::absolute(file).c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = dlerror();
    fail("cannot load " + file.string() + ": " + (why ? why : "dlopen failed"));
  }
  void* sym = ::dlsym(handle, MOEQ_PLUGIN_ENTRY_SYMBOL);
  if (sym == nullptr) fail(file.string() + " does not export " MOEQ_PLUGIN_ENTRY_SYMBOL);
  auto entry = reinterpret_cast<moeq_plugin_get_descriptor_fn>(sym);
  return entry();
}

Subject::Subject(const fs::path& file, ProxyOptions options, const std::vector<fs::path>& dependency_dirs) {
  registry_ = std::make_unique<Registry>(instrumented_host());
  host::set_registry(registry_.get());
  try {
    real_ = load_descriptor(file);
  } catch (const Error& e) {
    refusal_ = e.what();
    return;
  }
  // The host's own checks first, on the real descriptor: the proxy must not hide a problem.
  if (std::string why = Registry::validate(real_); !why.empty()) {
    refusal_ = why;
    return;
  }
  plugin_ = registry_->add(make_proxy(real_, options), file);
  if (plugin_ == nullptr) {
    refusal_ = registry_->refusals().empty() ? "refused" : registry_->refusals().back().reason;
    return;
  }
  if (real_->num_requires_plugins > 0)
    for (const fs::path& d : dependency_dirs)
      if (fs::exists(d)) registry_->load_directory(d);
}

Subject::~Subject() {
  registry_.reset();  // shutdown
  host::set_registry(nullptr);
}

// ----------------------------------------------------------------------- the helpers
ProbeAnswer probe(const LoadedPlugin& plugin, const ProbeQuery& q, size_t extra) {
  // Trailing bytes a newer host would send: garbage the plugin must ignore.
  std::vector<unsigned char> buffer(sizeof(moeq_probe_args) + extra, 0xA5);
  auto* a = new (buffer.data()) moeq_probe_args{};
  char reason[512] = {};
  a->struct_size = buffer.size();
  a->quant_config_json = q.quant_config_json.c_str();
  a->quant_config_source = q.quant_config_source.c_str();
  a->layer_name = q.layer_name.c_str();
  a->weight_dtype = q.weight_dtype.c_str();
  a->reason = reason;
  a->reason_capacity = sizeof(reason);
  ProbeAnswer ans;
  moeq_status* st = plugin.api->probe(a);
  moeq_status_code code;
  if (host::take_status(st, code, ans.reason)) {
    ans.status = true;
    return ans;
  }
  reason[sizeof(reason) - 1] = '\0';
  ans.score = a->score;
  ans.reason = reason;
  return ans;
}

FreshMethod::FreshMethod(const LoadedPlugin& plugin, const ProbeQuery& q, const moeq_layer_geometry& g,
                         const std::string& layer_name)
    : plugin_(plugin) {
  moeq_method_create_args ma{};
  ma.struct_size = sizeof(ma);
  ma.quant_config_json = q.quant_config_json.c_str();
  ma.layer_name = q.layer_name.c_str();
  ma.weight_dtype = q.weight_dtype.c_str();
  ma.geometry = &g;
  ma.device = {kDLCPU, 0};
  moeq_status_code code;
  std::string msg;
  if (host::take_status(plugin.api->method_create(&ma), code, msg)) {
    error_ = "method_create: " + msg;
    return;
  }
  method_ = ma.method;
  layer_ = host::make_layer(layer_name, {kDLCPU, 0});
  moeq_create_weights_args cw{sizeof(moeq_create_weights_args), method_, layer_.get()};
  if (host::take_status(plugin.api->create_weights(&cw), code, msg)) error_ = "create_weights: " + msg;
}

FreshMethod::~FreshMethod() {
  if (method_ != nullptr) plugin_.api->method_destroy(method_);
  layer_.reset();
}

FreshMethod::Sent FreshMethod::send(const RecordedPiece& piece, const DLTensor* source) {
  // The piece's bytes and the reason buffer, fenced (cmd_conform_guard.hpp).
  GuardedBuffer bytes("weight_loader", "source " + piece.tensor, piece.bytes.size());
  std::copy(piece.bytes.begin(), piece.bytes.end(), bytes.as<std::byte>());
  DLTensor own = piece.dl();
  own.data = bytes.data();
  GuardedBuffer reason_buffer("weight_loader", "skip_reason", 512);
  char* reason = reason_buffer.as<char>();
  moeq_weight_loader_args wa{};
  wa.struct_size = sizeof(wa);
  wa.method = method_;
  wa.layer = layer_.get();
  wa.tensor_name = piece.tensor.c_str();
  wa.suffix = piece.suffix.c_str();
  wa.projection = piece.projection;
  wa.global_expert = piece.global_expert;
  wa.local_expert = piece.local_expert;
  wa.source = source ? source : &own;
  wa.skip_reason = reason;
  wa.skip_reason_capacity = reason_buffer.size();
  layer_->current_tensor = piece.tensor;
  moeq_status* st = plugin_.api->weight_loader(&wa);
  layer_->current_tensor.clear();
  for (const GuardedBuffer* b : {&reason_buffer, &bytes})
    if (std::string damage = b->damage(); !damage.empty()) {
      if (st != nullptr) host::api()->status_destroy(st);
      throw Error(MOEQ_STATUS_CODE_INTERNAL, damage);
    }
  if (!std::equal(piece.bytes.begin(), piece.bytes.end(), bytes.as<std::byte>())) {
    if (st != nullptr) host::api()->status_destroy(st);
    throw Error(MOEQ_STATUS_CODE_INTERNAL, "weight_loader wrote into the source of " + piece.tensor);
  }
  Sent r;
  if (host::take_status(st, r.code, r.message)) return r;
  r.ok = true;
  r.skipped = wa.skipped != 0;
  reason[reason_buffer.size() - 1] = '\0';
  if (r.skipped) r.message = reason;
  return r;
}

std::string FreshMethod::coverage_problem() const {
  for (const ParamCoverage& c : host::coverage(*layer_))
    if (!c.first_gap.empty())
      return "parameter '" + c.name + "': " + std::to_string(c.numel - c.written - c.defaulted) + " of " +
             std::to_string(c.numel) + " elements not written, first at " + c.first_gap;
  return {};
}

std::vector<float> apply(const LoadedPlugin& plugin, moeq_method* method, int64_t H, const std::vector<float>& x,
                         int64_t m, const ref::Routing& routing, int64_t row_stride) {
  if (row_stride == 0) row_stride = H;
  const int64_t k = routing.top_k;
  // Every buffer fenced (cmd_conform_guard.hpp); x rows `row_stride` apart, the gaps poisoned.
  const size_t x_count = static_cast<size_t>(m * row_stride);
  GuardedBuffer gx("apply", "x", x_count * sizeof(float)), gids("apply", "topk_ids", routing.ids.size() * sizeof(int32_t)),
      gweights("apply", "topk_weights", routing.weights.size() * sizeof(float)),
      gout("apply", "out", static_cast<size_t>(m * H) * sizeof(float));
  std::fill_n(gx.as<float>(), x_count, 1e30f);
  for (int64_t t = 0; t < m; ++t) std::copy_n(x.data() + t * H, H, gx.as<float>() + t * row_stride);
  const std::vector<float> x_sent(gx.as<float>(), gx.as<float>() + x_count);
  std::copy(routing.ids.begin(), routing.ids.end(), gids.as<int32_t>());
  std::copy(routing.weights.begin(), routing.weights.end(), gweights.as<float>());
  int64_t xs[2] = {m, H}, xst[2] = {row_stride, 1}, os[2] = {m, H}, ost[2] = {H, 1}, ks[2] = {m, k}, kst[2] = {k, 1};
  DLTensor tx{gx.data(), {kDLCPU, 0}, 2, {kDLFloat, 32, 1}, xs, xst, 0};
  DLTensor to{gout.data(), {kDLCPU, 0}, 2, {kDLFloat, 32, 1}, os, ost, 0};
  DLTensor ti{gids.data(), {kDLCPU, 0}, 2, {kDLInt, 32, 1}, ks, kst, 0};
  DLTensor tw{gweights.data(), {kDLCPU, 0}, 2, {kDLFloat, 32, 1}, ks, kst, 0};
  moeq_apply_args a{sizeof(moeq_apply_args), method, &tx, &ti, &tw, &to, nullptr};
  moeq_status_code code;
  std::string msg;
  const bool refused = host::take_status(plugin.api->apply(&a), code, msg);
  for (const GuardedBuffer* b : {&gout, &gx, &gids, &gweights})
    if (std::string damage = b->damage(); !damage.empty()) throw Error(MOEQ_STATUS_CODE_INTERNAL, damage);
  // NOTE: at M = 0 the copies are empty vectors whose data() may be null, which memcmp must
  // not see even for 0 bytes.
  auto differs = [](const void* a, const void* b, std::size_t n) { return n != 0 && std::memcmp(a, b, n) != 0; };
  if (differs(gx.data(), x_sent.data(), gx.size()) ||
      !std::equal(routing.ids.begin(), routing.ids.end(), gids.as<int32_t>()) ||
      differs(gweights.data(), routing.weights.data(), gweights.size()))
    throw Error(MOEQ_STATUS_CODE_INTERNAL, "apply wrote into its inputs (x, topk_ids or topk_weights)");
  if (refused) throw Error(code, "apply: " + msg);
  return std::vector<float>(gout.as<float>(), gout.as<float>() + m * H);
}

ref::ExpertWeights dequantize(const LoadedLayer& l, ref::MoeOptions* act) {
  const moeq_plugin_api& api = *l.plugin->api;
  if (api.struct_size < MOEQ_STRUCT_SIZE(moeq_plugin_api, dequantize_expert) || api.dequantize_expert == nullptr)
    fail(MOEQ_STATUS_CODE_UNIMPLEMENTED, "plugin " + l.plugin->name + " has no dequantize_expert");
  const moeq_layer_geometry& g = l.geometry;
  const int64_t n13 = 2 * g.intermediate_size_per_partition * g.hidden_size, n2 = n13 / 2;
  ref::ExpertWeights w{g.num_local_experts, g.first_local_expert, g.hidden_size, g.intermediate_size_per_partition,
                       std::vector<float>(static_cast<size_t>(g.num_local_experts * n13)),
                       std::vector<float>(static_cast<size_t>(g.num_local_experts * n2))};
  for (int64_t e = 0; e < w.num_experts; ++e) {
    GuardedBuffer g13("dequantize_expert", "w13", static_cast<size_t>(n13) * sizeof(float)),
        g2("dequantize_expert", "w2", static_cast<size_t>(n2) * sizeof(float));
    moeq_dequantize_expert_args a{};
    a.struct_size = sizeof(a);
    a.method = l.method;
    a.local_expert = e;
    a.w13 = g13.as<float>();
    a.w2 = g2.as<float>();
    moeq_status_code code;
    std::string msg;
    const bool refused = host::take_status(api.dequantize_expert(&a), code, msg);
    for (const GuardedBuffer* b : {&g13, &g2})
      if (std::string damage = b->damage(); !damage.empty()) throw Error(MOEQ_STATUS_CODE_INTERNAL, damage);
    if (refused) throw Error(code, "dequantize_expert of local expert " + std::to_string(e) + ": " + msg);
    std::copy_n(g13.as<float>(), n13, w.w13.begin() + e * n13);
    std::copy_n(g2.as<float>(), n2, w.w2.begin() + e * n2);
    if (act != nullptr && e == 0)
      for (auto [spec, kind, scale] : {std::tuple{&act->a1, a.a1_quant, a.a1_static_scale},
                                       std::tuple{&act->a2, a.a2_quant, a.a2_static_scale}}) {
        spec->kind = static_cast<ref::ActQuant>(kind);
        spec->group_size = a.group_size;
        spec->static_scale = scale;
      }
  }
  return w;
}

std::vector<float> random_tokens(int64_t m, int64_t h, uint64_t seed) {
  std::mt19937_64 rng(seed);
  return writer::randn_bf16(rng, static_cast<size_t>(m * h), 1.0f);
}

ref::Routing random_routing(int64_t m, int64_t experts, int top_k, uint64_t seed) {
  std::mt19937_64 rng(seed ^ 0x9e3779b97f4a7c15ull);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> logits(static_cast<size_t>(m * experts));
  for (float& v : logits) v = d(rng);
  ref::RoutingOptions o;
  o.top_k = top_k;
  o.renormalize = true;
  return ref::route(logits, m, experts, o);
}

ProbeQuery FixtureLoad::query_of(size_t li) const {
  const LoadedLayer& l = *model.layers.at(li);
  ProbeQuery q;
  const QuantConfigSource quant = effective_quant_config(*model.checkpoint, online_scheme);
  q.quant_config_json = quant.json;
  q.quant_config_source = quant.source;
  q.layer_name = l.report.experts_module;
  q.weight_dtype = l.report.weight_dtype;
  return q;
}

namespace {

// Why elements of a parameter stayed unwritten, from the layer's ledger: a tensor that failed,
// a tensor the checkpoint lacks (some experts have it, others not), or else the plugin itself.
std::string why_unwritten(const LayerReport& r) {
  std::map<std::pair<int, std::string>, std::set<int64_t>> experts_by_kind;  // (projection, suffix)
  std::set<int64_t> experts;
  const LedgerEntry* failed = nullptr;
  const LedgerEntry* skipped = nullptr;
  int64_t consumed = 0, skips = 0;
  for (const LedgerEntry& e : r.entries) {
    if (e.state == LedgerEntry::State::kError && failed == nullptr) failed = &e;
    if (e.state == LedgerEntry::State::kSkipped && skips++ == 0) skipped = &e;
    if (e.state == LedgerEntry::State::kConsumed) ++consumed;
    const RoutedName n = route_tensor_name(e.tensor);
    if (n.role != TensorRole::kExpert || n.expert < 0) continue;
    experts.insert(n.expert);
    experts_by_kind[{static_cast<int>(n.projection), n.suffix}].insert(n.expert);
  }
  if (failed != nullptr) return "tensor " + failed->tensor + " failed to load: " + failed->detail;
  for (const auto& [kind, have] : experts_by_kind)
    for (int64_t e : experts)
      if (!have.count(e))
        return "the checkpoint has no " + std::string(projection_name(static_cast<Projection>(kind.first))) + " " +
               kind.second + " tensor for expert " + std::to_string(e) + ", which other experts have";
  std::string out = "the plugin did not write them: no checkpoint tensor is missing, " + std::to_string(consumed) +
                    " of the layer's tensors were consumed";
  if (skipped != nullptr)
    out += " and " + std::to_string(skips) + " skipped (first: " + skipped->tensor + ": " + skipped->detail + ")";
  return out;
}

// The loader's message for unwritten elements, with its guess at the cause replaced by what the
// ledger shows: it blames a missing checkpoint tensor, which conform can tell apart.
std::string reworded(const LayerReport& r, const std::string& problem) {
  for (const ParamCoverage& c : r.params) {
    if (c.first_gap.empty() || !problem.starts_with("parameter '" + c.name + "' ")) continue;
    for (const char* guess : {" (a tensor above failed to load, or a checkpoint tensor is missing)",
                              " (a checkpoint tensor is missing)"})
      if (problem.ends_with(guess))
        return problem.substr(0, problem.size() - std::strlen(guess)) + "; " + why_unwritten(r);
  }
  return problem;
}

}  // namespace

FixtureLoad load_fixture(Subject& subject, const Fixture& fixture, const Placement& placement) {
  FixtureLoad out;
  LoadOptions o;
  o.placement = placement;
  o.strict = true;
  o.collect_errors = true;
  o.pin_plugin = subject.plugin()->name;
  o.online_scheme = fixture.online_scheme;
  out.online_scheme = fixture.online_scheme;
  out.model = load_model(Checkpoint::open(fixture.dir), subject.registry(), o);
  for (const LayerReport& r : out.model.failed) {
    bool declined = false;
    for (const ProbeResult& p : r.probes)
      if (p.plugin == subject.plugin() && p.score == 0) {
        declined = true;
        out.declined.push_back(r.prefix + ": " + p.reason);
      }
    if (declined) continue;
    for (const std::string& problem : r.problems) out.problems.push_back(r.prefix + ": " + reworded(r, problem));
  }
  return out;
}

bool libcuda_mapped() {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line))
    if (line.find("libcuda.so") != std::string::npos) return true;
  return false;
}

int thread_count() {
  std::error_code ec;
  int n = 0;
  for (auto it = fs::directory_iterator("/proc/self/task", ec); !ec && it != fs::directory_iterator(); it.increment(ec))
    ++n;
  return n;
}

}  // namespace moeq::cli::conform
