// NVRTC behind one function: a request and its exact option list in, a CUBIN and the
// compile log out. Knows nothing about caching.
#pragma once
#include <moeq/jit.hpp>

#include <string>
#include <vector>

namespace moeq::jit {

struct CompileOutput {
  std::vector<uint8_t> cubin;
  std::string log;  // NVRTC's log (warnings), possibly empty
  double milliseconds = 0;
};

// Error(INVALID_ARGUMENT) unless `arch` names a real architecture NVRTC can emit a CUBIN
// for: "sm_<digits>" with an optional 'a' or 'f' suffix.
void check_arch(const std::string& arch);

// The options a request compiles with: --gpu-architecture, -std=c++17 (unless the caller
// chose a standard), -default-device, -I for each include dir, then the caller's, in order.
std::vector<std::string> compile_options(const Request& request, const std::vector<std::string>& include_dirs);

// Runs NVRTC with exactly `options`. A source that does not compile throws
// Error(INVALID_ARGUMENT) whose message holds the log; a build without NVRTC throws
// Error(UNIMPLEMENTED).
CompileOutput nvrtc_compile(const Request& request, const std::vector<std::string>& options);

}  // namespace moeq::jit
