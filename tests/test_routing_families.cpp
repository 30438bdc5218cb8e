// The routing table: each family's defaults, which config.json keys override them, the checks at
// load (config keys and the router tensors), and the reference's family-specific scorings.
#include "support.hpp"

#include <moeq/model_config.hpp>
#include <moeq/routed_forward.hpp>
#include <moeq/routing_family.hpp>
#include <moeq_writer/producers.hpp>
#include <moeq_writer/safetensors_writer.hpp>
#include <moeq/checkpoint.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <fstream>
#include <random>

using namespace moeq;
using namespace moeq::test;
namespace json = boost::json;

namespace {

json::object base_config(const char* model_type, int64_t experts = 16, int top_k = 4) {
  return json::object{{"model_type", model_type}, {"num_experts", experts}, {"hidden_size", 64},
                      {"moe_intermediate_size", 32}, {"num_experts_per_tok", top_k}};
}

MoeConfig parse(const json::object& o) { return parse_moe_config(o, "/ck/config.json"); }

std::string parse_error(const json::object& o) {
  try {
    parse(o);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

const RoutingField& field(const MoeConfig& c, const std::string& name) {
  for (const RoutingField& f : c.resolved_routing.fields)
    if (f.name == name) return f;
  FAIL("no routing field " << name);
  static RoutingField none;
  return none;
}

}  // namespace

TEST_CASE("deepseek_v3 without scoring_func routes with sigmoid, correction bias, groups and the scaling factor") {
  // transformers 5 writes no scoring_func/topk_method for DeepSeek-V3; its modeling code always
  // uses sigmoid and the grouped, biased selection.
  json::object o = base_config("deepseek_v3", 16, 4);
  o.erase("num_experts");
  o["n_routed_experts"] = 16;
  const MoeConfig c = parse(o);
  REQUIRE(c.resolved_routing.family != nullptr);
  CHECK(c.routing.scoring == ref::Scoring::kSigmoid);
  CHECK(c.routing.renormalize);
  CHECK(c.routing.n_group == 8);
  CHECK(c.routing.topk_group == 4);
  CHECK(c.routing.group_score == ref::GroupScore::kTop2Sum);
  CHECK(c.routing.routed_scaling_factor == doctest::Approx(2.5));
  CHECK(field(c, "scoring").source.find("deepseek_v3 default") != std::string::npos);
  // transformers reads no scoring_func for DeepSeek-V3: a "softmax" there changes nothing, and
  // inspect says it is not read.
  json::object s = o;
  s["scoring_func"] = "softmax";
  const MoeConfig sc = parse(s);
  CHECK(sc.routing.scoring == ref::Scoring::kSigmoid);
  CHECK(field(sc, "scoring").source.find("scoring_func \"softmax\" is not read") != std::string::npos);
  // DeepSeek-V4 reads it, default sqrtsoftplus; Kimi-K2 (vLLM's DeepSeek path) reads it too.
  CHECK(parse(base_config("deepseek_v4")).routing.scoring == ref::Scoring::kSqrtSoftplus);
  json::object k = base_config("kimi_k2");
  k["scoring_func"] = "softmax";
  CHECK(parse(k).routing.scoring == ref::Scoring::kSoftmax);
  CHECK(field(c, "correction bias").value.find("e_score_correction_bias") != std::string::npos);

  o["n_group"] = 4;
  o["topk_group"] = 2;
  o["routed_scaling_factor"] = 1.5;
  o["norm_topk_prob"] = false;
  const MoeConfig d = parse(o);
  CHECK(d.routing.n_group == 4);
  CHECK(d.routing.topk_group == 2);
  CHECK(d.routing.routed_scaling_factor == doctest::Approx(1.5));
  CHECK_FALSE(d.routing.renormalize);
  CHECK(field(d, "groups").source == "config.json n_group");
  CHECK(field(d, "scaling factor").source == "config.json routed_scaling_factor");
  CHECK(field(d, "renormalize").source == "config.json norm_topk_prob");
}

TEST_CASE("an absent key takes the family's default, not a global one") {
  // qwen2_moe, qwen3_moe and olmoe do not renormalize unless norm_topk_prob says so; qwen3_next does.
  CHECK_FALSE(parse(base_config("qwen2_moe")).routing.renormalize);
  CHECK_FALSE(parse(base_config("qwen3_moe")).routing.renormalize);
  CHECK_FALSE(parse(base_config("olmoe")).routing.renormalize);
  CHECK(parse(base_config("qwen3_next")).routing.renormalize);
  CHECK(parse(base_config("mixtral")).routing.renormalize);
  CHECK(parse(base_config("granitemoe")).routing.renormalize);
  json::object q = base_config("qwen3_moe");
  q["norm_topk_prob"] = true;
  CHECK(parse(q).routing.renormalize);
  // Mixtral's modeling code always renormalizes: a norm_topk_prob key changes nothing.
  json::object m = base_config("mixtral");
  m["norm_topk_prob"] = false;
  CHECK(parse(m).routing.renormalize);
  // glm4_moe: sigmoid and bias like DeepSeek-V3, but one group and no scaling by default.
  const MoeConfig g = parse(base_config("glm4_moe"));
  CHECK(g.routing.scoring == ref::Scoring::kSigmoid);
  CHECK(g.routing.n_group == 0);
  CHECK(g.routing.routed_scaling_factor == doctest::Approx(1.0));
  // DeepSeek-V2 groups only with topk_method group_limited_greedy, scoring groups by their max.
  json::object v2 = base_config("deepseek_v2");
  v2["n_group"] = 4;
  v2["topk_group"] = 2;
  CHECK(parse(v2).routing.n_group == 0);
  v2["topk_method"] = "group_limited_greedy";
  CHECK(parse(v2).routing.n_group == 4);
  CHECK(parse(v2).routing.group_score == ref::GroupScore::kMax);
  // ... and never renormalizes (norm_topk_prob is not read), always scaling.
  v2["norm_topk_prob"] = true;
  v2["routed_scaling_factor"] = 16.0;
  CHECK_FALSE(parse(v2).routing.renormalize);
  CHECK(parse(v2).routing.routed_scaling_factor == doctest::Approx(16.0));
  // Llama-4 puts the weight on the expert's input.
  CHECK(parse(base_config("llama4_text", 16, 1)).resolved_routing.weight_on_input);
  CHECK(parse(base_config("phimoe", 16, 2)).routing.scoring == ref::Scoring::kSparseMixer);
  CHECK(parse_error(base_config("phimoe", 16, 1)).find("phimoe's sparse mixer always routes to 2 experts") != std::string::npos);
}

TEST_CASE("routing config keys are validated at load, naming config.json and the key") {
  json::object o = base_config("deepseek_v3");
  o["scoring_func"] = "sparsemax";
  CHECK(parse_error(o).find("/ck/config.json: scoring_func must be \"softmax\", \"sigmoid\" or \"sqrtsoftplus\", found \"sparsemax\"") !=
        std::string::npos);
  o = base_config("deepseek_v3");
  o["n_group"] = 5;
  o["topk_group"] = 2;
  CHECK(parse_error(o).find("/ck/config.json: n_group = 5 must divide the 16 experts") != std::string::npos);
  o["n_group"] = 4;
  o["topk_group"] = 5;
  CHECK(parse_error(o).find("/ck/config.json: topk_group must be in [1, n_group = 4], found 5") != std::string::npos);
  o["topk_group"] = 0;
  CHECK(parse_error(o).find("topk_group must be in [1, n_group = 4], found 0") != std::string::npos);
  o["topk_group"] = 1;  // 4 experts kept, top_k 4: fine; top_k 5 is not
  CHECK(parse_error(o).empty());
  o["num_experts_per_tok"] = 5;
  CHECK(parse_error(o).find("num_experts_per_tok 5 exceeds the 4 experts of the topk_group = 1 kept groups") !=
        std::string::npos);
  for (const json::value bad : {json::value(0.0), json::value(-2.5), json::value("2.5"), json::value(1e308 * 10)}) {
    o = base_config("deepseek_v3");
    o["routed_scaling_factor"] = bad;
    CAPTURE(json::serialize(bad));
    CHECK(parse_error(o).find("/ck/config.json: routed_scaling_factor must be a finite number > 0") != std::string::npos);
  }
  o = base_config("mixtral", 4, 5);
  CHECK(parse_error(o).find("num_experts_per_tok 5 exceeds num_experts 4") != std::string::npos);
  o = base_config("qwen3_moe");
  o["norm_topk_prob"] = "yes";
  CHECK(parse_error(o).find("/ck/config.json: norm_topk_prob must be true or false") != std::string::npos);
}

TEST_CASE("a model_type without a routing row loads its config but its routing is unknown") {
  const MoeConfig c = parse(base_config("some_new_moe"));
  CHECK(c.resolved_routing.family == nullptr);
  CHECK(c.resolved_routing.unknown_reason.find("routing semantics unknown for model_type 'some_new_moe'") !=
        std::string::npos);
  CHECK(routing_summary(c.resolved_routing) == c.resolved_routing.unknown_reason);
}

TEST_CASE("every routing row resolves with its defaults and names its source") {
  for (const RoutingFamily& f : routing_families()) {
    CAPTURE(f.model_type);
    const MoeConfig c = parse(base_config(f.model_type, 16, f.weight_on_input ? 1 : 2));
    REQUIRE(c.resolved_routing.family == &f);
    CHECK(!c.resolved_routing.fields.empty());
    for (const RoutingField& r : c.resolved_routing.fields) CHECK(r.source.find(f.model_type) != std::string::npos);
    // inspect's whole routing line: every one of these, with its source.
    for (const char* name : {"scoring", "renormalize", "correction bias", "groups", "scaling factor"})
      CHECK(!field(c, name).value.empty());
  }
}

TEST_CASE("the sparse mixer picks as PhiMoE does: the softmax over the logits near the best, at the pick") {
  // Logits 3.0, 2.99, 1.0, -1.0 with eps 0.01: round 1 keeps 3.0 and 2.99 (gap 0.01/3 < 0.02), so
  // expert 0 weighs 1 / (1 + e^-0.01); round 2 (expert 0 out) keeps only 2.99 (gap to 1.0 is 2/2.99).
  const std::vector<float> logits{3.0f, 2.99f, 1.0f, -1.0f};
  ref::RoutingOptions o;
  o.top_k = 2;
  o.scoring = ref::Scoring::kSparseMixer;
  o.sparsemixer_eps = 0.01f;
  const ref::Routing r = ref::route(logits, 1, 4, o);
  CHECK(r.ids == std::vector<int32_t>{0, 1});
  CHECK(r.weights[0] == doctest::Approx(1.0 / (1.0 + std::exp(-0.01))).epsilon(1e-6));
  CHECK(r.weights[1] == doctest::Approx(1.0).epsilon(1e-6));
  // A wider eps lets expert 2 into round 2's softmax.
  o.sparsemixer_eps = 0.5f;
  const ref::Routing w = ref::route(logits, 1, 4, o);
  CHECK(w.ids == std::vector<int32_t>{0, 1});
  CHECK(w.weights[1] == doctest::Approx(1.0 / (1.0 + std::exp(1.0 - 2.99))).epsilon(1e-6));
}

TEST_CASE("group score by max and by the sum of the top-2 select different groups") {
  // Two groups of 4 (sigmoid of these logits keeps the order): group 0 has one high expert,
  // group 1 two fairly high ones. Max picks group 0; sum of top-2 picks group 1.
  const std::vector<float> logits{4.0f, -4.0f, -4.0f, -4.0f, 1.5f, 1.4f, -4.0f, -4.0f};
  ref::RoutingOptions o;
  o.top_k = 1;
  o.scoring = ref::Scoring::kSigmoid;
  o.n_group = 2;
  o.topk_group = 1;
  o.group_score = ref::GroupScore::kMax;
  CHECK(ref::route(logits, 1, 8, o).ids[0] == 0);
  o.group_score = ref::GroupScore::kTop2Sum;
  CHECK(ref::route(logits, 1, 8, o).ids[0] == 4);
}

TEST_CASE("the router is checked at load: dtype, shape, finite values, and the bias its family needs") {
  BuiltPlugins p;
  TempDir d;
  writer::MoeSpec spec;
  spec.layout = writer::Layout::kDeepSeekV3;
  spec.num_layers = 1;
  spec.num_experts = 8;
  spec.hidden = 64;
  spec.intermediate = 32;
  spec.top_k = 2;
  const auto w = writer::write_ct_fp8_channel(d / "good", spec);
  REQUIRE_NOTHROW(load_dir(w.dir, p.registry()));

  int variant = 0;
  // Rewrites model.safetensors with one tensor replaced (or dropped when `values` is empty).
  auto rewrite = [&](const std::string& name, DType dtype, std::vector<int64_t> shape, std::vector<float> values) {
    Checkpoint ck = Checkpoint::open(w.dir);
    writer::SafetensorsWriter out;
    for (const auto& [n, t] : ck.tensors()) {
      if (n == name) {
        if (!values.empty()) out.add_float(n, dtype, shape, values);
        continue;
      }
      out.add(n, t.dtype, t.shape, std::vector<std::byte>(t.data, t.data + t.nbytes()));
    }
    const std::filesystem::path dir = d / ("bad" + std::to_string(++variant));
    std::filesystem::create_directories(dir);
    std::filesystem::copy_file(w.dir / "config.json", dir / "config.json");
    out.write(dir / "model.safetensors");
    return dir;
  };
  auto load_error = [&](const std::filesystem::path& dir) -> std::string {
    try {
      load_dir(dir, p.registry());
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  const std::string gate = "model.layers.0.mlp.gate.";
  std::vector<float> router(8 * 64, 0.01f);
  std::string e = load_error(rewrite(gate + "weight", DType::BF16, {8, 32}, std::vector<float>(8 * 32, 0.1f)));
  CHECK(e.find("router weight " + gate + "weight (model.safetensors): expected shape [8, 64], found [8, 32]") !=
        std::string::npos);
  router[77] = std::nanf("");
  e = load_error(rewrite(gate + "weight", DType::F32, {8, 64}, router));
  CHECK(e.find("router weight " + gate + "weight (model.safetensors): value [1, 13] is NaN") != std::string::npos);
  e = load_error(rewrite(gate + "e_score_correction_bias", DType::F32, {8, 1}, std::vector<float>(8, 0.1f)));
  CHECK(e.find("router correction bias " + gate + "e_score_correction_bias (model.safetensors): expected shape [8], found [8, 1]") !=
        std::string::npos);
  std::vector<float> bias(8, 0.1f);
  bias[3] = INFINITY;
  e = load_error(rewrite(gate + "e_score_correction_bias", DType::F32, {8}, bias));
  CHECK(e.find("value [3] is infinite") != std::string::npos);
  e = load_error(rewrite(gate + "e_score_correction_bias", DType::F32, {8}, {}));
  CHECK(e.find("router correction bias " + gate + "e_score_correction_bias is missing: deepseek_v3 selects experts with it") !=
        std::string::npos);
}
