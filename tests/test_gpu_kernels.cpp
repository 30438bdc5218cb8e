// The compressed_tensors GPU kernels: every variant compiles with NVRTC for each architecture
// it targets (no GPU needed, so CI runs it), and on a CUDA device every scheme matches the CPU
// references. Device tests skip, saying why, where there is no driver or device.
#include <doctest/doctest.h>

#if MOEQ_HAVE_GPU_BENCH
#include "bench.hpp"
#include "driver.hpp"
#include "geo_dims.hpp"
#include "nvrtc_build.hpp"

#include <moeq/sdk/kernels.hpp>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <thread>

namespace gh = moeq::gpu_harness;

namespace {

// Every variant, on the named shapes and on bench/geo_dims.txt's real models' geometries and
// their TP = 2 and EP = 2 shards.
void compile_every_variant(const char* arch) {
  const auto sets = gh::kernel_variants(arch, moeq::test::geometry_shards());
  CHECK(sets.size() > 1);
  std::string error;
  try {
    gh::nvrtc_build_all(sets, arch, std::max(1u, std::thread::hardware_concurrency()));
  } catch (const std::exception& e) {
    error = e.what();
  }
  INFO(arch << ": " << sets.size() << " kernel sets");
  CHECK_MESSAGE(error.empty(), error);
}

// NVRTC compiles `set` for `arch` into a CUBIN of more than `min_bytes`, or the check fails
// with the compiler's log.
void check_compiles(const moeq::ct::gpu::KernelSetSource& set, const std::string& arch, std::size_t min_bytes) {
  std::string error;
  try {
    const gh::Cubin c = gh::nvrtc_build(set, arch);
    CHECK(c.image.size() > min_bytes);
  } catch (const std::exception& e) {
    error = e.what();
  }
  CHECK_MESSAGE(error.empty(), error);
}

bool device_or_skip() {
  const std::string why = gh::Driver::unavailable_reason();
  if (!why.empty()) MESSAGE("SKIPPED: GPU kernel check needs a CUDA device: " << why);
  return why.empty();
}

void check_on_device(const char* scheme) {
  if (!device_or_skip()) return;
  std::ostringstream log;
  const bool ok = gh::check_scheme(scheme, log);
  INFO(log.str());
  CHECK(ok);
}

}  // namespace

TEST_CASE("every compressed_tensors kernel variant compiles for sm_90a (wgmma and mma.sync)") {
  compile_every_variant("sm_90a");
}
TEST_CASE("every compressed_tensors kernel variant compiles for sm_89 (fp8 mma.sync)") {
  compile_every_variant("sm_89");
}
TEST_CASE("bf16 and int8 W8A16 kernel variants compile for sm_80") { compile_every_variant("sm_80"); }

TEST_CASE("online_quant's device quantization kernels compile for sm_90a, sm_89 and sm_80") {
  std::ifstream in(MOEQ_TEST_ONLINE_KERNEL);
  REQUIRE(in.good());
  moeq::ct::gpu::KernelSetSource set{"online_quant_kernels", std::string(std::istreambuf_iterator<char>(in), {})};
  REQUIRE(set.source.find("oq_blocks") != std::string::npos);
  for (const char* arch : {"sm_90a", "sm_89", "sm_80"}) {
    INFO(arch);
    check_compiles(set, arch, 1000);
  }
}

TEST_CASE("every SDK device header compiles on its own for sm_90a, sm_89 and sm_80") {
  // A plugin may include any of them, alone, for any arch it targets: each brings what it needs
  // (a header missing its own includes fails here), and what needs a newer arch (wgmma, TMA,
  // e4m3) does not stop a kernel that does not call it from compiling.
  std::vector<std::string> names;
  for (const moeq::sdk::EmbeddedKernel& h : moeq::sdk::device_headers()) names.emplace_back(h.name);
  CAPTURE(names.size());
  for (const char* want : {"moeq/sdk/device/wgmma.cuh", "moeq/sdk/device/tma.cuh", "moeq/sdk/device/mma.cuh"})
    CHECK(std::find(names.begin(), names.end(), want) != names.end());
  for (const std::string& name : names)
    for (const std::string arch : {"sm_90a", "sm_89", "sm_80"}) {
      moeq::ct::gpu::KernelSetSource set{"sdk_header_alone",
                                         "#include \"" + name + "\"\n"
                                         "extern \"C\" __global__ void sdk_header_alone(unsigned* out) {\n"
                                         "  out[threadIdx.x] = threadIdx.x;\n}\n"};
      INFO(name << " for " << arch);
      check_compiles(set, arch, 100);
    }
}

TEST_CASE("gpu bf16 experts match the CPU reference on device") { check_on_device("bf16"); }
TEST_CASE("gpu fp8 channel / per-token experts match the CPU reference on device") {
  check_on_device("fp8-channel");
}
TEST_CASE("gpu fp8 128x128 block / per-group experts (and a 64x64 refined grid) match on device") {
  check_on_device("fp8-block");
}
TEST_CASE("gpu fp8 per-tensor dynamic experts match the CPU reference on device") { check_on_device("fp8-tensor"); }
TEST_CASE("gpu fp8 per-tensor static experts match the CPU reference on device") {
  check_on_device("fp8-tensor-static");
}
TEST_CASE("gpu int8 W8A16 per-channel experts match the CPU reference on device") { check_on_device("w8a16"); }

#else
TEST_CASE("compressed_tensors GPU kernels") {
  MESSAGE("SKIPPED: built without a CUDA toolkit (NVRTC): the kernel compile and device checks do not run");
}
#endif
