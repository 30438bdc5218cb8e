// The host services table (abi.h): statuses, logging, parameters in host or device memory,
// copies with casts (to the device through pinned staging, device_writes.cpp), and the ledger
// of written elements. jit_compile hands over to the JIT service
// (jit_abi.cpp).
#include "device_writes.hpp"

#include <moeq/error.hpp>
#include <moeq/host.hpp>
#include <moeq/jit.hpp>
#include <moeq/registry.hpp>
#include <moeq/scratch_pool.hpp>
#include <moeq/staged_upload.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <iostream>
#include <mutex>
#include <sstream>

struct moeq_status {
  moeq_status_code code;
  std::string message;
};

namespace moeq {

// ------------------------------------------------------------------------ IntervalSet
void IntervalSet::insert(int64_t b, int64_t e) {
  if (b >= e) return;
  auto it = ranges_.upper_bound(b);
  if (it != ranges_.begin()) {
    auto prev = std::prev(it);
    if (prev->second >= b) {
      b = prev->first;
      e = std::max(e, prev->second);
      it = ranges_.erase(prev);
    }
  }
  while (it != ranges_.end() && it->first <= e) {
    e = std::max(e, it->second);
    it = ranges_.erase(it);
  }
  ranges_[b] = e;
}
bool IntervalSet::intersects(int64_t b, int64_t e) const {
  auto it = ranges_.upper_bound(b);
  if (it != ranges_.begin() && std::prev(it)->second > b) return true;
  return it != ranges_.end() && it->first < e;
}
std::vector<std::pair<int64_t, int64_t>> IntervalSet::gaps(int64_t b, int64_t e) const {
  std::vector<std::pair<int64_t, int64_t>> out;
  auto it = ranges_.upper_bound(b);
  if (it != ranges_.begin() && std::prev(it)->second > b) --it;
  for (; it != ranges_.end() && it->first < e && b < e; ++it) {
    if (it->first > b) out.emplace_back(b, it->first);
    b = std::max(b, it->second);
  }
  if (b < e) out.emplace_back(b, e);
  return out;
}
std::vector<std::pair<int64_t, int64_t>> IntervalSet::ranges() const { return {ranges_.begin(), ranges_.end()}; }
void IntervalSet::insert_all(const IntervalSet& other) {
  for (const auto& [b, e] : other.ranges_) insert(b, e);
}
int64_t IntervalSet::covered() const {
  int64_t n = 0;
  for (const auto& [b, e] : ranges_) n += e - b;
  return n;
}
int64_t IntervalSet::first_gap(int64_t n) const {
  int64_t pos = 0;
  for (const auto& [b, e] : ranges_) {
    if (b > pos) return pos;
    pos = std::max(pos, e);
  }
  return pos < n ? pos : -1;
}

namespace host {
namespace {

std::atomic<int64_t> g_live_statuses{0};
// Parameter memory accounting and the fault hook (host.hpp): tests prove that a failed load
// gives back every byte it took.
std::atomic<int64_t> g_live_param_bytes{0};
std::atomic<int64_t> g_param_allocations{0};
std::atomic<int64_t> g_fault_countdown{0};  // > 0: the allocation that takes it to 0 fails
std::atomic<const Registry*> g_registry{nullptr};
// The registry of the load running on this thread (ScopedLoadRegistry): a plugin calls the host
// on the thread the host called it on (abi.h), so concurrent loads through different registries
// each find their own.
thread_local const Registry* t_registry = nullptr;
std::mutex g_log_mutex;
LogSink& sink_ref() {
  static LogSink sink = [](moeq_log_level level, const std::string& source, const std::string& msg) {
    if (level < MOEQ_LOG_LEVEL_WARNING) return;
    std::cerr << "[moeq " << (level == MOEQ_LOG_LEVEL_ERROR ? "error" : "warning") << "] " << source
              << ": " << msg << "\n";
  };
  return sink;
}

std::string index_string(const std::vector<int64_t>& shape, int64_t flat) {
  std::vector<int64_t> idx(shape.size());
  for (int d = static_cast<int>(shape.size()) - 1; d >= 0; --d) {
    idx[d] = shape[d] ? flat % shape[d] : 0;
    flat = shape[d] ? flat / shape[d] : 0;
  }
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < idx.size(); ++i) os << (i ? ", " : "") << idx[i];
  os << ']';
  return os.str();
}

std::string shape_str(const int64_t* s, int n) {
  std::ostringstream os;
  os << '[';
  for (int i = 0; i < n; ++i) os << (i ? ", " : "") << s[i];
  os << ']';
  return os.str();
}

moeq_status* make(moeq_status_code code, const std::string& message) {
  g_live_statuses.fetch_add(1);
  return new moeq_status{code, message};
}

template <class F>
moeq_status* guarded(F&& f) noexcept {
  try {
    f();
    return nullptr;
  } catch (const Error& e) {
    return make(e.code(), e.what());
  } catch (const std::bad_alloc&) {
    return make(MOEQ_STATUS_CODE_OUT_OF_MEMORY, "host allocation failed");
  } catch (const std::exception& e) {
    return make(MOEQ_STATUS_CODE_INTERNAL, e.what());
  }
}

ParamRecord& param_of(moeq_layer* layer, const DLTensor* t) {
  if (layer == nullptr) fail("NULL layer");
  for (auto& p : layer->params)
    if (&p->tensor == t) return *p;
  fail("layer " + layer->name + ": the tensor passed is not a parameter of this layer");
}

// ----------------------------------------------------------------------------- slots
moeq_status* s_status_create(moeq_status_code code, const char* message) {
  return make(code, message ? message : "");
}
moeq_status_code s_status_code(const moeq_status* s) { return s ? s->code : MOEQ_STATUS_CODE_OK; }
const char* s_status_message(const moeq_status* s) { return s ? s->message.c_str() : ""; }
void s_status_destroy(moeq_status* s) {
  if (s == nullptr) return;
  g_live_statuses.fetch_sub(1);
  delete s;
}
void s_log(moeq_log_level level, const char* source, const char* message) {
  log(level, source ? source : "?", message ? message : "");
}

moeq_status* s_device_info(moeq_device_info_args* a) {
  return guarded([&] {
    if (a == nullptr || a->struct_size < MOEQ_STRUCT_SIZE(moeq_device_info_args, memory_bytes))
      fail("device_info: struct_size too small");
    const bool with_arch = a->struct_size >= MOEQ_STRUCT_SIZE(moeq_device_info_args, arch);
    if (with_arch) a->arch[0] = '\0';
    if (a->device.device_type == kDLCPU) {
      a->available = 1;
      a->sm_major = a->sm_minor = a->multiprocessors = 0;
      a->memory_bytes = 0;
      return;
    }
    a->available = 0;
    if (a->device.device_type != kDLCUDA)
      fail(MOEQ_STATUS_CODE_INVALID_ARGUMENT,
           "device_info: device type " + std::to_string(a->device.device_type) + " is neither kDLCPU nor kDLCUDA");
    if (!cuda::available()) fail(MOEQ_STATUS_CODE_UNAVAILABLE, "device_info: " + cuda::unavailable_reason());
    const int n = cuda::device_count();
    if (a->device.device_id < 0 || a->device.device_id >= n)
      fail(MOEQ_STATUS_CODE_NOT_FOUND, "device_info: cuda:" + std::to_string(a->device.device_id) + " does not exist (" +
                                           std::to_string(n) + " CUDA devices)");
    const cuda::DeviceProperties p = cuda::device_properties(a->device.device_id);
    a->available = 1;
    a->sm_major = p.sm_major;
    a->sm_minor = p.sm_minor;
    a->multiprocessors = p.multiprocessors;
    a->memory_bytes = static_cast<int64_t>(p.total_memory);
    if (with_arch) {
      const std::string arch = jit::arch_for(p.sm_major, p.sm_minor);
      std::snprintf(a->arch, sizeof a->arch, "%s", arch.c_str());
    }
  });
}

// ---- loading scratch (1.2): one pool per device, see scratch_pool.hpp
ScratchPool& scratch_pool(int ordinal) {
  static std::mutex m;
  static std::map<int, std::unique_ptr<ScratchPool>> pools;  // never destroyed: the driver may be gone at exit
  std::lock_guard lock(m);
  auto& p = pools[ordinal];
  if (!p)
    p.reset(new ScratchPool(
        [ordinal](std::size_t bytes) {
          const cuda::DriverApi& d = cuda::require();
          cuda::use_primary_context(ordinal);
          cuda::CUdeviceptr ptr = 0;
          const cuda::CUresult r = d.cuMemAlloc_v2(&ptr, bytes);
          if (r != cuda::kSuccess)
            fail(MOEQ_STATUS_CODE_OUT_OF_MEMORY, "cuMemAlloc of " + std::to_string(bytes) + " bytes on cuda:" +
                                                     std::to_string(ordinal) + ": " + cuda::describe(&d, r));
          return static_cast<uintptr_t>(ptr);
        },
        [ordinal](uintptr_t address) {
          if (!cuda::available()) return;
          cuda::use_primary_context(ordinal);
          cuda::require().cuMemFree_v2(static_cast<cuda::CUdeviceptr>(address));
        }));
  return *p;
}

moeq_status* s_scratch_acquire(moeq_scratch_args* a) {
  return guarded([&] {
    if (a == nullptr || a->struct_size < MOEQ_STRUCT_SIZE(moeq_scratch_args, data))
      fail("scratch_acquire: struct_size too small");
    a->data = nullptr;
    if (a->layer == nullptr) fail("scratch_acquire: NULL layer");
    const moeq_layer& layer = *a->layer;
    const std::string purpose = a->purpose ? a->purpose : "scratch";
    if (layer.device.device_type != kDLCUDA)
      fail("scratch_acquire (" + purpose + "): layer " + layer.name +
           " is not on a CUDA device; host memory for a CPU layer is the plugin's own");
    if (a->bytes == 0) fail("scratch_acquire (" + purpose + "): 0 bytes asked for");
    if (!cuda::available())
      fail(MOEQ_STATUS_CODE_UNAVAILABLE, "scratch_acquire (" + purpose + "): " + cuda::unavailable_reason());
    try {
      const uintptr_t p = scratch_pool(layer.device.device_id).acquire(&layer, a->bytes);
      a->data = reinterpret_cast<void*>(p);
    } catch (const Error& e) {
      fail(e.code(), "scratch_acquire of " + std::to_string(a->bytes) + " bytes for " + purpose + " (layer " +
                         layer.name + "): " + e.what());
    }
  });
}

void s_scratch_release(moeq_layer* layer, void* data) {
  if (layer == nullptr || data == nullptr || layer->device.device_type != kDLCUDA) return;
  try {
    scratch_pool(layer->device.device_id).release(layer, reinterpret_cast<uintptr_t>(data));
  } catch (...) {  // never throws across the ABI
  }
}

moeq_status* s_param_create(moeq_param_create_args* a) {
  return guarded([&] {
    if (a == nullptr || a->struct_size < MOEQ_STRUCT_SIZE(moeq_param_create_args, tensor))
      fail("param_create: struct_size too small");
    if (a->layer == nullptr || a->name == nullptr || a->shape == nullptr) fail("param_create: NULL argument");
    moeq_layer& layer = *a->layer;
    std::string name = a->name;
    if (name.empty()) fail("param_create: empty parameter name");
    for (auto& p : layer.params)
      if (p->name == name) fail("layer " + layer.name + ": parameter '" + name + "' declared twice");
    if (a->ndim < 1 || a->ndim > 8) fail("param_create " + name + ": ndim must be 1..8, found " + std::to_string(a->ndim));
    auto dt = from_dl(a->dtype);
    if (!dt) fail("param_create " + name + ": unsupported dtype");
    const bool on_device = layer.device.device_type == kDLCUDA;
    if (layer.device.device_type != kDLCPU && !on_device)
      fail(MOEQ_STATUS_CODE_UNIMPLEMENTED, "param_create " + name + ": layer " + layer.name + " is on device type " +
                                               std::to_string(layer.device.device_type) + "; parameters live on kDLCPU or kDLCUDA");
    if (on_device && !cuda::available())
      fail(MOEQ_STATUS_CODE_UNAVAILABLE, "param_create " + name + ": layer " + layer.name + " is on cuda:" +
                                             std::to_string(layer.device.device_id) + ", but " + cuda::unavailable_reason());
    auto rec = std::make_unique<ParamRecord>();
    rec->name = name;
    rec->dtype = *dt;
    rec->shape.assign(a->shape, a->shape + a->ndim);
    rec->numel = 1;
    for (int64_t s : rec->shape) {
      if (s < 0 || (s > 0 && rec->numel > (int64_t{1} << 40) / s))
        fail("param_create " + name + ": shape " + shape_str(a->shape, a->ndim) + " is out of range");
      rec->numel *= s;
    }
    rec->strides.assign(rec->shape.size(), 1);
    for (int d = a->ndim - 2; d >= 0; --d) rec->strides[d] = rec->strides[d + 1] * rec->shape[d + 1];
    const size_t bytes = static_cast<size_t>(rec->numel) * dtype_size(*dt);
    g_param_allocations.fetch_add(1);
    for (int64_t left = g_fault_countdown.load(); left > 0;) {
      if (!g_fault_countdown.compare_exchange_weak(left, left - 1)) continue;
      if (left == 1)
        fail(MOEQ_STATUS_CODE_OUT_OF_MEMORY, "param_create " + name + ": " + std::to_string(bytes) +
                                                 " bytes: allocation failed (injected fault)");
      break;
    }
    if (on_device) {
      rec->device_ptr = device_allocate(layer.device.device_id, bytes, "param_create " + name);
      rec->device_ordinal = layer.device.device_id;
    } else {
      rec->storage.assign(bytes, std::byte{0});
    }
    rec->accounted_bytes = static_cast<int64_t>(bytes);
    g_live_param_bytes.fetch_add(rec->accounted_bytes);
    rec->tensor.data = on_device ? reinterpret_cast<void*>(static_cast<uintptr_t>(rec->device_ptr))
                                 : static_cast<void*>(rec->storage.data());
    rec->tensor.device = layer.device;
    rec->tensor.ndim = a->ndim;
    rec->tensor.dtype = a->dtype;
    rec->tensor.shape = rec->shape.data();
    rec->tensor.strides = rec->strides.data();
    rec->tensor.byte_offset = 0;
    a->tensor = &rec->tensor;
    layer.params.push_back(std::move(rec));
  });
}

// Calls fn(flat_dst_index, src_element_pointer) for every element of the region.
template <class Fn>
void for_each_element(const ParamRecord& p, const std::vector<int64_t>& off, const std::vector<int64_t>& ext,
                      const std::byte* src_base, const std::vector<int64_t>& src_strides, size_t src_elem, Fn&& fn) {
  const int nd = static_cast<int>(ext.size());
  std::vector<int64_t> idx(nd, 0);
  int64_t total = 1;
  for (int64_t e : ext) total *= e;
  for (int64_t n = 0; n < total; ++n) {
    int64_t dst = 0, src = 0;
    for (int d = 0; d < nd; ++d) {
      dst += (off[d] + idx[d]) * p.strides[d];
      src += idx[d] * src_strides[d];
    }
    fn(dst, src_base + src * static_cast<int64_t>(src_elem));
    for (int d = nd - 1; d >= 0; --d) {
      if (++idx[d] < ext[d]) break;
      idx[d] = 0;
    }
  }
}

// The region row by row along its innermost dim (contiguous in the parameter):
// fn(first destination element, first source element, elements in the row, source stride of
// the row in elements). Per-row rather than per-element so that same-dtype rows are one memcpy.
template <class Fn>
void for_each_row(const ParamRecord& p, const std::vector<int64_t>& off, const std::vector<int64_t>& ext,
                  const std::byte* src_base, const std::vector<int64_t>& src_strides, size_t src_elem, Fn&& fn) {
  const int nd = static_cast<int>(ext.size());
  const int64_t len = ext[nd - 1];
  std::vector<int64_t> idx(nd - 1, 0);
  int64_t rows = 1;
  for (int d = 0; d + 1 < nd; ++d) rows *= ext[d];
  for (int64_t n = 0; n < rows && len > 0; ++n) {
    int64_t dst = off[nd - 1] * p.strides[nd - 1], src = 0;
    for (int d = 0; d + 1 < nd; ++d) {
      dst += (off[d] + idx[d]) * p.strides[d];
      src += idx[d] * src_strides[d];
    }
    fn(dst, src_base + src * static_cast<int64_t>(src_elem), len, src_strides[nd - 1]);
    for (int d = nd - 2; d >= 0; --d) {
      if (++idx[d] < ext[d]) break;
      idx[d] = 0;
    }
  }
}

// Flat runs of a region: contiguous along the innermost dims that the region spans fully.
template <class Fn>
void for_each_run(const ParamRecord& p, const std::vector<int64_t>& off, const std::vector<int64_t>& ext, Fn&& fn) {
  const int nd = static_cast<int>(ext.size());
  int inner = nd;  // dims [inner, nd) are spanned fully, except maybe dim inner-1 partially
  int64_t run = 1;
  while (inner > 0 && off[inner - 1] == 0 && ext[inner - 1] == p.shape[inner - 1]) run *= ext[--inner];
  if (inner > 0) run *= ext[--inner];
  std::vector<int64_t> idx(inner, 0);
  int64_t outer = 1;
  for (int d = 0; d < inner; ++d) outer *= ext[d];
  for (int64_t n = 0; n < outer; ++n) {
    int64_t start = 0;
    for (int d = 0; d < inner; ++d) start += (off[d] + idx[d]) * p.strides[d];
    if (inner < nd) start += off[inner] * p.strides[inner];
    fn(start, start + run);
    for (int d = inner - 1; d >= 0; --d) {
      if (++idx[d] < ext[d]) break;
      idx[d] = 0;
    }
  }
}

// Region of `p` at `dst_offset` with the source's shape aligned to the trailing dims.
std::pair<std::vector<int64_t>, std::vector<int64_t>> region(const ParamRecord& p, const int64_t* dst_offset,
                                                             const int64_t* src_shape, int src_ndim,
                                                             const std::string& what) {
  const int nd = static_cast<int>(p.shape.size());
  if (dst_offset == nullptr) fail(what + ": NULL dst_offset");
  if (src_ndim > nd)
    fail(what + ": source rank " + std::to_string(src_ndim) + " exceeds parameter rank " + std::to_string(nd));
  std::vector<int64_t> off(dst_offset, dst_offset + nd), ext(nd, 1);
  for (int i = 0; i < src_ndim; ++i) ext[nd - src_ndim + i] = src_shape[i];
  for (int d = 0; d < nd; ++d)
    if (off[d] < 0 || ext[d] < 0 || off[d] + ext[d] > p.shape[d])
      fail(what + ": region at " + shape_str(off.data(), nd) + " of extent " + shape_str(ext.data(), nd) +
           " lies outside parameter '" + p.name + "' of shape " + shape_str(p.shape.data(), nd));
  return {off, ext};
}

void check_not_written(ParamRecord& p, const std::vector<int64_t>& off, const std::vector<int64_t>& ext,
                       const std::string& what) {
  for_each_run(p, off, ext, [&](int64_t b, int64_t e) {
    if (!p.written.intersects(b, e) && !p.defaulted.intersects(b, e)) return;
    std::string by = "a fill";
    for (const auto& [r, t] : p.writers)
      if (r.first < e && b < r.second) by = "tensor " + t;
    fail(what + ": parameter '" + p.name + "' region at " + index_string(p.shape, b) +
         " was already written by " + by);
  });
}

// Host parameter: rows copied (same dtype, contiguous source: one memcpy) or cast.
void copy_rows(ParamRecord& p, const std::vector<int64_t>& off, const std::vector<int64_t>& ext, const std::byte* base,
               const std::vector<int64_t>& sstr, DType sdt) {
  const bool same = sdt == p.dtype;
  const size_t selem = dtype_size(sdt), delem = dtype_size(p.dtype);
  auto* dst = p.storage.data();
  for_each_row(p, off, ext, base, sstr, selem, [&](int64_t d, const std::byte* src, int64_t len, int64_t stride) {
    if (same && stride == 1) {
      std::memcpy(dst + d * static_cast<int64_t>(delem), src, static_cast<size_t>(len) * delem);
      return;
    }
    const int64_t step = stride * static_cast<int64_t>(selem);
    for (int64_t j = 0; j < len; ++j, src += step) {
      if (same)
        std::memcpy(dst + (d + j) * static_cast<int64_t>(delem), src, delem);
      else
        store_from_float(dst, p.dtype, static_cast<size_t>(d + j), load_as_float(src, sdt, 0));
    }
  });
}

DeviceWrites& writes_of(moeq_layer& layer) {
  if (!layer.device_writes) layer.device_writes = std::make_unique<DeviceWrites>(layer.device.device_id);
  return *layer.device_writes;
}

// Elements a view spans from its first (its largest offset + 1); -1 when a stride is negative.
int64_t span_elements(const DLTensor& s) {
  int64_t span = 1;
  for (int i = 0; i < s.ndim; ++i) {
    if (s.strides[i] < 0) return -1;
    span += (s.shape[i] > 0 ? s.shape[i] - 1 : 0) * s.strides[i];
  }
  return span;
}

// Whether the host source [lo, hi) lies inside one of the layer's stable ranges (bytes the
// loader keeps mapped until the layer's writes are finished).
bool stable_source(const moeq_layer& layer, const std::byte* lo, const std::byte* hi) {
  const auto& r = layer.stable_sources;
  auto it = std::upper_bound(r.begin(), r.end(), lo,
                             [](const std::byte* v, const std::pair<const std::byte*, const std::byte*>& e) {
                               return v < e.first;
                             });
  if (it == r.begin()) return false;
  --it;
  return lo >= it->first && hi <= it->second;
}

// Device parameter: rows (merged where both sides continue) packed and cast into pinned staging
// by the task pool and queued to the device (moeq/device_staging.hpp); finish_device_writes
// waits for them. `base` NULL with zero strides and `fill` set: every element is the `fill`
// bytes (param_fill). `stable`: the source stays valid until the layer's writes are finished.
void stage_rows(moeq_layer& layer, ParamRecord& p, const std::vector<int64_t>& off, const std::vector<int64_t>& ext,
                const std::byte* base, const std::vector<int64_t>& sstr, DType sdt, bool stable,
                const std::string& what, const std::byte* fill = nullptr) {
  const bool same = sdt == p.dtype;
  const size_t selem = dtype_size(sdt), delem = dtype_size(p.dtype);
  std::vector<StagingRun> runs;
  for_each_row(p, off, ext, base, sstr, selem, [&](int64_t d, const std::byte* src, int64_t len, int64_t stride) {
    const uint64_t dst = p.device_ptr + static_cast<uint64_t>(d) * delem;
    if (len == 1) stride = 1;
    if (!runs.empty()) {
      StagingRun& b = runs.back();
      const bool contiguous_dst = b.dst + static_cast<uint64_t>(b.count) * delem == dst;
      if (fill != nullptr && contiguous_dst) {
        b.count += len;
        return;
      }
      if (fill == nullptr && same && stride == 1 && b.stride == 1 && contiguous_dst &&
          b.src + b.count * static_cast<int64_t>(selem) == src) {
        b.count += len;
        return;
      }
    }
    StagingRun r;
    r.dst = dst;
    r.src = fill != nullptr ? nullptr : src;
    r.count = len;
    r.stride = stride;
    r.src_dtype = sdt;
    r.dst_dtype = p.dtype;
    r.fill = fill != nullptr;
    if (fill != nullptr) std::memcpy(r.pattern.data(), fill, std::min(delem, r.pattern.size()));
    runs.push_back(r);
  });
  // A run of the layer's checkpoint weights is scanned as it is packed (the loader checks what
  // no pack scanned); set per merged run, which may not cross out of one source.
  if (layer.pack_scans && fill == nullptr && same)
    for (StagingRun& r : runs)
      if (r.stride == 1 || r.count == 1)
        r.scan = layer.pack_scans->covers(r.src, r.count, sdt) ? layer.pack_scans.get() : nullptr;
  writes_of(layer).write(std::move(runs), stable || fill != nullptr, what);
}

// Device source into a device parameter (same dtype): contiguous rows, merged where both
// sides continue, copied device to device and waited for.
void copy_device_rows(moeq_layer& layer, ParamRecord& p, const std::vector<int64_t>& off,
                      const std::vector<int64_t>& ext, const std::byte* base, const std::vector<int64_t>& sstr,
                      const std::string& what) {
  const size_t elem = dtype_size(p.dtype);
  std::vector<DeviceWrites::DevicePiece> pieces;
  for_each_row(p, off, ext, base, sstr, elem, [&](int64_t d, const std::byte* src, int64_t len, int64_t stride) {
    if (stride != 1 && len > 1) fail(what + ": a device source needs contiguous rows (innermost stride 1), found " +
                                     std::to_string(stride));
    const cuda::CUdeviceptr dst = p.device_ptr + static_cast<uint64_t>(d) * elem;
    const cuda::CUdeviceptr from = reinterpret_cast<uintptr_t>(src);
    const size_t bytes = static_cast<size_t>(len) * elem;
    if (!pieces.empty() && pieces.back().dst + pieces.back().bytes == dst && pieces.back().src + pieces.back().bytes == from)
      pieces.back().bytes += bytes;
    else
      pieces.push_back({dst, from, bytes});
  });
  writes_of(layer).copy_from_device(pieces);
}

moeq_status* s_copy_to_param(moeq_copy_to_param_args* a) {
  return guarded([&] {
    if (a == nullptr || a->struct_size < MOEQ_STRUCT_SIZE(moeq_copy_to_param_args, flags))
      fail("copy_to_param: struct_size too small");
    if (a->source == nullptr) fail("copy_to_param: NULL source");
    ParamRecord& p = param_of(a->layer, a->param);
    const std::string what = a->layer->current_tensor.empty() ? "copy_to_param" : "tensor " + a->layer->current_tensor;
    const DLTensor& s = *a->source;
    const bool device_source = s.device.device_type == kDLCUDA;
    if (s.device.device_type != kDLCPU && !device_source)
      fail(what + ": source must be host memory (or, since ABI 1.1, memory on the parameter's CUDA device)");
    if (s.ndim < 0 || s.ndim > 8 || (s.ndim > 0 && (s.shape == nullptr || s.strides == nullptr)))
      fail(what + ": source view needs shape and strides");
    auto sdt = from_dl(s.dtype);
    if (!sdt) fail(what + ": source has an unsupported dtype");
    auto [off, ext] = region(p, a->dst_offset, s.shape, s.ndim, what);
    const bool same = *sdt == p.dtype;
    if (!same && !(is_float(*sdt) && *sdt != DType::F8_E4M3 && is_float(p.dtype) && p.dtype != DType::F8_E4M3))
      fail(what + ": cannot cast " + std::string(dtype_name(*sdt)) + " into parameter '" + p.name + "' of dtype " +
           dtype_name(p.dtype));
    if (device_source) {
      if (p.device_ptr == 0 || s.device.device_id != p.device_ordinal)
        fail(what + ": a source on cuda:" + std::to_string(s.device.device_id) +
             " needs a parameter on that device; parameter '" + p.name + "' is " +
             (p.device_ptr == 0 ? std::string("in host memory") : "on cuda:" + std::to_string(p.device_ordinal)));
      if (!same)
        fail(what + ": a device source is copied, not cast: source " + dtype_name(*sdt) + ", parameter '" + p.name +
             "' " + dtype_name(p.dtype));
    }
    check_not_written(p, off, ext, what);
    const int nd = static_cast<int>(p.shape.size());
    std::vector<int64_t> sstr(nd, 0);
    for (int i = 0; i < s.ndim; ++i) sstr[nd - s.ndim + i] = s.strides[i];
    const auto* base = static_cast<const std::byte*>(s.data) + s.byte_offset;
    const size_t selem = dtype_size(*sdt);
    // A device source is checked on a host copy of the bytes its view spans.
    std::vector<std::byte> host_copy;
    const std::byte* check_base = base;
    if (device_source && (a->flags & MOEQ_COPY_CHECK_SCALE)) {
      const int64_t span = span_elements(s);
      if (span < 0) fail(what + ": a device source needs non-negative strides");
      host_copy.resize(static_cast<size_t>(span) * selem);
      device_read(p.device_ordinal, host_copy.data(), reinterpret_cast<uintptr_t>(base), host_copy.size());
      check_base = host_copy.data();
    }
    if (a->flags & MOEQ_COPY_CHECK_SCALE) {
      int64_t i = 0;
      for_each_element(p, off, ext, check_base, sstr, selem, [&](int64_t, const std::byte* src) {
        float v = load_as_float(src, *sdt, 0);
        if (!std::isfinite(v) || v <= 0.0f) {
          std::vector<int64_t> sshape(s.shape, s.shape + s.ndim);
          fail(what + ": scale element " + index_string(sshape, i) + " is " + std::to_string(v) +
               "; scales must be finite and > 0");
        }
        ++i;
      });
    }
    if (!device_source) {
      int64_t n = 1;
      for (int i = 0; i < s.ndim; ++i) n *= s.shape[i];
      a->layer->bytes_copied_from_host += n * static_cast<int64_t>(selem);
    }
    if (device_source) {
      copy_device_rows(*a->layer, p, off, ext, base, sstr, what);
    } else if (p.device_ptr != 0) {
      // The checkpoint's own bytes (a view into the handed source) are packed on the task
      // pool after this call returns; a plugin's buffer is packed before.
      const int64_t span = span_elements(s);
      const bool stable = span >= 0 && stable_source(*a->layer, base, base + span * static_cast<int64_t>(selem));
      stage_rows(*a->layer, p, off, ext, base, sstr, *sdt, stable, what);
    } else {
      copy_rows(p, off, ext, base, sstr, *sdt);
    }
    for_each_run(p, off, ext, [&](int64_t b, int64_t e) {
      p.written.insert(b, e);
      p.writers.push_back({{b, e}, a->layer->current_tensor.empty() ? "(plugin copy)" : a->layer->current_tensor});
    });
  });
}

moeq_status* s_param_fill(moeq_param_fill_args* a) {
  return guarded([&] {
    if (a == nullptr || a->struct_size < MOEQ_STRUCT_SIZE(moeq_param_fill_args, reason))
      fail("param_fill: struct_size too small");
    ParamRecord& p = param_of(a->layer, a->param);
    if (a->extent == nullptr) fail("param_fill: NULL extent");
    if (a->reason == nullptr || a->reason[0] == '\0') fail("param_fill '" + p.name + "': a reason is required");
    auto [off, ext] = region(p, a->dst_offset, a->extent, static_cast<int>(p.shape.size()), "param_fill");
    check_not_written(p, off, ext, "param_fill");
    std::vector<int64_t> zeros(p.shape.size(), 0);
    if (p.device_ptr != 0) {
      std::byte value[8] = {};
      store_from_float(value, p.dtype, 0, static_cast<float>(a->value));
      stage_rows(*a->layer, p, off, ext, nullptr, zeros, p.dtype, true, "param_fill '" + p.name + "'", value);
    } else {
      for_each_element(p, off, ext, nullptr, zeros, 0, [&](int64_t d, const std::byte*) {
        store_from_float(p.storage.data(), p.dtype, static_cast<size_t>(d), static_cast<float>(a->value));
      });
    }
    for_each_run(p, off, ext, [&](int64_t b, int64_t e) { p.defaulted.insert(b, e); });
    p.default_reasons.push_back(a->reason);
  });
}

moeq_status* s_jit_compile(moeq_jit_compile_args* a) {
  return guarded([&] {
    if (a == nullptr || a->struct_size < MOEQ_STRUCT_SIZE(moeq_jit_compile_args, cubin_size))
      fail("jit_compile: struct_size too small");
    jit::serve_abi_request(*a);
  });
}

moeq_status* s_method_create(moeq_host_method_create_args* a) {
  return guarded([&] {
    if (a == nullptr || a->struct_size < MOEQ_STRUCT_SIZE(moeq_host_method_create_args, api))
      fail("method_create: struct_size too small");
    const Registry* reg = t_registry != nullptr ? t_registry : g_registry.load();
    if (reg == nullptr)
      fail(MOEQ_STATUS_CODE_FAILED_PRECONDITION,
           "method_create: no registry to find the delegate plugin in (load through moeq::load_model, or call "
           "moeq::host::set_registry with the Registry that holds it)");
    const LoadedPlugin* p = reg->find(a->plugin_name ? a->plugin_name : "");
    if (p == nullptr)
      fail(MOEQ_STATUS_CODE_NOT_FOUND,
           std::string("method_create: plugin '") + (a->plugin_name ? a->plugin_name : "") + "' is not loaded");
    moeq_status* st = p->api->method_create(a->create_args);
    if (st != nullptr) {
      moeq_status_code code = st->code;
      std::string msg = st->message;
      s_status_destroy(st);
      fail(code, std::string(a->plugin_name) + ": " + msg);
    }
    a->api = p->api;
  });
}

const moeq_host_api kApi = {
    sizeof(moeq_host_api), MOEQ_ABI_MAJOR, MOEQ_ABI_MINOR, &s_status_create, &s_status_code,
    &s_status_message,     &s_status_destroy, &s_log,      &s_device_info,   &s_param_create,
    &s_copy_to_param,      &s_param_fill,     &s_jit_compile, &s_method_create, &s_scratch_acquire,
    &s_scratch_release};

}  // namespace

const moeq_host_api* api() { return &kApi; }

ScopedLoadScratch::ScopedLoadScratch(DLDevice device, std::size_t budget) : device_(device) {
  if (device_.device_type == kDLCUDA) scratch_pool(device_.device_id).begin_load(budget);
}
ScopedLoadScratch::~ScopedLoadScratch() {
  if (device_.device_type == kDLCUDA) scratch_pool(device_.device_id).end_load();
}

std::size_t release_layer_scratch(moeq_layer& layer) {
  if (layer.device.device_type != kDLCUDA) return 0;
  return scratch_pool(layer.device.device_id).release_all(&layer);
}

int64_t live_param_bytes() { return g_live_param_bytes.load(); }
int64_t param_allocations() { return g_param_allocations.load(); }
void set_allocation_fault(int64_t n) { g_fault_countdown.store(n > 0 ? n : 0); }
void set_registry(const Registry* r) { g_registry.store(r); }
ScopedLoadRegistry::ScopedLoadRegistry(const Registry& r) : previous_(t_registry) { t_registry = &r; }
ScopedLoadRegistry::~ScopedLoadRegistry() { t_registry = previous_; }
void clear_registry_if(const Registry* r) {
  const Registry* expected = r;
  g_registry.compare_exchange_strong(expected, nullptr);
}
int64_t live_statuses() { return g_live_statuses.load(); }

LogSink set_log_sink(LogSink sink) {
  std::lock_guard<std::mutex> lock(g_log_mutex);
  LogSink old = std::move(sink_ref());
  sink_ref() = std::move(sink);
  return old;
}
void log(moeq_log_level level, const std::string& source, const std::string& message) {
  std::lock_guard<std::mutex> lock(g_log_mutex);
  if (sink_ref()) sink_ref()(level, source, message);
}

void finish_device_writes(moeq_layer& layer) {
  if (!layer.device_writes) return;
  std::unique_ptr<DeviceWrites> w = std::move(layer.device_writes);
  w->finish();  // on a throw the writer still waits and returns its staging on destruction
}

void read_param(const moeq_layer& layer, const ParamRecord& p, void* dst, std::size_t bytes) {
  const std::size_t have = static_cast<std::size_t>(p.numel) * dtype_size(p.dtype);
  if (bytes > have)
    fail("read_param " + p.name + ": " + std::to_string(bytes) + " bytes asked, the parameter has " + std::to_string(have));
  if (layer.device_writes) fail(MOEQ_STATUS_CODE_FAILED_PRECONDITION, "read_param " + p.name + ": device writes not finished");
  if (p.device_ptr != 0)
    device_read(p.device_ordinal, dst, p.device_ptr, bytes);
  else
    std::memcpy(dst, p.storage.data(), bytes);
}

std::unique_ptr<moeq_layer> make_layer(std::string name, DLDevice device) {
  auto l = std::make_unique<moeq_layer>();
  l->name = std::move(name);
  l->device = device;
  return l;
}

std::vector<ParamCoverage> coverage(const moeq_layer& layer) {
  std::vector<ParamCoverage> out;
  for (const auto& p : layer.params) {
    ParamCoverage c;
    c.name = p->name;
    c.shape = p->shape;
    c.dtype = dtype_name(p->dtype);
    c.numel = p->numel;
    c.written = p->written.covered();
    c.defaulted = p->defaulted.covered();
    IntervalSet both = p->written;
    both.insert_all(p->defaulted);
    const int64_t gap = both.first_gap(p->numel);
    if (gap >= 0) c.first_gap = index_string(p->shape, gap);
    out.push_back(std::move(c));
  }
  return out;
}

const ParamRecord* find_param(const moeq_layer& layer, const std::string& name) {
  for (const auto& p : layer.params)
    if (p->name == name) return p.get();
  return nullptr;
}

bool take_status(moeq_status* s, moeq_status_code& code, std::string& message) {
  if (s == nullptr) return false;
  code = s->code;
  message = s->message;
  s_status_destroy(s);
  return true;
}

void throw_if_error(moeq_status* s, const std::string& context) {
  moeq_status_code code;
  std::string msg;
  if (take_status(s, code, msg)) throw Error(code, context + ": " + msg);
}

}  // namespace host

ParamRecord::~ParamRecord() {
  host::device_release(device_ordinal, device_ptr);
  host::g_live_param_bytes.fetch_sub(accounted_bytes);
}

}  // namespace moeq

moeq_layer::moeq_layer() = default;
moeq_layer::~moeq_layer() = default;

namespace moeq {

}  // namespace moeq
