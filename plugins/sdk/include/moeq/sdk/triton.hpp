// Kernels compiled by Triton, launched from a plugin: Triton's calling convention in C++.
//
// A Triton kernel compiled ahead of time (triton.compile(...).asm["ptx"], and its metadata as
// JSON) is a PTX module whose entry takes the kernel's non-constexpr arguments followed by the
// scratch pointers Triton 3.x appends (global scratch, then profile scratch), launched with
// num_warps * 32 threads a block and `shared` bytes of dynamic shared memory. Embed both files
// with moeq_add_plugin(... PTX kernel.ptx) (the metadata is kernel.json beside it), compile the
// PTX through the host's JIT (jit_compile with MOEQ_JIT_SOURCE_PTX), then:
//
//   moeq::sdk::triton::Kernel k(module, moeq::sdk::triton::embedded_metadata("kernel.ptx"));
//   k.launch({grid_x, grid_y, 1}, {&y, &x, &a, &n}, stream);   // the scratch pointers are added
//
#pragma once
#include <moeq/error.hpp>
#include <moeq/sdk/cuda.hpp>
#include <moeq/sdk/kernels.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

namespace moeq::sdk::triton {

// What a launch needs from Triton's metadata JSON (the compiled kernel's `metadata`).
struct Metadata {
  std::string name;                    // the PTX entry
  int num_warps = 4;
  int num_ctas = 1;
  int shared = 0;                      // dynamic shared memory, bytes
  std::size_t global_scratch_size = 0;  // bytes a program needs; 0 = none
  std::size_t global_scratch_align = 1;
  std::size_t profile_scratch_size = 0;
  bool cooperative = false;            // launch_cooperative_grid
  std::string triton_version;
  std::string target;                  // "GPUTarget(backend='cuda', arch=80, warp_size=32)"
  int scratch_args = 2;                // pointer arguments Triton appended (2 from Triton 3.5 on)
};

// Parses the JSON Triton writes for a compiled kernel. Throws moeq::Error naming the field
// that is missing or of the wrong type, or a feature the launcher does not take (more than one
// CTA per cluster, cooperative grids, a kernel that needs per-program global or profile
// scratch); `what` names the file in messages.
Metadata parse_metadata(std::string_view json, std::string_view what);

// The embedded PTX text (NUL-terminated); throws when it is not embedded. Inline: the table is
// the plugin's own (moeq_add_plugin), so only code built into a plugin may call it.
inline const char* embedded_ptx(std::string_view ptx_file) {
  const char* s = embedded_kernel_source(ptx_file);
  if (s == nullptr) fail(MOEQ_STATUS_CODE_INTERNAL, "PTX file " + std::string(ptx_file) + " is not embedded in this plugin");
  return s;
}

// The metadata embedded beside a PTX file by moeq_add_plugin(PTX ...): "<stem>.json" for
// "<stem>.ptx". Throws when either is not embedded.
inline Metadata embedded_metadata(std::string_view ptx_file) {
  std::string stem(ptx_file);
  if (stem.size() < 4 || stem.compare(stem.size() - 4, 4, ".ptx") != 0)
    fail(MOEQ_STATUS_CODE_INTERNAL, "'" + stem + "' is not a .ptx file name");
  const std::string meta = stem.substr(0, stem.size() - 4) + ".json";
  const char* s = embedded_kernel_source(meta);
  if (s == nullptr)
    fail(MOEQ_STATUS_CODE_INTERNAL, "Triton metadata " + meta + " is not embedded beside " + std::string(ptx_file));
  return parse_metadata(s, meta);
}

// One Triton kernel in a loaded module.
class Kernel {
 public:
  Kernel() = default;
  // Looks the entry up; sets the dynamic shared memory limit when the kernel needs more than
  // the default 48 KiB. Throws naming the entry when the module lacks it.
  Kernel(cuda::Module module, Metadata metadata);
  // Launches on `stream` with the kernel's own arguments (pointers to each value, in order, as
  // cuLaunchKernel takes them); the scratch pointers Triton appended are passed as null.
  void launch(std::array<unsigned, 3> grid, std::initializer_list<void*> args, cuda::Stream stream) const;
  const Metadata& metadata() const { return meta_; }
  unsigned threads() const { return static_cast<unsigned>(meta_.num_warps) * 32u; }

 private:
  cuda::Function function_ = nullptr;
  Metadata meta_;
};

}  // namespace moeq::sdk::triton
