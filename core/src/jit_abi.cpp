// The host table's jit_compile slot: an ABI request becomes a jit::Request, is compiled
// through the process' JitService, and its image (a CUBIN, or the PTX fallback the driver
// compiles) is loaded once per device.
#include <moeq/cuda_driver.hpp>
#include <moeq/error.hpp>
#include <moeq/jit.hpp>

#include <map>
#include <mutex>

namespace moeq::jit {
namespace {

std::string text(const char* s) { return s ? s : ""; }

// Modules loaded through the ABI, one per (key, device), loaded for the life of the process.
void* loaded_module(const Kernel& k, int device) {
  static std::mutex mutex;
  // NOTE: leaked on purpose: unloading at static destruction could run after the driver
  // is gone, and plugins may hold the module's functions in CUDA graphs until exit.
  static auto* modules = new std::map<std::pair<std::string, int>, cuda::Module>();
  std::lock_guard<std::mutex> lock(mutex);
  auto it = modules->find({k.key, device});
  if (it == modules->end())
    it = modules->emplace(std::pair{k.key, device}, cuda::Module::load(device, *k.cubin)).first;
  return it->second.get();
}

}  // namespace

void serve_abi_request(moeq_jit_compile_args& a) {
  // NOTE: a caller built against an older abi.h has no image_kind: its struct ends before it.
  const bool has_image_kind = a.struct_size >= MOEQ_STRUCT_SIZE(moeq_jit_compile_args, image_kind);
  a.module = nullptr;
  a.cache_hit = 0;
  a.cubin = nullptr;
  a.cubin_size = 0;
  if (has_image_kind) a.image_kind = MOEQ_JIT_IMAGE_CUBIN;
  const std::string who = "jit_compile '" + text(a.name) + "'";
  if (a.source == nullptr) fail(who + ": NULL source");
  if (a.num_options > 0 && a.options == nullptr) fail(who + ": NULL options with num_options > 0");
  if (a.num_headers > 0 && (a.header_names == nullptr || a.header_contents == nullptr))
    fail(who + ": NULL header_names or header_contents with num_headers > 0");
  const bool ptx = (a.flags & MOEQ_JIT_SOURCE_PTX) != 0;
  if (ptx && a.num_headers > 0) fail(who + ": a PTX module takes no headers, found " + std::to_string(a.num_headers));
  if (!ptx && !compiler_available())
    fail(MOEQ_STATUS_CODE_UNIMPLEMENTED, who + ": this host was built without NVRTC (no CUDA toolkit at build time)");
  if (a.flags & ~(MOEQ_JIT_COMPILE_ONLY | MOEQ_JIT_SOURCE_PTX))
    fail(who + ": unknown flags " + std::to_string(a.flags & ~(MOEQ_JIT_COMPILE_ONLY | MOEQ_JIT_SOURCE_PTX)));

  const bool load = (a.flags & MOEQ_JIT_COMPILE_ONLY) == 0;
  const bool need_device = load || a.arch == nullptr || a.arch[0] == '\0';
  if (need_device && a.device.device_type != kDLCUDA)
    fail(who + ": device must be kDLCUDA to load a module or to take its arch (found device type " +
         std::to_string(a.device.device_type) + ")");

  Request r;
  r.kind = ptx ? SourceKind::ptx : SourceKind::cuda;
  r.name = a.name ? a.name : "kernel";
  r.source = a.source;
  for (size_t i = 0; i < a.num_options; ++i) {
    if (a.options[i] == nullptr) fail(who + ": option " + std::to_string(i) + " is NULL");
    r.options.emplace_back(a.options[i]);
  }
  for (size_t i = 0; i < a.num_headers; ++i) {
    if (a.header_names[i] == nullptr || a.header_contents[i] == nullptr)
      fail(who + ": header " + std::to_string(i) + " has a NULL name or contents");
    r.headers.push_back({a.header_names[i], a.header_contents[i]});
  }
  r.plugin_name = text(a.plugin_name);
  r.plugin_version = text(a.plugin_version);
  if (a.arch != nullptr && a.arch[0] != '\0') {
    r.arch = a.arch;
  } else {
    const cuda::DeviceProperties p = cuda::device_properties(a.device.device_id);  // UNAVAILABLE without a driver
    r.arch = arch_for(p.sm_major, p.sm_minor);
  }

  const Kernel k = JitService::process().compile(r);
  void* module = load ? loaded_module(k, a.device.device_id) : nullptr;
  a.module = module;
  a.cache_hit = k.origin == Origin::compiled ? 0 : 1;
  a.cubin = k.cubin->data();
  a.cubin_size = k.cubin->size();
  if (has_image_kind) a.image_kind = k.image == Image::ptx ? MOEQ_JIT_IMAGE_PTX : MOEQ_JIT_IMAGE_CUBIN;
}

}  // namespace moeq::jit
