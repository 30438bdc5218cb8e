// `moeq conform` checks 7-10: accuracy against the float reference, apply purity and
// reentrancy, concurrency, leaks.
#include "cmd_conform_check_kit.hpp"
#include "commands.hpp"

#include <moeq/error.hpp>

#include <boost/json.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <thread>

namespace moeq::cli::conform {

namespace json = boost::json;

// ============================================================ 7. accuracy
namespace {

// The bound a method declares in its describe JSON ("rel_l2_tolerance"), else the default.
double tolerance_of(const std::string& describe_json, std::string& where) {
  const std::optional<double> declared = declared_tolerance(describe_json);
  where = declared ? "declared by the method" : "default";
  return declared.value_or(kDefaultTolerance);
}

}  // namespace

Outcome check_accuracy(Context& ctx) {
  // NOTE: on a checkpoint the user named there are no writer masters, and the plugin's own
  // dequantize_expert shares its loader's mistakes: hold apply to references made without it.
  std::vector<std::string> problems, details;
  std::vector<const Reference*> independent;
  if (ctx.reference) independent.push_back(ctx.reference.get());
  std::optional<Reference> builtin;
  if (ctx.user_checkpoint) {
    ctx.stage("dequantizing " + ctx.fixtures.front().name + " with the built-in plugins");
    std::string why;
    builtin = builtin_reference(ctx.fixtures.front(), ctx.plugin_file, why);
    if (builtin) independent.push_back(&*builtin);
    else details.push_back("no built-in reference: " + why);
  }
  std::vector<double> worst_independent(independent.size(), -1);
  Prepared p = prepare(ctx, true);
  if (p.not_ready) return *p.not_ready;
  double worst_own = -1, worst_masters = -1, tol_used = 0;
  std::string tol_where;
  int layers = 0, runs = 0;
  std::string load_problem;
  for (const Fixture* f : p.fixtures) {
    ctx.stage("loading fixture " + f->name);
    FixtureLoad l = load_fixture(*p.subject, *f);
    if (!l.problems.empty()) {
      if (load_problem.empty()) load_problem = f->name + ": " + l.problems.front();
      continue;
    }
    for (size_t li = 0; li < l.model.layers.size(); ++li) {
      const LoadedLayer& layer = *l.model.layers[li];
      const moeq_layer_geometry& g = layer.geometry;
      const std::string where = f->name + " " + layer.report.prefix;
      const double tol = tolerance_of(layer.report.describe_json, tol_where);
      tol_used = std::max(tol_used, tol);
      std::optional<ref::ExpertWeights> own;
      ref::MoeOptions own_act;
      ctx.stage("dequantize_expert on " + where);
      try {
        own = dequantize(layer, &own_act);
      } catch (const Error& e) {
        if (e.code() != MOEQ_STATUS_CODE_UNIMPLEMENTED) problems.push_back("dequantize_expert on " + where + ": " + e.what());
      }
      const ref::ExpertWeights* masters = nullptr;
      for (const writer::LayerMasters& m : f->masters)
        if (m.prefix == layer.report.prefix) masters = &m.dequantized;
      // The independent references' weights of this layer, when they have its geometry.
      std::vector<const ref::ExpertWeights*> others(independent.size(), nullptr);
      for (size_t ri = 0; ri < independent.size(); ++ri) {
        const ref::ExpertWeights* w = independent[ri]->find(layer.report.prefix);
        if (w == nullptr)
          problems.push_back(independent[ri]->what + " has no layer " + layer.report.prefix);
        else if (w->num_experts != g.num_experts || w->hidden != g.hidden_size || w->intermediate != g.intermediate_size)
          problems.push_back(independent[ri]->what + ", layer " + layer.report.prefix + ": expected " +
                             std::to_string(g.num_experts) + " experts, H = " + std::to_string(g.hidden_size) +
                             ", I = " + std::to_string(g.intermediate_size) + ", found " + std::to_string(w->num_experts) +
                             ", " + std::to_string(w->hidden) + ", " + std::to_string(w->intermediate));
        else
          others[ri] = w;
      }
      const bool any_other = std::any_of(others.begin(), others.end(), [](const auto* w) { return w != nullptr; });
      if (!own && masters == nullptr && !any_other) {
        details.push_back(where + ": no reference (no dequantize_expert, not writer-made, no --reference)");
        continue;
      }
      ++layers;
      struct Run {
        int64_t tokens, stride;
      };
      const Run sweep[] = {{1, 0}, {7, 0}, {33, 0}, {7, g.hidden_size + 3}};
      for (const Run& run : sweep) {
        const std::string what = where + ", M=" + std::to_string(run.tokens) +
                                 (run.stride ? ", x rows " + std::to_string(run.stride) + " apart" : "");
        ctx.stage("apply on " + what);
        const uint64_t seed = 1000 + static_cast<uint64_t>(run.tokens) + static_cast<uint64_t>(run.stride);
        const std::vector<float> x = random_tokens(run.tokens, g.hidden_size, seed);
        const ref::Routing routing = random_routing(run.tokens, g.num_experts, g.top_k, seed);
        std::vector<float> out;
        try {
          out = apply(*layer.plugin, layer.method, g.hidden_size, x, run.tokens, routing, run.stride);
        } catch (const Error& e) {
          problems.push_back("apply fails on " + what + ": " + e.what());
          continue;
        }
        ++runs;
        // NOTE: said here, and only here: checks 8 and 9 compare bits, so NaN weights (e4m3
        // 0x7f, say) fail accuracy rather than read as a race or non-determinism there.
        if (const size_t bad = non_finite(out); bad > 0) {
          problems.push_back("apply on " + what + " gives " + std::to_string(bad) + " of " + std::to_string(out.size()) +
                             " outputs NaN or infinite (NaN or Inf in the weights or scales?)");
          continue;
        }
        if (own) {
          const double err = ref::relative_l2(out, ref::moe_forward(*own, x, run.tokens, routing, own_act));
          worst_own = std::max(worst_own, std::isnan(err) ? 1e30 : err);
          if (!(err <= tol))
            problems.push_back("apply vs the float reference of its own dequantize_expert on " + what + ": relative L2 " +
                               str(err) + " > tolerance " + str(tol));
        }
        for (size_t ri = 0; ri < independent.size(); ++ri) {
          if (others[ri] == nullptr) continue;
          // Float weights on disk carry no activation quantization: the scheme's, as the plugin says it.
          const ref::MoeOptions act = independent[ri]->act.value_or(own ? own_act : ref::MoeOptions{});
          const double err = ref::relative_l2(out, ref::moe_forward(*others[ri], x, run.tokens, routing, act));
          worst_independent[ri] = std::max(worst_independent[ri], std::isnan(err) ? 1e30 : err);
          if (!(err <= tol))
            problems.push_back("apply vs " + independent[ri]->what + " on " + what + ": relative L2 " + str(err) +
                               " > tolerance " + str(tol));
        }
        if (masters) {
          const double err = ref::relative_l2(out, ref::moe_forward(*masters, x, run.tokens, routing, f->masters_act));
          worst_masters = std::max(worst_masters, std::isnan(err) ? 1e30 : err);
          if (!(err <= tol))
            problems.push_back("apply vs the writer's float masters on " + what + ": relative L2 " + str(err) +
                               " > tolerance " + str(tol));
        }
      }
      ctx.stage("apply on " + where + " with 0 tokens");
      try {
        apply(*layer.plugin, layer.method, g.hidden_size, {}, 0, random_routing(0, g.num_experts, g.top_k, 1));
      } catch (const Error& e) {
        problems.push_back("apply with 0 tokens fails on " + where + ": " + e.what());
      }
    }
  }
  add_escapes(problems);
  if (layers == 0 && problems.empty()) {
    if (!load_problem.empty()) return not_applicable("no accepted fixture loads (see check 5): " + load_problem);
    return not_applicable("no reference: the plugin has no dequantize_expert, the checkpoint is not writer-made, no "
                          "built-in plugin takes it and no --reference DIR was given");
  }
  std::string reason = std::to_string(runs) + (runs == 1 ? " apply" : " applies") + " on " + count(layers, "layer") + " (M = 1, 7, 33, strided x; and M = 0)";
  if (worst_own >= 0) reason += "; vs its dequantize_expert: worst relative L2 " + str(worst_own);
  if (worst_masters >= 0) reason += "; vs the writer's masters: " + str(worst_masters);
  for (size_t ri = 0; ri < independent.size(); ++ri)
    if (worst_independent[ri] >= 0) reason += "; vs " + independent[ri]->what + ": " + str(worst_independent[ri]);
  reason += " (tolerance " + str(tol_used) + ", " + tol_where + "; CPU apply only in this host build)";
  return verdict(problems, reason, details);
}

// ============================================================ 8. apply: no host, reentrant
Outcome check_apply(Context& ctx) {
  Prepared p = prepare(ctx, true);
  if (p.not_ready) return *p.not_ready;
  std::string why;
  std::optional<LoadedFixture> a = first_loading(ctx, p, why);
  if (!a) return not_applicable("no accepted fixture loads (see check 5): " + why);
  FixtureLoad b = load_fixture(*p.subject, *a->fixture);
  if (!b.problems.empty()) return failed("a second load of " + a->fixture->name + " fails: " + b.problems.front());
  const LoadedLayer& la = *a->load.model.layers.front();
  const LoadedLayer& lb = *b.model.layers.front();
  const moeq_layer_geometry& g = la.geometry;
  const int64_t M = 16, H = g.hidden_size;
  const std::vector<float> x1 = random_tokens(M, H, 11), x2 = random_tokens(M, H, 12);
  const ref::Routing r1 = random_routing(M, g.num_experts, g.top_k, 11), r2 = random_routing(M, g.num_experts, g.top_k, 12);
  std::vector<std::string> problems;
  ctx.stage("apply on two methods, one after the other");
  HostCalls before = host_calls();
  const std::vector<float> o1 = apply(*la.plugin, la.method, H, x1, M, r1);
  const std::vector<float> o2 = apply(*lb.plugin, lb.method, H, x2, M, r2);
  if (!same_bits(apply(*la.plugin, la.method, H, x1, M, r1), o1)) problems.push_back("apply gives another result the second time");
  if (const HostCalls c = host_calls() - before; c.total() > 0)
    problems.push_back("apply called the host (" + c.list() + "); apply allocates, compiles and logs nothing");
  ctx.stage("apply on two methods from two threads at once");
  before = host_calls();
  constexpr int kRounds = 16;
  std::atomic<int> mismatches{0};
  std::vector<std::string> errors(2);
  auto worker = [&](int which) {
    try {
      for (int i = 0; i < kRounds; ++i) {
        const std::vector<float> o = which == 0 ? apply(*la.plugin, la.method, H, x1, M, r1)
                                                : apply(*lb.plugin, lb.method, H, x2, M, r2);
        if (!same_bits(o, which == 0 ? o1 : o2)) mismatches.fetch_add(1);
      }
    } catch (const std::exception& e) {
      errors[which] = e.what();
    }
  };
  std::thread t0(worker, 0), t1(worker, 1);
  t0.join();
  t1.join();
  for (const std::string& e : errors)
    if (!e.empty()) problems.push_back("concurrent apply fails: " + e);
  if (mismatches > 0)
    problems.push_back(std::to_string(mismatches.load()) + " of " + std::to_string(2 * kRounds) +
                       " concurrent applies on two methods differ from the same applies run alone");
  if (const HostCalls c = host_calls() - before; c.total() > 0)
    problems.push_back("concurrent apply called the host (" + c.list() + ")");
  // ABI 1.2 apply_info: pure, deterministic, well-formed, and what the loader recorded.
  std::string info_note = "no apply_info (before ABI 1.2: no host workspace)";
  const moeq_plugin_api* api = la.plugin->api;
  if (la.plugin->effective_minor >= 2 && api->struct_size >= MOEQ_STRUCT_SIZE(moeq_plugin_api, apply_info) &&
      api->apply_info != nullptr) {
    ctx.stage("apply_info");
    before = host_calls();
    constexpr uint32_t kKnown = MOEQ_DTYPE_BIT_F32 | MOEQ_DTYPE_BIT_BF16 | MOEQ_DTYPE_BIT_F16;
    for (int64_t max_tokens : {int64_t{0}, int64_t{1}, int64_t{33}}) {
      moeq_apply_info_args i1{}, i2{};
      i1.struct_size = i2.struct_size = sizeof i1;
      i1.method = i2.method = la.method;
      i1.max_tokens = i2.max_tokens = max_tokens;
      moeq_status_code code;
      std::string msg;
      const std::string with = "apply_info (max_tokens " + std::to_string(max_tokens) + ")";
      if (host::take_status(api->apply_info(&i1), code, msg)) {
        problems.push_back(with + " fails: " + msg);
        continue;
      }
      host::take_status(api->apply_info(&i2), code, msg);
      if (i1.workspace_bytes != i2.workspace_bytes || i1.tokens_per_pass != i2.tokens_per_pass ||
          i1.x_dtypes != i2.x_dtypes || i1.out_dtypes != i2.out_dtypes)
        problems.push_back(with + " answers differently the second time");
      if (i1.x_dtypes == 0 || (i1.x_dtypes & ~kKnown) || i1.out_dtypes == 0 || (i1.out_dtypes & ~kKnown))
        problems.push_back(with + ": dtype masks x " + std::to_string(i1.x_dtypes) + ", out " +
                           std::to_string(i1.out_dtypes) + " (expected non-empty sets of MOEQ_DTYPE_BIT_F32/BF16/F16)");
      if (i1.tokens_per_pass < 1) problems.push_back(with + ": tokens_per_pass " + std::to_string(i1.tokens_per_pass) + " < 1");
      if (i1.workspace_bytes != 0 && la.layer->device.device_type == kDLCPU)
        problems.push_back(with + ": asks for a " + std::to_string(i1.workspace_bytes) +
                           "-byte workspace on the CPU (the host lends one only on a CUDA device)");
      if (!(i1.x_dtypes & MOEQ_DTYPE_BIT_F32) && la.layer->device.device_type == kDLCPU)
        problems.push_back(with + ": a CPU method that takes no F32 x (hosts and conform apply F32 on the CPU)");
      if (max_tokens == 0 && (i1.x_dtypes != la.x_dtypes || i1.out_dtypes != la.out_dtypes))
        problems.push_back(with + " differs from what the loader recorded after process_after_loading");
      if (max_tokens == 0)
        info_note = "apply_info: x " + std::to_string(i1.x_dtypes) + ", out " + std::to_string(i1.out_dtypes) +
                    ", workspace " + std::to_string(i1.workspace_bytes) + " bytes";
    }
    if (const HostCalls c = host_calls() - before; c.total() > 0)
      problems.push_back("apply_info called the host (" + c.list() + "); it is pure");
  }
  add_escapes(problems);
  return verdict(problems, "apply makes no host call; two methods applied from two threads, " + std::to_string(kRounds) +
                               " rounds each, match their serial results bit for bit; " + info_note);
}

// ============================================================ 9. concurrency
Outcome check_concurrency(Context& ctx) {
  Prepared p = prepare(ctx, false);
  if (p.not_ready) return *p.not_ready;
  const LoadedPlugin& plugin = *p.subject->plugin();
  const std::vector<LabeledQuery> queries = fixture_queries(ctx);
  std::vector<std::string> problems;
  ctx.stage("probing from 8 threads");
  std::vector<ProbeAnswer> serial;
  for (const LabeledQuery& q : queries) serial.push_back(probe(plugin, q.query));
  constexpr int kThreads = 8, kRounds = 20;
  std::atomic<int> differ{0};
  {
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t)
      threads.emplace_back([&] {
        for (int r = 0; r < kRounds; ++r)
          for (size_t i = 0; i < queries.size(); ++i)
            if (!(probe(plugin, queries[i].query) == serial[i])) differ.fetch_add(1);
      });
    for (std::thread& t : threads) t.join();
  }
  if (differ > 0) problems.push_back(std::to_string(differ.load()) + " probe answers from 8 threads differ from the serial ones");
  std::string reason = std::to_string(kThreads) + " threads x " + std::to_string(kRounds) + " rounds of " +
                       std::to_string(queries.size()) + " probes agree with the serial answers";

  std::string why;
  std::optional<LoadedFixture> serial_load;
  if (!p.fixtures.empty()) {
    set_snapshots(true);
    serial_load = first_loading(ctx, p, why);
    set_snapshots(false);
  }
  const auto base = take_snapshots();
  if (!serial_load) {
    add_escapes(problems);
    return verdict(problems, reason + "; loads from several threads not run: " +
                                 (p.fixtures.empty() ? std::string("the plugin declines every fixture") : "no fixture loads (see check 5)"));
  }
  const Fixture& f = *serial_load->fixture;
  const LoadedLayer& l0 = *serial_load->load.model.layers.front();
  const int64_t M = 9, H = l0.geometry.hidden_size;
  const std::vector<float> x = random_tokens(M, H, 77);
  const ref::Routing routing = random_routing(M, l0.geometry.num_experts, l0.geometry.top_k, 77);
  const std::vector<float> expected = apply(*l0.plugin, l0.method, H, x, M, routing);
  ctx.stage("loading " + f.name + " on 4 threads at once");
  constexpr int kLoaders = 4;
  std::vector<std::string> errors(kLoaders);
  std::vector<std::vector<float>> outs(kLoaders);
  set_snapshots(true);
  {
    std::vector<std::thread> threads;
    for (int t = 0; t < kLoaders; ++t)
      threads.emplace_back([&, t] {
        try {
          FixtureLoad l = load_fixture(*p.subject, f);
          if (!l.problems.empty()) {
            errors[t] = l.problems.front();
            return;
          }
          const LoadedLayer& layer = *l.model.layers.front();
          outs[t] = apply(*layer.plugin, layer.method, H, x, M, routing);
        } catch (const std::exception& e) {
          errors[t] = e.what();
        }
      });
    for (std::thread& t : threads) t.join();
  }
  set_snapshots(false);
  for (const std::string& e : errors)
    if (!e.empty()) problems.push_back("a load on one of 4 threads fails: " + e);
  for (int t = 0; t < kLoaders; ++t)
    if (errors[t].empty() && !same_bits(outs[t], expected))
      problems.push_back("a method loaded on thread " + std::to_string(t) + " applies differently from the serial one");
  for (const auto& [name, snap] : take_snapshots())
    for (const auto& [bname, bsnap] : base)
      if (bname == name)
        if (std::string diff = compare(snap, bsnap); !diff.empty())
          problems.push_back("parameters of " + name + " loaded concurrently differ: " + diff);
  add_escapes(problems);
  return verdict(problems, reason + "; " + std::to_string(kLoaders) + " loads of " + f.name +
                               " on parallel threads give the serial parameters and results");
}

// ============================================================ 10. no leaks
Outcome check_leaks(Context& ctx) {
  const int64_t statuses0 = host::live_statuses(), methods0 = live_methods(), bytes0 = host::live_param_bytes();
  std::string scenario;
  {
    Prepared p = prepare(ctx, false);
    if (p.not_ready) return *p.not_ready;
    ctx.stage("probing every fixture layer");
    for (const LabeledQuery& q : fixture_queries(ctx)) probe(*p.subject->plugin(), q.query);
    int loads = 0, errors = 0;
    for (const Fixture* f : p.fixtures) {
      ctx.stage("loading " + f->name + ", applying, creating and destroying methods");
      set_recording(true);
      FixtureLoad l = load_fixture(*p.subject, *f);
      set_recording(false);
      const std::vector<RecordedPiece> pieces = take_recorded();
      ++loads;
      if (l.problems.empty() && !l.model.layers.empty()) {
        const LoadedLayer& layer = *l.model.layers.front();
        const moeq_layer_geometry& g = layer.geometry;
        try {
          apply(*layer.plugin, layer.method, g.hidden_size, random_tokens(5, g.hidden_size, 3), 5,
                random_routing(5, g.num_experts, g.top_k, 3));
        } catch (const Error&) {
        }
      }
      const MoeConfig cfg = config_of(*f);
      const LayerQuery* q = first_query(p, f);
      for (int rank = 0; rank < 2 && cfg.intermediate_size % 2 == 0; ++rank)
        FreshMethod m(*p.subject->plugin(), q->query, layer_geometry(cfg, {rank, 2, 0, 1}), q->prefix);
      // Error paths leak too: a refused tensor and an unknown suffix.
      for (const RecordedPiece& pc : pieces) {
        if (pc.layer != q->prefix || pc.suffix != "weight" || pc.shape.empty()) continue;
        FreshMethod m(*p.subject->plugin(), q->query, layer_geometry(cfg, {}), q->prefix);
        RecordedPiece bad = pc;
        bad.shape.back() -= 1;
        m.send(bad);
        bad = pc;
        bad.suffix = "conform_unknown_suffix";
        m.send(bad);
        errors += 2;
        break;
      }
    }
    scenario = count(loads, "load") + ", applies, TP=2 methods, " + count(errors, "refused tensor");
  }
  clear_escapes();
  std::vector<std::string> problems;
  if (const int64_t n = host::live_statuses() - statuses0; n != 0) {
    std::string who;
    for (const auto& [slot, balance] : status_imbalance())
      if (balance > 0)
        who += (who.empty() ? "" : ", ") + std::string(plugin_slot_name(slot)) + " took in " + std::to_string(balance) +
               " more than it returned or destroyed";
    problems.push_back(std::to_string(n) + " statuses made through the host were never destroyed" +
                       (who.empty() ? "" : " (" + who + ")"));
  }
  if (const int64_t n = live_methods() - methods0; n != 0)
    problems.push_back(std::to_string(n) + " methods created and never destroyed");
  if (const int64_t n = host::live_param_bytes() - bytes0; n != 0)
    problems.push_back(std::to_string(n) + " bytes of parameters still alive after every layer was destroyed");
  return verdict(problems, "after probes, " + scenario + " and shutdown: every status and method destroyed, no parameter bytes left");
}

}  // namespace moeq::cli::conform
