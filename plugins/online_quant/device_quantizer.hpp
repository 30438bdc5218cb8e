// Online quantization on the device (a layer on kDLCUDA, host ABI >= 1.1): one expert
// projection at a time is uploaded in its checkpoint dtype (BF16/F16/F32), quantized by the
// plugin's kernels into device scratch, and handed to compressed_tensors as device views,
// which the host copies device to device into the parameters. The codes and scales are the
// same bytes the CPU schemes (online_scheme.cpp) produce: the same absmax, the same division,
// round-half-even to int8 and round-to-nearest-even saturating to e4m3.
//
// Device memory: the scratch sets (one projection in its checkpoint dtype, its codes, scales and
// row maxima) come from one pool per device shared by every layer being loaded, however many
// loader threads there are. The pool holds at most as many sets as fit one expert of BF16
// (three projections; one when the source is read as F32), so the device never holds more than
// one expert's high-precision weights at a time; a load that finds them all busy waits. The
// sets are freed when the last layer using the pool is loaded.
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

  struct Scratch;  // one set of device buffers, lent by the device's pool
  // The quantized projection on the device; holds its scratch set until destroyed.
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
    int ordinal_ = -1;
    Scratch* scratch_ = nullptr;
  };
  // `src` is a host view [rows, cols] of BF16, F16 or F32. Waits for a scratch set and until
  // the results are ready.
  Result quantize(const DLTensor& src);
  // This layer is loaded: when it was the last one using the device's pool, the pool's memory
  // is freed. Idempotent.
  void release();
  int ordinal() const { return ordinal_; }

  // Scratch sets the device's pool holds now (tests and benchmarks).
  static std::size_t pooled_sets(int ordinal);

 private:
  int ordinal_;
  std::string scheme_;
  void* module_ = nullptr;
  bool registered_ = false;
  std::vector<float> host_rows_;  // a non-contiguous source, read as F32
};

}  // namespace moeq::online
