#include "online_scheme.hpp"

#include <boost/json.hpp>

#include <moeq/parallel_for.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <thread>

namespace moeq::online {
namespace json = boost::json;

namespace {

float absmax(const float* p, int64_t n, int64_t stride = 1) {
  float m = 0.0f;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(p[i * stride]));
  return m;
}

// Projections being quantized right now, across every layer the host loads in parallel.
std::atomic<unsigned> g_quantizing{0};

// fn(first, last) over [0, n) in ranges on several threads when the projection is big enough
// to pay for them. Rows (and 128-row blocks) are quantized independently, so the codes and
// scales are the same whatever the thread count. Each projection in flight gets its share of
// the cores: with eight layers loading on sixteen cores, two threads each, not sixteen.
template <class Fn>
void for_ranges(int64_t n, int64_t elements, Fn&& fn) {
  struct InFlight {
    InFlight() { ++g_quantizing; }
    ~InFlight() { --g_quantizing; }
  } in_flight;
  const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  const unsigned share = std::max(1u, hw / std::max(1u, g_quantizing.load()));
  const int64_t parts = elements < (int64_t{1} << 18) ? 1 : std::min<int64_t>({n, share, 16});
  if (parts <= 1) {
    fn(int64_t{0}, n);
    return;
  }
  const int64_t per = (n + parts - 1) / parts;
  parallel_for(static_cast<size_t>(parts), static_cast<unsigned>(parts), [&](size_t i) {
    const int64_t a = static_cast<int64_t>(i) * per, b = std::min(n, a + per);
    if (a < b) fn(a, b);
  });
}

float fp8_scale(float amax) { return online_scale(amax, kFp8E4M3Max); }

json::object fp8_weights(const char* strategy) {
  return {{"type", "float"}, {"num_bits", 8}, {"symmetric", true}, {"dynamic", false}, {"strategy", strategy}};
}

std::string ct_config(json::object weights, json::value acts, const char* format) {
  json::object group{{"targets", json::array{"Linear"}}, {"weights", std::move(weights)},
                     {"input_activations", std::move(acts)}, {"format", format}};
  json::object o{{"quant_method", "compressed-tensors"}, {"format", format},
                 {"config_groups", json::object{{"group_0", group}}}, {"ignore", json::array{}}};
  return json::serialize(o);
}

class Int8Channel final : public Scheme {
 public:
  const char* name() const override { return "int8"; }
  DType quantized_dtype() const override { return DType::I8; }
  std::string ct_config_json() const override {
    return ct_config({{"type", "int"}, {"num_bits", 8}, {"symmetric", true}, {"dynamic", false}, {"strategy", "channel"}},
                     nullptr, "naive-quantized");
  }
  std::string formula() const override {
    return "int8 per output row: s = absmax_row / 127 (1 for an all-zero row), q = clamp(round_half_even(w / s), -127, 127); W8A16";
  }
  // The per-row 8-bit grid's error grows with K (README): 1.40e-2 at H = 2048, 1.52e-2 at 7168.
  double rel_l2_tolerance() const override { return 2e-2; }
  void quantize(const std::vector<float>& w, int64_t rows, int64_t cols, QuantizedProjection& out) const override {
    out.codes.resize(static_cast<size_t>(rows * cols));
    out.scales.resize(static_cast<size_t>(rows));
    out.scale_shape = {rows, 1};
    for_ranges(rows, rows * cols, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const float s = int8_row_scale(w.data() + r * cols, cols);
        out.scales[r] = s;
        quantize_int8(w.data() + r * cols, static_cast<size_t>(cols), s, reinterpret_cast<int8_t*>(out.codes.data() + r * cols));
      }
    });
  }
};

class Fp8Tensor final : public Scheme {
 public:
  const char* name() const override { return "fp8-tensor"; }
  DType quantized_dtype() const override { return DType::F8_E4M3; }
  std::string ct_config_json() const override {
    return ct_config(fp8_weights("tensor"),
                     json::object{{"type", "float"}, {"num_bits", 8}, {"symmetric", true}, {"dynamic", true},
                                  {"strategy", "tensor"}},
                     "float-quantized");
  }
  std::string formula() const override {
    return "fp8 per expert projection (w1, w3, w2 each): s = absmax / 448 over the full unsharded rows, dynamic "
           "per-tensor activations";
  }
  double rel_l2_tolerance() const override { return 8e-2; }
  void quantize(const std::vector<float>& w, int64_t rows, int64_t cols, QuantizedProjection& out) const override {
    std::vector<float> part(static_cast<size_t>(rows), 0.0f);  // per-row amax, then their max
    for_ranges(rows, rows * cols, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) part[r] = absmax(w.data() + r * cols, cols);
    });
    const float s = fp8_scale(rows > 0 ? *std::max_element(part.begin(), part.end()) : 0.0f);
    out.codes.resize(w.size());
    for_ranges(rows, rows * cols, [&](int64_t r0, int64_t r1) {
      quantize_fp8_e4m3(w.data() + r0 * cols, static_cast<size_t>((r1 - r0) * cols), s, out.codes.data() + r0 * cols);
    });
    out.scales = {s};
    out.scale_shape = {};
  }
};

class Fp8Channel final : public Scheme {
 public:
  const char* name() const override { return "fp8-channel"; }
  DType quantized_dtype() const override { return DType::F8_E4M3; }
  std::string ct_config_json() const override {
    return ct_config(fp8_weights("channel"),
                     json::object{{"type", "float"}, {"num_bits", 8}, {"symmetric", true}, {"dynamic", true},
                                  {"strategy", "token"}},
                     "float-quantized");
  }
  std::string formula() const override {
    return "fp8 per output row: s = absmax_row / 448 (1 for an all-zero row), dynamic per-token activations";
  }
  double rel_l2_tolerance() const override { return 8e-2; }
  void quantize(const std::vector<float>& w, int64_t rows, int64_t cols, QuantizedProjection& out) const override {
    out.codes.resize(w.size());
    out.scales.resize(static_cast<size_t>(rows));
    out.scale_shape = {rows, 1};
    for_ranges(rows, rows * cols, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const float s = fp8_scale(absmax(w.data() + r * cols, cols));
        out.scales[r] = s;
        quantize_fp8_e4m3(w.data() + r * cols, static_cast<size_t>(cols), s, out.codes.data() + r * cols);
      }
    });
  }
};

class Fp8Block final : public Scheme {
 public:
  static constexpr int64_t kBlock = 128;
  const char* name() const override { return "fp8-block"; }
  DType quantized_dtype() const override { return DType::F8_E4M3; }
  std::string ct_config_json() const override {
    json::object w = fp8_weights("block");
    w["block_structure"] = json::array{kBlock, kBlock};
    return ct_config(std::move(w),
                     json::object{{"type", "float"}, {"num_bits", 8}, {"symmetric", true}, {"dynamic", true},
                                  {"strategy", "group"}, {"group_size", kBlock}},
                     "float-quantized");
  }
  std::string formula() const override {
    return "fp8 128x128 blocks: s = absmax_block / 448 (ragged edge blocks count only real elements, the same as "
           "zero padding; 1 for an all-zero block), dynamic 1x128 activation groups";
  }
  double rel_l2_tolerance() const override { return 8e-2; }
  void quantize(const std::vector<float>& w, int64_t rows, int64_t cols, QuantizedProjection& out) const override {
    const int64_t nb = (rows + kBlock - 1) / kBlock, kb = (cols + kBlock - 1) / kBlock;
    out.codes.resize(w.size());
    out.scales.assign(static_cast<size_t>(nb * kb), 1.0f);
    out.scale_shape = {nb, kb};
    for_ranges(nb, rows * cols, [&](int64_t b0, int64_t b1) {
      for (int64_t bi = b0; bi < b1; ++bi)
        for (int64_t bj = 0; bj < kb; ++bj) {
          const int64_t r0 = bi * kBlock, r1 = std::min(rows, r0 + kBlock), c0 = bj * kBlock, c1 = std::min(cols, c0 + kBlock);
          float m = 0.0f;
          for (int64_t r = r0; r < r1; ++r) m = std::max(m, absmax(w.data() + r * cols + c0, c1 - c0));
          const float s = fp8_scale(m);
          out.scales[bi * kb + bj] = s;
          for (int64_t r = r0; r < r1; ++r)
            quantize_fp8_e4m3(w.data() + r * cols + c0, static_cast<size_t>(c1 - c0), s, out.codes.data() + r * cols + c0);
        }
    });
  }
};

}  // namespace

float online_scale(float amax, float qmax) {
  if (!(amax > 0.0f)) return 1.0f;  // an all-zero row, block or projection: never 0/0
  const float s = amax / qmax;
  if (s < std::numeric_limits<float>::min()) return std::numeric_limits<float>::min();
  // FLT_MAX / 127 rounds up, so 127 s would overflow: one step down keeps qmax * s finite.
  return std::isfinite(s * qmax) ? s : std::nextafter(s, 0.0f);
}

float int8_row_scale(const float* row, int64_t n) { return online_scale(absmax(row, n), 127.0f); }

std::unique_ptr<Scheme> make_scheme(const std::string& name) {
  if (name == "int8") return std::make_unique<Int8Channel>();
  if (name == "fp8-tensor") return std::make_unique<Fp8Tensor>();
  if (name == "fp8-channel") return std::make_unique<Fp8Channel>();
  if (name == "fp8-block") return std::make_unique<Fp8Block>();
  return nullptr;
}

const char* scheme_names() { return "int8, fp8-tensor, fp8-channel, fp8-block"; }

}  // namespace moeq::online
