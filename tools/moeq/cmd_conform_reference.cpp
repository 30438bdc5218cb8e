#include "cmd_conform_reference.hpp"

#include "cmd_conform_harness.hpp"

#include <moeq/error.hpp>
#include <moeq/expert_name_router.hpp>
#include <moeq/loader.hpp>
#include <moeq/strings.hpp>

#include <algorithm>
#include <array>
#include <map>

namespace moeq::cli::conform {
namespace fs = std::filesystem;

const ref::ExpertWeights* Reference::find(const std::string& prefix) const {
  for (const ReferenceLayer& l : layers)
    if (l.prefix == prefix) return &l.weights;
  return nullptr;
}

namespace {

// One expert tensor of the reference into the layer: `rows` x `cols` per expert, landing at
// row `row0` of each expert's w13 (or in w2). Shapes checked by the caller.
struct Target {
  std::vector<float>* dst;
  int64_t per_expert;  // elements of one expert's block in dst
  int64_t row0, rows, cols;
};

void copy_expert(const TensorInfo& t, int64_t source_expert, int64_t e, const Target& to, bool transposed) {
  const int64_t block = to.rows * to.cols;
  for (int64_t r = 0; r < to.rows; ++r)
    for (int64_t c = 0; c < to.cols; ++c) {
      const int64_t src = source_expert * block + (transposed ? c * to.rows + r : r * to.cols + c);
      (*to.dst)[static_cast<size_t>(e * to.per_expert + (to.row0 + r) * to.cols + c)] =
          load_as_float(t.data, t.dtype, static_cast<size_t>(src));
    }
}

// Per layer: which (expert, projection) blocks arrived, to name the first one missing.
struct Pending {
  ReferenceLayer layer;
  std::vector<std::array<bool, 3>> have;  // gate, up, down per expert
};

}  // namespace

Reference read_reference(const fs::path& dir) {
  const Checkpoint ck = Checkpoint::open(dir);
  const MoeConfig cfg = parse_moe_config(ck.config(), dir / "config.json");
  const int64_t E = cfg.num_experts, H = cfg.hidden_size, I = cfg.intermediate_size;
  const std::string where = "--reference " + dir.string();
  std::map<std::string, Pending> layers;
  for (const auto& [name, t] : ck.tensors()) {
    const RoutedName r = route_tensor_name(name);
    if (r.role == TensorRole::kUnknownExpert)
      fail(where + ": " + t.file.filename().string() + ": tensor " + name + " is under an experts module but in no naming family");
    if (r.role != TensorRole::kExpert) continue;
    const std::string at = where + ": " + t.file.filename().string() + ": tensor " + name;
    if (r.suffix != "weight")
      fail(at + ": expected unquantized float expert weights only, found a '" + r.suffix + "' tensor");
    if (t.dtype != DType::F32 && t.dtype != DType::BF16 && t.dtype != DType::F16)
      fail(at + ": expected F32, BF16 or F16, found " + dtype_name(t.dtype));
    Pending& p = layers[r.layer_prefix];
    if (p.layer.prefix.empty()) {
      p.layer.prefix = r.layer_prefix;
      ref::ExpertWeights& w = p.layer.weights;
      w.num_experts = E;
      w.hidden = H;
      w.intermediate = I;
      w.w13.assign(static_cast<size_t>(E * 2 * I * H), 0.0f);
      w.w2.assign(static_cast<size_t>(E * H * I), 0.0f);
      p.have.assign(static_cast<size_t>(E), {false, false, false});
    }
    ref::ExpertWeights& w = p.layer.weights;
    // What the projection is in [rows, cols] of one expert, and where it lands.
    std::vector<Target> targets;
    std::vector<int> slots;  // into `have`
    switch (r.projection) {
      case Projection::kW1: targets = {{&w.w13, 2 * I * H, 0, I, H}}; slots = {0}; break;
      case Projection::kW3: targets = {{&w.w13, 2 * I * H, I, I, H}}; slots = {1}; break;
      case Projection::kW13: targets = {{&w.w13, 2 * I * H, 0, 2 * I, H}}; slots = {0, 1}; break;
      case Projection::kW2: targets = {{&w.w2, H * I, 0, H, I}}; slots = {2}; break;
    }
    const Target& to = targets.front();
    const std::vector<int64_t> plain = {to.rows, to.cols}, flipped = {to.cols, to.rows};
    std::vector<int64_t> shape = t.shape;
    const bool fused = r.expert < 0;
    if (fused) {
      if (shape.empty() || shape[0] != E)
        fail(at + ": expected a leading dimension of " + std::to_string(E) + " experts, found " + shape_string(t.shape));
      shape.erase(shape.begin());
    } else if (r.expert >= E) {
      fail(at + ": expert " + std::to_string(r.expert) + " of a model with " + std::to_string(E) + " experts");
    }
    // Fused BMM-style experts may be stored transposed; the config decides when both fit.
    const bool transposed = fused && shape == flipped && (shape != plain || cfg.fused_experts_transposed);
    if (shape != plain && !transposed)
      fail(at + ": expected " + shape_string(fused ? std::vector<int64_t>{E, to.rows, to.cols} : plain) + ", found " +
           shape_string(t.shape));
    const int64_t first = fused ? 0 : r.expert, last = fused ? E : r.expert + 1;
    for (int64_t e = first; e < last; ++e) {
      copy_expert(t, fused ? e : 0, e, to, transposed);
      for (int s : slots) p.have[static_cast<size_t>(e)][static_cast<size_t>(s)] = true;
    }
  }
  if (layers.empty()) fail(where + ": no MoE expert weights in any naming family");
  Reference out;
  out.what = where;
  const char* const names[] = {"gate (w1)", "up (w3)", "down (w2)"};
  for (auto& [prefix, p] : layers) {
    for (int64_t e = 0; e < E; ++e)
      for (int s = 0; s < 3; ++s)
        if (!p.have[static_cast<size_t>(e)][static_cast<size_t>(s)])
          fail(where + ": layer " + prefix + ": expert " + std::to_string(e) + " has no " + names[s] + " weight");
    out.layers.push_back(std::move(p.layer));
  }
  return out;
}

std::optional<Reference> builtin_reference(const Fixture& fixture, const fs::path& subject_file, std::string& why_not) {
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec) {
    why_not = "the moeq executable's directory is unknown: " + ec.message();
    return std::nullopt;
  }
  Registry registry(host::api());
  // NOTE: the host services find delegated plugins through this registry while it loads.
  struct Swap {
    explicit Swap(Registry* r) { host::set_registry(r); }
    ~Swap() { host::set_registry(nullptr); }
  } swap(&registry);
  for (const fs::path& dir : {exe.parent_path() / ".." / "plugins", exe.parent_path() / ".." / "lib" / "moeq" / "plugins"}) {
    if (!fs::is_directory(dir, ec)) continue;
    std::vector<fs::path> files;
    for (const fs::directory_entry& e : fs::directory_iterator(dir, ec))
      if (e.path().extension() == ".so" && !fs::equivalent(e.path(), subject_file, ec)) files.push_back(e.path());
    std::sort(files.begin(), files.end());
    for (const fs::path& f : files) registry.load_file(f);
  }
  if (registry.plugins().empty()) {
    why_not = "no built-in plugin beside " + exe.string() + " other than the one under test";
    return std::nullopt;
  }
  Reference out;
  try {
    LoadOptions o;
    o.strict = true;
    o.online_scheme = fixture.online_scheme;
    const LoadedModel model = load_model(Checkpoint::open(fixture.dir), registry, o);
    for (size_t li = 0; li < model.layers.size(); ++li) {
      const LoadedLayer& l = *model.layers[li];
      ref::MoeOptions act;
      out.layers.push_back({l.report.prefix, dequantize(l, &act)});
      if (li == 0) {
        out.act = act;
        out.what = "the built-in " + l.plugin->name + " plugin's dequantize_expert";
      }
    }
  } catch (const Error& e) {
    why_not = std::string("no built-in plugin loads it: ") + e.what();
    return std::nullopt;
  }
  if (out.layers.empty()) {
    why_not = "the built-in plugins load no MoE layer of it";
    return std::nullopt;
  }
  return out;
}

}  // namespace moeq::cli::conform
