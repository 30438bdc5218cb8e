// The JIT service: keys, the in-process table of kernels (compiled once per process, even
// when several threads ask at once), the disk cache, and NVRTC runs in parallel.
#include <moeq/error.hpp>
#include <moeq/host.hpp>
#include <moeq/jit.hpp>
#include <moeq/jit_cache.hpp>
#include <moeq/cuda_driver.hpp>
#include <moeq/jit_compiler.hpp>
#include <moeq/jit_include_scanner.hpp>
#include <moeq/jit_key.hpp>
#include <moeq/parallel_for.hpp>

#include <chrono>
#include <cstdlib>
#include <future>
#include <mutex>
#include <optional>
#include <unordered_map>

namespace moeq::jit {
namespace {

struct Built {
  std::shared_ptr<const std::vector<uint8_t>> cubin;
  Image image = Image::cubin;
  Origin origin = Origin::compiled;
  double milliseconds = 0;
  std::string log;
};

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// What a request is built into: a PTX module always into a CUBIN for its arch (nvJitLink); CUDA
// C++ into what nvrtc_target() says (a CUBIN, or the PTX fallback for an arch newer than NVRTC).
Target target_of(const Request& r) {
  return r.kind == SourceKind::ptx ? Target{r.arch, Image::cubin} : nvrtc_target(r.arch);
}

// Empty when a cache entry's payload is an image of the kind its request builds, else why not.
// (The key already differs between the two, and so does the file name: this is the last check.)
std::string image_problem(Image image, const std::vector<uint8_t>& p) {
  const bool elf = p.size() >= 4 && p[0] == 0x7f && p[1] == 'E' && p[2] == 'L' && p[3] == 'F';
  if (image == Image::cubin) return elf ? "" : "holds no ELF image (CUBIN)";
  if (elf) return "holds an ELF image, expected PTX";
  if (p.empty() || p.back() != 0) return "holds no NUL-terminated PTX";
  return "";
}

unsigned default_threads() {
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 4 : std::min(hw, 16u);
}

// The count an environment variable sets (1..256), `otherwise` when it is unset or empty.
unsigned thread_count(const char* variable, unsigned otherwise) {
  const char* t = std::getenv(variable);
  if (t == nullptr || *t == '\0') return otherwise;
  char* end = nullptr;
  const unsigned long n = std::strtoul(t, &end, 10);
  if (end == nullptr || *end != '\0' || n == 0 || n > 256 || *t == '-' || *t == '+' || *t == ' ')
    fail(std::string(variable) + " must be a number from 1 to 256; found '" + t + "'");
  return static_cast<unsigned>(n);
}

}  // namespace

Config Config::from_env() {
  Config c;
  const char* dir = std::getenv("MOEQ_CACHE_DIR");
  if (dir != nullptr && *dir != '\0') {
    if (std::string(dir) != "off") c.cache_dir = dir;
  } else if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg != nullptr && *xdg != '\0') {
    c.cache_dir = std::filesystem::path(xdg) / "moeq";
  } else if (const char* home = std::getenv("HOME"); home != nullptr && *home != '\0') {
    c.cache_dir = std::filesystem::path(home) / ".cache" / "moeq";
  }
  c.threads = thread_count("MOEQ_JIT_THREADS", c.threads);
  c.split_threads = thread_count("MOEQ_JIT_SPLIT", c.split_threads);
  c.cuda_include_dirs = ::moeq::jit::cuda_include_dirs();
  return c;
}

struct JitService::State {
  Config config;
  std::optional<JitCache> cache;
  std::string compiler;  // "nvrtc 13.0"
  IncludeScanner scanner;

  mutable std::mutex mutex;
  // NOTE: a key's future is inserted before its compile starts, so a second thread (or a
  // second batch) asking for the same key waits on that one compile instead of starting
  // another. Finished entries stay: the ABI hands out pointers into them for the process'
  // life. A failed compile is removed so that a later call reports it afresh.
  std::unordered_map<std::string, std::shared_future<Built>> kernels;
  Stats stats;
  bool warned_store = false;
};

JitService::JitService(Config config) : state_(std::make_unique<State>()) {
  State& s = *state_;
  s.config = std::move(config);
  if (s.config.threads == 0) s.config.threads = default_threads();
  if (s.config.split_threads == 0) s.config.split_threads = default_threads();
  if (!s.config.cache_dir.empty()) {
    JitCache cache(s.config.cache_dir);
    // NOTE: a CUBIN from a cache others could write is their code on the GPU with our rights;
    // such a cache is neither read nor written, and every kernel is compiled (docs/DESIGN.md §5).
    if (std::string why = cache.trust_problem(); !why.empty())
      host::log(MOEQ_LOG_LEVEL_WARNING, "jit", "not using the JIT cache, kernels are compiled without it: " + why);
    else
      s.cache.emplace(std::move(cache));
  }
  s.compiler = compiler_available() ? "nvrtc " + compiler_version() : "none";
}

JitService::~JitService() = default;

const Config& JitService::config() const { return state_->config; }

Stats JitService::stats() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->stats;
}

std::vector<std::string> JitService::options(const Request& request) const {
  if (request.kind == SourceKind::ptx) return ptx_compile_options(request);
  return compile_options(request, state_->config.cuda_include_dirs);
}

namespace {

// The key of a PTX module: no includes; the compiler is nvJitLink and its version (with the
// driver's, which loads the result).
std::string ptx_compiler_id() {
  std::string id = "nvjitlink " + (ptx_compiler_available() ? ptx_compiler_version() : std::string("none"));
  id += "; driver " + (cuda::available() ? std::to_string(cuda::require().driver_version) : std::string("none"));
  return id;
}

Digest key_of(const Request& r, const std::vector<std::string>& opts, const std::string& nvrtc, IncludeScanner& scanner) {
  if (r.kind == SourceKind::ptx) {
    const IncludeScan none;
    return cache_key({r, opts, ptx_compiler_id(), none});
  }
  const IncludeScan scan = scanner.scan(r, include_dirs_in(opts));
  return cache_key({r, opts, nvrtc, scan});
}

// `opts` with --split-compile=`threads` added (after the key was taken from them): NVRTC then
// optimizes and assembles a program's kernels on that many threads. A set has one or two large
// GEMM kernels among several small ones, so the compile's wall time becomes about the largest
// kernel's. Left as given for one thread, or where the plugin's options already name a split.
std::vector<std::string> with_split(std::vector<std::string> opts, unsigned threads) {
  if (threads <= 1) return opts;
  for (const std::string& o : opts)
    if (o.find("split-compile") != std::string::npos) return opts;
  opts.push_back("--split-compile=" + std::to_string(threads));
  return opts;
}

}  // namespace

std::string JitService::key(const Request& request) {
  const std::vector<std::string> opts = options(request);
  return to_hex(key_of(request, opts, state_->compiler, state_->scanner));
}

Kernel JitService::compile(const Request& request) { return std::move(compile(std::span(&request, 1)).front()); }

std::vector<Kernel> JitService::compile(std::span<const Request> requests) {
  State& s = *state_;
  const size_t n = requests.size();
  std::vector<std::string> keys(n), errors(n);
  std::vector<Digest> digests(n);
  std::vector<moeq_status_code> codes(n, MOEQ_STATUS_CODE_OK);
  std::vector<std::vector<std::string>> opts(n);
  std::vector<Target> targets(n);
  auto record = [&](size_t i, const std::exception& e) {
    const auto* me = dynamic_cast<const Error*>(&e);
    codes[i] = me ? me->code() : MOEQ_STATUS_CODE_INTERNAL;
    errors[i] = e.what();
  };

  // 1. Options and keys (the include scan reads each toolkit header once per process).
  const auto t_keys = std::chrono::steady_clock::now();
  for (size_t i = 0; i < n; ++i) {
    try {
      opts[i] = options(requests[i]);
      targets[i] = target_of(requests[i]);
      digests[i] = key_of(requests[i], opts[i], s.compiler, s.scanner);
      keys[i] = to_hex(digests[i]);
    } catch (const std::exception& e) {
      record(i, e);
    }
  }

  // 2. Claim the keys nobody has claimed yet; join the others.
  std::vector<std::shared_future<Built>> futures(n);
  std::vector<std::promise<Built>> promises(n);
  std::vector<size_t> mine;
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    s.stats.keys_ms += ms_since(t_keys);
    for (size_t i = 0; i < n; ++i) {
      if (codes[i] != MOEQ_STATUS_CODE_OK) continue;
      auto it = s.kernels.find(keys[i]);
      if (it != s.kernels.end()) {
        futures[i] = it->second;
        continue;
      }
      futures[i] = promises[i].get_future().share();
      s.kernels.emplace(keys[i], futures[i]);
      mine.push_back(i);
    }
  }

  // 3. Disk cache, then NVRTC, for the claimed keys, in parallel.
  parallel_for(mine.size(), s.config.threads, [&](size_t m) {
    const size_t i = mine[m];
    const Request& r = requests[i];
    const auto t0 = std::chrono::steady_clock::now();
    const Digest& digest = digests[i];
    const Target& target = targets[i];
    // NOTE: said once per kernel set and process (only the request that claimed the key gets
    // here), whether the PTX was compiled now or read from the cache.
    auto say_fallback = [&] {
      if (target.image != Image::ptx) return;
      const std::vector<int> archs = nvrtc_supported_archs();
      const std::string newest = archs.empty() ? std::string("?") : std::to_string(archs.back());
      host::log(MOEQ_LOG_LEVEL_WARNING, "jit",
                "kernel set '" + r.name + "'" + (r.plugin_name.empty() ? "" : " of plugin " + r.plugin_name) + ": " +
                    r.arch + " is newer than this NVRTC (" + s.compiler + ", newest sm_" + newest +
                    ") can build a CUBIN for; using PTX for " + target.name +
                    ", which the CUDA driver compiles for the device when it loads the module");
    };
    try {
      if (s.cache) {
        CacheRead hit = s.cache->load(r.arch, digest, target.image);
        if (hit.state == EntryState::hit) {
          if (std::string why = image_problem(target.image, hit.payload); !why.empty()) {
            hit.state = EntryState::corrupt;
            hit.why = s.cache->entry_path(r.arch, digest, target.image).string() + ": " + why;
          }
        }
        if (hit.state == EntryState::hit) {
          Built b{std::make_shared<const std::vector<uint8_t>>(std::move(hit.payload)), target.image,
                  Origin::disk_cache, ms_since(t0), ""};
          say_fallback();
          std::lock_guard<std::mutex> lock(s.mutex);
          ++s.stats.disk_hits;
          s.stats.cache_read_ms += b.milliseconds;
          promises[i].set_value(std::move(b));
          return;
        }
        if (hit.state == EntryState::corrupt) {
          host::log(MOEQ_LOG_LEVEL_WARNING, "jit", "cache entry ignored and rebuilt: " + hit.why);
          std::lock_guard<std::mutex> lock(s.mutex);
          ++s.stats.corrupt_entries;
        }
        if (hit.state == EntryState::untrusted) {
          host::log(MOEQ_LOG_LEVEL_WARNING, "jit", "cache entry not read, the kernel is compiled instead: " + hit.why);
          std::lock_guard<std::mutex> lock(s.mutex);
          ++s.stats.untrusted_entries;
        }
      }
      if (r.kind != SourceKind::ptx) prefetch_compiler();  // the process's first miss reads NVRTC ahead
      CompileOutput out = r.kind == SourceKind::ptx ? ptx_compile(r, opts[i])
                                                    : nvrtc_compile(r, with_split(opts[i], s.config.split_threads));
      std::string store_error = s.cache ? s.cache->store(r.arch, digest, out.cubin, out.image) : "";
      Built b{std::make_shared<const std::vector<uint8_t>>(std::move(out.cubin)), out.image, Origin::compiled,
              out.milliseconds, std::move(out.log)};
      say_fallback();
      std::lock_guard<std::mutex> lock(s.mutex);
      ++s.stats.compiled;
      s.stats.compile_ms += out.milliseconds;
      if (!store_error.empty()) {
        ++s.stats.store_failures;
        if (!s.warned_store)
          host::log(MOEQ_LOG_LEVEL_WARNING, "jit", "cannot write the JIT cache (kernels will be recompiled): " + store_error);
        s.warned_store = true;
      }
      promises[i].set_value(std::move(b));
    } catch (...) {
      std::lock_guard<std::mutex> lock(s.mutex);
      ++s.stats.failed;
      s.kernels.erase(keys[i]);
      promises[i].set_exception(std::current_exception());
    }
  });

  // 4. Collect, in request order.
  std::vector<Kernel> out(n);
  std::vector<bool> from_memory(n, false);
  for (size_t m = 0, i = 0; i < n; ++i) {
    const bool claimed = m < mine.size() && mine[m] == i;
    if (claimed) ++m;
    if (codes[i] != MOEQ_STATUS_CODE_OK) continue;
    try {
      const Built& b = futures[i].get();
      Kernel& k = out[i];
      k.name = requests[i].name;
      k.arch = requests[i].arch;
      k.key = keys[i];
      k.cubin = b.cubin;
      k.image = b.image;
      k.target = targets[i].name;
      k.origin = claimed ? b.origin : Origin::memory;
      k.milliseconds = claimed ? b.milliseconds : 0;
      if (claimed) k.log = b.log;
      from_memory[i] = !claimed;
    } catch (const std::exception& e) {
      record(i, e);
    }
  }
  size_t failed = 0;
  std::string message;
  moeq_status_code code = MOEQ_STATUS_CODE_OK;
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    for (size_t i = 0; i < n; ++i) s.stats.memory_hits += from_memory[i] ? 1 : 0;
  }
  for (size_t i = 0; i < n; ++i) {
    if (codes[i] == MOEQ_STATUS_CODE_OK) continue;
    if (failed++ == 0) code = codes[i];
    message += (message.empty() ? "" : "\n") + errors[i];
  }
  if (failed == 1) fail(code, message);
  if (failed > 1)
    fail(code, std::to_string(failed) + " of " + std::to_string(n) + " kernel sets failed:\n" + message);
  return out;
}

JitService& JitService::process() {
  // NOTE: never destroyed: modules loaded from its CUBINs stay loaded until the process
  // ends, and static destruction order against the driver is not ours to choose.
  static JitService* service = new JitService(Config::from_env());
  return *service;
}

}  // namespace moeq::jit
