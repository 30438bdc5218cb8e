#include <moeq/error.hpp>
#include <moeq/model_config.hpp>

namespace moeq {
namespace json = boost::json;

namespace {

const json::value* first_key(const json::object& o, std::initializer_list<const char*> keys) {
  for (const char* k : keys)
    if (const json::value* v = o.if_contains(k); v != nullptr && !v->is_null()) return v;
  return nullptr;
}

// Sanity limits on the geometry (issue 8): far above any real model (DeepSeek-V3: 256 experts,
// hidden 7168), low enough that E x 2I x H and every stride derived from them fit in 64 bits.
constexpr int64_t kMaxExperts = int64_t{1} << 16;
constexpr int64_t kMaxDim = int64_t{1} << 20;

int64_t positive_int(const json::object& o, std::initializer_list<const char*> keys,
                     const std::filesystem::path& file, int64_t max = kMaxDim) {
  const json::value* v = first_key(o, keys);
  std::string names;
  for (const char* k : keys) names += (names.empty() ? "" : " / ") + std::string(k);
  if (v == nullptr) fail(file.string() + ": missing " + names);
  if (!v->is_int64() && !v->is_uint64())
    fail(file.string() + ": " + names + " must be an integer, found " + json::serialize(*v));
  int64_t n = v->is_int64() ? v->as_int64() : static_cast<int64_t>(v->as_uint64());
  if (n <= 0) fail(file.string() + ": " + names + " must be > 0, found " + std::to_string(n));
  if (n > max)
    fail(file.string() + ": " + names + " " + std::to_string(n) + " exceeds the sanity limit " + std::to_string(max));
  return n;
}

bool flag(const json::object& o, const char* key, bool fallback) {
  const json::value* v = o.if_contains(key);
  return (v != nullptr && v->is_bool()) ? v->as_bool() : fallback;
}

}  // namespace

MoeConfig parse_moe_config(const json::object& cfg, const std::filesystem::path& file) {
  MoeConfig c;
  if (const json::value* t = cfg.if_contains("model_type"); t != nullptr && t->is_string())
    c.model_type = std::string(t->as_string());
  // Multimodal configs nest the language model.
  const json::object* o = &cfg;
  if (const json::value* tc = cfg.if_contains("text_config"); tc != nullptr && tc->is_object())
    o = &tc->as_object();
  c.num_experts = positive_int(*o, {"num_experts", "num_local_experts", "n_routed_experts"}, file, kMaxExperts);
  c.hidden_size = positive_int(*o, {"hidden_size"}, file);
  c.intermediate_size = positive_int(*o, {"moe_intermediate_size", "intermediate_size"}, file);
  c.fused_experts_transposed = c.model_type.rfind("llama4", 0) == 0;
  c.top_k = static_cast<int>(positive_int(*o, {"num_experts_per_tok", "moe_topk"}, file, kMaxExperts));
  if (c.top_k > c.num_experts)
    fail(file.string() + ": num_experts_per_tok " + std::to_string(c.top_k) + " exceeds num_experts " +
         std::to_string(c.num_experts));

  ref::RoutingOptions& r = c.routing;
  r.top_k = c.top_k;
  // Mixtral and Granite take the top-k logits and softmax over them, which equals softmax
  // top-k with renormalization; Qwen-MoE and DeepSeek say so with norm_topk_prob.
  const bool renorm_default = c.model_type != "qwen2_moe";
  r.renormalize = flag(*o, "norm_topk_prob", renorm_default);
  const json::value* given = o->if_contains("norm_topk_prob");
  c.renormalize_source = given != nullptr && given->is_bool()
                             ? "norm_topk_prob in the config"
                             : "no norm_topk_prob in the config: the default for model_type '" + c.model_type + "'" +
                                   (renorm_default ? " (any but qwen2_moe)" : "");
  if (const json::value* s = o->if_contains("scoring_func"); s != nullptr && s->is_string())
    r.scoring = s->as_string() == "sigmoid" ? ref::Scoring::kSigmoid : ref::Scoring::kSoftmax;
  if (const json::value* g = o->if_contains("n_group"); g != nullptr && g->is_int64() && g->as_int64() > 1) {
    r.n_group = static_cast<int>(positive_int(*o, {"n_group"}, file, c.num_experts));
    r.topk_group = static_cast<int>(positive_int(*o, {"topk_group"}, file, r.n_group));
  }
  if (const json::value* f = o->if_contains("routed_scaling_factor"); f != nullptr && f->is_number())
    r.routed_scaling_factor = static_cast<float>(f->to_number<double>());
  return c;
}

}  // namespace moeq
