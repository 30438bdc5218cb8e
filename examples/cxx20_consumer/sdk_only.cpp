// Compiled against moeq::sdk alone, with no standard set by the project.
#include <moeq/sdk/kernels.hpp>
#include <moeq/sdk/sdk.hpp>

static_assert(__cplusplus >= 202002L, "moeq::sdk must give its consumers C++20");
