// Shared test helpers: temporary directories, a registry over the built plugins, checkpoint
// damage (rewrite tensors of a written checkpoint), and error capture.
#pragma once
#include <moeq/checkpoint.hpp>
#include <moeq/cuda_driver.hpp>
#include <moeq/error.hpp>
#include <moeq/host.hpp>
#include <moeq/loader.hpp>
#include <moeq/registry.hpp>
#include <moeq_writer/producers.hpp>
#include <moeq_writer/safetensors_writer.hpp>

#include <doctest/doctest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace moeq::test {

// A fresh directory under the system temp dir, removed when the test ends.
class TempDir {
 public:
  explicit TempDir(const std::string& tag = "moeq_test") {
    static std::atomic<int> counter{0};
    path_ = std::filesystem::temp_directory_path() /
            (tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

inline void write_text(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  REQUIRE(out.good());
}

inline std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// The registry over the plugins of this build tree, set as the host's delegation registry.
class BuiltPlugins {
 public:
  BuiltPlugins() : registry_(host::api()) {
    registry_.load_directory(MOEQ_TEST_PLUGIN_DIR);
    host::set_registry(&registry_);
  }
  ~BuiltPlugins() { host::set_registry(nullptr); }
  const Registry& registry() const { return registry_; }

 private:
  Registry registry_;
};

// A tensor as the rewrite callback sees it: decoded to float where the dtype is float.
struct EditableTensor {
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<std::byte> bytes;
};
using TensorMap = std::map<std::string, EditableTensor>;

// Reads every tensor of `dir`'s model.safetensors, lets `edit` change the map, writes it back.
inline void rewrite_tensors(const std::filesystem::path& dir, const std::function<void(TensorMap&)>& edit) {
  TensorMap m;
  {
    auto file = SafetensorsFile::open(dir / "model.safetensors");
    for (const auto& [name, t] : file->tensors())
      m[name] = {t.dtype, t.shape, std::vector<std::byte>(t.data, t.data + t.nbytes())};
  }
  edit(m);
  writer::SafetensorsWriter w;
  for (auto& [name, t] : m) w.add(name, t.dtype, t.shape, t.bytes);
  std::filesystem::remove(dir / "model.safetensors");
  w.write(dir / "model.safetensors");
}

// Rewrites every expert weight of `dir` (per-expert `experts.` names, Granite's fused
// `*_linear.weight`) from BF16 into `dtype`, rounding as store_from_float does; returns how many.
inline int rewrite_expert_weights_as(const std::filesystem::path& dir, DType dtype) {
  int converted = 0;
  rewrite_tensors(dir, [&](TensorMap& m) {
    for (auto& [name, t] : m) {
      if (name.find("experts.") == std::string::npos && name.find("_linear.weight") == std::string::npos) continue;
      if (t.dtype != DType::BF16) throw std::runtime_error(name + ": expected a BF16 expert weight to rewrite");
      const size_t n = t.bytes.size() / 2;
      std::vector<std::byte> out(n * dtype_size(dtype));
      for (size_t i = 0; i < n; ++i) store_from_float(out.data(), dtype, i, load_as_float(t.bytes.data(), DType::BF16, i));
      t.dtype = dtype;
      t.bytes = std::move(out);
      ++converted;
    }
  });
  return converted;
}

// Sets element `index` of a float tensor to `value` (encoded in the tensor's dtype).
inline void set_element(EditableTensor& t, size_t index, float value) {
  store_from_float(t.bytes.data(), t.dtype, index, value);
}

// The message of the moeq::Error that `fn` throws; fails the test when it throws none.
template <class F>
std::string error_of(F&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  FAIL("expected a moeq::Error");
  return {};
}

// A small writer geometry the CLI tests share: one layer, 6 experts, H = 64, I = 32.
inline writer::MoeSpec one_layer_spec(writer::Layout layout) {
  writer::MoeSpec s;
  s.layout = layout;
  s.num_layers = 1;
  s.num_experts = 6;
  s.hidden = 64;
  s.intermediate = 32;
  return s;
}

inline LoadedModel load_dir(const std::filesystem::path& dir, const Registry& reg, LoadOptions opt = {}) {
  Checkpoint ck = Checkpoint::open(dir);
  return load_model(ck, reg, opt);
}

// Seeded random normal tokens [m, h].
inline std::vector<float> seeded_tokens(int64_t m, int64_t h, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(m * h));
  for (float& v : x) v = d(rng);
  return x;
}

// Routes x with the writer's router weights: softmax top-k, renormalized.
inline ref::Routing route_with(const writer::LayerMasters& lm, const std::vector<float>& x, int64_t m, int top_k) {
  const int64_t E = lm.dequantized.num_experts, H = lm.dequantized.hidden;
  std::vector<float> logits(static_cast<size_t>(m * E));
  for (int64_t t = 0; t < m; ++t)
    for (int64_t e = 0; e < E; ++e) {
      double s = 0;
      for (int64_t k = 0; k < H; ++k) s += double(x[t * H + k]) * lm.router[e * H + k];
      logits[t * E + e] = static_cast<float>(s);
    }
  ref::RoutingOptions o;
  o.top_k = top_k;
  o.renormalize = true;
  return ref::route(logits, m, E, o);
}

#ifdef MOEQ_TEST_MOEQ_BIN
// Runs the built `moeq` tool with `args` (after `env`, e.g. "MOEQ_PLUGIN_PATH=..."); stderr is
// merged into `out` unless `with_stderr` is false (then it is dropped).
struct CliRun {
  int code = -1;  // exit status, -1 when killed by a signal
  std::string out;
};
inline CliRun run_moeq_cli(const std::string& args, const std::string& env = "", bool with_stderr = true) {
  const std::string cmd = env + " \"" MOEQ_TEST_MOEQ_BIN "\" " + args + (with_stderr ? " 2>&1" : " 2>/dev/null");
  CliRun r;
  FILE* p = popen(cmd.c_str(), "r");
  REQUIRE(p != nullptr);
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}
#endif

// True when there is a CUDA driver and device; otherwise logs "SKIPPED: <what> needs a CUDA
// device: <why>" (CI has none) and returns false.
inline bool cuda_device_or_skip(const char* what) {
  std::string why;
  if (!cuda::available())
    why = cuda::unavailable_reason();
  else if (cuda::device_count() == 0)
    why = "the driver reports no CUDA device";
  if (!why.empty()) MESSAGE("SKIPPED: " << std::string(what) << " needs a CUDA device: " << why);
  return why.empty();
}

}  // namespace moeq::test
