// `moeq conform`: what the checks stand on, inside one child process.
//
// - An instrumented copy of the host services table (host::api() underneath), handed to the
//   plugin at initialize with a larger struct_size than 1.0 defines: it counts every call.
// - A proxy of the plugin's function table: it counts methods, marks which plugin slot a thread
//   is in (so a status can be attributed to the slot that leaked it), turns a C++ exception that
//   escapes a slot into a status and a recorded failure, records what weight_loader is given, and
//   snapshots a layer's parameters when process_after_loading starts.
// - Subject: the plugin .so loaded (rtld_now | rtld_local) and adopted by a Registry through the
//   proxy, plus the helpers the checks share (geometry, fresh methods, apply, fixtures loads).
// The runner forks one child per check, so all of this is process-global on purpose.
#pragma once
#include "cmd_conform_fixtures.hpp"

#include <moeq/host.hpp>
#include <moeq/loader.hpp>
#include <moeq/registry.hpp>

#include <array>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace moeq::cli::conform {

// ------------------------------------------------------------------ instrumented host
enum class HostSlot {
  kStatusCreate, kStatusCode, kStatusMessage, kStatusDestroy, kLog, kDeviceInfo,
  kParamCreate, kCopyToParam, kParamFill, kJitCompile, kMethodCreate, kScratchAcquire, kScratchRelease, kCount
};
const char* host_slot_name(HostSlot slot);
// The table plugins get; struct_size covers 8 more (NULL) slots than this host's minor defines.
const moeq_host_api* instrumented_host();

struct HostCalls {
  std::array<int64_t, static_cast<size_t>(HostSlot::kCount)> n{};
  int64_t operator[](HostSlot s) const { return n[static_cast<size_t>(s)]; }
  HostCalls operator-(const HostCalls& o) const;
  int64_t total() const;
  // "param_create x2, log x1", or "" when none.
  std::string list() const;
};
HostCalls host_calls();

// --------------------------------------------------------------------- plugin slots
enum class PluginSlot {
  kNone, kInitialize, kShutdown, kProbe, kMethodCreate, kMethodDestroy, kCreateWeights,
  kWeightLoader, kProcessAfterLoading, kApply, kDescribe, kDequantizeExpert, kApplyInfo, kCount
};
const char* plugin_slot_name(PluginSlot slot);
// The plugin slot this thread is in now (kNone outside the plugin).
PluginSlot current_slot();

struct Escape {
  PluginSlot slot;
  std::string what;
};
// C++ exceptions that escaped a plugin slot through the proxy (each became a status).
std::vector<Escape> escapes();
void clear_escapes();

// Methods made through the proxy and not yet destroyed.
int64_t live_methods();
// Per plugin slot: statuses that entered the slot (made by the plugin through the host, or
// handed to it by a failing host service) minus those that left it (returned, or destroyed
// while in the slot). A positive balance after a scenario is a status that slot leaked.
std::vector<std::pair<PluginSlot, int64_t>> status_imbalance();

// --------------------------------------------------------------------------- recorder
// One weight_loader call as the loader made it, with a copy of the source's bytes (strides kept).
struct RecordedPiece {
  std::string layer;  // moeq_layer name, e.g. "model.layers.0.mlp"
  std::string tensor;
  std::string suffix;
  int32_t projection = 0;
  int64_t global_expert = 0;
  int64_t local_expert = 0;
  DLDataType dtype{};
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;
  std::vector<std::byte> bytes;
  bool skipped = false;
  bool failed = false;
  std::string skip_reason;
  DLTensor dl() const;  // a view of the copy; valid while this piece lives
};
void set_recording(bool on);
std::vector<RecordedPiece> take_recorded();

struct ParamSnapshot {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  std::vector<std::byte> bytes;
};
using LayerSnapshot = std::vector<ParamSnapshot>;
LayerSnapshot snapshot(const moeq_layer& layer);
// Empty when equal, else the first difference ("w13_weight byte 1234 differs").
std::string compare(const LayerSnapshot& a, const LayerSnapshot& b);
// Snapshots taken as process_after_loading starts: (layer name, parameters).
void set_snapshots(bool on);
std::vector<std::pair<std::string, LayerSnapshot>> take_snapshots();

// ---------------------------------------------------------------------------- subject
struct ProxyOptions {
  bool null_optional_slots = false;  // shutdown, describe, dequantize_expert left NULL
};

class Subject {
 public:
  // Loads the file, wraps its table, adopts it in a registry over the instrumented host. Never
  // throws for a plugin problem: `refusal` says why when plugin() is NULL. Plugins named in
  // requires_plugins are loaded from `dependency_dirs`.
  Subject(const std::filesystem::path& file, ProxyOptions options,
          const std::vector<std::filesystem::path>& dependency_dirs);
  ~Subject();
  Subject(const Subject&) = delete;
  Subject& operator=(const Subject&) = delete;

  const moeq_plugin_descriptor* real() const { return real_; }
  const LoadedPlugin* plugin() const { return plugin_; }
  const std::string& refusal() const { return refusal_; }
  Registry& registry() { return *registry_; }

 private:
  const moeq_plugin_descriptor* real_ = nullptr;
  const LoadedPlugin* plugin_ = nullptr;
  std::string refusal_;
  std::unique_ptr<Registry> registry_;
};

// Loads `file` (rtld_now | rtld_local, never unloaded) and returns its entry symbol's answer;
// throws moeq::Error when the file cannot be loaded or lacks the symbol.
const moeq_plugin_descriptor* load_descriptor(const std::filesystem::path& file);

// ----------------------------------------------------------------------- the helpers
// The subject's probe answer for a layer query (a status counts as a decline with its message).
struct ProbeAnswer {
  int32_t score = 0;
  std::string reason;
  bool status = false;
  bool operator==(const ProbeAnswer&) const = default;
};
ProbeAnswer probe(const LoadedPlugin& plugin, const ProbeQuery& query, size_t extra_struct_bytes = 0);

// A method with its own layer, made by the plugin for a query and a geometry, destroyed with it.
class FreshMethod {
 public:
  FreshMethod(const LoadedPlugin& plugin, const ProbeQuery& query, const moeq_layer_geometry& geometry,
              const std::string& layer_name);
  ~FreshMethod();
  FreshMethod(const FreshMethod&) = delete;
  FreshMethod& operator=(const FreshMethod&) = delete;
  // Empty when method_create and create_weights both succeeded, else "<slot>: message".
  const std::string& error() const { return error_; }
  moeq_layer& layer() { return *layer_; }
  moeq_method* method() const { return method_; }

  struct Sent {
    bool ok = false;  // no status
    bool skipped = false;
    std::string message;  // the status' message, or the skip reason
    moeq_status_code code = MOEQ_STATUS_CODE_OK;
  };
  // weight_loader with the piece's metadata and `source` (default: a fenced copy of the piece's
  // bytes); throws moeq::Error when the plugin writes past the skip_reason buffer or the copy.
  Sent send(const RecordedPiece& piece, const DLTensor* source = nullptr);
  // Every parameter written or declared default; else the first gap.
  std::string coverage_problem() const;

 private:
  const LoadedPlugin& plugin_;
  moeq_method* method_ = nullptr;
  std::unique_ptr<moeq_layer> layer_;
  std::string error_;
};

// The plugin's apply on CPU F32 tensors; x rows `x_row_stride` apart (>= H), every buffer fenced
// (cmd_conform_guard.hpp). Throws moeq::Error with the status' message, or saying which buffer
// the plugin wrote past or which input it changed.
std::vector<float> apply(const LoadedPlugin& plugin, moeq_method* method, int64_t hidden,
                         const std::vector<float>& x, int64_t tokens, const ref::Routing& routing,
                         int64_t x_row_stride = 0);

// The layer's dequantize_expert for every local expert into fenced buffers, as
// LoadedModel::dequantized does it with plain ones; `act` gets the activation quantization.
// Throws moeq::Error (UNIMPLEMENTED without the slot) as apply does.
ref::ExpertWeights dequantize(const LoadedLayer& layer, ref::MoeOptions* act);

// Random tokens [M, H] (bf16-representable) and random top-k routing over E experts.
std::vector<float> random_tokens(int64_t tokens, int64_t hidden, uint64_t seed);
ref::Routing random_routing(int64_t tokens, int64_t experts, int top_k, uint64_t seed);

// One fixture loaded by the subject (pinned, strict, problems collected, never throws for a
// layer). Layers the subject declines are `declined`, not problems.
struct FixtureLoad {
  LoadedModel model;
  std::vector<std::string> declined;  // "model.layers.1.mlp: <reason>"
  std::vector<std::string> problems;  // "model.layers.0.mlp: ..." per failed layer problem
  std::string online_scheme;          // the fixture's, which query_of uses as the loader did
  ProbeQuery query_of(size_t layer) const;
};
FixtureLoad load_fixture(Subject& subject, const Fixture& fixture, const Placement& placement = {});

// Is libcuda mapped into this process? Threads of this process?
bool libcuda_mapped();
int thread_count();

}  // namespace moeq::cli::conform
