#include "cmd_conform_check_kit.hpp"

#include <moeq/error.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>

namespace moeq::cli::conform {

Outcome pass(std::string reason, std::vector<std::string> details) {
  return {Verdict::kPass, std::move(reason), std::move(details)};
}
Outcome failed(std::string reason, std::vector<std::string> details) {
  return {Verdict::kFail, std::move(reason), std::move(details)};
}
Outcome not_applicable(std::string reason) { return {Verdict::kNotApplicable, std::move(reason), {}}; }

// Fail with the first problem as the reason and every problem as a detail; pass otherwise.
Outcome verdict(const std::vector<std::string>& problems, std::string pass_reason,
                std::vector<std::string> details) {
  if (problems.empty()) return pass(std::move(pass_reason), std::move(details));
  std::string reason = problems.front();
  if (problems.size() > 1) reason += " (and " + std::to_string(problems.size() - 1) + " more)";
  details.insert(details.begin(), problems.begin(), problems.end());
  return failed(std::move(reason), std::move(details));
}

std::string str(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g", v);
  return buf;
}

// "1 layer", "3 layers"
std::string count(int64_t n, const std::string& noun) {
  return std::to_string(n) + " " + noun + (n == 1 ? "" : "s");
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

std::string placement_str(const Placement& p) {
  std::string s;
  if (p.tp_size > 1) s += "TP=" + std::to_string(p.tp_size) + " rank " + std::to_string(p.tp_rank);
  if (p.ep_size > 1) s += std::string(s.empty() ? "" : ", ") + "EP=" + std::to_string(p.ep_size) + " rank " +
                          std::to_string(p.ep_rank);
  return s.empty() ? "TP=1 EP=1" : s;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

size_t non_finite(const std::vector<float>& v) {
  return static_cast<size_t>(std::count_if(v.begin(), v.end(), [](float x) { return !std::isfinite(x); }));
}

// Exceptions the proxy caught escaping a slot, as problems.
void add_escapes(std::vector<std::string>& problems, const std::string& during) {
  for (const Escape& e : escapes())
    problems.push_back(std::string(plugin_slot_name(e.slot)) + " let a C++ exception escape" +
                       (during.empty() ? "" : " on " + during) + " (" + e.what + ")");
  clear_escapes();
}

// --------------------------------------------------------------------- shared setup
// Loads the subject and asks it about every fixture layer. `need_fixture`: without an
// accepted layer the check is not applicable, or fails when the user named the checkpoint or
// the online scheme.
Prepared prepare(Context& ctx, bool need_fixture, ProxyOptions options) {
  Prepared p;
  ctx.stage("loading the plugin");
  p.subject = std::make_unique<Subject>(ctx.plugin_file, options, ctx.dependency_dirs);
  if (p.subject->plugin() == nullptr) {
    p.not_ready = not_applicable("the host refuses the plugin: " + p.subject->refusal() + " (see checks 1 and 2)");
    return p;
  }
  const moeq_plugin_descriptor& d = *p.subject->real();
  ctx.info("name", d.name);
  ctx.info("version", d.version);
  ctx.info("abi", std::to_string(d.abi_major) + "." + std::to_string(d.abi_minor) + " (needs host >= " +
                      std::to_string(d.abi_major) + "." + std::to_string(d.min_host_minor) + ")");
  std::vector<std::string> declines;
  for (const Fixture& f : ctx.fixtures) {
    ctx.stage("probing fixture " + f.name);
    bool any = false;
    for (const LayerQuery& q : layer_queries(Checkpoint::open(f.dir), f.online_scheme)) {
      const ProbeAnswer a = probe(*p.subject->plugin(), q.query);
      if (a.score > 0 && !a.status) {
        p.accepted.push_back({&f, q, a.score});
        any = true;
      } else {
        declines.push_back((ctx.user_checkpoint ? "" : f.name + " ") + q.prefix + ": \"" + a.reason + "\"");
      }
    }
    if (any) p.fixtures.push_back(&f);
  }
  ctx.taken(p.fixtures.size());
  if (need_fixture && p.accepted.empty()) {
    const std::string online = ctx.fixtures.empty() ? "" : ctx.fixtures.front().online_scheme;
    const std::string why = " (" + count(static_cast<int64_t>(declines.size()), "layer") + "; first: " +
                            (declines.empty() ? "no MoE layer" : declines.front()) + ")";
    const std::string under = online.empty() ? "" : " under --online " + online;
    // NOTE: a checkpoint or scheme the user named and the plugin does not take is a failure:
    // the user asked for conformance on it, and n/a everywhere would read as a pass.
    if (ctx.user_checkpoint)
      p.not_ready = failed("the plugin declined the checkpoint " + ctx.fixtures.front().name + under + why);
    else if (!online.empty())
      p.not_ready = failed("the plugin declined every generated fixture" + under + why);
    else
      p.not_ready = not_applicable("the plugin declines every generated fixture" + why +
                                   "; give it one it takes with --checkpoint, or --online SCHEME if it quantizes "
                                   "unquantized experts at load");
  }
  return p;
}

const LayerQuery* first_query(const Prepared& p, const Fixture* f) {
  for (const AcceptedLayer& a : p.accepted)
    if (a.fixture == f) return &a.layer;
  return nullptr;
}

MoeConfig config_of(const Fixture& f) {
  const Checkpoint ck = Checkpoint::open(f.dir);
  return parse_moe_config(ck.config(), f.dir / "config.json");
}

std::optional<LoadedFixture> first_loading(Context& ctx, Prepared& p, std::string& why) {
  for (const Fixture* f : p.fixtures) {
    ctx.stage("loading fixture " + f->name);
    FixtureLoad l = load_fixture(*p.subject, *f);
    if (l.problems.empty() && !l.model.layers.empty()) return LoadedFixture{f, std::move(l)};
    if (why.empty() && !l.problems.empty()) why = f->name + ": " + l.problems.front();
  }
  if (why.empty()) why = "no accepted layer loads";
  return std::nullopt;
}

std::vector<LabeledQuery> fixture_queries(const Context& ctx) {
  std::vector<LabeledQuery> out;
  for (const Fixture& f : ctx.fixtures)
    for (const LayerQuery& q : layer_queries(Checkpoint::open(f.dir), f.online_scheme))
      out.push_back({f.name + " " + q.prefix, q.query});
  return out;
}

}  // namespace moeq::cli::conform
