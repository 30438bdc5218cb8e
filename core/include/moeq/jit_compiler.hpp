// NVRTC behind one function: a request and its exact option list in, a CUBIN and the
// compile log out. Knows nothing about caching.
#pragma once
#include <moeq/jit.hpp>

#include <string>
#include <vector>

namespace moeq::jit {

struct CompileOutput {
  std::vector<uint8_t> cubin;  // the image: a CUBIN, or NUL-terminated PTX text (image == ptx)
  Image image = Image::cubin;
  std::string log;  // NVRTC's log (warnings), possibly empty
  double milliseconds = 0;
};

// Error(INVALID_ARGUMENT) unless `arch` names a real architecture NVRTC can emit a CUBIN
// for: "sm_<digits>" with an optional 'a' or 'f' suffix.
void check_arch(const std::string& arch);

// The compute capabilities this NVRTC emits code for, as ints (75, 80, ..., 120, 121), ascending;
// empty without NVRTC.
std::vector<int> nvrtc_supported_archs();

// What NVRTC builds for a (checked) arch.
struct Target {
  std::string name;            // the --gpu-architecture value: the arch, or "compute_121"
  Image image = Image::cubin;
};
// The arch itself, for a CUBIN, unless it is newer than the newest arch this NVRTC supports
// ("sm_200", "sm_130a"): then PTX for the newest plain virtual arch ("compute_121"), which the
// driver compiles for the device at load. An arch NVRTC does not know that is not newer than
// its newest (too old, or no such GPU) stays as it is: NVRTC says why it cannot build it.
Target nvrtc_target(const std::string& arch);

// The options a request compiles with: --gpu-architecture (nvrtc_target()), -std=c++17 (unless
// the caller chose a standard), -default-device, -I for each include dir, then the caller's.
std::vector<std::string> compile_options(const Request& request, const std::vector<std::string>& include_dirs);

// Runs NVRTC with exactly `options`; returns the CUBIN, or the PTX when nvrtc_target() says so.
// A source that does not compile throws Error(INVALID_ARGUMENT) whose message holds the log; a build without NVRTC throws
// Error(UNIMPLEMENTED).
CompileOutput nvrtc_compile(const Request& request, const std::vector<std::string>& options);

// PTX to CUBIN with nvJitLink, opened at run time (libnvJitLink.so.13, or MOEQ_NVJITLINK).
bool ptx_compiler_available();
std::string ptx_compiler_version();  // "13.0"; empty when unavailable
// "-arch=<arch>", then the caller's options (an -arch of its own is refused: the host chooses).
std::vector<std::string> ptx_compile_options(const Request& request);
// A module without .version/.target, or one nvJitLink refuses, throws Error(INVALID_ARGUMENT)
// holding its log (and saying so plainly for an ISA newer than the compiler or a .target the
// arch cannot take); no nvJitLink: Error(UNAVAILABLE).
CompileOutput ptx_compile(const Request& request, const std::vector<std::string>& options);

}  // namespace moeq::jit
