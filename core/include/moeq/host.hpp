// The host services table given to plugins, and the per-layer state behind `moeq_layer`:
// parameters the host allocated for a plugin and the ledger of which elements were written.
#pragma once
#include <moeq/abi.h>
#include <moeq/dtype.hpp>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace moeq {

class Registry;
namespace host {
class DeviceWrites;
class PackScans;
}

// Disjoint half-open ranges of flat element indices, merged on insert.
class IntervalSet {
 public:
  void insert(int64_t begin, int64_t end);
  void insert_all(const IntervalSet& other);
  bool intersects(int64_t begin, int64_t end) const;
  int64_t covered() const;
  // First index in [0, n) not covered, or -1.
  int64_t first_gap(int64_t n) const;
  // The parts of [begin, end) not covered, in order.
  std::vector<std::pair<int64_t, int64_t>> gaps(int64_t begin, int64_t end) const;
  // The ranges, in order.
  std::vector<std::pair<int64_t, int64_t>> ranges() const;

 private:
  std::map<int64_t, int64_t> ranges_;
};

struct ParamRecord {
  ParamRecord() = default;
  ParamRecord(const ParamRecord&) = delete;  // `tensor` points into this record
  ParamRecord& operator=(const ParamRecord&) = delete;
  ~ParamRecord();  // returns accounted_bytes to host::live_param_bytes()

  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;
  int64_t numel = 0;
  std::vector<std::byte> storage;  // host memory (the CPU path)
  unsigned long long device_ptr = 0;  // device memory (a layer on kDLCUDA), freed with the record
  int device_ordinal = -1;
  DLTensor tensor{};
  IntervalSet written;    // by copy_to_param
  IntervalSet defaulted;  // by param_fill, declared default
  std::vector<std::pair<std::pair<int64_t, int64_t>, std::string>> writers;  // range -> tensor
  std::vector<std::string> default_reasons;
  int64_t accounted_bytes = 0;  // counted in host::live_param_bytes() while the record lives
};

struct ParamCoverage {
  std::string name;
  std::vector<int64_t> shape;
  std::string dtype;
  int64_t numel = 0;
  int64_t written = 0;
  int64_t defaulted = 0;
  std::string first_gap;  // "[3, 0, 0]" or empty when complete
};

}  // namespace moeq

// The host's per-layer state; plugins see only the opaque pointer.
struct moeq_layer {
  moeq_layer();
  ~moeq_layer();  // waits for queued device copies, then frees the parameters
  moeq_layer(const moeq_layer&) = delete;
  moeq_layer& operator=(const moeq_layer&) = delete;
  std::string name;
  DLDevice device{kDLCPU, 0};
  std::vector<std::unique_ptr<moeq::ParamRecord>> params;
  std::string current_tensor;  // checkpoint tensor being loaded, named in copy errors
  int64_t bytes_copied_from_host = 0;  // source bytes copy_to_param read from host memory
  // Host byte ranges [first, second), sorted, that stay valid until the layer's device writes
  // are finished (the checkpoint tensors the loader hands over): a copy_to_param from inside one
  // returns before its bytes are packed into staging.
  std::vector<std::pair<const std::byte*, const std::byte*>> stable_sources;
  // Set by the loader for a load onto a device: the weights whose NaN/Inf scan rides on their
  // packing into staging (moeq/device_staging.hpp). Declared before `device_writes`, whose
  // queued packs use it.
  std::shared_ptr<moeq::host::PackScans> pack_scans;
  // Staging of copies to device parameters; declared after `params` so it is destroyed first.
  std::unique_ptr<moeq::host::DeviceWrites> device_writes;
};

namespace moeq::host {

// The table handed to plugins; static for the life of the process.
const moeq_host_api* api();
// Registry used by method_create (delegation) when no load on this thread names one; set by
// whoever owns the registry. A Registry being destroyed unsets itself.
void set_registry(const Registry* registry);
// Unsets `registry` if it is the one set.
void clear_registry_if(const Registry* registry);
// While alive, method_create on this thread delegates through `registry` (load_model scopes
// each layer's method_create with the registry it was given).
class ScopedLoadRegistry {
 public:
  explicit ScopedLoadRegistry(const Registry& registry);
  ~ScopedLoadRegistry();
  ScopedLoadRegistry(const ScopedLoadRegistry&) = delete;
  ScopedLoadRegistry& operator=(const ScopedLoadRegistry&) = delete;

 private:
  const Registry* previous_;
};
// Statuses created and not yet destroyed (leak accounting for tests and conform).
int64_t live_statuses();

// Parameter memory accounting, for tests of "a failed load leaves nothing behind".
// Bytes of parameter storage alive now, over every layer of the process.
int64_t live_param_bytes();
// Parameter allocations attempted since the process started (failed ones included).
int64_t param_allocations();
// Test hook: the n-th parameter allocation from now (1 = the next one) fails with
// OUT_OF_MEMORY, as a real allocation failure would; 0 disarms. Process-wide.
void set_allocation_fault(int64_t n);

using LogSink = std::function<void(moeq_log_level, const std::string& source, const std::string& message)>;
// Replace the log sink (default: warnings and errors to stderr). Returns the previous one.
LogSink set_log_sink(LogSink sink);
void log(moeq_log_level level, const std::string& source, const std::string& message);

std::unique_ptr<moeq_layer> make_layer(std::string name, DLDevice device);

// Loading scratch (scratch_acquire, ABI 1.2): a load onto `device` lends at most `budget` bytes
// of device scratch at once over its layers (see scratch_pool.hpp); the last load to end frees
// the device's idle scratch. No-op on the CPU.
class ScopedLoadScratch {
 public:
  ScopedLoadScratch(DLDevice device, std::size_t budget);
  ~ScopedLoadScratch();
  ScopedLoadScratch(const ScopedLoadScratch&) = delete;
  ScopedLoadScratch& operator=(const ScopedLoadScratch&) = delete;

 private:
  DLDevice device_;
};
// Takes back the scratch `layer` still holds; returns how many blocks (0 on the CPU).
std::size_t release_layer_scratch(moeq_layer& layer);
// Device parameters: queues the copies still staged and waits until the device holds every
// byte written so far (the loader calls it before process_after_loading). No-op on the CPU.
void finish_device_writes(moeq_layer& layer);
// Reads `bytes` of a parameter back to the host, wherever it lives (tests, tools).
void read_param(const moeq_layer& layer, const ParamRecord& param, void* dst, std::size_t bytes);
std::vector<ParamCoverage> coverage(const moeq_layer& layer);
const ParamRecord* find_param(const moeq_layer& layer, const std::string& name);

// Turns a status into (code, message) and destroys it; returns false for NULL.
bool take_status(moeq_status* status, moeq_status_code& code, std::string& message);
// Throws moeq::Error with `context: message` when status is not NULL (and destroys it).
void throw_if_error(moeq_status* status, const std::string& context);

}  // namespace moeq::host
