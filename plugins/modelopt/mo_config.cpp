#include "mo_config.hpp"

#include <moeq/error.hpp>

#include <boost/json.hpp>

#include <algorithm>
#include <cctype>

namespace moeq::mo {
namespace json = boost::json;

namespace {

std::string upper(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
  return s;
}

std::vector<std::string> string_list(const json::value* v, const char* what) {
  std::vector<std::string> out;
  if (v == nullptr || v->is_null()) return out;
  if (!v->is_array()) fail(std::string("ModelOpt config: ") + what + " must be a list of strings");
  for (const json::value& e : v->as_array()) {
    if (!e.is_string()) fail(std::string("ModelOpt config: ") + what + " must be a list of strings");
    out.emplace_back(e.as_string());
  }
  return out;
}

json::object fp8_args(const char* strategy, bool dynamic) {
  return json::object{{"type", "float"}, {"num_bits", 8}, {"symmetric", true}, {"dynamic", dynamic},
                      {"strategy", strategy}};
}

}  // namespace

const char* algo_name(Algo a) {
  switch (a) {
    case Algo::kFp8: return "FP8";
    case Algo::kFp8PerChannelPerToken: return "FP8_PER_CHANNEL_PER_TOKEN";
    case Algo::kFp8BlockWeightOnly: return "FP8_PB_WO";
  }
  return "?";
}

ModelOptConfig parse_modelopt(const std::string& text, const std::string& source) {
  json::value root;
  try {
    root = json::parse(text);
  } catch (const std::exception& e) {
    fail(std::string("quantization config is not valid JSON: ") + e.what());
  }
  if (!root.is_object()) fail(root.is_null() ? "the checkpoint has no quantization config" : "quantization config is not an object");
  const json::object& o = root.as_object();
  ModelOptConfig c;
  c.source = source;
  const json::object* q = nullptr;
  if (source == "hf_quant_config.json") {
    const json::value* qv = o.if_contains("quantization");
    if (qv == nullptr || !qv->is_object()) fail("hf_quant_config.json has no 'quantization' object");
    q = &qv->as_object();
    if (const json::value* p = o.if_contains("producer"); p && p->is_object()) {
      const json::object& po = p->as_object();
      if (const json::value* n = po.if_contains("name"); n && n->is_string() && n->as_string() != "modelopt")
        fail("hf_quant_config.json producer is '" + std::string(n->as_string()) + "', not modelopt");
      if (const json::value* v = po.if_contains("version"); v && v->is_string()) c.producer_version = v->as_string();
    }
    c.exclude_modules = string_list(q->if_contains("exclude_modules"), "exclude_modules");
  } else {
    const json::value* m = o.if_contains("quant_method");
    const std::string method = (m && m->is_string()) ? std::string(m->as_string()) : "";
    if (method != "modelopt") fail("quant_method is '" + method + "', not 'modelopt'");
    q = &o;
    c.exclude_modules = string_list(o.if_contains("ignore"), "ignore");
  }
  const json::value* a = q->if_contains("quant_algo");
  if (a == nullptr) fail("ModelOpt config has no quant_algo");
  if (!a->is_string())
    fail("ModelOpt config: quant_algo must be a string such as \"FP8\", found " + json::serialize(*a) + " (" +
         (a->is_number() ? "a number" : a->is_null() ? "null" : a->is_array() ? "an array" : a->is_object() ? "an object" : "a bool") + ")");
  c.quant_algo = std::string(a->as_string());
  const std::string algo = upper(c.quant_algo);
  if (algo == "FP8") c.algo = Algo::kFp8;
  else if (algo == "FP8_PER_CHANNEL_PER_TOKEN") c.algo = Algo::kFp8PerChannelPerToken;
  else if (algo == "FP8_PB_WO") c.algo = Algo::kFp8BlockWeightOnly;
  else
    fail("ModelOpt quant_algo '" + c.quant_algo + "' has no compressed-tensors equivalent here (FP8, "
         "FP8_PER_CHANNEL_PER_TOKEN and FP8_PB_WO do)");
  if (const json::value* kv = q->if_contains("kv_cache_quant_algo"); kv && kv->is_string())
    c.kv_cache_quant_algo = kv->as_string();
  return c;
}

std::string glob_to_regex(const std::string& glob) {
  std::string r;
  for (char ch : glob) {
    if (ch == '*') r += ".*";
    else if (ch == '?') r += '.';
    else if (std::string_view("\\^$.|+()[]{}").find(ch) != std::string_view::npos) r += std::string("\\") + ch;
    else r += ch;
  }
  return r;
}

std::string to_compressed_tensors(const ModelOptConfig& c) {
  json::object weights, acts;
  switch (c.algo) {
    case Algo::kFp8:
      weights = fp8_args("tensor", false);
      acts = fp8_args("tensor", false);
      break;
    case Algo::kFp8PerChannelPerToken:
      weights = fp8_args("channel", false);
      acts = fp8_args("token", true);
      break;
    case Algo::kFp8BlockWeightOnly:
      // Weight-only in name; engines run it with dynamic 1x128 activation groups.
      weights = fp8_args("block", false);
      weights["block_structure"] = json::array{128, 128};
      acts = fp8_args("group", true);
      acts["group_size"] = 128;
      break;
  }
  json::array ignore;
  for (const std::string& g : c.exclude_modules) {
    // '*' spans dots, and "path*" also covers "path.child".
    ignore.push_back(json::string("re:" + glob_to_regex(g) + (g.ends_with("*") ? "" : "(\\..*)?")));
  }
  json::object group{{"targets", json::array{"Linear"}}, {"weights", weights}, {"input_activations", acts},
                     {"output_activations", nullptr}, {"format", "float-quantized"}};
  json::object ct{{"quant_method", "compressed-tensors"},
                  {"format", "float-quantized"},
                  {"config_groups", json::object{{"group_0", group}}},
                  {"ignore", ignore},
                  {"translated_from", "modelopt " + std::string(algo_name(c.algo)) + " (" + c.source + ")"}};
  return json::serialize(ct);
}

}  // namespace moeq::mo
