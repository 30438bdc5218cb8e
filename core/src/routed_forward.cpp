#include <moeq/dtype.hpp>
#include <moeq/error.hpp>
#include <moeq/routed_forward.hpp>
#include <moeq/strings.hpp>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <set>

namespace moeq {

namespace {

// Runs `one` per top-k slot on x scaled by that slot's weight (weight 1), summing the outputs:
// the weight sits on the expert's input.
template <typename F>
std::vector<float> per_slot_on_input(std::span<const float> x, int64_t m, int64_t h, const ref::Routing& routing, F one) {
  std::vector<float> sum(static_cast<size_t>(m * h), 0.0f);
  const int64_t k = routing.top_k;
  for (int64_t j = 0; j < k; ++j) {
    ref::Routing slot;
    slot.num_tokens = m;
    slot.top_k = 1;
    slot.ids.resize(static_cast<size_t>(m));
    slot.weights.assign(static_cast<size_t>(m), 1.0f);
    std::vector<float> xs(x.begin(), x.end());
    for (int64_t t = 0; t < m; ++t) {
      slot.ids[t] = routing.ids[t * k + j];
      const float w = routing.weights[t * k + j];
      for (int64_t c = 0; c < h; ++c) xs[t * h + c] *= w;
    }
    const std::vector<float> y = one(xs, slot);
    for (size_t i = 0; i < sum.size(); ++i) sum[i] += y[i];
  }
  return sum;
}

}  // namespace

std::vector<float> router_logits(const LoadedModel& model, size_t li, std::span<const float> x, int64_t m) {
  const int64_t E = model.config.num_experts, H = model.config.hidden_size;
  MOEQ_CHECK(static_cast<int64_t>(x.size()) == m * H,
             "router_logits: x must hold M x H = " + std::to_string(m * H) + " values, found " + std::to_string(x.size()));
  const std::vector<float> router = model.router_weight(li);
  std::vector<float> logits(static_cast<size_t>(m * E));
  for (int64_t t = 0; t < m; ++t)
    for (int64_t e = 0; e < E; ++e) {
      double s = 0;
      for (int64_t c = 0; c < H; ++c) s += double(x[t * H + c]) * router[e * H + c];
      logits[t * E + e] = static_cast<float>(s);
    }
  return logits;
}

ref::Routing route_layer(const LoadedModel& model, size_t li, std::span<const float> x, int64_t m) {
  return ref::route(router_logits(model, li, x, m), m, model.config.num_experts, model.routing(li));
}

std::vector<float> apply_routed(const LoadedModel& model, size_t li, std::span<const float> x, int64_t m,
                                const ref::Routing& routing) {
  if (!model.config.resolved_routing.weight_on_input) return model.apply(li, x, m, routing);
  return per_slot_on_input(x, m, model.config.hidden_size, routing,
                           [&](const std::vector<float>& xs, const ref::Routing& r) { return model.apply(li, xs, m, r); });
}

std::vector<float> reference_routed(const ref::ExpertWeights& w, std::span<const float> x, int64_t m,
                                    const ref::Routing& routing, const ref::MoeOptions& act, bool weight_on_input) {
  if (!weight_on_input) return ref::moe_forward(w, x, m, routing, act);
  return per_slot_on_input(x, m, w.hidden, routing, [&](const std::vector<float>& xs, const ref::Routing& r) {
    return ref::moe_forward(w, xs, m, r, act);
  });
}

GoldenFile GoldenFile::open(const std::filesystem::path& path) {
  GoldenFile g;
  g.file_ = SafetensorsFile::open(path);
  if (g.layers().empty())
    fail(path.string() + ": a golden file holds layers.L.input and layers.L.output for at least one layer, found none");
  return g;
}

std::vector<int64_t> GoldenFile::layers() const {
  std::set<int64_t> out;
  for (const auto& [name, t] : file_->tensors()) {
    constexpr std::string_view kPrefix = "layers.";
    if (name.rfind(kPrefix, 0) != 0) continue;
    const char* first = name.data() + kPrefix.size();
    const char* last = name.data() + name.size();
    int64_t l = 0;
    auto [end, ec] = std::from_chars(first, last, l);
    if (ec != std::errc() || end == last || std::string_view(end, last - end) != ".input") continue;
    if (has(l, "output")) out.insert(l);
  }
  return {out.begin(), out.end()};
}

bool GoldenFile::has(int64_t layer, const std::string& what) const {
  return file_->tensors().count("layers." + std::to_string(layer) + "." + what) > 0;
}

const TensorInfo& GoldenFile::tensor(int64_t layer, const std::string& what, const std::vector<int64_t>& shape) const {
  const std::string name = "layers." + std::to_string(layer) + "." + what;
  auto it = file_->tensors().find(name);
  if (it == file_->tensors().end()) fail(path().string() + ": tensor " + name + " is missing");
  if (!shape.empty() && it->second.shape != shape)
    fail(path().string() + ": tensor " + name + ": expected shape " + shape_string(shape) + ", found " +
         shape_string(it->second.shape));
  return it->second;
}

int64_t GoldenFile::tokens(int64_t layer) const {
  const TensorInfo& t = tensor(layer, "input", {});
  if (t.shape.size() != 2) fail(path().string() + ": layers." + std::to_string(layer) + ".input must be [T, H], found " + shape_string(t.shape));
  return t.shape[0];
}

std::vector<float> GoldenFile::floats(int64_t layer, const std::string& what, const std::vector<int64_t>& shape) const {
  const TensorInfo& t = tensor(layer, what, shape);
  if (t.dtype != DType::F32 && t.dtype != DType::BF16 && t.dtype != DType::F16)
    fail(path().string() + ": tensor " + t.name + ": expected a float dtype, found " + dtype_name(t.dtype));
  std::vector<float> v(static_cast<size_t>(t.numel()));
  for (size_t i = 0; i < v.size(); ++i) {
    v[i] = load_as_float(t.data, t.dtype, i);
    if (!std::isfinite(v[i])) fail(path().string() + ": tensor " + t.name + " holds a non-finite value at " + std::to_string(i));
  }
  return v;
}

std::vector<int32_t> GoldenFile::ints(int64_t layer, const std::string& what, const std::vector<int64_t>& shape) const {
  const TensorInfo& t = tensor(layer, what, shape);
  if (t.dtype != DType::I32 && t.dtype != DType::I64)
    fail(path().string() + ": tensor " + t.name + ": expected I32 or I64, found " + dtype_name(t.dtype));
  std::vector<int32_t> v(static_cast<size_t>(t.numel()));
  for (size_t i = 0; i < v.size(); ++i) {
    int64_t x = 0;
    if (t.dtype == DType::I32) {
      int32_t y;
      std::memcpy(&y, t.data + 4 * i, 4);
      x = y;
    } else {
      std::memcpy(&x, t.data + 8 * i, 8);
    }
    v[i] = static_cast<int32_t>(x);
  }
  return v;
}

ref::ExpertWeights golden_original_weights(const GoldenFile& g, const LoadedModel& model, size_t li) {
  const LoadedLayer& l = *model.layers.at(li);
  const moeq_layer_geometry& geo = l.geometry;
  const int64_t H = geo.hidden_size, I = geo.intermediate_size, Ip = geo.intermediate_size_per_partition;
  const int64_t r0 = int64_t{geo.tp_rank} * Ip;
  ref::ExpertWeights w;
  w.num_experts = geo.num_local_experts;
  w.first_expert = geo.first_local_expert;
  w.hidden = H;
  w.intermediate = Ip;
  w.w13.resize(static_cast<size_t>(w.num_experts * 2 * Ip * H));
  w.w2.resize(static_cast<size_t>(w.num_experts * H * Ip));
  for (int64_t e = 0; e < w.num_experts; ++e) {
    const std::string ex = "experts." + std::to_string(w.first_expert + e) + ".";
    const std::vector<float> w1 = g.floats(l.report.layer, ex + "w1", {I, H});
    const std::vector<float> w3 = g.floats(l.report.layer, ex + "w3", {I, H});
    const std::vector<float> w2 = g.floats(l.report.layer, ex + "w2", {H, I});
    float* d13 = w.w13.data() + e * 2 * Ip * H;
    std::copy(w1.begin() + r0 * H, w1.begin() + (r0 + Ip) * H, d13);
    std::copy(w3.begin() + r0 * H, w3.begin() + (r0 + Ip) * H, d13 + Ip * H);
    float* d2 = w.w2.data() + e * H * Ip;
    for (int64_t row = 0; row < H; ++row)
      std::copy(w2.begin() + row * I + r0, w2.begin() + row * I + r0 + Ip, d2 + row * Ip);
  }
  return w;
}

double golden_tolerance(const std::string& weight_dtype, bool on_device) {
  if (weight_dtype == "F8_E4M3") return 8e-2;
  if (weight_dtype == "I8") return 2e-2;
  return on_device ? 5e-3 : 1e-5;
}

}  // namespace moeq
