// The C API of libmoeq (moeq/moeq.h) over the C++ library: handles, the thread's last error,
// and every exception stopped at the boundary.
#include <moeq/moeq.h>

#include <moeq/checkpoint.hpp>
#include <moeq/dtype.hpp>
#include <moeq/error.hpp>
#include <moeq/host.hpp>
#include <moeq/load_report.hpp>
#include <moeq/loader.hpp>
#include <moeq/registry.hpp>
#include <moeq/routed_forward.hpp>
#include <moeq/routing_family.hpp>

#include <boost/json.hpp>

#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <vector>

#ifndef MOEQ_VERSION_STRING
#error "MOEQ_VERSION_STRING is defined by core/CMakeLists.txt (the project version)"
#endif

namespace fs = std::filesystem;
namespace json = boost::json;

// A registry is shared by its handle and every model loaded through it: whichever goes last
// destroys it (and shuts its plugins down).
struct moeq_registry {
  std::shared_ptr<moeq::Registry> registry;
  std::string refused;  // "path: reason" lines
};

struct moeq_model {
  std::shared_ptr<moeq::Registry> registry;  // declared first: destroyed after the model
  moeq::LoadedModel model;
  struct LayerStrings {
    std::string prefix, model_type, plugin, describe_json, routing_json;
  };
  std::vector<LayerStrings> strings;  // one per loaded layer, built at load
  std::string report_json;
};

namespace {

thread_local moeq_status_code t_code = MOEQ_STATUS_CODE_OK;
thread_local std::string t_message;

moeq_status_code record(moeq_status_code code, std::string message) {
  t_code = code == MOEQ_STATUS_CODE_OK ? MOEQ_STATUS_CODE_INTERNAL : code;
  t_message = std::move(message);
  return t_code;
}

// Runs `body` and turns whatever it throws into the thread's last error, prefixed with the
// function's name. `body` returns OK or a code it recorded itself.
template <class F>
moeq_status_code guarded(const char* function, F&& body) noexcept {
  const std::string where = std::string(function) + ": ";
  try {
    return body();
  } catch (const moeq::Error& e) {
    return record(e.code(), where + e.what());
  } catch (const std::bad_alloc&) {
    return record(MOEQ_STATUS_CODE_OUT_OF_MEMORY, where + "out of host memory");
  } catch (const std::exception& e) {
    return record(MOEQ_STATUS_CODE_INTERNAL, where + e.what());
  } catch (...) {
    return record(MOEQ_STATUS_CODE_INTERNAL, where + "an unknown exception");
  }
}

[[noreturn]] void invalid(const std::string& message) { moeq::fail(MOEQ_STATUS_CODE_INVALID_ARGUMENT, message); }

void require_pointer(const void* p, const char* name) {
  if (p == nullptr) invalid(std::string(name) + " is NULL");
}

const moeq::LoadedLayer& layer_of(const moeq_model* model, size_t layer) {
  require_pointer(model, "model");
  if (layer >= model->model.layers.size())
    invalid("layer " + std::to_string(layer) + " is out of range: the model has " +
            std::to_string(model->model.layers.size()) +
            " loaded MoE layers (the index counts loaded layers, not the model's layer numbers)");
  return *model->model.layers[layer];
}

// ------------------------------------------------------------------ plugin search path

// The directory of the file that holds this library's code: libmoeq_c.so, or the executable
// that links libmoeq statically.
std::optional<fs::path> library_dir() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&moeq_registry_open), &info) == 0 || info.dli_fname == nullptr ||
      info.dli_fname[0] == '\0')
    return std::nullopt;
  std::error_code ec;
  const fs::path file = fs::absolute(info.dli_fname, ec);
  if (ec) return std::nullopt;
  return file.parent_path();
}

// `plugin_dir`, then MOEQ_PLUGIN_PATH and the executable's directories (Registry::search_path),
// then the directories next to libmoeq: <libdir>/moeq/plugins (installed, or shipped beside
// libmoeq_c.so in a Python package), <libdir>/../plugins (the build tree) and
// <libdir>/../moeq/plugins (a multiarch libdir such as lib/x86_64-linux-gnu).
std::vector<fs::path> plugin_search_path(const char* plugin_dir, bool defaults) {
  std::vector<fs::path> candidates;
  if (plugin_dir != nullptr && plugin_dir[0] != '\0') candidates.emplace_back(plugin_dir);
  if (defaults) {
    for (const fs::path& p : moeq::Registry::search_path(std::nullopt)) candidates.push_back(p);
    if (const std::optional<fs::path> lib = library_dir())
      for (const fs::path& p : {*lib / "moeq" / "plugins", *lib / ".." / "plugins", *lib / ".." / "moeq" / "plugins"})
        candidates.push_back(p);
  }
  std::vector<fs::path> out;
  for (const fs::path& c : candidates) {
    std::error_code ec;  // the same directory by two spellings is searched once
    fs::path n = fs::weakly_canonical(c, ec);
    if (ec) n = c.lexically_normal();
    if (std::find(out.begin(), out.end(), n) == out.end()) out.push_back(n);
  }
  return out;
}

// ---------------------------------------------------------------------- tensors

std::string device_name(DLDevice d) {
  switch (d.device_type) {
    case kDLCPU: return "cpu";
    case kDLCUDA: return "cuda:" + std::to_string(d.device_id);
    case kDLCUDAHost: return "cuda_host";
    default: return "device type " + std::to_string(d.device_type) + ":" + std::to_string(d.device_id);
  }
}

std::string dtype_text(DLDataType t) {
  if (const std::optional<moeq::DType> d = moeq::from_dl(t)) return moeq::dtype_name(*d);
  return "DLDataType{code " + std::to_string(t.code) + ", bits " + std::to_string(t.bits) + ", lanes " +
         std::to_string(t.lanes) + "}";
}

std::string shape_text(const DLTensor& t) {
  std::string s = "[";
  for (int i = 0; i < t.ndim; ++i) s += (i ? ", " : "") + std::to_string(t.shape[i]);
  return s + "]";
}

std::string found_text(const DLTensor& t) {
  if (t.ndim < 0 || (t.ndim > 0 && t.shape == nullptr)) return "a tensor with ndim " + std::to_string(t.ndim) + " and no shape";
  return shape_text(t) + " " + dtype_text(t.dtype) + " on " + device_name(t.device);
}

// A host tensor [rows, cols] of one of `dtypes`, read or written element by element through
// its strides (NULL strides: compact row-major).
struct HostMatrix {
  const DLTensor* t = nullptr;
  moeq::DType dtype = moeq::DType::F32;
  int64_t row_stride = 0, col_stride = 1;

  std::byte* at(int64_t r, int64_t c) const {
    const int64_t element = r * row_stride + c * col_stride;
    return static_cast<std::byte*>(t->data) + t->byte_offset +
           element * static_cast<int64_t>(moeq::dtype_size(dtype));
  }
};

// Checks `t` is a host tensor [rows, cols] (rows < 0: any) of one of `dtypes`; throws naming
// `what` in `where`, what was expected and what was found.
HostMatrix host_matrix(const DLTensor* t, const char* name, const std::string& where, int64_t rows, int64_t cols,
                       std::initializer_list<moeq::DType> dtypes, const std::string& expected_shape) {
  require_pointer(t, name);
  std::string allowed;
  for (moeq::DType d : dtypes) allowed += (allowed.empty() ? "" : "/") + std::string(moeq::dtype_name(d));
  const std::string expected = expected_shape + " " + allowed + " on the host";
  if (t->device.device_type != kDLCPU && t->device.device_type != kDLCUDAHost) {
    if (t->device.device_type == kDLCUDA)
      moeq::fail(MOEQ_STATUS_CODE_UNIMPLEMENTED, where + name + " is on " + device_name(t->device) +
                                                     ": routing runs on the host only (expected " + expected + ")");
    invalid(where + name + " must be " + expected + ", found " + found_text(*t));
  }
  if (t->ndim != 2 || t->shape == nullptr || (rows >= 0 && t->shape[0] != rows) || t->shape[1] != cols ||
      t->shape[0] < 0)
    invalid(where + name + " must be " + expected + ", found " + found_text(*t));
  const std::optional<moeq::DType> d = moeq::from_dl(t->dtype);
  if (!d || std::find(dtypes.begin(), dtypes.end(), *d) == dtypes.end())
    invalid(where + name + " must be " + expected + ", found " + found_text(*t));
  if (t->shape[0] > 0 && t->shape[1] > 0 && t->data == nullptr) invalid(where + name + " has no data (NULL)");
  HostMatrix m{t, *d, t->shape[1], 1};
  if (t->strides != nullptr) {
    m.row_stride = t->strides[0];
    m.col_stride = t->strides[1];
  }
  return m;
}

// `t` as the ABI wants it: DLPack's NULL strides (compact row-major) made explicit.
struct Strided {
  DLTensor t{};
  int64_t strides[8]{};
  explicit Strided(const DLTensor& in) : t(in) {
    if (in.strides != nullptr || in.shape == nullptr || in.ndim < 1 || in.ndim > 8) return;
    int64_t n = 1;
    for (int i = in.ndim; i-- > 0;) {
      strides[i] = n;
      n *= in.shape[i];
    }
    t.strides = strides;
  }
};

// ---------------------------------------------------------------------- layer strings

const char* scoring_name(moeq::ref::Scoring s) {
  switch (s) {
    case moeq::ref::Scoring::kSoftmax: return "softmax";
    case moeq::ref::Scoring::kSigmoid: return "sigmoid";
    case moeq::ref::Scoring::kSparseMixer: return "sparsemixer";
    case moeq::ref::Scoring::kSqrtSoftplus: return "sqrtsoftplus";
  }
  return "?";
}

const char* group_score_name(moeq::ref::GroupScore g) {
  switch (g) {
    case moeq::ref::GroupScore::kAuto: return "auto";
    case moeq::ref::GroupScore::kMax: return "max";
    case moeq::ref::GroupScore::kTop2Sum: return "top2_sum";
  }
  return "?";
}

moeq_scoring c_scoring(moeq::ref::Scoring s) {
  switch (s) {
    case moeq::ref::Scoring::kSoftmax: return MOEQ_SCORING_SOFTMAX;
    case moeq::ref::Scoring::kSigmoid: return MOEQ_SCORING_SIGMOID;
    case moeq::ref::Scoring::kSparseMixer: return MOEQ_SCORING_SPARSEMIXER;
    case moeq::ref::Scoring::kSqrtSoftplus: return MOEQ_SCORING_SQRTSOFTPLUS;
  }
  return MOEQ_SCORING_SOFTMAX;
}

// Every routing setting of layer `li` as one JSON object (moeq_layer_info.routing_json).
std::string routing_json(const moeq::LoadedModel& m, size_t li) {
  const moeq::ResolvedRouting& rr = m.config.resolved_routing;
  const moeq::ref::RoutingOptions o = m.routing(li);
  const moeq::LoadedLayer& l = *m.layers[li];
  json::array fields;
  for (const moeq::RoutingField& f : rr.fields) fields.push_back({{"name", f.name}, {"value", f.value}, {"source", f.source}});
  json::object r{{"known", rr.family != nullptr},
                 {"family", rr.family ? rr.family->model_type : ""},
                 {"defined_by", rr.family ? rr.family->defined_by : ""},
                 {"unknown_reason", rr.unknown_reason},
                 {"summary", moeq::routing_summary(rr)},
                 {"scoring", scoring_name(o.scoring)},
                 {"top_k", o.top_k},
                 {"renormalize", o.renormalize},
                 {"correction_bias", l.router_bias ? json::value(l.router_bias->name) : json::value(nullptr)},
                 {"n_group", o.n_group},
                 {"topk_group", o.topk_group},
                 {"group_score", group_score_name(o.group_score)},
                 {"routed_scaling_factor", o.routed_scaling_factor},
                 {"weight_on_input", rr.weight_on_input},
                 {"router", l.router_weight ? json::value(l.router_weight->name) : json::value(nullptr)},
                 {"fields", fields}};
  if (o.scoring == moeq::ref::Scoring::kSparseMixer) r["sparsemixer_eps"] = o.sparsemixer_eps;
  return json::serialize(r);
}

moeq::LoadOptions to_load_options(const moeq_load_options& o, const moeq::Registry& reg) {
  if (o.struct_size < sizeof(moeq_load_options))
    invalid("options->struct_size is " + std::to_string(o.struct_size) + ", expected at least " +
            std::to_string(sizeof(moeq_load_options)) + " (call moeq_load_options_init first)");
  auto check_rank = [](const char* what, int32_t rank, int32_t size) {
    if (size < 1) invalid(std::string("options->") + what + "_size must be >= 1, found " + std::to_string(size));
    if (rank < 0 || rank >= size)
      invalid(std::string("options->") + what + "_rank must be in [0, " + std::to_string(size) + "), found " +
              std::to_string(rank));
  };
  check_rank("tp", o.tp_rank, o.tp_size);
  check_rank("ep", o.ep_rank, o.ep_size);
  if ((o.device.device_type != kDLCPU && o.device.device_type != kDLCUDA) || o.device.device_id < 0)
    invalid("options->device must be {kDLCPU, 0} or {kDLCUDA, N >= 0}, found " + device_name(o.device));
  if (o.strict != 0 && o.strict != 1) invalid("options->strict must be 0 or 1, found " + std::to_string(o.strict));
  if (o.max_tokens < 0) invalid("options->max_tokens must be >= 0, found " + std::to_string(o.max_tokens));
  if (o.workspace != MOEQ_WORKSPACE_SHARED && o.workspace != MOEQ_WORKSPACE_PER_LAYER)
    invalid("options->workspace must be MOEQ_WORKSPACE_SHARED (0) or MOEQ_WORKSPACE_PER_LAYER (1), found " +
            std::to_string(o.workspace));
  moeq::LoadOptions lo;
  lo.placement = {o.tp_rank, o.tp_size, o.ep_rank, o.ep_size};
  lo.device = o.device;
  lo.strict = o.strict == 1;
  lo.threads = o.threads;
  lo.max_tokens = o.max_tokens;
  lo.shared_workspace = o.workspace == MOEQ_WORKSPACE_SHARED;
  if (o.online_scheme != nullptr && o.online_scheme[0] != '\0') {
    const auto& schemes = moeq::online_schemes();
    if (std::find(schemes.begin(), schemes.end(), o.online_scheme) == schemes.end()) {
      std::string list;
      for (const auto& s : schemes) list += (list.empty() ? "" : ", ") + s;
      invalid("options->online_scheme '" + std::string(o.online_scheme) + "' is not a scheme (expected one of " + list +
              ")");
    }
    lo.online_scheme = o.online_scheme;
  }
  if (o.plugin != nullptr && o.plugin[0] != '\0') {
    if (reg.find(o.plugin) == nullptr) {
      std::string list;
      for (const auto& p : reg.plugins()) list += (list.empty() ? "" : ", ") + p->name;
      moeq::fail(MOEQ_STATUS_CODE_NOT_FOUND,
                 "options->plugin '" + std::string(o.plugin) + "' is not loaded in this registry (loaded: " + list + ")");
    }
    lo.pin_plugin = o.plugin;
  }
  return lo;
}

}  // namespace

extern "C" {

const char* moeq_version(void) { return MOEQ_VERSION_STRING; }

void moeq_abi_version(uint32_t* major, uint32_t* minor) {
  if (major) *major = MOEQ_ABI_MAJOR;
  if (minor) *minor = MOEQ_ABI_MINOR;
}

const char* moeq_last_error_message(void) { return t_message.c_str(); }
moeq_status_code moeq_last_error_code(void) { return t_code; }

// ---------------------------------------------------------------------- registry

moeq_status_code moeq_registry_open(const char* plugin_dir, uint32_t flags, moeq_registry** out) {
  return guarded("moeq_registry_open", [&] {
    require_pointer(out, "out");
    *out = nullptr;
    constexpr uint32_t kKnown = MOEQ_REGISTRY_ALLOW_UNTRUSTED | MOEQ_REGISTRY_NO_DEFAULT_PATH;
    if (flags & ~kKnown) invalid("flags " + std::to_string(flags) + " hold unknown bits " + std::to_string(flags & ~kKnown) +
              " (known: MOEQ_REGISTRY_ALLOW_UNTRUSTED 1, MOEQ_REGISTRY_NO_DEFAULT_PATH 2)");
    const bool defaults = (flags & MOEQ_REGISTRY_NO_DEFAULT_PATH) == 0;
    const bool have_dir = plugin_dir != nullptr && plugin_dir[0] != '\0';
    if (!defaults && !have_dir) invalid("MOEQ_REGISTRY_NO_DEFAULT_PATH without a plugin_dir searches nothing");
    std::error_code ec;
    if (have_dir && !fs::is_directory(plugin_dir, ec))
      moeq::fail(MOEQ_STATUS_CODE_NOT_FOUND, std::string("plugin_dir '") + plugin_dir + "': " +
                                                 (fs::exists(plugin_dir, ec) ? "not a directory" : "no such directory"));
    moeq::PluginTrust trust = moeq::PluginTrust::from_environment();
    if (flags & MOEQ_REGISTRY_ALLOW_UNTRUSTED) trust.allow_untrusted = true;
    auto handle = std::make_unique<moeq_registry>();
    handle->registry = std::make_shared<moeq::Registry>(moeq::host::api(), trust);
    std::vector<fs::path> searched;
    for (const fs::path& d : plugin_search_path(plugin_dir, defaults)) {
      if (!fs::is_directory(d, ec)) continue;
      handle->registry->load_directory(d);
      searched.push_back(d);
    }
    for (const moeq::PluginRefusal& r : handle->registry->refusals())
      handle->refused += r.file.string() + ": " + r.reason + "\n";
    if (handle->registry->plugins().empty()) {
      std::string where;
      for (const fs::path& d : searched) where += (where.empty() ? "" : ", ") + d.string();
      moeq::fail(MOEQ_STATUS_CODE_NOT_FOUND,
                 "no plugin loaded (searched: " + (where.empty() ? std::string("no existing directory") : where) + ")" +
                     (handle->refused.empty() ? std::string() : "; refused:\n" + handle->refused));
    }
    *out = handle.release();
    return MOEQ_STATUS_CODE_OK;
  });
}

void moeq_registry_free(moeq_registry* registry) { delete registry; }

size_t moeq_registry_num_plugins(const moeq_registry* registry) {
  if (registry == nullptr) {
    record(MOEQ_STATUS_CODE_INVALID_ARGUMENT, "moeq_registry_num_plugins: registry is NULL");
    return 0;
  }
  return registry->registry->plugins().size();
}

const char* moeq_registry_plugin_name(const moeq_registry* registry, size_t i) {
  if (registry == nullptr) {
    record(MOEQ_STATUS_CODE_INVALID_ARGUMENT, "moeq_registry_plugin_name: registry is NULL");
    return nullptr;
  }
  const auto& plugins = registry->registry->plugins();
  return i < plugins.size() ? plugins[i]->name.c_str() : nullptr;
}

const char* moeq_registry_refused(const moeq_registry* registry) {
  if (registry == nullptr) {
    record(MOEQ_STATUS_CODE_INVALID_ARGUMENT, "moeq_registry_refused: registry is NULL");
    return "";
  }
  return registry->refused.c_str();
}

// ---------------------------------------------------------------------- load

void moeq_load_options_init(moeq_load_options* options) {
  if (options == nullptr) return;
  std::memset(options, 0, sizeof *options);
  options->struct_size = sizeof *options;
  options->tp_rank = 0;
  options->tp_size = 1;
  options->ep_rank = 0;
  options->ep_size = 1;
  options->device = DLDevice{kDLCPU, 0};
  options->strict = 1;
  options->workspace = MOEQ_WORKSPACE_SHARED;
}

moeq_status_code moeq_model_load(moeq_registry* registry, const char* dir, const moeq_load_options* options,
                                 moeq_model** out) {
  return guarded("moeq_model_load", [&] {
    require_pointer(out, "out");
    *out = nullptr;
    require_pointer(registry, "registry");
    require_pointer(dir, "dir");
    moeq_load_options defaults;
    moeq_load_options_init(&defaults);
    const moeq::LoadOptions lo = to_load_options(options ? *options : defaults, *registry->registry);
    auto handle = std::make_unique<moeq_model>();
    handle->registry = registry->registry;
    const moeq::Checkpoint ck = moeq::Checkpoint::open(dir);
    handle->model = moeq::load_model(ck, *handle->registry, lo);
    const moeq::LoadedModel& m = handle->model;
    for (size_t li = 0; li < m.layers.size(); ++li) {
      const moeq::LoadedLayer& l = *m.layers[li];
      handle->strings.push_back({l.report.prefix, m.config.model_type, l.plugin ? l.plugin->name : l.report.plugin,
                                 l.report.describe_json, routing_json(m, li)});
    }
    handle->report_json = json::serialize(moeq::load_report_json(dir, m));
    *out = handle.release();
    return MOEQ_STATUS_CODE_OK;
  });
}

void moeq_model_free(moeq_model* model) { delete model; }

// ---------------------------------------------------------------------- layers

size_t moeq_model_num_layers(const moeq_model* model) {
  if (model == nullptr) {
    record(MOEQ_STATUS_CODE_INVALID_ARGUMENT, "moeq_model_num_layers: model is NULL");
    return 0;
  }
  return model->model.layers.size();
}

moeq_status_code moeq_model_layer_info(const moeq_model* model, size_t layer, moeq_layer_info* info) {
  return guarded("moeq_model_layer_info", [&] {
    const moeq::LoadedLayer& l = layer_of(model, layer);
    require_pointer(info, "info");
    if (info->struct_size < sizeof(moeq_layer_info))
      invalid("info->struct_size is " + std::to_string(info->struct_size) + ", expected at least " +
              std::to_string(sizeof(moeq_layer_info)) + " (set it to sizeof(moeq_layer_info))");
    const moeq_model::LayerStrings& s = model->strings[layer];
    const moeq::ref::RoutingOptions& o = model->model.config.routing;
    const size_t size = info->struct_size;
    std::memset(info, 0, sizeof *info);
    info->struct_size = size;
    info->layer = l.report.layer;
    info->prefix = s.prefix.c_str();
    info->model_type = s.model_type.c_str();
    info->plugin = s.plugin.c_str();
    info->describe_json = s.describe_json.c_str();
    info->routing_json = s.routing_json.c_str();
    info->geometry = l.geometry;
    info->device = l.layer->device;
    info->x_dtypes = l.x_dtypes;
    info->out_dtypes = l.out_dtypes;
    info->workspace_bytes = l.workspace ? l.workspace->bytes : l.workspace_bytes;
    info->tokens_per_pass = l.tokens_per_pass;
    info->scoring = c_scoring(o.scoring);
    info->renormalize = o.renormalize ? 1 : 0;
    info->routed_scaling_factor = o.routed_scaling_factor;
    info->weight_on_input = model->model.config.resolved_routing.weight_on_input ? 1 : 0;
    return MOEQ_STATUS_CODE_OK;
  });
}

moeq_status_code moeq_model_report_json(const moeq_model* model, char* buffer, size_t capacity, size_t* needed) {
  return guarded("moeq_model_report_json", [&] {
    require_pointer(model, "model");
    const std::string& r = model->report_json;
    if (needed) *needed = r.size() + 1;
    if (capacity < r.size() + 1)
      invalid("the buffer holds " + std::to_string(capacity) + " bytes, the report needs " + std::to_string(r.size() + 1) +
              " (with the NUL)");
    require_pointer(buffer, "buffer");
    std::memcpy(buffer, r.c_str(), r.size() + 1);
    return MOEQ_STATUS_CODE_OK;
  });
}

// ---------------------------------------------------------------------- compute

moeq_status_code moeq_model_route(const moeq_model* model, size_t layer, const DLTensor* hidden, const DLTensor* topk_ids,
                                  const DLTensor* topk_weights) {
  return guarded("moeq_model_route", [&] {
    const moeq::LoadedLayer& l = layer_of(model, layer);
    const int64_t H = l.geometry.hidden_size, k = model->model.config.top_k;
    const std::string where = "route on " + l.report.prefix + ": ";
    using moeq::DType;
    const HostMatrix x = host_matrix(hidden, "hidden", where, -1, H, {DType::F32, DType::BF16, DType::F16},
                                     "[M, " + std::to_string(H) + "]");
    const int64_t M = hidden->shape[0];
    const std::string routed = "[" + std::to_string(M) + ", " + std::to_string(k) + "]";
    const HostMatrix ids = host_matrix(topk_ids, "topk_ids", where, M, k, {DType::I32}, routed);
    const HostMatrix w = host_matrix(topk_weights, "topk_weights", where, M, k, {DType::F32}, routed);
    std::vector<float> xf(static_cast<size_t>(M * H));
    for (int64_t r = 0; r < M; ++r)
      for (int64_t c = 0; c < H; ++c) xf[static_cast<size_t>(r * H + c)] = moeq::load_as_float(x.at(r, c), x.dtype, 0);
    const moeq::ref::Routing routing = moeq::route_layer(model->model, layer, xf, M);
    for (int64_t r = 0; r < M; ++r)
      for (int64_t c = 0; c < k; ++c) {
        const size_t i = static_cast<size_t>(r * k + c);
        std::memcpy(ids.at(r, c), &routing.ids[i], sizeof(int32_t));
        std::memcpy(w.at(r, c), &routing.weights[i], sizeof(float));
      }
    return MOEQ_STATUS_CODE_OK;
  });
}

moeq_status_code moeq_model_apply(const moeq_model* model, size_t layer, const DLTensor* x, const DLTensor* topk_ids,
                                  const DLTensor* topk_weights, const DLTensor* out, void* stream) {
  return guarded("moeq_model_apply", [&] {
    layer_of(model, layer);
    require_pointer(x, "x");
    require_pointer(topk_ids, "topk_ids");
    require_pointer(topk_weights, "topk_weights");
    require_pointer(out, "out");
    const Strided sx(*x), si(*topk_ids), sw(*topk_weights), so(*out);
    model->model.apply(layer, sx.t, si.t, sw.t, so.t, stream);
    return MOEQ_STATUS_CODE_OK;
  });
}

moeq_status_code moeq_model_dequantize_expert(const moeq_model* model, size_t layer, int64_t local_expert, float* w13,
                                              size_t w13_count, float* w2, size_t w2_count) {
  return guarded("moeq_model_dequantize_expert", [&] {
    const moeq::LoadedLayer& l = layer_of(model, layer);
    const moeq_layer_geometry& g = l.geometry;
    const std::string where = "dequantize_expert on " + l.report.prefix + ": ";
    if (local_expert < 0 || local_expert >= g.num_local_experts)
      invalid(where + "local_expert must be in [0, " + std::to_string(g.num_local_experts) + "), found " +
              std::to_string(local_expert));
    require_pointer(w13, "w13");
    require_pointer(w2, "w2");
    const int64_t H = g.hidden_size, I = g.intermediate_size_per_partition;
    const size_t n13 = static_cast<size_t>(2 * I * H), n2 = static_cast<size_t>(H * I);
    if (w13_count < n13)
      invalid(where + "w13 holds " + std::to_string(w13_count) + " floats, expected [2 * I_tp, H] = [" +
              std::to_string(2 * I) + ", " + std::to_string(H) + "] = " + std::to_string(n13));
    if (w2_count < n2)
      invalid(where + "w2 holds " + std::to_string(w2_count) + " floats, expected [H, I_tp] = [" + std::to_string(H) +
              ", " + std::to_string(I) + "] = " + std::to_string(n2));
    model->model.dequantize_expert(layer, local_expert, w13, w2, nullptr);
    return MOEQ_STATUS_CODE_OK;
  });
}

}  // extern "C"
