// Online quantization on the device (a layer on kDLCUDA, host ABI >= 1.2): one expert
// projection at a time is uploaded in its checkpoint dtype (BF16/F16/F32), quantized by the
// plugin's kernels into device scratch, and handed to compressed_tensors as device views,
// which the host copies device to device into the parameters. The codes and scales are the
// same bytes the CPU schemes (online_scheme.cpp) produce: the same absmax, the same division,
// round-half-even to int8 and round-to-nearest-even saturating to e4m3.
//
// Device memory: each projection's scratch (its source in the checkpoint dtype, codes, scales,
// row maxima) is one block lent by the host (ABI 1.2 scratch_acquire), held by the Result until
// the quantized projection has been copied into the parameters; the host bounds what every
// loading layer holds on the device at once (by default one bf16 expert + 64 MiB).
#pragma once
#include <moeq/abi.h>
#include <moeq/dtype.hpp>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace moeq::online {

class DeviceQuantizer {
 public:
  // `scheme`: "int8", "fp8-tensor", "fp8-channel", "fp8-block". Compiles the kernels through
  // the host's JIT for the device's arch.
  DeviceQuantizer(int ordinal, const std::string& scheme);
  ~DeviceQuantizer() = default;  // the module stays loaded with the process (host JIT)
  DeviceQuantizer(const DeviceQuantizer&) = delete;
  DeviceQuantizer& operator=(const DeviceQuantizer&) = delete;

  // The quantized projection on the device; holds its scratch block until destroyed.
  class Result {
   public:
    Result() = default;
    ~Result();
    Result(Result&& o) noexcept;  // every field below (a new one must be added there too)
    Result& operator=(Result&&) = delete;
    Result(const Result&) = delete;
    const void* codes = nullptr;  // device [rows, cols] I8 / F8_E4M3
    const float* scales = nullptr;
    std::vector<int64_t> scale_shape;
    // The lowest flat index of a NaN or infinite source element and its value, or -1: the codes
    // are then meaningless and the caller refuses the projection.
    int64_t non_finite_at = -1;
    float non_finite_value = 0.0f;

   private:
    friend class DeviceQuantizer;
    moeq_layer* layer_ = nullptr;
    void* scratch_ = nullptr;
  };
  // `src` is a host view [rows, cols] of BF16, F16 or F32 of `layer` (which the scratch is lent
  // to). Waits for scratch (the host's budget) and until the results are ready.
  Result quantize(const DLTensor& src, moeq_layer* layer);
  int ordinal() const { return ordinal_; }

 private:
  int ordinal_;
  std::string scheme_;
  void* module_ = nullptr;
  std::vector<float> host_rows_;  // a non-contiguous source, read as F32
};

}  // namespace moeq::online
