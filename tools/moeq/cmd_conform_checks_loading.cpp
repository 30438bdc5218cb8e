// `moeq conform` checks 5-6: weight_loader (ledger, order, idempotency, EP) and error paths.
#include "cmd_conform_check_kit.hpp"
#include "cmd_conform_guard.hpp"

#include <moeq/error.hpp>

#include <algorithm>
#include <cstring>
#include <random>

namespace moeq::cli::conform {

// ============================================================ 5. weight_loader
Outcome check_weight_loader(Context& ctx) {
  Prepared p = prepare(ctx, true);
  if (p.not_ready) return *p.not_ready;
  std::vector<std::string> problems;
  int64_t consumed = 0, skipped = 0, pieces_total = 0, refused_resends = 0, noop_resends = 0;
  int orders = 0;
  for (const Fixture* f : p.fixtures) {
    ctx.stage("loading fixture " + f->name + " in checkpoint order");
    set_recording(true);
    set_snapshots(true);
    FixtureLoad l = load_fixture(*p.subject, *f);
    set_recording(false);
    set_snapshots(false);
    std::vector<RecordedPiece> pieces = take_recorded();
    const auto snaps = take_snapshots();
    if (!l.problems.empty()) {
      std::vector<std::string> details(l.problems.begin(), l.problems.end());
      return failed(f->name + " does not load: " + l.problems.front() +
                        (l.problems.size() > 1 ? " (and " + std::to_string(l.problems.size() - 1) + " more)" : ""),
                    details);
    }
    for (const auto& layer : l.model.layers)
      for (const LedgerEntry& e : layer->report.entries) {
        if (e.state == LedgerEntry::State::kConsumed) ++consumed;
        if (e.state == LedgerEntry::State::kSkipped) ++skipped;
      }
    for (const RecordedPiece& pc : pieces)
      if (pc.skipped && pc.skip_reason.empty())
        problems.push_back("weight_loader skipped " + pc.tensor + " without a reason");
    for (size_t li = 0; li < l.model.layers.size(); ++li) {
      const LoadedLayer& layer = *l.model.layers[li];
      const std::string& prefix = layer.report.prefix;
      const LayerSnapshot* base = nullptr;
      for (const auto& [name, s] : snaps)
        if (name == prefix) base = &s;
      if (base == nullptr) continue;
      std::vector<const RecordedPiece*> mine;
      for (const RecordedPiece& pc : pieces)
        if (pc.layer == prefix) mine.push_back(&pc);
      pieces_total += static_cast<int64_t>(mine.size());
      const ProbeQuery q = l.query_of(li);
      std::unique_ptr<FreshMethod> last;
      for (uint64_t seed = 1; seed <= 3; ++seed) {
        ctx.stage("loading " + prefix + " of " + f->name + " in shuffled order " + std::to_string(seed));
        std::vector<const RecordedPiece*> order = mine;
        std::mt19937_64 rng(seed);
        std::shuffle(order.begin(), order.end(), rng);
        auto m = std::make_unique<FreshMethod>(*p.subject->plugin(), q, layer.geometry, prefix);
        if (!m->error().empty()) return failed("a second method of " + prefix + " fails: " + m->error());
        for (const RecordedPiece* pc : order) {
          const FreshMethod::Sent r = m->send(*pc);
          if (!r.ok) {
            problems.push_back("in shuffled order " + std::to_string(seed) + ", weight_loader refuses " + pc->tensor +
                               " (accepted in checkpoint order): " + r.message);
            break;
          }
          if (r.skipped != pc->skipped)
            problems.push_back("in shuffled order " + std::to_string(seed) + ", " + pc->tensor + " is " +
                               (r.skipped ? "skipped" : "used") + ", unlike in checkpoint order");
        }
        if (!problems.empty()) break;
        if (std::string gap = m->coverage_problem(); !gap.empty())
          problems.push_back("in shuffled order " + std::to_string(seed) + ", " + gap);
        else if (std::string diff = compare(snapshot(m->layer()), *base); !diff.empty())
          problems.push_back("parameters depend on the order tensors arrive (" + prefix + ", shuffled order " +
                             std::to_string(seed) + "): " + diff);
        ++orders;
        last = std::move(m);
      }
      if (!problems.empty() || !last) break;
      // Idempotent: re-sending what was loaded is refused or a no-op, and changes nothing.
      ctx.stage("re-sending every tensor of " + prefix + " of " + f->name);
      for (const RecordedPiece* pc : mine) {
        const FreshMethod::Sent r = last->send(*pc);
        (r.ok ? noop_resends : refused_resends) += 1;
        if (!r.ok && r.message.empty()) problems.push_back("re-sending " + pc->tensor + " fails without a message");
      }
      if (std::string diff = compare(snapshot(last->layer()), *base); !diff.empty())
        problems.push_back("re-sending the tensors of " + prefix + " changed the parameters: " + diff);
    }
    if (!problems.empty()) break;
    const MoeConfig cfg = config_of(*f);
    if (cfg.num_experts >= 2) {
      ctx.stage("loading fixture " + f->name + " at EP=2 rank 1");
      FixtureLoad ep = load_fixture(*p.subject, *f, {0, 1, 1, 2});
      if (!ep.problems.empty()) problems.push_back(f->name + " at EP=2 rank 1: " + ep.problems.front());
    }
  }
  add_escapes(problems);
  return verdict(problems, std::to_string(p.fixtures.size()) + (p.fixtures.size() == 1 ? " fixture: " : " fixtures: ") + std::to_string(consumed) + " tensors consumed, " +
                               std::to_string(skipped) + " skipped with reasons, every parameter element written; " +
                               std::to_string(orders) + " shuffled orders of " + std::to_string(pieces_total) +
                               " pieces give identical parameters; re-sending each is refused (" +
                               std::to_string(refused_resends) + ") or a no-op (" + std::to_string(noop_resends) +
                               ") and changes nothing; EP=2 rank 1 loads");
}

// ============================================================ 6. error paths
Outcome check_errors(Context& ctx) {
  Prepared p = prepare(ctx, true);
  if (p.not_ready) return *p.not_ready;
  const Fixture& f = *p.fixtures.front();
  const LayerQuery& q = *first_query(p, &f);
  const MoeConfig cfg = config_of(f);
  const moeq_layer_geometry g = layer_geometry(cfg, {});
  ctx.stage("recording a load of " + f.name);
  set_recording(true);
  FixtureLoad l = load_fixture(*p.subject, f);
  set_recording(false);
  const std::vector<RecordedPiece> pieces = take_recorded();
  clear_escapes();
  const RecordedPiece* weight = nullptr;
  const RecordedPiece* scale = nullptr;
  for (const RecordedPiece& pc : pieces) {
    if (pc.layer != q.prefix || pc.skipped || pc.failed || pc.shape.empty()) continue;
    if (!weight && pc.suffix == "weight") weight = &pc;
    if (!scale && pc.suffix.find("scale") != std::string::npos) scale = &pc;
  }
  if (weight == nullptr) return not_applicable("no weight tensor of " + q.prefix + " was accepted in a plain load (see check 5)");

  std::vector<std::string> problems;
  int cases = 0;
  // Sends `bad` (metadata and source) to a fresh method and judges the answer.
  auto expect_refusal = [&](const std::string& label, const RecordedPiece& bad, bool skip_is_fine) {
    ctx.stage("weight_loader with " + label);
    ++cases;
    FreshMethod m(*p.subject->plugin(), q.query, g, q.prefix);
    if (!m.error().empty()) {
      problems.push_back("a fresh method fails: " + m.error());
      return;
    }
    const FreshMethod::Sent r = m.send(bad);
    const size_t before = problems.size();
    add_escapes(problems, label);
    if (problems.size() != before) return;
    if (r.ok && !r.skipped) problems.push_back("weight_loader accepts " + label + " without a status");
    else if (r.ok && r.skipped && !skip_is_fine) problems.push_back("weight_loader skips " + label + " instead of refusing it");
    else if (r.ok && r.message.empty()) problems.push_back("weight_loader skips " + label + " without a reason");
    else if (!r.ok && r.message.empty()) problems.push_back("weight_loader refuses " + label + " with an empty message");
  };
  auto zeros = [](const RecordedPiece& like, DLDataType dtype, std::vector<int64_t> shape) {
    RecordedPiece b = like;
    b.dtype = dtype;
    b.shape = std::move(shape);
    b.strides.assign(b.shape.size(), 1);
    for (int d = static_cast<int>(b.shape.size()) - 2; d >= 0; --d) b.strides[d] = b.strides[d + 1] * b.shape[d + 1];
    int64_t n = 1;
    for (int64_t s : b.shape) n *= s;
    b.bytes.assign(static_cast<size_t>(n) * std::max<size_t>(1, dtype.bits / 8), std::byte{0});
    return b;
  };
  {
    RecordedPiece b = *weight;
    b.shape.back() -= 1;
    expect_refusal("a " + shape_str(b.shape) + " weight (one column short of " + shape_str(weight->shape) + ")", b, false);
  }
  {
    RecordedPiece b = *weight;
    b.strides.insert(b.strides.begin(), b.shape[0] * b.strides[0]);
    b.shape.insert(b.shape.begin(), 1);
    expect_refusal("a weight with an extra leading dimension " + shape_str(b.shape), b, false);
  }
  expect_refusal("an I32 weight", zeros(*weight, {kDLInt, 32, 1}, weight->shape), false);
  expect_refusal("a float64 weight (a dtype no format uses)", zeros(*weight, {kDLFloat, 64, 1}, weight->shape), false);
  if (scale != nullptr) {
    std::vector<int64_t> shape = scale->shape;
    shape[0] += 1;
    RecordedPiece b = zeros(*scale, {kDLFloat, 32, 1}, shape);
    for (size_t i = 0; i < b.bytes.size(); i += 4) {
      const float one = 1.0f;
      std::memcpy(b.bytes.data() + i, &one, 4);
    }
    expect_refusal("a scale " + shape_str(shape) + " (one row more than " + shape_str(scale->shape) + ")", b, false);
  }
  {
    RecordedPiece b = *weight;
    b.suffix = "conform_unknown_suffix";
    b.tensor = b.tensor + "_conform_unknown_suffix";
    expect_refusal("an unknown suffix 'conform_unknown_suffix'", b, true);
  }
  {
    RecordedPiece b = *weight;
    b.projection = 99;
    expect_refusal("projection 99", b, false);
  }
  {
    RecordedPiece b = *weight;
    b.local_expert = g.num_local_experts;
    b.global_expert = g.first_local_expert + g.num_local_experts;
    expect_refusal("local expert " + std::to_string(b.local_expert) + " of " + std::to_string(g.num_local_experts), b, false);
  }
  // Geometries the host never sends: a status or a method, never a crash or an exception.
  for (int which = 0; which < 2; ++which) {
    moeq_layer_geometry bad = g;
    std::string label;
    if (which == 0) {
      bad.tp_rank = bad.tp_size;
      label = "tp_rank == tp_size";
    } else {
      bad.intermediate_size_per_partition = bad.intermediate_size + 1;
      label = "intermediate_size_per_partition > intermediate_size";
    }
    ctx.stage("method_create with " + label);
    ++cases;
    FreshMethod m(*p.subject->plugin(), q.query, bad, q.prefix);
    add_escapes(problems, "a geometry with " + label);
  }
  // apply with bad arguments, on a loaded method.
  if (l.problems.empty() && !l.model.layers.empty()) {
    const LoadedLayer& layer = *l.model.layers.front();
    const int64_t H = layer.geometry.hidden_size, M = 3, k = layer.geometry.top_k;
    const ref::Routing routing = random_routing(M, layer.geometry.num_experts, static_cast<int>(k), 5);
    // Fenced like every buffer conform hands a plugin (cmd_conform_guard.hpp).
    GuardedBuffer xi("apply", "x", static_cast<size_t>(M * H) * sizeof(int64_t)),
        x("apply", "x", static_cast<size_t>(M * H) * sizeof(float)),
        out("apply", "out", static_cast<size_t>(M * (H + 1)) * sizeof(float)),
        gids("apply", "topk_ids", routing.ids.size() * sizeof(int32_t)),
        gweights("apply", "topk_weights", routing.weights.size() * sizeof(float));
    std::fill_n(x.as<float>(), M * H, 0.5f);
    std::copy(routing.ids.begin(), routing.ids.end(), gids.as<int32_t>());
    std::copy(routing.weights.begin(), routing.weights.end(), gweights.as<float>());
    int64_t xs[2] = {M, H}, xst[2] = {H, 1}, os[2] = {M, H + 1}, ost[2] = {H + 1, 1}, ks[2] = {M, k}, kst[2] = {k, 1};
    struct BadApply {
      const char* label;
      DLTensor x, ids, weights, out;
    };
    const DLTensor good_x{x.data(), {kDLCPU, 0}, 2, {kDLFloat, 32, 1}, xs, xst, 0};
    const DLTensor good_out{out.data(), {kDLCPU, 0}, 2, {kDLFloat, 32, 1}, xs, xst, 0};
    const DLTensor ids{gids.data(), {kDLCPU, 0}, 2, {kDLInt, 32, 1}, ks, kst, 0};
    const DLTensor weights{gweights.data(), {kDLCPU, 0}, 2, {kDLFloat, 32, 1}, ks, kst, 0};
    const BadApply bad[] = {
        {"x of dtype int64", {xi.data(), {kDLCPU, 0}, 2, {kDLInt, 64, 1}, xs, xst, 0}, ids, weights, good_out},
        {"out of shape [M, H+1]", good_x, ids, weights, {out.data(), {kDLCPU, 0}, 2, {kDLFloat, 32, 1}, os, ost, 0}},
        {"topk_ids of dtype float32", good_x, {gweights.data(), {kDLCPU, 0}, 2, {kDLFloat, 32, 1}, ks, kst, 0},
         weights, good_out},
    };
    for (const BadApply& b : bad) {
      ctx.stage(std::string("apply with ") + b.label);
      ++cases;
      moeq_apply_args a{sizeof(moeq_apply_args), layer.method, &b.x, &b.ids, &b.weights, &b.out, nullptr};
      moeq_status_code code;
      std::string msg;
      const bool refused = host::take_status(layer.plugin->api->apply(&a), code, msg);
      const size_t before = problems.size();
      add_escapes(problems, std::string("apply with ") + b.label);
      for (const GuardedBuffer* g : {&xi, &x, &out, &gids, &gweights})
        if (std::string damage = g->damage(); !damage.empty())
          problems.push_back(std::string("with ") + b.label + ", " + damage);
      if (problems.size() != before) continue;
      if (!refused) problems.push_back(std::string("apply accepts ") + b.label + " without a status");
      else if (msg.empty()) problems.push_back(std::string("apply refuses ") + b.label + " with an empty message");
    }
  }
  add_escapes(problems);
  return verdict(problems, std::to_string(cases) +
                               " bad inputs (shapes, dtypes, suffix, projection, expert, geometry, apply arguments): "
                               "each refused with a status and a message; no exception escaped, nothing aborted");
}

}  // namespace moeq::cli::conform
