// Built by a project that sets no C++ standard: moeq::moeq gives C++20 (CMakeLists.txt).
#include <moeq/loader.hpp>
#include <moeq/sdk/sdk.hpp>

#include <cstdio>

int main() {
  moeq::Registry registry(moeq::host::api());
  std::printf("moeq ABI %d.%d, C++ %ld, registry of %zu plugins\n", MOEQ_ABI_MAJOR, MOEQ_ABI_MINOR,
              static_cast<long>(__cplusplus), registry.plugins().size());
  return __cplusplus >= 202002L && registry.plugins().empty() ? 0 : 1;
}
