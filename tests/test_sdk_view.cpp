// sdk::View over host memory: find_non_finite on every float dtype, strided and offset views
// (a fused tensor's piece), and read_floats from a data offset that is not aligned to the dtype.
#include "support.hpp"

#include <moeq/sdk/sdk.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

using namespace moeq;

namespace {

// A 2-D host view of `bytes` with these shape and strides (elements), at `offset` bytes.
DLTensor host_view(std::vector<std::byte>& bytes, DType dt, std::vector<int64_t>& shape, std::vector<int64_t>& strides,
                   uint64_t offset = 0) {
  DLTensor t{};
  t.data = bytes.data();
  t.byte_offset = offset;
  t.device = {kDLCPU, 0};
  t.ndim = 2;
  t.dtype = to_dl(dt);
  t.shape = shape.data();
  t.strides = strides.data();
  return t;
}

}  // namespace

TEST_CASE("sdk::View::find_non_finite: the first NaN or infinity, row-major, every float dtype, strided views") {
  const int64_t rows = 6, cols = 40, ld = 2 * cols;  // each row of the view is half of a wider row
  const float specials[] = {std::nanf(""), std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity()};
  for (const DType dt : {DType::F8_E4M3, DType::BF16, DType::F16, DType::F32}) {
    CAPTURE(dtype_name(dt));
    std::vector<std::byte> bytes(static_cast<size_t>(rows * ld) * dtype_size(dt));
    std::mt19937 rng(11);
    std::normal_distribution<float> nd(0.0f, 3.0f);
    for (size_t i = 0; i < static_cast<size_t>(rows * ld); ++i) store_from_float(bytes.data(), dt, i, nd(rng));
    std::vector<int64_t> shape{rows, cols}, strides{ld, 1};
    const DLTensor t = host_view(bytes, dt, shape, strides);
    const sdk::View v(t);
    CHECK(v.find_non_finite() == -1);
    // Outside the view (the other half of a row): still none.
    store_from_float(bytes.data(), dt, static_cast<size_t>(2 * ld + cols + 3), std::nanf(""));
    CHECK(v.find_non_finite() == -1);
    for (const float bad : specials) {
      if (dt == DType::F8_E4M3 && std::isinf(bad)) continue;  // e4m3fn has no infinity
      CAPTURE(bad);
      std::vector<std::byte> keep = bytes;
      store_from_float(bytes.data(), dt, static_cast<size_t>(4 * ld + 7), bad);   // view [4, 7]
      store_from_float(bytes.data(), dt, static_cast<size_t>(3 * ld + 39), bad);  // view [3, 39]: the first
      CHECK(v.find_non_finite() == 3 * cols + 39);
      CHECK(v.narrow(0, 4, 2).find_non_finite() == 7);          // narrowed rows
      CHECK(v.narrow(1, 0, 39).find_non_finite() == 4 * 39 + 7);  // narrowed columns leave out [3, 39]
      bytes = keep;
    }
    // A column-strided (transposed) view: [cols, rows] with strides {1, ld}.
    std::vector<int64_t> tshape{cols, rows}, tstrides{1, ld};
    const DLTensor tt = host_view(bytes, dt, tshape, tstrides);
    store_from_float(bytes.data(), dt, static_cast<size_t>(5 * ld + 2), std::nanf(""));  // [2, 5] transposed
    CHECK(sdk::View(tt).find_non_finite() == 2 * rows + 5);
    // Columns are scanned one at a time there, yet the row-major first wins: [1, 5] comes before
    // [2, 5] and [3, 1], though column 1 is scanned first.
    store_from_float(bytes.data(), dt, static_cast<size_t>(1 * ld + 3), std::nanf(""));  // [3, 1] transposed
    store_from_float(bytes.data(), dt, static_cast<size_t>(5 * ld + 1), std::nanf(""));  // [1, 5] transposed
    CHECK(sdk::View(tt).find_non_finite() == 1 * rows + 5);
  }
  // Both e4m3fn NaN codes; no integer value counts.
  std::vector<std::byte> codes(8, std::byte{0x7e});
  std::vector<int64_t> shape{2, 4}, strides{4, 1};
  codes[6] = std::byte{0xff};
  CHECK(sdk::View(host_view(codes, DType::F8_E4M3, shape, strides)).find_non_finite() == 6);
  codes[1] = std::byte{0x7f};
  CHECK(sdk::View(host_view(codes, DType::F8_E4M3, shape, strides)).find_non_finite() == 1);
  std::fill(codes.begin(), codes.end(), std::byte{0xff});
  CHECK(sdk::View(host_view(codes, DType::I8, shape, strides)).find_non_finite() == -1);
}

TEST_CASE("sdk::View::read_floats reads BF16 and F32 at an offset not aligned to the dtype") {
  for (const DType dt : {DType::BF16, DType::F32}) {
    CAPTURE(dtype_name(dt));
    const int64_t rows = 3, cols = 5;
    std::vector<std::byte> bytes(1 + static_cast<size_t>(rows * cols) * dtype_size(dt));
    std::vector<float> want(static_cast<size_t>(rows * cols));
    for (size_t i = 0; i < want.size(); ++i) {
      want[i] = static_cast<float>(i) * 0.75f - 4.0f;
      store_from_float(bytes.data() + 1, dt, i, want[i]);
    }
    std::vector<int64_t> shape{rows, cols}, strides{cols, 1};
    const sdk::View v(host_view(bytes, dt, shape, strides, 1));
    std::vector<float> got(want.size());
    v.read_floats(got.data());
    CHECK(got == want);
  }
}
