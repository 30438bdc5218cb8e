#include "jit_bench.hpp"

#include "bench.hpp"

#include "bench_layer.hpp"
#include "nvrtc_build.hpp"

#include <moeq/cuda_driver.hpp>
#include <moeq/error.hpp>
#include <moeq/jit.hpp>

#include <boost/json.hpp>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <iomanip>
#include <optional>
#include <ostream>
#include <sstream>

namespace moeq::gpu_harness {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// One pass of a fresh service over `cache_dir`: wall ms of the compile call, its stats, and
// the wall ms of loading every CUBIN into device 0 (0 without a device).
struct Pass {
  double compile_ms = 0, load_ms = 0;
  jit::Stats stats;
  // The set NVRTC took longest over: what bounds a cold compile on a host with a core for
  // every set, however many cores this one has.
  double longest_ms = 0;
  std::string longest;
};

Pass run_pass(const std::vector<jit::Request>& requests, const fs::path& cache_dir, bool load) {
  jit::Config c = jit::Config::from_env();
  c.cache_dir = cache_dir;
  // NOTE: a new service has an empty in-process table, as a new process would: the warm pass
  // can only be served by the disk cache or NVRTC, and its stats say which.
  jit::JitService service(c);
  Pass p;
  const auto t0 = Clock::now();
  const std::vector<jit::Kernel> kernels = service.compile(requests);
  p.compile_ms = ms_since(t0);
  p.stats = service.stats();
  for (std::size_t i = 0; i < kernels.size(); ++i)
    if (kernels[i].milliseconds > p.longest_ms) {
      p.longest_ms = kernels[i].milliseconds;
      p.longest = requests[i].name;
    }
  if (load) {
    const auto t1 = Clock::now();
    std::vector<cuda::Module> modules;
    for (const jit::Kernel& k : kernels) modules.push_back(cuda::Module::load(0, *k.cubin));
    p.load_ms = ms_since(t1);
  }
  return p;
}

// The fresh cache root of one run, removed on every way out of run_jit_bench unless kept.
class CacheRoot {
 public:
  explicit CacheRoot(bool keep) : keep_(keep) {
    std::string tmpl = (fs::temp_directory_path() / "moeq-jit-bench-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr)
      fail("bench jit: cannot create a temporary directory under " + fs::temp_directory_path().string());
    path_ = tmpl;
  }
  ~CacheRoot() {
    std::error_code ec;
    if (!keep_) fs::remove_all(path_, ec);
  }
  CacheRoot(const CacheRoot&) = delete;
  CacheRoot& operator=(const CacheRoot&) = delete;
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
  bool keep_;
};

}  // namespace

std::optional<int> arch_capability(const std::string& arch) {
  if (arch.rfind("sm_", 0) != 0) return std::nullopt;
  size_t end = 3;
  int cc = 0;
  while (end < arch.size() && end < 6 && arch[end] >= '0' && arch[end] <= '9') cc = cc * 10 + (arch[end++] - '0');
  if (end < 5) return std::nullopt;  // fewer than two digits
  if (end < arch.size() && (arch[end] == 'a' || arch[end] == 'f')) ++end;
  if (end != arch.size()) return std::nullopt;
  return cc;
}

std::string arch_refusal(const std::string& arch) {
  const std::optional<int> cc = arch_capability(arch);
  if (cc && *cc >= 80) return "";
  return std::string(cc ? "'" + arch + "' is older than sm_80, the oldest arch the kernels support"
                        : "'" + arch + "' is not an arch") +
         "; give sm_XY, sm_XYa or sm_XYf with compute capability 8.0 or newer (sm_80, sm_86, sm_89, sm_90a, sm_100a, "
         "sm_120)";
}

int run_jit_bench(const JitBenchOptions& opt, std::ostream& out) {
  if (!jit::compiler_available()) fail(MOEQ_STATUS_CODE_UNAVAILABLE, "bench jit: this build has no NVRTC");
  const auto shape = shape_by_name(opt.shape);
  if (!shape)
    fail("bench jit: unknown shape '" + opt.shape + "' (Mixtral-8x7B, Qwen3-30B-A3B, DeepSeek-V3, Granite-3B-A800M)");
  const std::vector<std::string> default_schemes = {"bf16", "fp8-channel", "fp8-block", "fp8-tensor", "w8a16"};
  const std::vector<std::string>& names = opt.schemes.empty() ? default_schemes : opt.schemes;
  std::vector<SchemeSpec> specs;
  for (const auto& n : names) {
    auto s = scheme_by_name(n);
    if (!s) fail("bench jit: unknown scheme '" + n + "' (bf16, fp8-channel, fp8-block, fp8-tensor, fp8-tensor-static, w8a16)");
    // NOTE: each scheme has one cache directory; a second run of it would find it warm.
    for (const SchemeSpec& seen : specs)
      if (seen.name == n) fail("bench jit: scheme '" + n + "' is listed twice");
    specs.push_back(*s);
  }

  if (!opt.arch.empty())
    if (const std::string why = arch_refusal(opt.arch); !why.empty()) fail("bench jit: --arch " + why);

  ct::gpu::DeviceLimits lim;  // an H100 SXM unless a device says otherwise
  const bool device = cuda::available();
  std::string arch = opt.arch;
  std::string where = "no CUDA device: compile only";
  if (device) {
    const cuda::DeviceProperties p = cuda::device_properties(0);
    lim.sm_major = p.sm_major;
    lim.sm_minor = p.sm_minor;
    lim.multiprocessors = p.multiprocessors;
    lim.max_smem_per_block = p.max_shared_memory_per_block_optin;
    if (arch.empty()) arch = jit::arch_for(p.sm_major, p.sm_minor);
    where = p.name + ", CUBINs loaded with cuModuleLoadData";
  } else if (arch.empty()) {
    arch = "sm_90a";
  }
  // NOTE: the plan (wgmma or not, fp8 or skipped) follows the arch compiled for, which --arch
  // may set apart from the device's.
  const int cc = *arch_capability(arch);
  lim.sm_major = cc / 10;
  lim.sm_minor = cc % 10;
  const bool load = device && opt.arch.empty();

  const CacheRoot cache_root(opt.keep);
  const fs::path& root = cache_root.path();
  if (!opt.json)
    out << "jit: " << opt.shape << " (E=" << shape->experts << ", H=" << shape->hidden << ", I=" << shape->inter
        << ", top_k=" << shape->top_k << "), M buckets up to " << opt.max_tokens << ", " << arch << "; " << where
        << "; fresh cache dirs under " << root.string() << "\n"
        << "\n| scheme | kernel sets | cold ms (NVRTC) | NVRTC ms, summed | longest set ms | warm ms (disk) | module load "
           "ms | warm start ms | goals: cold <= 3000, warm <= 50 |\n|---|---:|---:|---:|---:|---:|---:|---:|---|\n";
  boost::json::array rows, skipped;
  bool ok = true;
  size_t measured = 0;
  for (const SchemeSpec& s : specs) {
    if (s.scheme.kind == ct::gpu::mk::kKindFp8 && cc < 89) {
      skipped.push_back(boost::json::object{{"scheme", s.name}, {"reason", "fp8 needs sm_89 or newer"}});
      if (!opt.json) out << "| " << s.name << " | - | skipped: fp8 needs sm_89 or newer | | | | | | |\n";
      continue;
    }
    std::vector<jit::Request> requests{jit_request(ct::gpu::utility_source(), arch)};
    const ct::gpu::MoePlan plan(s.scheme, ct::gpu::LayerDims{shape->experts, 0, shape->hidden, shape->inter, shape->top_k},
                                opt.max_tokens, lim);
    for (const auto& k : plan.sources()) requests.push_back(jit_request(k, arch));
    const fs::path dir = root / s.name;
    const Pass cold = run_pass(requests, dir, load);
    ++measured;
    const Pass warm = run_pass(requests, dir, load);
    const uint64_t n = requests.size();
    std::string verdict;
    if (cold.stats.compiled != n) verdict = "cold pass compiled " + std::to_string(cold.stats.compiled) + " of " + std::to_string(n);
    if (warm.stats.compiled != 0 || warm.stats.memory_hits != 0 || warm.stats.disk_hits != n)
      verdict = "warm pass not from disk: " + std::to_string(warm.stats.compiled) + " compiled, " +
                std::to_string(warm.stats.memory_hits) + " from memory, " + std::to_string(warm.stats.disk_hits) +
                " from disk of " + std::to_string(n);
    const double cold_start = cold.compile_ms + cold.load_ms, warm_start = warm.compile_ms + warm.load_ms;
    if (verdict.empty())
      verdict = std::string(cold_start <= 3000 ? "cold ok" : "cold OVER") + ", " + (warm_start <= 50 ? "warm ok" : "warm OVER");
    else
      ok = false;
    if (opt.json) {
      rows.push_back(boost::json::object{{"scheme", s.name},
                                         {"kernel_sets", n},
                                         {"cold_ms", cold.compile_ms},
                                         {"cold_load_ms", cold.load_ms},
                                         {"nvrtc_ms_summed", cold.stats.compile_ms},
                                         {"longest_set_ms", cold.longest_ms},
                                         {"longest_set", cold.longest},
                                         {"warm_ms", warm.compile_ms},
                                         {"warm_load_ms", warm.load_ms},
                                         {"warm_compiled", warm.stats.compiled},
                                         {"warm_disk_hits", warm.stats.disk_hits},
                                         {"verdict", verdict}});
    } else {
      out << "| " << s.name << " | " << n << " | " << fmt(cold.compile_ms, 0) << " | " << fmt(cold.stats.compile_ms, 0)
          << " | " << fmt(cold.longest_ms, 0) << " | " << fmt(warm.compile_ms, 1) << " | " << (load ? fmt(warm.load_ms, 1) : "-") << " | "
          << fmt(warm_start, 1) << " | " << verdict << " |\n";
      out.flush();
    }
  }
  // NOTE: a run in which every scheme was skipped checked nothing, so it cannot pass.
  ok = ok && measured > 0;
  if (opt.json) {
    out << boost::json::serialize(boost::json::object{{"shape", opt.shape}, {"arch", arch}, {"device", device},
                                                      {"schemes", rows}, {"skipped", skipped}, {"ok", ok}})
        << "\n";
  } else if (measured == 0) {
    out << "NOTHING MEASURED: every scheme was skipped on " << arch << "\n";
  } else {
    out << (ok ? "warm passes came from the disk cache only" : "A WARM PASS DID NOT COME FROM DISK");
    if (!skipped.empty()) out << " (" << skipped.size() << " of " << specs.size() << " schemes skipped)";
    out << "\n";
  }
  return ok ? 0 : 1;
}

}  // namespace moeq::gpu_harness
