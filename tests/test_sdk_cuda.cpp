// The plugin SDK's CUDA driver shim (<moeq/sdk/cuda.hpp>): every entry point it names exists in
// a real driver library (the toolkit's link stub exports them all), a missing library is a
// clear reason, and without a driver the first use is Error(UNAVAILABLE), never a crash.
#include "support.hpp"

#include <moeq/cuda_driver.hpp>
#include <moeq/sdk/cuda.hpp>

#include <filesystem>

using namespace moeq;
namespace fs = std::filesystem;
namespace scu = moeq::sdk::cuda;

TEST_CASE("sdk cuda: a missing library is a 'no CUDA driver' reason naming it") {
  const scu::DriverLoad none = scu::load_driver("/nonexistent/libcuda.so.1");
  CHECK(none.driver == nullptr);
  CHECK(none.error.rfind("no CUDA driver (/nonexistent/libcuda.so.1: ", 0) == 0);
}

TEST_CASE("sdk cuda: every entry point resolves against the toolkit's libcuda stub") {
  fs::path stub;
  for (const char* p : {"/usr/local/cuda/lib64/stubs/libcuda.so", "/usr/local/cuda/lib/stubs/libcuda.so",
                        "/usr/local/cuda/targets/x86_64-linux/lib/stubs/libcuda.so"})
    if (fs::exists(p)) stub = p;
  if (stub.empty()) {
    MESSAGE("SKIPPED: no CUDA toolkit stub libcuda.so on this machine");
    return;
  }
  const scu::DriverLoad s = scu::load_driver(stub.c_str());
  REQUIRE_MESSAGE(s.driver != nullptr, s.error);
  CHECK(s.error.empty());
  // Every field of Driver is a function pointer; none may stay null (the stub is a CUDA 13
  // one, so it has the optional cuLaunchKernelEx too).
  const auto* slots = reinterpret_cast<void* const*>(s.driver.get());
  const std::size_t n = sizeof(scu::Driver) / sizeof(void*);
  CHECK(n == 18);
  CHECK(reinterpret_cast<void*>(s.driver->cuLaunchKernelEx) != nullptr);
  for (std::size_t i = 0; i < n; ++i) {
    CAPTURE(i);
    CHECK(slots[i] != nullptr);
  }
}

TEST_CASE("sdk cuda: without a driver the first use is Error(UNAVAILABLE) with the reason") {
  if (cuda::available()) {
    CHECK_NOTHROW(scu::driver());
    return;
  }
  try {
    scu::driver();
    FAIL("driver() returned without a CUDA driver");
  } catch (const Error& e) {
    CHECK(e.code() == MOEQ_STATUS_CODE_UNAVAILABLE);
    CHECK(std::string(e.what()).rfind("no CUDA driver (", 0) == 0);
  }
  CHECK_THROWS_AS(scu::use_device(0), Error);
  CHECK_THROWS_AS(scu::OwnStream(), Error);
  std::byte b{};
  CHECK_THROWS_AS(scu::read_device(0, &b, 0x1000, 1, "a read"), Error);
  CHECK_NOTHROW(scu::read_device(0, &b, 0x1000, 0, "an empty read"));  // nothing to do: no driver needed
}
