// Kernel sources embedded in a plugin at build time: the KERNELS files of moeq_add_plugin().
//
//   moeq_add_plugin(my_format SOURCES plugin.cpp KERNELS kernels/gemm.cuh kernels/common.cuh)
//
//   const char* src = moeq::sdk::embedded_kernel_source("gemm.cuh");   // NUL-terminated, or nullptr
//   moeq::sdk::KernelHeaders h = moeq::sdk::embedded_kernel_headers();  // every file, for jit_compile
//   args.header_names = h.names.data(); args.header_contents = h.contents.data();
//   args.num_headers = h.names.size();
//
// Files are named by their file name without directories, exactly as sources #include them.
// The table lives in the plugin's own .so (hidden), is static and immutable, and costs nothing
// at load: reading it allocates nothing and is safe from any thread, probe included.
#pragma once
#include <cstddef>
#include <initializer_list>
#include <span>
#include <string_view>
#include <vector>

namespace moeq::sdk {

struct EmbeddedKernel {
  const char* name;    // "gemm.cuh"
  const char* source;  // the file's bytes, NUL-terminated
  std::size_t size;    // bytes, without the terminating NUL
};

// Every KERNELS file of this plugin, in the order given to moeq_add_plugin. Defined by the
// file moeq_add_plugin generates; a plugin built without moeq_add_plugin does not link.
std::span<const EmbeddedKernel> embedded_kernels();

// The SDK's device headers (<moeq/sdk/device/*.cuh>: bf16/e4m3/int8 conversions, cp.async,
// ldmatrix and mma.sync, Hopper wgmma, mbarriers and TMA loads, programmatic-dependent-launch
// control), named by their include paths
// ("moeq/sdk/device/convert.cuh"), so a plugin's kernels `#include "moeq/sdk/device/mma.cuh"`.
// Defined in the SDK library.
std::span<const EmbeddedKernel> device_headers();

// The source of the KERNELS file `name`, or nullptr when there is none of that name.
inline const char* embedded_kernel_source(std::string_view name) {
  for (const EmbeddedKernel& k : embedded_kernels())
    if (name == k.name) return k.source;
  return nullptr;
}

// Parallel arrays of every embedded file, then the SDK's device headers, in the shape
// moeq_jit_compile_args wants (header_names / header_contents / num_headers). The pointers are
// static; the vectors are the caller's.
struct KernelHeaders {
  std::vector<const char*> names;
  std::vector<const char*> contents;
};
inline KernelHeaders embedded_kernel_headers() {
  KernelHeaders h;
  for (const auto& table : {embedded_kernels(), device_headers()})
    for (const EmbeddedKernel& k : table) {
      h.names.push_back(k.name);
      h.contents.push_back(k.source);
    }
  return h;
}

}  // namespace moeq::sdk
