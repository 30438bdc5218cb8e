// NVRTC: one program per request, compiled straight to a CUBIN for an exact architecture.
#include <moeq/error.hpp>
#include <moeq/jit_compiler.hpp>

#include <dlfcn.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <sstream>

#ifndef MOEQ_HAVE_NVRTC
#define MOEQ_HAVE_NVRTC 0
#endif
#if MOEQ_HAVE_NVRTC
#include "nvrtc_check.hpp"
#endif

namespace moeq::jit {
namespace {

void add_dir(std::vector<std::string>& dirs, const std::filesystem::path& dir) {
  std::error_code ec;
  if (dir.empty() || !std::filesystem::is_directory(dir, ec)) return;
  for (const std::filesystem::path& d : {dir, dir / "cccl"}) {
    if (!std::filesystem::is_directory(d, ec)) continue;
    const std::string s = d.lexically_normal().string();
    bool seen = false;
    for (const auto& x : dirs) seen = seen || x == s;
    if (!seen) dirs.push_back(s);
  }
}

bool has_std_option(const std::vector<std::string>& options) {
  for (const auto& o : options)
    if (o.rfind("-std=", 0) == 0 || o.rfind("--std=", 0) == 0 || o == "-std" || o == "--std") return true;
  return false;
}

}  // namespace

bool compiler_available() { return MOEQ_HAVE_NVRTC != 0; }

void prefetch_compiler() {
#if MOEQ_HAVE_NVRTC
  static std::once_flag once;
  std::call_once(once, [] {
    // NOTE: advice only (the read-ahead runs while the compiles start). On a host that just
    // started, the first process's compiles take about 2.5x as long as the next process's (7
    // kernel sets: 4.3-5.1 s of NVRTC summed against 1.6-1.7 s; H100 hosts, 2026-12-07). NVRTC's
    // library is not the reason: a version that read it through (104 MiB in 100 ms) before the
    // first compile changed nothing, and the rest of that first process ran slower too (its
    // host load 0.77 s against the next process's 0.60 s).
    Dl_info info{};
    if (::dladdr(reinterpret_cast<void*>(&nvrtcVersion), &info) == 0 || info.dli_fname == nullptr) return;
    std::error_code ec;
    const std::filesystem::path lib = std::filesystem::canonical(info.dli_fname, ec);
    if (ec) return;
    for (const auto& entry : std::filesystem::directory_iterator(lib.parent_path(), ec)) {
      const std::string name = entry.path().filename().string();
      // The library itself and the builtins it opens (not the ".alt" pair, which it does not).
      const bool wanted = entry.path() == lib || name.rfind("libnvrtc-builtins.so", 0) == 0;
      if (!wanted || !entry.is_regular_file(ec) || entry.is_symlink(ec)) continue;
      const int fd = ::open(entry.path().c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) continue;
      ::posix_fadvise(fd, 0, 0, POSIX_FADV_WILLNEED);  // queues the reads and returns
      ::close(fd);
    }
  });
#endif
}

const char* image_name(Image image) { return image == Image::ptx ? "ptx" : "cubin"; }

std::vector<int> nvrtc_supported_archs() {
#if MOEQ_HAVE_NVRTC
  static const std::vector<int> archs = [] {
    int n = 0;
    MOEQ_NVRTC_CHECK(nvrtcGetNumSupportedArchs(&n));
    std::vector<int> v(static_cast<size_t>(std::max(n, 0)));
    if (n > 0) MOEQ_NVRTC_CHECK(nvrtcGetSupportedArchs(v.data()));
    std::sort(v.begin(), v.end());
    return v;
  }();
  return archs;
#else
  return {};
#endif
}

std::string compiler_version() {
#if MOEQ_HAVE_NVRTC
  int major = 0, minor = 0;
  MOEQ_NVRTC_CHECK(nvrtcVersion(&major, &minor));
  return std::to_string(major) + "." + std::to_string(minor);
#else
  return "";
#endif
}

std::vector<std::string> cuda_include_dirs() {
  std::vector<std::string> dirs;
  if (const char* env = std::getenv("MOEQ_CUDA_INCLUDE")) {
    std::stringstream ss(env);
    for (std::string part; std::getline(ss, part, ':');) add_dir(dirs, part);
  }
#ifdef MOEQ_CUDA_INCLUDE_DIR
  add_dir(dirs, MOEQ_CUDA_INCLUDE_DIR);
#endif
  if (const char* home = std::getenv("CUDA_HOME")) add_dir(dirs, std::filesystem::path(home) / "include");
  add_dir(dirs, "/usr/local/cuda/include");
  return dirs;
}

std::string arch_for(int sm_major, int sm_minor) {
  // NOTE: from compute capability 9.0 on, the features that make kernels fast (wgmma, TMA
  // multicast, setmaxnreg) exist only in the arch-specific 'a' target, and a CUBIN for
  // sm_90a runs only on 9.0: exactly the binding we want for a JIT compiled per device.
  std::string arch = "sm_" + std::to_string(sm_major) + std::to_string(sm_minor);
  if (sm_major >= 9) arch += 'a';
  return arch;
}

void check_arch(const std::string& arch) {
  bool ok = arch.size() > 3 && arch.rfind("sm_", 0) == 0;
  size_t digits = 0;
  for (size_t i = 3; ok && i < arch.size(); ++i) {
    const char c = arch[i];
    if (c >= '0' && c <= '9' && i == 3 + digits)
      ++digits;
    else if ((c == 'a' || c == 'f') && i + 1 == arch.size() && digits > 0)
      continue;
    else
      ok = false;
  }
  if (!ok || digits < 2)
    fail("jit: arch must name a real GPU architecture such as sm_90a, sm_89 or sm_80; found '" + arch + "'");
}

Target nvrtc_target(const std::string& arch) {
  check_arch(arch);
  const std::vector<int> supported = nvrtc_supported_archs();
  size_t end = 3;
  while (end < arch.size() && arch[end] >= '0' && arch[end] <= '9') ++end;
  // NOTE: more digits than an int holds is still "newer than anything NVRTC knows".
  const std::string digits = arch.substr(3, end - 3);
  const bool newer = !supported.empty() && (digits.size() > 6 || std::stoi(digits) > supported.back());
  // NOTE: PTX for compute_XX runs on every device of compute capability XX or above; the 'a'
  // and 'f' variants would tie it to one arch (or family) that the device is not, so the
  // fallback is always the plain virtual arch.
  if (newer) return {"compute_" + std::to_string(supported.back()), Image::ptx};
  return {arch, Image::cubin};
}

std::vector<std::string> compile_options(const Request& request, const std::vector<std::string>& include_dirs) {
  std::vector<std::string> opts;
  opts.push_back("--gpu-architecture=" + nvrtc_target(request.arch).name);
  if (!has_std_option(request.options)) opts.push_back("-std=c++17");
  opts.push_back("-default-device");
  for (const auto& d : include_dirs) opts.push_back("-I" + d);
  opts.insert(opts.end(), request.options.begin(), request.options.end());
  return opts;
}

#if MOEQ_HAVE_NVRTC

namespace {

// Owns one NVRTC program.
class Program {
 public:
  explicit Program(const Request& r) {
    std::vector<const char*> names, contents;
    for (const Header& h : r.headers) {
      names.push_back(h.name.c_str());
      contents.push_back(h.contents.c_str());
    }
    const std::string file = (r.name.empty() ? "kernel" : r.name) + ".cu";
    MOEQ_NVRTC_CHECK(nvrtcCreateProgram(&prog_, r.source.c_str(), file.c_str(), static_cast<int>(names.size()),
                                        contents.data(), names.data()));
  }
  ~Program() {
    if (prog_ != nullptr) nvrtcDestroyProgram(&prog_);
  }
  Program(const Program&) = delete;
  Program& operator=(const Program&) = delete;
  nvrtcProgram get() const { return prog_; }

  std::string log() const {
    size_t n = 0;
    if (nvrtcGetProgramLogSize(prog_, &n) != NVRTC_SUCCESS || n <= 1) return "";
    std::string s(n, '\0');
    if (nvrtcGetProgramLog(prog_, s.data()) != NVRTC_SUCCESS) return "";
    while (!s.empty() && (s.back() == '\0' || s.back() == '\n')) s.pop_back();
    return s;
  }

 private:
  nvrtcProgram prog_ = nullptr;
};

std::string joined(const std::vector<std::string>& options) {
  std::string s;
  for (const auto& o : options) s += (s.empty() ? "" : " ") + o;
  return s;
}

}  // namespace

CompileOutput nvrtc_compile(const Request& request, const std::vector<std::string>& options) {
  const auto t0 = std::chrono::steady_clock::now();
  const Target target = nvrtc_target(request.arch);
  const std::string what =
      target.image == Image::ptx ? request.arch + " (as PTX for " + target.name + ")" : request.arch;
  Program prog(request);
  std::vector<const char*> argv;
  for (const auto& o : options) argv.push_back(o.c_str());
  const nvrtcResult r = nvrtcCompileProgram(prog.get(), static_cast<int>(argv.size()), argv.data());
  CompileOutput out;
  out.log = prog.log();
  if (r != NVRTC_SUCCESS) {
    std::string who = "jit: kernel set '" + request.name + "'";
    if (!request.plugin_name.empty()) who += " of plugin " + request.plugin_name + " " + request.plugin_version;
    fail(r == NVRTC_ERROR_COMPILATION ? MOEQ_STATUS_CODE_INVALID_ARGUMENT : MOEQ_STATUS_CODE_INTERNAL,
         who + " failed to compile for " + what + " (" + nvrtcGetErrorString(r) + "):\n" +
             (out.log.empty() ? "(NVRTC wrote no log)" : out.log) + "\noptions: " + joined(options));
  }
  size_t size = 0;
  if (target.image == Image::ptx) {
    // NOTE: the size counts the terminating NUL, which stays: cuModuleLoadData reads PTX as a
    // NUL-terminated string.
    MOEQ_NVRTC_CHECK(nvrtcGetPTXSize(prog.get(), &size));
    if (size <= 1)
      fail(MOEQ_STATUS_CODE_INTERNAL, "jit: NVRTC produced no PTX for '" + request.name + "' (" + what + ")");
    out.cubin.resize(size);
    MOEQ_NVRTC_CHECK(nvrtcGetPTX(prog.get(), reinterpret_cast<char*>(out.cubin.data())));
    out.image = Image::ptx;
    out.milliseconds = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    return out;
  }
  MOEQ_NVRTC_CHECK(nvrtcGetCUBINSize(prog.get(), &size));
  if (size == 0)
    fail(MOEQ_STATUS_CODE_INTERNAL, "jit: NVRTC produced no CUBIN for '" + request.name + "' (" + request.arch +
                                        "): is the arch a real one (sm_XX), not a virtual compute_XX?");
  out.cubin.resize(size);
  MOEQ_NVRTC_CHECK(nvrtcGetCUBIN(prog.get(), reinterpret_cast<char*>(out.cubin.data())));
  out.milliseconds = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

#else

CompileOutput nvrtc_compile(const Request& request, const std::vector<std::string>&) {
  fail(MOEQ_STATUS_CODE_UNIMPLEMENTED, "jit: cannot compile '" + request.name +
                                           "': this moeq was built without NVRTC (no CUDA toolkit at build time)");
}

#endif

}  // namespace moeq::jit
