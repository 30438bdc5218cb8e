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
  // A multimodal config may name its language model's type only inside text_config.
  if (o != &cfg)
    if (const json::value* t = o->if_contains("model_type"); t != nullptr && t->is_string() &&
                                                            find_routing_family(c.model_type) == nullptr)
      c.model_type = std::string(t->as_string());

  c.resolved_routing = resolve_routing(c.model_type, *o, file, c.num_experts, c.top_k);
  c.routing = c.resolved_routing.options;
  for (const RoutingField& f : c.resolved_routing.fields)
    if (f.name == "renormalize") c.renormalize_source = f.source;
  return c;
}

}  // namespace moeq
