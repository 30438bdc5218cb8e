// FP8 W8A8 experts with per-output-channel weight scales and dynamic per-token activations.
#pragma once
#include "ct_scheme.hpp"

#include <moeq/sdk/sdk.hpp>

#include <map>
#include <memory>

namespace moeq::ct {

std::unique_ptr<sdk::Method> make_fp8_channel_method(const moeq_method_create_args& args, ExpertScheme scheme);

}  // namespace moeq::ct
