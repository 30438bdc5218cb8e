#include "device_quantizer.hpp"

#include "lending_pool.hpp"

#include <moeq/sdk/cuda.hpp>
#include <moeq/sdk/kernels.hpp>
#include <moeq/sdk/sdk.hpp>

#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <utility>

namespace moeq::online {
namespace {

namespace cu = ::moeq::sdk::cuda;

constexpr int kThreads = 256;
constexpr int64_t kBlock = 128;

constexpr const char* kKernelFile = "online_quant.cuh";  // kernels/, embedded by moeq_add_plugin

int dt_code(DType d) {
  switch (d) {
    case DType::BF16: return 0;
    case DType::F16: return 1;
    case DType::F32: return 2;
    default: break;
  }
  fail(std::string("online quantization on the device takes BF16, F16 or F32 weights, found ") + dtype_name(d));
}

void* function(void* module, const char* name) {
  cu::Function f = nullptr;
  cu::check(cu::driver().cuModuleGetFunction(&f, module, name), name);
  return f;
}

void launch(void* module, const char* name, unsigned gx, unsigned gy, cu::Stream s, std::vector<void*> args) {
  cu::check(cu::driver().cuLaunchKernel(function(module, name), gx, gy, 1, kThreads, 1, 1, 0, s,
                                                 args.data(), nullptr),
                name);
}

struct Buffer {
  unsigned long long ptr = 0;
  std::size_t capacity = 0;
};

void reserve(Buffer& b, std::size_t bytes, const char* what) {
  if (bytes <= b.capacity) return;
  const cu::Driver& api = cu::driver();
  if (b.ptr != 0) api.cuMemFree(b.ptr);
  b = Buffer{};
  cu::check(api.cuMemAlloc(&b.ptr, bytes), what);
  b.capacity = bytes;
}

}  // namespace

struct DeviceQuantizer::Scratch {
  int ordinal = -1;  // set by the first quantize that uses it
  Buffer src, codes, scales, part, bad;
  ~Scratch() {
    if (ordinal < 0) return;
    try {
      cu::use_device(ordinal);
      for (Buffer* b : {&src, &codes, &scales, &part, &bad})
        if (b->ptr != 0) cu::driver().cuMemFree(b->ptr);
    } catch (...) {  // no driver left to free with
    }
  }
};

namespace {

// One pool of scratch sets per device, shared by every layer being loaded onto it.
LendingPool<DeviceQuantizer::Scratch>& pool(int ordinal) {
  static std::mutex m;
  static std::map<int, std::unique_ptr<LendingPool<DeviceQuantizer::Scratch>>> pools;
  std::lock_guard lock(m);
  auto& p = pools[ordinal];
  if (!p) p = std::make_unique<LendingPool<DeviceQuantizer::Scratch>>();
  return *p;
}

}  // namespace

DeviceQuantizer::Result::~Result() {
  if (scratch_ != nullptr) pool(ordinal_).give_back(scratch_);  // destroyed here if no layer is loading
}

DeviceQuantizer::Result::Result(Result&& o) noexcept
    : codes(o.codes),
      scales(o.scales),
      scale_shape(std::move(o.scale_shape)),
      non_finite_at(o.non_finite_at),
      non_finite_value(o.non_finite_value),
      ordinal_(o.ordinal_),
      scratch_(std::exchange(o.scratch_, nullptr)) {}

std::size_t DeviceQuantizer::pooled_sets(int ordinal) { return pool(ordinal).existing(); }

DeviceQuantizer::DeviceQuantizer(int ordinal, const std::string& scheme) : ordinal_(ordinal), scheme_(scheme) {
  moeq_device_info_args info{};
  info.struct_size = sizeof(info);
  info.device = {kDLCUDA, ordinal};
  sdk::throw_if_error(sdk::host()->device_info(&info));
  const std::string arch = "sm_" + std::to_string(info.sm_major) + std::to_string(info.sm_minor) +
                           (info.sm_major == 9 ? "a" : "");
  moeq_jit_compile_args j{};
  j.struct_size = sizeof(j);
  const char* source = sdk::embedded_kernel_source(kKernelFile);
  if (source == nullptr)
    fail(MOEQ_STATUS_CODE_INTERNAL, std::string("online_quant: kernel source ") + kKernelFile + " is not embedded");
  j.name = "online_quant_kernels";
  j.source = source;
  j.arch = arch.c_str();
  j.plugin_name = "online_quant";
  j.plugin_version = "0.3.0";
  j.device = {kDLCUDA, ordinal};
  sdk::throw_if_error(sdk::host()->jit_compile(&j));
  module_ = j.module;
  pool(ordinal_).attach();
  registered_ = true;
}

DeviceQuantizer::~DeviceQuantizer() { release(); }

void DeviceQuantizer::release() {
  if (!registered_) return;
  registered_ = false;
  pool(ordinal_).detach();  // the idle sets, if this was the last layer loading, freed here
}

DeviceQuantizer::Result DeviceQuantizer::quantize(const DLTensor& t) {
  const sdk::View src(t);
  if (src.ndim() != 2) fail("online quantization on the device takes a 2-D projection");
  const int64_t rows = src.size(0), cols = src.size(1);
  const DLTensor& d = *src.dl();
  const bool contiguous = d.strides == nullptr || (d.strides[1] == 1 && d.strides[0] == cols);
  DType dt = src.dtype();
  dt_code(dt);
  const void* host = static_cast<const char*>(d.data) + d.byte_offset;
  if (!contiguous) {  // e.g. a view into a fused tensor: one pass on the host to F32 rows
    host_rows_.resize(static_cast<std::size_t>(rows * cols));
    src.read_floats(host_rows_.data());
    host = host_rows_.data();
    dt = DType::F32;
  }
  const std::size_t elem = dtype_size(dt), n = static_cast<std::size_t>(rows * cols);
  const int64_t nb = (rows + kBlock - 1) / kBlock, kb = (cols + kBlock - 1) / kBlock;
  const std::size_t scale_count =
      scheme_ == "fp8-block" ? static_cast<std::size_t>(nb * kb) : std::max<std::size_t>(static_cast<std::size_t>(rows), 1);
  if (rows == 0 || cols == 0) fail("online quantization: an empty projection");
  if (!registered_) fail(MOEQ_STATUS_CODE_INTERNAL, "online quantization: quantize after release");
  // One expert in BF16 is three projections of this size: that many sets of 2-byte sources at
  // once, one of 4-byte ones.
  const std::size_t limit = std::max<std::size_t>(1, (3 * 2 * n) / (n * elem));
  Result r;
  r.ordinal_ = ordinal_;
  r.scratch_ = pool(ordinal_).acquire(limit);
  Scratch& sc = *r.scratch_;
  sc.ordinal = ordinal_;
  cu::use_device(ordinal_);
  try {
    reserve(sc.src, n * elem, "cuMemAlloc (online quantization: one projection in its checkpoint dtype)");
    reserve(sc.codes, n, "cuMemAlloc (online quantization: codes)");
    reserve(sc.scales, scale_count * 4, "cuMemAlloc (online quantization: scales)");
    reserve(sc.part, static_cast<std::size_t>(rows) * 4, "cuMemAlloc (online quantization: row maxima)");
    reserve(sc.bad, sizeof(unsigned long long), "cuMemAlloc (online quantization: non-finite flag)");
  } catch (...) {
    pool(ordinal_).forget(std::exchange(r.scratch_, nullptr));
    throw;
  }
  const cu::Driver& api = cu::driver();
  cu::OwnStream stream;
  cu::check(api.cuMemcpyHtoDAsync(sc.src.ptr, host, n * elem, stream.get()), "uploading a projection to quantize");
  const unsigned long long none = ~0ull;
  unsigned long long bad_at = none;
  cu::check(api.cuMemcpyHtoDAsync(sc.bad.ptr, &none, sizeof none, stream.get()), "clearing the non-finite flag");
  r.codes = reinterpret_cast<const void*>(static_cast<uintptr_t>(sc.codes.ptr));
  r.scales = reinterpret_cast<const float*>(static_cast<uintptr_t>(sc.scales.ptr));
  void* w = reinterpret_cast<void*>(static_cast<uintptr_t>(sc.src.ptr));
  int dtc = dt_code(dt), rows_i = static_cast<int>(rows), cols_i = static_cast<int>(cols);
  void* codes = reinterpret_cast<void*>(static_cast<uintptr_t>(sc.codes.ptr));
  void* scales = reinterpret_cast<void*>(static_cast<uintptr_t>(sc.scales.ptr));
  void* part = reinterpret_cast<void*>(static_cast<uintptr_t>(sc.part.ptr));
  void* bad = reinterpret_cast<void*>(static_cast<uintptr_t>(sc.bad.ptr));
  const unsigned R = static_cast<unsigned>(rows);
  if (scheme_ == "int8" || scheme_ == "fp8-channel") {
    int kind = scheme_ == "int8" ? 0 : 1;
    launch(module_, "oq_rows", R, 1, stream.get(), {&w, &dtc, &cols_i, &kind, &codes, &scales, &bad});
    r.scale_shape = {rows, 1};
  } else if (scheme_ == "fp8-tensor") {
    launch(module_, "oq_row_amax", R, 1, stream.get(), {&w, &dtc, &cols_i, &part, &bad});
    launch(module_, "oq_tensor_codes", R, 1, stream.get(), {&w, &dtc, &rows_i, &cols_i, &part, &codes, &scales});
    r.scale_shape = {};
  } else if (scheme_ == "fp8-block") {
    launch(module_, "oq_blocks", static_cast<unsigned>(kb), static_cast<unsigned>(nb), stream.get(),
           {&w, &dtc, &rows_i, &cols_i, &codes, &scales, &bad});
    r.scale_shape = {nb, kb};
  } else {
    fail("online quantization on the device: unknown scheme '" + scheme_ + "'");
  }
  cu::check(api.cuMemcpyDtoHAsync(&bad_at, sc.bad.ptr, sizeof bad_at, stream.get()), "reading the non-finite flag");
  stream.sync("online quantization kernels");
  if (bad_at != none) {
    r.non_finite_at = static_cast<int64_t>(bad_at);
    r.non_finite_value = load_as_float(host, dt, static_cast<std::size_t>(bad_at));
  }
  return r;
}

}  // namespace moeq::online
