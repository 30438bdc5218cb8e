#include "nvrtc_build.hpp"

#include "gpu/kernel_sources.hpp"

#include <moeq/jit.hpp>

namespace moeq::gpu_harness {

jit::Request jit_request(const ct::gpu::KernelSetSource& set, const std::string& arch,
                         const std::vector<std::string>& extra_options) {
  jit::Request r;
  r.name = set.name;
  r.source = set.source;
  for (const auto& h : ct::gpu::jit_headers()) r.headers.push_back({h.name, h.text});
  r.options = extra_options;
  r.arch = arch;
  r.plugin_name = "compressed_tensors";
  r.plugin_version = "gpu-harness";
  return r;
}

namespace {

Cubin cubin_of(const jit::Kernel& k) {
  Cubin c;
  c.image = *k.cubin;
  c.log = k.log;
  c.milliseconds = k.origin == jit::Origin::compiled ? k.milliseconds : 0;
  return c;
}

}  // namespace

Cubin nvrtc_build(const ct::gpu::KernelSetSource& set, const std::string& arch,
                  const std::vector<std::string>& extra_options) {
  return cubin_of(jit::JitService::process().compile(jit_request(set, arch, extra_options)));
}

std::vector<Cubin> nvrtc_build_all(const std::vector<ct::gpu::KernelSetSource>& sets, const std::string& arch,
                                   unsigned, const std::vector<std::string>& extra_options) {
  std::vector<jit::Request> requests;
  for (const auto& s : sets) requests.push_back(jit_request(s, arch, extra_options));
  std::vector<Cubin> out;
  for (const auto& k : jit::JitService::process().compile(requests)) out.push_back(cubin_of(k));
  return out;
}

}  // namespace moeq::gpu_harness
