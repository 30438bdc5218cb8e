// MoE geometry and routing read from config.json, by key, for every family.
#pragma once
#include <moeq/reference.hpp>
#include <moeq/routing_family.hpp>

#include <boost/json.hpp>

#include <cstdint>
#include <filesystem>
#include <string>

namespace moeq {

struct MoeConfig {
  std::string model_type;
  int64_t num_experts = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;  // per expert
  int top_k = 0;
  // BMM-style fused experts ([E, H, 2I] / [E, I, H], Llama-4); decides only when the shapes
  // alone cannot (H == 2I or H == I).
  bool fused_experts_transposed = false;
  ref::RoutingOptions routing;    // bias is filled per layer from the checkpoint
  // The family's row and every setting with its source (config.json key or family default);
  // resolved_routing.family is nullptr when the model_type has no row.
  ResolvedRouting resolved_routing;
  // Where routing.renormalize came from, for `moeq inspect`.
  std::string renormalize_source;
};

// Throws moeq::Error naming `file` and the missing or bad key.
MoeConfig parse_moe_config(const boost::json::object& config, const std::filesystem::path& file);

}  // namespace moeq
