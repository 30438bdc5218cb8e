// PTX to CUBIN with the toolkit's nvJitLink (libnvJitLink.so.13), opened at run time: a host
// built without a CUDA toolkit, or run where the library is absent, still loads and answers
// UNAVAILABLE for PTX only. Compiling needs no GPU.
#include <moeq/error.hpp>
#include <moeq/jit_compiler.hpp>

#include <dlfcn.h>

#include <chrono>
#include <cstdlib>
#include <mutex>
#include <regex>
#include <sstream>

namespace moeq::jit {
namespace {

// nvJitLink.h, in the few declarations used (the C ABI of libnvJitLink.so.13).
using Handle = void*;
constexpr int kSuccess = 0;
constexpr int kInputPtx = 2;  // NVJITLINK_INPUT_PTX

struct NvJitLink {
  int (*create)(Handle*, uint32_t, const char**) = nullptr;
  int (*destroy)(Handle*) = nullptr;
  int (*add_data)(Handle, int, const void*, size_t, const char*) = nullptr;
  int (*complete)(Handle) = nullptr;
  int (*cubin_size)(Handle, size_t*) = nullptr;
  int (*cubin)(Handle, void*) = nullptr;
  int (*error_log_size)(Handle, size_t*) = nullptr;
  int (*error_log)(Handle, char*) = nullptr;
  int (*info_log_size)(Handle, size_t*) = nullptr;
  int (*info_log)(Handle, char*) = nullptr;
  int (*version)(unsigned*, unsigned*) = nullptr;
  std::string error;  // why it is not available
  unsigned major = 0, minor = 0;
};

const NvJitLink& nvjitlink() {
  static NvJitLink api;
  static std::once_flag once;
  std::call_once(once, [] {
    const char* env = std::getenv("MOEQ_NVJITLINK");
    std::vector<std::string> names;
    if (env && *env) names.emplace_back(env);
    for (const char* n : {"libnvJitLink.so.13", "libnvJitLink.so", "/usr/local/cuda/lib64/libnvJitLink.so.13"})
      names.emplace_back(n);
    void* lib = nullptr;
    std::string tried;
    for (const std::string& n : names) {
      lib = ::dlopen(n.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (lib) break;
      const char* e = ::dlerror();
      tried += (tried.empty() ? "" : "; ") + n + ": " + (e ? e : "not found");
    }
    if (!lib) {
      api.error = "the PTX compiler library nvJitLink was not found (" + tried +
                  "; MOEQ_NVJITLINK may name it, or add the CUDA toolkit's lib64 to LD_LIBRARY_PATH)";
      return;
    }
    bool ok = true;
    auto sym = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(::dlsym(lib, name));
      if (!fn) {
        ok = false;
        api.error += std::string(api.error.empty() ? "" : ", ") + name;
      }
    };
    sym(api.create, "nvJitLinkCreate");
    sym(api.destroy, "nvJitLinkDestroy");
    sym(api.add_data, "nvJitLinkAddData");
    sym(api.complete, "nvJitLinkComplete");
    sym(api.cubin_size, "nvJitLinkGetLinkedCubinSize");
    sym(api.cubin, "nvJitLinkGetLinkedCubin");
    sym(api.error_log_size, "nvJitLinkGetErrorLogSize");
    sym(api.error_log, "nvJitLinkGetErrorLog");
    sym(api.info_log_size, "nvJitLinkGetInfoLogSize");
    sym(api.info_log, "nvJitLinkGetInfoLog");
    sym(api.version, "nvJitLinkVersion");
    if (!ok) {
      api.error = "nvJitLink lacks " + api.error;
      api.create = nullptr;
      return;
    }
    api.version(&api.major, &api.minor);
  });
  return api;
}

std::string log_of(const NvJitLink& api, Handle h, bool error) {
  size_t n = 0;
  if ((error ? api.error_log_size : api.info_log_size)(h, &n) != kSuccess || n <= 1) return "";
  std::string s(n, '\0');
  if ((error ? api.error_log : api.info_log)(h, s.data()) != kSuccess) return "";
  while (!s.empty() && (s.back() == '\0' || s.back() == '\n')) s.pop_back();
  return s;
}

// ".version 8.7" and ".target sm_90a" of a PTX module, "" when absent.
std::string directive(const std::string& ptx, const char* name) {
  std::smatch m;
  const std::regex re(std::string("(^|\\n)\\s*\\") + name + "\\s+([^\\s,]+)");
  return std::regex_search(ptx, m, re) ? m[2].str() : "";
}

// "9.0" -> 90; -1 when not "<digits>.<digits>".
int isa(const std::string& v) {
  const size_t dot = v.find('.');
  if (dot == std::string::npos || dot == 0 || dot + 1 >= v.size()) return -1;
  for (size_t i = 0; i < v.size(); ++i)
    if (i != dot && (v[i] < '0' || v[i] > '9')) return -1;
  return std::atoi(v.substr(0, dot).c_str()) * 10 + std::atoi(v.substr(dot + 1).c_str());
}

}  // namespace

bool ptx_compiler_available() { return nvjitlink().create != nullptr; }

std::string ptx_compiler_version() {
  const NvJitLink& api = nvjitlink();
  return api.create ? std::to_string(api.major) + "." + std::to_string(api.minor) : "";
}

std::vector<std::string> ptx_compile_options(const Request& request) {
  check_arch(request.arch);
  std::vector<std::string> opts{"-arch=" + request.arch};
  for (const std::string& o : request.options) {
    if (o.rfind("-arch", 0) == 0)
      fail("jit: PTX kernel set '" + request.name + "': the host chooses the target (" + request.arch +
           "); found the option '" + o + "'");
    opts.push_back(o);
  }
  return opts;
}

CompileOutput ptx_compile(const Request& request, const std::vector<std::string>& options) {
  const auto t0 = std::chrono::steady_clock::now();
  std::string who = "jit: PTX kernel set '" + request.name + "'";
  if (!request.plugin_name.empty()) who += " of plugin " + request.plugin_name + " " + request.plugin_version;
  if (!request.headers.empty()) fail(who + ": PTX takes no headers, found " + std::to_string(request.headers.size()));
  const NvJitLink& api = nvjitlink();
  if (!api.create) fail(MOEQ_STATUS_CODE_UNAVAILABLE, who + ": " + api.error);
  // Clear messages for the two mistakes a log states obscurely: no module header, an ISA newer
  // than this compiler, a target the requested arch cannot run.
  const std::string version = directive(request.source, ".version"), target = directive(request.source, ".target");
  if (version.empty() || target.empty())
    fail(who + ": not a PTX module (expected '.version X.Y' and '.target sm_NN' directives; found " +
         (version.empty() ? "no .version" : ".version " + version) + ", " +
         (target.empty() ? "no .target" : ".target " + target) + ")");
  if (isa(version) < 0) fail(who + ": .version '" + version + "' is not an ISA version such as 8.7");
  Handle h = nullptr;
  std::vector<const char*> argv;
  for (const auto& o : options) argv.push_back(o.c_str());
  int r = api.create(&h, static_cast<uint32_t>(argv.size()), argv.data());
  if (r != kSuccess) fail(who + ": nvJitLinkCreate failed (" + std::to_string(r) + ") with options " + [&] {
                            std::string s;
                            for (const auto& o : options) s += (s.empty() ? "" : " ") + o;
                            return s;
                          }());
  struct Guard {
    const NvJitLink& api;
    Handle& h;
    ~Guard() { api.destroy(&h); }
  } guard{api, h};
  const std::string file = (request.name.empty() ? "kernel" : request.name) + ".ptx";
  CompileOutput out;
  r = api.add_data(h, kInputPtx, request.source.data(), request.source.size(), file.c_str());
  if (r == kSuccess) r = api.complete(h);
  out.log = log_of(api, h, false);
  if (r != kSuccess) {
    const std::string err = log_of(api, h, true);
    std::string why;
    if (err.find("Unsupported .version") != std::string::npos)
      why = ": PTX ISA " + version + " is newer than this PTX compiler reads (nvJitLink " + ptx_compiler_version() +
            "); compile the module for an older ISA or give the host a newer CUDA toolkit";
    else if (err.find(".target") != std::string::npos || err.find("SM version") != std::string::npos)
      why = ": a module for .target " + target + " cannot be compiled for " + request.arch;
    fail(who + " failed to compile for " + request.arch + why + " (.version " + version + ", .target " + target +
         ", nvJitLink error " + std::to_string(r) + "):\n" + (err.empty() ? "(nvJitLink wrote no log)" : err) +
         (out.log.empty() ? "" : "\n" + out.log));
  }
  size_t size = 0;
  if (api.cubin_size(h, &size) != kSuccess || size == 0)
    fail(MOEQ_STATUS_CODE_INTERNAL, who + ": nvJitLink produced no CUBIN for " + request.arch);
  out.cubin.resize(size);
  if (api.cubin(h, out.cubin.data()) != kSuccess)
    fail(MOEQ_STATUS_CODE_INTERNAL, who + ": nvJitLink could not hand over the CUBIN");
  out.milliseconds = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

}  // namespace moeq::jit
