// Loads every MoE layer of a checkpoint through the plugin the registry chooses, with the
// load ledger: every checkpoint tensor of a MoE layer is consumed, skipped with a reason, or
// an error; every parameter element is written or declared default.
#pragma once
#include <moeq/checkpoint.hpp>
#include <moeq/expert_name_router.hpp>
#include <moeq/host.hpp>
#include <moeq/model_config.hpp>
#include <moeq/placement.hpp>
#include <moeq/reference.hpp>
#include <moeq/registry.hpp>

#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

namespace moeq {

struct LoadOptions {
  Placement placement;
  bool strict = true;         // throw on any ledger violation
  bool collect_errors = false;  // never throw for a layer; record its problems (inspect)
  std::string pin_plugin;     // choose this plugin for every layer
  // Quantize unquantized experts at load with this online scheme ("int8", "fp8-tensor",
  // "fp8-channel", "fp8-block"): the effective quantization config becomes
  // {"quant_method": "moeq-online", "scheme": ...}, which the online_quant plugin claims.
  std::string online_scheme;
  DLDevice device{kDLCPU, 0};
  unsigned threads = 0;  // layers loaded at once; 0 = one per core, at most 8
  // Apply workspaces (ABI 1.2 apply_info): the most tokens one apply is given (0: each method's
  // own pass size; larger batches run in passes), and whether the layers on one device share
  // one workspace (their applies must then be ordered on the device: one stream, or streams
  // that wait for each other) or each get their own (layers may run at once on several streams).
  int64_t max_tokens = 0;
  bool shared_workspace = true;
  // Device scratch lent to plugins while layers load (host scratch_acquire), over all layers
  // loading onto one device at once; 0: one bf16 expert of the largest layer + 64 MiB.
  std::size_t load_scratch_bytes = 0;
  // How far ahead of the piece being handed to the plugin a layer's NaN/Inf scans (and
  // readahead) are queued, in bytes of pieces; 0: MOEQ_LOAD_SCAN_AHEAD_MIB, else 32 MiB.
  std::size_t scan_ahead_bytes = 0;
  // Where a load onto a device scans expert weights for NaN/Inf: while their bytes are copied into
  // staging (each byte read from the checkpoint once; what no copy scanned is scanned after the
  // layer's copies), or ahead of the plugin, every piece before it is handed (as on the CPU).
  // kDefault: MOEQ_LOAD_SCAN ("pack" or "ahead"), else while packing. The CPU always scans ahead.
  enum class WeightScan { kDefault, kWhilePacking, kAhead };
  WeightScan weight_scan = WeightScan::kDefault;
  // Called as expert tensors are taken (from the loading threads, one call at a time), and once
  // more when every layer is done: bytes of expert tensors processed of the total, layers done.
  std::function<void(const struct LoadProgress&)> progress;
};

struct LoadProgress {
  int64_t bytes_done = 0;
  int64_t bytes_total = 0;  // every expert tensor of every MoE layer
  int layers_done = 0;
  int layers_total = 0;
  double seconds = 0;       // since load_model started
};

// "  loading experts: 1.2 of 3.4 GB, 2.5 GB/s, ETA 1 s (layer 3 of 48)": one line, no newline.
std::string progress_line(const LoadProgress& p);

// A block of device memory the host owns (an apply workspace); shared by the layers using it.
struct DeviceWorkspace {
  DeviceWorkspace(int ordinal, std::size_t bytes);
  ~DeviceWorkspace();
  DeviceWorkspace(const DeviceWorkspace&) = delete;
  DeviceWorkspace& operator=(const DeviceWorkspace&) = delete;
  int ordinal = 0;
  std::size_t bytes = 0;
  void* data = nullptr;
  // Held while an apply that uses this workspace is queued (and, for the host-vector
  // overload, until its work is done).
  std::mutex mutex;
};

struct LedgerEntry {
  enum class State { kConsumed, kSkipped, kNotLocal, kRouter, kError, kUnknown };
  std::string tensor;
  State state = State::kConsumed;
  std::string routed_to;  // "w1 e3", "w1+w3 of experts 0..39"
  std::string detail;     // skip reason or error
  std::string dtype;
  std::vector<int64_t> shape;
};
const char* ledger_state_name(LedgerEntry::State s);

struct LayerReport {
  std::string prefix;  // "model.layers.0.mlp"
  int64_t layer = -1;
  std::string family;
  std::string experts_module;
  std::string weight_dtype;
  std::string plugin;
  std::string plugin_why;
  std::vector<ProbeResult> probes;
  std::vector<LedgerEntry> entries;
  std::vector<ParamCoverage> params;
  std::string describe_json = "{}";
  std::vector<std::string> problems;  // strict violations and errors: the layer did not load
  // The status code of the first problem when it came from an error with one (UNAVAILABLE for
  // a missing driver, OUT_OF_MEMORY, ...), else INVALID_ARGUMENT; load_model throws with it.
  moeq_status_code code = MOEQ_STATUS_CODE_INVALID_ARGUMENT;
  // What strict loading would have refused but `strict = false` let through (unknown expert
  // tensors, unwritten parameter elements), each also logged as a warning.
  std::vector<std::string> waived;
  // Bytes of the layer's expert tensors: in the checkpoint (every expert), handed to the plugin
  // (this rank's experts, whole per-expert tensors: under EP the others' pages are never
  // touched; under TP the plugin narrows), and what copy_to_param read from host memory (under
  // TP, this rank's shard; a plugin that quantizes on the host copies its codes). What a rank
  // reads of the checkpoint's expert bytes is at most the handed bytes.
  int64_t expert_bytes = 0;
  int64_t expert_bytes_handed = 0;
  int64_t bytes_copied = 0;
  // Wall seconds of the layer's load by phase (its loading thread's clock): from its start to the
  // first piece handed (router checks, plugin choice, method_create, create_weights and the
  // parameters' allocation); waiting for the weight scans and readahead (on the task pool, a
  // window ahead of the pieces being handed; onto a device, the readahead and the scan of what
  // no copy into staging scanned); the rest of handing every piece to weight_loader (the copies
  // queued); the wait for the device copies (GPU layers); process_after_loading (kernels,
  // repacks).
  struct Phases {
    double setup = 0, scan = 0, hand = 0, copies = 0, prepare = 0;
  } seconds;
  // When each phase of this layer ended, in seconds since load_model began (-1: not reached):
  // the layer's thread started, the plugin was chosen, create_weights returned (parameters
  // allocated), the first piece was handed, every piece was handed, the device copies were done,
  // process_after_loading returned. Where a load's start goes (`moeq bench load` prints them).
  struct Marks {
    double start = -1, selected = -1, created = -1, first_piece = -1, handed = -1, copied = -1, prepared = -1;
  } at;
  // Onto a device: weight bytes of this rank scanned for NaN/Inf as they were copied into
  // staging, and those scanned afterwards on the host (no copy scanned them). 0 on the CPU.
  int64_t bytes_scanned_packing = 0, bytes_scanned_after = 0;
  bool ok() const { return problems.empty(); }  // loaded
  bool strict_clean() const { return problems.empty() && waived.empty(); }
  int64_t count(LedgerEntry::State s) const;
};

// One loaded layer: destroying it destroys its method (the plugin's kernels, workspaces) and
// then its parameters. `plugin` points into the Registry the layer was loaded through, which
// must outlive it.
struct LoadedLayer {
  LoadedLayer() = default;
  LoadedLayer(const LoadedLayer&) = delete;
  LoadedLayer& operator=(const LoadedLayer&) = delete;
  ~LoadedLayer();

  LayerReport report;
  moeq_layer_geometry geometry{};
  const LoadedPlugin* plugin = nullptr;
  moeq_method* method = nullptr;
  std::unique_ptr<moeq_layer> layer;
  const TensorInfo* router_weight = nullptr;
  const TensorInfo* router_scale = nullptr;  // an F8_E4M3 router's scale
  const TensorInfo* router_bias = nullptr;
  // The ABI has the host serialize calls on one method: LoadedModel::apply takes this.
  mutable std::mutex apply_mutex;
  // What apply takes (the plugin's apply_info, ABI 1.2; for older plugins: x and out as the
  // capabilities imply, no workspace): dtype masks MOEQ_DTYPE_BIT_*, tokens a pass.
  uint32_t x_dtypes = 0, out_dtypes = 0;
  int64_t tokens_per_pass = 0;
  std::size_t workspace_bytes = 0;           // what the method asked for
  std::shared_ptr<DeviceWorkspace> workspace;  // null when it asked for none
};

// The Registry a model was loaded through must outlive it (its layers call their plugins'
// tables). Moving, move-assigning over and destroying a model release what it replaced.
class LoadedModel {
 public:
  LoadedModel() = default;
  LoadedModel(LoadedModel&&) noexcept = default;
  LoadedModel& operator=(LoadedModel&&) noexcept = default;
  ~LoadedModel() = default;

  MoeConfig config;
  Placement placement;
  // The model keeps the checkpoint (its mapped files) alive: router tensors point into it.
  std::shared_ptr<const Checkpoint> checkpoint;
  std::vector<std::unique_ptr<LoadedLayer>> layers;  // only layers that loaded
  std::vector<LayerReport> failed;                   // with collect_errors
  std::vector<std::string> not_moe;                  // checkpoint tensors outside MoE layers
  // Seconds since load_model began: every name routed and grouped by layer, the loading scratch
  // set up (the layers' threads start then), every layer's thread done (each layer's own marks
  // are in its report's `at`).
  struct Marks {
    double routed = -1, scratch = -1, layers = -1;
  } at;

  // out [M, H] = the layer's plugin apply on CPU float tensors. `layer` indexes `layers` (the
  // loaded MoE layers in order), not the model's layer numbers. x is [M, H]; routing holds M x
  // top_k global expert ids in [0, num_experts) (experts not on this EP rank contribute
  // nothing) and their weights; anything else is an Error naming it. Calls on one layer from
  // several threads are serialized; calls on different layers run concurrently.
  std::vector<float> apply(size_t layer, std::span<const float> x, int64_t num_tokens,
                           const ref::Routing& routing) const;
  // The zero-copy apply on the caller's tensors: x [M, H] and out [M, H] in a dtype the layer
  // takes (LoadedLayer::x_dtypes / out_dtypes), topk_ids [M, top_k] I32 and topk_weights
  // [M, top_k] F32, all on the layer's device with contiguous rows. On a CUDA layer the work is
  // queued on `stream` (CUstream; null: the legacy default stream) with the layer's workspace:
  // nothing is allocated or synchronized, so it may be captured in a CUDA graph; the tensors
  // must stay valid until that work completes. On the CPU it runs to completion. Throws
  // moeq::Error naming the tensor, what was expected and what was found.
  void apply(size_t layer, const DLTensor& x, const DLTensor& topk_ids, const DLTensor& topk_weights, const DLTensor& out,
             void* stream) const;
  // The method's dequantized local experts and activation quantization (dequantize_expert).
  ref::ExpertWeights dequantized(size_t layer, ref::MoeOptions* act_quant) const;
  // One local expert of it into w13 [2 * I_tp, H] and w2 [H, I_tp] (host buffers of at least
  // that many floats); act_quant may be null. UNIMPLEMENTED when the plugin has no such slot.
  void dequantize_expert(size_t layer, int64_t local_expert, float* w13, float* w2, ref::MoeOptions* act_quant) const;
  // Router weights [E, H] as float and routing options of the layer (bias included).
  std::vector<float> router_weight(size_t layer) const;
  ref::RoutingOptions routing(size_t layer) const;
};

// An F8_E4M3 router weight [E, H] times its per-tensor, per-row or block scale, as float.
// Throws moeq::Error naming the scale tensor when its shape fits none of them.
std::vector<float> dequantize_router(const TensorInfo& weight, const TensorInfo& scale, int64_t E, int64_t H);

// The schemes LoadOptions::online_scheme (`--online`) takes: int8, fp8-tensor, fp8-channel, fp8-block.
const std::vector<std::string>& online_schemes();

// The quantization config the plugins are asked about for `checkpoint`: its own, or with an
// online scheme the user's {"quant_method": "moeq-online", "scheme": ...} (source "user").
QuantConfigSource effective_quant_config(const Checkpoint& checkpoint, const std::string& online_scheme);

// The geometry the host hands a plugin for a layer of `config` at `placement` (linear EP,
// I split evenly over TP); the loader's, and `moeq conform`'s for the placements it tries.
moeq_layer_geometry layer_geometry(const MoeConfig& config, const Placement& placement);

// Throws moeq::Error naming the layer, tensor or parameter when a layer cannot be loaded
// (unless options.collect_errors). A failed layer releases everything it allocated.
LoadedModel load_model(const Checkpoint& checkpoint, const Registry& registry, const LoadOptions& options);

}  // namespace moeq
