// The small per-scheme interface of online quantization: what a quantized expert projection
// looks like, how to quantize one from its full (unsharded) float rows, and which
// compressed-tensors config runs the result. One shared loader (online_method.cpp) drives all.
#pragma once
#include <moeq/dtype.hpp>
#include <moeq/sdk/sdk.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace moeq::online {

// One quantized projection, owned by the loader and reused for the next one.
struct QuantizedProjection {
  std::vector<uint8_t> codes;      // [rows, cols], int8 or e4m3fn bytes
  std::vector<float> scales;
  std::vector<int64_t> scale_shape;
};

class Scheme {
 public:
  virtual ~Scheme() = default;
  virtual const char* name() const = 0;          // "int8", "fp8-tensor", ...
  virtual DType quantized_dtype() const = 0;     // I8 or F8_E4M3
  virtual std::string ct_config_json() const = 0;
  virtual std::string formula() const = 0;       // for describe
  // Relative L2 bound of the MoE forward against the float reference of the original weights
  // (describe's "rel_l2_tolerance", which `moeq conform` holds apply to; README lists them).
  virtual double rel_l2_tolerance() const = 0;
  // `w` is the whole per-expert projection [rows, cols] as float, row-major.
  virtual void quantize(const std::vector<float>& w, int64_t rows, int64_t cols, QuantizedProjection& out) const = 0;
};

// "int8", "fp8-tensor", "fp8-channel", "fp8-block"; nullptr for anything else.
std::unique_ptr<Scheme> make_scheme(const std::string& name);
const char* scheme_names();  // "int8, fp8-tensor, fp8-channel, fp8-block"

// The scale of a row, block or projection whose largest magnitude is `amax`, for codes up to
// `qmax` (127 or 448): amax / qmax; 1 when amax is 0; never below FLT_MIN (an F32 row of values
// under qmax x FLT_MIN would otherwise get a zero or subnormal scale: its codes round to about
// 0 instead); one float step down where qmax x (amax / qmax) would overflow (F32 near FLT_MAX),
// so that no finite weight dequantizes to infinity. The device kernels compute the same bits.
float online_scale(float amax, float qmax);

// Reference quantizers, exposed for tests of exactness.
float int8_row_scale(const float* row, int64_t n);  // online_scale(absmax, 127)

}  // namespace moeq::online
