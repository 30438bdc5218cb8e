// How each model family routes a token to its experts, as the framework that defines the family
// computes it: one row per config.json `model_type`. Keys present in config.json override a row's
// default only where the row says the framework reads them; an absent key takes the row's
// default, never a global one. A model_type without a row still loads, but its routing is
// reported as unknown and `moeq run` never calls such a layer ok.
#pragma once
#include <moeq/reference.hpp>

#include <boost/json.hpp>

#include <filesystem>
#include <string>
#include <vector>

namespace moeq {

struct RoutingFamily {
  const char* model_type;
  const char* defined_by;  // the framework code the row follows
  ref::Scoring scoring;
  // Top-k on the raw logits, then the score over the selected only (Granite, gpt-oss, Llama-4);
  // for softmax this is the renormalized softmax, whatever a renormalization key says.
  bool score_after_topk = false;
  const char* renorm_key = nullptr;  // nullptr: fixed at renorm_default
  bool renorm_default = false;
  const char* bias_tensor = nullptr;  // leaf of the correction bias under the router, or nullptr
  // Grouped top-k: keys and defaults (n_group 0 = none). A non-null group_method_key names the
  // key whose value must equal group_method_value for grouping to apply (DeepSeek-V2's topk_method).
  bool grouped = false;
  int n_group_default = 0;
  int topk_group_default = 0;
  ref::GroupScore group_score = ref::GroupScore::kTop2Sum;
  const char* group_method_key = nullptr;
  const char* group_method_value = nullptr;
  const char* scaling_key = nullptr;  // routed_scaling_factor; nullptr: none (1.0)
  float scaling_default = 1.0f;
  bool scaling_only_without_renorm = false;  // DeepSeek-V2: scaled only when not renormalized
  bool scoring_key = false;                  // config.json's scoring_func is read
  bool weight_on_input = false;              // Llama-4: the weight scales the expert's input
  float sparsemixer_eps_default = 0.0f;      // PhiMoE: router_jitter_noise
  // Empty when moeq's apply computes this family's experts (SiLU(gate) * up, down); else why not.
  const char* experts_unsupported = "";
};

// The row of `model_type`, or nullptr.
const RoutingFamily* find_routing_family(const std::string& model_type);
// Every row, in table order (docs, tests).
const std::vector<RoutingFamily>& routing_families();

// One resolved routing setting and where it came from, for `moeq inspect`.
struct RoutingField {
  std::string name;    // "scoring", "renormalize", "groups", "correction bias", "scaling factor", ...
  std::string value;   // "sigmoid", "yes", "8 groups, keep 4 (sum of top-2)", ...
  std::string source;  // "config.json norm_topk_prob" or "deepseek_v3 default (transformers ...)"
};

struct ResolvedRouting {
  const RoutingFamily* family = nullptr;  // nullptr: routing semantics unknown
  ref::RoutingOptions options;            // correction_bias filled per layer from the checkpoint
  bool weight_on_input = false;
  std::vector<RoutingField> fields;
  std::string unknown_reason;  // set when family is nullptr
};

// Resolves the routing of `model_type` from its row and the keys of the (language-model) config
// object `o`. Throws moeq::Error naming `file` and the key on an unknown scoring_func, n_group
// not dividing E, topk_group out of [1, n_group], top_k above the experts the kept groups hold,
// a non-finite or non-positive routed_scaling_factor, or a key of the wrong type.
ResolvedRouting resolve_routing(const std::string& model_type, const boost::json::object& o,
                                const std::filesystem::path& file, int64_t num_experts, int top_k);

// One line: "sigmoid scores, top-8 in 4 of 8 groups (sum of top-2), ..."
std::string routing_summary(const ResolvedRouting& r);

}  // namespace moeq
