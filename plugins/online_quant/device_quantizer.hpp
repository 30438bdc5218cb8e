// Online quantization on the device (a layer on kDLCUDA, host ABI >= 1.1): one expert
// projection at a time is uploaded in its checkpoint dtype (BF16/F16/F32), quantized by the
// plugin's kernels into device scratch, and handed to compressed_tensors as device views,
// which the host copies device to device into the parameters. The codes and scales are the
// same bytes the CPU schemes (online_scheme.cpp) produce: the same absmax, the same division,
// round-half-even to int8 and round-to-nearest-even saturating to e4m3. The device never holds
// more than one projection in high precision.
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
  ~DeviceQuantizer();
  DeviceQuantizer(const DeviceQuantizer&) = delete;
  DeviceQuantizer& operator=(const DeviceQuantizer&) = delete;

  struct Result {
    const void* codes = nullptr;  // device [rows, cols] I8 / F8_E4M3
    const float* scales = nullptr;
    std::vector<int64_t> scale_shape;
  };
  // `src` is a host view [rows, cols] of BF16, F16 or F32. Waits until the results are ready;
  // they stay valid until the next call.
  Result quantize(const DLTensor& src);
  // Gives the scratch memory back (after the layer is loaded).
  void release();
  int ordinal() const { return ordinal_; }

 private:
  struct Buffer {
    unsigned long long ptr = 0;
    std::size_t capacity = 0;
  };
  void reserve(Buffer& b, std::size_t bytes, const char* what);

  int ordinal_;
  std::string scheme_;
  void* module_ = nullptr;
  Buffer src_, codes_, scales_, part_;
  std::vector<float> host_rows_;  // a non-contiguous source, read as F32
};

}  // namespace moeq::online
