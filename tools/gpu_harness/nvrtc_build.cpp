#include "nvrtc_build.hpp"

#include "gpu/kernel_sources.hpp"

#include <moeq/error.hpp>

#include <nvrtc.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

namespace moeq::gpu_harness {

namespace {

// FNV-1a over every input of a compile: the harness's cache key (MOEQ_HARNESS_CUBINS).
uint64_t fnv(uint64_t h, const std::string& s) {
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return (h ^ 0xff) * 0x100000001b3ull;
}

std::filesystem::path cache_path(const ct::gpu::KernelSetSource& set, const std::string& arch,
                                 const std::vector<std::string>& options) {
  const char* dir = std::getenv("MOEQ_HARNESS_CUBINS");
  if (dir == nullptr || *dir == 0) return {};
  uint64_t h = 0xcbf29ce484222325ull;
  h = fnv(h, arch);
  h = fnv(h, set.source);
  for (const auto& o : options) h = fnv(h, o);
  for (const auto& hd : ct::gpu::kernel_headers()) h = fnv(fnv(h, hd.name), hd.text);
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(h));
  return std::filesystem::path(dir) / (set.name + "-" + arch + "-" + hex + ".cubin");
}

}  // namespace

Cubin nvrtc_build(const ct::gpu::KernelSetSource& set, const std::string& arch,
                  const std::vector<std::string>& extra_options) {
  const auto t0 = std::chrono::steady_clock::now();
  const std::filesystem::path cached = cache_path(set, arch, extra_options);
  if (!cached.empty() && std::filesystem::exists(cached)) {
    std::ifstream f(cached, std::ios::binary);
    Cubin c;
    c.image.assign(std::istreambuf_iterator<char>(f), {});
    if (!c.image.empty()) return c;
  }
  std::vector<const char*> names, texts;
  for (const auto& h : ct::gpu::kernel_headers()) {
    names.push_back(h.name);
    texts.push_back(h.text);
  }
  nvrtcProgram prog = nullptr;
  auto check = [&](nvrtcResult r, const char* what) {
    if (r != NVRTC_SUCCESS) fail(MOEQ_STATUS_CODE_INTERNAL, set.name + ": " + what + ": " + nvrtcGetErrorString(r));
  };
  check(nvrtcCreateProgram(&prog, set.source.c_str(), (set.name + ".cu").c_str(), static_cast<int>(names.size()),
                           texts.data(), names.data()),
        "nvrtcCreateProgram");
  std::vector<std::string> opts = {"--gpu-architecture=" + arch, "-std=c++17", "-default-device", "-lineinfo"};
  opts.insert(opts.end(), extra_options.begin(), extra_options.end());
  std::vector<const char*> o;
  for (const auto& s : opts) o.push_back(s.c_str());
  const nvrtcResult r = nvrtcCompileProgram(prog, static_cast<int>(o.size()), o.data());
  Cubin out;
  size_t log_size = 0;
  nvrtcGetProgramLogSize(prog, &log_size);
  out.log.resize(log_size);
  if (log_size > 0) nvrtcGetProgramLog(prog, out.log.data());
  while (!out.log.empty() && (out.log.back() == '\0' || out.log.back() == '\n')) out.log.pop_back();
  if (r != NVRTC_SUCCESS) {
    nvrtcDestroyProgram(&prog);
    fail(MOEQ_STATUS_CODE_INVALID_ARGUMENT,
         set.name + " (" + arch + "): NVRTC: " + nvrtcGetErrorString(r) + "\n" + out.log);
  }
  size_t size = 0;
  check(nvrtcGetCUBINSize(prog, &size), "nvrtcGetCUBINSize");
  out.image.resize(size);
  check(nvrtcGetCUBIN(prog, reinterpret_cast<char*>(out.image.data())), "nvrtcGetCUBIN");
  nvrtcDestroyProgram(&prog);
  if (!cached.empty()) {
    std::filesystem::create_directories(cached.parent_path());
    const auto tmp = cached.string() + ".tmp" + std::to_string(reinterpret_cast<uintptr_t>(&out));
    std::ofstream(tmp, std::ios::binary).write(reinterpret_cast<const char*>(out.image.data()),
                                               static_cast<std::streamsize>(out.image.size()));
    std::filesystem::rename(tmp, cached);  // NOTE: atomic, so parallel builds never see half a file
  }
  out.milliseconds = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

std::vector<Cubin> nvrtc_build_all(const std::vector<ct::gpu::KernelSetSource>& sets, const std::string& arch,
                                   unsigned threads) {
  std::vector<Cubin> out(sets.size());
  std::vector<std::string> errors(sets.size());
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t i = next++; i < sets.size(); i = next++) {
      try {
        out[i] = nvrtc_build(sets[i], arch);
      } catch (const std::exception& e) {
        errors[i] = e.what();
      }
    }
  };
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < std::max(1u, threads); ++t) pool.emplace_back(work);
  for (auto& t : pool) t.join();
  std::string all;
  for (const auto& e : errors)
    if (!e.empty()) all += e + "\n";
  if (!all.empty()) fail(MOEQ_STATUS_CODE_INVALID_ARGUMENT, all);
  return out;
}

}  // namespace moeq::gpu_harness
