// The routing table: one row per model_type, read off the framework that defines the model
// (transformers 5.17's modeling code; vLLM's where transformers has no model). docs/ROUTING.md
// says, per row, what the framework computes and which fixture proves it.
#include <moeq/error.hpp>
#include <moeq/routing_family.hpp>

#include <cmath>
#include <sstream>

namespace moeq {
namespace json = boost::json;

namespace {

using ref::GroupScore;
using ref::Scoring;

RoutingFamily softmax_row(const char* type, const char* by, const char* renorm_key, bool renorm_default) {
  RoutingFamily f{};
  f.model_type = type;
  f.defined_by = by;
  f.scoring = Scoring::kSoftmax;
  f.renorm_key = renorm_key;
  f.renorm_default = renorm_default;
  return f;
}

RoutingFamily softmax_after_topk(const char* type, const char* by) {
  RoutingFamily f = softmax_row(type, by, nullptr, true);
  f.score_after_topk = true;
  return f;
}

// DeepSeek-V3's router: sigmoid scores, correction bias for selection only, groups scored by
// the sum of their top-2 biased scores, renormalize (norm_topk_prob), then the scaling factor.
RoutingFamily deepseek_v3_row(const char* type, const char* by, int n_group, int topk_group, float scaling,
                              bool scoring_key) {
  RoutingFamily f{};
  f.model_type = type;
  f.defined_by = by;
  f.scoring = Scoring::kSigmoid;
  f.scoring_key = scoring_key;
  f.renorm_key = "norm_topk_prob";
  f.renorm_default = true;
  f.bias_tensor = "e_score_correction_bias";
  f.grouped = true;
  f.n_group_default = n_group;
  f.topk_group_default = topk_group;
  f.group_score = GroupScore::kTop2Sum;
  f.scaling_key = "routed_scaling_factor";
  f.scaling_default = scaling;
  return f;
}

std::vector<RoutingFamily> make_table() {
  std::vector<RoutingFamily> t;
  t.push_back(softmax_row("qwen2_moe", "transformers modeling_qwen2_moe.py", "norm_topk_prob", false));
  t.push_back(softmax_row("qwen3_moe", "transformers modeling_qwen3_moe.py", "norm_topk_prob", false));
  t.push_back(softmax_row("qwen3_next", "transformers modeling_qwen3_next.py", "norm_topk_prob", true));
  t.push_back(softmax_row("qwen3_vl_moe", "transformers modeling_qwen3_vl_moe.py", nullptr, true));
  t.push_back(softmax_row("qwen3_vl_moe_text", "transformers modeling_qwen3_vl_moe.py", nullptr, true));
  t.push_back(softmax_row("mixtral", "transformers modeling_mixtral.py", nullptr, true));
  t.push_back(softmax_after_topk("granitemoe", "transformers modeling_granitemoe.py"));
  t.push_back(softmax_after_topk("granitemoeshared", "transformers modeling_granitemoeshared.py"));
  t.push_back(softmax_after_topk("granitemoehybrid", "transformers modeling_granitemoehybrid.py"));
  t.push_back(softmax_row("olmoe", "transformers modeling_olmoe.py", "norm_topk_prob", false));
  {
    RoutingFamily f = softmax_row("phimoe", "transformers modeling_phimoe.py", nullptr, false);
    f.scoring = Scoring::kSparseMixer;
    f.sparsemixer_eps_default = 0.01f;
    t.push_back(f);
  }
  {
    // Softmax over all experts; groups (scored by their max) only with topk_method
    // group_limited_greedy; never renormalized (norm_topk_prob is not read); always scaled.
    RoutingFamily f = softmax_row("deepseek_v2", "transformers modeling_deepseek_v2.py", nullptr, false);
    f.grouped = true;
    f.group_score = GroupScore::kMax;
    f.group_method_key = "topk_method";
    f.group_method_value = "group_limited_greedy";
    f.scaling_key = "routed_scaling_factor";
    f.scaling_default = 1.0f;
    t.push_back(f);
  }
  // transformers reads neither scoring_func nor topk_method for these: always sigmoid + bias.
  t.push_back(deepseek_v3_row("deepseek_v3", "transformers modeling_deepseek_v3.py", 8, 4, 2.5f, false));
  t.push_back(deepseek_v3_row("deepseek_v32", "transformers modeling_deepseek_v32.py", 8, 4, 2.5f, false));
  t.push_back(deepseek_v3_row("glm4_moe", "transformers modeling_glm4_moe.py", 1, 1, 1.0f, false));
  // Kimi-K2 configs (model_type kimi_k2, DeepseekV3ForCausalLM) run through vLLM's DeepSeek path,
  // which reads scoring_func; transformers has no kimi_k2 model.
  t.push_back(deepseek_v3_row("kimi_k2", "vLLM deepseek_v2.py (DeepseekV3 config defaults)", 8, 4, 2.5f, true));
  {
    // DeepSeek-V4: scoring_func (default sqrtsoftplus), bias for selection, no groups, always
    // renormalized, scaled by routed_scaling_factor (default 1.5).
    RoutingFamily f{};
    f.model_type = "deepseek_v4";
    f.defined_by = "transformers modeling_deepseek_v4.py";
    f.scoring = Scoring::kSqrtSoftplus;
    f.scoring_key = true;
    f.renorm_default = true;
    f.bias_tensor = "e_score_correction_bias";
    f.scaling_key = "routed_scaling_factor";
    f.scaling_default = 1.5f;
    f.experts_unsupported =
        "DeepSeek-V4 experts clamp gate and up (swiglu_limit) before SiLU(gate) * up, and its hash-routed layers take "
        "expert ids from a token table; moeq's apply computes the unclamped SiLU(gate) * up";
    t.push_back(f);
  }
  {
    // Top-k on the logits, sigmoid of the selected, no renormalization; the weight scales the
    // expert's input, not its output.
    RoutingFamily f{};
    f.defined_by = "transformers modeling_llama4.py";
    f.scoring = Scoring::kSigmoid;
    f.score_after_topk = true;
    f.weight_on_input = true;
    for (const char* type : {"llama4", "llama4_text"}) {
      f.model_type = type;
      t.push_back(f);
    }
  }
  {
    RoutingFamily f = softmax_after_topk("gpt_oss", "transformers modeling_gpt_oss.py");
    f.experts_unsupported =
        "gpt-oss experts add biases and use a clamped SwiGLU (alpha 1.702, limit 7, up + 1), and its router adds "
        "a logit bias; moeq's apply computes SiLU(gate) * up without biases";
    t.push_back(f);
  }
  return t;
}

std::string quote(const std::string& s) { return "'" + s + "'"; }

const json::value* present(const json::object& o, const char* key) {
  if (key == nullptr) return nullptr;
  const json::value* v = o.if_contains(key);
  return v != nullptr && !v->is_null() ? v : nullptr;
}

std::string where(const std::filesystem::path& file, const char* key) { return file.string() + ": " + key; }

int int_key(const json::value& v, const std::filesystem::path& file, const char* key) {
  if (!v.is_int64() && !v.is_uint64())
    fail(where(file, key) + " must be an integer, found " + json::serialize(v));
  const int64_t n = v.is_int64() ? v.as_int64() : static_cast<int64_t>(v.as_uint64());
  if (n < 0 || n > (int64_t{1} << 20)) fail(where(file, key) + " out of range, found " + std::to_string(n));
  return static_cast<int>(n);
}

std::string scoring_name(Scoring s) {
  switch (s) {
    case Scoring::kSoftmax: return "softmax";
    case Scoring::kSigmoid: return "sigmoid";
    case Scoring::kSparseMixer: return "sparsemixer";
    case Scoring::kSqrtSoftplus: return "sqrtsoftplus";
  }
  return "?";
}

std::string fmt(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

}  // namespace

const std::vector<RoutingFamily>& routing_families() {
  static const std::vector<RoutingFamily> table = make_table();
  return table;
}

const RoutingFamily* find_routing_family(const std::string& model_type) {
  for (const RoutingFamily& f : routing_families())
    if (model_type == f.model_type) return &f;
  return nullptr;
}

ResolvedRouting resolve_routing(const std::string& model_type, const json::object& o,
                                const std::filesystem::path& file, int64_t num_experts, int top_k) {
  ResolvedRouting r;
  ref::RoutingOptions& opt = r.options;
  opt.top_k = top_k;
  if (top_k < 1 || top_k > num_experts)
    fail(where(file, "num_experts_per_tok") + " " + std::to_string(top_k) + " must be in [1, num_experts = " +
         std::to_string(num_experts) + "]");
  const RoutingFamily* f = find_routing_family(model_type);
  r.family = f;
  const std::string deflt = f ? std::string(f->model_type) + " default (" + f->defined_by + ")" : "";
  auto field = [&](std::string name, std::string value, std::string source) {
    r.fields.push_back({std::move(name), std::move(value), std::move(source)});
  };
  auto from_config = [](const char* key) { return std::string("config.json ") + key; };

  // scoring_func: validated wherever it appears; read where the row says the framework does.
  const json::value* sf = present(o, "scoring_func");
  if (sf != nullptr) {
    if (!sf->is_string() ||
        (sf->as_string() != "softmax" && sf->as_string() != "sigmoid" && sf->as_string() != "sqrtsoftplus"))
      fail(where(file, "scoring_func") + " must be \"softmax\", \"sigmoid\" or \"sqrtsoftplus\", found " +
           json::serialize(*sf));
  }
  const json::value* rsf = present(o, "routed_scaling_factor");
  if (rsf != nullptr) {
    const double v = rsf->is_number() ? rsf->to_number<double>() : std::nan("");
    if (!rsf->is_number() || !std::isfinite(v) || v <= 0.0)
      fail(where(file, "routed_scaling_factor") + " must be a finite number > 0, found " + json::serialize(*rsf));
  }
  if (f == nullptr) {
    r.unknown_reason = "routing semantics unknown for model_type " +
                       quote(model_type.empty() ? std::string("(none)") : model_type) +
                       ": moeq has no routing row for it (docs/ROUTING.md lists the families it knows)";
    // Best effort for tools that still route (never called ok): the config's own keys.
    if (sf != nullptr && sf->as_string() == "sigmoid") opt.scoring = Scoring::kSigmoid;
    if (sf != nullptr && sf->as_string() == "sqrtsoftplus") opt.scoring = Scoring::kSqrtSoftplus;
    if (const json::value* n = present(o, "norm_topk_prob"); n != nullptr && n->is_bool()) opt.renormalize = n->as_bool();
    if (rsf != nullptr) opt.routed_scaling_factor = static_cast<float>(rsf->to_number<double>());
    field("semantics", "unknown", r.unknown_reason);
    return r;
  }

  // Scoring.
  opt.scoring = f->scoring;
  if (f->scoring_key && sf != nullptr) {
    opt.scoring = sf->as_string() == "sigmoid"    ? Scoring::kSigmoid
                  : sf->as_string() == "softmax" ? Scoring::kSoftmax
                                                 : Scoring::kSqrtSoftplus;
    field("scoring", scoring_name(opt.scoring), from_config("scoring_func"));
  } else {
    field("scoring", scoring_name(opt.scoring) + (f->score_after_topk ? " of the top-k logits" : ""),
          deflt + (sf != nullptr ? "; config.json scoring_func " + json::serialize(*sf) + " is not read by it" : ""));
  }
  if (opt.scoring == Scoring::kSparseMixer) {
    opt.sparsemixer_eps = f->sparsemixer_eps_default;
    std::string src = deflt;
    if (const json::value* e = present(o, "router_jitter_noise")) {
      if (!e->is_number() || !std::isfinite(e->to_number<double>()) || e->to_number<double>() < 0)
        fail(where(file, "router_jitter_noise") + " must be a finite number >= 0, found " + json::serialize(*e));
      opt.sparsemixer_eps = static_cast<float>(e->to_number<double>());
      src = from_config("router_jitter_noise");
    }
    if (top_k != 2)
      fail(where(file, "num_experts_per_tok") + " " + std::to_string(top_k) +
           ": phimoe's sparse mixer always routes to 2 experts, whatever the config says");
    field("sparse mixer eps", fmt(opt.sparsemixer_eps), src);
  }

  // Renormalization.
  if (f->score_after_topk && opt.scoring == Scoring::kSoftmax) {
    opt.renormalize = true;
    field("renormalize", "yes (softmax over the selected)", deflt);
  } else if (opt.scoring == Scoring::kSparseMixer) {
    opt.renormalize = false;
    field("renormalize", "no", deflt);
  } else {
    opt.renormalize = f->renorm_default;
    std::string src = deflt;
    if (const json::value* n = present(o, f->renorm_key)) {
      if (!n->is_bool()) fail(where(file, f->renorm_key) + " must be true or false, found " + json::serialize(*n));
      opt.renormalize = n->as_bool();
      src = from_config(f->renorm_key);
    }
    field("renormalize", opt.renormalize ? "yes" : "no", src);
  }

  // Correction bias (filled per layer from the checkpoint).
  field("correction bias", f->bias_tensor ? std::string("router ") + f->bias_tensor + " [E], selection only" : "none",
        deflt);

  // Grouped top-k.
  if (!f->grouped) field("groups", "none", deflt);
  if (f->grouped) {
    bool on = true;
    std::string src = deflt;
    if (f->group_method_key != nullptr) {
      const json::value* m = present(o, f->group_method_key);
      on = m != nullptr && m->is_string() && m->as_string() == f->group_method_value;
      src = m != nullptr ? from_config(f->group_method_key) + " " + json::serialize(*m) : deflt;
    }
    int n_group = f->n_group_default, topk_group = f->topk_group_default;
    if (on) {
      if (const json::value* g = present(o, "n_group")) {
        n_group = int_key(*g, file, "n_group");
        src = from_config("n_group");
      }
      if (const json::value* g = present(o, "topk_group")) topk_group = int_key(*g, file, "topk_group");
    }
    if (on && n_group > 1) {
      if (num_experts % n_group != 0)
        fail(where(file, "n_group") + " = " + std::to_string(n_group) + " must divide the " +
             std::to_string(num_experts) + " experts");
      if (topk_group < 1 || topk_group > n_group)
        fail(where(file, "topk_group") + " must be in [1, n_group = " + std::to_string(n_group) + "], found " +
             std::to_string(topk_group));
      const int64_t kept = int64_t{topk_group} * (num_experts / n_group);
      if (top_k > kept)
        fail(where(file, "num_experts_per_tok") + " " + std::to_string(top_k) + " exceeds the " +
             std::to_string(kept) + " experts of the topk_group = " + std::to_string(topk_group) + " kept groups");
      opt.n_group = n_group;
      opt.topk_group = topk_group;
      opt.group_score = f->group_score;
      field("groups",
            std::to_string(n_group) + " groups, keep " + std::to_string(topk_group) +
                (f->group_score == GroupScore::kTop2Sum ? " (group score: sum of its top-2)" : " (group score: its max)"),
            src);
    } else {
      field("groups", "none", src);
    }
  }

  // Scaling factor.
  if (f->scaling_key != nullptr) {
    float s = f->scaling_default;
    std::string src = deflt;
    if (rsf != nullptr) {
      s = static_cast<float>(rsf->to_number<double>());
      src = from_config(f->scaling_key);
    }
    if (f->scaling_only_without_renorm && opt.renormalize) {
      field("scaling factor", "1 (not applied when renormalizing; " + fmt(s) + " given)", deflt);
      s = 1.0f;
    } else {
      field("scaling factor", fmt(s), src);
    }
    opt.routed_scaling_factor = s;
  } else {
    field("scaling factor", "1 (none)",
          deflt + (rsf != nullptr ? "; config.json routed_scaling_factor is not read by it" : ""));
  }
  r.weight_on_input = f->weight_on_input;
  if (f->weight_on_input) field("weight applied to", "the expert's input", deflt);
  return r;
}

std::string routing_summary(const ResolvedRouting& r) {
  if (r.family == nullptr) return r.unknown_reason;
  std::string s;
  for (const RoutingField& f : r.fields) s += (s.empty() ? "" : "; ") + f.name + " " + f.value;
  return s;
}

}  // namespace moeq
