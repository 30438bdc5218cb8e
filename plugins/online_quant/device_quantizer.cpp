#include "device_quantizer.hpp"

#include <moeq/sdk/cuda.hpp>
#include <moeq/sdk/kernels.hpp>
#include <moeq/sdk/sdk.hpp>

#include <algorithm>
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

}  // namespace

DeviceQuantizer::Result::~Result() {
  if (scratch_ != nullptr) sdk::host()->scratch_release(layer_, scratch_);
}

DeviceQuantizer::Result::Result(Result&& o) noexcept
    : codes(o.codes),
      scales(o.scales),
      scale_shape(std::move(o.scale_shape)),
      non_finite_at(o.non_finite_at),
      non_finite_value(o.non_finite_value),
      layer_(o.layer_),
      scratch_(std::exchange(o.scratch_, nullptr)) {}

DeviceQuantizer::DeviceQuantizer(int ordinal, const std::string& scheme) : ordinal_(ordinal), scheme_(scheme) {
  moeq_jit_compile_args j{};
  j.struct_size = sizeof(j);
  const char* source = sdk::embedded_kernel_source(kKernelFile);
  if (source == nullptr)
    fail(MOEQ_STATUS_CODE_INTERNAL, std::string("online_quant: kernel source ") + kKernelFile + " is not embedded");
  j.name = "online_quant_kernels";
  j.source = source;
  j.arch = nullptr;  // the device's exact arch, as the host names it
  j.plugin_name = "online_quant";
  j.plugin_version = "0.4.0";
  j.device = {kDLCUDA, ordinal};
  sdk::throw_if_error(sdk::host()->jit_compile(&j));
  module_ = j.module;
}

DeviceQuantizer::Result DeviceQuantizer::quantize(const DLTensor& t, moeq_layer* layer) {
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
  // One scratch block from the host (it bounds what all loading layers hold on the device at
  // once): the source, its codes, scales, row maxima and the non-finite flag, 256-byte aligned.
  auto up = [](std::size_t v) { return (v + 255) / 256 * 256; };
  struct {
    std::size_t src, codes, scales, part, bad, end;
  } at{};
  at.src = 0;
  at.codes = up(n * elem);
  at.scales = at.codes + up(n);
  at.part = at.scales + up(scale_count * 4);
  at.bad = at.part + up(static_cast<std::size_t>(rows) * 4);
  at.end = at.bad + 256;
  moeq_scratch_args sa{};
  sa.struct_size = sizeof sa;
  sa.layer = layer;
  sa.bytes = at.end;
  sa.purpose = "online quantization of one projection";
  sdk::throw_if_error(sdk::host()->scratch_acquire(&sa));
  Result r;
  r.layer_ = layer;
  r.scratch_ = sa.data;
  const unsigned long long base = reinterpret_cast<uintptr_t>(sa.data);
  const unsigned long long d_src = base + at.src, d_codes = base + at.codes, d_scales = base + at.scales,
                           d_part = base + at.part, d_bad = base + at.bad;
  cu::use_device(ordinal_);
  const cu::Driver& api = cu::driver();
  cu::OwnStream stream;
  cu::check(api.cuMemcpyHtoDAsync(d_src, host, n * elem, stream.get()), "uploading a projection to quantize");
  const unsigned long long none = ~0ull;
  unsigned long long bad_at = none;
  cu::check(api.cuMemcpyHtoDAsync(d_bad, &none, sizeof none, stream.get()), "clearing the non-finite flag");
  r.codes = reinterpret_cast<const void*>(static_cast<uintptr_t>(d_codes));
  r.scales = reinterpret_cast<const float*>(static_cast<uintptr_t>(d_scales));
  void* w = reinterpret_cast<void*>(static_cast<uintptr_t>(d_src));
  int dtc = dt_code(dt), rows_i = static_cast<int>(rows), cols_i = static_cast<int>(cols);
  void* codes = reinterpret_cast<void*>(static_cast<uintptr_t>(d_codes));
  void* scales = reinterpret_cast<void*>(static_cast<uintptr_t>(d_scales));
  void* part = reinterpret_cast<void*>(static_cast<uintptr_t>(d_part));
  void* bad = reinterpret_cast<void*>(static_cast<uintptr_t>(d_bad));
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
  cu::check(api.cuMemcpyDtoHAsync(&bad_at, d_bad, sizeof bad_at, stream.get()), "reading the non-finite flag");
  stream.sync("online quantization kernels");
  if (bad_at != none) {
    r.non_finite_at = static_cast<int64_t>(bad_at);
    r.non_finite_value = load_as_float(host, dt, static_cast<std::size_t>(bad_at));
  }
  return r;
}

}  // namespace moeq::online
