#include "ct_scheme.hpp"

#include <moeq/error.hpp>

#include <boost/json.hpp>

#include <regex>

namespace moeq::ct {
namespace json = boost::json;

namespace {

std::string str_or(const json::object& o, const char* key, const std::string& fallback) {
  const json::value* v = o.if_contains(key);
  return (v && v->is_string()) ? std::string(v->as_string()) : fallback;
}

QuantArgs parse_args(const json::value* v, const std::string& where) {
  QuantArgs a;
  if (v == nullptr || v->is_null()) return a;
  if (!v->is_object()) fail("compressed-tensors config: " + where + " must be an object or null");
  const json::object& o = v->as_object();
  a.present = true;
  a.type = str_or(o, "type", "int");
  for (char& c : a.type) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (const json::value* b = o.if_contains("num_bits"); b && b->is_int64()) a.num_bits = static_cast<int>(b->as_int64());
  else a.num_bits = 8;
  if (const json::value* s = o.if_contains("symmetric"); s && s->is_bool()) a.symmetric = s->as_bool();
  if (const json::value* d = o.if_contains("dynamic"); d) {
    if (d->is_bool()) a.dynamic = d->as_bool();
    else if (d->is_string()) a.dynamic = d->as_string() != "false";
  }
  a.strategy = str_or(o, "strategy", "");
  if (a.strategy.empty()) {
    const json::value* g = o.if_contains("group_size");
    if (g == nullptr || g->is_null()) a.strategy = "tensor";
    else if (g->is_int64() && g->as_int64() == -1) a.strategy = "channel";
    else a.strategy = "group";
  }
  return a;
}

// A target or ignore entry: "re:<regex>" matched against the module path, a class name
// ("Linear"), or a module path equal to or containing the experts module.
bool entry_matches(const std::string& entry, const std::string& layer, bool is_target) {
  if (entry.rfind("re:", 0) == 0) {
    try {
      std::regex r(entry.substr(3));
      // Expert linears live below the experts module; a regex for them matches a path that
      // begins with it, so test the module path with and without a trailing child.
      return std::regex_match(layer, r) || std::regex_search(layer, r);
    } catch (const std::regex_error&) {
      fail("compressed-tensors config: invalid regex '" + entry + "'");
    }
  }
  if (is_target && (entry == "Linear" || entry.ends_with("Linear"))) return true;
  return entry == layer || entry.rfind(layer + ".", 0) == 0;
}

}  // namespace

ExpertScheme resolve_scheme(const std::string& text, const std::string& layer) {
  json::value root;
  try {
    root = json::parse(text);
  } catch (const std::exception& e) {
    fail(std::string("quantization config is not valid JSON: ") + e.what());
  }
  if (root.is_null()) fail("the checkpoint has no quantization_config");
  if (!root.is_object()) fail("quantization config is not a JSON object");
  const json::object& o = root.as_object();
  const std::string method = str_or(o, "quant_method", "");
  if (method != "compressed-tensors")
    fail("quant_method is '" + method + "', not 'compressed-tensors'");
  const json::value* groups = o.if_contains("config_groups");
  if (groups == nullptr || !groups->is_object() || groups->as_object().empty())
    fail("compressed-tensors config has no config_groups");

  ExpertScheme s;
  s.format = str_or(o, "format", "");
  if (const json::value* ig = o.if_contains("ignore"); ig && ig->is_array())
    for (const json::value& e : ig->as_array())
      if (e.is_string() && entry_matches(std::string(e.as_string()), layer, false)) s.ignored = true;

  for (const auto& [name, g] : groups->as_object()) {
    if (!g.is_object()) fail("config group '" + std::string(name) + "' is not an object");
    const json::object& go = g.as_object();
    const json::value* targets = go.if_contains("targets");
    if (targets == nullptr || !targets->is_array())
      fail("config group '" + std::string(name) + "' has no targets list");
    bool hit = false;
    for (const json::value& t : targets->as_array())
      if (t.is_string() && entry_matches(std::string(t.as_string()), layer, true)) hit = true;
    if (!hit) continue;
    s.group_name = std::string(name);
    s.weights = parse_args(go.if_contains("weights"), "weights");
    s.input_activations = parse_args(go.if_contains("input_activations"), "input_activations");
    if (const json::value* f = go.if_contains("format"); f && f->is_string()) s.format = std::string(f->as_string());
    return s;
  }
  fail("no config group targets " + layer);
}

std::string describe_args(const QuantArgs& a) {
  if (!a.present) return "none";
  return a.type + std::to_string(a.num_bits) + " " + a.strategy + (a.dynamic ? " dynamic" : " static") +
         (a.symmetric ? "" : " asymmetric");
}

std::string unsupported_reason(const ExpertScheme& s) {
  const QuantArgs& w = s.weights;
  const QuantArgs& a = s.input_activations;
  if (!w.present) return "config group '" + s.group_name + "' quantizes no weights";
  if (w.type != "float" || w.num_bits != 8)
    return "weights are " + describe_args(w) + "; this version runs FP8 (float8) weights";
  if (!w.symmetric || w.dynamic) return "weights are " + describe_args(w) + "; FP8 weights must be static symmetric";
  if (w.strategy != "channel")
    return "weights strategy '" + w.strategy + "' is not supported by this version (channel is)";
  if (!a.present || a.type != "float" || a.num_bits != 8 || !a.dynamic || a.strategy != "token")
    return "input activations are " + describe_args(a) +
           "; FP8 channel weights run with dynamic per-token FP8 activations";
  return "";
}

}  // namespace moeq::ct
