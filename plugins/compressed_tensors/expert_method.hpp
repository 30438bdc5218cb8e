// The one method class of the plugin: experts of any ExpertScheme (weight format x scale
// granularity x activation mode), with TP narrowing, lossless block-grid refinement and the
// CPU apply.
#pragma once
#include "scheme.hpp"

#include <moeq/sdk/sdk.hpp>

#include <memory>

namespace moeq::ct {

std::unique_ptr<sdk::Method> make_expert_method(const moeq_method_create_args& args, ExpertScheme scheme);

}  // namespace moeq::ct
