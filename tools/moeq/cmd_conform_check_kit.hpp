// `moeq conform`: what the ten checks share (verdict helpers, loading the subject and finding the
// fixtures it takes), and the checks themselves, one file per group:
//   cmd_conform_checks_plugin.cpp   1-4  the plugin as a whole: entry symbol, ABI, probe, create_weights
//   cmd_conform_checks_loading.cpp  5-6  weight_loader and error paths
//   cmd_conform_checks_running.cpp  7-10 accuracy, apply, concurrency, leaks
#pragma once
#include "cmd_conform_checks.hpp"
#include "cmd_conform_harness.hpp"

#include <optional>
#include <string>
#include <vector>

namespace moeq::cli::conform {

constexpr double kDefaultTolerance = 1e-2;
constexpr size_t kDescriptorV1Size = MOEQ_STRUCT_SIZE(moeq_plugin_descriptor, api);

Outcome pass(std::string reason, std::vector<std::string> details = {});
Outcome failed(std::string reason, std::vector<std::string> details = {});
Outcome not_applicable(std::string reason);
// Fail with the first problem as the reason and every problem as a detail; pass otherwise.
Outcome verdict(const std::vector<std::string>& problems, std::string pass_reason,
                std::vector<std::string> details = {});

std::string str(double v);                               // "0.0123"
std::string count(int64_t n, const std::string& noun);   // "1 layer", "3 layers"
std::string shape_str(const std::vector<int64_t>& shape);
std::string placement_str(const Placement& placement);   // "TP=2 rank 0", "TP=1 EP=1"
// Equal bit for bit, as apply's results must be run to run: NaN is equal to the same NaN
// (operator== on floats would call every NaN output a difference).
bool same_bits(const std::vector<float>& a, const std::vector<float>& b);
// Elements that are NaN or infinite.
size_t non_finite(const std::vector<float>& v);
// Exceptions the proxy caught escaping a slot, as problems (and forgets them).
void add_escapes(std::vector<std::string>& problems, const std::string& during = "");

struct AcceptedLayer {
  const Fixture* fixture = nullptr;
  LayerQuery layer;
  int32_t score = 0;
};

struct Prepared {
  std::unique_ptr<Subject> subject;
  std::vector<AcceptedLayer> accepted;     // every (fixture, layer) the plugin takes
  std::vector<const Fixture*> fixtures;    // fixtures with at least one accepted layer
  std::optional<Outcome> not_ready;        // set when the checks that need it cannot run
};

// Loads the subject and asks it about every fixture layer. `need_fixture`: without an
// accepted layer the check cannot run (not_ready says why): not applicable on generated
// fixtures, a failure on a checkpoint or online scheme the user named.
Prepared prepare(Context& ctx, bool need_fixture, ProxyOptions options = {});
const LayerQuery* first_query(const Prepared& p, const Fixture* f);
MoeConfig config_of(const Fixture& f);

// The first accepted fixture that loads completely, loaded; nullopt (and why) when none does.
struct LoadedFixture {
  const Fixture* fixture = nullptr;
  FixtureLoad load;
};
std::optional<LoadedFixture> first_loading(Context& ctx, Prepared& p, std::string& why);

struct LabeledQuery {
  std::string label;
  ProbeQuery query;
};

// Every layer query of every fixture, labeled "fixture prefix".
std::vector<LabeledQuery> fixture_queries(const Context& ctx);

Outcome check_entry(Context& ctx);
Outcome check_abi(Context& ctx);
Outcome check_probe(Context& ctx);
Outcome check_create_weights(Context& ctx);
Outcome check_weight_loader(Context& ctx);
Outcome check_errors(Context& ctx);
Outcome check_accuracy(Context& ctx);
Outcome check_apply(Context& ctx);
Outcome check_concurrency(Context& ctx);
Outcome check_leaks(Context& ctx);

}  // namespace moeq::cli::conform
